"""Cautious masking (``cautious=True``), an option of every rule, with cautious weight decay.

References: the Cautious Optimizers paper's C-AdamW and the Cautious Weight Decay
formula written out below; ``pytorch-optimizer``'s cautious Lion; and, for every rule in
the optimizer table, the rule's own update without the option, masked by hand.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import descent
from descent import engine, functional
from optim_table import OPTIMIZERS, OptimizerInfo, case_id


def make_params(seed: int = 0, info: OptimizerInfo | None = None) -> list[nn.Parameter]:
    """Parameters of several shapes (as the optimizer of ``info`` takes them: columns for
    one that updates matrices only)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (5,), (3, 2, 2), (6, 4)]
    return [
        nn.Parameter(
            torch.randn(
                info.shape(*shape) if info else shape, generator=generator, dtype=torch.float64
            )
        )
        for shape in shapes
    ]


def grads_for(params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]


def cautious_adamw_paper(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    memory: dict[int, dict[str, Any]],
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """C-AdamW (Liang et al. 2024, Algorithm 2) with Cautious Weight Decay (Chen et al.
    2025), written out:

    u = m^ / (sqrt(v^) + eps);  phi = 1(u g > 0);  u_c = d / (nnz(phi) + 1) phi u
    x = x - lr u_c - lr wd 1(u_c x >= 0) x
    """
    b1, b2 = betas
    for x, g in zip(params, grads, strict=True):
        state = memory.setdefault(
            id(x), {"t": 0, "m": torch.zeros_like(x), "v": torch.zeros_like(x)}
        )
        state["t"] += 1
        t = state["t"]
        state["m"] = b1 * state["m"] + (1 - b1) * g
        state["v"] = b2 * state["v"] + (1 - b2) * g * g
        u = (state["m"] / (1 - b1**t)) / (torch.sqrt(state["v"] / (1 - b2**t)) + eps)
        phi = (u * g > 0).to(x.dtype)
        u_c = x.numel() / (phi.sum() + 1) * phi * u
        decay = weight_decay * (u_c * x >= 0).to(x.dtype) * x
        x.copy_(x - lr * u_c - lr * decay)


@pytest.mark.parametrize("weight_decay", [0.0, 0.2])
def test_cautious_adamw_is_the_papers(weight_decay: float) -> None:
    ours = make_params()
    theirs = [p.detach().clone() for p in ours]
    opt = descent.AdamW(ours, lr=0.05, weight_decay=weight_decay, cautious=True)
    memory: dict[int, dict[str, Any]] = {}
    for step in range(15):
        grads = grads_for(ours, step)
        for p, g in zip(ours, grads, strict=True):
            p.grad = g
        opt.step()
        cautious_adamw_paper(theirs, grads, memory, 0.05, (0.9, 0.999), 1e-8, weight_decay)
    for a, b, start in zip(ours, theirs, make_params(), strict=True):
        assert (a.detach() - b).abs().max() <= 1e-10 * (b - start).abs().max()


def test_cautious_lion_matches_pytorch_optimizer() -> None:
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    ours, theirs = make_params(), make_params()
    opt = descent.Lion(ours, lr=1e-2, cautious=True)
    ref = pytorch_optimizer.Lion(theirs, lr=1e-2, cautious=True, foreach=False)
    for step in range(15):
        for a, b, g in zip(ours, theirs, grads_for(ours, step), strict=True):
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for a, b, start in zip(ours, theirs, make_params(), strict=True):
        assert (a - b).abs().max() <= 1e-10 * (b - start).abs().max()


def cautious_cases() -> list[OptimizerInfo]:
    return [info for info in OPTIMIZERS if not info.cls.cautious_refused]


def no_decay(info: OptimizerInfo) -> dict[str, Any]:
    config = dict(info.configs[0])
    for name in ("weight_decay", "adamw_weight_decay"):
        if name in config or name in info.cls.hyperparameters:
            config[name] = 0.0
    if info.name == "MuonAdamW":
        config["weight_decay"] = 0.0
    return config


@pytest.mark.parametrize("info", cautious_cases(), ids=case_id)
def test_every_rule_masks_its_own_update(info: OptimizerInfo) -> None:
    """One step of the rule with and without cautious=True, from the same state: the
    cautious update is the plain one where it agrees with the gradient, scaled by
    d / (nnz + 1) per tensor, and 0 elsewhere."""
    config = no_decay(info)
    plain, masked = make_params(info=info), make_params(info=info)
    opt, cautious = info.cls(plain, **config), info.cls(masked, **config, cautious=True)
    for step in range(info.first_update_step):
        grads = grads_for(plain, step)
        start = [p.detach().clone() for p in plain]
        for a, b, g in zip(plain, masked, grads, strict=True):
            a.grad, b.grad = info.gradient(g.clone()), info.gradient(g.clone())
        opt.step()
        cautious.step()
    assert any(not torch.equal(a, b) for a, b in zip(plain, start, strict=True))
    sign = -1.0 if config.get("maximize") else 1.0
    for a, b, old, g in zip(plain, masked, start, grads, strict=True):
        update = old - a.detach()
        agrees = (update * sign * g > 0).to(update.dtype)
        expected = update * agrees * (update.numel() / (agrees.sum() + 1))
        torch.testing.assert_close(
            old - b.detach(), expected, rtol=0, atol=1e-12 * old.abs().max().item()
        )


@pytest.mark.parametrize("mode", ["foreach", "auto"])
@pytest.mark.parametrize(
    "cls",
    [descent.AdamW, descent.Lion, descent.ADOPT, descent.SGD, descent.RMSprop],
    ids=lambda c: c.__name__,
)
def test_engine_paths_agree_with_cautious_masking(cls: type, mode: str) -> None:
    """Bit for bit with the per-tensor reference (torch's fused kernels stand aside)."""
    results = []
    for run_mode in (mode, "per_tensor"):
        params = make_params()
        options = {"weight_decay": 0.1} if cls in (descent.AdamW, descent.Lion) else {}
        opt = cls(params, lr=0.02, cautious=True, **options)
        engine.set_mode(opt, run_mode)
        for step in range(5):
            for p, g in zip(params, grads_for(params, step), strict=True):
                p.grad = g
            opt.step()
        results.append(params)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_functional_form_takes_the_option() -> None:
    params = make_params()
    tensors = [p.detach().clone().requires_grad_() for p in params]
    opt = descent.AdamW(tensors, lr=0.02, weight_decay=0.1, cautious=True)
    engine.set_mode(opt, "per_tensor")
    tree, state = [p.detach().clone() for p in params], functional.adamw.init(params)
    for step in range(4):
        grads = grads_for(params, step)
        for tensor, grad in zip(tensors, grads, strict=True):
            tensor.grad = grad.clone()
        opt.step()
        tree, state = functional.adamw.step(
            tree, grads, state, lr=0.02, weight_decay=0.1, cautious=True
        )
    assert all(torch.equal(a, b.detach()) for a, b in zip(tree, tensors, strict=True))
    assert functional.adamw.hyperparameters["cautious"] is False


def test_coupled_weight_decay_and_unsupported_rules_are_refused() -> None:
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(
        ValueError,
        match=r"Adam: cautious=True needs decoupled weight decay, "
        r"but weight_decay=0\.1.*decoupled_weight_decay=True",
    ):
        descent.Adam([p], weight_decay=0.1, cautious=True)
    descent.Adam([p], weight_decay=0.1, decoupled_weight_decay=True, cautious=True)
    with pytest.raises(
        ValueError,
        match=r"SGD: cautious=True needs decoupled weight decay.*"
        r"use weight_decay=0$",
    ):
        descent.SGD([p], lr=0.1, weight_decay=0.1, cautious=True)
    with pytest.raises(ValueError, match=r"ScheduleFreeAdamW: cautious=True is not supported"):
        descent.ScheduleFreeAdamW([p], cautious=True)
    opt = descent.Adam([p], weight_decay=0.1)
    with pytest.raises(ValueError, match=r"param_groups\[0\]: cautious=True needs decoupled"):
        opt.cautious = True
    assert opt.cautious is False
    with pytest.raises(TypeError, match=r"cautious=1 has type int"):
        descent.Adam([p], cautious=1)


def test_every_optimizer_offers_the_option_keyword_only() -> None:
    for info in OPTIMIZERS:
        if info.name == "MuonAdamW":
            continue
        spec = info.cls.hyperparameters["cautious"]
        assert spec.kw_only and spec.default is False
        assert "cautious: cautious masking" in (info.cls.__doc__ or "")
