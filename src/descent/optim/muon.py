"""Muon: momentum orthogonalized by Newton–Schulz iterations, as torch.optim.Muon."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _validate as check
from ._spec import State, hyper
from .base import Optimizer

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""Keller Jordan's quintic coefficients (a, b, c), torch.optim.Muon's default."""


def newton_schulz(
    matrix: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float
) -> Tensor:
    r"""An approximately orthogonal matrix with ``matrix``'s singular vectors (bfloat16).

    With :math:`X_0 = G / \max(\lVert G\rVert_F, \epsilon)` (transposed when G has more
    rows than columns, so that :math:`X X^\top` is the smaller Gram matrix), each of
    ``steps`` iterations applies the odd quintic

    .. math::

        X \leftarrow a X + (b\, X X^\top + c\,(X X^\top)^2)\, X

    which pushes every singular value towards 1 (to roughly U(0.5, 1.5) with the default
    coefficients: steep at zero rather than convergent). Computed in bfloat16, as in
    torch.optim.Muon and the reference implementation (Jordan et al. 2024,
    https://kellerjordan.github.io/posts/muon/).
    """
    a, b, c = coefficients
    tall = matrix.size(0) > matrix.size(1)
    x = matrix.bfloat16()
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # not in place: a bfloat16 input is the caller's tensor
    for _ in range(steps):
        gram = x @ x.T
        polynomial = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, polynomial, x, beta=a)
    return x.T if tall else x


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    r"""The learning rate for a (rows, cols) matrix: ``"original"`` (None) scales by
    :math:`\sqrt{\max(1, rows/cols)}` (Jordan), ``"match_rms_adamw"`` by
    :math:`0.2\sqrt{\max(rows, cols)}` (Liu et al. 2025, so AdamW's lr and weight decay
    carry over)."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return lr * (0.2 * math.sqrt(max(rows, cols)))
    return lr * math.sqrt(max(1, rows / cols))


def muon(
    param: Tensor,
    grad: Tensor,
    *,
    momentum_buffer: Tensor,
    lr: Any,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    ns_coefficients: tuple[float, float, float],
    eps: float,
    ns_steps: int,
    adjust_lr_fn: str | None,
) -> None:
    r"""One Muon step on one matrix parameter, in place.

    .. math::

        B &\leftarrow \mu B + (1-\mu)\, g \\
        M &= (1-\mu)\, g + \mu B \text{ (Nesterov) or } B \\
        \theta &\leftarrow \theta\,(1 - \eta\lambda) - \tilde\eta\,
            \operatorname{NS}^{(a,b,c)}_k(M)

    with :math:`\tilde\eta` from :func:`adjusted_lr` and NS from :func:`newton_schulz`.
    The momentum is an exponential average, as torch.optim.Muon's code computes it (its
    docstring writes :math:`B \leftarrow \mu B + g`).
    """
    momentum_buffer.lerp_(grad, 1 - momentum)
    update = grad.lerp(momentum_buffer, momentum) if nesterov else momentum_buffer
    orthogonal = newton_schulz(update, ns_coefficients, ns_steps, eps)
    param.mul_(1 - lr * weight_decay)
    param.add_(orthogonal, alpha=-adjusted_lr(lr, adjust_lr_fn, param.shape))


def _ns_coefficients(owner: str, name: str, value: Any) -> Any:
    if isinstance(value, Tensor) or not isinstance(value, tuple | list) or len(value) != 3:
        raise TypeError(f"{owner}: {name}={value!r} is invalid; expected three numbers (a, b, c)")
    for index, coefficient in enumerate(value):
        check.finite(owner, f"{name}[{index}]", coefficient)
    return tuple(value)


class Muon(Optimizer):
    r"""Muon (Jordan et al. 2024): SGD momentum, orthogonalized, for 2-D parameters.

    For a weight matrix :math:`\theta`, with momentum :math:`\mu` and step :math:`t`:

    .. math::

        B_t &= \mu B_{t-1} + (1-\mu)\, g_t, \qquad
        M_t = (1-\mu)\, g_t + \mu B_t \text{ if nesterov, else } B_t \\
        O_t &= \operatorname{NS}^{(a,b,c)}_k(M_t) \quad
            \text{(k Newton–Schulz iterations, in bfloat16)} \\
        \theta_t &= \theta_{t-1}(1 - \eta\lambda) - \tilde\eta\, O_t, \qquad
        \tilde\eta = \eta\sqrt{\max(1, A/B)} \text{ ("original") or }
            0.2\,\eta\sqrt{\max(A, B)} \text{ ("match_rms_adamw")}

    for an A x B matrix. This is torch.optim.Muon exactly, including where its code and
    docstring differ (the momentum above is the code's exponential average). Optimize
    only the hidden layers' matrices with it; biases, embeddings and output layers with
    e.g. :class:`AdamW`. References: Jordan et al., "Muon: An optimizer for hidden layers
    in neural networks", https://kellerjordan.github.io/posts/muon/ (2024); Liu et al.,
    "Muon is Scalable for LLM Training", arXiv:2502.16982 (the "match_rms_adamw" scale).

    The pieces are public for variants to build on: :func:`newton_schulz`,
    :func:`adjusted_lr` and the step :func:`muon`. Not elementwise (matrix products),
    so it runs one parameter at a time and has no :mod:`descent.functional` form.

    Differences from torch: none in results. Checked at construction where torch checks
    at the first step or not at all: ``ns_steps`` (an int in [0, 100)),
    ``ns_coefficients`` (three finite numbers), ``eps`` and ``nesterov``; a complex
    parameter is refused by the constructor (TypeError) where torch raises at the first
    step (RuntimeError).

    Example::

        hidden = [p for p in model.parameters() if p.ndim == 2]
        opt = descent.Muon(hidden, lr=0.02)
    """

    lr: float | Tensor = hyper(default=1e-3)
    weight_decay: float = hyper(default=0.1, doc=r"decoupled weight decay :math:`\lambda`")
    momentum: float = hyper(default=0.95)
    nesterov: bool = hyper(default=True, check=check.flag, doc="use Nesterov momentum")
    ns_coefficients: tuple[float, float, float] = hyper(
        default=NS_COEFFICIENTS,
        check=_ns_coefficients,
        doc="coefficients (a, b, c) of the Newton–Schulz quintic",
    )
    eps: float = hyper(
        default=1e-7,
        doc=r"floor :math:`\epsilon` of the norm that "
        "scales the Newton–Schulz input",
    )
    ns_steps: int = hyper(
        default=5, check=check.integer(0, 100), doc="number k of Newton–Schulz iterations"
    )
    adjust_lr_fn: str | None = hyper(
        default=None,
        check=check.choice(None, "original", "match_rms_adamw"),
        doc='learning-rate scale per matrix shape: "original" (None) or "match_rms_adamw"',
    )

    keeps = (State("momentum_buffer", doc="momentum buffer B"),)
    math = staticmethod(muon)
    functional_form = False  # matrices only: descent.functional.ortho_muon has it
    elementwise = False
    supports_complex = False
    decoupled_decay = True

    def _check_param_dtype(self, param: Tensor, label: str) -> None:
        """A parameter's dtype, as every optimizer checks it, and its shape: a matrix."""
        super()._check_param_dtype(param, label)
        if param.dim() != 2:
            raise ValueError(
                f"Muon: {label} has shape {tuple(param.shape)}; Muon updates "
                "2-D (matrix) parameters only; optimize the others (biases, "
                "norms, embeddings) with another optimizer such as AdamW"
            )


__all__ = ["NS_COEFFICIENTS", "Muon", "adjusted_lr", "muon", "newton_schulz"]
