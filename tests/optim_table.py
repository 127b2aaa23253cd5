"""The optimizer table: every descent optimizer, its configurations, its reference, its errors.

Generic tests (``test_optimizers.py``) run over every entry. A reference is either the
matching ``torch.optim`` class or, for algorithms torch does not have, an implementation
written here, independently, from the paper's equations.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import descent


class PaperSignum:
    """signSGD / Signum from Bernstein et al. 2018 (Algorithms 1 and 3), written out.

    m_t = beta * m_{t-1} + (1 - beta) * g_t  (m_t = g_t for signSGD)
    x_{t+1} = x_t - lr * wd * x_t - lr * sign(m_t)
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        maximize: bool = False,
    ) -> None:
        self.param_groups = _reference_groups(
            params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, maximize=maximize)
        )
        self.memory: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = -p.grad if group["maximize"] else p.grad
                beta = group["momentum"]
                if beta > 0:
                    m = self.memory.get(id(p), torch.zeros_like(p))
                    m = beta * m + (1 - beta) * g
                    self.memory[id(p)] = m
                else:
                    m = g
                p -= group["lr"] * group["weight_decay"] * p
                p -= group["lr"] * torch.sign(m)


class PaperLion:
    """Lion from Chen et al. 2023, Algorithm 2, written out.

    c_t = beta1 * m_{t-1} + (1 - beta1) * g_t
    x_t = x_{t-1} - lr * (sign(c_t) + wd * x_{t-1})
    m_t = beta2 * m_{t-1} + (1 - beta2) * g_t
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        maximize: bool = False,
    ) -> None:
        self.param_groups = _reference_groups(
            params, dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize)
        )
        self.memory: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = -p.grad if group["maximize"] else p.grad
                m = self.memory.get(id(p), torch.zeros_like(p))
                c = beta1 * m + (1 - beta1) * g
                p.copy_(p - group["lr"] * (torch.sign(c) + group["weight_decay"] * p))
                self.memory[id(p)] = beta2 * m + (1 - beta2) * g


def _reference_groups(params: Any, defaults: dict[str, Any]) -> list[dict[str, Any]]:
    items = list(params)
    groups = items if isinstance(items[0], dict) else [{"params": items}]
    return [{**defaults, **group, "params": list(group["params"])} for group in groups]


@dataclass
class ErrorInput:
    """Constructor kwargs that must fail, the exception type and a regex its message matches."""

    kwargs: dict[str, Any]
    error: type[Exception]
    match: str


@dataclass
class OptimizerInfo:
    """One optimizer of the table, and what its generic tests must give it.

    ``closure``: its step needs a closure (LBFGS). ``groups``: it takes several param
    groups. ``matrices_only``: it updates 2-D parameters only (Muon), so the generic
    models have no biases. ``sparse_gradients``: it takes sparse gradients only
    (SparseAdam), so the generic tests hand it their gradients in sparse form.
    """

    cls: type[descent.Optimizer]
    reference: Callable[..., Any]
    configs: list[dict[str, Any]]
    error_inputs: list[ErrorInput] = field(default_factory=list)
    torch_counterpart: bool = True
    closure: bool = False
    groups: bool = True
    matrices_only: bool = False
    sparse_gradients: bool = False
    # beyond torch.optim: what a generic test must know of an algorithm
    first_update_step: int = 1  # the step at which parameters first move (ADOPT, SOAP: 2)
    functional: bool = True  # has a form in descent.functional (not Prodigy, MuonAdamW)
    grouped_lrs: bool = True  # groups may have different learning rates (not Prodigy)
    routes_groups: bool = False  # may split a given group in two (MuonAdamW)
    positive_beta1: bool = False  # betas[0] (momentum) must be > 0 (Schedule-Free)
    # functional vmap over an ensemble vs one member at a time (SOAP: eigenvectors of
    # repeated eigenvalues are not unique; batched and single eigh calls pick different ones)
    vmap_tolerance: float = 1e-12
    # parameter dtypes the class refuses with a TypeError (Prodigy: float16, whose range
    # cannot hold its moments)
    refused_dtypes: tuple[torch.dtype, ...] = ()
    reference_label: str = ""  # how bench/parity.py names the reference ("" : derived)

    @property
    def name(self) -> str:
        return self.cls.__name__

    def shape(self, *shape: int) -> tuple[int, ...]:
        """A parameter shape the optimizer takes: ``shape``, as a column for a
        matrices-only optimizer when it is not 2-D."""
        if not self.matrices_only or len(shape) == 2:
            return shape
        return (math.prod(shape), 1)

    def gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """``grad`` in the layout the optimizer takes (sparse for SparseAdam)."""
        return grad.to_sparse() if self.sparse_gradients else grad

    def step(self, optimizer: Any, compute: Callable[[], Any]) -> None:
        """One step: ``compute()`` sets the gradients and returns the loss; it is the
        step's closure for an optimizer that needs one, else called before the step."""
        if self.closure:
            optimizer.step(compute)
        else:
            compute()
            optimizer.step()


