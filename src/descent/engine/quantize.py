r"""Low-precision optimizer state and parameters: state in 16, 8 or 4 bits, and bfloat16
parameters written with stochastic rounding or Kahan compensation.

Every elementwise rule takes three options (group hyperparameters, set in the
constructor or per param group; the math of the rule is not touched):

``state_dtype``
    ``None`` (default): each state tensor has its parameter's dtype, as in torch.optim.
    ``"float32"``: state in float32 whatever the parameter's dtype (a bfloat16 model
    with full-precision moments).
    ``"bf16"``: state in bfloat16, 2 bytes an element, written back with stochastic
    rounding (an average such as Adam's ``exp_avg_sq``, with ``beta2 = 0.999``, changes
    by 0.1 % a step, less than half a bfloat16 step, and would never move if rounded to
    nearest).
    ``"int8"``: block-wise dynamic quantisation (Dettmers et al. 2022): each block of
    ``state_block_size`` elements keeps its absolute maximum (a float32 scale) and one
    byte per element, the index of the nearest value of the *dynamic tree* map
    (Dettmers 2016) in the block scaled to [-1, 1]; the signed map for state that
    changes sign (momentum), the unsigned one, with twice the resolution, for state
    that cannot be negative (second moments, sums of squares), where a positive value
    is never rounded to zero (see ``_Code``: the zero-point problem).
    ``"int4"``: the same with half a byte an element (Li, Chen & Zhu 2023): the signed
    dynamic map with 3 exponent bits for signed state, and for non-negative state the
    linear map ``{1/16, ..., 16/16}`` without zero (a second moment rounded to zero would
    divide by ``eps`` alone: the "zero-point problem" of that paper).
``state_block_size``
    elements per quantisation block, each with its float32 scale (default 256; an even
    number from 2 to 2**20). bitsandbytes uses 256, torchao 256 (8-bit) and 128 (4-bit).
``param_rounding``
    how an update is written into a bfloat16 or float16 parameter (other parameters are
    unaffected): ``"nearest"`` (default; small updates are lost to rounding),
    ``"stochastic"`` (rounded up or down with probabilities that make the expected
    value exact, so training in pure bfloat16 follows float32 training; Gupta et al.
    2015, Zamirai et al. 2020), or ``"kahan"`` (Kahan-compensated summation: the part of
    each update that rounding lost is kept, in the parameter's dtype, as state
    ``"kahan_compensation"`` and added to the next one; Zamirai et al. 2020).

With any of these set, the engine runs the rule's own math on full-precision
temporaries: for each chunk of at most :data:`CHUNK_NUMEL` elements it decodes the
state into float32 (float64 for float64 parameters), casts low-precision parameters and
gradients up, runs the math, and writes everything back in its stored form. Memory
beyond the stored state is bounded by the chunk, not by the model: the temporaries of a
chunk live in buffers kept between steps (per thread and device, at most about 70 MB
with float32 or bfloat16 parameters), since allocating them afresh each step costs more
than the arithmetic. torch's fused kernels
need full state, so such buckets always take the math path
(:func:`descent.engine.choose_path`).

**Small tensors**: a parameter of fewer than :data:`MIN_QUANTIZED_NUMEL` (4,096)
elements keeps its state in full precision (float32, or the parameter's dtype if
wider) under ``"bf16"``, ``"int8"`` and ``"int4"``, as bitsandbytes (``min_8bit_size``)
and torchao do: biases and norms are few bytes and sensitive. Complex parameters always
keep their state in their own dtype (no reference quantises complex state).

**Stored form**, in ``optimizer.state[param]`` and so in state dicts and checkpoints,
as it is (never upcast): a full-precision or ``"bf16"`` entry is a tensor shaped like
the parameter; an ``"int8"`` or ``"int4"`` entry is a dict::

    {"codes": uint8 tensor,       # n bytes (int8), or ceil(n / 2) (int4: element 2i in
                                  # the high half of byte i, 2i + 1 in the low half)
     "absmax": float32 tensor,    # ceil(n / block_size) scales, one per block
     "bits": 8 or 4, "signed": bool, "block_size": int}

for a parameter of n elements in row-major order; element i decodes to
``map[codes[i]] * absmax[i // block_size]`` where ``map`` is :func:`code_values`
``(bits, signed)``. Scalar state (``step``) is unchanged.

**Loading and migration.** ``load_state_dict`` checks that each saved entry has exactly
the form its saved group's options describe (codes and scales of the right lengths, the
same block size, bits and map) and refuses anything else. The state is then stored in
*this* optimizer's form: a float32 state dict (descent's or torch's) loaded into an
optimizer made with ``state_dtype="int8"`` is quantised on load, and an 8-bit one loaded
into a float32 optimizer is decoded back; with the same options, loading is exact.
Setting the option on a live optimizer (``opt.state_dtype = "int4"``) converts its
state at the next step (or at ``state_dict()``). :mod:`descent.functional` keeps its
state in full precision: ``state_from_optimizer`` decodes a quantised optimizer's
state and ``load_into_optimizer`` stores it in the optimizer's form.

**Memory**: :func:`state_bytes` (``opt.state_bytes()``) counts the bytes of every state
tensor. Adam on large tensors keeps 8 bytes a parameter in float32, 4 in ``"bf16"``,
2 + 8 / block_size in ``"int8"`` and 1 + 8 / block_size in ``"int4"``.

References: Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise
Quantization", ICLR 2022; Dettmers, "8-Bit Approximations for Parallelism in Deep
Learning", ICLR 2016 (the dynamic tree map); Li, Chen & Zhu, "Memory Efficient
Optimizers with 4-bit States", NeurIPS 2023; Gupta, Agrawal, Gopalakrishnan &
Narayanan, "Deep Learning with Limited Numerical Precision", ICML 2015 (stochastic
rounding); Zamirai, Zhang, De Sa & Rowley, "Revisiting BFloat16 Training", 2020
(stochastic rounding and Kahan summation for bfloat16 weights).
"""

