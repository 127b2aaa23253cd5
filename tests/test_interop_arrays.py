"""descent optimizers over NumPy arrays: modules, named dicts, .data/.grad objects."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import descent

STEPS = 25
CONFIGS = [
    (descent.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    (descent.Adam, {"lr": 0.02, "amsgrad": True, "weight_decay": 0.01}),
    (descent.RMSprop, {"lr": 0.01, "momentum": 0.5, "centered": True}),
]


def data(n: int = 32, d: int = 5, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, d)), rng.standard_normal((n, k))


def initial_weights(d: int = 5, h: int = 8, k: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "W1": rng.standard_normal((d, h)) * 0.5,
        "b1": np.zeros(h),
        "W2": rng.standard_normal((h, k)) * 0.5,
        "b2": np.zeros(k),
    }


class NumpyTwoLayerNet:
    """tanh MLP in plain NumPy with a hand-written backward (course-framework style)."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        self.W1, self.b1 = weights["W1"].copy(), weights["b1"].copy()
        self.W2, self.b2 = weights["W2"].copy(), weights["b2"].copy()
        self.dW1, self.db1 = np.zeros_like(self.W1), np.zeros_like(self.b1)
        self.dW2, self.db2 = np.zeros_like(self.W2), np.zeros_like(self.b2)
        self.zero_grad_calls = 0

    def parameters(self) -> list[np.ndarray]:
        return [self.W1, self.b1, self.W2, self.b2]

    def grads(self) -> list[np.ndarray]:
        return [self.dW1, self.db1, self.dW2, self.db2]

    def zero_grad(self) -> None:
        self.zero_grad_calls += 1
        for grad in self.grads():
            grad[...] = 0

    def loss_and_backward(self, x: np.ndarray, y: np.ndarray) -> float:
        hidden = np.tanh(x @ self.W1 + self.b1)
        out = hidden @ self.W2 + self.b2
        loss = float(np.mean((out - y) ** 2))
        dout = 2 * (out - y) / out.size
        self.dW2 += hidden.T @ dout
        self.db2 += dout.sum(axis=0)
        dz = (dout @ self.W2.T) * (1 - hidden**2)
        self.dW1 += x.T @ dz
        self.db1 += dz.sum(axis=0)
        return loss


