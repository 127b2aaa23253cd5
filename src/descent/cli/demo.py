"""``descent demo``: the three trainers on data that ships with descent or scikit-learn.

1. SupervisedTrainer: an MLP on scikit-learn's bundled 8x8 digits (with a one-cycle
   learning rate schedule and validation each epoch); prints the test accuracy, and
   with several ``--optimizers`` a table comparing them.
2. RecurrentTrainer: a character-level GRU on the bundled opening of *Coriolanus*,
   trained with truncated back-propagation through time; prints the held-out loss
   against the unigram baseline and a line of generated text.
3. AdversarialTrainer: a GAN on a ring of 8 Gaussians; prints how many modes its
   samples cover.

Progress bars go to stderr; results to stdout; PNG plots (loss curves of each
trainer and the GAN's samples) to the output directory, which is printed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import descent
from descent.data import (
    char_sequences,
    gaussian_mixture,
    load_text,
    ring_centers,
    unigram_entropy,
)
from descent.optim.registry import algorithms, lookup
from descent.train import LRMonitor, ProgressBar

from ._parser import add_command, positive_int

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "SGD": ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    "Adam": ("Adam", {"lr": 1e-3}),
    "AdamW": ("AdamW", {"lr": 1e-3, "weight_decay": 1e-2}),
    "RMSprop": ("RMSprop", {"lr": 1e-3}),
    "Adagrad": ("Adagrad", {"lr": 3e-2}),
    "NAdam": ("NAdam", {"lr": 1e-3}),
    "RAdam": ("RAdam", {"lr": 1e-3}),
    "Adamax": ("Adamax", {"lr": 2e-3}),
    "Signum": ("SignSGD", {"lr": 1e-3, "momentum": 0.9}),
    "Lion": ("Lion", {"lr": 1e-4, "weight_decay": 1e-2}),
}
"""Settings of the digits MLP per optimizer name: ``(class name, options)``. Any other
optimizer of the registry (:func:`descent.optim.registry.algorithms`) runs with its
class defaults."""

SIZES = {
    "supervised": (15, 2),
    "recurrent": (8, 1),
    "adversarial": (40, 2),
}
"""Epochs of each section: ``(full demo, --quick)``."""


def load_digits(seed: int) -> tuple[torch.Tensor, ...]:
    """The 8x8 digits (1,797 images, bundled with scikit-learn), split 80/20 and
    standardised with the training part's statistics."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as error:
        raise SystemExit(
            "descent: the digits task needs scikit-learn: pip install 'descent[demo]'"
        ) from error
    data = sk_load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    mean, std = x[order[:cut]].mean(0), x[order[:cut]].std(0) + 1.0
    x = (x - mean) / std
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def make_mlp(seed: int) -> nn.Module:
    """The digits MLP, 64-128-10 with a ReLU, initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


class CharGRU(nn.Module):
    """Embedding, one GRU layer, a linear read-out: ``(chars, hidden) -> (logits, hidden)``."""

    def __init__(self, vocab: int, width: int = 96) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.rnn = nn.GRU(32, width, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(
        self, chars: torch.Tensor, hidden: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out, hidden = self.rnn(self.embed(chars), hidden)
        return self.head(out), hidden


def _callbacks(progress: bool) -> list[descent.Callback]:
    return [ProgressBar(), LRMonitor()] if progress else [LRMonitor()]


def _plot(history: descent.History, path: Path, title: str, plots: bool) -> str:
    if not plots:
        return ""
    history.plot(path, title=title)
    return f" -> {path.name}"


def resolve(name: str) -> str:
    """The name of a preset (any case) or of an optimizer of the registry, as written
    there; ``ValueError`` naming the choices for any other name."""
    for preset in PRESETS:
        if preset.lower() == name.lower():
            return preset
    try:
        return lookup(name).__name__
    except KeyError:
        raise ValueError(
            f"unknown optimizer {name!r}; choose from "
            f"{', '.join(dict.fromkeys([*PRESETS, *algorithms()]))}"
        ) from None


def make_optimizer(
    name: str, model: nn.Module, lr: float | None = None
) -> tuple[torch.optim.Optimizer, str]:
    """The optimizer ``name`` (see :func:`resolve`) over ``model`` with its digits preset
    or class defaults, ``lr`` instead of the preset's when given; and its settings as
    text."""
    name = resolve(name)
    class_name, options = PRESETS.get(name, (name, {}))
    options = dict(options) if lr is None else {**options, "lr": lr}
    optimizer = lookup(class_name)(model, **options)
    shown = ", ".join(
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in options.items()
    )
    return optimizer, f"{class_name}({shown or 'defaults'})"


@dataclass
class DigitsRun:
    """One optimizer trained on the digits MLP: its name, settings, per-epoch history
    (``loss``, ``val_loss``, ``val_accuracy``, ``lr``) and training time."""

    name: str
    settings: str
    history: descent.History
    seconds: float


def train_digits(
    name: str,
    data: tuple[torch.Tensor, ...],
    epochs: int,
    seed: int,
    *,
    lr: float | None = None,
    progress: bool = False,
) -> DigitsRun:
    """Train the digits MLP (64-128-10, batches of 32) with the optimizer ``name`` and a
    one-cycle schedule peaking at 3x its learning rate; validate on the test split
    after each epoch. ``data`` is :func:`load_digits`'s split."""
    x_train, y_train, x_test, y_test = data
    model = make_mlp(seed)
    optimizer, settings = make_optimizer(name, model, lr)
    steps = epochs * -(-len(x_train) // 32)
    peak = optimizer.param_groups[0]["lr"] * 3
    scheduler = descent.schedules.OneCycleLR(
        optimizer, max_lr=peak, total_steps=steps, cycle_momentum=False
    )
    trainer = descent.SupervisedTrainer(
        optimizer,
        batch_size=32,
        epochs=epochs,
        scheduler=scheduler,
        metrics=["accuracy"],
        callbacks=_callbacks(progress),
        seed=seed,
    )
    start = time.perf_counter()
    history = trainer.train(
        model, x_train, y_train, nn.CrossEntropyLoss(), validation_data=(x_test, y_test)
    )
    return DigitsRun(resolve(name), settings, history, time.perf_counter() - start)


def run_supervised(
    out: Path, epochs: int, seed: int, optimizers: Sequence[str], progress: bool, plots: bool
) -> None:
    """Section 1: the digits MLP with each of ``optimizers``; print the test accuracy
    (and a table for several), plot the first one's curves into ``out``."""
    data = load_digits(seed)
    print(
        f"[1/3] SupervisedTrainer: MLP 64-128-10 on digits ({len(data[0])} train / "
        f"{len(data[2])} test images), {epochs} epochs, batch 32, one-cycle lr"
    )
    rows = []
    for name in optimizers:
        run = train_digits(name, data, epochs, seed, progress=progress)
        history = run.history
        rows.append((run.name, history["loss"][-1], history["val_accuracy"][-1], run.seconds))
        note = _plot(
            history,
            out / f"supervised_{run.name}.png",
            f"digits MLP, {run.name}",
            plots and (len(optimizers) == 1 or name == optimizers[0]),
        )
        print(f"      {run.name}: test accuracy {history['val_accuracy'][-1]:.2%}{note}")
    if len(rows) > 1:
        print(f"      {'optimizer':<10} {'train loss':>10} {'test acc':>9} {'time (s)':>9}")
        for name, loss, accuracy, seconds in rows:
            print(f"      {name:<10} {loss:>10.4f} {accuracy:>9.2%} {seconds:>9.2f}")


@torch.no_grad()
def _generate(
    model: CharGRU, vocabulary: descent.data.CharVocabulary, prompt: str, length: int, seed: int
) -> str:
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    logits, hidden = model(vocabulary.encode(prompt)[None], None)
    chars = []
    for _ in range(length):
        probabilities = torch.softmax(logits[0, -1] / 0.7, dim=-1)
        index = int(torch.multinomial(probabilities, 1, generator=generator))
        chars.append(index)
        logits, hidden = model(torch.tensor([[index]]), hidden)
    model.train()
    return prompt + vocabulary.decode(chars)


def run_recurrent(out: Path, epochs: int, seed: int, progress: bool, plots: bool) -> None:
    """Section 2: the character GRU; print its held-out loss against the unigram
    baseline and a sample of generated text; plot its curves into ``out``."""
    text = load_text()
    x, y, vocabulary = char_sequences(text, 64, stride=32)
    print(
        f"[2/3] RecurrentTrainer: character GRU on Coriolanus ({len(text):,} characters, "
        f"{len(vocabulary)} symbols), {epochs} epochs, sequences of 64, TBPTT chunks of 16"
    )
    torch.manual_seed(seed)
    model = CharGRU(len(vocabulary))
    trainer = descent.RecurrentTrainer(
        descent.Adam(model, lr=5e-3),
        batch_size=32,
        epochs=epochs,
        bptt_steps=16,
        clip_grad_norm=1.0,
        metrics=["accuracy"],
        callbacks=_callbacks(progress),
        seed=seed,
    )
    history = trainer.train(model, x, y, nn.CrossEntropyLoss(), validation_split=0.1)
    baseline = unigram_entropy(text)
    note = _plot(history, out / "recurrent.png", "character GRU on Coriolanus", plots)
    print(
        f"      held-out loss {history['val_loss'][-1]:.3f} nats/char vs unigram baseline "
        f"{baseline:.3f}{note}"
    )
    sample = _generate(model, vocabulary, "MENENIUS:\n", 120, seed).replace("\n", " / ")
    print(f"      sample: {sample}")


def run_adversarial(
    out: Path, epochs: int, seed: int, progress: bool, plots: bool, quick: bool = False
) -> None:
    """Section 3: the GAN on a ring of 8 Gaussians; print the modes its samples cover;
    plot its curves and samples into ``out``."""
    real, _ = gaussian_mixture(4096, modes=8, radius=2.0, std=0.05, seed=seed)
    print(
        f"[3/3] AdversarialTrainer: GAN on a ring of 8 Gaussians ({len(real)} points), "
        f"{epochs} epochs, non-saturating loss"
    )
    torch.manual_seed(seed)

    def mlp(inputs: int, outputs: int) -> nn.Module:
        return nn.Sequential(
            nn.Linear(inputs, 128),
            nn.LeakyReLU(0.2),
            nn.Linear(128, 128),
            nn.LeakyReLU(0.2),
            nn.Linear(128, outputs),
        )

    generator, discriminator = mlp(8, 2), mlp(2, 1)
    trainer = descent.AdversarialTrainer(
        generator,
        discriminator,
        descent.Adam(generator, lr=1e-3, betas=(0.5, 0.999)),
        descent.Adam(discriminator, lr=1e-3, betas=(0.5, 0.999)),
        latent_dim=8,
        batch_size=128,
        epochs=epochs,
        callbacks=[ProgressBar()] if progress else [],
        seed=seed,
    )
    history = trainer.train(real)
    samples = trainer.sample(2000)
    centers = ring_centers(8, 2.0)
    nearest = torch.cdist(samples, centers).min(dim=1)
    close = nearest.values < 0.25
    counts = torch.bincount(nearest.indices[close], minlength=8)
    covered = int((counts >= 20).sum())
    note = _plot(history, out / "adversarial.png", "GAN on 8 Gaussians", plots)
    if plots:
        _scatter(real, samples, out / "gan_samples.png")
        note += ", gan_samples.png"
    near = f"{float(close.float().mean()):.0%} of samples near a mode"
    if quick:
        print(
            f"      smoke test: the GAN trained {epochs} epochs (learning the ring takes the "
            f"full demo's {SIZES['adversarial'][0]}); so far modes covered: {covered}/8, "
            f"{near}{note}"
        )
    else:
        print(
            f"      modes covered: {covered}/8 (>= 1% of 2,000 samples within 0.25 of a "
            f"mode); {near}{note}"
        )


def _scatter(real: torch.Tensor, fake: torch.Tensor, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.5, 4.5), layout="tight")
    axis = figure.add_subplot()
    axis.scatter(real[:2000, 0], real[:2000, 1], s=2, alpha=0.4, label="data")
    axis.scatter(fake[:, 0], fake[:, 1], s=2, alpha=0.4, label="generator")
    axis.set_aspect("equal")
    axis.set_title("GAN samples vs data")
    axis.legend(markerscale=5)
    figure.savefig(path, dpi=110)


