"""Memory, speed and quality of low-precision optimizer state (``state_dtype``,
``param_rounding``).

    python bench/low_memory.py memory                    # bytes of state per parameter
    python bench/low_memory.py speed --sizes 1e6 1e7 1e8  # step time against float32
    python bench/low_memory.py quality                   # final losses: digits MLP, GRU
    python bench/low_memory.py references                # against bitsandbytes, torchao

``memory`` prints, for each elementwise rule and each ``state_dtype``, the bytes of
state per parameter (``opt.state_bytes()`` over the parameter count) for one
4096 x 1024 weight (4.2M parameters; scalar ``step`` tensors included).

``speed`` times one step on one parameter of each size (median of ``--repeats`` steps
after two warm-up steps) and prints each low-precision mode's speed relative to the
float32 step of the same rule: ``x fused`` against descent's default float32 path
(torch's fused kernel where the rule has one), ``x eager`` against the float32 math
path (``descent.engine.set_mode(opt, "foreach")``). Above 1 is faster. Everything runs
eagerly (no compiled kernels). ``--device cuda`` times on the GPU (synchronised).
``--clock process`` times the CPU seconds this process spends instead of wall-clock
time: steadier on a machine shared with other work (use it with ``--threads 1``).

``quality`` trains the demo's digits MLP (15 epochs) and character GRU (8 epochs) as
``tests/test_low_memory.py`` does, once per state precision, and prints the final
losses next to float32's; then pure-bfloat16 parameters with each ``param_rounding``.

``references`` compares with bitsandbytes' CPU ``AdamW8bit`` and torchao's
``AdamW8bit`` / ``AdamW4bit`` (when installed): the quantise-dequantise error of the
same blocks (Adam moments after 50 float32 steps of the digits MLP), and 300-step
trajectories of the digits MLP (distance of the parameters to the float32 run's, and
the final loss).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import descent
from descent.engine import quantize
from descent.optim.registry import algorithms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_low_memory import digits_loss, gru_loss

MODES: dict[str, dict[str, Any]] = {
    "float32": {},
    "bf16": {"state_dtype": "bf16"},
    "int8": {"state_dtype": "int8"},
    "int4": {"state_dtype": "int4"},
}
OPTIONS: dict[str, dict[str, Any]] = {  # options that give each rule all of its state
    "SGD": {"momentum": 0.9},
    "SignSGD": {"momentum": 0.9},
    "RMSprop": {"momentum": 0.9},
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


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
clock = time.perf_counter


def _time(step: Callable[[], None], repeats: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        step()
    sync()
    times = []
    for _ in range(repeats):
        start = clock()
        step()
        sync()
        times.append(clock() - start)
    return statistics.median(times)


def speed(
    rules: list[str], sizes: list[int], repeats: int, device: torch.device, bf16_params: bool
) -> None:
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{'CPU time' if clock is time.process_time else 'wall-clock'} ms per step (median "
        f"of {repeats}); speed relative to the float32 step of the same rule"
    )
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
                row += [
                    f"{seconds * 1e3:.2f}",
                    f"{base / seconds:.2f}",
                    f"{base_eager / seconds:.2f}",
                ]
            if bf16_params:
                low = torch.nn.Parameter(param.detach().bfloat16())
                low.grad = param.grad.bfloat16()
                opt = _make(name, [low], param_rounding="stochastic")
                seconds = _time(opt.step, repeats, device)
                del opt, low
                row += [f"{seconds * 1e3:.2f}", f"{base / seconds:.2f}"]
            del param
            print("| " + " | ".join(row) + " |", flush=True)


def quality() -> None:
    print("final loss (digits MLP: training set after 15 epochs; GRU: held-out after 8)")
    print("| rule | task | float32 | bf16 | int8 | int4 |")
    print("|---|---|---|---|---|---|")
    cases = [
        ("Adam", "digits", 1e-3),
        ("AdamW", "digits", 1e-3),
        ("SGD", "digits", 0.1),
        ("Lion", "digits", 1e-4),
        ("RMSprop", "digits", 1e-3),
        ("Adam", "gru", 5e-3),
    ]
    for name, task, lr in cases:
        cells = []
        for options in MODES.values():

            def make(
                model: nn.Module,
                name: str = name,
                lr: float = lr,
                options: dict[str, Any] = options,
            ) -> torch.optim.Optimizer:
                return algorithms()[name](model, lr=lr, **OPTIONS.get(name, {}), **options)

            loss = digits_loss(make, epochs=15) if task == "digits" else gru_loss(make, epochs=8)
            cells.append(f"{loss:.4f}")
        print(f"| {name} (lr {lr:g}) | {task} | " + " | ".join(cells) + " |", flush=True)
    print()
    print("pure bfloat16 parameters, AdamW, digits MLP (15 epochs): final training loss")
    print("| lr | float32 params | bf16 nearest | bf16 stochastic | bf16 kahan |")
    print("|---|---|---|---|---|")
    for lr in (1e-3, 1e-4):
        cells = [digits_loss(lambda m, lr=lr: descent.AdamW(m, lr=lr), epochs=15)]
        for rounding in quantize.PARAM_ROUNDINGS:
            cells.append(
                digits_loss(
                    lambda m, lr=lr, r=rounding: descent.AdamW(m, lr=lr, param_rounding=r),
                    epochs=15,
                    dtype=torch.bfloat16,
                )
            )
        print(f"| {lr:g} | " + " | ".join(f"{c:.4f}" for c in cells) + " |", flush=True)


def references() -> None:
    from descent.cli.demo import load_digits, make_mlp

    try:
        import bitsandbytes
        import bitsandbytes.functional as bnb_functional
        import torchao.optim as ao
        from torchao.optim.subclass_4bit import OptimState4bit
        from torchao.optim.subclass_8bit import OptimState8bit
    except ImportError as error:
        raise SystemExit(f"references needs bitsandbytes and torchao: {error}") from None
    torch.compile = lambda function, **_: function  # torchao's step, eager on the CPU
    x_train, y_train, _, _ = load_digits(0)

    def run(make: Callable[[nn.Module], Any], steps: int) -> tuple[torch.Tensor, float, Any]:
        model = make_mlp(0)
        opt = make(model)
        generator = torch.Generator().manual_seed(0)
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(steps):
            batch = order[(i * 32) % 1408 : (i * 32) % 1408 + 32]
            loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            final = nn.functional.cross_entropy(model(x_train), y_train).item()
        return torch.cat([p.detach().flatten() for p in model.parameters()]), final, opt

    _, _, warm = run(lambda m: descent.AdamW(m, lr=1e-3), 50)
    weight = warm.param_groups[0]["params"][0]
    moments = {True: warm.state[weight]["exp_avg"], False: warm.state[weight]["exp_avg_sq"]}
    print(
        "quantise-dequantise error of the same blocks (first-layer Adam moments after 50 "
        "steps), relative to the tensor's mean |value|: mean / max"
    )
    print("| moment | bits, block | descent | bitsandbytes | torchao |")
    print("|---|---|---|---|---|")
    for signed, data in moments.items():
        flat = data.reshape(-1)
        scale = flat.abs().mean()
        for bits, block in ((8, 256), (4, 128)):
            ours = quantize.dequantize(
                quantize.quantize(flat, bits=bits, signed=signed, block_size=block), flat.numel()
            )
            theirs_cls = OptimState8bit if bits == 8 else OptimState4bit
            theirs = theirs_cls.zeros(flat.shape, signed, block)
            theirs.copy_(flat)
            cells = [ours, theirs.dequantize()]
            if bits == 8:
                codes, absmax = torch.ops.bitsandbytes.quantize_blockwise(
                    flat, bnb_functional.create_dynamic_map(signed), 256
                )
                cells.insert(
                    1,
                    torch.ops.bitsandbytes.dequantize_blockwise(
                        codes, absmax, bnb_functional.create_dynamic_map(signed), 256, torch.float32
                    ),
                )
            text = [
                f"{(c - flat).abs().mean() / scale:.2e} / {(c - flat).abs().max() / scale:.2e}"
                for c in cells
            ]
            if bits == 4:
                text.insert(1, "-")
            name = "exp_avg" if signed else "exp_avg_sq"
            print(f"| {name} | {bits}, {block} | " + " | ".join(text) + " |")
    print()
    steps = 300
    runs = {
        "descent float32": lambda m: descent.AdamW(m, lr=1e-3),
        "descent int8": lambda m: descent.AdamW(m, lr=1e-3, state_dtype="int8"),
        "bitsandbytes AdamW8bit": lambda m: bitsandbytes.optim.AdamW8bit(
            m.parameters(), lr=1e-3, weight_decay=1e-2
        ),
        "torchao AdamW8bit": lambda m: ao.AdamW8bit(m.parameters(), lr=1e-3),
        "descent int4 (block 128)": lambda m: descent.AdamW(
            m, lr=1e-3, state_dtype="int4", state_block_size=128
        ),
        "torchao AdamW4bit": lambda m: ao.AdamW4bit(m.parameters(), lr=1e-3),
        "descent bf16": lambda m: descent.AdamW(m, lr=1e-3, state_dtype="bf16"),
    }
    results = {name: run(make, steps) for name, make in runs.items()}
    reference, _, _ = results["descent float32"]
    print(
        f"digits MLP, AdamW lr 1e-3, {steps} steps of 32: distance of the parameters to "
        "the float32 run's (relative to its norm) and final training loss"
    )
    print("| optimizer | distance to float32 | final loss |")
    print("|---|---|---|")
    for name, (params, loss, _) in results.items():
        print(f"| {name} | {(params - reference).norm() / reference.norm():.2e} | {loss:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("memory", "speed", "quality", "references"))
    parser.add_argument(
        "--rules",
        nargs="+",
        default=None,
        help="rules to run (default: every elementwise rule for memory, Adam for speed)",
    )
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7, 1e8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--bf16-params",
        action="store_true",
        help="also time bfloat16 parameters with stochastic rounding",
    )
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall")
    parser.add_argument("--threads", type=int, default=None, help="torch's CPU threads")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "memory":
        memory(args.rules or [name for name, cls in algorithms().items() if cls.elementwise])
    elif args.what == "quality":
        quality()
    elif args.what == "references":
        references()
    else:
        speed(
            args.rules or ["Adam"],
            [int(size) for size in args.sizes],
            args.repeats,
            torch.device(args.device),
            args.bf16_params,
        )


if __name__ == "__main__":
    main()
