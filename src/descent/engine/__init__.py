"""descent's engine: how an optimizer's update is applied fast.

An optimizer says *what* an update is (its ``_update``, which calls the algorithm's pure
math function); the engine decides *how* it runs. For an elementwise algorithm it keeps
the parameters, gradients and state of each param group in flat contiguous buffers (one
per dtype and device, see :mod:`descent.engine.flat`) and applies the update to whole
buffers at once:

* with torch's fused kernel where torch has one for the rule (Adam, AdamW, SGD, Adagrad);
* else through ``torch.compile`` of the same ``_update`` when a bucket is large enough
  that compiling pays (:data:`COMPILE_MIN_NUMEL` elements), one loop over memory;
* else eagerly: the pure function's tensor operations on the flat buffers.

Algorithms that are not elementwise (``elementwise = False`` on the class) and
parameters that cannot be flattened (complex, sparse, non-dense strides, empty) are
updated one tensor at a time, exactly as the per-tensor reference path does.

Modes (:data:`MODES`), per optimizer with :func:`set_mode` or for the process with
:func:`default_mode` / the ``DESCENT_ENGINE`` environment variable:

``"auto"`` (default)
    flat buffers; torch's fused kernel where torch has one for the rule (any size: on a
    small model it is the cheapest way to run the step), else compiled kernels for
    buckets of :data:`COMPILE_MIN_NUMEL` elements or more; eager otherwise.
``"per_tensor"``
    the reference: the update applied to each parameter separately, no flat buffers.
``"eager"``
    flat buffers, the pure function's eager operations only (no fused, no compiled
    kernels): bit-identical to ``"per_tensor"`` for elementwise rules.
``"fused"``
    flat buffers, fused kernels where torch has them, eager otherwise (never compiles).
``"compiled"``
    flat buffers, always compiled (falls back to eager, with a warning, when
    compilation fails).

Semantics kept: a parameter without a gradient this step is not touched, nor its state;
``optimizer.state`` keeps torch.optim's layout (its tensors are views of the flat
buffers); a parameter whose storage was re-bound by the user (``model.to(...)``,
``p.data = ...``, ``torch.utils.swap_tensors``) is detected by its data pointer before
every step and the group's buffers are rebuilt from the parameters' current values,
with their state (converted to the parameter's new dtype and device if it changed);
each updated parameter's autograd version is incremented, as an in-place update would.
"""

from __future__ import annotations

import contextlib
import operator
import os
import threading
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch.autograd.graph import increment_version

from . import kernels
from .flat import Bucket, flattenable, is_flat_storage

#: The engine's modes (see the module docstring).
MODES = ("auto", "per_tensor", "eager", "fused", "compiled")

#: In ``"auto"`` mode, a bucket with at least this many elements is compiled when torch
#: has no fused kernel for the rule. Below it, compiling (seconds, once per process and
#: variant) costs more than it saves: eager flat updates take microseconds there.
COMPILE_MIN_NUMEL = 1 << 20

_COMPILE_DTYPES = (torch.float32, torch.float64)
_ENGINE_ATTRIBUTE = "_descent_engine"
_MODE_ATTRIBUTE = "_descent_engine_mode"
_compile_failed: set[type] = set()
_default = threading.local()


def _check_mode(mode: Any, where: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{where}: mode={mode!r} is not a mode of descent's engine; "
                         f"expected one of {', '.join(map(repr, MODES))}")
    return mode


def _environment_mode() -> str:
    return _check_mode(os.environ.get("DESCENT_ENGINE", "auto"), "DESCENT_ENGINE")


def get_default_mode() -> str:
    """The mode optimizers use unless :func:`set_mode` gave them one."""
    mode = getattr(_default, "mode", None)
    return mode if mode is not None else _environment_mode()


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
    """Give ``optimizer`` its own engine mode (``None``: follow the default again).

    Switching away from a flat mode leaves the parameters in the flat buffers (they
    are ordinary tensors either way); switching back rebuilds nothing that is intact.
    """
    if mode is not None:
        _check_mode(mode, "descent.engine.set_mode")
    optimizer.__dict__[_MODE_ATTRIBUTE] = mode


def mode_of(optimizer: torch.optim.Optimizer) -> str:
    """The mode ``optimizer``'s next step will use."""
    mode = optimizer.__dict__.get(_MODE_ATTRIBUTE)
    return mode if mode is not None else get_default_mode()


def engine_for(optimizer: Any) -> Engine | None:
    """The engine that applies ``optimizer``'s updates, or None for the per-tensor path."""
    if not getattr(optimizer, "elementwise", False) or mode_of(optimizer) == "per_tensor":
        return None
    engine = optimizer.__dict__.get(_ENGINE_ATTRIBUTE)
    if engine is None:
        engine = optimizer.__dict__[_ENGINE_ATTRIBUTE] = Engine(optimizer)
    return engine


def existing_engine(optimizer: Any) -> Engine | None:
    """``optimizer``'s engine if one was already made (no new one is created)."""
    return optimizer.__dict__.get(_ENGINE_ATTRIBUTE)


