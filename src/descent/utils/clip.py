"""Gradient clipping: by global norm (with a policy for non-finite norms) and by value.

Both take the parameters in any of the forms an optimizer takes (tensors,
``named_parameters()``, a module, param-group dicts) or the optimizer itself, and
change the gradients in place, before ``optimizer.step()``. Given a descent optimizer
over NumPy modules (or ``.data``/``.grad`` objects), they clip those modules' gradient
arrays in place.

Example:

>>> import torch
>>> from descent.utils import clip_grad_norm, clip_grad_value
>>> w = torch.nn.Parameter(torch.zeros(2))
>>> w.grad = torch.tensor([3.0, 4.0])
>>> clip_grad_norm([w], max_norm=1.0)
tensor(5.)
>>> w.grad
tensor([0.6000, 0.8000])
>>> clip_grad_value([w], 0.7)
>>> w.grad
tensor([0.6000, 0.7000])
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..interop.arrays import attach_container_grads

__all__ = ["NONFINITE_POLICIES", "clip_grad_norm", "clip_grad_value"]

NONFINITE_POLICIES = ("error", "skip", "zero", "propagate")
"""What :func:`clip_grad_norm` does when the gradients' norm is ``inf`` or ``nan``."""

_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s: the scale is max_norm / (norm + 1e-6)


def _named_groups(where: str, parameters: Any) -> list[list[tuple[str, Tensor]]]:
    """The parameters as groups of (label, tensor): one group unless groups were given."""
    if isinstance(parameters, torch.optim.Optimizer):
        attach_container_grads(parameters, where)  # NumPy modules' current gradients
        parameters = parameters.param_groups
    if isinstance(parameters, Tensor):
        return [[("parameters[0]", parameters)]]
    if isinstance(parameters, nn.Module):
        return [[(f"parameter {name!r}", p) for name, p in parameters.named_parameters()]]
    if isinstance(parameters, dict) or not isinstance(parameters, Iterable):
        raise TypeError(
            f"{where}: parameters has type {type(parameters).__name__}; expected "
            "tensors, named_parameters(), a module, param-group dicts or an "
            "optimizer"
        )
    items = list(parameters)
    if items and all(isinstance(item, dict) for item in items):
        groups = []
        for gi, group in enumerate(items):
            if "params" not in group:
                raise ValueError(f"{where}: param group {gi} has no 'params' entry")
            inner = _named_groups(where, group["params"])[0]
            names = group.get("param_names")
            if names is not None and len(names) == len(inner):
                inner = [
                    (f"parameter {name!r}", tensor)
                    for name, (_, tensor) in zip(names, inner, strict=True)
                ]
            else:
                inner = [
                    (f"param_groups[{gi}]['params'][{i}]", tensor)
                    for i, (_, tensor) in enumerate(inner)
                ]
            groups.append(inner)
        return groups
    named = []
    for index, item in enumerate(items):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            named.append((f"parameter {item[0]!r}", item[1]))
        elif isinstance(item, Tensor):
            named.append((f"parameters[{index}]", item))
        else:
            raise TypeError(
                f"{where}: parameters[{index}] has type {type(item).__name__}; "
                "expected a tensor or a (name, tensor) pair"
            )
    return [named]


def _grads(where: str, group: list[tuple[str, Tensor]]) -> list[tuple[str, Tensor, Tensor]]:
    out = []
    for label, param in group:
        grad = param.grad
        if grad is None:
            continue
        if grad.is_sparse:
            raise TypeError(
                f"{where}: {label} has a sparse gradient; clipping takes dense gradients"
            )
        out.append((label, param, grad))
    return out


def _total_norm(grads: list[Tensor], norm_type: float) -> Tensor:
    """torch's total norm: the norm of the vector of the gradients' norms."""
    if not grads:
        return torch.tensor(0.0)
    device = grads[0].device
    norms = [torch.linalg.vector_norm(grad, norm_type) for grad in grads]
    dtype = norms[0].dtype
    for norm in norms[1:]:
        dtype = torch.promote_types(dtype, norm.dtype)
    total: Tensor = torch.linalg.vector_norm(
        torch.stack([n.to(device, dtype) for n in norms]), norm_type
    )
    return total


