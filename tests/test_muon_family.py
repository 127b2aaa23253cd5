"""Muon (OrthoMuon: torch's Muon, NorMuon, Polar Express) and the Muon + AdamW router.

References: the singular value decomposition (the polar factor Newton-Schulz
approximates); torch.optim.Muon (bit for bit); Keller Jordan's ``muon-optimizer``
package; ``pytorch-optimizer``'s NorMuon; the NorMuon and Polar Express papers'
algorithms written out below. MuonAdamW's generic tests (parity with torch's Muon and
AdamW routed alike, state dicts, errors) run from the optimizer table.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import math
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

import descent
from descent import functional
from descent.optim.muon_family import JORDAN, POLAR_EXPRESS, newton_schulz

# bfloat16 matrix products of this size take milliseconds on two threads and
# microseconds on one (torch 2.13, CPU)
pytestmark = pytest.mark.usefixtures("one_thread")


def random_matrix(rows: int, cols: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(rows, cols, generator=generator, dtype=torch.float64)


def polar_factor(matrix: torch.Tensor) -> torch.Tensor:
    """U V^T of the SVD U S V^T: the nearest semi-orthogonal matrix."""
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u @ vh


def quintic(
    x: torch.Tensor, coefficients: list[tuple[float, float, float]], steps: int
) -> torch.Tensor:
    """X <- a X + (b A + c A^2) X with A = X X^T, on a wide (or square) matrix."""
    for k in range(steps):
        a, b, c = coefficients[min(k, len(coefficients) - 1)]
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


def reference_newton_schulz(
    g: torch.Tensor,
    coefficients: list[tuple[float, float, float]],
    steps: int,
    eps: float = 1e-7,
    safety: float = 1.0,
) -> torch.Tensor:
    """The iteration of torch.optim.Muon's documentation: X0 = G / max(s ||G||_F, eps)."""
    tall = g.shape[0] > g.shape[1]
    x = g.T if tall else g
    x = quintic(x / max(safety * x.norm().item(), eps), coefficients, steps)
    return x.T if tall else x


