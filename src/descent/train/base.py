"""The small base every trainer shares: the epoch loop, counters, and one optimizer step.

A trainer owns the loop and hands each update to an optimizer that it knows only by
its public API (``step``, ``zero_grad``, ``param_groups``, ``state_dict``), so any
``torch.optim.Optimizer`` works, descent's or torch's, and so does any scheduler
with a ``step()`` method (``ReduceLROnPlateau``-style schedulers, whose ``step``
takes a metric, are stepped once per epoch with the monitored metric instead).

The loop, shared by all trainers::

    on_train_begin
    for epoch in epochs:
        on_epoch_begin
        for batch in the epoch's batches (from `state.batch` on):
            on_batch_begin
            train_batch(...)      # the strategy: forward, backward, optimizer steps
            on_batch_end
        end_epoch(...)            # flush a partial accumulation window
        evaluate, reduce_metrics, plateau schedulers, history
        on_epoch_end
    on_train_end                  # (on_exception instead if anything raised)

Checkpoints (``checkpoint_dir=``) are written at batch boundaries where no
accumulation window is open (``state.window == 0``) every ``checkpoint_every``
optimizer steps, and after ``on_epoch_end``; ``train(..., resume=True)`` loads the
latest valid one before the loop starts. Under ``torchrun`` the loop runs on every
rank: the model is wrapped in ``DistributedDataParallel``, each rank trains on its
shard of the seeded order, and metrics are averaged over the ranks.

Extension points a subclass may override: :meth:`Trainer.train_batch`,
:meth:`Trainer.forward`, :meth:`Trainer.compute_loss`, :meth:`Trainer.backward`,
:meth:`Trainer.optimizer_step`, :meth:`Trainer.reduce_metrics`,
:attr:`Trainer.is_main_process`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..checkpoint import CheckpointManager, load_checkpoint, read_checkpoint
from .callbacks import Callback
from .data import Batches, make_batches, to_device
from .history import History

NONFINITE_POLICIES = ("raise", "skip")
PRECISIONS = ("fp32", "bf16")


class NonFiniteError(FloatingPointError):
    """A loss or gradient was NaN or infinite (``nonfinite="raise"``); nothing was updated."""


@dataclasses.dataclass
class LoopState:
    """Every counter of a run, in one place (what a checkpoint must restore).

    ``epoch``: index of the current epoch (epochs completed, between epochs);
    ``batch``: batches of the current epoch already consumed; ``step``: optimizer steps
    taken in all; ``window``: micro-batches accumulated towards the next step;
    ``skipped``: steps skipped for non-finite values; ``end_epoch``: the epoch at
    which the current ``train()`` call stops; ``running``: a ``train()`` call is under
    way (or was interrupted: the next call then finishes it).
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    window: int = 0
    skipped: int = 0
    end_epoch: int = 0
    running: bool = False

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        fields = {f.name: f.type for f in dataclasses.fields(self)}
        if not isinstance(state_dict, Mapping) or set(state_dict) != set(fields):
            got = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict)
            raise ValueError(f"{type(self).__name__}.load_state_dict: keys {got}; expected "
                             f"{sorted(fields)}")
        for name, value in state_dict.items():
            kind = bool if name == "running" else int
            if type(value) is not kind or (kind is int and value < 0):
                raise ValueError(f"{type(self).__name__}.load_state_dict: {name}={value!r}; "
                                 f"expected a {'bool' if kind is bool else 'non-negative int'}")
        for name, value in state_dict.items():
            setattr(self, name, value)


def check_positive_int(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name}={value!r}; expected a positive integer")
    return value


