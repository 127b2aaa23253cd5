"""descent under torch's sharded training, 2 processes on CPU (gloo): ZeroRedundancyOptimizer
with its parameters as bucket views, FSDP2 (``fully_shard``) and DCP checkpoints.

The test session starts this file once under ``torchrun`` (``python -m
torch.distributed.run --standalone --nproc-per-node=2 tests/test_integrations_distributed.py
--worker OUT``). Every rank trains the same small float64 model on its half of each batch
(gradients averaged across ranks by DDP or FSDP2) and records the parameters, the
optimizer state and what it checked along the way; rank 0 writes them. The tests compare
them with independent references: the same loop in one process with the whole batch and
the unsharded optimizer, and torch.optim's optimizer under the same FSDP2 setup.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import descent
from descent import distributed as dist

WORLD, FEATURES, OUTPUTS, BATCH, STEPS = 2, 6, 3, 4, 6  # batch b = 4 per process

# ZeRO over a descent optimizer whose parameters ZeRO re-binds to views of its buckets
ZERO = {
    "Adam": lambda params: _zero_direct(params, descent.Adam, lr=0.01, weight_decay=0.01),
    "Adam_helper": lambda params: dist.zero_optimizer(
        params, descent.Adam, parameters_as_bucket_view=True, lr=0.01, weight_decay=0.01
    ),
    "SGD_helper": lambda params: dist.zero_optimizer(
        params, descent.SGD, parameters_as_bucket_view=True, lr=0.05, momentum=0.9, nesterov=True
    ),
}
ZERO_REFERENCE = {
    "Adam": lambda params: descent.Adam(params, lr=0.01, weight_decay=0.01),
    "Adam_helper": lambda params: descent.Adam(params, lr=0.01, weight_decay=0.01),
    "SGD_helper": lambda params: descent.SGD(params, lr=0.05, momentum=0.9, nesterov=True),
}

# FSDP2: a descent optimizer in the engine's default mode, torch's counterpart in its
# default (for-loop on CPU) and, where torch has one, its fused implementation
FSDP = {
    "AdamW": (descent.AdamW, torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
    "Adam": (descent.Adam, torch.optim.Adam, {"lr": 0.01, "amsgrad": True}),
    "SGD": (descent.SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    "Adagrad": (descent.Adagrad, torch.optim.Adagrad, {"lr": 0.05}),
    "NAdam": (descent.NAdam, torch.optim.NAdam, {"lr": 0.01, "weight_decay": 0.1}),
}
TORCH_FUSED = ("AdamW", "Adam")  # torch's fused kernels that take DTensors
# Rules that are not elementwise (norms, factored or matrix statistics) see each sharded
# parameter whole, as a DTensor; compared with one process on the whole batch. Muon-type
# rules take the model's matrices only (tests/test_muon_distributed.py has MuonAdamW).
FSDP_WHOLE = {
    "Adafactor": (descent.Adafactor, {"lr": 0.01}),
    "LAMB": (descent.LAMB, {"lr": 0.01, "weight_decay": 0.01}),
    "LARS": (descent.LARS, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
    "StableAdamW": (descent.StableAdamW, {"lr": 0.01, "weight_decay": 0.01}),
    "MARS": (descent.MARS, {"lr": 0.01}),
    "Prodigy": (descent.Prodigy, {"lr": 1.0, "d0": 1e-3}),
    # only the sides whose eigenvalues are distinct (8 samples a step: an 8 x 8 side is
    # rank-deficient, its zero eigenspace has no preferred basis, and SOAP run twice on
    # gradients 1e-15 apart ends 1e-2 apart there, with or without FSDP2)
    "SOAP": (descent.SOAP, {"lr": 0.01, "precondition_frequency": 2, "max_precondition_dim": 6}),
}
DCP_STEPS = 3


def _zero_direct(params: Any, optimizer_class: type, **options: Any) -> Any:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return ZeroRedundancyOptimizer(
        list(params), optimizer_class=optimizer_class, parameters_as_bucket_view=True, **options
    )


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, 8), nn.Tanh(), nn.Linear(8, OUTPUTS)).double()


def make_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """STEPS whole batches of WORLD * BATCH samples; rank r takes rows r, r + WORLD, ..."""
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(WORLD * BATCH, FEATURES, generator=generator, dtype=torch.float64),
            torch.randn(WORLD * BATCH, OUTPUTS, generator=generator, dtype=torch.float64),
        )
        for _ in range(STEPS)
    ]


def train(
    model: nn.Module,
    opt: Any,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    rank: int = 0,
    world: int = 1,
    check: Callable[[], None] | None = None,
) -> None:
    """One step per batch on this rank's rows; ``check`` runs around each step."""
    for x, y in batches:
        F.mse_loss(model(x[rank::world]), y[rank::world]).backward()
        if check is not None:
            check(opt.step)
        else:
            opt.step()
        opt.zero_grad()


