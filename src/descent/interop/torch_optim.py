"""Move a live optimizer between torch.optim and descent, state and all.

:func:`from_torch` turns a ``torch.optim`` optimizer into the matching descent one,
:func:`to_torch` the reverse. Both keep the parameters, the param groups with all
their options (learning rates a scheduler has set included), and every parameter's
state (step counts, moment buffers), copied so the two optimizers share nothing.
Continuing with the new optimizer follows the same trajectory as continuing with
the old one: a run can switch libraries mid-training without a jump.

Pairs: SGD, Adam, AdamW, RMSprop, Adagrad, NAdam, RAdam, Adamax. descent's SignSGD
and Lion have no torch.optim counterpart.

Execution options that change where state lives but not the math are normalised:
``capturable`` and ``differentiable`` become ``False`` in descent (which refuses
them; use :mod:`descent.functional` to differentiate through steps), and step counts
kept on an accelerator by torch's capturable/fused paths come back to the CPU.
``to_torch(opt, fused=True)`` (or ``foreach=...``, ``capturable=...``) sets torch's
execution options on every group of the new optimizer.

LR schedulers and hooks stay attached to the old optimizer: make new ones for the
new optimizer (a scheduler's ``state_dict`` loads into its new twin).

Example:

>>> import torch, descent
>>> from descent.interop import from_torch, to_torch
>>> w = torch.nn.Parameter(torch.ones(2))
>>> torch_opt = torch.optim.Adam([w], lr=0.1)
>>> w.grad = torch.ones(2); torch_opt.step()
>>> opt = from_torch(torch_opt)
>>> type(opt).__name__, int(opt.state[w]["step"])
('Adam', 1)
>>> type(to_torch(opt)).__module__
'torch.optim.adam'
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..optim.base import Optimizer

__all__ = ["from_torch", "to_torch"]

_NAMES = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "NAdam", "RAdam", "Adamax")
_SCALAR_STATE = ("step", "mu_product")


def _descent_class(name: str) -> type[Optimizer]:
    from .. import optim  # descent.optim imports this package: import it when used

    return getattr(optim, name)


def _constructor_kwargs(cls: type, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults that ``cls``'s constructor takes as keyword arguments."""
    accepted = inspect.signature(cls.__init__).parameters
    return {key: value for key, value in defaults.items() if key in accepted and key != "params"}


def _copy_state(state: Mapping[int, Mapping[str, Any]], to_cpu_scalars: bool
                ) -> dict[int, dict[str, Any]]:
    copied: dict[int, dict[str, Any]] = {}
    for index, entry in state.items():
        new = {}
        for key, value in entry.items():
            if torch.is_tensor(value):
                value = value.detach().clone()
                if to_cpu_scalars and key in _SCALAR_STATE and value.device.type != "cpu":
                    value = value.cpu()
            new[key] = value
        copied[index] = new
    return copied


def _groups(optimizer: torch.optim.Optimizer, overrides: Mapping[str, Any]
            ) -> list[dict[str, Any]]:
    """The optimizer's param groups as constructor input: same params, names and options."""
    groups = []
    for group in optimizer.param_groups:
        options = {key: value for key, value in group.items()
                   if key not in ("params", "param_names")}
        options.update(overrides)
        names = group.get("param_names")
        params = list(zip(names, group["params"], strict=True)) if names else \
            list(group["params"])
        groups.append({"params": params, **options})
    return groups


def _transfer(source: torch.optim.Optimizer, target: torch.optim.Optimizer,
              to_cpu_scalars: bool) -> None:
    """Load ``source``'s per-parameter state into ``target`` (same params, same order)."""
    state_dict = target.state_dict()
    state = _copy_state(target.state_dict()["state"], False)
    state.update(_copy_state(source.state_dict()["state"], to_cpu_scalars))
    state_dict["state"] = state
    target.load_state_dict(state_dict)
    # torch's load_state_dict casts scalar state other than "step" (NAdam's mu_product)
    # to the parameter's dtype; keep the dtype the running optimizer had.
    params = [p for group in target.param_groups for p in group["params"]]
    for index, entry in state.items():
        for key in _SCALAR_STATE:
            if key in entry and key in target.state[params[index]]:
                target.state[params[index]][key] = entry[key]


def from_torch(optimizer: torch.optim.Optimizer) -> Optimizer:
    """The descent optimizer equivalent to a ``torch.optim`` one, with its state.

    Args:
        optimizer: a ``torch.optim`` SGD, Adam, AdamW, RMSprop, Adagrad, NAdam, RAdam or
            Adamax (exactly that class: a subclass may have changed the update).

    Returns:
        The matching :class:`descent.Optimizer` over the same parameters, with the
        same param groups and options and a copy of every parameter's state.

    Raises:
        TypeError: ``optimizer`` is not one of those classes.
    """
    torch_class = type(optimizer)
    name = torch_class.__name__
    if name not in _NAMES or torch_class is not getattr(torch.optim, name):
        raise TypeError(f"from_torch: optimizer has type {torch_class.__module__}."
                        f"{torch_class.__qualname__}; expected one of torch.optim."
                        f"{{{', '.join(_NAMES)}}}")
    cls = _descent_class(name)
    normalised = {key: False for key in ("capturable", "differentiable")
                  if key in cls.hyperparameters}
    defaults = {**optimizer.defaults, **normalised}
    new = cls(_groups(optimizer, normalised), **_constructor_kwargs(cls, defaults))
    _transfer(optimizer, new, to_cpu_scalars=True)
    return new


def to_torch(optimizer: Optimizer, **options: Any) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer equivalent to a descent one, with its state.

    Args:
        optimizer: a descent SGD, Adam, AdamW, RMSprop, Adagrad, NAdam, RAdam or Adamax.
        **options: torch execution options to set on every group, such as
            ``fused=True``, ``foreach=False`` or ``capturable=True``.

    Returns:
        The matching ``torch.optim`` optimizer over the same parameters, with the same
        param groups and options and a copy of every parameter's state (torch's
        Adagrad, which keeps state for every parameter from the start, gets its initial
        state for parameters descent has not updated yet).

    Raises:
        TypeError: the optimizer has no torch.optim counterpart.
        ValueError: an option is not one of the torch class's group options.
    """
    from ..optim.base import Optimizer

    name = type(optimizer).__name__
    if not isinstance(optimizer, Optimizer) or name not in _NAMES or \
            type(optimizer) is not _descent_class(name):
        raise TypeError(f"to_torch: optimizer has type {type(optimizer).__qualname__}; "
                        f"expected one of descent.{{{', '.join(_NAMES)}}} (descent's SignSGD "
                        "and Lion have no torch.optim counterpart)")
    torch_class = getattr(torch.optim, name)
    unknown = sorted(set(options) - set(optimizer.defaults))
    if unknown:
        raise ValueError(f"to_torch: options {unknown} are not options of torch.optim.{name}; "
                         f"expected some of {sorted(optimizer.defaults)}")
    defaults = {**optimizer.defaults, **options}
    new = torch_class(_groups(optimizer, options), **_constructor_kwargs(torch_class, defaults))
    _transfer(optimizer, new, to_cpu_scalars=False)
    return new
