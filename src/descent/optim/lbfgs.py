"""L-BFGS with an optional strong-Wolfe line search, as torch.optim.LBFGS."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..interop.arrays import refresh_gradients
from . import _validate as check
from ._spec import hyper
from .base import Optimizer, Params

Number = Any
"""A Python float or a 0-dim tensor: L-BFGS's scalars are either, as in torch."""


def cubic_interpolate(
    x1: Number,
    f1: Number,
    g1: Number,
    x2: Number,
    f2: Number,
    g2: Number,
    bounds: tuple[Number, Number] | None = None,
) -> Number:
    r"""The minimizer, within ``bounds`` (default: between x1 and x2), of the cubic
    through :math:`(x_1, f_1)` and :math:`(x_2, f_2)` with slopes :math:`g_1, g_2`
    (Nocedal & Wright, eq. 3.59); the middle of the bounds if it has none.

    .. math::

        d_1 = g_1 + g_2 - 3\frac{f_1 - f_2}{x_1 - x_2}, \quad
        d_2 = \sqrt{d_1^2 - g_1 g_2}, \quad
        x = x_2 - (x_2 - x_1)\frac{g_2 + d_2 - d_1}{g_2 - g_1 + 2 d_2}
    """
    low, high = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square < 0:
        return (low + high) / 2.0
    d2 = d2_square.sqrt()
    if x1 <= x2:
        minimum = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        minimum = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(minimum, low), high)


Evaluate = Callable[[list[Tensor], Number, Tensor], tuple[float, Tensor]]
"""``evaluate(x, t, d)``: loss and flat gradient at ``x + t d`` (parameters restored)."""


def strong_wolfe(
    evaluate: Evaluate,
    x: list[Tensor],
    t: Number,
    d: Tensor,
    f: float,
    g: Tensor,
    gtd: Tensor,
    c1: float = 1e-4,
    c2: float = 0.9,
    tolerance_change: float = 1e-9,
    max_ls: int = 25,
) -> tuple[float, Tensor, Number, int]:
    r"""A step length along ``d`` satisfying the strong Wolfe conditions.

    .. math::

        f(x + t d) \le f(x) + c_1 t\, g^\top d, \qquad
        |\nabla f(x + t d)^\top d| \le c_2\, |g^\top d|

    Bracketing then zoom with cubic interpolation (Nocedal & Wright, Algorithms 3.5 and
    3.6; Schmidt's minFunc, as torch.optim.LBFGS). Returns the loss, flat gradient and
    step length found, and the number of evaluations used (at most ``max_ls``).
    """
    d_norm = d.abs().max()
    g = g.clone(memory_format=torch.contiguous_format)
    f_new, g_new = evaluate(x, t, d)
    evaluations = 1
    gtd_new = g_new.dot(d)

    # bracketing: grow t until [t_prev, t] holds a point satisfying the conditions
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    iteration = 0
    while iteration < max_ls:
        if f_new > (f + c1 * t * gtd) or (iteration > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g = [g_prev, g_new.clone(memory_format=torch.contiguous_format)]
            bracket_gtd = [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g = [g_prev, g_new.clone(memory_format=torch.contiguous_format)]
            bracket_gtd = [gtd_prev, gtd_new]
            break
        # extrapolate, between 1.01 t and 10 t
        previous = t
        t = cubic_interpolate(
            t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(t + 0.01 * (t - t_prev), t * 10)
        )
        t_prev, f_prev = previous, f_new
        g_prev = g_new.clone(memory_format=torch.contiguous_format)
        gtd_prev = gtd_new
        f_new, g_new = evaluate(x, t, d)
        evaluations += 1
        gtd_new = g_new.dot(d)
        iteration += 1
    if iteration == max_ls:
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]

    # zoom: shrink the bracket until a point satisfies the conditions
    insufficient_progress = False
    low, high = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and iteration < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = cubic_interpolate(
            bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1]
        )
        # keep t at least 10% of the bracket's width away from its ends
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insufficient_progress or t >= max(bracket) or t <= min(bracket):
                t = (
                    max(bracket) - eps
                    if abs(t - max(bracket)) < abs(t - min(bracket))
                    else min(bracket) + eps
                )
                insufficient_progress = False
            else:
                insufficient_progress = True
        else:
            insufficient_progress = False
        f_new, g_new = evaluate(x, t, d)
        evaluations += 1
        gtd_new = g_new.dot(d)
        iteration += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low]:
            bracket[high], bracket_f[high] = t, f_new
            bracket_g[high] = g_new.clone(memory_format=torch.contiguous_format)
            bracket_gtd[high] = gtd_new
            low, high = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high] - bracket[low]) >= 0:
                bracket[high], bracket_f[high] = bracket[low], bracket_f[low]
                bracket_g[high], bracket_gtd[high] = bracket_g[low], bracket_gtd[low]
            bracket[low], bracket_f[low] = t, f_new
            bracket_g[low] = g_new.clone(memory_format=torch.contiguous_format)
            bracket_gtd[low] = gtd_new
    return bracket_f[low], bracket_g[low], bracket[low], evaluations


