"""``descent demo`` end to end: with descent's optimizers, with torch.optim's, per tensor.

Runs the demo in fresh processes (so imports and any compilation count), interleaved,
three ways: descent as shipped (engine "auto"); the same demo with ``descent.Adam`` (the
only optimizer it uses by default) replaced by ``torch.optim.Adam`` with torch's
defaults; and descent with ``DESCENT_ENGINE=per_tensor``. Prints wall-clock seconds
(median of the repetitions, and every repetition).

    python bench/demo_end_to_end.py [--repetitions 3] [--full]

Without ``--full`` the demo runs with ``--quick`` (a few epochs per section).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

_TORCH_ADAM = """
import sys, torch, descent
from descent.cli import main
descent.Adam = lambda params, **options: torch.optim.Adam(
    params.parameters() if isinstance(params, torch.nn.Module) else params, **options)
sys.exit(main(sys.argv[1:]))
"""
_DESCENT = "import sys\nfrom descent.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def _run(source: str, demo_args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", source, "demo", *demo_args], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="the full demo, not --quick")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="descent-demo-") as out:
        demo_args = ["--out", out, "--no-progress", *([] if args.full else ["--quick"])]
        base = dict(os.environ)
        contenders = {
            "descent (engine auto)": (_DESCENT, dict(base, DESCENT_ENGINE="auto")),
            "torch.optim.Adam": (_TORCH_ADAM, dict(base, DESCENT_ENGINE="auto")),
            "descent (per_tensor)": (_DESCENT, dict(base, DESCENT_ENGINE="per_tensor")),
        }
        seconds: dict[str, list[float]] = {name: [] for name in contenders}
        for repetition in range(args.repetitions):
            names = list(contenders)
            names = names[repetition % len(names):] + names[:repetition % len(names)]
            for name in names:
                source, env = contenders[name]
                seconds[name].append(_run(source, demo_args, env))
                print(f"  {name}: {seconds[name][-1]:.1f} s", file=sys.stderr, flush=True)
    print(f"descent demo{'' if args.full else ' --quick'}, end to end (fresh processes, "
          f"{args.repetitions} interleaved repetitions)")
    for name, values in seconds.items():
        listed = ", ".join(f"{value:.1f}" for value in values)
        print(f"  {name:<24} median {statistics.median(values):6.1f} s   ({listed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
