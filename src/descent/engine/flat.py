"""Flat buffers: the parameters, gradients and state of a group, one contiguous tensor each.

A :class:`Bucket` holds the parameters of one param group that share a dtype and a
device. When it is built, every parameter's values move into a slice of one flat tensor
and the parameter is re-bound to that slice (``param.data = view``), with its own shape
and strides; its state tensors become slices of flat state buffers in the same way, and
its scalar state (``step``, NAdam's ``mu_product``) 0-dim views of one small tensor per
key. ``optimizer.state`` keeps torch.optim's layout: a dict per parameter, holding those
views.

An elementwise update is then one call over whole buffers. Parameters that get no
gradient this step, or whose step counts differ, split the bucket into contiguous runs
of parameters that can share one call; nothing outside a run is touched.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef

Tensor = torch.Tensor


def is_dense(tensor: Tensor) -> bool:
    """Whether ``tensor``'s elements fill ``numel`` consecutive storage slots (any order)."""
    if tensor.is_contiguous():
        return True
    expected = 1
    for size, stride in sorted(zip(tensor.shape, tensor.stride(), strict=True),
                               key=operator.itemgetter(1)):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


# Storages that are flat buffers of some engine, by data pointer, each with a weak
# reference to the storage itself (not to a tensor: a weak reference to a parameter
# would forbid ``torch.utils.swap_tensors`` on it). While the storage lives, its
# pointer cannot have been reused.
_FLAT_STORAGES: dict[int, StorageWeakRef] = {}


_pruned_size = [64]


def _register_flat_storage(flat: Tensor) -> None:
    storage = flat.untyped_storage()
    _FLAT_STORAGES[storage.data_ptr()] = StorageWeakRef(storage)
    if len(_FLAT_STORAGES) > 2 * _pruned_size[0]:  # amortised clean-up of dead buffers
        for pointer in [p for p, ref in _FLAT_STORAGES.items() if ref.expired()]:
            del _FLAT_STORAGES[pointer]
        _pruned_size[0] = max(64, len(_FLAT_STORAGES))


def is_flat_storage(pointer: int) -> bool:
    """Whether the storage at ``pointer`` is a flat buffer made by an engine (any optimizer)."""
    reference = _FLAT_STORAGES.get(pointer)
    if reference is None:
        return False
    if not reference.expired():
        return True
    del _FLAT_STORAGES[pointer]
    return False


def flattenable(param: Tensor, state: Any, scalar_keys: frozenset[str]) -> bool:
    """Whether ``param`` (and its current state) can move into a flat buffer.

    Only a dense, real floating-point tensor that owns its storage moves (or one already
    in an engine's flat buffer, this optimizer's or another's): memory owned elsewhere
    (``torch.from_numpy``, DLPack, a view of a larger tensor) must keep being updated
    where it is, so such a parameter is updated on its own.
    """
    if (param.is_sparse or param.is_complex() or not param.is_floating_point()
            or param.numel() == 0 or param.device.type == "meta" or not is_dense(param)):
        return False
    storage = param.untyped_storage()
    if not is_flat_storage(storage.data_ptr()) and (
            param._base is not None or not storage.resizable() or param.storage_offset() != 0
            or storage.nbytes() != param.numel() * param.element_size()):
        return False
    for key, value in (state or {}).items():
        if key in scalar_keys:
            if not (torch.is_tensor(value) and value.numel() == 1) and not isinstance(
                    value, int | float):
                return False
        elif not (torch.is_tensor(value) and value.shape == param.shape):
            return False
    return True


