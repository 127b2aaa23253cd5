r"""Schedules: pure, closed-form functions of the step count.

A :class:`Schedule` maps a step count :math:`t = 0, 1, 2, \dots` to a number (a learning
rate, a momentum, a weight decay, or a factor that multiplies one). ``schedule(t)``
depends on ``t`` and on the schedule's arguments only, so the value at step 10,000 is
the same whether it is reached by 10,000 steps or by resuming from a checkpoint.
Schedules are immutable and compare and print by value. All are closed forms except
:class:`Multiplicative`, a product of per-step factors: it caches partial products,
and computes each value by the same multiplications however the step is reached.

Building blocks (values written for ``t`` the step, ``T`` a length in steps):

* :class:`Constant`, :class:`Step`, :class:`MultiStep`, :class:`Exponential`,
  :class:`Linear`, :class:`Polynomial`, :class:`Cosine`, :class:`CosineRestarts` (SGDR),
  :class:`OneCycle`, :class:`Cyclic`, :class:`WarmupStableDecay`, :class:`InverseSqrt`,
  :class:`Lambda` (a user-supplied function);
* :class:`Multiplicative`: a product of per-step factors (torch's ``MultiplicativeLR``);
* combinators: :class:`Warmup` (linear warmup, then any schedule), :class:`Join`
  (schedules one after another, each restarting its count at a boundary), :class:`Scale`,
  :class:`Offset` and :class:`Product` (also written ``2.0 * s``, ``s + 0.1``, ``s * r``);
* :func:`warmup_cosine`, the usual linear warmup followed by cosine decay.

Example::

    >>> from descent.schedules import Cosine, Warmup
    >>> schedule = Warmup(Cosine(total_steps=90, init=1e-3, final=1e-5), warmup_steps=10)
    >>> schedule(0), schedule(5), schedule(10), schedule(100)
    (0.0, 0.0005, 0.001, 1e-05)

A :class:`~descent.schedules.Scheduler` binds a schedule to an optimizer's param groups.
"""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, cast

from . import _checks


class Schedule:
    """A pure function of the step count ``t >= 0`` returning a float.

    Subclasses implement :meth:`_value` for an already checked integer step. Calling a
    schedule checks the step; ``s * x``, ``x * s``, ``s + x`` and ``x + s`` build
    :class:`Scale`, :class:`Offset` or (for two schedules) :class:`Product`.
    """

    # every concrete schedule is a dataclass (this declares it for dataclasses.fields)
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def __call__(self, step: int) -> float:
        """The value at ``step`` (an integer >= 0)."""
        return self._value(_checks.step(type(self).__name__, step))

    def _value(self, step: int) -> float:
        raise NotImplementedError

    def __mul__(self, other: Any) -> Schedule:
        if isinstance(other, Schedule):
            return Product(self, other)
        return Scale(self, other)

    __rmul__ = __mul__

    def __add__(self, other: Any) -> Schedule:
        return Offset(self, other)

    __radd__ = __add__

    def __repr__(self) -> str:
        arguments = ", ".join(
            f"{f.name}={_describe(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if f.repr
        )
        return f"{type(self).__name__}({arguments})"


