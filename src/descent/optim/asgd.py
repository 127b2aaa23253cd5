"""ASGD: averaged stochastic gradient descent."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..engine import TensorList
from . import _validate as check
from ._regularize import regularize
from ._spec import State, hyper
from .base import Optimizer


def asgd(
    param: TensorList,
    grad: TensorList,
    *,
    ax: TensorList,
    eta: Tensor,
    mu: Tensor,
    step: float,
    lr: Any,
    lambd: float,
    alpha: float,
    t0: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    r"""One ASGD step, in place (``eta`` and ``mu``, 0-dim tensors, too).

    .. math::

        g &\leftarrow \pm g + \lambda_{wd}\theta \\
        \theta &\leftarrow (1 - \lambda\eta_t)\,\theta - \eta_t\, g \\
        \bar\theta &\leftarrow \bar\theta + \mu_t(\theta - \bar\theta)
            \quad (\bar\theta \leftarrow \theta \text{ while } \mu_t = 1) \\
        \eta_{t+1} &= \frac{\eta}{(1 + \lambda\eta t)^{\alpha}}, \qquad
        \mu_{t+1} = \frac{1}{\max(1, t - t_0)}

    ``ax`` is :math:`\bar\theta`. :math:`\eta_1` is the learning rate at the first step
    (``eta`` is set to it then); ``eta`` and ``mu`` are kept in the state's scalar dtype
    and read back as numbers, as torch.optim does.
    """
    if step == 1:
        eta.fill_(lr)
    grad = regularize(param, grad, lr=lr, weight_decay=weight_decay, maximize=maximize)
    eta_t = float(eta)
    param.mul_(1 - lambd * eta_t).add_(grad, alpha=-eta_t)
    mu_t = float(mu)
    if mu_t != 1:
        ax.add_(param.sub(ax).mul_(mu_t))
    else:
        ax.copy_(param)
    eta.fill_(lr / (1 + lambd * lr * step) ** alpha)
    mu.fill_(1 / max(1, step - t0))


class ASGD(Optimizer):
    r"""Averaged SGD (Polyak & Juditsky 1992) with the decreasing step sizes of Bottou 2012.

    .. math::

        g &\leftarrow g + \lambda_{wd}\theta \qquad (-g \text{ first if maximize}) \\
        \theta_t &= (1 - \lambda\eta_t)\,\theta_{t-1} - \eta_t\, g \\
        \bar\theta_t &= \bar\theta_{t-1} + \mu_t(\theta_t - \bar\theta_{t-1}) \\
        \eta_{t+1} &= \eta / (1 + \lambda\eta t)^{\alpha}, \qquad
        \mu_{t+1} = 1 / \max(1, t - t_0)

    The parameters follow SGD; the average :math:`\bar\theta` (``state[p]["ax"]``)
    starts after ``t0`` steps and is what the method returns: copy it into the
    parameters for evaluation. References: Polyak & Juditsky, "Acceleration of
    Stochastic Approximation by Averaging", SIAM J. Control Optim. 1992; Bottou,
    "Stochastic Gradient Descent Tricks", Neural Networks: Tricks of the Trade, 2012.
    Complex parameters are updated as pairs of reals, as in torch.

    Differences from torch: none in results. ``lambd`` must be >= 0, ``alpha`` finite
    and ``t0`` not NaN (torch does not check them). ``foreach`` is accepted and ignored;
    ``capturable=True`` and ``differentiable=True`` are refused.

    Example::

        opt = descent.ASGD(model.parameters(), lr=0.01, t0=1000)
    """

    lr: float | Tensor = hyper(default=1e-2, doc=r"learning rate :math:`\eta`")
    lambd: float = hyper(
        default=1e-4,
        check=check.non_negative,
        doc=r"decay term :math:`\lambda` of the step size and parameters",
    )
    alpha: float = hyper(
        default=0.75, check=check.finite, doc=r"power :math:`\alpha` of the step-size decay"
    )
    t0: float = hyper(
        default=1e6, check=check.not_nan, doc="step after which averaging starts (inf: never)"
    )
    weight_decay: float = hyper(default=0.0, doc=r"weight decay :math:`\lambda_{wd}`")
    foreach: bool | None = hyper(default=None)
    maximize: bool = hyper(default=False)
    differentiable: bool = hyper(default=False)
    capturable: bool = hyper(default=False)

    keeps = (
        State("step", scalar=True, doc="steps taken"),
        State("eta", scalar=True, doc=r"step size :math:`\eta_t`"),
        State("mu", scalar=True, init=1.0, doc=r"averaging weight :math:`\mu_t`"),
        State("ax", doc=r"average :math:`\bar\theta` of the iterates"),
    )
    math = staticmethod(asgd)


__all__ = ["ASGD", "asgd"]
