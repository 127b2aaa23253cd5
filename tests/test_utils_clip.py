"""Gradient clipping against torch.nn.utils, non-finite policies, forms and errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import descent
from descent.utils import clip_grad_norm, clip_grad_value


def params_with_grads(
    scale: float, dtype: torch.dtype = torch.float64, seed: int = 0
) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (3,), (2, 2, 2)]
    params = [nn.Parameter(torch.zeros(shape, dtype=dtype)) for shape in shapes]
    for param in params:
        param.grad = scale * torch.randn(param.shape, generator=generator, dtype=dtype)
    return params


def twin(params: list[nn.Parameter]) -> list[nn.Parameter]:
    copies = [nn.Parameter(p.detach().clone()) for p in params]
    for copy, param in zip(copies, params, strict=True):
        copy.grad = param.grad.clone()
    return copies


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("scale", [0.01, 10.0], ids=["small", "large"])
def test_clip_grad_norm_matches_torch(norm_type: float, scale: float, dtype: torch.dtype) -> None:
    ours = params_with_grads(scale, dtype)
    reference = twin(ours)
    norm = clip_grad_norm(ours, max_norm=1.0, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(reference, max_norm=1.0, norm_type=norm_type)
    torch.testing.assert_close(norm, expected, rtol=1e-6, atol=0)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)


def test_clip_grad_norm_closed_form() -> None:
    a, b = (
        nn.Parameter(torch.zeros(2, dtype=torch.float64)),
        nn.Parameter(torch.zeros(1, dtype=torch.float64)),
    )
    a.grad, b.grad = (
        torch.tensor([3.0, 0.0], dtype=torch.float64),
        torch.tensor([4.0], dtype=torch.float64),
    )
    norm = clip_grad_norm([a, b], max_norm=2.0)
    assert norm.item() == 5.0
    scale = 2.0 / (5.0 + 1e-6)
    assert a.grad.tolist() == pytest.approx([3.0 * scale, 0.0], rel=1e-15)
    assert b.grad.tolist() == pytest.approx([4.0 * scale], rel=1e-15)
    c = nn.Parameter(torch.zeros(1))
    c.grad = torch.tensor([0.5])
    assert clip_grad_norm(c, max_norm=1.0).item() == 0.5
    assert c.grad.item() == 0.5  # below the limit: unchanged
    assert clip_grad_norm([nn.Parameter(torch.zeros(1))], 1.0).item() == 0.0  # no grads


def test_every_parameter_form_and_per_group_norms() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).double()
    model(torch.randn(5, 3, dtype=torch.float64)).pow(2).sum().backward()
    saved = [p.grad.clone() for p in model.parameters()]

    def reset() -> None:
        for p, g in zip(model.parameters(), saved, strict=True):
            p.grad = g.clone()

    opt = descent.SGD(
        [{"params": model[0].parameters()}, {"params": model[1].parameters()}], lr=0.1
    )
    expected = torch.linalg.vector_norm(torch.cat([g.flatten() for g in saved]))
    for form in (model, model.parameters(), model.named_parameters(), opt, opt.param_groups):
        reset()
        torch.testing.assert_close(clip_grad_norm(form, max_norm=1e9), expected)
    reset()
    norms = clip_grad_norm(opt, max_norm=0.5, per_group=True)
    group_norms = [
        torch.linalg.vector_norm(torch.cat([g.flatten() for g in saved[i : i + 2]])) for i in (0, 2)
    ]
    torch.testing.assert_close(norms, torch.stack(group_norms))
    for i in (0, 2):
        clipped = torch.linalg.vector_norm(
            torch.cat([p.grad.flatten() for p in list(model.parameters())[i : i + 2]])
        )
        assert clipped.item() == pytest.approx(0.5, rel=1e-5)


def bad_params() -> list[nn.Parameter]:
    params = params_with_grads(1.0)
    params[1].grad[0] = math.inf
    params[2].grad[0, 0, 0] = math.nan
    return params


def test_nonfinite_error_names_the_parameter_and_changes_nothing() -> None:
    model = nn.Linear(2, 2)
    model.weight.grad = torch.ones(2, 2)
    model.bias.grad = torch.tensor([1.0, math.nan])
    with pytest.raises(FloatingPointError, match=r"norm is nan.*'bias' has a non-finite"):
        clip_grad_norm(model, max_norm=1.0)
    assert torch.equal(model.weight.grad, torch.ones(2, 2))
    params = bad_params()
    before = [p.grad.clone() for p in params]
    with pytest.raises(FloatingPointError, match=r"parameters\[1\] has a non-finite gradient"):
        clip_grad_norm(params, max_norm=1.0)
    for p, g in zip(params, before, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0, equal_nan=True)


def test_nonfinite_skip_zero_and_propagate() -> None:
    params = bad_params()
    norm = clip_grad_norm(params, max_norm=1.0, nonfinite="skip")
    assert not torch.isfinite(norm)
    assert all(p.grad is None for p in params)
    opt = descent.Adam(params, lr=0.1)
    opt.step()  # skipped: nothing changes, no state
    assert all(not p.detach().any() for p in params) and not opt.state

    params = bad_params()
    clip_grad_norm(params, max_norm=1.0, nonfinite="zero")
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in params)

    params = bad_params()
    reference = twin(params)
    norm = clip_grad_norm(params, max_norm=1.0, nonfinite="propagate")
    expected = torch.nn.utils.clip_grad_norm_(reference, max_norm=1.0)
    assert torch.isnan(norm) and torch.isnan(expected)
    for a, b in zip(params, reference, strict=True):
        torch.testing.assert_close(a.grad, b.grad, equal_nan=True)

    # An infinite norm without a nan: the same policies apply.
    inf_params = params_with_grads(1.0)
    inf_params[0].grad[0, 0] = math.inf
    with pytest.raises(FloatingPointError, match=r"norm is inf"):
        clip_grad_norm(inf_params, max_norm=1.0)


def test_per_group_policies_act_per_group() -> None:
    good, bad = params_with_grads(1.0, seed=1), bad_params()
    saved = [p.grad.clone() for p in good]
    norms = clip_grad_norm(
        [{"params": good}, {"params": bad}], max_norm=1e9, nonfinite="skip", per_group=True
    )
    assert torch.isfinite(norms[0]) and not torch.isfinite(norms[1])
    assert all(torch.equal(p.grad, g) for p, g in zip(good, saved, strict=True))
    assert all(p.grad is None for p in bad)


@pytest.mark.parametrize("clip_value", [0.1, 1.0])
def test_clip_grad_value_matches_torch(clip_value: float) -> None:
    ours = params_with_grads(1.0)
    ours[0].grad[0, 0], ours[0].grad[0, 1] = math.inf, -math.inf
    reference = twin(ours)
    clip_grad_value(ours, clip_value)
    torch.nn.utils.clip_grad_value_(reference, clip_value)
    for a, b in zip(ours, reference, strict=True):
        assert torch.equal(a.grad, b.grad)
    assert ours[0].grad[0, 0].item() == clip_value
    assert max(p.grad.abs().max().item() for p in ours) <= clip_value


def test_bad_arguments_are_refused() -> None:
    params = params_with_grads(1.0)
    cases = [
        (lambda: clip_grad_norm(params, -1.0), ValueError, r"max_norm=-1\.0 is invalid"),
        (lambda: clip_grad_norm(params, 0), ValueError, r"max_norm=0"),
        (lambda: clip_grad_norm(params, math.nan), ValueError, r"max_norm=nan"),
        (lambda: clip_grad_norm(params, "1"), ValueError, r"max_norm='1'"),
        (lambda: clip_grad_norm(params, 1.0, norm_type=0), ValueError, r"norm_type=0"),
        (
            lambda: clip_grad_norm(params, 1.0, nonfinite="ignore"),
            ValueError,
            r"nonfinite='ignore' is invalid; expected one of \('error'",
        ),
        (lambda: clip_grad_norm(params, 1.0, per_group=1), TypeError, r"per_group=1"),
        (lambda: clip_grad_norm({"a": params[0]}, 1.0), TypeError, r"has type dict"),
        (lambda: clip_grad_norm([1.0], 1.0), TypeError, r"parameters\[0\] has type float"),
        (lambda: clip_grad_norm([{"lr": 1}], 1.0), ValueError, r"group 0 has no 'params'"),
        (lambda: clip_grad_value(params, 0.0), ValueError, r"clip_value=0\.0 is invalid"),
        (lambda: clip_grad_value(params, math.inf), ValueError, r"clip_value=inf"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
    sparse = nn.Parameter(torch.zeros(3))
    sparse.grad = torch.zeros(3).to_sparse()
    with pytest.raises(TypeError, match=r"sparse gradient"):
        clip_grad_norm([sparse], 1.0)
    complex_param = nn.Parameter(torch.zeros(2, dtype=torch.complex64))
    complex_param.grad = torch.ones(2, dtype=torch.complex64)
    with pytest.raises(TypeError, match=r"complex gradient"):
        clip_grad_value([complex_param], 1.0)
    assert clip_grad_norm([complex_param], 1e9).item() == pytest.approx(math.sqrt(2))


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=3), min_size=1, max_size=4),
    log_scale=st.floats(-4, 4),
    max_norm=st.floats(1e-3, 1e3),
    norm_type=st.sampled_from([1.0, 2.0, 3.0, math.inf]),
    seed=st.integers(0, 2**16),
)
def test_clipping_property_against_torch(
    shapes: list[list[int]], log_scale: float, max_norm: float, norm_type: float, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    ours = []
    for shape in shapes:
        param = nn.Parameter(torch.zeros(shape, dtype=torch.float64))
        param.grad = 10**log_scale * torch.randn(shape, generator=generator, dtype=torch.float64)
        ours.append(param)
    reference = twin(ours)
    norm = clip_grad_norm(ours, max_norm, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(reference, max_norm, norm_type)
    torch.testing.assert_close(norm, expected, rtol=1e-12, atol=0)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=0)
    after = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad, norm_type) for p in ours]), norm_type
    )
    assert after <= min(norm.item(), max_norm) * (1 + 1e-9)


def test_clipping_an_optimizer_over_numpy_modules_clips_their_arrays() -> None:
    import numpy as np

    class Layer:
        def __init__(self) -> None:
            self.w, self.dw = np.zeros(2), np.array([3.0, 4.0])

        def parameters(self) -> list[np.ndarray]:
            return [self.w]

        def grads(self) -> list[np.ndarray]:
            return [self.dw]

    layer = Layer()
    opt = descent.SGD([layer], lr=1.0)
    assert clip_grad_norm(opt, max_norm=1.0).item() == pytest.approx(5.0)
    np.testing.assert_allclose(layer.dw, [0.6, 0.8], rtol=1e-6)
    opt.step()
    np.testing.assert_allclose(layer.w, [-0.6, -0.8], rtol=1e-6)
    layer.dw = np.array([3.0, 4.0], dtype=np.float32)
    with pytest.raises(
        ValueError,
        match=r"grads\(\)\[0\] \(dtype float32.*cannot be changed "
        r"in place",
    ):
        clip_grad_value(opt, 1.0)