def polar_express_paper(g: torch.Tensor, steps: int) -> torch.Tensor:
    """Amsel et al. 2025, Algorithm 1, in float64 (the paper casts to bfloat16)."""
    coefficients = [
        (8.28721201814563, -23.595886519098837, 17.300387312530933),
        (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
        (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
        (3.3184196573706015, -2.488488024314874, 0.51004894012372),
        (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
        (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
        (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
        (1.875, -1.25, 0.375),
    ]
    coefficients = [(a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in coefficients[:-1]] + [
        coefficients[-1]
    ]
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / (x.norm() * 1.01 + 1e-7)
    x = quintic(x, coefficients, steps)
    return x.T if g.shape[0] > g.shape[1] else x


# ---------------------------------------------------------------------- Newton-Schulz


@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (5, 5)])
def test_newton_schulz_converges_to_the_polar_factor(shape: tuple[int, int]) -> None:
    g = random_matrix(*shape)
    cubic = newton_schulz(g, steps=60, coefficients=(1.5, -0.5, 0.0), dtype=None)
    torch.testing.assert_close(cubic, polar_factor(g), rtol=0, atol=1e-10)
    express = newton_schulz(g, steps=16, coefficients="polar_express", dtype=None, safety=1.01)
    torch.testing.assert_close(express, polar_factor(g), rtol=0, atol=1e-10)


@pytest.mark.parametrize("steps", [1, 5, 10])
def test_polar_express_is_the_papers_algorithm(steps: int) -> None:
    """float64, <= 1e-10: the paper adds 1e-7 to the norm where descent takes
    max(norm, 1e-7); with ||G|| = 1e4 the two differ by 1e-11 relative."""
    g = random_matrix(6, 9, scale=1e4 / math.sqrt(54))
    ours = newton_schulz(g, steps=steps, coefficients=POLAR_EXPRESS, dtype=None, safety=1.01)
    torch.testing.assert_close(ours, polar_express_paper(g, steps), rtol=0, atol=1e-10)
    assert torch.equal(
        ours, newton_schulz(g, steps=steps, coefficients="polar_express", dtype=None, safety=1.01)
    )


@pytest.mark.parametrize("shape", [(8, 3), (3, 8)])
def test_jordan_iteration_is_the_documented_one(shape: tuple[int, int]) -> None:
    g = random_matrix(*shape, seed=2)
    torch.testing.assert_close(
        newton_schulz(g, dtype=None), reference_newton_schulz(g, [JORDAN], 5), rtol=0, atol=1e-12
    )


def test_newton_schulz_leaves_its_input_alone_and_refuses_vectors() -> None:
    g = random_matrix(4, 3).to(torch.bfloat16)
    before = g.clone()
    out = newton_schulz(g)
    assert torch.equal(g, before) and out.dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"shape \(4,\); expected a 2-D tensor"):
        newton_schulz(torch.ones(4))


# ---------------------------------------------------------------------- OrthoMuon


def matrices(dtype: torch.dtype = torch.float64, seed: int = 0) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [
        nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype))
        for shape in [(12, 5), (5, 12), (6, 6), (9, 4)]
    ]


def step_both(
    ours: list[torch.Tensor],
    theirs: list[torch.Tensor],
    opt: Any,
    ref: Any,
    steps: int = 12,
    scale: float = 1.0,
) -> None:
    for step in range(steps):
        generator = torch.Generator().manual_seed(100 + step)
        for a, b in zip(ours, theirs, strict=True):
            grad = scale * torch.randn(a.shape, generator=generator, dtype=a.dtype)
            a.grad, b.grad = grad.clone(), grad.clone()
        opt.step()
        ref.step()


TORCH_CONFIGS = [
    {},
    {"nesterov": False},
    {"adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.0},
    {"momentum": 0.9, "ns_steps": 3, "ns_coefficients": (3.0, -3.2, 1.2), "eps": 1e-5},
]


@pytest.mark.parametrize("config", TORCH_CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_defaults_are_torch_muon_bit_for_bit(config: dict[str, Any], dtype: torch.dtype) -> None:
    ours, theirs = matrices(dtype), matrices(dtype)
    groups = lambda ps: [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.05}]  # noqa: E731
    opt = descent.OrthoMuon(groups(ours), lr=0.02, **config)
    ref = torch.optim.Muon(groups(theirs), lr=0.02, **config)
    step_both(ours, theirs, opt, ref)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0], matrices(dtype)[0])


def test_bfloat16_momentum_buffer_is_the_average_of_the_gradients() -> None:
    """With bfloat16 parameters the iteration's cast is a no-op; descent never normalises
    the momentum buffer in place (torch 2.13's Muon does, without Nesterov)."""
    param = nn.Parameter(torch.ones(6, 4, dtype=torch.bfloat16))
    opt = descent.OrthoMuon([param], lr=0.01, nesterov=False)
    expected = torch.zeros(6, 4, dtype=torch.bfloat16)
    for step in range(3):
        param.grad = torch.full((6, 4), float(step + 1), dtype=torch.bfloat16)
        expected.lerp_(param.grad, 0.05)
        opt.step()
        assert torch.equal(opt.state[param]["momentum_buffer"], expected)


@contextlib.contextmanager
def bfloat16_cast_disabled() -> Iterator[None]:
    """Make ``tensor.bfloat16()`` return the tensor: the reference runs in float64."""
    original = torch.Tensor.bfloat16
    torch.Tensor.bfloat16 = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.bfloat16 = original  # type: ignore[method-assign]


def test_jordans_package_in_float64() -> None:
    """muon-optimizer's SingleDeviceMuon with its bfloat16 cast disabled: <= 1e-10.

    The package normalises by ||G|| + 1e-7 and descent by max(||G||, 1e-7); gradients of
    norm ~1e6 make that 1e-13 relative."""
    muon = pytest.importorskip("muon")
    ours, theirs = matrices(), matrices()
    opt = descent.OrthoMuon(ours, lr=0.02, weight_decay=0.01, ns_dtype=None)
    ref = muon.SingleDeviceMuon(theirs, lr=0.02, weight_decay=0.01)
    with bfloat16_cast_disabled():
        step_both(ours, theirs, opt, ref, scale=1e5)
    for a, b, start in zip(ours, theirs, matrices(), strict=True):
        assert (a - b).abs().max() <= 1e-10 * (b - start).abs().max()


