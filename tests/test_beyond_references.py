"""The reference packages where the optimizer table does not use them, and where they
differ from the paper that descent follows: each difference named, and the tolerance
with its reason (the table's parity runs are float64 <= 1e-10 against the reference
named there: a package, or the paper's equations written out in optim_table.py)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import descent
from optim_table import PaperProdigy

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")


def make_params(
    shapes: list[tuple[int, ...]], seed: int = 0, dtype: torch.dtype = torch.float64
) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype)) for shape in shapes]


SHAPES = [(6, 4), (4,), (3, 5), (5,)]
MATRICES = [(6, 4), (3, 5), (7, 7)]


def relative_gap(
    make_ours: Callable[[list[nn.Parameter]], Any],
    make_theirs: Callable[[list[nn.Parameter]], Any],
    shapes: list[tuple[int, ...]] = SHAPES,
    steps: int = 30,
    dtype: torch.dtype = torch.float64,
    scale: float = 1.0,
    pull: bool = False,
) -> float:
    """Largest difference over the run, relative to how far the reference moved.

    Gradients are noise, plus with ``pull`` the gradient of ||x - 1||^2 / 2 (a direction
    that persists, which Prodigy needs to grow its step)."""
    ours, theirs = make_params(shapes, dtype=dtype), make_params(shapes, dtype=dtype)
    opt, ref = make_ours(ours), make_theirs(theirs)
    gap = 0.0
    for step in range(steps):
        generator = torch.Generator().manual_seed(100 + step)
        for a, b in zip(ours, theirs, strict=True):
            grad = scale * torch.randn(a.shape, generator=generator, dtype=dtype)
            a.grad, b.grad = grad.clone(), grad.clone()
            if pull:
                a.grad += a.detach() - 1
                b.grad += b.detach() - 1
        opt.step()
        ref.step()
        gap = max(gap, max((a - b).abs().max().item() for a, b in zip(ours, theirs, strict=True)))
    moved = max(
        (b - s).abs().max().item()
        for b, s in zip(theirs, make_params(shapes, dtype=dtype), strict=True)
    )
    assert moved > 1e-3
    return gap / moved


# ---------------------------------------------------------------------- MARS


def test_mars_matches_pytorch_optimizer_without_its_extra_epsilons(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pytorch-optimizer's MARS adds 1e-15 to v inside the root and eps before the
    sqrt(1 - beta2^t) correction (the paper: sqrt(v^) + eps). With its 1e-15 set to 0
    and eps = 1e-30 the arithmetic is the same: <= 1e-10."""
    base = pytorch_optimizer.base.optimizer.BaseOptimizer
    monkeypatch.setattr(
        base,
        "apply_ams_bound_foreach",
        staticmethod(functools.partial(base.apply_ams_bound_foreach, exp_avg_sq_eps=0.0)),
    )
    gap = relative_gap(
        lambda p: descent.MARS(p, lr=1e-2, weight_decay=0.05, eps=1e-30),
        lambda p: pytorch_optimizer.MARS(
            p, lr=1e-2, weight_decay=0.05, eps=1e-30, optimize_1d=True
        ),
    )
    assert gap <= 1e-10


def test_mars_as_pytorch_optimizer_runs_it() -> None:
    """The package as it is (its epsilons, above): within 1e-5 of the distance moved
    (8e-7 measured)."""
    gap = relative_gap(
        lambda p: descent.MARS(p, lr=1e-2),
        lambda p: pytorch_optimizer.MARS(p, lr=1e-2, optimize_1d=True),
    )
    assert gap <= 1e-5


# ---------------------------------------------------------------------- LAMB and LARS


def test_lamb_matches_pytorch_optimizer_where_their_rules_coincide() -> None:
    """pytorch-optimizer's Lamb corrects only m's bias (and scales the step by it) and
    adds eps to the ratio's denominator; without weight decay the trust ratio makes the
    step lr * ||x|| * r / ||r|| whatever the scale of r, so with adam_debias=True (no
    extra scale), no global clipping and eps = 1e-30 both are the paper's: <= 1e-10."""
    gap = relative_gap(
        lambda p: descent.LAMB(p, lr=1e-2, weight_decay=0.0, eps=1e-30),
        lambda p: pytorch_optimizer.Lamb(
            p, lr=1e-2, weight_decay=0.0, eps=1e-30, max_grad_norm=0.0, adam_debias=True
        ),
    )
    assert gap <= 1e-10


def test_lars_matches_pytorch_optimizer_on_matrices() -> None:
    """pytorch-optimizer's LARS skips 1-D tensors (no trust ratio, no decay) and keeps the
    lr outside the momentum; on matrices with a constant lr it is the paper's: <= 1e-10."""
    gap = relative_gap(
        lambda p: descent.LARS(p, lr=0.5, weight_decay=0.01, trust_coefficient=0.02),
        lambda p: pytorch_optimizer.LARS(p, lr=0.5, weight_decay=0.01, trust_coefficient=0.02),
        shapes=MATRICES,
    )
    assert gap <= 1e-10


# ---------------------------------------------------------------------- Prodigy


def test_prodigy_matches_prodigyopt_when_eps_vanishes() -> None:
    """prodigyopt adds d_{k+1} eps to the denominator, the paper d_k eps; with
    eps = 1e-30 they agree: <= 1e-10 (here with decoupled weight decay)."""
    prodigyopt = pytest.importorskip("prodigyopt")
    gap = relative_gap(
        lambda p: descent.Prodigy(p, eps=1e-30, weight_decay=0.01),
        lambda p: prodigyopt.Prodigy(p, eps=1e-30, weight_decay=0.01),
        pull=True,
    )
    assert gap <= 1e-10


