"""StableAdamW: AdamW with AdaFactor's update clipping, per tensor."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ._spec import State, hyper
from .base import Optimizer


def stable_adamw(
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
    maximize: bool,
) -> None:
    r"""One StableAdamW step on one tensor, in place.

    .. math::

        \hat\beta_i &= \beta_i\,\frac{1 - \beta_i^{t-1}}{1 - \beta_i^t}, \qquad
        m \leftarrow \hat\beta_1 m + (1-\hat\beta_1) g, \qquad
        v \leftarrow \hat\beta_2 v + (1-\hat\beta_2) g^2 \\
        \mathrm{RMS} &= \sqrt{\operatorname{mean}\big(g^2 / \max(v, \epsilon^2)\big)}, \qquad
        \eta_t = \eta / \max(1, \mathrm{RMS}) \\
        \theta &\leftarrow \theta(1 - \eta_t\lambda) - \eta_t\, m / (\sqrt v + \epsilon)
    """
    beta1, beta2 = betas
    if maximize:
        grad = -grad
    beta1_hat = beta1 * (1 - beta1 ** (step - 1)) / (1 - beta1**step)
    beta2_hat = beta2 * (1 - beta2 ** (step - 1)) / (1 - beta2**step)
    exp_avg.lerp_(grad, 1 - beta1_hat)
    exp_avg_sq.mul_(beta2_hat).addcmul_(grad, grad, value=1 - beta2_hat)
    rms = grad.pow(2).div_(exp_avg_sq.clip(min=eps**2)).mean().sqrt().clip(min=1.0)
    lr_t = lr / rms
    if weight_decay != 0:
        param.mul_(1 - weight_decay * lr_t)
    param.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(eps).div_(-lr_t))


class StableAdamW(Optimizer):
    r"""StableAdamW (Wortsman et al. 2023): AdamW whose step shrinks when the gradient
    outruns its second moment, as AdaFactor clips its updates.

    .. math::

        m_t &= \hat\beta_1 m_{t-1} + (1-\hat\beta_1) g_t, \qquad
        v_t = \hat\beta_2 v_{t-1} + (1-\hat\beta_2) g_t^2, \qquad
        \hat\beta_i = \beta_i \frac{1-\beta_i^{t-1}}{1-\beta_i^t} \\
        \eta_t &= \eta \big/ \max\Big(1, \sqrt{\operatorname{mean}\big(g_t^2 /
            \max(v_t, \epsilon^2)\big)}\Big) \quad\text{(per tensor)} \\
        \theta_t &= \theta_{t-1} - \eta_t\lambda\theta_{t-1}
            - \eta_t\, m_t / (\sqrt{v_t} + \epsilon)

    The decay rates :math:`\hat\beta_i` make :math:`m, v` bias-free averages, so no
    other correction is applied. Reference: Wortsman, Dettmers, Zettlemoyer, Morcos,
    Farhadi & Schmidt, "Stable and low-precision training for large-scale
    vision-language models", NeurIPS 2023 (Algorithm 2). Defaults are the paper's.
    The clipping makes the rule per tensor (it does not run on lists of tensors).

    Example::

        opt = descent.StableAdamW(model, lr=1e-3, weight_decay=0.1)
    """

    lr: float | Tensor = hyper(default=1e-3)
    betas: tuple[float, float] = hyper(default=(0.9, 0.99))
    eps: float = hyper(default=1e-6)
    weight_decay: float = hyper(
        default=1e-2,
        doc=r"decoupled weight decay :math:`\lambda` "
        r"(scaled by :math:`\eta_t`)",
    )
    maximize: bool = hyper(default=False, kw_only=True)

    keeps = (
        State("step", scalar=True, doc="steps taken"),
        State("exp_avg", doc="first moment m"),
        State("exp_avg_sq", doc="second moment v"),
    )
    math = staticmethod(stable_adamw)
    sharded_math = True  # its norms and means are DTensor reductions
    elementwise = False
    registry_name = "stable_adamw"
    supports_complex = False


__all__ = ["StableAdamW", "stable_adamw"]
