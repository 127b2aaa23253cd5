r"""Cautious masking, an option of every rule: ``cautious=True``.

The engine runs a rule's math as usual, with its decoupled weight decay held back, and
reads the update the rule made, :math:`u = \theta_{old} - \theta_{new}` (so
:math:`\theta_{new} = \theta_{old} - u`). It then keeps that update only where it
agrees in sign with the gradient :math:`g` of the objective, rescaled so that the mask
keeps its size, and applies the weight decay only where the kept update agrees in sign
with the parameter:

.. math::

    \phi &= \mathbb{1}(u \odot g > 0), \qquad
        \bar u = \frac{d}{\operatorname{nnz}(\phi) + 1}\, \phi \odot u
        \quad (d \text{ elements in the tensor}) \\
    \theta &\leftarrow \theta_{old} - \bar u
        - \eta\lambda\, \mathbb{1}(\bar u \odot \theta_{old} \ge 0) \odot \theta_{old}

References: Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One
Line of Code", 2024 (arXiv:2411.16085; the mask and its rescaling by
:math:`d / (\operatorname{nnz}(\phi) + 1)`, as in the authors' code); Chen, Li, Liang,
Su, Xie, Pierse, Liang, Lao & Liu, "Cautious Weight Decay", 2025 (arXiv:2510.12402).

The mask and its rescaling are per tensor. Weight decay must be the decoupled
:math:`\theta \leftarrow \theta(1 - \eta\lambda)`: a rule whose decay enters the
gradient (an L2 penalty, SGD's and Adam's default) is refused with ``weight_decay`` not
zero, since its decay cannot be told apart from the rest of its update. A class that
cannot be masked this way says why in :attr:`~descent.optim.base.Optimizer.cautious_refused`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..engine import TensorList

if TYPE_CHECKING:
    from .base import Optimizer


def decay_is_decoupled(cls: type[Optimizer], group: Mapping[str, Any]) -> bool:
    """Whether ``group``'s weight decay is the decoupled ``theta *= 1 - lr * weight_decay``."""
    if "decoupled_weight_decay" in cls.hyperparameters:
        return bool(group["decoupled_weight_decay"])
    return cls.decoupled_decay


def check_options(cls: type[Optimizer], group: Mapping[str, Any], where: str) -> None:
    """Refuse ``cautious=True`` where it cannot apply, saying why and what to do."""
    if not group.get("cautious"):
        return
    owner = cls.__name__
    if cls.cautious_refused:
        raise ValueError(f"{owner}: {where}cautious=True is not supported: {cls.cautious_refused}")
    decay = group.get("weight_decay", 0.0)
    if _nonzero(decay) and not decay_is_decoupled(cls, group):
        raise ValueError(
            f"{owner}: {where}cautious=True needs decoupled weight decay, but "
            f"weight_decay={decay!r} is added to the gradient here; use weight_decay=0"
            + (
                " or decoupled_weight_decay=True"
                if "decoupled_weight_decay" in cls.hyperparameters
                else ""
            )
        )


def masked_update(
    cls: type[Optimizer],
    param: Any,
    grad: Any,
    arguments: dict[str, Any],
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """Run ``cls.math`` with cautious masking around it (see the module docstring).

    ``param`` and ``grad`` are :class:`~descent.engine.TensorList` objects (elementwise
    rules) or tensors (the others); ``arguments`` are the math's keyword arguments and
    ``options`` the group's hyperparameters. Returns the state the math created.
    """
    check_options(cls, options, "")
    decay = options.get("weight_decay", 0.0)
    if "weight_decay" in arguments:
        arguments = {**arguments, "weight_decay": 0.0}
    assert cls.math is not None
    old = param.clone()
    created = cls.math(param, grad, **arguments) or {}
    params, grads, olds = _as_list(param), _as_list(grad), _as_list(old)
    if options.get("maximize"):
        grads = -grads
    update = olds - params
    agrees = update.mul(grads).sign().clamp_min_(0)
    scales = TensorList(
        [mask.numel() / (mask.sum() + 1) for mask in agrees.tensors], pure=agrees.pure
    )
    kept = update.mul_(agrees).mul_(scales)
    if _nonzero(decay):
        aligned = kept.mul(olds).sign().add_(1).clamp_max_(1)
        kept.add_(olds.mul(aligned).mul_(options["lr"] * decay))
    params.copy_(olds.sub_(kept))
    return created


def _as_list(value: Any) -> TensorList:
    return value if isinstance(value, TensorList) else TensorList([value])


def _nonzero(value: Any) -> bool:
    return bool(value != 0) if isinstance(value, Tensor) else value != 0
