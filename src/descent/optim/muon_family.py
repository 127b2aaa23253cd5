r"""Muon and its variants (NorMuon, Polar Express), and the Muon + AdamW optimizer.

Muon (Jordan et al. 2024) replaces the momentum of a weight matrix by the nearest
semi-orthogonal matrix, computed with a few Newton-Schulz iterations
(:func:`newton_schulz`). It is meant for the *hidden* matrices of a network; the
embeddings, the output head and 1-D parameters (biases, norm gains) train better with
AdamW. :class:`MuonAdamW` is one optimizer with one state dict that routes each
parameter to one of the two rules, says how (:meth:`MuonAdamW.describe`) and takes
overrides by name or by param group.

References: Jordan, Jin, Boza, You, Cesista, Newhouse & Bernstein, "Muon: An optimizer
for hidden layers in neural networks", 2024 (kellerjordan.github.io/posts/muon; the
``muon-optimizer`` package); Liu et al., "Muon is Scalable for LLM Training", 2025
(``adjust_lr_fn="match_rms_adamw"``); Li, Liu, Liang, Chen & Zhao, "NorMuon: Making
Muon more efficient and scalable", 2025 (``normuon=True``); Amsel, Persson, Musco &
Gower, "The Polar Express: Optimal Matrix Sign Methods and Their Application to the Muon
Algorithm", 2025 (``ns_coefficients="polar_express"``).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from .. import engine
from ..engine import is_dtensor, quantize
from ..interop.arrays import refresh_gradients
from . import _cautious
from . import _validate as check
from ._params import as_param_groups, param_label, split_group
from ._spec import State, hyper
from .adam import AdamW
from .base import Optimizer, Params

JORDAN = (3.4445, -4.7750, 2.0315)
"""Keller Jordan's quintic coefficients (a, b, c): fast, not convergent (torch's default)."""

_POLAR_EXPRESS_RAW = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
POLAR_EXPRESS = tuple(
    (a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in _POLAR_EXPRESS_RAW[:-1]
) + (_POLAR_EXPRESS_RAW[-1],)
"""The Polar Express schedule of degree 5 (Amsel et al. 2025, Algorithm 1): one (a, b, c)
per iteration, the last repeated, with the paper's safety factor 1.01 on all but the last."""

_POLAR_EXPRESS_SAFETY = 1.01

ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


def newton_schulz(
    matrix: Tensor,
    *,
    steps: int = 5,
    coefficients: Sequence[float] | Sequence[Sequence[float]] = JORDAN,
    eps: float = 1e-7,
    dtype: torch.dtype | None = torch.bfloat16,
    safety: float = 1.0,
) -> Tensor:
    r"""The orthogonalisation of Muon: ``steps`` odd quintic iterations on ``matrix``.

    .. math::

        X_0 &= G / \max(s\lVert G\rVert_F, \epsilon) \\
        X_{k+1} &= a_k X_k + (b_k A_k + c_k A_k^2) X_k, \qquad A_k = X_k X_k^\top

    applied to the singular values of :math:`G = U\Sigma V^\top` this is
    :math:`p_k(\sigma) = a_k\sigma + b_k\sigma^3 + c_k\sigma^5`, driving them toward 1,
    so :math:`X \approx UV^\top`. ``coefficients`` is one triple (used at every
    iteration: Jordan's by default) or one per iteration (the last repeated: Polar
    Express); :math:`s` = ``safety``. A tall matrix is transposed first, so
    :math:`A` is the smaller Gram matrix. Computed in ``dtype`` (bfloat16, as Jordan's
    and torch's Muon do; None: the input's dtype), returned in it; the input is not
    modified.
    """
    if matrix.ndim != 2:
        raise ValueError(
            f"newton_schulz: matrix has shape {tuple(matrix.shape)}; expected a "
            "2-D tensor (flatten the trailing dimensions first)"
        )
    schedule = _schedule(coefficients)
    x = matrix.to(dtype) if dtype is not None else matrix
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / (x.norm() * safety).clamp(min=eps)
    for index in range(steps):
        a, b, c = schedule[min(index, len(schedule) - 1)]
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def _schedule(coefficients: Any) -> list[tuple[float, float, float]]:
    if isinstance(coefficients, str):
        return list(POLAR_EXPRESS)
    if len(coefficients) == 3 and all(isinstance(v, int | float) for v in coefficients):
        return [tuple(coefficients)]
    return [tuple(triple) for triple in coefficients]


