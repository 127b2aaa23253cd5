"""The first lines of every update rule: the sign of the objective and weight decay."""

from __future__ import annotations

from typing import Any

from ..engine import TensorList


def regularize(
    param: TensorList,
    grad: TensorList,
    *,
    lr: Any,
    weight_decay: Any,
    decoupled: bool = False,
    maximize: bool = False,
) -> TensorList:
    r"""Apply decoupled weight decay to ``param`` in place; return the gradient to use.

    .. math::

        g &\leftarrow -g \quad \text{when maximizing} \\
        g &\leftarrow g + \lambda\theta \quad \text{(coupled: an L2 penalty in the loss)} \\
        \theta &\leftarrow \theta\,(1 - \eta\lambda) \quad
            \text{(decoupled: Loshchilov \& Hutter 2019)}

    The user's gradient is never written: a changed gradient is a new list.
    """
    if maximize:
        grad = -grad
    if weight_decay != 0:
        if decoupled:
            param.mul_(1 - lr * weight_decay)
        else:
            grad = grad.add(param, alpha=weight_decay)
    return grad