def clip_grad_norm(
    parameters: Any,
    max_norm: float,
    norm_type: float = 2.0,
    *,
    nonfinite: Literal["error", "skip", "zero", "propagate"] = "error",
    per_group: bool = False,
) -> Tensor:
    r"""Scale gradients so that their global norm is at most ``max_norm``; return the norm.

    With :math:`\|g\|` the ``norm_type``-norm of all gradients seen as one vector
    (the norm of the per-tensor norms):

    .. math::

        g \leftarrow g \cdot \min\!\left(1, \frac{\text{max\_norm}}{\|g\| + 10^{-6}}\right)

    exactly as ``torch.nn.utils.clip_grad_norm_`` computes it. Parameters without a
    gradient are skipped.

    Args:
        parameters: tensors, ``named_parameters()``, a module, param-group dicts, or an
            optimizer (its param groups).
        max_norm: the largest norm allowed, > 0 (``inf`` only measures the norm).
        norm_type: p of the p-norm, > 0, or ``inf`` for the largest absolute value.
        nonfinite: what to do when the norm is ``inf`` or ``nan`` (a gradient has
            overflowed or is undefined): ``"error"`` raises ``FloatingPointError``
            naming the first such parameter and leaves the gradients as they are;
            ``"skip"`` sets every gradient to ``None``, so the next optimizer step leaves
            these parameters and their state unchanged; ``"zero"`` zeroes the gradients
            (the step still runs: weight decay and momentum still act); ``"propagate"``
            scales as above, as torch does, which makes the gradients non-finite.
        per_group: clip each param group separately (groups come from an optimizer or
            param-group dicts) and return one norm per group.

    Returns:
        The norm before clipping: a 0-dim tensor, or with ``per_group`` a 1-D tensor of
        one norm per group.

    Difference from torch: the default reaction to a non-finite norm is an error
    rather than silently non-finite gradients (``nonfinite="propagate"`` is torch's).
    """
    where = "clip_grad_norm"
    for name, value in (("max_norm", max_norm), ("norm_type", norm_type)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or math.isnan(value)
            or value <= 0
        ):
            raise ValueError(
                f"{where}: {name}={value!r} is invalid; expected a number > 0 (inf allowed)"
            )
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(
            f"{where}: nonfinite={nonfinite!r} is invalid; expected one of {NONFINITE_POLICIES}"
        )
    if not isinstance(per_group, bool):
        raise TypeError(f"{where}: per_group={per_group!r} is invalid; expected True or False")
    groups = _named_groups(where, parameters)
    if not per_group:
        groups = [[item for group in groups for item in group]]
    gathered = [_grads(where, group) for group in groups]
    norms = []
    for group in gathered:
        grads = [grad for _, _, grad in group]
        total = _total_norm(grads, float(norm_type))
        norms.append(total)
        if nonfinite != "propagate" and grads and not bool(torch.isfinite(total)):
            if nonfinite == "error":
                label = next(
                    label for label, _, grad in group if not bool(torch.isfinite(grad).all())
                )
                raise FloatingPointError(
                    f"{where}: the gradient norm is {float(total)} (not finite); {label} has "
                    "a non-finite gradient. Pass nonfinite='skip' to skip such steps, "
                    "'zero' to zero the gradients, or 'propagate' for torch's behaviour"
                )
            for _, param, grad in group:
                if nonfinite == "skip":
                    param.grad = None
                else:
                    grad.zero_()
            continue
        scale = torch.clamp(max_norm / (total + _EPS), max=1.0)
        for grad in grads:
            grad.mul_(scale.to(grad.device))
    if per_group:
        devices = {norm.device for norm in norms}
        device = norms[0].device if len(devices) == 1 else torch.device("cpu")
        return torch.stack([norm.to(device) for norm in norms])
    return norms[0]


def clip_grad_value(parameters: Any, clip_value: float) -> None:
    r"""Clamp every gradient element into ``[-clip_value, clip_value]``, in place.

    .. math::

        g \leftarrow \max(-c, \min(c, g))

    as ``torch.nn.utils.clip_grad_value_``: ``inf`` becomes :math:`\pm c`, ``nan``
    stays ``nan``. Parameters without a gradient are skipped; complex gradients are
    refused (they have no order).

    Args:
        parameters: tensors, ``named_parameters()``, a module, param-group dicts, or an
            optimizer.
        clip_value: the bound c, a finite number > 0.
    """
    where = "clip_grad_value"
    if (
        isinstance(clip_value, bool)
        or not isinstance(clip_value, int | float)
        or not math.isfinite(clip_value)
        or clip_value <= 0
    ):
        raise ValueError(
            f"{where}: clip_value={clip_value!r} is invalid; expected a finite number > 0"
        )
    found = [item for group in _named_groups(where, parameters) for item in _grads(where, group)]
    for label, _, grad in found:
        if grad.is_complex():
            raise TypeError(
                f"{where}: {label} has a complex gradient ({grad.dtype}); "
                "clipping by value needs real numbers"
            )
    for _, _, grad in found:
        grad.clamp_(-clip_value, clip_value)
