"""NumPy parameters: optimizers that update arrays in place.

A descent optimizer accepts, besides tensors and modules, parameters held as NumPy
arrays in three common shapes:

* **modules** exposing ``parameters()`` and ``grads()`` that return aligned lists of
  arrays (the usual course-framework layer); ``zero_grad()`` is called on
  ``opt.zero_grad()`` when the module has one, otherwise its gradient arrays are
  zeroed;
* **a dict of named arrays**, whose gradients are passed to each step as a dict with
  the same keys: ``opt.step(grads={"W": dW, ...})``;
* **parameter objects** with ``.data`` and ``.grad`` array attributes.

Each array is wrapped with ``torch.from_numpy``, which shares its memory: the
optimizer's in-place update is the update of the caller's array, with no copy. Before
every step the gradients are read again from their source (``grads()``, the ``grads``
dict, ``.grad``) and attached to the wrapped tensors; a gradient that is ``None`` or
missing from the dict means "no gradient": that parameter is skipped, as in torch.

Refused, with an error naming the array: integer or boolean arrays (an in-place
update would truncate), read-only and non-C-contiguous arrays (they cannot be updated
in place through a tensor view), arrays that share memory, ``parameters()`` and
``grads()`` lists of different lengths, and gradients whose shape differs from their
parameter's. An array a module replaces (``self.W = ...``) after the optimizer was
made is detected at the next step.

Example:

>>> import numpy as np, descent
>>> weights = {"w": np.array([1.0, 2.0])}
>>> opt = descent.SGD(weights, lr=0.5)
>>> opt.step(grads={"w": np.array([1.0, -1.0])})
>>> weights["w"]
array([0.5, 2.5])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

__all__ = [
    "array_containers",
    "attach_container_grads",
    "refresh_gradients",
    "zero_container_grads",
]


def _is_module_like(obj: Any) -> bool:
    return (
        not isinstance(obj, nn.Module | torch.Tensor)
        and callable(getattr(obj, "parameters", None))
        and callable(getattr(obj, "grads", None))
    )


def _is_parameter_object(obj: Any) -> bool:
    return not isinstance(obj, torch.Tensor) and isinstance(getattr(obj, "data", None), np.ndarray)


def _is_named_arrays(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(value, np.ndarray) for value in obj.values())
    )


def _is_container(obj: Any) -> bool:
    return _is_module_like(obj) or _is_parameter_object(obj) or _is_named_arrays(obj)


def _describe(obj: Any) -> str:
    return type(obj).__name__


def _wrap(owner: str, label: str, array: Any) -> torch.Tensor:
    """The array as a tensor sharing its memory, after checking it can be updated in place."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{owner}: {label} has type {type(array).__name__}; expected a NumPy array")
    if array.dtype.kind not in "fc":
        raise TypeError(
            f"{owner}: {label} has dtype {array.dtype}; expected a floating-point "
            "array (an in-place update would truncate integers), e.g. "
            "array.astype(np.float64)"
        )
    if not array.dtype.isnative:
        raise TypeError(
            f"{owner}: {label} has non-native byte order ({array.dtype.str}); "
            "convert it with array.astype(array.dtype.newbyteorder('='))"
        )
    if not array.flags.writeable:
        raise ValueError(
            f"{owner}: {label} is read-only; descent updates arrays in place, "
            "so pass a writeable array (array.copy())"
        )
    if not array.flags.c_contiguous:
        raise ValueError(
            f"{owner}: {label} with shape {array.shape} and strides "
            f"{array.strides} is not C-contiguous; descent updates arrays in "
            "place, so store np.ascontiguousarray(array) in the model and pass "
            "that"
        )
    try:
        return torch.from_numpy(array)
    except TypeError as error:
        raise TypeError(
            f"{owner}: {label} has dtype {array.dtype}, which torch cannot "
            "share; use float16, float32, float64 or complex"
        ) from error


def _check_no_overlap(owner: str, labelled: list[tuple[str, np.ndarray]]) -> None:
    """Refuse arrays given twice or sharing memory: each would be updated twice per step."""
    spans = []
    for label, array in labelled:
        if array.size == 0:
            continue
        start = array.__array_interface__["data"][0]
        spans.append((start, start + array.nbytes, label))
    spans.sort()
    reach, reach_label = 0, ""
    for start, end, label in spans:
        if start < reach:
            raise ValueError(
                f"{owner}: {label} shares memory with {reach_label}; each "
                "parameter array may be given only once"
            )
        if end > reach:
            reach, reach_label = end, label


