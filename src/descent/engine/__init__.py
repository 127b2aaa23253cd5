"""descent's engine: how an optimizer's update rule is applied, fast, to the user's tensors.

An optimizer says *what* its update is (its ``math``, one function written once, that
updates a parameter and its state in place); the engine decides *how* it runs:

* ``"fused"``: torch's fused kernel for the rule, where torch has one (Adam, AdamW, SGD,
  Adagrad; CPU and CUDA): one pass over memory, in C++;
* ``"foreach"``: the rule's math on :class:`TensorList` arguments holding every
  parameter of a bucket (same device and dtype), so each tensor operation is one
  multi-tensor (``_foreach``) call for all of them;
* ``"per_tensor"``: the rule's math on one parameter at a time (the reference path; also
  how rules that are not elementwise, such as those with matrix operations, always run).

The choice is made by :func:`choose_path`, the policy in one function. Modes
(:data:`MODES`), per optimizer with :func:`set_mode` or for the process with
:func:`default_mode` / the ``DESCENT_ENGINE`` environment variable:

``"auto"`` (default)
    fused where torch has a kernel for the rule, foreach otherwise.
``"per_tensor"``
    the reference: the math applied to each parameter separately.
``"foreach"``
    the math on lists (never a fused kernel).
``"fused"``
    as ``"auto"``.

**Users' tensors stay theirs.** The engine never changes a parameter's storage or
``.data`` and never writes into ``.grad``: it reads the parameters and gradients where
they are, each step, and updates the parameters in place, as ``torch.optim`` does. So
models stay what they were for every other library (safetensors, accelerate, FSDP2,
ZeroRedundancyOptimizer's bucket views, ``torch.compile``, pickling); a parameter
re-bound between steps (``p.data = ...``, ``model.to(...)``, ``swap_tensors``) is simply
read where it now is (its state is moved to its new dtype and device, as a parameter
that changed dtype must be). Semantics kept from torch.optim: a parameter without a
gradient this step is not touched, nor its state; ``optimizer.state`` has torch.optim's
layout; in-place updates count in each parameter's autograd version.
"""

from __future__ import annotations

import contextlib
import operator
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from . import quantize
from ._torch import FusedKernel, foreach
from .tensors import TensorList

#: The engine's modes (see the module docstring).
MODES = ("auto", "per_tensor", "foreach", "fused")

_ENGINE_ATTRIBUTE = "_descent_engine"
_MODE_ATTRIBUTE = "_descent_engine_mode"
_default = threading.local()


class Rule(Protocol):
    """What the engine needs of an optimizer (descent.Optimizer provides it)."""

    param_groups: list[dict[str, Any]]
    state: Any
    hyperparameters: Mapping[str, Any]
    math: Callable[..., Any] | None
    math_arguments: tuple[str, ...]
    fused_kernel: FusedKernel | None
    elementwise: bool
    supports_sparse: bool

    @property
    def scalar_state(self) -> frozenset[str]: ...

    def _init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Any]: ...

    def describe_param(self, group_index: int, index: int) -> str: ...


# ---------------------------------------------------------------------- modes


def _check_mode(mode: Any, where: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{where}: mode={mode!r} is not a mode of descent's engine; "
                         f"expected one of {', '.join(map(repr, MODES))}")
    return mode


def get_default_mode() -> str:
    """The mode optimizers use unless :func:`set_mode` gave them one."""
    mode = getattr(_default, "mode", None)
    if mode is not None:
        return mode
    return _check_mode(os.environ.get("DESCENT_ENGINE", "auto"), "DESCENT_ENGINE")


@contextlib.contextmanager
def default_mode(mode: str) -> Iterator[None]:
    """Within the block (in this thread), optimizers without a mode of their own use ``mode``.

    Example::

        with descent.engine.default_mode("per_tensor"):
            opt.step()      # the reference path
    """
    _check_mode(mode, "descent.engine.default_mode")
    previous = getattr(_default, "mode", None)
    _default.mode = mode
    try:
        yield
    finally:
        _default.mode = previous


