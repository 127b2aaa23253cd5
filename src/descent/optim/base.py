"""The base class every descent optimizer derives from.

A descent optimizer is a ``torch.optim.Optimizer`` whose subclass declares three things
(see :mod:`descent.optim._spec`): its hyperparameters (``lr: float = hyper(...)``), the
state each parameter keeps (``keeps = (State("exp_avg"), ...)``) and its math, one
function that updates a parameter and its state in place (``math = staticmethod(adam)``).
Everything else is derived here or in the engine: the constructor, the checks of every
param group, the state before the first step, ``load_state_dict``'s checks, and how the
math is applied (:mod:`descent.engine`: torch's fused kernel where one exists for the
rule, the math on lists of tensors, or one tensor at a time).

Beyond ``torch.optim.Optimizer``:

* ``params`` may also be an ``nn.Module`` or a list of modules (their named
  parameters are used, so errors and state dicts carry names), or NumPy containers
  (:mod:`descent.interop.arrays`);
* every param group's hyperparameters are checked, not only the defaults, and a
  parameter given twice or a dtype the algorithm cannot update is refused with an
  error that names it;
* a hyperparameter read on the optimizer (``opt.lr``) is the value all groups share;
  set on it (``opt.lr = 1e-4``), it is checked and set in every group;
* :meth:`load_state_dict` checks the optimizer type, the groups, and every state
  tensor's key, shape and dtype before changing anything;
* every elementwise rule keeps its state in the precision ``state_dtype`` asks for
  (float32, bfloat16, block-quantised 8 or 4 bits) and writes bfloat16 parameters with
  the rounding ``param_rounding`` asks for (:mod:`descent.engine.quantize`);
  :meth:`state_bytes` counts the state's bytes.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from typing_extensions import dataclass_transform

from .. import engine
from ..engine import quantize
from ..engine._torch import FusedKernel
from ..engine.state import tracked
from ..interop.arrays import array_containers, refresh_gradients, zero_container_grads
from . import _cautious
from ._params import as_param_groups, param_label, split_group
from ._spec import Hyper, State, format_default, hyper

FORMAT_VERSION = 1
"""Version of the ``state_dict`` layout descent writes under the ``"descent"`` key."""

_TOP_LEVEL_KEYS = frozenset({"state", "param_groups", "descent"})

FLAGS_FILLED_ON_LOAD = frozenset(
    {
        "foreach",
        "maximize",
        "capturable",
        "differentiable",
        "fused",
        "decoupled_weight_decay",
        "amsgrad",
        "nesterov",
        "centered",
        "cautious",
        "state_dtype",
        "state_block_size",
        "param_rounding",  # descent's own options
    }
)
"""Flags that torch.optim added to an algorithm after its first release, and the options
descent adds to every rule: a state dict written by an older torch (or by torch) lacks
them, and loading it fills in the class's default (as torch.optim's ``__setstate__``
does). Any other missing hyperparameter is refused."""

Params = Any
"""What an optimizer takes as ``params``: tensors, ``named_parameters()``, param-group
dicts, modules or NumPy containers."""


def scalar_dtype() -> torch.dtype:
    """dtype of scalar state such as ``step``: float64 under a float64 default, else float32.

    This is torch.optim's rule, kept so that state dicts and trajectories match.
    """
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


@dataclass_transform(field_specifiers=(hyper,))
class _Declared(torch.optim.Optimizer):
    """What type checkers read: subclasses of this declare their constructor arguments as
    fields (``dataclass_transform``); :class:`Optimizer` declares the first, ``params``."""


class Optimizer(_Declared):
    """Base class of descent optimizers (a ``torch.optim.Optimizer``).

    Subclasses declare hyperparameters with :func:`~descent.optim._spec.hyper`, their
    per-parameter state in :attr:`keeps` and their update in :attr:`math`; see the
    module docstring. A subclass may still define ``__init__`` itself (and call
    ``Optimizer.__init__(self, params, defaults)``) when its constructor does more.
    """

    if TYPE_CHECKING:
        params: Params = hyper(doc="the parameters to optimize")

    # How state is stored and low-precision parameters are written (descent.engine.quantize);
    # options of every elementwise rule, declared once here.
    state_dtype: str | None = hyper(
        default=None,
        check=quantize.check_state_dtype,
        kw_only=True,
        doc="state precision: None (the parameter's dtype), 'float32', 'bf16', or "
        "block-quantised 'int8' / 'int4'",
    )
    state_block_size: int = hyper(
        default=quantize.DEFAULT_BLOCK_SIZE,
        check=quantize.check_block_size,
        kw_only=True,
        doc="elements per quantisation block, each with a float32 scale",
    )
    param_rounding: str = hyper(
        default="nearest",
        check=quantize.check_param_rounding,
        kw_only=True,
        doc="how updates are written into bfloat16/float16 parameters: 'nearest', "
        "'stochastic' or 'kahan'",
    )

    #: Every hyperparameter of the class, by name, in constructor order.
    hyperparameters: ClassVar[dict[str, Hyper]] = {}
    #: The state each parameter keeps (torch.optim's keys where torch has the algorithm).
    keeps: ClassVar[tuple[State, ...]] = ()
    #: The update rule: ``math(param, grad, *, <state>, step, <hyperparameters>)``.
    math: ClassVar[Callable[..., Any] | None] = None
    #: torch's fused kernel for exactly this rule, if torch has one (descent.engine._torch).
    #: Set on the class as a ``staticmethod``; not declared a ClassVar, which mypy would
    #: bind to the instance as a method.
    fused_kernel: FusedKernel | None = None
    #: Whether the update treats every element independently: then the math receives
    #: :class:`~descent.engine.TensorList` arguments and runs on many tensors at once;
    #: otherwise it receives one parameter's tensors at a time.
    elementwise: ClassVar[bool] = True
    #: Whether complex parameters are updated (as pairs of reals, like torch.optim).
    supports_complex: ClassVar[bool] = True
    #: Whether sparse gradients are accepted (the math then runs per tensor with them).
    supports_sparse: ClassVar[bool] = False
    #: Names of the math function's keyword arguments: state entries, "step" and
    #: hyperparameters (derived from its signature).
    math_arguments: ClassVar[tuple[str, ...]] = ()
    #: The algorithm's name in :mod:`descent.functional` and the registry's lower-case
    #: lookups (the class name in lower case unless the class sets it).
    registry_name: ClassVar[str] = ""
    #: Whether :mod:`descent.functional` has this rule (False where the functional state,
    #: one buffer shaped like each parameter, cannot hold the rule's state).
    functional_form: ClassVar[bool] = True
    #: Names of the state entries that are 0-dim scalars (``step``, ...), from :attr:`keeps`.
    scalar_state: ClassVar[frozenset[str]] = frozenset()
    #: Why ``cautious=True`` is refused, or "" where the masking of
    #: :mod:`~descent.optim._cautious` applies to the rule's update.
    cautious_refused: ClassVar[str] = ""
    #: Why block-quantised state (``state_dtype="int8"`` or ``"int4"``) is refused, or ""
    #: where every state entry may be quantised (statistics such as moments).
    quantized_state_refused: ClassVar[str] = ""
    #: For a rule that is not elementwise: whether its math takes sharded parameters
    #: (FSDP2's DTensors) as they are (its reductions are DTensor operations, or it
    #: gathers what it needs itself). Otherwise the engine gathers each sharded parameter,
    #: its gradient and its state whole for the math, and keeps each rank's shard.
    sharded_math: ClassVar[bool] = False
    #: Whether the rule's weight decay is the decoupled ``theta *= 1 - lr * weight_decay``
    #: (when the class has no ``decoupled_weight_decay`` hyperparameter saying so per group).
    decoupled_decay: ClassVar[bool] = False

    cautious: bool = hyper(default=False, kw_only=True)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared: dict[str, Hyper] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, Hyper):
                    declared[name] = value
        for name in quantize.OPTIONS:  # last in the constructor; only elementwise rules
            option = declared.pop(name)
            if cls.elementwise:
                declared[name] = option
        cls.hyperparameters = declared
        if "keeps" in vars(cls):  # else the parent's (MuonAdamW's is its rules' union)
            cls.scalar_state = frozenset(entry.name for entry in cls.keeps if entry.scalar)
        if "registry_name" not in vars(cls):
            cls.registry_name = cls.__name__.lower()
        if "math" in vars(cls) and "fused_kernel" not in vars(cls):
            cls.fused_kernel = None  # a fused kernel belongs to the math it was checked against
        if cls.math is not None:
            cls.math_arguments = _math_arguments(cls)
        if declared and "__init__" not in vars(cls):
            # the constructor generated from the declared hyperparameters
            cls.__init__ = _make_init(cls)  # type: ignore[method-assign]
        if declared and cls.__doc__:
            cls.__doc__ = _document(cls)

    def __init__(self, params: Params, defaults: dict[str, Any]) -> None:
        # a hand-written constructor may leave out what it does not change (``cautious``)
        if defaults:
            declared = {
                name: spec.default
                for name, spec in self.hyperparameters.items()
                if not spec.required
            }
            defaults = {**declared, **defaults}
        defaults = self._check_hyperparameters(defaults, "")
        # NumPy containers become tensors sharing their memory (descent.interop.arrays).
        params, self._gradient_sources = array_containers(type(self).__name__, params)
        super().__init__(as_param_groups(type(self).__name__, params), defaults)
        self.state = tracked(self.state)

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
        group.update(self._check_hyperparameters(group, f"param_groups[{index}]: "))

        existing = {
            id(p): (gi, pi)
            for gi, g in enumerate(self.param_groups)
            for pi, p in enumerate(g["params"])
        }
        seen: dict[int, int] = {}
        for i, param in enumerate(group["params"]):
            label = param_label(group, index, i)
            self._check_param_dtype(param, label)
            if id(param) in seen:
                first = param_label(group, index, seen[id(param)])
                raise ValueError(
                    f"{owner}: {label} is the same tensor as {first}; "
                    "each parameter may be given only once"
                )
            if id(param) in existing:
                gi, pi = existing[id(param)]
                first = param_label(self.param_groups[gi], gi, pi)
                raise ValueError(
                    f"{owner}: {label} is already optimized as {first}; "
                    "each parameter may be given only once"
                )
            seen[id(param)] = i
        super().add_param_group(group)

    def _check_param_dtype(self, param: torch.Tensor, label: str) -> None:
        owner = type(self).__name__
        if param.is_complex():
            if not self.supports_complex:
                raise TypeError(
                    f"{owner}: {label} has complex dtype {param.dtype}; "
                    f"{owner} updates real floating-point parameters only"
                )
        elif not param.is_floating_point():
            raise TypeError(
                f"{owner}: {label} has dtype {param.dtype}; expected a "
                "floating-point tensor (an in-place update would truncate integers)"
            )

    def _check_hyperparameters(self, group: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Check every hyperparameter of ``group``; return the checked values by name."""
        owner = type(self).__name__
        checked = {}
        for name, spec in self.hyperparameters.items():
            if name not in group and name in quantize.OPTIONS:
                checked[name] = spec.default  # state dicts from torch or older versions
                continue
            if name not in group:
                raise ValueError(f"{owner}: {where}missing hyperparameter {name!r}")
            checked[name] = spec.validate(owner, where, group[name])
        self._check_options({**group, **checked}, where)
        _cautious.check_options(type(self), {**group, **checked}, where)
        if checked.get("state_dtype") in ("int8", "int4") and self.quantized_state_refused:
            raise ValueError(
                f"{owner}: {where}state_dtype={checked['state_dtype']!r} is not "
                f"supported: {self.quantized_state_refused}"
            )
        return checked

    @classmethod
    def _check_options(cls, group: Mapping[str, Any], where: str) -> None:
        """Checks that involve several hyperparameters together (overridden by subclasses)."""

    # ------------------------------------------------------------------ state

    def _init_state(self, param: torch.Tensor, group: Mapping[str, Any]) -> dict[str, Any]:
        """State of a parameter before its first update (torch.optim's layout), from
        :attr:`keeps`."""
        state: dict[str, Any] = {}
        for entry in self.keeps:
            if entry.lazy or not entry.applies(group):
                continue
            if entry.shape is not None:
                shape = entry.shape_for(param, group)
                if shape is None:
                    continue
                state[entry.name] = (
                    entry.init(param, group)
                    if callable(entry.init)
                    else _new_full(param, shape, float(entry.init))
                )
            elif callable(entry.init):
                state[entry.name] = entry.init(param, group)
            elif entry.scalar:
                state[entry.name] = torch.tensor(float(entry.init), dtype=scalar_dtype())
            else:
                state[entry.name] = torch.full_like(
                    param, entry.init, memory_format=torch.preserve_format
                )
        return quantize.stored_state(state, param, group, self)

    def _state_keys(self, group: Mapping[str, Any], param: torch.Tensor) -> frozenset[str]:
        """The keys ``param``, of ``group``, has in its state once it has stepped."""
        return frozenset(
            entry.name
            for entry in self.keeps
            if entry.applies(group) and (entry.scalar or entry.shape_for(param, group) is not None)
        )

    @classmethod
    def cautious_call(
        cls, param: Any, grad: Any, arguments: dict[str, Any], options: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The rule's math with cautious masking around it (the engine calls this for
        groups with ``cautious=True``; see :mod:`descent.optim._cautious`)."""
        return _cautious.masked_update(cls, param, grad, arguments, options)

    @property
    def _non_negative_state(self) -> frozenset[str]:
        return frozenset(entry.name for entry in self.keeps if entry.non_negative)

    def state_bytes(self) -> int:
        """Bytes of every tensor of the optimizer's state (see ``state_dtype``).

        Example: ``opt.state_bytes() / sum(p.numel() for p in model.parameters())`` is
        8.0 for Adam in float32 on large tensors, about 2.03 with ``state_dtype="int8"``.
        """
        self._conform_state()
        return quantize.state_bytes(self)

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, closure: Any = None, *, grads: Mapping[str, Any] | None = None) -> Any:
        """Update every parameter that has a gradient; return ``closure()``'s loss if given.

        ``grads`` gives the gradients of parameters passed as a dict of NumPy arrays.
        Gradients are read, never written; parameters keep their storage.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        refresh_gradients(self, grads)  # NumPy containers' gradients (descent.interop.arrays)
        self._check_gradients()
        engine.step(self)
        return loss

    def _check_gradients(self) -> None:
        """Checks of this step's gradients, before any parameter changes (overridden by
        rules that take only some gradients, such as SparseAdam)."""

    def describe_param(self, group_index: int, index: int) -> str:
        """How errors name parameter ``index`` of group ``group_index``."""
        label = param_label(self.param_groups[group_index], group_index, index)
        return f"{type(self).__name__}: {label}"

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's ``zero_grad``; NumPy containers' gradients are zeroed too (their
        ``zero_grad()`` when they have one)."""
        super().zero_grad(set_to_none)
        zero_container_grads(self)

    # ------------------------------------------------------------------ state dicts

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict plus ``"descent": {"optimizer", "format_version"}``.

        As in torch.optim, the state tensors are the optimizer's own (not copies): save
        or copy the result before the next step changes them. Each parameter's state is
        a plain dict, and a tensor that is a view of a larger one is replaced by a
        compact copy, so saving never writes more than the state itself.
        """
        self._conform_state()  # state stored as the options now say, before it is read
        state_dict = super().state_dict()
        state_dict["state"] = {
            key: engine.compact_state(entry) for key, entry in state_dict["state"].items()
        }
        state_dict["descent"] = {"optimizer": type(self).__name__, "format_version": FORMAT_VERSION}
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict after checking all of it; on error nothing changes.

        Accepts state dicts written by descent or by the matching torch.optim class
        (same layout), older torch versions' included: a flag such as ``maximize`` or
        ``foreach`` that a group lacks (:data:`FLAGS_FILLED_ON_LOAD`) takes this class's
        default, as in torch.optim. Checked: the optimizer type and format version (when present),
        the number of groups and of parameters per group, every group's
        hyperparameters, and for each parameter's state the exact set of keys and
        each tensor's shape and dtype against the parameter. Each mismatch raises a
        ``ValueError`` saying what and where.

        The storage options (``state_dtype``, ``state_block_size``, ``param_rounding``)
        stay this optimizer's: state saved in another precision is checked against the
        saved options, then converted (a float32 state dict loaded into an optimizer
        made with ``state_dtype="int8"`` is quantised, and back; see
        :mod:`descent.engine.quantize`).
        """
        state_dict = self._fill_missing_flags(state_dict)
        self._check_state_dict(state_dict)
        # A deep copy, so that the loaded state never aliases the caller's tensors
        # (torch's load keeps tensors that need no cast, and descent updates in place).
        payload = copy.deepcopy(
            {key: value for key, value in state_dict.items() if key != "descent"}
        )
        storage = [
            {name: group[name] for name in quantize.OPTIONS if name in group}
            for group in self.param_groups
        ]
        super().load_state_dict(payload)
        for group, options in zip(self.param_groups, storage, strict=True):
            group.update(options)  # state is stored as this optimizer's options say
        self.state = tracked(self.state)
        engine.forget(self)  # the engine lays the loaded state out again at the next step
        # torch casts every floating state tensor but `step` to the parameter's dtype;
        # scalar state such as NAdam's mu_product keeps its own dtype, as when it was saved.
        saved_ids = [i for group in payload["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        scalar_state = self.scalar_state
        for saved_id, param in zip(saved_ids, params, strict=True):
            saved = payload["state"].get(saved_id, {})
            for key in scalar_state & saved.keys():
                if torch.is_tensor(saved[key]):
                    self.state[param][key] = saved[key].to(device="cpu")
            if saved:
                quantize.loaded(self.state[param], saved, param)
        self._conform_state()

    def _conform_state(self) -> None:
        """Store every parameter's state in the form its group's storage options give it
        (:func:`descent.engine.quantize.conform_all`); overridden by optimizers whose state
        another rule keeps (:class:`~descent.optim.MuonAdamW`) or is not kept per
        parameter (:class:`~descent.optim.LBFGS`)."""
        quantize.conform_all(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.state = tracked(self.state)
        for param_state in self.state.values():
            for key in self.scalar_state:
                value = param_state.get(key)
                if value is not None and not torch.is_tensor(value):
                    param_state[key] = torch.tensor(float(value), dtype=scalar_dtype())

    def _fill_missing_flags(self, state_dict: Any) -> Any:
        """``state_dict`` with the flags in :data:`FLAGS_FILLED_ON_LOAD` that a group
        lacks set to this class's defaults (a new dict; the caller's is not changed)."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, Mapping) else None
        if not isinstance(groups, list | tuple):
            return state_dict  # malformed: _check_state_dict says how
        filled = [
            self._with_default_flags(group) if isinstance(group, Mapping) else group
            for group in groups
        ]
        return {**state_dict, "param_groups": filled}

    def _with_default_flags(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """A saved ``group`` with the flags of :data:`FLAGS_FILLED_ON_LOAD` it lacks set to
        this class's defaults (overridden where a group's defaults depend on the group)."""
        return {
            **group,
            **{
                name: spec.default
                for name, spec in self.hyperparameters.items()
                if name in FLAGS_FILLED_ON_LOAD and name not in group
            },
        }

    def _check_state_dict(self, state_dict: Any) -> None:
        owner = type(self).__name__
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"{owner}.load_state_dict: expected a dict, got {type(state_dict).__name__}"
            )
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
                raise ValueError(
                    f"{owner}.load_state_dict: the state dict is from optimizer "
                    f"{saved_type!r}, not {owner!r}"
                )
            version = meta.get("format_version")
            if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
                raise ValueError(
                    f"{owner}.load_state_dict: format_version={version!r} is not "
                    f"supported; expected an integer from 1 to {FORMAT_VERSION}"
                )

        saved_groups = state_dict["param_groups"]
        if not isinstance(saved_groups, list | tuple):
            raise ValueError(
                f"{owner}.load_state_dict: param_groups has type "
                f"{type(saved_groups).__name__}; expected a list"
            )
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{owner}.load_state_dict: the state dict has {len(saved_groups)} "
                f"param groups, the optimizer has {len(self.param_groups)}"
            )
        id_to_param: dict[Any, tuple[torch.Tensor, dict[str, Any], str]] = {}
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            where = f"param_groups[{gi}]"
            if not isinstance(saved, Mapping) or "params" not in saved:
                raise ValueError(
                    f"{owner}.load_state_dict: {where} is not a group dict with a 'params' entry"
                )
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"{owner}.load_state_dict: {where} has {len(saved['params'])} "
                    f"parameters in the state dict, {len(group['params'])} in "
                    "the optimizer"
                )
            self._check_hyperparameters(saved, f"load_state_dict: {where}: ")
            for pi, (param_id, param) in enumerate(
                zip(saved["params"], group["params"], strict=True)
            ):
                if param_id in id_to_param:
                    raise ValueError(
                        f"{owner}.load_state_dict: parameter id {param_id!r} "
                        "appears twice in param_groups"
                    )
                id_to_param[param_id] = (param, dict(saved), param_label(group, gi, pi))

        saved_state = state_dict["state"]
        if not isinstance(saved_state, Mapping):
            raise ValueError(
                f"{owner}.load_state_dict: state has type "
                f"{type(saved_state).__name__}; expected a dict"
            )
        for param_id, entry in saved_state.items():
            if param_id not in id_to_param:
                raise ValueError(
                    f"{owner}.load_state_dict: state has an entry for parameter "
                    f"id {param_id!r}, which no param group lists"
                )
            param, group, label = id_to_param[param_id]
            self._check_state_entry(param, group, label, entry)

    def _check_state_entry(
        self, param: torch.Tensor, group: dict[str, Any], label: str, entry: Any
    ) -> None:
        owner = type(self).__name__
        where = f"{owner}.load_state_dict: state of {label}"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} has type {type(entry).__name__}; expected a dict")
        if not entry:
            return
        expected = self._state_keys(group, param) | quantize.extra_keys(param, group)
        keys = set(entry)
        if keys != expected:
            parts = []
            if expected - keys:
                parts.append(f"missing {sorted(expected - keys)}")
            if keys - expected:
                parts.append(f"unknown {sorted(keys - expected)}")
            raise ValueError(
                f"{where}: {' and '.join(parts)} keys "
                f"(expected {sorted(expected)} for this group's options)"
            )
        scalar_state = self.scalar_state
        shapes = {spec.name: spec.shape_for(param, group) for spec in self.keeps if not spec.scalar}
        for key, value in entry.items():
            if key in scalar_state:
                number = value.item() if torch.is_tensor(value) and value.numel() == 1 else value
                if (
                    isinstance(number, bool)
                    or not isinstance(number, int | float)
                    or not math.isfinite(number)
                    or (key == "step" and number < 0)
                ):
                    raise ValueError(
                        f"{where}: {key}={value!r} is invalid; expected a finite "
                        "scalar" + (" >= 0" if key == "step" else "")
                    )
                continue
            if quantize.Options.of(group).applies(param):
                quantize.check_stored(
                    where, key, value, param, group, signed=key not in self._non_negative_state
                )
                continue
            if not torch.is_tensor(value):
                raise ValueError(
                    f"{where}: {key} has type {type(value).__name__}; expected a tensor"
                )
            if tuple(value.shape) != shapes[key]:
                expected_shape = (
                    ""
                    if shapes[key] == tuple(param.shape)
                    else f", so {key} has shape {shapes[key]}"
                )
                raise ValueError(
                    f"{where}: {key} has shape {tuple(value.shape)}, the "
                    f"parameter has shape {tuple(param.shape)}{expected_shape}"
                )
            if value.dtype != param.dtype:
                raise ValueError(
                    f"{where}: {key} has dtype {value.dtype}, the parameter has dtype {param.dtype}"
                )


