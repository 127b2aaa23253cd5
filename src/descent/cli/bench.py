"""``descent bench``: the benchmark (``python -m descent.bench``) under the command line.

A thin wrapper: every argument after ``bench`` goes to :func:`descent.bench.run.main`,
which parses it, runs the benchmark and writes its report.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ._parser import add_command

_DESCRIPTION = """\
descent's optimizer steps against torch.optim's for-loop, foreach and fused variants,
next to the memory-bandwidth roofline; writes a Markdown report (BENCHMARKS.md by
default). Every option is the benchmark's own, the same as for 'python -m descent.bench';
they are listed below."""

_EXAMPLES = """\
  descent bench --quick                            a short run (minutes)
  descent bench --only Adam RMSprop --output /tmp/bench.md
"""


class _Help(argparse.Action):
    """``--help``: this command's description and examples, then the benchmark's options."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings,
            dest,
            nargs=0,
            default=argparse.SUPPRESS,
            help="show this help and the benchmark's options, and exit",
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.print_help()
        print("\nthe benchmark's options:\n", flush=True)
        _benchmark(["--help"])


def _benchmark(argv: Sequence[str]) -> int:
    from ..bench.run import main

    return main(list(argv))


def add_parser(commands: Any) -> None:
    """Declare ``descent bench``."""
    parser = add_command(
        commands,
        "bench",
        run=run,
        add_help=False,
        summary="benchmark optimizer steps against torch.optim (python -m descent.bench)",
        description=_DESCRIPTION,
        examples=_EXAMPLES,
        usage="descent bench [-h] [BENCHMARK OPTIONS]",
    )
    parser.add_argument("-h", "--help", action=_Help)
    parser.set_defaults(passes_through=True)


def run(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Run the benchmark with the arguments after ``bench``."""
    return _benchmark(extra)


__all__ = ["add_parser", "run"]
