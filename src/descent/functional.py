"""Pure optimizer steps: ``init(params) -> state`` and ``step(params, grads, state)``.

Each algorithm of :mod:`descent.optim` is also available here as a pair of pure
functions, for code that wants to differentiate through optimizer steps
(meta-learning, learned learning rates), run them under ``torch.func`` transforms
(``vmap`` over an ensemble, ``grad``), or keep its state explicitly::

    state = functional.adam.init(params)
    params, state = functional.adam.step(params, grads, state, lr=1e-3)

``params`` and ``grads`` are the same *tree* of tensors: one tensor, a list or tuple
of tensors, or a dict (nested lists, tuples and dicts are fine, e.g. the dict that
``dict(model.named_parameters())`` gives for ``torch.func.functional_call``).
``step`` returns new params of that structure and a new state; it mutates nothing,
and every hyperparameter may be a tensor (for instance a learning rate with
``requires_grad=True``), so gradients flow through the whole unrolled loop.

The update is the one written in :mod:`descent.optim`: ``step`` calls the same math
function, with the same arguments, as the optimizer classes (:func:`descent.optim.adam`,
...), on :class:`~descent.engine.TensorList` arguments in *pure* mode (each in-place
operation runs out of place), so its results equal bit for bit those of the classes'
per-tensor path (torch's fused kernels may round the last bits differently). Every
elementwise algorithm in the registry (:func:`descent.optim.registry.algorithms`) has
its functional form here, under its lower-case name; rules that are not elementwise
(Adafactor, Muon, SparseAdam, LBFGS) keep state or need inputs this form does not model.

**State.** A dict: ``"step"``, a 0-dim tensor counting the steps taken (the
torch.optim dtype: float32, or float64 under a float64 default dtype), and one entry
per buffer (``"exp_avg"``, ...) holding a tree shaped like ``params``. NAdam adds
the 0-dim ``"mu_product"``. Options that decide which buffers exist are given to
``init`` (``amsgrad`` for Adam, ``momentum`` and ``centered`` for RMSprop, ...);
``step`` reads them back from the state and refuses a contradicting hyperparameter.
``state_from_optimizer`` and ``load_into_optimizer`` convert between this state and
an optimizer object's, so a run can move between the two forms. The functional state
is full precision: an optimizer's low-precision state (``state_dtype``, see
:mod:`descent.engine.quantize`) is decoded on the way out and stored in the
optimizer's form on the way in.

**The step count** enters the math as a Python number, as in the
classes (the bias corrections are computed in double precision, like torch.optim's),
so it cannot be a traced or batched value.

**vmap.** Every algorithm here is elementwise, so ``torch.func.vmap`` maps it over
an ensemble of parameter sets stacked along a leading dimension. Either create the
state inside the mapped function (``init`` then the loop, see the tests), or pass
the state of the stacked parameters with ``in_dims`` ``None`` for the shared
``"step"`` (and ``"mu_product"``) and 0 for the buffers.

References: Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast Adaptation
of Deep Networks", ICML 2017 (differentiating through inner steps, as the tests do);
Maclaurin, Duvenaud & Adams, "Gradient-based Hyperparameter Optimization through
Reversible Learning", ICML 2015 (gradients with respect to learning rates).

Example:

>>> import torch
>>> from descent import functional
>>> params = {"w": torch.tensor([1.0, -2.0])}
>>> state = functional.adam.init(params)
>>> grads = {"w": torch.tensor([0.5, -0.5])}
>>> params, state = functional.adam.step(params, grads, state, lr=0.1)
>>> params["w"]
tensor([ 0.9000, -1.9000])
>>> int(state["step"])
1
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from .engine import TensorList, call_math, quantize
from .optim.base import Optimizer, scalar_dtype
from .optim.registry import algorithms

Tree = Any
"""A tensor, or a list, tuple or dict of trees."""


# ---------------------------------------------------------------------- trees


def _leaves(tree: Tree, path: str) -> list[tuple[str, Any]]:
    """The leaves of ``tree`` in order, each with a path naming it for error messages."""
    if isinstance(tree, Mapping):
        out: list[tuple[str, Any]] = []
        for key, value in tree.items():
            out += _leaves(value, f"{path}[{key!r}]")
        return out
    if isinstance(tree, list | tuple):
        out = []
        for index, value in enumerate(tree):
            out += _leaves(value, f"{path}[{index}]")
        return out
    return [(path, tree)]


def _rebuild(tree: Tree, leaves: Any) -> Tree:
    """A tree shaped like ``tree`` whose leaves are taken, in order, from the iterator."""
    if isinstance(tree, Mapping):
        return {key: _rebuild(value, leaves) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        items = [_rebuild(value, leaves) for value in tree]
        if isinstance(tree, tuple) and hasattr(tree, "_fields"):
            return type(tree)(*items)
        return type(tree)(items)
    return next(leaves)


def _structure(tree: Tree) -> Any:
    """The shape of a tree without its leaves, to compare two trees."""
    if isinstance(tree, Mapping):
        return {key: _structure(value) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return [_structure(value) for value in tree]
    return None


# ---------------------------------------------------------------------- the algorithms


class FunctionalOptimizer:
    """One algorithm as a pair of pure functions, :meth:`init` and :meth:`step`.

    Made from an optimizer class's declaration (no second copy of anything):
    :attr:`hyperparameters` are the hyperparameters the class's math function takes,
    with the class's defaults; :attr:`init_options` those that decide which buffers
    the state holds or how they start (``amsgrad``, ``momentum``,
    ``initial_accumulator_value``, ...).
    """

    def __init__(self, name: str, optimizer: type[Optimizer]) -> None:
        self.name = name
        self.optimizer = optimizer

    def __repr__(self) -> str:
        return f"descent.functional.{self.name}"

    @cached_property
    def _defaults(self) -> dict[str, Any]:
        return {name: spec.default for name, spec in self.optimizer.hyperparameters.items()}

    @cached_property
    def hyperparameters(self) -> dict[str, Any]:
        """What :meth:`step` takes, with the class's defaults."""
        specs = self.optimizer.hyperparameters
        names = [*self.optimizer.math_arguments, "cautious"]  # cautious: around the math
        return {name: self._defaults[name] for name in names if name in specs and specs[name].init}

    @cached_property
    def init_options(self) -> dict[str, Any]:
        """What :meth:`init` takes, with the class's defaults."""
        names: list[str] = []
        for entry in self.optimizer.keeps:
            for name in ((entry.when,) if entry.when else ()) + entry.uses:
                if name not in names:
                    names.append(name)
        return {name: self._defaults[name] for name in names}

    @cached_property
    def scalars(self) -> tuple[str, ...]:
        """Scalar state besides the step count (NAdam's ``mu_product``)."""
        return tuple(
            entry.name for entry in self.optimizer.keeps if entry.scalar and entry.name != "step"
        )

    def buffers(self, options: Mapping[str, Any]) -> list[str]:
        """The per-parameter buffers of a state made with these init options."""
        group = {**self._defaults, **options}
        return [
            entry.name
            for entry in self.optimizer.keeps
            if not entry.scalar and entry.applies(_truth_group(group, entry))
        ]

    # -------------------------------------------------------------- init

    def init(self, params: Tree, **options: Any) -> dict[str, Any]:
        """The state before the first step: zero step count and fresh buffers.

        ``options`` are the ones in :attr:`init_options` (for instance
        ``amsgrad=True``); they decide which buffers the state holds.
        """
        owner = f"{self!r}.init"
        options = self._options(owner, options, self.init_options)
        leaves = self._tensors(owner, "params", params)
        group = {**self._defaults, **options}
        state: dict[str, Any] = {"step": torch.zeros((), dtype=scalar_dtype())}
        for entry in self.optimizer.keeps:
            if entry.scalar and entry.name != "step":
                state[entry.name] = _initial(entry, torch.zeros(()), group)
        for name in self.buffers(options):
            entry = next(e for e in self.optimizer.keeps if e.name == name)
            state[name] = _rebuild(
                params, iter([_initial(entry, leaf, group) for _, leaf in leaves])
            )
        return state

    # -------------------------------------------------------------- step

    def step(
        self, params: Tree, grads: Tree, state: Mapping[str, Any], **hyperparameters: Any
    ) -> tuple[Tree, dict[str, Any]]:
        """One step: new params (same structure as ``params``) and the new state.

        Nothing is mutated. Hyperparameters left out take the defaults in
        :attr:`hyperparameters`; numbers are checked as the optimizer class checks
        them, tensors only for being real floating point (their value may be traced).
        """
        owner = f"{self!r}.step"
        hp = self._options(owner, hyperparameters, self.hyperparameters)
        group = {**self._defaults, **hp}
        self.optimizer._check_options(group, "")
        param_leaves = self._tensors(owner, "params", params)
        grad_leaves = self._tensors(owner, "grads", grads)
        if _structure(grads) != _structure(params):
            raise ValueError(
                f"{owner}: grads has structure {_structure(grads)!r}, params has "
                f"{_structure(params)!r}; expected the same tree"
            )
        buffer_leaves = self._check_state(owner, params, state, hp)
        for (path, param), (_, grad) in zip(param_leaves, grad_leaves, strict=True):
            if grad.shape != param.shape or grad.dtype != param.dtype:
                raise ValueError(
                    f"{owner}: grads{path[len('params') :]} has shape "
                    f"{tuple(grad.shape)} and dtype {grad.dtype}; {path} has shape "
                    f"{tuple(param.shape)} and dtype {param.dtype}"
                )
            if param.is_complex() and not self.optimizer.supports_complex:
                raise TypeError(
                    f"{owner}: {path} is complex ({param.dtype}); "
                    f"{self.name} updates real parameters only"
                )

        count = state["step"] + 1
        step = _step_number(owner, count)
        options = {name: _scalar(value) for name, value in group.items()}
        lazy = {entry.name for entry in self.optimizer.keeps if entry.lazy}
        new_leaves: list[Tensor] = []
        new_buffers: dict[str, list[Tensor]] = {key: [] for key in buffer_leaves}
        new_scalars: dict[str, Tensor] = {}
        for index, ((_, param), (_, grad)) in enumerate(
            zip(param_leaves, grad_leaves, strict=True)
        ):
            scalars = {key: state[key].clone() for key in self.scalars}
            buffers = {
                key: leaves[index]
                for key, leaves in buffer_leaves.items()
                if not (key in lazy and step == 1)
            }
            new = self._update_leaf(param, grad, buffers, scalars, step, options)
            new_leaves.append(new.pop("param"))
            for key in new_buffers:
                new_buffers[key].append(new[key])
            if index == 0:
                new_scalars = {key: scalars[key].to(state[key].dtype) for key in scalars}
        new_state: dict[str, Any] = {"step": count, **new_scalars}
        for key, leaves in new_buffers.items():
            new_state[key] = _rebuild(params, iter(leaves))
        for key in self.scalars:
            new_state.setdefault(key, state[key])
        return _rebuild(params, iter(new_leaves)), new_state

    def _update_leaf(
        self,
        param: Tensor,
        grad: Tensor,
        buffers: dict[str, Tensor],
        scalars: dict[str, Tensor],
        step: float,
        options: Mapping[str, Any],
    ) -> dict[str, Tensor]:
        """The math on one tensor, pure; complex tensors are updated as real pairs."""
        is_complex = param.is_complex()
        real = torch.view_as_real if is_complex else _identity
        back = torch.view_as_complex if is_complex else _identity
        if self.optimizer.elementwise:  # pure lists: every in-place operation out of place
            param_in: Any = TensorList([real(param)], pure=True)
            grad_in: Any = TensorList([real(grad)], pure=True)
            state_in: dict[str, Any] = {
                key: TensorList([real(value)], pure=True) for key, value in buffers.items()
            }
            created = call_math(self.optimizer, param_in, grad_in, state_in, scalars, step, options)
            result = {
                "param": param_in.tensors[0],
                **{key: value.tensors[0] for key, value in state_in.items()},
            }
        else:  # the math updates plain tensors in place: give it copies
            param_in = real(param).clone()
            state_in = {key: real(value).clone() for key, value in buffers.items()}
            created = call_math(
                self.optimizer, param_in, real(grad), state_in, scalars, step, options
            )
            result = {"param": param_in, **state_in}
        for key, value in created.items():
            result[key] = value.tensors[0] if isinstance(value, TensorList) else value
        return {key: back(value) for key, value in result.items()}

    # -------------------------------------------------------------- optimizer state

    def state_from_optimizer(self, optimizer: Optimizer, params: Tree) -> dict[str, Any]:
        """The state that continues ``optimizer``'s run for ``params``, as a copy.

        ``params`` is a tree of tensors ``optimizer`` updates (for instance
        ``dict(model.named_parameters())``); ``optimizer`` is an instance of
        :attr:`optimizer`. Its options that decide the buffers (``amsgrad``,
        ``momentum``, ...) are read from the params' groups. All params must have taken
        the same number of steps, since the functional state has one count (rules that
        keep no count, such as SGD, count 1 once they have state).
        """
        owner = f"{self!r}.state_from_optimizer"
        entries, group = self._optimizer_entries(owner, optimizer, params)
        options = {name: group[name] for name in self.init_options}
        fresh = self.init(params, **options)
        if not any(entries):
            return fresh
        if not all(entries):
            missing = next(
                path
                for (path, _), entry in zip(_leaves(params, "params"), entries, strict=True)
                if not entry
            )
            raise ValueError(
                f"{owner}: {missing} has no optimizer state while others have; "
                "the functional state counts the same steps for every parameter"
            )
        counts = {float(entry.get("step", 1)) for entry in entries}
        if len(counts) != 1:
            raise ValueError(
                f"{owner}: the parameters have taken different numbers of steps "
                f"{sorted(counts)}; the functional state has one count"
            )
        state: dict[str, Any] = {"step": torch.tensor(counts.pop(), dtype=scalar_dtype())}
        for key in self.scalars:
            values = {float(entry[key]) for entry in entries}
            if len(values) != 1:
                raise ValueError(f"{owner}: the parameters have different {key} {values}")
            state[key] = entries[0][key].detach().clone().cpu()
        leaves = [leaf for _, leaf in _leaves(params, "params")]
        for key in fresh:
            if key not in state:
                state[key] = _rebuild(
                    params,
                    iter(
                        [
                            quantize.decoded(entry[key], leaf).to(leaf.dtype)
                            for entry, leaf in zip(entries, leaves, strict=True)
                        ]
                    ),
                )
        return state

    def load_into_optimizer(
        self, state: Mapping[str, Any], optimizer: Optimizer, params: Tree
    ) -> None:
        """Write a functional ``state`` into ``optimizer``'s state for ``params`` (copies).

        The reverse of :meth:`state_from_optimizer`: afterwards ``optimizer.step()``
        continues the functional run (copy the new parameter values into the tensors
        too). The state is checked against the params' group options first.
        """
        owner = f"{self!r}.load_into_optimizer"
        _, group = self._optimizer_entries(owner, optimizer, params)
        options = {name: group[name] for name in (*self.hyperparameters, *self.init_options)}
        buffers = self._check_state(owner, params, state, options)
        _step_number(owner, state["step"])
        counts_steps = "step" in optimizer.scalar_state
        for index, (_, param) in enumerate(_leaves(params, "params")):
            entry: dict[str, Any] = {
                key: leaves[index].detach().clone() for key, leaves in buffers.items()
            }
            if counts_steps:
                entry["step"] = state["step"].detach().clone().to(scalar_dtype())
            for key in self.scalars:
                entry[key] = state[key].detach().clone()
            if int(state["step"]) == 0:
                entry = {}
            optimizer.state[param] = (
                quantize.stored_state(entry, param, group, optimizer) if entry else entry
            )

    def _optimizer_entries(
        self, owner: str, optimizer: Optimizer, params: Tree
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        if type(optimizer) is not self.optimizer:
            raise TypeError(
                f"{owner}: optimizer has type {type(optimizer).__name__}; "
                f"expected {self.optimizer.__name__}"
            )
        where = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        leaves = self._tensors(owner, "params", params)
        groups = []
        for path, leaf in leaves:
            if id(leaf) not in where:
                raise ValueError(f"{owner}: {path} is not a parameter of the optimizer")
            groups.append(where[id(leaf)])
        if not groups:
            raise ValueError(f"{owner}: params holds no tensor")
        for (path, _), group in zip(leaves, groups, strict=True):
            for name in (*self.init_options, *self.hyperparameters):
                if group[name] != groups[0][name]:
                    raise ValueError(
                        f"{owner}: {path} is in a group with {name}="
                        f"{group[name]!r}, {leaves[0][0]} in one with "
                        f"{groups[0][name]!r}; the functional state takes one "
                        "set of options"
                    )
        return [dict(optimizer.state.get(leaf, {})) for _, leaf in leaves], groups[0]

    # -------------------------------------------------------------- checks

    def _options(
        self, owner: str, given: Mapping[str, Any], defaults: Mapping[str, Any]
    ) -> dict[str, Any]:
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise TypeError(
                f"{owner}: unexpected argument(s) {unknown}; expected some of {sorted(defaults)}"
            )
        options = {**defaults, **given}
        specs = self.optimizer.hyperparameters
        for name, value in options.items():
            if _holds_tensor(value):
                _check_tensor_hyperparameter(owner, name, value)
            else:
                options[name] = specs[name].validate(owner, "", value)
        return options

    def _tensors(self, owner: str, name: str, tree: Tree) -> list[tuple[str, Tensor]]:
        leaves = _leaves(tree, name)
        for path, leaf in leaves:
            if not isinstance(leaf, Tensor):
                raise TypeError(
                    f"{owner}: {path} has type {type(leaf).__name__}; expected a "
                    "torch.Tensor (trees of tensors: lists, tuples and dicts)"
                )
            if not (leaf.is_floating_point() or leaf.is_complex()):
                raise TypeError(
                    f"{owner}: {path} has dtype {leaf.dtype}; expected a "
                    "floating-point or complex tensor"
                )
        return leaves

    def _check_state(
        self, owner: str, params: Tree, state: Mapping[str, Any], hp: Mapping[str, Any]
    ) -> dict[str, list[Tensor]]:
        if not isinstance(state, Mapping) or "step" not in state:
            raise TypeError(
                f"{owner}: state={type(state).__name__} is not a state made by "
                f"{self!r}.init (a dict with 'step')"
            )
        for key in ("step", *self.scalars):
            if not isinstance(state.get(key), Tensor):
                raise TypeError(
                    f"{owner}: state[{key!r}] has type "
                    f"{type(state.get(key)).__name__}; expected a 0-dim tensor"
                )
        present = set(state) - {"step", *self.scalars}
        decided = {name: hp[name] for name in self.init_options if name in hp}
        possible = set(
            self.buffers({name: _truthy(value) for name, value in self.init_options.items()})
        )
        expected = set(self.buffers(self.init_options)) | (present & possible)
        for name, value in decided.items():  # the buffers this option decides
            depends = set(self.buffers({**self.init_options, name: _truthy(value)})) - set(
                self.buffers({**self.init_options, name: _falsy(value)})
            )
            wanted = set(self.buffers({**self.init_options, name: value})) & depends
            expected = (expected - depends) | wanted
        if present != expected:
            raise ValueError(
                f"{owner}: state has buffers {sorted(present)}, expected "
                f"{sorted(expected)}; {self._state_hint(hp)}"
            )
        structure = _structure(params)
        param_leaves = _leaves(params, "params")
        specs = {entry.name: entry for entry in self.optimizer.keeps}
        group = {**self._defaults, **hp}
        buffers: dict[str, list[Tensor]] = {}
        for key in sorted(present):
            if _structure(state[key]) != structure:
                raise ValueError(
                    f"{owner}: state[{key!r}] has structure "
                    f"{_structure(state[key])!r}, params has {structure!r}"
                )
            leaves = _leaves(state[key], f"state[{key!r}]")
            for (path, leaf), (param_path, param) in zip(leaves, param_leaves, strict=True):
                # a shape of its own may depend on init options, which step does not see
                shape = (
                    tuple(leaf.shape)
                    if specs[key].shape is not None and isinstance(leaf, Tensor)
                    else specs[key].shape_for(param, group)
                )
                if (
                    not isinstance(leaf, Tensor)
                    or tuple(leaf.shape) != shape
                    or leaf.dtype != param.dtype
                ):
                    what = (
                        f"shape {tuple(leaf.shape)} and dtype {leaf.dtype}"
                        if isinstance(leaf, Tensor)
                        else f"type {type(leaf).__name__}"
                    )
                    described = (
                        f"{param_path} has shape {tuple(param.shape)}"
                        if shape == tuple(param.shape)
                        else f"expected shape {shape}"
                    )
                    raise ValueError(
                        f"{owner}: {path} has {what}; {described} and dtype {param.dtype}"
                    )
            buffers[key] = [leaf for _, leaf in leaves]
        return buffers

    def _state_hint(self, hp: Mapping[str, Any]) -> str:
        shared = {name: hp[name] for name in self.init_options if name in hp}
        args = "".join(f", {name}={value!r}" for name, value in shared.items())
        return f"make the state with {self!r}.init(params{args})"


def _identity(tensor: Tensor) -> Tensor:
    return tensor


def _initial(entry: Any, leaf: Tensor, group: Mapping[str, Any]) -> Tensor:
    if callable(entry.init):
        value: Tensor = entry.init(leaf, group)
        return value
    if entry.scalar:
        return torch.tensor(float(entry.init), dtype=scalar_dtype())
    return torch.full_like(leaf, entry.init, memory_format=torch.preserve_format)


def _truth_group(group: Mapping[str, Any], entry: Any) -> Mapping[str, Any]:
    if entry.when is None or not _holds_tensor(group.get(entry.when)):
        return group
    return {**group, entry.when: True}  # a tensor option counts as set


def _scalar(value: Any) -> Any:
    """A one-element tensor hyperparameter as a 0-dim tensor (broadcasts like a number)."""
    if isinstance(value, Tensor) and value.numel() == 1 and value.dim() > 0:
        return value.reshape(())
    return value


def _step_number(owner: str, count: Tensor) -> float:
    """The step count as a Python float, as the optimizer classes pass it to the math."""
    if count.dim() != 0:
        raise ValueError(
            f"{owner}: state['step'] has shape {tuple(count.shape)}; expected a 0-dim tensor"
        )
    try:
        return float(count)
    except RuntimeError as error:  # a batched count under torch.func.vmap
        raise ValueError(
            f"{owner}: state['step'] is batched; under torch.func.vmap map the "
            "buffers and keep the step count shared (in_dims=None for "
            "state['step'] and state['mu_product'])"
        ) from error


def _truthy(value: Any) -> Any:
    return True if isinstance(value, bool) else 1.0


def _falsy(value: Any) -> Any:
    return False if isinstance(value, bool) else 0.0


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, Tensor):
        return True
    return isinstance(value, tuple | list) and any(isinstance(item, Tensor) for item in value)


def _check_tensor_hyperparameter(owner: str, name: str, value: Any) -> None:
    items = value if isinstance(value, tuple | list) else (value,)
    for item in items:
        if isinstance(item, Tensor) and (item.is_complex() or not item.is_floating_point()):
            raise TypeError(
                f"{owner}: {name} is a tensor of dtype {item.dtype}; expected a "
                "real floating-point tensor"
            )


def _functional_forms() -> dict[str, FunctionalOptimizer]:
    return {
        cls.registry_name: FunctionalOptimizer(cls.registry_name, cls)
        for cls in algorithms().values()
        if cls.math is not None and cls.functional_form
    }


ALGORITHMS: dict[str, FunctionalOptimizer] = _functional_forms()
"""Every functional algorithm by name (``"adam"``, ``"sgd"``, ...)."""


def __getattr__(name: str) -> FunctionalOptimizer:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise AttributeError(
            f"module 'descent.functional' has no attribute {name!r}; the "
            f"algorithms are {sorted(ALGORITHMS)}"
        ) from None


def __dir__() -> list[str]:
    return sorted([*globals(), *ALGORITHMS])


__all__ = ["ALGORITHMS", "FunctionalOptimizer"]
