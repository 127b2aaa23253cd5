"""Property tests: hyperparameter checks accept exactly the valid values; closed-form steps."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from descent.optim import _validate
from optim_table import OPTIMIZERS, OptimizerInfo, case_id

NUMBERS = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**6), 10**6)
NON_NEGATIVE = {
    name
    for info in OPTIMIZERS
    for name, spec in info.cls.hyperparameters.items()
    if spec.check is _validate.non_negative
}


def _param(info: OptimizerInfo | None = None) -> torch.Tensor:
    return torch.zeros(info.shape(2) if info else (2,), requires_grad=True)


@pytest.mark.parametrize("info", OPTIMIZERS, ids=case_id)
@settings(max_examples=60, deadline=None)
@given(value=NUMBERS)
def test_non_negative_hyperparameters(info: OptimizerInfo, value: float) -> None:
    for name, spec in info.cls.hyperparameters.items():
        if spec.check is not _validate.non_negative:
            continue
        valid = math.isfinite(value) and value >= 0
        if valid:
            info.cls([_param(info)], **{name: value})
        else:
            with pytest.raises(ValueError, match=re.escape(f"{name}={value!r}")):
                info.cls([_param(info)], **{name: value})


@pytest.mark.parametrize(
    "info",
    [
        i
        for i in OPTIMIZERS
        if "betas" in i.cls.hyperparameters
        and i.cls.hyperparameters["betas"].check is _validate.betas
    ],
    ids=case_id,
)
@settings(max_examples=60, deadline=None)
@given(beta1=NUMBERS, beta2=NUMBERS)
def test_betas_in_unit_interval(info: OptimizerInfo, beta1: float, beta2: float) -> None:
    # Schedule-Free recovers x from y and z through beta1, so it must be > 0
    if info.positive_beta1 and beta1 == 0 and 0 <= beta2 < 1:
        with pytest.raises(ValueError, match=re.escape("betas[0]=0 is invalid")):
            info.cls([_param(info)], betas=(beta1, beta2))
    elif 0 <= beta1 < 1 and 0 <= beta2 < 1:
        opt = info.cls([_param(info)], betas=(beta1, beta2))
        assert opt.param_groups[0]["betas"] == (beta1, beta2)
    else:
        bad = 0 if not 0 <= beta1 < 1 else 1
        with pytest.raises(ValueError, match=re.escape(f"betas[{bad}]=")):
            info.cls([_param(info)], betas=(beta1, beta2))


def test_the_property_tests_cover_the_usual_hyperparameters() -> None:
    assert {"lr", "eps", "weight_decay", "momentum", "lr_decay"} <= NON_NEGATIVE


@settings(max_examples=50, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    lr=st.floats(1e-6, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_first_sgd_step_is_closed_form(shape: list[int], lr: float, seed: int) -> None:
    import descent

    generator = torch.Generator().manual_seed(seed)
    p = torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_()
    g = torch.randn(shape, generator=generator, dtype=torch.float64)
    start = p.detach().clone()
    expected = start - lr * g
    p.grad = g
    descent.SGD([p], lr=lr, momentum=0.9).step()
    # one rounding of p - lr * g (fused) against two: within a few ulps of the operands
    bound = 4 * torch.finfo(torch.float64).eps * (start.abs() + lr * g.abs())
    assert bool(((p.detach() - expected).abs() <= bound).all())


@settings(max_examples=50, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    lr=st.floats(1e-6, 1.0),
    beta1=st.floats(0, 0.99),
    beta2=st.floats(0, 0.999),
    eps=st.floats(1e-12, 1e-2),
    seed=st.integers(0, 2**31 - 1),
)
def test_first_adam_step_is_closed_form(
    shape: list[int], lr: float, beta1: float, beta2: float, eps: float, seed: int
) -> None:
    """With zero moments, bias correction makes the first Adam step -lr * g / (|g| + eps)."""
    import descent

    generator = torch.Generator().manual_seed(seed)
    p = torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_()
    g = torch.randn(shape, generator=generator, dtype=torch.float64)
    expected = p.detach() - lr * g / (g.abs() + eps)
    p.grad = g
    descent.Adam([p], lr=lr, betas=(beta1, beta2), eps=eps).step()
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-15)
