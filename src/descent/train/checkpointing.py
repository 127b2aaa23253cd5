"""Checkpointing: when a trainer saves, what it saves, and how ``train(resume=True)`` resumes.

Saves happen where nothing of the run lives outside the checkpoint: at a batch
boundary with no open accumulation window (``state.window == 0``), the first one after
every ``checkpoint_every`` optimizer steps, and after every epoch. A checkpoint holds
the model, every optimizer and scheduler, and the trainer's payload::

    {"trainer": <Trainer._training_state()>,     counters, history, callbacks, meter, ...
     "ranks": [<per-rank state>, ...],            the meter, strategy extras, optimizer steps
     "stop_training": bool, "world_size": int,
     "plan": {"batches_per_epoch": ..., ...}}     the configuration the counters refer to

``resume=True`` takes the newest checkpoint that passes every check and loads all of it
or nothing. A checkpoint whose files are damaged (:class:`CorruptCheckpointError` from
the reader) or whose payload is impossible for the configuration it records (a counter
out of range, an optimizer step that is not the one recorded beside the counters) is
skipped with a warning, and the one before it is tried: the same fallback for both.
A checkpoint that is intact but was written by another configuration (another trainer
class, seed, world size, epoch length or accumulation) is an error, not a fallback: every
checkpoint of the run would be refused alike, and the fix is the trainer's arguments.
When some checkpoint was refused for its payload and none is left, the refusals are
raised together (starting afresh would overwrite the run's checkpoints).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import distributed
from ..checkpoint import CheckpointManager, CorruptCheckpointError, load_checkpoint, read_checkpoint
from .checks import check_choice, check_positive_int

if TYPE_CHECKING:
    from .base import Trainer

PAYLOAD_KEYS = frozenset({"trainer", "ranks", "stop_training", "world_size", "plan"})


class Checkpointing:
    """A trainer's checkpoint policy and resume (see the module doc).

    Arguments as the trainers' ``checkpoint_*`` options; ``directory`` None means no
    checkpoints (then the other options must keep their defaults).
    """

    def __init__(
        self,
        owner: str,
        directory: Any,
        *,
        every: Any = None,
        each_epoch: Any = True,
        keep_last: Any = 3,
        monitor: Any = None,
        mode: Any = "min",
    ) -> None:
        if every is not None:
            check_positive_int(owner, "checkpoint_every", every)
        if not isinstance(each_epoch, bool):
            raise TypeError(f"{owner}: checkpoint_each_epoch={each_epoch!r}; expected a bool")
        check_positive_int(owner, "keep_last", keep_last)
        check_choice(owner, "checkpoint_mode", mode, ("min", "max"))
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(
                f"{owner}: checkpoint_monitor={monitor!r}; expected None or the "
                "name of an epoch metric"
            )
        self.owner = owner
        self.every, self.each_epoch, self.monitor = every, each_epoch, monitor
        self.manager: CheckpointManager | None = None
        self.saved_step = 0
        if directory is None:
            for name, value in (("checkpoint_every", every), ("checkpoint_monitor", monitor)):
                if value is not None:
                    raise ValueError(
                        f"{owner}: {name}={value!r} needs a checkpoint directory; "
                        "pass checkpoint_dir=..."
                    )
            return
        if not isinstance(directory, str | os.PathLike):
            raise TypeError(
                f"{owner}: checkpoint_dir={directory!r}; expected a path (str or "
                "os.PathLike) or None"
            )
        if every is None and not each_epoch:
            raise ValueError(
                f"{owner}: checkpoint_dir={str(directory)!r} with "
                "checkpoint_every=None and checkpoint_each_epoch=False would never "
                "save; set one of them"
            )
        if monitor is not None and not each_epoch:
            raise ValueError(
                f"{owner}: checkpoint_monitor={monitor!r} ranks end-of-epoch "
                "checkpoints; it needs checkpoint_each_epoch=True"
            )
        if Path(directory).exists() and not Path(directory).is_dir():
            raise ValueError(
                f"{owner}: checkpoint_dir={str(directory)!r} is a file; expected "
                "a directory (created if missing)"
            )
        self.manager = CheckpointManager(
            Path(directory), keep_last=keep_last, monitor=monitor, mode=mode
        )

    # ------------------------------------------------------------------ saving

    def save_if_due(self, trainer: Trainer) -> None:
        """Save if ``checkpoint_every`` steps passed since the last save (window closed)."""
        step = trainer.state.step
        if (
            self.manager is not None
            and self.every is not None
            and trainer.state.window == 0
            and step // self.every > self.saved_step // self.every
        ):
            self.save(trainer, {})

    def save_epoch(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        """The end-of-epoch save (its metrics rank it for ``checkpoint_monitor``)."""
        if self.manager is None or not self.each_epoch:
            return
        if self.monitor is not None and self.monitor not in metrics:
            raise ValueError(
                f"{self.owner}: checkpoint_monitor={self.monitor!r} is not among "
                f"the epoch metrics {sorted(metrics)}"
            )
        self.save(trainer, metrics)

    def save(self, trainer: Trainer, metrics: Mapping[str, float]) -> None:
        """Write a checkpoint of the current step (call on every rank; rank 0 writes).

        Mode-switching optimizers (Schedule-Free) are saved in eval mode, so the saved
        model is the averaged point; a save in the middle of an epoch switches them back
        to train mode afterwards.
        """
        assert self.manager is not None
        from .base import switch_optimizers

        mid_epoch = trainer.state.batch != 0
        switch_optimizers(trainer, training=False)
        payload = {
            "trainer": trainer.training_state(),
            "ranks": distributed.all_gather_object(trainer.rank_state()),
            "stop_training": bool(trainer.stop_training),
            "world_size": distributed.get_world_size(),
            "plan": trainer.loop_plan(),
        }
        self.manager.save(
            trainer.state.step,
            model=trainer.model,
            optimizers=trainer.optimizers(),
            schedulers=trainer.checkpoint_schedulers(),
            trainer_state=payload,
            metrics={
                key: value for key, value in metrics.items() if isinstance(value, int | float)
            },
        )
        if mid_epoch:
            switch_optimizers(trainer, training=True)
        self.saved_step = trainer.state.step

    # ------------------------------------------------------------------ resuming

    def refuse_used_directory(self, trainer: Trainer) -> None:
        """A new run (not ``resume``) must not mix its checkpoints with an older run's."""
        if self.manager is None or trainer.state.running or trainer.state.step:
            return
        steps = [record.step for record in self.manager.records()]
        if steps:
            raise ValueError(
                f"{self.owner}.train: checkpoint_dir "
                f"{str(self.manager.directory)!r} already holds checkpoints (steps "
                f"{steps}) and this trainer starts a new run; pass resume=True to "
                "continue that run, or choose another directory"
            )

    def resume(self, trainer: Trainer) -> bool:
        """Load the newest usable checkpoint (all of it, or nothing); return its stop flag.
        With no checkpoint there, nothing changes (and False is returned)."""
        assert self.manager is not None
        chosen: str | None = None
        error: tuple[str, str] | None = None
        content: Mapping[str, Any] | None = None
        if distributed.is_main_process():
            chosen, error, content = self._choose(trainer)
        chosen, error = distributed.broadcast_object((chosen, error))
        if error is not None:
            kind, message = error
            raise (CorruptCheckpointError if kind == "corrupt" else ValueError)(message)
        if chosen is None:
            return False
        payload = (content if content is not None else read_checkpoint(chosen))["trainer_state"]
        state = {**payload["trainer"], **payload["ranks"][distributed.get_rank()]["trainer"]}

        def load_tensors() -> None:
            load_checkpoint(
                chosen,
                model=trainer.model,
                optimizers=trainer.optimizers(),
                schedulers=trainer.checkpoint_schedulers(),
            )

        trainer.load_training_state(state, f"{self.owner}.train(resume=True)", then=load_tensors)
        self.saved_step = trainer.state.step
        return bool(payload["stop_training"])

    def _choose(
        self, trainer: Trainer
    ) -> tuple[str | None, tuple[str, str] | None, Mapping[str, Any] | None]:
        """``(path, None, content)`` of the newest usable checkpoint (all None: there is
        none), or ``(None, (kind, message), None)`` for an error every rank raises."""
        assert self.manager is not None
        latest = self.manager.latest()  # the newest whose files pass every check
        if latest is None:
            return None, None, None
        records = self.manager.records()
        newest = next((record.step for record in records if record.path == latest), -1)
        candidates = [latest] + [
            record.path for record in reversed(records) if record.step < newest
        ]
        refusals = []
        for path in candidates:
            try:
                content = read_checkpoint(path)
                _check_payload(trainer, path, content)
            except CorruptCheckpointError as error:
                warnings.warn(
                    f"{self.owner}.train(resume=True): skipping the checkpoint "
                    f"{path.name}: {error}",
                    stacklevel=3,
                )
                refusals.append(str(error))
                continue
            except ValueError as error:
                return None, ("mismatch", str(error)), None
            return str(path), None, content
        return (
            None,
            (
                "corrupt",
                f"{self.owner}.train(resume=True): no checkpoint in "
                f"{self.manager.directory} can be resumed: " + "; ".join(refusals),
            ),
            None,
        )


