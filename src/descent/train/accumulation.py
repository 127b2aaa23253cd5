r"""Exact gradient accumulation: a window of micro-batches weighs like one batch of all of them.

A window of micro-batches :math:`b_1, \dots, b_k` (on every rank) makes one optimizer
step. Each micro-batch's loss :math:`L_i` is a mean over the :math:`c_i` items it
counts (samples, or targets such as non-padding tokens), and is back-propagated as

.. math::  \frac{c_i}{C}\, R\, L_i, \qquad C = \sum_{\text{ranks}} \sum_{j} c_j,

where :math:`R` is the number of ranks whose gradients are averaged (DDP divides their
sum by :math:`R`; 1 in one process). The accumulated gradient is then
:math:`\nabla \frac1C \sum_{\text{ranks},i} c_i L_i`, the gradient of the mean over
every item of the window: what one batch of all its samples gives, for any
micro-batch sizes (a short last micro-batch, ``drop_last=False``), any split of the
targets (padding) and any number of ranks. Dividing each loss by the number of
micro-batches instead (what most loops do) weighs a 2-sample micro-batch like a
4-sample one.

What a micro-batch counts is chosen with ``normalize_by``:

* ``"samples"``: its number of samples (the first dimension of its targets); exact
  for losses that average over samples (or over a fixed number of values per sample);
* ``"targets"``: the number of target values the loss averages over: for
  ``CrossEntropyLoss`` / ``NLLLoss`` with class-index targets, those not equal to its
  ``ignore_index`` (each weighted by its class ``weight``, as the loss divides by that
  sum); for any other loss, the number of target elements. Exact for padded sequences;
* a callable ``count(target) -> number``: a count of your own (for a loss of your own).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import torch
from torch import nn

NORMALIZE_BY = ("samples", "targets")

Counter = Callable[[Any], Any]


def batch_length(value: Any) -> int:
    """Number of samples in a (possibly nested) batch: the first dimension of its first tensor."""
    if isinstance(value, torch.Tensor):
        return int(value.shape[0]) if value.dim() else 1
    if isinstance(value, Mapping):
        return batch_length(next(iter(value.values())))
    if isinstance(value, tuple | list):
        return batch_length(value[0])
    return 1


def count_targets(loss: Any, target: Any) -> float:
    """How many target values ``loss`` averages over for ``target`` (see the module doc)."""
    if (
        isinstance(loss, nn.CrossEntropyLoss | nn.NLLLoss)
        and isinstance(target, torch.Tensor)
        and not target.is_floating_point()
    ):
        counted = target[target != loss.ignore_index]
        if loss.weight is not None:
            return float(loss.weight[counted].sum())
        return float(counted.numel())
    if isinstance(target, torch.Tensor):
        return float(target.numel())
    return float(batch_length(target))


def check_normalize_by(owner: str, value: Any) -> str | Counter:
    if callable(value) and not isinstance(value, str):
        return cast(Counter, value)
    if value not in NORMALIZE_BY:
        raise ValueError(
            f"{owner}: normalize_by={value!r}; expected 'samples', 'targets' or a "
            "callable count(target) -> number"
        )
    return cast(str, value)  # one of NORMALIZE_BY


def count(owner: str, normalize_by: str | Counter, loss: Any, target: Any) -> float:
    """The count of one micro-batch's ``target`` under ``normalize_by``."""
    if normalize_by == "samples":
        return float(batch_length(target))
    if normalize_by == "targets":
        return count_targets(loss, target)
    assert callable(normalize_by)
    value = normalize_by(target)
    number = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
    if isinstance(number, bool) or not isinstance(number, int | float) or not number >= 0:
        raise ValueError(
            f"{owner}: normalize_by returned {value!r} for a batch; expected a "
            "number >= 0 (the items the loss averages over)"
        )
    return float(number)


@dataclasses.dataclass
class Window:
    """The micro-batches of one optimizer step, fetched and counted before the first runs.

    ``first``: the epoch index of its first batch; ``batches``: all of them (on the
    device); ``counts``: each one's count on this rank; ``total``: the sum of the counts
    over the window and every rank; ``replicas``: how many ranks' gradients are
    averaged (the gradient average divides by it, the weights multiply it back).
    """

    first: int
    batches: list[Any]
    counts: list[float]
    total: float
    replicas: int = 1

    @property
    def size(self) -> int:
        return len(self.batches)

    def weight(self, index: int) -> float:
        """The factor of batch ``index``'s mean loss: its share of the window's count."""
        return self.scale(self.counts[index - self.first])

    def scale(self, count: float) -> float:
        """The factor of a mean loss over ``count`` items of this window."""
        return count * self.replicas / self.total if self.total else 0.0

    def remaining(self, start: int) -> Iterator[tuple[int, Any]]:
        """``(index, batch)`` of the batches from epoch index ``start`` on."""
        for offset, batch in enumerate(self.batches):
            if self.first + offset >= start:
                yield self.first + offset, batch
