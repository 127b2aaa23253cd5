"""Saving and resuming a sharded run with torch.distributed.checkpoint (DCP), on 2 CPU
processes: an FSDP2 model and its descent optimizer.

    torchrun --standalone --nproc-per-node=2 docs/examples/guide_dcp.py [DIRECTORY]

The checkpoint goes to DIRECTORY (default ``runs/dcp``), which every process must see.

``get_state_dict(model, optimizer)`` gives the model's and the optimizer's sharded state
dicts (parameters named by their fully qualified names); ``dcp.save`` writes each
process's shards; a fresh model and optimizer are filled by ``dcp.load`` and
``set_state_dict``, and continue exactly as the uninterrupted run.
"""

import sys
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

import descent

sys.path.insert(0, str(Path(__file__).parent))
from guide_fsdp2 import OPTIONS, batches, make_model, sharded, train


def main(directory: Path) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    data = batches()
    model = sharded(make_model())
    optimizer = descent.AdamW(model.parameters(), **OPTIONS)
    train(model, optimizer, data[:4], rank, world)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=directory)
    train(model, optimizer, data[4:], rank, world)  # the uninterrupted run

    resumed = sharded(make_model(seed=1))  # other weights, other lr
    resumed_optimizer = descent.AdamW(resumed.parameters(), **{**OPTIONS, "lr": 0.5})
    model_state, optimizer_state = get_state_dict(resumed, resumed_optimizer)
    content = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(content, checkpoint_id=directory)  # fills content in place
    set_state_dict(
        resumed,
        resumed_optimizer,
        model_state_dict=content["model"],
        optim_state_dict=content["optimizer"],
    )
    train(resumed, resumed_optimizer, data[4:], rank, world)
    difference = max(
        (p.full_tensor() - q.full_tensor()).abs().max().item()
        for p, q in zip(resumed.parameters(), model.parameters(), strict=True)
    )
    if rank == 0:
        print(f"loaded lr {resumed_optimizer.param_groups[0]['lr']}")
        print(f"resumed vs uninterrupted: largest parameter difference {difference:.1e}")


if __name__ == "__main__":
    dist.init_process_group("gloo")
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/dcp"))
    dist.destroy_process_group()
