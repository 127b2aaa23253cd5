"""``python -m descent.bench``: descent's optimizer steps against torch.optim's, with a roofline.

Writes a Markdown report (``BENCHMARKS.md`` by default) holding the command, the
machine, the load while it ran, and the tables; prints progress to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

import descent

from .cases import FOUR_K, algorithms
from .cases import sweep as cases_sweep
from .measure import (
    Latency,
    StepResult,
    Timing,
    measure_demo,
    measure_host_cost,
    measure_latency,
    measure_steps,
    measure_training,
)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{cpu}; {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, descent "
        f"{descent.__version__}; {platform.system()} {platform.release()}"
    )


def _load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}" if seconds < 1 else f"{seconds * 1e3:.0f}"


def _timing(timing: Timing | None) -> str:
    if timing is None:
        return "—"
    return f"{_ms(timing.median)} ±{timing.spread * 50:.0f}%"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}x"


def _step_table(results: list[StepResult]) -> list[str]:
    variants = ("torch for-loop", "torch foreach", "torch fused")
    lines = [
        "| case | optimizer | descent ms | torch for-loop ms | torch foreach ms "
        "| torch fused ms | vs torch's best | roofline ms | % of roofline | first step ms |",
        "|" + "---|" * 10,
    ]
    for result in results:
        timings = result.timings
        descent_time = timings["descent"].median
        cells = [result.case.name, result.algorithm.name, _timing(timings["descent"])]
        cells += [_timing(timings.get(name)) for name in variants]
        cells += [
            _ratio(result.vs_best),
            _ms(result.roofline),
            f"{100 * result.roofline / descent_time:.0f}%",
            _ms(result.first_step),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _sweep_table(results: list[StepResult]) -> list[str]:
    names = list(dict.fromkeys(result.case.name for result in results))
    lines = ["| optimizer | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    by_algorithm: dict[str, dict[str, StepResult]] = {}
    for result in results:
        by_algorithm.setdefault(result.algorithm.name, {})[result.case.name] = result
    for algorithm, row in by_algorithm.items():
        cells = []
        for name in names:
            found = row.get(name)
            if found is None:
                cells.append("—")
                continue
            ours = _ms(found.timings["descent"].median)
            ratio = found.vs_best
            cells.append(f"{ratio:.2f}x ({ours})" if ratio is not None else f"({ours})")
        lines.append(f"| {algorithm} | " + " | ".join(cells) + " |")
    return lines


def _utc_now() -> str:
    """The current time in UTC, to the minute (``datetime.UTC`` is Python 3.11's)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _host_table(host: dict[str, Timing]) -> list[str]:
    lines = ["| optimizer | ms per step | µs per tensor |", "|---|---|---|"]
    for name, timing in host.items():
        lines.append(f"| {name} | {_timing(timing)} | {timing.median * 1e6 / 10_000:.2f} |")
    return lines


def _latency_table(latencies: list[Latency]) -> list[str]:
    lines = [
        "| first step of | import s | cold: first step s | cold: kernel built after s "
        "| warm: first step s | second step ms |",
        "|---|---|---|---|---|---|",
    ]
    for latency in latencies:
        lines.append(
            f"| {latency.label} | {latency.warm['import']:.2f} "
            f"| {latency.cold['first']:.3f} | {latency.cold.get('ready', 0):.2f} "
            f"| {latency.warm['first']:.3f} | {_ms(latency.warm['second'])} |"
        )
    return lines


def _training_table(training: dict[str, Timing]) -> list[str]:
    ours = training["descent Adam"].median
    lines = ["| optimizer | ms per iteration | descent is faster by |", "|---|---|---|"]
    for name, timing in training.items():
        lines.append(f"| {name} | {_timing(timing)} | {timing.median / ours:.2f}x |")
    return lines


def _demo_table(demo: dict[str, Timing]) -> list[str]:
    ours = demo["descent.Adam (engine auto)"].median
    lines = [
        "| `descent demo --quick` with | seconds, end to end | descent is faster by |",
        "|---|---|---|",
    ]
    for name, timing in demo.items():
        lines.append(
            f"| {name} | {timing.median:.2f} ±{timing.spread * 50:.0f}% "
            f"| {timing.median / ours:.2f}x |"
        )
    return lines


def _cuda_section(path: Path) -> list[str]:
    """The CUDA figures of ``bench/cuda_check.py``, recorded in ``path`` (JSON)."""
    if not path.exists():
        return [
            "No GPU figures are recorded (`bench/cuda_check.py` writes them on a machine "
            "with CUDA)."
        ]
    data = json.loads(path.read_text())
    machine = data.get("machine", {})
    lines = [
        f"Recorded by `PYTHONPATH=src python bench/cuda_check.py` on {data.get('date', '?')}"
        f": {machine.get('device', '?')}, torch {machine.get('torch', '?')}, copy "
        f"bandwidth {data.get('copy_bandwidth_GBps', 0):.0f} GB/s (bytes read plus "
        f"written). {data.get('note', '')}",
        "",
    ]
    steps = data.get("steps", {})
    if steps:
        lines += [
            "| case | optimizer | descent ms | descent foreach ms | torch fused ms "
            "| torch foreach ms | vs torch's best | % of copy bandwidth |",
            "|" + "---|" * 8,
        ]
        for key, row in steps.items():
            case, name = key.split(" | ")
            cells = [case, name] + [
                f"{row[k]:.3f}" if row.get(k) is not None else "—"
                for k in ("descent", "descent foreach", "torch fused", "torch foreach")
            ]
            best = row.get("speedup_vs_torch_best")
            cells += [f"{best:.2f}x" if best else "—", f"{100 * row['fraction_of_roofline']:.0f}%"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for title, key in (
        ("Host cost, Adam on 10,000 tensors of 16 floats", "host_cost_10k_tensors"),
        ("First step of NAdam on GPT-2's 148 tensors, fresh process", "first_step_NAdam_gpt2_list"),
        (
            "Whole training iteration, 12-layer d=768 transformer, bf16 autocast (ms)",
            "whole_iteration_ms",
        ),
    ):
        if key in data:
            lines += [f"{title}: `{json.dumps(data[key])}`", ""]
    if "correctness" in data:
        lines += [
            "Correctness on the GPU (largest relative difference from the per-tensor "
            "path after 6 steps; bf16 differences are bf16 rounding):",
            "",
            "| optimizer, dtype | "
            + " | ".join(next(iter(data["correctness"].values())).keys())
            + " |",
            "|---|" + "---|" * len(next(iter(data["correctness"].values()))),
        ]
        for name, row in data["correctness"].items():
            lines.append(f"| {name} | " + " | ".join(f"{v:.1e}" for v in row.values()) + " |")
    return lines


def write_report(
    path: str,
    command: str,
    started: str,
    loads: tuple[str, str],
    results: list[StepResult],
    sweep: list[StepResult],
    host: dict[str, Timing],
    latencies: list[Latency],
    training: dict[str, Timing] | None,
    repetitions: int,
    iterations: int = 0,
    demo: dict[str, Timing] | None = None,
) -> None:
    """Write the Markdown report to ``path``."""
    lines = [
        "# Benchmarks",
        "",
        'Produced by the command below (see the docs, "Speed"); every CPU number is from '
        "one run of it, in one process per table, contenders interleaved. Times are "
        f"medians of {repetitions} repetitions (step tables) or of the iterations listed; "
        "±N% is half the interquartile range of the repetitions, relative to the median. "
        "Ratios are torch's median over descent's (above 1: descent is faster); \"torch's "
        "best\" is torch's fused variant of the rule where torch has one, else foreach.",
        "",
        "```",
        command,
        "```",
        "",
        f"- Started: {started}",
        f"- Machine: {_machine()}",
        f"- Load average (1/5/15 min) before: {loads[0]}; after: {loads[1]}",
        "",
        "## Size sweep (CPU)",
        "",
        "descent's default mode (kernels built) against torch's best for the rule, on one "
        "tensor and on 100 tensors of the same total size, for every elementwise rule "
        "torch.optim has; each cell is the ratio (above 1: descent is faster) and, in "
        "parentheses, descent's milliseconds. The rules torch does not have are in the "
        "next table.",
        "",
        *_sweep_table(sweep),
        "",
        "## Optimizer step, all variants (CPU)",
        "",
        "Roofline: the algorithm's bytes per parameter (float32 reads and writes: Adam 28, "
        "SGD with momentum, RMSprop, Adagrad and Lion 20, signSGD 12) times the number of "
        "parameters, over the streaming bandwidth of buffers of the same size touched as "
        "the step touches them (an in-place `add_` into a parameter-sized buffer and a "
        '`mul_` of each state-sized one), measured interleaved with the steps. "first '
        'step" is the first step in this process (state created; a generated kernel is '
        "built in the background meanwhile).",
        "",
        *_step_table(results),
        "",
        "## Host cost (CPU)",
        "",
        "Adam on 10,000 tensors of 16 floats: almost all of the step is the cost per tensor.",
        "",
        *_host_table(host),
        "",
    ]
    if latencies:
        lines += [
            "## First step in a fresh process (CPU)",
            "",
            "Each row runs two fresh Python processes that share a new, empty "
            "`DESCENT_CACHE_DIR`: in the first (cold) the generated kernel is built in the "
            "background while the first steps run without it; the second (warm) finds it "
            'in the cache. "import" is `import torch, descent`.',
            "",
            *_latency_table(latencies),
            "",
        ]
    if training:
        lines += [
            "## Whole training iteration (CPU)",
            "",
            "`zero_grad()` (default `set_to_none=True`), forward, backward and `step()` on "
            "200 x (Linear(64, 64) + LayerNorm(64)), batch 64, each library's defaults; "
            f"{iterations} iterations of each, interleaved.",
            "",
            *_training_table(training),
            "",
        ]
    if demo:
        lines += [
            "## `descent demo` end to end (CPU)",
            "",
            "Fresh processes (imports included), interleaved; the demo's optimizer "
            "(`descent.Adam` in all three sections) as shipped, replaced by "
            "`torch.optim.Adam`, and with `DESCENT_ENGINE=per_tensor`.",
            "",
            *_demo_table(demo),
            "",
        ]
    lines += ["## CUDA", "", *_cuda_section(Path("bench") / "cuda-h200.json"), ""]
    with open(path, "w", encoding="utf-8") as report:
        report.write("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write its report."""
    parser = argparse.ArgumentParser(
        prog="python -m descent.bench",
        description="descent's optimizer steps against torch.optim's for-loop, foreach and "
        "fused variants, next to the memory-bandwidth roofline.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer sizes and repetitions, one latency row (a few minutes)",
    )
    parser.add_argument(
        "--repetitions",
        type=int,
        default=None,
        help="timed repetitions per contender (7; 3 with --quick)",
    )
    parser.add_argument("--output", default="BENCHMARKS.md", help="report path (BENCHMARKS.md)")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="only these optimizers (e.g. Adam RMSprop)"
    )
    args = parser.parse_args(argv)
    repetitions = args.repetitions or (3 if args.quick else 7)
    if repetitions < 1:
        parser.error(f"--repetitions must be at least 1, got {repetitions}")
    command = "python -m descent.bench" + "".join(
        f" {arg}" for arg in (sys.argv[1:] if argv is None else argv)
    )
    chosen = algorithms()
    if args.only:
        known = {algorithm.name for algorithm in chosen}
        unknown = sorted(set(args.only) - known)
        if unknown:
            parser.error(f"--only: unknown optimizers {unknown}; choose from {sorted(known)}")
        chosen = [a for a in chosen if a.name in args.only]
    started = _utc_now()
    load_before = _load()
    clock = time.perf_counter()
    sweep_results = []
    for _, case in cases_sweep(args.quick):
        for algorithm in [a for a in chosen if a.torch_best is not None]:
            _log(f"[{time.perf_counter() - clock:6.0f}s] sweep {case.name}: {algorithm.name}")
            best = algorithm.torch_best
            sweep_results.append(
                measure_steps(case, algorithm, max(3, repetitions // 2), (best,) if best else ())
            )
    results = []
    for algorithm in chosen:
        _log(f"[{time.perf_counter() - clock:6.0f}s] {FOUR_K.name}: {algorithm.name}")
        variants: tuple[str, ...] = ("for-loop", "foreach", "fused")
        if args.quick and algorithm.name not in ("Adam", "AdamW"):
            variants = ("foreach", "fused")
        results.append(measure_steps(FOUR_K, algorithm, repetitions, variants))
    _log(f"[{time.perf_counter() - clock:6.0f}s] host cost")
    host = measure_host_cost(repetitions)
    latency_rows = [
        ("descent.Adam, 4,000 x 4,000", "descent.Adam(params)", [4000] * 4000),
        ("descent.NAdam, 4,000 x 4,000", "descent.NAdam(params)", [4000] * 4000),
        ("descent.RMSprop, 1 x 16M", "descent.RMSprop(params)", [1 << 24]),
        (
            "torch.optim.Adam(fused=True), 4,000 x 4,000",
            "torch.optim.Adam(params, fused=True)",
            [4000] * 4000,
        ),
    ]
    if args.quick:
        latency_rows = latency_rows[1:2]
    latencies = []
    for label, make, sizes in latency_rows:
        _log(f"[{time.perf_counter() - clock:6.0f}s] latency: {label}")
        latencies.append(measure_latency(label, make, sizes))
    _log(f"[{time.perf_counter() - clock:6.0f}s] training iteration")
    iterations = 20 if args.quick else 100
    training = measure_training(iterations)
    _log(f"[{time.perf_counter() - clock:6.0f}s] descent demo end to end")
    demo = measure_demo(repetitions)
    write_report(
        args.output,
        command,
        started,
        (load_before, _load()),
        results,
        sweep_results,
        host,
        latencies,
        training,
        repetitions,
        iterations,
        demo,
    )
    _log(f"[{time.perf_counter() - clock:6.0f}s] wrote {args.output}")
    return 0


__all__ = ["main", "write_report"]