from __future__ import annotations

import functools
import math
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .tensors import TensorList

#: The values of the ``state_dtype`` option.
STATE_DTYPES = (None, "float32", "bf16", "int8", "int4")
#: The values of the ``param_rounding`` option.
PARAM_ROUNDINGS = ("nearest", "stochastic", "kahan")
#: Parameters with fewer elements keep full-precision state under "bf16", "int8", "int4".
MIN_QUANTIZED_NUMEL = 4096
#: The default number of elements per quantisation block.
DEFAULT_BLOCK_SIZE = 256
#: Elements decoded at a time (per state entry) while a step runs.
CHUNK_NUMEL = 1 << 21
#: The state key of the Kahan compensation of a parameter (``param_rounding="kahan"``).
COMPENSATION = "kahan_compensation"
#: The three options, with their defaults.
OPTIONS = {"state_dtype": None, "state_block_size": DEFAULT_BLOCK_SIZE, "param_rounding": "nearest"}

_LOW_FLOATS = (torch.bfloat16, torch.float16)
_STORED_KEYS = frozenset({"codes", "absmax", "bits", "signed", "block_size"})
_TINY = 1e-38  # the smallest scale divided by, as bitsandbytes


# ---------------------------------------------------------------------- option checks


def check_state_dtype(owner: str, name: str, value: Any) -> Any:
    """One of :data:`STATE_DTYPES`."""
    if value not in STATE_DTYPES or isinstance(value, bool):
        raise ValueError(
            f"{owner}: {name}={value!r} is invalid; expected one of "
            f"{', '.join(map(repr, STATE_DTYPES))}"
        )
    return value


