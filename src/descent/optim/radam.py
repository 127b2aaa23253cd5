"""RAdam: Adam with a rectified adaptive learning rate."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..engine import TensorList
from ._regularize import regularize
from ._spec import State, hyper
from .base import Optimizer


def radam(
    param: TensorList,
    grad: TensorList,
    *,
    exp_avg: TensorList,
    exp_avg_sq: TensorList,
    step: float,
    lr: Any,
    betas: tuple[Any, Any],
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
) -> None:
    r"""One RAdam step, in place.

    .. math::

        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2,
        \qquad \hat m = m / (1-\beta_1^t) \\
        \rho_\infty &= \frac{2}{1-\beta_2} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1-\beta_2^t} \\
        r_t &= \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}
        \\
        \theta &\leftarrow \theta - \eta r_t \hat m \frac{\sqrt{1-\beta_2^t}}{\sqrt v + \epsilon}
            \text{ if } \rho_t > 5, \text{ else } \theta - \eta\,\hat m
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
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * beta2**step / bias_correction2
    if rho_t > 5.0:
        rect = (
            (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        ) ** 0.5
        denom = exp_avg_sq.sqrt().add_(eps)
        param.addcdiv_(exp_avg, denom, value=-lr * rect * bias_correction2**0.5 / bias_correction1)
    else:
        param.add_(exp_avg, alpha=-lr / bias_correction1)


class RAdam(Optimizer):
    r"""RAdam (Liu et al. 2020): Adam whose adaptive step is switched on only once the
    variance of the adaptive learning rate is tractable, and rectified until then.

    .. math::

        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2 \\
        \rho_\infty &= 2/(1-\beta_2) - 1, \qquad
        \rho_t = \rho_\infty - 2t\beta_2^t/(1-\beta_2^t) \\
        \theta &\leftarrow \theta - \eta\, r_t \frac{m_t}{1-\beta_1^t}
            \frac{\sqrt{1-\beta_2^t}}{\sqrt{v_t} + \epsilon} \text{ if } \rho_t > 5,
            \text{ else } \theta - \eta \frac{m_t}{1-\beta_1^t}

    with the rectification :math:`r_t` of the paper's Algorithm 2. Reference: Liu et al.,
    "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020.
    Differences from torch: none in results (the scalar factors are combined before they
    meet the tensors, so the last bits differ from torch's own order).
    """

    lr: float | Tensor = hyper(default=1e-3)
    betas: tuple[float, float] = hyper(default=(0.9, 0.999))
    eps: float = hyper(default=1e-8)
    weight_decay: float = hyper(default=0.0)
    decoupled_weight_decay: bool = hyper(default=False)
    foreach: bool | None = hyper(default=None, kw_only=True)
    maximize: bool = hyper(default=False, kw_only=True)
    capturable: bool = hyper(default=False, kw_only=True)
    differentiable: bool = hyper(default=False, kw_only=True)

    keeps = (
        State("step", scalar=True, doc="steps taken"),
        State("exp_avg", doc="first moment m"),
        State("exp_avg_sq", non_negative=True, doc="second moment v"),
    )
    math = staticmethod(radam)


__all__ = ["RAdam", "radam"]
