"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from itertools import chain
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from ..engine import is_dtensor
from . import _validate as check
from ._spec import State, hyper
from .base import Optimizer

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor


def _dims(param: Tensor) -> tuple[int, ...]:
    """The dimensions SOAP preconditions: a vector's length, or a matrix view's
    ``(shape[0], rest)``."""
    return (param.shape[0],) if param.ndim == 1 else (param.shape[0], math.prod(param.shape[1:]))


def _preconditioned(param: Tensor, group: Mapping[str, Any]) -> tuple[int, int]:
    """(rows, cols) of the left and right preconditioners: a dimension's size, or 0 for a
    dimension left as it is (larger than ``max_precondition_dim``, or a vector's only
    dimension without ``precondition_1d``)."""
    limit = group["max_precondition_dim"]
    dims = _dims(param)
    if len(dims) == 1:
        return 0, dims[0] if group["precondition_1d"] and dims[0] <= limit else 0
    rows, cols = dims  # a matrix view: two dimensions
    return (rows if rows <= limit else 0), (cols if cols <= limit else 0)


def _left(param: Tensor, group: Mapping[str, Any]) -> tuple[int, int]:
    size = _preconditioned(param, group)[0]
    return size, size


def _right(param: Tensor, group: Mapping[str, Any]) -> tuple[int, int]:
    size = _preconditioned(param, group)[1]
    return size, size


