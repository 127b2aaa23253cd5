"""Distribution: how a trainer's loop spans processes (``torchrun``), through descent.distributed.

When the environment describes a process group (``RANK``, ``WORLD_SIZE``, ...), the
trainer joins it at ``train()``; then

* the model trains through ``DistributedDataParallel`` (:meth:`wrap_model`), whose
  ``no_sync()`` keeps the gradients local on all but a window's last micro-batch
  (:meth:`gradient_sync`); a strategy that cannot use DDP (a discriminator runs
  forward two or three times before one backward) starts every rank from rank 0's
  parameters and averages the gradients before each step (:meth:`average_gradients`);
* a window's count (samples or targets) is summed over the ranks (:meth:`sum`), so
  that the ranks' micro-batches weigh like one process's batch of all of them;
* with ``zero_redundancy=True`` each optimizer is wrapped in
  ``ZeroRedundancyOptimizer`` (:meth:`shard`);
* only rank 0 draws progress and writes logs (:attr:`is_main_process`).

In one process every method does the single-process thing.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .. import distributed


class Distribution:
    """The process-group side of a trainer (a no-op in one process).

    Args:
        owner: the name errors start with.
        zero_redundancy: shard each optimizer's state with ``ZeroRedundancyOptimizer``.
        ddp: train through ``DistributedDataParallel`` (False: broadcast the initial
            parameters and average the gradients by all-reduce before each step).
    """

    def __init__(self, owner: str, *, zero_redundancy: bool = False, ddp: bool = True) -> None:
        if not isinstance(zero_redundancy, bool):
            raise TypeError(f"{owner}: zero_redundancy={zero_redundancy!r}; expected a bool")
        self.owner = owner
        self.zero_redundancy = zero_redundancy
        self.ddp = ddp
        self._wrapped: tuple[nn.Module, nn.Module] | None = None

    @property
    def active(self) -> bool:
        """Whether a process group is initialised."""
        return distributed.is_distributed()

    @property
    def replicas(self) -> int:
        """How many ranks' gradients are averaged at each step (1 in one process)."""
        return distributed.get_world_size()

    @property
    def is_main_process(self) -> bool:
        return distributed.is_main_process()

    def join(self, device: torch.device | None) -> torch.device | None:
        """Join the ``torchrun`` process group if the environment describes one; return
        the device to train on (``cuda:LOCAL_RANK`` with CUDA when none was chosen)."""
        if distributed.init_process_group() and device is None and torch.cuda.is_available():
            return distributed.default_device()
        return device

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel(model)`` under a process group (made once per model);
        without DDP, every rank's parameters and buffers set to rank 0's; else ``model``."""
        if not self.active:
            return model
        if self._wrapped is None or self._wrapped[0] is not model:
            if self.ddp:
                self._wrapped = (model, distributed.wrap_model(model))
            else:
                distributed.broadcast_tensors([*model.parameters(), *model.buffers()])
                self._wrapped = (model, model)
        return self._wrapped[1]

    def gradient_sync(self, model: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """``model.no_sync()`` under DDP when ``sync`` is False, else nothing."""
        return distributed.gradient_sync(model, sync)

    def average_gradients(self, optimizer: Any) -> None:
        """Without DDP, average the gradients of ``optimizer``'s parameters over the ranks."""
        if self.active and not self.ddp:
            distributed.average_gradients(
                p for group in optimizer.param_groups for p in group["params"]
            )

    def sum(self, value: float) -> float:
        """``value`` summed over the ranks."""
        return distributed.sum_over_ranks([value])[0]

    def shard(self, optimizers: Mapping[str, Any]) -> dict[str, Any]:
        """With ``zero_redundancy`` under a process group: each optimizer wrapped in
        ``ZeroRedundancyOptimizer``, by name (else ``optimizers`` as they are).

        The wrapper is built on the optimizer's own param-group dicts, so a scheduler
        built on the optimizer keeps driving it: its learning rates are written where
        the wrapper reads them, and the scheduler is not touched. (torch offers no public
        way to tell a scheduler that its optimizer now steps through a wrapper; its
        first ``step()`` would warn that the optimizer never stepped, a warning the
        :class:`~descent.train.step.StepGuard` silences for exactly this case.)
        """
        if not self.zero_redundancy or not self.active:
            return dict(optimizers)
        from torch.distributed.optim import ZeroRedundancyOptimizer

        sharded = {}
        for name, optimizer in optimizers.items():
            if distributed.is_zero_optimizer(optimizer):
                sharded[name] = optimizer
                continue
            if optimizer.state:
                raise ValueError(
                    f"{self.owner}: zero_redundancy=True shards optimizer "
                    f"{name!r} when training starts, but it already has state; "
                    "build the trainer on a fresh optimizer"
                )
            sharded[name] = ZeroRedundancyOptimizer(
                optimizer.param_groups,
                optimizer_class=type(optimizer),
                **_constructor_options(type(optimizer), optimizer.defaults),
            )
        return sharded

    def reduce_metrics(
        self, metrics: Mapping[str, float], exact: Mapping[str, float]
    ) -> dict[str, float]:
        """``metrics`` as reported over all ranks: the keys of ``exact`` (the meter's
        means over every rank's samples) replace their per-rank values; the others
        (validation, counters: the same on every rank) are averaged."""
        if not self.active:
            return dict(metrics)
        rest = {key: value for key, value in sorted(metrics.items()) if key not in exact}
        reduced = distributed.average_metrics(rest)
        return {key: exact[key] if key in exact else reduced[key] for key in metrics}


def _constructor_options(kind: type[Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``defaults`` that ``kind(params, **options)`` accepts."""
    parameters = inspect.signature(kind.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(defaults)
    return {
        key: value
        for key, value in defaults.items()
        if key in parameters and key not in ("self", "params")
    }


def parameters_of(optimizer: Any) -> Iterable[torch.Tensor]:
    """Every parameter ``optimizer`` updates."""
    return (p for group in optimizer.param_groups for p in group["params"])
