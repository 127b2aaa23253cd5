"""descent.functional: parity with the optimizer classes, purity, torch.func, meta-gradients."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from descent import functional
from descent.engine import default_mode
from optim_table import MATRIX_RULES, OPTIMIZERS, OptimizerInfo, case_id, config_cases

FUNCTIONAL = {
    "SGD": functional.sgd,
    "Adam": functional.adam,
    "AdamW": functional.adamw,
    "RMSprop": functional.rmsprop,
    "Adagrad": functional.adagrad,
    "NAdam": functional.nadam,
    "RAdam": functional.radam,
    "Adamax": functional.adamax,
    "SignSGD": functional.sign_sgd,
    "Lion": functional.lion,
    "Adadelta": functional.adadelta,
    "ASGD": functional.asgd,
    "Rprop": functional.rprop,
}
FUNCTIONAL_INFOS = [
    info
    for info in OPTIMIZERS
    if info.functional and info.cls.registry_name in functional.ALGORITHMS
]
FUNCTIONAL.update(
    {
        info.name: functional.ALGORITHMS[info.cls.registry_name]
        for info in FUNCTIONAL_INFOS
        if info.name not in FUNCTIONAL
    }
)
FIRST_UPDATE = {info.cls.registry_name: info.first_update_step for info in OPTIMIZERS}
VMAP_TOLERANCE = {info.cls.registry_name: info.vmap_tolerance for info in OPTIMIZERS}
# every functional form, but those of rules that take matrices only (no 1-D parameters)
ANY_SHAPE = [name for name in functional.ALGORITHMS if name not in MATRIX_RULES]


def split_config(
    algorithm: functional.FunctionalOptimizer, config: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A class config as (init options, step hyperparameters)."""
    init = {k: v for k, v in config.items() if k in algorithm.init_options}
    step = {k: v for k, v in config.items() if k in algorithm.hyperparameters}
    assert set(init) | set(step) == set(config)
    return init, step


def make_params(dtype: torch.dtype) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(4, 3, generator=generator, dtype=dtype),
        "layers": [
            torch.randn(3, generator=generator, dtype=dtype),
            torch.randn(2, 2, generator=generator, dtype=dtype),
        ],
    }


