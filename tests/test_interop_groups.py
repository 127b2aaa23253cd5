"""Adding parameters to a live optimizer and removing them, keeping everyone else's state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import descent
from descent.interop import add_params, remove_params

MAKERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "descent.Adam": lambda params, lr=0.01: descent.Adam(params, lr=lr),
    "descent.SGD": lambda params, lr=0.05: descent.SGD(params, lr=lr, momentum=0.9),
    "descent.Adagrad": lambda params, lr=0.05: descent.Adagrad(params, lr=lr),
    "torch.Adam": lambda params, lr=0.01: torch.optim.Adam(params, lr=lr),
    "torch.Adagrad": lambda params, lr=0.05: torch.optim.Adagrad(params, lr=lr),
}


def tensors(seed: int, *shapes: tuple[int, ...]) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [
        nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64))
        for shape in shapes
    ]


def set_grads(params: list[torch.Tensor], step: int) -> None:
    """A deterministic gradient per parameter and step (depends on the values too)."""
    for index, param in enumerate(params):
        generator = torch.Generator().manual_seed(1000 * step + index)
        noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
        param.grad = (param.detach() - 0.5) + noise


def steps(opt: torch.optim.Optimizer, params: list[torch.Tensor], rng: range) -> None:
    for step in rng:
        set_grads(params, step)
        opt.step()


@pytest.mark.parametrize("maker", list(MAKERS))
def test_added_parameters_leave_the_others_on_their_trajectory(maker: str) -> None:
    make = MAKERS[maker]
    old = tensors(0, (3, 2), (4,))
    reference_old = [p.detach().clone().requires_grad_() for p in old]
    opt = make(old)
    reference = make(reference_old)
    steps(opt, old, range(5))
    steps(reference, reference_old, range(5))

    joined, separate = tensors(1, (2,)), tensors(2, (5,))
    reference_joined = [p.detach().clone().requires_grad_() for p in joined]
    reference_separate = [p.detach().clone().requires_grad_() for p in separate]
    assert add_params(opt, joined, group=0) == 0
    assert add_params(opt, separate, lr=0.002) == 1
    # The added parameters start fresh: as if an optimizer were made for them now.
    fresh_joined = make(reference_joined)
    fresh_separate = make(reference_separate, lr=0.002)
    for step in range(5, 10):
        set_grads(old + joined + separate, step)
        opt.step()
        set_grads(reference_old, step)
        reference.step()
        for fresh, params, index in (
            (fresh_joined, reference_joined, 2),
            (fresh_separate, reference_separate, 3),
        ):
            generator = torch.Generator().manual_seed(1000 * step + index)
            noise = torch.randn(params[0].shape, generator=generator, dtype=torch.float64)
            params[0].grad = (params[0].detach() - 0.5) + noise
            fresh.step()
    for got, want in zip(
        old + joined + separate, reference_old + reference_joined + reference_separate, strict=True
    ):
        # Equal up to rounding: descent's engine may lay the group out differently.
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-15)
    assert opt.param_groups[1]["lr"] == 0.002


@pytest.mark.parametrize("maker", list(MAKERS))
def test_removed_parameters_stop_and_the_others_continue(maker: str) -> None:
    make = MAKERS[maker]
    params = tensors(0, (3, 2), (4,), (2, 2))
    reference_params = [p.detach().clone().requires_grad_() for p in params]
    opt = make([{"params": params[:2]}, {"params": params[2:], "lr": 0.003}])
    reference = make(
        [{"params": reference_params[:2]}, {"params": reference_params[2:], "lr": 0.003}]
    )
    steps(opt, params, range(4))
    steps(reference, reference_params, range(4))

    expected_state = {
        key: value.clone() if torch.is_tensor(value) else value
        for key, value in opt.state[params[1]].items()
    }
    removed = remove_params(opt, [params[1]])
    assert len(removed) == 1 and removed[0].keys() == expected_state.keys()
    assert all(torch.equal(removed[0][k], v) for k, v in expected_state.items())
    assert params[1] not in opt.state
    frozen = params[1].detach().clone()
    for step in range(4, 8):
        set_grads(params, step)
        opt.step()
        set_grads(reference_params, step)
        reference.step()
    torch.testing.assert_close(params[1].detach(), frozen, rtol=0, atol=0)
    for index in (0, 2):
        torch.testing.assert_close(params[index], reference_params[index], rtol=1e-13, atol=1e-15)

    # The changed optimizer's state dict loads into a fresh one of the same shape.
    clone = [p.detach().clone().requires_grad_() for p in params]
    again = make([{"params": [clone[0]]}, {"params": clone[2:], "lr": 0.003}])
    again.load_state_dict(opt.state_dict())


def test_names_empty_groups_and_modules() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    opt = descent.Adam([{"params": model[0]}, {"params": model[1], "lr": 0.1}], lr=0.01)
    with pytest.raises(ValueError, match=r"the name 'weight' is in several param groups"):
        remove_params(opt, ["weight"])
    whole = descent.Adam(model, lr=0.01)
    assert remove_params(whole, ["0.weight"]) == [{}]
    assert whole.param_groups[0]["param_names"] == ["0.bias", "1.weight", "1.bias"]
    remove_params(opt, [model[0].weight])
    assert opt.param_groups[0]["param_names"] == ["bias"]
    remove_params(opt, model[1])
    assert opt.param_groups[1]["params"] == [] and opt.param_groups[1]["param_names"] == []
    assert len(opt.param_groups) == 2  # kept, empty, so group indices keep their meaning
    opt.step()
    add_params(opt, list(model[1].named_parameters()), group=1)
    assert opt.param_groups[1]["param_names"] == ["weight", "bias"]
    remove_params(opt, model[1], drop_empty_groups=True)
    assert len(opt.param_groups) == 1
    extra = nn.Parameter(torch.ones(2))
    assert add_params(opt, [("extra", extra)], group=-1) == 0
    assert opt.param_groups[0]["param_names"] == ["bias", "extra"]


def test_bad_requests_change_nothing() -> None:
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    opt = descent.Adam([a], lr=0.1)
    a.grad = torch.ones(2)
    opt.step()
    snapshot = ([list(g["params"]) for g in opt.param_groups], dict(opt.state))

    cases: list[tuple[Callable[[], Any], type[Exception], str]] = [
        (
            lambda: add_params(opt, [b, a], group=0),
            ValueError,
            r"params\[1\] is already optimized as param_groups\[0\]\['params'\]\[0\]",
        ),
        (lambda: add_params(opt, [b, b], group=0), ValueError, r"params\[1\] is given twice"),
        (
            lambda: add_params(opt, [torch.ones(2, dtype=torch.long)], group=0),
            TypeError,
            r"params\[0\] has dtype torch\.int64",
        ),
        (lambda: add_params(opt, [b * 2], group=0), ValueError, r"not a leaf"),
        (lambda: add_params(opt, [b], group=3), ValueError, r"group=3 is not the index"),
        (lambda: add_params(opt, [b], group=True), ValueError, r"group=True"),
        (
            lambda: add_params(opt, [b], group=0, lr=0.1),
            ValueError,
            r"options \['lr'\] apply to a new group",
        ),
        (
            lambda: add_params(opt, [("b", b)], group=0),
            ValueError,
            r"group 0 does not name its parameters; pass bare tensors",
        ),
        (lambda: add_params(opt, [], group=0), ValueError, r"params is empty"),
        (lambda: add_params(opt, [b], lr=-1.0), ValueError, r"lr=-1\.0"),
        (
            lambda: remove_params(opt, [b]),
            ValueError,
            r"params\[0\] \(shape \(3,\)\) is not optimized by this optimizer",
        ),
        (lambda: remove_params(opt, [a, a]), ValueError, r"params\[1\] is given twice"),
        (lambda: remove_params(opt, ["a"]), ValueError, r"'a' is not optimized"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
        assert [list(g["params"]) for g in opt.param_groups] == snapshot[0]
        assert dict(opt.state) == snapshot[1]
    named = descent.Adam([("a", a)], lr=0.1)
    with pytest.raises(
        ValueError,
        match=r"group 0 names its parameters; pass \(name, "
        r"tensor\) pairs",
    ):
        add_params(named, [b], group=0)
    with pytest.raises(ValueError, match=r"already has parameters named \['a'\]"):
        add_params(named, [("a", b)], group=0)
    with pytest.raises(TypeError, match=r"complex"):
        add_params(descent.Lion([a]), [nn.Parameter(torch.ones(2, dtype=torch.complex64))], group=0)