def test_jordans_package_in_bfloat16() -> None:
    """The package as it runs (bfloat16 iteration): within 10% of the distance moved.

    Both iterate in bfloat16 (8-bit significand), the package with ``b*A + c*A@A`` and
    descent with torch's ``addmm``; the roundings differ by a few percent per update."""
    muon = pytest.importorskip("muon")
    ours, theirs = matrices(torch.float32), matrices(torch.float32)
    opt = descent.OrthoMuon(ours, lr=0.02, weight_decay=0.0)
    ref = muon.SingleDeviceMuon(theirs, lr=0.02)
    step_both(ours, theirs, opt, ref, steps=10)
    for a, b, start in zip(ours, theirs, matrices(torch.float32), strict=True):
        assert (a - b).abs().max() <= 0.1 * (b - start).abs().max()


def test_conv_filters_are_updated_as_their_matrix_view() -> None:
    """A (out, in, kh, kw) filter moves as the (out, in*kh*kw) matrix would (Jordan's
    flattening); muon-optimizer 0.1.0 itself fails on 4-D tensors (it adds the flattened
    update to the 4-D parameter)."""
    generator = torch.Generator().manual_seed(5)
    conv = nn.Parameter(torch.randn(8, 2, 3, 3, generator=generator, dtype=torch.float64))
    flat = nn.Parameter(conv.detach().reshape(8, -1).clone())
    opt = descent.OrthoMuon([conv], lr=0.03, ns_dtype=None, normuon=True)
    ref = descent.OrthoMuon([flat], lr=0.03, ns_dtype=None, normuon=True)
    for _ in range(4):
        grad = torch.randn(8, 2, 3, 3, generator=generator, dtype=torch.float64)
        conv.grad, flat.grad = grad, grad.reshape(8, -1).clone()
        opt.step()
        ref.step()
    assert torch.equal(conv.detach().reshape(8, -1), flat.detach())
    assert opt.state[conv]["row_second_moment"].shape == (8, 1)


def normuon_paper(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    memory: dict[int, dict[str, torch.Tensor]],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """NorMuon, Li et al. 2025, Algorithm 1, written out (Newton-Schulz as above)."""
    for w, g in zip(params, grads, strict=True):
        state = memory.setdefault(
            id(w), {"m": torch.zeros_like(w), "v": torch.zeros(w.shape[0], dtype=w.dtype)}
        )
        state["m"] = beta1 * state["m"] + (1 - beta1) * g
        o = reference_newton_schulz(state["m"], [JORDAN], 5)
        state["v"] = beta2 * state["v"] + (1 - beta2) * (o * o).mean(dim=1)
        o_hat = o / (state["v"].sqrt()[:, None] + eps)
        m, n = w.shape
        lr_hat = 0.2 * lr * math.sqrt(m * n) / o_hat.norm()
        w.copy_(w - lr * weight_decay * w - lr_hat * o_hat)


def test_normuon_is_the_papers_algorithm() -> None:
    ours = matrices()
    theirs = [p.detach().clone() for p in ours]
    opt = descent.OrthoMuon(
        ours,
        lr=0.02,
        normuon=True,
        nesterov=False,
        ns_dtype=None,
        weight_decay=0.01,
        beta2=0.9,
        normuon_eps=1e-8,
    )
    memory: dict[int, dict[str, torch.Tensor]] = {}
    for step in range(12):
        generator = torch.Generator().manual_seed(100 + step)
        grads = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in ours]
        for p, g in zip(ours, grads, strict=True):
            p.grad = g
        opt.step()
        normuon_paper(theirs, grads, memory, 0.02, 0.95, 0.9, 1e-8, 0.01)
    for a, b, start in zip(ours, theirs, matrices(), strict=True):
        assert (a.detach() - b).abs().max() <= 1e-10 * (b - start).abs().max()


