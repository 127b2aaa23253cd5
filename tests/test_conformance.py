"""Conformance: what torch.optim's own test suite expects of an optimizer, for every
optimizer in descent's registry.

Every class :func:`descent.optim.registry.algorithms` lists is driven through the same
checks, so an algorithm added later is covered without touching this file: state dict
round trips (older torch versions' included), hooks, copying and pickling, closures,
``maximize``, complex parameters, tensor learning rates of every shape torch accepts,
``zero_grad``, ``add_param_group``, missing and empty gradients, low and double
precision, and torch's LR schedulers. How to drive a class (a closure for LBFGS,
matrices for Muon, sparse gradients for SparseAdam) comes from its row in the
optimizer table when it has one. References are independent of the code under test:
the same optimizer run without the interruption, torch's own schedulers on torch's
SGD, a real-valued twin of a complex problem, the negated objective.
"""

from __future__ import annotations

import copy
import inspect
import io
import pickle
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from descent import engine
from descent.optim.base import FLAGS_FILLED_ON_LOAD
from descent.optim.registry import algorithms
from optim_table import BY_NAME, OptimizerInfo

ENGINE_MODES = ("per_tensor", "foreach", "auto")


def _needs_closure(cls: type) -> bool:
    closure = inspect.signature(cls.step).parameters.get("closure")
    return closure is not None and closure.default is inspect.Parameter.empty


def subjects() -> list[OptimizerInfo]:
    """Every registered optimizer, with its table row (or a default one)."""
    return [
        BY_NAME.get(name) or OptimizerInfo(cls, cls, [{}], closure=_needs_closure(cls))
        for name, cls in algorithms().items()
    ]


SUBJECTS = subjects()


def ids(info: OptimizerInfo) -> str:
    return info.name


def config(info: OptimizerInfo) -> dict[str, Any]:
    return dict(info.configs[0])


def lr_of(info: OptimizerInfo) -> float:
    options = config(info)
    return float(options["lr"] if "lr" in options else info.cls.hyperparameters["lr"].default)


def make_params(
    info: OptimizerInfo, dtype: torch.dtype = torch.float64, seed: int = 0
) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [info.shape(3, 4), info.shape(4), info.shape(2, 3, 2)]
    return [
        nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype))
        for shape in shapes
    ]


def targets(params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    """This step's target of each parameter (a complex one's is its real pairs' target)."""
    generator = torch.Generator().manual_seed(100 + step)
    found = []
    for p in params:
        if p.is_complex():
            pairs = torch.randn((*p.shape, 2), generator=generator, dtype=torch.float64)
            found.append(torch.view_as_complex(pairs).to(p.dtype))
        else:
            found.append(torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype))
    return found


def computer(
    info: OptimizerInfo, params: list[torch.Tensor], step: int, sign: float = 1.0
) -> Callable[[], torch.Tensor]:
    """A closure: gradients of ``sign`` times a quadratic loss, in the layout the
    optimizer takes; returns the loss."""

    def compute() -> torch.Tensor:
        with torch.enable_grad():
            for p in params:
                p.grad = None
            loss = sign * sum(
                _real(p - t).square().sum()
                for p, t in zip(params, targets(params, step), strict=True)
            )
            loss.backward()
        for p in params:
            p.grad = info.gradient(p.grad)
        return loss.detach()

    return compute


def _real(tensor: torch.Tensor) -> torch.Tensor:
    """A complex tensor's real pairs (so that a complex problem and its real twin compute
    the same numbers in the same order)."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def run(
    info: OptimizerInfo,
    opt: torch.optim.Optimizer,
    params: list[torch.Tensor],
    steps: range,
    sign: float = 1.0,
) -> None:
    for step in steps:
        info.step(opt, computer(info, params, step, sign))


def moving(info: OptimizerInfo, count: int) -> range:
    """``count`` steps, or as many as the optimizer takes before its parameters first
    move (ADOPT and SOAP only set up their state at the first step)."""
    return range(max(count, info.first_update_step))


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x.detach(), y.detach()) for x, y in zip(a, b, strict=True))


def clone(params: list[torch.Tensor]) -> list[nn.Parameter]:
    return [nn.Parameter(p.detach().clone()) for p in params]


def state_values(opt: torch.optim.Optimizer) -> list[Any]:
    """Every value of the optimizer's state, in order, lists flattened."""
    values: list[Any] = []
    for entry in opt.state_dict()["state"].values():
        for key in sorted(entry):
            value = entry[key]
            values.extend(value if isinstance(value, list) else [value])
    return values


