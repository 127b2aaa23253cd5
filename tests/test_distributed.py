"""Training across processes: sampler, metrics, and 2-process DDP / ZeRO runs on CPU (gloo).

The 2-process tests start this file under ``torchrun`` (``python -m
torch.distributed.run --standalone --nproc-per-node=2 tests/test_distributed.py
--worker OUT``) once per test session. Each rank runs the same plain loop built
from ``descent.distributed`` with per-process batch b; rank 0 writes the final
parameters. The test process runs the same loop in one process with batch 2b (and,
for ZeRO, with the unsharded optimizer) and compares, in float64.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import descent
from descent import distributed as dist
from descent.checkpoint import CheckpointManager, read_checkpoint

N, FEATURES, BATCH, EPOCHS = 48, 6, 4, 2  # per-process batch b = 4 on 2 processes
WORLD = 2
SCENARIOS = {
    # name: (optimizer factory given params, accumulation, use ZeRO)
    "plain_sgd": (
        lambda p, zero: make_optimizer(p, zero, descent.SGD, lr=0.05, momentum=0.9, nesterov=True),
        1,
        False,
    ),
    "accumulation_adam": (lambda p, zero: make_optimizer(p, zero, descent.Adam, lr=0.01), 4, False),
    "zero_adam": (
        lambda p, zero: make_optimizer(p, zero, descent.Adam, lr=0.01, weight_decay=0.01),
        1,
        True,
    ),
    "zero_sgd_accumulation": (
        lambda p, zero: make_optimizer(p, zero, descent.SGD, lr=0.05, momentum=0.9),
        3,
        True,
    ),
    # a one-parameter group: ZeRO hands one rank an empty group of it
    "zero_adam_groups": (
        lambda p, zero: make_optimizer(two_groups(p), zero, descent.Adam, lr=0.01),
        2,
        True,
    ),
}


def two_groups(model: nn.Module) -> list[dict]:
    return [
        {"params": [model[0].weight, model[0].bias, model[2].weight]},
        {"params": [model[2].bias], "lr": 0.02},
    ]


def make_optimizer(params, zero, optimizer_class, **options):
    if zero:
        return dist.zero_optimizer(params, optimizer_class, **options)
    return optimizer_class(params, **options)


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N, FEATURES, generator=generator, dtype=torch.float64)
    y = torch.randn(N, 1, generator=generator, dtype=torch.float64)
    return x, y


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(FEATURES, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def train(model, opt, sampler, x, y, batch, accumulation, epochs, start_epoch=0, on_epoch_end=None):
    """A plain loop: seeded sharded order, accumulation windows with no_sync inside."""
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        batches = list(torch.utils.data.BatchSampler(sampler, batch, drop_last=False))
        for start in range(0, len(batches), accumulation):
            window = batches[start : start + accumulation]
            for i, index in enumerate(window):
                with dist.gradient_sync(model, sync=i == len(window) - 1):
                    (F.mse_loss(model(x[index]), y[index]) / len(window)).backward()
            opt.step()
            opt.zero_grad()
        if on_epoch_end is not None:
            on_epoch_end(epoch)


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in dist.unwrap_model(model).named_parameters()}


# ---------------------------------------------------------------------- the worker


def worker(out: Path) -> None:
    """One rank of the 2-process run (started by torchrun)."""
    torch.set_num_threads(1)
    assert dist.init_process_group() and dist.get_world_size() == WORLD
    run_scenarios(out)
    # DDP models and ZeRO optimizers hold gloo work objects: free them (they were
    # locals of run_scenarios) while the process group still exists, then leave it
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def run_scenarios(out: Path) -> None:
    rank = dist.get_rank()
    x, y = make_data()
    results, report = {}, {}
    for name, (factory, accumulation, zero) in SCENARIOS.items():
        model = dist.wrap_model(make_model())
        opt = factory(dist.unwrap_model(model), zero)
        train(model, opt, dist.ResumableSampler(N, seed=3), x, y, BATCH, accumulation, EPOCHS)
        for key, value in params_of(model).items():
            results[f"{name}/{key}"] = value

    report.update(check_no_sync(x, y))

    # metrics: each rank's mean loss over its shard, weighted by its size, with the model
    # of the last scenario
    sampler = dist.ResumableSampler(N, seed=3)
    index = torch.tensor(sampler.order())
    with torch.no_grad():
        local = F.mse_loss(model(x[index]), y[index]).item()
    report["metrics"] = dist.average_metrics({"loss": local}, weight=len(index))

    # ZeRO state consolidated into a checkpoint after epoch 1, resumed by fresh objects
    directory = out / "zero-checkpoints"
    manager = CheckpointManager(directory, keep_last=1)
    model = dist.wrap_model(make_model())
    opt = dist.zero_optimizer(dist.unwrap_model(model), descent.Adam, lr=0.01)
    sampler = dist.ResumableSampler(N, seed=3)

    def save(epoch):
        manager.save(epoch + 1, model=model, optimizers=opt, trainer_state={"epoch": epoch + 1})

    train(model, opt, sampler, x, y, BATCH, 1, 1, on_epoch_end=save)
    train(model, opt, sampler, x, y, BATCH, 1, EPOCHS, start_epoch=1)
    uninterrupted = params_of(model)

    model2 = dist.wrap_model(make_model(seed=11))
    opt2 = dist.zero_optimizer(dist.unwrap_model(model2), descent.Adam, lr=0.5)
    checkpoint = manager.load_latest(model=model2, optimizers=opt2)
    assert checkpoint is not None and checkpoint.trainer_state == {"epoch": 1}
    train(
        model2,
        opt2,
        dist.ResumableSampler(N, seed=3),
        x,
        y,
        BATCH,
        1,
        EPOCHS,
        start_epoch=checkpoint.trainer_state["epoch"],
    )
    resumed = params_of(model2)
    report[f"zero_resume_identical_rank{rank}"] = all(
        torch.equal(uninterrupted[key], resumed[key]) for key in uninterrupted
    )
    report[f"zero_local_state_rank{rank}"] = len(opt2.optim.state)
    report = dist.all_gather_object(report)
    if dist.is_main_process():
        merged = {}
        for part in report:
            merged.update(part)
        save_file(results, out / "params.safetensors")
        (out / "report.json").write_text(json.dumps(merged))


def reference_run(name: str, batch: int = WORLD * BATCH) -> dict[str, torch.Tensor]:
    """The same loop in one process with batch 2b, unsharded optimizer."""
    factory, accumulation, _ = SCENARIOS[name]
    x, y = make_data()
    model = make_model()
    opt = factory(model, False)
    train(
        model,
        opt,
        dist.ResumableSampler(N, seed=3, num_replicas=1, rank=0),
        x,
        y,
        batch,
        accumulation,
        EPOCHS,
    )
    return params_of(model)


def check_no_sync(x: torch.Tensor, y: torch.Tensor) -> dict[str, bool]:
    """Inside gradient_sync(sync=False) gradients stay local; the synced backward averages."""
    model = dist.wrap_model(make_model())
    sampler = dist.ResumableSampler(N, seed=3)
    index = list(sampler)[:BATCH]
    weight = dist.unwrap_model(model)[0].weight
    with dist.gradient_sync(model, sync=False):
        F.mse_loss(model(x[index]), y[index]).backward()
    local = dist.all_gather_object(weight.grad.clone())
    with dist.gradient_sync(model, sync=True):
        F.mse_loss(model(x[index]), y[index]).backward()
    synced = dist.all_gather_object(weight.grad.clone())
    return {
        "differ_inside_no_sync": not torch.equal(local[0], local[1]),
        "equal_after_sync": torch.equal(synced[0], synced[1]),
    }


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
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
    return load_file(out / "params.safetensors"), json.loads((out / "report.json").read_text()), out


# ---------------------------------------------------------------------- 2-process tests


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_processes_with_batch_b_match_one_process_with_batch_2b(two_processes, name):
    params, _, _ = two_processes
    reference = reference_run(name)
    for key, expected in reference.items():
        got = params[f"{name}/{key}"]
        torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-14)
    # the comparison can fail: the runs moved the parameters, and one process with
    # batch b (not 2b) ends elsewhere
    initial, other = params_of(make_model()), reference_run(name, batch=BATCH)
    assert any(not torch.allclose(reference[k], initial[k], atol=1e-3) for k in initial)
    assert any(not torch.allclose(params[f"{name}/{k}"], other[k], atol=1e-6) for k in other)


def test_no_sync_keeps_gradients_local_until_the_last_micro_batch(two_processes):
    _, report, _ = two_processes
    assert report["differ_inside_no_sync"] and report["equal_after_sync"]


def test_metrics_are_averaged_over_all_samples(two_processes):
    _, report, _ = two_processes
    params, _, _ = two_processes
    model = make_model()
    with torch.no_grad():
        for key, p in model.named_parameters():
            p.copy_(params[f"{list(SCENARIOS)[-1]}/{key}"])
        x, y = make_data()
        expected = F.mse_loss(model(x), y).item()
    assert report["metrics"]["loss"] == pytest.approx(expected, rel=1e-12)


def test_zero_state_is_sharded_consolidated_saved_and_resumed(two_processes):
    _, report, out = two_processes
    assert report["zero_resume_identical_rank0"] and report["zero_resume_identical_rank1"]
    # each rank holds the state of its share of the 4 parameters only
    assert report["zero_local_state_rank0"] + report["zero_local_state_rank1"] == 4
    assert 0 < report["zero_local_state_rank0"] < 4

    # the saved state is the full (consolidated) Adam state, equal to one process's
    content = read_checkpoint(out / "zero-checkpoints" / "step-000000001")
    saved = content["optimizers"]["0"]
    assert saved["type"] == "ZeroRedundancyOptimizer[Adam]"
    x, y = make_data()
    model = make_model()
    opt = descent.Adam(model.parameters(), lr=0.01)
    train(
        model,
        opt,
        dist.ResumableSampler(N, seed=3, num_replicas=1, rank=0),
        x,
        y,
        WORLD * BATCH,
        1,
        1,
    )
    expected = opt.state_dict()["state"]
    assert sorted(saved["state"]["state"]) == sorted(expected) == [0, 1, 2, 3]
    for index, state in expected.items():
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(
                saved["state"]["state"][index][key], state[key], rtol=1e-12, atol=1e-15
            )
        assert saved["state"]["state"][index]["step"].item() == state["step"].item() == 6
    assert len(content["rng"]) == WORLD  # every rank's generators


# ---------------------------------------------------------------------- one process


def test_sampler_shards_interleave_into_the_single_process_order():
    single = dist.ResumableSampler(10, seed=5, num_replicas=1, rank=0)
    shards = [dist.ResumableSampler(10, seed=5, num_replicas=2, rank=r) for r in range(2)]
    for epoch in (0, 3):
        for sampler in (single, *shards):
            sampler.set_epoch(epoch)
        expected = torch.randperm(10, generator=torch.Generator().manual_seed(5 + epoch))
        assert list(single) == expected.tolist()
        assert list(shards[0]) == expected[0::2].tolist()
        assert list(shards[1]) == expected[1::2].tolist()
    assert list(single) != (single.set_epoch(1), list(single))[1]


def test_sampler_pads_or_drops_and_resumes_at_a_position():
    padded = [dist.ResumableSampler(5, shuffle=False, num_replicas=2, rank=r) for r in range(2)]
    assert [list(s) for s in padded] == [[0, 2, 4], [1, 3, 0]]
    dropped = [
        dist.ResumableSampler(5, shuffle=False, drop_last=True, num_replicas=2, rank=r)
        for r in range(2)
    ]
    assert [list(s) for s in dropped] == [[0, 2], [1, 3]]

    sampler = dist.ResumableSampler(12, seed=1, num_replicas=1, rank=0)
    sampler.set_epoch(2)
    full = list(sampler)
    iterator = iter(sampler)
    head = [next(iterator) for _ in range(5)]
    state = sampler.state_dict()
    assert state["position"] == 5 and state["epoch"] == 2 and head == full[:5]
    other = dist.ResumableSampler(12, seed=1, num_replicas=1, rank=0)
    other.load_state_dict(state)
    assert list(other) == full[5:]
    assert len(other) == 12


def test_sampler_rejects_bad_arguments_and_foreign_state():
    with pytest.raises(ValueError, match="length=-1"):
        dist.ResumableSampler(-1)
    with pytest.raises(ValueError, match="rank=2"):
        dist.ResumableSampler(4, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas=0"):
        dist.ResumableSampler(4, num_replicas=0, rank=0)
    sampler = dist.ResumableSampler(4, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="position=5"):
        sampler.set_epoch(0, position=5)
    state = dist.ResumableSampler(4, num_replicas=2, rank=0).state_dict()
    with pytest.raises(ValueError, match="num_replicas=2, this sampler num_replicas=1"):
        sampler.load_state_dict(state)
    with pytest.raises(ValueError, match="seed=9"):
        sampler.load_state_dict({**sampler.state_dict(), "seed": 9})


def test_sampler_load_state_dict_names_a_missing_or_bad_position():
    sampler = dist.ResumableSampler(4, num_replicas=1, rank=0)
    state = sampler.state_dict()
    for key in ("epoch", "position"):
        partial = {name: value for name, value in state.items() if name != key}
        with pytest.raises(ValueError, match=f"load_state_dict: the state lacks '{key}'"):
            sampler.load_state_dict(partial)
    with pytest.raises(
        ValueError,
        match=r"load_state_dict: position=9; expected an integer "
        r"from 0 to 4",
    ):
        sampler.load_state_dict({**state, "position": 9})
    with pytest.raises(ValueError, match=r"set_epoch: epoch=-1"):
        sampler.set_epoch(-1)


def test_single_process_helpers_do_the_single_process_thing(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert dist.init_process_group() is False
    assert dist.get_rank() == 0 and dist.get_world_size() == 1 and dist.is_main_process()
    model = nn.Linear(2, 1)
    assert dist.wrap_model(model) is model and dist.unwrap_model(model) is model
    with dist.gradient_sync(model, sync=False):
        pass
    assert dist.average_metrics({"loss": torch.tensor(0.5), "n": 3}) == {"loss": 0.5, "n": 3.0}
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}]
    with pytest.raises(RuntimeError, match="no process group"):
        dist.zero_optimizer(model, descent.Adam)
    with pytest.raises(TypeError, match=r"metrics\['loss'\] has type str"):
        dist.average_metrics({"loss": "low"})
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match=r"not .*'WORLD_SIZE'"):
        dist.init_process_group()


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker(Path(sys.argv[2]))