def _check_payload(trainer: Trainer, path: Path, content: Mapping[str, Any]) -> None:
    """Check a checkpoint's trainer payload against ``trainer``.

    Raises ``ValueError`` if it was written by another configuration (the same for every
    checkpoint of that run) and :class:`CorruptCheckpointError` if it is malformed or
    impossible under the configuration it records.
    """
    owner = f"{type(trainer).__name__}.train(resume=True)"
    payload = content.get("trainer_state")
    if not isinstance(payload, Mapping) or set(payload) != PAYLOAD_KEYS:
        raise CorruptCheckpointError(
            f"checkpoint {path}: its trainer_state is not a descent trainer's (expected a dict "
            f"with keys {sorted(PAYLOAD_KEYS)})"
        )
    world_size = distributed.get_world_size()
    ranks = payload["ranks"]
    if payload["world_size"] != world_size:
        raise ValueError(
            f"{owner}: the checkpoint {path} was written by "
            f"{payload['world_size']} process(es), this run has {world_size}; "
            "exact resume needs the same world size"
        )
    if (
        not isinstance(ranks, list)
        or len(ranks) != world_size
        or not all(
            isinstance(rank, Mapping) and set(rank) == {"trainer", "optimizer_steps"}
            for rank in ranks
        )
    ):
        raise CorruptCheckpointError(
            f"checkpoint {path}: trainer_state.ranks is not one "
            f"per-rank state for each of the {world_size} process(es)"
        )
    trainer_state = payload["trainer"]
    if (
        not isinstance(trainer_state, Mapping)
        or trainer_state.get("trainer") != type(trainer).__name__
    ):
        written_by = trainer_state.get("trainer") if isinstance(trainer_state, Mapping) else None
        raise ValueError(
            f"{owner}: the checkpoint {path} was written by a {written_by}, not "
            f"a {type(trainer).__name__}"
        )
    plan = trainer.loop_plan()
    if payload["plan"] != plan:
        raise ValueError(
            f"{owner}: the checkpoint {path} was written with {payload['plan']}; "
            f"this trainer has {plan}; exact resume needs the same data, batch "
            "size and accumulation"
        )
    loop = trainer.new_state()
    saved_loop: Any = trainer_state.get("loop")  # None when missing: load_state_dict refuses it
    try:
        loop.load_state_dict(saved_loop)
        trainer.check_counters(loop)
        if loop.window:
            raise ValueError(
                f"loop counter window={loop.window}; a checkpoint is only written "
                "with no accumulation window open (window=0)"
            )
    except ValueError as error:
        raise CorruptCheckpointError(f"checkpoint {path}: trainer_state.{error}") from None
    saved = content.get("optimizers")
    for name in trainer.optimizers():
        recorded = [
            rank["optimizer_steps"].get(name)
            for rank in ranks
            if isinstance(rank["optimizer_steps"], Mapping)
        ]
        recorded_step = max((s for s in recorded if s is not None), default=None)
        entry = saved.get(name) if isinstance(saved, Mapping) else None
        state_dict = entry.get("state") if isinstance(entry, Mapping) else None
        if not isinstance(state_dict, Mapping):
            continue  # the reader found no optimizer state to compare with (its own check)
        actual = largest_step(state_dict)
        if actual != recorded_step:
            raise CorruptCheckpointError(
                f"checkpoint {path}: optimizer {name!r} has step {actual} in its state, the "
                f"trainer recorded step {recorded_step} with its counters (step="
                f"{loop.step}); the optimizer state does not belong to these counters"
            )


def largest_step(state_dict: Mapping[str, Any]) -> float | None:
    """The largest per-parameter ``step`` in an optimizer state dict (None if none)."""
    steps = [
        float(entry["step"])
        for entry in (state_dict.get("state") or {}).values()
        if isinstance(entry, Mapping) and "step" in entry
    ]
    return max(steps, default=None)
