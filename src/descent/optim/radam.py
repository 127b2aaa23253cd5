"""RAdam: Adam with a rectified adaptive learning rate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from . import _validate as check
from ._regularize import regularize
from .base import Optimizer, scalar_dtype


def radam(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, *, step: Any,
          lr: Any, beta1: float, beta2: float, eps: float, weight_decay: float = 0.0,
          decoupled_weight_decay: bool = False, maximize: bool = False) -> dict[str, Tensor]:
    r"""One RAdam step; returns the new ``param``, ``exp_avg`` and ``exp_avg_sq``.

    .. math::

        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2,
        \qquad \hat m = m / (1-\beta_1^t) \\
        \rho_\infty &= \frac{2}{1-\beta_2} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1-\beta_2^t} \\
        r_t &= \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}
        \\
        \theta &\leftarrow \theta - \eta r_t \hat m \frac{\sqrt{1-\beta_2^t}}{\sqrt v + \epsilon}
            \text{ if } \rho_t > 5, \text{ else } \theta - \eta\,\hat m
    """
    param, grad = regularize(param, grad, lr=lr, weight_decay=weight_decay,
                             decoupled=decoupled_weight_decay, maximize=maximize)
    exp_avg = torch.lerp(exp_avg, grad, 1 - beta1)
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    corrected_exp_avg = exp_avg / bias_correction1
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * beta2**step / bias_correction2
    if rho_t > 5.0:
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf
                / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        adaptive = bias_correction2**0.5 / (torch.sqrt(exp_avg_sq) + eps)
        param = param - corrected_exp_avg * lr * adaptive * rect
    else:
        param = param - corrected_exp_avg * lr
    return {"param": param, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


class RAdam(Optimizer):
    r"""RAdam (Liu et al. 2020): Adam whose adaptive step is switched on only once the
    variance of the adaptive learning rate is tractable, and rectified until then.

    .. math::

        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2 \\
        \rho_\infty &= 2/(1-\beta_2) - 1, \qquad
        \rho_t = \rho_\infty - 2t\beta_2^t/(1-\beta_2^t) \\
        \theta &\leftarrow \theta - \eta\, r_t \frac{m_t}{1-\beta_1^t}
            \frac{\sqrt{1-\beta_2^t}}{\sqrt{v_t} + \epsilon} \text{ if } \rho_t > 5,
            \text{ else } \theta - \eta \frac{m_t}{1-\beta_1^t}

    with the rectification :math:`r_t` of the paper's Algorithm 2. Reference: Liu et al.,
    "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020.

    Defaults (torch.optim.RAdam's): ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0, decoupled_weight_decay=False, maximize=False``. Differences from torch:
    none in results.
    """

    hyperparameters = {
        "lr": check.non_negative, "betas": check.betas, "eps": check.non_negative,
        "weight_decay": check.non_negative, "decoupled_weight_decay": check.flag,
        "foreach": check.FOREACH, "maximize": check.flag, "capturable": check.CAPTURABLE,
        "differentiable": check.DIFFERENTIABLE,
    }

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False) -> None:
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay, foreach=foreach,
            maximize=maximize, capturable=capturable, differentiable=differentiable))

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {"step": torch.zeros((), dtype=scalar_dtype()),
                "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format)}

    def _update(self, param: Tensor, grad: Tensor, state: Mapping[str, Any],
                group: Mapping[str, Any]) -> dict[str, Tensor]:
        beta1, beta2 = group["betas"]
        return radam(param, grad, state["exp_avg"], state["exp_avg_sq"],
                     step=float(state["step"]), lr=group["lr"], beta1=beta1, beta2=beta2,
                     eps=group["eps"], weight_decay=group["weight_decay"],
                     decoupled_weight_decay=group["decoupled_weight_decay"],
                     maximize=group["maximize"])


__all__ = ["RAdam", "radam"]
