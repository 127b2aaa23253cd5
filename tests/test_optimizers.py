"""Generic tests over the optimizer table: parity with the reference, state, groups, errors."""

from __future__ import annotations

import copy
import io
import re
from typing import Any

import pytest
import torch
from torch import nn

import descent
from optim_table import OPTIMIZERS, OptimizerInfo, case_id, config_cases

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
STEPS = 50
CLOSURE_STEPS = 5  # for an optimizer whose step runs many iterations (LBFGS)


def make_mlp(dtype: torch.dtype, seed: int = 0, bias: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 10, bias=bias),
        nn.Tanh(),
        nn.Linear(10, 8, bias=bias),
        nn.Tanh(),
        nn.Linear(8, 3, bias=bias),
    ).to(dtype)


def model_for(info: OptimizerInfo, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """The test MLP, without biases for an optimizer of matrices only."""
    return make_mlp(dtype, seed, bias=not info.matrices_only)


def grouped(model: nn.Module, lr: float, info: OptimizerInfo | None = None) -> list[dict[str, Any]]:
    """Three param groups with different learning rates (the last takes the default): one
    group for an optimizer that takes one (``info.groups``), the same rate in each for
    algorithms that take one rate (``info.grouped_lrs``)."""
    layers = [m for m in model if isinstance(m, nn.Linear)]
    if info is not None and not info.groups:
        return [{"params": list(model.parameters()), "lr": lr}]
    factor = 0.5 if info is None or info.grouped_lrs else 1.0
    return [
        {"params": list(layers[0].parameters()), "lr": lr},
        {"params": list(layers[1].parameters()), "lr": lr * factor},
        {"params": list(layers[2].parameters())},
    ]


def compute_grads(
    model: nn.Module, step: int, dtype: torch.dtype, info: OptimizerInfo | None = None
) -> torch.Tensor:
    """Backward on a fixed batch for this step; some params get no grad on some steps.

    Returns the loss; the gradients have the layout ``info``'s optimizer takes."""
    generator = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(16, 6, generator=generator).to(dtype)
    target = torch.randn(16, 3, generator=generator).to(dtype)
    for p in model.parameters():
        p.grad = None
    loss = ((model(x) - target) ** 2).mean()
    loss.backward()
    layers = [m for m in model if isinstance(m, nn.Linear)]
    if step % 3 == 0:
        last = layers[2].weight if layers[2].bias is None else layers[2].bias
        last.grad = None
    if step % 5 == 1:
        layers[0].weight.grad = None
    if info is not None:
        for p in model.parameters():
            if p.grad is not None:
                p.grad = info.gradient(p.grad)
    return loss


def max_relative_difference(a: nn.Module, b: nn.Module) -> float:
    worst = 0.0
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        scale = pb.detach().abs().max().item()
        worst = max(worst, (pa - pb).detach().abs().max().item() / max(scale, 1e-30))
    return worst


# The engine's paths: the per-tensor reference, "foreach" (the math on lists of tensors),
# "auto", the default (torch's fused kernels where they exist at this size, foreach
# otherwise) and "compiled" (the kernel generated from the math; needs a C compiler).
ENGINE_MODES = ["per_tensor", "foreach", "auto", "compiled"]


def parity_run(
    info: OptimizerInfo, config: dict[str, Any], dtype: torch.dtype, mode: str | None = None
) -> tuple[float, float]:
    """Train descent (in engine ``mode``, default if None) and the reference side by side.

    Returns the largest relative difference between them over the STEPS-step trajectory,
    and how far descent's parameters moved from their start.
    """
    ours, theirs = model_for(info, dtype), model_for(info, dtype)
    lr = config["lr"]
    options = {k: v for k, v in config.items() if k != "lr"}
    opt = info.cls(grouped(ours, lr, info), lr=lr, **options)
    if mode is not None:
        descent.engine.set_mode(opt, mode)
    ref = info.reference(grouped(theirs, lr, info), lr=lr, **options)
    worst = 0.0
    for step in range(CLOSURE_STEPS if info.closure else STEPS):
        info.step(opt, lambda: compute_grads(ours, step, dtype, info))  # noqa: B023
        info.step(ref, lambda: compute_grads(theirs, step, dtype, info))  # noqa: B023
        worst = max(worst, max_relative_difference(ours, theirs))
    return worst, max_relative_difference(ours, model_for(info, dtype))


def reference_rounding_drift(info: OptimizerInfo, config: dict[str, Any]) -> float:
    """How far the reference's float32 trajectory strays from its float64 one."""
    single, double = model_for(info, torch.float32), model_for(info, torch.float64)
    lr = config["lr"]
    options = {k: v for k, v in config.items() if k != "lr"}
    ref32 = info.reference(grouped(single, lr, info), lr=lr, **options)
    ref64 = info.reference(grouped(double, lr, info), lr=lr, **options)
    worst = 0.0
    for step in range(CLOSURE_STEPS if info.closure else STEPS):
        info.step(ref32, lambda: compute_grads(single, step, torch.float32, info))  # noqa: B023
        info.step(ref64, lambda: compute_grads(double, step, torch.float64, info))  # noqa: B023
        worst = max(worst, max_relative_difference(single, double))  # in float64
    return worst


# A rule that is not elementwise runs one tensor at a time in every mode: one suffices.
PARITY_CASES = [
    (info, config, mode)
    for info, config in config_cases()
    for mode in (ENGINE_MODES if info.cls.elementwise else ["auto"])
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("info", "config", "mode"), PARITY_CASES, ids=case_id)
def test_parity_with_reference(
    info: OptimizerInfo, config: dict[str, Any], dtype: torch.dtype, mode: str
) -> None:
    """50 steps on an MLP with three param groups and missing grads match the reference."""
    worst, moved = parity_run(info, config, dtype, mode)
    tolerance = TOLERANCE[dtype]
    if worst > tolerance and dtype == torch.float32:
        # Some trajectories amplify rounding (ADOPT without clipping divides by the root
        # of a one-sample second moment): float32 may then differ by as much as the
        # reference's own float32 run differs from its float64 run, and no more.
        tolerance = max(tolerance, reference_rounding_drift(info, config))
    assert worst <= tolerance, f"max relative difference {worst:.3e} (allowed {tolerance:.1e})"
    # the trajectory really moved: a parity test of a no-op would pass trivially
    assert moved > 1e-3


@pytest.mark.parametrize(
    "info", [i for i in OPTIMIZERS if i.torch_counterpart and i.cls.supports_complex], ids=case_id
)
def test_complex_parameters_match_torch(info: OptimizerInfo) -> None:
    torch.manual_seed(0)
    start = torch.randn(4, 3, dtype=torch.complex128)
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    opt, ref = info.cls([ours], **info.configs[-1]), info.reference([theirs], **info.configs[-1])
    for step in range(20):
        target = torch.randn(
            4, 3, dtype=torch.complex128, generator=torch.Generator().manual_seed(step)
        )
        for p, optimizer in ((ours, opt), (theirs, ref)):

            def compute(p: torch.Tensor = p) -> torch.Tensor:
                p.grad = None
                loss = (p - target).abs().pow(2).sum()  # noqa: B023
                loss.backward()
                return loss

            info.step(optimizer, compute)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    assert not torch.equal(ours, start)


@pytest.mark.parametrize("info", [i for i in OPTIMIZERS if not i.cls.supports_complex], ids=case_id)
def test_complex_parameters_refused_where_not_supported(info: OptimizerInfo) -> None:
    """Refused at construction: with torch's exception type where torch's class refuses
    them there too (SparseAdam's ValueError), else descent's TypeError."""
    p = torch.zeros(info.shape(3), dtype=torch.complex64, requires_grad=True)
    expected: type[Exception] = TypeError
    if info.torch_counterpart:
        try:
            info.reference([p])
        except (TypeError, ValueError) as error:
            expected = type(error)
    with pytest.raises(expected, match=r"complex dtype torch.complex64"):
        info.cls([p])


@pytest.mark.parametrize(("info", "config"), config_cases(), ids=case_id)
def test_state_dict_round_trip_mid_training(info: OptimizerInfo, config: dict[str, Any]) -> None:
    """Train 10 steps, save, load into a fresh optimizer on cloned params, train 10 more."""
    dtype = torch.float64
    model = model_for(info, dtype)
    opt = info.cls(grouped(model, config["lr"], info), **config)
    for step in range(10):
        info.step(opt, lambda: compute_grads(model, step, dtype, info))  # noqa: B023
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    clone = copy.deepcopy(model)
    resumed = info.cls(grouped(clone, 123.0, info), **{**config, "lr": 7.0})
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for step in range(10, 20):
        info.step(opt, lambda: compute_grads(model, step, dtype, info))  # noqa: B023
        info.step(resumed, lambda: compute_grads(clone, step, dtype, info))  # noqa: B023
    for a, b in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(opt.state.values(), resumed.state.values(), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], list):  # LBFGS's curvature pairs (and unset entries)
                assert all(
                    x is y is None or torch.equal(x, y) for x, y in zip(a[key], b[key], strict=True)
                ), key
            else:
                assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key


