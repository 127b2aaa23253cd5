"""Rprop: resilient backpropagation."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..engine import TensorList
from . import _validate as check
from ._spec import State, hyper
from .base import Optimizer


def rprop(
    param: TensorList,
    grad: TensorList,
    *,
    prev: TensorList,
    step_size: TensorList | None,
    lr: Any,
    etas: tuple[float, float],
    step_sizes: tuple[float, float],
    maximize: bool,
) -> dict[str, TensorList]:
    r"""One Rprop step, in place; returns the step sizes when this step created them.

    .. math::

        s &= \operatorname{sign}(g \cdot g_{prev}) \\
        \Delta &\leftarrow \operatorname{clip}\big(\Delta \cdot
            \{\eta_+ \text{ if } s > 0;\ \eta_- \text{ if } s < 0;\ 1 \text{ if } s = 0\},
            \Delta_{min}, \Delta_{max}\big) \\
        g &\leftarrow 0 \text{ where } s < 0 \\
        \theta &\leftarrow \theta - \operatorname{sign}(g)\,\Delta, \qquad g_{prev} \leftarrow g

    ``step_size=None`` means the first step: every :math:`\Delta` starts at the learning
    rate.
    """
    created = {}
    if step_size is None:
        step_size = created["step_size"] = param.full_like(lr)
    if maximize:
        grad = -grad
    eta_minus, eta_plus = etas
    step_size_min, step_size_max = step_sizes
    factor = grad.mul(prev).sign()
    factor.masked_fill_(factor.gt(0), eta_plus)
    factor.masked_fill_(factor.lt(0), eta_minus)
    factor.masked_fill_(factor.eq(0), 1)
    step_size.mul_(factor).clamp_(step_size_min, step_size_max)
    grad = grad.masked_fill(factor.eq(eta_minus), 0)  # a sign change: no move, no memory
    param.addcmul_(grad.sign(), step_size, value=-1)
    prev.copy_(grad)
    return created


def _etas(owner: str, name: str, value: Any) -> Any:
    eta_minus, eta_plus = check.pair(owner, name, value)
    for index, eta in enumerate((eta_minus, eta_plus)):
        check.finite(owner, f"{name}[{index}]", eta)
    if not 0.0 < eta_minus < 1.0 < eta_plus:
        raise ValueError(
            f"{owner}: {name}={value!r} is invalid; expected (eta_minus, eta_plus) "
            "with 0 < eta_minus < 1 < eta_plus"
        )
    return tuple(value)


def _step_sizes(owner: str, name: str, value: Any) -> Any:
    smallest, largest = check.pair(owner, name, value)
    for index, size in enumerate((smallest, largest)):
        check.non_negative(owner, f"{name}[{index}]", size)
    if smallest > largest:
        raise ValueError(
            f"{owner}: {name}={value!r} is invalid; expected (minimum, maximum) "
            "with minimum <= maximum"
        )
    return tuple(value)


class Rprop(Optimizer):
    r"""Rprop (Riedmiller & Braun 1993): a step size per weight, adapted from gradient signs.

    .. math::

        s &= \operatorname{sign}(g_t \cdot g_{t-1}) \\
        \Delta_t &= \operatorname{clip}(\eta_\pm \Delta_{t-1}, \Delta_{min}, \Delta_{max})
            \quad (\eta_+ \text{ if } s > 0,\ \eta_- \text{ if } s < 0,\ \Delta_{t-1}
            \text{ if } s = 0) \\
        \theta &\leftarrow \theta - \operatorname{sign}(g_t)\,\Delta_t
            \quad (\text{no move where } s < 0, \text{ and } g_t \text{ is forgotten there})

    Reference: Riedmiller & Braun, "A Direct Adaptive Method for Faster Backpropagation
    Learning: The RPROP Algorithm", ICNN 1993 (the variant without weight backtracking,
    as in torch). Meant for full-batch training: it uses only the signs of gradients.
    Every :math:`\Delta` starts at ``lr`` on a parameter's first step. Complex
    parameters are updated as pairs of reals, as in torch.

    Differences from torch: none in results. ``step_sizes`` must be two numbers >= 0
    with minimum <= maximum (torch does not check it). ``foreach`` is accepted and
    ignored; ``capturable=True`` and ``differentiable=True`` are refused.

    Example::

        opt = descent.Rprop(model.parameters(), lr=0.01)
    """

    lr: float | Tensor = hyper(
        default=1e-2, doc=r"initial step size :math:`\Delta_0` of every weight"
    )
    etas: tuple[float, float] = hyper(
        default=(0.5, 1.2),
        check=_etas,
        doc=r"factors :math:`(\eta_-, \eta_+)` that shrink "
        "and grow a step size",
    )
    step_sizes: tuple[float, float] = hyper(
        default=(1e-6, 50), check=_step_sizes, doc=r"bounds :math:`(\Delta_{min}, \Delta_{max})`"
    )
    capturable: bool = hyper(default=False, kw_only=True)
    foreach: bool | None = hyper(default=None, kw_only=True)
    maximize: bool = hyper(default=False, kw_only=True)
    differentiable: bool = hyper(default=False, kw_only=True)

    keeps = (
        State("step", scalar=True, doc="steps taken"),
        State("prev", doc="the previous step's gradient (0 where its sign changed)"),
        State(
            "step_size",
            lazy=True,
            non_negative=True,
            doc=r"step size :math:`\Delta` of each weight",
        ),
    )
    math = staticmethod(rprop)


__all__ = ["Rprop", "rprop"]