def _check_coefficients(owner: str, name: str, value: Any) -> Any:
    if value == "polar_express":
        return value

    def triple(item: Any) -> bool:
        return (
            isinstance(item, tuple | list)
            and len(item) == 3
            and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in item
            )
        )

    if isinstance(value, tuple | list) and (
        triple(value) or (len(value) > 0 and all(triple(item) for item in value))
    ):
        return tuple(tuple(item) for item in value) if not triple(value) else tuple(value)
    raise ValueError(
        f"{owner}: {name}={value!r} is invalid; expected a triple (a, b, c), a "
        "sequence of triples (one per iteration) or 'polar_express'"
    )


def _check_steps(owner: str, name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 100:
        raise ValueError(f"{owner}: {name}={value!r} is invalid; expected an integer from 1 to 99")
    return value


def _check_adjust(owner: str, name: str, value: Any) -> Any:
    if value not in ADJUST_LR_FNS:
        raise ValueError(
            f"{owner}: {name}={value!r} is invalid; expected one of "
            f"{', '.join(map(repr, ADJUST_LR_FNS))}"
        )
    return value


def _check_dtype(owner: str, name: str, value: Any) -> Any:
    if value is not None and not (isinstance(value, torch.dtype) and value.is_floating_point):
        raise ValueError(
            f"{owner}: {name}={value!r} is invalid; expected a floating-point "
            "torch.dtype, or None for the parameter's dtype"
        )
    return value


def adjusted_lr(lr: Any, rows: int, cols: int, adjust_lr_fn: str | None) -> Any:
    r"""torch's ``adjust_lr_fn``: ``"original"`` (None) scales by
    :math:`\sqrt{\max(1, rows/cols)}` (Jordan's), ``"match_rms_adamw"`` by
    :math:`0.2\sqrt{\max(rows, cols)}` (Moonlight's, to reuse AdamW's learning rate)."""
    if adjust_lr_fn == "match_rms_adamw":
        return lr * (0.2 * math.sqrt(max(rows, cols)))
    return lr * math.sqrt(max(1, rows / cols))


def _row_statistics(param: Tensor, group: Mapping[str, Any]) -> Tensor:
    return param.new_zeros(_rows(param, group))


def _rows(param: Tensor, group: Mapping[str, Any]) -> tuple[int, int]:
    return (param.shape[0], 1)


def ortho_muon(
    param: Tensor,
    grad: Tensor,
    *,
    momentum_buffer: Tensor,
    row_second_moment: Tensor | None,
    lr: Any,
    weight_decay: float,
    momentum: float,
    nesterov: bool,
    ns_coefficients: Any,
    eps: float,
    ns_steps: int,
    adjust_lr_fn: str | None,
    normuon: bool,
    beta2: float,
    normuon_eps: float,
    ns_dtype: torch.dtype | None,
    maximize: bool,
) -> None:
    r"""One Muon step on one matrix (more dimensions: flattened to ``(shape[0], -1)``).

    .. math::

        B &\leftarrow \mu B + (1-\mu) g, \qquad
        U = (1-\mu) g + \mu B \text{ (Nesterov) or } B, \qquad
        O = \mathrm{NS}(U) \\
        \theta &\leftarrow \theta(1 - \eta\lambda) - \eta_{adj}\, O

    NorMuon (``normuon``) normalises the rows of :math:`O` by their second moment and
    rescales to the RMS of AdamW's updates:

    .. math::

        v &\leftarrow \beta_2 v + (1-\beta_2)\,\operatorname{mean}_{cols}(O \odot O), \qquad
        \hat O = O / (\sqrt v + \epsilon_N), \qquad
        \theta \leftarrow \theta(1 - \eta\lambda)
            - \frac{0.2\,\eta\sqrt{mn}}{\lVert\hat O\rVert_F}\,\hat O

    A sharded parameter (a DTensor, under FSDP2) is gathered for the iteration, and
    each rank keeps its shard of the result.
    """
    if param.ndim < 2:
        raise ValueError(
            f"ortho_muon: the parameter has shape {tuple(param.shape)}; Muon "
            "updates matrices (2 or more dimensions)"
        )
    if maximize:
        grad = -grad
    momentum_buffer.lerp_(grad, 1 - momentum)
    update = grad.lerp(momentum_buffer, momentum) if nesterov else momentum_buffer
    sharded = is_dtensor(update)
    whole = cast(Any, update).full_tensor() if sharded else update
    matrix = whole.flatten(1)  # (shape[0], -1), also when it has no elements
    rows, cols = matrix.shape
    polar = ns_coefficients == "polar_express"
    ortho = newton_schulz(
        matrix,
        steps=ns_steps,
        coefficients=ns_coefficients,
        eps=eps,
        dtype=ns_dtype,
        safety=_POLAR_EXPRESS_SAFETY if polar else 1.0,
    )
    if normuon:
        assert row_second_moment is not None
        ortho = ortho.to(param.dtype)
        row_second_moment.lerp_(ortho.square().mean(dim=-1, keepdim=True), 1 - beta2)
        ortho = ortho.div(row_second_moment.sqrt().add_(normuon_eps))
        ortho = ortho.mul_(0.2 * math.sqrt(rows * cols) / torch.linalg.vector_norm(ortho))
        step_size = lr
    else:
        step_size = adjusted_lr(lr, rows, cols, adjust_lr_fn)
    ortho = ortho.reshape(whole.shape)
    if sharded:
        from torch.distributed.tensor import distribute_tensor

        local: Any = update
        ortho = distribute_tensor(
            ortho.to(whole.dtype), local.device_mesh, local.placements, src_data_rank=None
        )
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    param.add_(ortho, alpha=-step_size)


class OrthoMuon(Optimizer):
    r"""Muon, with its NorMuon and Polar Express variants as options.

    For each weight matrix (a parameter of 2 or more dimensions, flattened to
    ``(shape[0], -1)`` as Jordan's code flattens conv filters):

    .. math::

        B_t &= \mu B_{t-1} + (1-\mu) g_t, \qquad
        O_t = \mathrm{NS}_k\big((1-\mu) g_t + \mu B_t\big) \quad (\text{or } B_t
            \text{ without Nesterov}) \\
        \theta_t &= \theta_{t-1}(1 - \eta\lambda) - \eta\,\alpha(m, n)\, O_t

    :math:`\mathrm{NS}_k` is :func:`newton_schulz` (``ns_steps`` iterations,
    ``ns_coefficients``, in ``ns_dtype``), :math:`\alpha` torch's ``adjust_lr_fn``.
    With the defaults this is ``torch.optim.Muon`` exactly (the same bfloat16
    operations, tested bit for bit); it also accepts tensors of more than 2 dimensions,
    a ``maximize`` flag and:

    * ``ns_coefficients="polar_express"``: the Polar Express schedule (Amsel et al.
      2025, Algorithm 1): one polynomial per iteration and the input normalised by
      :math:`1.01\lVert G\rVert_F`;
    * ``normuon=True``: NorMuon (Li et al. 2025, Algorithm 1): a per-row second moment
      :math:`v` (decay ``beta2``) normalises the rows of :math:`O`, then the step is
      rescaled to :math:`0.2\,\eta\sqrt{mn}/\lVert\hat O\rVert_F` (``adjust_lr_fn``
      must then be None);
    * ``ns_dtype=None``: the iteration in the parameter's dtype (float64 for exact
      tests), instead of bfloat16.

    Muon updates matrices only: 1-D parameters are refused (use :class:`MuonAdamW`).
    A sharded parameter (DTensor, FSDP2) is gathered whole on every rank for the
    iteration (one all-gather per matrix per step), and each rank keeps its shard of
    the result. torch.optim.Muon's defaults are kept (its ``weight_decay=0.1``);
    Jordan's own defaults are ``lr=0.02, weight_decay=0``.

    Example::

        opt = descent.OrthoMuon(hidden_matrices, lr=0.02, ns_coefficients="polar_express")
    """

    lr: float | Tensor = hyper(default=1e-3)
    weight_decay: float = hyper(default=0.1, doc=r"decoupled weight decay :math:`\lambda`")
    momentum: float = hyper(default=0.95, check=check.unit_interval, doc=r"momentum :math:`\mu`")
    nesterov: bool = hyper(default=True, check=check.flag, doc="use Nesterov momentum")
    ns_coefficients: Any = hyper(
        default=JORDAN,
        check=_check_coefficients,
        doc="Newton-Schulz (a, b, c), one triple per iteration, or 'polar_express'",
    )
    eps: float = hyper(
        default=1e-7,
        doc=r"floor :math:`\epsilon` of the norm in the "
        "Newton-Schulz normalisation",
    )
    ns_steps: int = hyper(default=5, check=_check_steps, doc="Newton-Schulz iterations")
    adjust_lr_fn: str | None = hyper(
        default=None,
        check=_check_adjust,
        doc="None/'original' or 'match_rms_adamw' (see :func:`adjusted_lr`)",
    )
    normuon: bool = hyper(
        default=False,
        check=check.flag,
        doc="NorMuon: normalise the rows of the orthogonalised update",
    )
    beta2: float = hyper(
        default=0.95,
        check=check.unit_interval,
        doc=r"decay :math:`\beta_2` of NorMuon's row second moment",
    )
    normuon_eps: float = hyper(
        default=1e-10,
        check=check.non_negative,
        doc=r"term :math:`\epsilon_N` added to NorMuon's row RMS",
    )
    ns_dtype: torch.dtype | None = hyper(
        default=torch.bfloat16,
        check=_check_dtype,
        doc="dtype of the iteration (None: the parameter's)",
    )
    maximize: bool = hyper(default=False, kw_only=True)

    keeps = (
        State("momentum_buffer", doc="momentum B"),
        State(
            "row_second_moment",
            when="normuon",
            init=_row_statistics,
            shape=_rows,
            doc="NorMuon's second moment v of each row, shape (rows, 1)",
        ),
    )
    math = staticmethod(ortho_muon)
    sharded_math = True  # gathers each sharded matrix itself
    elementwise = False
    supports_complex = False
    decoupled_decay = True
    registry_name = "ortho_muon"

    def _check_param_dtype(self, param: Tensor, label: str) -> None:
        super()._check_param_dtype(param, label)
        if param.ndim < 2:
            raise ValueError(
                f"{type(self).__name__}: {label} has shape {tuple(param.shape)}; "
                "Muon updates matrices (2 or more dimensions): give biases, "
                "norm gains and other 1-D parameters to AdamW, or use MuonAdamW"
            )

    @classmethod
    def _check_options(cls, group: Mapping[str, Any], where: str) -> None:
        if group["normuon"] and group["adjust_lr_fn"] is not None:
            raise ValueError(
                f"{cls.__name__}: {where}normuon=True sets its own step scale; "
                f"adjust_lr_fn={group['adjust_lr_fn']!r} must be None with it"
            )


# ---------------------------------------------------------------------- Muon + AdamW


@dataclass(frozen=True)
class Route:
    """Where :class:`MuonAdamW` sends one parameter, and why."""

    name: str
    shape: tuple[int, ...]
    use_muon: bool
    reason: str


_ADAMW_ARGUMENTS = {
    "adamw_lr": "lr",
    "adamw_betas": "betas",
    "adamw_eps": "eps",
    "adamw_weight_decay": "weight_decay",
}
_SHARED = ("maximize", "cautious")
_BOOKKEEPING = ("params", "param_names", "use_muon")


class MuonAdamW(Optimizer):
    r"""Muon for the hidden matrices, AdamW for everything else: one optimizer, one state.

    Each parameter is routed once, when it is added:

    1. a param group with ``"use_muon": True`` or ``False`` sends all its parameters
       there (the convention of Jordan's ``MuonWithAuxAdam``), with the rule's own
       option names (``lr``, ``betas``, ``eps``, ``weight_decay`` for AdamW);
    2. otherwise a name matching a pattern of ``muon=`` or ``adamw=`` (``fnmatch``
       globs on the parameter's name, e.g. ``adamw=["lm_head.*"]``) decides;
    3. otherwise: fewer than 2 dimensions (biases, norm gains) → AdamW; the weight of
       an ``nn.Embedding`` (or, without a module, a name with "embed", "wte", "wpe")
       → AdamW; the output head, taken to be the weight of the last ``nn.Linear``
       registered in the module (or, without a module, the last parameter of 2 or
       more dimensions) → AdamW; every other matrix → Muon (conv filters flattened to
       2-D). ``p.ndim == 2`` alone would send embeddings and the head to Muon.

    :meth:`describe` prints the routing; check it once. Muon groups run
    :class:`OrthoMuon` (all its options, NorMuon and Polar Express included), AdamW
    groups run :class:`~descent.optim.AdamW`, each on descent's engine; the state dict
    is one torch-layout dict whose groups carry ``use_muon``. Defaults are those of
    Jordan's ``MuonWithAuxAdam``.

    **Distributed.** Under DDP nothing changes. Under ``ZeroRedundancyOptimizer`` pass
    the groups of :meth:`param_groups_for` (built from the whole model, so every rank routes
    alike, each group complete with its rule's options): ZeRO copies its groups' options
    onto each rank's optimizer at every step. Sharded parameters (FSDP2 DTensors) are
    gathered whole for Muon's iteration on every rank, each keeping its shard of the
    result (see :class:`OrthoMuon`); AdamW runs on the shards.

    Example::

        opt = descent.MuonAdamW(model, lr=0.02, adamw_lr=3e-4, adamw=["head.*"])
        print(opt.describe())

    Args:
        params: a module (best: its layers tell embeddings and the head apart), its
            ``named_parameters()``, param-group dicts (with or without ``use_muon``) or
            tensors.
        lr: Muon's learning rate :math:`\eta` (default ``0.02``).
        momentum: Muon's momentum :math:`\mu` (default ``0.95``).
        weight_decay: Muon's decoupled weight decay :math:`\lambda` (default ``0.0``).
        nesterov: Nesterov momentum in Muon (default ``True``).
        ns_coefficients: Newton-Schulz (a, b, c), one triple per iteration, or
            ``"polar_express"`` (default Jordan's ``(3.4445, -4.775, 2.0315)``).
        ns_steps: Newton-Schulz iterations (default ``5``).
        eps: floor of the norm in the Newton-Schulz normalisation (default ``1e-07``).
        adjust_lr_fn: None/``"original"`` or ``"match_rms_adamw"`` (default ``None``).
        normuon: NorMuon's row normalisation of Muon's update (default ``False``).
        beta2: decay of NorMuon's row second moment (default ``0.95``).
        normuon_eps: term added to NorMuon's row RMS (default ``1e-10``).
        ns_dtype: dtype of the Newton-Schulz iteration (None: the parameter's; default
            ``torch.bfloat16``).
        adamw_lr: AdamW's learning rate (default ``0.0003``).
        adamw_betas: AdamW's :math:`(\beta_1, \beta_2)` (default ``(0.9, 0.95)``).
        adamw_eps: AdamW's :math:`\epsilon` (default ``1e-10``).
        adamw_weight_decay: AdamW's decoupled weight decay (default ``0.0``).
        muon: name patterns (``fnmatch`` globs) sent to Muon whatever their shape.
        adamw: name patterns sent to AdamW (e.g. ``["lm_head.*"]``).
        maximize: maximize the objective, in both rules (default ``False``).
        cautious: cautious masking in both rules (default ``False``).
    """

    supports_complex = False  # Muon's iteration is real; AdamW groups follow (one check)
    # not a rule itself: each group runs its rule's math (storage options are AdamW's, per
    # group, and the engine path each rule's own)
    elementwise = False
    # the scalar state of both rules (AdamW's step), not derived from keeps (it has none)
    scalar_state = OrthoMuon.scalar_state | AdamW.scalar_state

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 0.02,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        ns_coefficients: Any = JORDAN,
        ns_steps: int = 5,
        eps: float = 1e-7,
        adjust_lr_fn: str | None = None,
        normuon: bool = False,
        beta2: float = 0.95,
        normuon_eps: float = 1e-10,
        ns_dtype: torch.dtype | None = torch.bfloat16,
        adamw_lr: float | Tensor = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-10,
        adamw_weight_decay: float = 0.0,
        *,
        muon: Iterable[str] = (),
        adamw: Iterable[str] = (),
        maximize: bool = False,
        cautious: bool = False,
    ) -> None:
        owner = type(self).__name__
        self._patterns = {
            True: _patterns(owner, "muon", muon),
            False: _patterns(owner, "adamw", adamw),
        }
        given = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=nesterov,
            ns_coefficients=ns_coefficients,
            ns_steps=ns_steps,
            eps=eps,
            adjust_lr_fn=adjust_lr_fn,
            normuon=normuon,
            beta2=beta2,
            normuon_eps=normuon_eps,
            ns_dtype=ns_dtype,
            adamw_lr=adamw_lr,
            adamw_betas=adamw_betas,
            adamw_eps=adamw_eps,
            adamw_weight_decay=adamw_weight_decay,
            maximize=maximize,
            cautious=cautious,
        )
        self._rule_defaults = {
            flag: _options_for(owner, flag, _class_defaults(flag), given, "")
            for flag in (True, False)
        }
        self.routes: list[Route] = []
        self._parts: dict[bool, Optimizer] = {}
        self._modules = _modules_of(params)
        groups = [
            split_group(owner, group, index)
            for index, group in enumerate(as_param_groups(owner, params))
        ]
        self._head = _head_of(self._modules, groups)
        self._embeddings = _embeddings_of(self._modules)
        Optimizer.__init__(self, groups, {})

    # ------------------------------------------------------------------ routing

    @classmethod
    def param_groups_for(
        cls,
        model: nn.Module,
        *,
        muon: Iterable[str] = (),
        adamw: Iterable[str] = (),
        **options: Any,
    ) -> list[dict[str, Any]]:
        """The routed groups of ``model``'s parameters, each with ``use_muon`` and every
        option of its rule (``options``: this class's constructor arguments), as tensors
        without names: what ``ZeroRedundancyOptimizer(groups, optimizer_class=MuonAdamW)``
        needs for every rank to route alike."""
        router = cls(model, muon=muon, adamw=adamw, **options)
        groups = []
        for group in router.param_groups:
            if group["params"]:
                groups.append({key: value for key, value in group.items() if key != "param_names"})
        return groups

    def describe(self) -> str:
        """The routing, one line per parameter: name, shape, rule and why."""
        muon = sum(route.use_muon for route in self.routes)
        lines = [
            f"{type(self).__name__}: {len(self.routes)} parameters, {muon} to Muon, "
            f"{len(self.routes) - muon} to AdamW"
        ]
        width = max([len(route.name) for route in self.routes] + [9])
        lines.append(f"  {'parameter':<{width}}  {'shape':<16} {'rule':<6} why")
        for route in self.routes:
            rule = "muon" if route.use_muon else "adamw"
            lines.append(f"  {route.name:<{width}}  {route.shape!s:<16} {rule:<6} {route.reason}")
        return "\n".join(lines)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group: with ``use_muon`` it goes to that rule whole; without, its
        parameters are routed (see the class) and it may become two groups, one per
        rule, both taking its options (constructor names: ``lr`` for Muon,
        ``adamw_lr`` for AdamW, ...). On error nothing is added."""
        groups, routes = len(self.param_groups), len(self.routes)
        try:
            self._add_group(param_group)
        except Exception:
            del self.param_groups[groups:], self.routes[routes:]
            raise

    def _add_group(self, param_group: dict[str, Any]) -> None:
        owner = type(self).__name__
        index = len(self.param_groups)
        group = split_group(owner, param_group, index)
        if "use_muon" in group:
            check.flag(owner, f"param_groups[{index}]['use_muon']", group["use_muon"])
            flag = group["use_muon"]
            reason = f"group use_muon={flag}"
            for i, param in enumerate(group["params"]):
                if flag and param.ndim < 2:
                    raise ValueError(
                        f"{owner}: {param_label(group, index, i)} has shape "
                        f"{tuple(param.shape)}; Muon updates matrices (the group "
                        "has use_muon=True)"
                    )
                self._record(group, index, i, param, flag, reason)
            self._add_routed(flag, group, _rule_defaults_for(self._rule_defaults[flag], group))
            return
        options = {key: value for key, value in group.items() if key not in _BOOKKEEPING}
        unknown = sorted(set(options) - set(self._given(True)) - set(self._given(False)))
        if unknown:
            raise ValueError(
                f"{owner}: param_groups[{index}] has options {unknown}, which are "
                "not arguments of MuonAdamW (a group without 'use_muon' takes "
                "the constructor's names: lr, momentum, ..., adamw_lr, ...)"
            )
        parts: dict[bool, dict[str, Any]] = {True: {"params": []}, False: {"params": []}}
        names = group.get("param_names")
        if names is not None:
            parts[True]["param_names"], parts[False]["param_names"] = [], []
        for i, param in enumerate(group["params"]):
            name = names[i] if names is not None else f"param_groups[{index}][{i}]"
            flag, reason = self._route(name, param)
            self._record(group, index, i, param, flag, reason)
            parts[flag]["params"].append(param)
            if names is not None:
                parts[flag]["param_names"].append(name)
        chosen = {
            flag: _options_for(
                owner,
                flag,
                self._rule_defaults[flag],
                {**self._given(flag), **options},
                f"param_groups[{index}]: ",
            )
            for flag in (True, False)
        }
        for flag in (True, False):
            if parts[flag]["params"] or (not group["params"] and flag):
                self._add_routed(flag, parts[flag], chosen[flag])

    def _given(self, flag: bool) -> dict[str, Any]:
        defaults = self._rule_defaults[flag]
        if flag:
            return {key: defaults[key] for key in OrthoMuon.hyperparameters}
        return {
            **{arg: defaults[name] for arg, name in _ADAMW_ARGUMENTS.items()},
            **{name: defaults[name] for name in _SHARED},
        }

    def _route(self, name: str, param: Tensor) -> tuple[bool, str]:
        owner = type(self).__name__
        matches = {
            flag: next((p for p in self._patterns[flag] if fnmatch.fnmatchcase(name, p)), None)
            for flag in (True, False)
        }
        if matches[True] is not None and matches[False] is not None:
            raise ValueError(
                f"{owner}: parameter {name!r} matches muon={matches[True]!r} and "
                f"adamw={matches[False]!r}; name each parameter in one list"
            )
        if matches[True] is not None:
            if param.ndim < 2:
                raise ValueError(
                    f"{owner}: parameter {name!r} matches muon={matches[True]!r} "
                    f"but has shape {tuple(param.shape)}; Muon updates matrices"
                )
            return True, f"named by muon={matches[True]!r}"
        if matches[False] is not None:
            return False, f"named by adamw={matches[False]!r}"
        if param.ndim < 2:
            return False, "fewer than 2 dimensions (bias, norm gain)"
        if id(param) in self._embeddings or (not self._modules and _embedding_name(name)):
            return False, "embedding"
        if self._head is not None and param is self._head[0]:
            return False, f"output head ({self._head[1]})"
        extra = " (flattened to 2-D)" if param.ndim > 2 else ""
        return True, "hidden matrix" + extra

    def _record(
        self, group: Mapping[str, Any], index: int, i: int, param: Tensor, flag: bool, reason: str
    ) -> None:
        names = group.get("param_names")
        name = names[i] if names is not None else f"param_groups[{index}][{i}]"
        self.routes.append(Route(name, tuple(param.shape), flag, reason))

    def _add_routed(self, flag: bool, group: dict[str, Any], options: dict[str, Any]) -> None:
        group = {**options, **group, "use_muon": flag}
        Optimizer.add_param_group(self, group)

    # ------------------------------------------------------------------ the two rules

    def _rule(self, group: Mapping[str, Any]) -> type[Optimizer]:
        return OrthoMuon if group["use_muon"] else AdamW

    def _part(self, flag: bool) -> Optimizer:
        """The rule's optimizer over this optimizer's groups of that rule (sharing the
        state): an instance of the rule's class that the engine steps."""
        part = self._parts.get(flag)
        if part is None:
            cls = OrthoMuon if flag else AdamW
            part = object.__new__(cls)
            part.defaults = self._rule_defaults[flag]
            self._parts[flag] = part
        part.state = self.state  # load_state_dict makes a new one
        part.param_groups = [group for group in self.param_groups if group["use_muon"] is flag]
        return part

    def _check_hyperparameters(self, group: Mapping[str, Any], where: str) -> dict[str, Any]:
        owner = type(self).__name__
        if not group:  # the defaults: each rule has its own (self._rule_defaults)
            return {}
        if "use_muon" not in group:
            raise ValueError(f"{owner}: {where}missing 'use_muon' (True: Muon, False: AdamW)")
        check.flag(owner, f"{where}use_muon", group["use_muon"])
        rule = self._rule(group)
        checked = {"use_muon": group["use_muon"]}
        for name, spec in rule.hyperparameters.items():
            if name not in group:
                raise ValueError(
                    f"{owner}: {where}missing hyperparameter {name!r} of the "
                    f"{'Muon' if group['use_muon'] else 'AdamW'} rule"
                )
            checked[name] = spec.validate(owner, where, group[name])
        rule._check_options({**group, **checked}, where)
        _cautious.check_options(rule, {**group, **checked}, where)
        return checked

    def _state_keys(self, group: Mapping[str, Any], param: Tensor) -> frozenset[str]:
        return self._part(group["use_muon"])._state_keys(group, param)

    def _conform_state(self) -> None:
        """Each rule stores the state of its groups as their options say (the storage
        options and the scalar state are the rule's, not this router's)."""
        for flag in (True, False):
            part = self._part(flag)
            if part.param_groups:
                quantize.conform_all(part)

    def _check_state_entry(
        self, param: Tensor, group: dict[str, Any], label: str, entry: Any
    ) -> None:
        self._part(bool(group.get("use_muon")))._check_state_entry(param, group, label, entry)

    def _with_default_flags(self, group: Mapping[str, Any]) -> dict[str, Any]:
        if "use_muon" not in group or not isinstance(group["use_muon"], bool):
            return dict(group)
        return self._part(group["use_muon"])._with_default_flags(group)

    def describe_param(self, group_index: int, index: int) -> str:
        label = param_label(self.param_groups[group_index], group_index, index)
        return f"{type(self).__name__}: {label}"

    def _check_state_dict(self, state_dict: Any) -> None:
        super()._check_state_dict(state_dict)
        owner = type(self).__name__
        for index, (saved, group) in enumerate(
            zip(state_dict["param_groups"], self.param_groups, strict=True)
        ):
            if saved["use_muon"] is not group["use_muon"]:
                rule = {True: "Muon", False: "AdamW"}
                raise ValueError(
                    f"{owner}.load_state_dict: param_groups[{index}] goes to "
                    f"{rule[saved['use_muon']]} in the state dict and to "
                    f"{rule[group['use_muon']]} here; route the parameters as "
                    "the saved optimizer did"
                )

    def __getstate__(self) -> dict[str, Any]:
        kept = ("_patterns", "routes", "_rule_defaults", "_modules", "_head", "_embeddings")
        return {**super().__getstate__(), **{key: self.__dict__[key] for key in kept}, "_parts": {}}

    @torch.no_grad()
    def step(self, closure: Any = None, *, grads: Mapping[str, Any] | None = None) -> Any:
        """Step the Muon groups with Muon and the AdamW groups with AdamW."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        refresh_gradients(self, grads)
        mode = engine.mode_of(self)
        for flag in (True, False):
            part = self._part(flag)
            if part.param_groups:
                engine.set_mode(part, mode)
                engine.step(cast(Any, part))
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for part in self._parts.values():
            engine.forget(part)


def _patterns(owner: str, name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(
            f"{owner}: {name}={value!r} is invalid; expected a list of parameter "
            "name patterns, e.g. ['lm_head.*']"
        )
    patterns = tuple(value)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"{owner}: {name} holds {pattern!r}; expected name patterns (strings)")
    return patterns


def _rule_options(owner: str, flag: bool, given: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The options of one rule, from the router's argument names, each checked."""
    rule = OrthoMuon if flag else AdamW
    options: dict[str, Any] = {}
    if flag:
        for name, spec in rule.hyperparameters.items():
            if name in given:
                options[name] = spec.validate(owner, where, given[name])
    else:
        for argument, name in _ADAMW_ARGUMENTS.items():
            if argument in given:
                spec = rule.hyperparameters[name]
                options[name] = (
                    spec.check(owner, f"{where}{argument}", given[argument])
                    if spec.check
                    else given[argument]
                )
        for name in _SHARED:
            if name in given:
                options[name] = rule.hyperparameters[name].validate(owner, where, given[name])
    return options


