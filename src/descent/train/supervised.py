"""SupervisedTrainer: minibatch training of ``model(x) -> prediction`` against targets ``y``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .accumulation import Counter, batch_length, check_normalize_by, count
from .base import Trainer, detach
from .callbacks import Callback
from .checks import (
    check_loss,
    check_optimizer,
    check_optimizer_trains,
    check_positive_int,
    check_scheduler,
)
from .data import Batches, split_validation, to_device
from .history import History

Metric = Callable[[torch.Tensor, torch.Tensor], Any]


def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of correct predictions.

    Class scores ``output`` of shape ``(N, C, ...)`` against class indices ``target``
    ``(N, ...)``: the arg-max over dim 1 is the prediction. Same-shaped ``output`` and
    ``target``: binary logits against 0/1 labels (a logit above 0 predicts 1).

    >>> accuracy(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]))
    tensor(0.5000)
    """
    if output.dim() == target.dim() + 1:
        predicted = output.argmax(dim=1)
        return (predicted == target).float().mean()
    if output.shape == target.shape:
        return ((output > 0) == (target > 0.5)).float().mean()
    raise ValueError(
        f"accuracy: output shape {tuple(output.shape)} and target shape "
        f"{tuple(target.shape)} fit neither class scores (N, C, ...) against "
        "indices (N, ...) nor binary logits against labels of the same shape"
    )


BUILTIN_METRICS: dict[str, Metric] = {"accuracy": accuracy}


def resolve_metrics(owner: str, metrics: Any) -> dict[str, Metric]:
    """``metrics`` (names, callables, or a name -> callable mapping) as a name -> callable dict."""
    if isinstance(metrics, str):
        metrics = [metrics]
    if isinstance(metrics, Mapping):
        items = list(metrics.items())
    else:
        items = []
        for entry in metrics:
            if isinstance(entry, str):
                items.append((entry, entry))
            elif callable(entry):
                items.append((getattr(entry, "__name__", type(entry).__name__), entry))
            else:
                raise TypeError(
                    f"{owner}: metrics entry {entry!r} is neither a metric name "
                    f"({sorted(BUILTIN_METRICS)}) nor a callable"
                )
    resolved: dict[str, Metric] = {}
    for name, fn in items:
        if isinstance(fn, str):
            if fn not in BUILTIN_METRICS:
                raise ValueError(
                    f"{owner}: unknown metric {fn!r}; built-in metrics are "
                    f"{sorted(BUILTIN_METRICS)}, or pass a callable "
                    "(output, target) -> number"
                )
            fn = BUILTIN_METRICS[fn]
        if not callable(fn):
            raise TypeError(f"{owner}: metric {name!r} is not callable")
        if name in ("loss", "skipped_steps") or name.startswith("val_"):
            raise ValueError(f"{owner}: metric name {name!r} is reserved")
        resolved[name] = fn
    return resolved


