"""NAdam: Adam with Nesterov momentum."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from . import _validate as check
from ._regularize import regularize
from .base import Optimizer, scalar_dtype


def nadam(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, mu_product: Tensor,
          *, step: Any, lr: Any, beta1: float, beta2: float, eps: float,
          weight_decay: float = 0.0, momentum_decay: float = 4e-3,
          decoupled_weight_decay: bool = False, maximize: bool = False) -> dict[str, Tensor]:
    r"""One NAdam step; returns the new ``param``, moments and ``mu_product``.

    .. math::

        \mu_t &= \beta_1\,(1 - \tfrac12\, 0.96^{t\psi}), \qquad
        \mu_{t+1} = \beta_1\,(1 - \tfrac12\, 0.96^{(t+1)\psi}), \qquad
        \Pi_t = \Pi_{t-1}\,\mu_t \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2,
        \qquad s = \sqrt{v / (1-\beta_2^t)} + \epsilon \\
        \theta &\leftarrow \theta - \eta\frac{1-\mu_t}{1-\Pi_t}\frac{g}{s}
            - \eta\frac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}}\frac{m}{s}

    ``mu_product`` (:math:`\Pi`) is a 0-dim tensor kept in the state's scalar dtype, as
    torch.optim keeps it; its product is rounded in that dtype.
    """
    param, grad = regularize(param, grad, lr=lr, weight_decay=weight_decay,
                             decoupled=decoupled_weight_decay, maximize=maximize)
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))
    mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * momentum_decay))
    mu_product = mu_product * mu
    product = mu_product.to(torch.float64)
    exp_avg = torch.lerp(exp_avg, grad, 1 - beta1)
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    denom = torch.sqrt(exp_avg_sq / (1 - beta2**step)) + eps
    param = (param - (lr * (1.0 - mu) / (1.0 - product)) * grad / denom
             - (lr * mu_next / (1.0 - product * mu_next)) * exp_avg / denom)
    return {"param": param, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq,
            "mu_product": mu_product}


class NAdam(Optimizer):
    r"""NAdam (Dozat 2016): Adam with Nesterov momentum and a momentum-decay schedule.

    .. math::

        g &\leftarrow g + \lambda\theta \text{ (or } \theta \leftarrow \theta(1-\eta\lambda)
            \text{ if decoupled)} \\
        \mu_t &= \beta_1(1 - \tfrac12 0.96^{t\psi}), \qquad \Pi_t = \prod_{i\le t}\mu_i \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2 \\
        \theta &\leftarrow \theta - \eta\left[\frac{1-\mu_t}{1-\Pi_t} g
            + \frac{\mu_{t+1}}{1-\Pi_{t+1}} m_t\right] \Big/
            \left(\sqrt{v_t/(1-\beta_2^t)} + \epsilon\right)

    with :math:`\psi` = ``momentum_decay``. Reference: Dozat, "Incorporating Nesterov
    Momentum into Adam", ICLR 2016 workshop.

    Defaults (torch.optim.NAdam's): ``lr=2e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0, momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False``.
    Differences from torch: none in results.
    """

    hyperparameters = {
        "lr": check.non_negative, "betas": check.betas, "eps": check.non_negative,
        "weight_decay": check.non_negative, "momentum_decay": check.non_negative,
        "decoupled_weight_decay": check.flag, "foreach": check.FOREACH,
        "maximize": check.flag, "capturable": check.CAPTURABLE,
        "differentiable": check.DIFFERENTIABLE,
    }
    scalar_state = frozenset({"step", "mu_product"})

    def __init__(self, params: Any, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False) -> None:
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
            foreach=foreach, maximize=maximize, capturable=capturable,
            differentiable=differentiable))

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"step": torch.zeros((), dtype=scalar_dtype()),
                "mu_product": torch.ones((), dtype=scalar_dtype()),
                "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def _update(self, param: Tensor, grad: Tensor, state: Mapping[str, Any],
                group: Mapping[str, Any]) -> dict[str, Tensor]:
        beta1, beta2 = group["betas"]
        return nadam(param, grad, state["exp_avg"], state["exp_avg_sq"], state["mu_product"],
                     step=float(state["step"]), lr=group["lr"], beta1=beta1, beta2=beta2,
                     eps=group["eps"], weight_decay=group["weight_decay"],
                     momentum_decay=group["momentum_decay"],
                     decoupled_weight_decay=group["decoupled_weight_decay"],
                     maximize=group["maximize"])


__all__ = ["NAdam", "nadam"]
