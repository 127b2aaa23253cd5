"""descent under DistributedDataParallel and ZeroRedundancyOptimizer, on 2 CPU processes.

    torchrun --standalone --nproc-per-node=2 docs/examples/guide_ddp_zero.py

Each process trains the same float64 model on its half of every batch; DDP averages the
gradients, so every process takes the step one process takes on the whole batch.
ZeroRedundancyOptimizer builds a descent optimizer per process over its shard of the
parameters (``optimizer_class=descent.AdamW``): each process keeps the state of its
shard only, and the parameters stay as they are with plain DDP.
"""

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel as DDP

import descent

OPTIONS = {"lr": 1e-2, "weight_decay": 0.01}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4)).double()


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(16, 8, generator=generator, dtype=torch.float64),
            torch.randn(16, 4, generator=generator, dtype=torch.float64),
        )
        for _ in range(8)
    ]


def train(model: nn.Module, optimizer, rank: int = 0, world: int = 1) -> None:
    for x, y in batches():  # this process's rows: rank, rank + world, ...
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x[rank::world]), y[rank::world]).backward()
        optimizer.step()


def largest_difference(a: nn.Module, b: nn.Module) -> float:
    return max(
        (p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


def main() -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    one_process = make_model()  # the reference, whole batches
    train(one_process, descent.AdamW(one_process.parameters(), **OPTIONS))

    ddp = DDP(make_model())
    train(ddp, descent.AdamW(ddp.parameters(), **OPTIONS), rank, world)

    zero_model = DDP(make_model())
    zero = ZeroRedundancyOptimizer(
        zero_model.parameters(), optimizer_class=descent.AdamW, **OPTIONS
    )
    train(zero_model, zero, rank, world)
    own = len(zero.optim.state)  # parameters with state here
    zero.consolidate_state_dict(to=0)  # every process takes part
    if rank == 0:
        full = zero.state_dict()  # the whole state, on rank 0
        print(
            f"DDP vs one process: largest parameter difference "
            f"{largest_difference(ddp.module, one_process):.1e}"
        )
        print(
            f"ZeRO vs one process: largest parameter difference "
            f"{largest_difference(zero_model.module, one_process):.1e}"
        )
        print(f"ZeRO: rank 0 keeps the state of {own} of {len(full['state'])} parameters")
    del ddp, zero_model, zero  # before the group goes away


if __name__ == "__main__":
    dist.init_process_group("gloo")
    main()
    dist.destroy_process_group()
