"""``descent env``: versions, devices and how descent's engine will run here.

For bug reports and for checking a set-up: descent's, Python's, torch's and the
optional packages' versions, the CPU threads and accelerators torch sees, the engine's
default mode (and whether ``DESCENT_ENGINE`` set it), and whether generated kernels can
be built (a C compiler on the CPU, Triton on CUDA).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

import torch

from ._parser import add_command

OPTIONAL = (
    "numpy",
    "safetensors",
    "matplotlib",
    "scikit-learn",
    "tqdm",
    "accelerate",
    "lightning",
    "transformers",
    "triton",
)
"""Packages whose versions are reported (or "not installed")."""


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect() -> dict[str, Any]:
    """Everything ``descent env`` reports, as a JSON-ready dict."""
    from .. import __version__, engine
    from ..engine import cpu, cuda

    devices: dict[str, Any] = {
        "cpu": {"logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "cuda": [
            {
                "name": torch.cuda.get_device_name(index),
                "memory_gib": round(
                    torch.cuda.get_device_properties(index).total_memory / 2**30, 1
                ),
            }
            for index in range(torch.cuda.device_count())
        ]
        if torch.cuda.is_available()
        else [],
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    compiler = cpu.compiler()
    return {
        "descent": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "debug": torch.version.debug,
        },
        "packages": {name: _version(name) for name in OPTIONAL},
        "devices": devices,
        "engine": {
            "default_mode": engine.get_default_mode(),
            "DESCENT_ENGINE": os.environ.get("DESCENT_ENGINE"),
            "DESCENT_NO_CODEGEN": os.environ.get("DESCENT_NO_CODEGEN"),
            "cpu_kernels": compiler is not None,
            "c_compiler": compiler,
            "cuda_kernels": cuda.available(),
            "kernel_cache": str(cpu.cache_dir()),
        },
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned text."""
    torch_info = report["torch"]
    devices = report["devices"]
    engine = report["engine"]
    cuda_devices = ", ".join(f"{d['name']} ({d['memory_gib']} GiB)" for d in devices["cuda"])
    mode_source = (
        f"from DESCENT_ENGINE={engine['DESCENT_ENGINE']}"
        if engine["DESCENT_ENGINE"]
        else "the default; set DESCENT_ENGINE to change it"
    )
    no_codegen = " (DESCENT_NO_CODEGEN is set)" if engine["DESCENT_NO_CODEGEN"] else ""
    lines = [
        f"descent       {report['descent']}",
        f"python        {report['python']} ({sys.executable})",
        f"platform      {report['platform']}",
        f"torch         {torch_info['version']} (CUDA build: {torch_info['cuda'] or 'none'})",
        "packages      "
        + ", ".join(
            f"{name} {version or 'not installed'}" for name, version in report["packages"].items()
        ),
        f"cpu           {devices['cpu']['logical_cores']} logical cores, torch uses "
        f"{devices['cpu']['torch_threads']} threads",
        f"cuda          {cuda_devices or 'no CUDA device'}",
        f"mps           {'available' if devices['mps'] else 'not available'}",
        f"engine mode   {engine['default_mode']} ({mode_source})",
        "cpu kernels   "
        + (
            f"generated, built with {engine['c_compiler']}"
            if engine["cpu_kernels"]
            else f"not generated: no C compiler found{no_codegen}"
        ),
        "cuda kernels  "
        + (
            "Triton available"
            if engine["cuda_kernels"]
            else f"not generated: Triton is not available{no_codegen}"
        ),
        f"kernel cache  {engine['kernel_cache']}",
    ]
    return "\n".join(lines)


_DESCRIPTION = """\
descent's, Python's, torch's and the optional packages' versions, the CPU threads and
accelerators torch sees, the engine's default mode (and whether DESCENT_ENGINE set it),
and whether generated kernels can be built here (a C compiler on the CPU, Triton on
CUDA). For bug reports and for checking a set-up."""

_EXAMPLES = """\
  descent env
  descent env --json > env.json
  DESCENT_ENGINE=per_tensor descent env
"""


def add_parser(commands: Any) -> None:
    """Declare ``descent env``."""
    parser = add_command(
        commands,
        "env",
        run=run,
        summary="versions, devices and the engine's mode (for bug reports)",
        description=_DESCRIPTION,
        examples=_EXAMPLES,
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Run ``descent env`` with parsed arguments."""
    try:
        report = collect()
    except ValueError as error:  # an invalid DESCENT_ENGINE
        print(f"descent env: {error}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


__all__ = ["OPTIONAL", "add_parser", "collect", "format_report", "run"]
