"""RMSprop, plain or centered, with optional momentum."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from . import _validate as check
from ._regularize import regularize
from .base import Optimizer, scalar_dtype


def rmsprop(param: Tensor, grad: Tensor, square_avg: Tensor,
            momentum_buffer: Tensor | None = None, grad_avg: Tensor | None = None, *, lr: Any,
            alpha: float, eps: float, weight_decay: float = 0.0, momentum: float = 0.0,
            maximize: bool = False) -> dict[str, Tensor]:
    r"""One RMSprop step; ``grad_avg`` given means centered, ``momentum_buffer`` given means
    momentum (pass zeros on the first step).

    .. math::

        g &\leftarrow \pm g + \lambda\theta \\
        v &\leftarrow \alpha v + (1-\alpha) g^2, \qquad
        \bar g \leftarrow \alpha \bar g + (1-\alpha) g \text{ (centered)} \\
        s &= \sqrt{v - \bar g^2} + \epsilon \text{ (centered), else } \sqrt{v} + \epsilon \\
        b &\leftarrow \mu b + g / s, \quad \theta \leftarrow \theta - \eta b
            \quad\text{(momentum), else } \theta \leftarrow \theta - \eta\, g / s
    """
    param, grad = regularize(param, grad, lr=lr, weight_decay=weight_decay,
                             maximize=maximize)
    square_avg = alpha * square_avg + (1 - alpha) * grad * grad
    new = {"square_avg": square_avg}
    if grad_avg is not None:
        grad_avg = new["grad_avg"] = torch.lerp(grad_avg, grad, 1 - alpha)
        avg = torch.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = torch.sqrt(square_avg) + eps
    if momentum_buffer is not None:
        buf = new["momentum_buffer"] = momentum * momentum_buffer + grad / avg
        new["param"] = param - lr * buf
    else:
        new["param"] = param - lr * grad / avg
    return new


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

    Defaults (torch.optim.RMSprop's): ``lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0,
    momentum=0, centered=False, maximize=False``. Differences from torch: none in results;
    ``foreach`` is accepted and ignored, ``capturable``/``differentiable`` are refused.
    """

    hyperparameters = {
        "lr": check.non_negative, "alpha": check.non_negative, "eps": check.non_negative,
        "weight_decay": check.non_negative, "momentum": check.non_negative,
        "centered": check.flag, "capturable": check.CAPTURABLE, "foreach": check.FOREACH,
        "maximize": check.flag, "differentiable": check.DIFFERENTIABLE,
    }

    def __init__(self, params: Any, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 capturable: bool = False, foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False) -> None:
        super().__init__(params, dict(
            lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
            centered=centered, capturable=capturable, foreach=foreach, maximize=maximize,
            differentiable=differentiable))

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = {"step": torch.zeros((), dtype=scalar_dtype()),
                 "square_avg": torch.zeros_like(param, memory_format=torch.preserve_format)}
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(param,
                                                        memory_format=torch.preserve_format)
        if group["centered"]:
            state["grad_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    def _update(self, param: Tensor, grad: Tensor, state: Mapping[str, Any],
                group: Mapping[str, Any]) -> dict[str, Tensor]:
        return rmsprop(param, grad, state["square_avg"], state.get("momentum_buffer"),
                       state.get("grad_avg"), lr=group["lr"], alpha=group["alpha"],
                       eps=group["eps"], weight_decay=group["weight_decay"],
                       momentum=group["momentum"], maximize=group["maximize"])


__all__ = ["RMSprop", "rmsprop"]
