"""Adadelta."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..engine import TensorList
from . import _validate as check
from ._regularize import regularize
from ._spec import State, hyper
from .base import Optimizer


def adadelta(
    param: TensorList,
    grad: TensorList,
    *,
    square_avg: TensorList,
    acc_delta: TensorList,
    lr: Any,
    rho: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    r"""One Adadelta step, in place.

    .. math::

        g &\leftarrow \pm g + \lambda\theta \\
        v &\leftarrow \rho v + (1-\rho) g^2 \\
        \Delta &= \frac{\sqrt{u + \epsilon}}{\sqrt{v + \epsilon}}\, g \\
        u &\leftarrow \rho u + (1-\rho) \Delta^2 \\
        \theta &\leftarrow \theta - \eta\,\Delta

    ``square_avg`` is v, ``acc_delta`` is u.
    """
    grad = regularize(param, grad, lr=lr, weight_decay=weight_decay, maximize=maximize)
    square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
    std = square_avg.add(eps).sqrt_()
    delta = acc_delta.add(eps).sqrt_().div_(std).mul_(grad)
    acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
    param.add_(delta, alpha=-lr)


class Adadelta(Optimizer):
    r"""Adadelta (Zeiler 2012): step sizes from running averages of squared gradients
    and of squared updates.

    .. math::

        g &\leftarrow g + \lambda\theta \qquad (-g \text{ first if maximize}) \\
        v_t &= \rho v_{t-1} + (1-\rho) g^2 \\
        \Delta_t &= \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g \\
        u_t &= \rho u_{t-1} + (1-\rho) \Delta_t^2 \\
        \theta &\leftarrow \theta - \eta\,\Delta_t

    Reference: Zeiler, "ADADELTA: An Adaptive Learning Rate Method", arXiv:1212.5701
    (Algorithm 1; :math:`\eta` scales the step, 1 in the paper). Complex parameters are
    updated as pairs of reals, as in torch.

    Differences from torch: none in results. ``foreach`` is accepted and ignored
    (descent's engine chooses how the update runs); ``capturable=True`` and
    ``differentiable=True`` are refused (see :mod:`descent.functional`).

    Example::

        opt = descent.Adadelta(model.parameters())
    """

    lr: float | Tensor = hyper(
        default=1.0, doc=r"scale :math:`\eta` of the update (1 in the paper)"
    )
    rho: float = hyper(
        default=0.9,
        check=check.closed_unit_interval,
        doc=r"decay rate :math:`\rho` of the running averages",
    )
    eps: float = hyper(default=1e-6, doc=r"term :math:`\epsilon` added inside both roots")
    weight_decay: float = hyper(default=0.0)
    foreach: bool | None = hyper(default=None)
    capturable: bool = hyper(default=False, kw_only=True)
    maximize: bool = hyper(default=False, kw_only=True)
    differentiable: bool = hyper(default=False, kw_only=True)

    keeps = (
        State("step", scalar=True, doc="steps taken"),
        State("square_avg", non_negative=True, doc="running average v of squared gradients"),
        State("acc_delta", non_negative=True, doc="running average u of squared updates"),
    )
    math = staticmethod(adadelta)


__all__ = ["Adadelta", "adadelta"]
