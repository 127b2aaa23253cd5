"""The base every trainer shares: the loop, in one screen, and the components beside it.

A trainer owns the loop and hands each update to an optimizer that it knows only by
its public API (``step``, ``zero_grad``, ``param_groups``, ``state_dict``), so any
``torch.optim.Optimizer`` works, descent's or torch's, and so does any scheduler with
a ``step()`` method (a ``ReduceLROnPlateau``-style scheduler, whose ``step`` takes a
metric, is stepped once per epoch with the monitored metric instead).

The loop (:meth:`Trainer._fit`)::

    on_train_begin
    for epoch in epochs:
        on_epoch_begin
        for window in the epoch's accumulation windows (from state.batch on):
            for batch in window:                # fetched and counted before the first runs
                on_batch_begin
                train_batch(...)                # the strategy: forward, backward, steps
                on_batch_end
            save a checkpoint if one is due     # no window is open here
        end of epoch: metrics over all ranks, evaluation, plateau schedulers, history,
        on_epoch_end, checkpoint
    on_train_end                                # (on_exception instead if anything raised)

Beside the loop, each with its own tests:

* :class:`~descent.train.checkpointing.Checkpointing` — when to save, what a checkpoint
  holds, and ``train(resume=True)`` with its checks and fallback;
* :class:`~descent.train.distribution.Distribution` — ``torchrun``: DDP or gradient
  averaging, ZeRO, counts summed over the ranks, rank-0 output;
* :class:`~descent.train.step.StepGuard` — one optimizer step: non-finite policy,
  callbacks, clipping (:mod:`descent.utils.clip`), ``GradScaler``, scheduler; and the
  forward passes' autocast;
* :class:`~descent.train.metrics.Meter` — weighted epoch means (over all ranks);
* :class:`~descent.train.accumulation.Window` — a step's micro-batches, each weighted
  by its share of the window's count (exact accumulation).

Extension points a subclass may override: :meth:`Trainer.train_batch`,
:meth:`Trainer.forward`, :meth:`Trainer.backward`, :meth:`Trainer.optimizer_step`,
:meth:`Trainer.reduce_metrics`, :meth:`Trainer.wrap_model`,
:meth:`Trainer.gradient_sync`, :meth:`Trainer.autocast`, :meth:`Trainer.count_batch`,
:attr:`Trainer.is_main_process`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..checkpoint import CheckpointManager
from .accumulation import Window
from .callbacks import Callback
from .checkpointing import Checkpointing, largest_step
from .checks import check_positive_int, is_plateau_scheduler
from .data import Batches, make_batches, to_device
from .distribution import Distribution
from .history import History
from .metrics import Meter
from .state import LoopState
from .step import NonFiniteError, StepGuard

__all__ = ["LoopState", "NonFiniteError", "Trainer", "detach"]

TRAINING_KEYS = frozenset(
    {"trainer", "seed", "loop", "meter", "history", "callbacks", "extra", "scaler"}
)
"""The keys of :meth:`Trainer.training_state` (``state_dict`` adds the optimizers and
schedulers)."""


def detach(value: Any) -> Any:
    """``value`` with every tensor in it (nested in tuples, lists, dicts) detached."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, Mapping):
        return {key: detach(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(detach(item) for item in value)
    return value


class Trainer:
    """Base of the trainers: the loop, callbacks, counters, and the components beside it.

    Subclasses implement :meth:`train_batch` (the strategy) and call :meth:`_fit` from
    their ``train`` method. Arguments shared by every trainer:

    Args:
        epochs: epochs per ``train()`` call.
        callbacks: :class:`~descent.train.Callback` objects, called in order.
        nonfinite: ``"raise"`` (default): a NaN/inf loss or gradient raises
            :class:`NonFiniteError` naming the step and the parameters affected, before
            anything is updated. ``"skip"``: that optimizer step is skipped (gradients
            dropped, the scheduler not stepped) and counted in ``state.skipped``.
        precision: ``"fp32"`` (default); ``"bf16"``: forward passes and losses run under
            ``torch.autocast(dtype=torch.bfloat16)`` on the model's device (CPU or CUDA);
            ``"fp16"``: the same in float16, with a ``torch.amp.GradScaler`` scaling the
            loss (a step whose gradients overflow is skipped and counted, and the scale
            lowered, as torch does). Parameters, gradients and optimizer state keep their
            own dtype.
        device: where to move the model and every batch (None: leave them be). The
            model moves with ``model.to(device)``, so its parameters stay the objects an
            optimizer built earlier holds.
        seed: seeds the data order; epoch ``e`` is shuffled by a generator seeded with
            ``(seed, e)`` only, so any epoch's order can be regenerated.
        clip_grad_norm: clip the global gradient norm of each optimizer's parameters to
            this value before each step (None: no clipping).
        clip_grad_value: clamp each gradient element to ``[-value, value]`` (None: no).
        scheduler_monitor: the epoch metric handed to a plateau scheduler's ``step``
            (default ``"val_loss"`` when validation runs, else ``"loss"``).
        checkpoint_dir: a directory for checkpoints of the run (None: no checkpoints).
        checkpoint_every: also save every this many optimizer steps, at the first
            window boundary after them (None: only per epoch).
        checkpoint_each_epoch: save after every epoch (default True).
        keep_last: how many of the newest checkpoints to keep (default 3).
        checkpoint_monitor: an epoch metric (e.g. ``"val_loss"``); the end-of-epoch
            checkpoint with its best value is kept as well as the last ``keep_last``.
        checkpoint_mode: ``"min"`` (default) or ``"max"``: which values of
            ``checkpoint_monitor`` are better.
        zero_redundancy: under ``torch.distributed``, wrap each optimizer in
            ``ZeroRedundancyOptimizer`` (its state sharded over the ranks; a checkpoint
            consolidates it first). Ignored in a single process.
    """

    #: Attribute holding each optimizer of :meth:`optimizers`, by name (for ZeRO wrapping).
    _optimizer_attributes: dict[str, str] = {"optimizer": "optimizer"}
    #: Whether the strategy trains through DDP (False: gradients averaged before steps).
    uses_ddp = True

    def __init__(
        self,
        *,
        epochs: int = 10,
        callbacks: Iterable[Callback] = (),
        nonfinite: str = "raise",
        precision: str = "fp32",
        device: torch.device | str | None = None,
        seed: int = 0,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        scheduler_monitor: str | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        checkpoint_every: int | None = None,
        checkpoint_each_epoch: bool = True,
        keep_last: int = 3,
        checkpoint_monitor: str | None = None,
        checkpoint_mode: str = "min",
        zero_redundancy: bool = False,
    ) -> None:
        owner = type(self).__name__
        self.checkpointing = Checkpointing(
            owner,
            checkpoint_dir,
            every=checkpoint_every,
            each_epoch=checkpoint_each_epoch,
            keep_last=keep_last,
            monitor=checkpoint_monitor,
            mode=checkpoint_mode,
        )
        self.distribution = Distribution(owner, zero_redundancy=zero_redundancy, ddp=self.uses_ddp)
        self.epochs = check_positive_int(owner, "epochs", epochs)
        callbacks = list(callbacks)
        for index, callback in enumerate(callbacks):
            if not isinstance(callback, Callback):
                raise TypeError(
                    f"{owner}: callbacks[{index}] is a {type(callback).__name__}; "
                    "expected a descent.train.Callback"
                )
        self.callbacks: list[Callback] = callbacks
        self.guard = StepGuard(
            owner,
            nonfinite=nonfinite,
            precision=precision,
            clip_grad_norm=clip_grad_norm,
            clip_grad_value=clip_grad_value,
        )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"{owner}: seed={seed!r}; expected an int")
        self.seed = seed
        try:
            self.device = torch.device(device) if device is not None else None
        except (RuntimeError, TypeError) as error:
            raise ValueError(
                f"{owner}: device={device!r} is not a device torch knows "
                "(e.g. 'cpu', 'cuda', 'cuda:1')"
            ) from error
        if scheduler_monitor is not None and not isinstance(scheduler_monitor, str):
            raise TypeError(
                f"{owner}: scheduler_monitor={scheduler_monitor!r}; expected None "
                "or the name of an epoch metric"
            )
        self.scheduler_monitor = scheduler_monitor
        self.state = self.new_state()
        self.history = History()
        self.meter = Meter()
        self.stop_training = False
        self.batches_per_epoch: int | None = None
        self.window: Window | None = None
        self._step_logs: dict[str, float] = {}

    # ------------------------------------------------------------------ the loop

    def _fit(
        self,
        model: nn.Module,
        batches: Batches,
        epochs: int | None,
        evaluate: Callable[[], dict[str, float]] | None = None,
        *,
        resume: bool = False,
    ) -> History:
        """Run (or finish) a ``train()`` call over ``batches``; return the history.

        With ``resume`` the latest usable checkpoint in ``checkpoint_dir`` is loaded
        first (none there: a fresh start), and the run it belongs to is finished.
        """
        training_model = self._prepare(model, batches, epochs, resume)
        state = self.state
        try:
            self._call("on_train_begin")
            while state.epoch < state.end_epoch and not self.stop_training:
                self._begin_epoch(training_model)
                for window in self._windows(batches):
                    for index, batch in window.remaining(state.batch):
                        self._call("on_batch_begin", index)
                        logs = self.train_batch(
                            training_model, batch, index, self.batches_per_epoch
                        )
                        state.batch = index + 1
                        self._call("on_batch_end", index, logs)
                    if self.stop_training:
                        break
                    self.checkpointing.save_if_due(self)
                self._end_epoch(training_model, evaluate)
            state.running = False
            switch_optimizers(self, training=False)  # the model ends at the averaged point
        except BaseException as error:
            for callback in self.callbacks:
                callback.on_exception(self, error)
            raise
        self._call("on_train_end")
        return self.history

    def _prepare(
        self, model: nn.Module, batches: Batches, epochs: int | None, resume: bool
    ) -> nn.Module:
        """Check the call, place the model, resume or refuse a used checkpoint directory,
        and start a new run unless one is to be finished; return the module to train."""
        owner = type(self).__name__
        epochs = self.epochs if epochs is None else check_positive_int(owner, "epochs", epochs)
        if not isinstance(resume, bool):
            raise TypeError(f"{owner}.train: resume={resume!r}; expected a bool")
        if resume and self.checkpointing.manager is None:
            raise ValueError(
                f"{owner}.train: resume=True needs a checkpoint directory; pass "
                f"checkpoint_dir=... to {owner}(...)"
            )
        self.device = self.distribution.join(self.device)
        try:
            n_batches: int | None = len(batches)
        except TypeError:
            n_batches = None
        self._check_batch_count(n_batches)
        self.batches_per_epoch = n_batches
        self.model = model
        if self.device is not None:
            model.to(self.device)
        self.guard.set_device_type(self._find_device_type(model))
        self.guard.names = self._parameter_names()
        for name, optimizer in self.distribution.shard(self.optimizers()).items():
            setattr(self, self._optimizer_attributes[name], optimizer)
        stopped = False
        if resume:
            stopped = self.checkpointing.resume(self)
        else:
            self.checkpointing.refuse_used_directory(self)
        training_model = self.wrap_model(model)
        state = self.state
        if not state.running:
            state.end_epoch, state.batch = state.epoch + epochs, 0
            self.meter = Meter()
            state.running = True
        self.stop_training = stopped
        self.checkpointing.saved_step = state.step
        self.guard.nonfinite_loss = None
        return training_model

    def _begin_epoch(self, model: nn.Module) -> None:
        if self.state.batch == 0:
            self.meter = Meter()
        self._call("on_epoch_begin", self.state.epoch)
        model.train()
        switch_optimizers(self, training=True)

    def _windows(self, batches: Batches) -> Iterator[Window]:
        """The current epoch's accumulation windows, from the one open at ``state.batch``:
        each window's batches fetched (on the device) and counted, the count summed over
        the ranks, before its first batch trains (a window interrupted in the middle is
        fetched and counted whole again, and continues at ``state.batch``)."""
        state, size, n = self.state, self.batches_per_window(), self.batches_per_epoch
        first = state.batch - state.window if size > 1 else state.batch
        source = iter(batches.epoch(state.epoch, start=first))
        while n is None or first < n:
            planned = size if n is None else min(size, n - first)
            fetched = [to_device(batch, self.device) for batch in itertools.islice(source, planned)]
            if not fetched:
                return
            counts = [self.count_batch(batch) for batch in fetched]
            self.window = Window(
                first,
                fetched,
                counts,
                self.distribution.sum(sum(counts)),
                self.distribution.replicas,
            )
            yield self.window
            first += len(fetched)

    def _end_epoch(self, model: nn.Module, evaluate: Callable[[], dict[str, float]] | None) -> None:
        state, epoch = self.state, self.state.epoch
        self.end_epoch(model)
        metrics = {**self.meter.means(), **self._epoch_extras()}
        switch_optimizers(self, training=False)  # validate and save at the averaged point
        if evaluate is not None:
            metrics.update(evaluate())
        metrics = self.reduce_metrics(metrics)
        self._step_plateau_schedulers(metrics)
        self.history.log_epoch(epoch, metrics)
        state.epoch, state.batch = epoch + 1, 0
        self._call("on_epoch_end", epoch, metrics)
        self.checkpointing.save_epoch(self, metrics)

    # ------------------------------------------------------------------ public API

    @property
    def checkpoint_manager(self) -> CheckpointManager | None:
        """The :class:`~descent.checkpoint.CheckpointManager` of ``checkpoint_dir`` (or None)."""
        return self.checkpointing.manager

    @property
    def is_main_process(self) -> bool:
        """Whether this process logs and shows progress: rank 0 (always True in one process)."""
        return self.distribution.is_main_process

    @property
    def nonfinite(self) -> str:
        return self.guard.nonfinite

    @property
    def precision(self) -> str:
        return self.guard.precision

    @property
    def clip_grad_norm(self) -> float | None:
        return self.guard.clip_grad_norm

    @property
    def clip_grad_value(self) -> float | None:
        return self.guard.clip_grad_value

    def epoch_metrics(self) -> dict[str, float]:
        """Weighted means of the current epoch's training metrics so far (this process)."""
        return self.meter.means()

    def optimizers(self) -> dict[str, Any]:
        """The optimizers this trainer steps, by name (``{"optimizer": ...}`` by default)."""
        raise NotImplementedError

    def schedulers(self) -> dict[str, Any]:
        """The schedulers, by the name of the optimizer they drive (None where absent)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The training state (not the model's parameters): counters, history,
        callbacks, every optimizer and scheduler, the epoch's metric sums and the
        ``GradScaler``'s state. Tensors appear only inside optimizer states (and
        callbacks that keep weights); everything else is plain Python values.
        """
        return {
            **self.training_state(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers().items()},
            "schedulers": {
                name: (None if sched is None else sched.state_dict())
                for name, sched in self.schedulers().items()
            },
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`. Everything is checked before anything changes;
        if an optimizer or scheduler refuses its part, the ones loaded before it are
        put back as they were."""
        owner = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{owner}: expected a dict, got {type(state_dict).__name__}")
        self._check_header(state_dict, owner, TRAINING_KEYS | {"optimizers", "schedulers"})
        optimizers, schedulers = self.optimizers(), self.schedulers()
        for part, mine in (("optimizers", optimizers), ("schedulers", schedulers)):
            given = state_dict[part]
            if not isinstance(given, Mapping) or set(given) != set(mine):
                got = sorted(given) if isinstance(given, Mapping) else given
                raise ValueError(f"{owner}: {part} {got}; expected {sorted(mine)}")
        for name, sched in schedulers.items():
            if (sched is None) != (state_dict["schedulers"][name] is None):
                raise ValueError(
                    f"{owner}: scheduler {name!r} is "
                    f"{'absent' if sched is None else 'present'} here but not "
                    "in the state"
                )
        objects = [(opt, state_dict["optimizers"][name]) for name, opt in optimizers.items()]
        objects += [
            (sched, state_dict["schedulers"][name])
            for name, sched in schedulers.items()
            if sched is not None
        ]
        rest = {
            key: value
            for key, value in state_dict.items()
            if key not in ("optimizers", "schedulers")
        }
        self.load_training_state(rest, owner, objects=objects)

    # ------------------------------------------------------------------ the components' seam

    def new_state(self) -> LoopState:
        """A fresh :class:`LoopState` of this trainer's kind."""
        return LoopState()

    def batches_per_window(self) -> int:
        """Batches per accumulation window (1: every batch steps on its own)."""
        return 1

    def check_counters(self, loop: LoopState) -> None:
        """Raise ``ValueError`` naming a counter of ``loop`` impossible for this trainer."""
        loop.check(batches_per_epoch=self.batches_per_epoch, accumulation=self.batches_per_window())

    def loop_plan(self) -> dict[str, Any]:
        """What the counters refer to (a checkpoint records it; a resume requires it)."""
        return {
            "batches_per_epoch": self.batches_per_epoch,
            "batches_per_window": self.batches_per_window(),
        }

    def training_state(self) -> dict[str, Any]:
        """:meth:`state_dict` without the optimizers and schedulers (a checkpoint stores
        those itself, consolidating a ZeroRedundancyOptimizer first)."""
        return {
            "trainer": type(self).__name__,
            "seed": self.seed,
            "loop": self.state.state_dict(),
            "meter": self.meter.state_dict(),
            "history": self.history.state_dict(),
            "callbacks": [callback.state_dict() for callback in self.callbacks],
            "extra": self._extra_state(),
            "scaler": self.guard.state_dict(),
        }

    def rank_state(self) -> dict[str, Any]:
        """The part of the training state that differs between ranks, and each
        optimizer's largest ``step`` (a resume checks it against the saved state)."""
        steps = {}
        for name, optimizer in self.optimizers().items():
            local = optimizer.optim if distributed.is_zero_optimizer(optimizer) else optimizer
            steps[name] = largest_step(local.state_dict())
        return {
            "trainer": {
                "meter": self.meter.state_dict(),
                "extra": self._extra_state(),
                "scaler": self.guard.state_dict(),
            },
            "optimizer_steps": steps,
        }

    def checkpoint_schedulers(self) -> dict[str, Any]:
        """The schedulers a checkpoint holds (those present), by name."""
        return {name: sched for name, sched in self.schedulers().items() if sched is not None}

    def load_training_state(
        self,
        state_dict: Mapping[str, Any],
        owner: str,
        *,
        objects: Iterable[tuple[Any, Any]] = (),
        then: Callable[[], None] | None = None,
    ) -> None:
        """Check and apply a :meth:`training_state`; load each ``(object, state)`` of
        ``objects``; ``then`` runs last. If anything raises, what was loaded is put back."""
        self._check_header(state_dict, owner, TRAINING_KEYS)
        loop, history, meter = self.new_state(), History(), Meter()
        loop.load_state_dict(state_dict["loop"])
        try:
            self.check_counters(loop)
        except ValueError as error:
            raise ValueError(f"{owner}: {error}") from None
        history.load_state_dict(state_dict["history"])
        meter.load_state_dict(state_dict["meter"])
        self._check_extra_state(state_dict["extra"])
        self.guard.check_state(owner, state_dict["scaler"])
        backups: list[tuple[Any, Any]] = []
        try:
            for obj, state in [
                *objects,
                *zip(self.callbacks, state_dict["callbacks"], strict=True),
            ]:
                backups.append((obj, obj.state_dict()))
                obj.load_state_dict(state)
            if then is not None:
                then()
        except Exception:
            for obj, backup in reversed(backups):
                obj.load_state_dict(backup)
            raise
        self.state, self.history, self.meter = loop, history, meter
        self._load_extra_state(state_dict["extra"])
        self.guard.load_state(state_dict["scaler"])

    def _check_header(
        self, state_dict: Mapping[str, Any], owner: str, keys: frozenset[str]
    ) -> None:
        """Refuse a state of other keys, another trainer class, seed or callback count."""
        if set(state_dict) != keys:
            raise ValueError(f"{owner}: keys {sorted(state_dict)}; expected {sorted(keys)}")
        if state_dict["trainer"] != type(self).__name__:
            raise ValueError(
                f"{owner}: the state is from a {state_dict['trainer']}, not a {type(self).__name__}"
            )
        if state_dict["seed"] != self.seed:
            raise ValueError(
                f"{owner}: the state was saved with seed={state_dict['seed']}, "
                f"this trainer has seed={self.seed}; the data order would differ"
            )
        if not isinstance(state_dict["callbacks"], list) or len(state_dict["callbacks"]) != len(
            self.callbacks
        ):
            got = (
                len(state_dict["callbacks"])
                if isinstance(state_dict["callbacks"], list)
                else state_dict["callbacks"]
            )
            raise ValueError(
                f"{owner}: the state has {got} callback states, the trainer has "
                f"{len(self.callbacks)} callbacks"
            )

    def _extra_state(self) -> dict[str, Any]:
        """Strategy-specific state (e.g. a noise generator) for :meth:`state_dict`."""
        return {}

    def _check_extra_state(self, extra: Mapping[str, Any]) -> None:
        if extra:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: unexpected extra state {sorted(extra)}"
            )

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        """Apply state already checked by :meth:`_check_extra_state`."""

    def _check_batch_count(self, n_batches: int | None) -> None:
        """Refuse sources of unknown length when the strategy needs the count."""

    # ------------------------------------------------------------------ extension points

    def train_batch(
        self, model: nn.Module, batch: Any, index: int, n_batches: int | None
    ) -> dict[str, float]:
        """Train on one batch (batch ``index`` of ``n_batches`` in the epoch, in the
        accumulation window ``self.window``); return its logs.

        The logs (floats) go to ``on_batch_end`` and the progress bar. Implementations
        record the epoch's means through ``self.meter``.
        """
        raise NotImplementedError

    def count_batch(self, batch: Any) -> float:
        """What ``batch`` counts towards its window's total (default: 1 per batch)."""
        return 1.0

    def make_batches(
        self,
        x: Any,
        y: Any = None,
        *,
        batch_size: int,
        shuffle: bool,
        drop_last: bool = False,
        require_targets: bool = True,
        x_name: str = "x",
        y_name: str = "y",
        shard: bool = True,
    ) -> Batches:
        """The batch source for ``x`` (and ``y``): :func:`descent.train.data.make_batches`
        with this trainer's seed; under torch.distributed (and ``shard``), this rank's
        share of every epoch's seeded order."""
        self.device = self.distribution.join(self.device)
        replicas, rank = (distributed.get_world_size(), distributed.get_rank()) if shard else (1, 0)
        return make_batches(
            type(self).__name__,
            x,
            y,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=self.seed,
            require_targets=require_targets,
            x_name=x_name,
            y_name=y_name,
            num_replicas=replicas,
            rank=rank,
        )

    def end_epoch(self, model: nn.Module) -> None:
        """Called after the epoch's last batch, before its metrics are computed."""

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        """The model's output for ``inputs`` (``model(inputs)``)."""
        return model(inputs)

    def backward(self, loss: torch.Tensor, *, model: nn.Module, sync: bool) -> None:
        """Back-propagate ``loss`` (already weighted by its share of the window).

        ``sync`` is True for the last micro-batch of an accumulation window, the one
        after which the optimizer steps (a distributed trainer skips the gradient
        all-reduce, ``model.no_sync()``, when it is False). Under ``precision="fp16"``
        the loss is scaled by the ``GradScaler`` first.
        """
        self.guard.scale_loss(loss).backward()

    def reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """The epoch's metrics as reported: under torch.distributed, the training means
        over the samples of every rank, and the other metrics averaged over the ranks."""
        if not self.distribution.active:
            return metrics
        return self.distribution.reduce_metrics(metrics, self.meter.global_means())

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context for forward passes (``precision``), else a no-op."""
        return self.guard.autocast()

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """The module the loop trains through: ``DistributedDataParallel(model)`` under
        ``torch.distributed`` (made once per model), else ``model`` itself."""
        return self.distribution.wrap_model(model)

    def gradient_sync(self, model: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """Context around one micro-batch's forward and backward: ``model.no_sync()``
        under DDP when ``sync`` is False (a micro-batch inside an accumulation window)."""
        return self.distribution.gradient_sync(model, sync)

    def optimizer_step(
        self, optimizer: Any, scheduler: Any = None, *, name: str = "optimizer"
    ) -> bool:
        """Check, clip and apply one step of ``optimizer``, then step ``scheduler``
        (:meth:`StepGuard.step`: non-finite check, ``on_before_optimizer_step``
        callbacks, clipping, step, ``zero_grad``, scheduler). Without DDP, the gradients
        are first averaged over the ranks. Returns False if the step was skipped."""
        self.distribution.average_gradients(optimizer)
        logs = self.guard.step(
            optimizer,
            scheduler,
            before_step=lambda: self._call("on_before_optimizer_step", optimizer, name),
            where=lambda: (
                f"optimizer step {self._next_step_number(name)} ({name}, epoch "
                f"{self.state.epoch}, batch {self.state.batch})"
            ),
        )
        if logs is None:
            self.state.skipped += 1
            return False
        prefix = "" if name == "optimizer" else f"{name}_"
        self._step_logs.update({prefix + key: value for key, value in logs.items()})
        return True

    # ------------------------------------------------------------------ helpers

    def _finish_window(
        self, optimizer: Any, scheduler: Any, *, name: str = "optimizer", loss_key: str = "loss"
    ) -> bool:
        """Step ``optimizer`` on the window just completed; log the step (the window's
        mean loss as ``loss_key``); reset the window. Returns False if it was skipped."""
        state = self.state
        try:
            stepped = self.optimizer_step(optimizer, scheduler, name=name)
        except NonFiniteError:
            # The window's gradients are gone: the counters move past it, so that a
            # later train() call continues with the next batch.
            state.window = 0
            state.batch += 1
            self.meter.pop_window()
            self._step_logs = {}
            raise
        state.window = 0
        mean = self.meter.pop_window()
        logs = {loss_key: mean["loss"]} if mean else {}
        if stepped:
            logs.update(self._step_logs)
            self.history.log_step(self._count_step(name), logs)
        self._step_logs = {}
        return stepped

    def _count_step(self, name: str) -> int:
        """Count a step of optimizer ``name``; return its number."""
        self.state.step += 1
        return self.state.step

    def _weighted_loss(
        self, loss: torch.Tensor, index: int, count: float, weight: float
    ) -> tuple[torch.Tensor, float]:
        """What to back-propagate for a micro-batch's mean ``loss`` (``weight``: its share
        of the window), and the loss as a float. A micro-batch that counts nothing (all
        its targets padding) has a mean of 0/0: it adds nothing, and is not a non-finite
        loss (its backward still runs, with zeros, so that DDP synchronises)."""
        if not count:
            return loss.nan_to_num(0.0) * 0.0, math.nan
        return loss * weight, self._note_loss(loss, index)

    def _note_loss(self, loss: torch.Tensor, index: int) -> float:
        """The loss as a float; a non-finite one is remembered for the coming step check."""
        return self.guard.note_loss(loss, self.state.epoch, index)

    def _find_device_type(self, model: nn.Module) -> str:
        if self.device is not None:
            return self.device.type
        for param in model.parameters():
            return param.device.type
        return "cpu"

    def _parameter_names(self) -> dict[int, str]:
        names: dict[int, str] = {}
        for prefix, module in self._named_modules().items():
            for name, param in module.named_parameters():
                names.setdefault(id(param), f"{prefix}{name}")
        return names

    def _named_modules(self) -> dict[str, nn.Module]:
        """Modules whose parameter names label errors, by prefix."""
        model = getattr(self, "model", None)
        return {"": model} if isinstance(model, nn.Module) else {}

    def _next_step_number(self, name: str) -> int:
        """The number the coming step of optimizer ``name`` will have (1-based)."""
        return self.state.step + 1

    def _step_plateau_schedulers(self, metrics: Mapping[str, float]) -> None:
        for name, scheduler in self.schedulers().items():
            if scheduler is None or not is_plateau_scheduler(scheduler):
                continue
            monitor = self.scheduler_monitor
            if monitor is None:
                monitor = "val_loss" if "val_loss" in metrics else "loss"
            if monitor not in metrics:
                raise ValueError(
                    f"{type(self).__name__}: scheduler_monitor={monitor!r} is not "
                    f"among the epoch metrics {sorted(metrics)} (needed by the "
                    f"plateau scheduler of {name!r})"
                )
            scheduler.step(metrics[monitor])

    def _epoch_extras(self) -> dict[str, float]:
        return {"skipped_steps": float(self.state.skipped)} if self.state.skipped else {}

    def _call(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)


def switch_optimizers(trainer: Trainer, *, training: bool) -> None:
    """Put the trainer's mode-switching optimizers (Schedule-Free,
    :class:`descent.optim.schedule_free.ModeSwitching`) in train or eval mode.

    A trainer calls ``eval()`` before validation, before saving a checkpoint and at the
    end of training (so the model holds the averaged point there), and ``train()``
    before training steps. Optimizers without ``train``/``eval`` (torch.optim's, most of
    descent's) are left alone; both calls are idempotent.
    """
    for optimizer in trainer.optimizers().values():
        switch = getattr(optimizer, "train" if training else "eval", None)
        other = getattr(optimizer, "eval" if training else "train", None)
        if callable(switch) and callable(other):
            switch()
