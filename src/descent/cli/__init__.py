"""descent's command line: ``descent COMMAND`` (also ``python -m descent COMMAND``).

Each command lives in its own module of this package, which declares its arguments
(``add_parser``) and runs them (``run``). Bad arguments stop with a message naming the
argument and exit status 2, as argparse does; a command that runs returns 0, or 1 when
what it checked failed (``descent checkpoint verify`` on a damaged checkpoint).
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from . import bench, checkpoint, compare, demo, env, lr_find, schedule

COMMANDS: dict[str, ModuleType] = {
    "demo": demo,
    "compare": compare,
    "lr-find": lr_find,
    "schedule": schedule,
    "checkpoint": checkpoint,
    "bench": bench,
    "env": env,
}
"""Every command, by name, with the module that defines it."""

_EPILOG = """\
examples:
  descent demo --quick                      the three trainers, a smoke test (seconds)
  descent compare --optimizers SGD Adam Lion
  descent schedule OneCycle total_steps=1000 --out onecycle.png
  descent lr-find --steps 60
  descent checkpoint verify runs/ckpt/step-000000120
  descent env

'descent COMMAND --help' describes a command.
"""


def _version() -> str:
    import torch

    from .. import __version__

    return f"descent {__version__} (torch {torch.__version__}, Python {platform.python_version()})"


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``descent`` and all its commands."""
    parser = argparse.ArgumentParser(
        prog="descent",
        description="descent: optimizers as pure update rules, and training "
        "strategies kept apart from them.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``descent`` with ``argv`` (default: the process's arguments); return the exit
    status. Bad arguments raise ``SystemExit(2)`` after printing the message."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        args, extra = parser.parse_known_args(["demo", *extra])
    command: Callable[..., int] = args.run
    if extra and not getattr(args, "passes_through", False):
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return command(args, extra)


__all__ = ["COMMANDS", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
