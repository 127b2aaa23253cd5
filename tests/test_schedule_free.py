"""Schedule-Free SGD, AdamW and RAdam: the train/eval switch, checkpoints in either mode,
and the authors' other implementations (the per-step parity runs from the table)."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import pytest
import torch
from torch import nn

import descent
from descent.optim.schedule_free import ModeSwitching

schedulefree = pytest.importorskip("schedulefree")


def quietly(optimizer: Any, mode: str) -> None:
    """The package prints when it switches; keep the test output clean."""
    with contextlib.redirect_stdout(io.StringIO()):
        getattr(optimizer, mode)()


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2)).double()


def train_steps(model: nn.Module, opt: Any, start: int, stop: int) -> None:
    for step in range(start, stop):
        generator = torch.Generator().manual_seed(step)
        x = torch.randn(9, 5, generator=generator, dtype=torch.float64)
        y = torch.randn(9, 2, generator=generator, dtype=torch.float64)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


CASES = [
    (
        descent.ScheduleFreeAdamW,
        "AdamWScheduleFreeReference",
        {"lr": 1e-2, "weight_decay": 0.01, "warmup_steps": 5},
    ),
    (
        descent.ScheduleFreeSGD,
        "SGDScheduleFreeReference",
        {"lr": 0.1, "momentum": 0.8, "weight_decay": 0.01},
    ),
]


@pytest.mark.parametrize(
    ("cls", "reference", "options"), CASES, ids=lambda case: getattr(case, "__name__", None)
)
def test_eval_puts_the_average_x_into_the_parameters(
    cls: type, reference: str, options: dict[str, Any]
) -> None:
    """The authors' *Reference classes keep x, y and z explicitly; descent keeps only z
    and recovers x from y and z: after eval() the parameters are their x (<= 1e-10)."""
    ours, theirs = make_model(), make_model()
    opt = cls(ours, **options)
    ref = getattr(schedulefree, reference)(theirs.parameters(), **options)
    quietly(ref, "train")
    train_steps(ours, opt, 0, 15)
    train_steps(theirs, ref, 0, 15)
    opt.eval()
    assert not opt.training
    for param, reference_param in zip(ours.parameters(), theirs.parameters(), strict=True):
        x = ref.state[reference_param]["x"]
        torch.testing.assert_close(param.detach(), x, rtol=1e-10, atol=1e-12)
        assert not torch.allclose(x, ref.state[reference_param]["y"])
    opt.train()
    assert opt.training
    for param, reference_param in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(
            param.detach(), ref.state[reference_param]["y"], rtol=1e-10, atol=1e-12
        )


@pytest.mark.parametrize(
    ("cls", "package", "options"),
    [
        (descent.ScheduleFreeAdamW, "AdamWScheduleFree", {"lr": 1e-2, "warmup_steps": 4}),
        (descent.ScheduleFreeSGD, "SGDScheduleFree", {"lr": 0.1, "weight_decay": 0.01}),
        (descent.ScheduleFreeRAdam, "RAdamScheduleFree", {"lr": 1e-2, "weight_decay": 0.01}),
    ],
    ids=lambda case: getattr(case, "__name__", case if isinstance(case, str) else None),
)
def test_the_authors_memory_efficient_classes_with_mode_switches(
    cls: type, package: str, options: dict[str, Any]
) -> None:
    """Their AdamWScheduleFree / SGDScheduleFree / RAdamScheduleFree (the same arithmetic as
    descent's, z-only), through eval/train switches: <= 1e-10."""
    ours, theirs = make_model(), make_model()
    opt = cls(ours, **options)
    ref = getattr(schedulefree, package)(theirs.parameters(), **options)
    quietly(ref, "train")
    for start in (0, 6, 12):
        train_steps(ours, opt, start, start + 6)
        train_steps(theirs, ref, start, start + 6)
        opt.eval()
        quietly(ref, "eval")
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-10, atol=1e-12)
        opt.train()
        quietly(ref, "train")


