"""``descent schedule``: print and plot a schedule of :mod:`descent.schedules`.

A schedule (``Cosine``, ``OneCycle``, ``warmup_cosine``, ...) is called at each step; a
scheduler (``StepLR``, ``OneCycleLR``, ...) is built on a one-parameter SGD optimizer
(``lr=--lr``, ``momentum=0.9``) and read with ``value_at``, without stepping it.
Arguments are written ``name=value`` or, in order, ``value``; a value is a Python
literal (``0.1``, ``[30, 80]``, ``'cos'``), a word (``triangular2``, read as text), or a
schedule written as a call (``'Cosine(900)'``), so composites such as ``Warmup`` work.
"""

from __future__ import annotations

import argparse
import ast
import inspect
from collections.abc import Sequence
from typing import Any

import torch

from .. import schedules
from ..schedules import BaseScheduler, Schedule
from ._parser import add_command, positive_float, positive_int

LENGTH_ARGUMENTS = ("total_steps", "T_max", "total_iters")
"""Arguments that give a schedule's length: without ``--steps``, the table and plot run
10% past it (or to its end, for a schedule defined up to its end only)."""


def _is_schedule(value: Any) -> bool:
    return (
        isinstance(value, type) and issubclass(value, Schedule) and value is not Schedule
    ) or value is schedules.warmup_cosine


def _is_scheduler(value: Any) -> bool:
    return (
        isinstance(value, type) and issubclass(value, BaseScheduler) and value is not BaseScheduler
    )


def names() -> tuple[list[str], list[str]]:
    """The schedules and the schedulers ``descent schedule`` knows, by name."""
    public = [(name, getattr(schedules, name)) for name in schedules.__all__]
    return (
        [name for name, value in public if _is_schedule(value)],
        [name for name, value in public if _is_scheduler(value)],
    )


def find(name: str) -> Any:
    """The schedule or scheduler called ``name`` (any case); ``ValueError`` naming the
    choices otherwise."""
    known_schedules, known_schedulers = names()
    for known in known_schedules + known_schedulers:
        if known.lower() == name.lower():
            return getattr(schedules, known)
    if name.lower() == "reducelronplateau":
        raise ValueError(
            "ReduceLROnPlateau follows the metrics it is given, so it has no curve to draw ahead"
        )
    raise ValueError(
        f"unknown schedule {name!r}; schedules: {', '.join(known_schedules)}; "
        f"schedulers: {', '.join(known_schedulers)}"
    )


def _evaluate(node: ast.AST, text: str) -> Any:
    """A literal, or a call of a schedule with such arguments (nothing else is run)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        target = find(node.func.id)
        if not _is_schedule(target):
            raise ValueError(f"{text!r}: only schedules can be nested, not {node.func.id}")
        args = [_evaluate(arg, text) for arg in node.args]
        kwargs = {
            keyword.arg: _evaluate(keyword.value, text)
            for keyword in node.keywords
            if keyword.arg is not None
        }
        return target(*args, **kwargs)
    if isinstance(node, ast.List | ast.Tuple):
        items = [_evaluate(item, text) for item in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    return ast.literal_eval(node)


def parse_value(text: str) -> Any:
    """One argument's value: see the module doc."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        tree = None
    if tree is not None:
        try:
            return _evaluate(tree.body, text)
        except ValueError as error:
            if "(" in text or isinstance(tree.body, ast.Call):
                raise ValueError(f"cannot read {text!r}: {error}") from None
    if "(" in text:
        raise ValueError(f"cannot read {text!r}: expected a literal or a schedule call")
    return text


def parse_arguments(tokens: Sequence[str]) -> tuple[list[Any], dict[str, Any]]:
    """``value`` and ``name=value`` tokens -> positional and keyword arguments."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for token in tokens:
        name, equals, text = token.partition("=")
        if equals and name.isidentifier():
            if name in kwargs:
                raise ValueError(f"{name} is given twice")
            kwargs[name] = parse_value(text)
        elif kwargs:
            raise ValueError(
                f"{token!r} comes after a name=value argument; write it as name=value too"
            )
        else:
            args.append(parse_value(token))
    return args, kwargs


def build(name: str, tokens: Sequence[str], lr: float = 1.0) -> Schedule | BaseScheduler:
    """The schedule ``name`` with the arguments ``tokens``, or the scheduler ``name`` on a
    one-parameter SGD optimizer with learning rate ``lr`` (and momentum 0.9, for the
    schedulers that cycle it). Raises ``ValueError`` or ``TypeError`` naming the fault."""
    target = find(name)
    args, kwargs = parse_arguments(tokens)
    if _is_scheduler(target):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr, momentum=0.9)
        scheduler: BaseScheduler = target(optimizer, *args, **kwargs)
        return scheduler
    result: Schedule = target(*args, **kwargs)
    return result


def length(name: str, tokens: Sequence[str]) -> int | None:
    """The length argument (:data:`LENGTH_ARGUMENTS`) among ``tokens``, given by name or
    in its place, for the schedule or scheduler ``name``; None if there is none."""
    args, kwargs = parse_arguments(tokens)
    target = find(name)
    if _is_scheduler(target):
        args = [None, *args]  # the optimizer
    try:
        given = inspect.signature(target).bind_partial(*args, **kwargs).arguments
    except TypeError:
        return None
    for key in LENGTH_ARGUMENTS:
        if isinstance(given.get(key), int) and given[key] > 0:
            return int(given[key])
    return None


def values(item: Schedule | BaseScheduler, steps: int) -> dict[str, list[float]]:
    """Each curve's value at steps 0 .. steps - 1: one curve for a schedule, one per
    driven option and param group for a scheduler."""
    if isinstance(item, Schedule):
        return {"value": [item(t) for t in range(steps)]}
    curves: dict[str, list[float]] = {}
    for key in item.keys:
        per_step = [item.value_at(t, key) for t in range(steps)]
        for group in range(len(per_step[0])):
            label = key if len(per_step[0]) == 1 else f"{key}[{group}]"
            curves[label] = [float(row[group]) for row in per_step]
    return curves


def describe(item: Schedule | BaseScheduler, tokens: Sequence[str] = (), lr: float = 1.0) -> str:
    """The schedule's repr; for a scheduler, its class with every argument (``tokens``
    and the defaults) and the optimizer's learning rate ``lr``."""
    if isinstance(item, Schedule):
        return repr(item)
    args, kwargs = parse_arguments(tokens)
    bound = inspect.signature(type(item)).bind(item.optimizer, *args, **kwargs)
    bound.apply_defaults()
    shown = [
        f"{name}={value!r}"
        for name, value in bound.arguments.items()
        if name not in ("optimizer", "last_epoch", "verbose")
    ]
    return f"{type(item).__name__}({', '.join(shown)}) on SGD(lr={lr:g})"