def _options_for(
    owner: str, flag: bool, defaults: Mapping[str, Any], given: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """Every option of one rule: ``defaults`` updated from ``given`` (the router's argument
    names), each checked, and checked together."""
    rule = OrthoMuon if flag else AdamW
    options = {**defaults, **_rule_options(owner, flag, given, where)}
    try:
        rule._check_options(options, where)
        _cautious.check_options(rule, options, where)
    except ValueError as error:  # name the router, not the rule, as the owner
        raise ValueError(str(error).replace(f"{rule.__name__}: ", f"{owner}: ", 1)) from None
    return options


def _rule_defaults_for(defaults: Mapping[str, Any], group: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in defaults.items() if key not in group}


def _class_defaults(flag: bool) -> dict[str, Any]:
    rule = OrthoMuon if flag else AdamW
    return {name: spec.default for name, spec in rule.hyperparameters.items()}


def _modules_of(params: Any) -> list[nn.Module]:
    if isinstance(params, nn.Module):
        return [params]
    if (
        isinstance(params, list | tuple)
        and params
        and all(isinstance(item, nn.Module) for item in params)
    ):
        return list(params)
    return []


def _embeddings_of(modules: list[nn.Module]) -> set[int]:
    return {
        id(param)
        for module in modules
        for child in module.modules()
        if isinstance(child, nn.Embedding | nn.EmbeddingBag)
        for param in child.parameters(recurse=False)
    }


def _embedding_name(name: str) -> bool:
    return any("embed" in part.lower() or part in ("wte", "wpe") for part in name.split("."))


def _head_of(modules: list[nn.Module], groups: list[dict[str, Any]]) -> tuple[Tensor, str] | None:
    """The output head: the last ``nn.Linear``'s weight, or the last matrix given."""
    linears = [
        child for module in modules for child in module.modules() if isinstance(child, nn.Linear)
    ]
    if linears:
        return linears[-1].weight, "last nn.Linear"
    matrices = [
        param
        for group in groups
        if "use_muon" not in group
        for param in group["params"]
        if param.ndim >= 2
    ]
    return (matrices[-1], "last matrix given") if matrices else None


__all__ = [
    "JORDAN",
    "POLAR_EXPRESS",
    "MuonAdamW",
    "OrthoMuon",
    "Route",
    "adjusted_lr",
    "newton_schulz",
    "ortho_muon",
]