def check_choice(owner: str, name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{owner}: {name}={value!r}; expected one of {list(choices)}")
    return value


def check_optional_positive(owner: str, name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{owner}: {name}={value!r}; expected None or a positive number")
    return float(value)


def check_optimizer(owner: str, name: str, optimizer: Any) -> Any:
    for attribute in ("step", "zero_grad", "param_groups", "state_dict"):
        if not hasattr(optimizer, attribute):
            raise TypeError(f"{owner}: {name} is a {type(optimizer).__name__}, which has no "
                            f"{attribute!r}; expected an optimizer (descent or torch.optim)")
    return optimizer


def check_scheduler(owner: str, name: str, scheduler: Any) -> Any:
    if scheduler is not None and not callable(getattr(scheduler, "step", None)):
        raise TypeError(f"{owner}: {name} is a {type(scheduler).__name__} without a step() "
                        "method; expected None or a learning-rate scheduler")
    return scheduler


def is_plateau_scheduler(scheduler: Any) -> bool:
    """Whether ``scheduler.step`` needs a metric (``ReduceLROnPlateau`` and the like)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return True
    return _step_needs_argument(type(scheduler))


@functools.lru_cache(maxsize=256)
def _step_needs_argument(kind: type) -> bool:
    try:
        parameters = list(inspect.signature(kind.step).parameters.values())[1:]
    except (AttributeError, TypeError, ValueError):
        return False
    return any(p.default is inspect.Parameter.empty
               and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)


def detach(value: Any) -> Any:
    """``value`` with every tensor in it (nested in tuples, lists, dicts) detached."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, Mapping):
        return {key: detach(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(detach(item) for item in value)
    return value


class _Meter:
    """Sample-weighted running means of the training metrics of one epoch."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}
        self.window_sum = 0.0
        self.window_weight = 0.0

    def add(self, metrics: Mapping[str, float], weight: float) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * weight
            self.counts[key] = self.counts.get(key, 0.0) + weight

    def means(self) -> dict[str, float]:
        return {key: self.sums[key] / self.counts[key] for key in self.sums if self.counts[key]}

    def add_window(self, loss: float, weight: float) -> None:
        self.window_sum += loss * weight
        self.window_weight += weight

    def pop_window(self) -> dict[str, float]:
        """The sample-weighted mean loss of the window just stepped (and reset it)."""
        logs = {"loss": self.window_sum / self.window_weight} if self.window_weight else {}
        self.window_sum = self.window_weight = 0.0
        return logs

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts),
                "window": [self.window_sum, self.window_weight]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if not isinstance(state_dict, Mapping) or set(state_dict) != {"sums", "counts", "window"}:
            raise ValueError("Trainer.load_state_dict: 'meter' must hold 'sums', 'counts' and "
                             "'window'")
        self.sums = {str(k): float(v) for k, v in state_dict["sums"].items()}
        self.counts = {str(k): float(v) for k, v in state_dict["counts"].items()}
        self.window_sum, self.window_weight = (float(v) for v in state_dict["window"])


class Trainer:
    """Base of the trainers: the epoch loop, callbacks, counters and the optimizer step.

    Subclasses implement :meth:`train_batch` (the strategy) and call :meth:`_fit`
    from their ``train`` method. Arguments shared by every trainer:

    Args:
        epochs: epochs per ``train()`` call.
        callbacks: :class:`~descent.train.Callback` objects, called in order.
        nonfinite: ``"raise"`` (default): a NaN/inf loss or gradient raises
            :class:`NonFiniteError` naming the step and the parameters affected, before
            anything is updated. ``"skip"``: that optimizer step is skipped (gradients
            dropped, the scheduler not stepped) and counted in ``state.skipped``.
        precision: ``"fp32"`` (default) or ``"bf16"``: forward passes and losses run
            under ``torch.autocast(dtype=torch.bfloat16)`` on the model's device (CPU or
            CUDA); parameters, gradients and optimizer state stay in their own dtype.
        device: where to move the model and every batch (None: leave them be). The
            model moves with ``model.to(device)``, so its parameters stay the objects an
            optimizer built earlier holds; build the optimizer after moving the model if
            it already has state.
        seed: seeds the data order; epoch ``e`` is shuffled by a generator seeded with
            ``(seed, e)`` only, so any epoch's order can be regenerated.
        clip_grad_norm: clip the global gradient norm of each optimizer's parameters to
            this value before each step (None: no clipping).
        clip_grad_value: clamp each gradient element to ``[-value, value]`` (None: no).
        scheduler_monitor: the epoch metric handed to a plateau scheduler's ``step``
            (default ``"val_loss"`` when validation runs, else ``"loss"``).
        checkpoint_dir: a directory for checkpoints of the run (None: no checkpoints).
            Each holds the model, every optimizer and scheduler, the counters, the
            data position, the history, the callbacks' state and every process's
            random generator states (see :mod:`descent.checkpoint`).
        checkpoint_every: also save every this many optimizer steps, at the first
            batch boundary with no open accumulation window (None: only per epoch).
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

    def __init__(self, *, epochs: int = 10, callbacks: Iterable[Callback] = (),
                 nonfinite: str = "raise", precision: str = "fp32",
                 device: torch.device | str | None = None, seed: int = 0,
                 clip_grad_norm: float | None = None,
                 clip_grad_value: float | None = None,
                 scheduler_monitor: str | None = None,
                 checkpoint_dir: str | os.PathLike[str] | None = None,
                 checkpoint_every: int | None = None, checkpoint_each_epoch: bool = True,
                 keep_last: int = 3, checkpoint_monitor: str | None = None,
                 checkpoint_mode: str = "min", zero_redundancy: bool = False) -> None:
        owner = type(self).__name__
        self._manager = _checkpoint_manager(owner, checkpoint_dir, checkpoint_every,
                                            checkpoint_each_epoch, keep_last,
                                            checkpoint_monitor, checkpoint_mode)
        self.checkpoint_every = checkpoint_every
        self.checkpoint_each_epoch = checkpoint_each_epoch
        self.checkpoint_monitor = checkpoint_monitor
        if not isinstance(zero_redundancy, bool):
            raise TypeError(f"{owner}: zero_redundancy={zero_redundancy!r}; expected a bool")
        self.zero_redundancy = zero_redundancy
        self._saved_step = 0
        self._training_model: tuple[nn.Module, nn.Module] | None = None
        self._sync_gradients_by_hand = False
        self.epochs = check_positive_int(owner, "epochs", epochs)
        callbacks = list(callbacks)
        for index, callback in enumerate(callbacks):
            if not isinstance(callback, Callback):
                raise TypeError(f"{owner}: callbacks[{index}] is a {type(callback).__name__}; "
                                "expected a descent.train.Callback")
        self.callbacks: list[Callback] = callbacks
        self.nonfinite = check_choice(owner, "nonfinite", nonfinite, NONFINITE_POLICIES)
        self.precision = check_choice(owner, "precision", precision, PRECISIONS)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"{owner}: seed={seed!r}; expected an int")
        self.seed = seed
        try:
            self.device = torch.device(device) if device is not None else None
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"{owner}: device={device!r} is not a device torch knows "
                             "(e.g. 'cpu', 'cuda', 'cuda:1')") from error
        self.clip_grad_norm = check_optional_positive(owner, "clip_grad_norm", clip_grad_norm)
        self.clip_grad_value = check_optional_positive(owner, "clip_grad_value", clip_grad_value)
        self.state = self._new_state()
        self.history = History()
        self.stop_training = False
        self._meter = _Meter()
        self._nonfinite_loss: tuple[int, int, float] | None = None
        self._names: dict[int, str] = {}
        self._device_type = "cpu"
        self._step_logs: dict[str, float] = {}
        self.batches_per_epoch: int | None = None
        if scheduler_monitor is not None and not isinstance(scheduler_monitor, str):
            raise TypeError(f"{owner}: scheduler_monitor={scheduler_monitor!r}; expected None "
                            "or the name of an epoch metric")
        self.scheduler_monitor = scheduler_monitor

    #: Attribute holding each optimizer of :meth:`optimizers`, by name (for ZeRO wrapping).
    _optimizer_attributes: dict[str, str] = {"optimizer": "optimizer"}

    def _new_state(self) -> LoopState:
        return LoopState()

    @property
    def checkpoint_manager(self) -> CheckpointManager | None:
        """The :class:`~descent.checkpoint.CheckpointManager` of ``checkpoint_dir`` (or None)."""
        return self._manager

    # ------------------------------------------------------------------ public API

    @property
    def is_main_process(self) -> bool:
        """Whether this process logs and shows progress: rank 0 (always True in one process)."""
        return distributed.is_main_process()

    def epoch_metrics(self) -> dict[str, float]:
        """Sample-weighted means of the current epoch's training metrics so far."""
        return self._meter.means()

    def optimizers(self) -> dict[str, Any]:
        """The optimizers this trainer steps, by name (``{"optimizer": ...}`` by default)."""
        raise NotImplementedError

    def schedulers(self) -> dict[str, Any]:
        """The schedulers, by the name of the optimizer they drive (None where absent)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The training state (not the model's parameters): counters, history,
        callbacks, every optimizer and scheduler, and the epoch's metric sums.

        Tensors appear only inside optimizer states (and callbacks that keep weights);
        everything else is plain Python values.
        """
        return {
            **self._training_state(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers().items()},
            "schedulers": {name: (None if sched is None else sched.state_dict())
                           for name, sched in self.schedulers().items()},
        }

    def _training_state(self) -> dict[str, Any]:
        """:meth:`state_dict` without the optimizers and schedulers (a checkpoint stores
        those itself, consolidating a ZeroRedundancyOptimizer first)."""
        return {
            "trainer": type(self).__name__,
            "seed": self.seed,
            "loop": self.state.state_dict(),
            "meter": self._meter.state_dict(),
            "history": self.history.state_dict(),
            "callbacks": [callback.state_dict() for callback in self.callbacks],
            "extra": self._extra_state(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`. Everything is checked before anything changes;
        if an optimizer or scheduler refuses its part, the ones loaded before it are
        put back as they were."""
        self._load_state(state_dict, f"{type(self).__name__}.load_state_dict",
                         with_optimizers=True)

    def _load_state(self, state_dict: Mapping[str, Any], owner: str, *, with_optimizers: bool,
                     then: Callable[[], None] | None = None) -> None:
        """Check and apply a (training) state; ``then`` runs last, and if it raises,
        everything loaded here is put back as it was."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{owner}: expected a dict, got {type(state_dict).__name__}")
        keys = {"trainer", "seed", "loop", "meter", "history", "callbacks", "extra"}
        if with_optimizers:
            keys |= {"optimizers", "schedulers"}
        if set(state_dict) != keys:
            raise ValueError(f"{owner}: keys {sorted(state_dict)}; expected {sorted(keys)}")
        if state_dict["trainer"] != type(self).__name__:
            raise ValueError(f"{owner}: the state is from a {state_dict['trainer']}, not a "
                             f"{type(self).__name__}")
        if state_dict["seed"] != self.seed:
            raise ValueError(f"{owner}: the state was saved with seed={state_dict['seed']}, "
                             f"this trainer has seed={self.seed}; the data order would differ")
        if len(state_dict["callbacks"]) != len(self.callbacks):
            raise ValueError(f"{owner}: the state has {len(state_dict['callbacks'])} callback "
                             f"states, the trainer has {len(self.callbacks)} callbacks")
        optimizers, schedulers = self.optimizers(), self.schedulers()
        if with_optimizers:
            for part, mine in (("optimizers", optimizers), ("schedulers", schedulers)):
                if set(state_dict[part]) != set(mine):
                    raise ValueError(f"{owner}: {part} {sorted(state_dict[part])}; expected "
                                     f"{sorted(mine)}")
            for name, sched in schedulers.items():
                if (sched is None) != (state_dict["schedulers"][name] is None):
                    raise ValueError(f"{owner}: scheduler {name!r} is "
                                     f"{'absent' if sched is None else 'present'} here but not "
                                     "in the state")
        loop, history, meter = self._new_state(), History(), _Meter()
        loop.load_state_dict(state_dict["loop"])
        history.load_state_dict(state_dict["history"])
        meter.load_state_dict(state_dict["meter"])
        self._check_extra_state(state_dict["extra"])
        backups: list[tuple[Any, dict[str, Any]]] = []
        try:
            if with_optimizers:
                for name, opt in optimizers.items():
                    backups.append((opt, opt.state_dict()))
                    opt.load_state_dict(state_dict["optimizers"][name])
                for name, sched in schedulers.items():
                    if sched is not None:
                        backups.append((sched, sched.state_dict()))
                        sched.load_state_dict(state_dict["schedulers"][name])
            for callback, callback_state in zip(self.callbacks, state_dict["callbacks"],
                                                strict=True):
                backups.append((callback, callback.state_dict()))
                callback.load_state_dict(callback_state)
            if then is not None:
                then()
        except Exception:
            for obj, backup in reversed(backups):
                obj.load_state_dict(backup)
            raise
        self.state, self.history, self._meter = loop, history, meter
        self._load_extra_state(state_dict["extra"])

    def _extra_state(self) -> dict[str, Any]:
        """Strategy-specific state (e.g. a noise generator) for :meth:`state_dict`."""
        return {}

    def _check_extra_state(self, extra: Mapping[str, Any]) -> None:
        if extra:
            raise ValueError(f"{type(self).__name__}.load_state_dict: unexpected extra state "
                             f"{sorted(extra)}")

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        """Apply state already checked by :meth:`_check_extra_state`."""

    # ------------------------------------------------------------------ the loop

    def _fit(self, model: nn.Module, batches: Batches, epochs: int | None,
             evaluate: Callable[[], dict[str, float]] | None = None, *,
             resume: bool = False) -> History:
        """Run (or finish) a ``train()`` call over ``batches``; return the history.

        With ``resume`` the latest valid checkpoint in ``checkpoint_dir`` is loaded
        first (none there: a fresh start), and the run it belongs to is finished.
        """
        owner = type(self).__name__
        epochs = self.epochs if epochs is None else check_positive_int(owner, "epochs", epochs)
        if not isinstance(resume, bool):
            raise TypeError(f"{owner}.train: resume={resume!r}; expected a bool")
        if resume and self._manager is None:
            raise ValueError(f"{owner}.train: resume=True needs a checkpoint directory; pass "
                             f"checkpoint_dir=... to {owner}(...)")
        self._join_process_group()
        try:
            n_batches: int | None = len(batches)
        except TypeError:
            n_batches = None
        self._check_batch_count(n_batches)
        self.batches_per_epoch = n_batches
        self.model = model
        if self.device is not None:
            model.to(self.device)
        self._device_type = self._find_device_type(model)
        self._names = self._parameter_names()
        self._wrap_zero_redundancy()
        resumed_stop = False
        if resume:
            resumed_stop = self._resume()
        elif self._manager is not None and not self.state.running and self.state.step == 0:
            self._refuse_old_checkpoints()
        training_model = self.wrap_model(model)
        state = self.state
        if not state.running:
            state.end_epoch = state.epoch + epochs
            state.batch = 0
            self._meter = _Meter()
            state.running = True
        self.stop_training = resumed_stop
        self._saved_step = state.step
        self._nonfinite_loss = None
        try:
            self._call("on_train_begin")
            while state.epoch < state.end_epoch and not self.stop_training:
                self._run_epoch(training_model, batches, evaluate)
            state.running = False
        except BaseException as error:
            for callback in self.callbacks:
                callback.on_exception(self, error)
            raise
        self._call("on_train_end")
        return self.history

    def _run_epoch(self, model: nn.Module, batches: Batches,
                   evaluate: Callable[[], dict[str, float]] | None) -> None:
        state = self.state
        epoch = state.epoch
        n_batches = self.batches_per_epoch
        if state.batch == 0:
            self._meter = _Meter()
        self._call("on_epoch_begin", epoch)
        model.train()
        for batch in batches.epoch(epoch, start=state.batch):
            index = state.batch
            self._call("on_batch_begin", index)
            logs = self.train_batch(model, to_device(batch, self.device), index, n_batches)
            state.batch = index + 1
            self._call("on_batch_end", index, logs)
            if self.stop_training and state.window == 0:
                break
            if self._checkpoint_due():
                self._save_checkpoint({})
        self.end_epoch(model)
        metrics = self._meter.means()
        metrics.update(self._epoch_extras())
        if evaluate is not None:
            metrics.update(evaluate())
        metrics = self.reduce_metrics(metrics)
        self._step_plateau_schedulers(metrics)
        self.history.log_epoch(epoch, metrics)
        state.epoch, state.batch = epoch + 1, 0
        self._call("on_epoch_end", epoch, metrics)
        if self._manager is not None and self.checkpoint_each_epoch:
            monitor = self.checkpoint_monitor
            if monitor is not None and monitor not in metrics:
                raise ValueError(f"{type(self).__name__}: checkpoint_monitor={monitor!r} is not "
                                 f"among the epoch metrics {sorted(metrics)}")
            self._save_checkpoint(metrics)

    def _check_batch_count(self, n_batches: int | None) -> None:
        """Refuse sources of unknown length when the strategy needs the count."""

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint_due(self) -> bool:
        """A step checkpoint is due: ``checkpoint_every`` steps passed, no window open."""
        every = self.checkpoint_every
        if self._manager is None or every is None or self.state.window != 0:
            return False
        return self.state.step // every > self._saved_step // every

    def _checkpoint_schedulers(self) -> dict[str, Any]:
        return {name: sched for name, sched in self.schedulers().items() if sched is not None}

    def _rank_state(self) -> dict[str, Any]:
        """The part of the training state that differs between ranks."""
        return {"meter": self._meter.state_dict(), "extra": self._extra_state()}

    def _save_checkpoint(self, metrics: Mapping[str, float]) -> None:
        """Write a checkpoint of the current step (call on every rank; rank 0 writes)."""
        assert self._manager is not None
        payload = {"trainer": self._training_state(),
                   "ranks": distributed.all_gather_object(self._rank_state()),
                   "stop_training": bool(self.stop_training),
                   "world_size": distributed.get_world_size()}
        self._manager.save(self.state.step, model=self.model, optimizers=self.optimizers(),
                           schedulers=self._checkpoint_schedulers(), trainer_state=payload,
                           metrics={key: value for key, value in metrics.items()
                                    if isinstance(value, int | float)})
        self._saved_step = self.state.step

    def _resume(self) -> bool:
        """Load the latest valid checkpoint (all of it, or nothing); return its stop flag."""
        assert self._manager is not None
        owner = f"{type(self).__name__}.train(resume=True)"
        chosen = self._manager.latest() if distributed.is_main_process() else None
        chosen = distributed.broadcast_object(None if chosen is None else str(chosen))
        if chosen is None:
            return False
        payload = read_checkpoint(chosen)["trainer_state"]
        keys = {"trainer", "ranks", "stop_training", "world_size"}
        if not isinstance(payload, Mapping) or set(payload) != keys:
            raise ValueError(f"{owner}: the checkpoint {chosen} was not written by a descent "
                             f"trainer (its trainer_state is not a dict with keys {sorted(keys)})")
        world_size = distributed.get_world_size()
        if payload["world_size"] != world_size or len(payload["ranks"]) != world_size:
            raise ValueError(f"{owner}: the checkpoint {chosen} was written by "
                             f"{payload['world_size']} process(es), this run has {world_size}; "
                             "exact resume needs the same world size")
        state = {**payload["trainer"], **payload["ranks"][distributed.get_rank()]}

        def load_tensors() -> None:
            load_checkpoint(chosen, model=self.model, optimizers=self.optimizers(),
                            schedulers=self._checkpoint_schedulers())

        self._load_state(state, owner, with_optimizers=False, then=load_tensors)
        return bool(payload["stop_training"])

    def _refuse_old_checkpoints(self) -> None:
        assert self._manager is not None
        steps = [record.step for record in self._manager.records()]
        if steps:
            raise ValueError(f"{type(self).__name__}.train: checkpoint_dir "
                             f"{str(self._manager.directory)!r} already holds checkpoints (steps "
                             f"{steps}) and this trainer starts a new run; pass resume=True to "
                             "continue that run, or choose another directory")

    # ------------------------------------------------------------------ distributed

    def _join_process_group(self) -> None:
        """Join the ``torchrun`` process group if the environment describes one."""
        if distributed.init_process_group() and self.device is None \
                and torch.cuda.is_available():
            self.device = distributed.default_device()

    def wrap_model(self, model: nn.Module) -> nn.Module:
        """The module the loop trains through: ``DistributedDataParallel(model)`` under
        ``torch.distributed`` (made once per model), else ``model`` itself."""
        if not distributed.is_distributed():
            return model
        if self._training_model is None or self._training_model[0] is not model:
            self._training_model = (model, distributed.wrap_model(model))
        return self._training_model[1]

    def gradient_sync(self, model: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """Context around one micro-batch's forward and backward: ``model.no_sync()``
        under DDP when ``sync`` is False (a micro-batch inside an accumulation window)."""
        return distributed.gradient_sync(model, sync)

    def _wrap_zero_redundancy(self) -> None:
        """``zero_redundancy=True`` under torch.distributed: shard each optimizer's state."""
        if not self.zero_redundancy or not distributed.is_distributed():
            return
        from torch.distributed.optim import ZeroRedundancyOptimizer

        schedulers = self.schedulers()
        for name, optimizer in self.optimizers().items():
            if distributed.is_zero_optimizer(optimizer):
                continue
            if optimizer.state:
                raise ValueError(f"{type(self).__name__}: zero_redundancy=True shards optimizer "
                                 f"{name!r} when training starts, but it already has state; "
                                 "build the trainer on a fresh optimizer")
            # every group carries its hyperparameters; pass on only the defaults the
            # optimizer's constructor takes (``defaults`` may hold more keys)
            zero = ZeroRedundancyOptimizer([dict(group) for group in optimizer.param_groups],
                                           optimizer_class=type(optimizer),
                                           **_constructor_options(type(optimizer),
                                                                  optimizer.defaults))
            _mark_step_tracked(zero)
            setattr(self, self._optimizer_attributes[name], zero)
            scheduler = schedulers.get(name)
            if scheduler is not None and getattr(scheduler, "optimizer", None) is optimizer:
                scheduler.optimizer = zero

    def _average_gradients(self, params: list[torch.Tensor]) -> None:
        """All-reduce (mean) the gradients of ``params`` over the ranks (no DDP)."""
        world_size = distributed.get_world_size()
        for param in params:
            if param.grad is not None:
                torch.distributed.all_reduce(param.grad)
                param.grad.div_(world_size)

    def _epoch_extras(self) -> dict[str, float]:
        return {"skipped_steps": float(self.state.skipped)} if self.state.skipped else {}

    def _call(self, event: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    # ------------------------------------------------------------------ extension points

    def train_batch(self, model: nn.Module, batch: Any, index: int,
                    n_batches: int | None) -> dict[str, float]:
        """Train on one batch (batch ``index`` of ``n_batches`` in the epoch); return its logs.

        The logs (floats) go to ``on_batch_end`` and the progress bar. Implementations
        record sample-weighted epoch means through ``self._meter``.
        """
        raise NotImplementedError

    def make_batches(self, x: Any, y: Any = None, *, batch_size: int, shuffle: bool,
                     drop_last: bool = False, require_targets: bool = True,
                     x_name: str = "x", y_name: str = "y", shard: bool = True) -> Batches:
        """The batch source for ``x`` (and ``y``): :func:`descent.train.data.make_batches`
        with this trainer's seed; under torch.distributed (and ``shard``), this rank's
        share of every epoch's seeded order."""
        self._join_process_group()
        replicas, rank = ((distributed.get_world_size(), distributed.get_rank()) if shard
                          else (1, 0))
        return make_batches(type(self).__name__, x, y, batch_size=batch_size, shuffle=shuffle,
                            drop_last=drop_last, seed=self.seed,
                            require_targets=require_targets, x_name=x_name, y_name=y_name,
                            num_replicas=replicas, rank=rank)

    def end_epoch(self, model: nn.Module) -> None:
        """Called after the epoch's last batch: flush whatever the strategy holds."""

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        """The model's output for ``inputs`` (``model(inputs)``)."""
        return model(inputs)

    def backward(self, loss: torch.Tensor, *, model: nn.Module, sync: bool) -> None:
        """Back-propagate ``loss`` (already divided by the window size).

        ``sync`` is True for the last micro-batch of an accumulation window, the one
        after which the optimizer steps (a distributed trainer skips the gradient
        all-reduce, ``model.no_sync()``, when it is False).
        """
        loss.backward()

    def reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """The epoch's metrics as reported: under torch.distributed, each averaged over
        the ranks, weighted by the samples each rank trained on this epoch."""
        if not distributed.is_distributed():
            return metrics
        weight = max(self._meter.counts.values(), default=0.0)
        return distributed.average_metrics(dict(sorted(metrics.items())), weight=weight)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context for forward passes (``precision="bf16"``), else a no-op."""
        if self.precision == "bf16":
            return torch.autocast(device_type=self._device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def optimizer_step(self, optimizer: Any, scheduler: Any = None, *,
                       name: str = "optimizer") -> bool:
        """Check, clip and apply one step of ``optimizer``, then step ``scheduler``.

        Order: non-finite check (policy ``nonfinite``), ``on_before_optimizer_step``
        callbacks (they see the accumulated, unclipped gradients), clipping,
        ``optimizer.step()``, ``optimizer.zero_grad()``, ``scheduler.step()`` (unless it
        is a plateau scheduler, stepped at epoch end). Returns False if the step was
        skipped.
        """
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if self._sync_gradients_by_hand and distributed.is_distributed():
            self._average_gradients(params)
        grads = [p.grad for p in params if p.grad is not None]
        bad = self._nonfinite_parameters(params)
        if bad or self._nonfinite_loss is not None:
            self._handle_nonfinite(optimizer, bad, name)
            return False
        for callback in self.callbacks:
            callback.on_before_optimizer_step(self, optimizer, name)
        if grads and self.clip_grad_value is not None:
            torch.nn.utils.clip_grad_value_(
                [p for p in params if p.grad is not None], self.clip_grad_value)
        if grads and self.clip_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(
                [p for p in params if p.grad is not None], self.clip_grad_norm)
            self._step_logs[f"{name}_grad_norm" if name != "optimizer" else "grad_norm"] = \
                float(norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None and not is_plateau_scheduler(scheduler):
            scheduler.step()
        return True

    # ------------------------------------------------------------------ helpers

    def _finish_window(self, optimizer: Any, scheduler: Any, planned: int) -> bool:
        """Step ``optimizer`` on the window just completed; log the step; reset the window.

        If the window ended before its ``planned`` size (a data source that yielded
        fewer batches than it announced), the gradients, normalised by ``planned``, are
        rescaled to the actual size first.
        """
        state = self.state
        if 0 < state.window < planned:
            with torch.no_grad():
                for group in optimizer.param_groups:
                    for param in group["params"]:
                        if param.grad is not None:
                            param.grad.mul_(planned / state.window)
        try:
            stepped = self.optimizer_step(optimizer, scheduler)
        except NonFiniteError:
            # The window's gradients are gone: the counters move past it, so that a
            # later train() call continues with the next batch.
            state.window = 0
            state.batch += 1
            self._meter.pop_window()
            self._step_logs = {}
            raise
        state.window = 0
        logs = self._meter.pop_window()
        if stepped:
            state.step += 1
            logs.update(self._step_logs)
            self.history.log_step(state.step, logs)
        self._step_logs = {}
        return stepped

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

    def _label(self, optimizer: Any, param: torch.Tensor) -> str:
        name = self._names.get(id(param))
        if name is not None:
            return name
        for g, group in enumerate(optimizer.param_groups):
            for i, candidate in enumerate(group["params"]):
                if candidate is param:
                    return f"param_groups[{g}]['params'][{i}]"
        return "<unknown parameter>"

    def _nonfinite_parameters(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        with_grad = [p for p in params if p.grad is not None]
        if not with_grad:
            return []
        flags = torch.stack([torch.isfinite(p.grad).all() for p in with_grad])
        if bool(flags.all()):
            return []
        return [p for p, ok in zip(with_grad, flags.tolist(), strict=True) if not ok]

    def _note_loss(self, loss: torch.Tensor, index: int) -> float:
        """The loss as a float; a non-finite one is remembered for the coming step check."""
        value = float(loss.detach())
        if not math.isfinite(value) and self._nonfinite_loss is None:
            self._nonfinite_loss = (self.state.epoch, index, value)
        return value

    def _handle_nonfinite(self, optimizer: Any, bad: list[torch.Tensor], name: str) -> None:
        state = self.state
        labels = [self._label(optimizer, p) for p in bad]
        where = (f"optimizer step {self._next_step_number(name)} ({name}, epoch "
                 f"{state.epoch}, batch {state.batch})")
        parts = []
        if self._nonfinite_loss is not None:
            epoch, index, value = self._nonfinite_loss
            parts.append(f"non-finite loss {value} at epoch {epoch}, batch {index}")
        if labels:
            shown = ", ".join(labels[:10]) + (f" and {len(labels) - 10} more"
                                              if len(labels) > 10 else "")
            parts.append(f"non-finite gradients in {shown}")
        else:
            parts.append("no parameter gradient is non-finite")
        optimizer.zero_grad(set_to_none=True)
        self._nonfinite_loss = None
        message = f"{type(self).__name__}: {'; '.join(parts)} at {where}"
        if self.nonfinite == "raise":
            raise NonFiniteError(message + "; no parameter was updated (nonfinite='skip' "
                                 "skips such steps instead)")
        state.skipped += 1

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
                raise ValueError(f"{type(self).__name__}: scheduler_monitor={monitor!r} is not "
                                 f"among the epoch metrics {sorted(metrics)} (needed by the "
                                 f"plateau scheduler of {name!r})")
            scheduler.step(metrics[monitor])



def _constructor_options(kind: type, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``defaults`` that ``kind(params, **options)`` accepts."""
    parameters = inspect.signature(kind.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(defaults)
    return {key: value for key, value in defaults.items()
            if key in parameters and key not in ("self", "params")}


def _mark_step_tracked(optimizer: Any) -> None:
    """Mark ``optimizer.step`` the way an LR scheduler's constructor does, so that a
    scheduler moved onto ``optimizer`` does not warn that its step was replaced."""
    step = optimizer.step

    @functools.wraps(step)
    def tracked_step(*args: Any, **kwargs: Any) -> Any:
        optimizer._opt_called = True
        return step(*args, **kwargs)

    tracked_step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
    optimizer.step = tracked_step


def _checkpoint_manager(owner: str, directory: Any, every: Any, each_epoch: Any,
                        keep_last: Any, monitor: Any, mode: Any) -> CheckpointManager | None:
    """Check the checkpoint arguments of a trainer; the manager of ``directory`` or None."""
    if every is not None:
        check_positive_int(owner, "checkpoint_every", every)
    if not isinstance(each_epoch, bool):
        raise TypeError(f"{owner}: checkpoint_each_epoch={each_epoch!r}; expected a bool")
    check_positive_int(owner, "keep_last", keep_last)
    check_choice(owner, "checkpoint_mode", mode, ("min", "max"))
    if monitor is not None and not isinstance(monitor, str):
        raise TypeError(f"{owner}: checkpoint_monitor={monitor!r}; expected None or the name "
                        "of an epoch metric")
    if directory is None:
        for name, value in (("checkpoint_every", every), ("checkpoint_monitor", monitor)):
            if value is not None:
                raise ValueError(f"{owner}: {name}={value!r} needs a checkpoint directory; "
                                 "pass checkpoint_dir=...")
        return None
    if not isinstance(directory, str | os.PathLike):
        raise TypeError(f"{owner}: checkpoint_dir={directory!r}; expected a path (str or "
                        "os.PathLike) or None")
    if every is None and not each_epoch:
        raise ValueError(f"{owner}: checkpoint_dir={str(directory)!r} with "
                         "checkpoint_every=None and checkpoint_each_epoch=False would never "
                         "save; set one of them")
    if monitor is not None and not each_epoch:
        raise ValueError(f"{owner}: checkpoint_monitor={monitor!r} ranks end-of-epoch "
                         "checkpoints; it needs checkpoint_each_epoch=True")
    if Path(directory).exists() and not Path(directory).is_dir():
        raise ValueError(f"{owner}: checkpoint_dir={str(directory)!r} is a file; expected a "
                         "directory (created if missing)")
    return CheckpointManager(directory, keep_last=keep_last, monitor=monitor, mode=mode)


def window_size(position: int, index: int, n_units: int | None, accumulation: int) -> int:
    """Size of the accumulation window that unit ``index`` belongs to.

    ``position`` is how many units of the window came before ``index``; the window
    holds ``accumulation`` units, or fewer if the epoch (``n_units``) ends first.
    """
    if n_units is None:
        return accumulation
    start = index - position
    return min(accumulation, n_units - start)
