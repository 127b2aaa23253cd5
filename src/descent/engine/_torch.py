"""Every use of torch internals in descent, in one place, behind a version check.

descent runs the update rules with torch's multi-tensor (``torch._foreach_*``) operations
and, for four rules, with the fused kernels torch ships (``torch._fused_adam_``,
``_fused_adamw_``, ``_fused_sgd_``, ``_fused_adagrad_``, on CPU and CUDA). Neither is
public API, so both are reached only through this module, which checks at import that the
installed torch is one this module was tested with (:data:`TESTED_TORCH`). On another
version the foreach operations are still used where they exist, and every fused kernel
that is missing or refuses its arguments makes the engine fall back to the rule's own
math (tested in ``tests/test_engine.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

TESTED_TORCH = ((2, 11), (2, 13))
"""The range of torch versions (major, minor; inclusive) these internals were tested with:
2.13 (the test suite, CPU) and 2.11 (an H200, CUDA); pyproject.toml's range says the same."""


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


TORCH_VERSION = _torch_version()
SUPPORTED = TESTED_TORCH[0] <= TORCH_VERSION <= TESTED_TORCH[1]
if not SUPPORTED:  # pragma: no cover - depends on the installed torch
    warnings.warn(
        f"descent.engine: torch {torch.__version__} is outside the tested range "
        f"{TESTED_TORCH}; fused kernels are used only where they accept their "
        "arguments, the rules' own math runs otherwise",
        RuntimeWarning,
        stacklevel=2,
    )


def foreach(name: str) -> Callable[..., Any]:
    """``torch._foreach_<name>``, or a loop over the tensors with the per-tensor op."""
    function: Callable[..., Any] | None = getattr(torch, f"_foreach_{name}", None)
    if function is not None:
        return function
    single = getattr(Tensor, name)

    def loop(tensors: Sequence[Tensor], *args: Any, **kwargs: Any) -> Any:
        per_tensor = [
            [arg[i] if isinstance(arg, list | tuple) else arg for arg in args]
            for i in range(len(tensors))
        ]
        results = [single(t, *a, **kwargs) for t, a in zip(tensors, per_tensor, strict=True)]
        return None if name.endswith("_") else results

    return loop


# ---------------------------------------------------------------------- fused kernels
#
# Each takes the lists of one bucket (same device and dtype) and the group's options,
# with the step counts already incremented, and returns False when it cannot take the
# step (then the rule's math runs instead). torch's fused kernels do not count their
# in-place writes in the tensors' autograd versions, so each call is followed by
# `counted`, which does (a step between forward and backward is then caught, as with
# every other in-place update).


def counted(params: list[Tensor]) -> bool:
    """Count an in-place update of ``params`` in their autograd versions; True."""
    torch.autograd.graph.increment_version(params)
    return True


FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""The dtypes torch's fused kernels take (the engine calls them for these only)."""


def fused_adam(
    params: list[Tensor],
    grads: list[Tensor],
    state: dict[str, Any],
    steps: list[Tensor],
    group: dict[str, Any],
    lr: float,
) -> bool:
    """torch's fused Adam / AdamW (``decoupled_weight_decay``), AMSGrad included."""
    kernel = getattr(
        torch, "_fused_adamw_" if group["decoupled_weight_decay"] else "_fused_adam_", None
    )
    if kernel is None:
        return False
    beta1, beta2 = group["betas"]
    amsgrad = bool(group["amsgrad"])
    kernel(
        params,
        grads,
        state["exp_avg"],
        state["exp_avg_sq"],
        state["max_exp_avg_sq"] if amsgrad else [],
        steps,
        lr=lr,
        beta1=float(beta1),
        beta2=float(beta2),
        weight_decay=float(group["weight_decay"]),
        eps=float(group["eps"]),
        amsgrad=amsgrad,
        maximize=bool(group["maximize"]),
    )
    return counted(params)


def fused_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    state: dict[str, Any],
    steps: list[Tensor],
    group: dict[str, Any],
    lr: float,
) -> bool:
    """torch's fused SGD; the first step with momentum (which creates the buffer) is left
    to the rule's math."""
    kernel = getattr(torch, "_fused_sgd_", None)
    momentum = float(group["momentum"])
    if kernel is None or (momentum != 0 and state.get("momentum_buffer") is None):
        return False
    kernel(
        params,
        grads,
        state["momentum_buffer"] if momentum != 0 else [],
        weight_decay=float(group["weight_decay"]),
        momentum=momentum,
        lr=lr,
        dampening=float(group["dampening"]),
        nesterov=bool(group["nesterov"]),
        maximize=bool(group["maximize"]),
        is_first_step=False,
    )
    return counted(params)


def fused_adagrad(
    params: list[Tensor],
    grads: list[Tensor],
    state: dict[str, Any],
    steps: list[Tensor],
    group: dict[str, Any],
    lr: float,
) -> bool:
    """torch's fused Adagrad."""
    kernel = getattr(torch, "_fused_adagrad_", None)
    if kernel is None:
        return False
    kernel(
        params,
        grads,
        state["sum"],
        steps,
        lr=lr,
        lr_decay=float(group["lr_decay"]),
        weight_decay=float(group["weight_decay"]),
        eps=float(group["eps"]),
        maximize=bool(group["maximize"]),
    )
    return counted(params)


FusedKernel = Callable[
    [list[Tensor], list[Tensor], dict[str, Any], list[Tensor], dict[str, Any], float], bool
]
"""The signature of the fused kernels above."""

__all__ = [
    "FUSED_DTYPES",
    "SUPPORTED",
    "TESTED_TORCH",
    "TORCH_VERSION",
    "FusedKernel",
    "foreach",
    "fused_adagrad",
    "fused_adam",
    "fused_sgd",
]
