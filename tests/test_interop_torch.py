"""Switching a live run between torch.optim and descent: no jump in the trajectory."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch
from torch import nn

import descent
from descent.interop import from_torch, to_torch
from descent.interop.torch_optim import _NAMES as PAIRS
from optim_table import OPTIMIZERS, OptimizerInfo, case_id

PAIRED = [info for info in OPTIMIZERS if info.name in PAIRS]
"""The optimizers from_torch and to_torch convert."""
TORCH_CASES = [(info, config) for info in PAIRED for config in info.configs[:3]]


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def groups(model: nn.Module, lr: float) -> list[dict[str, Any]]:
    return [
        {"params": list(model[0].named_parameters()), "lr": lr * 0.5},
        {"params": list(model[2].named_parameters())},
    ]


def backward(model: nn.Module, step: int) -> None:
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(12, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(12, 3, generator=generator, dtype=torch.float64)
    device = next(model.parameters()).device
    model.zero_grad(set_to_none=True)
    ((model(x.to(device)) - y.to(device)) ** 2).mean().backward()
    if step % 4 == 3:
        model[2].bias.grad = None  # parameters without a gradient on some steps


def run(optimizer: torch.optim.Optimizer, model: nn.Module, steps: range) -> None:
    for step in steps:
        backward(model, step)
        optimizer.step()


def assert_same_parameters(a: nn.Module, b: nn.Module, tolerance: float = 1e-12) -> None:
    """Largest difference relative to the tensor's largest value at most ``tolerance``."""
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        difference = ((pa - pb).abs().max() / pb.abs().max()).item()
        assert difference <= tolerance, (name, difference)


@pytest.mark.parametrize(("info", "config"), TORCH_CASES, ids=case_id)
def test_ten_torch_steps_then_ten_descent_steps_equal_twenty_torch_steps(
    info: OptimizerInfo, config: dict[str, Any]
) -> None:
    switched, reference = make_model(), make_model()
    torch_cls = info.reference
    first = torch_cls(groups(switched, config["lr"]), **config)
    run(first, switched, range(10))
    converted = from_torch(first)
    assert type(converted) is info.cls
    run(converted, switched, range(10, 20))

    whole = torch_cls(groups(reference, config["lr"]), **config)
    run(whole, reference, range(20))
    assert_same_parameters(switched, reference)


@pytest.mark.parametrize(("info", "config"), TORCH_CASES, ids=case_id)
def test_ten_descent_steps_then_ten_torch_steps_equal_twenty_descent_steps(
    info: OptimizerInfo, config: dict[str, Any]
) -> None:
    switched, reference = make_model(), make_model()
    first = info.cls(groups(switched, config["lr"]), **config)
    run(first, switched, range(10))
    converted = to_torch(first)
    assert type(converted) is info.reference
    run(converted, switched, range(10, 20))

    whole = info.cls(groups(reference, config["lr"]), **config)
    run(whole, reference, range(20))
    assert_same_parameters(switched, reference)