class TorchTwoLayerNet(nn.Module):
    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        super().__init__()
        for name, value in weights.items():
            setattr(self, name, nn.Parameter(torch.tensor(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.W1 + self.b1) @ self.W2 + self.b2


def train_torch(cls: type[descent.Optimizer], config: dict[str, Any]) -> dict[str, np.ndarray]:
    x, y = (torch.tensor(a) for a in data())
    net = TorchTwoLayerNet(initial_weights())
    opt = cls(net, **config)
    for _ in range(STEPS):
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        opt.step()
    return {name: p.detach().numpy() for name, p in net.named_parameters()}


@pytest.mark.parametrize(("cls", "config"), CONFIGS, ids=lambda c: getattr(c, "__name__", ""))
def test_numpy_module_trains_like_the_torch_network(
    cls: type[descent.Optimizer], config: dict[str, Any]
) -> None:
    x, y = data()
    net = NumpyTwoLayerNet(initial_weights())
    arrays = net.parameters()
    opt = cls([net], **config)
    for _ in range(STEPS):
        opt.zero_grad()
        net.loss_and_backward(x, y)
        opt.step()
    assert net.zero_grad_calls == STEPS
    assert all(now is before for now, before in zip(net.parameters(), arrays, strict=True))
    expected = train_torch(cls, config)
    for name in expected:
        np.testing.assert_allclose(getattr(net, name), expected[name], rtol=1e-12, atol=1e-14)
    assert not np.allclose(net.W1, initial_weights()["W1"])


@pytest.mark.parametrize(("cls", "config"), CONFIGS, ids=lambda c: getattr(c, "__name__", ""))
def test_dict_of_named_arrays_with_step_grads(
    cls: type[descent.Optimizer], config: dict[str, Any]
) -> None:
    x, y = data()
    weights = initial_weights()
    net = NumpyTwoLayerNet(weights)
    params = dict(zip(["W1", "b1", "W2", "b2"], net.parameters(), strict=True))
    opt = cls(params, **config)
    for _ in range(STEPS):
        net.zero_grad()
        net.loss_and_backward(x, y)
        opt.step(grads=dict(zip(params, [g.copy() for g in net.grads()], strict=True)))
    expected = train_torch(cls, config)
    for name, array in params.items():
        np.testing.assert_allclose(array, expected[name], rtol=1e-12, atol=1e-14)
    assert opt.param_groups[0]["param_names"] == ["W1", "b1", "W2", "b2"]


class Parameter:
    """A teaching-library parameter: an array and its gradient."""

    def __init__(self, data: np.ndarray, name: str | None = None) -> None:
        self.data, self.grad, self.name = data, np.zeros_like(data), name


@pytest.mark.parametrize(("cls", "config"), CONFIGS, ids=lambda c: getattr(c, "__name__", ""))
def test_parameter_objects_with_data_and_grad(
    cls: type[descent.Optimizer], config: dict[str, Any]
) -> None:
    x, y = data()
    net = NumpyTwoLayerNet(initial_weights())
    names = ["W1", "b1", "W2", "b2"]
    objects = [Parameter(array, name) for array, name in zip(net.parameters(), names, strict=True)]
    opt = cls(objects, **config)
    for _ in range(STEPS):
        opt.zero_grad()
        assert all(not obj.grad.any() for obj in objects)
        net.zero_grad()
        net.loss_and_backward(x, y)
        for obj, grad in zip(objects, net.grads(), strict=True):
            obj.grad = grad.copy()
        opt.step()
    expected = train_torch(cls, config)
    for obj in objects:
        np.testing.assert_allclose(obj.data, expected[obj.name], rtol=1e-12, atol=1e-14)
    assert opt.param_groups[0]["param_names"] == names


def test_closure_gradients_are_read_after_the_closure() -> None:
    x, y = data()
    net = NumpyTwoLayerNet(initial_weights())
    reference = NumpyTwoLayerNet(initial_weights())
    opt = descent.SGD([net], lr=0.1)

    def closure() -> float:
        net.zero_grad()
        return net.loss_and_backward(x, y)

    loss = opt.step(closure)
    reference.loss_and_backward(x, y)
    assert loss == pytest.approx(
        float(np.mean((np.tanh(x @ reference.W1) @ reference.W2 - y) ** 2))
    )
    np.testing.assert_allclose(net.W1, reference.W1 - 0.1 * reference.dW1, rtol=1e-15, atol=1e-18)


def test_module_without_zero_grad_has_its_gradient_arrays_zeroed() -> None:
    class Bare:
        def __init__(self) -> None:
            self.w, self.dw = np.ones(3), np.full(3, 2.0)

        def parameters(self) -> list[np.ndarray]:
            return [self.w]

        def grads(self) -> list[np.ndarray]:
            return [self.dw]

    bare = Bare()
    opt = descent.SGD([bare], lr=0.25)
    opt.step()
    np.testing.assert_array_equal(bare.w, [0.5, 0.5, 0.5])
    gradient = bare.dw
    opt.zero_grad()
    assert bare.dw is gradient and not gradient.any()


def test_param_groups_of_modules_mixed_dtypes_and_a_state_dict_round_trip() -> None:
    first, second = NumpyTwoLayerNet(initial_weights()), NumpyTwoLayerNet(initial_weights())
    second.W1, second.dW1 = second.W1.astype(np.float32), second.dW1.astype(np.float32)
    opt = descent.Adam([{"params": [first], "lr": 0.1}, {"params": second}], lr=0.01)
    x, y = data()
    for net in (first, second):
        net.loss_and_backward(x, y)
    opt.step()
    moved_first = first.W1 - initial_weights()["W1"]
    moved_second = second.W1 - initial_weights()["W1"].astype(np.float32)
    # Adam's first step (Kingma & Ba, m/sqrt(v) = g/|g|): -lr * g / (|g| + eps).
    for moved, net, lr in ((moved_first, first, 0.1), (moved_second, second, 0.01)):
        gradient = net.dW1.astype(np.float64)
        np.testing.assert_allclose(
            moved, -lr * gradient / (np.abs(gradient) + 1e-8), rtol=1e-5 if net is second else 1e-12
        )
    assert second.W1.dtype == np.float32

    saved = opt.state_dict()
    again = descent.Adam(
        [
            {"params": [NumpyTwoLayerNet(initial_weights())], "lr": 0.1},
            {"params": NumpyTwoLayerNet(initial_weights())},
        ],
        lr=0.01,
    )
    with pytest.raises(ValueError, match=r"dtype"):
        again.load_state_dict(saved)  # the float32 W1 is float64 in the new second net
    third = NumpyTwoLayerNet(initial_weights())
    third.W1 = third.W1.astype(np.float32)
    again = descent.Adam(
        [{"params": [NumpyTwoLayerNet(initial_weights())], "lr": 0.1}, {"params": third}], lr=0.01
    )
    again.load_state_dict(saved)
    assert int(again.state_dict()["state"][0]["step"]) == 1


def test_gradients_that_are_none_are_skipped_and_dtypes_are_cast() -> None:
    weights = {"a": np.ones(2), "b": np.ones(2)}
    opt = descent.SGD(weights, lr=1.0)
    opt.step(grads={"a": np.array([1, 2], dtype=np.int32)})
    np.testing.assert_array_equal(weights["a"], [0.0, -1.0])
    np.testing.assert_array_equal(weights["b"], [1.0, 1.0])


# ---------------------------------------------------------------------- errors


class Module:
    def __init__(self, params: list[Any], grads: list[Any]) -> None:
        self._params, self._grads = params, grads

    def parameters(self) -> list[Any]:
        return self._params

    def grads(self) -> list[Any]:
        return self._grads


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        (
            [Module([np.ones(3, dtype=np.int64)], [np.ones(3)])],
            TypeError,
            r"params\[0\] \(Module\)\.parameters\(\)\[0\] has dtype int64.*truncate",
        ),
        ([Module([np.ones(3, dtype=bool)], [np.ones(3)])], TypeError, r"dtype bool"),
        (
            [Module([np.ones(3)], [np.ones(3), np.ones(3)])],
            ValueError,
            r"grads\(\) returned 2 arrays and parameters\(\) 1",
        ),
        (
            [Module([np.ones(3)], [np.ones(4)])],
            ValueError,
            r"params\[0\] \(Module\)\.grads\(\)\[0\] has shape \(4,\); "
            r"its parameter has shape \(3,\)",
        ),
        (
            [Module([np.ones((3, 2)).T], [np.ones((2, 3))])],
            ValueError,
            r"parameters\(\)\[0\] with shape \(2, 3\).*not C-contiguous",
        ),
        ([Module([np.ones(6)[::2]], [np.ones(3)])], ValueError, r"not C-contiguous"),
        ({"w": np.ones(3, dtype=np.int32)}, TypeError, r"params\[0\]\['w'\] has dtype int32"),
        ([Parameter(np.arange(3))], TypeError, r"params\[0\]\.data has dtype int64"),
        ([np.ones(3)], TypeError, r"params\[0\] is a bare NumPy array"),
        ({1: np.ones(3)}, TypeError, r"key 1 of type int; expected str"),
        ([Module([np.ones(3).astype(">f8")], [np.ones(3)])], TypeError, r"non-native byte order"),
    ],
    ids=[
        "int",
        "bool",
        "lengths",
        "shape",
        "transposed",
        "strided",
        "dict-int",
        "object-int",
        "bare-array",
        "key",
        "byteorder",
    ],
)
def test_bad_containers_are_refused_naming_the_array(
    params: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        descent.SGD(params, lr=0.1)


def test_read_only_and_shared_arrays_are_refused() -> None:
    frozen = np.ones(3)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match=r"parameters\(\)\[0\] is read-only"):
        descent.SGD([Module([frozen], [np.ones(3)])], lr=0.1)
    shared = np.ones(4)
    with pytest.raises(ValueError, match=r"shares memory with"):
        descent.SGD([Module([shared], [np.ones(4)]), Module([shared[2:]], [np.ones(2)])], lr=0.1)
    with pytest.raises(ValueError, match=r"shares memory with"):
        descent.SGD({"a": shared, "b": shared}, lr=0.1)


