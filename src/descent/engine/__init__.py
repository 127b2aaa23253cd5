"""descent's engine: how an optimizer's update rule is applied, fast, to the user's tensors.

An optimizer says *what* its update is (its ``math``, one function written once, that
updates a parameter and its state in place); the engine decides *how* it runs, for each
*bucket* of parameters (those of one param group that share device and dtype):

* ``"generated"``: one loop over all elements of all tensors of the bucket, generated
  from the rule's own math (:mod:`.trace` records it, :mod:`.cpu` writes and builds the
  C kernel in the background); every rule, one pass over memory, threads across tensors;
* ``"fused"``: torch's fused kernel for the rule, where torch has one (Adam, AdamW, SGD,
  Adagrad; CPU and CUDA);
* ``"foreach"``: the rule's math on :class:`TensorList` arguments holding every
  parameter of the bucket, so each tensor operation is one multi-tensor call;
* ``"per_tensor"``: the rule's math on one parameter at a time (the reference path; also
  how rules that are not elementwise always run, and parameters with sparse gradients).

:func:`choose_path` is the whole policy. Modes (:data:`MODES`), per optimizer with
:func:`set_mode` or for the process with :func:`default_mode` / ``DESCENT_ENGINE``:

``"auto"`` (default)
    torch's fused kernel where the rule has one, on CUDA always and on the CPU for
    buckets of fewer than :data:`FUSED_MAX_TENSORS` tensors; otherwise generated kernels
    once built (the first steps use the next choice while the compiler works in the
    background, so no step waits for it), for buckets of at least
    :data:`GENERATED_MIN_NUMEL` elements; else torch's fused kernel where the rule has
    one; else foreach.
``"per_tensor"``
    the reference: the math applied to each parameter separately.
``"foreach"``
    the math on lists (never a kernel of torch's or a generated one).
``"fused"``
    torch's fused kernel where the rule has one, else foreach.
``"compiled"``
    generated kernels at every size, waiting for the build (for tests and benchmarks).

Where a path cannot apply (no C compiler, a dtype or layout the kernel does not take,
a fused kernel that refuses its arguments), the next one runs: a result is never wrong
because a fast path was unavailable.

**Users' tensors stay theirs.** The engine never changes a parameter's storage or
``.data`` and never writes into ``.grad``: it reads the parameters and gradients where
they are, each step, and updates the parameters in place, as ``torch.optim`` does. So
models stay what they were for every other library (safetensors, accelerate, FSDP2,
ZeroRedundancyOptimizer's bucket views, ``torch.compile``, pickling). A parameter
re-bound between steps (``p.data = ...``, ``model.to(...)``, ``swap_tensors``) is read
where it now is, its state moved to its new dtype and device. Semantics kept from
torch.optim: a parameter without a gradient this step is not touched, nor its state;
``optimizer.state`` has torch.optim's layout; in-place updates count in each
parameter's autograd version.

**Host cost.** For each bucket the engine keeps the lists of state tensors and one
buffer per scalar state entry (each parameter's ``step`` is a 0-dim view of it, so all
steps are counted by one operation); ``optimizer.state`` counts its writes
(:mod:`.state`), so these are rebuilt only when the state was written, not at every step.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import torch
from torch import Tensor

from . import cpu, cuda, quantize
from ._torch import FUSED_DTYPES, FusedKernel
from .state import StateTable, tracked
from .tensors import TensorList
from .trace import NotTraceable, trace

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

#: The engine's modes (see the module docstring).
MODES = ("auto", "per_tensor", "foreach", "fused", "compiled")

#: In ``"auto"`` mode, buckets with fewer elements are not given generated kernels: one
#: call of torch's fused kernel (or a few multi-tensor calls) costs less there than
#: recording the math and handing addresses to a kernel.
GENERATED_MIN_NUMEL = 1 << 15

#: In ``"auto"`` mode on the CPU, a bucket of fewer tensors runs torch's fused kernel
#: where the rule has one, not a generated kernel: both stream memory equally fast, and
#: one call of torch's kernel costs less than recording the math; from this many tensors
#: up the generated kernel's lower cost per tensor wins (measured on Adam and SGD with
#: 1 to 64 tensors of 100,000 to 1,000,000 elements in all: docs, "Speed").
FUSED_MAX_TENSORS = 32

_ENGINE_ATTRIBUTE = "_descent_engine"
_MODE_ATTRIBUTE = "_descent_engine_mode"
_default = threading.local()
_grad_of = operator.attrgetter("grad")
_is_none = functools.partial(operator.is_, None)
_is_sparse = operator.attrgetter("is_sparse")


class Rule(Protocol):
    """What the engine needs of an optimizer (descent.Optimizer provides it)."""

    param_groups: list[dict[str, Any]]
    state: Any

    # read-only: a rule declares these on its class (descent.Optimizer's ClassVars)
    @property
    def hyperparameters(self) -> Mapping[str, Any]: ...

    @property
    def math(self) -> Callable[..., Any] | None: ...

    @property
    def math_arguments(self) -> tuple[str, ...]: ...

    @property
    def fused_kernel(self) -> FusedKernel | None: ...

    @property
    def elementwise(self) -> bool: ...

    @property
    def supports_sparse(self) -> bool: ...

    @property
    def scalar_state(self) -> frozenset[str]: ...

    @property
    def sharded_math(self) -> bool: ...

    def _init_state(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, Any]: ...

    def describe_param(self, group_index: int, index: int) -> str: ...

    def cautious_call(
        self, param: Any, grad: Any, arguments: dict[str, Any], options: Mapping[str, Any]
    ) -> dict[str, Any]: ...


# ---------------------------------------------------------------------- modes


def _check_mode(mode: Any, where: str) -> str:
    if mode not in MODES:
        raise ValueError(
            f"{where}: mode={mode!r} is not a mode of descent's engine; "
            f"expected one of {', '.join(map(repr, MODES))}"
        )
    return cast(str, mode)  # one of MODES


def get_default_mode() -> str:
    """The mode optimizers use unless :func:`set_mode` gave them one."""
    mode: str | None = getattr(_default, "mode", None)
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


def mode_of(optimizer: torch.optim.Optimizer | Rule) -> str:
    """The mode ``optimizer``'s next step will use."""
    mode: str | None = optimizer.__dict__.get(_MODE_ATTRIBUTE)
    return mode if mode is not None else get_default_mode()


