"""Exponential moving average of weights, for evaluation with smoothed parameters.

Example:

>>> import torch
>>> from descent.utils import EMA
>>> w = torch.nn.Parameter(torch.tensor([0.0]))
>>> ema = EMA([w], decay=0.5)
>>> with torch.no_grad():
...     _ = w.fill_(4.0)  # a training step
>>> ema.update()
>>> ema.averaged()[0]
tensor([2.])
>>> with ema.average_parameters():
...     print(w.data)
tensor([2.])
>>> w.data
tensor([4.])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["EMA"]

FORMAT_VERSION = 1


class EMA:
    r"""Exponential moving average (EMA) of parameters, updated after optimizer steps.

    After each :meth:`update` (call it after ``optimizer.step()``), every average
    :math:`\bar\theta` moves towards its parameter :math:`\theta`:

    .. math::

        \bar\theta \leftarrow \beta_t\,\bar\theta + (1 - \beta_t)\,\theta,
        \qquad \bar\theta_0 = \theta_0 \text{ (the parameter when the EMA is made)}

    with :math:`\beta_t` = ``decay``, or with ``warmup=True`` the smaller early decay
    of TensorFlow's ``ExponentialMovingAverage``,
    :math:`\beta_t = \min(\text{decay}, \frac{1 + t}{10 + t})`, where :math:`t` counts
    the updates before this one; early averages then forget the random initialisation
    quickly. ``decay`` may also be a function of :math:`t` returning a number in
    [0, 1].

    Evaluate with the averages swapped in by :meth:`average_parameters` (a context
    manager that restores the trained parameters on exit, also on error), or write
    them for good with :meth:`copy_to`. :meth:`state_dict` and
    :meth:`load_state_dict` save and restore the averages and the update count.

    Args:
        parameters: a module (its parameters, and its buffers with
            ``include_buffers``), tensors, or ``named_parameters()``.
        decay: :math:`\beta` in [0, 1], or a function from the update count to it.
        warmup: use :math:`\min(\beta, (1+t)/(10+t))`.
        include_buffers: also average a module's floating-point buffers (BatchNorm's
            running statistics); its other buffers (``num_batches_tracked``) are left
            alone.
        device: where to keep the averages (default: with each parameter), e.g.
            ``"cpu"`` to spare accelerator memory.
        dtype: the averages' dtype (default: each parameter's), e.g. ``torch.float32``
            for bfloat16 parameters, whose rounding would stall a slow average.

    References: Polyak & Juditsky, "Acceleration of Stochastic Approximation by
    Averaging", 1992 (averaging iterates); TensorFlow's
    ``tf.train.ExponentialMovingAverage`` (the ``num_updates`` warmup).
    """

    def __init__(
        self,
        parameters: Any,
        decay: float | Callable[[int], float] = 0.999,
        *,
        warmup: bool = False,
        include_buffers: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if dtype is not None and (
            not isinstance(dtype, torch.dtype) or not dtype.is_floating_point
        ):
            raise TypeError(
                f"EMA: dtype={dtype!r} is invalid; expected a floating-point "
                "torch.dtype such as torch.float32"
            )
        if not callable(decay):
            self._check_decay("decay", decay)
        for name, flag in (("warmup", warmup), ("include_buffers", include_buffers)):
            if not isinstance(flag, bool):
                raise TypeError(f"EMA: {name}={flag!r} is invalid; expected True or False")
        named = self._collect(parameters, include_buffers)
        if not named:
            raise ValueError("EMA: parameters is empty; expected at least one tensor")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self._names = [name for name, _ in named]
        self._tensors = [tensor for _, tensor in named]
        self._shadow = [
            tensor.detach().to(
                device=device,
                dtype=dtype if dtype is not None and not tensor.is_complex() else tensor.dtype,
                copy=True,
            )
            for tensor in self._tensors
        ]
        self._swapped: list[Tensor] | None = None

    # ------------------------------------------------------------------ inputs

    @staticmethod
    def _check_decay(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ValueError(f"EMA: {name}={value!r} is invalid; expected a number in [0, 1]")
        return float(value)

    @staticmethod
    def _collect(parameters: Any, include_buffers: bool) -> list[tuple[str, Tensor]]:
        named: list[tuple[str, Tensor]]
        if isinstance(parameters, nn.Module):
            named = list(parameters.named_parameters())
            if include_buffers:
                named += [
                    (name, buffer)
                    for name, buffer in parameters.named_buffers()
                    if buffer.is_floating_point() or buffer.is_complex()
                ]
        elif include_buffers:
            raise ValueError("EMA: include_buffers=True needs a module (buffers belong to modules)")
        elif isinstance(parameters, Tensor):
            named = [("0", parameters)]
        else:
            named = []
            for index, item in enumerate(parameters):
                if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                    named.append(item)
                else:
                    named.append((str(index), item))
        seen: set[int] = set()
        for name, tensor in named:
            if not isinstance(tensor, Tensor):
                raise TypeError(
                    f"EMA: parameter {name!r} has type {type(tensor).__name__}; "
                    "expected a torch.Tensor"
                )
            if not (tensor.is_floating_point() or tensor.is_complex()):
                raise TypeError(
                    f"EMA: parameter {name!r} has dtype {tensor.dtype}; expected "
                    "a floating-point tensor (averages of integers would truncate)"
                )
            if id(tensor) in seen:
                raise ValueError(f"EMA: parameter {name!r} is given twice")
            seen.add(id(tensor))
        return named

    # ------------------------------------------------------------------ averaging

    def current_decay(self) -> float:
        r"""The :math:`\beta_t` the next :meth:`update` uses."""
        t = self.num_updates
        if callable(self.decay):
            beta = self._check_decay(f"decay({t})", self.decay(t))
        else:
            beta = float(self.decay)
        if self.warmup:
            beta = min(beta, (1 + t) / (10 + t))
        return beta

    @torch.no_grad()
    def update(self) -> None:
        """Move every average towards its parameter's current value (after a step)."""
        if self._swapped is not None:
            raise RuntimeError(
                "EMA.update: the averages are swapped in (inside "
                "average_parameters()); update after the block"
            )
        weight = 1.0 - self.current_decay()
        for shadow, tensor in zip(self._shadow, self._tensors, strict=True):
            shadow.lerp_(tensor.detach().to(shadow.device, shadow.dtype), weight)
        self.num_updates += 1

    def averaged(self) -> list[Tensor]:
        """The averages, in the order of the parameters (the EMA's own tensors: read only)."""
        return list(self._shadow)

    def named_averages(self) -> dict[str, Tensor]:
        """The averages by parameter name (positions for unnamed tensors)."""
        return dict(zip(self._names, self._shadow, strict=True))

    @torch.no_grad()
    def copy_to(self) -> None:
        """Write the averages into the parameters, for good (e.g. before saving a model)."""
        for shadow, tensor in zip(self._shadow, self._tensors, strict=True):
            tensor.copy_(shadow)

    @contextmanager
    def average_parameters(self) -> Iterator[None]:
        """Swap the averages into the parameters for the block; restore them after.

        The trained values are restored on exit, also when the block raises. Not
        reentrant; :meth:`update` inside the block is refused.
        """
        if self._swapped is not None:
            raise RuntimeError("EMA.average_parameters: the averages are already swapped in")
        with torch.no_grad():
            backup = [tensor.detach().clone() for tensor in self._tensors]
            for shadow, tensor in zip(self._shadow, self._tensors, strict=True):
                tensor.copy_(shadow)
        self._swapped = backup
        try:
            yield
        finally:
            with torch.no_grad():
                for saved, tensor in zip(backup, self._tensors, strict=True):
                    tensor.copy_(saved)
            self._swapped = None

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The averages, update count and settings (``decay`` is None when a function)."""
        return {
            "format_version": FORMAT_VERSION,
            "decay": None if callable(self.decay) else float(self.decay),
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "names": list(self._names),
            "averages": [shadow.detach().clone() for shadow in self._shadow],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load averages and settings, after checking everything; on error nothing changes.

        Checked: the keys, the format version, the number of averages, their names,
        and each one's shape and dtype against its parameter. A saved numeric
        ``decay`` replaces the current one unless the current one is a function.
        """
        where = "EMA.load_state_dict"
        if not isinstance(state_dict, dict):
            raise TypeError(f"{where}: expected a dict, got {type(state_dict).__name__}")
        expected = {"format_version", "decay", "warmup", "num_updates", "names", "averages"}
        if set(state_dict) != expected:
            raise ValueError(f"{where}: keys {sorted(state_dict)}, expected {sorted(expected)}")
        version = state_dict["format_version"]
        if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise ValueError(
                f"{where}: format_version={version!r} is not supported; expected "
                f"an integer from 1 to {FORMAT_VERSION}"
            )
        count = state_dict["num_updates"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{where}: num_updates={count!r} is invalid; expected an integer >= 0")
        decay = state_dict["decay"]
        if decay is not None:
            self._check_decay("decay", decay)
        if not isinstance(state_dict["warmup"], bool):
            raise ValueError(f"{where}: warmup={state_dict['warmup']!r}; expected a bool")
        averages, names = state_dict["averages"], state_dict["names"]
        if list(names) != self._names or len(averages) != len(self._shadow):
            raise ValueError(
                f"{where}: the state dict averages {list(names)}, this EMA averages {self._names}"
            )
        for name, saved, shadow in zip(self._names, averages, self._shadow, strict=True):
            if (
                not isinstance(saved, Tensor)
                or saved.shape != shadow.shape
                or saved.dtype != shadow.dtype
            ):
                what = (
                    f"shape {tuple(saved.shape)} and dtype {saved.dtype}"
                    if isinstance(saved, Tensor)
                    else f"type {type(saved).__name__}"
                )
                raise ValueError(
                    f"{where}: the average of {name!r} has {what}; expected "
                    f"shape {tuple(shadow.shape)} and dtype {shadow.dtype}"
                )
        with torch.no_grad():
            for saved, shadow in zip(averages, self._shadow, strict=True):
                shadow.copy_(saved)
        self.num_updates = count
        self.warmup = state_dict["warmup"]
        if decay is not None and not callable(self.decay):
            self.decay = decay

    def __repr__(self) -> str:
        decay = getattr(self.decay, "__name__", self.decay)
        return (
            f"EMA(decay={decay}, warmup={self.warmup}, tensors={len(self._tensors)}, "
            f"num_updates={self.num_updates})"
        )