def reference(factory: Callable[[Any], Any], steps: int = STEPS) -> dict[str, torch.Tensor]:
    """One process, the whole batch, the unsharded optimizer."""
    model = make_model()
    train(model, factory(model.parameters()), make_batches()[:steps])
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# ---------------------------------------------------------------------- the worker


def worker(out: Path) -> None:
    """One rank of the 2-process run (started by torchrun)."""
    torch.set_num_threads(1)
    assert dist.init_process_group() and dist.get_world_size() == WORLD
    tensors: dict[str, torch.Tensor] = {}
    report: dict[str, Any] = {}
    run_zero(tensors, report)
    run_fsdp(tensors, report)
    run_dcp(out / "dcp", tensors, report)
    reports = dist.all_gather_object(report)
    if dist.is_main_process():
        save_file(tensors, out / "tensors.safetensors")
        (out / "report.json").write_text(json.dumps(reports))
    gc.collect()  # DDP models and ZeRO optimizers hold gloo work objects
    dist.barrier()
    dist.destroy_process_group()


def attempt(report: dict[str, Any], name: str, run: Callable[[], None]) -> None:
    """Run one scenario; record its error instead of stopping the others."""
    try:
        run()
        report[f"{name}/error"] = None
    except Exception:
        report[f"{name}/error"] = traceback.format_exc(limit=-3)


def run_zero(tensors: dict[str, torch.Tensor], report: dict[str, Any]) -> None:
    rank = dist.get_rank()
    batches = make_batches()
    for name, factory in ZERO.items():

        def scenario(name: str = name, factory: Callable[[Any], Any] = factory) -> None:
            model = dist.wrap_model(make_model())
            opt = factory(dist.unwrap_model(model).parameters())
            params = list(dist.unwrap_model(model).parameters())
            train(model, opt, batches, rank, WORLD)
            # the parameters are still views of ZeRO's buckets: nothing re-bound them
            buckets = {
                b.untyped_storage().data_ptr()
                for rank_buckets in opt._buckets
                for b in rank_buckets
            }
            report[f"zero/{name}/views_of_buckets"] = all(
                p.untyped_storage().data_ptr() in buckets for p in params
            )
            report[f"zero/{name}/local_state"] = len(opt.optim.state)
            for key, p in dist.unwrap_model(model).named_parameters():
                tensors[f"zero/{name}/rank{rank}/{key}"] = p.detach().clone()
            for key, p in dist.all_gather_object(
                {k: p.detach() for k, p in dist.unwrap_model(model).named_parameters()}
            )[1 - rank].items():
                tensors[f"zero/{name}/rank{1 - rank}/{key}"] = p.clone()

        attempt(report, f"zero/{name}", scenario)


def sharded_model(seed: int = 0) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    model = make_model(seed)
    for layer in (model[0], model[2]):  # Linear(8, 3) shards unevenly: rows 2 and 1
        fully_shard(layer)
    fully_shard(model)
    return model


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor().detach().clone()


def run_fsdp(tensors: dict[str, torch.Tensor], report: dict[str, Any]) -> None:
    rank, batches = dist.get_rank(), make_batches()
    runs: dict[str, Callable[[Any, dict[str, Any]], Any]] = {}
    for name, (cls, torch_cls, _) in FSDP.items():
        runs[f"{name}/descent"] = lambda params, o, cls=cls: cls(params, **o)
        runs[f"{name}/torch"] = lambda params, o, torch_cls=torch_cls: torch_cls(params, **o)
        if name in TORCH_FUSED:
            runs[f"{name}/torch_fused"] = lambda params, o, torch_cls=torch_cls: torch_cls(
                params, **o, fused=True
            )
    for name, (cls, options) in FSDP_WHOLE.items():
        runs[f"{name}/descent"] = lambda params, o, cls=cls, options=options: cls(params, **options)
    runs["SGD/descent_foreach"] = lambda params, o: _mode(descent.SGD(params, **o), "foreach")
    runs["Adagrad/descent_foreach"] = lambda params, o: _mode(
        descent.Adagrad(params, **o), "foreach"
    )
    for label, factory in runs.items():
        name = label.split("/")[0]

        def scenario(label: str = label, factory: Any = factory, name: str = name) -> None:
            model = sharded_model()
            opt = factory(model.parameters(), FSDP[name][2] if name in FSDP else {})
            checks = StepChecks(model, opt) if label.startswith("AdamW/descent") else None
            train(model, opt, batches, rank, WORLD, checks)
            for key, p in model.named_parameters():
                tensors[f"fsdp/{label}/{key}"] = full(p)
            if checks is not None:
                report.update(
                    {f"fsdp/{label}/{key}": value for key, value in checks.results().items()}
                )

        attempt(report, f"fsdp/{label}", scenario)


