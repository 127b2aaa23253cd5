"""Callbacks: code that runs at fixed points of a trainer's loop.

Events, in the order a run meets them: ``on_train_begin``, ``on_epoch_begin``,
``on_batch_begin``, ``on_before_optimizer_step`` (once per optimizer step, after the
accumulation window is complete, before clipping), ``on_batch_end``,
``on_epoch_end``, ``on_train_end``; ``on_exception`` replaces ``on_train_end`` when
anything raised (including ``KeyboardInterrupt``). Each callback has
``state_dict()`` / ``load_state_dict()`` so that a checkpoint can restore it.

Built-ins: :class:`ProgressBar`, :class:`EarlyStopping`, :class:`LRMonitor`,
:class:`CSVLogger`, :class:`JSONLogger`.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import torch

if TYPE_CHECKING:
    from .base import Trainer


class Callback:
    """Base class: every event is a no-op; override the ones you need.

    ``trainer`` is the running trainer: ``trainer.state`` holds the counters
    (epoch, batch, step, ...), ``trainer.history`` the metrics so far, and setting
    ``trainer.stop_training = True`` ends the run after the current epoch (or, within
    an epoch, at the next optimizer step boundary).

    Example::

        class PrintLoss(descent.Callback):
            def on_epoch_end(self, trainer, epoch, logs):
                print(epoch, logs["loss"])
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first epoch of a ``train()`` call."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch (or an early stop)."""

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        """Before the first batch of ``epoch`` (0-based)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Mapping[str, float]) -> None:
        """After ``epoch``: ``logs`` holds its training means and validation metrics."""

    def on_batch_begin(self, trainer: Trainer, batch: int) -> None:
        """Before batch ``batch`` (0-based, within the epoch)."""

    def on_batch_end(self, trainer: Trainer, batch: int, logs: Mapping[str, float]) -> None:
        """After batch ``batch``: ``logs`` holds its loss (and metrics)."""

    def on_before_optimizer_step(self, trainer: Trainer, optimizer: Any, name: str) -> None:
        """Gradients are accumulated and finite; ``optimizer`` (``name``) steps next."""

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        """Training raised ``error`` (it is re-raised after every callback saw it)."""

    def state_dict(self) -> dict[str, Any]:
        """This callback's state (plain values, or tensors)."""
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (checked first; nothing changes on error)."""
        if state_dict:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: expected an empty dict, "
                f"got keys {sorted(state_dict)}"
            )


def _format_logs(logs: Mapping[str, float]) -> str:
    parts = []
    for key, value in logs.items():
        if isinstance(value, float) and math.isfinite(value):
            parts.append(f"{key}={value:.4g}")
    return " ".join(parts)


class ProgressBar(Callback):
    """Progress of each epoch, with its loss and metrics.

    On a terminal: one tqdm line per epoch, redrawn in place with the running
    (sample-weighted) means of the training metrics, then the epoch's metrics including
    validation. Anywhere else (a file, a pipe, a notebook's captured stream, CI logs):
    one plain line per epoch when it ends, ``epoch 3/10: 47/47 batches, 2.1 s,
    loss=0.31 accuracy=0.9``, and nothing in between (a bar redrawn ten times a second
    fills a log file). Shown on the main process only.

    Args:
        file: where to write (default ``sys.stderr``).
        leave: keep each finished epoch's bar (True) or clear it (False); terminal only.
        dynamic: True to draw the bar even when ``file`` is not a terminal, False for
            plain lines even on one; None (default) decides by ``file.isatty()``. The bar
            needs tqdm (``pip install descent[demo]``); without it, plain lines.
    """

    def __init__(
        self, file: TextIO | None = None, leave: bool = True, dynamic: bool | None = None
    ) -> None:
        if dynamic is not None and not isinstance(dynamic, bool):
            raise TypeError(f"ProgressBar: dynamic={dynamic!r}; expected None, True or False")
        self.file = file
        self.leave = leave
        self.dynamic = dynamic
        self._bar: Any = None
        self._total_epochs = 0
        self._batches = 0
        self._started = 0.0

    def _stream(self) -> TextIO:
        return self.file or sys.stderr

    def _draws_bar(self) -> bool:
        if self.dynamic is not None:
            return self.dynamic
        try:
            return bool(self._stream().isatty())
        except (AttributeError, ValueError):
            return False

    def on_train_begin(self, trainer: Trainer) -> None:
        self._total_epochs = trainer.state.end_epoch

    def on_epoch_begin(self, trainer: Trainer, epoch: int) -> None:
        self._bar, self._batches, self._started = None, trainer.state.batch, time.perf_counter()
        if not trainer.is_main_process or not self._draws_bar():
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self._bar = tqdm(
            total=trainer.batches_per_epoch,
            initial=trainer.state.batch,
            file=self._stream(),
            leave=self.leave,
            dynamic_ncols=True,
            unit="batch",
            desc=f"epoch {epoch + 1}/{self._total_epochs}",
        )

    def on_batch_end(self, trainer: Trainer, batch: int, logs: Mapping[str, float]) -> None:
        self._batches += 1
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(_format_logs(trainer.epoch_metrics()), refresh=False)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Mapping[str, float]) -> None:
        if not trainer.is_main_process:
            return
        if self._bar is None:
            total = trainer.batches_per_epoch
            seconds = time.perf_counter() - self._started
            print(
                f"epoch {epoch + 1}/{self._total_epochs}: {self._batches}"
                f"{'' if total is None else f'/{total}'} batches, {seconds:.1f} s, "
                f"{_format_logs(logs)}",
                file=self._stream(),
                flush=True,
            )
            return
        self._bar.set_postfix_str(_format_logs(logs), refresh=False)
        self._bar.close()
        self._bar = None

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class EarlyStopping(Callback):
    """Stop when a monitored epoch metric has stopped improving.

    An epoch improves on the best so far when ``value < best - min_delta`` (mode
    ``"min"``) or ``value > best + min_delta`` (mode ``"max"``). After ``patience``
    epochs without improvement the run stops. With ``restore_best_weights`` the
    model's parameters and buffers of the best epoch are copied back when training
    ends (also when it ran out of epochs before patience did).

    Args:
        monitor: the epoch metric, e.g. ``"val_loss"`` or ``"val_accuracy"``.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (``"max"`` for names containing
            ``"acc"``, else ``"min"``).
        patience: epochs without improvement before stopping (>= 1).
        min_delta: the smallest change that counts as an improvement (>= 0).
        restore_best_weights: restore the best epoch's weights at the end.

    Example::

        stop = descent.EarlyStopping("val_loss", patience=3, restore_best_weights=True)
        descent.SupervisedTrainer(opt, callbacks=[stop]).train(model, x, y, loss,
                                                               validation_split=0.2)
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "auto",
        patience: int = 5,
        min_delta: float = 0.0,
        restore_best_weights: bool = False,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"EarlyStopping: monitor={monitor!r}; expected a metric name")
        if mode not in ("min", "max", "auto"):
            raise ValueError(f"EarlyStopping: mode={mode!r}; expected 'min', 'max' or 'auto'")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"EarlyStopping: patience={patience!r}; expected an int >= 1")
        if (
            isinstance(min_delta, bool)
            or not isinstance(min_delta, int | float)
            or not min_delta >= 0
            or not math.isfinite(min_delta)
        ):
            raise ValueError(
                f"EarlyStopping: min_delta={min_delta!r}; expected a finite number >= 0"
            )
        self.monitor = monitor
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode
        self.patience = patience
        self.min_delta = float(min_delta)
        self.restore_best_weights = bool(restore_best_weights)
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Mapping[str, float]) -> None:
        if self.monitor not in logs:
            raise ValueError(
                f"EarlyStopping: monitor={self.monitor!r} is not among the epoch "
                f"metrics {sorted(logs)}; pass validation data for 'val_*' "
                "metrics, or monitor one of these"
            )
        value = float(logs[self.monitor])
        if math.isfinite(value) and self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = {
                    key: tensor.detach().clone()
                    for key, tensor in _model(trainer).state_dict().items()
                }
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            trainer.stop_training = True

    def on_train_end(self, trainer: Trainer) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            _model(trainer).load_state_dict(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best_weights": None if self.best_weights is None else dict(self.best_weights),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        keys = {"monitor", "mode", "best", "best_epoch", "wait", "stopped_epoch", "best_weights"}
        if not isinstance(state_dict, Mapping) or set(state_dict) != keys:
            raise ValueError(f"EarlyStopping.load_state_dict: expected keys {sorted(keys)}")
        if (state_dict["monitor"], state_dict["mode"]) != (self.monitor, self.mode):
            raise ValueError(
                f"EarlyStopping.load_state_dict: the state monitors "
                f"{state_dict['monitor']!r} ({state_dict['mode']}), this callback "
                f"{self.monitor!r} ({self.mode})"
            )
        wait = state_dict["wait"]
        if isinstance(wait, bool) or not isinstance(wait, int) or wait < 0:
            raise ValueError(f"EarlyStopping.load_state_dict: wait={wait!r}; expected an int >= 0")
        weights = state_dict["best_weights"]
        self.best = None if state_dict["best"] is None else float(state_dict["best"])
        self.best_epoch = state_dict["best_epoch"]
        self.wait = wait
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.best_weights = None if weights is None else {k: v.clone() for k, v in weights.items()}


def _model(trainer: Trainer) -> torch.nn.Module:
    model = getattr(trainer, "model", None)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{type(trainer).__name__} exposes no single model to restore weights into")
    return model


class LRMonitor(Callback):
    """Record each optimizer's learning rate in the history.

    Per optimizer step (``logging_interval="step"``, default) into
    ``history.steps``, and at every epoch end into the epoch metrics. The key is
    ``"lr"`` for a trainer with one optimizer (``"lr/group1"``, ... for further param
    groups with their own rate) and ``"<name>_lr"`` for several (``"g_lr"``, ``"d_lr"``).
    """

    def __init__(self, logging_interval: str = "step") -> None:
        if logging_interval not in ("step", "epoch"):
            raise ValueError(
                f"LRMonitor: logging_interval={logging_interval!r}; expected 'step' or 'epoch'"
            )
        self.logging_interval = logging_interval

    @staticmethod
    def learning_rates(trainer: Trainer) -> dict[str, float]:
        """The current learning rate of every optimizer (and param group), by key."""
        optimizers = trainer.optimizers()
        rates: dict[str, float] = {}
        for name, optimizer in optimizers.items():
            base = "lr" if len(optimizers) == 1 else f"{name}_lr"
            for index, group in enumerate(optimizer.param_groups):
                key = base if index == 0 else f"{base}/group{index}"
                rates[key] = float(group["lr"])
        return rates

    def on_before_optimizer_step(self, trainer: Trainer, optimizer: Any, name: str) -> None:
        if self.logging_interval != "step":
            return
        optimizers = trainer.optimizers()
        base = "lr" if len(optimizers) == 1 else f"{name}_lr"
        for index, group in enumerate(optimizer.param_groups):
            key = base if index == 0 else f"{base}/group{index}"
            trainer.history.log_step(trainer._next_step_number(name), {key: float(group["lr"])})

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Mapping[str, float]) -> None:
        rates = self.learning_rates(trainer)
        if isinstance(logs, dict):
            logs.update(rates)
        trainer.history.update_last_epoch(rates)


