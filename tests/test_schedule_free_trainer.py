"""Trainers and optimizers that switch modes (Schedule-Free): what a trainer must do.

The protocol (:class:`descent.optim.schedule_free.ModeSwitching`): an optimizer with
``train()`` / ``eval()`` and a ``training`` flag. A trainer calls ``eval()`` before
validation, before saving a checkpoint and at the end of training, and ``train()``
before training steps. These tests show it with a Schedule-Free optimizer: the
validation loss is the loss at the averaged point x, a checkpoint holds x (and says so),
a resumed run equals the uninterrupted one, and the run ends with x in the model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import descent
from descent.checkpoint import load_checkpoint
from descent.train import SupervisedTrainer

pytestmark = [pytest.mark.usefixtures("one_thread")]


def data() -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(96, 5, generator=generator)
    y = x @ torch.randn(5, 2, generator=generator) + 0.1 * torch.randn(96, 2, generator=generator)
    return x[:64], y[:64], x[64:], y[64:]


def setup(
    directory: Path | None = None,
) -> tuple[nn.Module, descent.ScheduleFreeAdamW, SupervisedTrainer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    optimizer = descent.ScheduleFreeAdamW(model, lr=2e-2, warmup_steps=4)
    trainer = SupervisedTrainer(optimizer, batch_size=16, epochs=3, checkpoint_dir=directory)
    return model, optimizer, trainer


def loss_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return nn.functional.mse_loss(model(x), y).item()


def test_validation_uses_the_average_and_training_ends_with_it() -> None:
    x, y, x_val, y_val = data()
    model, optimizer, trainer = setup()
    history = trainer.train(model, x, y, nn.MSELoss(), validation_data=(x_val, y_val))
    assert not optimizer.training  # eval() at the end of training: the model holds x
    at_x = loss_at(model, x_val, y_val)
    assert history["val_loss"][-1] == pytest.approx(at_x, rel=1e-6)
    optimizer.train()
    assert loss_at(model, x_val, y_val) != pytest.approx(at_x, rel=1e-3)  # y is elsewhere


def test_training_steps_are_taken_from_y_after_each_validation() -> None:
    """Validating after every epoch must not change the run: the same final x as a run
    without validation (eval() then train() restore y, to rounding)."""
    x, y, x_val, y_val = data()
    model, _, trainer = setup()
    trainer.train(model, x, y, nn.MSELoss(), validation_data=(x_val, y_val))
    plain, _, plain_trainer = setup()
    plain_trainer.train(plain, x, y, nn.MSELoss())
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_checkpoints_hold_the_average_and_resume_exactly(tmp_path: Path) -> None:
    x, y, _, _ = data()
    model, _, trainer = setup(tmp_path / "run")
    trainer.train(model, x, y, nn.MSELoss())
    manager = trainer.checkpoint_manager
    assert manager is not None and manager.latest() is not None
    saved_model, saved_optimizer, _ = setup()
    load_checkpoint(
        manager.latest(),
        model=saved_model,
        optimizers={"optimizer": saved_optimizer},
        restore_rng=False,
    )
    assert not saved_optimizer.training  # saved in eval mode: the model's weights are x
    for a, b in zip(saved_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)

    # the run interrupted after its second epoch: the last epoch's checkpoint removed,
    # a resume finishes the run from the one before, which was saved in eval mode
    shutil.rmtree(manager.latest())
    resumed_model, _, resumed_trainer = setup(tmp_path / "run")
    resumed_trainer.train(resumed_model, x, y, nn.MSELoss(), resume=True)
    for a, b in zip(resumed_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