def test_step_errors_change_nothing() -> None:
    weights = {"w": np.ones(3), "v": np.ones(2)}
    opt = descent.SGD(weights, lr=0.5)
    with pytest.raises(
        ValueError,
        match=r"pass their gradients to each step as "
        r"opt\.step\(grads=",
    ):
        opt.step()
    with pytest.raises(ValueError, match=r"grads has keys \['W'\] that name no parameter"):
        opt.step(grads={"W": np.ones(3)})
    with pytest.raises(ValueError, match=r"grads\['v'\] has shape \(3,\)"):
        opt.step(grads={"w": np.ones(3), "v": np.ones(3)})
    with pytest.raises(TypeError, match=r"grads has type list"):
        opt.step(grads=[np.ones(3)])
    np.testing.assert_array_equal(weights["w"], np.ones(3))
    tensor_opt = descent.SGD([torch.ones(2, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match=r"grads= is for parameters given as a dict"):
        tensor_opt.step(grads={"w": np.ones(2)})


def test_replaced_arrays_are_detected_at_the_next_step() -> None:
    net = NumpyTwoLayerNet(initial_weights())
    opt = descent.SGD([net], lr=0.1)
    net.W2 = net.W2 - 0.1
    with pytest.raises(ValueError, match=r"parameters\(\)\[2\] is no longer the array"):
        opt.step()
    obj = Parameter(np.ones(2))
    opt = descent.SGD([obj], lr=0.1)
    obj.data = obj.data * 2
    with pytest.raises(ValueError, match=r"params\[0\]\.data is no longer the array"):
        opt.step()


def test_torch_tensors_and_numpy_modules_together() -> None:
    tensor = torch.ones(2, requires_grad=True)
    net = Module([np.ones(2)], [np.full(2, 3.0)])
    opt = descent.SGD([tensor, net], lr=0.1)
    tensor.grad = torch.full((2,), 2.0)
    opt.step()
    np.testing.assert_allclose(net.parameters()[0], [0.7, 0.7])
    torch.testing.assert_close(tensor.detach(), torch.full((2,), 0.8))
    assert opt.param_groups[0]["param_names"] == ["0", "1.0"]


def test_modules_that_make_their_gradients_in_the_first_backward() -> None:
    class Lazy:
        def __init__(self) -> None:
            self.w, self.gradients = np.ones(2), []

        def parameters(self) -> list[np.ndarray]:
            return [self.w]

        def grads(self) -> list[np.ndarray]:
            return self.gradients

    lazy = Lazy()
    opt = descent.SGD([lazy], lr=0.5)
    with pytest.raises(ValueError, match=r"grads\(\) returned 0 arrays and parameters\(\) 1"):
        opt.step()
    lazy.gradients = [np.array([1.0, 2.0])]
    opt.step()
    np.testing.assert_array_equal(lazy.w, [0.5, 0.0])
