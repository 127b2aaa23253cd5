"""Schedule functions against their definitions, schedulers' behaviour, bad input, plots.

Expected values are written here from the definitions (hand-computed points, numpy
interpolation, the papers' formulas), not taken from the code under test. Parity of
the torch-named schedulers with torch is in test_schedules_torch.py; resume in
test_schedules_resume.py.
"""

from __future__ import annotations

import doctest
import importlib
import math
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import descent
from descent import schedules as S

# These tests step schedulers without an optimizer step on purpose (values, not the call
# order); the step-order warning has its own tests in test_schedules.py.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")

# ---------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "schedule,points",
    [
        (S.Constant(0.3), {0: 0.3, 999: 0.3}),
        (S.Step(3, 0.5, init=2.0), {0: 2.0, 2: 2.0, 3: 1.0, 5: 1.0, 6: 0.5, 9: 0.25}),
        (S.MultiStep([2, 5], 0.1), {0: 1.0, 1: 1.0, 2: 0.1, 4: 0.1, 5: 0.1 * 0.1, 100: 0.1 * 0.1}),
        (S.Exponential(0.5, init=8.0), {0: 8.0, 1: 4.0, 3: 1.0}),
        (S.Linear(1.0, 0.0, 4), {0: 1.0, 1: 0.75, 2: 0.5, 4: 0.0, 10: 0.0}),
        (S.Linear(0.0, 2.0, 8), {4: 1.0, 8: 2.0, 9: 2.0}),
        (
            S.Polynomial(10, 2.0, init=1.0, final=0.1),
            {0: 1.0, 5: 0.9 * 0.25 + 0.1, 10: 0.1, 20: 0.1},
        ),
        (S.Cosine(10, init=1.0, final=0.0), {0: 1.0, 5: 0.5, 10: 0.0, 15: 0.0}),
        (S.Cosine(10, after_end="continue"), {10: 0.0, 15: 0.5, 20: 1.0}),
        (S.CosineRestarts(10, 2), {0: 1.0, 5: 0.5, 10: 1.0, 20: 0.5, 30: 1.0, 70: 1.0, 150: 1.0}),
        (S.CosineRestarts(4), {0: 1.0, 2: 0.5, 4: 1.0, 6: 0.5}),
        (S.Cyclic(0.0, 1.0, 5), {0: 0.0, 2: 0.4, 5: 1.0, 7: 0.6, 10: 0.0, 15: 1.0}),
        (S.Cyclic(0.0, 1.0, 5, mode="triangular2"), {5: 1.0, 15: 0.5, 25: 0.25}),
        (S.Cyclic(0.0, 1.0, 2, 6), {2: 1.0, 5: 0.5, 8: 0.0}),
        (
            S.WarmupStableDecay(100, 10, 20),
            {0: 0.0, 5: 0.5, 10: 1.0, 79: 1.0, 80: 1.0, 90: 0.5, 100: 0.0, 120: 0.0},
        ),
        (S.WarmupStableDecay(100, 10, 20, decay_shape="cosine", final=0.2), {90: 0.6, 100: 0.2}),
        (S.WarmupStableDecay(100, 0, 20, decay_shape="1-sqrt"), {0: 1.0, 85: 0.5, 100: 0.0}),
        (S.InverseSqrt(4, peak=2.0), {0: 0.0, 2: 1.0, 4: 2.0, 16: 1.0, 64: 0.5}),
        (S.Lambda(lambda t: t * t), {3: 9.0}),
        (S.Warmup(S.Exponential(0.5), 4, init=0.2), {0: 0.2, 2: 0.6, 4: 1.0, 5: 0.5, 6: 0.25}),
        (
            S.Join([S.Constant(1.0), S.Linear(1.0, 0.0, 10), S.Constant(0.01)], [5, 15]),
            {4: 1.0, 5: 1.0, 10: 0.5, 14: 0.1, 15: 0.01, 99: 0.01},
        ),
        (3.0 * S.Linear(0.0, 1.0, 2), {1: 1.5}),
        (S.Linear(0.0, 1.0, 2) * 3.0 + 1.0, {1: 2.5}),
        (1.0 + S.Constant(0.5), {7: 1.5}),
        (S.Linear(0.0, 1.0, 4) * S.Step(2, 0.5), {2: 0.25, 4: 0.25}),
        (
            S.warmup_cosine(110, 10, peak=2.0, final=0.2),
            {0: 0.0, 5: 1.0, 10: 2.0, 60: 1.1, 110: 0.2, 500: 0.2},
        ),
    ],
    ids=repr,
)
def test_schedule_values(schedule: S.Schedule, points: dict[int, float]) -> None:
    for step, expected in points.items():
        assert schedule(step) == pytest.approx(expected, rel=1e-12, abs=1e-15), step


