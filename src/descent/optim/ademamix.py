"""AdEMAMix: Adam with a second, slow momentum mixed into the numerator."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..engine import TensorList
from . import _validate as check
from ._regularize import regularize
from ._spec import State, hyper
from .base import Optimizer


def _three_betas(owner: str, name: str, value: Any) -> Any:
    if isinstance(value, Tensor) or not isinstance(value, tuple | list) or len(value) != 3:
        raise TypeError(
            f"{owner}: {name}={value!r} is invalid; expected three numbers (beta1, beta2, beta3)"
        )
    for index, beta in enumerate(value):
        check.unit_interval(owner, f"{name}[{index}]", beta)
    return tuple(value)


def _optional_steps(owner: str, name: str, value: Any) -> Any:
    if value is None:
        return value
    check.non_negative(owner, name, value)
    if value == 0:
        raise ValueError(
            f"{owner}: {name}={value!r} is invalid; expected a number of steps "
            "> 0, or None for no warm-up"
        )
    return value


def alpha_schedule(step: float, alpha: float, t_alpha: float | None) -> float:
    r""":math:`\alpha(t) = \min(t\alpha / T_\alpha,\ \alpha)` (:math:`\alpha` without warm-up)."""
    return alpha if t_alpha is None else min(step * alpha / t_alpha, alpha)


def beta3_schedule(step: float, beta1: float, beta3: float, t_beta3: float | None) -> float:
    r""":math:`\beta_3(t) = \min\Big(\exp\frac{\ln\beta_1 \ln\beta_3}
    {(1 - t/T)\ln\beta_3 + (t/T)\ln\beta_1},\ \beta_3\Big)`, the paper's warm-up, which
    makes the slow average's half-life grow linearly (:math:`\beta_3` without warm-up)."""
    if t_beta3 is None:
        return beta3
    fraction = step / t_beta3
    log_beta1, log_beta3 = math.log(beta1), math.log(beta3)
    return min(
        math.exp(log_beta1 * log_beta3 / ((1 - fraction) * log_beta3 + fraction * log_beta1)), beta3
    )


def ademamix(
    param: TensorList,
    grad: TensorList,
    *,
    exp_avg: TensorList,
    exp_avg_sq: TensorList,
    exp_avg_slow: TensorList,
    step: float,
    lr: Any,
    betas: tuple[Any, Any, Any],
    alpha: float,
    t_alpha: float | None,
    t_beta3: float | None,
    eps: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    r"""One AdEMAMix step, in place.

    .. math::

        m_1 &\leftarrow \beta_1 m_1 + (1-\beta_1) g, \qquad
        m_2 \leftarrow \beta_3(t) m_2 + (1-\beta_3(t)) g, \qquad
        \nu \leftarrow \beta_2 \nu + (1-\beta_2) g^2 \\
        \theta &\leftarrow \theta(1 - \eta\lambda) - \eta\,
            \frac{m_1/(1-\beta_1^t) + \alpha(t)\, m_2}{\sqrt{\nu/(1-\beta_2^t)} + \epsilon}
    """
    beta1, beta2, beta3 = betas
    grad = regularize(
        param, grad, lr=lr, weight_decay=weight_decay, decoupled=True, maximize=maximize
    )
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    exp_avg_slow.lerp_(grad, 1 - beta3_schedule(step, beta1, beta3, t_beta3))
    denom = exp_avg_sq.sqrt().div_((1 - beta2**step) ** 0.5).add_(eps)
    mixed = exp_avg.div(1 - beta1**step).add_(
        exp_avg_slow, alpha=alpha_schedule(step, alpha, t_alpha)
    )
    param.addcdiv_(mixed, denom, value=-lr)


class AdEMAMix(Optimizer):
    r"""AdEMAMix (Pagliardini, Ablin & Grangier 2024): Adam plus a slow momentum.

    A single exponential average cannot both react to the last gradients and remember
    old ones; AdEMAMix adds a second, slow average (:math:`\beta_3 \approx 0.9999`) to
    Adam's numerator:

    .. math::

        m_1 &= \beta_1 m_1 + (1-\beta_1) g, \quad m_2 = \beta_3 m_2 + (1-\beta_3) g, \quad
        \nu = \beta_2 \nu + (1-\beta_2) g^2 \\
        \theta &\leftarrow \theta - \eta\left(\frac{\hat m_1 + \alpha\, m_2}
            {\sqrt{\hat\nu} + \epsilon} + \lambda\theta\right)

    with Adam's bias corrections :math:`\hat m_1, \hat\nu` (none for :math:`m_2`) and
    optional warm-ups of :math:`\alpha` (linear over ``t_alpha`` steps) and
    :math:`\beta_3` (over ``t_beta3`` steps); the paper warms both up over the whole run
    for large :math:`\beta_3`. Reference: Pagliardini, Ablin & Grangier, "The AdEMAMix
    Optimizer: Better, Faster, Older", ICLR 2025 (Algorithm 1; defaults are the
    paper's). Weight decay is decoupled, as in the paper (``pytorch-optimizer``'s
    AdEMAMix adds it to the gradient unless ``weight_decouple=True``).

    Example::

        opt = descent.AdEMAMix(model, lr=1e-3, t_alpha=10_000, t_beta3=10_000)
    """

    lr: float | Tensor = hyper(default=1e-3)
    betas: tuple[float, float, float] = hyper(
        default=(0.9, 0.999, 0.9999),
        check=_three_betas,
        doc=r"decay rates :math:`(\beta_1, \beta_2, \beta_3)` of the fast, second and slow "
        "moments",
    )
    alpha: float = hyper(
        default=5.0, check=check.non_negative, doc=r"weight :math:`\alpha` of the slow momentum"
    )
    t_alpha: float | None = hyper(
        default=None, check=_optional_steps, doc=r"warm-up steps of :math:`\alpha` (None: none)"
    )
    t_beta3: float | None = hyper(
        default=None, check=_optional_steps, doc=r"warm-up steps of :math:`\beta_3` (None: none)"
    )
    eps: float = hyper(default=1e-8)
    weight_decay: float = hyper(default=0.0, doc=r"decoupled weight decay :math:`\lambda`")
    maximize: bool = hyper(default=False, kw_only=True)

    keeps = (
        State("step", scalar=True, doc="steps taken"),
        State("exp_avg", doc=r"fast momentum :math:`m_1`"),
        State("exp_avg_sq", non_negative=True, doc=r"second moment :math:`\nu`"),
        State("exp_avg_slow", doc=r"slow momentum :math:`m_2`"),
    )
    math = staticmethod(ademamix)
    decoupled_decay = True

    @classmethod
    def _check_options(cls, group: Mapping[str, Any], where: str) -> None:
        beta1, _, beta3 = group["betas"]
        if group["t_beta3"] is not None and (float(beta1) == 0 or float(beta3) == 0):
            raise ValueError(
                f"AdEMAMix: {where}t_beta3={group['t_beta3']!r} needs beta1 > 0 "
                f"and beta3 > 0 (their logarithms), got betas={group['betas']!r}"
            )


__all__ = ["AdEMAMix", "ademamix", "alpha_schedule", "beta3_schedule"]