@pytest.mark.parametrize("info", OPTIMIZERS, ids=case_id)
def test_params_without_grad_are_untouched(info: OptimizerInfo) -> None:
    used = nn.Parameter(torch.randn(info.shape(5), dtype=torch.float64))
    unused = nn.Parameter(torch.randn(info.shape(5), dtype=torch.float64))
    before = unused.detach().clone()
    opt = info.cls(
        [used, unused],
        **{**info.configs[-1], "weight_decay": 0.5}
        if "weight_decay" in info.cls.hyperparameters
        else info.configs[-1],
    )

    def compute() -> torch.Tensor:
        used.grad = info.gradient(torch.ones_like(used))
        return used.detach().sum()  # the loss whose gradient that is

    for _ in range(3):
        info.step(opt, compute)
    assert torch.equal(unused, before)
    assert unused not in opt.state
    assert not torch.equal(used, before)


@pytest.mark.parametrize("info", OPTIMIZERS, ids=case_id)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_low_precision_dtypes_step(info: OptimizerInfo, dtype: torch.dtype) -> None:
    """Half-precision parameters are updated, stay finite and their state keeps their
    dtype (or the class refuses the dtype, with a TypeError naming it)."""
    p = nn.Parameter(torch.ones(info.shape(8), dtype=dtype))
    lr = max(0.1, float(info.configs[0]["lr"]))  # a step bf16 can represent
    if dtype in info.refused_dtypes:
        with pytest.raises(TypeError, match=re.escape(str(dtype))):
            info.cls([p], **{**info.configs[0], "lr": lr})
        return
    opt = info.cls([p], **{**info.configs[0], "lr": lr})

    def compute() -> torch.Tensor:
        p.grad = info.gradient(torch.full_like(p, 0.5))
        return 0.5 * p.detach().sum()

    for _ in range(info.first_update_step):
        info.step(opt, compute)
    assert p.dtype == dtype
    assert (p < 1).all() and torch.isfinite(p).all()
    for value in opt.state[p].values():
        if torch.is_tensor(value) and value.dim() > 0:
            assert value.dtype == dtype


