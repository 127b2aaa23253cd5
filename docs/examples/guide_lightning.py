"""descent with Lightning: an optimizer and a scheduler from ``configure_optimizers``, and a
run resumed from Lightning's checkpoint that ends where an uninterrupted run ends.

    python docs/examples/guide_lightning.py            # needs: pip install lightning

A tiny regression model on random data (nothing downloaded). Lightning saves the
descent optimizer's and scheduler's ``state_dict()`` in its ``.ckpt`` file and calls
their ``load_state_dict()`` on ``fit(ckpt_path=...)``.
"""

import tempfile
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import descent


class Regressor(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))

    def training_step(self, batch, batch_index):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        optimizer = descent.AdamW(self.net, lr=1e-2, weight_decay=0.01)
        scheduler = descent.schedules.CosineAnnealingLR(optimizer, T_max=40)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def data() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=generator)
    y = x[:, :3].sum(1, keepdim=True) + 0.1 * torch.randn(256, 1, generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=32)  # 8 steps an epoch


def trainer(epochs: int, root: Path) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )


def main(root: Path) -> None:
    L.seed_everything(0, verbose=False)
    uninterrupted = Regressor()
    trainer(4, root / "a").fit(uninterrupted, data())

    L.seed_everything(0, verbose=False)
    first = Regressor()
    interrupted = trainer(2, root / "b")
    interrupted.fit(first, data())  # stops after 2 epochs
    checkpoint = root / "b" / "after-2-epochs.ckpt"
    interrupted.save_checkpoint(checkpoint)

    resumed = Regressor()  # fresh weights and optimizer
    run = trainer(4, root / "c")
    run.fit(resumed, data(), ckpt_path=checkpoint)  # epochs 3 and 4
    optimizer = run.optimizers[0]
    difference = max(
        (a - b).abs().max().item()
        for a, b in zip(resumed.parameters(), uninterrupted.parameters(), strict=True)
    )
    print(
        f"optimizer {type(optimizer).__name__}, step {run.global_step}, "
        f"lr {optimizer.param_groups[0]['lr']:.3e}"
    )
    print(f"loss {run.callback_metrics['loss'].item():.4f}")
    print(f"resumed vs uninterrupted: largest parameter difference {difference:.1e}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        main(Path(directory))