def check_block_size(owner: str, name: str, value: Any) -> Any:
    """An even integer from 2 to 2**20."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{owner}: {name}={value!r} has type {type(value).__name__}; expected "
            "an even integer from 2 to 2**20"
        )
    if value < 2 or value > 1 << 20 or value % 2:
        raise ValueError(
            f"{owner}: {name}={value!r} is invalid; expected an even integer from 2 to 2**20"
        )
    return value


def check_param_rounding(owner: str, name: str, value: Any) -> Any:
    """One of :data:`PARAM_ROUNDINGS`."""
    if value not in PARAM_ROUNDINGS:
        raise ValueError(
            f"{owner}: {name}={value!r} is invalid; expected one of "
            f"{', '.join(map(repr, PARAM_ROUNDINGS))}"
        )
    return value


# ---------------------------------------------------------------------- the maps


def dynamic_map(signed: bool, exponent_bits: int, total_bits: int) -> list[float]:
    """The dynamic tree map (Dettmers 2016) as bitsandbytes and torchao build it.

    Decade ``10**(i - exponent_bits + 1)`` for ``i`` in ``range(exponent_bits)`` holds
    the midpoints of ``2**j`` equal parts of [0.1, 1] scaled by it, with
    ``j = i + total_bits - 1 - exponent_bits`` (one more for an unsigned map, which
    has no sign bit), mirrored for a signed map; then 0 and 1. Sorted, ``2**total_bits``
    values in [-1, 1].
    """
    values: list[float] = []
    free_bits = total_bits - 1 - exponent_bits  # bits of a fraction besides the exponent's

    def decade(scale: float, parts: int) -> None:  # in float32, as the references compute
        edges = torch.linspace(0.1, 1, parts + 1, dtype=torch.float32)
        middles = (edges[:-1] + edges[1:]) / 2.0
        values.extend((scale * middles).tolist())
        if signed:
            values.extend((-scale * middles).tolist())

    for i in range(exponent_bits):
        decade(10.0 ** (i - exponent_bits + 1), 2 ** (i + free_bits + (0 if signed else 1)))
    if free_bits > 0:  # fractions when all exponent bits are zero
        decade(10.0**0, 2**free_bits - 1)
    values += [0.0, 1.0]
    if len(values) != 2**total_bits:
        raise ValueError(
            f"dynamic_map: {len(values)} values for {total_bits} bits; expected "
            f"{2**total_bits} (exponent_bits={exponent_bits} does not fit)"
        )
    return sorted(values)


def code_values(bits: int, signed: bool) -> Tensor:
    """The sorted float32 values codes index, for ``bits`` 8 or 4, signed or not."""
    return _code(bits, signed, torch.device("cpu")).values


@dataclass(frozen=True)
class _Code:
    """A quantisation map with its tables for nearest-value lookup.

    Values round to the nearest map value, ties to the lower one (as
    ``torch.bucketize`` over the midpoints), except that in the unsigned 8-bit map a
    positive value never rounds to zero but at least to the smallest positive value
    (3.25e-7 of the block's maximum): a second moment rounded to zero while its first
    moment is not would divide by ``eps`` alone and make a huge step, the "zero-point
    problem" of Li et al. 2023 that their 4-bit map avoids by having no zero. (Rarely
    active features, such as the corner pixels of the digits data, hit it with the
    maps' plain nearest rounding.)

    The floats that share their upper 16 bits (a bfloat16 truncation) form an interval
    that holds at most one rounding boundary (checked when the tables are built). The
    index is the count of boundaries below the interval (``below``) plus one if ``x``
    is above the boundary inside it (``threshold``, +inf when there is none).
    """

    bits: int
    values: Tensor  # the sorted float32 map
    pairs: Tensor  # (256, 2) float32: the two values a byte of packed 4-bit codes holds
    below: Tensor  # uint8, by upper 16 bits
    threshold: Tensor  # float32, by upper 16 bits

    def encode_into(self, out: Tensor, x: Tensor) -> None:
        """Write into contiguous uint8 ``out`` the index of the nearest map value of each
        element of contiguous float32 ``x``."""
        n = x.numel()
        upper = _scratch("upper", n, torch.int32, x.device)
        if sys.byteorder == "little":
            upper.copy_(x.view(torch.uint16)[1::2])
        else:  # pragma: no cover - no big-endian machine runs the tests
            torch.bitwise_right_shift(x.view(torch.int32), 16, out=upper).bitwise_and_(0xFFFF)
        threshold = _scratch("threshold", n, torch.float32, x.device)
        torch.index_select(self.threshold, 0, upper, out=threshold)
        above = _scratch("above", n, torch.bool, x.device)
        torch.gt(x, threshold, out=above)
        torch.index_select(self.below, 0, upper, out=out)
        out.add_(above.view(torch.uint8))


@functools.cache
def _code(bits: int, signed: bool, device: torch.device) -> _Code:
    if bits == 8:
        values = dynamic_map(signed, 7, 8)
    elif signed:
        values = dynamic_map(True, 3, 4)
    else:
        values = [i / 16 for i in range(1, 17)]  # linear, no zero (Li et al. 2023)
    table = torch.tensor(values, dtype=torch.float32)
    bounds = (table[:-1] + table[1:]) / 2
    if values[0] == 0.0:  # a positive value is never rounded to zero (see _Code)
        bounds[0] = 0.0
    upper = torch.arange(1 << 16, dtype=torch.int64) << 16
    ends = [
        (pattern - (pattern >= 1 << 31).long() * (1 << 32)).to(torch.int32).view(torch.float32)
        for pattern in (upper, upper + 0xFFFF)
    ]
    low, high = torch.minimum(*ends), torch.maximum(*ends)
    finite = ~(low.isnan() | high.isnan())
    below = torch.where(finite, torch.searchsorted(bounds, low.nan_to_num(0.0)), 0)
    inside = torch.searchsorted(bounds, high.nan_to_num(0.0), right=True) - below
    if bool((inside[finite] > 1).any()):  # pragma: no cover - a property of the maps
        raise AssertionError("quantize: a bfloat16 interval holds two midpoints of the map")
    padded = torch.cat([bounds, torch.tensor([math.inf])])
    threshold = torch.where(finite & (inside == 1), padded[below], math.inf)
    codes = torch.arange(256)
    pairs = table[torch.stack((codes >> 4, codes & 15), dim=-1) % len(table)]
    return _Code(
        bits,
        table.to(device),
        pairs.to(device),
        below.to(torch.uint8).to(device),
        threshold.to(device),
    )


# ---------------------------------------------------------------------- quantisation


def _blocks(n: int, block_size: int) -> int:
    return -(-n // block_size)


def _packed(n: int, bits: int) -> int:
    return n if bits == 8 else -(-n // 2)


_workspace = threading.local()


def _scratch(role: Any, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A flat buffer of ``n`` elements for temporaries of one kind (``role``), kept
    between calls in this thread: fresh allocations of chunk-sized temporaries, each
    first touched page by page, cost more than the arithmetic on them."""
    buffers: dict[tuple[Any, torch.dtype, torch.device], Tensor] = _workspace.__dict__.setdefault(
        "buffers", {}
    )
    key = (role, dtype, device)
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < n:
        buffer = buffers[key] = torch.empty(n, dtype=dtype, device=device)
    return buffer[:n]


def quantize(
    tensor: Tensor, *, bits: int, signed: bool, block_size: int = DEFAULT_BLOCK_SIZE
) -> dict[str, Any]:
    """``tensor``'s values in the stored form of a quantised state entry (see above).

    Example::

        stored = quantize(torch.randn(4096), bits=8, signed=True)
        approx = dequantize(stored, 4096)
    """
    if bits not in (8, 4):
        raise ValueError(f"quantize: bits={bits!r} is invalid; expected 8 or 4")
    check_block_size("quantize", "block_size", block_size)
    n = tensor.numel()
    stored = _empty(n, bits, signed, block_size, tensor.device)
    _encode_into(stored, 0, tensor.detach().reshape(-1).to(torch.float32, copy=True))
    return stored


def dequantize(stored: Mapping[str, Any], numel: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``numel`` values a quantised state entry holds, as a flat tensor of ``dtype``."""
    return _decode(stored, 0, numel, dtype)


def _empty(
    n: int, bits: int, signed: bool, block_size: int, device: torch.device
) -> dict[str, Any]:
    return {
        "codes": torch.zeros(_packed(n, bits), dtype=torch.uint8, device=device),
        "absmax": torch.zeros(_blocks(n, block_size), dtype=torch.float32, device=device),
        "bits": bits,
        "signed": signed,
        "block_size": block_size,
    }


def _decode(
    stored: Mapping[str, Any], start: int, end: int, dtype: torch.dtype, out: Tensor | None = None
) -> Tensor:
    """Elements ``start:end`` of a quantised entry (``start`` a multiple of its block
    size), as a contiguous tensor of ``dtype``: ``out`` (of ``end - start`` elements)
    if given, else a new one."""
    bits, block = stored["bits"], stored["block_size"]
    codes = stored["codes"]
    code = _code(bits, stored["signed"], codes.device)
    n = end - start
    if out is None or dtype != torch.float32:
        values = torch.empty(n + n % 2, dtype=torch.float32, device=codes.device)[:n]
    else:
        values = out
    if bits == 8:
        index = _scratch("index", n, torch.int32, codes.device)
        torch.index_select(code.values, 0, index.copy_(codes[start:end]), out=values)
    else:
        packed = codes[start // 2 : -(-end // 2)]
        index = _scratch("index", len(packed), torch.int32, codes.device).copy_(packed)
        pairs = n // 2
        torch.index_select(code.pairs, 0, index[:pairs], out=values[: 2 * pairs].view(-1, 2))
        if n % 2:
            values[-1:].copy_(code.pairs[index[-1:].long(), 0])
    if dtype != torch.float32:
        values = values.to(dtype) if out is None else out.copy_(values)
    absmax = stored["absmax"][start // block : -(-end // block)]
    full = n - n % block
    if full:
        values[:full].view(-1, block).mul_(absmax[: full // block, None])
    if n > full:
        values[full:].mul_(absmax[-1])
    return values


def _absmax(rows: Tensor) -> Tensor:
    """The largest absolute value of each row (two reductions, no temporary)."""
    return torch.maximum(rows.amax(dim=1), rows.amin(dim=1).neg_())


def _encode_into(stored: Mapping[str, Any], start: int, values: Tensor) -> None:
    """Quantise the flat ``values`` into elements ``start:start + len`` of a stored
    entry (``start`` a multiple of its block size); ``values`` is overwritten."""
    bits, block = stored["bits"], stored["block_size"]
    n = values.numel()
    if values.dtype != torch.float32:
        values = values.float()
    full = n - n % block
    first = start // block
    absmax = stored["absmax"]
    if full:
        rows = values[:full].view(-1, block)
        scale = _absmax(rows)
        absmax[first : first + full // block].copy_(scale)
        rows.mul_(scale.clamp_(min=_TINY).reciprocal_()[:, None])
    if n > full:
        tail = values[full:].view(1, -1)
        scale = _absmax(tail)
        absmax[first + full // block].copy_(scale[0])
        tail.mul_(scale.clamp_(min=_TINY).reciprocal_()[:, None])
    code = _code(bits, stored["signed"], values.device)
    codes = stored["codes"]
    if bits == 8:
        code.encode_into(codes[start : start + n], values)
    else:
        indices = _scratch("indices", n + n % 2, torch.uint8, values.device)
        indices[n:].zero_()
        code.encode_into(indices[:n], values)
        pairs = indices.view(-1, 2)
        packed = codes[start // 2 : start // 2 + len(pairs)]
        torch.add(pairs[:, 1], pairs[:, 0], alpha=16, out=packed)


# ---------------------------------------------------------------------- rounding


def stochastic_round(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` (float32 or wider) rounded to ``dtype`` (bfloat16 or float16) up or down at
    random, with the probabilities that make the expected value ``x`` (from torch's
    global generator). Infinities and the NaNs arithmetic makes are kept (a bfloat16
    result of a NaN whose payload fills its upper mantissa bits, which no operation
    produces, is not)."""
    if x.dtype != torch.float32:
        x = x.float()
    if dtype == torch.bfloat16:
        return _noisy_bfloat16(
            x.contiguous(), torch.empty(x.shape, dtype=torch.int32, device=x.device)
        ).to(dtype)
    nearest = x.to(dtype)
    error = x - nearest.float()
    other = torch.nextafter(nearest, torch.where(error > 0, math.inf, -math.inf).to(dtype))
    gap = other.float() - nearest.float()
    chance = torch.where(gap != 0, error / gap, 0.0)
    return torch.where(torch.rand_like(chance) < chance, other, nearest)


# ---------------------------------------------------------------------- forms


Form = torch.dtype | tuple[int, bool, int]
"""How a state entry is stored: a dtype, or ``(bits, signed, block_size)``."""


@dataclass(frozen=True)
class Options:
    """A group's storage options (see the module docstring)."""

    state_dtype: str | None = None
    block_size: int = DEFAULT_BLOCK_SIZE
    param_rounding: str = "nearest"

    @classmethod
    def of(cls, group: Mapping[str, Any]) -> Options:
        """The options of a param group (defaults for those it lacks)."""
        return cls(
            group.get("state_dtype"),
            group.get("state_block_size", DEFAULT_BLOCK_SIZE),
            group.get("param_rounding", "nearest"),
        )

    def rounds(self, param: Tensor) -> bool:
        """Whether updates of ``param`` are rounded other than to nearest."""
        return self.param_rounding != "nearest" and param.dtype in _LOW_FLOATS

    def applies(self, param: Tensor) -> bool:
        """Whether ``param``'s update runs on full-precision temporaries (so not on a
        fused kernel): its state is stored otherwise than in its dtype, or its update
        is rounded other than to nearest."""
        if param.is_complex():
            return False
        if self.state_dtype is None or (
            self.state_dtype == "float32" and param.dtype == torch.float32
        ):
            return self.rounds(param)
        return True

    def form(self, param: Tensor, signed: bool) -> Form:
        """How a state entry of ``param`` is stored: a dtype, or ``(bits, signed,
        block_size)`` for a quantised one."""
        if self.state_dtype is None or param.is_complex():
            return param.dtype
        if self.state_dtype == "float32":
            return torch.float32
        if param.numel() < MIN_QUANTIZED_NUMEL:
            return _compute_dtype(param)
        if self.state_dtype == "bf16":
            return torch.bfloat16
        return (8 if self.state_dtype == "int8" else 4, signed, self.block_size)


def _compute_dtype(param: Tensor) -> torch.dtype:
    return torch.promote_types(param.dtype, torch.float32)


def _form_of(value: Any) -> Any:
    if isinstance(value, Mapping):
        return (value["bits"], value["signed"], value["block_size"])
    return value.dtype


@functools.cache
def _declared(rule_type: type) -> tuple[frozenset[str], frozenset[str]]:
    """Names of the rule's scalar state and of its non-negative state."""
    keeps = getattr(rule_type, "keeps", ())
    return (
        frozenset(e.name for e in keeps if e.scalar),
        frozenset(e.name for e in keeps if getattr(e, "non_negative", False)),
    )


def _encode(full: Tensor, form: Any, param: Tensor) -> Any:
    """A full-precision tensor shaped like ``param`` in the stored form ``form``."""
    if isinstance(form, tuple):
        bits, signed, block = form
        stored = _empty(param.numel(), bits, signed, block, param.device)
        _encode_into(stored, 0, full.reshape(-1).to(param.device, torch.float32, copy=True))
        return stored
    if form == torch.bfloat16 and full.dtype != torch.bfloat16:
        nearest = full.to(form)
        # values bfloat16 holds exactly (a bf16 state torch's load cast to float32) keep
        # them, and draw no random numbers: a resumed run continues the same random stream
        full = (
            nearest if torch.equal(nearest.to(full.dtype), full) else stochastic_round(full, form)
        )
    out = torch.empty(param.shape, dtype=form, device=param.device)
    return out.copy_(full.reshape(param.shape))


def decoded(value: Any, param: Tensor) -> Tensor:
    """A state entry's values as a new tensor shaped like ``param``, in its compute
    dtype (float32 for a bfloat16 parameter) or the entry's own if wider."""
    if isinstance(value, Mapping):
        return _decode(value, 0, param.numel(), _compute_dtype(param)).view(param.shape)
    tensor: Tensor = value  # an entry not quantised is a tensor
    return tensor.detach().to(torch.promote_types(tensor.dtype, _compute_dtype(param)), copy=True)


def _conform_entry(
    entry: dict[str, Any],
    param: Tensor,
    options: Options,
    scalar: frozenset[str],
    unsigned: frozenset[str],
    active: bool,
) -> None:
    """Store every state entry of ``param`` in the form ``options`` give it."""
    for key, value in list(entry.items()):
        if key in scalar or key == COMPENSATION:
            continue
        form = options.form(param, key not in unsigned)
        current = _form_of(value)
        device = value["codes"].device if isinstance(value, Mapping) else value.device
        if (
            current == form
            and device == param.device
            and (not active or isinstance(value, Mapping) or value.is_contiguous())
        ):
            continue
        if isinstance(value, Mapping) or value.dtype != form:
            value = decoded(value, param)
        entry[key] = _encode(value, form, param)
    compensation = entry.get(COMPENSATION)
    if options.param_rounding == "kahan" and param.dtype in _LOW_FLOATS and not param.is_complex():
        if (
            compensation is None
            or compensation.dtype != param.dtype
            or compensation.device != param.device
        ):
            entry[COMPENSATION] = torch.zeros(param.shape, dtype=param.dtype, device=param.device)
    elif compensation is not None:
        del entry[COMPENSATION]  # its part of the value (below half a step) is dropped


def stored_state(
    entry: dict[str, Any], param: Tensor, group: Mapping[str, Any], rule: Any
) -> dict[str, Any]:
    """``entry`` (a parameter's state) stored in the form its group's options give it
    (in place; returned)."""
    options = Options.of(group)
    if options.applies(param) or any(isinstance(v, Mapping) for v in entry.values()):
        # mypy#11470: mypy does not see that classes are hashable
        scalar, unsigned = _declared(type(rule))  # type: ignore[arg-type]
        _conform_entry(entry, param, options, scalar, unsigned, options.applies(param))
    return entry


def conform(rule: Any, group: Mapping[str, Any], layout: Any = None) -> None:
    """Store the state of ``group``'s parameters in the form the group's options give it.

    With ``layout`` (the engine's cached layout of the group), nothing is checked while
    the options stay those it last conformed to, so a step pays one comparison.
    """
    options = Options.of(group)
    if layout is not None and layout.state_options == options:
        return
    # mypy#11470: mypy does not see that classes are hashable
    scalar, unsigned = _declared(type(rule))  # type: ignore[arg-type]
    for param in group["params"]:
        entry = rule.state.get(param)
        if entry:
            _conform_entry(entry, param, options, scalar, unsigned, options.applies(param))
    if layout is not None:
        layout.state_options = options


def conform_all(rule: Any) -> None:
    """:func:`conform` every group of ``rule`` (with the engine's layouts, where it has
    them, so that groups already in their form are skipped)."""
    from . import _ENGINE_ATTRIBUTE  # the engine package imports this module first

    engine = rule.__dict__.get(_ENGINE_ATTRIBUTE)
    layouts = engine.layouts if engine is not None else {}
    for group in rule.param_groups:
        conform(rule, group, layouts.get(id(group)))


def applies(options: Mapping[str, Any], param: Tensor) -> bool:
    """Whether a bucket of parameters like ``param`` with these group options runs on
    full-precision temporaries (see :meth:`Options.applies`)."""
    if options.get("state_dtype") is None and options.get("param_rounding", "nearest") == "nearest":
        return False
    return Options.of(options).applies(param)


# ---------------------------------------------------------------------- the step


@dataclass
class _Piece:
    """Elements ``start:end`` of parameter ``index`` of a run."""

    index: int
    start: int
    end: int


def _chunks(numels: Sequence[int], block: int) -> Iterator[list[_Piece]]:
    """Pieces of at most :data:`CHUNK_NUMEL` elements, cut at block boundaries, grouped
    into chunks of at most that many elements."""
    limit = max(CHUNK_NUMEL // block * block, block)
    chunk: list[_Piece] = []
    size = 0
    for index, n in enumerate(numels):
        for start in range(0, n, limit):
            end = min(start + limit, n)
            if chunk and size + end - start > limit:
                yield chunk
                chunk, size = [], 0
            chunk.append(_Piece(index, start, end))
            size += end - start
    if chunk:
        yield chunk


def call_math(
    call: Callable[..., dict[str, Any]],
    rule: Any,
    params: list[Tensor],
    grads: list[Tensor],
    entries: list[dict[str, Any]],
    scalars: Mapping[str, Tensor],
    step_count: float | None,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """Run ``call`` (:func:`descent.engine.call_math`) for a run of parameters whose
    state or update is low precision, chunk by chunk on full-precision temporaries;
    return the state entries the math created, in their stored form."""
    settings = Options.of(options)
    # mypy#11470: mypy does not see that classes are hashable
    scalar, unsigned = _declared(type(rule))  # type: ignore[arg-type]
    for param, entry in zip(params, entries, strict=True):
        _conform_entry(entry, param, settings, scalar, unsigned, True)
    compute = _compute_dtype(params[0])
    keys = [key for key in entries[0] if key not in scalar and key != COMPENSATION]
    flat_params = [p.view(-1) if p.is_contiguous() else p.reshape(-1).clone() for p in params]
    flat_grads = [g.reshape(-1) for g in grads]
    created: dict[str, list[Any]] = {}
    start_scalars = {key: value.clone() for key, value in scalars.items()}
    for number, chunk in enumerate(_chunks([p.numel() for p in params], settings.block_size)):
        if number:
            for key, value in scalars.items():
                value.copy_(start_scalars[key])
        _run_chunk(
            call,
            rule,
            chunk,
            params,
            flat_params,
            flat_grads,
            entries,
            keys,
            scalars,
            step_count,
            options,
            settings,
            compute,
            unsigned,
            created,
        )
    for param, flat in zip(params, flat_params, strict=True):
        if not param.is_contiguous():
            param.copy_(flat.view(param.shape))
    return {key: TensorList(values) for key, values in created.items()}


def _run_chunk(
    call: Callable[..., dict[str, Any]],
    rule: Any,
    chunk: list[_Piece],
    params: list[Tensor],
    flat_params: list[Tensor],
    flat_grads: list[Tensor],
    entries: list[dict[str, Any]],
    keys: list[str],
    scalars: Mapping[str, Tensor],
    step_count: float | None,
    options: Mapping[str, Any],
    settings: Options,
    compute: torch.dtype,
    unsigned: frozenset[str],
    created: dict[str, list[Any]],
) -> None:
    param_in: list[Tensor] = []
    grad_in: list[Tensor] = []
    state_in: dict[str, list[Tensor]] = {key: [] for key in keys}
    write_backs: list[Callable[[], None]] = []
    total = sum(piece.end - piece.start for piece in chunk)
    device = params[0].device

    def temporary(role: Any, offset: int, n: int) -> Tensor:  # this chunk's, this role's
        return _scratch(role, total, compute, device)[offset : offset + n]

    offset = 0
    for piece in chunk:
        i, start, end = piece.index, piece.start, piece.end
        n = end - start
        entry = entries[i]
        target = flat_params[i][start:end]
        if target.dtype == compute:
            param_in.append(target)
        else:
            value = temporary("param", offset, n).copy_(target)
            compensation = entry.get(COMPENSATION)
            if compensation is not None:
                value.add_(compensation.view(-1)[start:end])
                write_backs.append(
                    functools.partial(_kahan_write, target, value, compensation.view(-1)[start:end])
                )
            else:
                write_backs.append(
                    functools.partial(_round_write, target, value, settings.rounds(params[i]))
                )
            param_in.append(value)
        grad = flat_grads[i][start:end]
        grad_in.append(grad if grad.dtype == compute else temporary("grad", offset, n).copy_(grad))
        for number, key in enumerate(keys):
            stored = entry[key]
            if isinstance(stored, Mapping):
                value = _decode(
                    stored, start, end, compute, temporary(("state", number), offset, n)
                )
                write_backs.append(functools.partial(_encode_into, stored, start, value))
            else:
                view = stored.view(-1)[start:end]
                if view.dtype == compute:
                    value = view
                else:
                    value = temporary(("state", number), offset, n).copy_(view)
                    write_backs.append(
                        functools.partial(_round_write, view, value, view.dtype == torch.bfloat16)
                    )
            state_in[key].append(value)
        offset += n
    made = call(
        rule,
        TensorList(param_in),
        TensorList(grad_in),
        {key: TensorList(values) for key, values in state_in.items()},
        scalars,
        step_count,
        options,
    )
    for key, values in made.items():
        tensors = values.tensors if isinstance(values, TensorList) else [values]
        stores = created.setdefault(key, [None] * len(params))
        for piece, tensor in zip(chunk, tensors, strict=True):
            param = params[piece.index]
            if stores[piece.index] is None:
                form = settings.form(param, key not in unsigned)
                stores[piece.index] = (
                    _empty(param.numel(), *form, param.device)
                    if isinstance(form, tuple)
                    else torch.zeros(param.shape, dtype=form, device=param.device)
                )
            stored = stores[piece.index]
            if isinstance(stored, Mapping):
                _encode_into(stored, piece.start, tensor.clone())
            else:
                _round_write(
                    stored.view(-1)[piece.start : piece.end],
                    tensor,
                    stored.dtype == torch.bfloat16 and tensor.dtype != stored.dtype,
                )
    for write in write_backs:
        write()


def _noisy_bfloat16(x: Tensor, noise: Tensor) -> Tensor:
    """Float32 ``x`` with 16 random bits added below its upper half and then cleared, in
    ``noise`` (int32, shaped like ``x``) seen as float32: bfloat16 is float32's upper
    half, so this is ``x`` stochastically rounded, and exactly representable."""
    noise.random_(0, 1 << 16).add_(x.view(torch.int32)).bitwise_and_(-(1 << 16))
    return noise.view(torch.float32)


def _round_write(target: Tensor, value: Tensor, stochastic: bool) -> None:
    if stochastic and target.dtype == torch.bfloat16 and value.dtype == torch.float32:
        noise = _scratch("noise", value.numel(), torch.int32, value.device)
        target.copy_(_noisy_bfloat16(value.contiguous(), noise.view(value.shape)))
    elif stochastic:
        target.copy_(stochastic_round(value, target.dtype))
    else:
        target.copy_(value)


def _kahan_write(target: Tensor, value: Tensor, compensation: Tensor) -> None:
    """Write ``value`` (the parameter plus its compensation, updated) into ``target``
    rounded to nearest, and keep what rounding lost in ``compensation``."""
    rounded = value.to(target.dtype)
    compensation.copy_(value.sub_(rounded))
    target.copy_(rounded)


# ---------------------------------------------------------------------- state dicts


def check_stored(
    where: str, key: str, value: Any, param: Tensor, group: Mapping[str, Any], signed: bool
) -> None:
    """Check that a saved state entry has the form the saved ``group``'s options give it
    (its layout, for a quantised one); raise a ``ValueError`` saying what differs."""
    form = Options.of(group).form(param, signed) if key != COMPENSATION else param.dtype
    if isinstance(form, tuple):
        bits, signed, block = form
        expected = (
            f"the {'int8' if bits == 8 else 'int4'} form of state_block_size={block} "
            f"(a dict with {sorted(_STORED_KEYS)})"
        )
        if not isinstance(value, Mapping) or set(value) != _STORED_KEYS:
            what = (
                f"keys {sorted(value)}"
                if isinstance(value, Mapping)
                else f"type {type(value).__name__}"
            )
            raise ValueError(f"{where}: {key} has {what}; expected {expected}")
        found = (value["bits"], value["signed"], value["block_size"])
        if found != form:
            raise ValueError(
                f"{where}: {key} has (bits, signed, block_size)={found}; the "
                f"group's options give {form}"
            )
        n = param.numel()
        for name, dtype, length in (
            ("codes", torch.uint8, _packed(n, bits)),
            ("absmax", torch.float32, _blocks(n, block)),
        ):
            tensor = value[name]
            if (
                not torch.is_tensor(tensor)
                or tensor.dtype != dtype
                or tensor.dim() != 1
                or tensor.numel() != length
            ):
                what = (
                    f"dtype {tensor.dtype} and shape {tuple(tensor.shape)}"
                    if torch.is_tensor(tensor)
                    else f"type {type(tensor).__name__}"
                )
                raise ValueError(
                    f"{where}: {key}[{name!r}] has {what}; expected {length} "
                    f"elements of {dtype} for a parameter of {n} elements in "
                    f"blocks of {block}"
                )
        return
    if not torch.is_tensor(value):
        raise ValueError(
            f"{where}: {key} has type {type(value).__name__}; expected a tensor of dtype {form}"
        )
    if value.shape != param.shape:
        raise ValueError(
            f"{where}: {key} has shape {tuple(value.shape)}, the parameter has "
            f"shape {tuple(param.shape)}"
        )
    if value.dtype != form:
        raise ValueError(
            f"{where}: {key} has dtype {value.dtype}; the group's options "
            f"(state_dtype={group.get('state_dtype')!r}) store it as {form}"
        )


def extra_keys(param: Tensor, group: Mapping[str, Any]) -> frozenset[str]:
    """State keys the storage options add to ``param``'s entry (the Kahan compensation)."""
    options = Options.of(group)
    if options.param_rounding == "kahan" and param.dtype in _LOW_FLOATS and not param.is_complex():
        return frozenset({COMPENSATION})
    return frozenset()


def loaded(entry: dict[str, Any], saved: Mapping[str, Any], param: Tensor) -> None:
    """After torch's ``load_state_dict`` (which casts every floating state tensor to the
    parameter's dtype): put back the saved entries that it changed, as saved."""
    for key, value in saved.items():
        if isinstance(value, Mapping):
            entry[key] = {
                name: item.to(param.device) if torch.is_tensor(item) else item
                for name, item in value.items()
            }
        elif (
            torch.is_tensor(value)
            and key in entry
            and value.dtype != entry[key].dtype
            and value.dim() > 0
        ):
            entry[key] = value.to(param.device)


def state_bytes(rule: Any) -> int:
    """Bytes of every tensor of ``rule``'s state (each storage counted once)."""
    seen: set[tuple[Any, int]] = set()
    total = 0
    for entry in rule.state.values():
        for value in entry.values():
            items = value.values() if isinstance(value, Mapping) else (value,)
            for item in items:
                if torch.is_tensor(item):
                    where = (item.device, item.data_ptr())
                    if where not in seen:
                        seen.add(where)
                        total += item.numel() * item.element_size()
    return total


__all__ = [
    "CHUNK_NUMEL",
    "COMPENSATION",
    "DEFAULT_BLOCK_SIZE",
    "MIN_QUANTIZED_NUMEL",
    "OPTIONS",
    "PARAM_ROUNDINGS",
    "STATE_DTYPES",
    "Options",
    "applies",
    "call_math",
    "check_block_size",
    "check_param_rounding",
    "check_state_dtype",
    "check_stored",
    "code_values",
    "conform",
    "conform_all",
    "decoded",
    "dequantize",
    "dynamic_map",
    "extra_keys",
    "loaded",
    "quantize",
    "state_bytes",
    "stochastic_round",
    "stored_state",
]