def run_demo(
    out: str | Path = "descent-demo",
    quick: bool = False,
    seed: int = 0,
    optimizers: Sequence[str] | None = None,
    epochs: int | None = None,
    progress: bool = True,
    sections: Sequence[str] = ("supervised", "recurrent", "adversarial"),
) -> int:
    """Run the demo; write plots to ``out``; return the exit status (0)."""
    names = [resolve(name) for name in optimizers or ["Adam"]]
    bad = [s for s in sections if s not in SIZES]
    if bad:
        raise ValueError(f"run_demo: sections={bad}; choose from {', '.join(SIZES)}")
    try:
        import matplotlib  # noqa: F401

        plots = True
    except ImportError:
        plots = False
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these models are small: one thread is fastest
    start = time.perf_counter()
    print(f"descent {descent.__version__} demo{' (quick)' if quick else ''}: plots go to {out}")
    try:
        size = {key: value[1 if quick else 0] for key, value in SIZES.items()}
        if "supervised" in sections:
            run_supervised(out, epochs or size["supervised"], seed, names, progress, plots)
        if "recurrent" in sections:
            run_recurrent(out, size["recurrent"], seed, progress, plots)
        if "adversarial" in sections:
            run_adversarial(out, size["adversarial"], seed, progress, plots, quick)
    finally:
        torch.set_num_threads(threads)
    if not plots:
        print("(no plots: matplotlib is not installed; pip install 'descent[demo]')")
    print(f"done in {time.perf_counter() - start:.1f} s; plots written to {out}")
    return 0


