"""What the benchmark measures: parameter lists and the optimizers compared on them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import descent


@dataclass(frozen=True)
class Case:
    """A list of parameter shapes to step on."""

    name: str
    shapes: list[tuple[int, ...]]

    @property
    def numel(self) -> int:
        return sum(int(torch.Size(shape).numel()) for shape in self.shapes)


def transformer_shapes(layers: int = 12, width: int = 384) -> list[tuple[int, ...]]:
    """The parameter shapes of ``layers`` ``nn.TransformerEncoderLayer``s (about 21M floats)."""
    layer = torch.nn.TransformerEncoderLayer(width, nhead=6, dim_feedforward=4 * width,
                                             device="meta")
    return [tuple(p.shape) for _ in range(layers) for p in layer.parameters()]


def cases(quick: bool) -> list[Case]:
    """(i) 4,000 tensors of 4,000 floats, (ii) one 16M-float tensor, (iii) a transformer."""
    result = [Case("4,000 x 4,000 floats", [(4000,)] * 4000),
              Case("1 x 16M floats", [(16 * 1024 * 1024,)])]
    if not quick:
        result.append(Case("12-layer transformer (21M)", transformer_shapes()))
    return result


@dataclass(frozen=True)
class Algorithm:
    """A descent optimizer, its torch.optim counterpart and its bytes moved per parameter.

    ``bytes_per_param`` counts float32 reads and writes of one update: Adam reads the
    parameter, gradient and two moments and writes three of them (7 x 4 = 28 bytes).
    """

    name: str
    make: Callable[[list[torch.Tensor]], torch.optim.Optimizer]
    bytes_per_param: int
    torch_make: Callable[..., torch.optim.Optimizer] | None = None
    torch_variants: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


def _pair(descent_cls: type, torch_cls: type | None, bytes_per_param: int,
          variants: tuple[str, ...], **options: Any) -> Algorithm:
    def make(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        return descent_cls(params, **options)

    torch_make = None
    if torch_cls is not None:
        def torch_make(params: list[torch.Tensor], variant: str) -> torch.optim.Optimizer:
            flags = {"for-loop": {"foreach": False}, "foreach": {"foreach": True},
                     "fused": {"fused": True}}[variant]
            return torch_cls(params, **options, **flags)
    label = descent_cls.__name__ + ("" if not options else " (" + ", ".join(
        f"{key}={value}" for key, value in options.items() if key != "lr") + ")")
    return Algorithm(label.replace(" ()", ""), make, bytes_per_param, torch_make, variants,
                     options)


ALL = ("for-loop", "foreach", "fused")
NO_FUSED = ("for-loop", "foreach")


def algorithms() -> list[Algorithm]:
    """Every elementwise descent optimizer, with torch's variants where torch has it."""
    return [
        _pair(descent.Adam, torch.optim.Adam, 28, ALL, lr=1e-3),
        _pair(descent.AdamW, torch.optim.AdamW, 28, ALL, lr=1e-3),
        _pair(descent.SGD, torch.optim.SGD, 20, ALL, lr=1e-3, momentum=0.9),
        _pair(descent.RMSprop, torch.optim.RMSprop, 20, NO_FUSED, lr=1e-3),
        _pair(descent.Adagrad, torch.optim.Adagrad, 20, ALL, lr=1e-3),
        _pair(descent.NAdam, torch.optim.NAdam, 28, NO_FUSED, lr=1e-3),
        _pair(descent.RAdam, torch.optim.RAdam, 28, NO_FUSED, lr=1e-3),
        _pair(descent.Adamax, torch.optim.Adamax, 28, NO_FUSED, lr=1e-3),
        _pair(descent.SignSGD, None, 12, (), lr=1e-3),
        _pair(descent.Lion, None, 20, (), lr=1e-4),
    ]


__all__ = ["Algorithm", "Case", "algorithms", "cases", "transformer_shapes"]
