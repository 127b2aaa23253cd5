"""Adamax: Adam with the infinity norm."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from . import _validate as check
from ._regularize import regularize
from .base import Optimizer, scalar_dtype


def adamax(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_inf: Tensor, *, step: Any,
           lr: Any, beta1: float, beta2: float, eps: float, weight_decay: float = 0.0,
           maximize: bool = False) -> dict[str, Tensor]:
    r"""One Adamax step; returns the new ``param``, ``exp_avg`` and ``exp_inf``.

    .. math::

        g &\leftarrow \pm g + \lambda\theta \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad
        u \leftarrow \max(\beta_2 u, |g| + \epsilon) \\
        \theta &\leftarrow \theta - \frac{\eta}{1-\beta_1^t} \frac{m}{u}
    """
    param, grad = regularize(param, grad, lr=lr, weight_decay=weight_decay,
                             maximize=maximize)
    exp_avg = torch.lerp(exp_avg, grad, 1 - beta1)
    exp_inf = torch.maximum(beta2 * exp_inf, torch.abs(grad) + eps)
    step_size = lr / (1 - beta1**step)
    return {"exp_avg": exp_avg, "exp_inf": exp_inf, "param": param - step_size * exp_avg / exp_inf}


class Adamax(Optimizer):
    r"""Adamax (Kingma & Ba 2015, section 7.1): Adam's second moment replaced by an
    exponentially weighted infinity norm.

    .. math::

        g &\leftarrow g + \lambda\theta \qquad (-g \text{ first if maximize}) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g, \qquad
        u_t = \max(\beta_2 u_{t-1}, |g| + \epsilon) \\
        \theta &\leftarrow \theta - \frac{\eta}{1-\beta_1^t}\frac{m_t}{u_t}

    Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015,
    Algorithm 2 (epsilon inside the max, as in torch.optim).

    Defaults (torch.optim.Adamax's): ``lr=2e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0, maximize=False``. Differences from torch: none in results.
    """

    hyperparameters = {
        "lr": check.non_negative, "betas": check.betas, "eps": check.non_negative,
        "weight_decay": check.non_negative, "foreach": check.FOREACH, "maximize": check.flag,
        "differentiable": check.DIFFERENTIABLE, "capturable": check.CAPTURABLE,
    }

    def __init__(self, params: Any, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False,
                 capturable: bool = False) -> None:
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=foreach,
            maximize=maximize, differentiable=differentiable, capturable=capturable))

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"step": torch.zeros((), dtype=scalar_dtype()),
                "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                "exp_inf": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def _update(self, param: Tensor, grad: Tensor, state: Mapping[str, Any],
                group: Mapping[str, Any]) -> dict[str, Tensor]:
        beta1, beta2 = group["betas"]
        return adamax(param, grad, state["exp_avg"], state["exp_inf"],
                      step=float(state["step"]), lr=group["lr"], beta1=beta1, beta2=beta2,
                      eps=group["eps"], weight_decay=group["weight_decay"],
                      maximize=group["maximize"])


__all__ = ["Adamax", "adamax"]