def split_batch(owner: str, batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a batch that is a pair."""
    if isinstance(batch, tuple | list) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(
        f"{owner}: a batch must be an (inputs, targets) pair; got a "
        f"{type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, tuple | list) else "")
    )


class SupervisedTrainer(Trainer):
    r"""Minibatch training of a model on inputs ``x`` and targets ``y`` with a loss.

    Each epoch visits the training samples in a seeded order (:func:`epoch_permutation`
    of ``(seed, epoch)``) in batches of ``batch_size``. With
    ``gradient_accumulation_steps = N``, the batches of an epoch are grouped in windows
    of N micro-batches (the last window of an epoch may hold fewer; windows never
    carry over into the next epoch), and each window makes one optimizer step. The
    micro-batches' mean losses :math:`L_b` are weighted by their share of the window's
    count :math:`c_b` (samples, or the targets the loss counts: ``normalize_by``), so

    .. math::  \nabla \sum_{b\in W} \frac{c_b}{\sum_{b'\in W} c_{b'}} L_b
               = \nabla L_{\cup W},

    the gradient of one batch made of the whole window, for any micro-batch sizes (a
    short last batch included) and any padding; under ``torchrun`` the count is summed
    over the ranks, so R processes equal one with the combined batches
    (:mod:`descent.train.accumulation`). The scheduler steps once per optimizer step.

    Args:
        optimizer: any optimizer with ``step``/``zero_grad``/``param_groups``/``state_dict``.
        batch_size: samples per (micro-)batch (ignored for a DataLoader).
        epochs: epochs per ``train()`` call.
        gradient_accumulation_steps: micro-batches per optimizer step.
        scheduler: stepped after every optimizer step; a plateau scheduler
            (``step(metric)``) is stepped at epoch end with ``scheduler_monitor``. It
            must drive ``optimizer`` (one built on another optimizer is refused).
        clip_grad_norm: clip the gradients' global norm before each step.
        callbacks: :class:`Callback` objects.
        metrics: names (``"accuracy"``), callables ``(output, target) -> number`` or a
            name -> callable mapping; computed per batch (sample-weighted epoch means)
            and on validation data (``"val_"`` prefix).
        shuffle: visit samples in a new seeded order each epoch (default True).
        drop_last: drop a last batch smaller than ``batch_size`` (default False).
        validation_batch_size: batch size for evaluation (default ``batch_size``).
        normalize_by: what a micro-batch's mean loss is weighted by within its window:
            ``"samples"`` (default), ``"targets"`` (the target values the loss averages
            over: for ``CrossEntropyLoss``/``NLLLoss``, those not equal to its
            ``ignore_index``, weighted by its class ``weight``), or a callable
            ``count(target) -> number``. The epoch's ``loss`` is weighted the same way.
        **options: ``seed``, ``device``, ``precision``, ``nonfinite``,
            ``clip_grad_value``, ``scheduler_monitor``, and the checkpoint options
            ``checkpoint_dir``, ``checkpoint_every``, ``checkpoint_each_epoch``,
            ``keep_last``, ``checkpoint_monitor``, ``checkpoint_mode``, and
            ``zero_redundancy``: see :class:`Trainer`.

    Example:

    >>> import torch, descent
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> x = torch.randn(256, 4); y = (x.sum(1) > 0).long()
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> trainer = descent.SupervisedTrainer(descent.Adam(model, lr=1e-2), batch_size=32,
    ...                                     epochs=20, metrics=["accuracy"])
    >>> history = trainer.train(model, x, y, torch.nn.CrossEntropyLoss())
    >>> history["accuracy"][-1] > 0.9
    True
    """

    def __init__(
        self,
        optimizer: Any,
        batch_size: int = 32,
        epochs: int = 10,
        gradient_accumulation_steps: int = 1,
        scheduler: Any = None,
        clip_grad_norm: float | None = None,
        callbacks: Iterable[Callback] = (),
        *,
        metrics: Sequence[str | Metric] | Mapping[str, Metric] = (),
        shuffle: bool = True,
        drop_last: bool = False,
        validation_batch_size: int | None = None,
        normalize_by: str | Counter = "samples",
        **options: Any,
    ) -> None:
        super().__init__(
            epochs=epochs, callbacks=callbacks, clip_grad_norm=clip_grad_norm, **options
        )
        owner = type(self).__name__
        self.optimizer = check_optimizer(owner, "optimizer", optimizer)
        self.scheduler = check_scheduler(owner, "scheduler", scheduler, optimizer)
        self.batch_size = check_positive_int(owner, "batch_size", batch_size)
        self.accumulation = check_positive_int(
            owner, "gradient_accumulation_steps", gradient_accumulation_steps
        )
        self.metrics = resolve_metrics(owner, metrics)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.validation_batch_size = check_positive_int(
            owner,
            "validation_batch_size",
            batch_size if validation_batch_size is None else validation_batch_size,
        )
        self.normalize_by = check_normalize_by(owner, normalize_by)
        self.loss_fn: Callable[..., torch.Tensor] | None = None

    def optimizers(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer}

    def schedulers(self) -> dict[str, Any]:
        return {"optimizer": self.scheduler}

    def batches_per_window(self) -> int:
        return self.accumulation

    # ------------------------------------------------------------------ public

    def train(
        self,
        model: nn.Module,
        x: Any,
        y: Any = None,
        loss: Callable[..., torch.Tensor] | None = None,
        *,
        validation_data: Any = None,
        validation_split: float | None = None,
        epochs: int | None = None,
        resume: bool = False,
    ) -> History:
        """Train ``model`` on ``x`` (and ``y``) with ``loss``; return the :class:`History`.

        ``x``, ``y``: NumPy arrays or tensors of equal length; or ``x`` a ``Dataset`` or
        ``DataLoader`` of ``(input, target)`` pairs and ``y`` None. ``loss(output,
        target)`` returns a scalar (e.g. ``torch.nn.CrossEntropyLoss()``, an instance).
        ``validation_data``: ``(x_val, y_val)``, a Dataset or a DataLoader, evaluated
        after every epoch (metrics prefixed ``val_``). ``validation_split``: instead,
        hold out this fraction of ``(x, y)`` (a seeded random subset). ``epochs``:
        overrides the constructor's for this call.

        A second call continues training (optimizer, scheduler and counters keep their
        state) for ``epochs`` more epochs; a call that was interrupted is finished first,
        from the next batch.

        ``resume=True`` (needs ``checkpoint_dir``) first loads the latest valid checkpoint
        there (the model, optimizer, scheduler, counters, data position, history,
        callbacks and random generators) and finishes the run it was written by; with
        no checkpoint there yet it starts afresh. So a script restarted after a crash
        continues as if it had never stopped.
        """
        owner = type(self).__name__
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"{owner}.train: model is a {type(model).__name__}; expected an nn.Module"
            )
        check_loss(owner, loss)
        if validation_split is not None:
            if validation_data is not None:
                raise ValueError(
                    f"{owner}.train: pass validation_data or validation_split, not both"
                )
            if (
                isinstance(validation_split, bool)
                or not isinstance(validation_split, float)
                or not 0.0 < validation_split < 1.0
            ):
                raise ValueError(
                    f"{owner}.train: validation_split={validation_split!r}; "
                    "expected a float strictly between 0 and 1"
                )
            x, y, x_val, y_val = split_validation(owner, x, y, validation_split, self.seed)
            validation_data = x_val if y_val is None else (x_val, y_val)
        batches = self.make_batches(
            x, y, batch_size=self.batch_size, shuffle=self.shuffle, drop_last=self.drop_last
        )
        validation = None if validation_data is None else self._validation_batches(validation_data)
        check_optimizer_trains(owner, "the optimizer", self.optimizer, (model, loss))
        self.loss_fn = loss

        def evaluate() -> dict[str, float]:
            assert validation is not None
            metrics = self._evaluate_batches(model, validation, loss)
            return {f"val_{key}": value for key, value in metrics.items()}

        return self._fit(
            model, batches, epochs, None if validation is None else evaluate, resume=resume
        )

    def evaluate(
        self,
        model: nn.Module,
        x: Any,
        y: Any = None,
        loss: Callable[..., torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """Mean loss (if ``loss`` is given) and metrics of ``model`` on ``(x, y)``.

        Runs in eval mode without gradients, in batches of ``validation_batch_size``;
        means are weighted by batch size (the loss by ``normalize_by``'s count). The
        model's train/eval mode is restored.
        """
        if loss is not None:
            check_loss(type(self).__name__, loss)
        batches = self.make_batches(
            x, y, batch_size=self.validation_batch_size, shuffle=False, shard=False
        )
        if self.device is not None:
            model.to(self.device)
        self.guard.set_device_type(self._find_device_type(model))
        return self._evaluate_batches(model, batches, loss)

    # ------------------------------------------------------------------ extension points

    def compute_loss(self, output: Any, target: Any) -> torch.Tensor:
        """The loss of one batch: ``loss(output, target)``."""
        assert self.loss_fn is not None
        return self.loss_fn(output, target)

    def count_batch(self, batch: Any) -> float:
        """The batch's count under ``normalize_by`` (its weight within its window)."""
        owner = type(self).__name__
        return count(owner, self.normalize_by, self.loss_fn, split_batch(owner, batch)[1])

    def train_batch(
        self, model: nn.Module, batch: Any, index: int, n_batches: int | None
    ) -> dict[str, float]:
        """Forward, loss, backward of the loss times its share of the window's count;
        the optimizer step after the window's last batch."""
        inputs, target = split_batch(type(self).__name__, batch)
        state, window = self.state, self.window
        assert window is not None
        sync = state.window + 1 == window.size
        with self.gradient_sync(model, sync):
            with self.autocast():
                output = self.forward(model, inputs)
                loss = self.compute_loss(output, target)
            counted = window.counts[index - window.first]
            weighted, value = self._weighted_loss(loss, index, counted, window.weight(index))
            self.backward(weighted, model=model, sync=sync)
        state.window += 1
        logs = {"loss": value}
        with torch.no_grad():
            for name, metric in self.metrics.items():
                logs[name] = float(metric(detach(output), target))
        self.meter.add({"loss": value}, counted)
        self.meter.add(
            {key: item for key, item in logs.items() if key != "loss"}, batch_length(target)
        )
        self.meter.add_window(value, counted)
        if state.window == window.size:
            self._finish_window(self.optimizer, self.scheduler)
        return logs

    def _check_batch_count(self, n_batches: int | None) -> None:
        if n_batches is None and self.accumulation > 1:
            raise TypeError(
                f"{type(self).__name__}: gradient_accumulation_steps="
                f"{self.accumulation} needs to know the number of batches per "
                "epoch, and this DataLoader has no len(); use a map-style dataset"
            )

    # ------------------------------------------------------------------ helpers

    def _validation_batches(self, data: Any) -> Batches:
        owner = type(self).__name__
        if isinstance(data, DataLoader | Dataset) and not isinstance(data, torch.Tensor):
            return self.make_batches(
                data,
                batch_size=self.validation_batch_size,
                shuffle=False,
                x_name="validation_data",
                shard=False,
            )
        if isinstance(data, tuple | list) and len(data) == 2:
            return self.make_batches(
                data[0],
                data[1],
                batch_size=self.validation_batch_size,
                shuffle=False,
                x_name="validation_data[0]",
                y_name="validation_data[1]",
                shard=False,
            )
        raise TypeError(
            f"{owner}.train: validation_data is a {type(data).__name__}; expected "
            "an (x_val, y_val) pair, a Dataset or a DataLoader"
        )

    def _evaluate_batches(
        self, model: nn.Module, batches: Batches, loss: Callable[..., torch.Tensor] | None
    ) -> dict[str, float]:
        was_training = model.training
        model.eval()
        sums: dict[str, float] = {}
        totals: dict[str, float] = {}
        try:
            with torch.no_grad():
                for batch in batches.epoch(0):
                    inputs, target = split_batch(type(self).__name__, to_device(batch, self.device))
                    with self.autocast():
                        output = self.forward(model, inputs)
                        values = {} if loss is None else {"loss": float(loss(output, target))}
                    for name, metric in self.metrics.items():
                        values[name] = float(metric(output, target))
                    samples = float(batch_length(target))
                    weights = {key: samples for key in values}
                    if loss is not None:
                        weights["loss"] = count(
                            type(self).__name__, self.normalize_by, loss, target
                        )
                    for key, value in values.items():
                        sums[key] = sums.get(key, 0.0) + value * weights[key]
                        totals[key] = totals.get(key, 0.0) + weights[key]
        finally:
            model.train(was_training)
        return {key: value / totals[key] for key, value in sums.items() if totals[key]}