# ---------------------------------------------------------------------- derived pieces


def _math_arguments(cls: type[Optimizer]) -> tuple[str, ...]:
    """The keyword arguments of ``cls.math``, each checked to be a state entry, ``step``
    or a hyperparameter of the class."""
    assert cls.math is not None
    signature = inspect.signature(cls.math)
    names = [
        name
        for name, parameter in signature.parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    known = {entry.name for entry in cls.keeps} | set(cls.hyperparameters) | {"step"}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise TypeError(
            f"{cls.__name__}.math takes {unknown}, which are neither state "
            "entries, 'step' nor hyperparameters of the class"
        )
    return tuple(names)


def _make_init(cls: type[Optimizer]) -> Callable[..., None]:
    """The constructor: ``(self, params, <hyperparameters in declaration order>)``."""
    kind = inspect.Parameter
    arguments = [h for h in cls.hyperparameters.values() if h.init]
    fixed = {h.name: h.default for h in cls.hyperparameters.values() if not h.init}
    parameters = [
        kind("self", kind.POSITIONAL_OR_KEYWORD),
        kind("params", kind.POSITIONAL_OR_KEYWORD),
    ]
    for spec in [h for h in arguments if not h.kw_only] + [h for h in arguments if h.kw_only]:
        parameters.append(
            kind(
                spec.name,
                kind.KEYWORD_ONLY if spec.kw_only else kind.POSITIONAL_OR_KEYWORD,
                default=kind.empty if spec.required else spec.default,
            )
        )
    signature = inspect.Signature(parameters)
    owner = cls.__name__

    def __init__(self: Optimizer, *args: Any, **kwargs: Any) -> None:
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as error:
            raise TypeError(
                f"{owner}: {error}; its arguments are {', '.join(list(signature.parameters)[1:])}"
            ) from None
        bound.apply_defaults()
        values = dict(bound.arguments)
        del values["self"]
        params = values.pop("params")
        Optimizer.__init__(self, params, {**values, **fixed})

    # what inspect.signature reports (functions do not declare the attribute)
    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__doc__ = f"Make a {owner} optimizer over ``params`` (see the class docstring)."
    return __init__


def _new_full(param: torch.Tensor, shape: tuple[int, ...], value: float) -> torch.Tensor:
    """A state tensor of ``shape`` filled with ``value``, like ``param``. For a sharded
    parameter (a DTensor) a state of another shape than the parameter's (Adafactor's row
    and column factors) is replicated on every rank: sharding it like the parameter
    would make each rank's piece a different part of a different shape."""
    if engine.is_dtensor(param) and shape != tuple(param.shape):
        from torch.distributed.tensor import DTensor, Replicate

        dtensor: Any = param
        local = torch.full(shape, value, dtype=param.dtype, device=dtensor.to_local().device)
        return DTensor.from_local(
            local, dtensor.device_mesh, [Replicate()] * dtensor.device_mesh.ndim, run_check=False
        )
    return param.new_full(shape, value)


def _document(cls: type[Optimizer]) -> str:
    """The class docstring with an "Args" section listing every constructor argument."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    if re.search(r"^Args:$", doc, flags=re.M):  # written by hand (MuonAdamW's own options)
        return doc + "\n"
    lines = [
        "",
        "",
        "Args:",
        "    params: the parameters to optimize: tensors, ``named_parameters()``, "
        "param-group dicts, a module or a list of modules.",
    ]
    specs = [spec for spec in cls.hyperparameters.values() if spec.init]
    for spec in sorted(specs, key=lambda spec: spec.kw_only):  # in the constructor's order
        refused = (
            f"; only False here: {cls.cautious_refused}"
            if spec.name == "cautious" and cls.cautious_refused
            else ""
        )
        lines.append(
            f"    {spec.name}: {spec.doc or 'see above'}{refused} "
            f"(default {format_default(spec.default)})."
        )
    return doc + "\n".join(lines) + "\n"


__all__ = [
    "FLAGS_FILLED_ON_LOAD",
    "FORMAT_VERSION",
    "Optimizer",
    "Params",
    "State",
    "hyper",
    "scalar_dtype",
]
