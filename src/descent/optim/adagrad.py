"""Adagrad."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from . import _validate as check
from ._regularize import regularize
from .base import Optimizer, scalar_dtype


def adagrad(param: Tensor, grad: Tensor, state_sum: Tensor, *, step: Any, lr: Any,
            lr_decay: float = 0.0, weight_decay: float = 0.0, eps: float = 1e-10,
            maximize: bool = False) -> dict[str, Tensor]:
    r"""One Adagrad step; returns the new ``param`` and ``sum``.

    .. math::

        g &\leftarrow \pm g + \lambda\theta, \qquad
        \tilde\eta = \eta / (1 + (t-1)\,\delta) \\
        s &\leftarrow s + g^2, \qquad
        \theta \leftarrow \theta - \tilde\eta\, g / (\sqrt{s} + \epsilon)
    """
    param, grad = regularize(param, grad, lr=lr, weight_decay=weight_decay,
                             maximize=maximize)
    decayed_lr = lr / (1 + (step - 1) * lr_decay)
    state_sum = state_sum + grad * grad
    return {"sum": state_sum, "param": param - decayed_lr * grad / (torch.sqrt(state_sum) + eps)}


class Adagrad(Optimizer):
    r"""Adagrad (Duchi, Hazan & Singer 2011) with learning-rate decay.

    .. math::

        g &\leftarrow g + \lambda\theta \qquad (-g \text{ first if maximize}) \\
        s_t &= s_{t-1} + g^2, \quad s_0 = \text{initial\_accumulator\_value} \\
        \theta &\leftarrow \theta - \frac{\eta}{1 + (t-1)\,\text{lr\_decay}}
            \frac{g}{\sqrt{s_t} + \epsilon}

    Reference: Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning
    and Stochastic Optimization", JMLR 2011.

    Defaults (torch.optim.Adagrad's): ``lr=1e-2, lr_decay=0, weight_decay=0,
    initial_accumulator_value=0, eps=1e-10, maximize=False``.

    Difference from torch: torch creates the state of every parameter in the
    constructor; descent creates it at a parameter's first update, like the other
    optimizers, so a parameter that never gets a gradient has no state. Results are the
    same. ``foreach``/``fused`` are accepted and ignored.
    """

    hyperparameters = {
        "lr": check.non_negative, "lr_decay": check.non_negative,
        "weight_decay": check.non_negative,
        "initial_accumulator_value": check.non_negative, "eps": check.non_negative,
        "foreach": check.FOREACH, "maximize": check.flag,
        "differentiable": check.DIFFERENTIABLE, "fused": check.FUSED,
    }

    def __init__(self, params: Any, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, foreach: bool | None = None, *, maximize: bool = False,
                 differentiable: bool = False, fused: bool | None = None) -> None:
        super().__init__(params, dict(
            lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, eps=eps, foreach=foreach,
            maximize=maximize, differentiable=differentiable, fused=fused))

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"step": torch.zeros((), dtype=scalar_dtype()),
                "sum": torch.full_like(param, group["initial_accumulator_value"],
                                       memory_format=torch.preserve_format)}

    def _update(self, param: Tensor, grad: Tensor, state: Mapping[str, Any],
                group: Mapping[str, Any]) -> dict[str, Tensor]:
        return adagrad(param, grad, state["sum"], step=float(state["step"]), lr=group["lr"],
                       lr_decay=group["lr_decay"], weight_decay=group["weight_decay"],
                       eps=group["eps"], maximize=group["maximize"])


__all__ = ["Adagrad", "adagrad"]
