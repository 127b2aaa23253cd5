"""The distributed guides' examples in one ``torchrun`` launch (for tests/test_guides.py):
``torchrun --standalone --nproc-per-node=2 tests/run_distributed_guides.py DIRECTORY``.

Each example's ``main`` runs in the same process group, as its own ``__main__`` block
would run it; rank 0 prints their results under a header per example.
"""

import runpy
import sys
from pathlib import Path

import torch.distributed as dist

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def run(name: str, *args: object) -> None:
    if dist.get_rank() == 0:
        print(f"== {name}", flush=True)
    runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="guide")["main"](*args)
    dist.barrier()


if __name__ == "__main__":
    dist.init_process_group("gloo")
    run("guide_ddp_zero")
    run("guide_fsdp2")
    run("guide_dcp", Path(sys.argv[1]))
    dist.destroy_process_group()