def _describe(value: Any) -> str:
    """repr, except that functions show as their qualified name (stable across runs)."""
    if callable(value) and not isinstance(value, Schedule):
        return getattr(value, "__qualname__", None) or type(value).__qualname__
    if isinstance(value, tuple):
        return "(" + ", ".join(_describe(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def _set(schedule: Schedule, name: str, value: Any) -> None:
    """Store a normalised argument on a frozen dataclass schedule."""
    object.__setattr__(schedule, name, value)


# ---------------------------------------------------------------------------- basic shapes


@dataclasses.dataclass(frozen=True, repr=False)
class Constant(Schedule):
    """The same value at every step: :math:`v_t = \\text{value}`."""

    value: float = 1.0

    def __post_init__(self) -> None:
        _set(self, "value", _checks.real("Constant", "value", self.value))

    def _value(self, step: int) -> float:
        return self.value


@dataclasses.dataclass(frozen=True, repr=False)
class Step(Schedule):
    r"""Decay by ``gamma`` every ``step_size`` steps.

    .. math:: v_t = v_0\,\gamma^{\lfloor t/s \rfloor}

    This is torch's ``StepLR`` (the first decay is at ``t = step_size``).

    Example::

        >>> Step(step_size=2, gamma=0.5)(3)
        0.5
    """

    step_size: int
    gamma: float = 0.1
    init: float = 1.0

    def __post_init__(self) -> None:
        _set(self, "step_size", _checks.integer("Step", "step_size", self.step_size, minimum=1))
        _set(self, "gamma", _checks.real("Step", "gamma", self.gamma, minimum=0.0))
        _set(self, "init", _checks.real("Step", "init", self.init))

    def _value(self, step: int) -> float:
        return self.init * self.gamma ** (step // self.step_size)


@dataclasses.dataclass(frozen=True, repr=False)
class MultiStep(Schedule):
    r"""Decay by ``gamma`` at each milestone: :math:`v_t = v_0\,\gamma^{\#\{m_i \le t\}}`.

    ``milestones`` must be strictly increasing integers >= 0 (torch's ``MultiStepLR``).
    """

    milestones: tuple[int, ...]
    gamma: float = 0.1
    init: float = 1.0

    def __post_init__(self) -> None:
        _set(self, "milestones", _checks.increasing("MultiStep", "milestones", self.milestones))
        _set(self, "gamma", _checks.real("MultiStep", "gamma", self.gamma, minimum=0.0))
        _set(self, "init", _checks.real("MultiStep", "init", self.init))

    def _value(self, step: int) -> float:
        return self.init * self.gamma ** bisect_right(self.milestones, step)


@dataclasses.dataclass(frozen=True, repr=False)
class Exponential(Schedule):
    r"""Decay by ``gamma`` every step: :math:`v_t = v_0\,\gamma^t`."""

    gamma: float
    init: float = 1.0

    def __post_init__(self) -> None:
        _set(self, "gamma", _checks.real("Exponential", "gamma", self.gamma, minimum=0.0))
        _set(self, "init", _checks.real("Exponential", "init", self.init))

    def _value(self, step: int) -> float:
        return self.init * self.gamma**step


@dataclasses.dataclass(frozen=True, repr=False)
class Linear(Schedule):
    r"""From ``start`` to ``end`` in ``total_steps`` steps, then ``end``.

    .. math:: v_t = a + (b - a)\,\min(t, T) / T
    """

    start: float
    end: float
    total_steps: int

    def __post_init__(self) -> None:
        _set(self, "start", _checks.real("Linear", "start", self.start))
        _set(self, "end", _checks.real("Linear", "end", self.end))
        _set(
            self,
            "total_steps",
            _checks.integer("Linear", "total_steps", self.total_steps, minimum=1),
        )

    def _value(self, step: int) -> float:
        return self.start + (self.end - self.start) * min(self.total_steps, step) / self.total_steps


@dataclasses.dataclass(frozen=True, repr=False)
class Polynomial(Schedule):
    r"""Polynomial decay to ``final`` in ``total_steps`` steps, then ``final``.

    .. math:: v_t = (v_0 - v_{\text{final}})\,(1 - \min(t, T)/T)^{p} + v_{\text{final}}

    ``power=1`` is linear decay (torch's ``PolynomialLR`` with ``final=0``).
    """

    total_steps: int
    power: float = 1.0
    init: float = 1.0
    final: float = 0.0

    def __post_init__(self) -> None:
        _set(
            self,
            "total_steps",
            _checks.integer("Polynomial", "total_steps", self.total_steps, minimum=1),
        )
        _set(self, "power", _checks.real("Polynomial", "power", self.power, minimum=0.0))
        _set(self, "init", _checks.real("Polynomial", "init", self.init))
        _set(self, "final", _checks.real("Polynomial", "final", self.final))

    def _value(self, step: int) -> float:
        remaining = 1.0 - min(self.total_steps, step) / self.total_steps
        shape: float = remaining**self.power  # remaining >= 0: a real power
        return (self.init - self.final) * shape + self.final


@dataclasses.dataclass(frozen=True, repr=False)
class Cosine(Schedule):
    r"""Cosine annealing from ``init`` to ``final`` over ``total_steps`` steps.

    .. math:: v_t = v_{\text{final}} + \tfrac12 (v_0 - v_{\text{final}})
              \left(1 + \cos\frac{\pi\,t}{T}\right)

    Past ``total_steps`` the value stays at ``final`` (``after_end="hold"``), or the
    cosine continues, rising back to ``init`` at ``2T`` and so on (``after_end="continue"``,
    what torch's ``CosineAnnealingLR`` does).

    Reference: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm
    Restarts", ICLR 2017, eq. (5).
    """

    total_steps: int
    init: float = 1.0
    final: float = 0.0
    after_end: str = "hold"

    def __post_init__(self) -> None:
        _set(
            self,
            "total_steps",
            _checks.integer("Cosine", "total_steps", self.total_steps, minimum=1),
        )
        _set(self, "init", _checks.real("Cosine", "init", self.init))
        _set(self, "final", _checks.real("Cosine", "final", self.final))
        _checks.choice("Cosine", "after_end", self.after_end, ("hold", "continue"))

    def _value(self, step: int) -> float:
        if self.after_end == "hold":
            step = min(step, self.total_steps)
        return (
            self.final
            + (self.init - self.final) * (1 + math.cos(math.pi * step / self.total_steps)) / 2
        )


@dataclasses.dataclass(frozen=True, repr=False)
class CosineRestarts(Schedule):
    r"""Cosine annealing with warm restarts (SGDR).

    Cycle :math:`i` lasts :math:`T_i = T_0\,m^i` steps; within it, at
    :math:`T_{\text{cur}}` steps since its start,

    .. math:: v_t = v_{\text{final}} + \tfrac12 (v_0 - v_{\text{final}})
              \left(1 + \cos\frac{\pi\,T_{\text{cur}}}{T_i}\right)

    The cycle is found with integer arithmetic, so restarts fall exactly on
    :math:`T_0 (m^i - 1)/(m - 1)` (torch's ``CosineAnnealingWarmRestarts`` with
    ``T_0=first_period, T_mult=period_mult``).

    Reference: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm
    Restarts", ICLR 2017.
    """

    first_period: int
    period_mult: int = 1
    init: float = 1.0
    final: float = 0.0

    def __post_init__(self) -> None:
        owner = "CosineRestarts"
        _set(
            self,
            "first_period",
            _checks.integer(owner, "first_period", self.first_period, minimum=1),
        )
        _set(
            self, "period_mult", _checks.integer(owner, "period_mult", self.period_mult, minimum=1)
        )
        _set(self, "init", _checks.real(owner, "init", self.init))
        _set(self, "final", _checks.real(owner, "final", self.final))

    def position(self, step: int) -> tuple[int, int]:
        """``(T_cur, T_i)``: steps since the last restart and the current cycle's length."""
        step = _checks.step("CosineRestarts", step)
        if self.period_mult == 1:
            return step % self.first_period, self.first_period
        start, length = 0, self.first_period
        while step >= start + length:
            start += length
            length *= self.period_mult
        return step - start, length

    def _value(self, step: int) -> float:
        since_restart, length = self.position(step)
        return (
            self.final
            + (self.init - self.final) * (1 + math.cos(math.pi * since_restart / length)) / 2
        )


# ---------------------------------------------------------------------------- cycles


@dataclasses.dataclass(frozen=True, repr=False)
class OneCycle(Schedule):
    r"""The 1cycle policy: ``initial`` to ``peak``, then down to ``final``.

    Phase ends are at ``pct_start * total_steps - 1`` and ``total_steps - 1``; within a
    phase the value goes from its start to its end value by cosine
    (:math:`e + (s - e)(1 + \cos\pi p)/2`) or linear (:math:`s + (e - s)p`) annealing, with
    :math:`p` the fraction of the phase done. With ``three_phase=True`` the phases are
    ``initial -> peak -> initial -> final``, the first two symmetric. Valid for
    ``0 <= t <= total_steps``; later steps raise ``ValueError`` (as torch's ``OneCycleLR``).
    At step ``total_steps``, one past the last phase, the last phase is extrapolated as
    torch does, but not beyond ``final``: with cosine annealing (which turns back) that is
    torch's value, with linear annealing it is ``final`` where torch goes past it (to a
    negative learning rate, when ``final`` is small).

    For the learning rate: ``initial = max_lr / div_factor``, ``peak = max_lr``,
    ``final = initial / final_div_factor``. For the momentum that moves against it:
    ``initial = max_momentum``, ``peak = base_momentum``, ``final = max_momentum``.

    Reference: Smith & Topin, "Super-Convergence: Very Fast Training of Neural Networks
    Using Large Learning Rates", 2017 (arXiv:1708.07120); phases as in fastai and torch.
    """

    total_steps: int
    initial: float
    peak: float
    final: float
    pct_start: float = 0.3
    anneal_strategy: str = "cos"
    three_phase: bool = False

    def __post_init__(self) -> None:
        owner = "OneCycle"
        total = _checks.integer(owner, "total_steps", self.total_steps, minimum=1)
        _set(self, "total_steps", total)
        for name in ("initial", "peak", "final"):
            _set(self, name, _checks.real(owner, name, getattr(self, name)))
        pct = _checks.real(owner, "pct_start", self.pct_start, minimum=0.0, maximum=1.0)
        _set(self, "pct_start", pct)
        _checks.choice(owner, "anneal_strategy", self.anneal_strategy, ("cos", "linear"))
        if not isinstance(self.three_phase, bool):
            raise TypeError(
                f"{owner}: three_phase={self.three_phase!r} is invalid; expected True or False"
            )
        start = 0.0
        for end, _, _ in self._phases():
            if end == start:
                raise ValueError(
                    f"{owner}: pct_start={pct!r} with total_steps={total} gives a "
                    "phase of zero length; change pct_start or total_steps"
                )
            start = end

    def _phases(self) -> list[tuple[float, float, float]]:
        """``(end_step, start_value, end_value)`` of each phase (torch's boundaries)."""
        up = float(self.pct_start * self.total_steps) - 1
        if self.three_phase:
            return [
                (up, self.initial, self.peak),
                (float(2 * self.pct_start * self.total_steps) - 2, self.peak, self.initial),
                (self.total_steps - 1, self.initial, self.final),
            ]
        return [(up, self.initial, self.peak), (self.total_steps - 1, self.peak, self.final)]

    def _value(self, step: int) -> float:
        if step > self.total_steps:
            raise ValueError(
                f"OneCycle: step={step} is past total_steps={self.total_steps}; "
                "the 1cycle policy is defined for steps 0 to total_steps"
            )
        phases = self._phases()
        start_step = 0.0
        for index, (end_step, start_value, end_value) in enumerate(phases):
            if step <= end_step or index == len(phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                if self.anneal_strategy == "cos":
                    value = end_value + (start_value - end_value) / 2.0 * (
                        math.cos(math.pi * pct) + 1
                    )
                else:
                    value = (end_value - start_value) * pct + start_value
                low, high = sorted((start_value, end_value))
                return min(max(value, low), high)
            start_step = end_step
        raise AssertionError("unreachable: the last phase always matches")


def _triangular(x: float) -> float:
    return 1.0


def _triangular2(x: float) -> float:
    halving: float = 2.0 ** (x - 1)
    return 1 / halving


@dataclasses.dataclass(frozen=True, repr=False)
class Cyclic(Schedule):
    r"""Cyclical values between ``base_value`` and ``max_value`` (CLR).

    A cycle is ``step_size_up`` steps up and ``step_size_down`` steps down (whole numbers
    of steps, at least 1; ``step_size_down`` defaults to ``step_size_up``). With
    :math:`c = \lfloor 1 + t/L \rfloor` the cycle number (:math:`L` the cycle length),
    :math:`x = 1 + t/L - c` the position in it and :math:`r` the fraction of it spent going up,

    .. math:: v_t = b + (M - b)\,h(x)\,\text{scale}, \qquad
              h(x) = x/r \text{ if } x \le r \text{ else } (x - 1)/(r - 1)

    where ``scale`` is 1 (``"triangular"``), :math:`2^{1-c}` (``"triangular2"``) or
    :math:`\gamma^t` (``"exp_range"``), or ``scale_fn`` evaluated at :math:`c`
    (``scale_mode="cycle"``) or :math:`t` (``"iterations"``). For a momentum cycled
    against the learning rate, pass ``base_value=max_momentum, max_value=base_momentum``.

    Reference: Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017;
    the same formula as torch's ``CyclicLR``.
    """

    base_value: float
    max_value: float
    step_size_up: int = 2000
    step_size_down: int | None = None
    mode: str = "triangular"
    gamma: float = 1.0
    scale_fn: Callable[[float], float] | None = None
    scale_mode: str = "cycle"

    def __post_init__(self) -> None:
        owner = "Cyclic"
        _set(self, "base_value", _checks.real(owner, "base_value", self.base_value))
        _set(self, "max_value", _checks.real(owner, "max_value", self.max_value))
        up = _checks.integer(owner, "step_size_up", self.step_size_up, minimum=1)
        _set(self, "step_size_up", up)
        down = (
            up
            if self.step_size_down is None
            else _checks.integer(owner, "step_size_down", self.step_size_down, minimum=1)
        )
        _set(self, "step_size_down", down)
        _set(self, "gamma", _checks.real(owner, "gamma", self.gamma, minimum=0.0))
        if self.scale_fn is None:
            _checks.choice(owner, "mode", self.mode, ("triangular", "triangular2", "exp_range"))
            _set(self, "scale_mode", "iterations" if self.mode == "exp_range" else "cycle")
        else:
            if not callable(self.scale_fn):
                raise TypeError(f"{owner}: scale_fn={self.scale_fn!r} is not callable")
            _checks.choice(owner, "scale_mode", self.scale_mode, ("cycle", "iterations"))

    def _scale(self, x: float) -> float:
        if self.scale_fn is not None:
            return self.scale_fn(x)
        if self.mode == "triangular":
            return _triangular(x)
        if self.mode == "triangular2":
            return _triangular2(x)
        scale: float = self.gamma**x  # gamma >= 0: a real power
        return scale

    def _value(self, step: int) -> float:
        total_size = self.step_size_up + cast(int, self.step_size_down)  # set by __post_init__
        step_ratio = self.step_size_up / total_size
        cycle = math.floor(1 + step / total_size)
        x = 1.0 + step / total_size - cycle
        scale_factor = x / step_ratio if x <= step_ratio else (x - 1) / (step_ratio - 1)
        height = (self.max_value - self.base_value) * scale_factor
        return self.base_value + height * self._scale(cycle if self.scale_mode == "cycle" else step)


# ---------------------------------------------------------------------------- warmup shapes


@dataclasses.dataclass(frozen=True, repr=False)
class WarmupStableDecay(Schedule):
    r"""Warmup-stable-decay (WSD, "trapezoidal"): up, flat, then a short decay.

    Linear warmup from ``init`` to ``peak`` over ``warmup_steps``; ``peak`` until
    ``total_steps - decay_steps``; then down to ``final`` at ``total_steps`` with
    ``decay_shape`` ``"linear"``, ``"cosine"`` or ``"1-sqrt"``
    (:math:`v = f + (P - f)(1 - \sqrt{p})`, :math:`p` the fraction of the decay done);
    ``final`` afterwards.

    References: Hu et al., "MiniCPM: Unveiling the Potential of Small Language Models with
    Scalable Training Strategies", 2024; Hägele et al., "Scaling Laws and Compute-Optimal
    Training Beyond Fixed Training Durations", NeurIPS 2024 (the 1-sqrt cooldown).
    """

    total_steps: int
    warmup_steps: int
    decay_steps: int
    peak: float = 1.0
    init: float = 0.0
    final: float = 0.0
    decay_shape: str = "linear"

    def __post_init__(self) -> None:
        owner = "WarmupStableDecay"
        total = _checks.integer(owner, "total_steps", self.total_steps, minimum=1)
        warmup = _checks.integer(owner, "warmup_steps", self.warmup_steps, minimum=0)
        decay = _checks.integer(owner, "decay_steps", self.decay_steps, minimum=0)
        if warmup + decay > total:
            raise ValueError(
                f"{owner}: warmup_steps={warmup} plus decay_steps={decay} is "
                f"longer than total_steps={total}; expected warmup_steps + "
                "decay_steps <= total_steps"
            )
        _set(self, "total_steps", total)
        _set(self, "warmup_steps", warmup)
        _set(self, "decay_steps", decay)
        for name in ("peak", "init", "final"):
            _set(self, name, _checks.real(owner, name, getattr(self, name)))
        _checks.choice(owner, "decay_shape", self.decay_shape, ("linear", "cosine", "1-sqrt"))

    def _value(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.init + (self.peak - self.init) * step / self.warmup_steps
        decay_start = self.total_steps - self.decay_steps
        if step < decay_start:
            return self.peak
        if step >= self.total_steps:
            return self.final
        done = (step - decay_start) / self.decay_steps
        if self.decay_shape == "linear":
            return self.peak + (self.final - self.peak) * done
        if self.decay_shape == "cosine":
            return self.final + (self.peak - self.final) * (1 + math.cos(math.pi * done)) / 2
        return self.final + (self.peak - self.final) * (1 - math.sqrt(done))


@dataclasses.dataclass(frozen=True, repr=False)
class InverseSqrt(Schedule):
    r"""Linear warmup to ``peak``, then decay as the inverse square root of the step.

    .. math:: v_t = v_0 + (P - v_0)\,t/w \ (t < w), \qquad v_t = P\sqrt{w / t} \ (t \ge w)

    Reference: Vaswani et al., "Attention Is All You Need", NeurIPS 2017, eq. (3)
    (there with :math:`P = d_{\text{model}}^{-1/2} w^{-1/2}`).
    """

    warmup_steps: int
    peak: float = 1.0
    init: float = 0.0

    def __post_init__(self) -> None:
        _set(
            self,
            "warmup_steps",
            _checks.integer("InverseSqrt", "warmup_steps", self.warmup_steps, minimum=1),
        )
        _set(self, "peak", _checks.real("InverseSqrt", "peak", self.peak))
        _set(self, "init", _checks.real("InverseSqrt", "init", self.init))

    def _value(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.init + (self.peak - self.init) * step / self.warmup_steps
        return self.peak * math.sqrt(self.warmup_steps / step)


def _call(label: str, fn: Callable[[int], Any], step: int) -> float:
    """``float(fn(step))``, or a ``TypeError`` naming the function's argument ``label``."""
    value = fn(step)
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"{label}={_describe(fn)} returned {value!r} at step {step}; expected a real number"
        ) from None


def _require_callable(label: str, fn: Any) -> None:
    if not callable(fn):
        raise TypeError(f"{label}={fn!r} is not callable; expected a function of the step")


@dataclasses.dataclass(frozen=True, repr=False)
class Lambda(Schedule):
    """A user-supplied function of the step: :math:`v_t = f(t)`.

    ``fn`` must be a pure function of the step for resume to be exact. Schedulers built on
    it save the step count, never the function: rebuild it from code on resume.
    ``label`` names the function in error messages (a scheduler passes its own argument's
    name, such as ``"LambdaLR: lr_lambda"``); it is not part of the schedule's value.
    """

    fn: Callable[[int], float]
    label: str = dataclasses.field(default="Lambda: fn", repr=False, compare=False)

    def __post_init__(self) -> None:
        _require_callable(self.label, self.fn)

    def _value(self, step: int) -> float:
        return _call(self.label, self.fn, step)


_PREFIX_EVERY = 256


class _Recurrence(Schedule):
    r"""A schedule defined step by step: :math:`v_{-1} = \text{init}`, :math:`v_t = a_t(v_{t-1})`.

    The value at any step is the same sequence of operations from ``init``, whether it is
    reached step by step or directly (on resume), so it is exact. Values at every
    256th step and the last value asked for are kept, so that stepping forward costs one
    update and a jump at most 256.
    """

    init: float
    _prefix: list[float]  # set by _start_cache
    _last: tuple[int, float]

    def _advance(self, step: int, value: float) -> float:
        """:math:`a_t`: the value at ``step`` from the value at ``step - 1``."""
        raise NotImplementedError

    def _start_cache(self) -> None:
        _set(self, "_prefix", [self.init])  # values at steps -1, 255, 511, ...
        _set(self, "_last", (-1, self.init))

    def _value(self, step: int) -> float:
        prefix = self._prefix
        known = min((step + 1) // _PREFIX_EVERY, len(prefix) - 1)
        start, value = known * _PREFIX_EVERY - 1, prefix[known]
        last_step, last_value = self._last
        if start < last_step <= step:
            start, value = last_step, last_value
        for t in range(start + 1, step + 1):
            value = self._advance(t, value)
            if (t + 1) % _PREFIX_EVERY == 0 and (t + 1) // _PREFIX_EVERY == len(prefix):
                prefix.append(value)
        _set(self, "_last", (step, value))
        return value


@dataclasses.dataclass(frozen=True, repr=False)
class Multiplicative(_Recurrence):
    r"""``init`` times a factor per step: :math:`v_0 = v_{\text{init}}`, :math:`v_t = v_{t-1} f(t)`.

    .. math:: v_t = v_{\text{init}} \prod_{i=1}^{t} f(i)

    multiplied left to right, as torch's ``MultiplicativeLR`` does step by step (so the
    values are the same floats). ``fn`` must be a pure function of the step. Reaching
    step :math:`t` directly (a resume) costs :math:`t` calls of ``fn`` once.
    """

    fn: Callable[[int], float]
    init: float = 1.0
    label: str = dataclasses.field(default="Multiplicative: fn", repr=False, compare=False)

    def __post_init__(self) -> None:
        _require_callable(self.label, self.fn)
        _set(self, "init", _checks.real("Multiplicative", "init", self.init))
        self._start_cache()

    def _advance(self, step: int, value: float) -> float:
        return value if step == 0 else value * _call(self.label, self.fn, step)


# ---------------------------------------------------------------------------- combinators


@dataclasses.dataclass(frozen=True, repr=False)
class Warmup(Schedule):
    r"""Linear warmup from ``init`` to ``schedule(0)`` over ``warmup_steps``, then ``schedule``.

    .. math:: v_t = v_0 + (s(0) - v_0)\,t/w \ (t < w), \qquad v_t = s(t - w) \ (t \ge w)

    The wrapped schedule starts counting at the end of the warmup.
    """

    schedule: Schedule
    warmup_steps: int
    init: float = 0.0

    def __post_init__(self) -> None:
        _require_schedule("Warmup", "schedule", self.schedule)
        _set(
            self,
            "warmup_steps",
            _checks.integer("Warmup", "warmup_steps", self.warmup_steps, minimum=0),
        )
        _set(self, "init", _checks.real("Warmup", "init", self.init))

    def _value(self, step: int) -> float:
        if step < self.warmup_steps:
            target = self.schedule._value(0)
            return self.init + (target - self.init) * step / self.warmup_steps
        return self.schedule._value(step - self.warmup_steps)


@dataclasses.dataclass(frozen=True, repr=False)
class Join(Schedule):
    r"""Schedules one after another: ``schedules[i]`` runs from ``boundaries[i-1]``.

    .. math:: v_t = s_i(t - b_{i-1}), \qquad i = \#\{b_j \le t\}, \ b_{-1} = 0

    Each schedule restarts its count at its boundary (torch's ``SequentialLR``, optax's
    ``join_schedules``). ``boundaries`` are strictly increasing integers >= 1, one fewer
    than the schedules.
    """

    schedules: tuple[Schedule, ...]
    boundaries: tuple[int, ...]

    def __post_init__(self) -> None:
        schedules = tuple(self.schedules) if isinstance(self.schedules, Sequence) else None
        if not schedules:
            raise ValueError(
                f"Join: schedules={self.schedules!r} is invalid; expected a "
                "non-empty list of schedules"
            )
        for i, schedule in enumerate(schedules):
            _require_schedule("Join", f"schedules[{i}]", schedule)
        boundaries = _checks.increasing("Join", "boundaries", self.boundaries, minimum=1)
        if len(boundaries) != len(schedules) - 1:
            raise ValueError(
                f"Join: boundaries has {len(boundaries)} entries for "
                f"{len(schedules)} schedules; expected {len(schedules) - 1}"
            )
        _set(self, "schedules", schedules)
        _set(self, "boundaries", boundaries)

    def _value(self, step: int) -> float:
        index = bisect_right(self.boundaries, step)
        start = self.boundaries[index - 1] if index else 0
        return self.schedules[index]._value(step - start)


@dataclasses.dataclass(frozen=True, repr=False)
class Scale(Schedule):
    """``schedule`` times a constant: :math:`v_t = s(t)\\,c`."""

    schedule: Schedule
    factor: float

    def __post_init__(self) -> None:
        _require_schedule("Scale", "schedule", self.schedule)
        _set(self, "factor", _checks.real("Scale", "factor", self.factor))

    def _value(self, step: int) -> float:
        return self.schedule._value(step) * self.factor


@dataclasses.dataclass(frozen=True, repr=False)
class Offset(Schedule):
    """``schedule`` plus a constant: :math:`v_t = s(t) + c`."""

    schedule: Schedule
    offset: float

    def __post_init__(self) -> None:
        _require_schedule("Offset", "schedule", self.schedule)
        _set(self, "offset", _checks.real("Offset", "offset", self.offset))

    def _value(self, step: int) -> float:
        return self.schedule._value(step) + self.offset


@dataclasses.dataclass(frozen=True, repr=False)
class Product(Schedule):
    """Two schedules multiplied: :math:`v_t = a(t)\\,b(t)` (e.g. a warmup factor times a decay)."""

    first: Schedule
    second: Schedule

    def __post_init__(self) -> None:
        _require_schedule("Product", "first", self.first)
        _require_schedule("Product", "second", self.second)

    def _value(self, step: int) -> float:
        return self.first._value(step) * self.second._value(step)


def _require_schedule(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, Schedule):
        raise TypeError(
            f"{owner}: {name}={value!r} has type {type(value).__name__}; expected "
            "a Schedule (wrap a plain function in Lambda)"
        )


def warmup_cosine(
    total_steps: int, warmup_steps: int, peak: float = 1.0, init: float = 0.0, final: float = 0.0
) -> Schedule:
    r"""Linear warmup from ``init`` to ``peak``, then cosine decay to ``final`` at ``total_steps``.

    ``Warmup(Cosine(total_steps - warmup_steps, peak, final), warmup_steps, init)``;
    ``final`` after ``total_steps``.

    Example::

        >>> s = warmup_cosine(total_steps=100, warmup_steps=10, peak=3e-4)
        >>> s(0), s(10), s(100)
        (0.0, 0.0003, 0.0)
    """
    total = _checks.integer("warmup_cosine", "total_steps", total_steps, minimum=1)
    warmup = _checks.integer("warmup_cosine", "warmup_steps", warmup_steps, minimum=0)
    if warmup >= total:
        raise ValueError(
            f"warmup_cosine: warmup_steps={warmup} is not shorter than "
            f"total_steps={total}; expected warmup_steps < total_steps"
        )
    return Warmup(Cosine(total - warmup, init=peak, final=final), warmup, init=init)
