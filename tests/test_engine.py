"""descent.engine: every path gives the per-tensor reference's results and keeps its semantics.

References are independent of the multi-tensor paths: the same optimizer run in
``"per_tensor"`` mode (each parameter updated on its own by the algorithm's math
function), and for DDP a plain model. Timings are never asserted here (see ``bench/``).
"""

from __future__ import annotations

import copy
import functools
import io
import math
import socket
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import descent
from descent import engine
from optim_table import OPTIMIZERS, OptimizerInfo, case_id, config_cases

STEPS = 8


def make_params(
    dtype: torch.dtype = torch.float64, seed: int = 0, info: OptimizerInfo | None = None
) -> list[nn.Parameter]:
    """Parameters of several shapes (matrices only, for an optimizer that takes only those)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (5,), (2, 3, 2), (7,), (1,)]
    if info is not None:
        shapes = [info.shape(*shape) for shape in shapes]
    return [nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype)) for shape in shapes]


def give_grads(params: list[torch.Tensor], step: int, info: OptimizerInfo | None = None) -> None:
    """Fresh gradients; some params get none on some steps (a hole in the middle too),
    in the layout ``info``'s optimizer takes."""
    generator = torch.Generator().manual_seed(100 + step)
    for i, param in enumerate(params):
        grad = torch.randn(param.shape, generator=generator, dtype=param.dtype)
        missing = (i == 1 and step % 3 == 1) or (i == 4 and step % 2 == 0)
        param.grad = None if missing else grad if info is None else info.gradient(grad)


def run(
    info: OptimizerInfo,
    config: dict[str, Any],
    mode: str,
    dtype: torch.dtype = torch.float64,
    steps: int = STEPS,
) -> tuple[list, Any]:
    params = make_params(dtype)
    opt = info.cls(params, **config)
    engine.set_mode(opt, mode)
    for step in range(steps):
        give_grads(params, step)
        opt.step()
    return params, opt


def relative_difference(ours: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    worst = 0.0
    for a, b in zip(ours, reference, strict=True):
        scale = max(b.detach().abs().max().item(), 1e-300)
        worst = max(worst, (a - b).detach().abs().max().item() / scale)
    return worst


def state_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    state = opt.state_dict()["state"]
    return [
        torch.as_tensor(entry[key])
        for index in sorted(state)
        for entry in [state[index]]
        for key in sorted(entry)
    ]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("info", "config"),
    [(info, config) for info, config in config_cases() if info.cls.elementwise],
    ids=case_id,
)
def test_foreach_path_is_bit_identical_to_per_tensor(
    info: OptimizerInfo, config: dict[str, Any], dtype: torch.dtype
) -> None:
    """The math on lists runs the same kernels per tensor: the same bits, params and state."""
    ours, ours_opt = run(info, config, "foreach", dtype)
    reference, reference_opt = run(info, config, "per_tensor", dtype)
    for a, b in zip(ours, reference, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0], make_params(dtype)[0])  # it moved
    for a, b in zip(state_tensors(ours_opt), state_tensors(reference_opt), strict=True):
        assert torch.equal(a, b)


FUSED_CASES = [
    (info, config) for info, config in config_cases() if info.cls.fused_kernel is not None
]


@pytest.mark.parametrize(("info", "config"), FUSED_CASES, ids=case_id)
def test_torch_fused_kernels_match_the_math_functions(
    info: OptimizerInfo, config: dict[str, Any]
) -> None:
    """torch's fused kernel vs descent's math per tensor: float64, <= 1e-12."""
    ours, ours_opt = run(info, config, "fused")
    reference, reference_opt = run(info, config, "per_tensor")
    assert relative_difference(ours, reference) <= 1e-12
    assert relative_difference(state_tensors(ours_opt), state_tensors(reference_opt)) <= 1e-12


def test_fused_kernels_cover_the_rules_torch_has() -> None:
    assert {info.name for info, _ in FUSED_CASES} == {"Adam", "AdamW", "SGD", "Adagrad"}


@functools.wraps(descent.optim.adam)  # the same arguments, which the engine reads off it
def _doubled_adam(param: Any, grad: Any, **arguments: Any) -> None:
    descent.optim.adam(param, grad.mul(2.0), **arguments)


class Scaled(descent.Adam):
    """A subclass with its own rule: must not get Adam's fused kernel."""

    math = staticmethod(_doubled_adam)


