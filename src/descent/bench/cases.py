"""What the benchmark measures: parameter shapes, and the optimizers compared on them.

The optimizers come from the registry (every elementwise descent optimizer with a math
function), each paired with its torch.optim counterpart where torch has one, so an
algorithm added to descent is benchmarked without more code here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from descent.optim.registry import algorithms as registry


@dataclass(frozen=True)
class Case:
    """A list of parameter shapes to step on."""

    name: str
    shapes: list[tuple[int, ...]]

    @property
    def numel(self) -> int:
        return sum(int(torch.Size(shape).numel()) for shape in self.shapes)


def single(numel: int) -> Case:
    """One tensor of ``numel`` floats."""
    return Case(f"1 x {_count(numel)}", [(numel,)])


def listed(numel: int, tensors: int = 100) -> Case:
    """``tensors`` tensors holding ``numel`` floats together."""
    return Case(f"{tensors} x {_count(numel // tensors)}", [(numel // tensors,)] * tensors)


def _count(number: int) -> str:
    if number >= 1_000_000 and number % 1_000_000 == 0:
        return f"{number // 1_000_000}M"
    if number >= 1_000 and number % 1_000 == 0:
        return f"{number // 1_000}k"
    return f"{number:,}"


SWEEP_SIZES = (10_000, 100_000, 1_000_000, 10_000_000, 100_000_000)
QUICK_SWEEP_SIZES = (10_000, 1_000_000, 10_000_000)


def sweep(quick: bool) -> list[tuple[int, Case]]:
    """The size sweep: each size as one tensor and as a list of 100 tensors."""
    sizes = QUICK_SWEEP_SIZES if quick else SWEEP_SIZES
    return [(size, case) for size in sizes for case in (single(size), listed(size))]


FOUR_K = Case("4,000 x 4,000", [(4000,)] * 4000)
"""Many mid-size tensors: where torch's per-tensor costs show."""
HOST = Case("10,000 x 16", [(16,)] * 10_000)
"""Many tiny tensors: the step's host cost per tensor."""


@dataclass(frozen=True)
class Algorithm:
    """A descent optimizer with the options benchmarked, and its torch.optim counterpart.

    ``bytes_per_param`` counts the float32 reads and writes of one update: the parameter
    (read and written), the gradient (read) and each state buffer (read and written):
    Adam 28, SGD with momentum 20, signSGD 12.
    """

    name: str
    cls: Callable[..., torch.optim.Optimizer]  # the classes, called with their own options
    options: dict[str, Any]
    bytes_per_param: int
    torch_cls: Callable[..., torch.optim.Optimizer] | None = None
    torch_variants: tuple[str, ...] = field(default=())

    def make(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        return self.cls(params, **self.options)

    def make_torch(self, params: list[torch.Tensor], variant: str) -> torch.optim.Optimizer:
        assert self.torch_cls is not None
        flags = {
            "for-loop": {"foreach": False},
            "foreach": {"foreach": True},
            "fused": {"fused": True},
        }[variant]
        return self.torch_cls(params, **self.options, **flags)

    @property
    def torch_best(self) -> str | None:
        """torch's fastest variant of the rule: fused where it has one, else foreach."""
        if "fused" in self.torch_variants:
            return "fused"
        return "foreach" if "foreach" in self.torch_variants else None


#: Options other than the defaults, where the defaults would leave out the rule's state.
OPTIONS: dict[str, dict[str, Any]] = {"SGD": {"momentum": 0.9}, "SignSGD": {"momentum": 0.9}}


def _state_buffers(cls: Any, options: dict[str, Any]) -> int:
    group = {name: spec.default for name, spec in cls.hyperparameters.items()}
    group.update(options)
    return sum(1 for entry in cls.keeps if not entry.scalar and entry.applies(group))


def _torch_variants(torch_cls: type | None, device: str) -> tuple[str, ...]:
    if torch_cls is None:
        return ()
    parameters = inspect.signature(torch_cls).parameters
    variants = ["for-loop"] if "foreach" in parameters else []
    if "foreach" in parameters:
        variants.append("foreach")
    if "fused" in parameters and not (device == "cuda" and torch_cls.__name__ == "Adagrad"):
        variants.append("fused")
    return tuple(variants)


def algorithms(device: str = "cpu") -> list[Algorithm]:
    """Every elementwise descent optimizer, with torch's variants where torch has it."""
    chosen = []
    for name, cls in registry().items():
        if not cls.elementwise or cls.math is None:
            continue
        options = {"lr": 1e-3, **OPTIONS.get(name, {})}
        torch_cls = getattr(torch.optim, name, None)
        chosen.append(
            Algorithm(
                name,
                cls,
                options,
                12 + 8 * _state_buffers(cls, options),
                torch_cls,
                _torch_variants(torch_cls, device),
            )
        )
    return chosen


Make = Callable[[list[torch.Tensor]], torch.optim.Optimizer]

__all__ = ["FOUR_K", "HOST", "Algorithm", "Case", "Make", "algorithms", "listed", "single", "sweep"]
