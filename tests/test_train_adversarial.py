"""AdversarialTrainer: mode coverage, gradient isolation, losses against their formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import descent
from descent.data import gaussian_mixture
from descent.train import AdversarialTrainer, Callback

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(inputs: int, outputs: int, width: int = 128) -> nn.Module:
    return nn.Sequential(
        nn.Linear(inputs, width),
        nn.LeakyReLU(0.2),
        nn.Linear(width, width),
        nn.LeakyReLU(0.2),
        nn.Linear(width, outputs),
    )


def ring_coverage(
    samples: torch.Tensor,
    modes: int = 8,
    radius: float = 2.0,
    within: float = 0.25,
    share: float = 0.01,
) -> tuple[int, float]:
    """(modes that receive at least ``share`` of the samples within ``within`` of their
    centre, fraction of samples within ``within`` of some centre)."""
    angles = torch.arange(modes) * (2 * torch.pi / modes)
    centres = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    distance = torch.cdist(samples.float(), centres)
    nearest = distance.min(dim=1)
    close = nearest.values < within
    counts = torch.bincount(nearest.indices[close], minlength=modes)
    return int((counts >= share * len(samples)).sum()), float(close.float().mean())


def test_generator_covers_all_eight_modes_of_the_ring():
    real, _ = gaussian_mixture(4096, modes=8, radius=2.0, std=0.05, seed=0)
    torch.manual_seed(0)
    generator, discriminator = mlp(8, 2), mlp(2, 1)
    trainer = AdversarialTrainer(
        generator,
        discriminator,
        descent.Adam(generator, lr=1e-3, betas=(0.5, 0.999)),
        descent.Adam(discriminator, lr=1e-3, betas=(0.5, 0.999)),
        latent_dim=8,
        batch_size=128,
        epochs=40,
        seed=0,
    )
    before_modes, before_quality = ring_coverage(trainer.sample(2000))
    history = trainer.train(real)
    modes, quality = ring_coverage(trainer.sample(2000))
    # measured (seed 0, one thread): 8 of 8 modes, about half the samples within 5 sigma
    assert modes == 8, (modes, quality)
    assert quality >= 0.35, (modes, quality)
    assert before_modes < 8 and before_quality < 0.1  # the measure is not trivially met
    assert trainer.state.step == trainer.state.d_step == 40 * 32
    assert set(history) >= {"d_loss", "g_loss"}


@pytest.mark.slow
def test_wgan_gp_covers_all_eight_modes_of_the_ring():
    real, _ = gaussian_mixture(4096, modes=8, radius=2.0, std=0.05, seed=0)
    torch.manual_seed(0)
    generator, critic = mlp(8, 2), mlp(2, 1)
    trainer = AdversarialTrainer(
        generator,
        critic,
        descent.Adam(generator, lr=1e-3, betas=(0.5, 0.9)),
        descent.Adam(critic, lr=1e-3, betas=(0.5, 0.9)),
        latent_dim=8,
        batch_size=128,
        epochs=150,
        n_critic=5,
        loss="wgan-gp",
        gp_weight=0.1,
        seed=0,
    )
    trainer.train(real)
    modes, quality = ring_coverage(trainer.sample(2000))
    # measured (seed 0, one thread): 8 of 8 modes, about a third of the samples within 5 sigma
    assert modes == 8 and quality >= 0.25, (modes, quality)


class Isolation(Callback):
    """Checks at every step that the other network has no gradients and does not move."""

    def __init__(self, trainer_ref):
        self.trainer_ref = trainer_ref
        self.steps = {"g": 0, "d": 0}
        self.snapshot = None

    def on_before_optimizer_step(self, trainer, optimizer, name):
        other = trainer.discriminator if name == "g" else trainer.generator
        assert all(p.grad is None for p in other.parameters()), name
        own = trainer.generator if name == "g" else trainer.discriminator
        assert all(p.grad is not None for p in own.parameters()), name
        if name == "g":
            assert self.snapshot is not None
            # the discriminator step before did not move the generator
            assert all(
                torch.equal(p, q)
                for p, q in zip(trainer.generator.parameters(), self.snapshot["g"], strict=True)
            )
        self.snapshot = {
            "g": [p.detach().clone() for p in trainer.generator.parameters()],
            "d": [p.detach().clone() for p in trainer.discriminator.parameters()],
        }
        self.steps[name] += 1

    def on_batch_end(self, trainer, batch, logs):
        if "g_loss" in logs:  # the generator step did not move the discriminator
            assert all(
                torch.equal(p, q)
                for p, q in zip(trainer.discriminator.parameters(), self.snapshot["d"], strict=True)
            )


@pytest.mark.parametrize("loss", ["nonsaturating", "wgan-gp"])
def test_each_network_is_updated_with_its_own_gradients_only(loss):
    real, _ = gaussian_mixture(256, seed=1)
    torch.manual_seed(1)
    g, d = mlp(4, 2, 16), mlp(2, 1, 16)
    isolation = Isolation(None)
    trainer = AdversarialTrainer(
        g,
        d,
        torch.optim.SGD(g.parameters(), lr=0.05),
        torch.optim.SGD(d.parameters(), lr=0.05),
        latent_dim=4,
        batch_size=32,
        epochs=2,
        n_critic=2,
        loss=loss,
        callbacks=[isolation],
    )
    trainer.train(real)
    assert isolation.steps == {"d": 16, "g": 8}
    assert (trainer.state.d_step, trainer.state.step) == (16, 8)


def test_one_round_matches_the_nonsaturating_loss_written_out():
    torch.set_default_dtype(torch.float64)
    try:
        real, _ = gaussian_mixture(16, seed=2)
        real = real.double()
        torch.manual_seed(2)
        g, d = mlp(3, 2, 8), mlp(2, 1, 8)
        g_ref, d_ref = mlp(3, 2, 8), mlp(2, 1, 8)
        g_ref.load_state_dict(g.state_dict())
        d_ref.load_state_dict(d.state_dict())
        trainer = AdversarialTrainer(
            g,
            d,
            descent.SGD(g, lr=0.1),
            descent.SGD(d, lr=0.1),
            latent_dim=3,
            batch_size=16,
            epochs=1,
            shuffle=False,
        )
        noise_stream = torch.Generator().manual_seed(0)
        noise_stream.set_state(trainer.noise_generator.get_state())
        trainer.train(real)
        # discriminator: binary cross-entropy, real labelled 1 and generated 0
        z1 = torch.randn(16, 3, generator=noise_stream)
        fake = g_ref(z1).detach()
        d_loss = F.binary_cross_entropy_with_logits(
            d_ref(real), torch.ones(16, 1)
        ) + F.binary_cross_entropy_with_logits(d_ref(fake), torch.zeros(16, 1))
        d_params = list(d_ref.parameters())
        with torch.no_grad():
            for p, grad in zip(d_params, torch.autograd.grad(d_loss, d_params), strict=True):
                p -= 0.1 * grad
        # generator: maximise log D(G(z)), i.e. minimise -log sigmoid(D(G(z)))
        z2 = torch.randn(16, 3, generator=noise_stream)
        g_loss = -F.logsigmoid(d_ref(g_ref(z2))).mean()
        g_params = list(g_ref.parameters())
        with torch.no_grad():
            for p, grad in zip(g_params, torch.autograd.grad(g_loss, g_params), strict=True):
                p -= 0.1 * grad
    finally:
        torch.set_default_dtype(torch.float32)
    for mine, reference in ((g, g_ref), (d, d_ref)):
        for p, q in zip(mine.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    assert trainer.history["d_loss"][0] == pytest.approx(d_loss.item(), rel=1e-12)
    assert trainer.history["g_loss"][0] == pytest.approx(g_loss.item(), rel=1e-12)


def test_gradient_penalty_of_a_linear_critic_is_its_closed_form():
    critic = nn.Linear(2, 1)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[3.0, 4.0]]))
    g = nn.Linear(2, 2)
    trainer = AdversarialTrainer(
        g, critic, descent.SGD(g, lr=0.1), descent.SGD(critic, lr=0.1), latent_dim=2, loss="wgan-gp"
    )
    real, fake = torch.randn(5, 2), torch.randn(5, 2)
    # the critic's gradient is w everywhere: (|w| - 1)^2 = (5 - 1)^2
    assert trainer.gradient_penalty(real, fake).item() == pytest.approx(16.0)


def test_wgan_gp_discriminator_loss_and_logs():
    real, _ = gaussian_mixture(64, seed=3)
    torch.manual_seed(3)
    g, d = mlp(4, 2, 16), mlp(2, 1, 16)
    trainer = AdversarialTrainer(
        g,
        d,
        descent.Adam(g, lr=1e-4, betas=(0.0, 0.9)),
        descent.Adam(d, lr=1e-4, betas=(0.0, 0.9)),
        latent_dim=4,
        batch_size=32,
        epochs=1,
        n_critic=5,
        loss="wgan-gp",
    )
    history = trainer.train(real)
    assert set(history) >= {"d_loss", "wasserstein", "gradient_penalty"}
    assert trainer.state.step == 0 and trainer.state.d_step == 2 and trainer.state.critic_steps == 2


def test_state_dict_carries_the_noise_stream():
    real, _ = gaussian_mixture(64, seed=4)
    g, d = mlp(4, 2, 8), mlp(2, 1, 8)
    trainer = AdversarialTrainer(
        g, d, descent.SGD(g, lr=0.1), descent.SGD(d, lr=0.1), latent_dim=4, batch_size=32, epochs=1
    )
    trainer.train(real)
    saved = trainer.state_dict()
    expected = trainer.sample_noise(3)
    g2, d2 = mlp(4, 2, 8), mlp(2, 1, 8)
    other = AdversarialTrainer(
        g2,
        d2,
        descent.SGD(g2, lr=0.1),
        descent.SGD(d2, lr=0.1),
        latent_dim=4,
        batch_size=32,
        epochs=1,
    )
    other.load_state_dict(saved)
    assert torch.equal(other.sample_noise(3), expected)
    assert (other.state.d_step, other.state.step) == (2, 2)


def test_misassigned_optimizers_and_shared_parameters_are_refused():
    g, d = mlp(4, 2, 8), mlp(2, 1, 8)
    with pytest.raises(ValueError, match="d_optimizer param_groups"):
        AdversarialTrainer(g, d, descent.SGD(g, lr=0.1), descent.SGD(g, lr=0.1), latent_dim=4)
    shared = nn.Sequential(g[0], nn.ReLU(), nn.Linear(8, 1))
    with pytest.raises(ValueError, match="share"):
        AdversarialTrainer(
            g, shared, descent.SGD(g, lr=0.1), descent.SGD(shared, lr=0.1), latent_dim=4
        )
    with pytest.raises(ValueError, match="n_critic=0"):
        AdversarialTrainer(
            g, d, descent.SGD(g, lr=0.1), descent.SGD(d, lr=0.1), latent_dim=4, n_critic=0
        )
    with pytest.raises(ValueError, match="loss='hinge'"):
        AdversarialTrainer(
            g, d, descent.SGD(g, lr=0.1), descent.SGD(d, lr=0.1), latent_dim=4, loss="hinge"
        )


def test_adversarial_extension_points_are_called():
    calls = {"sample_noise": 0, "discriminator_loss": 0, "generator_loss": 0}

    class Hooked(AdversarialTrainer):
        def sample_noise(self, n):
            calls["sample_noise"] += 1
            return super().sample_noise(n)

        def discriminator_loss(self, real_scores, fake_scores):
            calls["discriminator_loss"] += 1
            return super().discriminator_loss(real_scores, fake_scores)

        def generator_loss(self, fake_scores):
            calls["generator_loss"] += 1
            return super().generator_loss(fake_scores)

    real, _ = gaussian_mixture(96, seed=5)
    g, d = mlp(4, 2, 8), mlp(2, 1, 8)
    Hooked(
        g,
        d,
        descent.SGD(g, lr=0.1),
        descent.SGD(d, lr=0.1),
        latent_dim=4,
        batch_size=32,
        epochs=1,
        n_critic=3,
    ).train(real)
    assert calls == {"sample_noise": 4, "discriminator_loss": 3, "generator_loss": 1}
