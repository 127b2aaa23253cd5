"""``descent lr-find``: the learning-rate range test on a bundled task, printed and plotted.

Runs :func:`descent.train.lr_find_demo`: a character-level GRU on the bundled opening of
*Coriolanus*, trained with Adam while the learning rate grows geometrically from 1e-5
towards 10, one step per batch, until the loss diverges or the steps run out. Prints
the suggested learning rate (the rule of :data:`descent.train.lr_finder.RULE`), the
steepest descent and the lowest loss, with a table of the sweep; plots it to ``--out``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._parser import add_command, positive_int

_DESCRIPTION = """\
A character-level GRU on the bundled opening of Coriolanus, trained with Adam while the
learning rate grows geometrically from 1e-5 towards 10, one step per batch, until the
loss diverges or the steps run out (descent.train.lr_find_demo). Prints the suggested
learning rate (a tenth of the one at which the smoothed loss was lowest), the steepest
descent and the lowest loss, with a table of the sweep, and plots it to --out."""

_EXAMPLES = """\
  descent lr-find                          100 steps, plot in ./lr_find.png
  descent lr-find --steps 60 --seed 1 --out runs/lr.png
  descent lr-find --no-plot
"""


def _rate(value: float | None) -> str:
    return "none" if value is None else f"{value:.3g}"


def add_parser(commands: Any) -> None:
    """Declare ``descent lr-find``."""
    parser = add_command(
        commands,
        "lr-find",
        run=run,
        summary="the learning-rate range test on a character GRU; prints a suggestion "
        "and plots the sweep",
        description=_DESCRIPTION,
        examples=_EXAMPLES,
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=100,
        help="optimizer steps of the sweep, at least 2 (100)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--out",
        default="lr_find.png",
        metavar="PNG",
        help="where to plot the sweep (./lr_find.png)",
    )
    parser.add_argument("--no-plot", action="store_true", help="print only")


def run(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Run ``descent lr-find`` with parsed arguments."""
    from ..train import lr_find_demo
    from ..train.lr_finder import RULE

    if args.steps < 2:
        args.parser.error(f"argument --steps: {args.steps}; expected at least 2")
    path = None if args.no_plot else Path(args.out).resolve()
    if path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            args.parser.error(
                "plotting needs matplotlib (pip install 'descent[demo]'); "
                "pass --no-plot to print only"
            )
    result = lr_find_demo(steps=args.steps, seed=args.seed, path=path)
    every = max(1, len(result.lrs) // 15)
    print(
        f"learning-rate range test, character GRU on Coriolanus, Adam: "
        f"{len(result.lrs)} steps; {result.stopped}"
    )
    print(f"{'step':>6} {'lr':>10} {'loss':>9} {'smoothed':>9}")
    for index in sorted({*range(0, len(result.lrs), every), len(result.lrs) - 1}):
        loss, smoothed = result.losses[index], result.smoothed[index]
        print(
            f"{index + 1:>6} {result.lrs[index]:>10.3g} "
            f"{loss if math.isfinite(loss) else float('nan'):>9.4f} {smoothed:>9.4f}"
        )
    print(f"suggestion {_rate(result.suggestion)} ({RULE})")
    print(
        f"steepest descent at {_rate(result.steepest)}; lowest smoothed loss at "
        f"{_rate(result.lowest)}"
    )
    if path is not None:
        print(f"plot written to {path}")
    return 0


__all__ = ["add_parser", "run"]
