"""Checks for optimizer hyperparameters.

Each check takes the owner (the optimizer's class name, for the message), the
argument's name and its value, and either returns the value or raises an error
that names all three and says what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Real
from typing import Any

import torch

Check = Callable[[str, str, Any], Any]


def _as_real(owner: str, name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.is_complex() or not value.is_floating_point():
            raise TypeError(
                f"{owner}: {name}={value!r} is invalid; expected a real number "
                "or a one-element floating-point tensor"
            )
        if value.numel() != 1:  # a ValueError, as torch.optim raises for a tensor lr
            raise ValueError(
                f"{owner}: {name} is a tensor of shape {tuple(value.shape)}; expected a "
                "real number or a one-element tensor (of any shape, e.g. [], [1], [1, 1])"
            )
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(
            f"{owner}: {name}={value!r} has type {type(value).__name__}; expected a real number"
        )
    return float(value)


def non_negative(owner: str, name: str, value: Any) -> Any:
    """A finite real number >= 0 (lr, eps, weight_decay, momentum, ...)."""
    number = _as_real(owner, name, value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{owner}: {name}={value!r} is invalid; expected a finite number >= 0")
    return value


def finite(owner: str, name: str, value: Any) -> Any:
    """Any finite real number."""
    number = _as_real(owner, name, value)
    if not math.isfinite(number):
        raise ValueError(f"{owner}: {name}={value!r} is invalid; expected a finite number")
    return value


def positive(owner: str, name: str, value: Any) -> Any:
    """A finite real number > 0 (SparseAdam's lr and eps, as torch checks them)."""
    number = _as_real(owner, name, value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{owner}: {name}={value!r} is invalid; expected a finite number > 0")
    return value


def non_positive(owner: str, name: str, value: Any) -> Any:
    """A finite real number <= 0 (Adafactor's beta2_decay)."""
    number = _as_real(owner, name, value)
    if not math.isfinite(number) or number > 0:
        raise ValueError(f"{owner}: {name}={value!r} is invalid; expected a finite number <= 0")
    return value


def not_nan(owner: str, name: str, value: Any) -> Any:
    """A real number that is not NaN (infinity allowed: ASGD's t0 = inf never averages)."""
    if math.isnan(_as_real(owner, name, value)):
        raise ValueError(f"{owner}: {name}={value!r} is invalid; expected a number, not NaN")
    return value


def at_least(lower: float) -> Check:
    """A finite real number >= ``lower``."""

    def check(owner: str, name: str, value: Any) -> Any:
        number = _as_real(owner, name, value)
        if not math.isfinite(number) or number < lower:
            raise ValueError(
                f"{owner}: {name}={value!r} is invalid; expected a finite number >= {lower}"
            )
        return value

    return check


def closed_unit_interval(owner: str, name: str, value: Any) -> Any:
    """A real number in [0, 1] (Adadelta's rho)."""
    number = _as_real(owner, name, value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{owner}: {name}={value!r} is invalid; expected a number in [0, 1]")
    return value


def integer(lower: int, upper: int | None = None) -> Check:
    """An int >= ``lower`` (and < ``upper`` when given)."""

    def check(owner: str, name: str, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"{owner}: {name}={value!r} has type {type(value).__name__}; expected an int"
            )
        if value < lower or (upper is not None and value >= upper):
            bound = f">= {lower}" + ("" if upper is None else f" and < {upper}")
            raise ValueError(f"{owner}: {name}={value!r} is invalid; expected an int {bound}")
        return value

    return check


def optional(inner: Check) -> Check:
    """None, or a value ``inner`` accepts."""

    def check(owner: str, name: str, value: Any) -> Any:
        return value if value is None else inner(owner, name, value)

    return check


def choice(*choices: Any) -> Check:
    """One of ``choices`` (strings or None)."""

    def check(owner: str, name: str, value: Any) -> Any:
        if not (value is None or isinstance(value, str)) or value not in choices:
            raise ValueError(
                f"{owner}: {name}={value!r} is not supported; expected one of "
                f"{', '.join(map(repr, choices))}"
            )
        return value

    return check


def pair(owner: str, name: str, value: Any) -> tuple[Any, Any]:
    """A tuple or list of two items (their checks are the caller's)."""
    if isinstance(value, torch.Tensor) or not isinstance(value, tuple | list) or len(value) != 2:
        raise TypeError(f"{owner}: {name}={value!r} is invalid; expected a pair of numbers")
    return value[0], value[1]


def unit_interval(owner: str, name: str, value: Any) -> Any:
    """A real number in [0, 1): a decay rate such as a beta."""
    number = _as_real(owner, name, value)
    if not 0.0 <= number < 1.0:
        raise ValueError(f"{owner}: {name}={value!r} is invalid; expected a number in [0, 1)")
    return value


def betas(owner: str, name: str, value: Any) -> Any:
    """A pair (beta1, beta2), each in [0, 1): two numbers or two one-element tensors."""
    if isinstance(value, torch.Tensor) or not isinstance(value, tuple | list) or len(value) != 2:
        raise TypeError(
            f"{owner}: {name}={value!r} is invalid; expected a pair (beta1, beta2) of numbers"
        )
    for index, beta in enumerate(value):
        unit_interval(owner, f"{name}[{index}]", beta)
    if isinstance(value[0], torch.Tensor) != isinstance(value[1], torch.Tensor):
        raise ValueError(  # torch.optim's exception type for this input
            f"{owner}: {name}={value!r} mixes a tensor and a number; expected two numbers "
            "or two one-element tensors"
        )
    return tuple(value)


def flag(owner: str, name: str, value: Any) -> Any:
    """A bool."""
    if not isinstance(value, bool):
        raise TypeError(
            f"{owner}: {name}={value!r} has type {type(value).__name__}; expected True or False"
        )
    return value


def optional_flag(owner: str, name: str, value: Any) -> Any:
    """None or a bool (torch's foreach/fused hints)."""
    return value if value is None else flag(owner, name, value)


def unsupported_true(alternative: str) -> Check:
    """A torch option that descent accepts only as False, pointing to what to use instead."""

    def check(owner: str, name: str, value: Any) -> Any:
        flag(owner, name, value)
        if value:
            raise ValueError(f"{owner}: {name}=True is not supported; {alternative}")
        return value

    return check


FOREACH = optional_flag
"""torch's ``foreach`` hint: accepted for drop-in use; descent's engine chooses how to run."""
FUSED = optional_flag
"""torch's ``fused`` hint: accepted for drop-in use; descent's engine chooses how to run."""
CAPTURABLE = unsupported_true("CUDA-graph capture of the step is not implemented in descent")
DIFFERENTIABLE = unsupported_true(
    "to differentiate through optimizer steps use the pure functions of descent.functional"
)