def test_normuon_matches_pytorch_optimizer() -> None:
    """pytorch-optimizer's NorMuon (update_scale='match_rms', the paper's scale), its
    iteration run in float64: <= 1e-10 (it adds eps to the final norm, 1e-10 here)."""
    normuon = pytest.importorskip("pytorch_optimizer.optimizer.muon.normuon")
    ours, theirs = matrices(), matrices()
    opt = descent.OrthoMuon(
        ours, lr=0.02, normuon=True, nesterov=False, ns_dtype=None, weight_decay=0.01
    )
    ref = normuon.NorMuon(
        [{"params": theirs, "use_muon": True}],
        lr=0.02,
        nesterov=False,
        update_scale="match_rms",
        weight_decay=0.01,
        foreach=False,
    )
    original = normuon.zero_power_via_newton_schulz_5
    normuon.zero_power_via_newton_schulz_5 = functools.partial(original, dtype=torch.float64)
    try:
        step_both(ours, theirs, opt, ref)
    finally:
        normuon.zero_power_via_newton_schulz_5 = original
    for a, b, start in zip(ours, theirs, matrices(), strict=True):
        assert (a - b).abs().max() <= 1e-10 * (b - start).abs().max()


def test_polar_express_option_uses_the_schedule_and_safety_factor() -> None:
    ours = matrices()
    theirs = [p.detach().clone() for p in ours]
    opt = descent.OrthoMuon(
        ours,
        lr=0.02,
        nesterov=False,
        momentum=0.0,
        weight_decay=0.0,
        ns_coefficients="polar_express",
        ns_dtype=None,
    )
    generator = torch.Generator().manual_seed(9)
    grads = [1e4 * torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in ours]
    for p, g in zip(ours, grads, strict=True):
        p.grad = g
    opt.step()
    for a, b, g in zip(ours, theirs, grads, strict=True):
        scale = math.sqrt(max(1, g.shape[0] / g.shape[1]))
        expected = b - 0.02 * scale * polar_express_paper(g, 5)
        torch.testing.assert_close(a.detach(), expected, rtol=0, atol=1e-12)