def _mode(opt: Any, mode: str) -> Any:
    descent.engine.set_mode(opt, mode)
    return opt


class StepChecks:
    """Around each step: the DTensor gradients are neither replaced nor written, the
    parameters keep their local storage, and the state is sharded like its parameter."""

    def __init__(self, model: nn.Module, opt: Any) -> None:
        self.model, self.opt = model, opt
        self.params = list(model.parameters())
        self.failures: list[str] = []
        self.steps = 0

    def __call__(self, step: Callable[[], Any]) -> None:
        from torch.distributed.tensor import DTensor

        grads = [p.grad for p in self.params]
        if not all(isinstance(g, DTensor) for g in grads):
            self.failures.append("a gradient is not a DTensor")
        before = [g.to_local().clone() for g in grads]
        storage = [p.to_local().untyped_storage().data_ptr() for p in self.params]
        step()
        self.steps += 1
        for i, (p, grad, value, pointer) in enumerate(
            zip(self.params, grads, before, storage, strict=True)
        ):
            if p.grad is not grad:
                self.failures.append(f"step {self.steps}: param {i}'s .grad was replaced")
            elif not torch.equal(grad.to_local(), value):
                self.failures.append(f"step {self.steps}: param {i}'s .grad was written")
            if p.to_local().untyped_storage().data_ptr() != pointer:
                self.failures.append(f"step {self.steps}: param {i} changed storage")
        if any(a is not b for a, b in zip(self.model.parameters(), self.params, strict=True)):
            self.failures.append("the model's parameters were replaced")

    def results(self) -> dict[str, Any]:
        from torch.distributed.tensor import DTensor

        sharded = all(
            isinstance(value, DTensor)
            and value.placements == p.placements
            and value.to_local().shape == p.to_local().shape
            for p in self.params
            for key, value in self.opt.state[p].items()
            if key != "step"
        )
        return {"failures": self.failures, "steps": self.steps, "state_sharded": sharded}


