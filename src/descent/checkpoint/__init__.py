"""Checkpoints: the full training state on disk, written atomically, read without pickle.

The API, smallest first:

* :func:`save_checkpoint` / :func:`load_checkpoint`: write a model, its optimizers and
  schedulers, trainer state, extra user data and the random generator states to a
  checkpoint directory; load it back after checking everything, or change nothing.
  For loops of your own. Both re-exported as ``descent.save_checkpoint`` /
  ``descent.load_checkpoint``.
* :class:`CheckpointManager`: a run's checkpoint directory. ``save(step, ...)``
  writes ``step-000000120/`` and keeps the last K plus the best by a monitored
  metric; ``load_latest(...)`` resumes from the newest valid checkpoint, falling back
  to the previous one when the newest is damaged (or refused by the caller's
  ``check``, such as a trainer's check of its loop counters). Saving trusts nothing on
  disk: what is in the way is moved aside, never written into. Safe under
  ``torch.distributed`` (call it on every rank). This is what trainers use.
* :func:`capture_rng_state` / :func:`restore_rng_state`: Python, NumPy, torch and
  CUDA generator states (saved in every checkpoint by default).
* :func:`read_checkpoint`: verify a checkpoint and return its raw content tree.
* Errors: :class:`CheckpointError` (a ``ValueError``), split into
  :class:`CorruptCheckpointError` (missing, truncated, corrupted, pickled, newer
  format, not a regular file, oversized, beyond the parsing limits, or a structure
  no checkpoint can have: see "What a reader refuses, and why" in
  :mod:`descent.checkpoint.format`) and :class:`CheckpointMismatchError` (an intact
  checkpoint that does not fit the model, optimizer or scheduler it is loaded into).

How a trainer resumes exactly. Save at optimizer-step boundaries (after
``optimizer.step()``, ``scheduler.step()`` and ``zero_grad()``), with a trainer
state that says where the loop is::

    manager.save(global_step, model=model, optimizers=opt, schedulers=sched,
                 trainer_state={"epoch": epoch, "global_step": global_step,
                                "sampler": sampler.state_dict(), "history": ...,
                                "callbacks": {...}},
                 metrics={"loss": loss})

and on ``resume=True``::

    ckpt = manager.load_latest(model=model, optimizers=opt, schedulers=sched)
    if ckpt is not None:
        sampler.load_state_dict(ckpt.trainer_state["sampler"])  # epoch and position
        ...

``load_latest`` restores the generators as they were at the save, so dropout masks
and shuffles after the resume are those of an uninterrupted run, and the parameters
end bit-identical (same device, same thread count).

The on-disk format is described in :mod:`descent.checkpoint.format`.
"""

from .format import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointMismatchError,
    CorruptCheckpointError,
    read_checkpoint,
)
from .manager import CheckpointManager, CheckpointRecord
from .rng import capture_rng_state, restore_rng_state
from .state import Checkpoint, load_checkpoint, save_checkpoint

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointMismatchError",
    "CheckpointRecord",
    "CorruptCheckpointError",
    "capture_rng_state",
    "load_checkpoint",
    "read_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]
