"""descent's command line: ``descent demo`` (also ``python -m descent demo``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="descent", description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="train a small MLP on the bundled digits data "
                                            "with several optimizers and print a table")
    demo.add_argument("--epochs", type=int, default=15, help="epochs per optimizer (15)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    demo.add_argument("--optimizers", nargs="+", default=None, metavar="NAME",
                      help="optimizers to run (default: all)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in (None, "demo"):
        from .demo import run_demo

        return run_demo(epochs=getattr(args, "epochs", 15), seed=getattr(args, "seed", 0),
                        optimizers=getattr(args, "optimizers", None))
    return 2


if __name__ == "__main__":
    sys.exit(main())
