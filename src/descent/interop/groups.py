"""Add parameters to a live optimizer and remove them, keeping everyone else's state.

Growing a network (a new head, unfrozen layers) or pruning it mid-training should
not restart the optimizer: :func:`add_params` puts new parameters into a new or an
existing param group, :func:`remove_params` takes parameters out. Every other
parameter keeps its state (step counts, moments), so its trajectory continues as if
nothing had happened. Both work on descent optimizers and on ``torch.optim`` ones.

Example:

>>> import torch, descent
>>> from descent.interop import add_params, remove_params
>>> old, new = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
>>> opt = descent.Adam([old], lr=0.1)
>>> old.grad = torch.ones(2); opt.step()
>>> add_params(opt, [new], group=0)
0
>>> len(opt.param_groups[0]["params"]), int(opt.state[old]["step"])
(2, 1)
>>> removed = remove_params(opt, [old])
>>> len(opt.param_groups[0]["params"]), old in opt.state, int(removed[0]["step"])
(1, False, 1)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["add_params", "remove_params"]


def _owner(optimizer: Any) -> str:
    return type(optimizer).__name__


def _label(group: dict[str, Any], group_index: int, index: int) -> str:
    names = group.get("param_names")
    where = f"param_groups[{group_index}]['params'][{index}]"
    return f"parameter {names[index]!r} ({where})" if names else where


def _split_names(owner: str, params: Any) -> tuple[list[torch.Tensor], list[str] | None]:
    if isinstance(params, torch.nn.Module):
        items: list[Any] = list(params.named_parameters())
    elif isinstance(params, torch.Tensor):
        items = [params]
    elif isinstance(params, Iterable) and not isinstance(params, str | dict | set | frozenset):
        items = list(params)
    else:
        raise TypeError(
            f"{owner}: params has type {type(params).__name__}; expected a list of "
            "tensors, of (name, tensor) pairs, or a module"
        )
    if not items:
        raise ValueError(f"{owner}: params is empty; expected at least one parameter")
    named = [
        isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) for item in items
    ]
    if any(named) and not all(named):
        raise ValueError(
            f"{owner}: params mixes (name, tensor) pairs and bare tensors; use one form"
        )
    if all(named):
        return [tensor for _, tensor in items], [name for name, _ in items]
    return items, None


def add_params(
    optimizer: torch.optim.Optimizer, params: Any, *, group: int | None = None, **options: Any
) -> int:
    """Add parameters to a live optimizer; returns the index of the group they joined.

    Args:
        optimizer: a descent or ``torch.optim`` optimizer.
        params: tensors, ``(name, tensor)`` pairs, or a module (its named parameters).
        group: index of an existing group to join (its options apply), or ``None`` for
            a new group.
        **options: the new group's options (``lr=...``); the optimizer's defaults fill
            the rest. Only with ``group=None``.

    Every parameter is checked first (a floating-point leaf tensor, not already
    optimized, given once, named if and only if the group names its parameters); on
    error the optimizer is unchanged. Parameters start with no state, as if they had
    been there from the start without a gradient (torch's Adagrad, which keeps state
    for every parameter from the start, gets its initial state).
    """
    owner = f"{_owner(optimizer)} add_params"
    if group is None:
        optimizer.add_param_group({"params": params, **options})
        index = len(optimizer.param_groups) - 1
        _initialise_torch_adagrad(optimizer, optimizer.param_groups[index]["params"])
        return index
    if (
        isinstance(group, bool)
        or not isinstance(group, int)
        or not -len(optimizer.param_groups) <= group < len(optimizer.param_groups)
    ):
        raise ValueError(
            f"{owner}: group={group!r} is not the index of one of the "
            f"{len(optimizer.param_groups)} param groups"
        )
    if options:
        raise ValueError(
            f"{owner}: options {sorted(options)} apply to a new group; "
            f"group {group} keeps its own (set them in "
            f"optimizer.param_groups[{group}])"
        )
    index = group % len(optimizer.param_groups)
    target = optimizer.param_groups[index]
    tensors, names = _split_names(owner, params)
    has_names = "param_names" in target
    if has_names != (names is not None):
        raise ValueError(
            f"{owner}: param group {index} "
            f"{'names' if has_names else 'does not name'} its parameters; pass "
            f"{'(name, tensor) pairs' if has_names else 'bare tensors'}"
        )
    existing = {
        id(p): (gi, pi)
        for gi, g in enumerate(optimizer.param_groups)
        for pi, p in enumerate(g["params"])
    }
    seen: set[int] = set()
    for position, tensor in enumerate(tensors):
        label = f"params[{position}]" + (f" ({names[position]!r})" if names else "")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"{owner}: {label} has type {type(tensor).__name__}; expected a torch.Tensor"
            )
        if not (tensor.is_floating_point() or tensor.is_complex()):
            raise TypeError(
                f"{owner}: {label} has dtype {tensor.dtype}; expected a floating-point tensor"
            )
        if not tensor.is_leaf:
            raise ValueError(
                f"{owner}: {label} is not a leaf tensor; optimize the tensors it was computed from"
            )
        check_dtype = getattr(optimizer, "_check_param_dtype", None)
        if check_dtype is not None:
            check_dtype(tensor, label)
        if id(tensor) in existing:
            gi, pi = existing[id(tensor)]
            raise ValueError(
                f"{owner}: {label} is already optimized as "
                f"{_label(optimizer.param_groups[gi], gi, pi)}"
            )
        if id(tensor) in seen:
            raise ValueError(f"{owner}: {label} is given twice")
        seen.add(id(tensor))
    if names is not None:
        clash = sorted(set(names) & set(target["param_names"]))
        if clash:
            raise ValueError(f"{owner}: param group {index} already has parameters named {clash}")
    target["params"].extend(tensors)
    if names is not None:
        target["param_names"].extend(names)
    _initialise_torch_adagrad(optimizer, tensors)
    return index


def _initialise_torch_adagrad(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
    """torch.optim.Adagrad expects state for every parameter from its constructor on."""
    if type(optimizer) is not torch.optim.Adagrad:
        return
    group = next(g for g in optimizer.param_groups if any(p is params[0] for p in g["params"]))
    for param in params:
        if param not in optimizer.state or not optimizer.state[param]:
            step_dtype = (
                torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
            )
            optimizer.state[param] = {
                "step": torch.zeros((), dtype=step_dtype),
                "sum": torch.full_like(
                    param, group["initial_accumulator_value"], memory_format=torch.preserve_format
                ),
            }


def remove_params(
    optimizer: torch.optim.Optimizer, params: Any, *, drop_empty_groups: bool = False
) -> list[dict[str, Any]]:
    """Remove parameters from a live optimizer; returns their states, in order.

    Args:
        optimizer: a descent or ``torch.optim`` optimizer.
        params: the tensors to remove, or their names (for groups that name their
            parameters), or a module (all its parameters).
        drop_empty_groups: remove a group left with no parameters. By default it stays,
            empty, so that group indices, and the per-group lists of LR schedulers, keep
            their meaning.

    Every parameter is looked up first; one that the optimizer does not hold raises a
    ``ValueError`` and nothing changes. Copies of the removed parameters' states are
    returned (empty dicts for parameters without state); every other parameter's state
    is kept.
    """
    owner = f"{_owner(optimizer)} remove_params"
    if isinstance(params, torch.nn.Module):
        items: list[Any] = list(params.parameters())
    elif isinstance(params, torch.Tensor | str):
        items = [params]
    else:
        items = list(params)
    where: dict[int, tuple[int, int]] = {}
    by_id = {
        id(p): (gi, pi)
        for gi, g in enumerate(optimizer.param_groups)
        for pi, p in enumerate(g["params"])
    }
    by_name: dict[str, tuple[int, int] | None] = {}
    for gi, g in enumerate(optimizer.param_groups):
        for pi, name in enumerate(g.get("param_names") or []):
            by_name[name] = None if name in by_name else (gi, pi)  # None: ambiguous
    order = []
    for position, item in enumerate(items):
        if isinstance(item, str) and item in by_name and by_name[item] is None:
            raise ValueError(
                f"{owner}: the name {item!r} is in several param groups; pass the tensor instead"
            )
        found = (
            by_name.get(item)
            if isinstance(item, str)
            else by_id.get(id(item))
            if isinstance(item, torch.Tensor)
            else None
        )
        if found is None:
            what = (
                repr(item)
                if isinstance(item, str)
                else f"params[{position}] (shape {tuple(item.shape)})"
                if isinstance(item, torch.Tensor)
                else f"params[{position}] of type {type(item).__name__}"
            )
            raise ValueError(f"{owner}: {what} is not optimized by this optimizer")
        if found in where.values():
            raise ValueError(f"{owner}: params[{position}] is given twice")
        where[position] = found
        order.append(found)

    removed = []
    for gi, pi in order:
        param = optimizer.param_groups[gi]["params"][pi]
        # Copies: the state of an engine-managed parameter is a view of a shared buffer.
        removed.append(
            {
                key: value.detach().clone() if torch.is_tensor(value) else value
                for key, value in optimizer.state.pop(param, {}).items()
            }
        )
    for gi, group in enumerate(optimizer.param_groups):
        drop = sorted((pi for g, pi in order if g == gi), reverse=True)
        for pi in drop:
            del group["params"][pi]
            if "param_names" in group:
                del group["param_names"][pi]
    if drop_empty_groups:
        optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    return removed
