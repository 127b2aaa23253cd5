"""Print each optimizer's worst relative difference from its reference over the test matrix.

    python bench/parity.py

Runs the same 50-step trajectories as ``tests/test_optimizers.py::test_parity_with_reference``
(three param groups, params without grads on some steps, every configuration in the table)
and reports the largest relative difference seen per algorithm, dtype and engine mode
(``per_tensor``, the reference path, and ``auto``, the default).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from optim_table import OPTIMIZERS
from test_optimizers import parity_run

MODES = ("per_tensor", "auto")


def main() -> None:
    print("| optimizer | reference | configs | "
          + " | ".join(f"{mode} f64 | {mode} f32" for mode in MODES) + " |")
    print("|---|---|---|" + "---|---|" * len(MODES))
    for info in OPTIMIZERS:
        cells = []
        for mode in MODES:
            for dtype in (torch.float64, torch.float32):
                worst = max(parity_run(info, c, dtype, mode)[0] for c in info.configs)
                cells.append(f"{worst:.1e}")
        reference = info.reference_label or (
            f"torch.optim.{info.reference.__name__}" if info.torch_counterpart
            else f"paper equations ({info.reference.__name__}, tests/optim_table.py)")
        print(f"| {info.name} | {reference} | {len(info.configs)} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