def _common_errors(has_betas: bool = True, has_eps: bool = True) -> list[ErrorInput]:
    errors = [
        ErrorInput({"lr": -1.0}, ValueError, r"lr=-1\.0.*>= 0"),
        ErrorInput({"lr": float("nan")}, ValueError, r"lr=nan"),
        ErrorInput({"lr": float("inf")}, ValueError, r"lr=inf"),
        ErrorInput({"lr": "0.1"}, TypeError, r"lr='0\.1'.*str"),
        ErrorInput({"weight_decay": -0.1}, ValueError, r"weight_decay=-0\.1"),
        ErrorInput({"maximize": 1}, TypeError, r"maximize=1.*True or False"),
        ErrorInput({"learning_rate": 0.1}, TypeError, r"learning_rate"),
    ]
    if has_betas:
        errors += [
            ErrorInput(
                {"betas": (1.0, 0.9)}, ValueError, re.escape("betas[0]=1.0") + r".*\[0, 1\)"
            ),
            ErrorInput({"betas": (0.9, -0.1)}, ValueError, re.escape("betas[1]=-0.1")),
            ErrorInput({"betas": 0.9}, TypeError, r"betas=0\.9.*pair"),
        ]
    if has_eps:
        errors.append(ErrorInput({"eps": -1e-8}, ValueError, r"eps=-1e-08"))
    return errors


