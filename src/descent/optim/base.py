"""The base class every descent optimizer derives from.

A descent optimizer is a ``torch.optim.Optimizer`` whose subclass says only three
things: which hyperparameters it takes (and how to check them), what state a
parameter starts with, and how one update is computed. The update itself is a
plain function of tensors (the algorithm's math, written once, in the
algorithm's module); this class applies it to each parameter that has a
gradient and writes the results back in place.

Everything else is shared here: accepting tensors, named parameters, group
dicts or modules; checking every group's hyperparameters; the ``lr`` property;
and a ``load_state_dict`` that checks the whole state dict before it changes
anything.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch

from ..engine import compact_state, engine_for, existing_engine
from ..interop.arrays import array_containers, refresh_gradients, zero_container_grads
from . import _validate
from ._params import as_param_groups, param_label, split_group

FORMAT_VERSION = 1
"""Version of the ``state_dict`` layout descent writes under the ``"descent"`` key."""

_TOP_LEVEL_KEYS = frozenset({"state", "param_groups", "descent"})


def scalar_dtype() -> torch.dtype:
    """dtype of scalar state such as ``step``: float64 under a float64 default, else float32.

    This is torch.optim's rule, kept so that state dicts and trajectories match.
    """
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class Optimizer(torch.optim.Optimizer):
    """Base class of descent optimizers (a ``torch.optim.Optimizer``).

    Subclasses set :attr:`hyperparameters` (each group option and its check) and
    implement :meth:`_init_state` and :meth:`_update`. ``_update`` computes the new
    values of the parameter and of its state from the current ones by calling the
    algorithm's math function; it mutates nothing. The base class applies it to every
    parameter whose ``.grad`` is not None and copies the results back in place.

    Beyond ``torch.optim.Optimizer``:

    * ``params`` may also be an ``nn.Module`` or a list of modules (their named
      parameters are used, so errors and state dicts carry names);
    * every param group's hyperparameters are checked, not only the defaults, and a
      parameter given twice, an empty group, or a dtype the algorithm cannot update
      is refused with an error that names it;
    * :attr:`lr` reads or sets the learning rate of all groups at once;
    * :meth:`load_state_dict` checks the optimizer type, the groups, and every state
      tensor's key, shape and dtype before changing anything.
    """

    #: Each hyperparameter a param group carries, with the check its value must pass.
    hyperparameters: ClassVar[dict[str, _validate.Check]] = {}
    #: Whether complex parameters are updated (as pairs of reals, like torch.optim).
    supports_complex: ClassVar[bool] = True
    #: Whether the update treats every element independently (so it can run on flat buffers).
    elementwise: ClassVar[bool] = True
    #: State entries that are 0-dim scalars rather than tensors shaped like the parameter.
    scalar_state: ClassVar[frozenset[str]] = frozenset({"step"})

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        self._check_hyperparameters(defaults, "")
        # NumPy containers become tensors sharing their memory (descent.interop.arrays).
        params, self._gradient_sources = array_containers(type(self).__name__, params)
        super().__init__(as_param_groups(type(self).__name__, params), defaults)

    # ------------------------------------------------------------------ groups

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group, checking its parameters and hyperparameters first.

        ``param_group["params"]`` may hold tensors, ``(name, tensor)`` pairs or a
        module. Options the group leaves out take the optimizer's defaults.
        """
        owner = type(self).__name__
        index = len(self.param_groups)
        group = split_group(owner, param_group, index)
        if not group["params"] and self.param_groups and "param_names" in self.param_groups[0]:
            group["param_names"] = []  # an empty group takes the others' naming
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        self._check_hyperparameters(group, f"param_groups[{index}]: ")

        existing = {id(p): (gi, pi) for gi, g in enumerate(self.param_groups)
                    for pi, p in enumerate(g["params"])}
        seen: dict[int, int] = {}
        for i, param in enumerate(group["params"]):
            label = param_label(group, index, i)
            self._check_param_dtype(param, label)
            if id(param) in seen:
                first = param_label(group, index, seen[id(param)])
                raise ValueError(f"{owner}: {label} is the same tensor as {first}; "
                                 "each parameter may be given only once")
            if id(param) in existing:
                gi, pi = existing[id(param)]
                first = param_label(self.param_groups[gi], gi, pi)
                raise ValueError(f"{owner}: {label} is already optimized as {first}; "
                                 "each parameter may be given only once")
            seen[id(param)] = i
        super().add_param_group(group)

    def _check_param_dtype(self, param: torch.Tensor, label: str) -> None:
        owner = type(self).__name__
        if param.is_complex():
            if not self.supports_complex:
                raise TypeError(f"{owner}: {label} has complex dtype {param.dtype}; "
                                f"{owner} updates real floating-point parameters only")
        elif not param.is_floating_point():
            raise TypeError(f"{owner}: {label} has dtype {param.dtype}; expected a "
                            "floating-point tensor (an in-place update would truncate integers)")

    def _check_hyperparameters(self, group: Mapping[str, Any], where: str) -> None:
        owner = type(self).__name__
        for name, check in self.hyperparameters.items():
            if name not in group:
                raise ValueError(f"{owner}: {where}missing hyperparameter {name!r}")
            check(owner, f"{where}{name}", group[name])
        self._check_options(group, where)

    def _check_options(self, group: Mapping[str, Any], where: str) -> None:
        """Checks that involve several hyperparameters together (overridden by subclasses)."""

    # ------------------------------------------------------------------ lr

    @property
    def lr(self) -> float:
        """The learning rate shared by all param groups.

        Reading it when groups have different learning rates raises a ``ValueError``
        (read ``opt.param_groups[i]["lr"]`` instead). Setting it sets every group.
        """
        values = [group["lr"] for group in self.param_groups]
        if any(value != values[0] for value in values[1:]):
            raise ValueError(f"{type(self).__name__}: param groups have different learning "
                             f"rates {values}; read opt.param_groups[i]['lr'] for group i")
        return values[0]

    @lr.setter
    def lr(self, value: float) -> None:
        _validate.non_negative(type(self).__name__, "lr", value)
        for group in self.param_groups:
            group["lr"] = value

    # ------------------------------------------------------------------ update

    def _init_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        """State of a parameter before its first update (torch.optim's layout)."""
        raise NotImplementedError

    def _update(self, param: torch.Tensor, grad: torch.Tensor, state: Mapping[str, Any],
                group: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """New values of ``"param"`` and of state entries, from the current ones.

        ``state["step"]``, where the algorithm counts steps, already counts this
        update (a tensor or a number). Must not mutate its inputs: the caller writes the
        results back. Must read nothing but its arguments: :mod:`descent.functional` calls
        it without an optimizer instance, so the class and the functional form map
        hyperparameters to the math function's arguments in this one place.
        """
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Any = None, *, grads: Mapping[str, Any] | None = None) -> Any:
        """Update every parameter that has a gradient; return ``closure()``'s loss if given.

        ``grads`` gives the gradients of parameters passed as a dict of NumPy arrays.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        refresh_gradients(self, grads)  # NumPy containers' gradients (descent.interop.arrays)
        for index, group in enumerate(self.param_groups):
            self._step_group(group, index)
        return loss

    def _step_group(self, group: dict[str, Any], group_index: int) -> None:
        """Update the group's params: through the engine (flat buffers) or one by one."""
        engine = engine_for(self)
        if engine is not None:
            engine.step_group(group, group_index)
        else:
            self._step_per_tensor(group, group_index, range(len(group["params"])))

    def _describe_param(self, group: Mapping[str, Any], group_index: int, index: int) -> str:
        return f"{type(self).__name__}: {param_label(group, group_index, index)}"

    def _step_per_tensor(self, group: dict[str, Any], group_index: int,
                         indices: Iterable[int]) -> None:
        """The reference path: the update applied to each listed parameter on its own."""
        params = group["params"]
        for i in indices:
            param = params[i]
            grad = param.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise TypeError(
                    f"{self._describe_param(group, group_index, i)} has a sparse "
                    "gradient; descent optimizers take dense gradients "
                    "(torch.optim.SparseAdam handles sparse ones)")
            state = self.state.get(param) or self._init_state(param, group)
            apply_update(self, param, grad, state, group)
            if state:
                self.state[param] = state

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's ``zero_grad``; NumPy containers' gradients are zeroed too (their
        ``zero_grad()`` when they have one).

        With ``set_to_none=False``, gradients of parameters in the engine's flat buffers
        are zeroed as views of its flat gradient buffer, so that the next backward
        accumulates straight into it and the step reads it in place.
        """
        engine = existing_engine(self)
        if engine is not None and not set_to_none:
            engine.adopt_grads()
        super().zero_grad(set_to_none)
        zero_container_grads(self)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict plus ``"descent": {"optimizer", "format_version"}``.

        State tensors that are views of the engine's flat buffers are returned as
        compact copies (each holding only its parameter's elements), so saving the state
        dict never saves a whole flat buffer per view; this copies the state once.
        """
        state_dict = super().state_dict()
        if existing_engine(self) is not None:
            state_dict["state"] = {key: compact_state(entry)
                                   for key, entry in state_dict["state"].items()}
        state_dict["descent"] = {"optimizer": type(self).__name__,
                                 "format_version": FORMAT_VERSION}
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict after checking all of it; on error nothing changes.

        Accepts state dicts written by descent or by the matching torch.optim class
        (same layout). Checked: the optimizer type and format version (when present),
        the number of groups and of parameters per group, every group's
        hyperparameters, and for each parameter's state the exact set of keys and
        each tensor's shape and dtype against the parameter. Each mismatch raises a
        ``ValueError`` saying what and where.
        """
        self._check_state_dict(state_dict)
        # A deep copy, so that the loaded state never aliases the caller's tensors
        # (torch's load keeps tensors that need no cast, and descent updates in place).
        payload = copy.deepcopy({key: value for key, value in state_dict.items()
                                 if key != "descent"})
        super().load_state_dict(payload)
        engine = existing_engine(self)
        if engine is not None:
            engine.reset()  # the loaded state moves into flat buffers at the next step
        # torch casts every floating state tensor but `step` to the parameter's dtype;
        # scalar state such as NAdam's mu_product keeps its own dtype, as when it was saved.
        saved_ids = [i for group in payload["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for saved_id, param in zip(saved_ids, params, strict=True):
            saved = payload["state"].get(saved_id, {})
            for key in self.scalar_state & saved.keys():
                if torch.is_tensor(saved[key]):
                    self.state[param][key] = saved[key].to(device=param.device)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for param_state in self.state.values():
            for key in self.scalar_state:
                value = param_state.get(key)
                if value is not None and not torch.is_tensor(value):
                    param_state[key] = torch.tensor(float(value), dtype=scalar_dtype())

    def _state_keys(self, group: Mapping[str, Any]) -> frozenset[str]:
        """The keys a parameter's state has after its first update under ``group``."""
        probe = torch.zeros(1)
        return frozenset(self._init_state(probe, dict(group)))

    def _check_state_dict(self, state_dict: Any) -> None:
        owner = type(self).__name__
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{owner}.load_state_dict: expected a dict, got "
                            f"{type(state_dict).__name__}")
        missing = {"state", "param_groups"} - set(state_dict)
        if missing:
            raise ValueError(f"{owner}.load_state_dict: state dict lacks {sorted(missing)}")
        unknown = set(state_dict) - _TOP_LEVEL_KEYS
        if unknown:
            raise ValueError(f"{owner}.load_state_dict: unknown top-level keys {sorted(unknown)}")
        meta = state_dict.get("descent")
        if meta is not None:
            saved_type = meta.get("optimizer") if isinstance(meta, Mapping) else None
            if saved_type != owner:
                raise ValueError(f"{owner}.load_state_dict: the state dict is from optimizer "
                                 f"{saved_type!r}, not {owner!r}")
            version = meta.get("format_version")
            if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
                raise ValueError(f"{owner}.load_state_dict: format_version={version!r} is not "
                                 f"supported; expected an integer from 1 to {FORMAT_VERSION}")

        saved_groups = state_dict["param_groups"]
        if not isinstance(saved_groups, list | tuple):
            raise ValueError(f"{owner}.load_state_dict: param_groups has type "
                             f"{type(saved_groups).__name__}; expected a list")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{owner}.load_state_dict: the state dict has {len(saved_groups)} "
                             f"param groups, the optimizer has {len(self.param_groups)}")
        id_to_param: dict[Any, tuple[torch.Tensor, dict[str, Any], str]] = {}
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            where = f"param_groups[{gi}]"
            if not isinstance(saved, Mapping) or "params" not in saved:
                raise ValueError(f"{owner}.load_state_dict: {where} is not a group dict with "
                                 "a 'params' entry")
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{owner}.load_state_dict: {where} has {len(saved['params'])} "
                                 f"parameters in the state dict, {len(group['params'])} in "
                                 "the optimizer")
            self._check_hyperparameters(saved, f"load_state_dict: {where}: ")
            for pi, (param_id, param) in enumerate(zip(saved["params"], group["params"],
                                                       strict=True)):
                if param_id in id_to_param:
                    raise ValueError(f"{owner}.load_state_dict: parameter id {param_id!r} "
                                     "appears twice in param_groups")
                id_to_param[param_id] = (param, dict(saved), param_label(group, gi, pi))

        saved_state = state_dict["state"]
        if not isinstance(saved_state, Mapping):
            raise ValueError(f"{owner}.load_state_dict: state has type "
                             f"{type(saved_state).__name__}; expected a dict")
        for param_id, entry in saved_state.items():
            if param_id not in id_to_param:
                raise ValueError(f"{owner}.load_state_dict: state has an entry for parameter "
                                 f"id {param_id!r}, which no param group lists")
            param, group, label = id_to_param[param_id]
            self._check_state_entry(param, group, label, entry)

    def _check_state_entry(self, param: torch.Tensor, group: dict[str, Any], label: str,
                           entry: Any) -> None:
        owner = type(self).__name__
        where = f"{owner}.load_state_dict: state of {label}"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} has type {type(entry).__name__}; expected a dict")
        if not entry:
            return
        expected = self._state_keys(group)
        keys = set(entry)
        if keys != expected:
            parts = []
            if expected - keys:
                parts.append(f"missing {sorted(expected - keys)}")
            if keys - expected:
                parts.append(f"unknown {sorted(keys - expected)}")
            raise ValueError(f"{where}: {' and '.join(parts)} keys "
                             f"(expected {sorted(expected)} for this group's options)")
        for key, value in entry.items():
            if key in self.scalar_state:
                number = value.item() if torch.is_tensor(value) and value.numel() == 1 else value
                if (isinstance(number, bool) or not isinstance(number, int | float)
                        or not math.isfinite(number) or (key == "step" and number < 0)):
                    raise ValueError(f"{where}: {key}={value!r} is invalid; expected a finite "
                                     "scalar" + (" >= 0" if key == "step" else ""))
                continue
            if not torch.is_tensor(value):
                raise ValueError(f"{where}: {key} has type {type(value).__name__}; expected "
                                 "a tensor")
            if value.shape != param.shape:
                raise ValueError(f"{where}: {key} has shape {tuple(value.shape)}, the "
                                 f"parameter has shape {tuple(param.shape)}")
            if value.dtype != param.dtype:
                raise ValueError(f"{where}: {key} has dtype {value.dtype}, the parameter has "
                                 f"dtype {param.dtype}")


def apply_update(optimizer: Optimizer, param: torch.Tensor, grad: torch.Tensor,
                 state: dict[str, Any], group: Mapping[str, Any]) -> None:
    """Run ``optimizer``'s update for one parameter and write the results back in place.

    Counts the step (``state["step"] += 1``) where the algorithm has one. Complex
    parameters and their state are viewed as real pairs, as in torch.optim.
    """
    if "step" in state:
        state["step"] += 1
    is_complex = param.is_complex()
    if is_complex:
        param, grad = torch.view_as_real(param), torch.view_as_real(grad)
        view = {key: torch.view_as_real(value) if torch.is_tensor(value) and value.is_complex()
                else value for key, value in state.items()}
    else:
        view = state
    new = optimizer._update(param, grad, view, group)
    for key, value in new.items():
        target = param if key == "param" else view.get(key)
        if target is None:
            value = value.detach().clone()
            state[key] = torch.view_as_complex(value) if is_complex else value
        else:
            target.copy_(value)
