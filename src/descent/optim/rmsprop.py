"""RMSprop, plain or centered, with optional momentum."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..engine import TensorList
from . import _validate as check
from ._regularize import regularize
from ._spec import State, hyper
from .base import Optimizer


def rmsprop(
    param: TensorList,
    grad: TensorList,
    *,
    square_avg: TensorList,
    momentum_buffer: TensorList | None,
    grad_avg: TensorList | None,
    lr: Any,
    alpha: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    maximize: bool,
) -> None:
    r"""One RMSprop step, in place; ``grad_avg`` given means centered, ``momentum_buffer``
    given means momentum.

    .. math::

        g &\leftarrow \pm g + \lambda\theta \\
        v &\leftarrow \alpha v + (1-\alpha) g^2, \qquad
        \bar g \leftarrow \alpha \bar g + (1-\alpha) g \text{ (centered)} \\
        s &= \sqrt{v - \bar g^2} + \epsilon \text{ (centered), else } \sqrt{v} + \epsilon \\
        b &\leftarrow \mu b + g / s, \quad \theta \leftarrow \theta - \eta b
            \quad\text{(momentum), else } \theta \leftarrow \theta - \eta\, g / s
    """
    grad = regularize(param, grad, lr=lr, weight_decay=weight_decay, maximize=maximize)
    square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
    if grad_avg is not None:
        grad_avg.lerp_(grad, 1 - alpha)
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
    else:
        avg = square_avg.sqrt()
    avg.add_(eps)
    if momentum_buffer is not None:
        momentum_buffer.mul_(momentum).addcdiv_(grad, avg)
        param.add_(momentum_buffer, alpha=-lr)
    else:
        param.addcdiv_(grad, avg, value=-lr)


class RMSprop(Optimizer):
    r"""RMSprop (Hinton 2012), optionally centered (Graves 2013), with momentum.

    .. math::

        g &\leftarrow g + \lambda\theta \qquad (-g \text{ first if maximize}) \\
        v_t &= \alpha v_{t-1} + (1-\alpha) g^2 \\
        \bar g_t &= \alpha \bar g_{t-1} + (1-\alpha) g, \quad
            s = \sqrt{v_t - \bar g_t^2} + \epsilon \text{ if centered, else }
            s = \sqrt{v_t} + \epsilon \\
        b_t &= \mu b_{t-1} + g / s, \quad \theta \leftarrow \theta - \eta b_t
            \text{ if momentum > 0, else } \theta \leftarrow \theta - \eta g / s

    References: Tieleman & Hinton, Lecture 6.5 of "Neural Networks for Machine Learning",
    2012; Graves, "Generating Sequences With Recurrent Neural Networks", 2013 (centered).

    Differences from torch: none in results; ``foreach`` is accepted and ignored,
    ``capturable``/``differentiable`` are refused.
    """

    lr: float | Tensor = hyper(default=1e-2)
    alpha: float = hyper(
        default=0.99,
        check=check.non_negative,
        doc=r"decay rate :math:`\alpha` of the squared-gradient average",
    )
    eps: float = hyper(default=1e-8)
    weight_decay: float = hyper(
        default=0.0, check=check.non_negative, doc=r"weight decay :math:`\lambda` (an L2 penalty)"
    )
    momentum: float = hyper(default=0.0)
    centered: bool = hyper(
        default=False,
        check=check.flag,
        doc="divide by the estimated variance instead of the raw second moment",
    )
    capturable: bool = hyper(default=False)
    foreach: bool | None = hyper(default=None)
    maximize: bool = hyper(default=False)
    differentiable: bool = hyper(default=False)

    keeps = (
        State("step", scalar=True, doc="steps taken"),
        State("square_avg", non_negative=True, doc="average of squared gradients v"),
        State("momentum_buffer", when="momentum", doc="momentum buffer b"),
        State("grad_avg", when="centered", doc="average gradient"),
    )
    math = staticmethod(rmsprop)


__all__ = ["RMSprop", "rmsprop"]
