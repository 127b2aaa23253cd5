"""descent.engine: flat buffers give the per-tensor reference's results, and keep its semantics.

References are independent of the flat path: the same optimizer run in ``"per_tensor"``
mode (each parameter updated on its own by the algorithm's math function), and for
DDP a plain model. Timings are never asserted here (see ``bench/``).
"""

from __future__ import annotations

import io
import socket
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import descent
from descent import engine
from descent.engine import kernels
from optim_table import OPTIMIZERS, OptimizerInfo, case_id, config_cases

STEPS = 8


def make_params(dtype: torch.dtype = torch.float64, seed: int = 0) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (5,), (2, 3, 2), (7,), (1,)]
    return [nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype))
            for shape in shapes]


def give_grads(params: list[torch.Tensor], step: int) -> None:
    """Fresh gradients; some params get none on some steps (a hole in the middle too)."""
    generator = torch.Generator().manual_seed(100 + step)
    for i, param in enumerate(params):
        grad = torch.randn(param.shape, generator=generator, dtype=param.dtype)
        missing = (i == 1 and step % 3 == 1) or (i == 4 and step % 2 == 0)
        param.grad = None if missing else grad


def run(info: OptimizerInfo, config: dict[str, Any], mode: str,
        dtype: torch.dtype = torch.float64, steps: int = STEPS) -> tuple[list, Any]:
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
    return [torch.as_tensor(entry[key]) for index in sorted(state)
            for entry in [state[index]] for key in sorted(entry)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("info", "config"), config_cases(), ids=case_id)
def test_eager_flat_path_is_bit_identical_to_per_tensor(info: OptimizerInfo,
                                                        config: dict[str, Any],
                                                        dtype: torch.dtype) -> None:
    """Same kernels on flat buffers: the same bits, for the params and for every state entry."""
    ours, ours_opt = run(info, config, "eager", dtype)
    reference, reference_opt = run(info, config, "per_tensor", dtype)
    for a, b in zip(ours, reference, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0], make_params(dtype)[0])  # it moved
    for a, b in zip(state_tensors(ours_opt), state_tensors(reference_opt), strict=True):
        assert torch.equal(a, b)


FUSED_CASES = [(info, config) for info, config in config_cases()
               if kernels.fused_kernel(info.cls) is not None]


@pytest.mark.parametrize(("info", "config"), FUSED_CASES, ids=case_id)
def test_torch_fused_kernels_match_the_math_functions(info: OptimizerInfo,
                                                      config: dict[str, Any]) -> None:
    """torch's fused kernel on flat buffers vs descent's math per tensor: float64, <= 1e-12."""
    ours, ours_opt = run(info, config, "fused")
    reference, reference_opt = run(info, config, "per_tensor")
    assert relative_difference(ours, reference) <= 1e-12
    assert relative_difference(state_tensors(ours_opt), state_tensors(reference_opt)) <= 1e-12


def test_fused_kernels_cover_the_rules_torch_has() -> None:
    assert {info.name for info, _ in FUSED_CASES} == {"Adam", "AdamW", "SGD", "Adagrad"}


class Scaled(descent.Adam):
    """A subclass with its own rule: must not get Adam's fused kernel."""

    def _update(self, param: torch.Tensor, grad: torch.Tensor, state: Any,
                group: Any) -> dict[str, torch.Tensor]:
        return super()._update(param, 2 * grad, state, group)


def test_subclass_overriding_update_does_not_get_the_fused_kernel() -> None:
    assert kernels.fused_kernel(Scaled) is None
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


@pytest.mark.parametrize("name", ["NAdam", "RAdam"])
def test_compiled_path_matches_per_tensor(name: str) -> None:
    """torch.compile of the math function (float64): <= 1e-12 from the reference.

    NAdam has scalar state (``mu_product``); RAdam branches on the step count and changes
    branch at step 6, so both of its variants run.
    """
    info = next(i for i in OPTIMIZERS if i.name == name)
    config = {"lr": 0.01, "weight_decay": 0.1}
    ours, ours_opt = run(info, config, "compiled")
    reference, reference_opt = run(info, config, "per_tensor")
    assert relative_difference(ours, reference) <= 1e-12
    assert relative_difference(state_tensors(ours_opt), state_tensors(reference_opt)) <= 1e-12