OPTIMIZERS: list[OptimizerInfo] = [
    OptimizerInfo(
        descent.SGD,
        torch.optim.SGD,
        configs=[
            {"lr": 0.05},
            {"lr": 0.05, "momentum": 0.9},
            {"lr": 0.05, "momentum": 0.9, "dampening": 0.3},
            {"lr": 0.05, "momentum": 0.9, "nesterov": True},
            {"lr": 0.05, "weight_decay": 0.1},
            {"lr": 0.05, "momentum": 0.5, "maximize": True},
            {"lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01, "maximize": True},
        ],
        error_inputs=_common_errors(has_betas=False, has_eps=False)
        + [
            ErrorInput({"nesterov": True}, ValueError, r"nesterov=True needs momentum > 0"),
            ErrorInput(
                {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError, r"dampening == 0"
            ),
            ErrorInput({"momentum": -0.5}, ValueError, r"momentum=-0\.5"),
            ErrorInput({"differentiable": True}, ValueError, r"differentiable=True.*functional"),
        ],
    ),
    OptimizerInfo(
        descent.Adam,
        torch.optim.Adam,
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "amsgrad": True},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "maximize": True},
            {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
            {
                "lr": 5e-3,
                "betas": (0.8, 0.95),
                "eps": 1e-6,
                "amsgrad": True,
                "weight_decay": 0.05,
                "maximize": True,
            },
        ],
        error_inputs=_common_errors()
        + [
            ErrorInput({"capturable": True}, ValueError, r"capturable=True is not supported"),
            ErrorInput({"amsgrad": "yes"}, TypeError, r"amsgrad='yes'"),
        ],
    ),
    OptimizerInfo(
        descent.AdamW,
        torch.optim.AdamW,
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "amsgrad": True},
            {"lr": 1e-2, "weight_decay": 0.0},
            {"lr": 1e-2, "weight_decay": 0.3, "maximize": True, "betas": (0.5, 0.9)},
        ],
        error_inputs=_common_errors(),
    ),
    OptimizerInfo(
        descent.RMSprop,
        torch.optim.RMSprop,
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "centered": True},
            {"lr": 1e-2, "momentum": 0.9},
            {"lr": 1e-2, "momentum": 0.9, "centered": True},
            {"lr": 1e-2, "weight_decay": 0.1, "alpha": 0.9},
            {"lr": 1e-2, "maximize": True, "eps": 1e-4},
        ],
        error_inputs=_common_errors(has_betas=False)
        + [
            ErrorInput({"alpha": -0.9}, ValueError, r"alpha=-0\.9"),
            ErrorInput({"momentum": float("nan")}, ValueError, r"momentum=nan"),
        ],
    ),
    OptimizerInfo(
        descent.Adagrad,
        torch.optim.Adagrad,
        configs=[
            {"lr": 5e-2},
            {"lr": 5e-2, "lr_decay": 0.05},
            {"lr": 5e-2, "initial_accumulator_value": 0.1},
            {"lr": 5e-2, "weight_decay": 0.1},
            {"lr": 5e-2, "maximize": True, "eps": 1e-6},
        ],
        error_inputs=_common_errors(has_betas=False)
        + [
            ErrorInput({"lr_decay": -1.0}, ValueError, r"lr_decay=-1\.0"),
            ErrorInput(
                {"initial_accumulator_value": -0.1}, ValueError, r"initial_accumulator_value=-0\.1"
            ),
        ],
    ),
    OptimizerInfo(
        descent.NAdam,
        torch.optim.NAdam,
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
            {"lr": 1e-2, "momentum_decay": 0.01, "betas": (0.8, 0.99)},
            {"lr": 1e-2, "maximize": True},
        ],
        error_inputs=_common_errors()
        + [
            ErrorInput({"momentum_decay": -1e-3}, ValueError, r"momentum_decay=-0\.001"),
        ],
    ),
    OptimizerInfo(
        descent.RAdam,
        torch.optim.RAdam,
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
            {"lr": 1e-2, "betas": (0.9, 0.99), "maximize": True},
        ],
        error_inputs=_common_errors(),
    ),
    OptimizerInfo(
        descent.Adamax,
        torch.optim.Adamax,
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "betas": (0.8, 0.99), "maximize": True},
        ],
        error_inputs=_common_errors(),
    ),
    OptimizerInfo(
        descent.SignSGD,
        PaperSignum,
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "momentum": 0.9},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "momentum": 0.5, "maximize": True},
        ],
        error_inputs=_common_errors(has_betas=False, has_eps=False)
        + [
            ErrorInput({"momentum": 1.0}, ValueError, r"momentum=1\.0.*\[0, 1\)"),
        ],
        torch_counterpart=False,
    ),
    OptimizerInfo(
        descent.Lion,
        PaperLion,
        configs=[
            {"lr": 1e-3},
            {"lr": 1e-3, "weight_decay": 0.5},
            {"lr": 1e-3, "betas": (0.95, 0.98), "maximize": True},
        ],
        error_inputs=_common_errors(has_eps=False),
        torch_counterpart=False,
    ),
    # ---- torch.optim's other algorithms
    # Configurations combining the options of torch's own test data (optim_db in
    # torch.testing._internal.common_optimizers); every one of optim_db's is also run
    # against torch in tests/test_torch_optim_db.py.
    OptimizerInfo(
        descent.Adadelta,
        torch.optim.Adadelta,
        configs=[
            {"lr": 1.0},
            {"lr": 0.01, "weight_decay": 0.1, "maximize": True},
            {"lr": 1.0, "rho": 0.95, "weight_decay": 0.9},
        ],
        error_inputs=_common_errors(has_betas=False)
        + [
            ErrorInput({"rho": 1.1}, ValueError, r"rho=1\.1.*\[0, 1\]"),
            ErrorInput({"capturable": True}, ValueError, r"capturable=True is not supported"),
        ],
    ),
    OptimizerInfo(
        descent.Adafactor,
        torch.optim.Adafactor,
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "weight_decay": 0.1, "maximize": True, "d": 1.5},
            {"lr": 5e-3, "eps": (1e-30, 1e-3), "beta2_decay": -1.0},
        ],
        error_inputs=_common_errors(has_betas=False, has_eps=False)
        + [
            ErrorInput({"eps": (-1e-30, 1e-3)}, ValueError, r"eps\[0\]=-1e-30"),
            ErrorInput({"eps": (None, -1.0)}, ValueError, r"eps\[1\]=-1\.0"),
            ErrorInput({"eps": 1e-3}, TypeError, r"eps=0\.001.*pair"),
            ErrorInput({"d": 0.0}, ValueError, r"d=0\.0.*>= 1\.0"),
            ErrorInput({"beta2_decay": 0.8}, ValueError, r"beta2_decay=0\.8.*<= 0"),
        ],
    ),
    OptimizerInfo(
        descent.ASGD,
        torch.optim.ASGD,
        configs=[
            {"lr": 1e-2},
            {"lr": 0.02, "lambd": 0.1, "t0": 10},
            {"lr": 1e-2, "weight_decay": 0.1, "maximize": True, "t0": 5},
        ],
        error_inputs=_common_errors(has_betas=False, has_eps=False)
        + [
            ErrorInput({"lambd": -1.0}, ValueError, r"lambd=-1\.0"),
            ErrorInput({"t0": float("nan")}, ValueError, r"t0=nan"),
        ],
    ),
    OptimizerInfo(
        descent.LBFGS,
        torch.optim.LBFGS,
        configs=[
            {"lr": 1, "max_iter": 5},
            {"lr": 1, "max_iter": 5, "line_search_fn": "strong_wolfe"},
            {"lr": 0.5, "history_size": 3, "max_iter": 7, "line_search_fn": "strong_wolfe"},
        ],
        error_inputs=[
            e
            for e in _common_errors(has_betas=False, has_eps=False)
            if "weight_decay" not in e.kwargs and "maximize" not in e.kwargs
        ]
        + [
            ErrorInput(
                {"line_search_fn": "armijo"},
                ValueError,
                r"line_search_fn='armijo' is not supported",
            ),
            ErrorInput({"max_iter": 0}, ValueError, r"max_iter=0.*>= 1"),
            ErrorInput({"history_size": 2.5}, TypeError, r"history_size=2\.5.*int"),
        ],
        closure=True,
        groups=False,
    ),
    OptimizerInfo(
        descent.Muon,
        torch.optim.Muon,
        configs=[
            {"lr": 0.01, "momentum": 0.8, "ns_steps": 6, "ns_coefficients": (3.4, -4.7, 2.0)},
            {"lr": 1e-2, "nesterov": False, "adjust_lr_fn": "match_rms_adamw"},
        ],
        error_inputs=[
            e for e in _common_errors(has_betas=False, has_eps=False) if "maximize" not in e.kwargs
        ]
        + [
            ErrorInput(
                {"adjust_lr_fn": "arbitrary"},
                ValueError,
                r"adjust_lr_fn='arbitrary' is not supported",
            ),
            ErrorInput({"ns_steps": 100}, ValueError, r"ns_steps=100.*< 100"),
            ErrorInput({"ns_coefficients": (1.0, 2.0)}, TypeError, r"three numbers"),
        ],
        matrices_only=True,
    ),
    OptimizerInfo(
        descent.Rprop,
        torch.optim.Rprop,
        configs=[
            {"lr": 1e-2},
            {"lr": 2e-4, "etas": (0.5, 1.5)},
            {"lr": 1e-2, "step_sizes": (2e-6, 100), "maximize": True},
        ],
        error_inputs=[
            e
            for e in _common_errors(has_betas=False, has_eps=False)
            if "weight_decay" not in e.kwargs
        ]
        + [
            ErrorInput({"etas": (1.0, 0.5)}, ValueError, r"0 < eta_minus < 1 < eta_plus"),
            ErrorInput({"step_sizes": (1.0, 0.5)}, ValueError, r"minimum <= maximum"),
        ],
    ),
    OptimizerInfo(
        descent.SparseAdam,
        torch.optim.SparseAdam,
        configs=[
            {"lr": 1e-3},
            {"lr": 4e-2, "betas": (0.8, 0.99), "eps": 1e-6, "maximize": True},
        ],
        error_inputs=[
            e
            for e in _common_errors(has_eps=False)
            if "weight_decay" not in e.kwargs and e.kwargs.get("lr") != -1.0
        ]
        + [
            ErrorInput({"lr": -1.0}, ValueError, r"lr=-1\.0.*> 0"),
            ErrorInput({"lr": 0.0}, ValueError, r"lr=0\.0.*> 0"),
            ErrorInput({"eps": 0.0}, ValueError, r"eps=0\.0.*> 0"),
        ],
        sparse_gradients=True,
    ),
]