def set_mode(optimizer: torch.optim.Optimizer, mode: str | None) -> None:
    """Give ``optimizer`` its own engine mode (``None``: follow the default again)."""
    if mode is not None:
        _check_mode(mode, "descent.engine.set_mode")
    optimizer.__dict__[_MODE_ATTRIBUTE] = mode


def mode_of(optimizer: torch.optim.Optimizer) -> str:
    """The mode ``optimizer``'s next step will use."""
    mode = optimizer.__dict__.get(_MODE_ATTRIBUTE)
    return mode if mode is not None else get_default_mode()


# ---------------------------------------------------------------------- policy


def choose_path(mode: str, rule: Rule, bucket: Bucket, low_precision: bool = False) -> str:
    """How one bucket of parameters is updated: ``"fused"``, ``"foreach"`` or
    ``"per_tensor"``. The whole policy of the engine is this function.
    ``low_precision``: the bucket's state or update is low precision
    (:mod:`descent.engine.quantize`), which torch's fused kernels cannot run."""
    if mode == "per_tensor" or not rule.elementwise or bucket.is_sparse:
        return "per_tensor"
    if mode in ("auto", "fused") and rule.fused_kernel is not None and bucket.fusable \
            and not low_precision:
        return "fused"
    return "foreach"


# ---------------------------------------------------------------------- layout


@dataclass
class Bucket:
    """Parameters of one group that share device and dtype (and so one kernel call)."""

    indices: list[int]
    params: list[Tensor]
    is_complex: bool
    fusable: bool
    is_sparse: bool = False


@dataclass
class _Layout:
    params: list[Tensor]
    pointers: list[int]
    buckets: list[Bucket] = field(default_factory=list)
    state_options: Any = None  # the storage options its state last conformed to (quantize)


def _layout(params: Sequence[Tensor]) -> _Layout:
    by_kind: dict[tuple[Any, ...], list[int]] = {}
    for i, param in enumerate(params):
        kind = (param.device, param.dtype, param.layout, param.is_contiguous())
        by_kind.setdefault(kind, []).append(i)
    buckets = []
    for (device, dtype, tensor_layout, contiguous), indices in by_kind.items():
        is_complex = dtype.is_complex
        buckets.append(Bucket(indices, [params[i] for i in indices], is_complex,
                              fusable=contiguous and not is_complex
                              and device.type in ("cpu", "cuda")
                              and tensor_layout == torch.strided,
                              is_sparse=tensor_layout != torch.strided))
    return _Layout(list(params), list(map(Tensor.data_ptr, params)), buckets)


class Engine:
    """Applies one optimizer's updates (created on its first step)."""

    def __init__(self) -> None:
        self.layouts: dict[int, _Layout] = {}

    def layout(self, group: dict[str, Any]) -> _Layout:
        """The group's layout, rebuilt if a parameter was added, removed or re-bound."""
        params = group["params"]
        layout = self.layouts.get(id(group))
        if (layout is None or len(layout.params) != len(params)
                or not all(map(operator.is_, params, layout.params))
                or list(map(Tensor.data_ptr, params)) != layout.pointers):
            layout = self.layouts[id(group)] = _layout(params)
        return layout


def _engine(optimizer: Any) -> Engine:
    engine = optimizer.__dict__.get(_ENGINE_ATTRIBUTE)
    if engine is None:
        engine = optimizer.__dict__[_ENGINE_ATTRIBUTE] = Engine()
    return engine


def forget(optimizer: Any) -> None:
    """Drop the engine's cached layouts (after ``load_state_dict``)."""
    optimizer.__dict__.pop(_ENGINE_ATTRIBUTE, None)


# ---------------------------------------------------------------------- stepping


