"""descent against torch on torch's own test data (optim_db): parity and constructor errors.

For every torch.optim class that descent has, every configuration torch tests it with
runs side by side with torch (float64 within 1e-10, float32 within 1e-5, relative), and
every input torch's constructor refuses is refused by descent's with torch's exception
type, except the deliberate differences listed in :data:`DELIBERATE`, each checked for
what descent does instead.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

pytest.importorskip("expecttest", reason="torch's optim_db imports expecttest")

import torch_optim_db as db

NEW = ("Adadelta", "Adafactor", "ASGD", "LBFGS", "Muon", "Rprop", "SparseAdam")
"""The classes added to match torch.optim; the others' optim_db parity runs in the bench
(``python bench/parity.py --optim-db``) and their own table rows run in test_optimizers."""

STEPS = 10
LBFGS_STEPS = 2  # each runs up to 20 iterations

FLOAT32_LR_PRODUCTS = {("Muon", "Tensor lr")}
"""Configurations where torch computes with a float32 tensor lr in float32: torch's Muon
rounds ``1 - lr * weight_decay`` and the shape-adjusted lr to float32 before applying
them to float64 parameters; descent computes them with the lr's value in double
precision. Given the same lr as a float64 tensor, the two agree to 1e-10."""


def _cases(names: tuple[str, ...]) -> list[tuple[db.Config, torch.dtype]]:
    return [
        (config, dtype)
        for name in names
        for config in db.configs(name)
        for dtype in (torch.float64, torch.float32)
    ]


@pytest.mark.parametrize(
    ("config", "dtype"), _cases(NEW), ids=lambda c: c.id if isinstance(c, db.Config) else str(c)[6:]
)
def test_parity_with_torch_on_its_own_configurations(config: db.Config, dtype: torch.dtype) -> None:
    steps = LBFGS_STEPS if config.name == "LBFGS" else STEPS
    if (config.name, config.desc) in FLOAT32_LR_PRODUCTS and dtype == torch.float64:
        worst, _ = db.parity(config, dtype, steps=steps)
        assert 1e-10 < worst <= 1e-4  # torch's float32 rounding, documented above
        config = db.Config(
            config.name, config.desc, {**config.kwargs, "lr": config.kwargs["lr"].double()}
        )
    worst, moved = db.parity(config, dtype, steps=steps)
    assert worst <= db.TOLERANCE[dtype], f"largest relative difference {worst:.2e}"
    assert moved > 1e-4  # the parameters really moved


DELIBERATE = {
    "a param group cannot have duplicate parameters": (
        "refused with a ValueError naming both positions (torch only warns, then steps the "
        "parameter twice)"
    ),
    "lr as Tensor doesn't work with foreach & not capturable": (
        "accepted: foreach is a hint to descent, whose engine takes a tensor lr on every path"
    ),
    r"betas\[0\] as a Tensor is not supported for capturable=False and foreach=True": (
        "accepted: foreach is a hint to descent, whose engine takes tensor betas on every path"
    ),
}
"""optim_db's construction errors that descent deliberately answers otherwise, and how."""


def _construction_errors() -> list[db.ConstructionError]:
    return [error for name in db.names() for error in db.construction_errors(name)]


def _default_params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.randn(2, 3))]  # 2-D, so that Muon takes it too


@pytest.mark.parametrize("error", _construction_errors(), ids=lambda e: e.id)
def test_constructor_refuses_what_torch_refuses_with_its_exception_type(
    error: db.ConstructionError,
) -> None:
    cls = db.counterpart(error.name)
    params = _default_params() if error.params is None else error.params
    if error.desc in DELIBERATE:
        if "duplicate" in error.desc:
            with pytest.raises(ValueError, match=r"is the same tensor as"):
                cls(params, **error.kwargs)
        else:
            cls(params, **error.kwargs)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(error.error):
            cls(params, **error.kwargs)


def test_every_class_of_torch_optim_has_a_counterpart() -> None:
    names = db.names()
    assert len(names) == 15
    for name in names:
        assert issubclass(db.counterpart(name), torch.optim.Optimizer)
    for name in torch.optim.__all__:
        value = getattr(torch.optim, name)
        if (
            isinstance(value, type)
            and issubclass(value, torch.optim.Optimizer)
            and value is not torch.optim.Optimizer
        ):
            assert db.counterpart(name).__name__ == name


@pytest.mark.parametrize("name", ["Adafactor", "Muon"])
def test_complex_parameters_are_refused_when_constructing(name: str) -> None:
    """torch raises a RuntimeError at the first step; descent refuses them up front."""
    param = nn.Parameter(torch.randn(2, 3, dtype=torch.complex64))
    with pytest.raises(TypeError, match=r"complex dtype torch.complex64"):
        db.counterpart(name)([param])


def test_the_deliberate_differences_are_still_in_optim_db() -> None:
    assert set(DELIBERATE) <= {error.desc for error in _construction_errors()}