BY_NAME = {info.name: info for info in OPTIMIZERS}


def config_cases() -> list[tuple[OptimizerInfo, dict[str, Any]]]:
    """Every (optimizer, configuration) pair, for parametrised tests."""
    return [(info, config) for info in OPTIMIZERS for config in info.configs]


def case_id(case: Any) -> str:
    if isinstance(case, OptimizerInfo):
        return case.name
    if isinstance(case, dict):
        return ",".join(f"{k}={v}" for k, v in case.items()) or "defaults"
    return str(case)


# ---- beyond torch.optim
#
# References: the algorithms' own packages where they install (test-only dependencies, in
# the `test` extra of pyproject.toml), through the adaptors below; otherwise the paper's
# equations written out here. tests/test_beyond_references.py compares with the packages
# where they differ from the paper, with the tolerance and its reason.

import contextlib  # noqa: E402
import io  # noqa: E402

import adopt as torch_adopt  # noqa: E402
import pytorch_optimizer  # noqa: E402
import schedulefree  # noqa: E402


class PerParameter:
    """A reference optimizer run separately on each parameter, stepped only when that
    parameter has a gradient: descent's per-parameter step counts, for packages that
    count steps per param group (their results are the same when every parameter has a
    gradient at every step)."""

    def __init__(self, make: Callable[..., Any], params: Any, **options: Any) -> None:
        self.optimizers = []
        for group in _reference_groups(params, {}):
            extra = {key: value for key, value in group.items() if key != "params"}
            for param in group["params"]:
                self.optimizers.append(make([{**extra, "params": [param]}], **options))

    def step(self) -> None:
        for optimizer in self.optimizers:
            if optimizer.param_groups[0]["params"][0].grad is not None:
                optimizer.step()


def _train_mode(cls: type) -> Callable[..., Any]:
    """A schedulefree optimizer, switched to train mode as the package asks (quietly)."""

    def make(params: Any, **options: Any) -> Any:
        optimizer = cls(params, **options)
        with contextlib.redirect_stdout(io.StringIO()):
            optimizer.train()
        return optimizer

    return make


def ScheduleFreeReference(cls: type) -> Callable[..., Any]:
    def make(params: Any, **options: Any) -> PerParameter:
        return PerParameter(_train_mode(cls), params, **options)

    return make


def ADOPTReference(
    params: Any,
    decoupled_weight_decay: bool = False,
    clip_exponent: float | None = 0.25,
    **options: Any,
) -> Any:
    """torch-adopt's ADOPT, with descent's names for its options."""
    clip = None if clip_exponent is None else (lambda step: step**clip_exponent)
    return torch_adopt.ADOPT(params, decouple=decoupled_weight_decay, clip_lambda=clip, **options)


def AdEMAMixReference(
    params: Any, t_alpha: float | None = None, t_beta3: float | None = None, **options: Any
) -> PerParameter:
    """pytorch-optimizer's AdEMAMix with decoupled decay (the paper's); one warm-up length."""
    assert t_alpha == t_beta3, "pytorch-optimizer has one warm-up for alpha and beta3"
    return PerParameter(
        pytorch_optimizer.AdEMAMix, params, t_alpha_beta3=t_alpha, weight_decouple=True, **options
    )


def StableAdamWReference(params: Any, eps: float = 1e-6, **options: Any) -> PerParameter:
    """pytorch-optimizer's StableAdamW without Kahan summation (a low-precision option),
    with the paper's eps (its own default is 1e-8)."""
    return PerParameter(pytorch_optimizer.StableAdamW, params, kahan_sum=False, eps=eps, **options)


def SOAPReference(params: Any, **options: Any) -> PerParameter:
    return PerParameter(pytorch_optimizer.SOAP, params, **options)


class _PaperOptimizer:
    """Shared plumbing of the paper implementations below: groups, memory, gradients."""

    def __init__(self, params: Any, **defaults: Any) -> None:
        self.param_groups = _reference_groups(params, defaults)
        self.memory: dict[int, dict[str, Any]] = {}

    def gradients(self, group: dict[str, Any]) -> Any:
        for p in group["params"]:
            if p.grad is not None:
                yield (
                    p,
                    (-p.grad if group["maximize"] else p.grad),
                    self.memory.setdefault(id(p), {"t": 0}),
                )


