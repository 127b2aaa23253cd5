"""Argument checks for schedules and schedulers.

Each check takes the owner (the class or function the argument belongs to, for the
message), the argument's name and its value; it returns the value converted to a
plain Python ``int`` or ``float``, or raises an error naming all three and saying
what was expected.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch


def _describe(value: Any) -> str:
    return f"{value!r} (type {type(value).__name__})"


def integer(owner: str, name: str, value: Any, *, minimum: int | None = None) -> int:
    """An integer (not a bool), at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name}={_describe(value)} is invalid; expected an integer")
    number = int(value)
    if minimum is not None and number < minimum:
        raise ValueError(f"{owner}: {name}={number!r} is invalid; expected an integer >= {minimum}")
    return number


def real(
    owner: str,
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_minimum: bool = False,
    open_maximum: bool = False,
) -> float:
    """A finite real number (not a bool; a one-element float tensor is read), within bounds."""
    if torch.is_tensor(value) and value.numel() == 1 and value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name}={_describe(value)} is invalid; expected a real number")
    number = float(value)
    low_ok = minimum is None or (number > minimum if open_minimum else number >= minimum)
    high_ok = maximum is None or (number < maximum if open_maximum else number <= maximum)
    if not math.isfinite(number) or not low_ok or not high_ok:
        parts = []
        if minimum is not None:
            parts.append(f"{'>' if open_minimum else '>='} {minimum}")
        if maximum is not None:
            parts.append(f"{'<' if open_maximum else '<='} {maximum}")
        bounds = " and ".join(parts)
        raise ValueError(
            f"{owner}: {name}={value!r} is invalid; expected a finite number"
            + (f" {bounds}" if bounds else "")
        )
    return number


def choice(owner: str, name: str, value: Any, options: Sequence[str]) -> str:
    """One of a fixed set of strings."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(
            f"{owner}: {name}={value!r} is invalid; expected one of "
            + ", ".join(repr(option) for option in options)
        )
    return value


def step(owner: str, value: Any) -> int:
    """A step count: an integer >= 0."""
    return integer(owner, "step", value, minimum=0)


def increasing(owner: str, name: str, values: Any, *, minimum: int = 0) -> tuple[int, ...]:
    """A sequence of strictly increasing integers, each >= ``minimum``."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence | set | frozenset):
        try:
            values = list(values)
        except TypeError:
            raise TypeError(
                f"{owner}: {name}={_describe(values)} is invalid; expected a list of integers"
            ) from None
    items = tuple(integer(owner, f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(values))
    for i in range(1, len(items)):
        if items[i] <= items[i - 1]:
            raise ValueError(
                f"{owner}: {name}={list(items)!r} is invalid; expected strictly "
                f"increasing integers ({name}[{i}]={items[i]} does not exceed "
                f"{name}[{i - 1}]={items[i - 1]})"
            )
    return items


def per_group(
    owner: str, name: str, value: Any, groups: int, *, minimum: float | None = None
) -> list[float]:
    """One number for every param group: a scalar (shared) or a list of ``groups`` numbers."""
    if isinstance(value, list | tuple):
        if len(value) != groups:
            raise ValueError(
                f"{owner}: {name} has {len(value)} values; expected one per param group ({groups})"
            )
        return [real(owner, f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(value)]
    return [real(owner, name, value, minimum=minimum)] * groups
