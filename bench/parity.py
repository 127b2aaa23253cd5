"""Print each optimizer's worst relative difference from its reference over the test matrix.

    python bench/parity.py

Runs the same 50-step trajectories as ``tests/test_optimizers.py::test_parity_with_reference``
(three param groups, params without grads on some steps, every configuration in the table)
and reports the largest relative difference seen per algorithm and dtype.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from optim_table import OPTIMIZERS
from test_optimizers import parity_run


def main() -> None:
    print("| optimizer | reference | configs | max rel. diff float64 | max rel. diff float32 |")
    print("|---|---|---|---|---|")
    for info in OPTIMIZERS:
        f64 = max(parity_run(info, c, torch.float64)[0] for c in info.configs)
        f32 = max(parity_run(info, c, torch.float32)[0] for c in info.configs)
        reference = (f"torch.optim.{info.reference.__name__}" if info.torch_counterpart
                     else f"paper equations ({info.reference.__name__}, tests/optim_table.py)")
        print(f"| {info.name} | {reference} | {len(info.configs)} | {f64:.1e} | {f32:.1e} |")


if __name__ == "__main__":
    main()
