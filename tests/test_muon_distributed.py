"""MuonAdamW across two processes (CPU, gloo): DDP, ZeroRedundancyOptimizer and FSDP2.

Each rank trains on its half of every batch; the test process trains the same model in
one process on the whole batch and compares, in float64 with Muon's iteration in
float64 too (``ns_dtype=None``; in bfloat16 a last-bit difference in an all-reduced
gradient can round the iteration differently). All three scenarios run in one pair of
processes, started once.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import descent

WORLD, STEPS, BATCH = 2, 4, 8
OPTIONS = {
    "lr": 0.02,
    "weight_decay": 0.01,
    "adamw_lr": 1e-2,
    "adamw_weight_decay": 0.01,
    "ns_dtype": None,
}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.hidden = nn.Linear(6, 8)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.hidden(self.embed(tokens)))
        return self.head(torch.tanh(self.mix(x)))


def make_model() -> Net:
    torch.manual_seed(0)
    return Net().double()


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    return (
        torch.randint(0, 10, (BATCH,), generator=generator),
        torch.randint(0, 3, (BATCH,), generator=generator),
    )


def train(model: nn.Module, opt: Any, rank: int = 0, world: int = 1) -> None:
    for step in range(STEPS):
        tokens, targets = batch(step)
        share = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        opt.zero_grad()
        nn.functional.cross_entropy(model(tokens[share]), targets[share]).backward()
        opt.step()


def worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    torch.set_num_threads(1)
    try:
        results: dict[str, Any] = {}
        model = make_model()
        ddp = nn.parallel.DistributedDataParallel(model)
        train(ddp, descent.MuonAdamW(model, **OPTIONS), rank, WORLD)
        results["ddp"] = [p.detach().clone() for p in model.parameters()]

        from torch.distributed.optim import ZeroRedundancyOptimizer

        model = make_model()
        ddp = nn.parallel.DistributedDataParallel(model)
        zero = ZeroRedundancyOptimizer(
            descent.MuonAdamW.param_groups_for(model, **OPTIONS), optimizer_class=descent.MuonAdamW
        )
        train(ddp, zero, rank, WORLD)
        zero.consolidate_state_dict(to=0)
        results["zero"] = [p.detach().clone() for p in model.parameters()]
        if rank == 0:
            results["zero_state"] = zero.state_dict()

        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        model = make_model()
        mesh = init_device_mesh("cpu", (WORLD,))
        for layer in (model.hidden, model.mix, model.head):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = descent.MuonAdamW(model, **OPTIONS)
        results["fsdp_routes"] = [(r.name, r.use_muon) for r in opt.routes]
        train(model, opt, rank, WORLD)
        results["fsdp"] = [p.full_tensor().detach().clone() for p in model.parameters()]
        if rank == 0:
            torch.save(results, Path(out) / "results.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("muon_distributed")
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return torch.load(out / "results.pt", weights_only=False)


def single_process() -> tuple[nn.Module, descent.MuonAdamW]:
    model = make_model()
    opt = descent.MuonAdamW(model, **OPTIONS)
    train(model, opt)
    return model, opt


@pytest.mark.parametrize("scenario", ["ddp", "zero", "fsdp"])
def test_two_processes_match_one(two_processes: dict[str, Any], scenario: str) -> None:
    model, _ = single_process()
    for got, want in zip(two_processes[scenario], model.parameters(), strict=True):
        torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-12)
    moved = [
        not torch.equal(a, b)
        for a, b in zip(model.parameters(), make_model().parameters(), strict=True)
    ]
    assert all(moved)


def test_sharded_parameters_route_as_whole_ones(two_processes: dict[str, Any]) -> None:
    _, opt = single_process()
    assert two_processes["fsdp_routes"] == [(r.name, r.use_muon) for r in opt.routes]


def test_zero_state_consolidates_into_one_state_dict(two_processes: dict[str, Any]) -> None:
    """ZeRO's consolidated state dict loads into an unsharded MuonAdamW built from the
    same groups and continues the run exactly."""
    saved = two_processes["zero_state"]
    model = make_model()
    for param, value in zip(model.parameters(), two_processes["zero"], strict=True):
        param.data.copy_(value)
    opt = descent.MuonAdamW(descent.MuonAdamW.param_groups_for(model, **OPTIONS))
    opt.load_state_dict(saved)
    reference_model, reference = single_process()
    tokens, targets = batch(STEPS)
    for m, o in ((model, opt), (reference_model, reference)):
        o.zero_grad()
        nn.functional.cross_entropy(m(tokens), targets).backward()
        o.step()
    for a, b in zip(model.parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
