"""A directory of a run's checkpoints: keep the last K plus the best, resume from the latest.

Checkpoints are named ``<prefix>-<step, 9 digits>`` (``step-000000120``) inside the
manager's directory, one per global optimizer step saved. After each save the
manager deletes every checkpoint that is neither among the ``keep_last`` newest nor
the best by ``monitor`` (the metric named in ``save(..., metrics=...)``; ``mode``
says whether lower or higher is better). Saving step s also deletes checkpoints of
steps after s: they belong to a run that was resumed from an earlier point, and
would otherwise be mistaken for the latest.

:meth:`CheckpointManager.load_latest` verifies checkpoints from the newest down and
loads the first that passes every check, warning about each damaged one it skips;
so a crash during a write, which can at worst leave a stray temporary directory,
and a damaged newest checkpoint both fall back to the one before. Damaged means
anything :func:`~descent.checkpoint.read_checkpoint` refuses (see
:mod:`descent.checkpoint.format`), a step label that differs from the directory's
name, or a refusal by the caller's own ``check`` (a trainer validating its loop
counters raises :class:`CorruptCheckpointError` there). A checkpoint that is intact
but does not fit the model (:class:`CheckpointMismatchError`) is an error, not a
reason to fall back.

Saving trusts nothing already on disk. Saving a step that already has an intact
checkpoint (one that passes every check) replaces it in one step, writing every file
afresh; a damaged checkpoint directory of that step is moved aside to
``<name>.damaged-<hex>``, so that saving the step again repairs it; anything else named
like a checkpoint that is not a directory (a file, a link, a FIFO) is reported when
listing and moved aside to ``<name>.stray-<hex>`` when its step is saved. Each with a
warning naming the new place; nothing is deleted, nothing written into.

Under ``torch.distributed`` call :meth:`save` and :meth:`load_latest` on every rank:
``save`` consolidates ZeroRedundancyOptimizer state and gathers every rank's random
generator states, then rank 0 alone writes; ``load_latest`` lets rank 0 choose the
checkpoint and every rank loads that one (its own generator states included). The
directory must be shared by the ranks (one machine, or a shared file system).

Example (a loop that survives being killed)::

    manager = CheckpointManager("run/checkpoints", keep_last=2, monitor="loss")
    resumed = manager.load_latest(model=model, optimizers=opt, schedulers=sched)
    step = resumed.trainer_state["step"] if resumed else 0
    while step < total_steps:
        ...one optimizer step...
        step += 1
        if step % 50 == 0:
            manager.save(step, model=model, optimizers=opt, schedulers=sched,
                         trainer_state={"step": step}, metrics={"loss": loss})
"""

from __future__ import annotations

import math
import os
import re
import shutil
import stat
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import distributed
from ._atomic import remove_directory
from ._read import describe_kind
from .format import INDEX_NAME, CorruptCheckpointError, read_checkpoint, read_index
from .rng import capture_rng_state
from .state import Checkpoint, _named, load_checkpoint, save_checkpoint

Check = Callable[[Mapping[str, Any]], None]
"""A caller's check of a checkpoint's content; raises CorruptCheckpointError to skip it."""


@dataclass(frozen=True)
class CheckpointRecord:
    """A committed checkpoint in a manager's directory, as its index describes it."""

    path: Path
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)


