"""``python -m descent.bench``: descent's optimizer steps against torch.optim's, with a roofline.

Writes a Markdown report (``BENCHMARKS.md`` by default) holding the command, the
machine, the load while it ran, and the tables; prints progress to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from collections.abc import Sequence

import torch

import descent

from .cases import algorithms, cases
from .measure import (
    Latency,
    StepResult,
    Timing,
    measure_demo,
    measure_latency,
    measure_steps,
    measure_training,
)

_FOUR_K = [4000] * 4000
_SIXTEEN_M = [16 * 1024 * 1024]


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
    return (f"{cpu}; {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, descent "
            f"{descent.__version__}; {platform.system()} {platform.release()}")


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
        "| case | optimizer | descent ms | descent, fresh grads ms | torch for-loop ms "
        "| torch foreach ms | torch fused ms | vs for-loop | vs foreach | vs fused "
        "| roofline ms | % of roofline | first step ms |",
        "|" + "---|" * 13,
    ]
    for result in results:
        timings = result.timings
        descent_time = timings["descent"].median
        cells = [result.case.name, result.algorithm.name, _timing(timings["descent"]),
                 _timing(timings.get("descent, fresh grads"))]
        cells += [_timing(timings.get(name)) for name in variants]
        cells += [_ratio(result.ratio(name)) for name in variants]
        cells += [_ms(result.roofline), f"{100 * result.roofline / descent_time:.0f}%",
                  _ms(result.first_step)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _targets(results: list[StepResult], training: dict[str, Timing] | None,
             demo: dict[str, Timing] | None = None) -> list[str]:
    lines = ["| target | measured | met |", "|---|---|---|"]

    def row(target: str, measured: str, met: bool) -> None:
        lines.append(f"| {target} | {measured} | {'yes' if met else 'no'} |")

    for result in results:
        name, case = result.algorithm.name, result.case.name
        if name in ("Adam", "AdamW") and case.startswith("4,000"):
            fused, loop = result.ratio("torch fused"), result.ratio("torch for-loop")
            if fused is not None:
                row(f"{name}, {case}: >= 3x torch fused", f"{fused:.1f}x", fused >= 3)
            if loop is not None:
                row(f"{name}, {case}: >= 20x torch default (for-loop)", f"{loop:.1f}x",
                    loop >= 20)
        if name in ("Adam", "AdamW") and case.startswith("1 x"):
            fused = result.ratio("torch fused")
            if fused is not None:
                row(f"{name}, {case}: >= 0.95x torch fused", f"{fused:.2f}x", fused >= 0.95)
        roof = result.roofline / result.timings["descent"].median
        if case.startswith("1 x") or case.startswith("4,000"):
            threshold = 0.85 if name in ("Adam", "AdamW") and case.startswith("1 x") else 0.80
            row(f"{name}, {case}: >= {threshold:.0%} of roofline", f"{roof:.0%}",
                roof >= threshold)
        if (result.algorithm.torch_variants and "fused" not in result.algorithm.torch_variants
                and not case.startswith("12")):
            best = min((t.median for key, t in result.timings.items()
                        if key.startswith("torch")), default=None)
            if best is not None:
                ratio = best / result.timings["descent"].median
                row(f"{name}, {case}: >= 5x torch's best", f"{ratio:.1f}x", ratio >= 5)
    if demo:
        ours = demo["descent.Adam (engine auto)"].median
        theirs = demo["torch.optim.Adam"].median
        row("`descent demo --quick` end to end: not slower than with torch.optim "
            "(ratio >= 0.97: within the run-to-run spread of a 5 s process)",
            f"{theirs / ours:.2f}x", theirs / ours >= 0.97)
    if training:
        ours = training["descent Adam"].median
        fused = training["torch Adam(fused=True)"].median
        row("training iteration, 200 x (Linear+LayerNorm): not slower than torch "
            "Adam(fused=True)", f"{fused / ours:.2f}x", fused / ours >= 1.0)
    return lines


def _latency_table(latencies: list[Latency]) -> list[str]:
    lines = ["| first step of | import s | cold first step s | warm first step s "
             "| second step ms |", "|---|---|---|---|---|"]
    for latency in latencies:
        lines.append(f"| {latency.label} | {latency.warm['import']:.2f} "
                     f"| {latency.cold['first']:.2f} | {latency.warm['first']:.2f} "
                     f"| {_ms(latency.warm['second'])} |")
    return lines


def _training_table(training: dict[str, Timing]) -> list[str]:
    ours = training["descent Adam"].median
    lines = ["| optimizer | ms per iteration | descent is faster by |", "|---|---|---|"]
    for name, timing in training.items():
        lines.append(f"| {name} | {_timing(timing)} | {timing.median / ours:.2f}x |")
    return lines


def _demo_table(demo: dict[str, Timing]) -> list[str]:
    ours = demo["descent.Adam (engine auto)"].median
    lines = ["| `descent demo --quick` with | seconds, end to end | descent is faster by |",
             "|---|---|---|"]
    for name, timing in demo.items():
        lines.append(f"| {name} | {timing.median:.2f} ±{timing.spread * 50:.0f}% "
                     f"| {timing.median / ours:.2f}x |")
    return lines


def write_report(path: str, command: str, started: str, loads: tuple[str, str],
                 results: list[StepResult], latencies: list[Latency],
                 training: dict[str, Timing] | None, repetitions: int,
                 iterations: int = 0, demo: dict[str, Timing] | None = None) -> None:
    """Write the Markdown report to ``path``."""
    lines = [
        "# Benchmarks",
        "",
        "Produced by the command below (see README, \"Speed\"); every number is from one run "
        "of it, in one process per table, contenders interleaved. Times are medians of "
        f"{repetitions} repetitions (step tables) or of the iterations listed; ±N% is half "
        "the interquartile range of the repetitions, relative to the median. Ratios are "
        "torch's median over descent's (above 1: descent is faster).",
        "",
        "```",
        command,
        "```",
        "",
        f"- Started: {started}",
        f"- Machine: {_machine()}",
        f"- Load average (1/5/15 min) before: {loads[0]}; after: {loads[1]}",
        "",
        "## Optimizer step",
        "",
        "\"descent\": the step with gradients already in the engine's flat gradient buffer "
        "(after the first step, or with `zero_grad(set_to_none=False)`); \"descent, fresh "
        "grads\": a new gradient tensor per parameter before each step, which the step "
        "first gathers into the buffer (8 more bytes per parameter). Roofline: the "
        "algorithm's bytes per parameter (float32 reads and writes: Adam 28, SGD with "
        "momentum, RMSprop, Adagrad and Lion 20, SignSGD 12) times the number of "
        "parameters, divided by the streaming bandwidth of the same buffers, touched as the "
        "step touches them: an in-place `add_` of descent's flat gradient buffer into its "
        "flat parameter buffer and an in-place `mul_` of each flat state buffer (the "
        "step's bytes, with no real arithmetic), measured interleaved with the steps. "
        "\"first step\" is the first step in this process (flat buffers built, state "
        "created, a kernel compiled or loaded from the cache).",
        "",
        *_step_table(results),
        "",
    ]
    if latencies:
        lines += [
            "## First-step latency in a fresh process",
            "",
            "Each row runs two fresh Python processes that share a new, empty "
            "`TORCHINDUCTOR_CACHE_DIR`: the first compiles (cold), the second finds the "
            "kernel in the cache (warm). \"import\" is `import torch, descent`.",
            "",
            *_latency_table(latencies),
            "",
        ]
    if training:
        lines += [
            "## Whole training iteration",
            "",
            "`zero_grad()` (default `set_to_none=True`), forward, backward and `step()` on "
            "200 x (Linear(64, 64) + LayerNorm(64)), batch 64, each library's defaults "
            f"(descent: the engine's \"auto\" mode); {iterations} "
            "iterations of each, interleaved.",
            "",
            *_training_table(training),
            "",
        ]
    if demo:
        lines += [
            "## `descent demo` end to end",
            "",
            "Fresh processes (imports included), interleaved; the demo's optimizer "
            "(`descent.Adam` in all three sections) as shipped, replaced by "
            "`torch.optim.Adam`, and with `DESCENT_ENGINE=per_tensor`. "
            "`python bench/demo_end_to_end.py --full` times the full demo the same way.",
            "",
            *_demo_table(demo),
            "",
        ]
    lines += [
        "## Reading these numbers",
        "",
        "- The load averages above say how busy the machine was; on a shared machine the "
        "contenders are interleaved so that load hits them alike, but a large ±N% marks a "
        "number to re-measure.",
        "- A roofline share above 100% means the streaming passes (eager `add_` and "
        "`mul_`, one pass per buffer) moved the bytes more slowly than the optimizer's "
        "one-pass kernel: the probe then under-estimates the machine, and the share "
        "over-states how close the step is to it.",
        "- \"descent, fresh grads\" is what a step costs after the default "
        "`zero_grad()` (gradients set to None, new tensors from backward): the gradients "
        "are first copied into the flat buffer. The whole-iteration table measures that "
        "case end to end.",
        "",
        "## Targets (issue 7)", "", *_targets(results, training, demo), ""]
    with open(path, "w", encoding="utf-8") as report:
        report.write("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write its report."""
    parser = argparse.ArgumentParser(
        prog="python -m descent.bench",
        description="descent's optimizer steps against torch.optim's for-loop, foreach and "
                    "fused variants, next to the memory-bandwidth roofline.")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions, no transformer case, no for-loop variants "
                             "but Adam's, one latency row (about 2 minutes)")
    parser.add_argument("--repetitions", type=int, default=None,
                        help="timed repetitions per contender (7; 3 with --quick)")
    parser.add_argument("--output", default="BENCHMARKS.md", help="report path (BENCHMARKS.md)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="only these optimizers (e.g. Adam RMSprop)")
    args = parser.parse_args(argv)
    repetitions = args.repetitions or (3 if args.quick else 7)
    if repetitions < 1:
        parser.error(f"--repetitions must be at least 1, got {repetitions}")
    command = "python -m descent.bench" + "".join(
        f" {arg}" for arg in (sys.argv[1:] if argv is None else argv))
    chosen = algorithms()
    if args.only:
        known = {algorithm.name.split(" ")[0] for algorithm in chosen}
        unknown = sorted(set(args.only) - known)
        if unknown:
            parser.error(f"--only: unknown optimizers {unknown}; choose from {sorted(known)}")
        chosen = [a for a in chosen if a.name.split(" ")[0] in args.only]
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = _load()
    clock = time.perf_counter()
    results = []
    for case in cases(args.quick):
        for algorithm in chosen:
            variants = ("for-loop", "foreach", "fused")
            if args.quick and algorithm.name not in ("Adam", "AdamW"):
                variants = ("foreach", "fused")
            _log(f"[{time.perf_counter() - clock:6.0f}s] {case.name}: {algorithm.name}")
            results.append(measure_steps(case, algorithm, repetitions, variants))
    latencies = []
    latency_rows = [("descent.Adam, 4,000 x 4,000 (fused kernel)",
                     "descent.Adam(params)", _FOUR_K),
                    ("descent.RMSprop, 1 x 16M (compiled kernel)",
                     "descent.RMSprop(params)", _SIXTEEN_M),
                    ("descent.NAdam, 4,000 x 4,000 (compiled kernel)",
                     "descent.NAdam(params)", _FOUR_K),
                    ("torch.optim.Adam(fused=True), 4,000 x 4,000",
                     "torch.optim.Adam(params, fused=True)", _FOUR_K)]
    if args.quick:
        latency_rows = latency_rows[1:2]
    for label, make, sizes in latency_rows:
        _log(f"[{time.perf_counter() - clock:6.0f}s] latency: {label}")
        latencies.append(measure_latency(label, make, sizes))
    _log(f"[{time.perf_counter() - clock:6.0f}s] training iteration")
    iterations = 20 if args.quick else 100
    training = measure_training(iterations)
    _log(f"[{time.perf_counter() - clock:6.0f}s] descent demo end to end")
    demo = measure_demo(repetitions)
    write_report(args.output, command, started, (load_before, _load()), results, latencies,
                 training, repetitions, iterations, demo)
    _log(f"[{time.perf_counter() - clock:6.0f}s] wrote {args.output}")
    return 0


__all__ = ["main", "write_report"]
