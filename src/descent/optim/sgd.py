"""Stochastic gradient descent with optional (Nesterov) momentum."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..engine import TensorList
from ..engine._torch import fused_sgd
from . import _validate as check
from ._regularize import regularize
from ._spec import State, hyper
from .base import Optimizer


def sgd(
    param: TensorList,
    grad: TensorList,
    *,
    momentum_buffer: TensorList | None,
    lr: Any,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
) -> dict[str, TensorList]:
    r"""One SGD step, in place; returns the momentum buffer when this step created it.

    .. math::

        g &\leftarrow \pm g + \lambda\,\theta \\
        b &\leftarrow \mu\,b + (1-\tau)\,g \quad (b \leftarrow g \text{ on the first step}) \\
        d &= g + \mu\,b \text{ (Nesterov) or } b \\
        \theta &\leftarrow \theta - \eta\,d

    ``momentum_buffer=None`` with momentum > 0 means the first step. Sutskever et al.
    2013 (momentum and Nesterov momentum in this form).
    """
    grad = regularize(param, grad, lr=lr, weight_decay=weight_decay, maximize=maximize)
    created = {}
    if momentum != 0:
        if momentum_buffer is None:
            momentum_buffer = created["momentum_buffer"] = grad.clone()
        else:
            momentum_buffer.mul_(momentum).add_(grad, alpha=1 - dampening)
        grad = grad.add(momentum_buffer, alpha=momentum) if nesterov else momentum_buffer
    param.add_(grad, alpha=-lr)
    return created


class SGD(Optimizer):
    r"""Stochastic gradient descent, with momentum, dampening, Nesterov momentum and weight decay.

    Update rule, for gradient :math:`g`, learning rate :math:`\eta`, momentum :math:`\mu`,
    dampening :math:`\tau` and weight decay :math:`\lambda`:

    .. math::

        g &\leftarrow g + \lambda\theta \qquad (-g \text{ first if maximize}) \\
        b_1 &= g, \quad b_t = \mu b_{t-1} + (1-\tau) g \\
        \theta &\leftarrow \theta - \eta\,(g + \mu b_t) \text{ if nesterov, else }
            \theta - \eta\,b_t

    Reference: Sutskever, Martens, Dahl, Hinton, "On the importance of initialization and
    momentum in deep learning", ICML 2013. Nesterov needs ``momentum > 0`` and
    ``dampening == 0``. Runs on torch's fused kernel (CPU and CUDA) after the first step.
    Sparse gradients (``nn.Embedding(sparse=True)``) are accepted, as in torch, and
    update their parameters one at a time.

    Differences from torch: none in results. ``foreach`` and ``fused`` are accepted and
    ignored (descent's engine chooses how the update runs); ``differentiable=True`` is
    refused in favour of :mod:`descent.functional`.

    Example::

        opt = descent.SGD(model, lr=0.1, momentum=0.9, nesterov=True)
        loss_fn(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    """

    lr: float | Tensor = hyper(default=1e-3)
    momentum: float = hyper(default=0.0)
    dampening: float = hyper(
        default=0.0, check=check.finite, doc=r"dampening :math:`\tau` of the momentum"
    )
    weight_decay: float = hyper(
        default=0.0, check=check.non_negative, doc=r"weight decay :math:`\lambda` (an L2 penalty)"
    )
    nesterov: bool = hyper(default=False, check=check.flag, doc="use Nesterov momentum")
    maximize: bool = hyper(default=False, kw_only=True)
    foreach: bool | None = hyper(default=None, kw_only=True)
    differentiable: bool = hyper(default=False, kw_only=True)
    fused: bool | None = hyper(default=None, kw_only=True)

    keeps = (
        State(
            "momentum_buffer",
            lazy=True,
            when="momentum",
            doc="momentum buffer b, the first gradient at first",
        ),
    )
    math = staticmethod(sgd)
    fused_kernel = staticmethod(fused_sgd)
    supports_sparse = True

    @classmethod
    def _check_options(cls, group: Mapping[str, Any], where: str) -> None:
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                f"SGD: {where}nesterov=True needs momentum > 0 and dampening == 0, got "
                f"momentum={group['momentum']!r}, dampening={group['dampening']!r}"
            )


__all__ = ["SGD", "sgd"]
