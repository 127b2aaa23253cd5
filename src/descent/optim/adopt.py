"""ADOPT: Adam whose gradient is normalised by the second moment of the steps before."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..engine import TensorList
from . import _validate as check
from ._spec import State, hyper
from .base import Optimizer


def _optional_non_negative(owner: str, name: str, value: Any) -> Any:
    return value if value is None else check.non_negative(owner, name, value)


def adopt(
    param: TensorList,
    grad: TensorList,
    *,
    exp_avg: TensorList,
    exp_avg_sq: TensorList,
    step: float,
    lr: Any,
    betas: tuple[Any, Any],
    eps: float,
    clip_exponent: float | None,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
) -> None:
    r"""One ADOPT step, in place (the first only sets :math:`v_0 = g_0^2`).

    .. math::

        v_0 &= g_0^2 \quad\text{(step 1: the parameter does not move)} \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\,
            \operatorname{clip}\!\Big(\frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)},\ t^{p}\Big) \\
        \theta_t &= \theta_{t-1} - \eta\, m_t \qquad
            (\theta \leftarrow \theta(1 - \eta\lambda) \text{ first if decoupled}) \\
        v_t &= \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2

    with :math:`t` counting the updates after the first step (``step - 1``) and
    :math:`p` = ``clip_exponent`` (no clipping when None). Coupled decay adds
    :math:`\lambda\theta` to :math:`g` (on every step, the first included).
    """
    beta1, beta2 = betas
    if maximize:
        grad = -grad
    if weight_decay != 0 and not decoupled_weight_decay:
        grad = grad.add(param, alpha=weight_decay)
    if step == 1:
        exp_avg_sq.addcmul_(grad, grad)
        return
    if weight_decay != 0 and decoupled_weight_decay:
        param.mul_(1 - lr * weight_decay)
    normalised = grad.div(exp_avg_sq.sqrt().clamp_min_(eps))
    if clip_exponent is not None:
        clip = (step - 1) ** clip_exponent
        normalised.clamp_min_(-clip).clamp_max_(clip)
    exp_avg.lerp_(normalised, 1 - beta1)
    param.add_(exp_avg, alpha=-lr)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)


class ADOPT(Optimizer):
    r"""ADOPT (Taniguchi et al. 2024): Adam that converges for any :math:`\beta_2`.

    Adam's update can diverge because :math:`v_t` depends on the current gradient.
    ADOPT normalises the gradient by the second moment of the *previous* steps, then
    takes the momentum of the normalised gradient:

    .. math::

        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\,
            \operatorname{clip}\big(g_t / \max(\sqrt{v_{t-1}}, \epsilon),\ t^{1/4}\big) \\
        \theta_t &= \theta_{t-1} - \eta\, m_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2, \qquad v_0 = g_0^2

    The first step only initialises :math:`v_0` (the parameters do not move).
    Reference: Taniguchi, Harada, Minegishi, Oshima, Jeong, Nagahara, Iiyama, Suzuki,
    Iwasawa & Matsuo, "ADOPT: Modified Adam Can Converge with Any :math:`\beta_2` with
    the Optimal Rate", NeurIPS 2024 (Algorithm 2, with the clipping
    :math:`c_t = t^{1/4}` of the authors' code). Defaults are the paper's.

    Differences from the authors' ``torch-adopt`` package: its ``decouple`` flag is
    ``decoupled_weight_decay`` here, and its ``clip_lambda`` function is the exponent
    ``clip_exponent`` (``None``: no clipping), so the state dict holds no code.

    Example::

        opt = descent.ADOPT(model, lr=1e-3)
    """

    lr: float | Tensor = hyper(default=1e-3)
    betas: tuple[float, float] = hyper(default=(0.9, 0.9999))
    eps: float = hyper(default=1e-6, doc=r"floor :math:`\epsilon` of :math:`\sqrt{v}`")
    clip_exponent: float | None = hyper(
        default=0.25,
        check=_optional_non_negative,
        doc=r"clip the normalised gradient to :math:`\pm t^{p}` (None: no clipping)",
    )
    weight_decay: float = hyper(default=0.0)
    decoupled_weight_decay: bool = hyper(default=False)
    maximize: bool = hyper(default=False, kw_only=True)

    keeps = (
        State("step", scalar=True, doc="steps taken"),
        State("exp_avg", doc="momentum m of the normalised gradient"),
        State("exp_avg_sq", non_negative=True, doc="second moment v"),
    )
    math = staticmethod(adopt)
    registry_name = "adopt"


__all__ = ["ADOPT", "adopt"]