class _GroupLayout:
    """A param group's buckets and the params updated one by one (``loose``)."""

    def __init__(self, optimizer: Any, group: dict[str, Any]) -> None:
        self.params = list(group["params"])
        self.state = optimizer.state
        by_kind: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        self.loose: list[int] = []
        storages = [param.untyped_storage().data_ptr() for param in self.params]
        shared = {pointer for pointer, count in Counter(storages).items()
                  if count > 1 and not is_flat_storage(pointer)}
        for i, param in enumerate(self.params):
            if storages[i] not in shared and flattenable(
                    param, optimizer.state.get(param), optimizer.scalar_state):
                by_kind.setdefault((param.dtype, param.device), []).append(i)
            else:
                self.loose.append(i)
        self.buckets = [Bucket(optimizer, group, indices) for indices in by_kind.values()]

    def valid(self, optimizer: Any, group: dict[str, Any]) -> bool:
        params = group["params"]
        return (optimizer.state is self.state and len(params) == len(self.params)
                and all(map(operator.is_, params, self.params))
                and all(bucket.intact() for bucket in self.buckets))


class Engine:
    """Applies one optimizer's updates on flat buffers (created by :func:`engine_for`)."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer
        self._layouts: dict[int, _GroupLayout] = {}

    def reset(self) -> None:
        """Forget the layouts (after ``load_state_dict``); the next step rebuilds them."""
        self._layouts.clear()

    def layout(self, group: dict[str, Any]) -> _GroupLayout:
        """The group's current layout, (re)built if a parameter or the state changed."""
        layout = self._layouts.get(id(group))
        if layout is None or not layout.valid(self.optimizer, group):
            layout = self._layouts[id(group)] = _GroupLayout(self.optimizer, group)
        return layout

    def buckets(self) -> Iterator[Bucket]:
        """Every bucket of every group this engine has laid out."""
        for layout in self._layouts.values():
            yield from layout.buckets

    def adopt_grads(self) -> None:
        """Point present gradients at the flat gradient buffer (``zero_grad(False)``)."""
        groups = {id(group): group for group in self.optimizer.param_groups}
        for key, layout in self._layouts.items():
            group = groups.get(key)
            if group is not None and layout.valid(self.optimizer, group):
                for bucket in layout.buckets:
                    bucket.adopt_grads()

    def step_group(self, group: dict[str, Any], group_index: int) -> None:
        """Update every parameter of ``group`` that has a gradient."""
        optimizer = self.optimizer
        layout = self.layout(group)
        if layout.loose:
            optimizer._step_per_tensor(group, group_index, layout.loose)
        mode = mode_of(optimizer)
        for bucket in layout.buckets:
            present = bucket.gather_grads(
                lambda i, b=bucket: optimizer._describe_param(group, group_index,
                                                              b.indices[i]))
            if not bucket.uniform_keys():
                todo = [i for i, has in enumerate(present) if has and bucket.keys[i] is None]
                if todo:
                    bucket.init_state(optimizer, group, todo)
            runs = bucket.runs(present)
            for start, end in runs:
                bucket.step_counts(start, end)
                param, grad, state = bucket.run_buffers(start, end)
                created = self._apply(mode, bucket, param, grad, state, group)
                bucket.finish_run(optimizer, start, end, state, created)
            # Updates went through the flat buffer, so autograd has not seen them: count
            # them in each updated parameter's version, as an in-place update would be.
            if len(runs) == 1 and runs[0] == (0, len(bucket.params)):
                increment_version(bucket.params)
            elif runs:
                increment_version([p for start, end in runs for p in bucket.params[start:end]])

    def _apply(self, mode: str, bucket: Bucket, param: torch.Tensor, grad: torch.Tensor,
               state: dict[str, Any], group: dict[str, Any]) -> dict[str, torch.Tensor]:
        optimizer = self.optimizer
        cls = type(optimizer)
        if mode in ("fused", "auto"):
            kernel = kernels.fused_kernel(cls)
            if kernel is not None and kernels.run_fused(kernel, param, grad, state, group):
                return {}
        if self._should_compile(mode, bucket, has_fused=kernels.fused_kernel(cls) is not None):
            try:
                options = {key: value for key, value in group.items() if key != "params"}
                return kernels.run_compiled(optimizer, param, grad, state, options)
            except Exception as error:
                _compile_failed.add(cls)
                warnings.warn(f"descent.engine: torch.compile failed for {cls.__name__} "
                              f"({type(error).__name__}: {error}); updating with eager "
                              "operations on the flat buffers instead", RuntimeWarning,
                              stacklevel=5)
        return kernels.run_eager(optimizer, param, grad, state, group)

    def _should_compile(self, mode: str, bucket: Bucket, has_fused: bool) -> bool:
        if type(self.optimizer) in _compile_failed or bucket.dtype not in _COMPILE_DTYPES:
            return False
        if mode == "compiled":
            return True
        # A rule with a fused kernel runs eagerly on the steps the kernel cannot take
        # (SGD's first step creates its momentum buffer): not worth a compilation.
        if mode != "auto" or has_fused or bucket.total < COMPILE_MIN_NUMEL:
            return False
        from .compiled import compiler_available
        return compiler_available()


def compact_state(entry: dict[str, Any]) -> dict[str, Any]:
    """A copy of one parameter's state in which views of flat buffers are compact clones.

    Saving a view saves its whole storage (with ``torch.save``) or is refused
    (safetensors); a clone holds only the parameter's own elements.
    """
    return {key: value.clone() if torch.is_tensor(value) and value._base is not None
            else value for key, value in entry.items()}


__all__ = [
    "COMPILE_MIN_NUMEL", "MODES", "Engine", "compact_state", "default_mode",
    "engine_for", "existing_engine", "get_default_mode", "mode_of", "set_mode",
]
