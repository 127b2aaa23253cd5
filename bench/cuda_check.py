"""descent on a GPU: correctness against torch and the per-tensor path, then timings.

Run on a machine with CUDA, from the repository root::

    PYTHONPATH=src python bench/cuda_check.py --out cuda.json

Sections, in order (each writes its results to ``--out`` as soon as it has them, and the
script skips what would run past ``--budget`` seconds):

1. correctness: every elementwise optimizer of the registry on CUDA, float32 and
   bfloat16, each engine path (generated kernel, torch's fused kernel, foreach) against
   the per-tensor path and against torch.optim;
2. the device's copy bandwidth (bytes read plus written per second);
3. step times (CUDA events, median of 15 steps after warm-up) on the three cases of
   BENCHMARKS.md: GPT-2-124M's 148 parameter tensors, one 256M-float tensor, 10,000
   tensors of 8,192 floats; descent's default (auto, generated kernel built) against
   torch's best for the rule (fused where torch has it, else foreach) and foreach;
4. host cost of a step on 10,000 small tensors;
5. first step in a fresh process, cold (empty kernel caches) and warm;
6. a whole training iteration (forward, backward, step) of a 12-layer d=768 transformer
   under bf16 autocast: descent.AdamW against torch.optim.AdamW (default and fused).

``--smoke`` runs every section on the CPU with tiny sizes, to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

import descent
from descent import engine
from descent.optim.registry import algorithms

RESULTS: dict[str, Any] = {}
START = time.perf_counter()


def save(path: str) -> None:
    with open(path, "w") as file:
        json.dump(RESULTS, file, indent=1, default=str)


def elapsed() -> float:
    return time.perf_counter() - START


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(
    fn: Callable[[], Any], device: torch.device, reps: int = 15, warmup: int = 3
) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times)


def wait_for_kernels() -> None:
    """Let every generated kernel being built finish (their build queues drain)."""
    engine.cuda._builds.drain()
    engine.cpu._builds.drain()


# ---------------------------------------------------------------------- rules


TORCH_BEST = {"Adam": "fused", "AdamW": "fused", "SGD": "fused", "Adagrad": "fused"}
OPTIONS = {"SGD": {"momentum": 0.9}, "SignSGD": {"momentum": 0.9}}


def elementwise_rules() -> list[tuple[str, type, type | None]]:
    rules = []
    for name, cls in algorithms().items():
        if not cls.elementwise or cls.math is None:
            continue
        rules.append((name, cls, getattr(torch.optim, name, None)))
    return rules


def make_params(
    shapes: list[tuple[int, ...]], device: torch.device, dtype: torch.dtype, seed: int = 0
) -> list[torch.Tensor]:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    params = []
    for shape in shapes:
        value = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
        params.append(value.requires_grad_())
    return params


def give_grads(params: list[torch.Tensor], seed: int) -> None:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for param in params:
        param.grad = torch.randn(param.shape, generator=generator).to(param.device, param.dtype)


# ---------------------------------------------------------------------- 1. correctness


def correctness(device: torch.device, smoke: bool) -> None:
    shapes = [(64, 33), (1000,), (7,), (3, 5, 11)]
    table: dict[str, Any] = {}
    for name, cls, torch_cls in elementwise_rules():
        options = {"lr": 1e-2, **OPTIONS.get(name, {})}
        for dtype in (torch.float32, torch.bfloat16):
            finals = {}
            for mode in ("per_tensor", "foreach", "fused", "compiled"):
                params = make_params(shapes, device, dtype)
                opt = cls(params, **options)
                engine.set_mode(opt, mode)
                for step in range(6):
                    give_grads(params, 100 + step)
                    opt.step()
                finals[mode] = [p.detach().float() for p in params]
            if torch_cls is not None:
                params = make_params(shapes, device, dtype)
                opt = torch_cls(params, **options)
                for step in range(6):
                    give_grads(params, 100 + step)
                    opt.step()
                finals["torch"] = [p.detach().float() for p in params]
            reference = finals["per_tensor"]
            row = {}
            for mode, values in finals.items():
                if mode == "per_tensor":
                    continue
                worst = max(
                    ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                    for a, b in zip(values, reference, strict=True)
                )
                row[mode] = worst
            table[f"{name} {str(dtype).replace('torch.', '')}"] = row
            print(
                f"correctness {name:12s} {dtype}: "
                + ", ".join(f"{k} {v:.1e}" for k, v in row.items()),
                flush=True,
            )
    RESULTS["correctness"] = table


# ---------------------------------------------------------------------- 2. bandwidth


def bandwidth(device: torch.device, smoke: bool) -> float:
    numel = (1 << 16) if smoke else (1 << 28)
    source = torch.empty(numel, device=device)
    target = torch.empty_like(source)
    ms = median_ms(lambda: target.copy_(source), device)
    rate = 2 * source.numel() * source.element_size() / (ms / 1e3)
    RESULTS["copy_bandwidth_GBps"] = rate / 1e9
    print(f"copy bandwidth {rate / 1e9:.0f} GB/s", flush=True)
    return rate


# ---------------------------------------------------------------------- 3. step times


def gpt2_shapes() -> list[tuple[int, ...]]:
    d, vocab, context, layers = 768, 50257, 1024, 12
    shapes: list[tuple[int, ...]] = [(vocab, d), (context, d)]
    for _ in range(layers):
        shapes += [
            (d,),
            (d,),
            (d, 3 * d),
            (3 * d,),
            (d, d),
            (d,),
            (d,),
            (d,),
            (d, 4 * d),
            (4 * d,),
            (4 * d, d),
            (d,),
        ]
    return shapes + [(d,), (d,)]


def cases(smoke: bool) -> dict[str, list[tuple[int, ...]]]:
    if smoke:
        return {
            "GPT-2 list (small)": [(50, 8), (8,)] * 4,
            "one tensor": [(1 << 16,)],
            "many tensors": [(64,)] * 100,
        }
    return {
        "GPT-2-124M list (148 tensors)": gpt2_shapes(),
        "one 256M tensor": [(1 << 28,)],
        "10,000 x 8,192": [(8192,)] * 10000,
    }


def bytes_per_param(name: str, opt: torch.optim.Optimizer) -> int:
    states = len([v for v in next(iter(opt.state.values())).values() if v.dim() > 0])
    return 4 * (3 + 2 * states)  # read param and grad, write param, read+write each state


def step_times(device: torch.device, smoke: bool, rate: float, budget: float, out: str) -> None:
    table: dict[str, Any] = RESULTS.setdefault("steps", {})
    for case, shapes in cases(smoke).items():
        numel = sum(torch.Size(s).numel() for s in shapes)
        for name, cls, torch_cls in elementwise_rules():
            if elapsed() > budget:
                print("step times: budget spent, skipping the rest", flush=True)
                return
            options = {"lr": 1e-3, **OPTIONS.get(name, {})}
            row: dict[str, Any] = {}
            params = make_params(shapes, device, torch.float32)
            give_grads(params, 1)
            opt = cls(params, **options)
            opt.step()  # starts the kernel build in the background
            wait_for_kernels()
            row["descent"] = median_ms(opt.step, device)
            engine.set_mode(opt, "foreach")
            row["descent foreach"] = median_ms(opt.step, device, reps=5, warmup=1)
            traffic = bytes_per_param(name, opt) * numel
            row["roofline_ms"] = traffic / rate * 1e3
            del opt, params
            if torch_cls is not None:
                for variant in ("fused", "foreach") if name in TORCH_BEST else ("foreach",):
                    params = make_params(shapes, device, torch.float32)
                    give_grads(params, 1)
                    try:
                        topt = torch_cls(params, **options, **{variant: True})
                        row[f"torch {variant}"] = median_ms(topt.step, device, reps=7, warmup=2)
                    except RuntimeError as error:  # torch refuses fused Adagrad on CUDA
                        print(f"torch {name} {variant}: {error}", flush=True)
                    del params
            best = row.get("torch fused") or row.get("torch foreach")
            if best is not None:
                row["speedup_vs_torch_best"] = best / row["descent"]
            row["fraction_of_roofline"] = row["roofline_ms"] / row["descent"]
            table[f"{case} | {name}"] = row
            torch.cuda.empty_cache() if device.type == "cuda" else None
            print(
                f"{case} | {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True
            )
            save(out)


# ---------------------------------------------------------------------- 4. host cost


def host_cost(device: torch.device, smoke: bool) -> None:
    count = 1000 if smoke else 10_000
    rows = {}
    for label, make in (
        ("descent.Adam", lambda p: descent.Adam(p, lr=1e-3)),
        ("torch Adam fused", lambda p: torch.optim.Adam(p, lr=1e-3, fused=True)),
        ("torch Adam foreach", lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True)),
    ):
        params = make_params([(16,)] * count, device, torch.float32)
        give_grads(params, 2)
        opt = make(params)
        opt.step()
        wait_for_kernels()
        for _ in range(3):
            opt.step()
        sync(device)
        times = []
        for _ in range(10):
            begin = time.perf_counter()
            opt.step()
            times.append(time.perf_counter() - begin)
        sync(device)
        rows[label] = {
            "ms_per_step_host": statistics.median(times) * 1e3,
            "us_per_tensor": statistics.median(times) * 1e6 / count,
        }
        print(f"host cost {label}: {rows[label]}", flush=True)
    RESULTS["host_cost_10k_tensors"] = rows


# ---------------------------------------------------------------------- 5. first step


FIRST_STEP = """
import json, sys, time, torch, descent
from descent import engine
shapes = {shapes}
params = [torch.randn(s, device="{device}").requires_grad_() for s in shapes]
for p in params:
    p.grad = torch.randn_like(p)