def test_warmup_matches_interpolation_and_shifts_the_decay() -> None:
    decay = S.Cosine(50, init=3e-4, final=1e-5)
    schedule = S.Warmup(decay, 20, init=1e-6)
    steps = np.arange(0, 20)
    expected = np.interp(steps, [0, 20], [1e-6, 3e-4])
    np.testing.assert_allclose([schedule(int(t)) for t in steps], expected, rtol=1e-12)
    for t in range(20, 90):
        assert schedule(t) == decay(t - 20)


def test_wsd_linear_matches_interpolation() -> None:
    schedule = S.WarmupStableDecay(200, 30, 50, peak=2.0, init=0.1, final=0.05)
    steps = np.arange(0, 260)
    expected = np.interp(steps, [0, 30, 150, 200], [0.1, 2.0, 2.0, 0.05])
    np.testing.assert_allclose([schedule(int(t)) for t in steps], expected, rtol=1e-12)


def test_inverse_sqrt_is_vaswani() -> None:
    """Vaswani et al. (2017), eq. 3: d^-0.5 * min(t^-0.5, t * w^-1.5), for t >= 1."""
    d_model, warmup = 512, 400
    peak = d_model**-0.5 * warmup**-0.5
    schedule = S.InverseSqrt(warmup, peak=peak)
    for t in range(1, 3000, 7):
        paper = d_model**-0.5 * min(t**-0.5, t * warmup**-1.5)
        assert schedule(t) == pytest.approx(paper, rel=1e-12)


def test_one_cycle_endpoints() -> None:
    schedule = S.OneCycle(100, initial=0.004, peak=0.1, final=4e-7, pct_start=0.3)
    assert schedule(0) == pytest.approx(0.004, rel=1e-15)
    assert schedule(29) == pytest.approx(0.1, rel=1e-15)
    assert schedule(99) == pytest.approx(4e-7, rel=1e-12)
    values = [schedule(t) for t in range(101)]
    assert max(values) == pytest.approx(0.1, rel=1e-15)
    with pytest.raises(ValueError, match="step=101 is past total_steps=100"):
        schedule(101)


def test_cosine_restart_positions() -> None:
    schedule = S.CosineRestarts(3, 3)
    starts = [0, 3, 12, 39, 120]  # 3 * (3**i - 1) / 2
    for i, start in enumerate(starts):
        assert schedule.position(start) == (0, 3 * 3**i)
        assert schedule(start) == 1.0
        if start:
            assert schedule.position(start - 1) == (3 * 3 ** (i - 1) - 1, 3 * 3 ** (i - 1))


@settings(max_examples=60, deadline=None)
@given(
    total=st.integers(2, 5000),
    warmup=st.integers(0, 1000),
    peak=st.floats(1e-6, 10.0),
    final_fraction=st.floats(0.0, 1.0),
    data=st.data(),
)
def test_warmup_cosine_properties(
    total: int, warmup: int, peak: float, final_fraction: float, data: Any
) -> None:
    """Rises to ``peak`` at ``warmup_steps``, then never increases and stays >= final."""
    warmup = min(warmup, total - 1)
    final = peak * final_fraction
    schedule = S.warmup_cosine(total, warmup, peak=peak, final=final)
    assert schedule(warmup) == pytest.approx(peak, rel=1e-12)
    t = data.draw(st.integers(warmup, total + 100))
    assert final - 1e-12 * peak <= schedule(t) <= peak * (1 + 1e-12)
    assert schedule(t + 1) <= schedule(t) * (1 + 1e-12) + 1e-15
    assert schedule(t) == schedule(t)  # pure: same value when asked again


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.integers(0, 2000), min_size=1, max_size=20))
def test_value_at_is_pure_and_changes_nothing(steps: list[int]) -> None:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.5, momentum=0.9)
    scheduler = S.OneCycleLR(optimizer, max_lr=1.0, total_steps=2000)
    before = (scheduler.last_epoch, dict(optimizer.param_groups[0]))
    values = [scheduler.value_at(t) for t in steps]
    assert values == [scheduler.value_at(t) for t in reversed(steps)][::-1]
    assert (scheduler.last_epoch, dict(optimizer.param_groups[0])) == before


