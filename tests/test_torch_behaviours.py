"""Behaviours torch.optim's own test suite expects, checked against torch itself.

* a state dict written by an older torch, whose groups lack flags added since, loads
  with the defaults filled in, while real mismatches are still refused;
* sparse gradients: Adagrad's sparse path and SparseAdam, as torch computes them;
* complex Adagrad starts its sum at ``v + vj``, as torch does;
* the exception types torch raises for a multi-element tensor ``lr`` and for ``betas``
  mixing a tensor and a number.

(Tensor learning rates of every shape torch accepts, in every engine mode, are checked
for every optimizer in ``test_conformance.py``.)
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import pytest
import torch
from torch import nn

import descent
from descent import engine
from descent.engine import quantize
from descent.optim.base import FLAGS_FILLED_ON_LOAD
from descent.optim.registry import algorithms

MODES = ("per_tensor", "foreach", "auto")
DESCENT_OPTIONS = frozenset({"cautious", *quantize.OPTIONS})
"""Keyword-only options descent adds to every rule (cautious masking; how state is stored)."""


def quadratic_step(params: list[torch.Tensor], step: int) -> None:
    generator = torch.Generator().manual_seed(step)
    for p in params:
        p.grad = None
    loss = sum(
        (p - torch.randn(p.shape, generator=generator, dtype=p.dtype)).abs().square().sum()
        for p in params
    )
    loss.backward()


def mlp_params(seed: int = 0) -> list[nn.Parameter]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    return list(model.parameters())


# ---------------------------------------------------------------------- older state dicts

OLD_TORCH = [
    ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("AdamW", {"lr": 0.01}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.5, "centered": True}),
    ("Adagrad", {"lr": 0.1}),
    ("NAdam", {"lr": 0.01}),
    ("RAdam", {"lr": 0.01}),
    ("Adamax", {"lr": 0.01}),
    ("Adadelta", {"lr": 1.0}),
    ("ASGD", {"lr": 0.01, "t0": 2}),
    ("Rprop", {"lr": 0.01}),
    ("Adafactor", {"lr": 0.01}),
]


@pytest.mark.parametrize(("name", "options"), OLD_TORCH, ids=[n for n, _ in OLD_TORCH])
def test_torch_state_dict_without_later_flags_resumes_in_descent(
    name: str, options: dict[str, Any]
) -> None:
    """torch's state dict without the later-added flags at their defaults (as an older
    torch, which had no such flag, wrote it) loads into descent, which continues
    torch's run."""
    theirs = mlp_params()
    torch_opt = getattr(torch.optim, name)(theirs, **options)
    for step in range(3):
        quadratic_step(theirs, step)
        torch_opt.step()
    old = copy.deepcopy(torch_opt.state_dict())
    cls = algorithms()[name]
    removed = set()
    for group in old["param_groups"]:
        for flag in FLAGS_FILLED_ON_LOAD & set(group):
            if group[flag] == cls.hyperparameters[flag].default:
                removed.add(flag)
                del group[flag]
    assert "foreach" in removed
    ours = [nn.Parameter(p.detach().clone()) for p in theirs]
    opt = getattr(descent, name)(ours, **options)
    opt.load_state_dict(old)
    for flag in removed:
        assert opt.param_groups[0][flag] == cls.hyperparameters[flag].default, flag
    for step in range(3, 8):
        quadratic_step(theirs, step)
        quadratic_step(ours, step)
        torch_opt.step()
        opt.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_adamw_without_the_flag_stays_decoupled() -> None:
    params = mlp_params()
    opt = descent.AdamW(params, lr=0.01)
    quadratic_step(params, 0)
    opt.step()
    old = copy.deepcopy(opt.state_dict())
    del old["param_groups"][0]["decoupled_weight_decay"]
    opt.load_state_dict(old)
    assert opt.param_groups[0]["decoupled_weight_decay"] is True


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (lambda g: g.pop("lr"), ValueError, r"missing hyperparameter 'lr'"),
        (lambda g: g.pop("momentum"), ValueError, r"missing hyperparameter 'momentum'"),
        (lambda g: g.update(maximize="yes"), TypeError, r"maximize='yes'"),
        (lambda g: g.update(momentum=-1.0), ValueError, r"momentum=-1\.0"),
    ],
    ids=["lr missing", "momentum missing", "bad flag", "bad value"],
)
def test_real_mismatches_are_still_refused(edit: Any, error: type[Exception], match: str) -> None:
    params = mlp_params()
    opt = descent.SGD(params, lr=0.1, momentum=0.9)
    quadratic_step(params, 0)
    opt.step()
    bad = copy.deepcopy(opt.state_dict())
    edit(bad["param_groups"][0])
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(error, match=match):
        opt.load_state_dict(bad)
    assert opt.state_dict()["param_groups"] == before["param_groups"]