# ---------------------------------------------------------------------- layout


@dataclass
class Bucket:
    """Parameters of one group that share device and dtype, and what the engine keeps for
    them between steps."""

    indices: list[int]
    params: list[Tensor]
    device: torch.device
    dtype: torch.dtype
    contiguous: bool
    shares_storage: bool
    is_sparse: bool
    offsets: np.ndarray
    pointers: np.ndarray  # each parameter's (local shard's) data address
    sharded: bool = False  # DTensor parameters: updated through their local shards
    is_complex: bool = field(init=False)
    needs_view: bool = field(init=False)
    real_dtype: torch.dtype = field(init=False)
    numel: int = field(init=False)
    fusable: bool = field(init=False)
    generable: bool = field(init=False)
    everything: list[int] = field(init=False)
    # Kept between steps while ``optimizer.state`` is unchanged (see `_adopt`):
    table: Any = None
    changes: int = -1
    entries: list[Any] = field(default_factory=list)
    keys: frozenset[str] | None = None
    lists: dict[str, list[Tensor]] = field(default_factory=dict)
    scalars: dict[str, Tensor] = field(default_factory=dict)
    device_steps: tuple[Tensor, list[Tensor]] | None = None
    dense_state: bool = True
    launch: dict[str, Any] = field(default_factory=dict)
    state_pointers: dict[str, np.ndarray] = field(default_factory=dict)
    complete: bool = False  # every parameter has an entry (stepped at least once)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # NumPy views of `scalars`
    step_views: list[Tensor | None] = field(default_factory=list)  # each entry's "step" tensor
    pointer_list: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.is_complex = self.dtype.is_complex
        #: Whether the math sees other tensors than the parameters themselves.
        self.needs_view = self.sharded or self.is_complex
        #: The dtype the math sees (complex tensors are viewed as pairs of reals).
        self.real_dtype = {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(
            self.dtype, self.dtype
        )
        self.numel = int(self.offsets[-1])
        #: Whether torch's fused kernels take these tensors.
        self.fusable = (
            self.contiguous
            and not self.is_sparse
            and self.dtype in FUSED_DTYPES
            and self.device.type in ("cpu", "cuda")
        )
        #: Whether a generated kernel can update these tensors.
        self.generable = (
            self.contiguous
            and not self.shares_storage
            and not self.is_sparse
            and _backend(self.device).supports(self.real_dtype)
        )
        self.everything = list(range(len(self.params)))
        self.pointer_list = self.pointers.tolist()

    def view(self, tensor: Tensor) -> Tensor:
        """``tensor`` as the math sees it: a DTensor's local shard, complex as real pairs."""
        if self.sharded:
            tensor = _local(tensor)
        return torch.view_as_real(tensor) if self.dtype.is_complex else tensor

    def unview(self, tensor: Tensor, param: Tensor) -> Tensor:
        """New state made by the math, as ``param``'s state: complex, or a DTensor."""
        if self.dtype.is_complex:
            tensor = torch.view_as_complex(tensor)
        if self.sharded:
            dtensor = _dtensor_type()
            assert dtensor is not None
            sharded = cast("DTensor", param)  # a sharded bucket's parameters are DTensors
            tensor = dtensor.from_local(
                tensor,
                sharded.device_mesh,
                sharded.placements,
                run_check=False,
                shape=param.shape,
                stride=param.stride(),
            )
        return tensor


@dataclass
class _Layout:
    params: list[Tensor]
    buckets: list[Bucket]
    state_options: Any = None  # the storage options its state last conformed to (quantize)


@functools.cache
def _dtensor_type() -> type[DTensor] | None:
    """torch's DTensor class, if torch.distributed has it."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - builds without torch.distributed
        return None
    return DTensor


def _local(tensor: Tensor) -> Tensor:
    """A DTensor's local shard (the same storage), any other tensor itself.

    Elementwise rules update each element from the same element of the gradient and the
    state, so sharded parameters (FSDP2) are updated through their local shards, with
    every path of the engine, as plain tensors.
    """
    local = getattr(tensor, "_local_tensor", None)
    return local if local is not None and isinstance(tensor, _dtensor_type() or ()) else tensor


def _pointer(tensor: Tensor) -> int:
    try:
        return _local(tensor).data_ptr()
    except RuntimeError:  # no storage (sparse, meta, some tensor subclasses)
        return id(tensor)


def _pointers(tensors: Sequence[Tensor]) -> np.ndarray:
    """Every tensor's data address (a C-level loop for plain tensors)."""
    try:
        return np.fromiter(map(Tensor.data_ptr, tensors), np.int64, len(tensors))
    except RuntimeError:
        return np.fromiter(map(_pointer, tensors), np.int64, len(tensors))


def _pointer_list(tensors: Sequence[Tensor]) -> list[int]:
    try:
        return list(map(Tensor.data_ptr, tensors))
    except RuntimeError:
        return list(map(_pointer, tensors))


def _layout(params: Sequence[Tensor], elementwise: bool = True) -> _Layout:
    """The group's parameters in buckets. A rule that is not elementwise (Muon's
    orthogonalisation, SOAP's preconditioners) sees sharded parameters whole, as DTensors:
    its math is then responsible for gathering them."""
    by_kind: dict[tuple[Any, ...], list[int]] = {}
    for i, param in enumerate(params):
        local = _local(param)
        kind = (
            local.device,
            local.dtype,
            local.layout,
            local.is_contiguous(),
            elementwise and local is not param,
        )
        by_kind.setdefault(kind, []).append(i)
    buckets = []
    for (device, dtype, tensor_layout, contiguous, sharded), indices in by_kind.items():
        members = [params[i] for i in indices]
        storages = [_storage(_local(p)) for p in members]
        numels = [_local(p).numel() * (2 if dtype.is_complex else 1) for p in members]
        buckets.append(
            Bucket(
                indices,
                members,
                device,
                dtype,
                contiguous,
                shares_storage=len(set(storages)) < len(storages),
                is_sparse=tensor_layout != torch.strided,
                offsets=np.concatenate([[0], np.cumsum(numels, dtype=np.int64)]).astype(np.int64),
                pointers=_pointers(members),
                sharded=sharded,
            )
        )
    return _Layout(list(params), buckets)


def _storage(tensor: Tensor) -> int:
    try:
        return tensor.untyped_storage().data_ptr()
    except RuntimeError:
        return id(tensor)


class Engine:
    """Applies one optimizer's updates (created on its first step)."""

    def __init__(self) -> None:
        self.layouts: dict[int, _Layout] = {}

    def layout(self, optimizer: Rule, group: dict[str, Any]) -> _Layout:
        """The group's layout, rebuilt if a parameter was added, removed or re-bound."""
        params = group["params"]
        layout = self.layouts.get(id(group))
        if (
            layout is None
            or len(layout.params) != len(params)
            or not all(map(operator.is_, params, layout.params))
            or not all(
                _pointer_list(bucket.params) == bucket.pointer_list for bucket in layout.buckets
            )
        ):
            layout = self.layouts[id(group)] = _layout(params, optimizer.elementwise)
            _move_rebound_state(optimizer, params)
        return layout


def _engine(optimizer: Any) -> Engine:
    engine: Engine | None = optimizer.__dict__.get(_ENGINE_ATTRIBUTE)
    if engine is None:
        engine = optimizer.__dict__[_ENGINE_ATTRIBUTE] = Engine()
    return engine


def forget(optimizer: Any) -> None:
    """Drop what the engine keeps for ``optimizer`` (after ``load_state_dict``)."""
    optimizer.__dict__.pop(_ENGINE_ATTRIBUTE, None)


# ---------------------------------------------------------------------- policy


def choose_path(mode: str, rule: Rule, bucket: Bucket, low_precision: bool = False) -> str:
    """How ``bucket`` is updated this step: ``"generated"``, ``"fused"``, ``"foreach"`` or
    ``"per_tensor"``. The whole policy of the engine is this function; a path returned
    here may still decline at run time (no kernel built yet, arguments it does not
    take), and then the next one in this order runs. ``low_precision``: the bucket's
    state or update is low precision (:mod:`.quantize`), which only the math runs."""
    if mode == "per_tensor" or not rule.elementwise or bucket.is_sparse:
        return "per_tensor"
    if low_precision:
        return "foreach"
    fused = (
        mode in ("auto", "fused", "compiled") and rule.fused_kernel is not None and bucket.fusable
    )
    if fused and mode == "auto" and bucket.device.type == "cuda":
        return "fused"  # on an H200 torch's fused kernels beat generated ones (BENCHMARKS.md)
    if fused and mode == "auto" and len(bucket.params) < FUSED_MAX_TENSORS:
        return "fused"  # few tensors: torch's kernel streams as fast and costs less to call
    wants_generated = mode == "compiled" or (mode == "auto" and bucket.numel >= GENERATED_MIN_NUMEL)
    if wants_generated and bucket.generable:
        return "generated"
    return "fused" if fused else "foreach"


# ---------------------------------------------------------------------- stepping


def step(optimizer: Rule) -> None:
    """Update every parameter of every group of ``optimizer`` that has a gradient.

    Under ``torch.compile`` the step runs as it does outside (the compiler leaves it out
    of the graph): its kernels are already fused, and the step reads Python numbers
    (step counts, scalar state) that a traced graph would have to guard on.
    """
    if torch.compiler.is_compiling():
        _step_outside_graphs(optimizer)
    else:
        _step(optimizer)


def _step(optimizer: Rule) -> None:
    mode = mode_of(optimizer)
    engine = _engine(optimizer)
    if not isinstance(optimizer.state, StateTable):
        optimizer.state = tracked(optimizer.state)
    for group_index, group in enumerate(optimizer.param_groups):
        if not group["params"]:
            continue
        layout = engine.layout(optimizer, group)
        quantize.conform(optimizer, group, layout)
        options = _numbers(group, optimizer.hyperparameters)
        for bucket in layout.buckets:
            low = quantize.applies(options, bucket.params[0])
            _step_bucket(
                optimizer,
                group,
                group_index,
                bucket,
                options,
                choose_path(mode, optimizer, bucket, low),
                mode,
                low,
            )


_step_outside_graphs = torch.compiler.disable(_step)


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


def _step_bucket(
    optimizer: Rule,
    group: dict[str, Any],
    group_index: int,
    bucket: Bucket,
    options: dict[str, Any],
    path: str,
    mode: str,
    low: bool = False,
) -> None:
    grads = list(map(_grad_of, bucket.params))
    missing = any(map(_is_none, grads))
    if not missing:
        try:  # sparse gradients have no strides: this check finds them too
            dense = all(map(Tensor.is_contiguous, grads))
        except RuntimeError:
            dense = False
    if missing or (not dense and any(map(_is_sparse, grads))):
        present = [i for i, grad in enumerate(grads) if grad is not None]
        if not present:
            return
        sparse = [i for i in present if grads[i].layout != torch.strided]
        if sparse:
            if not optimizer.supports_sparse:
                label = optimizer.describe_param(group_index, bucket.indices[sparse[0]])
                raise TypeError(
                    f"{label} has a sparse gradient; {type(optimizer).__name__} "
                    "takes dense gradients (SGD, Adagrad and SparseAdam take "
                    "sparse ones)"
                )
            path = "per_tensor"  # sparse gradients go one tensor at a time, as in torch.optim
        dense = all(grads[i].is_contiguous() for i in present)
    else:
        present = None
    if not dense and path in ("generated", "fused"):
        path = "foreach"  # kernels index every gradient like its parameter: dense ones only
    table = optimizer.state
    if (
        bucket.table is not table
        or bucket.changes != table.changes
        or (
            not bucket.complete
            if present is None
            else any(bucket.entries[i] is None for i in present)
        )
    ):
        _adopt(optimizer, group, bucket, present)
    if path == "per_tensor" and len(bucket.params) > 1:
        runs = [[i] for i in (present if present is not None else range(len(grads)))]
    else:
        runs = _runs(bucket, present)
    for run in runs:
        _step_run(optimizer, bucket, run, grads, options, path, mode, low)


def _adopt(
    optimizer: Rule, group: dict[str, Any], bucket: Bucket, present: list[int] | None
) -> None:
    """(Re)build what the bucket keeps: every parameter's entry (created for the params
    stepping now), the lists of state tensors and one buffer per scalar state entry, whose
    0-dim views become the entries' values."""
    table = optimizer.state
    scalar_keys = optimizer.scalar_state
    stepping = range(len(bucket.params)) if present is None else present
    for i in stepping:
        param = bucket.params[i]
        if not table.get(param):
            fresh = optimizer._init_state(param, group)
            if fresh:
                table[param] = fresh
    # None: not stepped yet; {}: stepped (or stepping now) and keeping nothing (yet)
    entries: list[Any] = [table.get(param) for param in bucket.params]
    for i in stepping:
        if entries[i] is None:
            entries[i] = {}
    key_sets = {frozenset(entry) for entry in entries if entry is not None}
    bucket.keys = key_sets.pop() if len(key_sets) == 1 and None not in entries else None
    for key in scalar_keys:
        holders = [i for i, entry in enumerate(entries) if entry and key in entry]
        if not holders:
            bucket.scalars.pop(key, None)
            continue
        values = [entries[i][key] for i in holders]
        dtype = values[0].dtype if isinstance(values[0], Tensor) else torch.float32
        buffer = torch.zeros(len(bucket.params), dtype=dtype)
        buffer[holders] = torch.tensor([float(value) for value in values], dtype=dtype)
        for i in holders:
            entries[i][key] = buffer[i]
        bucket.scalars[key] = buffer
    bucket.arrays = {key: buffer.detach().numpy() for key, buffer in bucket.scalars.items()}
    bucket.step_views = (
        [entry["step"] if entry and "step" in entry else None for entry in entries]
        if "step" in bucket.scalars
        else []
    )
    view = bucket.view if bucket.needs_view else _identity
    bucket.dense_state = all(
        view(value).is_contiguous()
        for entry in entries
        if entry
        for key, value in entry.items()
        if key not in scalar_keys and isinstance(value, Tensor)
    )
    bucket.lists = {}
    if bucket.keys is not None:
        for key in bucket.keys - scalar_keys:
            values = [entry[key] for entry in entries]
            if all(isinstance(value, Tensor) for value in values):  # not quantised (a dict)
                bucket.lists[key] = list(map(view, values))
    bucket.state_pointers = {}
    if bucket.dense_state and bucket.generable:
        bucket.state_pointers = {key: _pointers(values) for key, values in bucket.lists.items()}
    bucket.complete = None not in entries
    bucket.entries = entries
    bucket.device_steps = None
    bucket.table = table
    bucket.changes = table.changes


def _runs(bucket: Bucket, present: list[int] | None) -> list[list[int]]:
    """Parameters that can share one call: same state keys, same scalar state values."""
    scalars = bucket.scalars
    if (
        present is None
        and bucket.keys is not None
        and (
            len(bucket.params) == 1
            or all((values == values[0]).all() for values in bucket.arrays.values())
        )
    ):
        return [bucket.everything]
    values = {key: buffer.tolist() for key, buffer in scalars.items()}
    runs: dict[Any, list[int]] = {}
    for i in present if present is not None else range(len(bucket.params)):
        entry = bucket.entries[i]
        signature = (
            frozenset(entry),
            tuple(values[key][i] for key in sorted(values) if key in entry),
        )
        runs.setdefault(signature, []).append(i)
    return list(runs.values())


def _step_run(
    optimizer: Rule,
    bucket: Bucket,
    run: list[int],
    grads: list[Any],
    options: dict[str, Any],
    path: str,
    mode: str,
    low: bool = False,
) -> None:
    whole = run is bucket.everything
    counts = bucket.arrays.get("step")
    first = bucket.entries[run[0]]
    if counts is not None and "step" in first:  # on the CPU buffer, through NumPy: cheap
        if whole:
            counts += 1
        else:
            counts[run] += 1
        step_count: float | None = float(counts[run[0]])
    else:
        step_count = None
    if whole and bucket.keys is not None:
        lists = bucket.lists
        params = list(map(bucket.view, bucket.params)) if bucket.needs_view else bucket.params
        grad_list = list(map(bucket.view, grads)) if bucket.needs_view else grads
    else:
        view = bucket.view if bucket.needs_view else _identity
        scalar_keys = optimizer.scalar_state
        lists = {
            key: [view(bucket.entries[i][key]) for i in run]
            for key in first
            if key not in scalar_keys
        }
        params = [view(bucket.params[i]) for i in run]
        grad_list = [view(grads[i]) for i in run]
    shared = {
        key: bucket.scalars[key][run[0]] for key in bucket.scalars if key != "step" and key in first
    }

    if path in ("generated", "fused") and (not bucket.dense_state or options.get("cautious")):
        path = "foreach"  # kernels: every state tensor dense; cautious masks run the math
    if path == "generated" and _run_generated(
        optimizer,
        bucket,
        run,
        whole,
        params,
        grad_list,
        lists,
        shared,
        step_count,
        options,
        wait=mode == "compiled",
    ):
        path = "done"
    elif (
        path in ("generated", "fused")
        and optimizer.fused_kernel is not None
        and bucket.fusable
        and optimizer.fused_kernel(
            params,
            grad_list,
            lists,
            _step_tensors(bucket, run, whole),
            options,
            float(options["lr"]),
        )
    ):
        return
    if path != "done" and low:  # low-precision state or parameters: in chunks (quantize)
        created = quantize.call_math(
            call_math,
            optimizer,
            params,
            grad_list,
            [bucket.entries[i] for i in run],
            shared,
            step_count,
            options,
        )
        if created:
            _keep_created(optimizer, bucket, run, created)
    elif path != "done":
        wrap: Callable[[list[Tensor]], Any] = (
            TensorList if optimizer.elementwise else operator.itemgetter(0)
        )
        call = (
            _call_gathered
            if not optimizer.elementwise and not optimizer.sharded_math and is_dtensor(params[0])
            else call_math
        )
        created = call(
            optimizer,
            wrap(params),
            wrap(grad_list),
            {key: wrap(values) for key, values in lists.items()},
            shared,
            step_count,
            options,
        )
        if created:
            _keep_created(optimizer, bucket, run, created)
    for key in shared:  # the run shared one value; every member gets it
        values = bucket.arrays[key]
        values[run] = values[run[0]]


def _run_generated(
    optimizer: Rule,
    bucket: Bucket,
    run: list[int],
    whole: bool,
    params: list[Tensor],
    grads: list[Tensor],
    lists: dict[str, list[Tensor]],
    shared: dict[str, Tensor],
    step_count: float | None,
    options: dict[str, Any],
    wait: bool,
) -> bool:
    """Run the bucket's generated kernel; False (nothing changed) if there is none yet or
    these tensors do not suit it. Scalar state the math updates (``shared``) is updated
    by the trace, which runs the math's scalar part for real."""
    names = sorted(lists)
    before = {key: value.clone() for key, value in shared.items()}
    try:
        program, scalars = trace(optimizer, names, shared, step_count, options)
    except NotTraceable:
        for key, value in before.items():
            shared[key].copy_(value)
        return False
    backend = _backend(bucket.device)
    kernel = backend.kernel(program, bucket.real_dtype, bucket.device, wait=wait)
    if kernel is None:
        for key, value in before.items():
            shared[key].copy_(value)
        return False
    offsets = (
        bucket.offsets
        if whole
        else np.concatenate([[0], np.cumsum(np.diff(bucket.offsets)[run])]).astype(np.int64)
    )
    columns = []
    for name in program.inputs:
        if name == "param":
            columns.append(bucket.pointers if whole else bucket.pointers[run])
        elif name == "grad":
            columns.append(_pointers(grads))
        elif whole and name in bucket.state_pointers:
            columns.append(bucket.state_pointers[name])
        else:
            columns.append(_pointers(lists[name]))
    kernel(np.concatenate(columns), len(params), offsets, scalars, bucket.launch, bucket.device)
    torch.autograd.graph.increment_version(params)
    return True


def _step_tensors(bucket: Bucket, run: list[int], whole: bool) -> list[Tensor]:
    """The run's step counts as tensors a fused kernel reads (on the parameters' device)."""
    steps = bucket.scalars.get("step")
    if steps is None:
        return []
    if bucket.device.type == "cpu":
        # the run's entries have their state: every parameter with a gradient gets it
        views = cast(list[Tensor], bucket.step_views)
        return views if whole else [views[i] for i in run]
    if bucket.device_steps is None:
        device_buffer = steps.to(bucket.device)
        bucket.device_steps = (device_buffer, list(device_buffer.unbind()))
    device_buffer, device_views = bucket.device_steps
    device_buffer.copy_(steps, non_blocking=True)
    return device_views if whole else [device_views[i] for i in run]


def _keep_created(optimizer: Rule, bucket: Bucket, run: list[int], created: dict[str, Any]) -> None:
    """Store state the math created on its first step (SGD's momentum buffer)."""
    table = optimizer.state
    for key, values in created.items():
        tensors = values.tensors if isinstance(values, TensorList) else [values]
        for i, tensor in zip(run, tensors, strict=True):
            param = bucket.params[i]
            entry = table[param]  # creates the entry if the rule keeps nothing else
            entry[key] = bucket.unview(tensor, param) if bucket.needs_view else tensor
            bucket.entries[i] = entry


def is_dtensor(tensor: Any) -> bool:
    """Whether ``tensor`` is a DTensor (a sharded parameter or state under FSDP2)."""
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(tensor, dtensor)


def _call_gathered(
    rule: Any,
    param: Any,
    grad: Any,
    state: Mapping[str, Any],
    scalars: Mapping[str, Tensor],
    step_count: float | None,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """:func:`call_math` for a sharded parameter (a DTensor, FSDP2) of a rule that is
    not elementwise and whose math expects whole tensors (SOAP's preconditioners,
    Adafactor's factored moments, Prodigy's sums): the parameter, its gradient and its
    sharded state are gathered whole on every rank, the math runs on them, and each rank
    keeps its shard of the results. Costs one all-gather per tensor per step."""
    whole_state = {
        key: value.full_tensor() if is_dtensor(value) else value for key, value in state.items()
    }
    whole = param.full_tensor()
    created = call_math(rule, whole, grad.full_tensor(), whole_state, scalars, step_count, options)
    _keep_shard(param, whole)
    for key, value in state.items():
        if is_dtensor(value):
            _keep_shard(value, whole_state[key])
    return {key: _shard_like(param, value) for key, value in created.items()}


def _shard_like(param: Any, whole: Tensor) -> Tensor:
    """``whole`` as a DTensor on ``param``'s mesh: sharded like it if it has its shape,
    replicated otherwise (each rank keeps its piece; no communication)."""
    from torch.distributed.tensor import Replicate, distribute_tensor

    mesh = param.device_mesh
    placements = param.placements if whole.shape == param.shape else [Replicate()] * mesh.ndim
    return distribute_tensor(whole, mesh, placements, src_data_rank=None)


def _keep_shard(target: Any, whole: Tensor) -> None:
    """Copy this rank's piece of ``whole`` into the DTensor ``target``."""
    from torch.distributed.tensor import distribute_tensor

    piece = distribute_tensor(whole, target.device_mesh, target.placements, src_data_rank=None)
    target.to_local().copy_(piece.to_local())


def call_math(
    rule: Any,
    param: Any,
    grad: Any,
    state: Mapping[str, Any],
    scalars: Mapping[str, Tensor],
    step_count: float | None,
    options: Mapping[str, Any],
) -> dict[str, Any]:
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
    created: dict[str, Any]
    if options.get("cautious"):  # cautious masking around the math (descent.optim._cautious)
        created = rule.cautious_call(param, grad, arguments, options)
    else:
        created = rule.math(param, grad, **arguments) or {}
    return created


def _identity(tensor: Tensor) -> Tensor:
    return tensor


class _Backend(Protocol):
    """Where generated kernels come from for a device (:mod:`.cpu` or :mod:`.cuda`)."""

    def supports(self, dtype: torch.dtype) -> bool: ...

    def kernel(
        self, program: Any, dtype: torch.dtype, device: torch.device, wait: bool = False
    ) -> Any: ...


def _backend(device: torch.device) -> _Backend:
    """The generated-kernel backend for ``device``."""
    return cuda if device.type == "cuda" else cpu


def _move_rebound_state(optimizer: Rule, params: Sequence[Tensor]) -> None:
    """State of parameters re-bound to another dtype or device, moved along with them."""
    table = optimizer.state
    scalar_keys = optimizer.scalar_state
    for param in params:
        entry = table.get(param) if isinstance(table, Mapping) else None
        if not entry:
            continue
        for key, value in list(entry.items()):
            if (
                key not in scalar_keys
                and isinstance(value, Tensor)
                and (value.dtype != param.dtype or value.device != param.device)
            ):
                entry[key] = value.to(dtype=param.dtype, device=param.device)


def compact_state(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A plain-dict copy of one parameter's state in which views are compact clones.

    Saving a view saves its whole storage (``torch.save``) or is refused (safetensors);
    a clone holds only the entry's own elements. A quantised entry (a dict, see
    :mod:`.quantize`) is a new dict holding the same tensors.
    """
    return {
        key: value.clone()
        if isinstance(value, Tensor) and value._base is not None
        else dict(value)
        if isinstance(value, Mapping)
        else value
        for key, value in entry.items()
    }


__all__ = [
    "FUSED_MAX_TENSORS",
    "GENERATED_MIN_NUMEL",
    "MODES",
    "Bucket",
    "Rule",
    "StateTable",
    "TensorList",
    "call_math",
    "choose_path",
    "compact_state",
    "default_mode",
    "forget",
    "get_default_mode",
    "is_dtensor",
    "mode_of",
    "set_mode",
    "step",
]
