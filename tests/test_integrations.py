"""descent with the libraries users combine it with, in one process: accelerate,
safetensors, pickle, ``torch.save`` and ``torch.compile``.

Every test builds a tiny model here (nothing is downloaded), trains it with descent
optimizers in the engine's default mode, and checks the library's contract against an
independent reference: the model's own ``state_dict``, the same run uninterrupted, the
same model trained by ``torch.optim``, the same function run without the compiler.
Two processes (ZeroRedundancyOptimizer, FSDP2, DCP): ``test_integrations_distributed.py``.
"""

from __future__ import annotations

import io
import logging
import pickle
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, load_model, save_model
from torch import nn

import descent
from descent import engine
from optim_table import BY_NAME, OPTIMIZERS, OptimizerInfo, case_id

FEATURES, OUTPUTS, BATCH = 6, 3, 5


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, 8), nn.Tanh(), nn.Linear(8, OUTPUTS)).double()


def make_batches(count: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(BATCH, FEATURES, generator=generator, dtype=torch.float64),
            torch.randn(BATCH, OUTPUTS, generator=generator, dtype=torch.float64),
        )
        for _ in range(count)
    ]


def train(
    model: nn.Module,
    opt: Any,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
) -> None:
    for x, y in batches:
        opt.zero_grad()
        backward(F.mse_loss(model(x), y))
        opt.step()


