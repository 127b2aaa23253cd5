"""AdversarialTrainer: a generator trained against a discriminator (GAN, WGAN-GP)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from .accumulation import Window, batch_length
from .base import Trainer
from .callbacks import Callback
from .checks import check_choice, check_optimizer, check_positive_int, check_scheduler
from .data import mixed_seed
from .history import History
from .state import LoopState

LOSSES = ("nonsaturating", "wgan-gp")


@dataclasses.dataclass
class AdversarialLoopState(LoopState):
    """:class:`LoopState` where ``step`` counts generator steps, ``d_step``
    discriminator steps, ``window`` the micro-batches accumulated towards the next
    discriminator step, and ``critic_steps`` the discriminator steps since the last
    generator step (it carries across epochs)."""

    d_step: int = 0
    critic_steps: int = 0


class AdversarialTrainer(Trainer):
    r"""Alternating updates of a generator G and a discriminator (critic) D.

    Every batch of real samples :math:`x` (every window of
    ``gradient_accumulation_steps`` micro-batches) makes one discriminator step; after
    every ``n_critic`` discriminator steps the generator takes one step (noise
    :math:`z \sim \mathcal N(0, I)` of size ``latent_dim``, drawn from the trainer's
    seeded generator). With D's output a logit :math:`D(\cdot)`:

    * ``loss="nonsaturating"`` (default; Goodfellow et al. 2014, section 3):
      :math:`L_D = \operatorname{softplus}(-D(x)) + \operatorname{softplus}(D(G(z)))`
      (binary cross-entropy, real = 1, fake = 0) and
      :math:`L_G = \operatorname{softplus}(-D(G(z)))`, i.e. G maximises
      :math:`\log D(G(z))` rather than minimising :math:`\log(1 - D(G(z)))`.
    * ``loss="wgan-gp"`` (Gulrajani et al. 2017, Algorithm 1):
      :math:`L_D = D(\tilde x) - D(x) + \lambda (\lVert\nabla_{\hat x} D(\hat x)\rVert_2 - 1)^2`
      with :math:`\hat x = \epsilon x + (1-\epsilon)\tilde x`,
      :math:`\epsilon \sim U[0, 1]` per sample, :math:`\lambda` = ``gp_weight``, and
      :math:`L_G = -D(G(z))`. Use ``n_critic=5`` and Adam with ``betas=(0.0, 0.9)``
      as in the paper.

    All losses are batch means. With ``gradient_accumulation_steps = N`` the real
    micro-batches of a window, and as many generated samples, are weighted by their
    share of the window's samples, and the window's noise (and WGAN-GP's
    :math:`\epsilon`) is drawn for the whole window at once: a window equals one batch
    of all its samples (for networks whose per-sample outputs do not depend on the
    batch: no batch normalisation). The generator step takes as many generated
    samples as the window held real ones, in micro-batches of the same sizes.

    Each network's gradients stay out of the other's
    update: the discriminator step sees generated samples computed without gradients
    (G's gradients are never formed), and during the generator step D's parameters
    do not require gradients (D's ``.grad`` is untouched), so neither optimizer ever
    sees the other network's gradients. The two optimizers must hold the parameters
    of their own network only.

    Args:
        generator: maps noise ``(n, latent_dim)`` to samples.
        discriminator: maps samples ``(n, ...)`` to scores ``(n,)`` or ``(n, 1)``.
        g_optimizer, d_optimizer: their optimizers.
        latent_dim: size of the noise vector.
        batch_size: real samples per (micro-)batch.
        epochs: epochs (passes over the real data) per ``train()`` call.
        gradient_accumulation_steps: micro-batches per discriminator step.
        n_critic: discriminator steps per generator step.
        loss: ``"nonsaturating"`` or ``"wgan-gp"``.
        gp_weight: :math:`\lambda` of the gradient penalty (WGAN-GP).
        g_scheduler, d_scheduler: stepped after each step of their optimizer.
        clip_grad_norm: clip each network's gradient norm before its step.
        callbacks: :class:`Callback` objects.
        shuffle, drop_last: as in :class:`SupervisedTrainer` (``drop_last`` defaults to
            True here: a small last batch makes a noisy critic step).
        **options: ``seed``, ``device``, ``precision``, ``nonfinite``,
            ``clip_grad_value``, and the checkpoint options ``checkpoint_dir``,
            ``checkpoint_every``, ``checkpoint_each_epoch``, ``keep_last``,
            ``checkpoint_monitor``, ``checkpoint_mode``, and ``zero_redundancy``: see
            :class:`Trainer`. Under torch.distributed this trainer averages gradients
            with :func:`descent.distributed.average_gradients` instead of DDP (see
            :meth:`wrap_model`).

    Extension points: :meth:`sample_noise`, :meth:`discriminator_loss`,
    :meth:`generator_loss`, :meth:`gradient_penalty`, and the base ones.

    Example::

        g = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
        d = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
        trainer = descent.AdversarialTrainer(g, d, descent.Adam(g, lr=1e-3, betas=(0.5, 0.999)),
                                             descent.Adam(d, lr=1e-3, betas=(0.5, 0.999)),
                                             latent_dim=8, batch_size=128, epochs=50)
        trainer.train(real_points)        # (N, 2) tensor
        fake = trainer.sample(1000)       # (1000, 2), generated without gradients

    References: Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014;
    Gulrajani et al., "Improved Training of Wasserstein GANs", NeurIPS 2017.
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        g_optimizer: Any,
        d_optimizer: Any,
        *,
        latent_dim: int,
        batch_size: int = 64,
        epochs: int = 10,
        n_critic: int = 1,
        loss: str = "nonsaturating",
        gp_weight: float = 10.0,
        g_scheduler: Any = None,
        d_scheduler: Any = None,
        clip_grad_norm: float | None = None,
        callbacks: Iterable[Callback] = (),
        shuffle: bool = True,
        drop_last: bool = True,
        gradient_accumulation_steps: int = 1,
        **options: Any,
    ) -> None:
        super().__init__(
            epochs=epochs, callbacks=callbacks, clip_grad_norm=clip_grad_norm, **options
        )
        owner = type(self).__name__
        for name, module in (("generator", generator), ("discriminator", discriminator)):
            if not isinstance(module, nn.Module):
                raise TypeError(
                    f"{owner}: {name} is a {type(module).__name__}; expected an nn.Module"
                )
        self.generator, self.discriminator = generator, discriminator
        self.g_optimizer = check_optimizer(owner, "g_optimizer", g_optimizer)
        self.d_optimizer = check_optimizer(owner, "d_optimizer", d_optimizer)
        self._check_ownership()
        self.g_scheduler = check_scheduler(owner, "g_scheduler", g_scheduler, g_optimizer)
        self.d_scheduler = check_scheduler(owner, "d_scheduler", d_scheduler, d_optimizer)
        self.latent_dim = check_positive_int(owner, "latent_dim", latent_dim)
        self.batch_size = check_positive_int(owner, "batch_size", batch_size)
        self.n_critic = check_positive_int(owner, "n_critic", n_critic)
        self.accumulation = check_positive_int(
            owner, "gradient_accumulation_steps", gradient_accumulation_steps
        )
        self.loss = check_choice(owner, "loss", loss, LOSSES)
        if (
            isinstance(gp_weight, bool)
            or not isinstance(gp_weight, int | float)
            or not gp_weight >= 0
            or not math.isfinite(gp_weight)
        ):
            raise ValueError(f"{owner}: gp_weight={gp_weight!r}; expected a finite number >= 0")
        self.gp_weight = float(gp_weight)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.noise_generator = torch.Generator().manual_seed(mixed_seed(self.seed, -2))
        self.model = nn.ModuleDict({"generator": generator, "discriminator": discriminator})
        self._draws: tuple[torch.Tensor, torch.Tensor | None, list[int]] | None = None

    _optimizer_attributes = {"g": "g_optimizer", "d": "d_optimizer"}
    uses_ddp = False
    state: AdversarialLoopState

    def new_state(self) -> AdversarialLoopState:
        return AdversarialLoopState()

    def batches_per_window(self) -> int:
        return self.accumulation

    def check_counters(self, loop: Any) -> None:
        super().check_counters(loop)
        if loop.critic_steps >= self.n_critic:
            raise ValueError(
                f"loop counter critic_steps={loop.critic_steps}; expected less "
                f"than n_critic={self.n_critic}"
            )

    def loop_plan(self) -> dict[str, Any]:
        return {**super().loop_plan(), "n_critic": self.n_critic}

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """No DDP wrapper: a discriminator step runs D forward two or three times (real,
        generated, gradient penalty) before one backward, which DDP does not allow.
        Under torch.distributed the ranks start from rank 0's parameters
        (:func:`descent.distributed.broadcast_tensors`), each optimizer step averages
        the gradients over the ranks (:func:`descent.distributed.average_gradients`),
        and a fresh run gives rank r > 0 its own noise stream (rank 0 keeps the
        single-process one), so the ranks' generated samples differ as their real ones do."""
        if self.distribution.active:
            rank, state = distributed.get_rank(), self.state
            if rank > 0 and not state.running and state.step == 0 and state.d_step == 0:
                self.noise_generator.manual_seed(mixed_seed(mixed_seed(self.seed, -2), rank))
        return super().wrap_model(model)

    def _check_ownership(self) -> None:
        owner = type(self).__name__
        g_params = {id(p) for p in self.generator.parameters()}
        d_params = {id(p) for p in self.discriminator.parameters()}
        if g_params & d_params:
            raise ValueError(
                f"{owner}: the generator and the discriminator share "
                f"{len(g_params & d_params)} parameter(s); each network needs its own"
            )
        for name, optimizer, mine, network in (
            ("g_optimizer", self.g_optimizer, g_params, "generator"),
            ("d_optimizer", self.d_optimizer, d_params, "discriminator"),
        ):
            for g, group in enumerate(optimizer.param_groups):
                for i, param in enumerate(group["params"]):
                    if id(param) not in mine:
                        raise ValueError(
                            f"{owner}: {name} param_groups[{g}]['params'][{i}] is "
                            f"not a parameter of the {network}; each optimizer must "
                            "update its own network only"
                        )

    def optimizers(self) -> dict[str, Any]:
        return {"g": self.g_optimizer, "d": self.d_optimizer}

    def schedulers(self) -> dict[str, Any]:
        return {"g": self.g_scheduler, "d": self.d_scheduler}

    def _next_step_number(self, name: str) -> int:
        return (self.state.d_step if name == "d" else self.state.step) + 1

    def _count_step(self, name: str) -> int:
        if name == "d":
            self.state.d_step += 1
            return self.state.d_step
        return super()._count_step(name)

    def _named_modules(self) -> dict[str, nn.Module]:
        return {"generator.": self.generator, "discriminator.": self.discriminator}

    def _extra_state(self) -> dict[str, Any]:
        return {"noise_generator": self.noise_generator.get_state()}

    def _check_extra_state(self, extra: Mapping[str, Any]) -> None:
        state = extra.get("noise_generator") if isinstance(extra, Mapping) else None
        if (
            set(extra) != {"noise_generator"}
            or not isinstance(state, torch.Tensor)
            or state.dtype != torch.uint8
        ):
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: 'extra' must hold "
                "'noise_generator', a uint8 tensor (torch.Generator state)"
            )

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        self.noise_generator.set_state(extra["noise_generator"].clone())

    # ------------------------------------------------------------------ public

    def train(self, data: Any, *, epochs: int | None = None, resume: bool = False) -> History:
        """Train on real samples ``data`` (array/tensor ``(N, ...)``, Dataset or DataLoader).

        Dataset items and DataLoader batches that are tuples or lists use their first
        element (e.g. ``(sample, label)`` pairs). A second call continues training.
        ``resume=True`` continues from the latest checkpoint in ``checkpoint_dir``, as
        in :meth:`SupervisedTrainer.train`.
        """
        batches = self.make_batches(
            data,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            require_targets=False,
            x_name="data",
        )
        return self._fit(self.model, batches, epochs, resume=resume)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples of the generator in eval mode, without gradients.

        Noise comes from ``generator`` if given, else a fresh one seeded by the trainer's
        seed (so repeated calls give the same samples and the training noise stream is
        left alone).
        """
        check_positive_int(type(self).__name__, "n", n)
        if generator is None:
            generator = torch.Generator().manual_seed(mixed_seed(self.seed, -3))
        was_training = self.generator.training
        self.generator.eval()
        try:
            noise = torch.randn(n, self.latent_dim, generator=generator)
            samples: torch.Tensor = self.generator(noise.to(self._device())).detach()
            return samples
        finally:
            self.generator.train(was_training)

    # ------------------------------------------------------------------ extension points

    def sample_noise(self, n: int) -> torch.Tensor:
        """Noise for ``n`` samples: standard normal ``(n, latent_dim)``, seeded stream."""
        return torch.randn(n, self.latent_dim, generator=self.noise_generator).to(self._device())

    def discriminator_loss(
        self, real_scores: torch.Tensor, fake_scores: torch.Tensor
    ) -> torch.Tensor:
        """The discriminator's loss without the gradient penalty."""
        if self.loss == "nonsaturating":
            return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()
        return fake_scores.mean() - real_scores.mean()

    def generator_loss(self, fake_scores: torch.Tensor) -> torch.Tensor:
        """The generator's loss given D's scores of its samples."""
        if self.loss == "nonsaturating":
            return F.softplus(-fake_scores).mean()
        return -fake_scores.mean()

    def gradient_penalty(
        self, real: torch.Tensor, fake: torch.Tensor, epsilon: torch.Tensor | None = None
    ) -> torch.Tensor:
        r""":math:`\mathbb E[(\lVert\nabla_{\hat x} D(\hat x)\rVert_2 - 1)^2]` on random
        interpolates :math:`\hat x` of real and generated samples (without the weight).

        ``epsilon``: the interpolation weights, one per sample (None: drawn here from
        the trainer's noise stream)."""
        shape = (real.shape[0],) + (1,) * (real.dim() - 1)
        if epsilon is None:
            epsilon = torch.rand(shape, generator=self.noise_generator)
        epsilon = epsilon.reshape(shape).to(real)
        mixed = (epsilon * real + (1 - epsilon) * fake).requires_grad_(True)
        scores = self.discriminator(mixed)
        (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
        penalty: torch.Tensor = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        return penalty

    def count_batch(self, batch: Any) -> float:
        """A batch's real samples (its weight within its window)."""
        return float(batch_length(_real(batch)))

    def train_batch(
        self, model: nn.Module, batch: Any, index: int, n_batches: int | None
    ) -> dict[str, float]:
        """One micro-batch of the discriminator's window; after the window's last, a
        discriminator step, and after every ``n_critic`` of those a generator step."""
        real = _real(batch)
        state, window = self.state, self.window
        assert window is not None
        if state.window == 0:
            self._draw_window(window)
        logs = self.discriminator_step(real, index)
        self.meter.add(logs, real.shape[0])
        if state.window == 0 and state.critic_steps >= self.n_critic:
            generated = int(sum(window.counts))
            g_logs = self.generator_step(generated, index)
            state.critic_steps = 0
            self.meter.add(g_logs, generated)
            logs.update(g_logs)
        return logs

    def discriminator_step(self, real: torch.Tensor, index: int) -> dict[str, float]:
        """Accumulate D's gradients on ``real`` and as many generated samples, weighted by
        their share of the window; step D after the window's last micro-batch."""
        state, window = self.state, self.window
        assert window is not None and self._draws is not None
        noise, epsilon, offsets = self._draws
        position = index - window.first
        rows = slice(offsets[position], offsets[position + 1])
        with torch.no_grad(), self.autocast():
            fake = self.generator(noise[rows])
        with self.autocast():
            real_scores = _scores(self.discriminator(real))
            fake_scores = _scores(self.discriminator(fake))
            loss = self.discriminator_loss(real_scores, fake_scores)
            logs: dict[str, float] = {}
            if self.loss == "wgan-gp":
                logs["wasserstein"] = float((real_scores.mean() - fake_scores.mean()).detach())
                if self.gp_weight:
                    penalty = self.gradient_penalty(
                        real, fake.to(real.dtype), None if epsilon is None else epsilon[rows]
                    )
                    logs["gradient_penalty"] = float(penalty.detach())
                    loss = loss + self.gp_weight * penalty
        logs["d_loss"] = self._note_loss(loss, index)
        self.backward(loss * window.weight(index), model=self.discriminator, sync=True)
        state.window += 1
        self.meter.add_window(logs["d_loss"], real.shape[0])
        if state.window == window.size:
            self._finish_window(self.d_optimizer, self.d_scheduler, name="d", loss_key="d_loss")
            state.critic_steps += 1
        return logs

    def generator_step(self, n: int, index: int) -> dict[str, float]:
        """Update G on ``n`` generated samples, with D frozen; return its logs.

        The samples come in micro-batches of the sizes of the discriminator's window
        (when it held ``n`` samples), each loss weighted by its share."""
        state, window = self.state, self.window
        sizes = (
            [int(c) for c in window.counts]
            if window is not None and int(sum(window.counts)) == n
            else [n]
        )
        scale = (
            window.scale
            if window is not None and len(sizes) == window.size
            else (lambda count: count / n)
        )
        noise = self.sample_noise(n)
        frozen = [p for p in self.discriminator.parameters() if p.requires_grad]
        for param in frozen:
            param.requires_grad_(False)
        total = 0.0
        try:
            for start, size in zip(itertools.accumulate([0, *sizes]), sizes, strict=False):
                with self.autocast():
                    generated = self.generator(noise[start : start + size])
                    loss = self.generator_loss(_scores(self.discriminator(generated)))
                total += self._note_loss(loss, index) * size
                self.backward(loss * scale(size), model=self.generator, sync=True)
        finally:
            for param in frozen:
                param.requires_grad_(True)
        value = total / n
        if self.optimizer_step(self.g_optimizer, self.g_scheduler, name="g"):
            state.step += 1
            self.history.log_step(state.step, {"g_loss": value, **self._step_logs})
        self._step_logs = {}
        return {"g_loss": value}

    def _draw_window(self, window: Window) -> None:
        """The noise (and WGAN-GP's interpolation weights) of the whole window, drawn at
        once so that a window of micro-batches draws what one batch would."""
        n = int(sum(window.counts))
        noise = self.sample_noise(n)
        epsilon = (
            torch.rand(n, generator=self.noise_generator)
            if self.loss == "wgan-gp" and self.gp_weight
            else None
        )
        self._draws = (noise, epsilon, list(itertools.accumulate([0, *map(int, window.counts)])))

    def _device(self) -> torch.device:
        if self.device is not None:
            return self.device
        for param in self.generator.parameters():
            return param.device
        return torch.device("cpu")


def _real(batch: Any) -> torch.Tensor:
    """The real samples of a batch (the first element of a tuple or list)."""
    real: torch.Tensor = batch[0] if isinstance(batch, tuple | list) else batch
    return real


def _scores(scores: torch.Tensor) -> torch.Tensor:
    """D's output as one score per sample, in float32 (or wider)."""
    if scores.dim() == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.dim() != 1:
        raise ValueError(
            f"AdversarialTrainer: the discriminator returned shape "
            f"{tuple(scores.shape)}; expected one score per sample, (n,) or (n, 1)"
        )
    return scores.float() if scores.dtype in (torch.bfloat16, torch.float16) else scores
