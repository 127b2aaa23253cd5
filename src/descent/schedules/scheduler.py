r"""Schedulers: schedules bound to an optimizer's param groups.

A scheduler holds a step count :math:`t` and, for every param group :math:`g` and every
hyperparameter it drives, a schedule :math:`s_g`. Whenever :math:`t` is set (on
construction, by :meth:`~BaseScheduler.step`, by assigning ``last_epoch`` or by
:meth:`~BaseScheduler.load_state_dict`) it writes :math:`s_g(t)` into
``optimizer.param_groups[g]``. It touches nothing else of the optimizer, so it drives
descent's optimizers and torch.optim's alike.

Because :math:`s_g(t)` is a closed-form function of :math:`t`, resuming is exact in any
order: build the optimizer and the scheduler, load both state dicts (either first), and
every group holds the value an uninterrupted run has at that step.

Values written are finite and >= 0: a schedule that gives a negative or non-finite
learning rate, momentum or other option at some step raises ``ValueError`` naming the
option, the group and the step, and writes nothing (torch writes such values).

As torch does, the first :meth:`~BaseScheduler.step` warns if the optimizer has not
stepped since the scheduler was built (the first value of the schedule would be
skipped). descent learns of optimizer steps through the public
``optimizer.register_step_post_hook`` (one hook per optimizer, registered when the first
descent scheduler is bound to it), not by wrapping ``optimizer.step`` as torch does.
"""

from __future__ import annotations

import math
import re
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch.optim.lr_scheduler import LRScheduler

from . import _checks
from .functions import Lambda, Scale, Schedule

FORMAT_VERSION = 1
"""Version of the scheduler ``state_dict`` layout descent writes under the ``"descent"`` key."""

_STATE_KEYS = frozenset({"descent", "last_epoch", "base_values", "config"})
_KEY_PATTERN = re.compile(r"^([A-Za-z_][A-Za-z_0-9]*)(?:\[(\d+)\])?$")


class GroupKey:
    """A hyperparameter in a param group: ``"lr"``, ``"momentum"``, ``"betas[0]"``, ...

    ``name[i]`` addresses element ``i`` of a tuple-valued option such as ``betas``.
    Values that are tensors are updated in place (``fill_``), as torch's schedulers do.
    """

    def __init__(self, owner: str, spec: str) -> None:
        match = _KEY_PATTERN.match(spec) if isinstance(spec, str) else None
        if match is None:
            raise ValueError(
                f"{owner}: key={spec!r} is invalid; expected a param group "
                "option name such as 'lr', 'momentum', 'weight_decay' or "
                "'betas[0]'"
            )
        self.spec = spec
        self.name = match.group(1)
        self.index = None if match.group(2) is None else int(match.group(2))

    @property
    def initial_name(self) -> str:
        """The group entry holding the base value (``"initial_lr"`` for ``"lr"``, as in torch)."""
        return f"initial_{self.spec}"

    def check(self, owner: str, groups: Sequence[Mapping[str, Any]]) -> None:
        """Raise if some group lacks this option (or it is not indexable as asked)."""
        for gi, group in enumerate(groups):
            if self.name not in group:
                options = sorted(k for k in group if k != "params")
                raise ValueError(
                    f"{owner}: param_groups[{gi}] has no {self.name!r} option to "
                    f"schedule (key={self.spec!r}); the group has {options}"
                )
            value = group[self.name]
            if self.index is not None and (
                not isinstance(value, tuple | list) or self.index >= len(value)
            ):
                raise ValueError(
                    f"{owner}: param_groups[{gi}][{self.name!r}]={value!r} has no "
                    f"element {self.index} (key={self.spec!r})"
                )
            element = value if self.index is None else value[self.index]
            try:
                if isinstance(element, bool) or element is None:
                    raise TypeError
                self.get(group)
            except (TypeError, ValueError):
                raise TypeError(
                    f"{owner}: param_groups[{gi}] has {self.spec}={value!r}, which "
                    "is not a number and cannot be scheduled"
                ) from None

    def get(self, group: Mapping[str, Any]) -> float:
        value = group[self.name]
        if self.index is not None:
            value = value[self.index]
        return float(value)

    def set(self, group: dict[str, Any], value: float) -> None:
        current = group[self.name]
        if self.index is None:
            if torch.is_tensor(current):
                current.fill_(value)
            else:
                group[self.name] = value
            return
        element = current[self.index]
        if torch.is_tensor(element):
            element.fill_(value)
            return
        items = list(current)
        items[self.index] = value
        group[self.name] = type(current)(items) if isinstance(current, tuple | list) else items