def assert_same_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    for x, y in zip(state_values(a), state_values(b), strict=True):
        if torch.is_tensor(x):
            assert torch.equal(x, torch.as_tensor(y).to(x.dtype))
        else:
            assert x == y or float(x) == float(y)


def saved(state_dict: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ---------------------------------------------------------------------- state dicts


@pytest.mark.parametrize("info", SUBJECTS, ids=ids)
def test_state_dict_round_trip_resumes_exactly(info: OptimizerInfo) -> None:
    params = make_params(info)
    opt = info.cls(params, **config(info))
    run(info, opt, params, range(3))
    assert saved(opt.state_dict()).keys() == opt.state_dict().keys()
    copies = clone(params)
    resumed = info.cls(copies, **{**config(info), "lr": 0.5 * lr_of(info)})
    resumed.load_state_dict(saved(opt.state_dict()))
    assert resumed.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert_same_state(resumed, opt)
    run(info, opt, params, range(3, 6))
    run(info, resumed, copies, range(3, 6))
    assert same(params, copies)
    assert_same_state(resumed, opt)


@pytest.mark.parametrize("info", SUBJECTS, ids=ids)
def test_state_dict_of_an_older_torch_version_loads(info: OptimizerInfo) -> None:
    """Older torch versions wrote groups without the flags added since, and a
    ``step`` that was a Python number; loading fills the flags with the defaults."""
    params = make_params(info)
    opt = info.cls(params, **config(info))
    run(info, opt, params, range(2))
    old = copy.deepcopy(opt.state_dict())
    del old["descent"]
    dropped = set()
    for group in old["param_groups"]:
        dropped |= set(group) & FLAGS_FILLED_ON_LOAD
        for flag in FLAGS_FILLED_ON_LOAD:
            group.pop(flag, None)
    for entry in old["state"].values():
        if torch.is_tensor(entry.get("step")):
            entry["step"] = float(entry["step"])
    copies = clone(params)
    resumed = info.cls(copies, **config(info))
    resumed.load_state_dict(old)
    assert dropped
    for saved_group, group in zip(opt.param_groups, resumed.param_groups, strict=True):
        for name in dropped & set(saved_group):
            # the configuration leaves the flags at their defaults: the rule's (a group of
            # a router such as MuonAdamW has the options of the rule it goes to)
            assert group[name] == saved_group[name]
            if name in info.cls.hyperparameters:
                assert group[name] == info.cls.hyperparameters[name].default
    run(info, opt, params, range(2, 4))
    run(info, resumed, copies, range(2, 4))
    assert same(params, copies)

    without_lr = copy.deepcopy(old)
    del without_lr["param_groups"][0]["lr"]
    before = copy.deepcopy(resumed.state_dict())
    with pytest.raises(ValueError, match=r"missing hyperparameter 'lr'"):
        resumed.load_state_dict(without_lr)
    assert resumed.state_dict()["param_groups"] == before["param_groups"]


# ---------------------------------------------------------------------- hooks


@pytest.mark.parametrize("info", SUBJECTS, ids=ids)
def test_step_hooks_run_around_the_step(info: OptimizerInfo) -> None:
    params = make_params(info)
    opt = info.cls(params, **config(info))
    warm_up = range(info.first_update_step - 1)  # steps that leave the parameters alone
    run(info, opt, params, warm_up)
    calls: list[tuple[str, bool]] = []
    start = [p.detach().clone() for p in params]
    pre = opt.register_step_pre_hook(
        lambda optimizer, args, kwargs: calls.append(("pre", same(params, start)))
    )
    post = opt.register_step_post_hook(
        lambda optimizer, args, kwargs: calls.append(("post", same(params, start)))
    )
    run(info, opt, params, range(len(warm_up), len(warm_up) + 1))
    assert calls == [("pre", True), ("post", False)]
    pre.remove()
    post.remove()
    run(info, opt, params, range(len(warm_up) + 1, len(warm_up) + 2))
    assert len(calls) == 2


@pytest.mark.parametrize("info", SUBJECTS, ids=ids)
def test_state_dict_hooks(info: OptimizerInfo) -> None:
    params = make_params(info)
    opt = info.cls(params, **config(info))
    run(info, opt, params, range(1))
    order: list[str] = []
    opt.register_state_dict_pre_hook(lambda optimizer: order.append("pre"))
    opt.register_state_dict_pre_hook(lambda optimizer: order.append("first"), prepend=True)

    def mark(optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
        order.append("post")
        return {
            **state_dict,
            "param_groups": [{**g, "lr": 0.25} for g in state_dict["param_groups"]],
        }

    opt.register_state_dict_post_hook(mark)
    state_dict = opt.state_dict()
    assert order == ["first", "pre", "post"]
    assert state_dict["param_groups"][0]["lr"] == 0.25

    other = info.cls(clone(params), **config(info))
    seen: list[Any] = []

    def change(optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
        changed = copy.deepcopy(state_dict)
        for group in changed["param_groups"]:
            group["lr"] = 0.125
        return changed

    other.register_load_state_dict_pre_hook(change)
    other.register_load_state_dict_post_hook(
        lambda optimizer: seen.append(optimizer.param_groups[0]["lr"])
    )
    other.load_state_dict(state_dict)
    assert other.param_groups[0]["lr"] == 0.125
    assert seen == [0.125]
    assert_same_state(other, opt)


# ---------------------------------------------------------------------- copies


@pytest.mark.parametrize("info", SUBJECTS, ids=ids)
def test_deepcopy_and_pickle_continue_exactly(info: OptimizerInfo) -> None:
    params = make_params(info)
    opt = info.cls(params, **config(info))
    run(info, opt, params, range(2))
    copied_params, copied = copy.deepcopy((params, opt))
    pickled_params, unpickled = pickle.loads(pickle.dumps((params, opt)))
    for twin in (copied, unpickled):
        assert type(twin) is type(opt)
        # torch.optim's __setstate__ adds differentiable=False to the defaults of every class
        assert {k: v for k, v in twin.defaults.items() if k in opt.defaults} == opt.defaults
        public = {k for k in vars(opt) if not k.startswith("_")}
        assert public <= set(vars(twin))
    run(info, opt, params, range(2, 4))
    run(info, copied, copied_params, range(2, 4))
    run(info, unpickled, pickled_params, range(2, 4))
    assert same(params, copied_params) and same(params, pickled_params)
    assert_same_state(copied, opt)
    assert_same_state(unpickled, opt)


# ---------------------------------------------------------------------- step


@pytest.mark.parametrize("info", SUBJECTS, ids=ids)
def test_step_takes_a_closure_and_returns_its_loss(info: OptimizerInfo) -> None:
    params = make_params(info)
    opt = info.cls(params, **config(info))
    compute = computer(info, params, 0)
    modes: list[bool] = []

    def closure() -> torch.Tensor:
        modes.append(torch.is_grad_enabled())
        return compute()

    first = compute()
    loss = opt.step(closure)
    assert modes and all(modes)  # gradients are enabled inside the closure
    assert torch.equal(loss, first)  # the loss at the parameters it started from


@pytest.mark.parametrize(
    "info", [i for i in SUBJECTS if "maximize" in i.cls.hyperparameters], ids=ids
)
def test_maximize_equals_minimizing_the_negated_objective(info: OptimizerInfo) -> None:
    ours, negated = make_params(info), make_params(info)
    options = (
        {**config(info), "weight_decay": 0.1}
        if "weight_decay" in info.cls.hyperparameters
        else config(info)
    )
    maximizing = info.cls(ours, **{**options, "maximize": True})
    minimizing = info.cls(negated, **{**options, "maximize": False})
    run(info, maximizing, ours, moving(info, 4), sign=-1.0)
    run(info, minimizing, negated, moving(info, 4))
    for a, b in zip(ours, negated, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)
    assert not same(ours, make_params(info))


@pytest.mark.parametrize("info", SUBJECTS, ids=ids)
def test_complex_parameters_are_updated_as_pairs_of_reals(info: OptimizerInfo) -> None:
    real = make_params(info)
    if not info.cls.supports_complex:
        with pytest.raises((TypeError, ValueError), match=r"complex"):
            info.cls([nn.Parameter(torch.zeros(info.shape(2, 3), dtype=torch.complex128))])
        return
    pairs = [p for p in real if p.shape[-1] == 2]  # a complex view needs a last dim of 2
    complex_params = [nn.Parameter(torch.view_as_complex(p.detach().clone())) for p in pairs]
    complex_opt = info.cls(complex_params, **config(info))
    real_opt = info.cls(pairs, **config(info))
    for step in moving(info, 4):
        info.step(complex_opt, computer(info, complex_params, step))
        info.step(real_opt, computer(info, pairs, step))
    for z, pair in zip(complex_params, pairs, strict=True):
        torch.testing.assert_close(
            torch.view_as_real(z.detach()), pair.detach(), rtol=1e-13, atol=1e-14
        )
    assert not same(pairs, make_params(info)[2:])


@pytest.mark.parametrize("shape", [(), (1,), (1, 1), (1, 1, 1)], ids=str)
@pytest.mark.parametrize("info", SUBJECTS, ids=ids)
def test_tensor_learning_rate_of_every_shape_torch_accepts(
    info: OptimizerInfo, shape: tuple[int, ...]
) -> None:
    """A one-element tensor lr, of any shape, gives the float lr's results in every mode."""
    lr = lr_of(info)
    for mode in ENGINE_MODES if info.cls.elementwise else ("auto",):
        with_float, with_tensor = make_params(info), make_params(info)
        float_opt = info.cls(with_float, **{**config(info), "lr": lr})
        tensor_lr = torch.full(shape, lr, dtype=torch.float64)
        tensor_opt = info.cls(with_tensor, **{**config(info), "lr": tensor_lr})
        for opt in (float_opt, tensor_opt):
            engine.set_mode(opt, mode)
        run(info, float_opt, with_float, range(3))
        run(info, tensor_opt, with_tensor, range(3))
        assert same(with_float, with_tensor), mode
        assert tensor_opt.param_groups[0]["lr"].shape == shape


# ---------------------------------------------------------------------- groups, grads


@pytest.mark.parametrize("info", SUBJECTS, ids=ids)
def test_zero_grad_sets_none_or_zeros(info: OptimizerInfo) -> None:
    params = make_params(info)
    opt = info.cls(params, **config(info))
    computer(info, params, 0)()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.to_dense().any() for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("info", SUBJECTS, ids=ids)
def test_add_param_group_keeps_state_and_updates_the_new_parameters(info: OptimizerInfo) -> None:
    params = make_params(info)
    first, later = params[:2], params[2:]
    opt = info.cls(first, **config(info))
    if not info.groups:
        with pytest.raises(ValueError, match=r"param group"):
            opt.add_param_group({"params": later})
        return
    run(info, opt, first, range(2))
    state = copy.deepcopy(state_values(opt))
    start = [p.detach().clone() for p in later]
    lr = 0.5 * lr_of(info) if info.grouped_lrs else lr_of(info)
    count = len(opt.param_groups)
    opt.add_param_group({"params": later, "lr": lr})
    added = opt.param_groups[count:]
    assert added[0]["lr"] == lr
    assert len(added) == 1 or info.routes_groups
    # the other options are the defaults: those of a group of the same kind (a router's
    # groups differ by rule; the first groups may all have gone to the other rule)
    kinds = opt.param_groups[:count] + info.cls(clone(params), **config(info)).param_groups
    for group in added:
        twin = next(g for g in kinds if g.keys() == group.keys())
        assert {k: v for k, v in group.items() if k not in ("params", "lr")} == {
            k: v for k, v in twin.items() if k not in ("params", "lr")
        }
    for a, b in zip(state_values(opt), state, strict=True):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    run(info, opt, params, range(2, 2 + info.first_update_step))
    assert not same(later, start)


@pytest.mark.parametrize("info", SUBJECTS, ids=ids)
def test_missing_and_empty_gradients(info: OptimizerInfo) -> None:
    """A parameter without a gradient is not touched and gets no state; a parameter with
    no elements (and an empty gradient) steps without error."""
    used, unused = make_params(info)[:2]
    empty = nn.Parameter(torch.empty(info.shape(0, 3), dtype=torch.float64))
    before = unused.detach().clone()
    opt = info.cls([used, unused, empty], **config(info))
    for step in moving(info, 3):
        compute = computer(info, [used, empty], step)
        info.step(opt, compute)
    assert torch.equal(unused, before)
    assert not opt.state.get(unused)
    assert empty.shape == info.shape(0, 3)
    assert not same([used], make_params(info)[:1])


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float64], ids=["f16", "bf16", "f64"]
)
@pytest.mark.parametrize("info", SUBJECTS, ids=ids)
def test_half_and_double_precision_parameters(info: OptimizerInfo, dtype: torch.dtype) -> None:
    """Parameters of the dtype are updated, stay finite, keep their dtype (and the
    state its dtype), and follow the float64 run within the dtype's precision (an
    optimizer that iterates inside a step, LBFGS, can take another path in half
    precision, as torch's does: it must move and stay finite). A dtype the class refuses
    is refused at construction, with a TypeError naming it."""
    if dtype in info.refused_dtypes:
        with pytest.raises(TypeError, match=re.escape(str(dtype))):
            info.cls(make_params(info, dtype), **config(info))
        return
    params, reference = make_params(info, dtype), make_params(info)
    opt = info.cls(params, **config(info))
    reference_opt = info.cls(reference, **config(info))
    run(info, opt, params, moving(info, 3))
    run(info, reference_opt, reference, moving(info, 3))
    tolerance = {torch.float16: 2e-2, torch.bfloat16: 8e-2, torch.float64: 0.0}[dtype]
    for p, q in zip(params, reference, strict=True):
        assert p.dtype == dtype and torch.isfinite(p).all()
        scale = q.detach().abs().max().item()
        if not info.closure or dtype == torch.float64:
            assert (p.detach().double() - q.detach()).abs().max().item() <= tolerance * scale
    assert not same([p.double() for p in params], make_params(info))
    for entry in opt.state.values():
        for value in entry.values():
            if torch.is_tensor(value) and value.dim() > 0 and value.is_floating_point():
                assert value.dtype == dtype


# ---------------------------------------------------------------------- schedulers


def _cycles_momentum(info: OptimizerInfo) -> bool:
    """Whether OneCycleLR can cycle the momentum: a ``betas``, or a momentum in use (a
    momentum of 0 means no momentum state, in descent as in torch)."""
    if "betas" in info.cls.hyperparameters:
        return True
    momentum = info.cls.hyperparameters.get("momentum")
    return momentum is not None and config(info).get("momentum", momentum.default) > 0


SCHEDULERS: dict[str, Callable[[Any, OptimizerInfo], Any]] = {
    "StepLR": lambda opt, info: lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
    "MultiStepLR": lambda opt, info: lr_scheduler.MultiStepLR(opt, [1, 3], gamma=0.3),
    "ExponentialLR": lambda opt, info: lr_scheduler.ExponentialLR(opt, gamma=0.8),
    "LinearLR": lambda opt, info: lr_scheduler.LinearLR(opt, start_factor=0.2, total_iters=3),
    "CosineAnnealingLR": lambda opt, info: lr_scheduler.CosineAnnealingLR(opt, T_max=4),
    "LambdaLR": lambda opt, info: lr_scheduler.LambdaLR(opt, lambda epoch: 1 / (1 + epoch)),
    "OneCycleLR": lambda opt, info: lr_scheduler.OneCycleLR(
        opt, max_lr=2 * lr_of(info), total_steps=8, cycle_momentum=_cycles_momentum(info)
    ),
    "SequentialLR": lambda opt, info: lr_scheduler.SequentialLR(
        opt,
        [
            lr_scheduler.ConstantLR(opt, factor=0.5, total_iters=2),
            lr_scheduler.ExponentialLR(opt, gamma=0.9),
        ],
        milestones=[2],
    ),
    "ReduceLROnPlateau": lambda opt, info: lr_scheduler.ReduceLROnPlateau(
        opt, patience=0, factor=0.5
    ),
}


def _schedule(scheduler: Any) -> None:
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        scheduler.step(1.0)  # a loss that never improves: the lr is cut every step
    else:
        scheduler.step()


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("info", SUBJECTS, ids=ids)
def test_torch_lr_schedulers_drive_the_optimizer(info: OptimizerInfo, name: str) -> None:
    """The scheduler sets the same learning rates as on torch's SGD, and the optimizer
    steps with them: the run equals one whose lr is set by hand to those values."""
    params = make_params(info)
    opt = info.cls(params, **config(info))
    # one torch group per group of the optimizer, with its lr (a router's groups differ)
    torch_sgd = torch.optim.SGD(
        [
            {"params": [nn.Parameter(torch.zeros(1))], "lr": group["lr"]}
            for group in opt.param_groups
        ],
        lr=lr_of(info),
        momentum=0.9,
    )
    scheduler = SCHEDULERS[name](opt, info)
    torch_scheduler = SCHEDULERS[name](torch_sgd, info)
    by_hand_params = make_params(info)
    by_hand = info.cls(by_hand_params, **config(info))
    rates = []
    for step in range(6):
        rates.append(opt.param_groups[0]["lr"])
        for group, torch_group, set_by_hand in zip(
            opt.param_groups, torch_sgd.param_groups, by_hand.param_groups, strict=True
        ):
            assert group["lr"] == pytest.approx(torch_group["lr"], rel=1e-12)
            for key in ("lr", "momentum", "betas"):
                if key in group:
                    set_by_hand[key] = group[key]
        run(info, opt, params, range(step, step + 1))
        run(info, by_hand, by_hand_params, range(step, step + 1))
        torch_sgd.step()  # no gradient: nothing moves, but the scheduler sees a step
        _schedule(scheduler)
        _schedule(torch_scheduler)
    assert same(params, by_hand_params)
    assert len(set(rates)) > 1  # the scheduler did change the rate
