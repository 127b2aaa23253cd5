"""The loop's counters, in one place: what a checkpoint must restore and what a resume checks."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass
class LoopState:
    """Every counter of a run, in one place (what a checkpoint must restore).

    ``epoch``: index of the current epoch (epochs completed, between epochs);
    ``batch``: batches of the current epoch already consumed; ``step``: optimizer steps
    taken in all; ``window``: micro-batches (or chunks) accumulated towards the next
    step; ``skipped``: steps skipped for non-finite values; ``end_epoch``: the epoch at
    which the current ``train()`` call stops; ``running``: a ``train()`` call is under
    way (or was interrupted: the next call then finishes it).
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    window: int = 0
    skipped: int = 0
    end_epoch: int = 0
    running: bool = False

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load counters: the keys of this class, bools and non-negative ints, checked first."""
        fields = {f.name for f in dataclasses.fields(self)}
        if not isinstance(state_dict, Mapping) or set(state_dict) != fields:
            got = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict)
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: keys {got}; expected {sorted(fields)}"
            )
        for name, value in state_dict.items():
            kind = bool if name == "running" else int
            if type(value) is not kind or (kind is int and value < 0):
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: {name}={value!r}; "
                    f"expected a {'bool' if kind is bool else 'non-negative int'}"
                )
        for name, value in state_dict.items():
            setattr(self, name, value)

    def check(
        self,
        *,
        batches_per_epoch: int | None,
        accumulation: int,
        accumulation_name: str = "gradient_accumulation_steps",
    ) -> None:
        """Raise ``ValueError`` naming the first counter that this trainer's configuration
        makes impossible (the counter, its value, and the bound it breaks).

        ``accumulation`` is the number of micro-batches (or chunks) per optimizer step,
        ``batches_per_epoch`` the length of an epoch (None: unknown).
        """
        if self.window >= accumulation:
            raise ValueError(
                f"loop counter window={self.window}; expected less than "
                f"{accumulation_name}={accumulation}"
            )
        if batches_per_epoch is not None and self.batch > batches_per_epoch:
            raise ValueError(
                f"loop counter batch={self.batch}; expected at most the "
                f"{batches_per_epoch} batches of an epoch"
            )
        if self.epoch > self.end_epoch:
            raise ValueError(
                f"loop counter epoch={self.epoch}; expected at most end_epoch={self.end_epoch}"
            )
        if self.epoch == self.end_epoch and (self.batch or self.window):
            raise ValueError(
                f"loop counter batch={self.batch} (window={self.window}) at "
                f"epoch={self.epoch}, the end epoch; expected 0: the run is over"
            )
        if not self.running and (self.batch or self.window):
            raise ValueError(
                f"loop counter batch={self.batch} (window={self.window}) with "
                "running=False; expected 0 between train() calls"
            )