def values(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def state_tensors(opt: torch.optim.Optimizer) -> dict[tuple[int, str], torch.Tensor]:
    """Every tensor of an optimizer's state dict (copies), keyed by (parameter, name)."""
    return {
        (index, key): value.detach().clone()
        for index, entry in opt.state_dict()["state"].items()
        for key, value in entry.items()
        if torch.is_tensor(value)
    }


def assert_identical(got: dict[Any, torch.Tensor], expected: dict[Any, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


# An optimizer per path of the engine's default mode: torch's fused kernel (AdamW), the
# math on lists with scalar state (NAdam's mu_product), state created lazily by the math
# on its first step and fused afterwards (SGD's momentum buffer).
PATHS = {
    "AdamW": lambda params: descent.AdamW(params, lr=0.01, weight_decay=0.1),
    "NAdam": lambda params: descent.NAdam(params, lr=0.01, weight_decay=0.1),
    "SGD": lambda params: descent.SGD(params, lr=0.05, momentum=0.9, nesterov=True),
}


# ---------------------------------------------------------------------- accelerate


@pytest.fixture
def accelerator_class() -> Iterator[type]:
    accelerate = pytest.importorskip("accelerate")
    yield accelerate.Accelerator
    accelerate.state.AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("name", list(PATHS))
def test_accelerate_save_model_writes_every_tensor(
    accelerator_class: type, tmp_path: Any, name: str, one_thread: None
) -> None:
    accelerator = accelerator_class(cpu=True)
    model = make_model()
    model, opt = accelerator.prepare(model, PATHS[name](model.parameters()))
    train(model, opt, make_batches(3), accelerator.backward)
    accelerator.save_model(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert_identical(load_file(tmp_path / "model.safetensors"), values(model))


@pytest.mark.parametrize("name", list(PATHS))
def test_accelerate_save_state_and_load_state_resume_exactly(
    accelerator_class: type, tmp_path: Any, name: str, one_thread: None
) -> None:
    batches = make_batches(7)

    def prepared(seed: int) -> tuple[Any, nn.Module, Any, Any]:
        accelerator = accelerator_class(cpu=True)
        model = make_model(seed)
        opt = PATHS[name](model.parameters())
        schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return accelerator, *accelerator.prepare(model, opt, schedule)

    accelerator, model, opt, schedule = prepared(seed=0)
    for batch in batches[:4]:
        train(model, opt, [batch], accelerator.backward)
        schedule.step()
    accelerator.save_state(str(tmp_path / "checkpoint"))
    saved_model, saved_state = values(model), state_tensors(opt)
    for batch in batches[4:]:
        train(model, opt, [batch], accelerator.backward)
        schedule.step()

    resumed_accelerator, resumed, resumed_opt, resumed_schedule = prepared(seed=1)
    assert not torch.equal(resumed[0].weight, saved_model["0.weight"])  # loading must act
    resumed_accelerator.load_state(str(tmp_path / "checkpoint"))
    assert_identical(values(resumed), saved_model)
    assert_identical(state_tensors(resumed_opt), saved_state)
    assert resumed_opt.param_groups[0]["lr"] == saved_lr(name, steps=4)
    for batch in batches[4:]:
        train(resumed, resumed_opt, [batch], resumed_accelerator.backward)
        resumed_schedule.step()
    assert_identical(values(resumed), values(model))
    assert_identical(state_tensors(resumed_opt), state_tensors(opt))


def saved_lr(name: str, steps: int) -> float:
    """The learning rate after ``steps`` steps of StepLR(step_size=2, gamma=0.5)."""
    initial = PATHS[name]([torch.zeros(1, requires_grad=True)]).param_groups[0]["lr"]
    return initial * 0.5 ** (steps // 2)


# ---------------------------------------------------------------------- safetensors, pickle


def model_for(info: OptimizerInfo, seed: int = 0) -> nn.Module:
    """The test model, without biases for an optimizer of matrices only (Muon)."""
    model = make_model(seed)
    if info.matrices_only:
        for layer in (model[0], model[2]):
            layer.bias = None
    return model


def trained(info: OptimizerInfo, reference: bool = False) -> nn.Module:
    """A model after three steps of ``info``'s optimizer (or of its reference), in the
    form the optimizer takes: no biases for a matrices-only one (Muon), sparse
    gradients for SparseAdam, the loss as a closure for LBFGS."""
    model = model_for(info)
    cls = info.reference if reference else info.cls
    opt = cls(model.parameters(), **info.configs[-1])
    for x, y in make_batches(3):

        def compute(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            for p in model.parameters():
                p.grad = None
            loss = F.mse_loss(model(x), y)
            loss.backward()
            for p in model.parameters():
                p.grad = info.gradient(p.grad)
            return loss

        info.step(opt, compute)
    return model


def saved_size(obj: Any) -> int:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell()


@pytest.mark.parametrize("info", OPTIMIZERS, ids=case_id)
def test_models_trained_by_descent_save_like_models_trained_by_the_reference(
    info: OptimizerInfo, tmp_path: Any
) -> None:
    """safetensors, pickle and torch.save see the model as they see one trained without
    descent: every tensor written, nothing more."""
    model, reference = trained(info), trained(info, reference=True)
    assert not torch.equal(model[0].weight, make_model()[0].weight)  # it trained

    save_model(model, str(tmp_path / "model.safetensors"))
    restored = model_for(info, seed=5)
    missing, unexpected = load_model(restored, str(tmp_path / "model.safetensors"))
    assert not missing and not unexpected
    assert_identical(values(restored), values(model))

    assert len(pickle.dumps(model)) == len(pickle.dumps(reference))
    assert_identical(values(pickle.loads(pickle.dumps(model))), values(model))
    assert saved_size(model[2].state_dict()) == saved_size(reference[2].state_dict())
    assert saved_size(model) == saved_size(reference)


# ---------------------------------------------------------------------- torch.compile


def steps_through(
    info: OptimizerInfo,
    config: dict[str, Any],
    mode: str | None,
    wrap: Callable[[Callable[..., Any]], Callable[..., Any]],
) -> list[torch.Tensor]:
    """Parameters after three calls of ``wrap(a function that steps)`` and three of
    ``wrap(a whole train step: forward, backward, step)``."""
    model = make_model()
    opt = info.cls(model.parameters(), **config)
    if mode is not None:
        engine.set_mode(opt, mode)

    def step() -> None:
        opt.step()

    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    batches = make_batches(6)
    step, train_step = wrap(step), wrap(train_step)
    for x, y in batches[:3]:
        F.mse_loss(model(x), y).backward()
        step()
        opt.zero_grad()
    for x, y in batches[3:]:
        train_step(x, y)
    return [p.detach().clone() for p in model.parameters()]


@pytest.fixture
def quiet_dynamo() -> Iterator[None]:
    """Graph-break warnings (the engine breaks the graph at .item() calls) are expected."""
    torch._logging.set_logs(dynamo=logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    torch._logging.set_logs()
    torch._dynamo.reset()


def compile_case(
    name: str, config: dict[str, Any], backend: str, mode: str | None = None, slow: bool = False
) -> Any:
    marks = [pytest.mark.slow] if slow else []
    label = ",".join(filter(None, [name, case_id(config), backend, mode]))
    return pytest.param(name, config, backend, mode, marks=marks, id=label)


ADAMW_OPTIONS, NADAM_OPTIONS, SGD_OPTIONS = (
    {"lr": 0.01, "weight_decay": 0.1},
    {"lr": 0.01},
    {"lr": 0.05, "momentum": 0.9},
)
COMPILE_CASES = (
    [
        compile_case("AdamW", ADAMW_OPTIONS, "eager"),  # torch's fused kernel
        compile_case("NAdam", NADAM_OPTIONS, "eager"),  # the math on lists, scalar state
        compile_case("AdamW", ADAMW_OPTIONS, "aot_eager"),
        compile_case("NAdam", NADAM_OPTIONS, "aot_eager"),
        compile_case("SGD", SGD_OPTIONS, "aot_eager"),
        compile_case("AdamW", ADAMW_OPTIONS, "aot_eager", mode="foreach"),
    ]
    + [
        compile_case("SGD", SGD_OPTIONS, "eager", slow=True),
        compile_case("SGD", SGD_OPTIONS, "aot_eager", mode="foreach", slow=True),
    ]
    + [
        compile_case(info.name, info.configs[-1], backend, slow=True)
        for info in OPTIMIZERS
        for backend in ("eager", "aot_eager", "inductor")
    ]
)


@pytest.mark.parametrize(("name", "config", "backend", "mode"), COMPILE_CASES)
def test_compiled_step_and_train_step_match_eager(
    name: str,
    config: dict[str, Any],
    backend: str,
    mode: str | None,
    quiet_dynamo: None,
    one_thread: None,
) -> None:
    info = BY_NAME[name]
    torch._dynamo.reset()
    compiled = steps_through(
        info, config, mode, lambda function: torch.compile(function, backend=backend)
    )
    eager = steps_through(info, config, mode, lambda function: function)
    assert not torch.equal(eager[0], make_model()[0].weight)  # it trained
    for got, expected in zip(compiled, eager, strict=True):
        if backend == "inductor":  # generated kernels may round differently
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
        else:
            assert torch.equal(got, expected)