def lbfgs_direction(
    grad: Tensor,
    old_dirs: list[Tensor],
    old_stps: list[Tensor],
    ro: list[Tensor],
    h_diag: Number,
    al: list[Any],
) -> Tensor:
    r"""The search direction :math:`-H g` by the two-loop recursion (Nocedal 1980).

    With curvature pairs :math:`(s_i, y_i)` (``old_stps``, ``old_dirs``),
    :math:`\rho_i = 1 / y_i^\top s_i` (``ro``) and :math:`H_0 = \gamma I` (``h_diag``):

    .. math::

        q &= -g; \quad \text{for } i = k-1 \dots 0:\ \alpha_i = \rho_i s_i^\top q,\
            q \leftarrow q - \alpha_i y_i \\
        r &= \gamma q; \quad \text{for } i = 0 \dots k-1:\ \beta_i = \rho_i y_i^\top r,\
            r \leftarrow r + (\alpha_i - \beta_i) s_i

    ``al`` receives the :math:`\alpha_i` (torch keeps it in the state).
    """
    q = grad.neg()
    for i in range(len(old_dirs) - 1, -1, -1):
        al[i] = old_stps[i].dot(q) * ro[i]
        q.add_(old_dirs[i], alpha=-al[i])
    r = torch.mul(q, h_diag)
    for i in range(len(old_dirs)):
        be_i = old_dirs[i].dot(r) * ro[i]
        r.add_(old_stps[i], alpha=al[i] - be_i)
    return r


_STATE_KEYS = frozenset(
    {
        "func_evals",
        "n_iter",
        "d",
        "t",
        "old_dirs",
        "old_stps",
        "ro",
        "H_diag",
        "prev_flat_grad",
        "prev_loss",
        "al",
    }
)


