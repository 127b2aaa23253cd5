"""Prodigy: Adam that estimates its own step size (learning-rate free)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from ..engine import is_dtensor
from ..interop.arrays import refresh_gradients
from . import _validate as check
from ._spec import State, hyper
from .base import Optimizer

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor


def _optional_beta(owner: str, name: str, value: Any) -> Any:
    return value if value is None else check.unit_interval(owner, name, value)


def _positive(owner: str, name: str, value: Any) -> Any:
    check.non_negative(owner, name, value)
    if value == 0:
        raise ValueError(f"{owner}: {name}={value!r} is invalid; expected a finite number > 0")
    return value


def _growth(owner: str, name: str, value: Any) -> Any:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not value > 0
        or math.isnan(value)
    ):
        raise ValueError(
            f"{owner}: {name}={value!r} is invalid; expected a number > 0 "
            "(float('inf') for no limit)"
        )
    return value


def _clone(param: Tensor, group: Mapping[str, Any]) -> Tensor:
    return param.detach().clone(memory_format=torch.preserve_format)


_GROUP_STATE = ("d", "d_max", "d_numerator", "k")
"""Prodigy's running values, shared by all groups and kept in each (as the authors'
``prodigyopt`` keeps them), so they are saved with the param groups."""


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """The dot product of two tensors of one shape (sharded ones too: a DTensor split
    unevenly cannot be flattened, its elementwise product can be summed)."""
    if is_dtensor(a):
        return _whole((a * b).sum())
    return torch.dot(a.flatten(), b.flatten())


def _whole(total: Tensor) -> Tensor:
    """A sum over a sharded tensor, reduced across the ranks (a DTensor's sum is partial:
    each rank holds its shard's; ``float`` of it would read that alone)."""
    if is_dtensor(total):
        return cast("DTensor", total).full_tensor()
    return total


class Prodigy(Optimizer):
    r"""Prodigy (Mishchenko & Defazio 2024): Adam whose step size :math:`d` is estimated
    on the fly from how far the parameters have moved, so ``lr`` stays at 1.

    .. math::

        m_{k+1} &= \beta_1 m_k + (1-\beta_1)\, d_k g_k, \qquad
        v_{k+1} = \beta_2 v_k + (1-\beta_2)\, d_k^2 g_k^2 \\
        r_{k+1} &= \beta_3 r_k + \gamma_k \tfrac{d_k^2}{d_0}\,\langle g_k, x_0 - x_k\rangle,
        \qquad s_{k+1} = \beta_3 s_k + \gamma_k \tfrac{d_k^2}{d_0}\, g_k \\
        d_{k+1} &= \max\big(d_k,\ c\, r_{k+1} / \lVert s_{k+1}\rVert_1\big), \qquad
        x_{k+1} = x_k - \gamma_k d_k\, \frac{m_{k+1}}{\sqrt{v_{k+1}} + d_k\epsilon}

    with :math:`\gamma_k` = ``lr``, :math:`c` = ``d_coef``, :math:`\beta_3 =
    \sqrt{\beta_2}` unless given; :math:`r` and :math:`s` are summed over every
    parameter of every group, so :math:`d` is one number for the optimizer. The
    :math:`1-\beta_3` of the paper and the :math:`1/d_0` here cancel in the ratio.
    Reference: Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free
    Learner", ICML 2024 (Algorithm 4, Adam version); options and defaults of the
    authors' ``prodigyopt`` (decoupled weight decay :math:`x \leftarrow x - \gamma_k
    d_k\lambda x`, ``use_bias_correction``, ``safeguard_warmup``, ``growth_rate``).
    Difference from ``prodigyopt``: the :math:`\epsilon` term uses :math:`d_k` as in
    the paper (``prodigyopt`` uses :math:`d_{k+1}`); it has no ``slice_p`` (every
    element enters :math:`s`) and no ``fsdp_in_use``: under DDP every process sees
    whole gradients and computes the same :math:`d`; sharded parameters (FSDP2) are
    not supported, since :math:`d` needs sums over whole tensors. All groups must
    have the same ``lr`` (or 0, which freezes a group), as in ``prodigyopt``. float16
    parameters are refused (``prodigyopt`` turns them into inf and NaN at the first
    step: :math:`d_0^2 g^2` is below float16's range); bfloat16 ones are updated.

    Prodigy steps all parameters together (:math:`d` depends on all of them), so it
    has its own ``step``, has no form in :mod:`descent.functional`, and does not take
    ``cautious=True``.

    Example::

        opt = descent.Prodigy(model, lr=1.0, weight_decay=0.01)
    """

    lr: float | Tensor = hyper(
        default=1.0,
        doc=r"multiplier :math:`\gamma` of the "
        "estimated step (leave at 1)",
    )
    betas: tuple[float, float] = hyper(default=(0.9, 0.999))
    beta3: float | None = hyper(
        default=None,
        check=_optional_beta,
        doc=r"decay :math:`\beta_3` of r and s (None: "
        r":math:`\sqrt{\beta_2}`)",
    )
    eps: float = hyper(default=1e-8)
    weight_decay: float = hyper(default=0.0)
    decoupled_weight_decay: bool = hyper(
        default=True, doc="decay the parameter directly (prodigyopt's decouple)"
    )
    use_bias_correction: bool = hyper(
        default=False, check=check.flag, doc="scale the step by Adam's bias corrections"
    )
    safeguard_warmup: bool = hyper(
        default=False, check=check.flag, doc=r"leave :math:`\gamma` out of s (for warm-ups)"
    )
    d0: float = hyper(default=1e-6, check=_positive, doc=r"initial estimate :math:`d_0`")
    d_coef: float = hyper(default=1.0, check=check.non_negative, doc="factor c of the estimate")
    growth_rate: float = hyper(
        default=float("inf"), check=_growth, doc="largest factor d may grow by in one step"
    )
    maximize: bool = hyper(default=False, kw_only=True)

    keeps = (
        State("step", scalar=True, doc="steps taken"),
        State("s", doc="weighted sum s of gradients"),
        State("p0", init=_clone, doc="the starting point x0"),
        State("exp_avg", doc="first moment m"),
        State("exp_avg_sq", doc="second moment v"),
    )
    registry_name = "prodigy"
    elementwise = False  # its own step (d sums over every parameter): no storage options
    supports_complex = False
    cautious_refused = (
        "Prodigy steps every parameter with one estimated step size; "
        "cautious masking is not implemented for it"
    )

    def _check_param_dtype(self, param: Tensor, label: str) -> None:
        """A parameter's dtype, as every optimizer checks it, and not float16: the second
        moment holds :math:`d^2 g^2` (:math:`d` starts at ``d0=1e-6``), far below float16's
        smallest number, so a float16 step divides by zero (``prodigyopt``'s too)."""
        super()._check_param_dtype(param, label)
        if param.dtype == torch.float16:
            raise TypeError(
                f"Prodigy: {label} has dtype torch.float16, whose range cannot hold "
                "Prodigy's moments (they scale with d**2, from d0**2); use bfloat16 "
                "or float32 parameters"
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; it shares the running estimate :math:`d` of the others."""
        shared = (
            {key: self.param_groups[0][key] for key in _GROUP_STATE} if self.param_groups else {}
        )
        start = param_group.get("d0", self.defaults["d0"])
        fresh = {"d": start, "d_max": start, "d_numerator": 0.0, "k": 0}
        super().add_param_group({**fresh, **shared, **param_group})

    @classmethod
    def _check_options(cls, group: Mapping[str, Any], where: str) -> None:
        for key in ("d", "d_max"):
            if key in group:
                _positive(cls.__name__, f"{where}{key}", group[key])
        if "d_numerator" in group:
            check.finite(cls.__name__, f"{where}d_numerator", group["d_numerator"])
        if "k" in group and (
            isinstance(group["k"], bool) or not isinstance(group["k"], int) or group["k"] < 0
        ):
            raise ValueError(
                f"{cls.__name__}: {where}k={group['k']!r} is invalid; expected "
                "the number of steps taken, an integer >= 0"
            )

    @torch.no_grad()
    def step(self, closure: Any = None, *, grads: Mapping[str, Any] | None = None) -> Any:
        """One Prodigy step for every parameter that has a gradient (see the class)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        refresh_gradients(self, grads)
        groups = self.param_groups
        lr = max(float(group["lr"]) for group in groups)
        for index, group in enumerate(groups):
            if float(group["lr"]) not in (lr, 0.0):
                raise ValueError(
                    f"Prodigy: param_groups[{index}] has lr={group['lr']!r} and "
                    f"another group lr={lr!r}; Prodigy takes one lr for all "
                    "groups (or 0 to freeze a group)"
                )
        first = groups[0]
        beta1, beta2 = first["betas"]
        beta3 = math.sqrt(beta2) if first["beta3"] is None else float(first["beta3"])
        k, d, d_max = first["k"], float(first["d"]), float(first["d_max"])
        bias = (
            math.sqrt(1 - beta2 ** (k + 1)) / (1 - beta1 ** (k + 1))
            if first["use_bias_correction"]
            else 1.0
        )
        dlr = d * lr * bias
        numerator = float(first["d_numerator"]) * beta3
        delta: Any = 0.0
        denominator: Any = 0.0
        live = []
        for group in groups:
            d0 = float(group["d0"])
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state.update(self._init_state(param, group))
                grad = -param.grad if group["maximize"] else param.grad
                if group["weight_decay"] != 0 and not group["decoupled_weight_decay"]:
                    grad = grad.add(param, alpha=group["weight_decay"])
                live.append((group, param, state))
                if float(group["lr"]) == 0.0:
                    continue
                delta = delta + (d / d0) * dlr * _dot(grad, state["p0"] - param)
                state["exp_avg"].mul_(beta1).add_(grad, alpha=d * (1 - beta1))
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=d * d * (1 - beta2))
                state["s"].mul_(beta3).add_(
                    grad, alpha=(d / d0) * (d if group["safeguard_warmup"] else dlr)
                )
                denominator = denominator + _whole(state["s"].abs().sum())
        denominator = float(denominator)
        if denominator == 0:
            return loss
        numerator += float(delta)
        d_new = d
        if lr > 0:
            d_hat = float(first["d_coef"]) * numerator / denominator
            if d == float(first["d0"]):
                d_new = max(d, d_hat)
            d_max = max(d_max, d_hat)
            d_new = min(d_max, d_new * float(first["growth_rate"]))
        for group in groups:
            group.update(d=d_new, d_max=d_max, d_numerator=numerator, k=k + 1)
        for group, param, state in live:
            state["step"].add_(1)
            denom = state["exp_avg_sq"].sqrt().add_(d * float(group["eps"]))
            if group["weight_decay"] != 0 and group["decoupled_weight_decay"]:
                param.add_(param, alpha=-float(group["weight_decay"]) * dlr)
            param.addcdiv_(state["exp_avg"], denom, value=-dlr)
        return loss


__all__ = ["Prodigy"]
