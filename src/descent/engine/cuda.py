"""Generated CUDA kernels: a rule's traced program as one Triton kernel over a whole bucket.

The GPU counterpart of :mod:`.cpu`. For a program (see :mod:`.trace`) and a dtype, this
module writes a Triton kernel that updates every element of every tensor of a bucket in
one launch: each program instance takes one chunk of :data:`BLOCK` elements of one tensor,
finds that tensor's parameter, gradient and state through a table of addresses, loads
each once, computes in registers (float32 for float32, bfloat16 and float16 tensors,
float64 for float64 ones) and stores the parameter and the state once. The tensors stay
where they are; only a table of their addresses and this step's scalars (one host to
device copy from pinned memory, no synchronisation) go to the GPU each step.

Triton compiles a kernel in a background thread (about a second); until it is ready the
engine runs torch's fused kernel or the math on lists, so no step waits for a compiler.
Needs ``triton`` (shipped with CUDA builds of torch); without it there are no generated
CUDA kernels and the engine uses the other paths.

Arithmetic follows torch's eager kernels (IEEE division and square root, torch's lerp,
NaN-propagating maximum); results agree with the math on lists to rounding (tested on
a GPU against the per-tensor path, and on the CPU through Triton's interpreter).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._builds import Builds
from .cpu import cache_dir
from .trace import Op, Program

#: Elements per program instance.
BLOCK = 2048
_COMPUTE = {
    torch.float32: "tl.float32",
    torch.float64: "tl.float64",
    torch.bfloat16: "tl.float32",
    torch.float16: "tl.float32",
}
_STORE = {
    torch.float32: "tl.float32",
    torch.float64: "tl.float64",
    torch.bfloat16: "tl.bfloat16",
    torch.float16: "tl.float16",
}


@functools.cache
def available() -> bool:
    """Whether Triton kernels can be generated here (triton imports; not disabled)."""
    if os.environ.get("DESCENT_NO_CODEGEN"):
        return False
    return importlib.util.find_spec("triton") is not None


def supports(dtype: torch.dtype) -> bool:
    """Whether kernels are generated for CUDA tensors of ``dtype`` (and triton exists)."""
    return dtype in _COMPUTE and available()


def _divide(x: str, y: str, c: str) -> str:
    # IEEE division: spelled out for float32 (Triton's "/" is approximate there), the
    # default for float64
    return f"tl.div_rn({x}, {y})" if c == "tl.float32" else f"({x}) / ({y})"


def _expression(op: Op, v: list[str], c: str) -> str:
    a = [v[i] for i in op.operands]
    s = [f"s{k}" for k in op.slots]
    name = op.name
    if name in ("add", "sub"):
        return f"{a[0]} {'+' if name == 'add' else '-'} {s[0]} * {a[1]}"
    if name == "mul":
        return f"{a[0]} * {a[1]}"
    if name == "div":
        return _divide(a[0], a[1], c)
    if name == "add_s":
        return f"{a[0]} + {s[0]}"
    if name == "sub_s":
        return f"{a[0]} - {s[0]}"
    if name == "mul_s":
        return f"{a[0]} * {s[0]}"
    if name == "div_s":  # float32: div_rn takes two blocks (the form measured on an H200)
        return _divide(a[0], f"{s[0]} + tl.zeros_like({a[0]})" if c == "tl.float32" else s[0], c)
    if name == "addcmul":
        return f"{a[0]} + {s[0]} * {a[1]} * {a[2]}"
    if name == "addcdiv":
        return f"{a[0]} + {_divide(f'{s[0]} * {a[1]}', a[2], c)}"
    if name == "lerp":
        return (
            f"tl.where({s[0]} < 0.5, {a[0]} + {s[0]} * ({a[1]} - {a[0]}), "
            f"{a[1]} - ({a[1]} - {a[0]}) * (1.0 - {s[0]}))"
        )
    if name == "maximum":
        return f"tl.maximum({a[0]}, {a[1]}, propagate_nan=tl.PropagateNan.ALL)"
    if name == "clamp_min":
        return f"tl.where({a[0]} != {a[0]}, {a[0]}, tl.maximum({a[0]}, {s[0]}))"
    if name == "clamp_max":
        return f"tl.where({a[0]} != {a[0]}, {a[0]}, tl.minimum({a[0]}, {s[0]}))"
    if name == "sqrt":
        return f"tl.sqrt_rn({a[0]})" if c == "tl.float32" else f"tl.sqrt({a[0]})"
    if name == "abs":
        return f"tl.abs({a[0]})"
    if name == "sign":
        # as torch.sign: 0 for NaN and for both zeros
        return f"tl.where({a[0]} > 0, 1.0, tl.where({a[0]} < 0, -1.0, 0.0)).to({c})"
    if name == "neg":
        return f"-{a[0]}"
    if name == "reciprocal":
        return _divide(f"1.0 + tl.zeros_like({a[0]})" if c == "tl.float32" else "1.0", a[0], c)
    if name == "zero":
        return f"tl.zeros([BLOCK], dtype={c})"
    if name in ("gt_s", "lt_s", "eq_s"):
        relation = {"gt_s": ">", "lt_s": "<", "eq_s": "=="}[name]
        return f"tl.where({a[0]} {relation} {s[0]}, 1.0, 0.0).to({c})"
    if name == "masked_fill":
        return f"tl.where({a[1]} != 0, {s[0]}, {a[0]})"
    if name == "clamp":
        return f"tl.where({a[0]} != {a[0]}, {a[0]}, tl.minimum(tl.maximum({a[0]}, {s[0]}), {s[1]}))"
    raise ValueError(f"descent.engine.cuda: no Triton form for operation {name!r}")


def source(program: Program, dtype: torch.dtype) -> str:
    """The Python source of the Triton kernel for ``program`` on tensors of ``dtype``."""
    compute, store = _COMPUTE[dtype], _STORE[dtype]
    inputs = len(program.inputs)
    read = {i for op in program.ops for i in op.operands}
    read |= {value for _, value in program.outputs if value < inputs}
    written = {name for name, _ in program.outputs}
    lines = [
        "import triton",
        "import triton.language as tl",
        "",
        "",
        "@triton.jit(do_not_specialize=['n'])",
        "def descent_kernel(table, n, chunk_tensor, chunk_start, numels, BLOCK: tl.constexpr):",
        "    pid = tl.program_id(0)",
        "    t = tl.load(chunk_tensor + pid)",
        "    offs = tl.load(chunk_start + pid) + tl.arange(0, BLOCK)",
        "    mask = offs < tl.load(numels + t)",
    ]
    for k in range(program.slots):  # scalars follow the address table, as float64 bits
        lines.append(
            f"    s{k} = tl.load(table + {inputs} * n + {k}).to(tl.float64, "
            f"bitcast=True).to({compute})"
        )
    for i, name in enumerate(program.inputs):
        if i in read or name in written:
            lines.append(f"    p{i} = tl.load(table + {i} * n + t).to(tl.pointer_type({store}))")
        if i in read:
            lines.append(f"    v{i} = tl.load(p{i} + offs, mask=mask).to({compute})")
    values = [f"v{i}" for i in range(inputs + len(program.ops))]
    for index, op in enumerate(program.ops):
        lines.append(f"    v{inputs + index} = {_expression(op, values, compute)}")
    position = {name: i for i, name in enumerate(program.inputs)}
    for name, value in program.outputs:
        lines.append(f"    tl.store(p{position[name]} + offs, v{value}.to({store}), mask=mask)")
    return "\n".join(lines) + "\n"


def _load(code: str) -> Any:
    """Import the kernel's source from a file (Triton reads a kernel's source to compile it)."""
    digest = hashlib.sha256(code.encode()).hexdigest()[:32]
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"triton_{digest}.py"
    if not path.exists():
        scratch = path.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_text(code)
        os.replace(scratch, path)
    name = f"descent_generated_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.descent_kernel


class _Staging:
    """Pinned host buffers for the per-step table, reused only once their copy is done."""

    def __init__(self, size: int, device: torch.device) -> None:
        pin = device.type == "cuda"
        self.host = [torch.empty(size, dtype=torch.int64, pin_memory=pin) for _ in range(4)]
        self.events: list[Any] = [None] * 4
        self.device = torch.empty(size, dtype=torch.int64, device=device)
        self.next = 0

    def upload(self, values: np.ndarray) -> Tensor:
        slot = self.next
        self.next = (slot + 1) % len(self.host)
        if self.events[slot] is not None:
            self.events[slot].synchronize()
        host = self.host[slot]
        host.numpy()[: len(values)] = values
        self.device.copy_(host, non_blocking=True)
        if self.device.is_cuda:
            event = torch.cuda.Event()
            event.record()
            self.events[slot] = event
        return self.device


class Kernel:
    """A compiled kernel for one program and dtype, with per-bucket launch tables."""

    def __init__(self, function: Any, inputs: int) -> None:
        self.function = function
        self.inputs = inputs

    def __call__(
        self,
        pointers: np.ndarray,
        n: int,
        offsets: np.ndarray,
        scalars: Sequence[float],
        cache: dict[str, Any],
        device: torch.device,
    ) -> None:
        """Run on ``n`` contiguous tensors per program input, on ``device``.

        ``pointers`` holds their data addresses, input by input; ``offsets`` the running
        element counts of the tensors; ``cache`` is kept by the caller per bucket (launch
        tables built once per layout live there).
        """
        key = (n, offsets.tobytes())
        if cache.get("key") != key:
            numels = np.diff(offsets)
            chunks = (numels + BLOCK - 1) // BLOCK
            chunk_tensor = np.repeat(np.arange(n, dtype=np.int32), chunks)
            starts = np.arange(int(chunks.sum()), dtype=np.int64) - np.repeat(
                np.cumsum(chunks) - chunks, chunks
            )
            cache.update(
                key=key,
                grid=(len(chunk_tensor),),
                chunk_tensor=torch.from_numpy(chunk_tensor).to(device),
                chunk_start=torch.from_numpy(starts * BLOCK).to(device),
                numels=torch.from_numpy(numels.astype(np.int64)).to(device),
            )
        size = self.inputs * n + len(scalars)
        staging = cache.get("staging")
        if staging is None or staging.device.numel() < size:
            staging = cache["staging"] = _Staging(size, device)
        table = np.empty(size, dtype=np.int64)
        table[: self.inputs * n] = pointers
        table[self.inputs * n :] = np.asarray(scalars, dtype=np.float64).view(np.int64)
        on_device = staging.upload(table)
        self.function[cache["grid"]](
            on_device, n, cache["chunk_tensor"], cache["chunk_start"], cache["numels"], BLOCK=BLOCK
        )


_builds: Builds[Kernel] = Builds(
    "descent-triton",
    "compiling a generated CUDA kernel "
    "failed; the engine uses torch's fused kernel or the math on "
    "lists instead",
)


def _compile(program: Program, dtype: torch.dtype, device: torch.device) -> Kernel:
    function = _load(source(program, dtype))
    kernel = Kernel(function, len(program.inputs))
    if device.type == "cuda":  # compile now, on a side stream, with a one-chunk launch
        with torch.cuda.device(device), torch.cuda.stream(torch.cuda.Stream(device)):
            dummy = [torch.zeros(1, dtype=dtype, device=device) for _ in program.inputs]
            pointers = np.array([t.data_ptr() for t in dummy], dtype=np.int64)
            kernel(pointers, 1, np.array([0, 1], dtype=np.int64), [0.0] * program.slots, {}, device)
            torch.cuda.current_stream(device).synchronize()
    return kernel


def kernel(
    program: Program, dtype: torch.dtype, device: torch.device, wait: bool = False
) -> Kernel | None:
    """The kernel for ``program``, ``dtype`` and ``device`` if it is compiled (compiling it
    in the background if not; with ``wait``, until it is). None until then, or if it
    cannot be compiled."""
    if dtype not in _COMPUTE or not available():
        return None
    return _builds.get(
        (program.key(), dtype, str(device)), lambda: _compile(program, dtype, device), wait
    )


__all__ = ["BLOCK", "Kernel", "available", "kernel", "source", "supports"]
