"""Sign-based methods: signSGD, Signum and Lion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from . import _validate as check
from ._regularize import regularize
from .base import Optimizer


def sign_sgd(param: Tensor, grad: Tensor, momentum_buffer: Tensor | None = None, *, lr: Any,
             momentum: float = 0.0, weight_decay: float = 0.0,
             maximize: bool = False) -> dict[str, Tensor]:
    r"""One signSGD step, or Signum when ``momentum_buffer`` is given (zeros at first).

    .. math::

        m &\leftarrow \beta m + (1-\beta) g \quad\text{(Signum; } m = g \text{ for signSGD)} \\
        \theta &\leftarrow \theta(1 - \eta\lambda) - \eta\,\operatorname{sign}(m)
    """
    param, grad = regularize(param, grad, lr=lr, weight_decay=weight_decay, decoupled=True,
                             maximize=maximize)
    new: dict[str, Tensor] = {}
    direction = grad
    if momentum_buffer is not None:
        direction = new["momentum_buffer"] = torch.lerp(momentum_buffer, grad, 1 - momentum)
    new["param"] = param - lr * torch.sign(direction)
    return new


def lion(param: Tensor, grad: Tensor, exp_avg: Tensor, *, lr: Any, beta1: float, beta2: float,
         weight_decay: float = 0.0, maximize: bool = False) -> dict[str, Tensor]:
    r"""One Lion step; returns the new ``param`` and ``exp_avg``.

    .. math::

        c &= \beta_1 m + (1-\beta_1) g \\
        \theta &\leftarrow \theta - \eta\,(\operatorname{sign}(c) + \lambda\theta) \\
        m &\leftarrow \beta_2 m + (1-\beta_2) g
    """
    param, grad = regularize(param, grad, lr=lr, weight_decay=weight_decay, decoupled=True,
                             maximize=maximize)
    update = torch.sign(torch.lerp(exp_avg, grad, 1 - beta1))
    return {"param": param - lr * update, "exp_avg": torch.lerp(exp_avg, grad, 1 - beta2)}


class SignSGD(Optimizer):
    r"""signSGD, and Signum when ``momentum > 0`` (Bernstein et al. 2018).

    .. math::

        m_t &= \beta m_{t-1} + (1-\beta) g, \quad m_0 = 0
            \qquad (\text{signSGD: } m_t = g) \\
        \theta &\leftarrow \theta\,(1 - \eta\lambda) - \eta\,\operatorname{sign}(m_t)

    Reference: Bernstein, Wang, Azizzadenesheli & Anandkumar, "signSGD: Compressed
    Optimisation for Non-Convex Problems", ICML 2018 (Algorithm 1 is signSGD, Algorithm 3
    is Signum).

    Defaults: ``lr=1e-3, momentum=0, weight_decay=0, maximize=False``. Weight decay is
    decoupled (applied to the parameter, not mixed into the sign), so it keeps its size
    whatever the gradient's scale. torch.optim has no counterpart. Complex parameters are
    refused: the sign of a complex number is not the paper's sign.
    """

    hyperparameters = {
        "lr": check.non_negative, "momentum": check.unit_interval,
        "weight_decay": check.non_negative, "maximize": check.flag,
    }
    supports_complex = False
    scalar_state = frozenset()

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0.0,
                 weight_decay: float = 0.0, *, maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      maximize=maximize))

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        if group["momentum"] > 0:
            return {"momentum_buffer": torch.zeros_like(param,
                                                        memory_format=torch.preserve_format)}
        return {}

    def _update(self, param: Tensor, grad: Tensor, state: Mapping[str, Any],
                group: Mapping[str, Any]) -> dict[str, Tensor]:
        return sign_sgd(param, grad, state.get("momentum_buffer"), lr=group["lr"],
                        momentum=group["momentum"], weight_decay=group["weight_decay"],
                        maximize=group["maximize"])


class Lion(Optimizer):
    r"""Lion, EvoLved Sign Momentum (Chen et al. 2023).

    .. math::

        c_t &= \beta_1 m_{t-1} + (1-\beta_1) g \\
        \theta &\leftarrow \theta - \eta\,(\operatorname{sign}(c_t) + \lambda\theta) \\
        m_t &= \beta_2 m_{t-1} + (1-\beta_2) g, \quad m_0 = 0

    Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023,
    Algorithm 2. The update has the same size in every coordinate, so Lion wants a
    learning rate 3-10x smaller and a weight decay 3-10x larger than AdamW's.

    Defaults (the paper's): ``lr=1e-4, betas=(0.9, 0.99), weight_decay=0, maximize=False``.
    torch.optim has no counterpart. Complex parameters are refused.
    """

    hyperparameters = {
        "lr": check.non_negative, "betas": check.betas, "weight_decay": check.non_negative,
        "maximize": check.flag,
    }
    supports_complex = False
    scalar_state = frozenset()

    def __init__(self, params: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, maximize: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay,
                                      maximize=maximize))

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def _update(self, param: Tensor, grad: Tensor, state: Mapping[str, Any],
                group: Mapping[str, Any]) -> dict[str, Tensor]:
        beta1, beta2 = group["betas"]
        return lion(param, grad, state["exp_avg"], lr=group["lr"], beta1=beta1, beta2=beta2,
                    weight_decay=group["weight_decay"], maximize=group["maximize"])


__all__ = ["Lion", "SignSGD", "lion", "sign_sgd"]
