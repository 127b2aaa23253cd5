"""Stochastic gradient descent with optional (Nesterov) momentum."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from . import _validate as check
from ._regularize import regularize
from .base import Optimizer


def sgd(param: Tensor, grad: Tensor, momentum_buffer: Tensor | None = None, *, lr: Any,
        momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
        nesterov: bool = False, maximize: bool = False) -> dict[str, Tensor]:
    r"""One SGD step; returns the new ``param`` (and ``momentum_buffer`` when momentum > 0).

    .. math::

        g &\leftarrow \pm g + \lambda\,\theta \\
        b &\leftarrow \mu\,b + (1-\tau)\,g \quad (b \leftarrow g \text{ on the first step}) \\
        d &= g + \mu\,b \text{ (Nesterov) or } b \\
        \theta &\leftarrow \theta - \eta\,d

    ``momentum_buffer=None`` means the first step. Sutskever et al. 2013 (momentum and
    Nesterov momentum in this form).
    """
    param, grad = regularize(param, grad, lr=lr, weight_decay=weight_decay,
                             maximize=maximize)
    new: dict[str, Tensor] = {}
    if momentum != 0:
        if momentum_buffer is None:
            buf = grad
        else:
            buf = momentum * momentum_buffer + (1 - dampening) * grad
        new["momentum_buffer"] = buf
        grad = grad + momentum * buf if nesterov else buf
    new["param"] = param - lr * grad
    return new


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
    momentum in deep learning", ICML 2013.

    Defaults (torch.optim.SGD's): ``lr=1e-3, momentum=0, dampening=0, weight_decay=0,
    nesterov=False, maximize=False``. Nesterov needs ``momentum > 0`` and ``dampening == 0``.

    Differences from torch: none in results. ``foreach`` and ``fused`` are accepted and
    ignored (descent's engine chooses how the update runs); ``differentiable=True`` is
    refused in favour of :mod:`descent.functional`.

    Example::

        opt = descent.SGD(model, lr=0.1, momentum=0.9, nesterov=True)
        loss_fn(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    """

    hyperparameters = {
        "lr": check.non_negative, "momentum": check.non_negative, "dampening": check.finite,
        "weight_decay": check.non_negative, "nesterov": check.flag, "maximize": check.flag,
        "foreach": check.FOREACH, "differentiable": check.DIFFERENTIABLE, "fused": check.FUSED,
    }
    scalar_state = frozenset()

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None,
                 differentiable: bool = False, fused: bool | None = None) -> None:
        super().__init__(params, dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, maximize=maximize, foreach=foreach,
            differentiable=differentiable, fused=fused))

    def _check_options(self, group: Mapping[str, Any], where: str) -> None:
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                f"SGD: {where}nesterov=True needs momentum > 0 and dampening == 0, got "
                f"momentum={group['momentum']!r}, dampening={group['dampening']!r}")

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        return {}

    def _state_keys(self, group: Mapping[str, Any]) -> frozenset[str]:
        return frozenset({"momentum_buffer"} if group["momentum"] != 0 else ())

    def _update(self, param: Tensor, grad: Tensor, state: Mapping[str, Any],
                group: Mapping[str, Any]) -> dict[str, Tensor]:
        return sgd(param, grad, state.get("momentum_buffer"), lr=group["lr"],
                   momentum=group["momentum"], dampening=group["dampening"],
                   weight_decay=group["weight_decay"], nesterov=group["nesterov"],
                   maximize=group["maximize"])


__all__ = ["SGD", "sgd"]