@pytest.mark.parametrize(
    ("info", "error"),
    [(i, e) for i in OPTIMIZERS for e in i.error_inputs],
    ids=lambda c: case_id(c) if isinstance(c, OptimizerInfo) else ",".join(c.kwargs),
)
def test_error_inputs(info: OptimizerInfo, error: Any) -> None:
    p = nn.Parameter(torch.zeros(info.shape(2)))
    with pytest.raises(error.error, match=error.match):
        info.cls([p], **error.kwargs)


@pytest.mark.parametrize("info", OPTIMIZERS, ids=case_id)
def test_group_hyperparameters_are_checked(info: OptimizerInfo) -> None:
    a, b = nn.Parameter(torch.zeros(info.shape(2))), nn.Parameter(torch.zeros(info.shape(2)))
    if not info.groups:
        with pytest.raises(ValueError, match=r"second param group is refused"):
            info.cls([{"params": [a]}, {"params": [b]}])
        return
    with pytest.raises(ValueError, match=r"param_groups\[1\]: lr=-0\.5"):
        info.cls([{"params": [a]}, {"params": [b], "lr": -0.5}])
    opt = info.cls([a])
    name = "weight_decay" if "weight_decay" in info.cls.hyperparameters else "lr"
    with pytest.raises(ValueError, match=rf"param_groups\[1\]: {name}=-1"):
        opt.add_param_group({"params": [b], name: -1})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("info", OPTIMIZERS, ids=case_id)