class PaperLAMB(_PaperOptimizer):
    """LAMB, You et al. 2020, Algorithm 2, written out (phi = identity).

    m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2,  r = m^ / (sqrt(v^) + eps) + wd x
    x = x - lr * ||x|| / ||r|| * r   (ratio 1 when a norm is 0)
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        bias_correction: bool = True,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            bias_correction=bias_correction,
            maximize=maximize,
        )

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p, g, memory in self.gradients(group):
                memory["t"] += 1
                t = memory["t"]
                m = b1 * memory.get("m", torch.zeros_like(p)) + (1 - b1) * g
                v = b2 * memory.get("v", torch.zeros_like(p)) + (1 - b2) * g * g
                memory.update(m=m, v=v)
                if group["bias_correction"]:
                    m, v = m / (1 - b1**t), v / (1 - b2**t)
                r = m / (torch.sqrt(v) + group["eps"]) + group["weight_decay"] * p
                x_norm, r_norm = p.norm().item(), r.norm().item()
                ratio = x_norm / r_norm if x_norm > 0 and r_norm > 0 else 1.0
                p.copy_(p - group["lr"] * ratio * r)


class PaperLARS(_PaperOptimizer):
    """LARS, You, Gitman & Ginsburg 2017, Algorithm 1, written out.

    local = eta * ||w|| / (||g|| + beta ||w||)   (1 when the numerator or denominator is 0)
    v = m v + lr * local * (g + beta w),  w = w - v
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 1e-3,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            maximize=maximize,
        )

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            beta = group["weight_decay"]
            for p, g, memory in self.gradients(group):
                w_norm, g_norm = p.norm().item(), g.norm().item()
                numerator = group["trust_coefficient"] * w_norm
                denominator = g_norm + beta * w_norm
                local = numerator / denominator if numerator > 0 and denominator > 0 else 1.0
                v = group["momentum"] * memory.get("v", torch.zeros_like(p)) + group[
                    "lr"
                ] * local * (g + beta * p)
                memory["v"] = v
                p.copy_(p - v)


class PaperMARS(_PaperOptimizer):
    """MARS-AdamW (approximate), Yuan et al. 2024, Algorithm 2, written out.

    c = g + gamma * b1 / (1 - b1) * (g - g_prev);  c = c / ||c|| if ||c|| > 1
    m = b1 m + (1 - b1) c,  v = b2 v + (1 - b2) c^2
    x = x - lr * (m^ / (sqrt(v^) + eps) + wd x)
    """

    def __init__(
        self,
        params: Any,
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.95, 0.99),
        gamma: float = 0.025,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            gamma=gamma,
            eps=eps,
            weight_decay=weight_decay,
            maximize=maximize,
        )

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p, g, memory in self.gradients(group):
                memory["t"] += 1
                t = memory["t"]
                previous = memory.get("g", torch.zeros_like(p))
                c = g + group["gamma"] * b1 / (1 - b1) * (g - previous)
                if c.norm() > 1:
                    c = c / c.norm()
                m = b1 * memory.get("m", torch.zeros_like(p)) + (1 - b1) * c
                v = b2 * memory.get("v", torch.zeros_like(p)) + (1 - b2) * c * c
                memory.update(m=m, v=v, g=g.clone())
                update = (m / (1 - b1**t)) / (torch.sqrt(v / (1 - b2**t)) + group["eps"])
                p.copy_(p - group["lr"] * (update + group["weight_decay"] * p))


