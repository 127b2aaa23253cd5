"""Meter: the weighted running means of an epoch's training metrics, and of a window's loss.

Each metric is a weighted mean over the micro-batches that reported it: the loss
weighted by the count it was normalised by (samples, or the targets the loss counts),
other metrics by the number of samples. Under ``torch.distributed`` the ranks' sums
and weights are added up (one all-reduce), so the epoch's means are those of all the
samples, whatever each rank trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import distributed


class Meter:
    """Weighted sums of the current epoch's metrics and of the open window's loss.

    >>> meter = Meter()
    >>> meter.add({"loss": 1.0}, weight=3)
    >>> meter.add({"loss": 2.0}, weight=1)
    >>> meter.means()
    {'loss': 1.25}
    """

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.window_sum = 0.0
        self.window_weight = 0.0

    def add(self, metrics: Mapping[str, float], weight: float) -> None:
        """Add one micro-batch's ``metrics``, each weighted by ``weight`` (a micro-batch
        of weight 0, one that counted nothing, is left out)."""
        if not weight:
            return
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * weight
            self.weights[key] = self.weights.get(key, 0.0) + weight

    def means(self) -> dict[str, float]:
        """The weighted mean of each metric so far (this process's micro-batches)."""
        return {key: self.sums[key] / self.weights[key] for key in self.sums if self.weights[key]}

    def global_means(self) -> dict[str, float]:
        """:meth:`means` over the micro-batches of every rank (every rank must call it)."""
        keys = sorted(self.sums)
        totals = distributed.sum_over_ranks(
            [self.sums[k] for k in keys] + [self.weights[k] for k in keys]
        )
        sums, weights = totals[: len(keys)], totals[len(keys) :]
        return {key: s / w for key, s, w in zip(keys, sums, weights, strict=True) if w}

    def add_window(self, loss: float, weight: float) -> None:
        """Add one micro-batch's loss to the open window's (unless its weight is 0)."""
        if not weight:
            return
        self.window_sum += loss * weight
        self.window_weight += weight

    def pop_window(self) -> dict[str, float]:
        """The weighted mean loss of the window just stepped (and reset it)."""
        logs = {"loss": self.window_sum / self.window_weight} if self.window_weight else {}
        self.window_sum = self.window_weight = 0.0
        return logs

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": dict(self.sums),
            "counts": dict(self.weights),
            "window": [self.window_sum, self.window_weight],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a :meth:`state_dict`; checked first, so nothing changes on error."""
        if not isinstance(state_dict, Mapping) or set(state_dict) != {"sums", "counts", "window"}:
            raise ValueError(
                "Meter.load_state_dict: expected a dict with 'sums', 'counts' and 'window'"
            )
        sums = {str(k): float(v) for k, v in state_dict["sums"].items()}
        weights = {str(k): float(v) for k, v in state_dict["counts"].items()}
        if set(sums) != set(weights):
            raise ValueError(
                f"Meter.load_state_dict: 'sums' has keys {sorted(sums)}, 'counts' "
                f"{sorted(weights)}; expected the same"
            )
        window_sum, window_weight = (float(v) for v in state_dict["window"])
        self.sums, self.weights = sums, weights
        self.window_sum, self.window_weight = window_sum, window_weight