def test_subclass_with_its_own_math_does_not_get_the_fused_kernel() -> None:
    assert Scaled.fused_kernel is None
    assert Scaled.math_arguments == descent.Adam.math_arguments
    params = make_params()
    opt = Scaled(params, lr=0.1)
    engine.set_mode(opt, "fused")
    reference = make_params()
    reference_opt = descent.Adam(reference, lr=0.1)
    engine.set_mode(reference_opt, "per_tensor")
    for step in range(3):
        give_grads(params, step)
        give_grads(reference, step)
        for param in reference:
            if param.grad is not None:
                param.grad *= 2
        opt.step()
        reference_opt.step()
    assert relative_difference(params, reference) <= 1e-12


def test_params_without_grad_keep_their_values_and_state() -> None:
    """Holes in the middle and at the end of a bucket, and differing step counts."""
    params = make_params()
    opt = descent.Adam(params, lr=0.1, weight_decay=0.5)

    def step_without(skipped: set[int]) -> None:
        for i, param in enumerate(params):
            param.grad = None if i in skipped else torch.ones_like(param)
        opt.step()

    step_without({4})
    step_without({1, 4})
    assert params[4] not in opt.state
    assert opt.state[params[1]]["step"].item() == 1
    assert opt.state[params[0]]["step"].item() == 2
    before = [p.detach().clone() for p in params]
    state_before = {k: v.clone() for k, v in opt.state[params[1]].items()}
    step_without({1, 4})
    assert torch.equal(params[1], before[1])
    assert torch.equal(params[4], before[4])
    assert not torch.equal(params[0], before[0])
    for key, value in opt.state[params[1]].items():
        assert torch.equal(value, state_before[key]), key
    step_without(set())  # steps 2 and 3 side by side: two runs, one bucket
    assert opt.state[params[1]]["step"].item() == 2
    assert opt.state[params[0]]["step"].item() == 4