def test_matrices_only_and_clear_errors() -> None:
    bias = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(3,\); Muon updates matrices.*MuonAdamW"):
        descent.OrthoMuon([bias])
    with pytest.raises(TypeError, match=r"complex dtype"):
        descent.OrthoMuon([nn.Parameter(torch.zeros(2, 2, dtype=torch.complex64))])
    with pytest.raises(ValueError, match=r"ns_coefficients='jordan' is invalid"):
        descent.OrthoMuon(matrices(), ns_coefficients="jordan")
    with pytest.raises(ValueError, match=r"ns_dtype=torch\.int32"):
        descent.OrthoMuon(matrices(), ns_dtype=torch.int32)
    with pytest.raises(ValueError, match=r"normuon=True sets its own step scale"):
        descent.OrthoMuon(matrices(), normuon=True, adjust_lr_fn="match_rms_adamw")
    state = functional.ortho_muon.init({"b": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"ortho_muon: the parameter has shape \(3,\)"):
        functional.ortho_muon.step({"b": torch.zeros(3)}, {"b": torch.ones(3)}, state)


def test_normuon_state_round_trips_and_is_checked() -> None:
    params = matrices()
    opt = descent.OrthoMuon(params, lr=0.02, normuon=True)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["param_groups"][0]["ns_dtype"] == torch.bfloat16
    clone = [nn.Parameter(p.detach().clone()) for p in params]
    resumed = descent.OrthoMuon(clone, lr=0.02, normuon=True)
    resumed.load_state_dict(saved)
    for a, b in zip(params, clone, strict=True):
        a.grad, b.grad = torch.full_like(a, 0.5), torch.full_like(b, 0.5)
    opt.step()
    resumed.step()
    assert all(torch.equal(a, b) for a, b in zip(params, clone, strict=True))
    saved["state"][0]["row_second_moment"] = torch.zeros(12)
    with pytest.raises(
        ValueError,
        match=r"row_second_moment has shape \(12,\), the parameter "
        r"has shape \(12, 5\), so row_second_moment has "
        r"shape \(12, 1\)",
    ):
        resumed.load_state_dict(saved)


def test_functional_form_equals_the_class() -> None:
    params = matrices()
    tensors = [p.detach().clone().requires_grad_() for p in params]
    opt = descent.OrthoMuon(tensors, lr=0.02, normuon=True, ns_dtype=None)
    tree = [p.detach().clone() for p in params]
    state = functional.ortho_muon.init(tree, normuon=True)
    for step in range(4):
        generator = torch.Generator().manual_seed(step)
        grads = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
        for tensor, grad in zip(tensors, grads, strict=True):
            tensor.grad = grad.clone()
        opt.step()
        tree, state = functional.ortho_muon.step(
            tree, grads, state, lr=0.02, normuon=True, ns_dtype=None
        )
    assert all(torch.equal(a, b.detach()) for a, b in zip(tree, tensors, strict=True))


def test_cautious_masking_with_muon() -> None:
    """Muon's decay is decoupled, so cautious=True applies (with weight decay too); an
    element moves only where Muon's step agrees in sign with the gradient."""
    params = matrices()
    descent.OrthoMuon(params, weight_decay=0.1, cautious=True)
    opt = descent.OrthoMuon(params, lr=0.02, weight_decay=0.0, cautious=True, ns_dtype=None)
    before = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(1)
    for p in params:
        p.grad = torch.randn(p.shape, dtype=p.dtype, generator=generator)
    opt.step()
    for p, old in zip(params, before, strict=True):
        moved = p.detach() != old
        assert moved.any() and not moved.all()
        assert ((old - p.detach()) * p.grad)[moved].gt(0).all()


# ---------------------------------------------------------------------- MuonAdamW


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mix = nn.Linear(width, 2 * width)
        self.out = nn.Linear(2 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(torch.relu(self.mix(self.norm(x))))


class TinyLM(nn.Module):
    """Token and position embeddings, two blocks, a final norm and a head (GPT-like)."""

    def __init__(self, vocab: int = 11, width: int = 8, tied: bool = False) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(6, width)
        self.blocks = nn.ModuleList([Block(width), Block(width)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        if tied:
            self.head.weight = self.wte.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def routing(opt: descent.MuonAdamW) -> dict[str, tuple[bool, str]]:
    return {route.name: (route.use_muon, route.reason) for route in opt.routes}


def test_routing_of_a_language_model() -> None:
    torch.manual_seed(0)
    opt = descent.MuonAdamW(TinyLM())
    routes = routing(opt)
    assert routes["wte.weight"] == (False, "embedding")
    assert routes["wpe.weight"] == (False, "embedding")
    assert routes["head.weight"] == (False, "output head (last nn.Linear)")
    assert routes["blocks.0.norm.weight"][0] is False
    assert routes["blocks.1.mix.bias"] == (False, "fewer than 2 dimensions (bias, norm gain)")
    muon = sorted(name for name, (flag, _) in routes.items() if flag)
    assert muon == [
        "blocks.0.mix.weight",
        "blocks.0.out.weight",
        "blocks.1.mix.weight",
        "blocks.1.out.weight",
    ]
    text = opt.describe()
    assert text.splitlines()[0] == "MuonAdamW: 15 parameters, 4 to Muon, 11 to AdamW"
    assert any(
        line.split()[:4] == ["head.weight", "(11,", "8)", "adamw"] for line in text.splitlines()
    )
    for group in opt.param_groups:
        rule = descent.OrthoMuon if group["use_muon"] else descent.AdamW
        assert set(rule.hyperparameters) <= set(group)
    assert [g["lr"] for g in opt.param_groups] == [0.02, 3e-4]


def test_a_tied_head_is_the_embedding_and_no_hidden_matrix_is_taken_for_the_head() -> None:
    torch.manual_seed(0)
    routes = routing(descent.MuonAdamW(TinyLM(tied=True)))
    assert "head.weight" not in routes  # the tied parameter is listed once
    assert routes["wte.weight"] == (False, "embedding")
    assert routes["blocks.1.out.weight"][0] is True


def test_overrides_by_name_and_by_group() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    opt = descent.MuonAdamW(model, adamw=["blocks.0.*"], muon=["wpe.weight"])
    routes = routing(opt)
    assert routes["blocks.0.mix.weight"] == (False, "named by adamw='blocks.0.*'")
    assert routes["wpe.weight"] == (True, "named by muon='wpe.weight'")
    with pytest.raises(
        ValueError,
        match=r"'blocks.0.mix.weight' matches muon='\*.mix.weight' "
        r"and adamw='blocks.0.\*'",
    ):
        descent.MuonAdamW(model, muon=["*.mix.weight"], adamw=["blocks.0.*"])
    with pytest.raises(
        ValueError,
        match=r"'norm.weight' matches muon='norm.weight' but has "
        r"shape \(8,\)",
    ):
        descent.MuonAdamW(model, muon=["norm.weight"])
    groups = [
        {
            "params": list(model.blocks.parameters()),
            "use_muon": False,
            "lr": 1e-3,
            "betas": (0.5, 0.9),
        },
        {"params": [model.head.weight], "use_muon": True, "lr": 0.01},
    ]
    opt = descent.MuonAdamW(groups, adamw_lr=5e-4)
    assert opt.param_groups[0]["betas"] == (0.5, 0.9) and opt.param_groups[0]["lr"] == 1e-3
    assert opt.param_groups[1]["momentum"] == 0.95
    assert routing(opt)["param_groups[1][0]"] == (True, "group use_muon=True")
    with pytest.raises(
        ValueError,
        match=r"param_groups\[0\] has options \['betas'\], which "
        r"are not arguments of MuonAdamW",
    ):
        descent.MuonAdamW([{"params": list(model.parameters()), "betas": (0.5, 0.9)}])
    with pytest.raises(ValueError, match=r"shape \(8,\); Muon updates matrices"):
        descent.MuonAdamW([{"params": [model.norm.weight], "use_muon": True}])


def test_routed_group_options_go_to_their_rule() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2))
    opt = descent.MuonAdamW(
        [
            {
                "params": model[:3].named_parameters(),
                "lr": 0.05,
                "adamw_lr": 1e-2,
                "adamw_betas": (0.8, 0.9),
            },
            {"params": model[4].named_parameters()},
        ],
        momentum=0.9,
    )
    by_rule = {(g["use_muon"], tuple(g["param_names"])): g for g in opt.param_groups}
    muon = by_rule[(True, ("0.weight", "2.weight"))]
    adamw = by_rule[(False, ("0.bias", "2.bias"))]
    assert (muon["lr"], muon["momentum"]) == (0.05, 0.9)
    assert (adamw["lr"], adamw["betas"]) == (1e-2, (0.8, 0.9))
    head = by_rule[(False, ("weight", "bias"))]  # names of the submodule's parameters
    assert head["lr"] == 3e-4  # the constructor's adamw_lr


def test_names_without_a_module_route_by_name_and_order() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    routes = routing(descent.MuonAdamW(model.named_parameters()))
    assert routes["wte.weight"] == (False, "embedding")
    assert routes["head.weight"] == (False, "output head (last matrix given)")
    assert routes["blocks.0.mix.weight"][0] is True


def lm_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    tokens = torch.randint(0, 11, (4, 6), generator=generator)
    return tokens, torch.randint(0, 11, (4, 6), generator=generator)


def lm_step(model: nn.Module, opt: Any, step: int, scale: float = 1.0) -> None:
    tokens, targets = lm_batch(step)
    opt.zero_grad()
    logits = model(tokens)
    loss = nn.functional.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1))
    (scale * loss).backward()
    opt.step()


