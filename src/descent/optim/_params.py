"""Turn what a user hands an optimizer into torch-style parameter groups.

Accepted forms, as ``params``:

* an iterable of tensors,
* ``model.named_parameters()`` (an iterable of ``(name, tensor)`` pairs),
* a list of param-group dicts (each group's ``"params"`` in any of these forms),
* an ``nn.Module``, or a list of modules (parameters shared between modules,
  such as tied embeddings, are taken once, as ``nn.ModuleList`` would).

Names, when known, are kept in the group under ``"param_names"`` (torch's key),
so errors and state dicts can say which parameter they mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn


def _is_named_pair(item: Any) -> bool:
    return (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], torch.Tensor)
    )


def _named_from_modules(modules: list[nn.Module]) -> list[tuple[str, torch.Tensor]]:
    seen: set[int] = set()
    named: list[tuple[str, torch.Tensor]] = []
    prefix_all = len(modules) > 1
    for index, module in enumerate(modules):
        for name, param in module.named_parameters():
            if id(param) in seen:
                continue
            seen.add(id(param))
            named.append((f"{index}.{name}" if prefix_all else name, param))
    return named


def _flatten_params(owner: str, params: Any, where: str) -> list[Any]:
    """A group's ``params`` as a list of tensors or of (name, tensor) pairs."""
    if isinstance(params, nn.Module):
        return _named_from_modules([params])
    if isinstance(params, torch.Tensor):
        return [params]
    if isinstance(params, set | frozenset):
        raise TypeError(
            f"{owner}: {where} is a set; its order changes between runs, so optimizer state "
            "could not be matched to parameters. Pass a list instead"
        )
    if isinstance(params, dict):
        raise TypeError(
            f"{owner}: {where} is a dict; pass a list of param-group dicts, "
            "each with a 'params' entry"
        )
    if not isinstance(params, Iterable):
        raise TypeError(
            f"{owner}: {where}={params!r} is not iterable; expected tensors, "
            "named_parameters(), param-group dicts or modules"
        )
    items = list(params)
    if items and all(isinstance(item, nn.Module) for item in items):
        return _named_from_modules(items)
    return items


def as_param_groups(owner: str, params: Any) -> list[dict[str, Any]]:
    """Normalise ``params`` into a non-empty list of group dicts (not yet validated)."""
    if isinstance(params, torch.Tensor):
        raise TypeError(
            f"{owner}: params is a single tensor; pass an iterable of tensors, "
            "e.g. [tensor] or model.parameters()"
        )
    if isinstance(params, nn.Module):
        items: list[Any] = [params]
    else:
        items = _flatten_params(owner, params, "params")
    if not items:
        if isinstance(params, Iterator):
            raise ValueError(
                f"{owner}: params is an iterator that yields nothing; it was probably used up "
                "already (model.parameters() can be iterated only once). Pass "
                "list(model.parameters()) and reuse the list, or pass the model itself"
            )
        raise ValueError(f"{owner}: params is empty; expected at least one parameter to optimize")
    if all(isinstance(item, dict) for item in items):
        return [dict(group) for group in items]
    if any(isinstance(item, dict) for item in items):
        raise TypeError(
            f"{owner}: params mixes param-group dicts with other items; "
            "pass either tensors or a list of group dicts"
        )
    if all(isinstance(item, nn.Module) for item in items):
        return [{"params": _named_from_modules(items)}]
    return [{"params": items}]


def split_group(owner: str, group: dict[str, Any], group_index: int) -> dict[str, Any]:
    """Return a copy of ``group`` whose ``params`` is a list of tensors, names split off.

    Checks that each entry is a leaf tensor; dtypes and duplicates are checked by the
    optimizer, which sees all groups. A group may be empty (as in torch.optim): sharded
    optimizers such as ``ZeroRedundancyOptimizer`` can hand a rank an empty group, and
    removing parameters can empty one. Only an empty ``params`` as a whole is refused.
    """
    if not isinstance(group, dict):
        raise TypeError(
            f"{owner}: param_group has type {type(group).__name__}; expected a dict "
            "with a 'params' entry"
        )
    if "params" not in group:
        raise ValueError(f"{owner}: param group {group_index} has no 'params' entry")
    where = f"param_groups[{group_index}]['params']"
    items = _flatten_params(owner, group["params"], where)
    named = [_is_named_pair(item) for item in items]
    if any(named) and not all(named):
        raise ValueError(
            f"{owner}: {where} mixes named (name, tensor) pairs and bare tensors; "
            "use one form for the whole group"
        )
    new_group = dict(group)
    if items and all(named):
        new_group["param_names"] = [name for name, _ in items]
        tensors = [tensor for _, tensor in items]
    else:
        tensors = items
    for index, param in enumerate(tensors):
        label = param_label(new_group, group_index, index)
        if not isinstance(param, torch.Tensor):
            raise TypeError(
                f"{owner}: {label} has type {type(param).__name__}; expected a torch.Tensor"
            )
        if not param.is_leaf and not param.retains_grad:
            raise ValueError(
                f"{owner}: {label} is not a leaf tensor (it was computed from other "
                "tensors); optimize the tensors it was computed from, or call .detach()"
                ".requires_grad_() on it"
            )
    new_group["params"] = tensors
    return new_group


def param_label(group: dict[str, Any], group_index: int, index: int) -> str:
    """How error messages name a parameter: its name if known, else its position."""
    names = group.get("param_names")
    if names is not None and index < len(names):
        return f"parameter {names[index]!r} (param_groups[{group_index}]['params'][{index}])"
    return f"param_groups[{group_index}]['params'][{index}]"