def step(optimizer: Rule) -> None:
    """Update every parameter of every group of ``optimizer`` that has a gradient."""
    mode = mode_of(optimizer)  # type: ignore[arg-type]
    engine = _engine(optimizer)
    for group_index, group in enumerate(optimizer.param_groups):
        if not group["params"]:
            continue
        layout = engine.layout(group)
        quantize.conform(optimizer, group, layout)
        options = _numbers(group, optimizer.hyperparameters)
        for bucket in layout.buckets:
            low = quantize.applies(options, bucket.params[0])
            _step_bucket(optimizer, group, group_index, bucket, options,
                         choose_path(mode, optimizer, bucket, low))


def _numbers(group: Mapping[str, Any], names: Mapping[str, Any]) -> dict[str, Any]:
    """The group's hyperparameters, one-element tensors (``lr=torch.tensor(0.01)``, of
    any shape torch accepts) read as Python numbers."""
    options = {}
    for name in names:
        value = group[name]
        if isinstance(value, Tensor):
            value = value.item()
        elif isinstance(value, tuple) and any(isinstance(v, Tensor) for v in value):
            value = tuple(v.item() if isinstance(v, Tensor) else v for v in value)
        options[name] = value
    return options


def _step_bucket(optimizer: Rule, group: dict[str, Any], group_index: int, bucket: Bucket,
                 options: dict[str, Any], path: str) -> None:
    params = bucket.params
    grads = [param.grad for param in params]
    present = [i for i, grad in enumerate(grads) if grad is not None]
    if not present:
        return
    sparse = [i for i in present if grads[i].layout != torch.strided]  # type: ignore[union-attr]
    if sparse:
        if not optimizer.supports_sparse:
            raise TypeError(f"{optimizer.describe_param(group_index, bucket.indices[sparse[0]])} "
                            f"has a sparse gradient; {type(optimizer).__name__} takes dense "
                            "gradients (SGD, Adagrad and SparseAdam take sparse ones)")
        path = "per_tensor"  # sparse gradients go one tensor at a time, as in torch.optim
    state_map = optimizer.state
    low_precision = quantize.applies(options, params[0])  # state moves in quantize.call_math
    entries = []
    for i in present:
        param = params[i]
        entry = state_map.get(param)
        if not entry:
            entry = optimizer._init_state(param, group)
            if entry:
                state_map[param] = entry
        elif not low_precision and _needs_move(entry, param, optimizer.scalar_state):
            _move_state(entry, param, optimizer.scalar_state)
        entries.append(entry)
    scalar_keys = sorted(optimizer.scalar_state)
    for run in _runs(present, entries, scalar_keys, single=path == "per_tensor"):
        _step_run(optimizer, [params[i] for i in run.indices], [grads[i] for i in run.indices],
                  run.entries, options, scalar_keys, bucket.is_complex, path)


@dataclass
class _Run:
    indices: list[int]
    entries: list[dict[str, Any]]


def _runs(present: list[int], entries: list[dict[str, Any]], scalar_keys: list[str],
          single: bool) -> list[_Run]:
    """Parameters that can share one call: same state keys, same scalar state values."""
    if single:
        return [_Run([i], [entry]) for i, entry in zip(present, entries, strict=True)]
    runs: dict[Any, _Run] = {}
    for i, entry in zip(present, entries, strict=True):
        signature = (frozenset(entry), tuple(float(entry[key]) for key in scalar_keys
                                             if key in entry))
        run = runs.get(signature)
        if run is None:
            runs[signature] = _Run([i], [entry])
        else:
            run.indices.append(i)
            run.entries.append(entry)
    return list(runs.values())