class Bucket:
    """The params of one group with one dtype and device, in flat buffers (see module doc)."""

    def __init__(self, optimizer: Any, group: dict[str, Any], indices: Sequence[int]) -> None:
        params = [group["params"][i] for i in indices]
        first = params[0]
        self.indices = list(indices)
        self.params = params
        self.dtype, self.device = first.dtype, first.device
        self.numels = [p.numel() for p in params]
        self.offsets = []
        total = 0
        for numel in self.numels:
            self.offsets.append(total)
            total += numel
        self.total = total
        kwargs = {"dtype": self.dtype, "device": self.device}
        self.flat_param = torch.empty(total, **kwargs)
        self.flat_grad = torch.zeros(total, **kwargs)
        self.param_views = self._views(self.flat_param)
        self.grad_views = self._views(self.flat_grad)
        for param, view in zip(params, self.param_views, strict=True):
            view.copy_(param)
            param.data = view
        _register_flat_storage(self.flat_param)
        self.pointers = [view.data_ptr() for view in self.param_views]
        self.grad_pointers = [view.data_ptr() for view in self.grad_views]
        self.scalar_keys: frozenset[str] = optimizer.scalar_state
        self.states: dict[str, Tensor] = {}
        self.scalars: dict[str, Tensor] = {}
        self.keys: list[frozenset[str] | None] = [None] * len(params)
        self._uniform_keys: bool | None = None  # all params share one key set (cached)
        for i, param in enumerate(params):
            entry = optimizer.state.get(param)
            if entry:
                self._adopt(i, entry)

    # ------------------------------------------------------------------ layout

    def _views(self, flat: Tensor) -> list[Tensor]:
        return [flat.as_strided(p.shape, p.stride(), offset)
                for p, offset in zip(self.params, self.offsets, strict=True)]

    def _state_view(self, key: str, i: int) -> Tensor:
        flat = self.states.get(key)
        if flat is None:
            flat = self.states[key] = torch.zeros(self.total, dtype=self.dtype,
                                                  device=self.device)
        param = self.params[i]
        return flat.as_strided(param.shape, param.stride(), self.offsets[i])

    def _scalar_view(self, key: str, i: int, like: Any) -> Tensor:
        flat = self.scalars.get(key)
        if flat is None:
            dtype = like.dtype if torch.is_tensor(like) else torch.get_default_dtype()
            if dtype not in (torch.float32, torch.float64):
                dtype = torch.float32
            flat = self.scalars[key] = torch.zeros(len(self.params), dtype=dtype)
        return flat[i]

    def _adopt(self, i: int, entry: dict[str, Any]) -> None:
        """Move parameter ``i``'s state into the flat buffers; ``entry`` then holds views."""
        for key, value in list(entry.items()):
            if key in self.scalar_keys:
                view = self._scalar_view(key, i, value)
                view.fill_(float(value))
            else:
                view = self._state_view(key, i)
                view.copy_(value)
            entry[key] = view
        self._set_keys(i, frozenset(entry))

    def _set_keys(self, i: int, keys: frozenset[str]) -> None:
        if self.keys[i] != keys:
            self.keys[i] = keys
            self._uniform_keys = None

    def uniform_keys(self) -> bool:
        """Whether every parameter has state with the same keys (so all can share a call)."""
        if self._uniform_keys is None:
            first = self.keys[0]
            self._uniform_keys = first is not None and all(keys == first for keys in self.keys)
        return self._uniform_keys

    def intact(self) -> bool:
        """Whether every parameter still lives in this bucket's flat buffer."""
        return list(map(Tensor.data_ptr, self.params)) == self.pointers

    # ------------------------------------------------------------------ gradients

    def gather_grads(self, describe: Callable[[int], str]) -> list[bool]:
        """Make each present gradient a view of the flat gradient; which params have one.

        Gradients already there (accumulated in place, or zeroed in place by
        ``zero_grad(set_to_none=False)``) cost nothing; fresh ones are copied in with one
        ``_foreach_copy_`` and the parameter's ``.grad`` re-bound to the view.
        """
        grads = [p.grad for p in self.params]
        if (all(map(operator.is_, grads, self.grad_views))
                and list(map(Tensor.data_ptr, grads)) == self.grad_pointers):
            return [True] * len(grads)
        sources, targets = [], []
        present = []
        for i, grad in enumerate(grads):
            present.append(grad is not None)
            if grad is None:
                continue
            if grad.is_sparse:
                raise TypeError(f"{describe(i)} has a sparse gradient; descent optimizers "
                                "take dense gradients (torch.optim.SparseAdam handles "
                                "sparse ones)")
            view = self.grad_views[i]
            if grad is view:
                if grad.data_ptr() == self.grad_pointers[i]:
                    continue
                # The view's storage was swapped (``grad.data = ...``): make a new view.
                param = self.params[i]
                view = self.grad_views[i] = self.flat_grad.as_strided(
                    param.shape, param.stride(), self.offsets[i])
            sources.append(grad)
            targets.append(view)
            self.params[i].grad = view
        if targets:
            torch._foreach_copy_(targets, sources)
        return present

    def adopt_grads(self) -> None:
        """Re-bind every present gradient to its view (values not copied: about to be zeroed)."""
        for param, view in zip(self.params, self.grad_views, strict=True):
            if param.grad is not None and param.grad is not view:
                param.grad = view

    # ------------------------------------------------------------------ stepping

    def init_state(self, optimizer: Any, group: dict[str, Any], todo: list[int]) -> None:
        """Create the state of the params in ``todo`` (first update) inside the flat buffers."""
        if len(todo) == len(self.params) and not self.states and not self.scalars:
            fresh = optimizer._init_state(self.flat_param, group)
            for key, value in fresh.items():
                if key in self.scalar_keys:
                    self._scalar_view(key, 0, value)
                    self.scalars[key].fill_(float(value))
                else:
                    self.states[key] = value.reshape(-1)
            for i, param in enumerate(self.params):
                entry = {key: (self.scalars[key][i] if key in self.scalar_keys
                               else self._state_view(key, i)) for key in fresh}
                if entry:
                    optimizer.state[param] = entry
                self._set_keys(i, frozenset(entry))
            return
        for i in todo:
            entry = optimizer._init_state(self.param_views[i], group)
            self._adopt(i, entry)
            if entry:
                optimizer.state[self.params[i]] = entry

    def runs(self, present: list[bool]) -> list[tuple[int, int]]:
        """Maximal runs ``[start, end)`` of params that can share one update call."""
        count = len(self.params)
        if self.uniform_keys() and all(present):
            uniform = all(bool((flat == flat[0]).all()) for flat in self.scalars.values())
            if uniform:
                return [(0, count)]
        values = {key: flat.tolist() for key, flat in self.scalars.items()}
        runs: list[tuple[int, int]] = []
        start = None
        previous = None
        for i in range(count + 1):
            if i < count and present[i]:
                keys = self.keys[i]
                signature = (keys, tuple(values[key][i] for key in sorted(keys or ())
                                         if key in values))
            else:
                signature = None
            if start is not None and signature != previous:
                runs.append((start, i))
                start = None
            if signature is not None and start is None:
                start = i
            previous = signature
        return runs

    def run_buffers(self, start: int, end: int) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """The flat param, grad and state slices of params ``start..end-1``."""
        low = self.offsets[start]
        high = self.offsets[end - 1] + self.numels[end - 1]
        state: dict[str, Any] = {}
        for key in self.keys[start] or ():
            if key in self.scalar_keys:
                state[key] = self.scalars[key][start]
            else:
                state[key] = self.states[key][low:high]
        return self.flat_param[low:high], self.flat_grad[low:high], state

    def finish_run(self, optimizer: Any, start: int, end: int, state: dict[str, Any],
                   created: dict[str, Tensor]) -> None:
        """Spread scalar results over the run and give new state entries a home."""
        if end - start > 1:
            for key in self.keys[start] or ():
                if key in self.scalar_keys and key != "step":
                    value = state[key].clone()
                    self.scalars[key][start:end].copy_(value.expand(end - start))
        if not created:
            return
        low = self.offsets[start]
        high = self.offsets[end - 1] + self.numels[end - 1]
        for key, value in created.items():
            if key in self.scalar_keys:
                raise TypeError(f"descent.engine: {type(optimizer).__name__}'s update creates "
                                f"scalar state {key!r}; declare it in _init_state instead")
            self._state_view(key, start)
            self.states[key][low:high].copy_(value.reshape(-1))
        for i in range(start, end):
            entry = optimizer.state.get(self.params[i])
            if entry is None:
                entry = optimizer.state[self.params[i]] = {}
            for key in created:
                entry[key] = self._state_view(key, i)
            self._set_keys(i, frozenset(entry))

    def step_counts(self, start: int, end: int) -> None:
        """Count this update in the ``step`` of params ``start..end-1``."""
        steps = self.scalars.get("step")
        if steps is not None and "step" in (self.keys[start] or ()):
            steps[start:end] += 1


__all__ = ["Bucket", "flattenable", "is_dense", "is_flat_storage"]