def _gradient(owner: str, label: str, grad: Any, param: torch.Tensor) -> torch.Tensor | None:
    """A gradient array as a tensor for ``param.grad`` (a copy only if its dtype differs)."""
    if grad is None:
        return None
    if not isinstance(grad, np.ndarray):
        raise TypeError(
            f"{owner}: {label} has type {type(grad).__name__}; expected a NumPy array or None"
        )
    if grad.shape != tuple(param.shape):
        raise ValueError(
            f"{owner}: {label} has shape {grad.shape}; its parameter has shape {tuple(param.shape)}"
        )
    if grad.dtype.kind not in "biufc" or (grad.dtype.kind == "c" and not param.is_complex()):
        raise TypeError(
            f"{owner}: {label} has dtype {grad.dtype}; expected a real numeric "
            "array for a real parameter"
        )
    dtype = torch.empty((), dtype=param.dtype).numpy().dtype
    if grad.dtype != dtype or not grad.flags.writeable or not grad.dtype.isnative:
        grad = grad.astype(dtype)
    return torch.from_numpy(
        np.ascontiguousarray(grad) if min(grad.strides, default=0) < 0 else grad
    )


class _ModuleSource:
    """A module with ``parameters()`` and ``grads()``."""

    takes_grads_dict: Literal[False] = False

    def __init__(self, owner: str, module: Any, label: str) -> None:
        self.owner, self.module, self.label = owner, module, label
        self.arrays = self._list("parameters")
        self.tensors = [
            _wrap(owner, f"{label}.parameters()[{i}]", array) for i, array in enumerate(self.arrays)
        ]
        attribute = (
            {id(value): name for name, value in vars(module).items()}
            if hasattr(module, "__dict__")
            else {}
        )
        self.names = [str(attribute.get(id(array), i)) for i, array in enumerate(self.arrays)]
        grads = self._list("grads")
        if grads:  # modules that make their gradient arrays in the first backward return []
            self._check_grads(grads)

    def _list(self, method: str) -> list[Any]:
        values = getattr(self.module, method)()
        if isinstance(values, np.ndarray):
            return [values]
        return list(values.values()) if isinstance(values, Mapping) else list(values)

    def _check_grads(self, grads: list[Any]) -> list[torch.Tensor | None]:
        if len(grads) != len(self.arrays):
            raise ValueError(
                f"{self.owner}: {self.label}.grads() returned {len(grads)} arrays "
                f"and parameters() {len(self.arrays)}; expected aligned lists"
            )
        return [
            _gradient(self.owner, f"{self.label}.grads()[{i}]", grad, tensor)
            for i, (grad, tensor) in enumerate(zip(grads, self.tensors, strict=True))
        ]

    def collect(self, grads: Mapping[str, Any] | None) -> list[tuple[torch.Tensor, Any]]:
        current = self._list("parameters")
        if len(current) != len(self.arrays) or any(
            now is not before for now, before in zip(current, self.arrays, strict=False)
        ):
            index = next(
                (
                    i
                    for i, (now, before) in enumerate(zip(current, self.arrays, strict=False))
                    if now is not before
                ),
                min(len(current), len(self.arrays)),
            )
            raise ValueError(
                f"{self.owner}: {self.label}.parameters()[{index}] is no longer the array the "
                "optimizer was given (was it replaced, e.g. self.W = ...?); descent updates "
                "arrays in place, so change them in place (W[...] = ...) or make a new "
                "optimizer"
            )
        return list(zip(self.tensors, self._check_grads(self._list("grads")), strict=True))

    def gradient_arrays(self) -> list[tuple[str, Any, torch.Tensor]]:
        return [
            (f"{self.label}.grads()[{i}]", grad, tensor)
            for i, (grad, tensor) in enumerate(zip(self._list("grads"), self.tensors, strict=False))
        ]

    def zero_grad(self) -> None:
        zero = getattr(self.module, "zero_grad", None)
        if callable(zero):
            zero()
            return
        for grad in self._list("grads"):
            if isinstance(grad, np.ndarray) and grad.flags.writeable:
                grad[...] = 0


