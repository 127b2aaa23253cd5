"""descent's command line: ``descent demo`` (also ``python -m descent demo``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="descent", description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="run the supervised, recurrent and adversarial trainers on bundled data, "
                     "with progress bars, and write PNG plots")
    demo.add_argument("--out", default="descent-demo", metavar="DIR",
                      help="directory for the PNG plots (./descent-demo)")
    demo.add_argument("--quick", action="store_true",
                      help="a few epochs per trainer, for a smoke test (seconds)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    demo.add_argument("--optimizers", nargs="+", default=None, metavar="NAME",
                      help="optimizers for the digits MLP; several print a comparison table "
                           "(default: Adam)")
    demo.add_argument("--epochs", type=int, default=None,
                      help="epochs of the digits MLP (15; 2 with --quick)")
    demo.add_argument("--only", nargs="+", default=None, metavar="SECTION",
                      choices=["supervised", "recurrent", "adversarial"],
                      help="run only these sections")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in (None, "demo"):
        from .demo import run_demo

        if args.command is None:
            args = build_parser().parse_args(["demo"])
        if args.epochs is not None and args.epochs < 1:
            raise SystemExit(f"descent demo: --epochs={args.epochs}; expected a positive integer")
        return run_demo(out=args.out, quick=args.quick, seed=args.seed,
                        optimizers=args.optimizers, epochs=args.epochs,
                        progress=not args.no_progress,
                        sections=args.only or ("supervised", "recurrent", "adversarial"))
    return 2


if __name__ == "__main__":
    sys.exit(main())