def test_bad_parameters_are_refused(info: OptimizerInfo) -> None:
    p = nn.Parameter(torch.zeros(info.shape(2)))
    with pytest.raises(TypeError, match=r"dtype torch.int64.*floating-point"):
        info.cls([torch.zeros(2, dtype=torch.long)])
    with pytest.raises(ValueError, match=r"params is empty"):
        info.cls([])
    with pytest.raises(ValueError, match=r"\[1\] is the same tensor as .*\[0\]"):
        info.cls([p, p])
    with pytest.raises(ValueError, match=r"already optimized" if info.groups else r"group"):
        info.cls([{"params": [p]}, {"params": [p]}])
    with pytest.raises(TypeError, match=r"single tensor"):
        info.cls(p)
    with pytest.raises(ValueError, match=r"not a leaf"):
        info.cls([p * 2])


@pytest.mark.parametrize("info", OPTIMIZERS, ids=case_id)
def test_accepts_every_parameter_form(info: OptimizerInfo) -> None:
    model = model_for(info, torch.float32)
    count = len(list(model.parameters()))
    forms = {
        "tensors": model.parameters(),
        "named": model.named_parameters(),
        "groups": [{"params": model[0].parameters()}, {"params": model[2:].parameters()}],
        "module": model,
        "modules": [model[0], model[2], model[4]],
    }
    if not info.groups:
        forms["groups"] = [{"params": model.parameters()}]
    for form, params in forms.items():
        opt = info.cls(params)
        assert sum(len(g["params"]) for g in opt.param_groups) == count, form
    groups = info.cls(model.named_parameters()).param_groups
    names = [name for group in groups for name in group["param_names"]]
    expected = [name for name, _ in model.named_parameters()]
    assert (sorted(names) == sorted(expected)) if info.routes_groups else names == expected
    assert info.cls(model).param_groups[0]["param_names"][0] == "0.weight"


def test_list_of_modules_takes_shared_parameters_once() -> None:
    shared = nn.Linear(3, 3)
    other = nn.Sequential(shared, nn.Linear(3, 1))
    opt = descent.SGD([shared, other], lr=0.1)
    assert len(opt.param_groups[0]["params"]) == 4


