"""An honest comparison of descent's optimizers on the bundled tasks, at their defaults.

Every optimizer of the registry runs with the defaults its docstring documents (no
tuning, no schedule) on the two small tasks of ``descent demo``: an MLP on
scikit-learn's 8x8 digits, and a character GRU on the bundled opening of *Coriolanus*.
One plain loop serves every optimizer: ``step(closure)``, and ``eval()`` / ``train()``
around evaluation for optimizers that switch modes (Schedule-Free). Muon runs as
:class:`~descent.optim.MuonAdamW` (Muon takes matrices only).

Defaults are not tuned for these tasks: some learning rates (SGD's 1e-3, Lion's 1e-4)
are far from good ones here. The table shows what the defaults do, not what each
algorithm can do.

Example::

    from descent.bench.compare import compare, format_table
    print(format_table(compare(epochs=10)))
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data import char_sequences, load_text, unigram_entropy
from ..optim.registry import algorithms

SKIPPED = {"OrthoMuon": "matrices only; compared as MuonAdamW"}
"""Registry entries not run on their own, and why."""


@dataclass(frozen=True)
class Row:
    """One optimizer on one task."""

    task: str
    optimizer: str
    train_loss: float
    metric: float
    metric_name: str
    ms_per_step: float


def _digits(seed: int) -> tuple[torch.Tensor, ...]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise RuntimeError(
            "compare needs scikit-learn for the digits task: pip install 'descent[demo]'"
        ) from error
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    mean, std = x[order[:cut]].mean(0), x[order[:cut]].std(0) + 1.0
    x = (x - mean) / std
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


class _CharGRU(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.rnn = nn.GRU(32, 96, batch_first=True)
        self.head = nn.Linear(96, vocab)

    def forward(self, chars: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.rnn(self.embed(chars))[0])
        return logits


@dataclass
class _Task:
    name: str
    model: Callable[[], nn.Module]
    train: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metric: Callable[[torch.Tensor, torch.Tensor], float]
    metric_name: str


def _tasks(seed: int, names: Sequence[str]) -> list[_Task]:
    tasks = []
    if "digits" in names:
        x, y, x_test, y_test = _digits(seed)

        def mlp() -> nn.Module:
            return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

        tasks.append(
            _Task(
                "digits MLP",
                mlp,
                (x, y),
                (x_test, y_test),
                nn.functional.cross_entropy,
                lambda out, y: float((out.argmax(-1) == y).float().mean()),
                "test accuracy",
            )
        )
    if "chars" in names:
        x, y, vocabulary = char_sequences(load_text(), 64, stride=32)
        cut = int(0.9 * len(x))

        def flat_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))

        tasks.append(
            _Task(
                "char GRU",
                lambda: _CharGRU(len(vocabulary)),
                (x[:cut], y[:cut]),
                (x[cut:], y[cut:]),
                flat_loss,
                lambda out, y: float(flat_loss(out, y)),
                "held-out nats/char",
            )
        )
    return tasks


def _switch(optimizer: Any, mode: str) -> None:
    """``optimizer.train()`` / ``.eval()`` for optimizers that switch modes (the
    :class:`~descent.optim.schedule_free.ModeSwitching` protocol)."""
    if callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None)):
        getattr(optimizer, mode)()


def _run(
    task: _Task,
    name: str,
    make: Callable[[nn.Module], Any],
    epochs: int,
    batch_size: int,
    seed: int,
) -> Row:
    torch.manual_seed(seed)
    model = task.model()
    optimizer = make(model)
    x, y = task.train
    generator = torch.Generator().manual_seed(seed)
    steps, seconds = 0, 0.0
    losses: list[float] = []
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        losses = []
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]

            def closure(index: torch.Tensor = index) -> torch.Tensor:
                optimizer.zero_grad()
                loss = task.loss(model(x[index]), y[index])
                loss.backward()
                return loss

            _switch(optimizer, "train")
            began = time.perf_counter()
            loss = optimizer.step(closure)
            seconds += time.perf_counter() - began
            steps += 1
            losses.append(float(loss.detach()))
    _switch(optimizer, "eval")
    with torch.no_grad():
        metric = task.metric(model(task.test[0]), task.test[1])
    train_loss = sum(losses) / len(losses)
    return Row(
        task.name,
        name,
        train_loss if math.isfinite(train_loss) else math.nan,
        metric,
        task.metric_name,
        1000 * seconds / steps,
    )


def compare(
    optimizers: Sequence[str] | None = None,
    *,
    tasks: Sequence[str] = ("digits", "chars"),
    epochs: int = 10,
    batch_size: int = 32,
    seed: int = 0,
    threads: int | None = 1,
) -> list[Row]:
    """Train each optimizer at its defaults on each task; return one :class:`Row` each.

    Args:
        optimizers: registry names (default: every optimizer but those in
            :data:`SKIPPED`).
        tasks: ``"digits"`` (needs scikit-learn) and/or ``"chars"``.
        epochs: passes over the training data (no schedule, no tuning).
        batch_size: examples per step.
        seed: seeds the data split, the models' initial weights and the batch order
            (the same for every optimizer).
        threads: torch threads while timing (None: leave as is); one thread gives
            steadier times on small models.

    Time per step is the wall time of ``optimizer.step(closure)``, forward and backward
    included (the same for every optimizer on a task).
    """
    table = algorithms()
    names = (
        list(optimizers)
        if optimizers is not None
        else [name for name in table if name not in SKIPPED]
    )
    unknown = [name for name in names if name not in table]
    if unknown:
        raise ValueError(
            f"compare: optimizers={unknown} are not in descent's registry; "
            f"expected some of {', '.join(table)}"
        )
    bad = [task for task in tasks if task not in ("digits", "chars")]
    if bad:
        raise ValueError(f"compare: tasks={bad}; expected 'digits' and/or 'chars'")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return [
            _run(task, name, table[name], epochs, batch_size, seed)
            for task in _tasks(seed, tasks)
            for name in names
        ]
    finally:
        torch.set_num_threads(previous)


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table, one section per task (with the unigram baseline of
    the character task)."""
    lines: list[str] = []
    for task in dict.fromkeys(row.task for row in rows):
        chosen = [row for row in rows if row.task == task]
        metric = chosen[0].metric_name
        if lines:
            lines.append("")
        note = (
            f" (unigram baseline {unigram_entropy(load_text()):.3f} nats/char)"
            if task == "char GRU"
            else ""
        )
        lines += [
            f"**{task}**{note}",
            "",
            f"| optimizer | train loss (last epoch) | {metric} | ms per step |",
            "|---|---|---|---|",
        ]
        for row in chosen:
            value = f"{row.metric:.2%}" if "accuracy" in metric else f"{row.metric:.3f}"
            lines.append(
                f"| {row.optimizer} | {row.train_loss:.4f} | {value} | {row.ms_per_step:.2f} |"
            )
    return "\n".join(lines)


__all__ = ["SKIPPED", "Row", "compare", "format_table"]
