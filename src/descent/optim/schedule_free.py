r"""Schedule-Free SGD, AdamW and RAdam: averaging in place of a learning-rate schedule.

Schedule-Free methods (Defazio et al. 2024) keep three sequences: :math:`z`, the plain
optimizer's iterate; :math:`x`, a weighted average of the :math:`z`'s (the point to
evaluate and to keep); and :math:`y = (1-\beta) z + \beta x`, where gradients are
taken:

.. math::

    y_t &= (1-\beta)\, z_t + \beta\, x_t, \qquad g_t = \nabla f(y_t) \\
    z_{t+1} &= z_t - \gamma_t\, (d_t + \lambda y_t)
        \qquad (d_t = g_t \text{ for SGD}, \; g_t / (\sqrt{\hat v_t} + \epsilon)
        \text{ for AdamW}) \\
    x_{t+1} &= (1 - c_{t+1})\, x_t + c_{t+1}\, z_{t+1}, \qquad
    c_{t+1} = \frac{w_t}{\sum_{i \le t} w_i}, \quad
    w_t = t^r\, (\max_{i \le t} \gamma_i)^{p}

The parameters hold :math:`y` while training and :math:`x` for evaluation; only
:math:`z` (and AdamW's :math:`v`) is stored, and :math:`x` is recovered from
:math:`y` and :math:`z`. So **the optimizer must be told which one the model should
hold**: ``opt.eval()`` before evaluating, saving a checkpoint or finishing, and
``opt.train()`` before training steps again. descent's trainers do this for any
optimizer that follows the :class:`ModeSwitching` protocol; a step taken in eval mode
raises an error naming the fix. A fresh optimizer is in train mode (its parameters
are :math:`x = y = z` then); the mode is saved in the state dict (``"train_mode"`` in
every param group), so a checkpoint saved in either mode resumes exactly. Since
:math:`z` is an iterate (the weights' base point), ``state_dtype`` may be ``"bf16"`` or
``"float32"`` but not the block-quantised ``"int8"`` / ``"int4"``.

Reference: Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less
Scheduled", NeurIPS 2024; the authors' package ``schedulefree`` (its
``AdamWScheduleFreeReference``, ``SGDScheduleFreeReference``, ``AdamWScheduleFree``,
``SGDScheduleFree`` and ``RAdamScheduleFree``, whose arithmetic this follows). The
weight counters are kept per parameter, as torch.optim keeps ``step``: a parameter
without a gradient on a step keeps its average unchanged (the package counts steps per
param group).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..engine import TensorList
from . import _validate as check
from ._spec import State, hyper
from .base import Optimizer


@runtime_checkable
class ModeSwitching(Protocol):
    """An optimizer whose parameters must be switched between training and evaluation.

    What trainers call (descent's, and any training loop): ``eval()`` before
    validation, before saving a checkpoint and at the end of training; ``train()``
    before training steps. ``training`` says which mode the parameters are in.
    """

    @property
    def training(self) -> bool: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


def _float64(param: Tensor, group: Mapping[str, Any]) -> Tensor:
    return torch.zeros((), dtype=torch.float64)


def _minus_one(param: Tensor, group: Mapping[str, Any]) -> Tensor:
    return torch.full((), -1.0, dtype=torch.float64)


def _clone(param: Tensor, group: Mapping[str, Any]) -> Tensor:
    return param.clone(memory_format=torch.preserve_format)


def averaging_weight(
    lr: float, step: float, r: float, weight_lr_power: float, lr_max: Tensor, weight_sum: Tensor
) -> float:
    r"""Update :math:`\max\gamma` and :math:`\sum w` in place; return :math:`c_{t+1}`.

    .. math::

        w_t = t^r\,(\max_{i \le t}\gamma_i)^{p}, \qquad c_{t+1} = w_t / \sum_{i \le t} w_i
        \quad (0 \text{ while the sum is } 0)

    ``lr_max`` and ``weight_sum`` are float64 scalars, so the average's weights are
    computed in double precision whatever the parameters' dtype.
    """
    peak = max(lr, float(lr_max))
    lr_max.fill_(peak)
    weight = step**r * peak**weight_lr_power
    weight_sum.add_(weight)
    total = float(weight_sum)
    return weight / total if total != 0 else 0.0


def _averaged_step(
    param: TensorList, z: TensorList, direction: TensorList, lr: Any, beta: float, c: float
) -> None:
    r""":math:`z \leftarrow z - \gamma d` and the matching :math:`y` for the new average
    (the authors' in-place form: :math:`y \leftarrow (1-c) y + c z + \gamma(\beta(1-c)-1) d`)."""
    param.lerp_(z, c)
    param.add_(direction, alpha=lr * (beta * (1 - c) - 1))
    z.sub_(direction, alpha=lr)


def _warmup(lr: Any, step: float, warmup_steps: int) -> Any:
    return lr * (step / warmup_steps) if step <= warmup_steps else lr


def schedule_free_sgd(
    param: TensorList,
    grad: TensorList,
    *,
    z: TensorList,
    lr_max: Tensor,
    weight_sum: Tensor,
    step: float,
    lr: Any,
    momentum: float,
    weight_decay: float,
    warmup_steps: int,
    r: float,
    weight_lr_power: float,
    maximize: bool,
) -> None:
    r"""One Schedule-Free SGD step on :math:`y` (the parameter) and :math:`z`, in place.

    .. math::

        \gamma_t &= \gamma \min(1, t/T_{warmup}), \qquad d = g + \lambda y \\
        z &\leftarrow z - \gamma_t d, \qquad
        y \leftarrow (1-c) y + c z_{old} + \gamma_t(\beta(1-c) - 1)\, d

    with :math:`\beta` = ``momentum`` and :math:`c` from :func:`averaging_weight`.
    """
    if maximize:
        grad = -grad
    lr_t = _warmup(lr, step, warmup_steps)
    c = averaging_weight(float(lr_t), step, r, weight_lr_power, lr_max, weight_sum)
    direction = grad.add(param, alpha=weight_decay) if weight_decay != 0 else grad
    _averaged_step(param, z, direction, lr_t, momentum, c)


def schedule_free_adamw(
    param: TensorList,
    grad: TensorList,
    *,
    z: TensorList,
    exp_avg_sq: TensorList,
    lr_max: Tensor,
    weight_sum: Tensor,
    step: float,
    lr: Any,
    betas: tuple[Any, Any],
    eps: float,
    weight_decay: float,
    warmup_steps: int,
    r: float,
    weight_lr_power: float,
    maximize: bool,
) -> None:
    r"""One Schedule-Free AdamW step on :math:`y` (the parameter) and :math:`z`, in place.

    .. math::

        v &\leftarrow \beta_2 v + (1-\beta_2) g^2, \qquad
        d = \frac{g}{\sqrt{v/(1-\beta_2^t)} + \epsilon} + \lambda y \\
        z &\leftarrow z - \gamma_t d, \qquad
        y \leftarrow (1-c) y + c z_{old} + \gamma_t(\beta_1(1-c) - 1)\, d
    """
    beta1, beta2 = betas
    if maximize:
        grad = -grad
    lr_t = _warmup(lr, step, warmup_steps)
    c = averaging_weight(float(lr_t), step, r, weight_lr_power, lr_max, weight_sum)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    direction = grad.div(exp_avg_sq.div(1 - beta2**step).sqrt_().add_(eps))
    if weight_decay != 0:
        direction.add_(param, alpha=weight_decay)
    _averaged_step(param, z, direction, lr_t, beta1, c)


def schedule_free_radam(
    param: TensorList,
    grad: TensorList,
    *,
    z: TensorList,
    exp_avg_sq: TensorList,
    lr_max: Tensor,
    weight_sum: Tensor,
    step: float,
    lr: Any,
    betas: tuple[Any, Any],
    eps: float,
    weight_decay: float,
    r: float,
    weight_lr_power: float,
    silent_sgd_phase: bool,
    maximize: bool,
) -> None:
    r"""One Schedule-Free RAdam step on :math:`y` (the parameter) and :math:`z`, in place.

    RAdam's rectification :math:`r_t` (Liu et al. 2020) replaces the warm-up:
    :math:`\gamma_t = \gamma r_t` once :math:`\rho_t > 4`, and before that
    :math:`\gamma_t = 0` (``silent_sgd_phase``) or :math:`\gamma` with the raw
    gradient as :math:`d`:

    .. math::

        \rho_\infty &= \frac{2}{1-\beta_2} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2t\beta_2^t}{1-\beta_2^t}, \qquad
        r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}
    """
    beta1, beta2 = betas
    if maximize:
        grad = -grad
    bias_correction2 = 1 - beta2**step
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * beta2**step / bias_correction2
    adaptive = rho_t > 4.0
    if adaptive:
        rect = (
            (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        ) ** 0.5
    else:
        rect = float(not silent_sgd_phase)
    lr_t = lr * rect
    c = averaging_weight(float(lr_t), step, r, weight_lr_power, lr_max, weight_sum)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    direction = grad.div(exp_avg_sq.div(bias_correction2).sqrt_().add_(eps)) if adaptive else grad
    if weight_decay != 0:
        direction = direction.add(param, alpha=weight_decay)
    _averaged_step(param, z, direction, lr_t, beta1, c)


_WARMUP_DOC = "linear warm-up steps of the learning rate"
_R_DOC = "power r of the step count in the averaging weights"
_POWER_DOC = "power p of the largest learning rate so far in the averaging weights"


def _steps(owner: str, name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{owner}: {name}={value!r} is invalid; expected an integer >= 0")
    return value


def _averaging_keeps(*extra: State) -> tuple[State, ...]:
    return (
        State("step", scalar=True, doc="steps taken t"),
        State("lr_max", scalar=True, init=_minus_one, doc="largest learning rate so far (float64)"),
        State(
            "weight_sum", scalar=True, init=_float64, doc="sum of the averaging weights (float64)"
        ),
        State("z", init=_clone, doc="the base optimizer's iterate z"),
        *extra,
    )


class _ScheduleFree(Optimizer):
    """Mode switching shared by the Schedule-Free optimizers (see the module docstring)."""

    cautious_refused = (
        "the parameters move between y and the average x, not by an "
        "update that can be masked; mask the base rule instead"
    )
    quantized_state_refused = (
        "z is the base iterate, not a statistic, and blocks of 8 or 4 "
        "bits would round the weights themselves; use None, 'float32' "
        "or 'bf16'"
    )

    def _interpolation(self, group: Mapping[str, Any]) -> float:
        """:math:`\\beta`, the weight of :math:`x` in :math:`y` (betas[0] or momentum)."""
        return float(group["betas"][0])

    @property
    def training(self) -> bool:
        """Whether the parameters hold the training point y (else the average x)."""
        modes: set[bool] = {group["train_mode"] for group in self.param_groups}
        if len(modes) > 1:
            raise ValueError(
                f"{type(self).__name__}: param groups are in different modes; "
                "call train() or eval() to put them all in one"
            )
        return modes.pop()

    @torch.no_grad()
    def train(self, mode: bool = True) -> _ScheduleFree:
        """Put the training point :math:`y` into the parameters (``mode=False``: the
        average :math:`x`, as :meth:`eval`). Groups already in that mode are left alone.
        Returns the optimizer."""
        check.flag(type(self).__name__, "mode", mode)
        for group in self.param_groups:
            if group["train_mode"] == mode:
                continue
            beta = self._interpolation(group)
            weight = 1 - beta if mode else 1 - 1 / beta
            for param in group["params"]:
                state = self.state.get(param)
                if state and "z" in state:
                    param.lerp_(state["z"].to(param.device, param.dtype), weight)
            group["train_mode"] = mode
        return self

    def eval(self) -> _ScheduleFree:
        r"""Put the average :math:`x = (y - (1-\beta) z) / \beta` into the parameters:
        call before evaluating, saving a checkpoint and at the end of training."""
        return self.train(False)

    @torch.no_grad()
    def step(self, closure: Any = None, *, grads: Mapping[str, Any] | None = None) -> Any:
        """One step from :math:`y`; refused in eval mode (call :meth:`train` first)."""
        for index, group in enumerate(self.param_groups):
            if not group["train_mode"]:
                raise RuntimeError(
                    f"{type(self).__name__}.step: param_groups[{index}] is in eval mode (its "
                    "parameters hold the average x); call opt.train() before training steps "
                    "and opt.eval() before evaluating"
                )
        return super().step(closure, grads=grads)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group in the optimizer's current mode (train mode for the first)."""
        current = self.param_groups[0]["train_mode"] if self.param_groups else True
        super().add_param_group({"train_mode": current, **param_group})

    @classmethod
    def _check_options(cls, group: Mapping[str, Any], where: str) -> None:
        if "train_mode" in group:
            check.flag(cls.__name__, f"{where}train_mode", group["train_mode"])

    def _with_default_flags(self, group: Mapping[str, Any]) -> dict[str, Any]:
        return {"train_mode": True, **super()._with_default_flags(group)}


class ScheduleFreeSGD(_ScheduleFree):
    r"""Schedule-Free SGD (Defazio et al. 2024): momentum SGD with averaging instead of a
    learning-rate schedule.

    .. math::

        y_t &= (1-\beta) z_t + \beta x_t, \qquad
        z_{t+1} = z_t - \gamma_t (g_t + \lambda y_t), \qquad
        x_{t+1} = (1-c_{t+1}) x_t + c_{t+1} z_{t+1}

    with :math:`\beta` = ``momentum``, a linear warm-up of :math:`\gamma_t` over
    ``warmup_steps`` and :math:`c_{t+1}` from :func:`averaging_weight`. **Call**
    ``opt.eval()`` **before evaluating or saving and** ``opt.train()`` **before
    training** (see :mod:`descent.optim.schedule_free`). Defaults are those of the
    authors' ``SGDScheduleFree``; the weight decay is evaluated at :math:`y`.
    """

    lr: float | Tensor = hyper(default=1.0)
    momentum: float = hyper(
        default=0.9,
        check=check.unit_interval,
        doc=r"interpolation :math:`\beta` between z and x (in (0, 1))",
    )
    weight_decay: float = hyper(default=0.0, doc=r"weight decay :math:`\lambda` at y")
    warmup_steps: int = hyper(default=0, check=_steps, doc=_WARMUP_DOC)
    r: float = hyper(default=0.0, check=check.non_negative, doc=_R_DOC)
    weight_lr_power: float = hyper(default=2.0, check=check.non_negative, doc=_POWER_DOC)
    maximize: bool = hyper(default=False, kw_only=True)

    keeps = _averaging_keeps()
    math = staticmethod(schedule_free_sgd)
    registry_name = "schedule_free_sgd"

    def _interpolation(self, group: Mapping[str, Any]) -> float:
        return float(group["momentum"])

    @classmethod
    def _check_options(cls, group: Mapping[str, Any], where: str) -> None:
        super()._check_options(group, where)
        if float(group["momentum"]) == 0:
            raise ValueError(
                f"ScheduleFreeSGD: {where}momentum=0 is invalid; expected a "
                "number in (0, 1) (x is recovered from y and z through it)"
            )


class ScheduleFreeAdamW(_ScheduleFree):
    r"""Schedule-Free AdamW (Defazio et al. 2024), winner of the AlgoPerf 2024 self-tuning
    track: AdamW's normalised gradient, averaging instead of a schedule.

    .. math::

        v_t &= \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \qquad
        d_t = g_t / (\sqrt{v_t/(1-\beta_2^t)} + \epsilon) + \lambda y_t \\
        z_{t+1} &= z_t - \gamma_t d_t, \qquad x_{t+1} = (1-c_{t+1}) x_t + c_{t+1} z_{t+1},
        \qquad y_{t+1} = (1-\beta_1) z_{t+1} + \beta_1 x_{t+1}

    **Call** ``opt.eval()`` **before evaluating or saving and** ``opt.train()``
    **before training** (see :mod:`descent.optim.schedule_free`). Defaults and
    arithmetic are those of the authors' ``AdamWScheduleFree`` /
    ``AdamWScheduleFreeReference``, whose bias correction is inside the root (the
    arXiv paper's Algorithm 1 scales :math:`\gamma_t` by :math:`\sqrt{1-\beta_2^t}`
    instead, kept in the package as ``AdamWScheduleFreePaper``, which the authors
    note can be unstable).
    """

    lr: float | Tensor = hyper(default=0.0025)
    betas: tuple[float, float] = hyper(default=(0.9, 0.999))
    eps: float = hyper(default=1e-8)
    weight_decay: float = hyper(default=0.0, doc=r"weight decay :math:`\lambda` at y")
    warmup_steps: int = hyper(default=0, check=_steps, doc=_WARMUP_DOC)
    r: float = hyper(default=0.0, check=check.non_negative, doc=_R_DOC)
    weight_lr_power: float = hyper(default=2.0, check=check.non_negative, doc=_POWER_DOC)
    maximize: bool = hyper(default=False, kw_only=True)

    keeps = _averaging_keeps(State("exp_avg_sq", non_negative=True, doc="second moment v"))
    math = staticmethod(schedule_free_adamw)
    registry_name = "schedule_free_adamw"

    @classmethod
    def _check_options(cls, group: Mapping[str, Any], where: str) -> None:
        super()._check_options(group, where)
        _positive_beta1(cls.__name__, group, where)


class ScheduleFreeRAdam(_ScheduleFree):
    r"""Schedule-Free RAdam: Schedule-Free AdamW whose warm-up is RAdam's rectification.

    As :class:`ScheduleFreeAdamW` with :math:`\gamma_t = \gamma\, r_t` (RAdam's
    rectification, Liu et al. 2020) and no ``warmup_steps``; while the variance of
    the adaptive rate is intractable (:math:`\rho_t \le 4`) the step is 0
    (``silent_sgd_phase=True``) or plain SGD. **Call** ``opt.eval()`` **before
    evaluating or saving and** ``opt.train()`` **before training**. Defaults and
    arithmetic are those of the authors' ``RAdamScheduleFree``.
    """

    lr: float | Tensor = hyper(default=0.0025)
    betas: tuple[float, float] = hyper(default=(0.9, 0.999))
    eps: float = hyper(default=1e-8)
    weight_decay: float = hyper(default=0.0, doc=r"weight decay :math:`\lambda` at y")
    r: float = hyper(default=0.0, check=check.non_negative, doc=_R_DOC)
    weight_lr_power: float = hyper(default=2.0, check=check.non_negative, doc=_POWER_DOC)
    silent_sgd_phase: bool = hyper(
        default=True, check=check.flag, doc="take no step (rather than SGD) before rectification"
    )
    maximize: bool = hyper(default=False, kw_only=True)

    keeps = _averaging_keeps(State("exp_avg_sq", non_negative=True, doc="second moment v"))
    math = staticmethod(schedule_free_radam)
    registry_name = "schedule_free_radam"

    @classmethod
    def _check_options(cls, group: Mapping[str, Any], where: str) -> None:
        super()._check_options(group, where)
        _positive_beta1(cls.__name__, group, where)


def _positive_beta1(owner: str, group: Mapping[str, Any], where: str) -> None:
    if float(group["betas"][0]) == 0:
        raise ValueError(
            f"{owner}: {where}betas[0]=0 is invalid; expected a number in (0, 1) "
            "(the average x is recovered from y and z through it)"
        )


__all__ = [
    "ModeSwitching",
    "ScheduleFreeAdamW",
    "ScheduleFreeRAdam",
    "ScheduleFreeSGD",
    "averaging_weight",
    "schedule_free_adamw",
    "schedule_free_radam",
    "schedule_free_sgd",
]