def test_loading_does_not_change_the_callers_state_dict() -> None:
    params = mlp_params()
    opt = descent.Adam(params)
    old = copy.deepcopy(opt.state_dict())
    del old["param_groups"][0]["maximize"]
    opt.load_state_dict(old)
    assert "maximize" not in old["param_groups"][0]


# ---------------------------------------------------------------------- sparse gradients


def embedding_run(
    cls: Any, options: dict[str, Any], steps: int = 5, mode: str | None = None
) -> list[torch.Tensor]:
    torch.manual_seed(0)
    embedding = nn.Embedding(12, 3, sparse=True).double()
    dense = nn.Linear(3, 1).double()
    params = (
        [embedding.weight]
        if cls in (descent.SparseAdam, torch.optim.SparseAdam)
        else [embedding.weight, *dense.parameters()]
    )
    opt = cls(params, **options)
    if mode is not None:
        engine.set_mode(opt, mode)
    for step in range(steps):
        opt.zero_grad()
        index = torch.tensor([step, (step * 5) % 12, 7, 7])  # a repeated index too
        dense(embedding(index)).square().sum().backward()
        assert embedding.weight.grad.is_sparse
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")  # torch's own sparse path
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "options",
    [
        {"lr": 0.1},
        {"lr": 0.1, "lr_decay": 0.1, "initial_accumulator_value": 0.2},
        {"lr": 0.05, "maximize": True, "eps": 1e-6},
    ],
    ids=["plain", "lr_decay", "maximize"],
)
def test_adagrad_takes_sparse_gradients_as_torch_does(options: dict[str, Any], mode: str) -> None:
    ours = embedding_run(descent.Adagrad, options, mode=mode)
    theirs = embedding_run(torch.optim.Adagrad, options)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


def test_adagrad_refuses_weight_decay_with_sparse_gradients_before_any_update() -> None:
    embedding = nn.Embedding(4, 2, sparse=True).double()
    dense = nn.Parameter(torch.ones(2, dtype=torch.float64))
    opt = descent.Adagrad([dense, embedding.weight], lr=0.1, weight_decay=0.1)
    (embedding(torch.tensor([1])).sum() * dense.sum()).backward()
    before = [dense.detach().clone(), embedding.weight.detach().clone()]
    with pytest.raises(RuntimeError, match=r"\[1\] has a sparse gradient.*weight_decay=0\.1"):
        opt.step()
    assert torch.equal(dense, before[0]) and torch.equal(embedding.weight, before[1])
    assert not opt.state
    with pytest.raises(RuntimeError, match=r"weight_decay option is not compatible"):
        torch.optim.Adagrad([dense, embedding.weight], lr=0.1, weight_decay=0.1).step()


@pytest.mark.parametrize(
    "options",
    [{"lr": 0.01}, {"lr": 0.05, "betas": (0.8, 0.9), "maximize": True}],
    ids=["plain", "betas,maximize"],
)
def test_sparse_adam_equals_torch(options: dict[str, Any]) -> None:
    ours = embedding_run(descent.SparseAdam, options, steps=6)
    theirs = embedding_run(torch.optim.SparseAdam, options, steps=6)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


