"""MARS: variance-reduced gradients (scaled stochastic recursive momentum) on AdamW."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _validate as check
from ._spec import State, hyper
from .base import Optimizer


def mars(
    param: Tensor,
    grad: Tensor,
    *,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    last_grad: Tensor,
    step: float,
    lr: Any,
    betas: tuple[Any, Any],
    gamma: float,
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    r"""One MARS-AdamW step on one tensor, in place (the approximate form).

    .. math::

        c &= g_t + \gamma\,\frac{\beta_1}{1-\beta_1}\,(g_t - g_{t-1}), \qquad
        \tilde c = c / \max(1, \lVert c\rVert) \\
        m &\leftarrow \beta_1 m + (1-\beta_1)\tilde c, \qquad
        v \leftarrow \beta_2 v + (1-\beta_2)\tilde c^2 \\
        \theta &\leftarrow \theta(1 - \eta\lambda) - \eta\,
            \frac{m/(1-\beta_1^t)}{\sqrt{v/(1-\beta_2^t)} + \epsilon}

    :math:`g_{t-1}` is the previous step's gradient (``last_grad``, 0 at first).
    """
    beta1, beta2 = betas
    if maximize:
        grad = -grad
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    correction = grad.sub(last_grad).mul_(gamma * beta1 / (1 - beta1)).add_(grad)
    correction.div_(torch.linalg.vector_norm(correction).clamp_min(1.0))
    exp_avg.lerp_(correction, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(correction, correction, value=1 - beta2)
    denom = exp_avg_sq.sqrt().div_((1 - beta2**step) ** 0.5).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
    last_grad.copy_(grad)


class MARS(Optimizer):
    r"""MARS-AdamW (Yuan et al. 2024): AdamW on a variance-reduced gradient.

    The gradient is corrected by the change since the last step (a scaled form of
    STORM's recursive momentum), clipped to norm 1 per tensor, then fed to AdamW:

    .. math::

        c_t &= g_t + \gamma\,\frac{\beta_1}{1-\beta_1}\,(g_t - g_{t-1}), \qquad
        \tilde c_t = \begin{cases} c_t / \lVert c_t\rVert & \lVert c_t\rVert > 1 \\
            c_t & \text{otherwise} \end{cases} \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\tilde c_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\tilde c_t^2, \quad
        \theta_{t+1} = \theta_t - \eta\Big(\frac{\hat m_t}{\sqrt{\hat v_t}+\epsilon}
            + \lambda\theta_t\Big)

    This is the paper's approximate MARS (MARS-approx): :math:`g_{t-1}` is the
    gradient of the previous step, on the previous batch. Reference: Yuan, Liu, Wu,
    Zhou & Gu, "MARS: Unleashing the Power of Variance Reduction for Training Large
    Models", ICML 2025 (Algorithm 2 with AdamW; defaults are the authors'). Every
    tensor takes the MARS step; the authors' code and ``pytorch-optimizer`` send 1-D
    tensors to plain AdamW unless ``optimize_1d=True`` (use a param group with its
    own options for that), and put :math:`\epsilon` before the
    :math:`\sqrt{1-\beta_2^t}` correction rather than after it as the paper does.

    Example::

        opt = descent.MARS(model, lr=3e-3, weight_decay=0.01)
    """

    lr: float | Tensor = hyper(default=3e-3)
    betas: tuple[float, float] = hyper(default=(0.95, 0.99))
    gamma: float = hyper(
        default=0.025,
        check=check.non_negative,
        doc=r"scale :math:`\gamma` of the gradient correction",
    )
    eps: float = hyper(default=1e-8)
    weight_decay: float = hyper(default=0.0, doc=r"decoupled weight decay :math:`\lambda`")
    maximize: bool = hyper(default=False, kw_only=True)

    keeps = (
        State("step", scalar=True, doc="steps taken"),
        State("exp_avg", doc="first moment m"),
        State("exp_avg_sq", doc="second moment v"),
        State("last_grad", doc="the previous step's gradient"),
    )
    math = staticmethod(mars)
    sharded_math = True  # its norms and means are DTensor reductions
    elementwise = False
    supports_complex = False
    decoupled_decay = True
    registry_name = "mars"


__all__ = ["MARS", "mars"]
