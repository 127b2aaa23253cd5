"""Adam and AdamW."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from . import _validate as check
from ._regularize import regularize
from .base import Optimizer, scalar_dtype


def adam(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor,
         max_exp_avg_sq: Tensor | None = None, *, step: Any, lr: Any, beta1: float,
         beta2: float, eps: float, weight_decay: float = 0.0,
         decoupled_weight_decay: bool = False, maximize: bool = False) -> dict[str, Tensor]:
    r"""One Adam step (AMSGrad when ``max_exp_avg_sq`` is given); returns the new tensors.

    .. math::

        g &\leftarrow \pm g + \lambda\theta \quad\text{(coupled decay) or }
            \theta \leftarrow \theta(1 - \eta\lambda) \text{ (decoupled)} \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g \\
        v &\leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        \hat v &\leftarrow \max(\hat v, v) \text{ (AMSGrad), else } \hat v = v \\
        \theta &\leftarrow \theta - \frac{\eta}{1-\beta_1^t}\,
            \frac{m}{\sqrt{\hat v}/\sqrt{1-\beta_2^t} + \epsilon}

    ``step`` is t, counting this step (1 on the first).
    """
    param, grad = regularize(param, grad, lr=lr, weight_decay=weight_decay,
                             decoupled=decoupled_weight_decay, maximize=maximize)
    exp_avg = torch.lerp(exp_avg, grad, 1 - beta1)
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    new = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    second_moment = exp_avg_sq
    if max_exp_avg_sq is not None:
        second_moment = new["max_exp_avg_sq"] = torch.maximum(max_exp_avg_sq, exp_avg_sq)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    denom = torch.sqrt(second_moment) / bias_correction2**0.5 + eps
    new["param"] = param - (lr / bias_correction1) * exp_avg / denom
    return new


class Adam(Optimizer):
    r"""Adam (Kingma & Ba 2015), with AMSGrad (Reddi et al. 2018) and coupled weight decay.

    Update rule, for gradient :math:`g`, step :math:`t` (1 on the first update):

    .. math::

        g &\leftarrow g + \lambda\theta \qquad (-g \text{ first if maximize}) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2 \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \text{ if amsgrad, else } v_t \\
        \theta &\leftarrow \theta - \frac{\eta}{1-\beta_1^t}
            \frac{m_t}{\sqrt{\hat v_t / (1-\beta_2^t)} + \epsilon}

    References: Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015
    (Algorithm 1, with epsilon outside the bias-corrected root as in torch.optim);
    Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", ICLR 2018 (AMSGrad).

    Defaults (torch.optim.Adam's): ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0, amsgrad=False, maximize=False, decoupled_weight_decay=False``.
    With ``decoupled_weight_decay=True`` this is :class:`AdamW`.

    Differences from torch: none in results. ``foreach`` and ``fused`` are accepted and
    ignored (descent's engine chooses how the update runs); ``capturable=True`` and
    ``differentiable=True`` are refused (see :mod:`descent.functional`).

    Example::

        opt = descent.Adam(model.parameters(), lr=3e-4)
    """

    hyperparameters = {
        "lr": check.non_negative, "betas": check.betas, "eps": check.non_negative,
        "weight_decay": check.non_negative, "amsgrad": check.flag, "maximize": check.flag,
        "foreach": check.FOREACH, "capturable": check.CAPTURABLE,
        "differentiable": check.DIFFERENTIABLE, "fused": check.FUSED,
        "decoupled_weight_decay": check.flag,
    }

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False) -> None:
        super().__init__(params, dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize, foreach=foreach, capturable=capturable,
            differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay))

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = {
            "step": torch.zeros((), dtype=scalar_dtype()),
            "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
        }
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state

    def _update(self, param: Tensor, grad: Tensor, state: Mapping[str, Any],
                group: Mapping[str, Any]) -> dict[str, Tensor]:
        beta1, beta2 = group["betas"]
        return adam(param, grad, state["exp_avg"], state["exp_avg_sq"],
                    state.get("max_exp_avg_sq"), step=float(state["step"]), lr=group["lr"],
                    beta1=beta1, beta2=beta2, eps=group["eps"],
                    weight_decay=group["weight_decay"],
                    decoupled_weight_decay=group["decoupled_weight_decay"],
                    maximize=group["maximize"])


class AdamW(Adam):
    r"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter 2019).

    The decay shrinks the parameter directly instead of entering the gradient:

    .. math::

        \theta &\leftarrow \theta\,(1 - \eta\lambda) \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2 \\
        \theta &\leftarrow \theta - \frac{\eta}{1-\beta_1^t}
            \frac{m_t}{\sqrt{\hat v_t / (1-\beta_2^t)} + \epsilon}

    Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.

    Defaults (torch.optim.AdamW's): ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=1e-2, amsgrad=False, maximize=False``. Differences from torch: as
    :class:`Adam`.
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)


__all__ = ["Adam", "AdamW", "adam"]
