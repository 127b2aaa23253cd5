"""What every command's parser shares: a description, examples, exit status 2 on bad input."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from typing import Any


def add_command(
    commands: Any,
    name: str,
    *,
    summary: str,
    description: str,
    examples: str,
    run: Callable[..., int],
    **options: Any,
) -> argparse.ArgumentParser:
    """Add the command ``name`` to ``commands`` (argparse's subparsers) with its one-line
    ``summary`` (in ``descent --help``), ``description`` and ``examples`` (in
    ``descent NAME --help``, the description's paragraphs wrapped, the examples as
    written); ``run(args, extra)`` runs it."""
    paragraphs = [textwrap.fill(" ".join(part.split()), 78) for part in description.split("\n\n")]
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description="\n\n".join(paragraphs),
        epilog=f"examples:\n{examples}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **options,
    )
    parser.set_defaults(run=run, parser=parser)
    return parser


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}; expected a positive integer")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{value}; expected a finite number > 0")
    return value