def test_one_state_dict_resumes_exactly_and_pickles() -> None:
    torch.manual_seed(0)
    model = TinyLM().double()
    opt = descent.MuonAdamW(model, adamw_weight_decay=0.01, normuon=True)
    for step in range(3):
        lm_step(model, opt, step)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    clone = copy.deepcopy(model)
    resumed = descent.MuonAdamW(clone, adamw_weight_decay=0.01, normuon=True)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    pickled = pickle.loads(pickle.dumps((model, opt)))
    for step in range(3, 6):
        lm_step(model, opt, step)
        lm_step(clone, resumed, step)
        lm_step(pickled[0], pickled[1], step)
    for a, b, c in zip(
        model.parameters(), clone.parameters(), pickled[0].parameters(), strict=True
    ):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert {key for state in opt.state.values() for key in state} == {
        "momentum_buffer",
        "row_second_moment",
        "step",
        "exp_avg",
        "exp_avg_sq",
    }


def test_scalar_state_is_its_rules_and_loaded_numbers_become_tensors() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    opt = descent.MuonAdamW(model)
    assert opt.scalar_state == descent.AdamW.scalar_state == {"step"}
    assert type(opt).scalar_state == {"step"}
    lm_step(model, opt, 0)
    saved = opt.state_dict()
    for state in saved["state"].values():
        if "step" in state:  # as torch.optim wrote it before 1.12: a Python number
            state["step"] = int(state["step"])
    resumed = descent.MuonAdamW(copy.deepcopy(model))
    resumed.load_state_dict(saved)
    steps = [state["step"] for state in resumed.state.values() if "step" in state]
    assert steps and all(torch.is_tensor(step) and step.device.type == "cpu" for step in steps)


