"""``save_checkpoint`` / ``load_checkpoint``: the full training state, for any training loop.

What a checkpoint holds:

* ``model``: every module's parameters and buffers (``state_dict()``, with its
  version metadata); a ``DistributedDataParallel`` wrapper is looked through, so a
  checkpoint written under DDP loads into a plain module and back;
* ``optimizers``, ``schedulers``: each object's ``state_dict()`` and its class name;
* ``trainer_state``: whatever the loop needs to continue (counters, the data order,
  callback state, the history), as nested dicts / lists / tuples of JSON values,
  tensors and NumPy arrays;
* ``extra``: anything else of the same kinds, for the user;
* ``step`` and ``metrics``: labels used by :class:`~descent.checkpoint.CheckpointManager`;
* the random number generator states of every process (see :mod:`.rng`).

``model``, ``optimizers`` and ``schedulers`` each take one object, a list of objects,
or a dict of named objects (for a GAN: ``model={"generator": g, "discriminator":
d}``); one object is the same as a one-element list. Loading must pass the same
structure (the names are checked).

Loading checks everything before it changes anything: the files' checksums, then
that each model has exactly the checkpoint's keys with the same shapes and dtypes,
that each optimizer is of the same class with the same groups and state shapes
(descent optimizers' own validation), and each scheduler of the same class. A
mismatch raises :class:`~descent.checkpoint.CheckpointMismatchError` naming it, a
damaged checkpoint :class:`~descent.checkpoint.CorruptCheckpointError`; in both cases
nothing was loaded.

Example (a loop of your own)::

    save_checkpoint("run/last", model=model, optimizers=opt, schedulers=sched,
                    trainer_state={"epoch": epoch, "step": step})
    ...
    ckpt = load_checkpoint("run/last", model=model, optimizers=opt, schedulers=sched)
    epoch, step = ckpt.trainer_state["epoch"], ckpt.trainer_state["step"]
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..distributed import is_zero_optimizer
from .format import CheckpointMismatchError, read_checkpoint, write_checkpoint
from .rng import capture_rng_state, restore_rng_state


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` returns besides the objects it loaded into.

    ``trainer_state`` and ``extra`` are the trees given to :func:`save_checkpoint`
    (tensors on the CPU, tuples kept as tuples); ``rng_state`` is the list of
    per-process generator states (one per rank), or None if none was saved.
    """

    path: Path
    step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    trainer_state: Any = None
    extra: Any = None
    rng_state: list[dict[str, Any]] | None = None


# ---------------------------------------------------------------------- helpers


