r"""The learning-rate range test: train briefly with a rising learning rate, watch the loss.

:func:`lr_find` runs a trainer's own strategy (its batches, accumulation, clipping,
precision) for up to ``steps`` optimizer steps while the learning rate rises
exponentially from ``start_lr`` to ``end_lr``,

.. math::  \eta_i = \eta_{\text{start}}
           \left(\eta_{\text{end}} / \eta_{\text{start}}\right)^{i/(n-1)},

records each step's loss, and stops once the running average of the loss (bias-corrected
exponential moving average, :math:`a_i = \beta a_{i-1} + (1-\beta) L_i`,
:math:`\bar L_i = a_i / (1 - \beta^{i+1})`) exceeds ``diverge`` times its lowest value,
or a loss or gradient is not finite. The curve it reports is a centred moving average
instead: the mean of the losses of the :math:`2k+1` steps around each step
(:math:`k = \operatorname{round}(1 / (2(1-\beta)))`, fewer at the ends), which has no
lag (a running average lags by about :math:`1/(1-\beta)` steps, which shifts its
minimum towards higher rates) and in which the divergence at the end moves only the
last :math:`k` points. Then it puts everything back as it was, bit for bit: the
model's parameters and buffers (and train/eval modes), the optimizer's state and
learning rates, the scheduler, the trainer's counters, history and callbacks, and the
random generators. (Smith, "Cyclical Learning Rates for Training Neural Networks",
WACV 2017, section 3.3.)

The suggestion follows one stated rule: **a tenth of the learning rate at which the
smoothed loss was lowest** (the minimum is where the rate is already too high to make
progress; a tenth of it is still on the descending part). ``steepest`` reports the rate
of the steepest descent of the smoothed loss, searched only before the minimum (a search
over the whole curve, as some finders do, can pick a point of the divergence).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..checkpoint import capture_rng_state, restore_rng_state
from .callbacks import Callback
from .checkpointing import Checkpointing
from .checks import check_positive_int
from .step import NonFiniteError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .supervised import SupervisedTrainer

RULE = "a tenth of the learning rate at which the smoothed loss was lowest"


@dataclasses.dataclass
class LRFinderResult:
    """What :func:`lr_find` measured.

    ``lrs``: the learning rate of each step (the first param group's); ``losses``: each
    step's training loss (the mean over its accumulation window, before the step);
    ``smoothed``: the losses smoothed without lag (a centred moving average, see the
    module doc); ``suggestion``: the suggested learning rate
    (:data:`RULE`), None if the loss never fell; ``steepest``: the rate of the steepest
    descent of the smoothed loss before its minimum (None if there is none); ``stopped``:
    why the sweep ended.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    steepest: float | None
    stopped: str
    rule: str = RULE

    @property
    def lowest(self) -> float | None:
        """The learning rate at which the smoothed loss was lowest."""
        if not self.smoothed:
            return None
        return self.lrs[min(range(len(self.smoothed)), key=self.smoothed.__getitem__)]

    def plot(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        ax: Axes | None = None,
        title: str | None = None,
    ) -> Figure:
        """Draw the raw and smoothed losses against the learning rate (log scale), with
        the suggestion marked; return the figure, and save it as an image when ``path``
        is given. Draws into ``ax`` if given, else into a new figure, without touching
        matplotlib's global backend or pyplot's figures (show it in a notebook by
        leaving it as a cell's value). Needs matplotlib."""
        figure, axis = _axes(ax)
        axis.plot(self.lrs, self.losses, alpha=0.35, linewidth=0.8, label="loss")
        axis.plot(self.lrs, self.smoothed, linewidth=1.6, label="smoothed (centred)")
        if self.suggestion is not None:
            axis.axvline(
                self.suggestion,
                color="C2",
                linestyle="--",
                label=f"suggestion {self.suggestion:.2g}",
            )
        if self.lowest is not None:
            axis.axvline(
                self.lowest,
                color="C3",
                linestyle=":",
                alpha=0.6,
                label=f"lowest smoothed loss at {self.lowest:.2g}",
            )
        axis.set_xscale("log")
        axis.set_xlabel("learning rate")
        axis.set_ylabel("training loss")
        axis.set_title(title or f"learning-rate range test\n{self.stopped}", fontsize=8)
        finite = [value for value in self.losses if math.isfinite(value)]
        if finite:  # keep the divergence from squashing the interesting part
            low, start = min(finite), finite[0]
            axis.set_ylim(low - 0.05 * (start - low + 1e-12), start + 0.5 * (start - low))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(Path(path), dpi=110)
        return figure


class _Sweep(Callback):
    """Sets each step's learning rate, records the losses, stops the run when done."""

    def __init__(self, optimizer: Any, lrs: list[float], beta: float, diverge: float) -> None:
        self.optimizer, self.planned, self.beta, self.diverge = optimizer, lrs, beta, diverge
        self.ratios = [
            group["lr"] / optimizer.param_groups[0]["lr"]
            if optimizer.param_groups[0]["lr"]
            else 1.0
            for group in optimizer.param_groups
        ]
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.average = 0.0
        self.stopped = f"reached end_lr after {len(lrs)} steps"

    def on_before_optimizer_step(self, trainer: Any, optimizer: Any, name: str) -> None:
        lr = self.planned[min(len(self.lrs), len(self.planned) - 1)]
        for group, ratio in zip(optimizer.param_groups, self.ratios, strict=True):
            group["lr"] = lr * ratio
        self.lrs.append(lr)

    def on_batch_end(self, trainer: Any, batch: int, logs: Mapping[str, float]) -> None:
        # the steps taken since the last batch (several per batch for TBPTT per chunk)
        for loss in trainer.history.steps.get("loss", [])[len(self.losses) :]:
            if trainer.stop_training:
                return
            self.losses.append(loss)
            self.average = self.beta * self.average + (1 - self.beta) * loss
            self.smoothed.append(self.average / (1 - self.beta ** len(self.losses)))
            if len(self.losses) == len(self.planned):
                trainer.stop_training = True
            elif self.smoothed[-1] > self.diverge * min(self.smoothed):
                self.stopped = (
                    f"diverged at lr {self.lrs[len(self.losses) - 1]:.3g}: "
                    f"running mean loss {self.smoothed[-1]:.4g} > {self.diverge:g}"
                    f" x its lowest {min(self.smoothed):.4g}"
                )
                trainer.stop_training = True


def lr_find(
    trainer: SupervisedTrainer,
    model: nn.Module,
    x: Any,
    y: Any = None,
    loss: Any = None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    smoothing: float = 0.9,
    diverge: float = 4.0,
) -> LRFinderResult:
    """Run the learning-rate range test with ``trainer``'s strategy; restore everything.

    Args:
        trainer: a :class:`SupervisedTrainer` or :class:`RecurrentTrainer` (its
            optimizer, batches, accumulation, clipping, precision and device are used;
            its callbacks and checkpoints are not).
        model, x, y, loss: as for ``trainer.train``.
        start_lr, end_lr: the first and last learning rate (0 < start < end). Param
            groups keep their ratios to the first group's rate.
        steps: optimizer steps of the sweep (at most; it may stop early), >= 2.
        smoothing: :math:`\\beta` of the loss's running average (the stop), in [0, 1);
            the reported curve averages the :math:`2k+1` steps around each, with
            :math:`k = \\operatorname{round}(1/(2(1-\\beta)))` (0.9: 11 steps).
        diverge: stop once the smoothed loss exceeds this many times its lowest (> 1).

    Returns:
        An :class:`LRFinderResult` (``suggestion``, ``lrs``, ``losses``, ``smoothed``,
        ``plot()``).

    Example::

        result = descent.train.lr_find(trainer, model, x, y, torch.nn.CrossEntropyLoss())
        print(result.suggestion, result.rule)
        result.plot("lr_find.png")
        trainer.optimizer.param_groups[0]["lr"] = result.suggestion
    """
    owner = "lr_find"
    optimizers = trainer.optimizers() if hasattr(trainer, "optimizers") else None
    if (
        not isinstance(optimizers, Mapping)
        or set(optimizers) != {"optimizer"}
        or not hasattr(trainer, "train")
    ):
        raise TypeError(
            f"{owner}: trainer is a {type(trainer).__name__}; expected a trainer "
            "with one optimizer (SupervisedTrainer, RecurrentTrainer)"
        )
    for name, value in (("start_lr", start_lr), ("end_lr", end_lr)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ValueError(f"{owner}: {name}={value!r}; expected a finite number > 0")
    if not start_lr < end_lr:
        raise ValueError(
            f"{owner}: start_lr={start_lr!r} and end_lr={end_lr!r}; expected start_lr < end_lr"
        )
    check_positive_int(owner, "steps", steps)
    if steps < 2:
        raise ValueError(f"{owner}: steps={steps}; expected at least 2")
    if (
        isinstance(smoothing, bool)
        or not isinstance(smoothing, int | float)
        or not 0 <= smoothing < 1
    ):
        raise ValueError(f"{owner}: smoothing={smoothing!r}; expected a number in [0, 1)")
    if isinstance(diverge, bool) or not isinstance(diverge, int | float) or not diverge > 1:
        raise ValueError(f"{owner}: diverge={diverge!r}; expected a number > 1")
    optimizer = optimizers["optimizer"]
    if not optimizer.param_groups[0]["lr"] and any(g["lr"] for g in optimizer.param_groups):
        raise ValueError(
            f"{owner}: the first param group has lr=0 but others do not; the "
            "groups' ratios to it are undefined"
        )
    lrs = [start_lr * (end_lr / start_lr) ** (i / (steps - 1)) for i in range(steps)]
    sweep = _Sweep(optimizer, lrs, float(smoothing), float(diverge))
    saved = _Snapshot(trainer, model)
    try:
        trainer.callbacks = [sweep]
        trainer.checkpointing = Checkpointing(type(trainer).__name__, None)
        trainer.guard.nonfinite = "raise"
        trainer.state, trainer.history = trainer.new_state(), type(trainer.history)()
        try:
            trainer.train(model, x, y, loss, epochs=steps)
        except NonFiniteError:
            sweep.stopped = f"non-finite loss or gradient at lr {sweep.lrs[-1]:.3g}"
    finally:
        saved.restore()
    lrs = sweep.lrs[: len(sweep.losses)]
    smoothed = _centred(sweep.losses, round(1 / (2 * (1 - smoothing))))
    return LRFinderResult(
        lrs,
        sweep.losses,
        smoothed,
        _suggest(lrs, smoothed),
        _steepest(lrs, smoothed),
        sweep.stopped,
    )


class _Snapshot:
    """Everything a sweep changes, copied, and put back by :meth:`restore`."""

    def __init__(self, trainer: Any, model: nn.Module) -> None:
        self.trainer, self.model = trainer, model
        self.weights = {key: value.detach().clone() for key, value in model.state_dict().items()}
        self.modes = {module: module.training for module in model.modules()}
        self.state = copy.deepcopy(trainer.state_dict())
        self.attributes = {
            name: getattr(trainer, name)
            for name in (
                "callbacks",
                "checkpointing",
                "state",
                "history",
                "meter",
                "stop_training",
                "batches_per_epoch",
                "window",
                "loss_fn",
                "model",
            )
            if hasattr(trainer, name)
        }
        self.missing = [name for name in ("model",) if not hasattr(trainer, name)]
        self.nonfinite = trainer.guard.nonfinite
        self.scaler = copy.deepcopy(trainer.guard.state_dict())
        self.rng = capture_rng_state()

    def restore(self) -> None:
        trainer = self.trainer
        with torch.no_grad():
            self.model.load_state_dict(self.weights)
        for module, mode in self.modes.items():
            module.training = mode
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.optimizer.load_state_dict(self.state["optimizers"]["optimizer"])
        if trainer.scheduler is not None:
            trainer.scheduler.load_state_dict(self.state["schedulers"]["optimizer"])
        for name, value in self.attributes.items():
            setattr(trainer, name, value)
        for name in self.missing:
            delattr(trainer, name)
        trainer.guard.nonfinite = self.nonfinite
        trainer.guard.load_state(self.scaler)
        restore_rng_state(self.rng)


def _centred(values: list[float], k: int) -> list[float]:
    """The mean of ``values[i - k : i + k + 1]`` (cut at the ends) for each ``i``."""
    return [
        sum(values[max(0, i - k) : i + k + 1]) / len(values[max(0, i - k) : i + k + 1])
        for i in range(len(values))
    ]


def _suggest(lrs: list[float], smoothed: list[float]) -> float | None:
    if len(smoothed) < 2:
        return None
    lowest = min(range(len(smoothed)), key=smoothed.__getitem__)
    return None if lowest == 0 else lrs[lowest] / 10


def _steepest(lrs: list[float], smoothed: list[float]) -> float | None:
    lowest = min(range(len(smoothed)), key=smoothed.__getitem__, default=0)
    slopes = [
        (smoothed[i + 1] - smoothed[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i]))
        for i in range(lowest)
    ]
    if not slopes or min(slopes) >= 0:
        return None
    return lrs[min(range(len(slopes)), key=slopes.__getitem__)]


def _axes(ax: Axes | None) -> tuple[Figure, Axes]:
    """``ax`` and its (root) figure, or a new figure (not registered with pyplot) and its
    axes."""
    try:
        import matplotlib  # noqa: F401  (a clear error when it is missing)
        from matplotlib.figure import Figure, SubFigure
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'descent[demo]'") from None
    if ax is not None:
        parent = ax.figure  # a SubFigure for axes in a subfigure, which cannot be saved
        return (parent.figure if isinstance(parent, SubFigure) else parent), ax
    figure = Figure(figsize=(5.5, 3.6), layout="tight")
    return figure, figure.add_subplot()


def lr_find_demo(
    steps: int = 100, *, seed: int = 0, path: str | os.PathLike[str] | None = None
) -> LRFinderResult:
    """The range test of a character-level GRU (Adam, batches of 32 sequences of 64
    characters, chunks of 16) on the bundled *Coriolanus* text; what ``descent
    lr-find`` shows. Plots to ``path`` when given."""
    from ..data import char_sequences, load_text
    from ..optim import Adam
    from .recurrent import RecurrentTrainer

    x, y, vocabulary = char_sequences(load_text(), 64, stride=32)
    torch.manual_seed(seed)
    model = _CharGRU(len(vocabulary))
    trainer = RecurrentTrainer(
        Adam(model, lr=1e-3), batch_size=32, bptt_steps=16, clip_grad_norm=1.0, seed=seed
    )
    result = lr_find(
        trainer, model, x, y, nn.CrossEntropyLoss(), start_lr=1e-5, end_lr=10.0, steps=steps
    )
    if path is not None:
        result.plot(path, title="character GRU on Coriolanus: learning-rate range test")
    return result


class _CharGRU(nn.Module):
    def __init__(self, vocabulary: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, 32)
        self.rnn = nn.GRU(32, 64, batch_first=True)
        self.head = nn.Linear(64, vocabulary)

    def forward(self, chars: torch.Tensor, hidden: Any) -> tuple[torch.Tensor, Any]:
        out, hidden = self.rnn(self.embed(chars), hidden)
        return self.head(out), hidden
