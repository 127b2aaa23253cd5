"""``descent demo`` end to end: with descent's optimizers, with torch.optim's, per tensor.

Runs the demo in fresh processes (imports and any compilation count), interleaved,
three ways: descent as shipped (engine "auto"); the same demo with ``descent.Adam`` (the
only optimizer it uses by default) replaced by ``torch.optim.Adam`` with torch's
defaults; and descent with ``DESCENT_ENGINE=per_tensor``. Prints wall-clock seconds.
``python -m descent.bench`` includes the ``--quick`` demo; this script can run the full
one:

    python bench/demo_end_to_end.py [--repetitions 3] [--full]
"""

from __future__ import annotations

import argparse

from descent.bench.measure import measure_demo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="the full demo, not --quick")
    args = parser.parse_args()
    timings = measure_demo(args.repetitions, full=args.full)
    print(
        f"descent demo{'' if args.full else ' --quick'}, end to end (fresh processes, "
        f"{args.repetitions} interleaved repetitions)"
    )
    for name, timing in timings.items():
        listed = ", ".join(f"{value:.1f}" for value in timing.seconds)
        print(f"  {name:<28} median {timing.median:6.1f} s   ({listed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