class LBFGS(Optimizer):
    r"""L-BFGS (Liu & Nocedal 1989), with an optional strong-Wolfe line search.

    Each :meth:`step` runs up to ``max_iter`` iterations on the closure's loss:

    .. math::

        d_k &= -H_k g_k \quad \text{(two-loop recursion over the last ``history_size``
            pairs } s_i = \theta_{i+1} - \theta_i,\ y_i = g_{i+1} - g_i\text{)} \\
        \theta_{k+1} &= \theta_k + t_k d_k, \qquad
        t_k = \eta \text{ (}\min(1, 1/\lVert g_1\rVert_1)\,\eta \text{ first), or from the
        line search}

    stopping early when the gradient's largest entry is at most ``tolerance_grad``,
    when the loss or the step changes by less than ``tolerance_change``, or after
    ``max_eval`` closure evaluations. All parameters are treated as one flat vector, so
    there is one param group and the state lives with the first parameter (torch's
    layout). References: Liu & Nocedal, "On the limited memory BFGS method for large
    scale optimization", Math. Programming 1989; Nocedal & Wright, "Numerical
    Optimization", 2006 (Algorithms 3.5, 3.6, 7.4); Schmidt's minFunc, as torch.

    Not elementwise (dot products over all parameters, a line search that calls the
    closure), so it has its own :meth:`step`, no engine path and no
    :mod:`descent.functional` form. Complex parameters are updated as pairs of reals and
    sparse gradients are densified, as in torch.

    Differences from torch: none in results. Checked at construction where torch does
    not check: ``max_iter``, ``max_eval`` and ``history_size`` (ints >= 1), the
    tolerances (>= 0) and ``line_search_fn`` (None or "strong_wolfe"; torch refuses
    another value only at the first step). A second param group is refused by
    ``add_param_group`` too.

    Example::

        opt = descent.LBFGS(model.parameters(), line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    """

    lr: float | Tensor = hyper(
        default=1,
        doc=r"step length :math:`\eta` (without the "
        "line search)",
    )
    max_iter: int = hyper(default=20, check=check.integer(1), doc="most iterations per step")
    max_eval: int | None = hyper(
        default=None,
        check=check.optional(check.integer(1)),
        doc="most closure evaluations per step (None: max_iter * 5 // 4)",
    )
    tolerance_grad: float = hyper(
        default=1e-7,
        check=check.non_negative,
        doc="stop when the gradient's largest entry is at most this",
    )
    tolerance_change: float = hyper(
        default=1e-9, check=check.non_negative, doc="stop when the loss or the step changes less"
    )
    history_size: int = hyper(
        default=100, check=check.integer(1), doc="number of curvature pairs kept"
    )
    line_search_fn: str | None = hyper(
        default=None,
        check=check.choice(None, "strong_wolfe"),
        doc='"strong_wolfe", or None for fixed steps',
    )

    elementwise = False
    supports_sparse = True
    cautious_refused = (
        "L-BFGS moves along a search direction with a line search, not by "
        "an update per element that a mask could keep or drop"
    )

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search_fn: str | None = None,
        *,
        cautious: bool = False,
    ) -> None:
        """Make an LBFGS optimizer over ``params`` (one param group; see the class
        docstring)."""
        if max_eval is None:  # stored in the group, as torch does
            max_eval = self.hyperparameters["max_iter"].validate("LBFGS", "", max_iter) * 5 // 4
        Optimizer.__init__(
            self,
            params,
            {
                "lr": lr,
                "max_iter": max_iter,
                "max_eval": max_eval,
                "tolerance_grad": tolerance_grad,
                "tolerance_change": tolerance_change,
                "history_size": history_size,
                "line_search_fn": line_search_fn,
                "cautious": cautious,
            },
        )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add the one param group (LBFGS optimizes one flat vector)."""
        if self.param_groups:
            raise ValueError(
                "LBFGS: a second param group is refused; LBFGS doesn't support "
                "per-parameter options (parameter groups): it treats all "
                "parameters as one vector"
            )
        super().add_param_group(param_group)

    # ------------------------------------------------------------------ the flat vector

    @property
    def _params(self) -> list[Tensor]:
        params: list[Tensor] = self.param_groups[0]["params"]
        return params

    def _flat_grad(self) -> Tensor:
        views = []
        for param in self._params:
            if param.grad is None:
                view = param.new(param.numel()).zero_()
            elif param.grad.is_sparse:
                view = param.grad.to_dense().view(-1)
            else:
                view = param.grad.view(-1)
            views.append(torch.view_as_real(view).view(-1) if view.is_complex() else view)
        return torch.cat(views, 0)

    def _add_to_params(self, step_size: Number, direction: Tensor) -> None:
        offset = 0
        for param in self._params:
            real = torch.view_as_real(param) if param.is_complex() else param
            count = real.numel()
            real.add_(direction[offset : offset + count].view_as(real), alpha=step_size)
            offset += count

    def _evaluate(self, closure: Callable[[], Any]) -> tuple[Any, Tensor]:
        loss = closure()
        refresh_gradients(self, None)  # NumPy containers' gradients (descent.interop.arrays)
        return loss, self._flat_grad()

    # ------------------------------------------------------------------ step

    # the closure is required (as in torch's LBFGS), where Optimizer.step takes None
    @torch.no_grad()
    def step(self, closure: Callable[[], Any]) -> Any:  # type: ignore[override]
        """Run up to ``max_iter`` L-BFGS iterations; return the closure's first loss.

        ``closure()`` must zero the gradients, compute the loss, call ``backward()`` and
        return the loss; it is called several times per step.
        """
        if not callable(closure):
            raise TypeError(
                f"LBFGS.step: closure={closure!r} is not callable; LBFGS needs a "
                "closure that re-evaluates the model and returns the loss"
            )
        closure = torch.enable_grad()(closure)
        group = self.param_groups[0]
        lr = group["lr"]
        if isinstance(lr, Tensor) and lr.dim() != 0:
            lr = lr.squeeze()  # a one-element tensor takes part as a 0-dim tensor, as in torch
        max_iter, tolerance_change = group["max_iter"], group["tolerance_change"]
        max_eval, tolerance_grad = group["max_eval"], group["tolerance_grad"]
        history_size = group["history_size"]

        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        first_loss, flat_grad = self._evaluate(closure)
        loss = float(first_loss)
        evaluations = 1
        state["func_evals"] += 1
        if flat_grad.abs().max() <= tolerance_grad:
            return first_loss

        d, t = state.get("d"), state.get("t")
        old_dirs, old_stps, ro = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
        h_diag = state.get("H_diag")
        prev_flat_grad, prev_loss = state.get("prev_flat_grad"), state.get("prev_loss")

        iteration = 0
        while iteration < max_iter:
            iteration += 1
            state["n_iter"] += 1
            if state["n_iter"] == 1:
                d = flat_grad.neg()
                old_dirs, old_stps, ro, h_diag = [], [], [], 1
            else:
                # the newest curvature pair, kept if it is positive (y's > 0)
                y = flat_grad.sub(prev_flat_grad)
                s = d.mul(t)
                ys = y.dot(s)
                if ys > 1e-10:
                    if len(old_dirs) == history_size:
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    h_diag = ys / y.dot(y)
                if "al" not in state:
                    state["al"] = [None] * history_size
                d = lbfgs_direction(flat_grad, old_dirs, old_stps, ro, h_diag, state["al"])

            if prev_flat_grad is None:
                prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
            else:
                prev_flat_grad.copy_(flat_grad)
            prev_loss = loss

            t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr if state["n_iter"] == 1 else lr
            gtd = flat_grad.dot(d)
            if gtd > -tolerance_change:  # not a descent direction
                break

            step_evaluations = 0
            if group["line_search_fn"] == "strong_wolfe":
                start = [p.clone(memory_format=torch.contiguous_format) for p in self._params]

                def evaluate(x: list[Tensor], t: Number, d: Tensor) -> tuple[float, Tensor]:
                    self._add_to_params(t, d)
                    value, gradient = self._evaluate(closure)
                    for param, saved in zip(self._params, x, strict=True):
                        param.copy_(saved)
                    return float(value), gradient

                loss, flat_grad, t, step_evaluations = strong_wolfe(
                    evaluate, start, t, d, loss, flat_grad, gtd, max_ls=max_eval - evaluations
                )
                self._add_to_params(t, d)
                converged = flat_grad.abs().max() <= tolerance_grad
            else:
                self._add_to_params(t, d)
                converged = False
                if iteration != max_iter:
                    value, flat_grad = self._evaluate(closure)
                    loss = float(value)
                    converged = flat_grad.abs().max() <= tolerance_grad
                    step_evaluations = 1
            evaluations += step_evaluations
            state["func_evals"] += step_evaluations

            if (
                iteration == max_iter
                or evaluations >= max_eval
                or converged
                or d.mul(t).abs().max() <= tolerance_change
                or abs(loss - prev_loss) < tolerance_change
            ):
                break

        state.update(
            {
                "d": d,
                "t": t,
                "old_dirs": old_dirs,
                "old_stps": old_stps,
                "ro": ro,
                "H_diag": h_diag,
                "prev_flat_grad": prev_flat_grad,
                "prev_loss": prev_loss,
            }
        )
        return first_loss

    # ------------------------------------------------------------------ state dicts

    def _conform_state(self) -> None:
        """Nothing to convert: L-BFGS has no storage options, and its state (counters,
        lists, flat vectors of all the parameters) is not shaped like a parameter."""

    def _check_state_entry(
        self, param: Tensor, group: dict[str, Any], label: str, entry: Any
    ) -> None:
        """L-BFGS keeps torch's layout: counters, the last direction and step, the
        curvature pairs and the previous gradient, all with the first parameter."""
        where = f"LBFGS.load_state_dict: state of {label}"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} has type {type(entry).__name__}; expected a dict")
        if entry and param is not self._params[0]:
            raise ValueError(f"{where}: only the first parameter keeps L-BFGS state")
        unknown = set(entry) - _STATE_KEYS
        if unknown:
            raise ValueError(
                f"{where}: unknown {sorted(unknown)} keys (expected some of {sorted(_STATE_KEYS)})"
            )
        size = sum(2 * p.numel() if p.is_complex() else p.numel() for p in self._params)
        for key in ("d", "prev_flat_grad"):
            value = entry.get(key)
            if value is not None and (not torch.is_tensor(value) or value.numel() != size):
                raise ValueError(
                    f"{where}: {key} must be a flat tensor of the {size} "
                    f"parameter entries, got {_describe(value)}"
                )
        given = [entry.get(key) for key in ("old_dirs", "old_stps", "ro")]
        if any(value is not None and not isinstance(value, list) for value in given):
            raise ValueError(f"{where}: old_dirs, old_stps and ro must be lists")
        pairs: list[list[Any]] = [value for value in given if isinstance(value, list)]
        if 0 < len(pairs) < 3:
            raise ValueError(
                f"{where}: old_dirs, old_stps and ro come together; the state "
                "dict has only some of them"
            )
        if pairs:
            if len({len(value) for value in pairs}) != 1:
                raise ValueError(
                    f"{where}: old_dirs, old_stps and ro have different lengths "
                    f"{[len(value) for value in pairs]}"
                )
            for vector in pairs[0] + pairs[1]:
                if not torch.is_tensor(vector) or vector.numel() != size:
                    raise ValueError(
                        f"{where}: a curvature pair holds {_describe(vector)}; "
                        f"expected flat tensors of {size} entries"
                    )


def _describe(value: Any) -> str:
    if torch.is_tensor(value):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


__all__ = ["LBFGS", "cubic_interpolate", "lbfgs_direction", "strong_wolfe"]
