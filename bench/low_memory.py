"""Memory and speed of low-precision optimizer state (``state_dtype``, ``param_rounding``).

    python bench/low_memory.py memory                    # bytes of state per parameter
    python bench/low_memory.py speed --sizes 1e6 1e7 1e8  # step time against float32

``memory`` prints, for each elementwise rule and each ``state_dtype``, the bytes of
state per parameter (``opt.state_bytes()`` over the parameter count) for one
4096 x 1024 weight (4.2M parameters; scalar ``step`` tensors included).

``speed`` times one step on one parameter of each size (median of ``--repeats`` steps
after two warm-up steps) and prints each low-precision mode's speed relative to the
float32 step of the same rule: ``x fused`` against descent's default float32 path
(torch's fused kernel where the rule has one), ``x eager`` against the float32 math
path (``descent.engine.set_mode(opt, "foreach")``). Above 1 is faster. Everything runs
eagerly (no compiled kernels). ``--device cuda`` times on the GPU (synchronised).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import descent
from descent.optim.registry import algorithms

MODES: dict[str, dict[str, Any]] = {
    "float32": {},
    "bf16": {"state_dtype": "bf16"},
    "int8": {"state_dtype": "int8"},
    "int4": {"state_dtype": "int4"},
}
OPTIONS: dict[str, dict[str, Any]] = {  # options that give each rule all of its state
    "SGD": {"momentum": 0.9}, "SignSGD": {"momentum": 0.9}, "RMSprop": {"momentum": 0.9},
}


def _make(name: str, params: list[torch.Tensor], **options: Any) -> torch.optim.Optimizer:
    cls = algorithms()[name]
    return cls(params, lr=1e-4, **OPTIONS.get(name, {}), **options)


def memory(rules: list[str]) -> None:
    weight = torch.nn.Parameter(torch.zeros(4096, 1024))
    weight.grad = torch.randn_like(weight)
    print("| rule | " + " | ".join(MODES) + " |")
    print("|---|" + "---|" * len(MODES))
    for name in rules:
        cells = []
        for options in MODES.values():
            opt = _make(name, [weight], **options)
            opt.step()
            cells.append(f"{opt.state_bytes() / weight.numel():.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def _time(step: Callable[[], None], repeats: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(rules: list[str], sizes: list[int], repeats: int, device: torch.device,
          bf16_params: bool) -> None:
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          "ms per step; speed relative to the float32 step of the same rule")
    header = ["rule", "elements", "float32 fused ms", "float32 eager ms"]
    for mode in list(MODES)[1:]:
        header += [f"{mode} ms", f"{mode} x fused", f"{mode} x eager"]
    if bf16_params:
        header += ["bf16 params + stochastic ms", "x fused"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in rules:
        for size in sizes:
            param = torch.nn.Parameter(torch.randn(size, device=device))
            param.grad = torch.randn_like(param)
            fused = _make(name, [param])
            base = _time(fused.step, repeats, device)
            eager = _make(name, [param])
            descent.engine.set_mode(eager, "foreach")
            base_eager = _time(eager.step, repeats, device)
            del fused, eager
            row = [name, f"{size:.0e}", f"{base * 1e3:.2f}", f"{base_eager * 1e3:.2f}"]
            for options in list(MODES.values())[1:]:
                opt = _make(name, [param], **options)
                seconds = _time(opt.step, repeats, device)
                del opt
                row += [f"{seconds * 1e3:.2f}", f"{base / seconds:.2f}",
                        f"{base_eager / seconds:.2f}"]
            if bf16_params:
                low = torch.nn.Parameter(param.detach().bfloat16())
                low.grad = param.grad.bfloat16()
                opt = _make(name, [low], param_rounding="stochastic")
                seconds = _time(opt.step, repeats, device)
                del opt, low
                row += [f"{seconds * 1e3:.2f}", f"{base / seconds:.2f}"]
            del param
            print("| " + " | ".join(row) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("memory", "speed"))
    parser.add_argument("--rules", nargs="+", default=None,
                        help="rules to run (default: every elementwise rule for memory, "
                             "Adam for speed)")
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7, 1e8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16-params", action="store_true",
                        help="also time bfloat16 parameters with stochastic rounding")
    args = parser.parse_args()
    if args.what == "memory":
        memory(args.rules or [name for name, cls in algorithms().items() if cls.elementwise])
    else:
        speed(args.rules or ["Adam"], [int(size) for size in args.sizes], args.repeats,
              torch.device(args.device), args.bf16_params)


if __name__ == "__main__":
    main()
