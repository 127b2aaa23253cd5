"""load_state_dict checks everything before it changes anything."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import descent


def trained_adam(amsgrad: bool = False) -> tuple[descent.Adam, nn.Module]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = descent.Adam(
        [{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 0.01}],
        amsgrad=amsgrad,
    )
    for _ in range(3):
        model(torch.randn(5, 3)).sum().backward()
        opt.step()
    return opt, model


def snapshot(opt: torch.optim.Optimizer) -> dict[str, Any]:
    return copy.deepcopy(opt.state_dict())


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        assert a["state"][key].keys() == b["state"][key].keys()
        for name, value in a["state"][key].items():
            assert torch.equal(value, b["state"][key][name])


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(state_dict: dict[str, Any]) -> None:
        target = state_dict
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def _delete(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def edit(state_dict: dict[str, Any]) -> None:
        target = state_dict
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return edit


CORRUPTIONS = {
    "other optimizer": (_set(("descent", "optimizer"), "SGD"), r"from optimizer 'SGD', not 'Adam'"),
    "future format": (_set(("descent", "format_version"), 99), r"format_version=99"),
    "group count": (lambda sd: sd["param_groups"].pop(), r"1 param groups, the optimizer has 2"),
    "param count": (
        lambda sd: sd["param_groups"][1]["params"].pop(),
        r"param_groups\[1\] has 1 parameters in the state dict, 2 in the optimizer",
    ),
    "bad hyperparameter": (
        _set(("param_groups", 0, "betas"), (0.9, 1.5)),
        r"param_groups\[0\]: betas\[1\]=1\.5",
    ),
    "missing hyperparameter": (
        _delete(("param_groups", 1, "eps")),
        r"param_groups\[1\]: missing hyperparameter 'eps'",
    ),
    "shape": (
        _set(("state", 2, "exp_avg"), torch.zeros(4)),
        r"exp_avg has shape \(4,\), the parameter has shape \(2, 4\)",
    ),
    "dtype": (
        _set(("state", 0, "exp_avg_sq"), torch.zeros(4, 3, dtype=torch.float64)),
        r"exp_avg_sq has dtype torch.float64, the parameter has dtype torch.float32",
    ),
    "missing key": (_delete(("state", 1, "exp_avg")), r"missing \['exp_avg'\] keys"),
    "unknown key": (
        _set(("state", 1, "momentum_buffer"), torch.zeros(4)),
        r"unknown \['momentum_buffer'\] keys",
    ),
    "negative step": (_set(("state", 3, "step"), torch.tensor(-1.0)), r"step=.*>= 0"),
    "non-finite step": (_set(("state", 3, "step"), torch.tensor(float("nan"))), r"step="),
    "state for unknown id": (_set(("state", 17), {}), r"parameter id 17"),
    "unknown top-level key": (_set(("extra",), 1), r"unknown top-level keys \['extra'\]"),
    "not a tensor": (_set(("state", 0, "exp_avg"), [0.0] * 12), r"exp_avg has type list"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_mismatch_is_refused_and_nothing_changes(name: str) -> None:
    opt, _ = trained_adam()
    good = snapshot(opt)
    corrupt, message = CORRUPTIONS[name]
    bad = snapshot(opt)
    corrupt(bad)
    other, _ = trained_adam()
    for group in other.param_groups:
        group["lr"] = 0.5
    before = snapshot(other)
    with pytest.raises(ValueError, match=message):
        other.load_state_dict(bad)
    assert_same(snapshot(other), before)
    other.load_state_dict(good)
    assert_same(snapshot(other), good)


def test_amsgrad_state_needs_its_extra_buffer() -> None:
    plain, _ = trained_adam(amsgrad=False)
    with_max, _ = trained_adam(amsgrad=True)
    with pytest.raises(ValueError, match=r"missing \['max_exp_avg_sq'\]"):
        with_max.load_state_dict(
            {**snapshot(plain), "param_groups": snapshot(with_max)["param_groups"]}
        )


def test_loaded_state_does_not_alias_the_source() -> None:
    opt, model = trained_adam()
    source = opt.state_dict()
    clone = copy.deepcopy(model)
    other = descent.Adam(
        [{"params": clone[0].parameters()}, {"params": clone[1].parameters(), "lr": 0.01}]
    )
    other.load_state_dict(source)
    before = source["state"][0]["exp_avg"].clone()
    clone(torch.randn(5, 3)).sum().backward()
    other.step()
    assert torch.equal(source["state"][0]["exp_avg"], before)


def test_state_dict_keeps_torch_layout_plus_descent_metadata() -> None:
    opt, _ = trained_adam()
    state_dict = opt.state_dict()
    reference = torch.optim.Adam(nn.Linear(1, 1).parameters()).state_dict()
    assert set(state_dict) == {"state", "param_groups", "descent"}
    assert state_dict["descent"] == {"optimizer": "Adam", "format_version": 1}
    # torch's keys and descent's own options of every rule (cautious masking, storage)
    assert set(state_dict["param_groups"][0]) == set(reference["param_groups"][0]) | {
        "cautious",
        "state_dtype",
        "state_block_size",
        "param_rounding",
    }
    assert set(state_dict["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert state_dict["state"][0]["step"].item() == 3.0


def test_torch_state_dict_without_the_cautious_flag_loads_with_its_default() -> None:
    model = nn.Linear(3, 2)
    saved = torch.optim.AdamW(model.parameters(), lr=0.01).state_dict()
    opt = descent.AdamW(model, lr=0.5, cautious=True)
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["cautious"] is False
    assert opt.lr == 0.01
    del saved["param_groups"][0]["eps"]  # only flags take their defaults
    with pytest.raises(ValueError, match=r"missing hyperparameter 'eps'"):
        opt.load_state_dict(saved)


def test_state_is_not_reset_by_loading_hyperparameters_or_groups() -> None:
    opt, model = trained_adam()
    steps = [opt.state[p]["step"].item() for p in model.parameters()]
    opt.lr = 0.001
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))]})
    assert [opt.state[p]["step"].item() for p in model.parameters()] == steps
