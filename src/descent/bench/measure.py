"""Timing: interleaved repetitions, medians and spreads; steps, bandwidth, latency, training.

The machine may be shared, so every comparison is measured in one process with the
contenders interleaved (each repetition runs every contender once, in a rotating order)
and summarised by the median, with the spread (lowest and highest repetition) reported
next to it.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

import descent

from .cases import Algorithm, Case


@dataclass
class Timing:
    """Seconds of the repetitions of one contender."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """Interquartile range / median: how much the repetitions disagreed."""
        if len(self.seconds) < 2:
            return 0.0
        first, _, third = statistics.quantiles(self.seconds, n=4, method="inclusive")
        return (third - first) / self.median


def interleaved(
    contenders: dict[str, Callable[[], None]],
    repetitions: int,
    prepare: dict[str, Callable[[], None]] | None = None,
) -> dict[str, Timing]:
    """Time each contender ``repetitions`` times, interleaved in a rotating order.

    ``prepare[name]``, if given, runs untimed before each timed call of ``name``.
    """
    prepare = prepare or {}
    names = list(contenders)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for repetition in range(repetitions):
        shift = repetition % len(names)
        for name in names[shift:] + names[:shift]:
            if name in prepare:
                prepare[name]()
            start = time.perf_counter()
            contenders[name]()
            seconds[name].append(time.perf_counter() - start)
    return {name: Timing(values) for name, values in seconds.items()}


@dataclass
class StepResult:
    """One algorithm on one case: every contender's step time and the roofline."""

    case: Case
    algorithm: Algorithm
    timings: dict[str, Timing]
    first_step: float
    bandwidth: float  # bytes per second, in-place streaming over buffers of the same size

    @property
    def roofline(self) -> float:
        """Seconds a step would take at the measured bandwidth."""
        return self.algorithm.bytes_per_param * self.case.numel / self.bandwidth

    def ratio(self, contender: str | None) -> float | None:
        """How many times faster descent's step is than ``contender``'s."""
        if contender is None or contender not in self.timings:
            return None
        return self.timings[contender].median / self.timings["descent"].median

    @property
    def vs_best(self) -> float | None:
        """descent against torch's fastest variant of the rule (fused, else foreach)."""
        best = self.algorithm.torch_best
        return self.ratio(f"torch {best}") if best else None


def _tensors(case: Case, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for shape in case.shapes]


def wait_for_kernels() -> None:
    """Return once every generated kernel asked for so far is built (or has failed)."""
    from descent.engine import cpu

    cpu._builds.drain()


def measure_steps(
    case: Case, algorithm: Algorithm, repetitions: int, variants: tuple[str, ...]
) -> StepResult:
    """descent's step (its default mode, kernels built) against torch's ``variants``.

    Also measures the streaming bandwidth over buffers as large as the case: an
    in-place ``add_`` of a gradient-sized buffer into a parameter-sized one and a
    ``mul_`` of each state-sized one, the step's bytes with no real arithmetic.
    """
    initial, grads = _tensors(case, 0), _tensors(case, 1)
    params = [value.clone().requires_grad_() for value in initial]
    for param, grad in zip(params, grads, strict=True):
        param.grad = grad.clone()
    optimizer = algorithm.make(params)
    start = time.perf_counter()
    optimizer.step()
    first_step = time.perf_counter() - start
    wait_for_kernels()
    optimizer.step()
    contenders: dict[str, Callable[[], None]] = {"descent": optimizer.step}
    for variant in variants:
        if variant not in algorithm.torch_variants:
            continue
        torch_params = [value.clone().requires_grad_() for value in initial]
        for param, grad in zip(torch_params, grads, strict=True):
            param.grad = grad.clone()
        torch_optimizer = algorithm.make_torch(torch_params, variant)
        torch_optimizer.step()
        contenders[f"torch {variant}"] = torch_optimizer.step
    states = (algorithm.bytes_per_param - 12) // 8
    flat_param, flat_grad = torch.zeros(case.numel), torch.zeros(case.numel)
    flat_states = [torch.zeros(case.numel) for _ in range(states)]

    def stream() -> None:
        flat_param.add_(flat_grad, alpha=0.0)
        for buffer in flat_states:
            buffer.mul_(1.0)

    contenders["streaming"] = stream
    timings = interleaved(contenders, repetitions)
    bandwidth = case.numel * (12 + 8 * states) / timings.pop("streaming").median
    contenders.clear()
    gc.collect()
    return StepResult(case, algorithm, timings, first_step, bandwidth)


def measure_host_cost(repetitions: int) -> dict[str, Timing]:
    """Adam on 10,000 tensors of 16 floats: the step's cost per tensor, descent and torch."""
    from .cases import HOST

    contenders: dict[str, Callable[[], None]] = {}
    makers: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
        "descent.Adam": lambda p: descent.Adam(p, lr=1e-3),
        "torch Adam fused": lambda p: torch.optim.Adam(p, lr=1e-3, fused=True),
        "torch Adam foreach": lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True),
    }
    for name, make in makers.items():
        params = [value.requires_grad_() for value in _tensors(HOST, 0)]
        for param in params:
            param.grad = torch.randn_like(param)
        optimizer = make(params)
        optimizer.step()
        wait_for_kernels()
        contenders[name] = optimizer.step
    return interleaved(contenders, repetitions)