def _new_zeros(param: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Zeros of ``shape`` like ``param``; for a sharded parameter (a DTensor) a plain
    tensor that every rank keeps whole (the engine gathers the parameter for the math,
    and every rank updates its copy of the preconditioners alike)."""
    if is_dtensor(param):
        local = cast("DTensor", param).to_local()
        return torch.zeros(shape, dtype=param.dtype, device=local.device)
    return param.new_zeros(shape)


def _zeros(shape: Any) -> Any:
    def init(param: Tensor, group: Mapping[str, Any]) -> Tensor:
        return _new_zeros(param, shape(param, group))

    return init


def _basis(shape: Any) -> Any:
    """A basis is kept column-major, the layout in which ``eigh`` and ``qr`` (LAPACK)
    return it, so products with it round as they do in the authors' code."""

    def init(param: Tensor, group: Mapping[str, Any]) -> Tensor:
        return _new_zeros(param, shape(param, group)).T

    return init


def _project(x: Tensor, bases: list[Tensor], back: bool = False) -> Tensor:
    """:math:`Q_L^\\top X Q_R` (or :math:`Q_L X Q_R^\\top` with ``back``), one dimension
    at a time; a dimension without a basis is only moved to the end."""
    for basis in bases:
        if basis.numel():
            x = torch.tensordot(x, basis, dims=[[0], [1 if back else 0]])
        else:
            x = x.permute([*range(1, x.ndim), 0])
    return x


def _eigenbases(statistics: list[Tensor]) -> list[Tensor]:
    """Eigenvectors of each statistic, largest eigenvalue first (half precision ones in
    float32, which ``eigh`` needs)."""
    bases = []
    for matrix in statistics:
        if not matrix.numel():
            bases.append(matrix)
            continue
        work = matrix.float() if matrix.dtype in (torch.float16, torch.bfloat16) else matrix
        identity = torch.eye(work.shape[0], device=work.device, dtype=work.dtype)
        _, vectors = torch.linalg.eigh(work + 1e-30 * identity)
        bases.append(torch.flip(vectors, dims=[1]).to(matrix.dtype))
    return bases


def _power_iteration(
    statistics: list[Tensor], bases: list[Tensor], exp_avg_sq: Tensor
) -> tuple[list[Tensor], Tensor]:
    """One power iteration and a QR decomposition per basis (in float32, as the authors'
    code), with the second moment's rows reordered like the estimated eigenvalues."""
    new = []
    for index, (matrix, basis) in enumerate(zip(statistics, bases, strict=True)):
        if not matrix.numel():
            new.append(basis)
            continue
        product = matrix @ basis
        order = torch.argsort((basis * product).sum(dim=0), descending=True)
        exp_avg_sq = exp_avg_sq.index_select(index, order)
        q, _ = torch.linalg.qr(product.index_select(1, order).to(torch.float32))
        new.append(q.to(product.dtype))
    return new, exp_avg_sq


def _accumulate(statistics: list[Tensor], grad: Tensor, beta: float) -> None:
    """Shampoo's statistics: :math:`L \\leftarrow \\beta L + (1-\\beta) G G^\\top`, and
    :math:`R` from :math:`G^\\top G`."""
    for index, matrix in enumerate(statistics):
        if not matrix.numel():
            continue
        if grad.ndim == 1:
            outer = grad.unsqueeze(1) @ grad.unsqueeze(0)
        else:
            others = [*chain(range(index), range(index + 1, grad.ndim))]
            outer = torch.tensordot(grad, grad, dims=[others] * 2)
        matrix.lerp_(outer.to(matrix.dtype), 1 - beta)


def soap(
    param: Tensor,
    grad: Tensor,
    *,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    left: Tensor,
    right: Tensor,
    left_basis: Tensor,
    right_basis: Tensor,
    step: float,
    lr: Any,
    betas: tuple[Any, Any],
    shampoo_beta: float | None,
    eps: float,
    weight_decay: float,
    precondition_frequency: int,
    normalize_gradient: bool,
    correct_bias: bool,
    maximize: bool,
) -> None:
    r"""One SOAP step on one tensor, in place (the first step only sets up the bases).

    .. math::

        G' &= Q_L^\top G Q_R, \qquad M \leftarrow \beta_1 M + (1-\beta_1) G, \qquad
        V \leftarrow \beta_2 V + (1-\beta_2)\, G' \odot G' \\
        \theta &\leftarrow \theta - \eta_t\, Q_L \frac{Q_L^\top M Q_R}{\sqrt V + \epsilon}
            Q_R^\top, \qquad \theta \leftarrow \theta(1 - \eta\lambda) \\
        L &\leftarrow \beta_s L + (1-\beta_s) G G^\top, \qquad
        R \leftarrow \beta_s R + (1-\beta_s) G^\top G

    with :math:`\eta_t = \eta\sqrt{1-\beta_2^t}/(1-\beta_1^t)` (``correct_bias``) and
    :math:`t` = ``step - 1``; every ``precondition_frequency`` steps
    :math:`Q \leftarrow \mathrm{QR}(L Q)` (one power iteration), :math:`V` reordered to
    match. A tensor of more than 2 dimensions is viewed as ``(shape[0], rest)``.
    """
    beta1, beta2 = betas
    if maximize:
        grad = -grad
    view: Callable[[Tensor], Tensor] = (
        (lambda x: x) if param.ndim <= 2 else (lambda x: x.flatten(1))
    )
    grad2, exp_avg2, exp_avg_sq2 = view(grad), view(exp_avg), view(exp_avg_sq)
    statistics = [right] if param.ndim == 1 else [left, right]
    bases = [right_basis] if param.ndim == 1 else [left_basis, right_basis]
    decay = beta2 if shampoo_beta is None else shampoo_beta
    if step == 1:  # statistics of the first gradient and their eigenbases; no step
        _accumulate(statistics, grad2, decay)
        for basis, first in zip(bases, _eigenbases(statistics), strict=True):
            basis.copy_(first)
        return
    t = step - 1
    step_size = lr
    if correct_bias:
        step_size = lr * (math.sqrt(1 - beta2**t) / (1 - beta1**t))
    exp_avg2.lerp_(grad2, 1 - beta1)
    exp_avg_sq2.lerp_(_project(grad2, bases).square(), 1 - beta2)
    direction = _project(_project(exp_avg2, bases) / exp_avg_sq2.sqrt().add_(eps), bases, back=True)
    if normalize_gradient:
        direction.div_(torch.mean(direction.square()).sqrt_().add_(eps))
    param.add_(direction.reshape(param.shape), alpha=-step_size)
    if weight_decay != 0:
        param.mul_(1 - weight_decay * lr)
    _accumulate(statistics, grad2, decay)
    if t % precondition_frequency == 0:
        refreshed, reordered = _power_iteration(statistics, bases, exp_avg_sq2)
        exp_avg_sq2.copy_(reordered)
        for basis, fresh in zip(bases, refreshed, strict=True):
            basis.copy_(fresh)


class SOAP(Optimizer):
    r"""SOAP (Vyas et al. 2024): Adam run in the eigenbasis of Shampoo's preconditioner.

    Shampoo preconditions a matrix gradient :math:`G` with
    :math:`L^{-1/4} G R^{-1/4}` (:math:`L, R` averages of :math:`GG^\top`,
    :math:`G^\top G`); SOAP instead rotates :math:`G` into the eigenbases
    :math:`Q_L, Q_R` of :math:`L, R`, runs Adam there and rotates back, refreshing the
    bases by one power iteration every ``precondition_frequency`` steps:

    .. math::

        G' &= Q_L^\top G Q_R, \quad M_t = \beta_1 M_{t-1} + (1-\beta_1) G, \quad
        V_t = \beta_2 V_{t-1} + (1-\beta_2) G'^2 \\
        \theta_t &= \Big(\theta_{t-1} - \eta_t Q_L \frac{Q_L^\top M_t Q_R}{\sqrt{V_t} +
            \epsilon} Q_R^\top\Big)(1 - \eta\lambda)

    The first step of each tensor only computes the first bases (its parameters do not
    move). Reference: Vyas, Morwani, Zhao, Kwun, Shapira, Brandfonbrener, Janson &
    Kakade, "SOAP: Improving and Stabilizing Shampoo using Adam", ICLR 2025
    (Algorithm 3; defaults of the authors' code), with the arithmetic of
    ``pytorch-optimizer``'s SOAP (bases by ``eigh`` at first, then one power
    iteration and a float32 QR). Dimensions larger than ``max_precondition_dim`` keep
    the identity; a vector is preconditioned only with ``precondition_1d``. Every
    tensor is treated as a matrix ``(shape[0], rest)`` (the authors' ``merge_dims``
    and per-dimension bases for convolutions are not offered). Not elementwise: each
    tensor is updated on its own.

    Example::

        opt = descent.SOAP(model, lr=3e-3, betas=(0.95, 0.95), weight_decay=0.01)
    """

    lr: float | Tensor = hyper(default=3e-3)
    betas: tuple[float, float] = hyper(default=(0.95, 0.95))
    shampoo_beta: float | None = hyper(
        default=None,
        check=lambda owner, name, value: (
            value if value is None else check.unit_interval(owner, name, value)
        ),
        doc=r"decay of the statistics L, R (None: :math:`\beta_2`)",
    )
    eps: float = hyper(default=1e-8)
    weight_decay: float = hyper(
        default=0.01,
        doc=r"decoupled weight decay :math:`\lambda`, "
        "applied after the step",
    )
    precondition_frequency: int = hyper(
        default=10,
        check=lambda owner, name, value: _positive_int(owner, name, value),
        doc="steps between refreshes of the bases",
    )
    max_precondition_dim: int = hyper(
        default=10000,
        check=lambda owner, name, value: _positive_int(owner, name, value),
        doc="largest dimension given a basis",
    )
    precondition_1d: bool = hyper(
        default=False, check=check.flag, doc="give vectors (biases, gains) a basis too"
    )
    normalize_gradient: bool = hyper(
        default=False, check=check.flag, doc="divide the step by its RMS"
    )
    correct_bias: bool = hyper(
        default=True, check=check.flag, doc="Adam's bias corrections of the step"
    )
    maximize: bool = hyper(default=False, kw_only=True)

    keeps = (
        State("step", scalar=True, doc="steps taken"),
        State("exp_avg", doc="first moment M (in the parameter's basis)"),
        State("exp_avg_sq", doc="second moment V (in the eigenbasis)"),
        State(
            "left",
            init=_zeros(_left),
            shape=_left,
            uses=("max_precondition_dim",),
            doc="statistic L of the rows (0x0: none)",
        ),
        State(
            "right",
            init=_zeros(_right),
            shape=_right,
            uses=("max_precondition_dim", "precondition_1d"),
            doc="statistic R of the columns (0x0: none)",
        ),
        State(
            "left_basis",
            init=_basis(_left),
            shape=_left,
            uses=("max_precondition_dim",),
            doc="eigenbasis Q_L of L",
        ),
        State(
            "right_basis",
            init=_basis(_right),
            shape=_right,
            uses=("max_precondition_dim", "precondition_1d"),
            doc="eigenbasis Q_R of R",
        ),
    )
    math = staticmethod(soap)
    elementwise = False
    supports_complex = False
    decoupled_decay = True
    registry_name = "soap"


def _positive_int(owner: str, name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name}={value!r} is invalid; expected an integer >= 1")
    return value


__all__ = ["SOAP", "soap"]