class _FileLogger(Callback):
    def __init__(self, path: str | Path) -> None:
        if not isinstance(path, str | Path):
            raise TypeError(f"{type(self).__name__}: path={path!r}; expected a str or Path")
        self.path = Path(path)

    def on_train_begin(self, trainer: Trainer) -> None:
        if trainer.is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: Mapping[str, float]) -> None:
        if trainer.is_main_process:
            self._write(trainer)

    def _write(self, trainer: Trainer) -> None:
        raise NotImplementedError


class CSVLogger(_FileLogger):
    """Write the epoch metrics to a CSV file: one row per epoch, one column per metric.

    The file is rewritten whole after every epoch, so it always has a header that
    covers every metric seen so far (empty cells where an epoch lacks one).
    """

    def _write(self, trainer: Trainer) -> None:
        history = trainer.history
        keys = list(history)
        with self.path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["epoch", *keys])
            for row, epoch in enumerate(history.epochs):
                values = [history[key][row] for key in keys]
                writer.writerow([epoch, *("" if math.isnan(v) else repr(v) for v in values)])


class JSONLogger(_FileLogger):
    """Write the whole history (epoch and per-step metrics) to a JSON file after every epoch.

    The layout is :meth:`History.state_dict`: ``epochs``, ``epoch_metrics``,
    ``steps`` and ``step_indices``. NaN is written as ``null``.
    """

    def _write(self, trainer: Trainer) -> None:
        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        payload = clean(copy.deepcopy(trainer.history.state_dict()))
        self.path.write_text(json.dumps(payload, indent=1))
