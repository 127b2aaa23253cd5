"""NAdam: Adam with Nesterov momentum."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..engine import TensorList
from . import _validate as check
from ._regularize import regularize
from ._spec import State, hyper
from .base import Optimizer


def nadam(
    param: TensorList,
    grad: TensorList,
    *,
    exp_avg: TensorList,
    exp_avg_sq: TensorList,
    mu_product: Tensor,
    step: float,
    lr: Any,
    betas: tuple[Any, Any],
    eps: float,
    weight_decay: float,
    momentum_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
) -> None:
    r"""One NAdam step, in place (``mu_product``, a 0-dim tensor, too).

    .. math::

        \mu_t &= \beta_1\,(1 - \tfrac12\, 0.96^{t\psi}), \qquad
        \mu_{t+1} = \beta_1\,(1 - \tfrac12\, 0.96^{(t+1)\psi}), \qquad
        \Pi_t = \Pi_{t-1}\,\mu_t \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2,
        \qquad s = \sqrt{v / (1-\beta_2^t)} + \epsilon \\
        \theta &\leftarrow \theta - \eta\frac{1-\mu_t}{1-\Pi_t}\frac{g}{s}
            - \eta\frac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}}\frac{m}{s}

    :math:`\Pi` is kept in the state's scalar dtype, as torch.optim keeps it; its
    product is rounded in that dtype.
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
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * momentum_decay))
    mu_product.mul_(mu)
    product = float(mu_product)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = exp_avg_sq.div(1 - beta2**step).sqrt_().add_(eps)
    param.addcdiv_(grad, denom, value=-lr * (1.0 - mu) / (1.0 - product))
    param.addcdiv_(exp_avg, denom, value=-lr * mu_next / (1.0 - product * mu_next))


class NAdam(Optimizer):
    r"""NAdam (Dozat 2016): Adam with Nesterov momentum and a momentum-decay schedule.

    .. math::

        g &\leftarrow g + \lambda\theta \text{ (or } \theta \leftarrow \theta(1-\eta\lambda)
            \text{ if decoupled)} \\
        \mu_t &= \beta_1(1 - \tfrac12 0.96^{t\psi}), \qquad \Pi_t = \prod_{i\le t}\mu_i \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2 \\
        \theta &\leftarrow \theta - \eta\left[\frac{1-\mu_t}{1-\Pi_t} g
            + \frac{\mu_{t+1}}{1-\Pi_{t+1}} m_t\right] \Big/
            \left(\sqrt{v_t/(1-\beta_2^t)} + \epsilon\right)

    with :math:`\psi` = ``momentum_decay``. Reference: Dozat, "Incorporating Nesterov
    Momentum into Adam", ICLR 2016 workshop. Differences from torch: none in results.
    """

    lr: float | Tensor = hyper(default=2e-3)
    betas: tuple[float, float] = hyper(default=(0.9, 0.999))
    eps: float = hyper(default=1e-8)
    weight_decay: float = hyper(default=0.0)
    momentum_decay: float = hyper(
        default=4e-3, check=check.non_negative, doc=r"momentum decay :math:`\psi`"
    )
    decoupled_weight_decay: bool = hyper(default=False)
    foreach: bool | None = hyper(default=None, kw_only=True)
    maximize: bool = hyper(default=False, kw_only=True)
    capturable: bool = hyper(default=False, kw_only=True)
    differentiable: bool = hyper(default=False, kw_only=True)

    keeps = (
        State("step", scalar=True, doc="steps taken"),
        State(
            "mu_product",
            scalar=True,
            init=1.0,
            doc=r"product :math:`\Pi_t` of the momentum coefficients",
        ),
        State("exp_avg", doc="first moment m"),
        State("exp_avg_sq", non_negative=True, doc="second moment v"),
    )
    math = staticmethod(nadam)


__all__ = ["NAdam", "nadam"]