_LATENCY_SCRIPT = """
import json, time
start = time.perf_counter()
import torch, descent
from descent.engine import cpu
imported = time.perf_counter()
params = [torch.randn(n).requires_grad_() for n in {sizes}]
for p in params:
    p.grad = torch.randn_like(p)
opt = {make}
begin = time.perf_counter()
opt.step()
first = time.perf_counter() - begin
cpu._builds.drain()
ready = time.perf_counter() - begin
begin = time.perf_counter()
opt.step()
second = time.perf_counter() - begin
print(json.dumps({{"import": imported - start, "first": first, "ready": ready,
                   "second": second}}))
"""


@dataclass
class Latency:
    """First-step latency in fresh processes (seconds)."""

    label: str
    cold: dict[str, float]
    warm: dict[str, float]


def measure_latency(label: str, make: str, sizes: list[int]) -> Latency:
    """First step in a fresh process with an empty kernel cache (cold), then again (warm).

    ``make`` is Python source building the optimizer from ``params``. The cache is a new
    temporary directory (``DESCENT_CACHE_DIR``), so "cold" includes building the
    generated kernel in the background ("ready": when it was built) and "warm" is what
    every later process on the machine pays.
    """
    with tempfile.TemporaryDirectory(prefix="descent-bench-") as cache:
        env = dict(os.environ, DESCENT_CACHE_DIR=cache)
        source = _LATENCY_SCRIPT.format(sizes=sizes, make=make)
        runs = []
        for _ in range(2):
            done = subprocess.run(
                [sys.executable, "-c", source], env=env, check=True, capture_output=True, text=True
            )
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return Latency(label, runs[0], runs[1])


def _many_small_layers(count: int, width: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for _ in range(count):
        layers += [torch.nn.Linear(width, width), torch.nn.LayerNorm(width)]
    return torch.nn.Sequential(*layers)


def measure_training(
    iterations: int, layers: int = 200, width: int = 64, batch: int = 64
) -> dict[str, Timing]:
    """One training iteration (zero_grad, forward, backward, step), each library's defaults.

    The model is ``layers`` x (Linear(width, width) + LayerNorm(width)), fitted to a random
    target (a loss whose minimum is not at zero activations, so no run slows down on
    denormal numbers as it trains); every optimizer
    gets its own copy with the same initial values, and ``zero_grad()`` keeps its
    default ``set_to_none=True``, so each step sees fresh gradient tensors.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, width, generator=generator)
    target = torch.randn(batch, width, generator=generator)
    setups: dict[str, Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]] = {
        "descent Adam": lambda params: descent.Adam(params, lr=1e-3),
        "torch Adam(fused=True)": lambda params: torch.optim.Adam(params, lr=1e-3, fused=True),
        "torch Adam (default)": lambda params: torch.optim.Adam(params, lr=1e-3),
    }
    contenders: dict[str, Callable[[], None]] = {}
    for name, make in setups.items():
        model = _many_small_layers(layers, width, seed=0)
        optimizer = make(model.parameters())

        def iteration(
            model: torch.nn.Module = model, optimizer: torch.optim.Optimizer = optimizer
        ) -> None:
            optimizer.zero_grad()
            (model(x) - target).square().mean().backward()
            optimizer.step()

        for _ in range(3):
            iteration()
        contenders[name] = iteration
    return interleaved(contenders, iterations)


_DEMO_WITH_TORCH_ADAM = """
import sys, torch, descent
from descent.cli import main
descent.Adam = lambda params, **options: torch.optim.Adam(
    params.parameters() if isinstance(params, torch.nn.Module) else params, **options)
sys.exit(main(sys.argv[1:]))
"""
_DEMO = "import sys\nfrom descent.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def measure_demo(repetitions: int, full: bool = False) -> dict[str, Timing]:
    """``descent demo`` end to end in fresh processes: descent, torch.optim.Adam, per tensor.

    The demo's default optimizer is ``descent.Adam`` (in all three sections); the second
    contender replaces it with ``torch.optim.Adam`` and its defaults, the third runs
    descent with ``DESCENT_ENGINE=per_tensor``. Imports, any compilation and the whole
    demo (``--quick`` unless ``full``) are timed, interleaved.
    """
    with tempfile.TemporaryDirectory(prefix="descent-demo-") as out:
        arguments = ["demo", "--out", out, "--no-progress", *([] if full else ["--quick"])]
        variants = {
            "descent.Adam (engine auto)": (_DEMO, "auto"),
            "torch.optim.Adam": (_DEMO_WITH_TORCH_ADAM, "auto"),
            "descent.Adam (per_tensor)": (_DEMO, "per_tensor"),
        }

        def runner(source: str, mode: str) -> Callable[[], None]:
            env = dict(os.environ, DESCENT_ENGINE=mode)

            def run() -> None:
                subprocess.run(
                    [sys.executable, "-c", source, *arguments],
                    env=env,
                    check=True,
                    stdout=subprocess.DEVNULL,
                )

            return run

        return interleaved(
            {name: runner(*variant) for name, variant in variants.items()}, repetitions
        )


__all__ = [
    "Latency",
    "StepResult",
    "Timing",
    "interleaved",
    "measure_demo",
    "measure_host_cost",
    "measure_latency",
    "measure_steps",
    "measure_training",
    "wait_for_kernels",
]
