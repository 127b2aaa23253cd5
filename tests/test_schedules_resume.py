"""Save and resume: every scheduler, a random step, every order of building and loading.

The uninterrupted run records every driven value (lr, momentum, betas[0], weight_decay)
of every group at every step. The interrupted run stops at a random step k, saves the
optimizer's and the scheduler's state dicts through ``torch.save`` and
``torch.load(weights_only=True)`` (so no function can hide in them), builds a new
optimizer and scheduler from code, restores them in one of several orders, and runs on:
its values must equal the uninterrupted ones exactly, from step k to the end.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim import lr_scheduler as torch_sched

from descent import schedules as S

# These tests step schedulers without an optimizer step on purpose (values, not the call
# order); the step-order warning has its own tests in test_schedules.py.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")

STEPS = 120
LRS = (0.1, 0.03)


def new_optimizer(kind: str = "sgd") -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.ones(2, dtype=torch.float64)) for _ in LRS]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, LRS, strict=True)]
    if kind == "adam":
        return torch.optim.AdamW(groups, lr=0.1, weight_decay=0.01)
    return torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-4)


def _poly_decay(t: int) -> float:
    return (1 - min(t, 100) / 100) ** 2 + 0.01


def _wobble(t: int) -> float:
    return 1.0 + 0.05 * math.sin(t) - 0.01


Factory = Callable[[Any], Any]

# (id, optimizer kind, factory building the scheduler on an optimizer)
ENTRIES: list[tuple[str, str, Factory]] = [
    ("StepLR", "sgd", lambda o: S.StepLR(o, step_size=7, gamma=0.5)),
    ("MultiStepLR", "sgd", lambda o: S.MultiStepLR(o, milestones=[10, 40, 90], gamma=0.3)),
    ("ConstantLR", "sgd", lambda o: S.ConstantLR(o, factor=0.2, total_iters=30)),
    ("LinearLR", "sgd", lambda o: S.LinearLR(o, start_factor=0.1, total_iters=50)),
    ("ExponentialLR", "sgd", lambda o: S.ExponentialLR(o, gamma=0.97)),
    ("PolynomialLR", "sgd", lambda o: S.PolynomialLR(o, total_iters=80, power=2.0)),
    ("CosineAnnealingLR", "sgd", lambda o: S.CosineAnnealingLR(o, T_max=50, eta_min=1e-4)),
    (
        "CosineAnnealingWarmRestarts",
        "sgd",
        lambda o: S.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2, eta_min=1e-4),
    ),
    (
        "CyclicLR",
        "sgd",
        lambda o: S.CyclicLR(
            o, base_lr=[0.01, 0.001], max_lr=0.1, step_size_up=9, mode="triangular2"
        ),
    ),
    (
        "CyclicLR-adam",
        "adam",
        lambda o: S.CyclicLR(
            o, base_lr=0.01, max_lr=[0.1, 0.2], step_size_up=9, mode="exp_range", gamma=0.99
        ),
    ),
    ("OneCycleLR", "sgd", lambda o: S.OneCycleLR(o, max_lr=[0.1, 0.2], total_steps=STEPS)),
    (
        "OneCycleLR-adam",
        "adam",
        lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=STEPS, three_phase=True),
    ),
    ("LambdaLR", "sgd", lambda o: S.LambdaLR(o, lr_lambda=_poly_decay)),
    (
        "LambdaLR-lambda",
        "sgd",
        lambda o: S.LambdaLR(o, lr_lambda=[lambda t: 0.99**t, lambda t: 1 / (1 + t)]),
    ),
    (
        "SequentialLR",
        "sgd",
        lambda o: S.SequentialLR(
            o,
            [S.LinearLR(o, start_factor=0.01, total_iters=20), S.CosineAnnealingLR(o, T_max=100)],
            milestones=[20],
        ),
    ),
    ("Scheduler-Constant", "sgd", lambda o: S.Scheduler(o, S.Constant(0.5))),
    ("Scheduler-Step", "sgd", lambda o: S.Scheduler(o, S.Step(10, 0.5))),
    ("Scheduler-MultiStep", "sgd", lambda o: S.Scheduler(o, S.MultiStep([5, 50]))),
    ("Scheduler-Exponential", "sgd", lambda o: S.Scheduler(o, S.Exponential(0.98))),
    ("Scheduler-Linear", "sgd", lambda o: S.Scheduler(o, S.Linear(1.0, 0.1, 60))),
    ("Scheduler-Polynomial", "sgd", lambda o: S.Scheduler(o, S.Polynomial(90, 3.0, final=0.1))),
    ("Scheduler-Cosine", "sgd", lambda o: S.Scheduler(o, S.Cosine(70, final=0.05))),
    ("Scheduler-CosineRestarts", "sgd", lambda o: S.Scheduler(o, S.CosineRestarts(4, 3))),
    ("Scheduler-warmup_cosine", "sgd", lambda o: S.Scheduler(o, S.warmup_cosine(100, 10))),
    ("Scheduler-OneCycle", "sgd", lambda o: S.Scheduler(o, S.OneCycle(STEPS, 0.04, 1.0, 1e-4))),
    ("Scheduler-Cyclic", "sgd", lambda o: S.Scheduler(o, S.Cyclic(0.1, 1.0, 6, 11))),
    ("Scheduler-WSD-linear", "sgd", lambda o: S.Scheduler(o, S.WarmupStableDecay(100, 10, 30))),
    (
        "Scheduler-WSD-1-sqrt",
        "sgd",
        lambda o: S.Scheduler(o, S.WarmupStableDecay(100, 10, 30, decay_shape="1-sqrt")),
    ),
    (
        "Scheduler-WSD-cosine",
        "sgd",
        lambda o: S.Scheduler(o, S.WarmupStableDecay(100, 0, 50, decay_shape="cosine")),
    ),
    ("Scheduler-InverseSqrt", "sgd", lambda o: S.Scheduler(o, S.InverseSqrt(15))),
    ("Scheduler-function", "sgd", lambda o: S.Scheduler(o, lambda t: 1 / math.sqrt(1 + t))),
    (
        "Scheduler-Join",
        "sgd",
        lambda o: S.Scheduler(
            o, S.Join([S.Linear(0.0, 1.0, 10), S.Constant(1.0), S.Exponential(0.9)], [10, 60])
        ),
    ),
    ("Scheduler-scaled-offset", "sgd", lambda o: S.Scheduler(o, 0.5 * S.Cosine(100) + 0.1)),
    (
        "Scheduler-product",
        "sgd",
        lambda o: S.Scheduler(o, S.Linear(0.1, 1.0, 10) * S.Exponential(0.99)),
    ),
    ("Scheduler-per-group", "sgd", lambda o: S.Scheduler(o, [S.Cosine(50), S.Step(5)])),
    (
        "Scheduler-absolute",
        "sgd",
        lambda o: S.Scheduler(o, S.Cosine(80, init=0.2, final=0.01), relative=False),
    ),
    (
        "Scheduler-momentum",
        "sgd",
        lambda o: S.Scheduler(o, S.Linear(0.95, 0.85, 50), key="momentum", relative=False),
    ),
    (
        "Scheduler-betas0",
        "adam",
        lambda o: S.Scheduler(
            o, S.Cosine(60, init=0.95, final=0.85), key="betas[0]", relative=False
        ),
    ),
    (
        "Scheduler-betas1",
        "adam",
        lambda o: S.Scheduler(o, S.Linear(0.99, 0.999, 40), key="betas[1]", relative=False),
    ),
    (
        "Scheduler-weight_decay",
        "adam",
        lambda o: S.Scheduler(o, S.Cosine(100, final=0.1), key="weight_decay"),
    ),
    ("MultiplicativeLR", "sgd", lambda o: S.MultiplicativeLR(o, lr_lambda=_wobble)),
    (
        "MultiplicativeLR-per-group",
        "sgd",
        lambda o: S.MultiplicativeLR(o, lr_lambda=[_wobble, lambda t: 0.97]),
    ),
    (
        "ChainedScheduler",
        "sgd",
        lambda o: S.ChainedScheduler(
            [S.ConstantLR(o, factor=0.1, total_iters=20), S.ExponentialLR(o, gamma=0.97)]
        ),
    ),
    (
        "ChainedScheduler-cosine-floor",
        "sgd",
        lambda o: S.ChainedScheduler(
            [
                S.LinearLR(o, start_factor=0.05, total_iters=15),
                S.CosineAnnealingLR(o, T_max=30, eta_min=1e-4),
                S.MultiplicativeLR(o, _wobble),
            ]
        ),
    ),
    (
        "ChainedScheduler-cyclic-momentum",
        "adam",
        lambda o: S.ChainedScheduler(
            [
                S.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=9),
                S.ExponentialLR(o, gamma=0.99),
            ]
        ),
    ),
    (
        "ChainedScheduler-sequential",
        "sgd",
        lambda o: S.ChainedScheduler(
            [
                S.SequentialLR(
                    o,
                    [
                        S.LinearLR(o, start_factor=0.1, total_iters=10),
                        S.CosineAnnealingLR(o, T_max=50, eta_min=1e-3),
                    ],
                    milestones=[10],
                ),
                S.StepLR(o, step_size=25, gamma=0.5),
            ]
        ),
    ),
]

ORDERS = [
    "build-both-then-load-both",
    "load-optimizer-then-build-scheduler",
    "load-scheduler-before-optimizer",
    "count-only",
]


def driven(optimizer: torch.optim.Optimizer) -> list[Any]:
    """Every option a scheduler may drive, in every group."""
    return [
        (g["lr"], g.get("momentum"), tuple(g.get("betas", ())), g["weight_decay"])
        for g in optimizer.param_groups
    ]


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def uninterrupted(kind: str, factory: Factory) -> list[Any]:
    optimizer = new_optimizer(kind)
    scheduler = factory(optimizer)
    trace = [driven(optimizer)]
    for _ in range(STEPS):
        optimizer.step()
        scheduler.step()
        trace.append(driven(optimizer))
    return trace


def resumed(kind: str, factory: Factory, stop: int, order: str) -> list[Any]:
    optimizer = new_optimizer(kind)
    scheduler = factory(optimizer)
    for _ in range(stop):
        optimizer.step()
        scheduler.step()
    opt_state = roundtrip(optimizer.state_dict())
    sched_state = roundtrip(scheduler.state_dict())

    optimizer = new_optimizer(kind)
    if order == "build-both-then-load-both":
        scheduler = factory(optimizer)
        optimizer.load_state_dict(opt_state)
        scheduler.load_state_dict(sched_state)
    elif order == "load-optimizer-then-build-scheduler":
        optimizer.load_state_dict(opt_state)
        scheduler = factory(optimizer)
        scheduler.load_state_dict(sched_state)
    elif order == "load-scheduler-before-optimizer":
        scheduler = factory(optimizer)
        scheduler.load_state_dict(sched_state)
        optimizer.load_state_dict(opt_state)
    else:  # the optimizer's groups carry initial_* entries; set only the count
        optimizer.load_state_dict(opt_state)
        scheduler = factory(optimizer)
        scheduler.last_epoch = stop
    trace = [driven(optimizer)]
    for _ in range(stop, STEPS):
        optimizer.step()
        scheduler.step()
        trace.append(driven(optimizer))
    return trace


_UNINTERRUPTED: dict[str, list[Any]] = {}


@pytest.mark.parametrize("name,kind,factory", ENTRIES, ids=[e[0] for e in ENTRIES])
@settings(max_examples=6, deadline=None)
@given(stop=st.integers(0, STEPS), order=st.sampled_from(ORDERS))
def test_resume_at_random_step_reproduces_run(
    name: str, kind: str, factory: Factory, stop: int, order: str
) -> None:
    if name not in _UNINTERRUPTED:
        _UNINTERRUPTED[name] = uninterrupted(kind, factory)
    expected = _UNINTERRUPTED[name]
    assert resumed(kind, factory, stop, order) == expected[stop:]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(
    "name,kind,factory",
    [ENTRIES[6], ENTRIES[10], ENTRIES[13], ENTRIES[37]],
    ids=[ENTRIES[i][0] for i in (6, 10, 13, 37)],
)
def test_every_order_at_a_mid_step(name: str, kind: str, factory: Factory, order: str) -> None:
    """Each order explicitly (hypothesis samples them above), at a step where values move."""
    expected = uninterrupted(kind, factory)
    assert resumed(kind, factory, 37, order) == expected[37:]
    assert expected[37] != expected[0]


def test_torch_style_last_epoch_argument_resumes() -> None:
    """``last_epoch=k`` on construction (torch's way) continues at step k + 1, as in torch."""
    optimizer = new_optimizer()
    scheduler = S.ExponentialLR(optimizer, gamma=0.9)
    for _ in range(10):
        scheduler.step()
    state = roundtrip(optimizer.state_dict())
    restored_opt = new_optimizer()
    restored_opt.load_state_dict(state)
    restored = S.ExponentialLR(restored_opt, gamma=0.9, last_epoch=9)
    assert restored.last_epoch == 10
    assert [g["lr"] for g in restored_opt.param_groups] == [g["lr"] for g in optimizer.param_groups]
    # torch's recursive ExponentialLR keeps the loaded lr here too ...
    torch_opt = new_optimizer()
    torch_opt.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_sched.ExponentialLR(torch_opt, gamma=0.9, last_epoch=9)
    assert [g["lr"] for g in torch_opt.param_groups] == pytest.approx(
        [0.1 * 0.9**10, 0.03 * 0.9**10], rel=1e-12
    )
    # ... but when only the count is restored (a fresh optimizer, initial_lr set by
    # hand), torch keeps the fresh lr while descent writes the lr of step 10.
    fresh_torch, fresh_ours = new_optimizer(), new_optimizer()
    for group in fresh_torch.param_groups + fresh_ours.param_groups:
        group["initial_lr"] = group["lr"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_sched.ExponentialLR(fresh_torch, gamma=0.9, last_epoch=9)
    S.ExponentialLR(fresh_ours, gamma=0.9, last_epoch=9)
    assert [g["lr"] for g in fresh_torch.param_groups] == list(LRS)
    assert [g["lr"] for g in fresh_ours.param_groups] == pytest.approx(
        [0.1 * 0.9**10, 0.03 * 0.9**10], rel=1e-12
    )


def test_lambda_scheduler_state_holds_no_function() -> None:
    """The README recipe: rebuild the function from code, load the count and base values."""
    optimizer = new_optimizer()
    scheduler = S.LambdaLR(optimizer, lr_lambda=lambda t: 0.95**t)
    for _ in range(25):
        scheduler.step()
    state = scheduler.state_dict()
    assert set(state) == {"descent", "last_epoch", "base_values", "config"}
    assert state["config"] == {
        "lr_lambda": ["Lambda(fn=test_lambda_scheduler_state_holds_no_function.<locals>.<lambda>)"]
        * 2
    }
    loaded = roundtrip(state)
    again = S.LambdaLR(new_optimizer(), lr_lambda=lambda t: 0.95**t)
    again.load_state_dict(loaded)
    assert again.get_last_lr() == pytest.approx([0.1 * 0.95**25, 0.03 * 0.95**25], rel=1e-14)
    named = S.LambdaLR(new_optimizer(), lr_lambda=_poly_decay)
    with pytest.raises(ValueError, match="lr_lambda"):
        named.load_state_dict(loaded)


def _plateau_metrics(count: int) -> list[float]:
    return [1.0 / (1 + t // 9) + 0.01 * ((t * 7919) % 13) for t in range(count)]


@settings(max_examples=15, deadline=None)
@given(stop=st.integers(0, 80), order=st.sampled_from(ORDERS[:3]))
def test_reduce_on_plateau_resume(stop: int, order: str) -> None:
    metrics = _plateau_metrics(80)

    def build(optimizer: Any) -> S.ReduceLROnPlateau:
        return S.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=2, cooldown=1, min_lr=[1e-3, 1e-4]
        )

    def state_of(optimizer: Any, scheduler: S.ReduceLROnPlateau) -> tuple:
        return (
            [g["lr"] for g in optimizer.param_groups],
            scheduler.best,
            scheduler.num_bad_epochs,
            scheduler.cooldown_counter,
            scheduler.last_epoch,
        )

    optimizer = new_optimizer()
    scheduler = build(optimizer)
    expected = []
    for metric in metrics:
        scheduler.step(metric)
        expected.append(state_of(optimizer, scheduler))
    assert expected[-1][0] != list(LRS)

    optimizer = new_optimizer()
    scheduler = build(optimizer)
    for metric in metrics[:stop]:
        scheduler.step(metric)
    opt_state, sched_state = (roundtrip(optimizer.state_dict()), roundtrip(scheduler.state_dict()))
    optimizer = new_optimizer()
    if order == "load-optimizer-then-build-scheduler":
        optimizer.load_state_dict(opt_state)
        scheduler = build(optimizer)
        scheduler.load_state_dict(sched_state)
    else:
        scheduler = build(optimizer)
        if order == "build-both-then-load-both":
            optimizer.load_state_dict(opt_state)
            scheduler.load_state_dict(sched_state)
        else:
            scheduler.load_state_dict(sched_state)
            optimizer.load_state_dict(opt_state)
    actual = []
    for metric in metrics[stop:]:
        scheduler.step(metric)
        actual.append(state_of(optimizer, scheduler))
    assert actual == expected[stop:]


def test_reduce_on_plateau_loads_torch_state() -> None:
    torch_opt = new_optimizer()
    reference = torch_sched.ReduceLROnPlateau(torch_opt, patience=1, factor=0.5)
    for metric in [1.0, 1.0, 1.0, 1.0, 0.5]:
        reference.step(metric)
    optimizer = new_optimizer()
    ours = S.ReduceLROnPlateau(optimizer, patience=1, factor=0.5)
    ours.load_state_dict(reference.state_dict())
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in torch_opt.param_groups]
    assert (ours.best, ours.num_bad_epochs) == (reference.best, reference.num_bad_epochs)
    with pytest.raises(ValueError, match="patience"):
        S.ReduceLROnPlateau(new_optimizer(), patience=3).load_state_dict(reference.state_dict())


# ---------------------------------------------------------------------------- validation


def _saved(step: int = 5) -> tuple[torch.optim.Optimizer, S.CosineAnnealingLR, dict]:
    optimizer = new_optimizer()
    scheduler = S.CosineAnnealingLR(optimizer, T_max=20)
    for _ in range(step):
        scheduler.step()
    return optimizer, scheduler, scheduler.state_dict()


def _corrupt(change: Callable[[dict], None]) -> dict:
    state = _saved()[2]
    change(state)
    return state


BAD_STATES = [
    (lambda s: s.update(last_epoch=-3), "last_epoch"),
    (lambda s: s.update(last_epoch=2.5), "last_epoch"),
    (lambda s: s.pop("base_values"), "base_values"),
    (lambda s: s.update(extra=1), "extra"),
    (lambda s: s["descent"].update(scheduler="StepLR"), "StepLR"),
    (lambda s: s["descent"].update(format_version=99), "format_version"),
    (lambda s: s["base_values"].update(lr=[0.1]), "one per param group"),
    (lambda s: s["base_values"].update(lr=[0.1, float("nan")]), r"base_values\['lr'\]\[1\]"),
    (lambda s: s.update(base_values={"momentum": [0.9, 0.9]}), "base_values"),
    (lambda s: s["config"].update(T_max=30), "T_max"),
    (lambda s: s["config"].update(eta_min=0.5), "eta_min"),
]


@pytest.mark.parametrize("change,message", BAD_STATES, ids=[m for _, m in BAD_STATES])
def test_load_state_dict_rejects_bad_state_and_changes_nothing(
    change: Callable[[dict], None], message: str
) -> None:
    optimizer, scheduler, _ = _saved(step=3)
    before = (scheduler.state_dict(), [dict(g) for g in optimizer.param_groups])
    with pytest.raises((ValueError, TypeError), match=message):
        scheduler.load_state_dict(_corrupt(change))
    assert (scheduler.state_dict(), [dict(g) for g in optimizer.param_groups]) == before


def test_load_state_dict_rejects_non_dict() -> None:
    _, scheduler, _ = _saved()
    with pytest.raises(TypeError, match="expected a dict"):
        scheduler.load_state_dict([1, 2])


def test_reduce_on_plateau_rejects_bad_state() -> None:
    optimizer = new_optimizer()
    scheduler = S.ReduceLROnPlateau(optimizer)
    state = scheduler.state_dict()
    for key, value, message in [
        ("lrs", [0.1], "one learning rate per param group"),
        ("best", float("nan"), "best"),
        ("num_bad_epochs", -1, "num_bad_epochs"),
        ("config", {**state["config"], "factor": 0.5}, "factor"),
    ]:
        bad = {**state, key: value}
        with pytest.raises(ValueError, match=message):
            scheduler.load_state_dict(bad)
        assert scheduler.state_dict() == state
        assert [g["lr"] for g in optimizer.param_groups] == list(LRS)
