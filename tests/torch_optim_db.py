"""torch's own optimizer test data (``optim_db``), as inputs for descent's tests and bench.

``torch.testing._internal.common_optimizers.optim_db`` lists, for every torch.optim
class, the constructor configurations torch tests it with and the inputs its
constructor must refuse. This module reads that data (it needs the ``expecttest``
package, which torch's testing helpers import) and runs descent's counterpart of each
class next to torch's on the same trajectories. The trajectories and the comparison
are this project's own: a small model, fixed batches, some parameters without a
gradient on some steps, and the largest relative difference over the run.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import descent
from descent.optim.registry import algorithms

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
"""The largest relative difference from torch accepted, per dtype."""


@dataclass
class Config:
    """One constructor configuration of one torch.optim class, from optim_db."""

    name: str
    desc: str
    kwargs: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.name}-{self.desc.replace(' ', '_')}"


@dataclass
class ConstructionError:
    """A constructor input torch refuses, with torch's exception type."""

    name: str
    desc: str
    params: Any
    kwargs: dict[str, Any]
    error: type[BaseException]

    @property
    def id(self) -> str:
        return f"{self.name}-{self.desc.replace(' ', '_')}"


@functools.cache
def _db() -> dict[str, Any]:
    from torch.testing._internal.common_optimizers import optim_db

    return {info.optim_cls.__name__: info for info in optim_db}


def names() -> list[str]:
    """The torch.optim classes optim_db covers."""
    return sorted(_db())


def configs(name: str) -> list[Config]:
    """torch's CPU configurations of class ``name`` (without the foreach / fused /
    differentiable implementation flags, which descent's engine decides)."""
    return [
        Config(name, entry.desc, entry.kwargs) for entry in _db()[name].optim_inputs_func("cpu")
    ]


def construction_errors(name: str) -> list[ConstructionError]:
    """The inputs torch's constructor of class ``name`` refuses (on CPU, float32)."""
    from torch.testing._internal.common_optimizers import OptimizerErrorEnum

    info = _db()[name]
    if info.optim_error_inputs_func is None:
        return []
    found = []
    for entry in info.optim_error_inputs_func("cpu", torch.float32):
        if entry.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
            given = entry.optimizer_error_input
            found.append(
                ConstructionError(name, given.desc, given.params, given.kwargs, entry.error_type)
            )
    return found


def counterpart(name: str) -> type[descent.Optimizer]:
    """descent's class for torch.optim class ``name``."""
    return algorithms()[name]


# ---------------------------------------------------------------------- trajectories

STEPS = 25
LBFGS_STEPS = 4


def _clone_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Separate copies of tensor hyperparameters for the two optimizers."""
    return copy.deepcopy(kwargs)


def _model(name: str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if name == "SparseAdam":
        return nn.Embedding(20, 4, sparse=True).to(dtype)
    bias = name != "Muon"  # torch's Muon takes matrices only
    return nn.Sequential(
        nn.Linear(6, 10, bias=bias),
        nn.Tanh(),
        nn.Linear(10, 8, bias=bias),
        nn.Tanh(),
        nn.Linear(8, 3, bias=bias),
    ).to(dtype)


def _loss(name: str, model: nn.Module, step: int, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 + step)
    if name == "SparseAdam":  # repeated indices: the gradient is uncoalesced
        index = torch.randint(0, 20, (12,), generator=generator)
        target = torch.randn(12, 4, generator=generator).to(dtype)
        return ((model(index) - target) ** 2).mean()
    x = torch.randn(16, 6, generator=generator).to(dtype)
    target = torch.randn(16, 3, generator=generator).to(dtype)
    return ((model(x) - target) ** 2).mean()


def _drop_some_grads(model: nn.Module, step: int) -> None:
    """Some parameters get no gradient on some steps (their state must stay as it is)."""
    params = list(model.parameters())
    if len(params) > 1:
        if step % 3 == 0:
            params[-1].grad = None
        if step % 5 == 1:
            params[0].grad = None


def _relative_difference(a: nn.Module, b: nn.Module) -> float:
    worst = 0.0
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        scale = max(pb.detach().abs().max().item(), 1e-30)
        worst = max(worst, (pa - pb).detach().abs().max().item() / scale)
    return worst


def parity(
    config: Config, dtype: torch.dtype, mode: str | None = None, steps: int = STEPS
) -> tuple[float, float]:
    """Run descent's class and torch's side by side on one configuration, ``steps``
    steps (at most :data:`LBFGS_STEPS` for LBFGS, whose steps run many iterations).

    Returns the largest relative difference between their parameters over the run
    and how far torch's parameters moved (relative to their size), which must not be
    zero for the comparison to mean anything.
    """
    name = config.name
    ours, theirs = _model(name, dtype), _model(name, dtype)
    opt = counterpart(name)(ours.parameters(), **_clone_kwargs(config.kwargs))
    if mode is not None:
        descent.engine.set_mode(opt, mode)
    ref = getattr(torch.optim, name)(theirs.parameters(), **_clone_kwargs(config.kwargs))
    worst = 0.0
    if name == "LBFGS":
        for _ in range(min(steps, LBFGS_STEPS)):
            for model, optimizer in ((ours, opt), (theirs, ref)):

                def closure(model: nn.Module = model, optimizer: Any = optimizer) -> Any:
                    optimizer.zero_grad()
                    loss = _loss(name, model, 0, dtype)  # one batch: a deterministic problem
                    loss.backward()
                    return loss

                optimizer.step(closure)
            worst = max(worst, _relative_difference(ours, theirs))
    else:
        for step in range(steps):
            for model, optimizer in ((ours, opt), (theirs, ref)):
                optimizer.zero_grad()
                _loss(name, model, step, dtype).backward()
                _drop_some_grads(model, step)
                optimizer.step()
            worst = max(worst, _relative_difference(ours, theirs))
    return worst, _relative_difference(theirs, _model(name, dtype))


__all__ = [
    "TOLERANCE",
    "Config",
    "ConstructionError",
    "configs",
    "construction_errors",
    "counterpart",
    "names",
    "parity",
]
