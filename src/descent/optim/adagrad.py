"""Adagrad."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..engine import TensorList
from ..engine._torch import fused_adagrad
from . import _validate as check
from ._regularize import regularize
from ._spec import State, hyper
from .base import Optimizer


def adagrad(param: TensorList, grad: TensorList, *, sum: TensorList, step: float, lr: Any,
            lr_decay: float, weight_decay: float, eps: float, maximize: bool) -> None:
    r"""One Adagrad step, in place.

    .. math::

        g &\leftarrow \pm g + \lambda\theta, \qquad
        \tilde\eta = \eta / (1 + (t-1)\,\delta) \\
        s &\leftarrow s + g^2, \qquad
        \theta \leftarrow \theta - \tilde\eta\, g / (\sqrt{s} + \epsilon)
    """
    grad = regularize(param, grad, lr=lr, weight_decay=weight_decay, maximize=maximize)
    decayed_lr = lr / (1 + (step - 1) * lr_decay)
    sum.addcmul_(grad, grad, value=1)
    std = sum.sqrt().add_(eps)
    param.addcdiv_(grad, std, value=-decayed_lr)


def _initial_sum(param: Tensor, group: Mapping[str, Any]) -> Tensor:
    value = group["initial_accumulator_value"]
    fill = complex(value, value) if param.is_complex() else value  # torch's complex start
    return torch.full_like(param, fill, memory_format=torch.preserve_format)


class Adagrad(Optimizer):
    r"""Adagrad (Duchi, Hazan & Singer 2011) with learning-rate decay.

    .. math::

        g &\leftarrow g + \lambda\theta \qquad (-g \text{ first if maximize}) \\
        s_t &= s_{t-1} + g^2, \quad s_0 = \text{initial\_accumulator\_value} \\
        \theta &\leftarrow \theta - \frac{\eta}{1 + (t-1)\,\text{lr\_decay}}
            \frac{g}{\sqrt{s_t} + \epsilon}

    Reference: Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning
    and Stochastic Optimization", JMLR 2011. A complex parameter's sum starts at
    ``v + vj``, as in torch. Runs on torch's fused kernel (CPU and CUDA).

    Difference from torch: torch creates the state of every parameter in the
    constructor; descent creates it at a parameter's first update, like the other
    optimizers, so a parameter that never gets a gradient has no state. Results are the
    same. ``foreach``/``fused`` are accepted and ignored.
    """

    lr: float | Tensor = hyper(default=1e-2)
    lr_decay: float = hyper(default=0.0, check=check.non_negative,
                            doc="decay of the learning rate with the step count")
    weight_decay: float = hyper(default=0.0)
    initial_accumulator_value: float = hyper(default=0.0, check=check.non_negative,
                                             doc="starting value of the sum of squares")
    eps: float = hyper(default=1e-10)
    foreach: bool | None = hyper(default=None)
    maximize: bool = hyper(default=False, kw_only=True)
    differentiable: bool = hyper(default=False, kw_only=True)
    fused: bool | None = hyper(default=None, kw_only=True)

    keeps = (State("step", scalar=True, doc="steps taken"),
             State("sum", init=_initial_sum, uses=("initial_accumulator_value",),
                   non_negative=True,
                   doc="sum of squared gradients"))
    math = staticmethod(adagrad)
    fused_kernel = staticmethod(fused_adagrad)


__all__ = ["Adagrad", "adagrad"]
