"""descent with Hugging Face accelerate: ``accelerator.prepare`` wraps a descent optimizer and
scheduler like torch's, and ``save_state`` / ``load_state`` resume a run exactly.

    python docs/examples/guide_accelerate.py                      # one process
    accelerate launch --num_processes 2 docs/examples/guide_accelerate.py

A tiny regression model on random data (nothing downloaded).
"""

import tempfile
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import descent


def prepared(accelerator: Accelerator, seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = descent.AdamW(model, lr=1e-2, weight_decay=0.01)
    scheduler = descent.schedules.StepLR(optimizer, step_size=4, gamma=0.5)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=generator)
    loader = DataLoader(TensorDataset(x, x[:, :3].sum(1, keepdim=True)), batch_size=16)
    return accelerator.prepare(model, optimizer, loader, scheduler)


def epoch(accelerator: Accelerator, model, optimizer, loader, scheduler) -> float:
    for x, y in loader:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
    return loss.item()


def main(root: Path) -> None:
    accelerator = Accelerator(cpu=True)
    model, optimizer, loader, scheduler = prepared(accelerator, seed=0)
    epoch(accelerator, model, optimizer, loader, scheduler)
    accelerator.save_state(str(root / "state"))  # model, optimizer, scheduler, RNG
    loss = epoch(accelerator, model, optimizer, loader, scheduler)

    again = Accelerator(cpu=True)  # as in a new process
    resumed = prepared(again, seed=1)  # other initial weights
    again.load_state(str(root / "state"))
    resumed_loss = epoch(again, *resumed)
    difference = max(
        (a - b).abs().max().item()
        for a, b in zip(resumed[0].parameters(), model.parameters(), strict=True)
    )
    if accelerator.is_main_process:
        print(
            f"optimizer {type(optimizer.optimizer).__name__} (wrapped by accelerate), "
            f"lr {optimizer.param_groups[0]['lr']:.2e}, loss {loss:.4f} / resumed "
            f"{resumed_loss:.4f}"
        )
        print(f"resumed vs uninterrupted: largest parameter difference {difference:.1e}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        main(Path(directory))