class CheckpointManager:
    """Saves a run's checkpoints in one directory, prunes them, and finds the latest valid one.

    Args:
        directory: where the checkpoints live (created if missing).
        keep_last: how many of the newest checkpoints to keep (>= 1).
        monitor: a metric name; the checkpoint with its best value is kept as well.
        mode: ``"min"`` or ``"max"``: which values of ``monitor`` are better.
        prefix: the checkpoints' name prefix.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        keep_last: int = 3,
        monitor: str | None = None,
        mode: str = "min",
        prefix: str = "step",
    ) -> None:
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(
                f"CheckpointManager: keep_last={keep_last!r}; expected an integer >= 1"
            )
        if mode not in ("min", "max"):
            raise ValueError(f"CheckpointManager: mode={mode!r}; expected 'min' or 'max'")
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(
                f"CheckpointManager: monitor={monitor!r}; expected a metric name or None"
            )
        if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z0-9_]+", prefix):
            raise ValueError(
                f"CheckpointManager: prefix={prefix!r}; expected letters, digits or underscores"
            )
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise FileExistsError(f"CheckpointManager: {self.directory} is a file, not a directory")
        self.keep_last, self.monitor, self.mode, self.prefix = keep_last, monitor, mode, prefix
        self._pattern = re.compile(rf"{re.escape(prefix)}-(\d{{9,}})")
        self._reported: set[tuple[str, int]] = set()

    def path_for(self, step: int) -> Path:
        """The directory the checkpoint of ``step`` is written to."""
        return self.directory / f"{self.prefix}-{step:09d}"

    # ------------------------------------------------------------------ listing

    def _candidates(self) -> list[tuple[int, Path]]:
        """Directories named like checkpoints, oldest first; warns about other such entries."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            match = self._pattern.fullmatch(entry.name)
            if not match:
                continue
            mode = entry.lstat().st_mode
            if stat.S_ISDIR(mode):
                found.append((int(match.group(1)), entry))
            elif (entry.name, mode) not in self._reported:  # once per manager and entry
                self._reported.add((entry.name, mode))
                warnings.warn(
                    f"CheckpointManager: {entry} is named like a checkpoint but is "
                    f"{_kind(mode)}, not a checkpoint directory; it is ignored (and "
                    "moved aside if its step is saved)",
                    stacklevel=3,
                )
        return sorted(found)

    def _label_checked(self, step: int, path: Path, content: Mapping[str, Any]) -> None:
        if content["step"] != step:
            raise CorruptCheckpointError(
                f"checkpoint: {path / INDEX_NAME} has the step label "
                f"{content['step']!r}, but the directory is named for "
                f"step {step}"
            )

    def records(self) -> list[CheckpointRecord]:
        """Committed checkpoints whose index is intact, oldest first (tensors not checked)."""
        records = []
        for step, path in self._candidates():
            try:
                content = read_index(path)["content"]
                self._label_checked(step, path, content)
            except CorruptCheckpointError:
                continue
            records.append(CheckpointRecord(path, step, _plain_metrics(content["metrics"])))
        return records

    def best(self) -> CheckpointRecord | None:
        """The checkpoint with the best value of ``monitor`` (None without a monitor)."""
        if self.monitor is None:
            return None
        scored = [
            (record.metrics[self.monitor], record.step, record)
            for record in self.records()
            if _finite(record.metrics.get(self.monitor))
        ]
        if not scored:
            return None
        sign = 1 if self.mode == "min" else -1
        return min(scored, key=lambda item: (sign * item[0], -item[1]))[2]

    def latest(self, check: Check | None = None) -> Path | None:
        """The newest checkpoint that passes every check, or None; warns about damaged ones.

        ``check``, if given, is called with the content of each checkpoint that passes
        the reader's checks (the tree :func:`~descent.checkpoint.read_checkpoint`
        returns); raising :class:`CorruptCheckpointError` there skips that checkpoint
        like a damaged one (a trainer refuses impossible loop counters this way).
        """
        for step, path in reversed(self._candidates()):
            try:
                content = read_checkpoint(path)
                self._label_checked(step, path, content)
                if check is not None:
                    check(content)
            except CorruptCheckpointError as error:
                warnings.warn(
                    f"CheckpointManager: skipping the checkpoint of step {step}: {error}",
                    stacklevel=2,
                )
                continue
            return path
        return None

    # ------------------------------------------------------------------ save / load

    def save(
        self,
        step: int,
        *,
        model: Any = None,
        optimizers: Any = None,
        schedulers: Any = None,
        trainer_state: Any = None,
        extra: Any = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> Path | None:
        """Write the checkpoint of global optimizer step ``step``, then prune.

        Arguments as for :func:`descent.save_checkpoint`. Under ``torch.distributed``
        call it on every rank; rank 0 writes and returns the path, the other ranks
        return None. Returns the checkpoint's path.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"CheckpointManager.save: step={step!r}; expected an integer >= 0")
        if self.monitor is not None and metrics is not None and self.monitor in metrics:
            value = metrics[self.monitor]
            number = value.item() if hasattr(value, "item") else value
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise TypeError(
                    f"CheckpointManager.save: metrics[{self.monitor!r}]={value!r}; "
                    "expected a number"
                )
        for optimizer in _named("optimizers", optimizers).values():
            distributed.consolidate_optimizer_state(optimizer)
        rng_states = distributed.all_gather_object(capture_rng_state())
        if not distributed.is_main_process():
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path_for(step)
        self._clear_the_way(step, path)
        save_checkpoint(
            path,
            model=model,
            optimizers=optimizers,
            schedulers=schedulers,
            trainer_state=trainer_state,
            extra=extra,
            step=step,
            metrics=_plain_metrics(metrics),
            rng=rng_states,
        )
        self._prune(step)
        return path

    def _clear_the_way(self, step: int, path: Path) -> None:
        """Leave ``path`` absent or an intact checkpoint of ``step`` (then rewritten in place).

        An intact checkpoint passes every check of :meth:`latest`; anything else in the
        way is moved aside, never written into or deleted.
        """
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            try:
                self._label_checked(step, path, read_checkpoint(path))
                return
            except CorruptCheckpointError as error:
                aside = _set_aside(path, "damaged")
                reason = str(error)
        else:
            aside = _set_aside(path, "stray")
            reason = f"it is {_kind(mode)}"
        warnings.warn(
            f"CheckpointManager: {path} is in the way of the checkpoint of step "
            f"{step} ({reason}); moved it to {aside.name}",
            stacklevel=3,
        )

    def _prune(self, step: int) -> None:
        records = self.records()
        newest = [record.step for record in records if record.step <= step][-self.keep_last :]
        keep = set(newest)
        best = self.best()
        if best is not None and best.step <= step:
            keep.add(best.step)
        for record in records:
            if record.step not in keep:
                remove_directory(record.path)
        for later, path in self._candidates():  # damaged ones too
            if later > step:
                remove_directory(path)
        for entry in self.directory.iterdir():  # leftovers of interrupted writes
            if entry.name.startswith(f".{self.prefix}-") and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)

    def load_latest(
        self,
        *,
        model: Any = None,
        optimizers: Any = None,
        schedulers: Any = None,
        restore_rng: bool = True,
        check: Check | None = None,
    ) -> Checkpoint | None:
        """Load the newest valid checkpoint into the given objects; None if there is none.

        Damaged checkpoints, and those ``check`` refuses (see :meth:`latest`), are
        skipped with a warning (falling back to the previous one). Arguments and errors
        as for :func:`descent.load_checkpoint`. Under ``torch.distributed`` call it on
        every rank.
        """
        chosen = self.latest(check) if distributed.is_main_process() else None
        chosen = distributed.broadcast_object(None if chosen is None else str(chosen))
        if chosen is None:
            return None
        return load_checkpoint(
            chosen,
            model=model,
            optimizers=optimizers,
            schedulers=schedulers,
            restore_rng=restore_rng,
        )


def _kind(mode: int) -> str:
    return "a file" if stat.S_ISREG(mode) else describe_kind(mode)


def _set_aside(path: Path, why: str) -> Path:
    """Rename ``path`` to a sibling that no listing takes for a checkpoint; return it."""
    aside = path.with_name(f"{path.name}.{why}-{uuid.uuid4().hex[:8]}")
    os.replace(path, aside)
    return aside


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _plain_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """Metrics as plain Python numbers (tensors and NumPy scalars converted)."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"CheckpointManager: metrics has type {type(metrics).__name__}; "
            "expected a dict of numbers"
        )
    return {
        str(name): value.item() if hasattr(value, "item") else value
        for name, value in metrics.items()
    }