class PaperProdigy(_PaperOptimizer):
    """Prodigy, Mishchenko & Defazio 2024, Algorithm 4 (Adam version), written out, with
    the options of the authors' prodigyopt (weight decay, bias correction, safeguarded
    warm-up, growth rate). One estimate d for all groups:

    m = b1 m + (1 - b1) d g,   v = b2 v + (1 - b2) d^2 g^2
    r = b3 r + lr_k d^2 / d0 <g, x0 - x>,   s = b3 s + lr_k d^2 / d0 g
    d_max = max(d_max, c r / |s|_1),  d = min(d_max, d * growth)  (d = max(d, d^) first)
    x = x - lr_k d m / (sqrt(v) + d eps)    with the d before this step's estimate
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = True,
        use_bias_correction: bool = False,
        safeguard_warmup: bool = False,
        d0: float = 1e-6,
        d_coef: float = 1.0,
        growth_rate: float = math.inf,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decoupled=decoupled_weight_decay,
            maximize=maximize,
        )
        self.beta1, self.beta2 = betas
        self.beta3 = math.sqrt(self.beta2) if beta3 is None else beta3
        self.bias, self.safeguard = use_bias_correction, safeguard_warmup
        self.d = self.d_max = self.d0 = d0
        self.d_coef, self.growth, self.r, self.k = d_coef, growth_rate, 0.0, 0

    @torch.no_grad()
    def step(self) -> None:
        lr = self.param_groups[0]["lr"]
        factor = (
            math.sqrt(1 - self.beta2 ** (self.k + 1)) / (1 - self.beta1 ** (self.k + 1))
            if self.bias
            else 1.0
        )
        lr_k, d = lr * factor, self.d
        self.r *= self.beta3
        norm_s, live = 0.0, []
        for group in self.param_groups:
            for p, g, memory in self.gradients(group):
                if group["weight_decay"] and not group["decoupled"]:
                    g = g + group["weight_decay"] * p
                x0 = memory.setdefault("x0", p.clone())
                scale = d * d / self.d0 * (1.0 if self.safeguard else lr_k)
                self.r += lr_k * d * d / self.d0 * torch.dot(g.flatten(), (x0 - p).flatten()).item()
                memory["m"] = (
                    self.beta1 * memory.get("m", torch.zeros_like(p)) + (1 - self.beta1) * d * g
                )
                memory["v"] = (
                    self.beta2 * memory.get("v", torch.zeros_like(p))
                    + (1 - self.beta2) * d * d * g * g
                )
                memory["s"] = self.beta3 * memory.get("s", torch.zeros_like(p)) + scale * g
                norm_s += memory["s"].abs().sum().item()
                live.append((group, p, memory))
        if norm_s == 0:
            return
        estimate = self.d_coef * self.r / norm_s
        new = max(d, estimate) if d == self.d0 else d
        self.d_max = max(self.d_max, estimate)
        self.d = min(self.d_max, new * self.growth)
        self.k += 1
        for group, p, memory in live:
            if group["weight_decay"] and group["decoupled"]:
                p.copy_(p - group["weight_decay"] * d * lr_k * p)
            p.copy_(p - d * lr_k * memory["m"] / (torch.sqrt(memory["v"]) + d * group["eps"]))


def paper_muon_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    buffer: torch.Tensor,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    adjust_lr_fn: str | None,
) -> None:
    """One Muon step as torch.optim.Muon documents it, written out (Jordan's quintic,
    five iterations, in the parameter's dtype):

    B = mu B + (1 - mu) g;  U = (1 - mu) g + mu B (Nesterov) or B
    X = U / max(||U||, 1e-7);  X = a X + (b A + c A^2) X with A = X X^T, five times
    x = x (1 - lr wd) - lr * scale * X,  scale = sqrt(max(1, m/n)) or 0.2 sqrt(max(m, n))
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    buffer.copy_(momentum * buffer + (1 - momentum) * grad)
    update = (1 - momentum) * grad + momentum * buffer if nesterov else buffer.clone()
    x = update.T if update.shape[0] > update.shape[1] else update
    x = x / max(x.norm().item(), 1e-7)
    for _ in range(5):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    x = x.T if update.shape[0] > update.shape[1] else x
    rows, cols = param.shape
    scale = (
        0.2 * math.sqrt(max(rows, cols))
        if adjust_lr_fn == "match_rms_adamw"
        else math.sqrt(max(1, rows / cols))
    )
    param.copy_(param * (1 - lr * weight_decay) - lr * scale * x)


class MuonWithAdamWReference:
    """Jordan's Muon-with-AdamW recipe: Muon written out (:func:`paper_muon_step`, in the
    parameter's dtype) and torch.optim.AdamW, routed by the documented rule: 1-D
    parameters and the last matrix (the head) to AdamW, the other matrices to Muon. A
    group's ``lr`` is Muon's; AdamW takes ``adamw_*``. (torch.optim.Muon itself, bit for
    bit with bfloat16 iterations, is compared in test_muon_family.py.)"""

    def __init__(
        self,
        params: Any,
        lr: float = 0.02,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        adjust_lr_fn: str | None = None,
        ns_dtype: Any = None,
        adamw_lr: float = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-10,
        adamw_weight_decay: float = 0.0,
    ) -> None:
        assert ns_dtype is None, "the written-out Muon iterates in the parameter's dtype"
        groups = _reference_groups(params, {"lr": lr})
        head = [p for group in groups for p in group["params"] if p.ndim >= 2][-1]
        self.muon = [
            (p, group["lr"])
            for group in groups
            for p in group["params"]
            if p.ndim >= 2 and p is not head
        ]
        self.options = dict(
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            adjust_lr_fn=adjust_lr_fn,
        )
        self.buffers = {id(p): torch.zeros_like(p) for p, _ in self.muon}
        adamw = [p for group in groups for p in group["params"] if p.ndim < 2 or p is head]
        self.adamw = torch.optim.AdamW(
            adamw, lr=adamw_lr, betas=adamw_betas, eps=adamw_eps, weight_decay=adamw_weight_decay
        )

    @torch.no_grad()
    def step(self) -> None:
        for param, lr in self.muon:
            if param.grad is not None:
                paper_muon_step(param, param.grad, self.buffers[id(param)], lr, **self.options)
        self.adamw.step()


BEYOND_TORCH: list[OptimizerInfo] = [
    OptimizerInfo(
        descent.ADOPT,
        ADOPTReference,
        reference_label="torch-adopt's ADOPT",
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "weight_decay": 0.05, "decoupled_weight_decay": True},
            {
                "lr": 1e-2,
                "clip_exponent": None,
                "betas": (0.8, 0.99),
                "maximize": True,
                "weight_decay": 0.05,
            },
        ],
        error_inputs=_common_errors()
        + [
            ErrorInput({"clip_exponent": -0.25}, ValueError, r"clip_exponent=-0\.25"),
        ],
        torch_counterpart=False,
        first_update_step=2,
    ),
    OptimizerInfo(
        descent.AdEMAMix,
        AdEMAMixReference,
        reference_label="pytorch-optimizer's AdEMAMix (per parameter)",
        configs=[
            {"lr": 1e-2, "t_alpha": 20, "t_beta3": 20, "alpha": 8.0},
            {"lr": 1e-2, "betas": (0.8, 0.99, 0.999), "weight_decay": 0.1, "maximize": True},
        ],
        error_inputs=_common_errors(has_betas=False)
        + [
            ErrorInput({"betas": (0.9, 0.999)}, TypeError, r"betas=\(0\.9, 0\.999\).*three"),
            ErrorInput({"betas": (0.9, 0.999, 1.0)}, ValueError, re.escape("betas[2]=1.0")),
            ErrorInput({"alpha": -1.0}, ValueError, r"alpha=-1\.0"),
            ErrorInput({"t_alpha": 0}, ValueError, r"t_alpha=0.*steps > 0"),
            ErrorInput(
                {"t_beta3": 10, "betas": (0.0, 0.999, 0.9999)},
                ValueError,
                r"t_beta3=10 needs beta1 > 0",
            ),
        ],
        torch_counterpart=False,
    ),
    OptimizerInfo(
        descent.ScheduleFreeSGD,
        ScheduleFreeReference(schedulefree.SGDScheduleFreeReference),
        reference_label="schedulefree's SGDScheduleFreeReference (per parameter)",
        configs=[
            {"lr": 0.1},
            {
                "lr": 0.05,
                "momentum": 0.5,
                "weight_decay": 0.05,
                "warmup_steps": 10,
                "r": 1.0,
                "weight_lr_power": 1.0,
            },
        ],
        error_inputs=_common_errors(has_betas=False, has_eps=False)
        + [
            ErrorInput({"momentum": 0.0}, ValueError, r"momentum=0 is invalid"),
            ErrorInput({"momentum": 1.0}, ValueError, r"momentum=1\.0.*\[0, 1\)"),
            ErrorInput({"warmup_steps": -1}, TypeError, r"warmup_steps=-1.*integer >= 0"),
            ErrorInput({"cautious": True}, ValueError, r"cautious=True is not supported"),
        ],
        torch_counterpart=False,
        positive_beta1=True,
    ),
    OptimizerInfo(
        descent.ScheduleFreeAdamW,
        ScheduleFreeReference(schedulefree.AdamWScheduleFreeReference),
        reference_label="schedulefree's AdamWScheduleFreeReference (per parameter)",
        configs=[
            {"lr": 1e-2},
            {
                "lr": 1e-2,
                "weight_decay": 0.05,
                "warmup_steps": 10,
                "betas": (0.5, 0.99),
                "r": 0.5,
                "eps": 1e-6,
            },
        ],
        error_inputs=_common_errors()
        + [
            ErrorInput({"betas": (0.0, 0.9)}, ValueError, r"betas\[0\]=0 is invalid"),
            ErrorInput({"warmup_steps": 1.5}, TypeError, r"warmup_steps=1\.5"),
        ],
        torch_counterpart=False,
        positive_beta1=True,
    ),
    OptimizerInfo(
        descent.ScheduleFreeRAdam,
        ScheduleFreeReference(schedulefree.RAdamScheduleFree),
        reference_label="schedulefree's RAdamScheduleFree (per parameter)",
        configs=[
            {"lr": 1e-2, "betas": (0.9, 0.9)},
            {"lr": 1e-2, "weight_decay": 0.05, "silent_sgd_phase": False},
        ],
        error_inputs=_common_errors()
        + [
            ErrorInput({"silent_sgd_phase": 1}, TypeError, r"silent_sgd_phase=1"),
        ],
        torch_counterpart=False,
        positive_beta1=True,
        first_update_step=5,
    ),
    OptimizerInfo(
        descent.StableAdamW,
        StableAdamWReference,
        reference_label="pytorch-optimizer's StableAdamW (per parameter)",
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "weight_decay": 0.1, "eps": 1e-8, "betas": (0.8, 0.9), "maximize": True},
        ],
        error_inputs=_common_errors(),
        torch_counterpart=False,
    ),
    OptimizerInfo(
        descent.LAMB,
        PaperLAMB,
        reference_label="paper equations (PaperLAMB, tests/optim_table.py)",
        configs=[
            {"lr": 1e-2},
            {
                "lr": 1e-2,
                "weight_decay": 0.0,
                "bias_correction": False,
                "betas": (0.8, 0.99),
                "maximize": True,
                "eps": 1e-8,
            },
        ],
        error_inputs=_common_errors()
        + [
            ErrorInput({"bias_correction": "yes"}, TypeError, r"bias_correction='yes'"),
        ],
        torch_counterpart=False,
    ),
    OptimizerInfo(
        descent.LARS,
        PaperLARS,
        reference_label="paper equations (PaperLARS, tests/optim_table.py)",
        configs=[
            {"lr": 0.5, "trust_coefficient": 0.1, "weight_decay": 0.01},
            {"lr": 0.5, "momentum": 0.0, "trust_coefficient": 0.05, "maximize": True},
        ],
        error_inputs=_common_errors(has_betas=False, has_eps=False)
        + [
            ErrorInput({"trust_coefficient": -1.0}, ValueError, r"trust_coefficient=-1\.0"),
            ErrorInput({"momentum": -0.5}, ValueError, r"momentum=-0\.5"),
            ErrorInput(
                {"cautious": True, "weight_decay": 0.1},
                ValueError,
                r"cautious=True needs decoupled weight decay",
            ),
        ],
        torch_counterpart=False,
    ),
    OptimizerInfo(
        descent.MARS,
        PaperMARS,
        reference_label="paper equations (PaperMARS, tests/optim_table.py)",
        configs=[
            {"lr": 1e-2, "gamma": 0.1, "weight_decay": 0.05},
            {"lr": 1e-2, "betas": (0.9, 0.999), "gamma": 0.0, "maximize": True},
        ],
        error_inputs=_common_errors()
        + [
            ErrorInput({"gamma": -0.1}, ValueError, r"gamma=-0\.1"),
        ],
        torch_counterpart=False,
    ),
    OptimizerInfo(
        descent.Prodigy,
        PaperProdigy,
        reference_label="paper equations (PaperProdigy, tests/optim_table.py)",
        configs=[
            {"lr": 1.0, "d0": 1e-2},
            {
                "lr": 1.0,
                "weight_decay": 0.05,
                "use_bias_correction": True,
                "beta3": 0.9,
                "betas": (0.8, 0.99),
            },
            {
                "lr": 0.5,
                "weight_decay": 0.05,
                "decoupled_weight_decay": False,
                "safeguard_warmup": True,
                "growth_rate": 1.5,
                "d_coef": 0.5,
            },
        ],
        error_inputs=_common_errors()
        + [
            ErrorInput({"d0": 0.0}, ValueError, r"d0=0\.0.*> 0"),
            ErrorInput({"growth_rate": 0.0}, ValueError, r"growth_rate=0\.0"),
            ErrorInput({"beta3": 1.0}, ValueError, r"beta3=1\.0"),
            ErrorInput({"cautious": True}, ValueError, r"cautious=True is not supported"),
        ],
        torch_counterpart=False,
        functional=False,
        grouped_lrs=False,
        refused_dtypes=(torch.float16,),
    ),
    OptimizerInfo(
        descent.SOAP,
        SOAPReference,
        reference_label="pytorch-optimizer's SOAP (per parameter)",
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "precondition_frequency": 3, "precondition_1d": True},
            {
                "lr": 1e-2,
                "max_precondition_dim": 8,
                "shampoo_beta": 0.9,
                "weight_decay": 0.0,
                "normalize_gradient": True,
                "correct_bias": False,
                "maximize": True,
            },
        ],
        error_inputs=_common_errors()
        + [
            ErrorInput(
                {"precondition_frequency": 0}, ValueError, r"precondition_frequency=0.*integer >= 1"
            ),
        ],
        torch_counterpart=False,
        first_update_step=2,
        vmap_tolerance=1e-6,
    ),
    OptimizerInfo(
        # with its defaults (Newton-Schulz in bfloat16) OrthoMuon is torch.optim.Muon
        descent.OrthoMuon,
        torch.optim.Muon,
        reference_label="torch.optim.Muon",
        configs=[{"lr": 0.02}, {"lr": 0.02, "nesterov": False, "adjust_lr_fn": "match_rms_adamw"}],
        error_inputs=_common_errors(has_betas=False),
        torch_counterpart=False,
        matrices_only=True,
        functional=False,
    ),
    OptimizerInfo(
        # ns_dtype=None: Muon's iteration in the parameters' dtype, which the written-out
        # reference uses; bfloat16 (the default) is compared with torch.optim.Muon, bit for
        # bit, in test_muon_family.py
        descent.MuonAdamW,
        MuonWithAdamWReference,
        reference_label="Muon written out + torch.optim.AdamW",
        configs=[
            {
                "lr": 0.02,
                "weight_decay": 0.05,
                "adamw_weight_decay": 0.01,
                "adamw_lr": 1e-2,
                "ns_dtype": None,
            },
            {
                "lr": 0.02,
                "nesterov": False,
                "adjust_lr_fn": "match_rms_adamw",
                "adamw_betas": (0.8, 0.99),
                "adamw_eps": 1e-8,
                "ns_dtype": None,
            },
        ],
        error_inputs=_common_errors(has_betas=False)
        + [
            ErrorInput(
                {"adamw_betas": (1.0, 0.9)},
                ValueError,
                re.escape("adamw_betas[0]=1.0") + r".*\[0, 1\)",
            ),
            ErrorInput({"adamw_lr": -1.0}, ValueError, r"adamw_lr=-1\.0"),
            ErrorInput({"momentum": 1.0}, ValueError, r"momentum=1\.0"),
            ErrorInput({"ns_steps": 0}, ValueError, r"ns_steps=0.*1 to 99"),
            ErrorInput({"ns_coefficients": (1.0, 2.0)}, ValueError, r"ns_coefficients="),
            ErrorInput({"adjust_lr_fn": "rms"}, ValueError, r"adjust_lr_fn='rms'"),
            ErrorInput({"muon": "head"}, TypeError, r"muon='head'.*list of parameter name"),
            ErrorInput(
                {"normuon": True, "adjust_lr_fn": "original"},
                ValueError,
                r"normuon=True sets its own step scale",
            ),
        ],
        torch_counterpart=False,
        functional=False,
        routes_groups=True,
    ),
]
OPTIMIZERS += BEYOND_TORCH
BY_NAME.update({info.name: info for info in BEYOND_TORCH})

MATRIX_RULES = frozenset({"ortho_muon"})
"""Functional forms that update matrices only (tested in test_muon_family.py)."""
