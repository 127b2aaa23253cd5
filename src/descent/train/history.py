"""History: the metrics a training run recorded, per epoch and per optimizer step."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class History(Mapping[str, list[float]]):
    """Per-epoch and per-step metrics of a run; a read-only mapping of the epoch metrics.

    ``history["loss"]`` is the list of epoch losses (one value per epoch, in order),
    ``history.epochs`` the epoch indices they belong to, ``history.steps["loss"]`` the
    per-optimizer-step values and ``history.step_indices["loss"]`` the global steps
    at which those were taken. A metric that first appears in a later epoch is padded
    with NaN for the epochs before it, so every epoch list is as long as ``epochs``.

    Example::

        history = trainer.train(model, x, y, torch.nn.CrossEntropyLoss())
        history["val_accuracy"][-1]      # last epoch's validation accuracy
        history.plot("curves.png")       # loss curves (and any other metric); a PNG
    """

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self._epoch_metrics: dict[str, list[float]] = {}
        self.steps: dict[str, list[float]] = {}
        self.step_indices: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ mapping

    def __getitem__(self, key: str) -> list[float]:
        try:
            return self._epoch_metrics[key]
        except KeyError:
            raise KeyError(
                f"History has no epoch metric {key!r}; it has {sorted(self._epoch_metrics)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._epoch_metrics)

    def __len__(self) -> int:
        return len(self._epoch_metrics)

    def __repr__(self) -> str:
        last = {key: values[-1] for key, values in self._epoch_metrics.items() if values}
        return f"History(epochs={len(self.epochs)}, last={last})"

    # ------------------------------------------------------------------ recording

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Record the metrics of ``epoch`` (NaN for earlier-known metrics it lacks)."""
        done = len(self.epochs)
        self.epochs.append(int(epoch))
        for key, value in metrics.items():
            self._epoch_metrics.setdefault(key, [math.nan] * done).append(float(value))
        for values in self._epoch_metrics.values():
            if len(values) == done:
                values.append(math.nan)

    def update_last_epoch(self, metrics: Mapping[str, float]) -> None:
        """Add or overwrite metrics of the last recorded epoch (for callbacks at epoch end)."""
        if not self.epochs:
            raise ValueError("History.update_last_epoch: no epoch has been recorded yet")
        done = len(self.epochs)
        for key, value in metrics.items():
            values = self._epoch_metrics.setdefault(key, [math.nan] * done)
            values[-1] = float(value)

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record per-step metrics at global optimizer step ``step``."""
        for key, value in metrics.items():
            self.steps.setdefault(key, []).append(float(value))
            self.step_indices.setdefault(key, []).append(int(step))

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything recorded, as plain lists (JSON-serialisable)."""
        return {
            "epochs": list(self.epochs),
            "epoch_metrics": {k: list(v) for k, v in self._epoch_metrics.items()},
            "steps": {k: list(v) for k, v in self.steps.items()},
            "step_indices": {k: list(v) for k, v in self.step_indices.items()},
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a :meth:`state_dict`; checked first, so nothing changes on error."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"History.load_state_dict: expected a dict, got {type(state_dict).__name__}"
            )
        expected = {"epochs", "epoch_metrics", "steps", "step_indices"}
        if set(state_dict) != expected:
            raise ValueError(
                f"History.load_state_dict: keys {sorted(state_dict)}; expected {sorted(expected)}"
            )
        epochs = [int(e) for e in state_dict["epochs"]]
        epoch_metrics = {
            str(k): [float(v) for v in values] for k, values in state_dict["epoch_metrics"].items()
        }
        for key, values in epoch_metrics.items():
            if len(values) != len(epochs):
                raise ValueError(
                    f"History.load_state_dict: epoch metric {key!r} has "
                    f"{len(values)} values for {len(epochs)} epochs"
                )
        steps = {str(k): [float(v) for v in values] for k, values in state_dict["steps"].items()}
        indices = {
            str(k): [int(v) for v in values] for k, values in state_dict["step_indices"].items()
        }
        if steps.keys() != indices.keys() or any(len(steps[k]) != len(indices[k]) for k in steps):
            raise ValueError(
                "History.load_state_dict: 'steps' and 'step_indices' do not match "
                "key for key and length for length"
            )
        self.epochs, self._epoch_metrics = epochs, epoch_metrics
        self.steps, self.step_indices = steps, indices

    # ------------------------------------------------------------------ plotting

    def plot(
        self,
        path: str | Path | None = None,
        keys: Sequence[str] | None = None,
        *,
        title: str | None = None,
        per_step: bool = True,
    ) -> Figure:
        """Draw the metrics; return the matplotlib figure, saved as an image at ``path``
        when one is given.

        One panel per metric family: ``loss`` with ``val_loss``, ``accuracy`` with
        ``val_accuracy`` and so on (``keys`` picks the families; default: all). With
        ``per_step`` the per-step values of a metric are drawn faintly under its epoch
        curve, against fractional epochs. The figure is made without pyplot, so
        matplotlib's global backend and pyplot's current figure are left alone (in a
        notebook, leave it as a cell's value to show it). Needs matplotlib
        (``pip install descent[demo]``).
        """
        try:
            import matplotlib  # noqa: F401  (a clear error when it is missing)
            from matplotlib.figure import Figure
        except ImportError as error:
            raise ImportError(
                "History.plot needs matplotlib: pip install 'descent[demo]'"
            ) from error
        families: dict[str, list[str]] = {}
        for key in list(self._epoch_metrics) + list(self.steps):
            base = key[4:] if key.startswith("val_") else key
            members = families.setdefault(base, [])
            if key not in members:
                members.append(key)
        if keys is not None:
            unknown = [k for k in keys if k not in families]
            if unknown:
                raise ValueError(
                    f"History.plot: keys {unknown} were not recorded; recorded: {sorted(families)}"
                )
            families = {k: families[k] for k in keys}
        if not families:
            raise ValueError("History.plot: nothing was recorded yet")
        figure = Figure(figsize=(4.5 * len(families), 3.4), layout="tight")
        axes = figure.subplots(1, len(families), squeeze=False)
        steps_per_epoch = self._steps_per_epoch()
        for axis, (family, members) in zip(axes[0], families.items(), strict=True):
            for key in members:
                if per_step and key in self.steps and steps_per_epoch:
                    x = [s / steps_per_epoch for s in self.step_indices[key]]
                    axis.plot(
                        x, self.steps[key], alpha=0.3, linewidth=0.8, label=f"{key} (per step)"
                    )
                if key in self._epoch_metrics:
                    x = [e + 1 for e in self.epochs]
                    axis.plot(x, self._epoch_metrics[key], marker="o", markersize=3, label=key)
            axis.set_title(family)
            axis.set_xlabel("epoch")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=7)
        if title:
            figure.suptitle(title)
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path, dpi=110)
        return figure

    def _steps_per_epoch(self) -> float:
        if not self.epochs or not self.steps:
            return 0.0
        last = max(indices[-1] for indices in self.step_indices.values() if indices)
        return last / len(self.epochs) if last else 0.0
