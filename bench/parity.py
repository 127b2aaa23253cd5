"""Print each optimizer's worst relative difference from its reference.

    python bench/parity.py              # the configurations of descent's optimizer table
    python bench/parity.py --optim-db   # torch's own configurations (optim_db), vs torch

Without an argument, runs the same 50-step trajectories as
``tests/test_optimizers.py::test_parity_with_reference`` (three param groups, params
without grads on some steps, every configuration in the table) and reports the largest
relative difference seen per algorithm, dtype and engine mode (``per_tensor``, the
reference path, and ``auto``, the default).

With ``--optim-db``, runs every CPU configuration that torch's test data
(``torch.testing._internal.common_optimizers.optim_db``, which needs the ``expecttest``
package) lists for each torch.optim class, descent's counterpart next to torch's for
25 steps (LBFGS: 4 steps of up to 20 iterations), and reports the largest relative
difference per class, dtype and engine mode, with the configuration where it occurred.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from optim_table import OPTIMIZERS
from test_optimizers import parity_run

MODES = ("per_tensor", "auto")
DTYPES = (torch.float64, torch.float32)


def table() -> None:
    print(
        "| optimizer | reference | configs | "
        + " | ".join(f"{mode} f64 | {mode} f32" for mode in MODES)
        + " |"
    )
    print("|---|---|---|" + "---|---|" * len(MODES))
    for info in OPTIMIZERS:
        cells = []
        for mode in MODES:
            for dtype in DTYPES:
                worst = max(parity_run(info, c, dtype, mode)[0] for c in info.configs)
                cells.append(f"{worst:.1e}")
        reference = info.reference_label or (
            f"torch.optim.{info.reference.__name__}"
            if info.torch_counterpart
            else f"paper equations ({info.reference.__name__}, tests/optim_table.py)"
        )
        print(f"| {info.name} | {reference} | {len(info.configs)} | {' | '.join(cells)} |")


def optim_db() -> None:
    import torch_optim_db as db

    print(
        "| torch.optim class | optim_db configs | "
        + " | ".join(f"{mode} f64 | {mode} f32" for mode in MODES)
        + " | worst at |"
    )
    print("|---|---|" + "---|---|" * len(MODES) + "---|")
    for name in db.names():
        configs = db.configs(name)
        cells, worst_at, overall = [], "-", 0.0
        for mode in MODES:
            for dtype in DTYPES:
                results = [(db.parity(config, dtype, mode)[0], config.desc) for config in configs]
                worst, desc = max(results)
                cells.append(f"{worst:.1e}")
                if worst / db.TOLERANCE[dtype] > overall:
                    overall = worst / db.TOLERANCE[dtype]
                    worst_at = f"{desc} ({str(dtype)[6:]})"
        print(f"| {name} | {len(configs)} | {' | '.join(cells)} | {worst_at} |")


if __name__ == "__main__":
    optim_db() if "--optim-db" in sys.argv[1:] else table()
