"""The errors a checkpoint raises (re-exported by :mod:`descent.checkpoint.format`)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and the reason."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint is missing, damaged, truncated or not in descent's format."""


class CheckpointMismatchError(CheckpointError):
    """A valid checkpoint does not fit the model, optimizers or schedulers it is loaded into."""
