"""Argument checks shared by the trainers: each error names the owner, the argument,
its value and what was expected (and, for the mistakes that otherwise pass silently,
the fix)."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
from torch import nn


def check_positive_int(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name}={value!r}; expected a positive integer")
    return value


def check_choice(owner: str, name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{owner}: {name}={value!r}; expected one of {list(choices)}")
    return cast(str, value)  # one of the strings in choices


def check_optional_positive(owner: str, name: str, value: Any) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not value > 0
        or not math.isfinite(value)
    ):
        raise ValueError(f"{owner}: {name}={value!r}; expected None or a positive number")
    return float(value)


def check_optimizer(owner: str, name: str, optimizer: Any) -> Any:
    for attribute in ("step", "zero_grad", "param_groups", "state_dict"):
        if not hasattr(optimizer, attribute):
            raise TypeError(
                f"{owner}: {name} is a {type(optimizer).__name__}, which has no "
                f"{attribute!r}; expected an optimizer (descent or torch.optim)"
            )
    return optimizer


def check_scheduler(owner: str, name: str, scheduler: Any, optimizer: Any) -> Any:
    """``scheduler`` (None, or an object with ``step()``) that drives ``optimizer``.

    A scheduler built on another optimizer would change that one's learning rate and
    leave this one's constant, without any error: refused here.
    """
    if scheduler is None:
        return None
    if not callable(getattr(scheduler, "step", None)):
        raise TypeError(
            f"{owner}: {name} is a {type(scheduler).__name__} without a step() "
            "method; expected None or a learning-rate scheduler"
        )
    driven = getattr(scheduler, "optimizer", optimizer)
    if driven is not optimizer:
        raise ValueError(
            f"{owner}: {name} ({type(scheduler).__name__}) was built on another "
            f"optimizer ({type(driven).__name__} at {id(driven):#x}) than the one "
            f"this trainer steps ({type(optimizer).__name__} at "
            f"{id(optimizer):#x}); its learning rates would never reach the "
            "training. Build the scheduler on the optimizer you pass here"
        )
    return scheduler


def check_loss(owner: str, loss: Any) -> Any:
    """``loss``, a callable ``(output, target) -> scalar``; a loss *class* is refused."""
    if isinstance(loss, type):
        raise TypeError(
            f"{owner}.train: loss is the class {loss.__name__}, not a loss; pass "
            f"an instance, e.g. loss={loss.__name__}()"
        )
    if loss is None or not callable(loss):
        raise TypeError(
            f"{owner}.train: loss={loss!r}; expected a callable "
            "(output, target) -> scalar tensor, e.g. torch.nn.CrossEntropyLoss()"
        )
    return loss


def check_optimizer_trains(owner: str, name: str, optimizer: Any, modules: Iterable[Any]) -> None:
    """Refuse an optimizer none of whose parameters belongs to ``modules`` (the model,
    and a loss module that has parameters): it would step, and the model stay as it
    was, with a flat loss and no error."""
    owned = {
        id(p) for module in modules if isinstance(module, nn.Module) for p in module.parameters()
    }
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if params and not any(id(p) in owned for p in params):
        raise ValueError(
            f"{owner}.train: none of the {len(params)} parameters of {name} is a "
            "parameter of the model being trained, so training would change "
            "nothing; build the optimizer on this model's parameters (build it "
            "after copying or re-creating the model)"
        )


def is_plateau_scheduler(scheduler: Any) -> bool:
    """Whether ``scheduler.step`` needs a metric (``ReduceLROnPlateau`` and the like)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return True
    # mypy#11470: mypy does not see that classes are hashable
    return _step_needs_argument(type(scheduler))  # type: ignore[arg-type]


@functools.lru_cache(maxsize=256)
def _step_needs_argument(kind: type[Any]) -> bool:
    try:
        parameters = list(inspect.signature(kind.step).parameters.values())[1:]
    except (AttributeError, TypeError, ValueError):
        return False
    return any(
        p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        for p in parameters
    )
