"""Adam and AdamW."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..engine import TensorList
from ..engine._torch import fused_adam
from . import _validate as check
from ._regularize import regularize
from ._spec import State, hyper
from .base import Optimizer


def adam(
    param: TensorList,
    grad: TensorList,
    *,
    exp_avg: TensorList,
    exp_avg_sq: TensorList,
    max_exp_avg_sq: TensorList | None,
    step: float,
    lr: Any,
    betas: tuple[Any, Any],
    eps: float,
    weight_decay: float,
    maximize: bool,
    decoupled_weight_decay: bool,
) -> None:
    r"""One Adam step, in place (AMSGrad when ``max_exp_avg_sq`` is given).

    .. math::

        g &\leftarrow \pm g + \lambda\theta \quad\text{(coupled decay) or }
            \theta \leftarrow \theta(1 - \eta\lambda) \text{ (decoupled)} \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g \\
        v &\leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        \hat v &\leftarrow \max(\hat v, v) \text{ (AMSGrad), else } \hat v = v \\
        \theta &\leftarrow \theta - \frac{\eta}{1-\beta_1^t}\,
            \frac{m}{\sqrt{\hat v}/\sqrt{1-\beta_2^t} + \epsilon}

    ``step`` is t, counting this step (1 on the first).
    """
    beta1, beta2 = betas
    grad = regularize(
        param,
        grad,
        lr=lr,
        weight_decay=weight_decay,
        decoupled=decoupled_weight_decay,
        maximize=maximize,
    )
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    second_moment = exp_avg_sq
    if max_exp_avg_sq is not None:
        second_moment = max_exp_avg_sq.maximum_(exp_avg_sq)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    denom = second_moment.sqrt().div_(bias_correction2**0.5).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


class Adam(Optimizer):
    r"""Adam (Kingma & Ba 2015), with AMSGrad (Reddi et al. 2018) and coupled weight decay.

    Update rule, for gradient :math:`g`, step :math:`t` (1 on the first update):

    .. math::

        g &\leftarrow g + \lambda\theta \qquad (-g \text{ first if maximize}) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2 \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \text{ if amsgrad, else } v_t \\
        \theta &\leftarrow \theta - \frac{\eta}{1-\beta_1^t}
            \frac{m_t}{\sqrt{\hat v_t / (1-\beta_2^t)} + \epsilon}

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015
    (Algorithm 1, with epsilon outside the bias-corrected root as in torch.optim);
    Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", ICLR 2018 (AMSGrad).

    With ``decoupled_weight_decay=True`` this is :class:`AdamW`. Runs on torch's fused
    kernel (CPU and CUDA), whose equality with :func:`adam` is tested for every option.

    Differences from torch: none in results. ``foreach`` and ``fused`` are accepted and
    ignored (descent's engine chooses how the update runs); ``capturable=True`` and
    ``differentiable=True`` are refused (see :mod:`descent.functional`).

    Example::

        opt = descent.Adam(model.parameters(), lr=3e-4)
    """

    lr: float | Tensor = hyper(default=1e-3)
    betas: tuple[float, float] = hyper(default=(0.9, 0.999))
    eps: float = hyper(default=1e-8)
    weight_decay: float = hyper(default=0.0)
    amsgrad: bool = hyper(
        default=False, check=check.flag, doc="use the running maximum of v (AMSGrad)"
    )
    foreach: bool | None = hyper(default=None, kw_only=True)
    maximize: bool = hyper(default=False, kw_only=True)
    capturable: bool = hyper(default=False, kw_only=True)
    differentiable: bool = hyper(default=False, kw_only=True)
    fused: bool | None = hyper(default=None, kw_only=True)
    decoupled_weight_decay: bool = hyper(default=False, kw_only=True)

    keeps = (
        State("step", scalar=True, doc="steps taken"),
        State("exp_avg", doc="first moment m"),
        State("exp_avg_sq", non_negative=True, doc="second moment v"),
        State(
            "max_exp_avg_sq",
            when="amsgrad",
            non_negative=True,
            doc="running maximum of v (AMSGrad)",
        ),
    )
    math = staticmethod(adam)
    fused_kernel = staticmethod(fused_adam)


class AdamW(Adam):
    r"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019).

    The decay shrinks the parameter directly instead of entering the gradient:

    .. math::

        \theta &\leftarrow \theta\,(1 - \eta\lambda) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2 \\
        \theta &\leftarrow \theta - \frac{\eta}{1-\beta_1^t}
            \frac{m_t}{\sqrt{\hat v_t / (1-\beta_2^t)} + \epsilon}

    Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    Differences from torch: as :class:`Adam`.
    """

    weight_decay: float = hyper(
        default=1e-2, check=check.non_negative, doc=r"decoupled weight decay :math:`\lambda`"
    )
    decoupled_weight_decay: bool = hyper(
        default=True, check=check.flag, init=False, doc="always True for AdamW"
    )


__all__ = ["Adam", "AdamW", "adam"]
