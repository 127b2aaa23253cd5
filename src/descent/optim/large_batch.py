"""Layer-wise adaptive rates for large batches: LARS and LAMB."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _validate as check
from ._spec import State, hyper
from .base import Optimizer


def trust_ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator``, or 1 where either is 0 (a 0-dim tensor, no sync)."""
    usable = (numerator > 0) & (denominator > 0)
    return torch.where(usable, numerator / denominator, torch.ones_like(numerator))


def lars(
    param: Tensor,
    grad: Tensor,
    *,
    momentum_buffer: Tensor | None,
    lr: Any,
    momentum: float,
    weight_decay: float,
    trust_coefficient: float,
    maximize: bool,
) -> None:
    r"""One LARS step on one tensor, in place.

    .. math::

        \lambda_{local} &= \eta_{trust}\, \frac{\lVert w\rVert}
            {\lVert g\rVert + \beta \lVert w\rVert} \quad (1 \text{ if a norm is } 0) \\
        v &\leftarrow m\, v + \gamma\, \lambda_{local}\, (g + \beta w), \qquad
        w \leftarrow w - v

    with :math:`\gamma` = ``lr``, :math:`\beta` = ``weight_decay``, :math:`m` =
    ``momentum`` (no buffer when 0).
    """
    if maximize:
        grad = -grad
    weight_norm = torch.linalg.vector_norm(param)
    local_lr = trust_ratio(
        trust_coefficient * weight_norm, torch.linalg.vector_norm(grad) + weight_decay * weight_norm
    )
    update = grad.add(param, alpha=weight_decay) if weight_decay != 0 else grad.clone()
    update.mul_(local_lr * lr)
    if momentum_buffer is not None:
        update = momentum_buffer.mul_(momentum).add_(update)
    param.sub_(update)


def lamb(
    param: Tensor,
    grad: Tensor,
    *,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: float,
    lr: Any,
    betas: tuple[Any, Any],
    eps: float,
    weight_decay: float,
    bias_correction: bool,
    maximize: bool,
) -> None:
    r"""One LAMB step on one tensor, in place.

    .. math::

        m &\leftarrow \beta_1 m + (1-\beta_1) g, \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2,
        \qquad r = \frac{\hat m}{\sqrt{\hat v} + \epsilon} + \lambda\theta \\
        \theta &\leftarrow \theta - \eta\, \frac{\lVert\theta\rVert}{\lVert r\rVert}\, r
            \quad (\text{ratio } 1 \text{ if a norm is } 0)

    with :math:`\hat m = m/(1-\beta_1^t)`, :math:`\hat v = v/(1-\beta_2^t)` when
    ``bias_correction`` (else :math:`m, v`).
    """
    beta1, beta2 = betas
    if maximize:
        grad = -grad
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    first, second = (1 - beta1**step, 1 - beta2**step) if bias_correction else (1.0, 1.0)
    update = exp_avg.div(first).div_(exp_avg_sq.div(second).sqrt_().add_(eps))
    if weight_decay != 0:
        update.add_(param, alpha=weight_decay)
    ratio = trust_ratio(torch.linalg.vector_norm(param), torch.linalg.vector_norm(update))
    param.sub_(update.mul_(ratio * lr))


class LARS(Optimizer):
    r"""LARS, layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017).

    Each tensor's step is scaled by the ratio of its weight norm to its gradient norm,
    so that every layer moves by about the same fraction of itself, whatever the batch:

    .. math::

        \lambda_{local} &= \eta_{trust}\, \lVert w\rVert / (\lVert g\rVert + \beta\lVert w\rVert)
        \\
        v_{t+1} &= m v_t + \gamma_t\, \lambda_{local}\, (g + \beta w_t), \qquad
        w_{t+1} = w_t - v_{t+1}

    Reference: You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks",
    2017 (Algorithm 1; the learning rate :math:`\gamma_t` is inside the momentum, as
    there, so a schedule changes only the new contributions; ``pytorch-optimizer``
    multiplies it outside, equal for a constant rate). The rate applies to every
    tensor, biases and norms included, as in the paper; ``pytorch-optimizer`` skips
    1-D tensors. Weight decay :math:`\beta` enters the trust ratio (coupled).

    Example::

        opt = descent.LARS(model, lr=0.1, momentum=0.9, weight_decay=5e-4)
    """

    lr: float | Tensor = hyper(default=1e-3, doc=r"global learning rate :math:`\gamma`")
    momentum: float = hyper(default=0.9)
    weight_decay: float = hyper(default=0.0, doc=r"weight decay :math:`\beta` (coupled)")
    trust_coefficient: float = hyper(
        default=1e-3, check=check.non_negative, doc=r"trust coefficient :math:`\eta_{trust}`"
    )
    maximize: bool = hyper(default=False, kw_only=True)

    keeps = (State("momentum_buffer", when="momentum", doc="momentum v (includes the lr)"),)
    math = staticmethod(lars)
    sharded_math = True  # its norms and means are DTensor reductions
    elementwise = False
    supports_complex = False
    registry_name = "lars"


class LAMB(Optimizer):
    r"""LAMB (You et al. 2020): Adam's step, scaled per tensor by a trust ratio.

    .. math::

        r_t &= \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon} + \lambda\theta_t, \qquad
        \theta_{t+1} = \theta_t - \eta\, \frac{\phi(\lVert\theta_t\rVert)}
            {\lVert r_t\rVert}\, r_t

    with Adam's moments and bias corrections and :math:`\phi` the identity.
    Reference: You, Li, Reddi, Hseu, Kumar, Bhojanapalli, Song, Demmel, Keutzer &
    Hsieh, "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
    ICLR 2020 (Algorithm 2; defaults are the paper's). ``bias_correction=False`` drops
    the corrections (as NVIDIA's and ``pytorch-optimizer``'s LAMB can). The decay
    enters the ratio; bitsandbytes' LAMB is a different rule (Adam with the update's
    norm capped at the weight's).

    Example::

        opt = descent.LAMB(model, lr=1e-3, weight_decay=0.01)
    """

    lr: float | Tensor = hyper(default=1e-3)
    betas: tuple[float, float] = hyper(default=(0.9, 0.999))
    eps: float = hyper(default=1e-6)
    weight_decay: float = hyper(
        default=0.01,
        doc=r"weight decay :math:`\lambda` (inside the "
        "trust ratio)",
    )
    bias_correction: bool = hyper(
        default=True, check=check.flag, doc="use Adam's bias-corrected moments"
    )
    maximize: bool = hyper(default=False, kw_only=True)

    keeps = (
        State("step", scalar=True, doc="steps taken"),
        State("exp_avg", doc="first moment m"),
        State("exp_avg_sq", doc="second moment v"),
    )
    math = staticmethod(lamb)
    sharded_math = True  # its norms and means are DTensor reductions
    elementwise = False
    supports_complex = False
    registry_name = "lamb"


__all__ = ["LAMB", "LARS", "lamb", "lars", "trust_ratio"]