def _param_groups(owner: str, optimizer: Any) -> list[dict[str, Any]]:
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        raise TypeError(
            f"{owner}: optimizer={type(optimizer).__name__} is invalid; expected an "
            "optimizer with a non-empty list of param_groups dicts"
        )
    return groups


_OPTIMIZER_STEPS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
"""Completed ``step()`` calls of each optimizer a descent scheduler is bound to."""


def _count_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    _OPTIMIZER_STEPS[optimizer] = _OPTIMIZER_STEPS.get(optimizer, 0) + 1


def _optimizer_steps(optimizer: Any) -> int | None:
    """How often ``optimizer`` has stepped since descent started counting (None: it cannot).

    Counting starts the first time this is called for an optimizer: a step post hook is
    registered through torch's public ``register_step_post_hook``.
    """
    if optimizer not in _OPTIMIZER_STEPS:
        register = getattr(optimizer, "register_step_post_hook", None)
        if not callable(register):
            return None
        try:
            _OPTIMIZER_STEPS[optimizer] = 0
        except TypeError:  # not weakly referenceable
            return None
        register(_count_step)
    return _OPTIMIZER_STEPS[optimizer]


def _plain(value: Any) -> Any:
    """A comparable, printable form of a config value (torch's Counter milestones included)."""
    if isinstance(value, Counter):
        return sorted(value.elements())
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if torch.is_tensor(value) and value.numel() == 1:
        return value.item()
    return value


