"""Generated CPU kernels: a rule's traced program as one C loop over all tensors of a bucket.

For a program (see :mod:`.trace`) and a dtype (float32 or float64) this module writes a
small C function that, for every element of every tensor of a bucket, loads the inputs
once, applies the operations in registers and stores the state entries and the
parameter once: one pass over memory, where the math on lists makes one pass per
operation. The tensors stay where they are: the kernel reads a table of their addresses
(parameters and gradients are looked up at every step, so a re-bound parameter is
simply read where it now is).

The C compiler (``cc``, ``gcc`` or ``clang``, whichever is found; none means no generated
kernels) builds a kernel in a background thread in well under a second; until it is
ready the engine keeps running the math on lists, so no step ever waits for a compiler.
Built kernels are cached on disk (``$DESCENT_CACHE_DIR`` or ``~/.cache/descent``), keyed by
a hash of their source and the compiler's flags, and loaded with :mod:`ctypes`.

A bucket of at least :data:`PARALLEL_MIN_NUMEL` elements is split across torch's intra-op
threads. Where torch runs on GNU OpenMP (``libgomp.so.1``, Linux builds), the kernel is
built with ``-fopenmp`` and runs in torch's own OpenMP thread team: the same runtime,
already loaded, so no second thread pool competes with torch's, and no hand-off through
Python. Elsewhere (another OpenMP runtime, or a compiler without OpenMP) the kernel is
called from several Python threads at once, each on its own range of elements (ctypes
releases the GIL), a slower hand-off that pays off only on larger buckets
(:data:`THREADS_MIN_NUMEL`).

Arithmetic is the eager operations' (each scalar is rounded to the tensor's dtype, no
contraction into fused multiply-adds), so float64 results agree with the math on lists
to a few ulps (tested: <= 1e-12 relative after many steps), not bit for bit.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._builds import Builds
from .trace import Op, Program

_C_TYPES = {torch.float32: "float", torch.float64: "double"}
# -fno-trapping-math lets the compiler vectorise loops with selects (sign, comparisons):
# it changes no value, only whether floating-point exceptions could trap.
_FLAGS = [
    "-O3",
    "-march=native",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-ffp-contract=off",
    "-fPIC",
    "-shared",
    "-std=c99",
]
#: Below this many elements a bucket is stepped by one thread (one more thread per this
#: many elements, up to torch's intra-op threads), when the kernel runs in OpenMP's team.
PARALLEL_MIN_NUMEL = 1 << 15
#: The same threshold when the kernel is split across Python threads (no OpenMP): each
#: hand-off costs tens of microseconds.
THREADS_MIN_NUMEL = 1 << 21


@functools.cache
def compiler() -> str | None:
    """The C compiler generated kernels are built with, or None (then none are built)."""
    if os.environ.get("DESCENT_NO_CODEGEN"):
        return None
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@functools.cache
def openmp() -> bool:
    """Whether kernels are built with OpenMP: torch runs on GNU OpenMP, loaded in this
    process as ``libgomp.so.1`` (the name a kernel built with ``-fopenmp`` asks for, so
    the kernel shares torch's runtime and thread team), and ``$DESCENT_NO_OPENMP`` is
    not set. Other copies of libgomp under other names (scikit-learn ships one) do not
    matter: the kernel does not use them. Where torch ships its own libgomp under
    another name, the kernel would not share it: no OpenMP then."""
    if os.environ.get("DESCENT_NO_OPENMP"):
        return False
    if "OpenMP" not in torch.__config__.parallel_info():
        return False
    bundled = {path.name for path in (Path(torch.__file__).parent / "lib").glob("libgomp*")}
    if bundled and "libgomp.so.1" not in bundled:
        return False
    try:
        with open("/proc/self/maps") as maps:
            names = {Path(line.split()[-1]).name for line in maps}
    except OSError:
        return False
    return "libgomp.so.1" in names


#: Compilers that failed a build with ``-fopenmp`` and then built it without: their
#: later kernels are built without it at once.
_WITHOUT_OPENMP: set[str] = set()


def flags() -> list[str]:
    """The C compiler's flags for kernels in this process."""
    if openmp() and compiler() not in _WITHOUT_OPENMP:
        return [*_FLAGS, "-fopenmp"]
    return list(_FLAGS)


def cache_dir() -> Path:
    """Where built kernels are kept between processes."""
    root = os.environ.get("DESCENT_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "descent" / "kernels"


# ---------------------------------------------------------------------- source


def _expression(op: Op, v: list[str], t: str) -> str:
    a = [v[i] for i in op.operands]
    s = [f"c{k}" for k in op.slots]  # the scalars, read once before the loops
    name = op.name
    if name in ("add", "sub"):
        sign = "+" if name == "add" else "-"
        return f"{a[0]} {sign} {s[0]} * {a[1]}"
    if name in ("mul", "div"):
        return f"{a[0]} {'*' if name == 'mul' else '/'} {a[1]}"
    if name in ("add_s", "sub_s", "mul_s", "div_s"):
        return f"{a[0]} {dict(add_s='+', sub_s='-', mul_s='*', div_s='/')[name]} {s[0]}"
    if name == "addcmul":
        return f"{a[0]} + {s[0]} * {a[1]} * {a[2]}"
    if name == "addcdiv":
        return f"{a[0]} + {s[0]} * {a[1]} / {a[2]}"
    if name == "lerp":  # torch's two-sided formula, exact at both ends
        return (
            f"({s[0]} < ({t})0.5 ? {a[0]} + {s[0]} * ({a[1]} - {a[0]}) "
            f": {a[1]} - ({a[1]} - {a[0]}) * (({t})1 - {s[0]}))"
        )
    # selects of two values each (helpers in the source's prelude): nested conditional
    # expressions keep the compiler from vectorising the loop
    if name == "maximum":  # NaN-propagating, as torch.maximum
        return f"descent_maximum({a[0]}, {a[1]})"
    if name == "clamp_min":
        return f"descent_clamp_min({a[0]}, {s[0]})"
    if name == "clamp_max":  # torch's minimum with a number, NaN-propagating
        return f"descent_clamp_max({a[0]}, {s[0]})"
    if name == "sqrt":
        return f"{'sqrtf' if t == 'float' else 'sqrt'}({a[0]})"
    if name == "abs":
        return f"{'fabsf' if t == 'float' else 'fabs'}({a[0]})"
    if name == "sign":  # as torch.sign: +0.0 for NaN and for both zeros
        return f"descent_sign({a[0]})"
    if name == "neg":
        return f"-{a[0]}"
    if name == "reciprocal":
        return f"({t})1 / {a[0]}"
    if name == "zero":
        return f"({t})0"
    if name in ("gt_s", "lt_s", "eq_s"):
        relation = {"gt_s": ">", "lt_s": "<", "eq_s": "=="}[name]
        return f"({a[0]} {relation} {s[0]} ? ({t})1 : ({t})0)"
    if name == "masked_fill":
        return f"({a[1]} != 0 ? {s[0]} : {a[0]})"
    if name == "clamp":  # torch's min(max(a, low), high), NaN-propagating
        return f"descent_clamp_max(descent_clamp_min({a[0]}, {s[0]}), {s[1]})"
    raise ValueError(f"descent.engine.cpu: no C form for operation {name!r}")


def _helpers(t: str) -> list[str]:
    """The prelude's selects: each a chain of two-way selects, which the compiler turns
    into vector blends; NaN propagates as in torch."""
    return [
        f"static inline {t} descent_maximum({t} a, {t} b) {{",
        f"    const {t} larger = a > b ? a : b;",
        f"    const {t} either = b != b ? b : larger;",
        "    return a != a ? a : either;",
        "}",
        f"static inline {t} descent_clamp_min({t} a, {t} low) {{",
        f"    const {t} clamped = a > low ? a : low;",
        "    return a != a ? a : clamped;",
        "}",
        f"static inline {t} descent_clamp_max({t} a, {t} high) {{",
        f"    const {t} clamped = a < high ? a : high;",
        "    return a != a ? a : clamped;",
        "}",
        f"static inline {t} descent_sign({t} a) {{",  # 0 for NaN and both zeros, as torch
        f"    const {t} negative = a < 0 ? ({t})-1 : ({t})0;",
        f"    return a > 0 ? ({t})1 : negative;",
        "}",
    ]


def source(program: Program, dtype: torch.dtype) -> str:
    """The C source of the kernel for ``program`` on tensors of ``dtype``."""
    t = _C_TYPES[dtype]
    read = {i for op in program.ops for i in op.operands}
    read |= {value for _, value in program.outputs if value < len(program.inputs)}
    lines = [
        f"    {t}* restrict p{i} = ({t}*)ptrs[{i} * n + k];" for i in range(len(program.inputs))
    ]
    body = [f"        const {t} v{i} = p{i}[j];" for i in range(len(program.inputs)) if i in read]
    values = [f"v{i}" for i in range(len(program.inputs) + len(program.ops))]
    for index, op in enumerate(program.ops):
        number = len(program.inputs) + index
        body.append(f"        const {t} v{number} = {_expression(op, values, t)};")
    position = {name: i for i, name in enumerate(program.inputs)}
    body += [f"        p{position[name]}[j] = v{value};" for name, value in program.outputs]
    return "\n".join(
        [
            "#include <math.h>",
            "#include <stdint.h>",
            "/* descent generated kernel: " + ", ".join(program.inputs) + " */",
            *_helpers(t),
            "void descent_kernel(const int64_t* offsets, int64_t n, void* const* ptrs,",
            "                    const double* s, int64_t begin, int64_t end) {",
            # read before the loops: a scalar read in one arm of a select would be a
            # conditional load, which keeps the compiler from vectorising the loop
            *[f"    const {t} c{k} = ({t})s[{k}];" for k in range(program.slots)],
            "    int64_t lo = 0, hi = n;",
            "    while (hi - lo > 1) {",  # the tensor holding element `begin`
            "        int64_t mid = (lo + hi) / 2;",
            "        if (offsets[mid] <= begin) lo = mid; else hi = mid;",
            "    }",
            "    for (int64_t k = lo; k < n && offsets[k] < end; k++) {",
            "        int64_t first = offsets[k] > begin ? 0 : begin - offsets[k];",
            "        int64_t stop = (offsets[k + 1] < end ? offsets[k + 1] : end) - offsets[k];",
            *lines,
            "        for (int64_t j = first; j < stop; j++) {",
            *["    " + line for line in body],
            "        }",
            "    }",
            "}",
            "#ifdef _OPENMP",  # built with -fopenmp: split the elements across the team
            "#include <omp.h>",
            "void descent_kernel_parallel(const int64_t* offsets, int64_t n, void* const* ptrs,",
            "                             const double* s, int64_t total, int threads) {",
            "    #pragma omp parallel num_threads(threads)",
            "    {",
            "        int64_t t = omp_get_thread_num(), count = omp_get_num_threads();",
            "        descent_kernel(offsets, n, ptrs, s, total * t / count,",
            "                       total * (t + 1) / count);",
            "    }",
            "}",
            "#endif",
            "",
        ]
    )


# ---------------------------------------------------------------------- building


def _library(code: str, options: list[str]) -> Path:
    """The shared library built from ``code`` with ``options`` (from the disk cache when
    it was built before)."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler")
    digest = hashlib.sha256((code + " ".join(options) + cc + sys.platform).encode()).hexdigest()
    directory = cache_dir()
    library = directory / f"kernel-{digest[:32]}.so"
    if not library.exists():
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            source_path = Path(scratch) / "kernel.c"
            source_path.write_text(code)
            built = Path(scratch) / "kernel.so"
            subprocess.run(
                [cc, *options, str(source_path), "-o", str(built), "-lm"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            os.replace(built, library)  # atomic: another process may be building it too
    return library


def _build(code: str) -> tuple[Callable[..., None], Callable[..., None] | None]:
    """The built kernel's functions: the one over a range of elements, and the one that
    splits all elements across an OpenMP team (None when built without OpenMP)."""
    options = flags()
    try:
        library = _library(code, options)
    except subprocess.CalledProcessError:
        if "-fopenmp" not in options:
            raise
        options = list(_FLAGS)  # a compiler without OpenMP: Python threads split the work
        library = _library(code, options)
        _WITHOUT_OPENMP.add(str(compiler()))
    loaded = ctypes.CDLL(str(library))
    function = loaded.descent_kernel
    function.restype = None
    function.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
    ]
    if "-fopenmp" not in options:
        return function, None
    parallel = loaded.descent_kernel_parallel
    parallel.restype = None
    parallel.argtypes = [*function.argtypes[:4], ctypes.c_int64, ctypes.c_int]
    return function, parallel


class Kernel:
    """A built kernel for one program and dtype."""

    def __init__(
        self,
        function: Callable[..., None],
        inputs: int,
        parallel: Callable[..., None] | None = None,
    ) -> None:
        self.function = function
        self.parallel = parallel
        self.inputs = inputs

    def __call__(
        self,
        pointers: np.ndarray,
        n: int,
        offsets: np.ndarray,
        scalars: Sequence[float],
        cache: dict[str, Any] | None = None,
        device: Any = None,
    ) -> None:
        """Run on ``n`` contiguous tensors per program input.

        ``pointers`` holds their data addresses, input by input (``inputs * n`` entries,
        in the order of the program's inputs); ``offsets`` the running element counts of
        the tensors (``n + 1`` entries); ``scalars`` this step's scalar slots.
        """
        values = np.asarray(scalars, dtype=np.float64)
        total = int(offsets[-1])
        arguments = (offsets.ctypes.data, n, pointers.ctypes.data, values.ctypes.data)
        grain = PARALLEL_MIN_NUMEL if self.parallel is not None else THREADS_MIN_NUMEL
        threads = max(1, min(torch.get_num_threads(), total // grain))
        if threads == 1:
            self.function(*arguments, 0, total)
            return
        if self.parallel is not None:
            self.parallel(*arguments, total, threads)
            return
        bounds = [total * i // threads for i in range(threads + 1)]
        futures = [
            _pool().submit(self.function, *arguments, bounds[i], bounds[i + 1])
            for i in range(1, threads)
        ]
        self.function(*arguments, bounds[0], bounds[1])
        for future in futures:
            future.result()


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max(1, torch.get_num_threads() - 1), thread_name_prefix="descent-kernel"
    )


_builds: Builds[Kernel] = Builds(
    "descent-build", "building a generated kernel failed; the rule's math runs on lists instead"
)


def supports(dtype: torch.dtype) -> bool:
    """Whether kernels are generated for tensors of ``dtype`` (and a compiler exists)."""
    return dtype in _C_TYPES and compiler() is not None


def kernel(
    program: Program, dtype: torch.dtype, device: torch.device | None = None, wait: bool = False
) -> Kernel | None:
    """The kernel for ``program`` and ``dtype`` if it is built (building it in the background
    if not; with ``wait``, until it is built). None until then, or if it cannot be built."""
    if dtype not in _C_TYPES or compiler() is None:
        return None

    def build() -> Kernel:  # the source is written only when the kernel is first asked for
        function, parallel = _build(source(program, dtype))
        return Kernel(function, len(program.inputs), parallel)

    return _builds.get((program.key(), dtype), build, wait)


def build_error(program: Program, dtype: torch.dtype) -> BaseException | None:
    """Why the kernel for ``program`` could not be built (None if it was, or is building)."""
    return _builds.error((program.key(), dtype))


__all__ = [
    "PARALLEL_MIN_NUMEL",
    "THREADS_MIN_NUMEL",
    "Kernel",
    "build_error",
    "cache_dir",
    "compiler",
    "flags",
    "kernel",
    "openmp",
    "source",
    "supports",
]