class _ParameterObjectSource:
    """An object with ``.data`` and ``.grad`` array attributes."""

    takes_grads_dict: Literal[False] = False

    def __init__(self, owner: str, obj: Any, label: str) -> None:
        self.owner, self.obj, self.label = owner, obj, label
        self.arrays = [obj.data]
        self.tensors = [_wrap(owner, f"{label}.data", obj.data)]
        name = getattr(obj, "name", None)
        self.names = [name if isinstance(name, str) else None]

    def collect(self, grads: Mapping[str, Any] | None) -> list[tuple[torch.Tensor, Any]]:
        if self.obj.data is not self.arrays[0]:
            raise ValueError(
                f"{self.owner}: {self.label}.data is no longer the array the "
                "optimizer was given; descent updates arrays in place, so "
                "change .data in place (data[...] = ...) or make a new optimizer"
            )
        tensor = self.tensors[0]
        return [
            (
                tensor,
                _gradient(
                    self.owner, f"{self.label}.grad", getattr(self.obj, "grad", None), tensor
                ),
            )
        ]

    def gradient_arrays(self) -> list[tuple[str, Any, torch.Tensor]]:
        return [(f"{self.label}.grad", getattr(self.obj, "grad", None), self.tensors[0])]

    def zero_grad(self) -> None:
        grad = getattr(self.obj, "grad", None)
        if isinstance(grad, np.ndarray) and grad.flags.writeable:
            grad[...] = 0


class _NamedArraysSource:
    """A dict of named arrays; gradients come with each step as ``step(grads=...)``."""

    takes_grads_dict: Literal[True] = True

    def __init__(self, owner: str, arrays: Mapping[str, np.ndarray], label: str) -> None:
        self.owner, self.label = owner, label
        for key in arrays:
            if not isinstance(key, str):
                raise TypeError(
                    f"{owner}: {label} has key {key!r} of type "
                    f"{type(key).__name__}; expected str names"
                )
        self.names = list(arrays)
        self.arrays = list(arrays.values())
        self.tensors = [_wrap(owner, f"{label}[{key!r}]", array) for key, array in arrays.items()]

    def collect(self, grads: Mapping[str, Any] | None) -> list[tuple[torch.Tensor, Any]]:
        if grads is None:
            raise ValueError(
                f"{self.owner}: the parameters include a dict of NumPy arrays "
                f"({self.names}); pass their gradients to each step as "
                "opt.step(grads={name: array})"
            )
        return [
            (tensor, _gradient(self.owner, f"grads[{name!r}]", grads.get(name), tensor))
            for name, tensor in zip(self.names, self.tensors, strict=True)
        ]

    def zero_grad(self) -> None:
        """Nothing to do: the gradients belong to the caller and come with each step."""


Source = _ModuleSource | _ParameterObjectSource | _NamedArraysSource


def _convert_items(owner: str, items: list[Any], where: str, sources: list[Source]) -> list[Any]:
    """A list of params with containers replaced by (name, tensor) pairs."""
    prefix = len(items) > 1
    out: list[Any] = []
    for index, item in enumerate(items):
        label = f"{where}[{index}]"
        if _is_module_like(item):
            source: Source = _ModuleSource(owner, item, f"{label} ({_describe(item)})")
        elif _is_named_arrays(item):
            source = _NamedArraysSource(owner, item, label)
        elif _is_parameter_object(item):
            source = _ParameterObjectSource(owner, item, label)
        elif isinstance(item, np.ndarray):
            raise TypeError(
                f"{owner}: {label} is a bare NumPy array, which has no gradient; "
                "pass a module with parameters() and grads(), a dict of arrays "
                "(with opt.step(grads=...)), or objects with .data and .grad"
            )
        else:
            out.append(item if isinstance(item, tuple) else (str(index), item))
            continue
        sources.append(source)
        for name, tensor in zip(source.names, source.tensors, strict=True):
            if name is None:
                name = str(index)
            elif prefix and not isinstance(source, _ParameterObjectSource):
                name = f"{index}.{name}"
            out.append((name, tensor))
    return out


def _labelled(source: Source) -> list[tuple[str, np.ndarray]]:
    if isinstance(source, _ModuleSource):
        return [
            (f"{source.label}.parameters()[{i}]", array) for i, array in enumerate(source.arrays)
        ]
    if isinstance(source, _ParameterObjectSource):
        return [(f"{source.label}.data", source.arrays[0])]
    return [
        (f"{source.label}[{name!r}]", array)
        for name, array in zip(source.names, source.arrays, strict=True)
    ]


