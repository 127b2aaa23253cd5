"""descent under FSDP2 (``fully_shard``), on 2 CPU processes.

    torchrun --standalone --nproc-per-node=2 docs/examples/guide_fsdp2.py

``fully_shard`` turns each parameter into a DTensor sharded over the processes. A descent
optimizer built on ``model.parameters()`` after sharding updates each process's shard
where it is (its state is sharded the same way) and ends with the parameters one
process gets with the whole batch.
"""

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

import descent

OPTIONS = {"lr": 1e-2, "weight_decay": 0.01}


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4)).double()


def sharded(model: nn.Module) -> nn.Module:
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    return model


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(16, 8, generator=generator, dtype=torch.float64),
            torch.randn(16, 4, generator=generator, dtype=torch.float64),
        )
        for _ in range(8)
    ]


def train(model: nn.Module, optimizer, batches, rank: int = 0, world: int = 1) -> None:
    for x, y in batches:  # this process's rows: rank, rank + world, ...
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x[rank::world]), y[rank::world]).backward()
        optimizer.step()


def main() -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    one_process = make_model()
    train(one_process, descent.AdamW(one_process.parameters(), **OPTIONS), batches())

    model = sharded(make_model())
    optimizer = descent.AdamW(model.parameters(), **OPTIONS)  # after fully_shard
    train(model, optimizer, batches(), rank, world)

    first = next(model.parameters())
    state = optimizer.state[first]["exp_avg"]
    difference = max(
        (p.full_tensor() - q).abs().max().item()
        for p, q in zip(model.parameters(), one_process.parameters(), strict=True)
    )
    if rank == 0:
        print(
            f"parameters are DTensors: {isinstance(first, DTensor)}; shard "
            f"{tuple(first.to_local().shape)} of {tuple(first.shape)}"
        )
        print(
            f"state is sharded alike: {isinstance(state, DTensor)}, local "
            f"{tuple(state.to_local().shape)}"
        )
        print(f"FSDP2 vs one process: largest parameter difference {difference:.1e}")


if __name__ == "__main__":
    dist.init_process_group("gloo")
    main()
    dist.destroy_process_group()
