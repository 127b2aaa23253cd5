"""How one contiguous run of flat buffers is updated: torch's fused kernel, compiled or eager.

All three run the algorithm's own math: the eager and compiled paths call the optimizer's
``_update`` (which calls the pure function of the algorithm's module) on whole flat
buffers; the fused path calls the kernel torch ships for the same rule (``Adam``,
``AdamW``, ``SGD``, ``Adagrad``), whose equality with the pure function is checked by
the engine's tests for every option.

The engine stays below the ``optim`` layer: it recognises those four rules by the name
of the ``_update`` a class uses, so a subclass that overrides ``_update`` never gets a
fused kernel it does not implement.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

Update = dict[str, torch.Tensor]
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fused_adam(param: torch.Tensor, grad: torch.Tensor, state: Mapping[str, Any],
                group: Mapping[str, Any]) -> bool:
    kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
    beta1, beta2 = group["betas"]
    amsgrad = bool(group["amsgrad"])
    kernel([param], [grad], [state["exp_avg"]], [state["exp_avg_sq"]],
           [state["max_exp_avg_sq"]] if amsgrad else [], [state["step"]],
           lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
           eps=group["eps"], amsgrad=amsgrad, maximize=bool(group["maximize"]))
    return True


def _fused_sgd(param: torch.Tensor, grad: torch.Tensor, state: Mapping[str, Any],
               group: Mapping[str, Any]) -> bool:
    momentum = group["momentum"]
    if momentum != 0 and "momentum_buffer" not in state:
        return False  # the first step creates the buffer: the eager path does that
    torch._fused_sgd_([param], [grad], [state["momentum_buffer"]] if momentum != 0 else [],
                      weight_decay=group["weight_decay"], momentum=momentum, lr=group["lr"],
                      dampening=group["dampening"], nesterov=bool(group["nesterov"]),
                      maximize=bool(group["maximize"]), is_first_step=False)
    return True


def _fused_adagrad(param: torch.Tensor, grad: torch.Tensor, state: Mapping[str, Any],
                   group: Mapping[str, Any]) -> bool:
    torch._fused_adagrad_([param], [grad], [state["sum"]], [state["step"]], lr=group["lr"],
                          lr_decay=group["lr_decay"], weight_decay=group["weight_decay"],
                          eps=group["eps"], maximize=bool(group["maximize"]))
    return True


#: torch's fused kernels, keyed by the ``_update`` they implement (module, qualified name).
FUSED: dict[tuple[str, str], Callable[..., bool]] = {
    ("descent.optim.adam", "Adam._update"): _fused_adam,
    ("descent.optim.sgd", "SGD._update"): _fused_sgd,
    ("descent.optim.adagrad", "Adagrad._update"): _fused_adagrad,
}


def fused_kernel(cls: type) -> Callable[..., bool] | None:
    """torch's fused kernel for ``cls``'s update rule, or None if torch has none."""
    update = cls._update
    return FUSED.get((getattr(update, "__module__", ""), getattr(update, "__qualname__", "")))


def run_fused(kernel: Callable[..., bool], param: torch.Tensor, grad: torch.Tensor,
              state: Mapping[str, Any], group: Mapping[str, Any]) -> bool:
    """Apply a fused kernel to one run if it fits (CPU, a float dtype); False if not."""
    if param.device.type != "cpu" or param.dtype not in _FUSED_DTYPES:
        return False
    return kernel(param, grad, state, group)


def write_back(param: torch.Tensor, state: Mapping[str, Any], new: Update) -> Update:
    """Copy an update's results into ``param`` and the state tensors, in place.

    Returns the results with no tensor to write into (state created by the first step,
    such as SGD's momentum buffer).
    """
    created = {}
    for key, value in new.items():
        target = param if key == "param" else state.get(key)
        if torch.is_tensor(target):
            target.copy_(value)
        else:
            created[key] = value
    return created


def run_eager(optimizer: Any, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any],
              group: Mapping[str, Any]) -> Update:
    """``optimizer._update`` on flat tensors, results written back in place.

    Returns the results with no tensor to write into (state created by the first step).
    """
    return write_back(param, state, optimizer._update(param, grad, state, group))


def run_compiled(optimizer: Any, param: torch.Tensor, grad: torch.Tensor,
                 state: dict[str, Any], group: Mapping[str, Any]) -> Update:
    """As :func:`run_eager`, through ``torch.compile`` (the step count passed as a float)."""
    from .compiled import compiled_update

    floats = dict(state)
    if torch.is_tensor(floats.get("step")):
        floats["step"] = float(floats["step"])
    return compiled_update(type(optimizer))(optimizer, param, grad, floats, group)


__all__ = ["FUSED", "fused_kernel", "run_compiled", "run_eager", "run_fused"]