def _step_run(optimizer: Rule, params: list[Tensor], grads: list[Tensor],
              entries: list[dict[str, Any]], options: dict[str, Any], scalar_keys: list[str],
              is_complex: bool, path: str) -> None:
    first = entries[0]
    steps = [entry["step"] for entry in entries] if "step" in first else []
    if steps:
        if len(steps) == 1:
            steps[0].add_(1)
        else:
            foreach("add_")(steps, 1)
    originals = params
    if is_complex:
        params = [torch.view_as_real(p) for p in params]
        grads = [torch.view_as_real(g) for g in grads]
    tensor_keys = [key for key in first if key not in scalar_keys]
    lists = {key: [_real(entry[key]) for entry in entries] for key in tensor_keys}
    if path == "fused":
        assert optimizer.fused_kernel is not None
        device_steps = [s.to(params[0].device) for s in steps] \
            if params[0].device.type != "cpu" else steps
        lr = float(options["lr"])
        if optimizer.fused_kernel(params, grads, lists, device_steps, options, lr):
            return
    scalars = {key: first[key] for key in scalar_keys if key in first and key != "step"}
    step_count = float(steps[0]) if steps else None
    wrap: Callable[[list[Tensor]], Any] = (TensorList if optimizer.elementwise
                                           else operator.itemgetter(0))
    if quantize.applies(options, originals[0]):  # low-precision state or parameters
        created = quantize.call_math(call_math, optimizer, params, grads, entries, scalars,
                                     step_count, options)
    else:
        created = call_math(optimizer, wrap(params), wrap(grads),
                            {key: wrap(values) for key, values in lists.items()}, scalars,
                            step_count, options)
    for key in scalars:
        for entry in entries[1:]:
            entry[key].copy_(scalars[key])
    if created:
        state_map = optimizer.state
        for key, values in created.items():
            tensors = values.tensors if isinstance(values, TensorList) else [values]
            for entry, tensor in zip(entries, tensors, strict=True):
                entry[key] = torch.view_as_complex(tensor) if is_complex else tensor
        for param, entry in zip(originals, entries, strict=True):
            state_map[param] = entry


def _real(tensor: Any) -> Any:
    return torch.view_as_real(tensor) if isinstance(tensor, Tensor) and tensor.is_complex() \
        else tensor


def call_math(rule: Any, param: Any, grad: Any, state: Mapping[str, Any],
              scalars: Mapping[str, Tensor], step_count: float | None,
              options: Mapping[str, Any]) -> dict[str, Any]:
    """Call ``rule.math`` with its keyword arguments; return the state entries it created.

    ``param``, ``grad`` and the values of ``state`` (per-element state, absent or None
    for an entry not created yet) are :class:`TensorList` for elementwise rules, plain
    tensors otherwise; ``scalars`` is the shared scalar state (updated in place);
    ``options`` holds the hyperparameters.
    """
    arguments: dict[str, Any] = {}
    for name in rule.math_arguments:
        if name == "step":
            arguments[name] = step_count
        elif name in options:
            arguments[name] = options[name]
        elif name in scalars:
            arguments[name] = scalars[name]
        else:
            arguments[name] = state.get(name)
    return rule.math(param, grad, **arguments) or {}


def _needs_move(entry: Mapping[str, Any], param: Tensor, scalar_keys: frozenset[str]) -> bool:
    for key, value in entry.items():
        if key not in scalar_keys and isinstance(value, Tensor):
            return value.dtype != param.dtype or value.device != param.device
    return False


def _move_state(entry: dict[str, Any], param: Tensor, scalar_keys: frozenset[str]) -> None:
    """State of a parameter re-bound to another dtype or device, moved along with it."""
    for key, value in entry.items():
        if key not in scalar_keys and isinstance(value, Tensor):
            entry[key] = value.to(dtype=param.dtype, device=param.device)


def compact_state(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A plain-dict copy of one parameter's state in which views are compact clones.

    Saving a view saves its whole storage (``torch.save``) or is refused (safetensors);
    a clone holds only the entry's own elements. A quantised entry (a dict, see
    :mod:`.quantize`) is a new dict holding the same tensors.
    """
    return {key: value.clone() if isinstance(value, Tensor) and value._base is not None
            else dict(value) if isinstance(value, Mapping) else value
            for key, value in entry.items()}


__all__ = [
    "MODES", "Bucket", "Rule", "TensorList", "call_math", "choose_path", "compact_state",
    "default_mode", "forget", "get_default_mode", "mode_of", "set_mode", "step",
]