def run_dcp(directory: Path, tensors: dict[str, torch.Tensor], report: dict[str, Any]) -> None:
    """Save model + descent.AdamW with DCP mid-training; fresh objects load and continue."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    rank, batches = dist.get_rank(), make_batches()
    cls, _, options = FSDP["AdamW"]

    def state_of(model: nn.Module, opt: Any, prefix: str) -> None:
        for key, p in model.named_parameters():
            tensors[f"{prefix}/param/{key}"] = full(p)
        for index, p in enumerate(model.parameters()):
            for key, value in opt.state[p].items():
                tensors[f"{prefix}/state/{index}/{key}"] = (
                    full(value) if key != "step" else value.detach().clone()
                )

    def scenario() -> None:
        model = sharded_model()
        opt = cls(model.parameters(), **options)
        train(model, opt, batches[:DCP_STEPS], rank, WORLD)
        model_state, optim_state = get_state_dict(model, opt)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=directory)
        state_of(model, opt, "dcp/saved")
        train(model, opt, batches[DCP_STEPS:], rank, WORLD)
        state_of(model, opt, "dcp/uninterrupted")

        resumed = sharded_model(seed=1)
        resumed_opt = cls(resumed.parameters(), **{**options, "lr": 0.5})
        model_state, optim_state = get_state_dict(resumed, resumed_opt)
        content = {"model": model_state, "optim": optim_state}
        dcp.load(content, checkpoint_id=directory)
        set_state_dict(
            resumed,
            resumed_opt,
            model_state_dict=content["model"],
            optim_state_dict=content["optim"],
        )
        state_of(resumed, resumed_opt, "dcp/loaded")
        report["dcp/loaded_lr"] = resumed_opt.param_groups[0]["lr"]
        train(resumed, resumed_opt, batches[DCP_STEPS:], rank, WORLD)
        state_of(resumed, resumed_opt, "dcp/resumed")

    attempt(report, "dcp", scenario)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    out = tmp_path_factory.mktemp("integrations")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={WORLD}",
        __file__,
        "--worker",
        str(out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return load_file(out / "tensors.safetensors"), json.loads((out / "report.json").read_text())


class ScenarioError(RuntimeError):
    """A scenario raised in the worker (its traceback is the message)."""


def no_error(reports: list[dict], name: str) -> None:
    for rank, report in enumerate(reports):
        if report[f"{name}/error"] is not None:
            raise ScenarioError(f"{name} on rank {rank}:\n{report[f'{name}/error']}")


def scenario_params(tensors: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {
        key[len(prefix) + 1 :]: value
        for key, value in tensors.items()
        if key.startswith(prefix + "/")
    }


def assert_close_to(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-12, atol=1e-14)


def assert_identical(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys() and got
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def moved(params: dict[str, torch.Tensor]) -> bool:
    """Whether training moved the parameters (so that a comparison can fail)."""
    initial = dict(make_model().named_parameters())
    return all(not torch.allclose(p, initial[k], atol=1e-4) for k, p in params.items())


# ---------------------------------------------------------------------- ZeRO


@pytest.mark.parametrize("name", list(ZERO))
def test_zero_with_bucket_views_matches_one_process_and_ranks_agree(two_processes, name):
    tensors, reports = two_processes
    no_error(reports, f"zero/{name}")
    ranks = [scenario_params(tensors, f"zero/{name}/rank{r}") for r in range(WORLD)]
    assert_identical(ranks[1], ranks[0])
    assert moved(ranks[0])
    assert_close_to(ranks[0], reference(ZERO_REFERENCE[name]))
    for report in reports:
        assert report[f"zero/{name}/views_of_buckets"]
        assert 0 < report[f"zero/{name}/local_state"] < 4  # each rank steps its share
    assert sum(report[f"zero/{name}/local_state"] for report in reports) == 4


# ---------------------------------------------------------------------- FSDP2


@pytest.mark.parametrize("name", list(FSDP))
def test_fsdp2_trains_like_torch_and_like_one_process(two_processes, name):
    tensors, reports = two_processes
    no_error(reports, f"fsdp/{name}/torch")
    no_error(reports, f"fsdp/{name}/descent")
    got = scenario_params(tensors, f"fsdp/{name}/descent")
    assert moved(got)
    # torch.optim's default on CPU is its for-loop implementation; descent's default runs
    # torch's fused kernel where torch has one, which rounds differently (a few ulp)
    assert_close_to(got, scenario_params(tensors, f"fsdp/{name}/torch"))
    if name in TORCH_FUSED:
        no_error(reports, f"fsdp/{name}/torch_fused")
        assert_identical(got, scenario_params(tensors, f"fsdp/{name}/torch_fused"))
    cls, _, options = FSDP[name]
    assert_close_to(got, reference(lambda params: cls(params, **options)))


@pytest.mark.parametrize("name", list(FSDP_WHOLE))
def test_fsdp2_rules_of_whole_tensors_train_like_one_process(two_processes, name):
    """Norms, factored moments and preconditioners of a sharded parameter are those of
    the whole parameter, not of each rank's shard."""
    tensors, reports = two_processes
    no_error(reports, f"fsdp/{name}/descent")
    got = scenario_params(tensors, f"fsdp/{name}/descent")
    assert moved(got)
    cls, options = FSDP_WHOLE[name]
    expected = reference(lambda params: cls(params, **options))
    assert got.keys() == expected.keys()
    for key, value in expected.items():  # all-reduced gradients: sums in another order
        torch.testing.assert_close(got[key], value, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ["SGD", "Adagrad"])
def test_fsdp2_with_the_rules_math_on_lists_matches_torch(two_processes, name):
    """The path the default mode should take for DTensors without a fused kernel."""
    tensors, reports = two_processes
    no_error(reports, f"fsdp/{name}/descent_foreach")
    got = scenario_params(tensors, f"fsdp/{name}/descent_foreach")
    assert moved(got)
    assert_close_to(got, scenario_params(tensors, f"fsdp/{name}/torch"))


def test_fsdp2_step_never_writes_dtensor_gradients_nor_moves_parameters(two_processes):
    _, reports = two_processes
    no_error(reports, "fsdp/AdamW/descent")
    for report in reports:
        assert report["fsdp/AdamW/descent/steps"] == STEPS
        assert report["fsdp/AdamW/descent/failures"] == []
        assert report["fsdp/AdamW/descent/state_sharded"]


# ---------------------------------------------------------------------- DCP


def test_dcp_saves_and_restores_model_and_descent_optimizer_exactly(two_processes):
    tensors, reports = two_processes
    no_error(reports, "dcp")
    saved = scenario_params(tensors, "dcp/saved")
    assert {key.split("/")[-1] for key in saved if key.startswith("state/")} == {
        "step",
        "exp_avg",
        "exp_avg_sq",
    }
    assert_identical(scenario_params(tensors, "dcp/loaded"), saved)
    assert all(report["dcp/loaded_lr"] == FSDP["AdamW"][2]["lr"] for report in reports)
    resumed = scenario_params(tensors, "dcp/resumed")
    assert_identical(resumed, scenario_params(tensors, "dcp/uninterrupted"))
    assert not torch.equal(resumed["param/0.weight"], saved["param/0.weight"])


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker(Path(sys.argv[2]))