def table(curves: dict[str, list[float]], every: int) -> str:
    """Rows at steps 0, every, 2 * every, ... and the last step."""
    steps = len(next(iter(curves.values())))
    rows = sorted({*range(0, steps, every), steps - 1})
    lines = [f"{'step':>8}  " + "  ".join(f"{label:>14}" for label in curves)]
    lines += [
        f"{t:>8}  " + "  ".join(f"{curve[t]:>14.6g}" for curve in curves.values()) for t in rows
    ]
    return "\n".join(lines)


_DESCRIPTION = """\
A schedule (Cosine, OneCycle, warmup_cosine, ...) is called at each step; a scheduler
(StepLR, OneCycleLR, ...) is built on a one-parameter SGD optimizer (lr=--lr,
momentum=0.9) and read without stepping it. Prints the schedule with all its arguments,
a table of its values and their range; --out plots it.

Arguments are written name=value or, in order, value. A value is a Python literal (0.1,
[30,80], 'cos'), a word (triangular2, read as text), or a schedule written as a call
('Cosine(900)'), so composites such as Warmup work."""

_EXAMPLES = """\
  descent schedule Cosine total_steps=1000
  descent schedule warmup_cosine 1000 100 peak=3e-4 --out warmup.png
  descent schedule OneCycle total_steps=500 initial=0.04 peak=1 final=4e-6 --every 50
  descent schedule Cyclic 0.1 1.0 step_size_up=200 mode=triangular2 --steps 1200
  descent schedule Warmup 'Cosine(900)' warmup_steps=100
  descent schedule MultiStepLR milestones=[30,80] gamma=0.5 --lr 0.1 --steps 100
"""


def add_parser(commands: Any) -> None:
    """Declare ``descent schedule``."""
    known_schedules, known_schedulers = names()
    parser = add_command(
        commands,
        "schedule",
        run=run,
        summary="print and plot a learning-rate schedule of descent.schedules",
        description=_DESCRIPTION
        + f"\n\nSchedules: {', '.join(known_schedules)}."
        + f"\n\nSchedulers: {', '.join(known_schedulers)}.",
        examples=_EXAMPLES,
    )
    parser.add_argument("name", metavar="NAME", help="a schedule or scheduler (any case)")
    parser.add_argument(
        "arguments", nargs="*", metavar="ARG", help="its arguments: value or name=value"
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="steps to show (default: 110%% of total_steps, T_max or "
        "total_iters when given, else 1000)",
    )
    parser.add_argument(
        "--every",
        type=positive_int,
        default=None,
        help="print every K-th step (default: about 20 rows)",
    )
    parser.add_argument(
        "--lr",
        type=positive_float,
        default=1.0,
        help="a scheduler's base learning rate (1.0: values are factors)",
    )
    parser.add_argument("--out", default=None, metavar="PNG", help="write a plot there")
    parser.add_argument("--log", action="store_true", help="log scale in the plot")


def run(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Run ``descent schedule`` with parsed arguments."""
    try:
        item = build(args.name, args.arguments, args.lr)
        known = length(args.name, args.arguments)
        steps = args.steps or (max(2, round(1.1 * known)) if known else 1000)
        try:
            curves = values(item, steps)
        except ValueError:
            if args.steps is not None or known is None:
                raise
            steps = known + 1  # defined up to its length only (OneCycle)
            curves = values(item, steps)
    except (ValueError, TypeError) as error:
        args.parser.error(str(error))
    if args.out is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            args.parser.error("--out needs matplotlib (pip install 'descent[demo]')")
    every = args.every or max(1, steps // 20)
    title = describe(item, args.arguments, args.lr)
    print(f"{title}, steps 0 to {steps - 1}")
    print(table(curves, every))
    for label, curve in curves.items():
        print(f"{label}: min {min(curve):.6g}, max {max(curve):.6g}, last {curve[-1]:.6g}")
    if args.out is not None:
        schedules.plot({title: item}, steps, args.out, log_scale=args.log)
        print(f"plot written to {args.out}")
    return 0


__all__ = [
    "LENGTH_ARGUMENTS",
    "add_parser",
    "build",
    "describe",
    "find",
    "length",
    "names",
    "parse_arguments",
    "parse_value",
    "run",
    "table",
    "values",
]
