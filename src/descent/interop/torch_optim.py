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
new optimizer (a scheduler's ``state_dict`` loads into its new twin). For a state dict
saved to disk by one library, :func:`convert_state_dict` prepares it for the other's
optimizer.

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

__all__ = ["convert_state_dict", "from_torch", "to_torch"]

_NAMES = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "NAdam", "RAdam", "Adamax")
_SCALAR_STATE = ("step", "mu_product")


def _descent_class(name: str) -> type[Optimizer]:
    from .. import optim  # descent.optim imports this package: import it when used

    cls: type[Optimizer] = getattr(optim, name)
    return cls


def _constructor_kwargs(cls: type[Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults that ``cls``'s constructor takes as keyword arguments."""
    accepted = inspect.signature(cls.__init__).parameters
    return {key: value for key, value in defaults.items() if key in accepted and key != "params"}


def _groups(optimizer: torch.optim.Optimizer, overrides: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The optimizer's param groups as constructor input: same params, names and options."""
    groups = []
    for group in optimizer.param_groups:
        options = {
            key: value for key, value in group.items() if key not in ("params", "param_names")
        }
        options.update(overrides)
        names = group.get("param_names")
        params = list(zip(names, group["params"], strict=True)) if names else list(group["params"])
        groups.append({"params": params, **options})
    return groups


def _clone(value: Any, to_cpu: bool) -> Any:
    if not torch.is_tensor(value):
        return value
    value = value.detach().clone()
    return value.cpu() if to_cpu and value.device.type != "cpu" else value


def convert_state_dict(
    state_dict: Mapping[str, Any], optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """A state dict written by one library, made ready to load into the other's optimizer.

    ``optimizer`` is the descent or ``torch.optim`` optimizer that will load it (same
    algorithm, same param groups with the same numbers of parameters). The result is a
    copy (no tensor is shared with ``state_dict``): for a descent optimizer,
    ``capturable``/``differentiable`` set to False and scalar state (step counts) on
    the CPU; for a torch one, descent's ``"descent"`` entry dropped (after checking it
    names the same algorithm), and for torch's Adagrad, the initial state of parameters
    that have none yet. Load it with ``optimizer.load_state_dict(...)``, which checks
    the rest.

    Example (a torch.optim checkpoint, resumed with descent)::

        opt = descent.Adam(model.parameters(), lr=1e-3)
        saved = torch.load("torch_adam.pt", weights_only=True)["optimizer"]
        opt.load_state_dict(convert_state_dict(saved, opt))

    Raises:
        TypeError: ``optimizer`` has no counterpart, or ``state_dict`` is not a dict.
        ValueError: the groups or their sizes differ, or the state dict is descent's
            for another algorithm.
    """
    from ..optim.base import Optimizer

    name = type(optimizer).__name__
    to_descent = isinstance(optimizer, Optimizer)
    expected = (
        _descent_class(name)
        if to_descent and name in _NAMES
        else getattr(torch.optim, name, None)
        if name in _NAMES
        else None
    )
    if type(optimizer) is not expected:
        raise TypeError(
            f"convert_state_dict: optimizer has type {type(optimizer).__qualname__}; "
            f"expected one of {{{', '.join(_NAMES)}}} from descent or torch.optim"
        )
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
        raise TypeError(
            "convert_state_dict: state_dict is not an optimizer state dict (a dict "
            "with 'state' and 'param_groups')"
        )
    meta = state_dict.get("descent")
    if not to_descent and isinstance(meta, Mapping) and meta.get("optimizer") != name:
        raise ValueError(
            f"convert_state_dict: the state dict is descent's "
            f"{meta.get('optimizer')!r}, not {name!r}"
        )
    saved_groups = list(state_dict["param_groups"])
    if len(saved_groups) != len(optimizer.param_groups) or any(
        len(saved["params"]) != len(group["params"])
        for saved, group in zip(saved_groups, optimizer.param_groups, strict=False)
    ):
        raise ValueError(
            "convert_state_dict: the state dict has groups of "
            f"{[len(g['params']) for g in saved_groups]} parameters, the optimizer "
            f"{[len(g['params']) for g in optimizer.param_groups]}"
        )
    normalised = {key: False for key in ("capturable", "differentiable")} if to_descent else {}
    groups = []
    for saved in saved_groups:
        group = {key: value for key, value in saved.items() if key != "params"}
        group.update({key: value for key, value in normalised.items() if key in group})
        groups.append({**group, "params": list(saved["params"])})
    state = {
        index: {
            key: _clone(value, to_descent and key in _SCALAR_STATE) for key, value in entry.items()
        }
        for index, entry in state_dict["state"].items()
    }
    if type(optimizer) is torch.optim.Adagrad:
        own = optimizer.state_dict()["state"]
        saved_ids = [i for group in groups for i in group["params"]]
        for position, saved_id in enumerate(saved_ids):
            if not state.get(saved_id) and position in own:
                state[saved_id] = {
                    key: _clone(value, False) for key, value in own[position].items()
                }
    converted: dict[str, Any] = {"state": state, "param_groups": groups}
    if to_descent and meta is not None:
        converted["descent"] = dict(meta)
    return converted


def _transfer(source: torch.optim.Optimizer, target: torch.optim.Optimizer) -> None:
    """Load ``source``'s per-parameter state into ``target`` (same params, same order)."""
    converted = convert_state_dict(source.state_dict(), target)
    # The options ``target`` was built with (the source's, plus any overrides) stay.
    converted["param_groups"] = [
        {
            **{key: value for key, value in group.items() if key != "params"},
            "params": saved["params"],
        }
        for group, saved in zip(target.param_groups, converted["param_groups"], strict=True)
    ]
    target.load_state_dict(converted)
    # torch's load_state_dict casts scalar state other than "step" (NAdam's mu_product)
    # to the parameter's dtype; keep the dtype the running optimizer had.
    params = [p for group in target.param_groups for p in group["params"]]
    saved_ids = [i for group in converted["param_groups"] for i in group["params"]]
    for param, saved_id in zip(params, saved_ids, strict=True):
        for key, value in converted["state"].get(saved_id, {}).items():
            if key in _SCALAR_STATE and key in target.state[param]:
                target.state[param][key] = value


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
        raise TypeError(
            f"from_torch: optimizer has type {torch_class.__module__}."
            f"{torch_class.__qualname__}; expected one of torch.optim."
            f"{{{', '.join(_NAMES)}}}"
        )
    cls = _descent_class(name)
    normalised: dict[str, Any] = {
        key: False for key in ("capturable", "differentiable") if key in cls.hyperparameters
    }
    defaults = {**optimizer.defaults, **normalised}
    new = cls(_groups(optimizer, normalised), **_constructor_kwargs(cls, defaults))
    _transfer(optimizer, new)
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
    if (
        not isinstance(optimizer, Optimizer)
        or name not in _NAMES
        or type(optimizer) is not _descent_class(name)
    ):
        raise TypeError(
            f"to_torch: optimizer has type {type(optimizer).__qualname__}; "
            f"expected one of descent.{{{', '.join(_NAMES)}}} (descent's SignSGD "
            "and Lion have no torch.optim counterpart)"
        )
    if getattr(optimizer, "_gradient_sources", None):
        raise TypeError(
            "to_torch: the optimizer updates NumPy arrays, whose gradients only "
            "descent's step() reads; keep the descent optimizer"
        )
    for group in optimizer.param_groups:
        if (group["state_dtype"], group["param_rounding"]) != (None, "nearest"):
            raise TypeError(
                f"to_torch: a group has state_dtype={group['state_dtype']!r}, param_rounding="
                f"{group['param_rounding']!r}, which torch.optim does not have; set "
                "opt.state_dtype = None and opt.param_rounding = 'nearest' first (the state "
                "is then decoded to the parameters' dtype)"
            )
    torch_class: type[torch.optim.Optimizer] = getattr(torch.optim, name)
    unknown = sorted(set(options) - set(optimizer.defaults))
    if unknown:
        raise ValueError(
            f"to_torch: options {unknown} are not options of torch.optim.{name}; "
            f"expected some of {sorted(optimizer.defaults)}"
        )
    defaults = {**optimizer.defaults, **options}
    new = torch_class(_groups(optimizer, options), **_constructor_kwargs(torch_class, defaults))
    _transfer(optimizer, new)
    return new