def test_state_dict_with_another_routing_is_refused() -> None:
    weight = nn.Parameter(torch.ones(3, 2))
    saved = descent.MuonAdamW([{"params": [weight], "use_muon": True}]).state_dict()
    other = descent.MuonAdamW([{"params": [weight], "use_muon": False}])
    with pytest.raises(
        ValueError,
        match=r"param_groups\[0\] goes to Muon in the state dict "
        r"and to AdamW here",
    ):
        other.load_state_dict(saved)


def test_matches_jordans_muon_with_aux_adam() -> None:
    """muon-optimizer's SingleDeviceMuonWithAuxAdam on the same groups, its bfloat16 cast
    disabled, in float64: <= 1e-10 of the distance moved. The loss is scaled by 1e9 so
    that the two normalisations (||G|| + 1e-7 there, max(||G||, 1e-7) here) agree; both
    rules are otherwise invariant to the scale (AdamW's eps is 1e-10)."""
    muon = pytest.importorskip("muon")
    torch.manual_seed(0)
    model = TinyLM().double()
    ours_model, theirs_model = copy.deepcopy(model), copy.deepcopy(model)
    groups = descent.MuonAdamW.param_groups_for(
        ours_model, adamw_weight_decay=0.01, weight_decay=0.01, ns_dtype=None
    )
    opt = descent.MuonAdamW(groups)
    theirs = descent.MuonAdamW.param_groups_for(theirs_model)
    keys = {True: ("lr", "momentum"), False: ("lr", "betas", "eps")}
    ref = muon.SingleDeviceMuonWithAuxAdam(
        [
            {
                "params": g["params"],
                "use_muon": g["use_muon"],
                "weight_decay": 0.01,
                **{key: g[key] for key in keys[g["use_muon"]]},
            }
            for g in theirs
        ]
    )
    with bfloat16_cast_disabled():
        for step in range(6):
            lm_step(ours_model, opt, step, scale=1e9)
            lm_step(theirs_model, ref, step, scale=1e9)
    starts = dict(model.named_parameters())
    names = {id(p): name for name, p in theirs_model.named_parameters()}
    for group, reference in zip(groups, theirs, strict=True):
        for a, b in zip(group["params"], reference["params"], strict=True):
            moved = (b - starts[names[id(b)]]).abs().max()
            assert (a - b).abs().max() <= 1e-10 * moved


def test_param_groups_for_gives_complete_groups_that_route_alike() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    groups = descent.MuonAdamW.param_groups_for(model, lr=0.03, adamw_lr=1e-3)
    assert [g["use_muon"] for g in groups] == [True, False]
    assert all(isinstance(p, torch.Tensor) for g in groups for p in g["params"])
    assert "param_names" not in groups[0] and groups[1]["lr"] == 1e-3
    opt = descent.MuonAdamW(groups)
    assert [len(g["params"]) for g in opt.param_groups] == [4, 11]
    assert opt.param_groups[0]["lr"] == 0.03


def test_a_refused_group_adds_nothing() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    opt = descent.MuonAdamW(model.blocks[0])
    groups, routes = len(opt.param_groups), len(opt.routes)
    extra = nn.Linear(3, 3)
    with pytest.raises(ValueError, match=r"is already optimized"):
        opt.add_param_group(
            {
                "params": [
                    ("extra.weight", extra.weight),
                    ("extra.bias", extra.bias),
                    ("again", model.blocks[0].norm.bias),
                ]
            }
        )
    assert (len(opt.param_groups), len(opt.routes)) == (groups, routes)
    opt.add_param_group({"params": [("extra.weight", extra.weight), ("extra.bias", extra.bias)]})
    assert len(opt.routes) == routes + 2
