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

Differences from torch, all raising errors where torch would misbehave later:
``milestones`` must be strictly increasing (torch counts repeated milestones twice);
``total_iters``, ``T_max``, step sizes and ``total_steps`` must be >= 1; a OneCycle phase
of zero length is refused when built, not at the step that divides by zero.
TinyTorch's ``StepLR`` sets :math:`\eta_0\gamma^{\lfloor (k-1)/s\rfloor}` after ``k`` calls
of ``step()``, decaying one call later than torch; descent follows torch:
:math:`\eta_t = \eta_0\gamma^{\lfloor t/s\rfloor}`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

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
    MultiStep,
    OneCycle,
    Polynomial,
    Schedule,
    Step,
)
from .scheduler import BaseScheduler, _param_groups


class _ShapeScheduler(BaseScheduler):
    """A scheduler whose every group follows one schedule shape, scaled by the group's base."""

    _shape: Schedule

    def _build(self, key: str, group_index: int, base: float) -> Schedule:
        return self._shape * base


class StepLR(_ShapeScheduler):
    r"""Decay each group's lr by ``gamma`` every ``step_size`` steps.

    .. math:: \eta_t = \eta_0\,\gamma^{\lfloor t / \text{step\_size} \rfloor}

    Example::

        >>> import torch
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> StepLR(opt, step_size=30, gamma=0.1).value_at(30)
        [0.010000000000000002]
    """

    def __init__(self, optimizer: Any, step_size: int, gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        self._shape = Step(_checks.integer("StepLR", "step_size", step_size, minimum=1),
                           _checks.real("StepLR", "gamma", gamma, minimum=0.0))
        self._bind(optimizer, last_epoch)

    def _config(self) -> dict[str, Any]:
        return {"step_size": self._shape.step_size, "gamma": self._shape.gamma}


class MultiStepLR(_ShapeScheduler):
    r"""Decay each group's lr by ``gamma`` at each of ``milestones`` (strictly increasing).

    .. math:: \eta_t = \eta_0\,\gamma^{\#\{m \in \text{milestones} : m \le t\}}
    """

    def __init__(self, optimizer: Any, milestones: Sequence[int], gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        milestones = _checks.increasing("MultiStepLR", "milestones", milestones)
        self._shape = MultiStep(milestones, _checks.real("MultiStepLR", "gamma", gamma,
                                                         minimum=0.0))
        self._bind(optimizer, last_epoch)

    def _config(self) -> dict[str, Any]:
        return {"milestones": list(self._shape.milestones), "gamma": self._shape.gamma}


class ConstantLR(_ShapeScheduler):
    r"""Multiply each group's lr by ``factor`` for the first ``total_iters`` steps.

    .. math:: \eta_t = \eta_0\,\text{factor} \ (t < T), \qquad \eta_t = \eta_0 \ (t \ge T)
    """

    def __init__(self, optimizer: Any, factor: float = 1.0 / 3, total_iters: int = 5,
                 last_epoch: int = -1) -> None:
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

    def __init__(self, optimizer: Any, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5, last_epoch: int = -1) -> None:
        owner = "LinearLR"
        start = _checks.real(owner, "start_factor", start_factor, minimum=0.0, maximum=1.0,
                             open_minimum=True)
        end = _checks.real(owner, "end_factor", end_factor, minimum=0.0, maximum=1.0)
        total = _checks.integer(owner, "total_iters", total_iters, minimum=1)
        self._shape = Linear(start, end, total)
        self._bind(optimizer, last_epoch)

    def _config(self) -> dict[str, Any]:
        return {"start_factor": self._shape.start, "end_factor": self._shape.end,
                "total_iters": self._shape.total_steps}


class ExponentialLR(_ShapeScheduler):
    r"""Decay each group's lr by ``gamma`` every step: :math:`\eta_t = \eta_0\,\gamma^t`."""

    def __init__(self, optimizer: Any, gamma: float, last_epoch: int = -1) -> None:
        self._shape = Exponential(_checks.real("ExponentialLR", "gamma", gamma, minimum=0.0))
        self._bind(optimizer, last_epoch)

    def _config(self) -> dict[str, Any]:
        return {"gamma": self._shape.gamma}


class PolynomialLR(_ShapeScheduler):
    r"""Decay each group's lr polynomially to 0 in ``total_iters`` steps.

    .. math:: \eta_t = \eta_0 \left(1 - \frac{\min(t, T)}{T}\right)^{\text{power}}
    """

    def __init__(self, optimizer: Any, total_iters: int = 5, power: float = 1.0,
                 last_epoch: int = -1) -> None:
        owner = "PolynomialLR"
        self._shape = Polynomial(_checks.integer(owner, "total_iters", total_iters, minimum=1),
                                 _checks.real(owner, "power", power, minimum=0.0))
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

    def __init__(self, optimizer: Any, T_max: int, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        self.T_max = _checks.integer("CosineAnnealingLR", "T_max", T_max, minimum=1)
        self.eta_min = _checks.real("CosineAnnealingLR", "eta_min", eta_min)
        self._bind(optimizer, last_epoch)

    def _build(self, key: str, group_index: int, base: float) -> Schedule:
        return Cosine(self.T_max, init=base, final=self.eta_min, after_end="continue")

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

    def __init__(self, optimizer: Any, T_0: int, T_mult: int = 1, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        owner = "CosineAnnealingWarmRestarts"
        self.T_0 = _checks.integer(owner, "T_0", T_0, minimum=1)
        self.T_mult = _checks.integer(owner, "T_mult", T_mult, minimum=1)
        self.eta_min = _checks.real(owner, "eta_min", eta_min)
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
    raise ValueError(f"{owner}: cycle_momentum=True needs an optimizer with a 'momentum' or "
                     f"'betas' option; {type(optimizer).__name__} has neither (pass "
                     "cycle_momentum=False)")


def _flag(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name}={value!r} is invalid; expected True or False")
    return value


class _MomentumCycler(BaseScheduler):
    """Base of the schedulers that cycle momentum (or beta1) inversely to the lr."""

    def _cycle_momentum(self, owner: str, optimizer: Any, base_momentum: Any,
                        max_momentum: Any, groups: int, keys: list[str],
                        bases: dict[str, list[float]]) -> None:
        """Check the momentum bounds per group and add the momentum option to ``keys``."""
        self._momentum_key = _momentum_key(owner, optimizer)
        self.base_momentums = _checks.per_group(owner, "base_momentum", base_momentum, groups)
        self.max_momentums = _checks.per_group(owner, "max_momentum", max_momentum, groups)
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

    def __init__(self, optimizer: Any, base_lr: float | list[float], max_lr: float | list[float],
                 step_size_up: int = 2000, step_size_down: int | None = None,
                 mode: str = "triangular", gamma: float = 1.0,
                 scale_fn: Callable[[float], float] | None = None, scale_mode: str = "cycle",
                 cycle_momentum: bool = True, base_momentum: float | list[float] = 0.8,
                 max_momentum: float | list[float] = 0.9, last_epoch: int = -1) -> None:
        owner = "CyclicLR"
        groups = len(_param_groups(owner, optimizer))
        self.base_lrs_arg = _checks.per_group(owner, "base_lr", base_lr, groups)
        self.max_lrs = _checks.per_group(owner, "max_lr", max_lr, groups)
        self._shape = Cyclic(0.0, 1.0, step_size_up, step_size_down, mode, gamma, scale_fn,
                             scale_mode)
        self.mode = self._shape.mode
        self.gamma = self._shape.gamma
        self.scale_mode = self._shape.scale_mode
        self.cycle_momentum = _flag(owner, "cycle_momentum", cycle_momentum)
        keys = ["lr"]
        bases: dict[str, list[float]] = {"lr": self.base_lrs_arg}
        if self.cycle_momentum:
            self._cycle_momentum(owner, optimizer, base_momentum, max_momentum, groups,
                                 keys, bases)
        self._bind(optimizer, last_epoch, keys=keys, base_values=bases)

    def _build(self, key: str, group_index: int, base: float) -> Schedule:
        if key == "lr":
            low, high = base, self.max_lrs[group_index]
        else:
            low, high = base, self.base_momentums[group_index]
        shape = self._shape
        return Cyclic(low, high, shape.step_size_up, shape.step_size_down, shape.mode,
                      shape.gamma, shape.scale_fn, shape.scale_mode)

    def _config(self) -> dict[str, Any]:
        config = {"max_lr": self.max_lrs, "step_size_up": self._shape.step_size_up,
                  "step_size_down": self._shape.step_size_down, "mode": self.mode,
                  "gamma": self.gamma, "scale_mode": self.scale_mode,
                  "scale_fn": None if self._shape.scale_fn is None
                  else repr(Lambda(self._shape.scale_fn)),
                  "cycle_momentum": self.cycle_momentum}
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

    def __init__(self, optimizer: Any, max_lr: float | list[float], total_steps: int | None = None,
                 epochs: int | None = None, steps_per_epoch: int | None = None,
                 pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = True, base_momentum: float | list[float] = 0.85,
                 max_momentum: float | list[float] = 0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1) -> None:
        owner = "OneCycleLR"
        groups = len(_param_groups(owner, optimizer))
        if total_steps is not None:
            self.total_steps = _checks.integer(owner, "total_steps", total_steps, minimum=1)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = (_checks.integer(owner, "epochs", epochs, minimum=1)
                                * _checks.integer(owner, "steps_per_epoch", steps_per_epoch,
                                                  minimum=1))
        else:
            raise ValueError(f"{owner}: total_steps=None with epochs={epochs!r} and "
                             f"steps_per_epoch={steps_per_epoch!r}; give total_steps, or both "
                             "epochs and steps_per_epoch")
        self.max_lrs = _checks.per_group(owner, "max_lr", max_lr, groups)
        self.div_factor = _checks.real(owner, "div_factor", div_factor, minimum=0.0,
                                       open_minimum=True)
        self.final_div_factor = _checks.real(owner, "final_div_factor", final_div_factor,
                                             minimum=0.0, open_minimum=True)
        self.pct_start = _checks.real(owner, "pct_start", pct_start, minimum=0.0, maximum=1.0)
        self.anneal_strategy = _checks.choice(owner, "anneal_strategy", anneal_strategy,
                                              ("cos", "linear"))
        self.three_phase = _flag(owner, "three_phase", three_phase)
        self.cycle_momentum = _flag(owner, "cycle_momentum", cycle_momentum)
        # building one checks the phases (a zero-length phase would divide by zero)
        OneCycle(self.total_steps, 0.0, 1.0, 0.0, self.pct_start, self.anneal_strategy,
                 self.three_phase)
        keys = ["lr"]
        bases = {"lr": [m / self.div_factor for m in self.max_lrs]}
        if self.cycle_momentum:
            self._cycle_momentum(owner, optimizer, base_momentum, max_momentum, groups,
                                 keys, bases)
        self._bind(optimizer, last_epoch, keys=keys, base_values=bases, overwrite_initial=True)

    def _build(self, key: str, group_index: int, base: float) -> Schedule:
        if key == "lr":
            initial, peak = base, self.max_lrs[group_index]
            final = initial / self.final_div_factor
        else:
            initial, peak, final = base, self.base_momentums[group_index], base
        return OneCycle(self.total_steps, initial, peak, final, self.pct_start,
                        self.anneal_strategy, self.three_phase)

    def _config(self) -> dict[str, Any]:
        config = {"max_lr": self.max_lrs, "total_steps": self.total_steps,
                  "pct_start": self.pct_start, "anneal_strategy": self.anneal_strategy,
                  "cycle_momentum": self.cycle_momentum, "div_factor": self.div_factor,
                  "final_div_factor": self.final_div_factor, "three_phase": self.three_phase}
        if self.cycle_momentum:
            config["base_momentum"] = self.base_momentums
        return config


class LambdaLR(BaseScheduler):
    r"""Each group's lr is its base value times ``lr_lambda(t)``: :math:`\eta_t = \eta_0 f(t)`.

    ``lr_lambda`` is a function of the step or a list of them, one per group. It should be
    pure (the value depends only on the step). State dicts never hold the functions, only
    their names (checked on load) and the step count and base lrs: to resume, build the
    scheduler again with the same functions, then ``load_state_dict``::

        sched = LambdaLR(opt, lr_lambda=lambda t: 0.95 ** t)
        sched.load_state_dict(checkpoint["scheduler"])
    """

    def __init__(self, optimizer: Any, lr_lambda: Callable[[int], float]
                 | Sequence[Callable[[int], float]], last_epoch: int = -1) -> None:
        groups = len(_param_groups("LambdaLR", optimizer))
        if isinstance(lr_lambda, list | tuple):
            if len(lr_lambda) != groups:
                raise ValueError(f"LambdaLR: lr_lambda has {len(lr_lambda)} functions; expected "
                                 f"one per param group ({groups})")
            functions = list(lr_lambda)
        else:
            functions = [lr_lambda] * groups
        self.lr_lambdas = functions
        self._shapes = [Lambda(fn) for fn in functions]
        self._bind(optimizer, last_epoch)

    def _build(self, key: str, group_index: int, base: float) -> Schedule:
        return self._shapes[group_index] * base

    def _config(self) -> dict[str, Any]:
        return {"lr_lambda": [repr(shape) for shape in self._shapes]}


class SequentialLR(BaseScheduler):
    r"""Run ``schedulers`` one after another, switching at ``milestones``.

    Scheduler :math:`i` runs from milestone :math:`i - 1` and counts its steps from there
    (see :class:`~descent.schedules.Join`):
    :math:`\eta_t = s_i(t - m_{i-1})`. The schedulers must be descent schedulers of the
    same optimizer, driving the learning rate only; their own step counts are not used.
    """

    def __init__(self, optimizer: Any, schedulers: Sequence[BaseScheduler],
                 milestones: Sequence[int], last_epoch: int = -1) -> None:
        owner = "SequentialLR"
        if not isinstance(schedulers, list | tuple) or not schedulers:
            raise ValueError(f"{owner}: schedulers={schedulers!r} is invalid; expected a "
                             "non-empty list of schedulers")
        for i, scheduler in enumerate(schedulers):
            if not isinstance(scheduler, BaseScheduler):
                raise TypeError(f"{owner}: schedulers[{i}] is a {type(scheduler).__name__}; "
                                "expected a descent scheduler (descent.schedules)")
            if scheduler.optimizer is not optimizer:
                raise ValueError(f"{owner}: schedulers[{i}] ({type(scheduler).__name__}) is "
                                 "bound to another optimizer")
            if scheduler.keys != ("lr",):
                raise ValueError(f"{owner}: schedulers[{i}] ({type(scheduler).__name__}) drives "
                                 f"{list(scheduler.keys)}; SequentialLR sequences the lr only "
                                 "(pass cycle_momentum=False)")
        self.milestones = _checks.increasing(owner, "milestones", milestones, minimum=1)
        if len(self.milestones) != len(schedulers) - 1:
            raise ValueError(f"{owner}: milestones has {len(self.milestones)} entries for "
                             f"{len(schedulers)} schedulers; expected {len(schedulers) - 1}")
        self._schedulers = list(schedulers)
        self._bind(optimizer, last_epoch)

    def _build(self, key: str, group_index: int, base: float) -> Schedule:
        # Schedulers whose base values come from their arguments (CyclicLR, OneCycleLR)
        # keep them; the others start from this scheduler's (saved and loaded) base value.
        parts = tuple(s._build(key, group_index, s.base_values[key][group_index]
                               if s._explicit_bases else base) for s in self._schedulers)
        return Join(parts, self.milestones)

    def _config(self) -> dict[str, Any]:
        return {"milestones": list(self.milestones),
                "schedulers": [{"scheduler": type(s).__name__, **s._config()}
                               for s in self._schedulers]}