def test_lr_property_reads_and_sets_every_group() -> None:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    opt = descent.Adam([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    with pytest.raises(ValueError, match=r"different values of lr \[0\.1, 0\.5\]"):
        _ = opt.lr
    opt.lr = 0.01
    assert opt.lr == 0.01
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]
    with pytest.raises(ValueError, match=r"lr=-1"):
        opt.lr = -1
    assert opt.lr == 0.01


def test_zero_grad_semantics_match_torch() -> None:
    p = nn.Parameter(torch.ones(3))
    opt = descent.SGD([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.zero_grad(set_to_none=False)
    assert torch.equal(p.grad, torch.zeros(3))
    opt.zero_grad()
    assert p.grad is None


def test_step_returns_closure_loss_and_enables_grad() -> None:
    p = nn.Parameter(torch.tensor([2.0]))
    opt = descent.SGD([p], lr=0.25)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 4.0
    assert p.item() == pytest.approx(2.0 - 0.25 * 4.0)


def test_optimizer_state_survives_add_param_group() -> None:
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = descent.Adam([a], lr=0.1)
    a.grad = torch.ones(2)
    opt.step()
    saved = {k: v.clone() for k, v in opt.state[a].items()}
    opt.add_param_group({"params": [b], "lr": 0.2})
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)
    for key, value in saved.items():
        assert torch.equal(opt.state[a][key], value)


def test_sparse_gradients_are_refused() -> None:
    p = nn.Parameter(torch.zeros(4))
    opt = descent.Adam([p])
    p.grad = torch.zeros(4).to_sparse()
    with pytest.raises(TypeError, match=r"sparse gradient"):
        opt.step()


def test_torch_state_dict_loads_into_descent() -> None:
    """torch.optim's layout is descent's: a torch checkpoint continues in descent."""
    ours, theirs = make_mlp(torch.float64), make_mlp(torch.float64)
    ref = torch.optim.Adam(theirs.parameters(), lr=1e-2, amsgrad=True)
    for step in range(5):
        compute_grads(theirs, step, torch.float64)
        ref.step()
    ours.load_state_dict(theirs.state_dict())
    opt = descent.Adam(ours.parameters(), lr=1e-2, amsgrad=True)
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))
    for step in range(5, 15):
        compute_grads(ours, step, torch.float64)
        compute_grads(theirs, step, torch.float64)
        opt.step()
        ref.step()
    assert max_relative_difference(ours, theirs) <= 1e-10


def test_descent_state_dict_loads_into_torch() -> None:
    model = make_mlp(torch.float64)
    opt = descent.RMSprop(model.parameters(), lr=1e-2, momentum=0.9, centered=True)
    for step in range(3):
        compute_grads(model, step, torch.float64)
        opt.step()
    state = copy.deepcopy(opt.state_dict())
    state.pop("descent")
    torch.optim.RMSprop(model.parameters(), lr=1e-2, momentum=0.9, centered=True).load_state_dict(
        state
    )


def test_works_with_torch_schedulers_hooks_and_grad_scaler() -> None:
    p = nn.Parameter(torch.ones(3))
    opt = descent.SGD([p], lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    calls = []
    opt.register_step_pre_hook(lambda *_: calls.append("pre"))
    opt.register_step_post_hook(lambda *_: calls.append("post"))
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    lrs = []
    for _ in range(4):
        opt.zero_grad()
        scaler.scale(p.sum()).backward()
        scaler.step(opt)
        scaler.update()
        lrs.append(opt.lr)
        scheduler.step()
    assert lrs == [1.0, 1.0, 0.5, 0.5]
    assert calls == ["pre", "post"] * 4
    torch.testing.assert_close(p.detach(), torch.full((3,), 1.0 - 3.0))


def test_empty_groups_are_allowed_but_not_empty_params() -> None:
    """ZeroRedundancyOptimizer can give a rank an empty group; torch.optim allows one too."""
    p = nn.Parameter(torch.ones(2))
    opt = descent.Adam([{"params": [p]}, {"params": [], "lr": 0.1}])
    p.grad = torch.ones(2)
    opt.step()
    assert len(opt.param_groups[1]["params"]) == 0
    with pytest.raises(ValueError, match=r"params is empty"):
        descent.Adam([])
    named = descent.SGD(nn.Linear(2, 1), lr=0.1)
    named.add_param_group({"params": []})
    assert named.param_groups[1]["param_names"] == []


def test_a_used_up_parameters_generator_is_named_in_the_error() -> None:
    model = nn.Linear(2, 2)
    params = model.parameters()
    descent.SGD(params, lr=0.1)
    with pytest.raises(ValueError, match=r"iterator that yields nothing.*used up.*list\("):
        descent.SGD(params, lr=0.1)
    with pytest.raises(ValueError, match=r"params is empty"):
        descent.SGD([], lr=0.1)