def test_prodigy_as_prodigyopt_runs_it() -> None:
    """With the default eps = 1e-8: while d grows a thousandfold in the first steps
    (d0 = 1e-6), d_{k+1} eps and d_k eps differ by as much, in a denominator
    sqrt(v) ~ d |g|: within 1e-4 of the distance moved (9e-6 measured)."""
    prodigyopt = pytest.importorskip("prodigyopt")
    gap = relative_gap(lambda p: descent.Prodigy(p), lambda p: prodigyopt.Prodigy(p), pull=True)
    assert gap <= 1e-4


def test_prodigy_paper_reference_with_all_options() -> None:
    """The table's paper implementation, with every option at once: <= 1e-10."""
    options = dict(
        lr=0.7,
        betas=(0.85, 0.99),
        beta3=0.95,
        weight_decay=0.02,
        decoupled_weight_decay=False,
        use_bias_correction=True,
        safeguard_warmup=True,
        d0=1e-4,
        d_coef=0.8,
        growth_rate=2.0,
    )
    gap = relative_gap(
        lambda p: descent.Prodigy(p, **options), lambda p: PaperProdigy(p, **options), pull=True
    )
    assert gap <= 1e-10


# ---------------------------------------------------------------------- AdEMAMix


class PaperAdEMAMix:
    """AdEMAMix, Pagliardini et al. 2024, Algorithm 1, written out, with separate warm-ups
    T_alpha and T_beta3 (pytorch-optimizer has one length for both):

    alpha(t) = min(t alpha / T_alpha, alpha)
    beta3(t) = min(exp(ln b1 ln b3 / ((1 - t/T) ln b3 + (t/T) ln b1)), b3)
    x = x - lr ((m1^ + alpha(t) m2) / (sqrt(nu^) + eps) + wd x)
    """

    def __init__(
        self,
        params: list[torch.Tensor],
        lr: float,
        betas: tuple[float, ...],
        alpha: float,
        t_alpha: int,
        t_beta3: int,
        eps: float,
        weight_decay: float,
    ) -> None:
        self.params, self.lr, self.betas, self.alpha = params, lr, betas, alpha
        self.t_alpha, self.t_beta3, self.eps, self.wd = t_alpha, t_beta3, eps, weight_decay
        self.t = 0
        self.m1 = [torch.zeros_like(p) for p in params]
        self.m2 = [torch.zeros_like(p) for p in params]
        self.nu = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self) -> None:
        b1, b2, b3 = self.betas
        self.t += 1
        t = self.t
        alpha = min(t * self.alpha / self.t_alpha, self.alpha)
        fraction = t / self.t_beta3
        beta3 = min(
            math.exp(
                math.log(b1)
                * math.log(b3)
                / ((1 - fraction) * math.log(b3) + fraction * math.log(b1))
            ),
            b3,
        )
        for i, x in enumerate(self.params):
            g = x.grad
            self.m1[i] = b1 * self.m1[i] + (1 - b1) * g
            self.m2[i] = beta3 * self.m2[i] + (1 - beta3) * g
            self.nu[i] = b2 * self.nu[i] + (1 - b2) * g * g
            numerator = self.m1[i] / (1 - b1**t) + alpha * self.m2[i]
            denominator = torch.sqrt(self.nu[i] / (1 - b2**t)) + self.eps
            x.copy_(x - self.lr * (numerator / denominator + self.wd * x))


def test_ademamix_with_separate_warmups_is_the_papers() -> None:
    options = dict(
        lr=1e-2,
        betas=(0.9, 0.99, 0.999),
        alpha=6.0,
        t_alpha=12,
        t_beta3=20,
        eps=1e-8,
        weight_decay=0.05,
    )
    gap = relative_gap(
        lambda p: descent.AdEMAMix(p, **options), lambda p: PaperAdEMAMix(p, **options)
    )
    assert gap <= 1e-10


def test_ademamix_matches_bitsandbytes_in_float32() -> None:
    """bitsandbytes' AdEMAMix (32-bit state, its CPU kernel computes in float32): float32
    arithmetic in another order, within 1e-5 of the distance moved."""
    bnb = pytest.importorskip("bitsandbytes")
    options = dict(lr=1e-2, weight_decay=0.01, t_alpha=10, t_beta3=10)
    gap = relative_gap(
        lambda p: descent.AdEMAMix(p, **options),
        lambda p: bnb.optim.AdEMAMix(p, **options),
        dtype=torch.float32,
        steps=20,
    )
    assert gap <= 1e-5


# ---------------------------------------------------------------------- ADOPT


def test_adopt_complex_parameters_match_torch_adopt() -> None:
    """Complex parameters are updated as pairs of reals, as torch-adopt does."""
    adopt = pytest.importorskip("adopt")
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(4, 3, dtype=torch.complex128, generator=generator)
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    opt = descent.ADOPT([ours], lr=1e-2, weight_decay=0.1)
    ref = adopt.ADOPT([theirs], lr=1e-2, weight_decay=0.1)
    for step in range(10):
        target = torch.randn(
            4, 3, dtype=torch.complex128, generator=torch.Generator().manual_seed(step)
        )
        for p in (ours, theirs):
            p.grad = None
            (p - target).abs().pow(2).sum().backward()
        opt.step()
        ref.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    assert not torch.equal(ours, start)