def _named(kind: str, value: Any) -> dict[str, Any]:
    """One object, a list of objects or a dict of named objects -> {name: object}."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        bad = [key for key in value if not isinstance(key, str)]
        if bad:
            raise TypeError(
                f"checkpoint: {kind} has non-string names {bad!r}; name objects with strings"
            )
        return dict(value)
    if isinstance(value, list | tuple):
        return {str(index): item for index, item in enumerate(value)}
    return {"0": value}


def _unwrap(model: Any, label: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"checkpoint: {label} has type {type(model).__name__}; expected an nn.Module"
        )
    parallel = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, parallel) else model


def _type_name(obj: Any) -> str:
    if is_zero_optimizer(obj):
        return f"ZeroRedundancyOptimizer[{type(obj.optim).__name__}]"
    return type(obj).__name__


def _check_stateful(kind: str, objects: Mapping[str, Any]) -> None:
    for name, obj in objects.items():
        if not (
            callable(getattr(obj, "state_dict", None))
            and callable(getattr(obj, "load_state_dict", None))
        ):
            raise TypeError(
                f"checkpoint: {kind}[{name!r}] has type {type(obj).__name__}; "
                "expected an object with state_dict() and load_state_dict()"
            )


def _optimizer_state(name: str, optimizer: Any) -> dict[str, Any]:
    try:
        state: dict[str, Any] = optimizer.state_dict()
        return state
    except RuntimeError as error:
        if is_zero_optimizer(optimizer):
            raise RuntimeError(
                f"checkpoint: optimizers[{name!r}] is a ZeroRedundancyOptimizer whose state is "
                "sharded; call descent.distributed.consolidate_optimizer_state(optimizer) on "
                "every rank first (CheckpointManager.save does it for you)"
            ) from error
        raise


# ---------------------------------------------------------------------- save


def save_checkpoint(
    path: str | Path,
    *,
    model: Any = None,
    optimizers: Any = None,
    schedulers: Any = None,
    trainer_state: Any = None,
    extra: Any = None,
    step: int | None = None,
    metrics: Mapping[str, float] | None = None,
    rng: bool | Sequence[Mapping[str, Any]] = True,
) -> Path:
    """Write the full training state to the checkpoint directory ``path``, atomically.

    Args:
        path: the checkpoint directory; it must not exist or must be a descent
            checkpoint, which is then replaced in one step (a crash leaves the old or
            the new one).
        model: a module, a list of modules or a dict of named modules.
        optimizers: an optimizer, a list or a dict of them (torch or descent; a
            ``ZeroRedundancyOptimizer`` must be consolidated first, see
            :func:`descent.distributed.consolidate_optimizer_state`).
        schedulers: the same for LR schedulers (or anything with ``state_dict``).
        trainer_state, extra: trees of JSON values, tensors and NumPy arrays.
        step, metrics: labels kept in the index (read by the manager without loading).
        rng: True to save this process's generator states, False for none, or a list
            of per-rank states from :func:`capture_rng_state` gathered on every rank.

    Returns the checkpoint's path. Raises ``TypeError`` naming any value that cannot
    be stored; nothing is written then. Under ``torch.distributed`` call it on one rank
    only (rank 0), or use :class:`~descent.checkpoint.CheckpointManager`, which
    gathers every rank's generator states and ZeRO shards first.
    """
    models = {
        name: _unwrap(module, f"model[{name!r}]") for name, module in _named("model", model).items()
    }
    named_optimizers = _named("optimizers", optimizers)
    named_schedulers = _named("schedulers", schedulers)
    _check_stateful("optimizers", named_optimizers)
    _check_stateful("schedulers", named_schedulers)
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ValueError(f"save_checkpoint: step={step!r}; expected an integer >= 0 or None")
    if isinstance(rng, bool):
        rng_states = [capture_rng_state()] if rng else None
    elif isinstance(rng, Sequence) and all(isinstance(item, Mapping) for item in rng):
        rng_states = [dict(item) for item in rng]
    else:
        raise TypeError(
            f"save_checkpoint: rng has type {type(rng).__name__}; expected a bool "
            "or a list of per-rank states from capture_rng_state()"
        )

    model_states = {}
    for name, module in models.items():
        state = module.state_dict()
        model_states[name] = {
            "type": type(module).__name__,
            "state": dict(state),
            "metadata": dict(getattr(state, "_metadata", {}) or {}),
        }
    content = {
        "step": step,
        "metrics": dict(metrics or {}),
        "models": model_states,
        "optimizers": {
            name: {"type": _type_name(opt), "state": _optimizer_state(name, opt)}
            for name, opt in named_optimizers.items()
        },
        "schedulers": {
            name: {"type": type(sched).__name__, "state": sched.state_dict()}
            for name, sched in named_schedulers.items()
        },
        "trainer_state": trainer_state,
        "extra": extra,
        "rng": rng_states,
    }
    return write_checkpoint(path, content)


# ---------------------------------------------------------------------- load


def _match_names(path: Path, kind: str, saved: Mapping[str, Any], given: Mapping[str, Any]) -> None:
    if set(saved) != set(given):
        raise CheckpointMismatchError(
            f"checkpoint {path}: it holds {kind} {sorted(saved)}, "
            f"but {kind} {sorted(given)} were given to load into"
        )


def _check_model(path: Path, label: str, module: nn.Module, saved: Mapping[str, Any]) -> None:
    where = f"checkpoint {path}: {label}"
    expected = module.state_dict()
    state = saved["state"]
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"the model has keys the checkpoint lacks: {missing[:10]}")
        if unexpected:
            parts.append(f"the checkpoint has keys the model lacks: {unexpected[:10]}")
        raise CheckpointMismatchError(
            f"{where} ({saved['type']} in the checkpoint, "
            f"{type(module).__name__} given): {'; '.join(parts)}"
        )
    for key, tensor in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointMismatchError(
                f"{where}: {key!r} is a {type(value).__name__} in the checkpoint, not a tensor"
            )
        if value.shape != tensor.shape:
            raise CheckpointMismatchError(
                f"{where}: {key!r} has shape {tuple(value.shape)} in "
                f"the checkpoint, {tuple(tensor.shape)} in the model"
            )
        if value.dtype != tensor.dtype:
            raise CheckpointMismatchError(
                f"{where}: {key!r} has dtype {value.dtype} in the "
                f"checkpoint, {tensor.dtype} in the model"
            )


def _check_optimizer(path: Path, label: str, optimizer: Any, saved: Mapping[str, Any]) -> None:
    where = f"checkpoint {path}: {label}"
    if saved["type"] != _type_name(optimizer):
        raise CheckpointMismatchError(
            f"{where}: the checkpoint holds a {saved['type']}, but a "
            f"{_type_name(optimizer)} was given"
        )
    state_dict = saved["state"]
    try:
        if hasattr(optimizer, "_check_state_dict"):  # a descent optimizer: its own checks
            optimizer._check_state_dict(state_dict)
        else:
            _check_torch_optimizer(optimizer, state_dict)
    except (ValueError, TypeError, KeyError) as error:
        raise CheckpointMismatchError(f"{where}: {error}") from None


def _check_torch_optimizer(optimizer: Any, state_dict: Any) -> None:
    """Structural checks for an optimizer that has no validating ``load_state_dict``."""
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
        raise ValueError("the saved state dict lacks 'state' or 'param_groups'")
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError(
            f"the checkpoint has {len(saved_groups)} param groups, the optimizer "
            f"has {len(optimizer.param_groups)}"
        )
    index_to_param: dict[Any, torch.Tensor] = {}
    for gi, (saved, group) in enumerate(zip(saved_groups, optimizer.param_groups, strict=True)):
        if len(saved["params"]) != len(group["params"]):
            raise ValueError(
                f"param_groups[{gi}] has {len(saved['params'])} parameters in the "
                f"checkpoint, {len(group['params'])} in the optimizer"
            )
        index_to_param.update(zip(saved["params"], group["params"], strict=True))
        for pi, (saved_id, param) in enumerate(zip(saved["params"], group["params"], strict=True)):
            entry = state_dict["state"].get(saved_id, {})
            for key, value in entry.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.dim() > 0
                    and value.numel() == param.numel()
                    and value.shape != param.shape
                ):
                    raise ValueError(
                        f"state of param_groups[{gi}]['params'][{pi}]: {key} has "
                        f"shape {tuple(value.shape)}, the parameter "
                        f"{tuple(param.shape)}"
                    )
    unknown = [key for key in state_dict["state"] if key not in index_to_param]
    if unknown:
        raise ValueError(
            f"state has entries for parameter ids {unknown[:10]}, which no param group lists"
        )
    local = getattr(optimizer, "optim", None)  # ZeroRedundancyOptimizer's local optimizer
    if local is not None and hasattr(local, "_check_state_entry"):
        for gi, saved in enumerate(saved_groups):
            for pi, saved_id in enumerate(saved["params"]):
                entry = state_dict["state"].get(saved_id)
                if entry is not None:
                    local._check_state_entry(
                        index_to_param[saved_id],
                        dict(saved),
                        f"param_groups[{gi}]['params'][{pi}]",
                        entry,
                    )


def _check_scheduler(path: Path, label: str, scheduler: Any, saved: Mapping[str, Any]) -> None:
    where = f"checkpoint {path}: {label}"
    if saved["type"] != type(scheduler).__name__:
        raise CheckpointMismatchError(
            f"{where}: the checkpoint holds a {saved['type']}, but a "
            f"{type(scheduler).__name__} was given"
        )
    current, state = scheduler.state_dict(), saved["state"]
    if isinstance(current, Mapping) and isinstance(state, Mapping) and set(current) != set(state):
        raise CheckpointMismatchError(
            f"{where}: the saved state has keys {sorted(state)}, the "
            f"scheduler's has {sorted(current)}"
        )
    if hasattr(scheduler, "_check_state_dict"):  # a descent scheduler: check without applying
        try:
            scheduler._check_state_dict(state)
        except (ValueError, TypeError) as error:
            raise CheckpointMismatchError(f"{where}: {error}") from None


def _rng_for_this_process(path: Path, states: list[dict[str, Any]]) -> dict[str, Any]:
    from descent import distributed

    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    if len(states) != world_size:
        raise CheckpointMismatchError(
            f"checkpoint {path}: it holds random generator states for {len(states)} "
            f"process(es), this run has {world_size}; exact resume needs the same world size "
            "(pass restore_rng=False to load without the generator states)"
        )
    return states[rank]


def load_checkpoint(
    path: str | Path,
    *,
    model: Any = None,
    optimizers: Any = None,
    schedulers: Any = None,
    restore_rng: bool = True,
) -> Checkpoint:
    """Load a checkpoint into the given objects, after checking all of it; return the rest.

    ``model``, ``optimizers`` and ``schedulers`` take the same structures as in
    :func:`save_checkpoint`; leave one out (None) to skip that part (for instance,
    pass only ``model`` to load weights for inference). With ``restore_rng`` the
    generators of this process are set to the states saved for its rank.

    Raises :class:`CorruptCheckpointError` if a file is missing, damaged or refused by
    the reader (see :mod:`descent.checkpoint.format`) and
    :class:`CheckpointMismatchError` if the checkpoint does not fit the objects
    (naming the first mismatch; descent schedulers check their saved state without
    applying it first); in either case nothing was changed.
    """
    path = Path(path)
    content = read_checkpoint(path)
    models = {
        name: _unwrap(module, f"model[{name!r}]") for name, module in _named("model", model).items()
    }
    named_optimizers = _named("optimizers", optimizers)
    named_schedulers = _named("schedulers", schedulers)
    _check_stateful("optimizers", named_optimizers)
    _check_stateful("schedulers", named_schedulers)

    if models:
        _match_names(path, "models", content["models"], models)
        for name, module in models.items():
            _check_model(path, f"model[{name!r}]", module, content["models"][name])
    if named_optimizers:
        _match_names(path, "optimizers", content["optimizers"], named_optimizers)
        for name, optimizer in named_optimizers.items():
            _check_optimizer(path, f"optimizers[{name!r}]", optimizer, content["optimizers"][name])
    if named_schedulers:
        _match_names(path, "schedulers", content["schedulers"], named_schedulers)
        for name, scheduler in named_schedulers.items():
            _check_scheduler(path, f"schedulers[{name!r}]", scheduler, content["schedulers"][name])
    rng_state = None
    if restore_rng and content["rng"] is not None:  # checked by read_checkpoint
        rng_state = _rng_for_this_process(path, content["rng"])

    # everything checked: apply
    for name, module in models.items():
        saved = content["models"][name]
        state = OrderedDict(saved["state"])
        # torch's state dicts carry their modules' versions as an attribute, undeclared
        state._metadata = OrderedDict(saved["metadata"])  # type: ignore[attr-defined]
        module.load_state_dict(state)
    for name, optimizer in named_optimizers.items():
        # ZeroRedundancyOptimizer.load_state_dict edits its argument: give it a copy
        saved = content["optimizers"][name]["state"]
        optimizer.load_state_dict({**saved, "state": dict(saved["state"])})
    for name, scheduler in named_schedulers.items():
        scheduler.load_state_dict(content["schedulers"][name]["state"])
    if rng_state is not None:
        restore_rng_state(rng_state)
    return Checkpoint(
        path=path,
        step=content["step"],
        metrics=content["metrics"],
        trainer_state=content["trainer_state"],
        extra=content["extra"],
        rng_state=content["rng"],
    )
