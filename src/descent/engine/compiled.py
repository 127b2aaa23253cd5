"""Compiling an algorithm's math function into one fused loop with ``torch.compile``.

The engine hands the compiled function whole flat buffers, so a rule made of a dozen
tensor operations becomes one pass over memory. Two details matter for speed and for
the number of compilations:

* Hyperparameters and the step count are passed as Python floats, which
  ``torch.compile`` keeps symbolic (``specialize_float`` is off): a scheduler that
  changes ``lr`` every step, or the step count itself, does not cause a recompilation.
  A value the math branches on (``weight_decay != 0``, RAdam's ``rho_t > 5``) is
  guarded instead, and a change of the branch compiles a second variant once.
* Scalar arithmetic on those floats (``beta1 ** step`` and the like) is hoisted out of
  the loop by :func:`_hoisting_backend`: inductor would otherwise evaluate it once per
  vector of elements inside the loop (``pow`` cannot be hoisted by the C compiler under
  ``-fmath-errno``), which makes Adam-like rules several times slower than memory.
  The hoisted part runs in plain Python double precision, exactly as the per-tensor
  path computes it, and enters the loop as a 0-dim float64 input.

Each optimizer class gets its own compiled function (its own code object), so the
variants of one class do not use up another's recompilation budget.
"""

from __future__ import annotations

import functools
import shutil
import types
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .kernels import write_back

_FLOAT_TYPES = (float, torch.SymFloat)


@functools.cache
def compiler_available() -> bool:
    """Whether ``torch.compile`` can build CPU kernels here (it needs a C++ compiler)."""
    return shutil.which("g++") is not None or shutil.which("c++") is not None


