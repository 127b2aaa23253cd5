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


def adagrad(
    param: TensorList,
    grad: TensorList,
    *,
    sum: TensorList,
    step: float,
    lr: Any,
    lr_decay: float,
    weight_decay: float,
    eps: float,
    maximize: bool,
) -> None:
    r"""One Adagrad step, in place.

    .. math::

        g &\leftarrow \pm g + \lambda\theta, \qquad
        \tilde\eta = \eta / (1 + (t-1)\,\delta) \\
        s &\leftarrow s + g^2, \qquad
        \theta \leftarrow \theta - \tilde\eta\, g / (\sqrt{s} + \epsilon)
    """
    decayed_lr = lr / (1 + (step - 1) * lr_decay)
    if grad.is_sparse:
        _sparse_adagrad(
            param,
            grad,
            sum=sum,
            decayed_lr=decayed_lr,
            weight_decay=weight_decay,
            eps=eps,
            maximize=maximize,
        )
        return
    grad = regularize(param, grad, lr=lr, weight_decay=weight_decay, maximize=maximize)
    sum.addcmul_(grad, grad, value=1)
    std = sum.sqrt().add_(eps)
    param.addcdiv_(grad, std, value=-decayed_lr)


def _sparse_adagrad(
    param: TensorList,
    grad: TensorList,
    *,
    sum: TensorList,
    decayed_lr: Any,
    weight_decay: float,
    eps: float,
    maximize: bool,
) -> None:
    """Adagrad's step for one parameter with a sparse gradient: only the entries the
    gradient holds change (torch.optim's sparse path)."""
    if weight_decay != 0:
        raise RuntimeError(
            "Adagrad: weight_decay is not compatible with sparse gradients "
            "(it would make the gradient dense); use weight_decay=0 or dense "
            "gradients"
        )
    (sparse,) = grad.tensors
    if maximize:
        sparse = -sparse
    sparse = sparse.coalesce()  # the update is not linear: each index once
    values = sparse._values()
    sum.add_(TensorList([_sparse_like(sparse, values.pow(2))]))
    std = sum.tensors[0].sparse_mask(sparse)._values().sqrt_().add_(eps)
    param.add_(TensorList([_sparse_like(sparse, values / std)]), alpha=-decayed_lr)


def _sparse_like(sparse: Tensor, values: Tensor) -> Tensor:
    """A sparse tensor with ``sparse``'s (coalesced, hence valid) indices and ``values``."""
    return torch.sparse_coo_tensor(sparse._indices(), values, sparse.size(), check_invariants=False)


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
    ``v + vj``, as in torch. Runs on torch's fused kernel (CPU and CUDA). Sparse
    gradients (``nn.Embedding(sparse=True)``) are accepted, as in torch, and update only
    the entries they hold, one parameter at a time (without weight decay, which would
    make them dense).

    Difference from torch: torch creates the state of every parameter in the
    constructor; descent creates it at a parameter's first update, like the other
    optimizers, so a parameter that never gets a gradient has no state. Results are the
    same. ``foreach``/``fused`` are accepted and ignored.
    """

    lr: float | Tensor = hyper(default=1e-2)
    lr_decay: float = hyper(
        default=0.0, check=check.non_negative, doc="decay of the learning rate with the step count"
    )
    weight_decay: float = hyper(default=0.0)
    initial_accumulator_value: float = hyper(
        default=0.0, check=check.non_negative, doc="starting value of the sum of squares"
    )
    eps: float = hyper(default=1e-10)
    foreach: bool | None = hyper(default=None)
    maximize: bool = hyper(default=False, kw_only=True)
    differentiable: bool = hyper(default=False, kw_only=True)
    fused: bool | None = hyper(default=None, kw_only=True)

    keeps = (
        State("step", scalar=True, doc="steps taken"),
        State(
            "sum",
            init=_initial_sum,
            uses=("initial_accumulator_value",),
            non_negative=True,
            doc="sum of squared gradients",
        ),
    )
    math = staticmethod(adagrad)
    fused_kernel = staticmethod(fused_adagrad)
    supports_sparse = True

    def _check_gradients(self) -> None:
        """A sparse gradient in a group with weight decay raises a ``RuntimeError``, as in
        torch, before any parameter changes."""
        for group_index, group in enumerate(self.param_groups):
            if group["weight_decay"] == 0:
                continue
            for index, param in enumerate(group["params"]):
                if param.grad is not None and param.grad.layout != torch.strided:
                    raise RuntimeError(
                        f"{self.describe_param(group_index, index)} has a sparse gradient and "
                        f"its group has weight_decay={group['weight_decay']!r}; weight decay "
                        "is not compatible with sparse gradients (it would make the gradient "
                        "dense): use weight_decay=0 for this group"
                    )


__all__ = ["Adagrad", "adagrad"]
