"""ReduceLROnPlateau: lower the learning rate when a metric stops improving.

Unlike the other schedulers, its values depend on the metrics it is given, not on the
step count alone; its state (best metric, bad-epoch and cooldown counters, and the
learning rates it has set) is saved whole and written back into the groups on load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau as _TorchReduceLROnPlateau

from . import _checks
from .scheduler import FORMAT_VERSION, _param_groups

_STATE_KEYS = frozenset(
    {"descent", "last_epoch", "best", "num_bad_epochs", "cooldown_counter", "lrs", "config"}
)


class ReduceLROnPlateau(_TorchReduceLROnPlateau):
    r"""Multiply each group's lr by ``factor`` after ``patience`` steps without improvement.

    A metric :math:`m` improves on the best so far :math:`b` when, for ``mode="min"``,
    :math:`m < b(1 - \text{threshold})` (``threshold_mode="rel"``) or
    :math:`m < b - \text{threshold}` (``"abs"``); for ``mode="max"``,
    :math:`m > b(1 + \text{threshold})` or :math:`m > b + \text{threshold}`. When more than
    ``patience`` consecutive steps fail to improve, each group's lr becomes
    :math:`\max(\eta\,\text{factor}, \text{min\_lr}_g)` (unless that changes it by less than
    ``eps``) and the next ``cooldown`` steps are not counted. ``min_lr`` is one number or
    one per group. Arguments, defaults and results are torch's.

    Example::

        >>> import torch
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> sched = ReduceLROnPlateau(opt, patience=1)
        >>> for loss in [1.0, 1.0, 1.0]:
        ...     sched.step(loss)
        >>> sched.get_last_lr()
        [0.1]

    It subclasses torch's ``ReduceLROnPlateau`` (so frameworks that look for one accept
    it); its ``state_dict`` is descent's validated layout, and ``load_state_dict`` also
    reads torch's.
    """

    # torch's class sets these in unannotated code; here they are checked at construction
    mode: str
    threshold: float
    threshold_mode: str

    def __init__(
        self,
        optimizer: Any,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float | list[float] = 0,
        eps: float = 1e-8,
    ) -> None:
        owner = "ReduceLROnPlateau"
        groups = _param_groups(owner, optimizer)
        for gi, group in enumerate(groups):
            if "lr" not in group:
                raise ValueError(f"{owner}: param_groups[{gi}] has no 'lr' option")
        self.mode = _checks.choice(owner, "mode", mode, ("min", "max"))
        self.factor = _checks.real(
            owner, "factor", factor, minimum=0.0, maximum=1.0, open_maximum=True
        )
        self.patience = _checks.integer(owner, "patience", patience, minimum=0)
        self.threshold = _checks.real(owner, "threshold", threshold, minimum=0.0)
        self.threshold_mode = _checks.choice(
            owner, "threshold_mode", threshold_mode, ("rel", "abs")
        )
        self.cooldown = _checks.integer(owner, "cooldown", cooldown, minimum=0)
        self.min_lrs = _checks.per_group(owner, "min_lr", min_lr, len(groups), minimum=0.0)
        self.eps = _checks.real(owner, "eps", eps, minimum=0.0)
        self.optimizer = optimizer
        self.last_epoch = 0
        self.mode_worse = math.inf if self.mode == "min" else -math.inf
        self.best = self.mode_worse
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self._last_lr = [float(group["lr"]) for group in groups]

    @property
    def in_cooldown(self) -> bool:
        """Whether bad steps are currently ignored after a reduction."""
        return self.cooldown_counter > 0

    def _is_better(self, current: float, best: float) -> bool:
        if self.mode == "min":
            if self.threshold_mode == "rel":
                return current < best * (1.0 - self.threshold)
            return current < best - self.threshold
        if self.threshold_mode == "rel":
            return current > best * (self.threshold + 1.0)
        return current > best + self.threshold

    # a metric first, as torch's own ReduceLROnPlateau.step (which ignores the same error)
    def step(self, metrics: Any, epoch: int | None = None) -> None:  # type: ignore[override]
        """Record ``metrics`` (a number or one-element tensor) for this step; maybe lower the lr."""
        owner = "ReduceLROnPlateau"
        if torch.is_tensor(metrics) and metrics.numel() == 1:
            metrics = metrics.item()
        if isinstance(metrics, bool) or not isinstance(metrics, int | float):
            raise TypeError(
                f"{owner}: metrics={metrics!r} has type {type(metrics).__name__}; "
                "expected a real number or a one-element tensor"
            )
        current = float(metrics)
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            raise ValueError(
                f"{owner}: the optimizer now has {len(groups)} param groups, the "
                f"scheduler was built for {len(self.min_lrs)}; build a new one "
                "after add_param_group"
            )
        self.last_epoch = (
            self.last_epoch + 1
            if epoch is None
            else _checks.integer(owner, "epoch", epoch, minimum=0)
        )
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for group, min_lr in zip(groups, self.min_lrs, strict=True):
                old_lr = float(group["lr"])
                new_lr = max(old_lr * self.factor, min_lr)
                if old_lr - new_lr > self.eps:
                    if torch.is_tensor(group["lr"]):
                        group["lr"].fill_(new_lr)
                    else:
                        group["lr"] = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [float(group["lr"]) for group in groups]

    # floats only, never torch's tensors: a narrower list than torch's list[float | Tensor]
    def get_last_lr(self) -> list[float]:  # type: ignore[override]
        """The learning rate of each group after the last step."""
        return list(cast(list[float], self._last_lr))  # written above, as floats

    def _config(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "factor": self.factor,
            "patience": self.patience,
            "threshold": self.threshold,
            "threshold_mode": self.threshold_mode,
            "cooldown": self.cooldown,
            "min_lrs": list(self.min_lrs),
            "eps": self.eps,
        }

    def state_dict(self) -> dict[str, Any]:
        """The counters, the best metric, the current lrs and the arguments (checked on load)."""
        return {
            "descent": {"scheduler": "ReduceLROnPlateau", "format_version": FORMAT_VERSION},
            "last_epoch": self.last_epoch,
            "best": self.best,
            "num_bad_epochs": self.num_bad_epochs,
            "cooldown_counter": self.cooldown_counter,
            "lrs": list(self._last_lr),
            "config": self._config(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Check the whole state dict, then restore it and write its lrs into the groups.

        Accepts descent's layout and torch's ``ReduceLROnPlateau.state_dict()``. On error
        a ``ValueError``/``TypeError`` says what is wrong and nothing changes.
        """
        owner = "ReduceLROnPlateau.load_state_dict"
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{owner}: expected a dict, got {type(state_dict).__name__}")
        if "descent" in state_dict:
            missing = _STATE_KEYS - set(state_dict)
            unknown = set(state_dict) - _STATE_KEYS
            if missing or unknown:
                raise ValueError(
                    f"{owner}: the state dict lacks {sorted(missing)} and has "
                    f"unknown keys {sorted(unknown)}"
                )
            meta = state_dict["descent"]
            saved_type = meta.get("scheduler") if isinstance(meta, Mapping) else None
            if saved_type != "ReduceLROnPlateau":
                raise ValueError(f"{owner}: the state dict is from scheduler {saved_type!r}")
            version = meta.get("format_version")
            if isinstance(version, bool) or version not in range(1, FORMAT_VERSION + 1):
                raise ValueError(f"{owner}: format_version={version!r} is not supported")
            config, lrs = state_dict["config"], state_dict["lrs"]
        else:
            needed = {"last_epoch", "best", "num_bad_epochs", "cooldown_counter", "_last_lr"}
            if needed - set(state_dict):
                raise ValueError(
                    f"{owner}: the state dict lacks {sorted(needed - set(state_dict))}"
                )
            config = {name: state_dict[name] for name in self._config() if name in state_dict}
            lrs = state_dict["_last_lr"]
        mine = self._config()
        if not isinstance(config, Mapping):
            raise ValueError(f"{owner}: config has type {type(config).__name__}; expected a dict")
        names = set(config) | (set(mine) if "descent" in state_dict else set())
        differences = [
            f"{name}: saved {config.get(name, '<missing>')!r}, here {mine[name]!r}"
            for name in sorted(names)
            if config.get(name, "<missing>") != mine.get(name)
        ]
        if differences:
            raise ValueError(
                f"{owner}: the state dict was saved by a scheduler built with other "
                f"arguments ({'; '.join(differences)}); build it with the saved "
                "arguments"
            )
        groups = self.optimizer.param_groups
        if not isinstance(lrs, list | tuple) or len(lrs) != len(groups):
            raise ValueError(
                f"{owner}: lrs={lrs!r} is invalid; expected one learning rate per "
                f"param group ({len(groups)})"
            )
        lrs = [_checks.real(owner, f"lrs[{i}]", v, minimum=0.0) for i, v in enumerate(lrs)]
        last_epoch = _checks.integer(owner, "last_epoch", state_dict["last_epoch"], minimum=0)
        best = state_dict["best"]
        if isinstance(best, bool) or not isinstance(best, int | float) or math.isnan(best):
            raise ValueError(f"{owner}: best={best!r} is invalid; expected a number (or ±inf)")
        bad = _checks.integer(owner, "num_bad_epochs", state_dict["num_bad_epochs"], minimum=0)
        cooldown = _checks.integer(
            owner, "cooldown_counter", state_dict["cooldown_counter"], minimum=0
        )
        self.last_epoch, self.best = last_epoch, float(best)
        self.num_bad_epochs, self.cooldown_counter = bad, cooldown
        for group, lr in zip(groups, lrs, strict=True):
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = list(lrs)
