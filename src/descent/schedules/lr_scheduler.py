r"""torch.optim.lr_scheduler's schedulers, with the same names, arguments and values.

Switching is a change of import::

    from torch.optim.lr_scheduler import CosineAnnealingLR   # before
    from descent.schedules import CosineAnnealingLR          # after

Each class computes its values in closed form from the step count (``last_epoch``),
with torch's formula (the one torch uses for ``step(epoch)``). Values agree with torch's
to float64 rounding (relative difference <= 1e-12 over 1,000 steps in the tests). Where
torch computes recursively from the current ``group["lr"]`` (``StepLR``, ``MultiStepLR``,
``ConstantLR``, ``LinearLR``, ``ExponentialLR``, ``PolynomialLR``, ``CosineAnnealingLR``)
the difference is that torch's rounding errors accumulate, and that torch composes with
other changes of ``group["lr"]`` while descent overwrites them: to combine schedules,
compose them (:mod:`descent.schedules.functions`) instead of stacking schedulers.

``MultiplicativeLR`` is the one that is not a closed form (a product of per-step
factors, see :class:`~descent.schedules.Multiplicative`); ``ChainedScheduler`` chains
the others step by step as torch's does, from the step count alone.

Differences from torch, all raising errors where torch would misbehave later (each one
stricter than torch):

* ``milestones`` must be strictly increasing (torch counts repeated milestones twice);
* ``total_iters``, ``T_max``, ``T_0``, ``step_size``, ``step_size_up``,
  ``step_size_down`` and ``total_steps`` must be whole numbers >= 1 (torch accepts a
  fractional ``CyclicLR`` step size, and computes a cycle of fractional length);
* ``eta_min`` (``CosineAnnealingLR``, ``CosineAnnealingWarmRestarts``), ``base_lr`` and
  ``max_lr`` (``CyclicLR``, ``OneCycleLR``) and ``base_momentum`` / ``max_momentum``
  must be >= 0, and momentum bounds < 1 where they drive Adam's ``betas[0]`` (torch
  accepts them and writes a negative learning rate or momentum into the optimizer:
  ``CosineAnnealingLR(T_max=2, eta_min=-0.1)`` ends at lr -0.1);
* no scheduler writes a negative or non-finite value: a ``lr_lambda`` that returns
  one raises ``ValueError`` at that step, naming it, and changes nothing;
* a OneCycle phase of zero length is refused when built, not at the step that divides
  by zero;
* ``ChainedScheduler`` takes descent's schedulers only (a torch scheduler's state is the
  optimizer's current lr, which no step count can restore).

TinyTorch's ``StepLR`` sets :math:`\eta_0\gamma^{\lfloor (k-1)/s\rfloor}` after ``k`` calls
of ``step()``, decaying one call later than torch; descent follows torch:
:math:`\eta_t = \eta_0\gamma^{\lfloor t/s\rfloor}`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch.optim.lr_scheduler import LRScheduler
from torch.optim.lr_scheduler import ReduceLROnPlateau as TorchReduceLROnPlateau

from . import _checks
from .functions import (
    Constant,
    Cosine,
    CosineRestarts,
    Cyclic,
    Exponential,
    Join,
    Lambda,
    Linear,
    Multiplicative,
    MultiStep,
    OneCycle,
    Polynomial,
    Schedule,
    Step,
    _call,
    _describe,
    _Recurrence,
    _require_callable,
)
from .scheduler import BaseScheduler, _param_groups


class _ShapeScheduler(BaseScheduler):
    """A scheduler whose every group follows one schedule shape, scaled by the group's base."""

    _shape: Schedule

    def _build(self, key: str, group_index: int, base: float) -> Schedule:
        return self._shape * base

    def _chain_step(
        self, key: str, group_index: int, schedule: Schedule, base: float, step: int, value: float
    ) -> float:
        """torch multiplies the current value by the shape's change over the step."""
        previous = 1.0 if step == 0 else self._shape(step - 1)
        current = self._shape(step)
        return schedule(step) if previous == 0 else value * (current / previous)


