"""The first line of every update rule: the sign of the objective and weight decay."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def regularize(param: Tensor, grad: Tensor, *, lr: Any, weight_decay: Any,
               decoupled: bool = False, maximize: bool = False) -> tuple[Tensor, Tensor]:
    r"""Return the parameter and gradient an update rule starts from.

    .. math::

        g &\leftarrow -g \quad \text{when maximizing} \\
        g &\leftarrow g + \lambda\theta \quad \text{(coupled: an L2 penalty in the loss)} \\
        \theta &\leftarrow \theta\,(1 - \eta\lambda) \quad
            \text{(decoupled: Loshchilov \& Hutter 2019)}

    Pure: returns new tensors, or the inputs themselves when nothing applies.
    """
    if maximize:
        grad = -grad
    if weight_decay != 0:
        if decoupled:
            param = param * (1 - lr * weight_decay)
        else:
            grad = grad + weight_decay * param
    return param, grad
