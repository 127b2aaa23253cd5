"""param_groups: two optimizer param groups, with and without weight decay.

Weight decay pulls weights towards zero. On the weights of linear and convolutional
layers that is the regulariser it is meant to be; on biases, on the scale and shift of
normalisation layers and on embeddings it mostly does harm (a norm layer's scale decays
towards zero, rare tokens' embeddings shrink between their updates), so the common
practice (BERT, GPT-2, timm, nanoGPT) leaves them out. :func:`param_groups` builds the
two groups from a model, by parameter name and by the type of module that owns each
parameter, and says what went where.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable
from typing import Any

from torch import nn

from .. import distributed

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
)
"""Module types whose parameters are normalisation scales and shifts."""

EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)

DEFAULT_NO_DECAY: tuple[str | type[nn.Module], ...] = ("*bias", *NORM_TYPES, *EMBEDDING_TYPES)
"""What :func:`param_groups` exempts from weight decay unless told otherwise: every
parameter whose name ends in ``bias``, and every parameter of a normalisation layer or
an embedding."""


class ParamGroups(list[dict[str, Any]]):
    """The groups :func:`param_groups` returns (a list of group dicts, as optimizers
    take), with :meth:`summary`, the table of what went where (also its ``str``)."""

    def summary(self) -> str:
        lines = []
        for group in self:
            names = group["param_names"]
            count = sum(p.numel() for p in group["params"])
            shown = ", ".join(names[:6]) + (
                f", ... ({len(names) - 6} more)" if len(names) > 6 else ""
            )
            tensors = f"{len(names)} tensor{'' if len(names) == 1 else 's'}"
            lines.append(
                f"weight_decay={group['weight_decay']:g}: {tensors}, {count:,} values: {shown}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    no_decay: Iterable[str | type[nn.Module]] | None = None,
    decay: Iterable[str | type[nn.Module]] = (),
    verbose: bool = True,
    **options: Any,
) -> ParamGroups:
    """Split ``model``'s trainable parameters into a group with ``weight_decay`` and one
    without.

    A parameter goes to the group without weight decay when it matches an entry of
    ``no_decay`` and none of ``decay``. An entry is a glob pattern matched against the
    parameter's full name (``"*bias"``, ``"*.pos_embed"``, ``"head.*"``) or a module
    type, matching the parameters the module holds itself (``nn.LayerNorm``).

    Args:
        model: the module whose parameters are grouped (frozen ones,
            ``requires_grad=False``, are left out; a shared parameter appears once).
        weight_decay: the decay of the first group (>= 0).
        no_decay: what to exempt; None means :data:`DEFAULT_NO_DECAY` (biases,
            normalisation layers, embeddings).
        decay: what to decay even though ``no_decay`` matches it (for instance
            ``decay=[nn.Embedding]`` to keep decaying embeddings).
        verbose: print what went where (on the main process only).
        **options: further group options for both groups (e.g. ``lr``).

    Returns:
        A :class:`ParamGroups` list: ``{"params", "param_names", "weight_decay", ...}``
        with decay first, then without (an empty group is left out).

    Example:

    >>> import torch, descent
    >>> model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4),
    ...                             torch.nn.Linear(4, 2))
    >>> groups = descent.param_groups(model, weight_decay=0.1, verbose=False)
    >>> print(groups)
    weight_decay=0.1: 1 tensor, 8 values: 2.weight
    weight_decay=0: 4 tensors, 50 values: 0.weight, 1.weight, 1.bias, 2.bias
    >>> optimizer = descent.AdamW(groups, lr=1e-3)
    """
    owner = "param_groups"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{owner}: model is a {type(model).__name__}; expected an nn.Module")
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, int | float)
        or not math.isfinite(weight_decay)
        or weight_decay < 0
    ):
        raise ValueError(f"{owner}: weight_decay={weight_decay!r}; expected a finite number >= 0")
    exempt = _rules(owner, "no_decay", DEFAULT_NO_DECAY if no_decay is None else no_decay)
    forced = _rules(owner, "decay", decay)
    owners = {
        id(param): module
        for module in model.modules()
        for param in module.parameters(recurse=False)
    }
    chosen: tuple[dict[str, Any], dict[str, Any]] = (
        {"params": [], "param_names": [], "weight_decay": float(weight_decay), **options},
        {"params": [], "param_names": [], "weight_decay": 0.0, **options},
    )
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        module = owners[id(param)]
        keep = _matches(exempt, name, module) and not _matches(forced, name, module)
        group = chosen[1 if keep else 0]
        group["params"].append(param)
        group["param_names"].append(name)
    if not chosen[0]["params"] and not chosen[1]["params"]:
        raise ValueError(
            f"{owner}: the model has no trainable parameters (all have "
            "requires_grad=False, or it has none)"
        )
    groups = ParamGroups(group for group in chosen if group["params"])
    if verbose and distributed.is_main_process():
        print(groups.summary())
    return groups


def _rules(owner: str, name: str, entries: Iterable[Any]) -> list[str | type[nn.Module]]:
    if isinstance(entries, str | type):
        entries = [entries]
    rules = list(entries)
    for index, entry in enumerate(rules):
        if not isinstance(entry, str) and not (
            isinstance(entry, type) and issubclass(entry, nn.Module)
        ):
            raise TypeError(
                f"{owner}: {name}[{index}]={entry!r}; expected a name pattern "
                "(str, e.g. '*bias') or an nn.Module subclass (e.g. nn.LayerNorm)"
            )
    return rules


def _matches(rules: list[str | type[nn.Module]], name: str, module: nn.Module) -> bool:
    return any(
        fnmatch.fnmatchcase(name, rule) if isinstance(rule, str) else isinstance(module, rule)
        for rule in rules
    )
