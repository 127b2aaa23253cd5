"""The algorithms that complete torch.optim: what the generic tests do not reach.

Muon's Newton–Schulz iteration against the SVD, its learning-rate scales and options
against torch; Adafactor's factored state against torch's, for tensors of every rank;
L-BFGS's closure, single group and state checks; ASGD's average.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn

import descent
from descent.optim.muon import NS_COEFFICIENTS, adjusted_lr, newton_schulz

# ---------------------------------------------------------------------- Muon


@pytest.mark.parametrize("shape", [(8, 5), (5, 8), (16, 16)])
def test_newton_schulz_keeps_the_singular_vectors_and_flattens_the_values(
    shape: tuple[int, int],
) -> None:
    """Jordan's quintic: singular values pushed into about (0.5, 1.5), singular vectors
    those of the input (U^T O V nearly diagonal), in bfloat16, shape kept."""
    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    orthogonal = newton_schulz(matrix, NS_COEFFICIENTS, 5, 1e-7)
    assert orthogonal.shape == shape and orthogonal.dtype == torch.bfloat16
    values = torch.linalg.svdvals(orthogonal.double())
    assert values.min() > 0.5 and values.max() < 1.5
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    inner = u.T @ orthogonal.double() @ vh.T
    assert (inner - torch.diag(torch.diagonal(inner))).abs().max() < 0.05
    assert torch.equal(
        newton_schulz(matrix, NS_COEFFICIENTS, 0, 1e-7),
        (matrix.bfloat16() / matrix.bfloat16().norm()),
    )


def test_newton_schulz_never_writes_its_input() -> None:
    matrix = torch.randn(4, 3, dtype=torch.bfloat16)
    before = matrix.clone()
    newton_schulz(matrix, NS_COEFFICIENTS, 3, 1e-7)
    assert torch.equal(matrix, before)


def test_adjusted_lr_scales() -> None:
    assert adjusted_lr(0.1, None, torch.Size([32, 8])) == pytest.approx(0.1 * 2.0)
    assert adjusted_lr(0.1, "original", torch.Size([8, 32])) == pytest.approx(0.1)
    assert adjusted_lr(0.1, "match_rms_adamw", torch.Size([8, 32])) == pytest.approx(
        0.1 * 0.2 * math.sqrt(32)
    )


def _muon_run(
    cls: Any, options: dict[str, Any], dtype: torch.dtype = torch.float64, steps: int = 6
) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    params = [
        nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype))
        for shape in [(6, 4), (4, 9), (5, 5)]
    ]
    opt = cls(params, **options)
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype)
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize(
    "options",
    [
        {"adjust_lr_fn": "original", "lr": 0.02},
        {"adjust_lr_fn": "match_rms_adamw", "lr": 0.02, "weight_decay": 0.01},
        {"nesterov": False, "momentum": 0.9},
        {"ns_steps": 0},
    ],
    ids=["original", "match_rms_adamw", "no nesterov", "no iteration"],
)
def test_muon_options_match_torch(options: dict[str, Any]) -> None:
    ours, theirs = _muon_run(descent.Muon, options), _muon_run(torch.optim.Muon, options)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)


def test_muon_bfloat16_momentum_buffer_is_not_normalized() -> None:
    """torch's Muon, for bfloat16 parameters without Nesterov, divides its momentum
    buffer in place (the bfloat16 "copy" it normalizes is the buffer itself);
    descent keeps the buffer the exponential average it is."""
    param = nn.Parameter(torch.randn(4, 3, dtype=torch.bfloat16))
    opt = descent.Muon([param], nesterov=False, momentum=0.95)
    param.grad = torch.randn(4, 3, dtype=torch.bfloat16)
    opt.step()
    expected = torch.zeros_like(param).lerp_(param.grad, 0.05)
    assert torch.equal(opt.state[param]["momentum_buffer"], expected)


def test_muon_refuses_parameters_that_are_not_matrices() -> None:
    with pytest.raises(ValueError, match=r"has shape \(2, 3, 4\); Muon updates 2-D"):
        descent.Muon([nn.Parameter(torch.zeros(2, 3, 4))])
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"parameter 'bias'.*has shape \(2,\)"):
        descent.Muon(model)


# ---------------------------------------------------------------------- Adafactor


def _adafactor_params(generator: torch.Generator) -> list[nn.Parameter]:
    shapes = [(), (5,), (4, 3), (2, 3, 4)]
    return [
        nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64))
        for shape in shapes
    ]


def test_adafactor_factors_every_rank_as_torch_does() -> None:
    ours = _adafactor_params(torch.Generator().manual_seed(0))
    theirs = _adafactor_params(torch.Generator().manual_seed(0))
    opt = descent.Adafactor(ours, lr=0.05, weight_decay=0.1)
    reference = torch.optim.Adafactor(theirs, lr=0.05, weight_decay=0.1)
    for step in range(6):
        generator = torch.Generator().manual_seed(step)
        for p, q in zip(ours, theirs, strict=True):
            p.grad = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            q.grad = p.grad.clone()
        opt.step()
        reference.step()
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p, q)
        assert opt.state[p].keys() == reference.state[q].keys()
        for key, value in opt.state[p].items():
            assert torch.equal(value, reference.state[q][key]), key
    assert opt.state[ours[3]]["row_var"].shape == (2, 3, 1)
    assert opt.state[ours[3]]["col_var"].shape == (2, 1, 4)


def test_adafactor_state_of_the_wrong_shape_is_refused() -> None:
    params = _adafactor_params(torch.Generator().manual_seed(0))
    opt = descent.Adafactor(params)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    bad = copy.deepcopy(opt.state_dict())
    bad["state"][2]["row_var"] = torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(
        ValueError,
        match=r"row_var has shape \(4, 3\), the parameter has "
        r"shape \(4, 3\), so row_var has shape \(4, 1\)",
    ):
        opt.load_state_dict(bad)
    bad = copy.deepcopy(opt.state_dict())
    bad["state"][1]["row_var"] = torch.zeros(5, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"unknown \['row_var'\] keys"):
        opt.load_state_dict(bad)


# ---------------------------------------------------------------------- LBFGS


def _regression(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(30, 4, generator=generator, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]], dtype=torch.float64) + 0.1
    torch.manual_seed(seed)
    return nn.Linear(4, 1).double(), x, y


def test_lbfgs_solves_a_least_squares_problem() -> None:
    model, x, y = _regression()
    opt = descent.LBFGS(model.parameters(), line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    torch.testing.assert_close(
        model.weight.detach(),
        torch.tensor([[1.0, -2.0, 0.5, 3.0]], dtype=torch.float64),
        rtol=1e-4,
        atol=1e-4,
    )
    assert abs(model.bias.item() - 0.1) < 1e-4


def test_lbfgs_needs_a_closure_and_one_group() -> None:
    model, _, _ = _regression()
    opt = descent.LBFGS(model.parameters())
    with pytest.raises(TypeError, match=r"closure"):
        opt.step()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"closure=None is not callable"):
        opt.step(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"second param group is refused"):
        descent.LBFGS([{"params": [model.weight]}, {"params": [model.bias]}])
    assert descent.LBFGS(model.parameters(), max_iter=8).param_groups[0]["max_eval"] == 10


def test_lbfgs_state_dict_checks() -> None:
    model, x, y = _regression()
    opt = descent.LBFGS(model.parameters(), history_size=4)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    good = copy.deepcopy(opt.state_dict())
    corruptions = {
        r"unknown \['momentum'\] keys": lambda s: s["state"][0].update(momentum=1.0),
        r"d must be a flat tensor of the 5": lambda s: s["state"][0].update(d=torch.zeros(3)),
        r"different lengths": lambda s: s["state"][0]["ro"].pop(),
        r"come together": lambda s: s["state"][0].pop("ro"),
        r"only the first parameter keeps": lambda s: s["state"].update({1: {"n_iter": 1}}),
    }
    for message, corrupt in corruptions.items():
        bad = copy.deepcopy(good)
        corrupt(bad)
        with pytest.raises(ValueError, match=message):
            opt.load_state_dict(bad)
    opt.load_state_dict(good)
    opt.step(closure)


# ---------------------------------------------------------------------- ASGD


def test_asgd_average_is_the_mean_of_the_iterates_after_t0() -> None:
    """With lambd = 0 the step size stays lr, and ax is the running mean of the
    parameters after step t0 (Polyak averaging), computed here independently."""
    param = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = descent.ASGD([param], lr=0.1, lambd=0.0, t0=2)
    iterates = []
    for step in range(8):
        param.grad = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) * (step % 3 - 1)
        opt.step()
        iterates.append(param.detach().clone())
    # step t uses mu = 1 / max(1, t - 1 - t0): ax is the iterate itself up to step
    # t0 + 2, then the mean of the iterates from step t0 + 2 on
    expected = torch.stack(iterates[3:]).mean(0)
    torch.testing.assert_close(opt.state[param]["ax"], expected, rtol=1e-6, atol=1e-7)