_EXAMPLES = """\
  descent demo                                 the full demo (about 20 s on 2 cores)
  descent demo --quick --out /tmp/demo         a smoke test, plots in /tmp/demo
  descent demo --only supervised --optimizers SGD Adam Lion
"""


def add_parser(commands: Any) -> None:
    """Declare ``descent demo``."""
    parser = add_command(
        commands,
        "demo",
        run=run,
        summary="run the supervised, recurrent and adversarial trainers on bundled data, "
        "with progress bars, and write PNG plots (the default command)",
        description="The three trainers on data that ships with descent and scikit-learn: an "
        "MLP on the 8x8 digits (SupervisedTrainer, one-cycle schedule), a "
        "character GRU on the opening of Coriolanus (RecurrentTrainer, truncated "
        "back-propagation through time) and a GAN on a ring of 8 Gaussians "
        "(AdversarialTrainer). Results go to stdout, progress bars to stderr, "
        "PNG plots to --out.",
        examples=_EXAMPLES,
    )
    parser.add_argument(
        "--out",
        default="descent-demo",
        metavar="DIR",
        help="directory for the PNG plots (./descent-demo)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few epochs per trainer, for a smoke test (seconds)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--optimizers",
        nargs="+",
        default=None,
        metavar="NAME",
        help="optimizers for the digits MLP; several print a comparison "
        "table (default: Adam); 'descent compare' also plots them",
    )
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="epochs of the digits MLP (15; 2 with --quick)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="SECTION",
        choices=list(SIZES),
        help="run only these sections",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Run ``descent demo`` with parsed arguments."""
    try:
        names = [resolve(name) for name in args.optimizers or ["Adam"]]
    except ValueError as error:
        args.parser.error(f"argument --optimizers: {error}")
    return run_demo(
        out=args.out,
        quick=args.quick,
        seed=args.seed,
        optimizers=names,
        epochs=args.epochs,
        progress=not args.no_progress,
        sections=args.only or tuple(SIZES),
    )


__all__ = [
    "PRESETS",
    "SIZES",
    "CharGRU",
    "DigitsRun",
    "add_parser",
    "load_digits",
    "make_mlp",
    "make_optimizer",
    "resolve",
    "run",
    "run_adversarial",
    "run_demo",
    "run_recurrent",
    "run_supervised",
    "train_digits",
]
