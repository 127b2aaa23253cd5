"""Adamax."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..engine import TensorList
from ._regularize import regularize
from ._spec import State, hyper
from .base import Optimizer


def adamax(
    param: TensorList,
    grad: TensorList,
    *,
    exp_avg: TensorList,
    exp_inf: TensorList,
    step: float,
    lr: Any,
    betas: tuple[Any, Any],
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    r"""One Adamax step, in place.

    .. math::

        g &\leftarrow \pm g + \lambda\theta \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad
        u \leftarrow \max(\beta_2 u, |g| + \epsilon) \\
        \theta &\leftarrow \theta - \frac{\eta}{1-\beta_1^t} \frac{m}{u}
    """
    beta1, beta2 = betas
    grad = regularize(param, grad, lr=lr, weight_decay=weight_decay, maximize=maximize)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_inf.mul_(beta2).maximum_(grad.abs().add_(eps))
    param.addcdiv_(exp_avg, exp_inf, value=-lr / (1 - beta1**step))


class Adamax(Optimizer):
    r"""Adamax (Kingma & Ba 2015, section 7.1): Adam's second moment replaced by an
    exponentially weighted infinity norm.

    .. math::

        g &\leftarrow g + \lambda\theta \qquad (-g \text{ first if maximize}) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g, \qquad
        u_t = \max(\beta_2 u_{t-1}, |g| + \epsilon) \\
        \theta &\leftarrow \theta - \frac{\eta}{1-\beta_1^t}\frac{m_t}{u_t}

    Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015,
    Algorithm 2 (epsilon inside the max, as in torch.optim). Differences from torch:
    none in results.
    """

    lr: float | Tensor = hyper(default=2e-3)
    betas: tuple[float, float] = hyper(default=(0.9, 0.999))
    eps: float = hyper(default=1e-8)
    weight_decay: float = hyper(default=0.0)
    foreach: bool | None = hyper(default=None)
    maximize: bool = hyper(default=False, kw_only=True)
    differentiable: bool = hyper(default=False, kw_only=True)
    capturable: bool = hyper(default=False, kw_only=True)

    keeps = (
        State("step", scalar=True, doc="steps taken"),
        State("exp_avg", doc="first moment m"),
        State("exp_inf", non_negative=True, doc="exponentially weighted infinity norm u"),
    )
    math = staticmethod(adamax)


__all__ = ["Adamax", "adamax"]
