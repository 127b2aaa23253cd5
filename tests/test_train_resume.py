"""Resuming from a trainer's state_dict in the middle of an epoch gives the uninterrupted run.

A run is stopped after some batch (at an optimizer-step boundary), its model and
``trainer.state_dict()`` are copied, and a fresh model, optimizer, scheduler and trainer
load them and finish the run: the parameters must equal those of a run that was never
stopped, bit for bit. This is the structure a checkpoint library builds on.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import descent
from descent.data import gaussian_mixture
from descent.train import (
    AdversarialTrainer,
    Callback,
    EarlyStopping,
    RecurrentTrainer,
    SupervisedTrainer,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class StopAfter(Callback):
    """Raises KeyboardInterrupt after batch ``batch`` of epoch ``epoch`` (once)."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.at = (epoch, batch)
        self.fired = False

    def on_batch_end(self, trainer, batch, logs):
        if not self.fired and (trainer.state.epoch, batch) == self.at:
            self.fired = True
            raise KeyboardInterrupt


def supervised_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    optimizer = descent.Adam(model, lr=1e-2)
    scheduler = descent.schedules.StepLR(optimizer, step_size=4, gamma=0.7)
    return model, optimizer, scheduler


def test_supervised_resume_mid_epoch_is_exact():
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(90, 5, generator=generator), torch.randint(0, 3, (90,), generator=generator)

    def trainer_for(optimizer, scheduler, callbacks=()):
        return SupervisedTrainer(
            optimizer,
            batch_size=8,
            epochs=3,
            gradient_accumulation_steps=3,
            scheduler=scheduler,
            metrics=["accuracy"],
            callbacks=[EarlyStopping("loss", patience=10), *callbacks],
        )

    model, optimizer, scheduler = supervised_setup()
    trainer_for(optimizer, scheduler).train(model, x, y, nn.CrossEntropyLoss())
    expected = [p.detach().clone() for p in model.parameters()]

    model, optimizer, scheduler = supervised_setup()
    stopped = trainer_for(optimizer, scheduler, [StopAfter(epoch=1, batch=5)])
    with pytest.raises(KeyboardInterrupt):
        stopped.train(model, x, y, nn.CrossEntropyLoss())
    assert stopped.state.window == 0 and stopped.state.batch == 6
    saved_model = copy.deepcopy(model.state_dict())
    saved = copy.deepcopy(stopped.state_dict())

    model, optimizer, scheduler = supervised_setup(seed=5)  # different weights: overwritten
    model.load_state_dict(saved_model)
    resumed = trainer_for(optimizer, scheduler, [StopAfter(epoch=99, batch=0)])
    resumed.load_state_dict(saved)
    history = resumed.train(model, x, y, nn.CrossEntropyLoss())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), expected, strict=True))
    assert resumed.state.step == 3 * 4 and history.epochs == [0, 1, 2]


def test_recurrent_resume_mid_epoch_is_exact():
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(12, 9, 3, generator=generator), torch.randn(12, 9, 2, generator=generator)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.head = nn.GRU(3, 6, batch_first=True), nn.Linear(6, 2)

        def forward(self, chunk, hidden):
            out, hidden = self.rnn(chunk, hidden)
            return self.head(out), hidden

    def setup(seed=0):
        torch.manual_seed(seed)
        model = Model()
        optimizer = descent.RMSprop(model, lr=1e-2)
        trainer = RecurrentTrainer(
            optimizer,
            batch_size=2,
            epochs=2,
            bptt_steps=4,
            gradient_accumulation_steps=2,
            clip_grad_norm=1.0,
            scheduler=torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.99),
            callbacks=[StopAfter(epoch=1, batch=2)],
        )
        return model, trainer

    model, trainer = setup()
    trainer.callbacks[0].fired = True
    trainer.train(model, x, y, nn.MSELoss())
    expected = [p.detach().clone() for p in model.parameters()]

    model, trainer = setup()
    with pytest.raises(KeyboardInterrupt):
        trainer.train(model, x, y, nn.MSELoss())
    saved_model, saved = copy.deepcopy(model.state_dict()), copy.deepcopy(trainer.state_dict())
    model, trainer = setup(seed=3)
    model.load_state_dict(saved_model)
    trainer.load_state_dict(saved)
    trainer.callbacks[0].fired = True
    trainer.train(model, x, y, nn.MSELoss())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), expected, strict=True))


def test_adversarial_resume_mid_epoch_is_exact():
    real, _ = gaussian_mixture(320, seed=3)

    def setup(seed=0):
        torch.manual_seed(seed)
        g = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        d = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))
        g_opt, d_opt = descent.Adam(g, lr=1e-3), descent.Adam(d, lr=1e-3)
        trainer = AdversarialTrainer(
            g,
            d,
            g_opt,
            d_opt,
            latent_dim=4,
            batch_size=32,
            epochs=3,
            n_critic=3,
            loss="wgan-gp",
            d_scheduler=torch.optim.lr_scheduler.StepLR(d_opt, 5),
            callbacks=[StopAfter(epoch=1, batch=5)],
        )
        return g, d, trainer

    g, d, trainer = setup()
    trainer.callbacks[0].fired = True
    trainer.train(real)
    expected = [p.detach().clone() for p in [*g.parameters(), *d.parameters()]]

    g, d, trainer = setup()
    with pytest.raises(KeyboardInterrupt):
        trainer.train(real)
    assert trainer.state.critic_steps == 16 % 3  # the critic count carries across epochs
    saved_g, saved_d = copy.deepcopy(g.state_dict()), copy.deepcopy(d.state_dict())
    saved = copy.deepcopy(trainer.state_dict())
    g, d, trainer = setup(seed=4)
    g.load_state_dict(saved_g)
    d.load_state_dict(saved_d)
    trainer.load_state_dict(saved)
    trainer.callbacks[0].fired = True
    trainer.train(real)
    resumed = [*g.parameters(), *d.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(resumed, expected, strict=True))
