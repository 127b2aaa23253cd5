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

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0.0,
                 weight_decay: float = 0.0, maximize: bool = False) -> None:
        self.param_groups = _reference_groups(params, dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, maximize=maximize))
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

    def __init__(self, params: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, maximize: bool = False) -> None:
        self.param_groups = _reference_groups(params, dict(
            lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize))
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
            ErrorInput({"betas": (1.0, 0.9)}, ValueError,
                       re.escape("betas[0]=1.0") + r".*\[0, 1\)"),
            ErrorInput({"betas": (0.9, -0.1)}, ValueError, re.escape("betas[1]=-0.1")),
            ErrorInput({"betas": 0.9}, TypeError, r"betas=0\.9.*pair"),
        ]
    if has_eps:
        errors.append(ErrorInput({"eps": -1e-8}, ValueError, r"eps=-1e-08"))
    return errors


OPTIMIZERS: list[OptimizerInfo] = [
    OptimizerInfo(
        descent.SGD, torch.optim.SGD,
        configs=[
            {"lr": 0.05},
            {"lr": 0.05, "momentum": 0.9},
            {"lr": 0.05, "momentum": 0.9, "dampening": 0.3},
            {"lr": 0.05, "momentum": 0.9, "nesterov": True},
            {"lr": 0.05, "weight_decay": 0.1},
            {"lr": 0.05, "momentum": 0.5, "maximize": True},
            {"lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01,
             "maximize": True},
        ],
        error_inputs=_common_errors(has_betas=False, has_eps=False) + [
            ErrorInput({"nesterov": True}, ValueError, r"nesterov=True needs momentum > 0"),
            ErrorInput({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError,
                       r"dampening == 0"),
            ErrorInput({"momentum": -0.5}, ValueError, r"momentum=-0\.5"),
            ErrorInput({"differentiable": True}, ValueError, r"differentiable=True.*functional"),
        ],
    ),
    OptimizerInfo(
        descent.Adam, torch.optim.Adam,
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "amsgrad": True},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "maximize": True},
            {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
            {"lr": 5e-3, "betas": (0.8, 0.95), "eps": 1e-6, "amsgrad": True,
             "weight_decay": 0.05, "maximize": True},
        ],
        error_inputs=_common_errors() + [
            ErrorInput({"capturable": True}, ValueError, r"capturable=True is not supported"),
            ErrorInput({"amsgrad": "yes"}, TypeError, r"amsgrad='yes'"),
        ],
    ),
    OptimizerInfo(
        descent.AdamW, torch.optim.AdamW,
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "amsgrad": True},
            {"lr": 1e-2, "weight_decay": 0.0},
            {"lr": 1e-2, "weight_decay": 0.3, "maximize": True, "betas": (0.5, 0.9)},
        ],
        error_inputs=_common_errors(),
    ),
    OptimizerInfo(
        descent.RMSprop, torch.optim.RMSprop,
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "centered": True},
            {"lr": 1e-2, "momentum": 0.9},
            {"lr": 1e-2, "momentum": 0.9, "centered": True},
            {"lr": 1e-2, "weight_decay": 0.1, "alpha": 0.9},
            {"lr": 1e-2, "maximize": True, "eps": 1e-4},
        ],
        error_inputs=_common_errors(has_betas=False) + [
            ErrorInput({"alpha": -0.9}, ValueError, r"alpha=-0\.9"),
            ErrorInput({"momentum": float("nan")}, ValueError, r"momentum=nan"),
        ],
    ),
    OptimizerInfo(
        descent.Adagrad, torch.optim.Adagrad,
        configs=[
            {"lr": 5e-2},
            {"lr": 5e-2, "lr_decay": 0.05},
            {"lr": 5e-2, "initial_accumulator_value": 0.1},
            {"lr": 5e-2, "weight_decay": 0.1},
            {"lr": 5e-2, "maximize": True, "eps": 1e-6},
        ],
        error_inputs=_common_errors(has_betas=False) + [
            ErrorInput({"lr_decay": -1.0}, ValueError, r"lr_decay=-1\.0"),
            ErrorInput({"initial_accumulator_value": -0.1}, ValueError,
                       r"initial_accumulator_value=-0\.1"),
        ],
    ),
    OptimizerInfo(
        descent.NAdam, torch.optim.NAdam,
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
            {"lr": 1e-2, "momentum_decay": 0.01, "betas": (0.8, 0.99)},
            {"lr": 1e-2, "maximize": True},
        ],
        error_inputs=_common_errors() + [
            ErrorInput({"momentum_decay": -1e-3}, ValueError, r"momentum_decay=-0\.001"),
        ],
    ),
    OptimizerInfo(
        descent.RAdam, torch.optim.RAdam,
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
            {"lr": 1e-2, "betas": (0.9, 0.99), "maximize": True},
        ],
        error_inputs=_common_errors(),
    ),
    OptimizerInfo(
        descent.Adamax, torch.optim.Adamax,
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "betas": (0.8, 0.99), "maximize": True},
        ],
        error_inputs=_common_errors(),
    ),
    OptimizerInfo(
        descent.SignSGD, PaperSignum,
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "momentum": 0.9},
            {"lr": 1e-2, "weight_decay": 0.1},
            {"lr": 1e-2, "momentum": 0.5, "maximize": True},
        ],
        error_inputs=_common_errors(has_betas=False, has_eps=False) + [
            ErrorInput({"momentum": 1.0}, ValueError, r"momentum=1\.0.*\[0, 1\)"),
        ],
        torch_counterpart=False,
    ),
    OptimizerInfo(
        descent.Lion, PaperLion,
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
        descent.Adadelta, torch.optim.Adadelta,
        configs=[
            {"lr": 1.0},
            {"lr": 0.01, "weight_decay": 0.1, "maximize": True},
            {"lr": 1.0, "rho": 0.95, "weight_decay": 0.9},
        ],
        error_inputs=_common_errors(has_betas=False) + [
            ErrorInput({"rho": 1.1}, ValueError, r"rho=1\.1.*\[0, 1\]"),
            ErrorInput({"capturable": True}, ValueError, r"capturable=True is not supported"),
        ],
    ),
    OptimizerInfo(
        descent.Adafactor, torch.optim.Adafactor,
        configs=[
            {"lr": 1e-2},
            {"lr": 1e-2, "weight_decay": 0.1, "maximize": True, "d": 1.5},
            {"lr": 5e-3, "eps": (1e-30, 1e-3), "beta2_decay": -1.0},
        ],
        error_inputs=_common_errors(has_betas=False, has_eps=False) + [
            ErrorInput({"eps": (-1e-30, 1e-3)}, ValueError, r"eps\[0\]=-1e-30"),
            ErrorInput({"eps": (None, -1.0)}, ValueError, r"eps\[1\]=-1\.0"),
            ErrorInput({"eps": 1e-3}, TypeError, r"eps=0\.001.*pair"),
            ErrorInput({"d": 0.0}, ValueError, r"d=0\.0.*>= 1\.0"),
            ErrorInput({"beta2_decay": 0.8}, ValueError, r"beta2_decay=0\.8.*<= 0"),
        ],
    ),
    OptimizerInfo(
        descent.ASGD, torch.optim.ASGD,
        configs=[
            {"lr": 1e-2},
            {"lr": 0.02, "lambd": 0.1, "t0": 10},
            {"lr": 1e-2, "weight_decay": 0.1, "maximize": True, "t0": 5},
        ],
        error_inputs=_common_errors(has_betas=False, has_eps=False) + [
            ErrorInput({"lambd": -1.0}, ValueError, r"lambd=-1\.0"),
            ErrorInput({"t0": float("nan")}, ValueError, r"t0=nan"),
        ],
    ),
    OptimizerInfo(
        descent.LBFGS, torch.optim.LBFGS,
        configs=[
            {"lr": 1, "max_iter": 5},
            {"lr": 1, "max_iter": 5, "line_search_fn": "strong_wolfe"},
            {"lr": 0.5, "history_size": 3, "max_iter": 7, "line_search_fn": "strong_wolfe"},
        ],
        error_inputs=[e for e in _common_errors(has_betas=False, has_eps=False)
                      if "weight_decay" not in e.kwargs and "maximize" not in e.kwargs] + [
            ErrorInput({"line_search_fn": "armijo"}, ValueError,
                       r"line_search_fn='armijo' is not supported"),
            ErrorInput({"max_iter": 0}, ValueError, r"max_iter=0.*>= 1"),
            ErrorInput({"history_size": 2.5}, TypeError, r"history_size=2\.5.*int"),
        ],
        closure=True, groups=False,
    ),
    OptimizerInfo(
        descent.Muon, torch.optim.Muon,
        configs=[
            {"lr": 0.01, "momentum": 0.8, "ns_steps": 6, "ns_coefficients": (3.4, -4.7, 2.0)},
            {"lr": 1e-2, "nesterov": False, "adjust_lr_fn": "match_rms_adamw"},
        ],
        error_inputs=[e for e in _common_errors(has_betas=False, has_eps=False)
                      if "maximize" not in e.kwargs] + [
            ErrorInput({"adjust_lr_fn": "arbitrary"}, ValueError,
                       r"adjust_lr_fn='arbitrary' is not supported"),
            ErrorInput({"ns_steps": 100}, ValueError, r"ns_steps=100.*< 100"),
            ErrorInput({"ns_coefficients": (1.0, 2.0)}, TypeError, r"three numbers"),
        ],
        matrices_only=True,
    ),
    OptimizerInfo(
        descent.Rprop, torch.optim.Rprop,
        configs=[
            {"lr": 1e-2},
            {"lr": 2e-4, "etas": (0.5, 1.5)},
            {"lr": 1e-2, "step_sizes": (2e-6, 100), "maximize": True},
        ],
        error_inputs=[e for e in _common_errors(has_betas=False, has_eps=False)
                      if "weight_decay" not in e.kwargs] + [
            ErrorInput({"etas": (1.0, 0.5)}, ValueError, r"0 < eta_minus < 1 < eta_plus"),
            ErrorInput({"step_sizes": (1.0, 0.5)}, ValueError, r"minimum <= maximum"),
        ],
    ),
    OptimizerInfo(
        descent.SparseAdam, torch.optim.SparseAdam,
        configs=[
            {"lr": 1e-3},
            {"lr": 4e-2, "betas": (0.8, 0.99), "eps": 1e-6, "maximize": True},
        ],
        error_inputs=[e for e in _common_errors(has_eps=False)
                      if "weight_decay" not in e.kwargs and e.kwargs.get("lr") != -1.0] + [
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