def test_the_two_optimizers_share_no_state() -> None:
    model = make_model()
    torch_opt = torch.optim.Adam(model.parameters(), lr=0.01)
    run(torch_opt, model, range(3))
    before = copy.deepcopy(torch_opt.state_dict()["state"])
    converted = from_torch(torch_opt)
    run(converted, model, range(3, 6))
    for index, entry in torch_opt.state_dict()["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, before[index][key]), (index, key)
    back = to_torch(converted)
    run(back, model, range(6, 8))
    assert int(next(iter(converted.state.values()))["step"]) == 6


def test_groups_options_and_names_come_along() -> None:
    model = make_model()
    torch_opt = torch.optim.SGD(groups(model, 0.1), lr=0.1, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.StepLR(torch_opt, step_size=1, gamma=0.5)
    run(torch_opt, model, range(2))
    scheduler.step()
    converted = from_torch(torch_opt)
    for old, new in zip(torch_opt.param_groups, converted.param_groups, strict=True):
        assert new["lr"] == old["lr"] and new["initial_lr"] == old["initial_lr"]
        assert new["param_names"] == old["param_names"] == ["weight", "bias"]
        assert all(a is b for a, b in zip(new["params"], old["params"], strict=True))
        assert new["nesterov"] is True
    assert converted.defaults["momentum"] == 0.9
    new_scheduler = torch.optim.lr_scheduler.StepLR(converted, step_size=1, gamma=0.5)
    new_scheduler.load_state_dict(scheduler.state_dict())
    new_scheduler.step()
    assert converted.param_groups[0]["lr"] == pytest.approx(0.05 * 0.25)


def test_torch_execution_options() -> None:
    model = make_model()
    opt = descent.Adam(model.parameters(), lr=0.01)
    run(opt, model, range(2))
    torch_opt = to_torch(opt, foreach=False)
    assert all(group["foreach"] is False for group in torch_opt.param_groups)
    torch_opt = to_torch(opt, capturable=True)  # a CUDA option; stepping it needs CUDA
    assert all(group["capturable"] is True for group in torch_opt.param_groups)
    back = from_torch(torch_opt)
    assert all(group["capturable"] is False for group in back.param_groups)
    assert int(back.state[next(model.parameters())]["step"]) == 2
    run(back, model, range(2, 3))
    with pytest.raises(
        ValueError,
        match=r"options \['momentum'\] are not options of "
        r"torch\.optim\.Adam",
    ):
        to_torch(opt, momentum=0.9)


def test_adagrad_parameters_descent_never_updated_get_torch_initial_state() -> None:
    model = make_model()
    opt = descent.Adagrad(model.parameters(), lr=0.1, initial_accumulator_value=0.2)
    model[0].weight.grad = torch.ones_like(model[0].weight)
    opt.step()
    torch_opt = to_torch(opt)
    assert float(torch_opt.state[model[0].weight]["step"]) == 1
    assert torch.equal(torch_opt.state[model[2].bias]["sum"], torch.full_like(model[2].bias, 0.2))
    run(torch_opt, model, range(2))


def test_unsupported_optimizers_are_refused() -> None:
    params = [nn.Parameter(torch.ones(2))]
    with pytest.raises(TypeError, match=r"descent's SignSGD and Lion have no torch\.optim"):
        to_torch(descent.Lion(params))

    class MyAdam(torch.optim.Adam):
        pass

    with pytest.raises(TypeError, match=r"MyAdam; expected one of torch\.optim\.\{SGD"):
        from_torch(MyAdam(params))
    with pytest.raises(TypeError, match=r"LBFGS"):
        from_torch(torch.optim.LBFGS(params))
    with pytest.raises(TypeError, match=r"to_torch: optimizer has type SGD"):
        to_torch(torch.optim.SGD(params, lr=0.1))
    import numpy as np

    with pytest.raises(TypeError, match=r"updates NumPy arrays"):
        to_torch(descent.SGD({"w": np.ones(2)}, lr=0.1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_capturable_cuda_state_comes_back_to_the_cpu() -> None:
    model = make_model().cuda()
    torch_opt = torch.optim.Adam(model.parameters(), lr=0.01, capturable=True)
    run(torch_opt, model, range(2))
    converted = from_torch(torch_opt)
    step = converted.state[next(model.parameters())]["step"]
    assert step.device.type == "cpu" and int(step) == 2
    run(converted, model, range(2, 3))


def saved_and_loaded(state_dict: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("info", PAIRED, ids=case_id)
def test_checkpoints_move_between_the_libraries(info: OptimizerInfo) -> None:
    config = info.configs[-1]
    # torch checkpoint -> descent
    model, reference = make_model(), make_model()
    torch_opt = info.reference(groups(model, config["lr"]), **config)
    run(torch_opt, model, range(10))
    saved = saved_and_loaded(torch_opt.state_dict())
    opt = info.cls(groups(model, config["lr"]), **config)
    opt.load_state_dict(descent.interop.convert_state_dict(saved, opt))
    run(opt, model, range(10, 20))
    whole = info.reference(groups(reference, config["lr"]), **config)
    run(whole, reference, range(20))
    assert_same_parameters(model, reference)
    # descent checkpoint -> torch
    model, reference = make_model(), make_model()
    opt = info.cls(groups(model, config["lr"]), **config)
    run(opt, model, range(10))
    saved = saved_and_loaded(opt.state_dict())
    torch_opt = info.reference(groups(model, config["lr"]), **config)
    torch_opt.load_state_dict(descent.interop.convert_state_dict(saved, torch_opt))
    run(torch_opt, model, range(10, 20))
    whole = info.cls(groups(reference, config["lr"]), **config)
    run(whole, reference, range(20))
    # torch's load_state_dict casts NAdam's float32 mu_product to the parameters' float64,
    # so later products round differently: torch resuming its own checkpoint deviates by
    # 8e-13 in this test too.
    assert_same_parameters(model, reference, 1e-11 if info.name == "NAdam" else 1e-12)


def test_convert_state_dict_normalises_and_checks() -> None:
    model = make_model()
    torch_opt = torch.optim.Adam(model.parameters(), lr=0.01)
    run(torch_opt, model, range(2))
    saved = torch_opt.state_dict()
    for group in saved["param_groups"]:
        group["capturable"] = True  # as written by a CUDA run
    opt = descent.Adam(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match=r"capturable=True is not supported"):
        opt.load_state_dict(saved)
    converted = descent.interop.convert_state_dict(saved, opt)
    assert converted["state"][0]["exp_avg"] is not saved["state"][0]["exp_avg"]
    opt.load_state_dict(converted)
    assert opt.param_groups[0]["capturable"] is False
    assert saved["param_groups"][0]["capturable"] is True  # the input is not changed

    adagrad = descent.Adagrad(model.parameters(), lr=0.1)
    model[0].weight.grad = torch.ones_like(model[0].weight)
    adagrad.step()  # only one parameter has state
    torch_adagrad = torch.optim.Adagrad(model.parameters(), lr=0.1)
    torch_adagrad.load_state_dict(
        descent.interop.convert_state_dict(adagrad.state_dict(), torch_adagrad)
    )
    assert len(torch_adagrad.state) == 4
    run(torch_adagrad, model, range(2))

    with pytest.raises(ValueError, match=r"groups of \[4\] parameters, the optimizer \[2, 2\]"):
        descent.interop.convert_state_dict(saved, descent.Adam(groups(model, 0.1)))
    with pytest.raises(ValueError, match=r"the state dict is descent's 'Adagrad', not 'Adam'"):
        descent.interop.convert_state_dict(
            adagrad.state_dict(), torch.optim.Adam(model.parameters())
        )
    with pytest.raises(TypeError, match=r"not an optimizer state dict"):
        descent.interop.convert_state_dict({"state": {}}, opt)
    with pytest.raises(TypeError, match=r"optimizer has type Lion"):
        descent.interop.convert_state_dict(saved, descent.Lion(model.parameters()))
