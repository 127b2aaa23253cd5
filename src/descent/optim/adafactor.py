"""Adafactor: Adam-like steps from factored second moments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from . import _validate as check
from ._spec import State, hyper
from .base import Optimizer


def adafactor(
    param: Tensor,
    grad: Tensor,
    *,
    row_var: Tensor | None,
    col_var: Tensor | None,
    variance: Tensor | None,
    step: float,
    lr: Any,
    beta2_decay: float,
    eps: tuple[float | None, float],
    d: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    r"""One Adafactor step on one parameter, in place.

    .. math::

        \hat\beta_{2,t} &= 1 - t^{\tau}, \qquad \rho_t = \min(\eta, 1/\sqrt t), \qquad
        \alpha_t = \max(\epsilon_2, \operatorname{RMS}(\theta))\,\rho_t \\
        \theta &\leftarrow \theta\,(1 - \eta\lambda) \\
        R &\leftarrow \hat\beta_{2,t} R + (1-\hat\beta_{2,t})\,\operatorname{mean}_{cols}(g^2),
        \quad C \leftarrow \hat\beta_{2,t} C + (1-\hat\beta_{2,t})\,
            \operatorname{mean}_{rows}(g^2) \\
        \hat V &= R\,C / \max(\operatorname{mean}(R), \epsilon_1)
            \quad (\hat V \leftarrow \hat\beta_{2,t}\hat V + (1-\hat\beta_{2,t}) g^2
            \text{ for a vector}) \\
        U &= g / \max(\sqrt{\hat V}, \epsilon_1), \qquad
        \theta \leftarrow \theta - \frac{\alpha_t}{\max(1, \operatorname{RMS}(U)/d)}\, U

    For a tensor of more than two dimensions the last two are factored. ``eps[0]``
    None means the machine epsilon of the parameter's dtype.
    """
    if param.numel() == 0:
        return  # nothing to update (and no RMS to take)
    eps1, eps2 = eps
    if eps1 is None:
        eps1 = torch.finfo(param.dtype).eps
    if maximize:
        grad = -grad
    one_minus_beta2 = step**beta2_decay
    relative_step = min(lr, 1 / step**0.5)
    alpha = max(eps2, param.norm(2).item() / param.numel() ** 0.5) * relative_step
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    if grad.dim() > 1:
        assert row_var is not None and col_var is not None
        row_mean = torch.norm(grad, dim=-1, keepdim=True).square().div_(grad.size(-1))
        row_var.lerp_(row_mean, one_minus_beta2)
        col_mean = torch.norm(grad, dim=-2, keepdim=True).square().div_(grad.size(-2))
        col_var.lerp_(col_mean, one_minus_beta2)
        var_estimate = row_var @ col_var
        var_estimate.div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1))
    else:
        assert variance is not None
        variance.lerp_(grad * grad, one_minus_beta2)
        var_estimate = variance.clone()
    update = var_estimate.clamp_(min=eps1 * eps1).rsqrt_().mul_(grad)
    denom = max(1.0, update.norm(2).item() / (update.numel() ** 0.5 * d))
    param.add_(update, alpha=-alpha / denom)


def _row_shape(param: Tensor, group: Mapping[str, Any]) -> tuple[int, ...] | None:
    return (*param.shape[:-1], 1) if param.dim() > 1 else None


def _col_shape(param: Tensor, group: Mapping[str, Any]) -> tuple[int, ...] | None:
    return (*param.shape[:-2], 1, param.shape[-1]) if param.dim() > 1 else None


def _vector_shape(param: Tensor, group: Mapping[str, Any]) -> tuple[int, ...] | None:
    return tuple(param.shape) if param.dim() <= 1 else None


def _eps(owner: str, name: str, value: Any) -> Any:
    eps1, eps2 = check.pair(owner, name, value)
    if eps1 is not None:
        check.non_negative(owner, f"{name}[0]", eps1)
    check.non_negative(owner, f"{name}[1]", eps2)
    return tuple(value)


class Adafactor(Optimizer):
    r"""Adafactor (Shazeer & Stern 2018): second moments kept as row and column factors.

    For a matrix of shape (n, m) the second-moment estimate costs n + m numbers instead
    of n m: the running means of :math:`g^2` over its rows and its columns. With
    :math:`\tau` = ``beta2_decay`` and step :math:`t`:

    .. math::

        \hat\beta_{2,t} &= 1 - t^{\tau}, \qquad
        \alpha_t = \max(\epsilon_2, \operatorname{RMS}(\theta_{t-1}))\,
            \min(\eta, 1/\sqrt t) \\
        R_t &= \hat\beta_{2,t} R_{t-1} + (1-\hat\beta_{2,t})\,\overline{g^2}^{\,cols}, \qquad
        C_t = \hat\beta_{2,t} C_{t-1} + (1-\hat\beta_{2,t})\,\overline{g^2}^{\,rows} \\
        \hat V_t &= R_t C_t / \max(\overline{R_t}, \epsilon_1), \qquad
        U_t = g / \max(\sqrt{\hat V_t}, \epsilon_1) \\
        \theta_t &= \theta_{t-1}(1 - \eta\lambda)
            - \alpha_t\, U_t / \max(1, \operatorname{RMS}(U_t)/d)

    Vectors keep a full :math:`\hat V`; tensors of more dimensions factor their last
    two. As in torch, ``lr`` caps the relative step size (0.01 in the paper) and
    scales the decoupled weight decay, and :math:`\epsilon_1` (``eps[0]``, None: the
    dtype's machine epsilon) guards the estimate rather than the factors.
    Reference: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear
    Memory Cost", ICML 2018 (Algorithms 4 and 5, without first moments).

    Not elementwise (row and column means, norms over a tensor), so it runs one
    parameter at a time and has no :mod:`descent.functional` form. Complex parameters
    are refused, as in torch.

    Differences from torch: none in results. A complex parameter is refused by the
    constructor (TypeError) where torch raises at the first step (RuntimeError); a
    parameter with no elements is left as it is (torch divides by its zero size).
    ``foreach`` is accepted and ignored.

    Example::

        opt = descent.Adafactor(model.parameters())
    """

    lr: float | Tensor = hyper(
        default=1e-2,
        doc=r"cap :math:`\eta` of the relative step "
        "size, and the weight decay's scale",
    )
    beta2_decay: float = hyper(
        default=-0.8,
        check=check.non_positive,
        doc=r"exponent :math:`\tau` of "
        r":math:`\hat\beta_{2,t} = 1 - t^{\tau}`",
    )
    eps: tuple[float | None, float] = hyper(
        default=(None, 1e-3),
        check=_eps,
        doc=r"(:math:`\epsilon_1`, :math:`\epsilon_2`): "
        "floor of the estimate (None: the dtype's "
        "machine epsilon) and of the parameter RMS",
    )
    d: float = hyper(
        default=1.0, check=check.at_least(1.0), doc="clipping threshold of the update's RMS"
    )
    weight_decay: float = hyper(default=0.0, doc=r"decoupled weight decay :math:`\lambda`")
    foreach: bool | None = hyper(default=None, kw_only=True)
    maximize: bool = hyper(default=False, kw_only=True)

    keeps = (
        State("step", scalar=True, doc="steps taken"),
        State("row_var", shape=_row_shape, doc="row factor R (tensors of 2+ dims)"),
        State("col_var", shape=_col_shape, doc="column factor C (tensors of 2+ dims)"),
        State("variance", shape=_vector_shape, doc=r"full :math:`\hat V` (vectors)"),
    )
    math = staticmethod(adafactor)
    functional_form = False  # factored moments are not shaped like the parameter
    elementwise = False
    supports_complex = False


__all__ = ["Adafactor", "adafactor"]
