"""Sign-based methods: signSGD, Signum and Lion."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..engine import TensorList
from . import _validate as check
from ._regularize import regularize
from ._spec import State, hyper
from .base import Optimizer


def sign_sgd(
    param: TensorList,
    grad: TensorList,
    *,
    momentum_buffer: TensorList | None,
    lr: Any,
    momentum: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    r"""One signSGD step, or Signum when ``momentum_buffer`` is given (zeros at first).

    .. math::

        m &\leftarrow \beta m + (1-\beta) g \quad\text{(Signum; } m = g \text{ for signSGD)} \\
        \theta &\leftarrow \theta(1 - \eta\lambda) - \eta\,\operatorname{sign}(m)
    """
    grad = regularize(
        param, grad, lr=lr, weight_decay=weight_decay, decoupled=True, maximize=maximize
    )
    direction = grad
    if momentum_buffer is not None:
        direction = momentum_buffer.lerp_(grad, 1 - momentum)
    param.add_(direction.sign(), alpha=-lr)


def lion(
    param: TensorList,
    grad: TensorList,
    *,
    exp_avg: TensorList,
    lr: Any,
    betas: tuple[Any, Any],
    weight_decay: float,
    maximize: bool,
) -> None:
    r"""One Lion step, in place.

    .. math::

        c &= \beta_1 m + (1-\beta_1) g \\
        \theta &\leftarrow \theta - \eta\,(\operatorname{sign}(c) + \lambda\theta) \\
        m &\leftarrow \beta_2 m + (1-\beta_2) g
    """
    beta1, beta2 = betas
    grad = regularize(
        param, grad, lr=lr, weight_decay=weight_decay, decoupled=True, maximize=maximize
    )
    update = exp_avg.mul(beta1).add_(grad, alpha=1 - beta1).sign()
    param.add_(update, alpha=-lr)
    exp_avg.lerp_(grad, 1 - beta2)


class SignSGD(Optimizer):
    r"""signSGD, and Signum when ``momentum > 0`` (Bernstein et al. 2018).

    .. math::

        m_t &= \beta m_{t-1} + (1-\beta) g, \quad m_0 = 0
            \qquad (\text{signSGD: } m_t = g) \\
        \theta &\leftarrow \theta\,(1 - \eta\lambda) - \eta\,\operatorname{sign}(m_t)

    Reference: Bernstein, Wang, Azizzadenesheli & Anandkumar, "signSGD: Compressed
    Optimisation for Non-Convex Problems", ICML 2018 (Algorithm 1 is signSGD, Algorithm 3
    is Signum).

    Weight decay is decoupled (applied to the parameter, not mixed into the sign), so it
    keeps its size whatever the gradient's scale. torch.optim has no counterpart.
    Complex parameters are refused: the sign of a complex number is not the paper's sign.
    """

    lr: float | Tensor = hyper(default=1e-3)
    momentum: float = hyper(
        default=0.0, check=check.unit_interval, doc=r"momentum :math:`\beta` (Signum when > 0)"
    )
    weight_decay: float = hyper(default=0.0, doc=r"decoupled weight decay :math:`\lambda`")
    maximize: bool = hyper(default=False, kw_only=True)

    keeps = (State("momentum_buffer", when="momentum", doc="momentum m (Signum)"),)
    math = staticmethod(sign_sgd)
    supports_complex = False
    registry_name = "sign_sgd"
    decoupled_decay = True


class Lion(Optimizer):
    r"""Lion, EvoLved Sign Momentum (Chen et al. 2023).

    .. math::

        c_t &= \beta_1 m_{t-1} + (1-\beta_1) g \\
        \theta &\leftarrow \theta - \eta\,(\operatorname{sign}(c_t) + \lambda\theta) \\
        m_t &= \beta_2 m_{t-1} + (1-\beta_2) g, \quad m_0 = 0

    Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023,
    Algorithm 2. The update has the same size in every coordinate, so Lion wants a
    learning rate 3-10x smaller and a weight decay 3-10x larger than AdamW's.
    Defaults are the paper's. torch.optim has no counterpart. Complex parameters are
    refused.
    """

    lr: float | Tensor = hyper(default=1e-4)
    betas: tuple[float, float] = hyper(default=(0.9, 0.99))
    weight_decay: float = hyper(default=0.0, doc=r"decoupled weight decay :math:`\lambda`")
    maximize: bool = hyper(default=False, kw_only=True)

    keeps = (State("exp_avg", doc="momentum m"),)
    math = staticmethod(lion)
    supports_complex = False
    decoupled_decay = True


__all__ = ["Lion", "SignSGD", "lion", "sign_sgd"]