opt = descent.NAdam(params, lr=1e-3)
begin = time.perf_counter(); opt.step(); torch.cuda.synchronize() if "{device}" == "cuda" else None
first = time.perf_counter() - begin
begin = time.perf_counter()
engine.cuda._builds.drain()
engine.cpu._builds.drain()
ready = time.perf_counter() - begin + first
print(json.dumps({{"first_step_s": first, "kernel_ready_s": ready}}))
"""


def first_step(device: torch.device, smoke: bool) -> None:
    shapes = cases(smoke)["GPT-2 list (small)" if smoke else "GPT-2-124M list (148 tensors)"]
    code = FIRST_STEP.format(shapes=shapes, device=device.type)
    rows = {}
    with tempfile.TemporaryDirectory() as cache:
        environment = dict(
            os.environ, DESCENT_CACHE_DIR=cache, TRITON_CACHE_DIR=os.path.join(cache, "triton")
        )
        for label in ("cold", "warm"):
            output = subprocess.run(
                [sys.executable, "-c", code],
                env=environment,
                check=True,
                capture_output=True,
                text=True,
                timeout=600,
            ).stdout
            rows[label] = json.loads(output.strip().splitlines()[-1])
            print(f"first step {label}: {rows[label]}", flush=True)
    RESULTS["first_step_NAdam_gpt2_list"] = rows


# ---------------------------------------------------------------------- 6. whole iteration


def _iteration(
    model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, device: torch.device
) -> Callable[[], None]:
    def iteration() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(x).float().square().mean()
        loss.backward()
        opt.step()

    return iteration


def whole_iteration(device: torch.device, smoke: bool) -> None:
    width, layers, batch, length = (64, 2, 4, 16) if smoke else (768, 12, 16, 256)
    rows = {}
    for label in ("descent.AdamW", "torch AdamW (default)", "torch AdamW fused"):
        torch.manual_seed(0)
        layer = torch.nn.TransformerEncoderLayer(
            width, nhead=max(1, width // 64), dim_feedforward=4 * width, batch_first=True
        )
        model = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).to(device)
        x = torch.randn(batch, length, width, device=device)
        if label == "descent.AdamW":
            opt: torch.optim.Optimizer = descent.AdamW(model.parameters(), lr=1e-4)
        elif label == "torch AdamW fused":
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        iteration = _iteration(model, opt, x, device)
        iteration()
        wait_for_kernels()
        rows[label] = median_ms(iteration, device, reps=15, warmup=5)
        print(f"whole iteration {label}: {rows[label]:.3f} ms", flush=True)
        del model, opt
    RESULTS["whole_iteration_ms"] = rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="cuda.json")
    parser.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help="seconds after which remaining step-time cases are skipped",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke else "cuda")
    RESULTS["machine"] = {
        "torch": torch.__version__,
        "device": (torch.cuda.get_device_name() if device.type == "cuda" else "cpu"),
        "generated_kernels": engine.cuda.available()
        if device.type == "cuda"
        else engine.cpu.compiler() is not None,
    }
    print(RESULTS["machine"], flush=True)
    rate = bandwidth(device, args.smoke)
    save(args.out)
    skip = set(os.environ.get("SKIP_SECTIONS", "").split(","))
    for section in (correctness, host_cost, first_step, whole_iteration):
        if section.__name__ in skip:
            continue
        try:
            section(device, args.smoke)
        except Exception as error:  # report and go on: a cut-off run still returns the rest
            RESULTS[f"error in {section.__name__}"] = repr(error)
            print(f"{section.__name__} failed: {error!r}", flush=True)
        save(args.out)
    step_times(device, args.smoke, rate, args.budget, args.out)
    RESULTS["generated_kernel_builds"] = {
        f"{key[0][0]} {key[1]}": state
        for backend in (engine.cuda, engine.cpu)
        for key, state in backend._builds.states().items()
    }
    RESULTS["seconds"] = elapsed()
    save(args.out)


if __name__ == "__main__":
    main()