def grads_for(params: dict[str, Any], step: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(100 + step)
    return {
        "w": torch.randn(params["w"].shape, generator=generator, dtype=params["w"].dtype),
        "layers": [
            torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params["layers"]
        ],
    }


def flat(tree: dict[str, Any]) -> list[torch.Tensor]:
    return [tree["w"], *tree["layers"]]


@pytest.mark.parametrize("mode", ["per_tensor", "auto"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("info", "config"),
    [case for case in config_cases() if case[0] in FUNCTIONAL_INFOS],
    ids=case_id,
)
def test_functional_steps_equal_the_optimizer_class(
    info: OptimizerInfo, config: dict[str, Any], dtype: torch.dtype, mode: str
) -> None:
    algorithm = FUNCTIONAL[info.name]
    init_options, hyperparameters = split_config(algorithm, config)
    params = make_params(dtype)
    tensors = [p.clone().requires_grad_() for p in flat(params)]
    opt = info.cls(tensors, **config)
    state = algorithm.init(params, **init_options)
    for step in range(8):
        grads = grads_for(params, step)
        for tensor, grad in zip(tensors, flat(grads), strict=True):
            tensor.grad = grad.clone()
        with default_mode(mode):
            opt.step()
        params, state = algorithm.step(params, grads, state, **hyperparameters)
    for tensor, new in zip(tensors, flat(params), strict=True):
        if mode == "per_tensor":  # same math function, same arguments: the same bits
            assert torch.equal(new, tensor.detach())
        else:  # the engine's flat or fused kernels may round the last bits differently
            tolerance = {torch.float64: 1e-13, torch.float32: 1e-5}[dtype]
            torch.testing.assert_close(new, tensor.detach(), rtol=tolerance, atol=tolerance)
    assert int(state["step"]) == 8
    assert state["step"].dtype == (
        torch.float64
        if dtype == torch.float64 and torch.get_default_dtype() == torch.float64
        else torch.float32
    )


@pytest.mark.parametrize("name", ANY_SHAPE)
def test_step_mutates_nothing(name: str) -> None:
    algorithm = functional.ALGORITHMS[name]
    params = make_params(torch.float64)
    state = algorithm.init(params)
    steps = FIRST_UPDATE.get(name, 1)  # the checked step is the first that moves them
    for step in range(steps):
        params, state = algorithm.step(params, grads_for(params, step), state)
    grads = grads_for(params, steps)
    before = [t.clone() for t in flat(params) + flat(grads)]
    state_before = {
        k: [t.clone() for t in (flat(v) if isinstance(v, dict) else [v])] for k, v in state.items()
    }
    new_params, new_state = algorithm.step(params, grads, state, lr=0.1)
    for old, now in zip(before, flat(params) + flat(grads), strict=True):
        assert torch.equal(old, now)
    for key, values in state_before.items():
        current = flat(state[key]) if isinstance(state[key], dict) else [state[key]]
        assert all(torch.equal(a, b) for a, b in zip(values, current, strict=True))
    assert not torch.equal(new_params["w"], params["w"])
    assert int(new_state["step"]) == steps + 1


@pytest.mark.parametrize("name", ["adam", "sgd", "rmsprop"])
def test_complex_parameters_match_the_class(name: str) -> None:
    algorithm = functional.ALGORITHMS[name]
    generator = torch.Generator().manual_seed(3)
    param = torch.randn(5, dtype=torch.complex128, generator=generator)
    tensor = param.clone().requires_grad_()
    opt = algorithm.optimizer([tensor], lr=0.05)
    params, state = [param], algorithm.init([param])
    for _ in range(4):
        grad = torch.randn(5, dtype=torch.complex128, generator=generator)
        tensor.grad = grad.clone()
        with default_mode("per_tensor"):
            opt.step()
        params, state = algorithm.step(params, [grad], state, lr=0.05)
    assert params[0].dtype == torch.complex128
    assert torch.equal(params[0], tensor.detach())


def test_tree_forms_single_tensor_tuple_and_namedtuple() -> None:
    from collections import namedtuple

    pair = namedtuple("pair", ["a", "b"])
    for params in (
        torch.ones(3),
        (torch.ones(2), torch.ones(1)),
        pair(torch.ones(2), torch.ones(1)),
    ):
        grads = (
            params
            if isinstance(params, torch.Tensor)
            else type(params)(*params)
            if hasattr(params, "_fields")
            else tuple(params)
        )
        new, _ = functional.sgd.step(params, grads, functional.sgd.init(params), lr=0.5)
        assert type(new) is type(params)
        leaves = [new] if isinstance(new, torch.Tensor) else list(new)
        assert all(torch.equal(leaf, torch.full_like(leaf, 0.5)) for leaf in leaves)


# ---------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors() -> None:
    params = {"w": torch.ones(3)}
    state = functional.adam.init(params)
    grads = {"w": torch.ones(3)}
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['learning_rate'\]"):
        functional.adam.step(params, grads, state, learning_rate=0.1)
    with pytest.raises(ValueError, match=r"lr=-1\.0 is invalid"):
        functional.adam.step(params, grads, state, lr=-1.0)
    with pytest.raises(ValueError, match=r"betas\[0\]=1\.5"):
        functional.adam.step(params, grads, state, betas=(1.5, 0.9))
    with pytest.raises(TypeError, match=r"lr is a tensor of dtype torch\.int64"):
        functional.adam.step(params, grads, state, lr=torch.tensor(1))
    with pytest.raises(ValueError, match=r"grads has structure"):
        functional.adam.step(params, {"v": torch.ones(3)}, state)
    with pytest.raises(ValueError, match=r"grads\['w'\] has shape \(2,\)"):
        functional.adam.step(params, {"w": torch.ones(2)}, state)
    with pytest.raises(TypeError, match=r"params\['w'\] has dtype torch\.int64"):
        functional.adam.init({"w": torch.ones(3, dtype=torch.long)})
    with pytest.raises(TypeError, match=r"grads\['w'\] has type NoneType"):
        functional.adam.step(params, {"w": None}, state)
    with pytest.raises(ValueError, match=r"expected \['exp_avg', 'exp_avg_sq'\].*adam\.init"):
        functional.adam.step(params, grads, functional.sgd.init(params))
    with pytest.raises(ValueError, match=r"state\['exp_avg'\]\['w'\] has shape \(4,\)"):
        functional.adam.step(params, grads, functional.adam.init({"w": torch.ones(4)}))
    with pytest.raises(
        ValueError,
        match=r"state\['exp_avg'\]\['w'\] has shape \(3,\) and "
        r"dtype torch\.float64",
    ):
        functional.adam.step(params, grads, functional.adam.init({"w": torch.ones(3).double()}))
    with pytest.raises(ValueError, match=r"init\(params, momentum=0\.9\)"):
        functional.sgd.step(params, grads, functional.sgd.init(params), momentum=0.9)
    with pytest.raises(ValueError, match=r"nesterov=True needs momentum > 0"):
        functional.sgd.step(params, grads, functional.sgd.init(params), nesterov=True)
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['centred'\]"):
        functional.rmsprop.init(params, centred=True)
    with pytest.raises(TypeError, match=r"amsgrad=1 has type int"):
        functional.adam.init(params, amsgrad=1)
    with pytest.raises(TypeError, match=r"not a state made by"):
        functional.adam.step(params, grads, None)
    with pytest.raises(TypeError, match=r"complex"):
        z = [torch.ones(2, dtype=torch.complex64)]
        functional.lion.step(z, z, functional.lion.init(z))


# ---------------------------------------------------------------------- torch.func


def quadratic_loss(
    params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    return ((x @ params["w"] + params["b"] - y) ** 2).mean()


@pytest.mark.parametrize("name", ANY_SHAPE)
def test_vmap_over_an_ensemble_equals_a_loop(name: str) -> None:
    """Train four models at once with vmap; each must equal training it alone."""
    algorithm = functional.ALGORITHMS[name]
    generator = torch.Generator().manual_seed(7)
    members = 4
    x = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(16, 2, generator=generator, dtype=torch.float64)
    stacked = {
        "w": torch.randn(members, 3, 2, generator=generator, dtype=torch.float64),
        "b": torch.randn(members, 2, generator=generator, dtype=torch.float64),
    }
    options = {"momentum": 0.5} if "momentum" in algorithm.init_options else {}

    def train(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = algorithm.init(params, **options)
        for _ in range(5):
            grads = torch.func.grad(quadratic_loss)(params, x, y)
            params, state = algorithm.step(params, grads, state, lr=0.05, **options)
        return params

    together = torch.func.vmap(train)(stacked)
    for member in range(members):
        alone = train({key: value[member] for key, value in stacked.items()})
        for key in stacked:
            tolerance = VMAP_TOLERANCE.get(name, 1e-12)
            torch.testing.assert_close(
                together[key][member], alone[key], rtol=tolerance, atol=tolerance
            )


@pytest.mark.parametrize("name", ["adam", "nadam", "rmsprop", "sgd"])
def test_vmap_of_one_step_with_state_outside(name: str) -> None:
    algorithm = functional.ALGORITHMS[name]
    generator = torch.Generator().manual_seed(8)
    stacked = {"w": torch.randn(3, 4, generator=generator, dtype=torch.float64)}
    grads = {"w": torch.randn(3, 4, generator=generator, dtype=torch.float64)}
    state = algorithm.init(stacked)
    in_dims = {key: None if key in ("step", "mu_product") else 0 for key in state}
    out_dims = (0, in_dims)

    def one(p: Any, g: Any, s: Any) -> Any:
        return algorithm.step(p, g, s, lr=0.1)

    new, new_state = torch.func.vmap(one, in_dims=(0, 0, in_dims), out_dims=out_dims)(
        stacked, grads, state
    )
    whole, whole_state = algorithm.step(stacked, grads, state, lr=0.1)
    torch.testing.assert_close(new["w"], whole["w"], rtol=1e-14, atol=1e-14)
    assert int(new_state["step"]) == int(whole_state["step"]) == 1


def unrolled_loss(
    algorithm: functional.FunctionalOptimizer,
    log_lr: torch.Tensor,
    hyperparameters: dict[str, Any],
    init: dict[str, Any],
) -> torch.Tensor:
    """Validation loss after 6 steps on a training regression, as a function of log(lr)."""
    generator = torch.Generator().manual_seed(11)
    x_train = torch.randn(20, 3, generator=generator, dtype=torch.float64)
    y_train = torch.randn(20, 2, generator=generator, dtype=torch.float64)
    x_val = torch.randn(20, 3, generator=generator, dtype=torch.float64)
    y_val = torch.randn(20, 2, generator=generator, dtype=torch.float64)
    params = {
        "w": torch.randn(3, 2, generator=generator, dtype=torch.float64),
        "b": torch.zeros(2, dtype=torch.float64),
    }
    state = algorithm.init(params, **init)
    lr = torch.exp(log_lr)
    for _ in range(6):
        grads = torch.func.grad(quadratic_loss)(params, x_train, y_train)
        params, state = algorithm.step(params, grads, state, lr=lr, **hyperparameters)
    return quadratic_loss(params, x_val, y_val)


@pytest.mark.parametrize(
    ("name", "init", "hyperparameters"),
    [
        ("sgd", {"momentum": 0.9}, {"momentum": 0.9, "dampening": 0.1}),
        ("sgd", {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
        ("adam", {"amsgrad": True}, {}),
        ("adamw", {}, {"weight_decay": 0.1}),
        ("rmsprop", {"momentum": 0.5, "centered": True}, {"momentum": 0.5}),
        ("adagrad", {}, {"lr_decay": 0.1}),
        ("nadam", {}, {}),
        ("radam", {}, {"betas": (0.9, 0.9)}),
        ("adamax", {}, {}),
        ("sign_sgd", {"momentum": 0.9}, {"momentum": 0.9, "weight_decay": 0.1}),
        ("lion", {}, {"weight_decay": 0.1}),
    ],
    ids=lambda case: case if isinstance(case, str) else None,
)
def test_learning_rate_meta_gradient_matches_finite_differences(
    name: str, init: dict[str, Any], hyperparameters: dict[str, Any]
) -> None:
    algorithm = functional.ALGORITHMS[name]
    log_lr = torch.tensor(math.log(0.05), dtype=torch.float64, requires_grad=True)
    loss = unrolled_loss(algorithm, log_lr, hyperparameters, init)
    (gradient,) = torch.autograd.grad(loss, log_lr)
    h = 1e-6
    with torch.no_grad():
        plus = unrolled_loss(algorithm, log_lr + h, hyperparameters, init)
        minus = unrolled_loss(algorithm, log_lr - h, hyperparameters, init)
    finite_difference = (plus - minus) / (2 * h)
    assert gradient.abs() > 1e-4  # the learning rate matters, so the comparison means something
    torch.testing.assert_close(gradient, finite_difference, rtol=1e-6, atol=1e-9)


def test_maml_on_sine_regression_matches_finite_differences() -> None:
    """MAML (Finn et al. 2017): the meta-gradient through 3 inner Adam steps, checked
    against central differences along random directions."""
    generator = torch.Generator().manual_seed(5)
    dtype = torch.float64
    tasks = []
    for _ in range(3):
        amplitude = 0.1 + 4.9 * torch.rand((), generator=generator, dtype=dtype)
        phase = math.pi * torch.rand((), generator=generator, dtype=dtype)
        x = 10 * torch.rand(20, 1, generator=generator, dtype=dtype) - 5
        tasks.append(
            (
                x[:10],
                amplitude * torch.sin(x[:10] + phase),
                x[10:],
                amplitude * torch.sin(x[10:] + phase),
            )
        )
    meta = {
        "w1": 0.5 * torch.randn(1, 16, generator=generator, dtype=dtype),
        "b1": torch.zeros(16, dtype=dtype),
        "w2": 0.5 * torch.randn(16, 1, generator=generator, dtype=dtype),
        "b2": torch.zeros(1, dtype=dtype),
    }

    def net_loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(x @ params["w1"] + params["b1"])
        return ((hidden @ params["w2"] + params["b2"] - y) ** 2).mean()

    def meta_loss(meta: dict[str, torch.Tensor]) -> torch.Tensor:
        total = torch.zeros((), dtype=dtype)
        for x_support, y_support, x_query, y_query in tasks:
            params, state = meta, functional.adam.init(meta)
            for _ in range(3):
                grads = torch.func.grad(net_loss)(params, x_support, y_support)
                params, state = functional.adam.step(params, grads, state, lr=0.05)
            total = total + net_loss(params, x_query, y_query)
        return total / len(tasks)

    meta_gradient = torch.func.grad(meta_loss)(meta)
    h = 1e-6
    for trial in range(3):
        direction = {
            k: torch.randn(v.shape, generator=generator, dtype=dtype) for k, v in meta.items()
        }
        plus = meta_loss({k: meta[k] + h * direction[k] for k in meta})
        minus = meta_loss({k: meta[k] - h * direction[k] for k in meta})
        finite_difference = (plus - minus) / (2 * h)
        analytic = sum((meta_gradient[k] * direction[k]).sum() for k in meta)
        assert abs(float(analytic)) > 1e-3, trial
        torch.testing.assert_close(analytic, finite_difference, rtol=1e-5, atol=1e-8)


def test_meta_learned_learning_rate_lowers_the_validation_loss() -> None:
    """A few steps of gradient descent on log(lr), through the unrolled loop."""
    log_lr = torch.tensor(math.log(1e-3), dtype=torch.float64, requires_grad=True)
    outer = torch.optim.Adam([log_lr], lr=0.3)
    losses = []
    for _ in range(15):
        outer.zero_grad()
        loss = unrolled_loss(functional.sgd, log_lr, {}, {})
        loss.backward()
        outer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    assert log_lr.item() > math.log(1e-3)


@pytest.mark.parametrize("info", FUNCTIONAL_INFOS, ids=case_id)
def test_every_class_has_a_functional_twin(info: OptimizerInfo) -> None:
    if not info.cls.functional_form:
        assert info.cls.registry_name not in functional.ALGORITHMS
        return
    algorithm = FUNCTIONAL[info.name]
    assert algorithm.optimizer is info.cls
    class_defaults = info.cls([torch.zeros(1, requires_grad=True)]).defaults
    for name, default in algorithm.hyperparameters.items():
        assert class_defaults[name] == default, name
    for name, default in algorithm.init_options.items():
        assert class_defaults[name] == default, name


def test_a_batched_step_count_is_refused_with_advice() -> None:
    stacked = {"w": torch.randn(3, 4, dtype=torch.float64)}
    state = torch.func.vmap(functional.adam.init)(stacked)
    assert state["step"].shape == (3,)
    with pytest.raises(ValueError, match=r"state\['step'\] is batched.*in_dims=None"):
        torch.func.vmap(lambda p, g, s: functional.adam.step(p, g, s))(stacked, stacked, state)
    with pytest.raises(ValueError, match=r"state\['step'\] has shape \(3,\)"):
        functional.adam.step(stacked, stacked, state)


def class_cases() -> list[tuple[OptimizerInfo, dict[str, Any]]]:
    return [(info, config) for info in FUNCTIONAL_INFOS for config in info.configs[:2]]


@pytest.mark.parametrize(("info", "config"), class_cases(), ids=case_id)
def test_a_run_moves_between_the_class_and_the_functional_form(
    info: OptimizerInfo, config: dict[str, Any]
) -> None:
    algorithm = FUNCTIONAL[info.name]
    init_options, hyperparameters = split_config(algorithm, config)
    start = make_params(torch.float64)
    names = ["w", "layers.0", "layers.1"]

    def reference() -> dict[str, torch.Tensor]:
        """Ten functional steps from the start."""
        params, state = start, algorithm.init(start, **init_options)
        for step in range(10):
            params, state = algorithm.step(
                params, grads_for(params, step), state, **hyperparameters
            )
        return params

    def as_tree(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"w": tensors["w"], "layers": [tensors["layers.0"], tensors["layers.1"]]}

    # class for 5 steps, then functional for 5
    tensors = {n: p.clone().requires_grad_() for n, p in zip(names, flat(start), strict=True)}
    opt = info.cls(list(tensors.values()), **config)
    for step in range(5):
        grads = grads_for(as_tree(tensors), step)
        for tensor, grad in zip(tensors.values(), flat(grads), strict=True):
            tensor.grad = grad
        opt.step()
    params = as_tree({n: t.detach().clone() for n, t in tensors.items()})
    state = algorithm.state_from_optimizer(opt, as_tree(tensors))
    for step in range(5, 10):
        params, state = algorithm.step(params, grads_for(params, step), state, **hyperparameters)
    expected = reference()
    for got, want in zip(flat(params), flat(expected), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)

    # functional for 5 steps, then the class for 5
    params, state = start, algorithm.init(start, **init_options)
    for step in range(5):
        params, state = algorithm.step(params, grads_for(params, step), state, **hyperparameters)
    tensors = {n: p.clone().requires_grad_() for n, p in zip(names, flat(params), strict=True)}
    opt = info.cls(list(tensors.values()), **config)
    algorithm.load_into_optimizer(state, opt, as_tree(tensors))
    for step in range(5, 10):
        grads = grads_for(as_tree(tensors), step)
        for tensor, grad in zip(tensors.values(), flat(grads), strict=True):
            tensor.grad = grad
        opt.step()
    for got, want in zip(tensors.values(), flat(expected), strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=1e-12, atol=1e-14)


def test_state_bridge_errors() -> None:
    a, b = torch.ones(2, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = functional.adam.optimizer([a, b], lr=0.1)
    assert int(functional.adam.state_from_optimizer(opt, [a, b])["step"]) == 0
    a.grad = torch.ones(2)
    opt.step()
    with pytest.raises(ValueError, match=r"params\[1\] has no optimizer state while others"):
        functional.adam.state_from_optimizer(opt, [a, b])
    b.grad = torch.ones(3)
    opt.step()
    with pytest.raises(ValueError, match=r"different numbers of steps \[1\.0, 2\.0\]"):
        functional.adam.state_from_optimizer(opt, [a, b])
    with pytest.raises(ValueError, match=r"params\[0\] is not a parameter of the optimizer"):
        functional.adam.state_from_optimizer(opt, [torch.ones(2)])
    with pytest.raises(TypeError, match=r"optimizer has type Adam; expected SGD"):
        functional.sgd.state_from_optimizer(opt, [a])
    grouped = functional.adam.optimizer([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[1\] is in a group with lr=0\.5"):
        functional.adam.state_from_optimizer(grouped, [a, b])
    with pytest.raises(
        ValueError,
        match=r"state has buffers \['exp_avg', 'exp_avg_sq'\], "
        r"expected \['exp_avg', 'exp_avg_sq', "
        r"'max_exp_avg_sq'\]",
    ):
        amsgrad = functional.adam.optimizer([a], lr=0.1, amsgrad=True)
        functional.adam.load_into_optimizer(functional.adam.init([a]), amsgrad, [a])
