"""``descent compare``: several optimizers on the digits MLP, one overlaid plot and a table.

Every optimizer trains the same model (64-128-10, the same initial weights, the same
batch order) for the same number of epochs with a one-cycle schedule peaking at 3x its
learning rate, as in ``descent demo``. The optimizers named in
:data:`~descent.cli.demo.PRESETS` use the settings listed there; any other optimizer of
the registry runs at its class defaults; ``--lr`` replaces every learning rate. The
plot overlays the training and test loss and the test accuracy per epoch; the table
gives the final values, the best test accuracy and the training time.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._parser import add_command, positive_float, positive_int
from .demo import DigitsRun, load_digits, resolve, train_digits

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_OPTIMIZERS = ("SGD", "Adam", "AdamW", "Lion")
"""What ``descent compare`` runs without ``--optimizers``."""


def compare_on_digits(
    optimizers: Sequence[str],
    *,
    epochs: int = 10,
    seed: int = 0,
    lr: float | None = None,
    progress: bool = False,
) -> list[DigitsRun]:
    """Train the digits MLP once per optimizer (see the module doc); return the runs.

    The data split, the initial weights and the batch order are the same for every
    optimizer (all follow ``seed``). Runs on one torch thread (these models are small).
    """
    names = [resolve(name) for name in optimizers]
    data = load_digits(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [train_digits(name, data, epochs, seed, lr=lr, progress=progress) for name in names]
    finally:
        torch.set_num_threads(threads)


def format_table(runs: Sequence[DigitsRun]) -> str:
    """One line per run: settings, final training and test loss, final and best test
    accuracy (with its epoch), seconds."""
    header = (
        f"{'optimizer':<10} {'train loss':>10} {'test loss':>9} {'test acc':>8} "
        f"{'best acc':>8} {'epoch':>5} {'time (s)':>8}  settings"
    )
    lines = [header, "-" * len(header)]
    for run in runs:
        history = run.history
        accuracy = history["val_accuracy"]
        best = max(range(len(accuracy)), key=accuracy.__getitem__)
        lines.append(
            f"{run.name:<10} {_number(history['loss'][-1]):>10} "
            f"{_number(history['val_loss'][-1]):>9} {accuracy[-1]:>8.2%} "
            f"{accuracy[best]:>8.2%} {best + 1:>5} {run.seconds:>8.2f}  "
            f"{run.settings}"
        )
    return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def plot_runs(runs: Sequence[DigitsRun], path: str | Path | None = None) -> Figure:
    """Two panels, one curve per optimizer: the loss per epoch (training solid, test
    dashed, log scale) and the test accuracy per epoch. Saved at ``path`` when given;
    returns the figure (made without pyplot). Needs matplotlib."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), layout="tight")
    loss_axis, accuracy_axis = figure.subplots(1, 2)
    for index, run in enumerate(runs):
        history, color = run.history, f"C{index % 10}"
        epochs = range(1, len(history["loss"]) + 1)
        loss_axis.plot(epochs, history["loss"], color=color, label=f"{run.name} train")
        loss_axis.plot(
            epochs, history["val_loss"], color=color, linestyle="--", label=f"{run.name} test"
        )
        accuracy_axis.plot(
            epochs,
            [100 * value for value in history["val_accuracy"]],
            color=color,
            marker="o",
            markersize=3,
            label=run.name,
        )
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("cross-entropy")
    loss_axis.set_title("loss (solid: training, dashed: test)")
    accuracy_axis.set_xlabel("epoch")
    accuracy_axis.set_ylabel("test accuracy (%)")
    accuracy_axis.set_title("test accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
    loss_axis.legend(fontsize=7, ncol=2)
    accuracy_axis.legend(fontsize=7)
    figure.suptitle("digits MLP 64-128-10, one-cycle schedule")
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
    return figure


_DESCRIPTION = """\
Every optimizer trains the same MLP (64-128-10) on scikit-learn's 8x8 digits from the
same initial weights in the same batch order, for the same number of epochs, with a
one-cycle schedule peaking at 3x its learning rate. The presets below give each named
optimizer its settings; any other optimizer of descent's registry runs at its class
defaults; --lr replaces every learning rate.

Prints a table (final training and test loss, final and best test accuracy, seconds)
and writes compare.png to --out: training and test loss, and test accuracy, per epoch,
one colour per optimizer."""

_EXAMPLES = """\
  descent compare                                       SGD, Adam, AdamW and Lion, 10 epochs
  descent compare --optimizers Adam RAdam NAdam --epochs 5 --out runs/compare
  descent compare --optimizers Adam Lion --lr 3e-4      the same learning rate for both
"""


def add_parser(commands: Any) -> None:
    """Declare ``descent compare``."""
    parser = add_command(
        commands,
        "compare",
        run=run,
        summary="train several optimizers on the digits MLP; plot their curves and print a table",
        description=_DESCRIPTION + "\n\nPresets: " + _presets() + ".",
        examples=_EXAMPLES,
    )
    parser.add_argument(
        "--optimizers",
        nargs="+",
        default=list(DEFAULT_OPTIMIZERS),
        metavar="NAME",
        help="optimizers to compare: presets or registry "
        f"names (default: {' '.join(DEFAULT_OPTIMIZERS)})",
    )
    parser.add_argument("--epochs", type=positive_int, default=10, help="epochs (10)")
    parser.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="learning rate for every optimizer (default: each one's own)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--out",
        default="descent-compare",
        metavar="DIR",
        help="directory for compare.png (./descent-compare)",
    )
    parser.add_argument("--no-plot", action="store_true", help="print the table only")
    parser.add_argument("--progress", action="store_true", help="progress bars on stderr")


def _presets() -> str:
    from .demo import PRESETS

    return "; ".join(
        f"{name}: {class_name}({', '.join(f'{k}={v}' for k, v in options.items())})"
        for name, (class_name, options) in PRESETS.items()
    )


def run(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Run ``descent compare`` with parsed arguments."""
    try:
        names = list(dict.fromkeys(resolve(name) for name in args.optimizers))
    except ValueError as error:
        args.parser.error(f"argument --optimizers: {error}")
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            args.parser.error(
                "plotting needs matplotlib (pip install 'descent[demo]'); "
                "pass --no-plot for the table only"
            )
    print(
        f"descent compare: {', '.join(names)} on the digits MLP, {args.epochs} epochs, "
        f"seed {args.seed}"
    )
    runs = compare_on_digits(
        names, epochs=args.epochs, seed=args.seed, lr=args.lr, progress=args.progress
    )
    print(format_table(runs))
    if not args.no_plot:
        path = Path(args.out).resolve() / "compare.png"
        plot_runs(runs, path)
        print(f"plot written to {path}")
    return 0


__all__ = [
    "DEFAULT_OPTIMIZERS",
    "add_parser",
    "compare_on_digits",
    "format_table",
    "plot_runs",
    "run",
]
