"""Recording a rule's math as a list of elementwise operations, for generated kernels.

A rule's math is written once, against :class:`~descent.engine.TensorList`. Called with
:class:`Traced` arguments instead, it records what it does: each tensor method becomes
an :class:`Op` on numbered values, each Python number it passes becomes a *scalar slot*
whose value is collected in order. The result, a :class:`Trace`, is

* a **program**: the operations, which inputs are read and which state entries are
  written back, independent of the numbers (a kernel is generated once per program);
* the **scalars** of this step (``1 - beta1``, ``-lr / bias_correction1``, ...), passed to
  the generated kernel at run time.

So the engine traces the math at every step (a few dozen Python calls, no tensor
work): the scalars change with the step count and the learning rate, the program only
when the math takes another branch (RAdam once its variance becomes tractable), and then
another kernel is used. Branches on hyperparameters and the step count are therefore
allowed in the math, exactly as in eager execution.

Anything a kernel cannot express (a tensor-valued scalar, an operation not listed in
:data:`OPS`, writing into the gradient, creating state) raises :class:`NotTraceable`,
and the engine runs the math on lists instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import Tensor


class NotTraceable(Exception):
    """The math did something a generated kernel cannot express."""


#: The elementwise operations a program may hold, with their number of tensor operands.
OPS = {
    "add": 2,
    "sub": 2,
    "mul": 2,
    "div": 2,
    "add_s": 1,
    "sub_s": 1,
    "mul_s": 1,
    "div_s": 1,
    "addcmul": 3,
    "addcdiv": 3,
    "lerp": 2,
    "maximum": 2,
    "clamp_min": 1,
    "clamp_max": 1,
    "sqrt": 1,
    "abs": 1,
    "sign": 1,
    "neg": 1,
    "reciprocal": 1,
    "zero": 0,
    "gt_s": 1,
    "lt_s": 1,
    "eq_s": 1,
    "masked_fill": 2,
    "clamp": 1,
}
"""Comparisons (``gt_s``, ...) give 1 or 0 in the tensors' dtype; ``masked_fill`` takes
that as its mask."""


class Op(NamedTuple):
    """``values[len(inputs) + index] = op(operands, scalars)``: one elementwise operation.

    ``operands`` are value numbers (inputs first, then earlier results); ``slots`` are
    scalar-slot numbers. (A named tuple: programs are hashed at every step to find their
    kernel, and a tuple hashes in C.)
    """

    name: str
    operands: tuple[int, ...]
    slots: tuple[int, ...] = ()


@dataclass(frozen=True)
class Program:
    """What a kernel computes for every element: inputs, operations, write-backs."""

    inputs: tuple[str, ...]
    ops: tuple[Op, ...]
    outputs: tuple[tuple[str, int], ...]
    slots: int

    def key(self) -> tuple[Any, ...]:
        """Hashable identity of the program (kernels are cached by it and the dtype)."""
        return (self.inputs, self.ops, self.outputs, self.slots)


@dataclass
class Recording:
    """The program being recorded and the scalars met so far."""

    inputs: list[str]
    ops: list[Op] = field(default_factory=list)
    scalars: list[float] = field(default_factory=list)

    def slot(self, value: Any) -> int:
        if isinstance(value, Tensor | bool) or not isinstance(value, int | float):
            raise NotTraceable(f"scalar {value!r} is not a Python number")
        self.scalars.append(float(value))
        return len(self.scalars) - 1

    def emit(self, name: str, operands: Sequence[int], slots: Sequence[int] = ()) -> int:
        self.ops.append(Op(name, tuple(operands), tuple(slots)))
        return len(self.inputs) + len(self.ops) - 1


class Traced:
    """A stand-in for a :class:`~descent.engine.TensorList` that records instead of computing.

    ``name`` is the input it holds (``"param"``, ``"grad"``, a state entry) while it is
    bound to one; in-place operations rebind its value, so the last value of a state
    entry is what the kernel writes back.
    """

    __slots__ = ("name", "recording", "value")

    def __init__(self, recording: Recording, value: int, name: str | None = None) -> None:
        self.recording = recording
        self.value = value
        self.name = name

    # ------------------------------------------------------------------ plumbing

    def _operand(self, other: Any) -> int:
        if not isinstance(other, Traced) or other.recording is not self.recording:
            raise NotTraceable(f"operand {other!r} is not a traced tensor")
        return other.value

    def _set(self, value: int) -> Traced:
        if self.name == "grad":
            raise NotTraceable("the math writes into the gradient")
        self.value = value
        return self

    def _new(self, value: int) -> Traced:
        return Traced(self.recording, value)

    def _binary(self, name: str, other: Any, alpha: Any = 1) -> int:
        recording = self.recording
        if isinstance(other, Traced):
            operand = self._operand(other)
            if name in ("add", "sub"):
                return recording.emit(name, (self.value, operand), (recording.slot(alpha),))
            return recording.emit(name, (self.value, operand))
        if alpha != 1:
            other = other * alpha
        return recording.emit(f"{name}_s", (self.value,), (recording.slot(other),))

    # ------------------------------------------------------------------ the TensorList API

    is_sparse = False  # a kernel runs on dense tensors only
    single = False

    def __getattr__(self, name: str) -> Any:
        raise NotTraceable(f"the math uses {name!r}, which generated kernels do not have")

    def sub(self, other: Any, *, alpha: Any = 1) -> Traced:
        return self._new(self._binary("sub", other, alpha))

    def add_(self, other: Any, *, alpha: Any = 1) -> Traced:
        return self._set(self._binary("add", other, alpha))

    def add(self, other: Any, *, alpha: Any = 1) -> Traced:
        return self._new(self._binary("add", other, alpha))

    def sub_(self, other: Any, *, alpha: Any = 1) -> Traced:
        return self._set(self._binary("sub", other, alpha))

    def mul_(self, other: Any) -> Traced:
        return self._set(self._binary("mul", other))

    def mul(self, other: Any) -> Traced:
        return self._new(self._binary("mul", other))

    def div_(self, other: Any) -> Traced:
        return self._set(self._binary("div", other))

    def div(self, other: Any) -> Traced:
        return self._new(self._binary("div", other))

    def _ternary(self, name: str, tensor1: Any, tensor2: Any, value: Any) -> int:
        return self.recording.emit(
            name,
            (self.value, self._operand(tensor1), self._operand(tensor2)),
            (self.recording.slot(value),),
        )

    def addcmul_(self, tensor1: Any, tensor2: Any, *, value: Any = 1) -> Traced:
        return self._set(self._ternary("addcmul", tensor1, tensor2, value))

    def addcmul(self, tensor1: Any, tensor2: Any, *, value: Any = 1) -> Traced:
        return self._new(self._ternary("addcmul", tensor1, tensor2, value))

    def addcdiv_(self, tensor1: Any, tensor2: Any, *, value: Any = 1) -> Traced:
        return self._set(self._ternary("addcdiv", tensor1, tensor2, value))

    def lerp_(self, end: Any, weight: Any) -> Traced:
        return self._set(
            self.recording.emit(
                "lerp", (self.value, self._operand(end)), (self.recording.slot(weight),)
            )
        )

    def maximum_(self, other: Any) -> Traced:
        return self._set(self.recording.emit("maximum", (self.value, self._operand(other))))

    def maximum(self, other: Any) -> Traced:
        return self._new(self.recording.emit("maximum", (self.value, self._operand(other))))

    def clamp_min_(self, minimum: Any) -> Traced:
        return self._set(
            self.recording.emit("clamp_min", (self.value,), (self.recording.slot(minimum),))
        )

    def clamp_max_(self, maximum: Any) -> Traced:
        return self._set(
            self.recording.emit("clamp_max", (self.value,), (self.recording.slot(maximum),))
        )

    def clamp_(self, minimum: Any, maximum: Any) -> Traced:
        recording = self.recording
        return self._set(
            recording.emit(
                "clamp", (self.value,), (recording.slot(minimum), recording.slot(maximum))
            )
        )

    def _compare(self, name: str, other: Any) -> Traced:
        if isinstance(other, Traced):
            raise NotTraceable("comparisons of two tensors")
        return self._new(self.recording.emit(name, (self.value,), (self.recording.slot(other),)))

    def gt(self, other: Any) -> Traced:
        return self._compare("gt_s", other)

    def lt(self, other: Any) -> Traced:
        return self._compare("lt_s", other)

    def eq(self, other: Any) -> Traced:
        return self._compare("eq_s", other)

    def _masked(self, mask: Any, value: Any) -> int:
        return self.recording.emit(
            "masked_fill", (self.value, self._operand(mask)), (self.recording.slot(value),)
        )

    def masked_fill_(self, mask: Any, value: Any) -> Traced:
        return self._set(self._masked(mask, value))

    def masked_fill(self, mask: Any, value: Any) -> Traced:
        return self._new(self._masked(mask, value))

    def _unary(self, name: str) -> int:
        return self.recording.emit(name, (self.value,))

    def sqrt(self) -> Traced:
        return self._new(self._unary("sqrt"))

    def sqrt_(self) -> Traced:
        return self._set(self._unary("sqrt"))

    def abs(self) -> Traced:
        return self._new(self._unary("abs"))

    def sign(self) -> Traced:
        return self._new(self._unary("sign"))

    def neg(self) -> Traced:
        return self._new(self._unary("neg"))

    def reciprocal_(self) -> Traced:
        return self._set(self._unary("reciprocal"))

    def clone(self) -> Traced:
        raise NotTraceable("the math creates state (its first step runs eagerly)")

    def copy_(self, source: Any) -> Traced:
        return self._set(self._operand(source))

    def zero_(self) -> Traced:
        return self._set(self.recording.emit("zero", ()))

    def __neg__(self) -> Traced:
        return self.neg()

    def __add__(self, other: Any) -> Traced:
        return self.add(other)

    def __sub__(self, other: Any) -> Traced:
        return self._new(self._binary("sub", other))

    def __mul__(self, other: Any) -> Traced:
        return self.mul(other)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> Traced:
        return self.div(other)


def trace(
    rule: Any,
    state_names: Sequence[str],
    scalars: dict[str, Tensor],
    step_count: float | None,
    options: dict[str, Any],
) -> tuple[Program, list[float]]:
    """Record ``rule.math`` for one run; return its program and this step's scalars.

    ``scalars`` (shared scalar state such as NAdam's ``mu_product``) are real 0-dim
    tensors, updated in place as in eager execution: call this once per step.
    """
    from . import call_math  # the engine's own argument mapping

    inputs = ["param", "grad", *state_names]
    recording = Recording(inputs)
    param = Traced(recording, 0, "param")
    grad = Traced(recording, 1, "grad")
    state = {name: Traced(recording, 2 + i, name) for i, name in enumerate(state_names)}
    created = call_math(rule, param, grad, state, scalars, step_count, options)
    if created:
        raise NotTraceable("the math creates state")
    outputs = tuple(
        (name, traced.value)
        for name, traced in (("param", param), *state.items())
        if traced.value != inputs.index(name)
    )
    program = Program(tuple(inputs), tuple(recording.ops), outputs, len(recording.scalars))
    return program, recording.scalars


__all__ = ["OPS", "NotTraceable", "Op", "Program", "Traced", "trace"]