def test_scheduler_changing_lr_every_step_does_not_recompile() -> None:
    from torch._dynamo.utils import counters

    params = make_params()
    opt = descent.NAdam(params, lr=0.01, weight_decay=0.1)
    engine.set_mode(opt, "compiled")
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    for step in range(2):
        give_grads(params, step)
        opt.step()
        scheduler.step()
    compiled_before = counters["stats"]["unique_graphs"]
    for step in range(2, 9):
        give_grads(params, step)
        opt.step()
        scheduler.step()
    assert counters["stats"]["unique_graphs"] == compiled_before
    assert opt.lr == pytest.approx(0.01 / 10)


def test_compile_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(kernels, "run_compiled", broken)
    monkeypatch.setattr(engine, "_compile_failed", set())
    info = next(i for i in OPTIMIZERS if i.name == "RMSprop")
    with pytest.warns(RuntimeWarning, match="torch.compile failed for RMSprop"):
        ours, _ = run(info, {"lr": 0.01}, "compiled")
    reference, _ = run(info, {"lr": 0.01}, "per_tensor")
    for a, b in zip(ours, reference, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------- layout


def test_params_and_state_live_in_one_flat_buffer() -> None:
    params = make_params()
    opt = descent.Adam(params, lr=0.1)
    for param in params:
        param.grad = torch.ones_like(param)
    opt.step()
    storages = {p.untyped_storage().data_ptr() for p in params}
    assert len(storages) == 1
    total = sum(p.numel() for p in params)
    assert params[0].untyped_storage().nbytes() == total * 8
    grads = {p.grad.untyped_storage().data_ptr() for p in params}
    assert len(grads) == 1 and grads != storages
    exp_avgs = {opt.state[p]["exp_avg"].untyped_storage().data_ptr() for p in params}
    assert len(exp_avgs) == 1
    assert all(opt.state[p]["exp_avg"].shape == p.shape for p in params)


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


def test_state_dict_holds_compact_tensors_and_round_trips() -> None:
    info = next(i for i in OPTIMIZERS if i.name == "Adam")
    params, opt = run(info, {"lr": 0.01, "amsgrad": True}, "auto", steps=4)
    state = opt.state_dict()["state"]
    for entry in state.values():
        for value in entry.values():
            assert value._base is None
            assert value.untyped_storage().nbytes() == value.numel() * value.element_size()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    state_bytes = sum(v.numel() * v.element_size() for e in state.values() for v in e.values())
    assert buffer.tell() < 2 * state_bytes + 20_000
    # resume into a fresh optimizer (flat again after its first step) and continue
    resumed = [nn.Parameter(p.detach().clone()) for p in params]
    resumed_opt = descent.Adam(resumed, lr=0.01, amsgrad=True)
    buffer.seek(0)
    resumed_opt.load_state_dict(torch.load(buffer, weights_only=True))
    for step in range(4, STEPS):
        give_grads(params, step)
        give_grads(resumed, step)
        opt.step()
        resumed_opt.step()
    for a, b in zip(params, resumed, strict=True):
        assert torch.equal(a, b)
    live = opt.state[params[0]]["exp_avg"]
    assert live._base is not None  # the optimizer's own state is still the flat view


def test_load_state_dict_into_a_stepped_optimizer_replaces_the_flat_state() -> None:
    info = next(i for i in OPTIMIZERS if i.name == "NAdam")
    params, opt = run(info, {"lr": 0.01}, "eager", steps=3)
    saved = opt.state_dict()
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
    for mode in ("eager", "per_tensor"):
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
    """After ``model.to(float64)`` the engine moves params and state to float64 buffers.

    Reference: the per-tensor path with its state converted by hand to the parameter's
    new dtype (as torch's ``load_state_dict`` would cast it).
    """
    results = []
    for mode in ("eager", "per_tensor"):
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
        assert all(v.dtype == torch.float64 for s in opt.state.values()
                   for k, v in s.items() if k != "step")
        results.append(list(model.parameters()))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------- gradients


@pytest.mark.parametrize("set_to_none", [True, False])
def test_gradient_accumulation_matches_per_tensor(set_to_none: bool) -> None:
    results = []
    for mode in ("eager", "per_tensor"):
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
        if mode == "eager" and not set_to_none:
            opt.zero_grad(set_to_none=False)
            grads = {p.grad.untyped_storage().data_ptr() for p in model.parameters()}
            assert len(grads) == 1  # zeroed in place as views of the flat gradient
            assert all(not p.grad.any() for p in model.parameters())
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_zero_grad_set_to_none_leaves_none() -> None:
    params = make_params()
    opt = descent.Adam(params)
    give_grads(params, 0)
    opt.step()
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_grad_whose_storage_was_swapped_is_read_again() -> None:
    params = make_params()
    opt = descent.SGD(params, lr=1.0)
    engine.set_mode(opt, "eager")
    for param in params:
        param.grad = torch.zeros_like(param)
    opt.step()
    before = params[0].detach().clone()
    params[0].grad.data = torch.ones_like(params[0])  # same tensor object, new storage
    opt.step()
    assert torch.equal(params[0], before - 1)


def test_sparse_gradient_is_refused_with_the_params_name() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    opt = descent.SGD(model, lr=0.1)
    model[0].weight.grad = torch.eye(2).to_sparse()
    with pytest.raises(TypeError, match=r"0\.weight.*sparse gradient"):
        opt.step()


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
    engine.set_mode(opt, "eager")  # flat buffers with the per-tensor path's own kernel
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


def test_non_elementwise_optimizers_get_no_engine() -> None:
    class Normalised(descent.SGD):
        elementwise = False

    params = make_params()
    opt = Normalised(params, lr=0.1)
    give_grads(params, 0)
    opt.step()
    assert engine.existing_engine(opt) is None
    assert engine.existing_engine(descent.SGD(make_params())) is None  # made lazily


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
    assert len(list(engine.existing_engine(opt).buckets())) == 2
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
        engine.set_mode(opt, "eager")
        assert engine.mode_of(opt) == "eager"
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
            # flat buffers under DDP against the per-tensor path, with the same kernel
            engine.set_mode(opt, "eager" if wrap else "per_tensor")
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


def loose_params(opt: Any) -> list[int]:
    flat = engine.existing_engine(opt)
    return [i for layout in flat._layouts.values() for i in layout.loose]


def test_params_stay_flat_after_load_state_dict_and_under_a_new_optimizer() -> None:
    """Params already in a flat buffer (this optimizer's or another's) are flattened again."""
    info = next(i for i in OPTIMIZERS if i.name == "Adam")
    params, opt = run(info, {"lr": 0.01}, "eager", steps=3)
    opt.load_state_dict(opt.state_dict())
    give_grads(params, 3)
    opt.step()
    assert loose_params(opt) == []
    second = descent.Adam(params, lr=0.01)
    give_grads(params, 4)
    second.step()
    assert loose_params(second) == []
    reference, _ = run(info, {"lr": 0.01}, "per_tensor", steps=4)
    reference_second = descent.Adam(reference, lr=0.01)
    engine.set_mode(reference_second, "per_tensor")
    give_grads(reference, 4)
    reference_second.step()
    for a, b in zip(params, reference, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["per_tensor", "auto"])
def test_step_between_forward_and_backward_is_caught_by_autograd(mode: str) -> None:
    """Updates through the flat buffer count in each parameter's version, as in torch."""
    weight = nn.Parameter(torch.randn(3))
    other = nn.Parameter(torch.randn(3))
    opt = descent.SGD([weight, other], lr=0.1)
    engine.set_mode(opt, mode)
    weight.grad, other.grad = torch.ones(3), None
    opt.step()  # builds the flat buffers
    loss = (weight * weight).sum()  # saves weight for backward
    before = (weight._version, other._version)
    weight.grad = torch.ones(3)
    opt.step()
    assert weight._version > before[0]
    assert other._version == before[1]  # no gradient: not updated, version unchanged
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