class BaseScheduler(LRScheduler):
    """Base of descent's schedulers: closed-form schedules written into param groups.

    A subclass says which group options it drives (:attr:`keys`), builds one schedule per
    group and option from the group's base value (:meth:`_build`), and describes its
    arguments (:meth:`_config`) so that a state dict saved with other arguments is refused.

    It subclasses ``torch.optim.lr_scheduler.LRScheduler`` (so frameworks that check for
    one accept it) but shares none of its code: it never reads the current value of a
    group to compute the next one, and it does not patch ``optimizer.step``.

    Attributes: ``optimizer``; ``last_epoch`` (the step count, setting it writes the
    values); ``base_values`` (key -> one base value per group); ``base_lrs`` (the
    ``"lr"`` base values, as torch names them).
    """

    keys: tuple[str, ...] = ("lr",)

    def _bind(
        self,
        optimizer: Any,
        last_epoch: int,
        keys: Sequence[str] = ("lr",),
        base_values: Mapping[str, list[float]] | None = None,
        overwrite_initial: bool = False,
    ) -> None:
        """Attach to ``optimizer``, read the base values and write the values at the first step.

        Base values are, per group, ``group["initial_<key>"]`` when the group has it (left
        there by an earlier scheduler or a loaded optimizer state dict, as in torch), else
        the group's current value; or ``base_values`` when the subclass takes them from its
        arguments. ``last_epoch=-1`` starts at step 0; ``last_epoch=k >= 0`` (torch's way
        of resuming) requires ``initial_<key>`` in every group and starts at step ``k + 1``.
        Nothing is written to the groups before every check has passed.
        """
        owner = type(self).__name__
        groups = _param_groups(owner, optimizer)
        last_epoch = _checks.integer(owner, "last_epoch", last_epoch, minimum=-1)
        parsed = tuple(GroupKey(owner, key) for key in keys)
        for key in parsed:
            key.check(owner, groups)
        bases: dict[str, list[float]] = {}
        for key in parsed:
            if base_values is not None and key.spec in base_values:
                bases[key.spec] = [float(v) for v in base_values[key.spec]]
            elif last_epoch == -1:
                bases[key.spec] = [
                    float(g[key.initial_name]) if key.initial_name in g else key.get(g)
                    for g in groups
                ]
            else:
                missing = [gi for gi, g in enumerate(groups) if key.initial_name not in g]
                if missing:
                    raise ValueError(
                        f"{owner}: last_epoch={last_epoch} resumes a schedule, but "
                        f"param_groups{missing} have no {key.initial_name!r}; load the "
                        "optimizer's state dict first, or build the scheduler with "
                        "last_epoch=-1 and load the scheduler's state dict"
                    )
                bases[key.spec] = [float(g[key.initial_name]) for g in groups]
            for gi, value in enumerate(bases[key.spec]):
                _checks.real(
                    owner, f"base value of {key.spec!r} in param_groups[{gi}]", value, minimum=0.0
                )
        self.optimizer = optimizer
        self._optimizer_steps_at_bind = _optimizer_steps(optimizer)
        self._first_step_done = False
        self._explicit_bases = base_values is not None
        self._keys = parsed
        self.keys = tuple(key.spec for key in parsed)
        schedules = self._build_all(bases)
        values = self._values_from(schedules, last_epoch + 1)
        for key in parsed:
            for group, base in zip(groups, bases[key.spec], strict=True):
                if overwrite_initial or key.initial_name not in group:
                    group[key.initial_name] = base
        self.base_values = bases
        self._schedules = schedules
        self._commit(last_epoch + 1, values)

    # ------------------------------------------------------------------ subclass hooks

    def _build(self, key: str, group_index: int, base: float) -> Schedule:
        """The schedule of option ``key`` in group ``group_index``, whose base value is ``base``."""
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        """The scheduler's arguments, as saved in (and checked against) state dicts."""
        raise NotImplementedError

    def _chain_step(
        self, key: str, group_index: int, schedule: Schedule, base: float, step: int, value: float
    ) -> float:
        """torch's step-by-step form of this scheduler: the value at ``step`` from ``value``.

        ``schedule`` is this scheduler's schedule of option ``key`` in group
        ``group_index``, built from ``base``; ``value`` is what the option holds before
        this scheduler's update at ``step`` (``base`` before step 0).
        :class:`~descent.schedules.ChainedScheduler` chains these updates the way torch's
        ``ChainedScheduler`` does. Here: torch computes the value from the base and the
        step alone, so ``value`` is not used (``LambdaLR``, ``CyclicLR``, ``OneCycleLR``,
        ``CosineAnnealingWarmRestarts``); schedulers that torch computes from the current
        value override it.
        """
        return schedule(step)

    # ------------------------------------------------------------------ values

    def _build_all(self, bases: Mapping[str, list[float]]) -> dict[str, list[Schedule]]:
        return {
            key: [self._build(key, gi, base) for gi, base in enumerate(values)]
            for key, values in bases.items()
        }

    def _values_from(
        self, schedules: Mapping[str, list[Schedule]], step: int
    ) -> dict[str, list[float]]:
        owner = type(self).__name__
        values: dict[str, list[float]] = {}
        for key, per_group in schedules.items():
            values[key] = [schedule(step) for schedule in per_group]
            for gi, value in enumerate(values[key]):
                if not (math.isfinite(value) and value >= 0):
                    raise ValueError(
                        f"{owner}: the schedule gives {key}={value!r} for "
                        f"param_groups[{gi}] at step {step}; expected a finite "
                        "number >= 0"
                    )
        return values

    def _commit(self, step: int, values: Mapping[str, list[float]]) -> None:
        groups = self.optimizer.param_groups
        owner = type(self).__name__
        for key in self._keys:
            if len(values[key.spec]) != len(groups):
                raise ValueError(
                    f"{owner}: the optimizer now has {len(groups)} param groups, "
                    f"the scheduler was built for {len(values[key.spec])}; "
                    "build a new scheduler after add_param_group"
                )
        for key in self._keys:
            for group, value in zip(groups, values[key.spec], strict=True):
                key.set(group, value)
        self._step = step
        self._last_values = {key: list(v) for key, v in values.items()}
        self._last_lr = list(values[self.keys[0]])

    def value_at(self, step: int, key: str | None = None) -> list[float]:
        """The value of ``key`` (default: the first option driven) in each group at ``step``.

        Changes nothing: use it to inspect or plot the schedule.
        """
        key = self._key(key)
        step = _checks.step(type(self).__name__, step)
        return [schedule(step) for schedule in self._schedules[key]]

    def _key(self, key: str | None) -> str:
        if key is None:
            return self.keys[0]
        if key not in self._schedules:
            raise ValueError(
                f"{type(self).__name__}: key={key!r} is not scheduled here; "
                f"this scheduler drives {list(self.keys)}"
            )
        return key

    @property
    def last_epoch(self) -> int:
        """The step count; assigning it writes that step's values into the param groups.

        ``-1`` means "not started" (torch's convention): nothing is written, and the next
        :meth:`step` goes to step 0.
        """
        return self._step

    @last_epoch.setter
    def last_epoch(self, step: int) -> None:
        step = _checks.integer(type(self).__name__, "last_epoch", step, minimum=-1)
        self._set_step(step, self._schedules)

    def _set_step(self, step: int, schedules: Mapping[str, list[Schedule]]) -> None:
        if step == -1:
            self._step = -1
            return
        self._commit(step, self._values_from(schedules, step))

    # a read-only view of base_values["lr"] where torch has a list[float | Tensor] attribute
    @property
    def base_lrs(self) -> list[float]:  # type: ignore[override]
        """The base learning rate of each group (torch's name)."""
        return list(self.base_values[self._key("lr")])

    def step(self, epoch: int | None = None) -> None:
        """Advance the step count by one (or set it to ``epoch``) and write the new values.

        Call it once per optimizer step (after ``optimizer.step()``), not per micro-batch:
        with gradient accumulation, step the scheduler when the optimizer steps. The first
        call warns, as torch's schedulers do, if the optimizer has not stepped since the
        scheduler was built.
        """
        target = (
            self._step + 1
            if epoch is None
            else _checks.integer(type(self).__name__, "epoch", epoch, minimum=0)
        )
        self._commit(target, self._values_from(self._schedules, target))
        if not self._first_step_done:
            self._first_step_done = True
            self._warn_if_optimizer_has_not_stepped()

    def _initial_step(self) -> None:
        """The step torch's ``SequentialLR`` gives the first scheduler it holds on start.

        It is not the user's first step, so it is not checked for the step order.
        """
        target = self._step + 1
        self._commit(target, self._values_from(self._schedules, target))

    def _warn_if_optimizer_has_not_stepped(self) -> None:
        before = self._optimizer_steps_at_bind
        if before is not None and _OPTIMIZER_STEPS.get(self.optimizer, before) == before:
            warnings.warn(
                f"Detected call of `{type(self).__name__}.step()` before `optimizer.step()`: "
                "call `optimizer.step()` first, then `scheduler.step()`; stepping the "
                "scheduler first skips the first value of the schedule. See "
                "https://pytorch.org/docs/stable/optim.html#how-to-adjust-learning-rate",
                UserWarning,
                stacklevel=3,
            )

    # floats only: a narrower list than torch's list[float | Tensor]
    def get_lr(self) -> list[float]:  # type: ignore[override]
        """The values of the first driven option at the current step.

        With :meth:`_get_closed_form_lr`, what torch's own ``SequentialLR`` and
        ``ChainedScheduler`` call on the schedulers they hold.
        """
        return self.value_at(max(self._step, 0))

    _get_closed_form_lr = get_lr

    # floats only: a narrower list than torch's list[float | Tensor]
    def get_last_lr(self) -> list[float]:  # type: ignore[override]
        """The values last written for the first option driven (the learning rate, usually)."""
        return list(cast(list[float], self._last_lr))  # written by _commit, as floats

    def get_last_value(self, key: str | None = None) -> list[float]:
        """The values last written for ``key`` (default: the first option driven)."""
        return list(self._last_values[self._key(key)])

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """``{"descent": {...}, "last_epoch", "base_values", "config"}``; no functions, no pickles.

        ``config`` records the arguments (schedules built from user functions by their
        name only), so that loading into a scheduler built differently is refused.
        """
        return {
            "descent": {"scheduler": type(self).__name__, "format_version": FORMAT_VERSION},
            "last_epoch": self._step,
            "base_values": {key: list(values) for key, values in self.base_values.items()},
            "config": self._config(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state dict after checking all of it, then write that step's values.

        Accepts descent's layout, and torch's for a scheduler that drives only ``lr``
        (``last_epoch`` and ``base_lrs`` are read; arguments that torch saved under the
        same name are compared). On error a ``ValueError`` or ``TypeError`` says what is
        wrong and nothing changes.
        """
        step, bases, schedules = self._checked_state(state_dict)
        self.base_values = bases
        self._schedules = schedules
        self._set_step(step, schedules)

    def _check_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Raise what :meth:`load_state_dict` would raise, without changing anything."""
        self._checked_state(state_dict)

    def _checked_state(
        self, state_dict: Any
    ) -> tuple[int, dict[str, list[float]], dict[str, list[Schedule]]]:
        owner = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{owner}: expected a dict, got {type(state_dict).__name__}")
        if self._is_torch_state(state_dict):
            step, bases = self._read_torch_state(owner, state_dict)
        else:
            step, bases = self._read_state(owner, state_dict)
        schedules = self._build_all(bases)
        if step >= 0:
            self._values_from(schedules, step)  # raises, changing nothing, if invalid
        return step, bases, schedules

    def _is_torch_state(self, state_dict: Mapping[str, Any]) -> bool:
        return "descent" not in state_dict and "base_lrs" in state_dict

    def _read_state(
        self, owner: str, state: Mapping[str, Any]
    ) -> tuple[int, dict[str, list[float]]]:
        missing = _STATE_KEYS - set(state)
        if missing:
            raise ValueError(f"{owner}: the state dict lacks {sorted(missing)}")
        unknown = set(state) - _STATE_KEYS
        if unknown:
            raise ValueError(f"{owner}: unknown keys {sorted(unknown)} in the state dict")
        meta = state["descent"]
        saved_type = meta.get("scheduler") if isinstance(meta, Mapping) else None
        if saved_type != type(self).__name__:
            raise ValueError(
                f"{owner}: the state dict is from scheduler {saved_type!r}, not "
                f"{type(self).__name__!r}"
            )
        version = meta.get("format_version")
        if (
            isinstance(version, bool)
            or not isinstance(version, int)
            or not (1 <= version <= FORMAT_VERSION)
        ):
            raise ValueError(
                f"{owner}: format_version={version!r} is not supported; expected "
                f"an integer from 1 to {FORMAT_VERSION}"
            )
        step = _checks.integer(owner, "last_epoch", state["last_epoch"], minimum=-1)
        saved_bases = state["base_values"]
        if not isinstance(saved_bases, Mapping) or set(saved_bases) != set(self.keys):
            found = sorted(saved_bases) if isinstance(saved_bases, Mapping) else saved_bases
            raise ValueError(
                f"{owner}: base_values has keys {found!r}; this scheduler drives {list(self.keys)}"
            )
        bases = {
            key: self._read_bases(owner, f"base_values[{key!r}]", saved_bases[key])
            for key in self.keys
        }
        self._compare_config(owner, state["config"])
        return step, bases

    def _read_torch_state(
        self, owner: str, state: Mapping[str, Any]
    ) -> tuple[int, dict[str, list[float]]]:
        if self.keys != ("lr",):
            raise ValueError(
                f"{owner}: a torch scheduler state dict holds learning rates only; "
                f"this scheduler also drives {list(self.keys[1:])}"
            )
        if "last_epoch" not in state:
            raise ValueError(f"{owner}: the torch state dict lacks 'last_epoch'")
        step = _checks.integer(owner, "last_epoch", state["last_epoch"], minimum=-1)
        config = self._config()
        for name, value in state.items():
            if name in config and _plain(value) != config[name]:
                raise ValueError(
                    f"{owner}: the state dict was saved with {name}="
                    f"{_plain(value)!r}, this scheduler has {name}={config[name]!r}"
                )
        return step, {"lr": self._read_bases(owner, "base_lrs", state["base_lrs"])}

    def _read_bases(self, owner: str, name: str, values: Any) -> list[float]:
        groups = len(self.optimizer.param_groups)
        if not isinstance(values, list | tuple) or len(values) != groups:
            raise ValueError(
                f"{owner}: {name}={values!r} is invalid; expected a list of "
                f"{groups} numbers, one per param group"
            )
        return [_checks.real(owner, f"{name}[{i}]", v, minimum=0.0) for i, v in enumerate(values)]

    def _compare_config(self, owner: str, saved: Any) -> None:
        config = self._config()
        if not isinstance(saved, Mapping):
            raise ValueError(f"{owner}: config has type {type(saved).__name__}; expected a dict")
        missing = "<missing>"
        differences = [
            f"{name}: saved {saved.get(name, missing)!r}, here {config.get(name, missing)!r}"
            for name in sorted(set(saved) | set(config))
            if saved.get(name, missing) != config.get(name, missing)
        ]
        if differences:
            raise ValueError(
                f"{owner}: the state dict was saved by a scheduler built with other "
                f"arguments ({'; '.join(differences)}); build the scheduler with the "
                "saved arguments"
            )

    def __repr__(self) -> str:
        arguments = ", ".join(f"{name}={value!r}" for name, value in self._config().items())
        return f"{type(self).__name__}({arguments}, last_epoch={self._step})"


def _as_schedule(owner: str, name: str, value: Any) -> Schedule:
    if isinstance(value, Schedule):
        return value
    if callable(value):
        return Lambda(value, label=f"{owner}: {name}")
    raise TypeError(
        f"{owner}: {name}={value!r} has type {type(value).__name__}; expected a "
        "Schedule or a function of the step"
    )


class Scheduler(BaseScheduler):
    r"""Drive one option of every param group with a schedule.

    With ``relative=True`` (the default) the schedule gives a factor of each group's base
    value: :math:`v_g(t) = b_g\, s(t)`, where :math:`b_g` is the group's value when the
    scheduler is built (or its ``initial_<key>`` entry, as in torch); with
    ``relative=False`` it gives the value itself: :math:`v_g(t) = s(t)`. ``schedule`` is
    a :class:`~descent.schedules.Schedule`, a plain function of the step (wrapped in
    :class:`~descent.schedules.Lambda`), or a list of either, one per group.

    ``key`` names the option: ``"lr"``, ``"momentum"``, ``"weight_decay"``,
    ``"betas[0]"``, ``"betas[1]"``, or any other float option of the groups. Several
    schedulers on different keys of one optimizer are independent.

    Example::

        >>> import torch
        >>> from descent.schedules import Scheduler, warmup_cosine
        >>> opt = torch.optim.AdamW([torch.zeros(3, requires_grad=True)], lr=1e-3)
        >>> sched = Scheduler(opt, warmup_cosine(total_steps=100, warmup_steps=10))
        >>> [round(v, 6) for v in (sched.value_at(5)[0], sched.value_at(10)[0])]
        [0.0005, 0.001]
        >>> opt.step(); sched.step(); opt.param_groups[0]["lr"]
        0.0001

    State dicts hold the step count, the base values and the schedule's description;
    functions are never pickled: build the scheduler from the same code on resume, then
    ``load_state_dict``.
    """

    def __init__(
        self,
        optimizer: Any,
        schedule: Schedule | Callable[[int], float] | Sequence[Schedule | Callable[[int], float]],
        key: str = "lr",
        *,
        relative: bool = True,
        last_epoch: int = -1,
    ) -> None:
        owner = type(self).__name__
        groups = _param_groups(owner, optimizer)
        if isinstance(schedule, list | tuple):
            if len(schedule) != len(groups):
                raise ValueError(
                    f"{owner}: schedule has {len(schedule)} entries; expected one "
                    f"per param group ({len(groups)})"
                )
            self._group_schedules = [
                _as_schedule(owner, f"schedule[{i}]", s) for i, s in enumerate(schedule)
            ]
        else:
            self._group_schedules = [_as_schedule(owner, "schedule", schedule)] * len(groups)
        if not isinstance(relative, bool):
            raise TypeError(f"{owner}: relative={relative!r} is invalid; expected True or False")
        self.relative = relative
        self._bind(optimizer, last_epoch, keys=(key,))

    def _build(self, key: str, group_index: int, base: float) -> Schedule:
        schedule = self._group_schedules[group_index]
        return Scale(schedule, base) if self.relative else schedule

    def _config(self) -> dict[str, Any]:
        return {
            "key": self.keys[0],
            "relative": self.relative,
            "schedule": [repr(s) for s in self._group_schedules],
        }
