"""StepGuard: everything between the accumulated gradients and the optimizer's update.

For one optimizer step, in order:

1. with a ``GradScaler`` (``precision="fp16"``), unscale the gradients;
2. check the loss and the gradients: a NaN or infinity skips the step (``nonfinite=
   "skip"``, or always for a gradient overflow under a ``GradScaler``, which then lowers
   its scale) or raises :class:`NonFiniteError` (``"raise"``); nothing is updated;
3. let the callbacks see the gradients (``on_before_optimizer_step``);
4. clip by value, then by global norm (:mod:`descent.utils.clip`);
5. ``optimizer.step()`` (through the scaler, if any), ``optimizer.zero_grad()``;
6. step the scheduler (plateau schedulers are stepped at epoch end instead).

The guard also owns the forward passes' precision: :meth:`autocast` and
:meth:`scale_loss` (what ``backward`` is called on).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch

from ..utils import clip
from .checks import check_choice, check_optional_positive, is_plateau_scheduler

NONFINITE_POLICIES = ("raise", "skip")
PRECISIONS = ("fp32", "bf16", "fp16")

# torch's LR schedulers warn at their first step unless their optimizer's own (patched)
# ``step`` ran; a ZeroRedundancyOptimizer steps instead (see ``Distribution.shard``).
_SCHEDULER_ORDER_WARNING = r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`"


class NonFiniteError(FloatingPointError):
    """A loss or gradient was NaN or infinite (``nonfinite="raise"``); nothing was updated."""


class StepGuard:
    """Checks, clips and applies optimizer steps; runs forward passes at the set precision.

    Args:
        owner: the name errors start with (the trainer's class).
        nonfinite: ``"raise"`` or ``"skip"`` (see the module doc).
        precision: ``"fp32"``; ``"bf16"`` (autocast to bfloat16); ``"fp16"`` (autocast
            to float16, gradients scaled by a ``torch.amp.GradScaler``).
        clip_grad_norm, clip_grad_value: None, or the bound (see :mod:`descent.utils.clip`).
    """

    def __init__(
        self,
        owner: str,
        *,
        nonfinite: str = "raise",
        precision: str = "fp32",
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
    ) -> None:
        self.owner = owner
        self.nonfinite = check_choice(owner, "nonfinite", nonfinite, NONFINITE_POLICIES)
        self.precision = check_choice(owner, "precision", precision, PRECISIONS)
        self.clip_grad_norm = check_optional_positive(owner, "clip_grad_norm", clip_grad_norm)
        self.clip_grad_value = check_optional_positive(owner, "clip_grad_value", clip_grad_value)
        self.device_type = "cpu"
        self.scaler: torch.amp.GradScaler | None = None
        self._scaler_device = ""
        self.nonfinite_loss: tuple[int, int, float] | None = None
        self.names: dict[int, str] = {}
        self.set_device_type("cpu")

    # ------------------------------------------------------------------ forward and backward

    def set_device_type(self, device_type: str) -> None:
        """The device the forward passes run on (a ``GradScaler`` is made for it once)."""
        self.device_type = device_type
        if self.precision == "fp16" and self._scaler_device != device_type:
            state = None if self.scaler is None else self.scaler.state_dict()
            self.scaler = torch.amp.GradScaler(device_type)
            self._scaler_device = device_type
            if state:
                self.scaler.load_state_dict(state)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of ``precision`` for forward passes (fp32: a no-op)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device_type, dtype=dtype)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """What to call ``backward()`` on: ``loss``, times the scaler's scale under fp16."""
        return loss if self.scaler is None else self.scaler.scale(loss)

    def note_loss(self, loss: torch.Tensor, epoch: int, index: int) -> float:
        """The loss as a float; a non-finite one is remembered for the coming step check."""
        value = float(loss.detach())
        if not math.isfinite(value) and self.nonfinite_loss is None:
            self.nonfinite_loss = (epoch, index, value)
        return value

    # ------------------------------------------------------------------ the step

    def step(
        self,
        optimizer: Any,
        scheduler: Any = None,
        *,
        before_step: Callable[[], None] = lambda: None,
        where: Callable[[], str] = lambda: "the optimizer step",
    ) -> dict[str, float] | None:
        """Check, clip and apply one step of ``optimizer``; then step ``scheduler``.

        ``before_step`` runs when the step will happen (the callbacks); ``where()``
        names the step in errors. Returns the step's logs (``grad_norm`` when clipping by norm)
        or None if the step was skipped (then raises under ``nonfinite="raise"``, unless
        a ``GradScaler`` overflowed).
        """
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        params = [
            p for group in optimizer.param_groups for p in group["params"] if p.grad is not None
        ]
        bad = _nonfinite(params)
        if bad or self.nonfinite_loss is not None:
            self._refuse(optimizer, [self.label(optimizer, p) for p in bad], where())
            return None
        before_step()
        logs: dict[str, float] = {}
        if params and self.clip_grad_value is not None:
            clip.clip_grad_value(params, self.clip_grad_value)
        if params and self.clip_grad_norm is not None:
            logs["grad_norm"] = float(clip.clip_grad_norm(params, self.clip_grad_norm))
        if self.scaler is not None and params:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None and not is_plateau_scheduler(scheduler):
            with warnings.catch_warnings():
                if getattr(scheduler, "optimizer", optimizer) is not optimizer:
                    warnings.filterwarnings("ignore", _SCHEDULER_ORDER_WARNING, UserWarning)
                scheduler.step()
        return logs

    def label(self, optimizer: Any, param: torch.Tensor) -> str:
        """How errors name ``param``: its name in the model (:attr:`names`, by ``id``), or
        its place in ``optimizer``'s param groups."""
        name = self.names.get(id(param))
        if name is not None:
            return name
        for g, group in enumerate(optimizer.param_groups):
            for i, candidate in enumerate(group["params"]):
                if candidate is param:
                    return f"param_groups[{g}]['params'][{i}]"
        return "<unknown parameter>"

    def _refuse(self, optimizer: Any, labels: list[str], where: str) -> None:
        """Drop the window's gradients; raise :class:`NonFiniteError` unless skipping."""
        overflow = self.scaler is not None and self.nonfinite_loss is None
        if self.scaler is not None:
            self.scaler.update()  # an overflow: the scaler lowers its scale
        optimizer.zero_grad(set_to_none=True)
        parts = []
        if self.nonfinite_loss is not None:
            epoch, index, value = self.nonfinite_loss
            parts.append(f"non-finite loss {value} at epoch {epoch}, batch {index}")
        self.nonfinite_loss = None
        if labels:
            shown = ", ".join(labels[:10]) + (
                f" and {len(labels) - 10} more" if len(labels) > 10 else ""
            )
            parts.append(f"non-finite gradients in {shown}")
        else:
            parts.append("no parameter gradient is non-finite")
        if self.nonfinite == "raise" and not overflow:
            raise NonFiniteError(
                f"{self.owner}: {'; '.join(parts)} at {where}; no parameter "
                "was updated (nonfinite='skip' skips such steps instead)"
            )

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any] | None:
        """The ``GradScaler``'s state (its scale and growth tracker), or None without one."""
        return None if self.scaler is None else dict(self.scaler.state_dict())

    def check_state(self, owner: str, state: Any) -> None:
        """Refuse a :meth:`state_dict` that does not fit this guard (nothing changes)."""
        if (state is None) != (self.precision != "fp16"):
            raise ValueError(
                f"{owner}: the state has {'no' if state is None else 'a'} "
                f"GradScaler state, this trainer has precision={self.precision!r}"
            )
        if state is not None and not (
            isinstance(state, Mapping)
            and isinstance(state.get("scale"), float)
            and math.isfinite(state["scale"])
            and state["scale"] > 0
        ):
            raise ValueError(
                f"{owner}: the GradScaler state {state!r} has no finite positive 'scale'"
            )

    def load_state(self, state: Mapping[str, Any] | None) -> None:
        """Apply a state checked by :meth:`check_state`."""
        if state is not None:
            if self.scaler is None:
                self.scaler = torch.amp.GradScaler(self.device_type)
                self._scaler_device = self.device_type
            self.scaler.load_state_dict(dict(state))


def _nonfinite(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The parameters whose gradient holds a NaN or an infinity (one sync for all); each
    of ``params`` has a gradient."""
    if not params:
        return []
    flags = torch.stack([torch.isfinite(cast(torch.Tensor, p.grad)).all() for p in params])
    if bool(flags.all()):
        return []
    return [p for p, ok in zip(params, flags.tolist(), strict=True) if not ok]