def test_a_step_in_eval_mode_is_refused_with_the_fix() -> None:
    model = make_model()
    opt = descent.ScheduleFreeAdamW(model)
    train_steps(model, opt, 0, 2)
    opt.eval()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"param_groups\[0\] is in eval mode.*opt\.train\(\)"):
        train_steps(model, opt, 2, 3)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))
    opt.eval()  # a second eval() changes nothing
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize("saved_in", ["train", "eval"])
@pytest.mark.parametrize(
    "cls",
    [descent.ScheduleFreeAdamW, descent.ScheduleFreeSGD, descent.ScheduleFreeRAdam],
    ids=lambda c: c.__name__,
)
def test_a_checkpoint_saved_in_either_mode_resumes_exactly(cls: type, saved_in: str) -> None:
    """The run that saved and the run resumed from its checkpoint (model and optimizer,
    through torch.save) end bit for bit equal."""
    model = make_model()
    opt = cls(model, lr=0.02)
    train_steps(model, opt, 0, 8)
    getattr(opt, saved_in)()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    opt.train()
    train_steps(model, opt, 8, 16)
    opt.eval()

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed_model = make_model(seed=1)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed = cls(resumed_model, lr=0.5)
    resumed.load_state_dict(checkpoint["optimizer"])
    assert resumed.training is (saved_in == "train")
    resumed.train()
    train_steps(resumed_model, resumed, 8, 16)
    resumed.eval()
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_mode_protocol_and_state_layout() -> None:
    model = make_model()
    opt = descent.ScheduleFreeAdamW(model)
    assert isinstance(opt, ModeSwitching)
    assert not isinstance(descent.AdamW(model), ModeSwitching)
    assert opt.training and opt.train() is opt
    opt.add_param_group({"params": [("extra", nn.Parameter(torch.zeros(2, dtype=torch.float64)))]})
    assert opt.param_groups[1]["train_mode"] is True
    train_steps(model, opt, 0, 1)
    state = opt.state[next(model.parameters())]
    assert set(state) == {"step", "lr_max", "weight_sum", "z", "exp_avg_sq"}
    assert state["weight_sum"].dtype == torch.float64
    opt.param_groups[1]["train_mode"] = False
    with pytest.raises(ValueError, match=r"param groups are in different modes"):
        _ = opt.training
    with pytest.raises(TypeError, match=r"mode=1 has type int"):
        opt.train(1)


def test_the_average_weights_use_the_largest_learning_rate_so_far() -> None:
    """c_{t+1} = w_t / sum w with w_t = t^r (max lr)^p, in double precision: with a
    constant lr and r = 0 the average is uniform (c = 1/t); a warm-up weighs late steps."""
    param = nn.Parameter(torch.zeros(3, dtype=torch.float32))
    opt = descent.ScheduleFreeSGD([param], lr=0.5, warmup_steps=4)
    sums = []
    for _ in range(6):
        param.grad = torch.ones(3)
        opt.step()
        sums.append(float(opt.state[param]["weight_sum"]))
    lrs = [0.5 * min(1.0, t / 4) for t in range(1, 7)]
    expected = [sum(lr**2 for lr in lrs[:t]) for t in range(1, 7)]
    assert sums == pytest.approx(expected, rel=1e-15)


def test_deepcopy_keeps_the_mode() -> None:
    model = make_model()
    opt = descent.ScheduleFreeSGD(model, lr=0.1)
    train_steps(model, opt, 0, 3)
    opt.eval()
    copied = copy.deepcopy(opt)
    assert not copied.training


def test_eval_and_train_read_z_as_it_is_stored() -> None:
    """With bfloat16 state (z kept in bfloat16 for float32 parameters), eval() puts
    x = (y - (1 - beta) z) / beta into the parameters, from z as stored, and train()
    brings y back (to float32 rounding)."""
    torch.manual_seed(0)
    param = nn.Parameter(torch.randn(70, 80))
    opt = descent.ScheduleFreeAdamW([param], lr=1e-2, betas=(0.9, 0.999), state_dtype="bf16")
    for _ in range(3):
        param.grad = torch.randn(70, 80)
        opt.step()
    z = opt.state[param]["z"]
    assert z.dtype == torch.bfloat16
    y = param.detach().clone()
    opt.eval()
    expected = (y - 0.1 * z.float()) / 0.9
    torch.testing.assert_close(param.detach(), expected, rtol=1e-6, atol=1e-6)
    opt.train()
    torch.testing.assert_close(param.detach(), y, rtol=1e-6, atol=1e-6)


def test_a_state_dict_without_the_mode_loads_in_train_mode() -> None:
    """A saved group without ``train_mode`` (the optimizer was in train mode) loads in
    train mode, and the run continues as the uninterrupted one."""
    model, resumed_model = make_model(), make_model()
    opt = descent.ScheduleFreeAdamW(model, lr=1e-2)
    train_steps(model, opt, 0, 3)
    saved = copy.deepcopy(opt.state_dict())
    for group in saved["param_groups"]:
        del group["train_mode"]
    resumed_model.load_state_dict(model.state_dict())
    resumed = descent.ScheduleFreeAdamW(resumed_model, lr=1e-2)
    resumed.load_state_dict(saved)
    assert resumed.training
    train_steps(model, opt, 3, 6)
    train_steps(resumed_model, resumed, 3, 6)
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)