def test_sparse_adam_refuses_a_dense_gradient_before_any_update() -> None:
    embedding = nn.Embedding(4, 2, sparse=True)
    dense = nn.Parameter(torch.ones(3))
    opt = descent.SparseAdam([embedding.weight, dense])
    embedding(torch.tensor([1, 2])).sum().backward()
    dense.grad = torch.ones(3)
    before = embedding.weight.detach().clone()
    with pytest.raises(RuntimeError, match=r"\[1\] has a dense gradient.*descent\.Adam"):
        opt.step()
    assert torch.equal(embedding.weight, before)
    assert not opt.state


# ---------------------------------------------------------------------- complex Adagrad


@pytest.mark.parametrize("mode", MODES)
def test_complex_adagrad_with_an_initial_accumulator_matches_torch(mode: str) -> None:
    """torch starts a complex parameter's sum at v + vj (each real pair at (v, v))."""
    start = torch.randn(3, 4, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    ours, theirs = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    options = {"lr": 0.1, "initial_accumulator_value": 0.3}
    opt, reference = descent.Adagrad([ours], **options), torch.optim.Adagrad([theirs], **options)
    engine.set_mode(opt, mode)
    for step in range(4):
        quadratic_step([ours], step)
        quadratic_step([theirs], step)
        opt.step()
        reference.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-15)
    assert torch.equal(opt.state[ours]["sum"], reference.state[theirs]["sum"])


# ---------------------------------------------------------------------- exception types


@pytest.mark.parametrize("name", list(algorithms()))
def test_a_multi_element_tensor_lr_raises_a_value_error(name: str) -> None:
    cls = algorithms()[name]
    param = nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(
        ValueError,
        match=r"lr is a tensor of shape \(2,\); expected a real "
        r"number or a one-element tensor",
    ):
        cls([param], lr=torch.tensor([0.1, 0.1]))
    with pytest.raises(TypeError, match=r"lr=tensor\(1\).*floating-point"):
        cls([param], lr=torch.tensor(1))  # an integer tensor is a wrong type


@pytest.mark.parametrize(
    "name",
    [
        name
        for name, cls in algorithms().items()
        if "betas" in cls.hyperparameters and len(cls.hyperparameters["betas"].default) == 2
    ],
)
def test_betas_mixing_a_tensor_and_a_number_raise_a_value_error(name: str) -> None:
    cls = algorithms()[name]
    param = nn.Parameter(torch.zeros(2, 2))
    for betas in ((0.9, torch.tensor(0.99)), (torch.tensor(0.9), 0.99)):
        with pytest.raises(ValueError, match=r"mixes a tensor and a number"):
            cls([param], betas=betas)
    opt = cls([param], betas=(torch.tensor(0.9), torch.tensor(0.99)))  # both tensors: fine
    param.grad = torch.ones(2, 2) if name != "SparseAdam" else torch.ones(2, 2).to_sparse()
    opt.step()


# ---------------------------------------------------------------------- signatures


@pytest.mark.parametrize("name", [name for name in algorithms() if hasattr(torch.optim, name)])
def test_constructor_takes_torchs_arguments_in_torchs_order_with_its_defaults(name: str) -> None:
    def described(cls: type) -> tuple[list[Any], dict[str, Any]]:
        parameters = list(inspect.signature(cls.__init__).parameters.values())
        positional = [
            (p.name, p.default)
            for p in parameters
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        ]
        keyword_only = {
            p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        return positional, keyword_only

    ours, keyword_only = described(algorithms()[name])
    theirs, torch_keyword_only = described(getattr(torch.optim, name))
    assert ours == theirs
    # beyond torch's: only descent's own options of every rule, keyword-only
    assert {
        key: value for key, value in keyword_only.items() if key not in DESCENT_OPTIONS
    } == torch_keyword_only