class StepLR(_ShapeScheduler):
    r"""Decay each group's lr by ``gamma`` every ``step_size`` steps.

    .. math:: \eta_t = \eta_0\,\gamma^{\lfloor t / \text{step\_size} \rfloor}

    Example::

        >>> import torch
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> StepLR(opt, step_size=30, gamma=0.1).value_at(30)
        [0.010000000000000002]
    """

    _shape: Step

    def __init__(
        self, optimizer: Any, step_size: int, gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        self._shape = Step(
            _checks.integer("StepLR", "step_size", step_size, minimum=1),
            _checks.real("StepLR", "gamma", gamma, minimum=0.0),
        )
        self._bind(optimizer, last_epoch)

    def _config(self) -> dict[str, Any]:
        return {"step_size": self._shape.step_size, "gamma": self._shape.gamma}


class MultiStepLR(_ShapeScheduler):
    r"""Decay each group's lr by ``gamma`` at each of ``milestones`` (strictly increasing).

    .. math:: \eta_t = \eta_0\,\gamma^{\#\{m \in \text{milestones} : m \le t\}}
    """

    _shape: MultiStep

    def __init__(
        self, optimizer: Any, milestones: Sequence[int], gamma: float = 0.1, last_epoch: int = -1
    ) -> None:
        milestones = _checks.increasing("MultiStepLR", "milestones", milestones)
        self._shape = MultiStep(
            milestones, _checks.real("MultiStepLR", "gamma", gamma, minimum=0.0)
        )
        self._bind(optimizer, last_epoch)

    def _config(self) -> dict[str, Any]:
        return {"milestones": list(self._shape.milestones), "gamma": self._shape.gamma}


class ConstantLR(_ShapeScheduler):
    r"""Multiply each group's lr by ``factor`` for the first ``total_iters`` steps.

    .. math:: \eta_t = \eta_0\,\text{factor} \ (t < T), \qquad \eta_t = \eta_0 \ (t \ge T)
    """

    def __init__(
        self, optimizer: Any, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch: int = -1
    ) -> None:
        self.factor = _checks.real("ConstantLR", "factor", factor, minimum=0.0, maximum=1.0)
        self.total_iters = _checks.integer("ConstantLR", "total_iters", total_iters, minimum=1)
        self._shape = Join((Constant(self.factor), Constant(1.0)), (self.total_iters,))
        self._bind(optimizer, last_epoch)

    def _config(self) -> dict[str, Any]:
        return {"factor": self.factor, "total_iters": self.total_iters}


class LinearLR(_ShapeScheduler):
    r"""Multiply each group's lr by a factor going linearly from ``start_factor`` to ``end_factor``.

    .. math:: \eta_t = \eta_0 \left(a + (b - a)\,\frac{\min(t, T)}{T}\right)

    ``start_factor`` in (0, 1], ``end_factor`` in [0, 1] (torch's bounds).
    """

    _shape: Linear

    def __init__(
        self,
        optimizer: Any,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
    ) -> None:
        owner = "LinearLR"
        start = _checks.real(
            owner, "start_factor", start_factor, minimum=0.0, maximum=1.0, open_minimum=True
        )
        end = _checks.real(owner, "end_factor", end_factor, minimum=0.0, maximum=1.0)
        total = _checks.integer(owner, "total_iters", total_iters, minimum=1)
        self._shape = Linear(start, end, total)
        self._bind(optimizer, last_epoch)

    def _config(self) -> dict[str, Any]:
        return {
            "start_factor": self._shape.start,
            "end_factor": self._shape.end,
            "total_iters": self._shape.total_steps,
        }


class ExponentialLR(_ShapeScheduler):
    r"""Decay each group's lr by ``gamma`` every step: :math:`\eta_t = \eta_0\,\gamma^t`."""

    _shape: Exponential

    def __init__(self, optimizer: Any, gamma: float, last_epoch: int = -1) -> None:
        self._shape = Exponential(_checks.real("ExponentialLR", "gamma", gamma, minimum=0.0))
        self._bind(optimizer, last_epoch)

    def _config(self) -> dict[str, Any]:
        return {"gamma": self._shape.gamma}


class PolynomialLR(_ShapeScheduler):
    r"""Decay each group's lr polynomially to 0 in ``total_iters`` steps.

    .. math:: \eta_t = \eta_0 \left(1 - \frac{\min(t, T)}{T}\right)^{\text{power}}
    """

    _shape: Polynomial

    def __init__(
        self, optimizer: Any, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1
    ) -> None:
        owner = "PolynomialLR"
        self._shape = Polynomial(
            _checks.integer(owner, "total_iters", total_iters, minimum=1),
            _checks.real(owner, "power", power, minimum=0.0),
        )
        self._bind(optimizer, last_epoch)

    def _config(self) -> dict[str, Any]:
        return {"total_iters": self._shape.total_steps, "power": self._shape.power}


class CosineAnnealingLR(BaseScheduler):
    r"""Cosine annealing of each group's lr from its base value to ``eta_min`` in ``T_max`` steps.

    .. math:: \eta_t = \eta_{\min} + \tfrac12(\eta_0 - \eta_{\min})
              \left(1 + \cos\frac{\pi t}{T_{\max}}\right)

    for every :math:`t` (past ``T_max`` the lr rises again, as in torch). This is the
    closed form torch uses for ``step(epoch)``; torch's ``step()`` follows it by a
    recursion whose rounding errors accumulate (about 3e-13 relative after 1,000 steps
    with ``T_max=7``), which descent does not reproduce.

    Reference: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm
    Restarts", ICLR 2017.
    """

    def __init__(
        self, optimizer: Any, T_max: int, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        self.T_max = _checks.integer("CosineAnnealingLR", "T_max", T_max, minimum=1)
        self.eta_min = _checks.real("CosineAnnealingLR", "eta_min", eta_min, minimum=0.0)
        self._bind(optimizer, last_epoch)

    def _build(self, key: str, group_index: int, base: float) -> Schedule:
        return Cosine(self.T_max, init=base, final=self.eta_min, after_end="continue")

    def _chain_step(
        self, key: str, group_index: int, schedule: Schedule, base: float, step: int, value: float
    ) -> float:
        """torch's recursion: the distance to ``eta_min`` scaled by the cosine's change."""
        if step == 0:
            return value
        if (step - 1 - self.T_max) % (2 * self.T_max) == 0:  # leaving the minimum
            return value + (base - self.eta_min) * (1 - math.cos(math.pi / self.T_max)) / 2
        ratio = (1 + math.cos(math.pi * step / self.T_max)) / (
            1 + math.cos(math.pi * (step - 1) / self.T_max)
        )
        return self.eta_min + (value - self.eta_min) * ratio

    def _config(self) -> dict[str, Any]:
        return {"T_max": self.T_max, "eta_min": self.eta_min}


class CosineAnnealingWarmRestarts(BaseScheduler):
    r"""SGDR: cosine annealing to ``eta_min``, restarting after ``T_0``, ``T_0 T_mult``, ... steps.

    .. math:: \eta_t = \eta_{\min} + \tfrac12(\eta_0 - \eta_{\min})
              \left(1 + \cos\frac{\pi T_{\text{cur}}}{T_i}\right)

    See :class:`~descent.schedules.CosineRestarts`. Restarts are found with integer
    arithmetic (torch's ``step(epoch)`` uses a logarithm that can misplace them).
    ``T_cur`` and ``T_i`` are available as attributes, as in torch. Steps are whole
    numbers: where torch code calls ``step(epoch + i / iters)`` every batch, count
    batches instead (``T_0`` in batches, ``step()`` once per batch).
    """

    def __init__(
        self, optimizer: Any, T_0: int, T_mult: int = 1, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        owner = "CosineAnnealingWarmRestarts"
        self.T_0 = _checks.integer(owner, "T_0", T_0, minimum=1)
        self.T_mult = _checks.integer(owner, "T_mult", T_mult, minimum=1)
        self.eta_min = _checks.real(owner, "eta_min", eta_min, minimum=0.0)
        self._bind(optimizer, last_epoch)

    def _build(self, key: str, group_index: int, base: float) -> Schedule:
        return CosineRestarts(self.T_0, self.T_mult, init=base, final=self.eta_min)

    @property
    def T_cur(self) -> int:
        """Steps since the last restart."""
        return CosineRestarts(self.T_0, self.T_mult).position(self.last_epoch)[0]

    @property
    def T_i(self) -> int:
        """Length of the current cycle."""
        return CosineRestarts(self.T_0, self.T_mult).position(self.last_epoch)[1]

    def _config(self) -> dict[str, Any]:
        return {"T_0": self.T_0, "T_mult": self.T_mult, "eta_min": self.eta_min}


def _momentum_key(owner: str, optimizer: Any) -> str:
    defaults = getattr(optimizer, "defaults", {})
    if "betas" in defaults:
        return "betas[0]"
    if "momentum" in defaults:
        return "momentum"
    raise ValueError(
        f"{owner}: cycle_momentum=True needs an optimizer with a 'momentum' or "
        f"'betas' option; {type(optimizer).__name__} has neither (pass "
        "cycle_momentum=False)"
    )


def _flag(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name}={value!r} is invalid; expected True or False")
    return value


def _per_group_named(owner: str, name: str, value: Any, groups: int) -> list[tuple[str, Any]]:
    """``(label, value)`` for each group of a per-group argument (a scalar or one per group)."""
    if isinstance(value, list | tuple):
        if len(value) != groups:
            raise ValueError(
                f"{owner}: {name} has {len(value)} values; expected one per param group ({groups})"
            )
        return [(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return [(name, value)] * groups


class _MomentumCycler(BaseScheduler):
    """Base of the schedulers that cycle momentum (or beta1) inversely to the lr."""

    def _cycle_momentum(
        self,
        owner: str,
        optimizer: Any,
        base_momentum: Any,
        max_momentum: Any,
        groups: int,
        keys: list[str],
        bases: dict[str, list[float]],
    ) -> None:
        """Check the momentum bounds per group and add the momentum option to ``keys``.

        The bounds are >= 0, and < 1 where they drive ``betas[0]`` (Adam's own bounds).
        """
        self._momentum_key = _momentum_key(owner, optimizer)
        below_one = 1.0 if self._momentum_key == "betas[0]" else None
        self.base_momentums = [
            _checks.real(owner, name, value, minimum=0.0, maximum=below_one, open_maximum=True)
            for name, value in _per_group_named(owner, "base_momentum", base_momentum, groups)
        ]
        self.max_momentums = [
            _checks.real(owner, name, value, minimum=0.0, maximum=below_one, open_maximum=True)
            for name, value in _per_group_named(owner, "max_momentum", max_momentum, groups)
        ]
        keys.append(self._momentum_key)
        bases[self._momentum_key] = self.max_momentums


class CyclicLR(_MomentumCycler):
    r"""Cyclical learning rates (triangular, triangular2, exp_range), momentum cycled against them.

    See :class:`~descent.schedules.Cyclic` for the formula. With ``cycle_momentum=True``
    the momentum (``betas[0]`` for Adam-like optimizers) goes from ``max_momentum`` to
    ``base_momentum`` while the lr goes from ``base_lr`` to ``max_lr``, and back. On
    construction the groups' lr is set to ``base_lr``, as in torch.

    Reference: Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017.
    """

    def __init__(
        self,
        optimizer: Any,
        base_lr: float | list[float],
        max_lr: float | list[float],
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[float], float] | None = None,
        scale_mode: str = "cycle",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.8,
        max_momentum: float | list[float] = 0.9,
        last_epoch: int = -1,
    ) -> None:
        owner = "CyclicLR"
        groups = len(_param_groups(owner, optimizer))
        self.base_lrs_arg = _checks.per_group(owner, "base_lr", base_lr, groups, minimum=0.0)
        self.max_lrs = _checks.per_group(owner, "max_lr", max_lr, groups, minimum=0.0)
        step_size_up = _checks.integer(owner, "step_size_up", step_size_up, minimum=1)
        if step_size_down is not None:
            step_size_down = _checks.integer(owner, "step_size_down", step_size_down, minimum=1)
        self._shape = Cyclic(
            0.0, 1.0, step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode
        )
        self.mode = self._shape.mode
        self.gamma = self._shape.gamma
        self.scale_mode = self._shape.scale_mode
        self.cycle_momentum = _flag(owner, "cycle_momentum", cycle_momentum)
        keys = ["lr"]
        bases: dict[str, list[float]] = {"lr": self.base_lrs_arg}
        if self.cycle_momentum:
            self._cycle_momentum(owner, optimizer, base_momentum, max_momentum, groups, keys, bases)
        self._bind(optimizer, last_epoch, keys=keys, base_values=bases)

    def _build(self, key: str, group_index: int, base: float) -> Schedule:
        if key == "lr":
            low, high = base, self.max_lrs[group_index]
        else:
            low, high = base, self.base_momentums[group_index]
        shape = self._shape
        return Cyclic(
            low,
            high,
            shape.step_size_up,
            shape.step_size_down,
            shape.mode,
            shape.gamma,
            shape.scale_fn,
            shape.scale_mode,
        )

    def _config(self) -> dict[str, Any]:
        config = {
            "max_lr": self.max_lrs,
            "step_size_up": self._shape.step_size_up,
            "step_size_down": self._shape.step_size_down,
            "mode": self.mode,
            "gamma": self.gamma,
            "scale_mode": self.scale_mode,
            "scale_fn": None
            if self._shape.scale_fn is None
            else repr(Lambda(self._shape.scale_fn)),
            "cycle_momentum": self.cycle_momentum,
        }
        if self.cycle_momentum:
            config["base_momentum"] = self.base_momentums
        return config


class OneCycleLR(_MomentumCycler):
    r"""The 1cycle policy: lr up to ``max_lr`` then far below, momentum the other way.

    See :class:`~descent.schedules.OneCycle`. Per group, the lr starts at
    ``max_lr / div_factor``, peaks at ``max_lr`` after ``pct_start`` of the steps and
    ends at ``max_lr / div_factor / final_div_factor``; with ``cycle_momentum=True`` the
    momentum (``betas[0]`` for Adam-like optimizers) goes ``max_momentum ->
    base_momentum -> max_momentum``. ``total_steps`` or ``epochs * steps_per_epoch`` sets
    the length; stepping past it raises ``ValueError``, as in torch.

    Reference: Smith & Topin, "Super-Convergence", 2017 (arXiv:1708.07120).
    """

    def __init__(
        self,
        optimizer: Any,
        max_lr: float | list[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | list[float] = 0.85,
        max_momentum: float | list[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ) -> None:
        owner = "OneCycleLR"
        groups = len(_param_groups(owner, optimizer))
        if total_steps is not None:
            self.total_steps = _checks.integer(owner, "total_steps", total_steps, minimum=1)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = _checks.integer(
                owner, "epochs", epochs, minimum=1
            ) * _checks.integer(owner, "steps_per_epoch", steps_per_epoch, minimum=1)
        else:
            raise ValueError(
                f"{owner}: total_steps=None with epochs={epochs!r} and "
                f"steps_per_epoch={steps_per_epoch!r}; give total_steps, or both "
                "epochs and steps_per_epoch"
            )
        self.max_lrs = _checks.per_group(owner, "max_lr", max_lr, groups, minimum=0.0)
        self.div_factor = _checks.real(
            owner, "div_factor", div_factor, minimum=0.0, open_minimum=True
        )
        self.final_div_factor = _checks.real(
            owner, "final_div_factor", final_div_factor, minimum=0.0, open_minimum=True
        )
        self.pct_start = _checks.real(owner, "pct_start", pct_start, minimum=0.0, maximum=1.0)
        self.anneal_strategy = _checks.choice(
            owner, "anneal_strategy", anneal_strategy, ("cos", "linear")
        )
        self.three_phase = _flag(owner, "three_phase", three_phase)
        self.cycle_momentum = _flag(owner, "cycle_momentum", cycle_momentum)
        # building one checks the phases (a zero-length phase would divide by zero)
        OneCycle(
            self.total_steps, 0.0, 1.0, 0.0, self.pct_start, self.anneal_strategy, self.three_phase
        )
        keys = ["lr"]
        bases = {"lr": [m / self.div_factor for m in self.max_lrs]}
        if self.cycle_momentum:
            self._cycle_momentum(owner, optimizer, base_momentum, max_momentum, groups, keys, bases)
        self._bind(optimizer, last_epoch, keys=keys, base_values=bases, overwrite_initial=True)

    def _build(self, key: str, group_index: int, base: float) -> Schedule:
        if key == "lr":
            initial, peak = base, self.max_lrs[group_index]
            final = initial / self.final_div_factor
        else:
            initial, peak, final = base, self.base_momentums[group_index], base
        return OneCycle(
            self.total_steps,
            initial,
            peak,
            final,
            self.pct_start,
            self.anneal_strategy,
            self.three_phase,
        )

    def _config(self) -> dict[str, Any]:
        config = {
            "max_lr": self.max_lrs,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "anneal_strategy": self.anneal_strategy,
            "cycle_momentum": self.cycle_momentum,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
            "three_phase": self.three_phase,
        }
        if self.cycle_momentum:
            config["base_momentum"] = self.base_momentums
        return config


def _lr_lambdas(
    owner: str, optimizer: Any, lr_lambda: Any
) -> list[tuple[Callable[[int], float], str]]:
    """``(function, label)`` per group from ``lr_lambda`` (one function, or one per group)."""
    groups = len(_param_groups(owner, optimizer))
    if isinstance(lr_lambda, list | tuple):
        if len(lr_lambda) != groups:
            raise ValueError(
                f"{owner}: lr_lambda has {len(lr_lambda)} functions; expected "
                f"one per param group ({groups})"
            )
        pairs = [(fn, f"{owner}: lr_lambda[{i}]") for i, fn in enumerate(lr_lambda)]
    else:
        pairs = [(lr_lambda, f"{owner}: lr_lambda")] * groups
    for fn, label in pairs:
        _require_callable(label, fn)
    return pairs


class LambdaLR(BaseScheduler):
    r"""Each group's lr is its base value times ``lr_lambda(t)``: :math:`\eta_t = \eta_0 f(t)`.

    ``lr_lambda`` is a function of the step or a list of them, one per group. It should be
    pure (the value depends only on the step). State dicts never hold the functions, only
    their names (checked on load) and the step count and base lrs: to resume, build the
    scheduler again with the same functions, then ``load_state_dict``::

        sched = LambdaLR(opt, lr_lambda=lambda t: 0.95 ** t)
        sched.load_state_dict(checkpoint["scheduler"])
    """

    def __init__(
        self,
        optimizer: Any,
        lr_lambda: Callable[[int], float] | Sequence[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        pairs = _lr_lambdas("LambdaLR", optimizer, lr_lambda)
        self.lr_lambdas = [fn for fn, _ in pairs]
        self._shapes = [Lambda(fn, label=label) for fn, label in pairs]
        self._bind(optimizer, last_epoch)

    def _build(self, key: str, group_index: int, base: float) -> Schedule:
        return self._shapes[group_index] * base

    def _config(self) -> dict[str, Any]:
        return {"lr_lambda": [repr(shape) for shape in self._shapes]}


class MultiplicativeLR(BaseScheduler):
    r"""Multiply each group's lr by ``lr_lambda(t)`` at every step :math:`t \ge 1`.

    .. math:: \eta_t = \eta_0 \prod_{i=1}^{t} f(i)

    with the products taken left to right as torch's ``MultiplicativeLR`` takes them step
    by step, so the values are the same floats. ``lr_lambda`` is a pure function of the
    step or a list of them, one per group. Unlike the other schedulers this one is not a
    closed form: the value at step :math:`t` is reached through the :math:`t` factors
    (see :class:`~descent.schedules.Multiplicative`), so a resume at step :math:`t`
    calls ``lr_lambda`` :math:`t` times once; it is exact, in any order. As for
    :class:`LambdaLR`, state dicts hold the functions' names, never the functions.
    ``step(epoch)`` goes to that step's product (torch multiplies the current lr by
    ``lr_lambda(epoch)`` once).

    Example::

        >>> import torch
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> MultiplicativeLR(opt, lr_lambda=lambda t: 0.5).value_at(3)
        [0.125]
    """

    def __init__(
        self,
        optimizer: Any,
        lr_lambda: Callable[[int], float] | Sequence[Callable[[int], float]],
        last_epoch: int = -1,
    ) -> None:
        self._pairs = _lr_lambdas("MultiplicativeLR", optimizer, lr_lambda)
        self.lr_lambdas = [fn for fn, _ in self._pairs]
        self._bind(optimizer, last_epoch)

    def _build(self, key: str, group_index: int, base: float) -> Schedule:
        fn, label = self._pairs[group_index]
        return Multiplicative(fn, init=base, label=label)

    def _chain_step(
        self, key: str, group_index: int, schedule: Schedule, base: float, step: int, value: float
    ) -> float:
        """torch multiplies the current value by ``lr_lambda(step)`` (from step 1)."""
        if step == 0:
            return value
        fn, label = self._pairs[group_index]
        return value * _call(label, fn, step)

    def _config(self) -> dict[str, Any]:
        return {"lr_lambda": [_describe(fn) for fn in self.lr_lambdas]}


class SequentialLR(BaseScheduler):
    r"""Run ``schedulers`` one after another, switching at ``milestones``.

    Scheduler :math:`i` runs from milestone :math:`i - 1` and counts its steps from there
    (see :class:`~descent.schedules.Join`):
    :math:`\eta_t = s_i(t - m_{i-1})`. The schedulers must be descent schedulers of the
    same optimizer, driving the learning rate only; their own step counts are not used.
    """

    def __init__(
        self,
        optimizer: Any,
        schedulers: Sequence[BaseScheduler],
        milestones: Sequence[int],
        last_epoch: int = -1,
    ) -> None:
        owner = "SequentialLR"
        if not isinstance(schedulers, list | tuple) or not schedulers:
            raise ValueError(
                f"{owner}: schedulers={schedulers!r} is invalid; expected a "
                "non-empty list of schedulers"
            )
        for i, scheduler in enumerate(schedulers):
            if not isinstance(scheduler, BaseScheduler):
                raise TypeError(
                    f"{owner}: schedulers[{i}] is a {type(scheduler).__name__}; "
                    "expected a descent scheduler (descent.schedules)"
                )
            if scheduler.optimizer is not optimizer:
                raise ValueError(
                    f"{owner}: schedulers[{i}] ({type(scheduler).__name__}) is "
                    "bound to another optimizer"
                )
            if scheduler.keys != ("lr",):
                raise ValueError(
                    f"{owner}: schedulers[{i}] ({type(scheduler).__name__}) drives "
                    f"{list(scheduler.keys)}; SequentialLR sequences the lr only "
                    "(pass cycle_momentum=False)"
                )
        self.milestones = _checks.increasing(owner, "milestones", milestones, minimum=1)
        if len(self.milestones) != len(schedulers) - 1:
            raise ValueError(
                f"{owner}: milestones has {len(self.milestones)} entries for "
                f"{len(schedulers)} schedulers; expected {len(schedulers) - 1}"
            )
        self._schedulers: list[BaseScheduler] = list(schedulers)
        self._bind(optimizer, last_epoch)

    def _build(self, key: str, group_index: int, base: float) -> Schedule:
        # Schedulers whose base values come from their arguments (CyclicLR, OneCycleLR)
        # keep them; the others start from this scheduler's (saved and loaded) base value.
        parts = tuple(
            s._build(
                key, group_index, s.base_values[key][group_index] if s._explicit_bases else base
            )
            for s in self._schedulers
        )
        return Join(parts, self.milestones)

    def _chain_step(
        self, key: str, group_index: int, schedule: Schedule, base: float, step: int, value: float
    ) -> float:
        """torch's: the active scheduler's step, which restarts (at its step 0) at a milestone."""
        index = bisect_right(self.milestones, step)
        start = self.milestones[index - 1] if index else 0
        if step == start:
            return schedule(step)
        part = self._schedulers[index]
        part_base = part.base_values[key][group_index] if part._explicit_bases else base
        assert isinstance(schedule, Join)
        return part._chain_step(
            key, group_index, schedule.schedules[index], part_base, step - start, value
        )

    def _config(self) -> dict[str, Any]:
        return {
            "milestones": list(self.milestones),
            "schedulers": [
                {"scheduler": type(s).__name__, **s._config()} for s in self._schedulers
            ],
        }


@dataclasses.dataclass(frozen=True, repr=False)
class _Chain(_Recurrence):
    """The value of one option of one group under a chain: each update in turn, every step."""

    updates: tuple[Callable[[int, float], float], ...]
    init: float

    def __post_init__(self) -> None:
        self._start_cache()

    def _advance(self, step: int, value: float) -> float:
        for update in self.updates:
            value = update(step, value)
        return value


class ChainedScheduler(BaseScheduler):
    r"""Apply several schedulers one after another at every step, as torch's does.

    Each step, every scheduler in turn updates the value the one before it left, in
    torch's step-by-step form: ``StepLR``, ``MultiStepLR``, ``ConstantLR``, ``LinearLR``,
    ``ExponentialLR``, ``PolynomialLR`` and ``MultiplicativeLR`` multiply it by their
    change over the step, ``CosineAnnealingLR`` scales its distance to ``eta_min``, and the
    others (``LambdaLR``, ``CyclicLR``, ``OneCycleLR``, ``CosineAnnealingWarmRestarts``,
    :class:`~descent.schedules.Scheduler`) set it from the step alone, discarding what
    the schedulers before them did, exactly as in torch. With :math:`u_{k,t}` the update
    of scheduler :math:`k` at step :math:`t`:

    .. math:: \eta_{-1} = \eta_0, \qquad
              \eta_t = u_{K,t}(\cdots u_{1,t}(\eta_{t-1}))

    The chain computes this from its own step count and the base values only (never
    from the optimizer's current lr), so resuming is exact in any order, like the other
    schedulers: a value is always the same sequence of operations from the base value;
    a resume at step :math:`t` replays :math:`t` steps once. Values agree with torch's
    chain to float64 rounding. The schedulers given are parts: their own step counts
    are not used. Options other than the lr (a cycled momentum) are chained the same way.

    Example (torch's)::

        >>> import torch
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> chain = ChainedScheduler([ConstantLR(opt, factor=0.1, total_iters=2),
        ...                           ExponentialLR(opt, gamma=0.9)])
        >>> [round(chain.value_at(t)[0], 6) for t in range(4)]
        [0.1, 0.09, 0.81, 0.729]
    """

    def __init__(self, schedulers: Sequence[BaseScheduler], optimizer: Any = None) -> None:
        owner = "ChainedScheduler"
        if not isinstance(schedulers, list | tuple) or not schedulers:
            raise ValueError(
                f"{owner}: schedulers={schedulers!r} is invalid; expected a "
                "non-empty list of schedulers"
            )
        for i, scheduler in enumerate(schedulers):
            name = type(scheduler).__name__
            if isinstance(scheduler, TorchReduceLROnPlateau):
                raise ValueError(
                    f"{owner}: schedulers[{i}] is a {name}, which cannot be "
                    "chained: it steps on a metric (as in torch)"
                )
            if isinstance(scheduler, LRScheduler) and not isinstance(scheduler, BaseScheduler):
                raise TypeError(
                    f"{owner}: schedulers[{i}] is torch's {name}; a chain computes "
                    "its values from the step count, which a torch scheduler "
                    f"cannot give (use descent.schedules.{name}, with the same "
                    "arguments)"
                )
            if not isinstance(scheduler, BaseScheduler):
                raise TypeError(
                    f"{owner}: schedulers[{i}] is a {name}; expected a descent "
                    "scheduler (descent.schedules)"
                )
        optimizer = schedulers[0].optimizer if optimizer is None else optimizer
        for i, scheduler in enumerate(schedulers):
            if scheduler.optimizer is not optimizer:
                raise ValueError(
                    f"{owner}: schedulers[{i}] ({type(scheduler).__name__}) is "
                    "bound to another optimizer"
                )
        keys = list(dict.fromkeys(key for s in schedulers for key in s.keys))
        keys.sort(key=lambda key: key != "lr")
        self._schedulers: list[BaseScheduler] = list(schedulers)
        self._bind(optimizer, -1, keys=keys)

    def _build(self, key: str, group_index: int, base: float) -> Schedule:
        updates = []
        for scheduler in self._schedulers:
            if key not in scheduler.keys:
                continue
            part_base = (
                scheduler.base_values[key][group_index] if scheduler._explicit_bases else base
            )
            schedule = scheduler._build(key, group_index, part_base)
            updates.append(
                functools.partial(scheduler._chain_step, key, group_index, schedule, part_base)
            )
        return _Chain(tuple(updates), base)

    def _chain_step(
        self, key: str, group_index: int, schedule: Schedule, base: float, step: int, value: float
    ) -> float:
        assert isinstance(schedule, _Chain)
        return schedule._advance(step, value)

    def _config(self) -> dict[str, Any]:
        return {
            "schedulers": [{"scheduler": type(s).__name__, **s._config()} for s in self._schedulers]
        }

    def _is_torch_state(self, state_dict: Mapping[str, Any]) -> bool:
        return "descent" not in state_dict and "_schedulers" in state_dict

    def _read_torch_state(
        self, owner: str, state: Mapping[str, Any]
    ) -> tuple[int, dict[str, list[float]]]:
        """torch's chain state: its schedulers' states, which must agree on the step."""
        parts = state["_schedulers"]
        if not isinstance(parts, list | tuple) or len(parts) != len(self._schedulers):
            raise ValueError(
                f"{owner}: _schedulers holds "
                f"{len(parts) if isinstance(parts, list | tuple) else parts!r} "
                f"states; this chain has {len(self._schedulers)} schedulers"
            )
        read: list[tuple[int, dict[str, list[float]]]] = []
        for i, (scheduler, part) in enumerate(zip(self._schedulers, parts, strict=True)):
            if not isinstance(part, Mapping) or "base_lrs" not in part:
                raise ValueError(f"{owner}: _schedulers[{i}] is not a torch scheduler state")
            read.append(scheduler._read_torch_state(f"{owner}: _schedulers[{i}]", part))
        steps = {step for step, _ in read}
        if len(steps) != 1:
            raise ValueError(
                f"{owner}: the chained schedulers were saved at different steps {sorted(steps)}"
            )
        return read[0]
