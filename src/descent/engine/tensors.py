"""``TensorList``: what an update rule's math operates on.

Every rule in :mod:`descent.optim` is written once, as a function that updates a
parameter and its state *in place* with tensor methods (``exp_avg.lerp_(grad, 1 - beta1)``,
``param.addcdiv_(exp_avg, denom, value=-step_size)``), reading like the paper's
algorithm box. The engine calls that one function with ``TensorList`` arguments:

* holding **one tensor**, every method is the ordinary tensor method (the per-tensor
  reference path, the functional API, autograd and ``torch.func.vmap``);
* holding **many tensors** of one device and dtype, every method is torch's multi-tensor
  (``_foreach``) operation on all of them at once.

In-place methods (trailing ``_``) return the list itself, so calls chain as they do on
tensors; the others return a new ``TensorList``. Scalars are Python numbers or, on a
one-tensor list, tensors (a learning rate that requires grad, in the functional API).

A *pure* list (``TensorList(tensors, pure=True)``, what :mod:`descent.functional` uses)
runs every in-place method out of place and holds the result instead: the tensors it
was given are never written, and autograd and ``torch.func`` see ordinary out-of-place
operations, with the same arithmetic and so the same bits.
A ``TensorList`` never changes which tensors it holds: writing into a user's gradient is
impossible through it unless the rule calls an in-place method on ``grad``, which no rule
does (tested for every optimizer).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Union

import torch
from torch import Tensor

from ._torch import foreach

Operand = Union["TensorList", float, int, Tensor]


class TensorList:
    """Tensors of one device and dtype that a rule updates as if they were one tensor."""

    __slots__ = ("pure", "tensors")

    def __init__(self, tensors: Sequence[Tensor], *, pure: bool = False) -> None:
        self.tensors = list(tensors)
        self.pure = pure

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.tensors)

    def __repr__(self) -> str:
        return f"TensorList({len(self.tensors)} tensors)"

    @property
    def single(self) -> bool:
        """Whether this list holds one tensor (plain tensor methods run)."""
        return len(self.tensors) == 1

    @property
    def is_sparse(self) -> bool:
        """Whether the tensors have a sparse layout (the engine passes those one at a time)."""
        return any(t.layout != torch.strided for t in self.tensors)

    # ------------------------------------------------------------------ plumbing

    def _one(self, other: Operand) -> Any:
        return other.tensors[0] if isinstance(other, TensorList) else other

    def _many(self, other: Operand) -> Any:
        return other.tensors if isinstance(other, TensorList) else other

    def _inplace(self, name: str, *args: Operand, **kwargs: Any) -> TensorList:
        if self.pure:
            self.tensors = self._new(name[:-1], *args, **kwargs).tensors
        elif self.single:
            getattr(self.tensors[0], name)(*map(self._one, args), **kwargs)
        else:
            foreach(name)(self.tensors, *map(self._many, args), **kwargs)
        return self

    def _new(self, name: str, *args: Operand, **kwargs: Any) -> TensorList:
        if self.single:
            result = [getattr(self.tensors[0], name)(*map(self._one, args), **kwargs)]
        else:
            result = foreach(name)(self.tensors, *map(self._many, args), **kwargs)
        return TensorList(result, pure=self.pure)

    # ------------------------------------------------------------------ arithmetic

    def add_(self, other: Operand, *, alpha: float | Tensor = 1) -> TensorList:
        """``self += alpha * other``."""
        if isinstance(other, TensorList) and not isinstance(alpha, Tensor):
            return self._inplace("add_", other, alpha=alpha)
        return self._inplace("add_", _times(other, alpha))

    def add(self, other: Operand, *, alpha: float | Tensor = 1) -> TensorList:
        """``self + alpha * other``."""
        if isinstance(other, TensorList) and not isinstance(alpha, Tensor):
            return self._new("add", other, alpha=alpha)
        return self._new("add", _times(other, alpha))

    def sub_(self, other: Operand, *, alpha: float | Tensor = 1) -> TensorList:
        """``self -= alpha * other``."""
        if isinstance(other, TensorList) and not isinstance(alpha, Tensor):
            return self._inplace("sub_", other, alpha=alpha)
        return self._inplace("sub_", _times(other, alpha))

    def sub(self, other: Operand, *, alpha: float | Tensor = 1) -> TensorList:
        """``self - alpha * other``."""
        if isinstance(other, TensorList) and not isinstance(alpha, Tensor):
            return self._new("sub", other, alpha=alpha)
        return self._new("sub", _times(other, alpha))

    def mul_(self, other: Operand) -> TensorList:
        """``self *= other``."""
        return self._inplace("mul_", other)

    def mul(self, other: Operand) -> TensorList:
        """``self * other``."""
        return self._new("mul", other)

    def div_(self, other: Operand) -> TensorList:
        """``self /= other``."""
        return self._inplace("div_", other)

    def div(self, other: Operand) -> TensorList:
        """``self / other``."""
        return self._new("div", other)

    def addcmul_(
        self, tensor1: TensorList, tensor2: TensorList, *, value: float | Tensor = 1
    ) -> TensorList:
        """``self += value * tensor1 * tensor2``."""
        if isinstance(value, Tensor):
            return self.add_(tensor1.mul(tensor2).mul_(value))
        return self._inplace("addcmul_", tensor1, tensor2, value=value)

    def addcmul(
        self, tensor1: TensorList, tensor2: TensorList, *, value: float | Tensor = 1
    ) -> TensorList:
        """``self + value * tensor1 * tensor2``."""
        if isinstance(value, Tensor):
            return self.add(tensor1.mul(tensor2).mul_(value))
        return self._new("addcmul", tensor1, tensor2, value=value)

    def addcdiv_(
        self, tensor1: TensorList, tensor2: TensorList, *, value: float | Tensor = 1
    ) -> TensorList:
        """``self += value * tensor1 / tensor2``."""
        if isinstance(value, Tensor):
            return self.add_(tensor1.div(tensor2).mul_(value))
        return self._inplace("addcdiv_", tensor1, tensor2, value=value)

    def lerp_(self, end: TensorList, weight: float | Tensor) -> TensorList:
        """``self += weight * (end - self)``."""
        if isinstance(weight, Tensor) and weight.dim() == 0 and not self.single:
            weight = float(weight)
        return self._inplace("lerp_", end, weight)

    def maximum_(self, other: TensorList) -> TensorList:
        """``self = max(self, other)`` elementwise."""
        if self.single and not self.pure:
            torch.maximum(self.tensors[0], other.tensors[0], out=self.tensors[0])
            return self
        return self._inplace("maximum_", other)

    def maximum(self, other: TensorList) -> TensorList:
        """``max(self, other)`` elementwise."""
        return self._new("maximum", other)

    def clamp_min_(self, minimum: float) -> TensorList:
        """``self = max(self, minimum)``."""
        return self._inplace("clamp_min_", minimum)

    def clamp_(self, minimum: float, maximum: float) -> TensorList:
        """``self = min(max(self, minimum), maximum)``."""
        return self._inplace("clamp_", minimum, maximum)

    # ------------------------------------------------------------------ comparisons, masks

    def gt(self, other: float) -> TensorList:
        """``self > other``, boolean tensors."""
        return self._new("gt", other)

    def lt(self, other: float) -> TensorList:
        """``self < other``, boolean tensors."""
        return self._new("lt", other)

    def eq(self, other: float) -> TensorList:
        """``self == other``, boolean tensors."""
        return self._new("eq", other)

    def masked_fill_(self, mask: TensorList, value: float) -> TensorList:
        """``self = value`` where ``mask`` is true."""
        return self._inplace("masked_fill_", mask, value)

    def masked_fill(self, mask: TensorList, value: float) -> TensorList:
        """``self`` with ``value`` where ``mask`` is true."""
        return self._new("masked_fill", mask, value)

    def clamp_max_(self, maximum: float) -> TensorList:
        """``self = min(self, maximum)``."""
        return self._inplace("clamp_max_", maximum)

    # ------------------------------------------------------------------ functions

    def sqrt(self) -> TensorList:
        """``sqrt(self)``."""
        return self._new("sqrt")

    def sqrt_(self) -> TensorList:
        """``self = sqrt(self)``."""
        return self._inplace("sqrt_")

    def abs(self) -> TensorList:
        """``|self|``."""
        return self._new("abs")

    def sign(self) -> TensorList:
        """``sign(self)``."""
        return self._new("sign")

    def neg(self) -> TensorList:
        """``-self``."""
        return self._new("neg")

    def reciprocal_(self) -> TensorList:
        """``self = 1 / self``."""
        return self._inplace("reciprocal_")

    # ------------------------------------------------------------------ copies

    def clone(self) -> TensorList:
        """A copy of every tensor (new state a rule creates on its first step)."""
        return TensorList(
            [t.clone() if self.pure else t.detach().clone() for t in self.tensors], pure=self.pure
        )

    def full_like(self, value: float | Tensor) -> TensorList:
        """New tensors shaped like these, every element ``value`` (state a rule creates)."""
        if isinstance(value, Tensor):  # a traced hyperparameter (descent.functional)
            return TensorList(
                [torch.zeros_like(t).add(value) for t in self.tensors], pure=self.pure
            )
        return TensorList([torch.full_like(t, value) for t in self.tensors], pure=self.pure)

    def copy_(self, source: TensorList) -> TensorList:
        """``self = source``."""
        if self.pure:
            self.tensors = list(source.tensors)
            return self
        return self._inplace("copy_", source)

    def zero_(self) -> TensorList:
        """``self = 0``."""
        if self.pure:
            self.tensors = [torch.zeros_like(t) for t in self.tensors]
            return self
        return self._inplace("zero_")

    # ------------------------------------------------------------------ operators

    def __neg__(self) -> TensorList:
        return self.neg()

    def __add__(self, other: Operand) -> TensorList:
        return self.add(other)

    def __sub__(self, other: Operand) -> TensorList:
        return self._new("sub", other)

    def __mul__(self, other: Operand) -> TensorList:
        return self.mul(other)

    __rmul__ = __mul__

    def __truediv__(self, other: Operand) -> TensorList:
        return self.div(other)


def _times(value: Operand, factor: float | Tensor) -> Operand:
    """``value * factor``, skipping a factor of 1 (a number)."""
    if not isinstance(factor, Tensor) and factor == 1:
        return value
    return value.mul(factor) if isinstance(value, TensorList) else value * factor


__all__ = ["Operand", "TensorList"]