def array_containers(owner: str, params: Any) -> tuple[Any, list[Source]]:
    """Replace NumPy containers in ``params`` by tensors sharing their memory.

    Returns the params to hand on (unchanged when they hold no NumPy container) and the
    gradient sources to read before each step. Generators and other one-shot iterables
    are passed on untouched: containers must come in a list, a tuple or a group dict.
    """
    if _is_container(params):
        params = [params]
    if not isinstance(params, list | tuple):
        return params, []
    sources: list[Source] = []
    if params and all(isinstance(item, Mapping) and "params" in item for item in params):
        groups = []
        for index, group in enumerate(params):
            inner = group["params"]
            inner = [inner] if _is_container(inner) else inner
            if isinstance(inner, list | tuple) and any(
                _is_container(item) or isinstance(item, np.ndarray) for item in inner
            ):
                group = {
                    **group,
                    "params": _convert_items(
                        owner, list(inner), f"param_groups[{index}]['params']", sources
                    ),
                }
            groups.append(group)
        converted: Any = groups
    elif any(_is_container(item) or isinstance(item, np.ndarray) for item in params):
        converted = _convert_items(owner, list(params), "params", sources)
    else:
        return params, []
    _check_no_overlap(
        owner, [(label, array) for source in sources for label, array in _labelled(source)]
    )
    names = [name for source in sources if source.takes_grads_dict for name in source.names]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"{owner}: the dicts of NumPy arrays share the names {duplicates}; "
            "opt.step(grads=...) needs each name once"
        )
    return converted, sources


def refresh_gradients(optimizer: Any, grads: Mapping[str, Any] | None) -> None:
    """Attach every NumPy container's current gradients to its wrapped tensors.

    Called by :meth:`descent.Optimizer.step` before the update. All gradients are read
    and checked first; on error no ``.grad`` has changed.
    """
    sources: list[Source] = getattr(optimizer, "_gradient_sources", None) or []
    owner = type(optimizer).__name__
    if grads is not None:
        if not isinstance(grads, Mapping):
            raise TypeError(
                f"{owner}.step: grads has type {type(grads).__name__}; expected a "
                "dict of NumPy arrays keyed like the parameter dict"
            )
        known = {name for source in sources if source.takes_grads_dict for name in source.names}
        if not known:
            raise ValueError(
                f"{owner}.step: grads= is for parameters given as a dict of "
                "NumPy arrays; this optimizer has none (its gradients are read "
                "from .grad)"
            )
        unknown = sorted(set(grads) - known, key=str)
        if unknown:
            raise ValueError(
                f"{owner}.step: grads has keys {unknown} that name no parameter; "
                f"the parameters are {sorted(known)}"
            )
    pairs = [pair for source in sources for pair in source.collect(grads)]
    for tensor, grad in pairs:
        tensor.grad = grad


def attach_container_grads(optimizer: Any, where: str) -> None:
    """Attach the current gradients of NumPy modules and ``.data``/``.grad`` objects now.

    For utilities that change ``.grad`` in place before ``step()`` (gradient clipping):
    the attached tensors share the gradient arrays' memory, so the change reaches the
    arrays the next step reads. A gradient array that would have to be copied (another
    dtype than its parameter, read-only, negative strides) raises a ``ValueError``, since
    the change would be lost. Dicts of named arrays are left out: their gradients come
    with ``step(grads=...)`` and are the caller's to change.
    """
    sources = [
        source
        for source in getattr(optimizer, "_gradient_sources", None) or []
        if not source.takes_grads_dict
    ]
    for source in sources:
        for label, grad, tensor in source.gradient_arrays():
            if isinstance(grad, np.ndarray) and (
                grad.dtype != tensor.numpy().dtype
                or not grad.flags.writeable
                or min(grad.strides, default=0) < 0
            ):
                raise ValueError(
                    f"{where}: {label} (dtype {grad.dtype}, writeable "
                    f"{grad.flags.writeable}) cannot be changed in place for its "
                    f"{tensor.dtype} parameter; keep gradient arrays writeable "
                    "and in their parameter's dtype"
                )
    pairs = [pair for source in sources for pair in source.collect(None)]
    for tensor, grad in pairs:
        tensor.grad = grad


def zero_container_grads(optimizer: Any) -> None:
    """Zero the gradients of every NumPy container (``zero_grad()`` when it has one)."""
    for source in getattr(optimizer, "_gradient_sources", None) or []:
        source.zero_grad()