def _make_apply(cls: type) -> Callable[..., dict[str, torch.Tensor]]:
    update = cls._update

    def apply(optimizer: Any, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any],
              group: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Run the update and write its results into ``param`` and ``state`` in place.

        Returns the results that have no tensor to be written into (state the update
        creates on its first step, such as SGD's momentum buffer).
        """
        return write_back(param, state, update(optimizer, param, grad, state, group))

    # A code object of its own per class: dynamo keeps its compiled variants per code.
    name = f"apply_{cls.__name__}"
    code = apply.__code__.replace(co_name=name)
    return types.FunctionType(code, apply.__globals__, name, None, apply.__closure__)


def _is_scalar_node(node: torch.fx.Node, scalar: set[torch.fx.Node]) -> bool:
    if node.op not in ("call_function", "call_method"):
        return False
    if not isinstance(node.meta.get("example_value"), _FLOAT_TYPES):
        return False
    inputs = node.all_input_nodes
    if node.op == "call_method" and node.target == "item":
        return all(source.op == "placeholder" for source in inputs)
    return all(source in scalar for source in inputs)


def _run_prologue(nodes: list[torch.fx.Node], placeholders: list[torch.fx.Node],
                  hoisted: list[tuple[torch.fx.Node, torch.dtype]],
                  args: tuple[Any, ...]) -> list[torch.Tensor]:
    env: dict[torch.fx.Node, Any] = dict(zip(placeholders, args, strict=False))

    def load(value: Any) -> Any:
        return env[value] if isinstance(value, torch.fx.Node) else value

    for node in nodes:
        node_args = torch.fx.node.map_aggregate(node.args, load)
        node_kwargs = torch.fx.node.map_aggregate(node.kwargs, load)
        if node.op == "call_method":
            self_arg, *rest = node_args
            env[node] = getattr(self_arg, node.target)(*rest, **node_kwargs)
        else:
            env[node] = node.target(*node_args, **node_kwargs)
    return [torch.tensor(float(env[node]), dtype=dtype) for node, dtype in hoisted]


def _operand_dtype(user: torch.fx.Node, scalar_node: torch.fx.Node) -> torch.dtype | None:
    """dtype of the tensor a hoisted scalar is combined with in ``user`` (None: unknown)."""
    for source in user.all_input_nodes:
        value = source.meta.get("example_value")
        if source is not scalar_node and isinstance(value, torch.Tensor):
            return value.dtype
    return None


def _compile_without_float_symbols(gm: torch.fx.GraphModule, example_inputs: list[Any],
                                   fake_mode: Any) -> Callable[..., Any]:
    """``compile_fx`` on a graph whose float inputs are all hoisted.

    The float symbols dynamo created for those inputs no longer occur in the graph;
    left in the shape environment, they would make aot_autograd's scalar pass ask dynamo
    to restart with every float specialised (a recompilation for every new step count).
    They are set aside while the graph compiles and put back afterwards.
    """
    from torch._inductor.compile_fx import compile_fx
    from torch.fx.experimental.symbolic_shapes import SymT, symbol_is_type

    shape_env = getattr(fake_mode, "shape_env", None)
    table = getattr(shape_env, "backed_var_to_val", None)
    if not isinstance(table, dict):
        return compile_fx(gm, example_inputs)
    floats = {symbol: value for symbol, value in table.items()
              if symbol_is_type(symbol, SymT.FLOAT)}
    for symbol in floats:
        del table[symbol]
    try:
        return compile_fx(gm, example_inputs)
    finally:
        table.update(floats)


def _hoisting_backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
    """A ``torch.compile`` backend: scalar float arithmetic first in Python, the rest inductor.

    Each float computed only from float inputs and used by a tensor operation becomes a
    0-dim graph input of the dtype of the tensor it meets, the way eager mode rounds a
    Python scalar; only float32 and float64 are hoisted (eager computes half-precision
    operations with a float32 scalar, which a 0-dim half tensor would not reproduce).
    """
    from torch._guards import detect_fake_mode
    from torch._inductor.compile_fx import compile_fx

    original = [node for node in gm.graph.nodes]
    scalar: set[torch.fx.Node] = set()
    order: list[torch.fx.Node] = []
    for node in original:
        if _is_scalar_node(node, scalar):
            scalar.add(node)
            order.append(node)
    uses: list[tuple[torch.fx.Node, torch.fx.Node, torch.dtype]] = []
    for node in order:
        for user in node.users:
            if user in scalar:
                continue
            dtype = _operand_dtype(user, node)
            if dtype not in (torch.float32, torch.float64):
                return compile_fx(gm, example_inputs)
            uses.append((node, user, dtype))
    if not uses:
        return compile_fx(gm, example_inputs)

    # Rewrite a copy: dynamo keeps using its own graph after the backend returns.
    graph = torch.fx.Graph()
    copies: dict[torch.fx.Node, torch.fx.Node] = {}
    graph.output(graph.graph_copy(gm.graph, copies))
    placeholders = [node for node in original if node.op == "placeholder"]
    fake_mode = detect_fake_mode(example_inputs)
    new_examples = list(example_inputs)
    hoisted: dict[tuple[torch.fx.Node, torch.dtype], torch.fx.Node] = {}
    last_placeholder = copies[placeholders[-1]]
    for node, user, dtype in uses:
        if (node, dtype) not in hoisted:
            with graph.inserting_after(last_placeholder):
                last_placeholder = graph.placeholder(f"hoisted_scalar_{len(hoisted)}")
            example = torch.tensor(0.0, dtype=dtype)
            if fake_mode is not None:
                example = fake_mode.from_tensor(example)
            last_placeholder.meta["example_value"] = last_placeholder.meta["val"] = example
            new_examples.append(example)
            hoisted[node, dtype] = last_placeholder
        copies[user].replace_input_with(copies[node], hoisted[node, dtype])
    for node in reversed(order):
        if not copies[node].users:
            graph.erase_node(copies[node])
    graph.lint()
    rewritten = torch.fx.GraphModule(gm, graph)
    rewritten.meta.pop("dynamo_compile_id", None)
    compiled = _compile_without_float_symbols(rewritten, new_examples, fake_mode)
    prologue = functools.partial(_run_prologue, order, placeholders, list(hoisted))

    def run(*args: Any) -> Any:
        return compiled(*args, *prologue(args))

    return run


@functools.cache
def compiled_update(cls: type) -> Callable[..., dict[str, torch.Tensor]]:
    """The compiled form of ``cls._update`` applied in place (one per optimizer class).

    Call it as ``fn(optimizer, param, grad, state, group)`` with flat tensors, float scalars in
    ``state`` (such as ``step``) and the group's hyperparameters; it writes the results
    into ``param`` and ``state`` and returns the state entries it had nowhere to write.
    """
    return torch.compile(_make_apply(cls), backend=_hoisting_backend, dynamic=True)


__all__ = ["compiled_update", "compiler_available"]