def test_load_state_dict_into_a_stepped_optimizer_replaces_its_state() -> None:
    info = next(i for i in OPTIMIZERS if i.name == "NAdam")
    params, opt = run(info, {"lr": 0.01}, "foreach", steps=3)
    saved = copy.deepcopy(opt.state_dict())  # as torch's, it holds the live state tensors
    snapshot = [p.detach().clone() for p in params]
    for step in range(3, 6):
        give_grads(params, step)
        opt.step()
    with torch.no_grad():
        for param, value in zip(params, snapshot, strict=True):
            param.copy_(value)
    opt.load_state_dict(saved)
    reference, reference_opt = run(info, {"lr": 0.01}, "per_tensor", steps=3)
    for step in range(3, 6):
        give_grads(params, step)
        give_grads(reference, step)
        opt.step()
        reference_opt.step()
    for a, b in zip(params, reference, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------- user re-binds storage


def two_runs(change: Any, info_name: str = "Adam") -> tuple[list, list]:
    """The engine and the reference, each with ``change(params, opt)`` after step 3."""
    info = next(i for i in OPTIMIZERS if i.name == info_name)
    results = []
    for mode in ("foreach", "per_tensor"):
        params = make_params()
        opt = info.cls(params, lr=0.05)
        engine.set_mode(opt, mode)
        for step in range(STEPS):
            if step == 3:
                change(params, opt)
            give_grads(params, step)
            opt.step()
        results.append(params)
    return results[0], results[1]


def test_param_data_rebound_by_the_user_is_updated() -> None:
    def rebind(params: list[nn.Parameter], opt: Any) -> None:
        params[2].data = torch.full_like(params[2], 0.5)

    ours, reference = two_runs(rebind)
    for a, b in zip(ours, reference, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(ours[2], torch.full_like(ours[2], 0.5))  # updated after the rebind


def test_module_load_state_dict_values_are_used() -> None:
    source = make_params(seed=7)

    def load(params: list[nn.Parameter], opt: Any) -> None:
        module = nn.Module()
        for i, param in enumerate(params):
            module.register_parameter(f"p{i}", param)
        module.load_state_dict({f"p{i}": value.detach() for i, value in enumerate(source)})

    ours, reference = two_runs(load)
    for a, b in zip(ours, reference, strict=True):
        assert torch.equal(a, b)


def test_swap_tensors_is_detected() -> None:
    def swap(params: list[nn.Parameter], opt: Any) -> None:
        replacement = nn.Parameter(torch.zeros_like(params[0]))
        torch.utils.swap_tensors(params[0], replacement)

    ours, reference = two_runs(swap)
    for a, b in zip(ours, reference, strict=True):
        assert torch.equal(a, b)


def test_model_to_another_dtype_keeps_training_with_converted_state() -> None:
    """After ``model.to(float64)`` the engine moves the state to float64 with the params.

    Reference: the per-tensor path with its state converted by hand to the parameter's
    new dtype (as torch's ``load_state_dict`` would cast it).
    """
    results = []
    for mode in ("foreach", "per_tensor"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
        opt = descent.Adam(model, lr=0.05)
        engine.set_mode(opt, mode)
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
        for step in range(6):
            if step == 3:
                model.to(torch.float64)
                x = x.double()
                if mode == "per_tensor":
                    for entry in opt.state.values():
                        for key, value in entry.items():
                            if key not in opt.scalar_state:
                                entry[key] = value.to(torch.float64)
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        assert all(p.dtype == torch.float64 for p in model.parameters())
        assert all(
            v.dtype == torch.float64
            for s in opt.state.values()
            for k, v in s.items()
            if k != "step"
        )
        results.append(list(model.parameters()))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------- gradients


@pytest.mark.parametrize("set_to_none", [True, False])
def test_gradient_accumulation_matches_per_tensor(set_to_none: bool) -> None:
    results = []
    for mode in ("foreach", "per_tensor"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 1))
        opt = descent.SGD(model, lr=0.1, momentum=0.9)
        engine.set_mode(opt, mode)
        generator = torch.Generator().manual_seed(3)
        for _ in range(4):
            opt.zero_grad(set_to_none=set_to_none)
            for _ in range(3):  # three micro-batches accumulate into .grad
                x = torch.randn(6, 5, generator=generator)
                model(x).square().mean().backward()
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_zero_grad_set_to_none_leaves_none() -> None:
    params = make_params()
    opt = descent.Adam(params)
    give_grads(params, 0)
    opt.step()
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_sparse_gradient_is_refused_with_the_params_name() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    opt = descent.Adam(model, lr=0.1)
    model[0].weight.grad = torch.eye(2).to_sparse()
    with pytest.raises(TypeError, match=r"0\.weight.*sparse gradient"):
        opt.step()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_takes_sparse_gradients_as_torch_does(momentum: float) -> None:
    results = []
    for cls in (descent.SGD, torch.optim.SGD):
        torch.manual_seed(0)
        embedding = nn.Embedding(10, 3, sparse=True).double()
        dense = nn.Linear(3, 1).double()
        opt = cls([*embedding.parameters(), *dense.parameters()], lr=0.1, momentum=momentum)
        for step in range(4):
            opt.zero_grad()
            index = torch.tensor([step, (step * 3) % 10, 7])
            dense(embedding(index)).square().sum().backward()
            assert embedding.weight.grad.is_sparse
            opt.step()
        results.append([p.detach().clone() for p in (*embedding.parameters(), *dense.parameters())])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


# ---------------------------------------------------------------------- what stays per tensor


def test_numpy_complex_strided_and_shared_params_are_updated_where_they_are() -> None:
    array = np.linspace(-1.0, 1.0, 6)
    from_numpy = torch.from_numpy(array).requires_grad_()
    complex_param = nn.Parameter(torch.randn(3, dtype=torch.complex128))
    strided = torch.randn(4, 6, dtype=torch.float64)[:, ::2].detach().requires_grad_()
    base = torch.randn(8, dtype=torch.float64)
    tied_a = nn.Parameter(base.clone())
    tied_b = nn.Parameter(torch.empty(0, dtype=torch.float64))
    tied_b.data = tied_a.data  # two params sharing one storage
    plain = nn.Parameter(torch.randn(5, dtype=torch.float64))
    params = [from_numpy, complex_param, strided, tied_a, tied_b, plain]
    copies = [p.detach().clone().requires_grad_() for p in params]
    copies[4].data = copies[3].data
    opt, reference = descent.Adam(params, lr=0.1), descent.Adam(copies, lr=0.1)
    engine.set_mode(opt, "foreach")
    engine.set_mode(reference, "per_tensor")
    for step in range(3):
        for p, q in zip(params, copies, strict=True):
            grad = torch.full_like(p, 0.1 * (step + 1))
            p.grad, q.grad = grad, grad.clone()
        opt.step()
        reference.step()
    for p, q in zip(params, copies, strict=True):
        assert torch.equal(p.detach(), q.detach())
    assert np.array_equal(array, from_numpy.detach().numpy())  # the caller's array moved
    assert not np.array_equal(array, np.linspace(-1.0, 1.0, 6))
    assert tied_a.data_ptr() == tied_b.data_ptr()


def test_non_elementwise_optimizers_run_per_tensor_on_plain_tensors() -> None:
    seen: list[type] = []

    def normalised_sgd(param: torch.Tensor, grad: torch.Tensor, *, lr: float) -> None:
        seen.append(type(param))
        param.sub_(grad / grad.norm().clamp_min(1e-12), alpha=lr)

    class Normalised(descent.Optimizer):
        """SGD on the gradient's direction, a rule that is not elementwise."""

        lr: float = descent.optim.base.hyper(default=0.1)
        math = staticmethod(normalised_sgd)
        elementwise = False

    params = make_params()
    expected = [
        p.detach() - 0.1 * g / g.norm()
        for p, g in zip(params, [torch.full_like(p, 2.0) for p in params], strict=True)
    ]
    for param in params:
        param.grad = torch.full_like(param, 2.0)
    Normalised(params).step()
    assert seen == [torch.nn.Parameter] * len(params) or set(seen) <= {
        torch.Tensor,
        torch.nn.Parameter,
    }
    for param, value in zip(params, expected, strict=True):
        torch.testing.assert_close(param.detach(), value, rtol=1e-15, atol=1e-15)


def test_two_dtypes_in_one_group_make_two_buckets() -> None:
    params = make_params() + make_params(torch.float32, seed=1)
    reference = [nn.Parameter(p.detach().clone()) for p in params]
    opt, reference_opt = descent.RMSprop(params, lr=0.01), descent.RMSprop(reference, lr=0.01)
    engine.set_mode(reference_opt, "per_tensor")
    for step in range(4):
        give_grads(params, step)
        give_grads(reference, step)
        opt.step()
        reference_opt.step()
    layout = next(iter(opt.__dict__["_descent_engine"].layouts.values()))
    assert len(layout.buckets) == 2
    for a, b in zip(params, reference, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------- modes


def test_modes_are_checked() -> None:
    opt = descent.SGD(make_params())
    with pytest.raises(ValueError, match=r"mode='fast'.*expected one of"):
        engine.set_mode(opt, "fast")
    with pytest.raises(ValueError, match="mode='fast'"), engine.default_mode("fast"):
        pass


def test_environment_mode_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESCENT_ENGINE", "turbo")
    with pytest.raises(ValueError, match="DESCENT_ENGINE: mode='turbo'"):
        engine.get_default_mode()
    monkeypatch.setenv("DESCENT_ENGINE", "per_tensor")
    assert engine.mode_of(descent.SGD(make_params())) == "per_tensor"


def test_default_mode_context_and_per_optimizer_mode() -> None:
    opt = descent.SGD(make_params())
    with engine.default_mode("per_tensor"):
        assert engine.mode_of(opt) == "per_tensor"
        engine.set_mode(opt, "foreach")
        assert engine.mode_of(opt) == "foreach"
    engine.set_mode(opt, None)
    assert engine.mode_of(opt) == engine.get_default_mode()


# ---------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_single_process_matches_a_plain_model() -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    store = dist.TCPStore("127.0.0.1", _free_port(), 1, True)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        results = []
        for wrap in (True, False):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
            trained = DistributedDataParallel(model) if wrap else model
            opt = descent.AdamW(model, lr=0.01)
            # lists under DDP against the per-tensor path, with the same kernels
            engine.set_mode(opt, "foreach" if wrap else "per_tensor")
            generator = torch.Generator().manual_seed(5)
            for _ in range(5):
                opt.zero_grad()
                trained(torch.randn(4, 5, generator=generator)).square().mean().backward()
                opt.step()
            results.append([p.detach().clone() for p in model.parameters()])
    finally:
        dist.destroy_process_group()
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ddp_engine_emits_no_warnings_about_grad_layout() -> None:
    """DDP's gradient layout contract holds: grads keep the parameters' strides."""
    model = nn.Linear(3, 3)
    opt = descent.SGD(model, lr=0.1)
    model.weight.grad = torch.ones(3, 3)
    model.bias.grad = torch.ones(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
    assert model.weight.grad.stride() == model.weight.stride()


@pytest.mark.parametrize("mode", ["per_tensor", "auto"])
def test_step_between_forward_and_backward_is_caught_by_autograd(mode: str) -> None:
    """In-place updates count in each parameter's version, as in torch."""
    weight = nn.Parameter(torch.randn(3))
    other = nn.Parameter(torch.randn(3))
    opt = descent.SGD([weight, other], lr=0.1)
    engine.set_mode(opt, mode)
    weight.grad, other.grad = torch.ones(3), None
    opt.step()
    loss = (weight * weight).sum()  # saves weight for backward
    before = (weight._version, other._version)
    weight.grad = torch.ones(3)
    opt.step()
    assert weight._version > before[0]
    assert other._version == before[1]  # no gradient: not updated, version unchanged
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


# ---------------------------------------------------------------------- users' tensors stay theirs


@pytest.mark.parametrize("mode", ["auto", "foreach", "per_tensor"])
@pytest.mark.parametrize("info", OPTIMIZERS, ids=case_id)
def test_parameters_keep_their_storage_and_gradients_are_never_written(
    info: OptimizerInfo, mode: str
) -> None:
    params = make_params(torch.float32, info=info)
    pointers = [p.data_ptr() for p in params]
    opt = info.cls(params, **info.configs[-1])
    engine.set_mode(opt, mode)
    for step in range(4):
        give_grads(params, step, info)
        grads = [p.grad for p in params]
        values = [None if g is None else g.clone() for g in grads]
        info.step(opt, lambda: torch.zeros(()))  # the gradients given, and a loss
        for param, grad, value in zip(params, grads, values, strict=True):
            assert param.grad is grad
            assert value is None or torch.equal(grad.to_dense(), value.to_dense())
    for param, pointer in zip(params, pointers, strict=True):
        assert param.data_ptr() == pointer
        assert param._base is None
        assert param.untyped_storage().nbytes() == param.numel() * param.element_size()


def small_trained_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = descent.AdamW(model, lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 6)).square().mean().backward()
        opt.step()
    return model


def test_safetensors_save_model_writes_every_tensor(tmp_path: Any) -> None:
    from safetensors.torch import load_model, save_model

    model = small_trained_model()
    save_model(model, str(tmp_path / "model.safetensors"))
    restored = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    missing, unexpected = load_model(restored, str(tmp_path / "model.safetensors"))
    assert not missing and not unexpected
    for a, b in zip(model.state_dict().values(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_pickled_model_and_submodule_state_dicts_hold_only_their_own_tensors() -> None:
    import pickle

    model = small_trained_model()
    fresh = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    assert len(pickle.dumps(model)) <= 1.05 * len(pickle.dumps(fresh))
    buffer = io.BytesIO()
    torch.save(model[2].state_dict(), buffer)
    own = sum(t.numel() * t.element_size() for t in model[2].state_dict().values())
    assert buffer.tell() < own + 2_000


# ---------------------------------------------------------------------- generated kernels

needs_compiler = pytest.mark.skipif(
    descent.engine.cpu.compiler() is None, reason="needs a C compiler"
)


ELEMENTWISE_CASES = [
    (info, config)
    for info, config in config_cases()
    if info.cls.elementwise and not info.sparse_gradients
]


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("info", "config"), ELEMENTWISE_CASES, ids=case_id)
def test_generated_kernels_match_per_tensor(
    info: OptimizerInfo, config: dict[str, Any], dtype: torch.dtype
) -> None:
    """One C loop generated from the math vs the math per tensor: params and state."""
    ours, ours_opt = run(info, config, "compiled", dtype)
    reference, reference_opt = run(info, config, "per_tensor", dtype)
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-5}[dtype]
    assert relative_difference(ours, reference) <= tolerance
    assert relative_difference(state_tensors(ours_opt), state_tensors(reference_opt)) <= tolerance


SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0]


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    ("name", "scalars", "reference"),
    [
        ("maximum", (), torch.maximum),
        ("clamp_min", (0.5,), lambda a, b: a.clamp_min(0.5)),
        ("clamp_max", (0.5,), lambda a, b: a.clamp_max(0.5)),
        ("clamp", (-0.5, 0.5), lambda a, b: a.clamp(-0.5, 0.5)),
        ("sign", (), lambda a, b: torch.sign(a)),
        ("gt_s", (0.5,), lambda a, b: (a > 0.5).to(a.dtype)),
        ("masked_fill", (7.0,), lambda a, b: a.masked_fill(b != 0, 7.0)),
    ],
)
def test_generated_selects_match_torch_on_special_values(
    name: str, scalars: tuple[float, ...], reference: Any, dtype: torch.dtype
) -> None:
    """The kernel's selects (vector blends once compiled) against torch's operations on
    every pair of NaN, infinities, signed zeros and ordinary numbers, bit for bit (the
    sign of zero included)."""
    from descent.engine.trace import OPS, Op, Program

    values = torch.tensor(SPECIAL, dtype=dtype)
    a = values.repeat_interleave(len(SPECIAL)).contiguous()  # every pair, 100 elements
    b = values.repeat(len(SPECIAL)).contiguous()
    expected = reference(a, b)
    operands = (0, 1)[: OPS[name]]
    program = Program(
        ("param", "grad"),
        (Op(name, operands, tuple(range(len(scalars)))),),
        (("param", 2),),
        len(scalars),
    )
    kernel = descent.engine.cpu.kernel(program, dtype, wait=True)
    assert kernel is not None
    pointers = np.array([a.data_ptr(), b.data_ptr()], dtype=np.int64)
    kernel(pointers, 1, np.array([0, a.numel()], dtype=np.int64), list(scalars))
    torch.testing.assert_close(a, expected, rtol=0, atol=0, equal_nan=True)
    numbers = ~expected.isnan()  # (a NaN's sign bit carries no meaning)
    assert torch.equal(a.signbit()[numbers], expected.signbit()[numbers])


NOT_GENERATED: dict[str, str] = {}
"""Elementwise rules whose math a generated kernel cannot express, and why (they run
on lists in every mode)."""


@needs_compiler
@pytest.mark.parametrize(("info", "config"), ELEMENTWISE_CASES, ids=case_id)
def test_elementwise_rules_run_on_generated_kernels(
    info: OptimizerInfo, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After its first step (which creates the state), every elementwise rule's step is
    one generated kernel: its math traces (a rule that stops tracing would silently run
    several passes over memory instead of one)."""
    params = make_params()
    opt = info.cls(params, **config)
    engine.set_mode(opt, "compiled")
    generator = torch.Generator().manual_seed(0)
    calls: list[Any] = []
    for step in range(4):  # every parameter steps together: one kernel call per step
        if step == 1:
            calls = kernel_calls(monkeypatch)
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator, dtype=param.dtype)
        opt.step()
    expected = 0 if info.name in NOT_GENERATED else 3
    assert len(calls) == expected, NOT_GENERATED.get(info.name)


@needs_compiler
def test_auto_policy_on_the_cpu() -> None:
    """torch's fused kernel for few tensors of a rule that has one, a generated kernel for
    many (or for a rule without one), the math on lists below the generated size."""

    def path(cls: type[descent.Optimizer], count: int, numel: int) -> str:
        params = [nn.Parameter(torch.randn(numel)) for _ in range(count)]
        bucket = descent.engine._layout(params).buckets[0]
        return engine.choose_path("auto", cls(params), bucket)

    large = engine.GENERATED_MIN_NUMEL * 4
    few, many = engine.FUSED_MAX_TENSORS - 1, engine.FUSED_MAX_TENSORS
    assert path(descent.Adam, 1, large) == "fused"
    assert path(descent.Adam, few, large // few) == "fused"
    assert path(descent.Adam, many, large // many) == "generated"
    assert path(descent.SGD, many, large // many) == "generated"
    assert path(descent.NAdam, 1, large) == "generated"
    assert path(descent.NAdam, 1, 100) == "foreach"
    assert path(descent.Adam, many, 100) == "fused"


def kernel_calls(monkeypatch: pytest.MonkeyPatch, backend: Any = descent.engine.cpu) -> list[Any]:
    """From now on, each generated kernel of ``backend`` called, once per call."""
    calls: list[Any] = []
    original = backend.Kernel.__call__

    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(backend.Kernel, "__call__", recording)
    return calls


@needs_compiler
def test_no_step_waits_for_the_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """While a kernel is being built, auto steps run the math on lists; then the kernel."""
    import threading

    monkeypatch.setenv("DESCENT_CACHE_DIR", str(tmp_path))
    release = threading.Event()
    original = descent.engine.cpu._build

    def held_build(code: str) -> Any:
        assert release.wait(timeout=60)
        return original(code + "\n/* held */\n")  # a source no other test has built

    monkeypatch.setattr(descent.engine.cpu, "_build", held_build)
    monkeypatch.setattr(descent.engine.cpu._builds, "futures", {})  # nothing built yet
    monkeypatch.setattr(descent.engine, "GENERATED_MIN_NUMEL", 0)
    calls = kernel_calls(monkeypatch)
    params, reference = make_params(seed=3), make_params(seed=3)
    opt = descent.Adamax(params, lr=0.01, weight_decay=0.25)
    reference_opt = descent.Adamax(reference, lr=0.01, weight_decay=0.25)
    engine.set_mode(reference_opt, "per_tensor")
    for step in range(2):
        give_grads(params, step)
        give_grads(reference, step)
        opt.step()  # the build is held: these steps cannot have waited for it
        reference_opt.step()
    assert len(calls) == 0
    release.set()
    descent.engine.cpu._builds.drain()
    for step in range(2, 5):
        give_grads(params, step)
        give_grads(reference, step)
        opt.step()
        reference_opt.step()
    assert len(calls) >= 1
    assert relative_difference(params, reference) <= 1e-12


def test_without_a_compiler_the_math_runs_on_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(descent.engine.cpu, "compiler", lambda: None)
    calls = kernel_calls(monkeypatch)
    info = next(i for i in OPTIMIZERS if i.name == "NAdam")
    ours, _ = run(info, {"lr": 0.01}, "compiled")
    reference, _ = run(info, {"lr": 0.01}, "foreach")
    assert len(calls) == 0
    for a, b in zip(ours, reference, strict=True):
        assert torch.equal(a, b)


def step_large(threads_min: int, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Eight Adam steps on tensors of uneven sizes (70,001 elements in all, so the
    threads' ranges start and end inside tensors), compiled, with kernels split across
    threads from ``threads_min`` elements; the parameters after them."""
    monkeypatch.setattr(descent.engine.cpu, "PARALLEL_MIN_NUMEL", threads_min)
    monkeypatch.setattr(descent.engine.cpu, "THREADS_MIN_NUMEL", threads_min)
    generator = torch.Generator().manual_seed(7)
    params = [
        nn.Parameter(torch.randn(numel, generator=generator)) for numel in (30_011, 7, 39_983)
    ]
    opt = descent.Adam(params, lr=0.01, weight_decay=0.1, amsgrad=True)
    engine.set_mode(opt, "compiled")
    for _ in range(8):
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator)
        opt.step()
    return [param.detach().clone() for param in params]


@needs_compiler
@pytest.mark.parametrize("runtime", ["openmp", "python threads"])
def test_kernels_split_across_threads_match_one_thread(
    runtime: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """A kernel split across torch's threads (in OpenMP's team, or across Python threads
    where OpenMP is not used) computes what one thread does, bit for bit."""
    if runtime == "openmp" and not descent.engine.cpu.openmp():
        pytest.skip("torch does not run on GNU OpenMP here")
    if torch.get_num_threads() < 2:
        pytest.skip("needs two intra-op threads")
    monkeypatch.setenv("DESCENT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(descent.engine.cpu, "openmp", lambda: runtime == "openmp")
    monkeypatch.setattr(descent.engine.cpu._builds, "futures", {})
    calls = kernel_calls(monkeypatch)
    split = step_large(1_000, monkeypatch)
    assert calls and all((kernel.parallel is not None) == (runtime == "openmp") for kernel in calls)
    one = step_large(1 << 40, monkeypatch)
    for a, b in zip(split, one, strict=True):
        assert torch.equal(a, b)


@needs_compiler
def test_openmp_runs_in_torchs_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """A kernel built with OpenMP loads no second copy of the runtime torch runs on."""
    if not descent.engine.cpu.openmp():
        pytest.skip("torch does not run on GNU OpenMP here")
    monkeypatch.setenv("DESCENT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(descent.engine.cpu._builds, "futures", {})
    step_large(1_000, monkeypatch)
    with open("/proc/self/maps") as maps:  # (other libraries' own copies have other names)
        runtimes = {line.split()[-1] for line in maps if line.rstrip().endswith("/libgomp.so.1")}
    assert len(runtimes) == 1, runtimes


@needs_compiler
def test_a_compiler_without_openmp_builds_the_kernel_without(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """A compiler that refuses ``-fopenmp`` gets the kernel built without it; the work is
    then split across Python threads, with the same result."""
    compiler = descent.engine.cpu.compiler()
    refusing = tmp_path / "cc-without-openmp"
    refusing.write_text(
        f'#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec {compiler} "$@"\n'
    )
    refusing.chmod(0o755)
    monkeypatch.setenv("DESCENT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(descent.engine.cpu, "compiler", lambda: str(refusing))
    monkeypatch.setattr(descent.engine.cpu, "openmp", lambda: True)
    monkeypatch.setattr(descent.engine.cpu, "_WITHOUT_OPENMP", set())
    monkeypatch.setattr(descent.engine.cpu._builds, "futures", {})
    calls = kernel_calls(monkeypatch)
    split = step_large(1_000, monkeypatch)
    assert calls and all(kernel.parallel is None for kernel in calls)
    assert "-fopenmp" not in descent.engine.cpu.flags()  # not tried again for this compiler
    monkeypatch.setattr(descent.engine.cpu, "compiler", lambda: compiler)
    monkeypatch.setattr(descent.engine.cpu._builds, "futures", {})
    for a, b in zip(split, step_large(1 << 40, monkeypatch), strict=True):
        assert torch.equal(a, b)


def test_descent_no_openmp_turns_openmp_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESCENT_NO_OPENMP", "1")
    descent.engine.cpu.openmp.cache_clear()
    try:
        assert descent.engine.cpu.openmp() is False
        assert "-fopenmp" not in descent.engine.cpu.flags()
    finally:
        monkeypatch.delenv("DESCENT_NO_OPENMP")
        descent.engine.cpu.openmp.cache_clear()


@needs_compiler
def test_a_failed_build_warns_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(code: str) -> Any:
        raise OSError("compiler crashed")

    monkeypatch.setattr(descent.engine.cpu, "_build", broken)
    monkeypatch.setattr(descent.engine.cpu._builds, "futures", {})
    monkeypatch.setattr(descent.engine.cpu._builds, "warned", set())
    params, reference = make_params(seed=4), make_params(seed=4)
    opt = descent.RMSprop(params, lr=0.01, alpha=0.5)
    engine.set_mode(opt, "compiled")
    reference_opt = descent.RMSprop(reference, lr=0.01, alpha=0.5)
    engine.set_mode(reference_opt, "foreach")
    with pytest.warns(RuntimeWarning, match="building a generated kernel failed"):
        for step in range(3):
            give_grads(params, step)
            give_grads(reference, step)
            opt.step()
            reference_opt.step()
    for a, b in zip(params, reference, strict=True):
        assert torch.equal(a, b)


@needs_compiler
def test_generated_kernels_skip_strided_params_and_grads() -> None:
    """A transposed gradient or a strided parameter is updated by the math on lists."""
    base = torch.randn(6, 4, dtype=torch.float64)
    strided = base[:, ::2].clone().t().requires_grad_()  # non-contiguous parameter
    plain = nn.Parameter(torch.randn(3, 5, dtype=torch.float64))
    params = [strided, plain]
    copies = [p.detach().clone().requires_grad_() for p in params]
    opt, reference = descent.Adam(params, lr=0.1), descent.Adam(copies, lr=0.1)
    engine.set_mode(opt, "compiled")
    engine.set_mode(reference, "per_tensor")
    for _ in range(3):
        for p, q in zip(params, copies, strict=True):
            grad = torch.randn(q.shape[::-1], dtype=torch.float64).t()  # transposed
            p.grad, q.grad = grad, grad.clone()
        opt.step()
        reference.step()
    assert relative_difference(params, copies) <= 1e-12


TRITON_CASES = ELEMENTWISE_CASES[::3]


@pytest.mark.parametrize(("info", "config"), TRITON_CASES, ids=case_id)
def test_generated_triton_kernels_match_per_tensor_in_the_interpreter(
    info: OptimizerInfo, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """The CUDA backend's generated source, run by Triton's CPU interpreter (float64)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    monkeypatch.setenv("DESCENT_CACHE_DIR", str(tmp_path))
    cuda_backend = descent.engine.cuda
    monkeypatch.setattr(descent.engine, "_backend", lambda device: cuda_backend)
    monkeypatch.setattr(cuda_backend._builds, "futures", {})
    calls = kernel_calls(monkeypatch, cuda_backend)
    ours, ours_opt = run(info, config, "compiled", steps=4)
    reference, reference_opt = run(info, config, "per_tensor", steps=4)
    assert len(calls) > 0
    assert relative_difference(ours, reference) <= 1e-12
    assert relative_difference(state_tensors(ours_opt), state_tensors(reference_opt)) <= 1e-12