def test_step_lr_follows_torch_not_tinytorch() -> None:
    """After k calls of step(): torch (and descent) give lr * gamma ** (k // s); TinyTorch
    gives lr * gamma ** ((k - 1) // s), its first decay one call later."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = S.StepLR(optimizer, step_size=5, gamma=0.5)
    for k in range(1, 40):
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** (k // 5), rel=1e-15)
        tinytorch = 0.1 * 0.5 ** ((k - 1) // 5)
        assert (optimizer.param_groups[0]["lr"] == pytest.approx(tinytorch)) == (k % 5 != 0)


# ---------------------------------------------------------------------------- scheduler


def _sgd(lrs: tuple[float, ...] = (0.1, 0.01), **kwargs: Any) -> torch.optim.SGD:
    groups = [{"params": [torch.zeros(2, requires_grad=True)], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, **{"momentum": 0.9, **kwargs})


def test_relative_and_absolute_values_per_group() -> None:
    optimizer = _sgd()
    relative = S.Scheduler(optimizer, S.Linear(1.0, 0.5, 10))
    assert relative.value_at(10) == [0.05, 0.005]
    assert relative.base_lrs == [0.1, 0.01]
    absolute = S.Scheduler(_sgd(), S.Constant(0.3), relative=False)
    assert absolute.get_last_lr() == [0.3, 0.3]


def test_other_keys_are_driven() -> None:
    adam = torch.optim.Adam(
        [torch.zeros(1, requires_grad=True)], betas=(0.9, 0.999), weight_decay=0.1
    )
    beta1 = S.Scheduler(adam, S.Linear(0.85, 0.95, 10), key="betas[0]", relative=False)
    beta2 = S.Scheduler(adam, S.Constant(0.98), key="betas[1]", relative=False)
    decay = S.Scheduler(adam, S.Linear(1.0, 0.0, 10), key="weight_decay")
    for _ in range(5):
        beta1.step()
        decay.step()
    assert adam.param_groups[0]["betas"] == pytest.approx((0.9, 0.98), rel=1e-15)
    assert isinstance(adam.param_groups[0]["betas"], tuple)
    assert adam.param_groups[0]["weight_decay"] == pytest.approx(0.05, rel=1e-15)
    assert adam.param_groups[0]["lr"] == 1e-3
    assert adam.param_groups[0]["initial_weight_decay"] == 0.1
    assert beta1.get_last_value() == beta1.get_last_lr() == pytest.approx([0.9])
    assert beta2.get_last_value("betas[1]") == [0.98]
    with pytest.raises(ValueError, match="key='lr' is not scheduled"):
        beta1.value_at(0, key="lr")


def test_momentum_cycled_with_lr_on_descent_optimizers() -> None:
    model = torch.nn.Linear(3, 1)
    optimizer = descent.SGD(model, lr=0.1, momentum=0.9)
    scheduler = S.OneCycleLR(optimizer, max_lr=0.5, total_steps=10)
    assert optimizer.param_groups[0]["momentum"] == 0.95
    for _ in range(2):  # the peak is at pct_start * total_steps - 1 = 2
        model(torch.ones(4, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_value("momentum") == [optimizer.param_groups[0]["momentum"]]
    assert optimizer.param_groups[0]["momentum"] == pytest.approx(0.85, rel=1e-12)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5, rel=1e-12)


def test_tensor_lr_is_filled_in_place() -> None:
    lr = torch.tensor(0.01, dtype=torch.float64)
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=lr)
    held = optimizer.param_groups[0]["lr"]
    scheduler = S.StepLR(optimizer, step_size=1, gamma=0.5)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] is held
    assert held.item() == pytest.approx(0.005)


def test_existing_initial_lr_is_the_base_like_torch() -> None:
    optimizer = _sgd()
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = group["lr"], 123.0
    scheduler = S.ExponentialLR(optimizer, gamma=0.5)
    assert scheduler.base_lrs == [0.1, 0.01]
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.01]


def test_step_epoch_and_last_epoch_jump() -> None:
    optimizer = _sgd()
    scheduler = S.StepLR(optimizer, step_size=10)
    scheduler.step(25)
    assert scheduler.last_epoch == 25
    assert scheduler.get_last_lr() == pytest.approx([0.001, 0.0001])
    scheduler.last_epoch = 3
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.01]
    assert repr(scheduler) == "StepLR(step_size=10, gamma=0.1, last_epoch=3)"
    scheduler.step(15)
    scheduler.last_epoch = -1  # torch's "not started": nothing written, next step is 0
    assert scheduler.get_last_lr() == pytest.approx([0.01, 0.001])
    scheduler.step()
    assert (scheduler.last_epoch, scheduler.get_last_lr()) == (0, [0.1, 0.01])


def test_errors_leave_groups_and_count_unchanged() -> None:
    optimizer = _sgd()
    scheduler = S.Scheduler(optimizer, S.Lambda(lambda t: 1.0 if t < 3 else math.nan))
    scheduler.step()
    scheduler.step()
    before = ([dict(g) for g in optimizer.param_groups], scheduler.last_epoch)
    with pytest.raises(ValueError, match=r"lr=nan for param_groups\[0\] at step 3"):
        scheduler.step()
    assert ([dict(g) for g in optimizer.param_groups], scheduler.last_epoch) == before
    optimizer.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "lr": 0.5})
    with pytest.raises(ValueError, match="now has 3 param groups"):
        scheduler.step(0)
    assert ([dict(g) for g in optimizer.param_groups[:2]], scheduler.last_epoch) == before
    assert optimizer.param_groups[2]["lr"] == 0.5


def test_construction_failure_writes_nothing() -> None:
    optimizer = _sgd()
    before = [dict(g) for g in optimizer.param_groups]
    with pytest.raises(ValueError, match="at step 0"):
        S.Scheduler(optimizer, S.Lambda(lambda t: math.inf))
    assert [dict(g) for g in optimizer.param_groups] == before  # no initial_lr added either
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    before = [dict(g) for g in optimizer.param_groups]
    with pytest.raises(ValueError, match="step=7 is past total_steps=5"):
        S.Scheduler(optimizer, S.OneCycle(5, 0.1, 1.0, 0.0), last_epoch=6)
    assert [dict(g) for g in optimizer.param_groups] == before


# ---------------------------------------------------------------------------- bad input


def _adam() -> torch.optim.Adam:
    return torch.optim.Adam([torch.zeros(1, requires_grad=True)])


BAD_INPUT: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("negative step size", lambda: S.StepLR(_sgd(), step_size=-1), ValueError, "step_size=-1"),
    ("zero step size", lambda: S.Step(0), ValueError, "step_size=0"),
    ("float step size", lambda: S.StepLR(_sgd(), step_size=2.5), TypeError, "step_size"),
    (
        "cyclic step size",
        lambda: S.CyclicLR(_sgd(), 0.1, 1.0, step_size_up=-5),
        ValueError,
        "step_size_up=-5",
    ),
    ("warmup longer than total", lambda: S.warmup_cosine(100, 200), ValueError, "warmup_steps=200"),
    (
        "warmup plus decay longer than total",
        lambda: S.WarmupStableDecay(100, 60, 50),
        ValueError,
        "warmup_steps=60 plus decay_steps=50",
    ),
    (
        "milestones not increasing",
        lambda: S.MultiStepLR(_sgd(), milestones=[30, 10]),
        ValueError,
        r"milestones=\[30, 10\]",
    ),
    ("milestones repeated", lambda: S.MultiStep([5, 5]), ValueError, "milestones"),
    (
        "join boundaries",
        lambda: S.Join([S.Constant(1.0), S.Constant(2.0)], [0]),
        ValueError,
        r"boundaries\[0\]=0",
    ),
    ("join count", lambda: S.Join([S.Constant(1.0)], [3]), ValueError, "boundaries"),
    ("sequential milestones", lambda: _sequential([5, 5]), ValueError, "milestones"),
    (
        "unknown cyclic mode",
        lambda: S.CyclicLR(_sgd(), 0.1, 1.0, mode="triangle"),
        ValueError,
        "mode='triangle'",
    ),
    (
        "unknown plateau mode",
        lambda: S.ReduceLROnPlateau(_sgd(), mode="avg"),
        ValueError,
        "mode='avg'",
    ),
    (
        "unknown threshold mode",
        lambda: S.ReduceLROnPlateau(_sgd(), threshold_mode="pct"),
        ValueError,
        "threshold_mode='pct'",
    ),
    (
        "unknown anneal strategy",
        lambda: S.OneCycleLR(_sgd(), 0.1, 10, anneal_strategy="cosine"),
        ValueError,
        "anneal_strategy='cosine'",
    ),
    (
        "unknown decay shape",
        lambda: S.WarmupStableDecay(10, 1, 1, decay_shape="exp"),
        ValueError,
        "decay_shape='exp'",
    ),
    ("unknown after_end", lambda: S.Cosine(10, after_end="wrap"), ValueError, "after_end"),
    (
        "total_steps zero",
        lambda: S.OneCycleLR(_sgd(), 0.1, total_steps=0),
        ValueError,
        "total_steps=0",
    ),
    ("total_steps missing", lambda: S.OneCycleLR(_sgd(), 0.1, epochs=3), ValueError, "total_steps"),
    ("cosine total_steps", lambda: S.Cosine(0), ValueError, "total_steps=0"),
    ("T_max zero", lambda: S.CosineAnnealingLR(_sgd(), T_max=0), ValueError, "T_max=0"),
    ("T_0 zero", lambda: S.CosineAnnealingWarmRestarts(_sgd(), T_0=0), ValueError, "T_0=0"),
    (
        "T_mult zero",
        lambda: S.CosineAnnealingWarmRestarts(_sgd(), 5, T_mult=0),
        ValueError,
        "T_mult=0",
    ),
    (
        "total_iters negative",
        lambda: S.PolynomialLR(_sgd(), total_iters=-3),
        ValueError,
        "total_iters=-3",
    ),
    ("linear total_iters", lambda: S.LinearLR(_sgd(), total_iters=0), ValueError, "total_iters=0"),
    (
        "linear start factor",
        lambda: S.LinearLR(_sgd(), start_factor=0.0),
        ValueError,
        "start_factor=0.0",
    ),
    ("constant factor", lambda: S.ConstantLR(_sgd(), factor=1.5), ValueError, "factor=1.5"),
    ("plateau factor", lambda: S.ReduceLROnPlateau(_sgd(), factor=1.0), ValueError, "factor=1.0"),
    (
        "plateau patience",
        lambda: S.ReduceLROnPlateau(_sgd(), patience=-1),
        ValueError,
        "patience=-1",
    ),
    (
        "plateau min_lr list",
        lambda: S.ReduceLROnPlateau(_sgd(), min_lr=[0.1]),
        ValueError,
        "min_lr has 1 values",
    ),
    ("plateau metric", lambda: S.ReduceLROnPlateau(_sgd()).step("low"), TypeError, "metrics"),
    ("negative gamma", lambda: S.ExponentialLR(_sgd(), gamma=-0.5), ValueError, "gamma=-0.5"),
    ("nan gamma", lambda: S.StepLR(_sgd(), 3, gamma=math.nan), ValueError, "gamma=nan"),
    (
        "pct_start",
        lambda: S.OneCycleLR(_sgd(), 0.1, 10, pct_start=1.5),
        ValueError,
        "pct_start=1.5",
    ),
    (
        "zero-length phase",
        lambda: S.OneCycle(10, 0.1, 1.0, 0.0, pct_start=0.1),
        ValueError,
        "pct_start=0.1",
    ),
    (
        "per-group list length",
        lambda: S.CyclicLR(_sgd(), 0.1, [1.0, 2.0, 3.0]),
        ValueError,
        "max_lr has 3 values",
    ),
    ("lambda count", lambda: S.LambdaLR(_sgd(), [lambda t: 1.0]), ValueError, "lr_lambda"),
    (
        "schedule count",
        lambda: S.Scheduler(_sgd(), [S.Constant(1.0)] * 3),
        ValueError,
        "schedule has 3 entries",
    ),
    ("not a schedule", lambda: S.Scheduler(_sgd(), 0.5), TypeError, "schedule=0.5"),
    (
        "unknown key",
        lambda: S.Scheduler(_sgd(), S.Constant(1.0), key="betas[0]"),
        ValueError,
        "no 'betas' option",
    ),
    ("bad key", lambda: S.Scheduler(_sgd(), S.Constant(1.0), key="lr/2"), ValueError, "key='lr/2'"),
    (
        "flag option",
        lambda: S.Scheduler(_sgd(), S.Constant(1.0), key="nesterov"),
        TypeError,
        "nesterov=False, which is not a number",
    ),
    (
        "beta index",
        lambda: S.Scheduler(_adam(), S.Constant(0.9), key="betas[2]"),
        ValueError,
        "no element 2",
    ),
    (
        "no momentum",
        lambda: S.OneCycleLR(torch.optim.Adagrad([torch.zeros(1)]), 0.1, 10),
        ValueError,
        "cycle_momentum",
    ),
    ("not an optimizer", lambda: S.StepLR(object(), 3), TypeError, "optimizer=object"),
    ("negative step", lambda: S.StepLR(_sgd(), 3).step(-1), ValueError, "epoch=-1"),
    ("negative value_at", lambda: S.StepLR(_sgd(), 3).value_at(-2), ValueError, "step=-2"),
    ("float step", lambda: S.Cosine(10)(1.5), TypeError, "step=1.5"),
    ("bool step", lambda: S.Cosine(10)(True), TypeError, "step=True"),
    (
        "last_epoch without initial_lr",
        lambda: S.StepLR(_sgd(), 3, last_epoch=4),
        ValueError,
        "initial_lr",
    ),
    (
        "last_epoch below -1",
        lambda: S.StepLR(_sgd(), 3, last_epoch=-2),
        ValueError,
        "last_epoch=-2",
    ),
    ("lambda result", lambda: S.Lambda(lambda t: "x")(0), TypeError, "returned 'x'"),
    ("lambda not callable", lambda: S.Lambda(3), TypeError, "fn=3"),
    ("warmup of a number", lambda: S.Warmup(0.1, 5), TypeError, "schedule=0.1"),
    (
        "sequential of torch",
        lambda: S.SequentialLR((o := _sgd()), [torch.optim.lr_scheduler.StepLR(o, 3)], []),
        TypeError,
        "descent scheduler",
    ),
    (
        "sequential other optimizer",
        lambda: S.SequentialLR(_sgd(), [S.StepLR(_sgd(), 3)], []),
        ValueError,
        "another optimizer",
    ),
    # values that would put a negative learning rate or momentum into the optimizer
    (
        "negative eta_min",
        lambda: S.CosineAnnealingLR(_sgd(), T_max=2, eta_min=-0.1),
        ValueError,
        "CosineAnnealingLR: eta_min=-0.1 is invalid; expected a finite number >= 0",
    ),
    (
        "negative restarts eta_min",
        lambda: S.CosineAnnealingWarmRestarts(_sgd(), 5, eta_min=-1e-3),
        ValueError,
        "CosineAnnealingWarmRestarts: eta_min=-0.001",
    ),
    (
        "negative base_lr",
        lambda: S.CyclicLR(_sgd(), base_lr=-0.01, max_lr=0.1),
        ValueError,
        "CyclicLR: base_lr=-0.01",
    ),
    (
        "negative max_lr of a group",
        lambda: S.CyclicLR(_sgd(), 0.01, [0.1, -0.1]),
        ValueError,
        r"CyclicLR: max_lr\[1\]=-0.1",
    ),
    (
        "negative one-cycle max_lr",
        lambda: S.OneCycleLR(_sgd(), -0.1, 10),
        ValueError,
        "OneCycleLR: max_lr=-0.1",
    ),
    (
        "negative base_momentum",
        lambda: S.CyclicLR(_sgd(), 0.01, 0.1, base_momentum=-0.8),
        ValueError,
        "CyclicLR: base_momentum=-0.8",
    ),
    (
        "negative max_momentum of a group",
        lambda: S.OneCycleLR(_sgd(), 0.1, 10, max_momentum=[0.9, -0.95]),
        ValueError,
        r"OneCycleLR: max_momentum\[1\]=-0.95",
    ),
    (
        "nan momentum",
        lambda: S.CyclicLR(_sgd(), 0.01, 0.1, max_momentum=math.nan),
        ValueError,
        "max_momentum=nan",
    ),
    (
        "beta1 of one",
        lambda: S.OneCycleLR(_adam(), 0.1, 10, max_momentum=1.0),
        ValueError,
        "max_momentum=1.0 is invalid; expected a finite number >= 0.0 and < 1.0",
    ),
    (
        "negative lr in a group",
        lambda: S.StepLR(_sgd((0.1, -0.1)), 3),
        ValueError,
        r"base value of 'lr' in param_groups\[1\]=-0.1",
    ),
    (
        "negative lambda value",
        lambda: S.LambdaLR(_sgd(), lambda t: -1.0),
        ValueError,
        r"lr=-0.1 for param_groups\[0\] at step 0; expected a finite number >= 0",
    ),
    # lengths are whole numbers of steps, as StepLR's step_size
    (
        "fractional step_size_up",
        lambda: S.CyclicLR(_sgd(), 0.01, 0.1, step_size_up=2.5),
        TypeError,
        r"CyclicLR: step_size_up=2.5 \(type float\) is invalid; expected an integer",
    ),
    (
        "fractional step_size_down",
        lambda: S.CyclicLR(_sgd(), 0.01, 0.1, step_size_up=2, step_size_down=1.5),
        TypeError,
        "CyclicLR: step_size_down=1.5",
    ),
    (
        "fractional cyclic schedule",
        lambda: S.Cyclic(0.1, 1.0, 2.5),
        TypeError,
        "Cyclic: step_size_up=2.5",
    ),
    # user functions named by the argument that holds them
    (
        "lr_lambda not callable",
        lambda: S.LambdaLR(_sgd(), 5),
        TypeError,
        "LambdaLR: lr_lambda=5 is not callable",
    ),
    (
        "lr_lambda element not callable",
        lambda: S.LambdaLR(_sgd(), [lambda t: 1.0, "x"]),
        TypeError,
        r"LambdaLR: lr_lambda\[1\]='x' is not callable",
    ),
    (
        "lr_lambda result",
        lambda: S.LambdaLR(_sgd(), lambda t: "x"),
        TypeError,
        "LambdaLR: lr_lambda=.*<lambda> returned 'x' at step 0",
    ),
    (
        "multiplicative not callable",
        lambda: S.MultiplicativeLR(_sgd(), None),
        TypeError,
        "MultiplicativeLR: lr_lambda=None is not callable",
    ),
    (
        "multiplicative count",
        lambda: S.MultiplicativeLR(_sgd(), [lambda t: 1.0]),
        ValueError,
        "MultiplicativeLR: lr_lambda has 1 functions; expected one per param group",
    ),
    (
        "multiplicative result",
        lambda: S.MultiplicativeLR(_sgd(), lambda t: None).step(),
        TypeError,
        "MultiplicativeLR: lr_lambda=.*returned None at step 1",
    ),
    (
        "multiplicative negative",
        lambda: S.MultiplicativeLR(_sgd(), lambda t: -0.5).step(),
        ValueError,
        r"lr=-0.05 for param_groups\[0\] at step 1",
    ),
    (
        "scheduler function result",
        lambda: S.Scheduler(_sgd(), lambda t: "x"),
        TypeError,
        "Scheduler: schedule=.*returned 'x'",
    ),
    (
        "chain of torch",
        lambda: S.ChainedScheduler([torch.optim.lr_scheduler.StepLR(_sgd(), 3)]),
        TypeError,
        "torch's StepLR",
    ),
]


def _sequential(milestones: list[int]) -> Any:
    optimizer = _sgd()
    parts = [S.StepLR(optimizer, 3), S.StepLR(optimizer, 5), S.StepLR(optimizer, 7)]
    return S.SequentialLR(optimizer, parts, milestones)


@pytest.mark.parametrize(
    "make,error,message", [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT]
)
def test_bad_input_raises_clear_error(
    make: Callable[[], Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        make()


# ---------------------------------------------------------------------------- plot


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_writes_png(tmp_path: Any) -> None:
    optimizer = _sgd()
    scheduler = S.OneCycleLR(optimizer, max_lr=[0.1, 0.05], total_steps=100)
    figure = S.plot(
        {"warmup + cosine": S.warmup_cosine(100, 10), "one-cycle": scheduler},
        steps=100,
        path=tmp_path / "schedules.png",
        columns=2,
        title="schedules",
    )
    data = (tmp_path / "schedules.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert len(figure.axes) == 2  # the figure is returned, one panel each
    assert scheduler.last_epoch == 0  # plotted with value_at, not stepped
    S.plot(S.Cosine(50), 60, tmp_path / "one.png", log_scale=False)
    assert (tmp_path / "one.png").read_bytes().startswith(PNG_MAGIC)
    descent.schedules.plot([S.Step(5), S.StepLR(_sgd(), 5)], 30, tmp_path / "l.png")
    assert (tmp_path / "l.png").exists()


def test_plot_without_matplotlib(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="plot needs matplotlib"):
        S.plot(S.Cosine(10), 10, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "schedules,steps,error,message",
    [
        (42, 10, TypeError, "schedules=42"),
        ({}, 10, ValueError, "empty"),
        ([S.Cosine(5)], 0, ValueError, "steps=0"),
        ({"plateau": "not a schedule"}, 5, TypeError, "plateau="),
    ],
)
def test_plot_bad_input(
    tmp_path: Any, schedules: Any, steps: int, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        S.plot(schedules, steps, tmp_path / "bad.png")


def test_plot_refuses_reduce_on_plateau(tmp_path: Any) -> None:
    with pytest.raises(TypeError, match="ReduceLROnPlateau depends on metrics"):
        S.plot(S.ReduceLROnPlateau(_sgd()), 10, tmp_path / "bad.png")


# ---------------------------------------------------------------------------- stricter than torch


def test_negative_values_torch_writes_are_refused() -> None:
    """torch writes a negative lr into the optimizer here; descent refuses, changing nothing."""
    reference = _sgd()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_sched = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=2, eta_min=-0.1)
        for _ in range(2):
            reference.step()
            torch_sched.step()
    assert reference.param_groups[0]["lr"] == pytest.approx(-0.1)
    optimizer = _sgd()
    before = [dict(g) for g in optimizer.param_groups]
    with pytest.raises(ValueError, match=r"eta_min=-0\.1"):
        S.CosineAnnealingLR(optimizer, T_max=2, eta_min=-0.1)
    assert [dict(g) for g in optimizer.param_groups] == before

    # a chain whose torch recursion crosses zero: the decay takes the lr below eta_min,
    # then the cosine, rising again, scales the (negative) distance to eta_min up
    def chain(module: Any, opt: Any) -> Any:
        return module.ChainedScheduler(
            [
                module.ExponentialLR(opt, gamma=0.5),
                module.CosineAnnealingLR(opt, T_max=2, eta_min=0.02),
            ]
        )

    reference = _sgd()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_chain = chain(torch.optim.lr_scheduler, reference)
        for _ in range(4):
            reference.step()
            torch_chain.step()
    assert reference.param_groups[1]["lr"] == pytest.approx(-0.015)
    optimizer = _sgd()
    ours = chain(S, optimizer)
    with pytest.raises(
        ValueError,
        match=r"ChainedScheduler: the schedule gives lr=-0.015.* "
        r"for param_groups\[1\] at step 4",
    ):
        for _ in range(4):
            before = ([dict(g) for g in optimizer.param_groups], ours.last_epoch)
            optimizer.step()
            ours.step()
    assert ([dict(g) for g in optimizer.param_groups], ours.last_epoch) == before


# ---------------------------------------------------------------------------- multiplicative


@settings(max_examples=25, deadline=None)
@given(order=st.permutations(list(range(0, 700, 37)) + [255, 256, 257, 511, 512, 699]))
def test_multiplicative_is_the_left_to_right_product_in_any_order(order: list[int]) -> None:
    def factor(t: int) -> float:
        return 1.0 + math.sin(t) / 50

    schedule = S.Multiplicative(factor, init=0.3)
    products = [0.3]
    for t in range(1, 700):
        products.append(products[-1] * factor(t))
    for step in order:  # jumps back and forth, across the cached partial products
        assert schedule(step) == products[step]
    assert [schedule(t) for t in range(700)] == products


# ---------------------------------------------------------------------------- step order


def _descent_sgd() -> descent.SGD:
    return descent.SGD([torch.zeros(2, requires_grad=True)], lr=0.1, momentum=0.9)


@pytest.mark.parametrize("make_optimizer", [_sgd, _descent_sgd], ids=["torch", "descent"])
def test_stepping_the_scheduler_first_warns_like_torch(make_optimizer: Any) -> None:
    optimizer = make_optimizer()
    scheduler = S.StepLR(optimizer, step_size=2)
    with pytest.warns(
        UserWarning,
        match=r"Detected call of `StepLR.step\(\)` before "
        r"`optimizer.step\(\)`",
    ) as caught:
        scheduler.step()
    assert caught[0].filename == __file__  # points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scheduler.step()  # only the first step is checked, as in torch

    optimizer = make_optimizer()
    scheduler = S.CosineAnnealingLR(optimizer, T_max=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            optimizer.step()
            scheduler.step()
    # torch's private flags are neither read nor set, and optimizer.step is not wrapped
    assert not hasattr(optimizer, "_opt_called")
    assert "step" not in vars(optimizer)
    assert not hasattr(optimizer.step, "_wrapped_by_lr_sched")


def test_step_order_is_watched_per_scheduler_through_one_hook() -> None:
    optimizer = _sgd()
    optimizer.step()  # before any scheduler: not a step the schedule could use
    first = S.ExponentialLR(optimizer, gamma=0.9)
    second = S.Scheduler(optimizer, S.Constant(0.5), key="momentum", relative=False)
    hooks = len(optimizer._optimizer_step_post_hooks)
    third = S.LinearLR(optimizer, total_iters=4)
    assert len(optimizer._optimizer_step_post_hooks) == hooks  # one hook per optimizer
    with pytest.warns(UserWarning, match="ExponentialLR.step"):
        first.step()
    optimizer.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second.step()
        third.step()
    with pytest.warns(UserWarning, match="MultiplicativeLR.step"):  # built after that step
        S.MultiplicativeLR(optimizer, lambda t: 0.9).step()


def test_torch_sequential_start_is_not_a_first_step() -> None:
    """torch's SequentialLR steps the first scheduler it holds when it starts; that is not
    the user's step and does not warn."""
    optimizer = _sgd()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scheduler = torch.optim.lr_scheduler.SequentialLR(
            optimizer, [S.LinearLR(optimizer, total_iters=3), S.StepLR(optimizer, 2)], [3]
        )
        optimizer.step()
        scheduler.step()


# ---------------------------------------------------------------------------- examples


@pytest.mark.parametrize(
    "name",
    [
        "descent.schedules",
        "descent.schedules.functions",
        "descent.schedules.scheduler",
        "descent.schedules.lr_scheduler",
        "descent.schedules.plateau",
    ],
)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the examples step in the right order
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 and result.failed == 0
