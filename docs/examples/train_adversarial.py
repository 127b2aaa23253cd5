"""AdversarialTrainer: a GAN on a ring of 8 Gaussians; prints how many modes it covers.

Run: python docs/examples/train_adversarial.py            (non-saturating GAN, seconds)
     python docs/examples/train_adversarial.py --wgan-gp  (WGAN-GP, n_critic=5: about
                                                           20 s, it needs more steps)
"""

import sys

import torch
from torch import nn

import descent
from descent.data import gaussian_mixture, ring_centers

real, _ = gaussian_mixture(4096, modes=8, radius=2.0, std=0.05, seed=0)


def mlp(inputs: int, outputs: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(inputs, 128),
        nn.LeakyReLU(0.2),
        nn.Linear(128, 128),
        nn.LeakyReLU(0.2),
        nn.Linear(128, outputs),
    )


def modes_covered(samples: torch.Tensor) -> int:
    """Modes that receive at least 1% of the samples within 0.25 (5 sigma) of their mean."""
    nearest = torch.cdist(samples, ring_centers(8, 2.0)).min(dim=1)
    counts = torch.bincount(nearest.indices[nearest.values < 0.25], minlength=8)
    return int((counts >= 0.01 * len(samples)).sum())


torch.set_num_threads(1)  # small networks: one thread is fastest
torch.manual_seed(0)
generator, discriminator = mlp(8, 2), mlp(2, 1)
if "--wgan-gp" in sys.argv:  # Gulrajani et al. 2017: 5 critic steps per generator step;
    # lambda = 0.1 and Adam betas (0.5, 0.9), as in the authors' code for toy data
    options = dict(loss="wgan-gp", n_critic=5, gp_weight=0.1, epochs=150)
    betas, lr = (0.5, 0.9), 1e-3
else:  # the non-saturating loss (the default)
    options = dict(epochs=40)
    betas, lr = (0.5, 0.999), 1e-3
trainer = descent.AdversarialTrainer(
    generator,
    discriminator,
    descent.Adam(generator, lr=lr, betas=betas),
    descent.Adam(discriminator, lr=lr, betas=betas),
    latent_dim=8,
    batch_size=128,
    callbacks=[descent.ProgressBar(leave=False)],
    **options,
)
history = trainer.train(real)
print(
    f"{trainer.loss}: {modes_covered(trainer.sample(2000))} of 8 modes covered after "
    f"{trainer.state.step} generator and {trainer.state.d_step} discriminator steps"
)
