"""SparseAdam: Adam on the rows a sparse gradient touches."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _validate as check
from ._spec import State, hyper
from .base import Optimizer


def sparse_adam(
    param: Tensor,
    grad: Tensor,
    *,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: float,
    lr: Any,
    betas: tuple[Any, Any],
    eps: float,
    maximize: bool,
) -> None:
    r"""One SparseAdam step on one parameter with a sparse gradient, in place.

    Only the entries :math:`i` the gradient holds change:

    .. math::

        m_i &\leftarrow \beta_1 m_i + (1-\beta_1) g_i, \qquad
        v_i \leftarrow \beta_2 v_i + (1-\beta_2) g_i^2 \\
        \theta_i &\leftarrow \theta_i - \eta\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,
            \frac{m_i}{\sqrt{v_i} + \epsilon}

    (:math:`-g` if maximizing; duplicate indices are summed first).
    """
    beta1, beta2 = betas
    if maximize:
        grad = -grad
    grad = grad.coalesce()  # the update is not linear: each index once
    indices, values = grad._indices(), grad._values()
    if values.numel() == 0:
        return

    def sparse(entries: Tensor) -> Tensor:
        return torch.sparse_coo_tensor(indices, entries, grad.size(), check_invariants=False)

    # m_i += (1 - beta1) (g_i - m_i), and likewise v_i, on the touched entries only
    old_exp_avg = exp_avg.sparse_mask(grad)._values()
    exp_avg_change = values.sub(old_exp_avg).mul_(1 - beta1)
    exp_avg.add_(sparse(exp_avg_change))
    old_exp_avg_sq = exp_avg_sq.sparse_mask(grad)._values()
    exp_avg_sq_change = values.pow(2).sub_(old_exp_avg_sq).mul_(1 - beta2)
    exp_avg_sq.add_(sparse(exp_avg_sq_change))

    numerator = exp_avg_change.add_(old_exp_avg)
    denominator = exp_avg_sq_change.add_(old_exp_avg_sq).sqrt_().add_(eps)
    step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
    param.add_(sparse(-step_size * numerator.div_(denominator)))


class SparseAdam(Optimizer):
    r"""SparseAdam: Adam restricted to the entries a sparse gradient holds.

    For gradients with a sparse layout, such as those of ``nn.Embedding(sparse=True)``:
    the moments and the parameter change only at the gradient's indices, so a step
    costs what the gradient holds, not the parameter's size. With :math:`t` the step
    count (steps with an empty gradient count too, as in torch):

    .. math::

        m_i &\leftarrow \beta_1 m_i + (1-\beta_1) g_i, \qquad
        v_i \leftarrow \beta_2 v_i + (1-\beta_2) g_i^2 \\
        \theta_i &\leftarrow \theta_i - \frac{\eta\sqrt{1-\beta_2^t}}{1-\beta_1^t}
            \frac{m_i}{\sqrt{v_i} + \epsilon}

    This approximates Adam (Kingma & Ba 2015): entries without gradient keep their
    moments instead of decaying them. Dense gradients are refused (use :class:`Adam`),
    as are complex and sparse parameters, as in torch. Not elementwise in the engine's
    sense (it works on a sparse gradient's indices), so it runs one parameter at a time
    and has no :mod:`descent.functional` form.

    Differences from torch: none in results. The step count is a 0-dim tensor, as in
    every descent optimizer, where torch's SparseAdam keeps a Python int; each loads the
    other's state dicts. A dense gradient is refused before any parameter changes (torch
    updates the parameters before the one with a dense gradient, then raises).

    Example::

        embedding = torch.nn.Embedding(10_000, 64, sparse=True)
        opt = descent.SparseAdam(embedding.parameters(), lr=1e-3)
    """

    lr: float | Tensor = hyper(
        default=1e-3, check=check.positive, doc=r"learning rate :math:`\eta` (> 0)"
    )
    betas: tuple[float, float] = hyper(default=(0.9, 0.999))
    eps: float = hyper(
        default=1e-8,
        check=check.positive,
        doc=r"term :math:`\epsilon` added to the denominator (> 0)",
    )
    maximize: bool = hyper(default=False)

    keeps = (
        State("step", scalar=True, doc="steps taken"),
        State("exp_avg", doc="first moment m"),
        State("exp_avg_sq", doc="second moment v"),
    )
    math = staticmethod(sparse_adam)
    functional_form = False  # it takes sparse gradients only
    elementwise = False
    supports_complex = False
    supports_sparse = True
    registry_name = "sparse_adam"
    cautious_refused = (
        "its gradients are sparse, and the mask's rescaling by d / (nnz + 1) "
        "counts the whole tensor, most of which a sparse step leaves alone"
    )

    def _check_param_dtype(self, param: Tensor, label: str) -> None:
        """A dense, real floating-point parameter (ValueError otherwise, as torch raises)."""
        if param.is_complex():
            raise ValueError(
                f"SparseAdam: {label} has complex dtype {param.dtype}; SparseAdam "
                "does not support complex parameters"
            )
        if param.layout != torch.strided:
            raise ValueError(
                f"SparseAdam: {label} has layout {param.layout}; SparseAdam "
                "requires dense parameter tensors (their gradients are sparse)"
            )
        super()._check_param_dtype(param, label)

    def _check_gradients(self) -> None:
        """A dense gradient raises a ``RuntimeError``, as in torch, before any update."""
        for group_index, group in enumerate(self.param_groups):
            for index, param in enumerate(group["params"]):
                if param.grad is not None and param.grad.layout == torch.strided:
                    raise RuntimeError(
                        f"{self.describe_param(group_index, index)} has a dense "
                        "gradient; SparseAdam takes sparse gradients only "
                        "(nn.Embedding(sparse=True)); use descent.Adam for "
                        "dense ones"
                    )


__all__ = ["SparseAdam", "sparse_adam"]
