"""The declarative part of an algorithm: its hyperparameters and the state it keeps.

An optimizer class declares each hyperparameter once, as an annotated class attribute::

    class Adam(Optimizer):
        lr: float | Tensor = hyper(default=1e-3, check=check.non_negative,
                                   doc="learning rate :math:`\\eta`")
        ...
        keeps = (State("step", scalar=True), State("exp_avg"), State("exp_avg_sq"),
                 State("max_exp_avg_sq", when="amsgrad"))
        math = staticmethod(adam)

From that one declaration :class:`~descent.optim.base.Optimizer` derives the constructor
(its signature, in declaration order, ``kw_only`` ones after ``*``), the defaults, the
checks of every param group, the state of a parameter before its first step, the
``load_state_dict`` checks, the "Args" section of the class docstring, the functional
form (:mod:`descent.functional`) and the registry (:mod:`descent.optim.registry`).
Type checkers read the same declaration (``dataclass_transform``), so they see the real
constructor signature in users' code.

On an optimizer *instance*, a hyperparameter attribute reads the value all param groups
share (a ``ValueError`` if they differ) and sets it in every group after checking it:
``opt.lr = 1e-4``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from . import _validate as check
from ._validate import Check

_MISSING: Any = object()


def _same(a: Any, b: Any) -> bool:
    """Equality that also holds for tensors (compared by value) and nested tuples."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        try:
            return bool(torch.equal(torch.as_tensor(a), torch.as_tensor(b)))
        except (TypeError, RuntimeError):
            return False
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


class Hyper:
    """One hyperparameter: its default, its check and a one-line doc (see :func:`hyper`)."""

    __slots__ = ("check", "default", "doc", "init", "kw_only", "name")

    def __init__(
        self, default: Any, check: Check | None, doc: str, kw_only: bool, init: bool
    ) -> None:
        self.default = default
        self.check = check
        self.doc = doc
        self.kw_only = kw_only
        self.init = init
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        if self.check is None and name in STANDARD:
            self.check, standard_doc = STANDARD[name]
            self.doc = self.doc or standard_doc

    def __repr__(self) -> str:
        return f"hyper({self.name}={self.default!r})"

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def validate(self, owner: str, where: str, value: Any) -> Any:
        """The checked value (``where`` prefixes the name in the error message)."""
        return value if self.check is None else self.check(owner, f"{where}{self.name}", value)

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        values = [group[self.name] for group in obj.param_groups]
        if any(not _same(value, values[0]) for value in values[1:]):
            raise ValueError(
                f"{type(obj).__name__}: param groups have different values of "
                f"{self.name} {values}; read opt.param_groups[i][{self.name!r}] "
                "for group i"
            )
        return values[0]

    def __set__(self, obj: Any, value: Any) -> None:
        owner = type(obj).__name__
        value = self.validate(owner, "", value)
        for index, group in enumerate(obj.param_groups):
            obj._check_hyperparameters({**group, self.name: value}, f"param_groups[{index}]: ")
        for group in obj.param_groups:
            group[self.name] = value


def hyper(
    *,
    default: Any = _MISSING,
    check: Check | None = None,
    doc: str = "",
    kw_only: bool = False,
    init: bool = True,
) -> Any:
    """Declare a hyperparameter of an optimizer class (an annotated class attribute).

    Args:
        default: the value when the constructor is not given one (torch's default where
            torch has the algorithm).
        check: ``check(owner, name, value)`` returns the value or raises an error naming
            the argument, its value and what was expected (see :mod:`._validate`).
            Omitted, a name in :data:`STANDARD` (``lr``, ``eps``, ``weight_decay``,
            ``maximize``, torch's ``foreach`` / ``fused`` / ``capturable`` /
            ``differentiable`` ...) takes its standard check and doc.
        doc: one line for the docstring's "Args" section.
        kw_only: keyword-only in the constructor (after ``*``), as in torch's signature.
        init: False for a group option the class fixes (AdamW's
            ``decoupled_weight_decay=True``): kept in every group, not a constructor
            argument.
    """
    return Hyper(default, check, doc, kw_only, init)


@dataclass(frozen=True)
class State:
    """One entry of a parameter's optimizer state.

    Attributes:
        name: the key in ``optimizer.state[param]`` (torch's name where torch has one).
        scalar: a 0-dim tensor (``step``, NAdam's ``mu_product``) rather than a tensor
            shaped like the parameter.
        init: the starting value: a number (the fill value) or ``init(param, group)``
            returning the tensor.
        when: the name of a hyperparameter; the entry exists only in groups where its
            value is true or nonzero (``"amsgrad"``, ``"momentum"``).
        uses: hyperparameters ``init`` reads (they become options of the functional
            form's ``init``).
        lazy: created by the rule's math on its first step (SGD's momentum buffer,
            which starts as the first gradient), not before.
        shape: ``shape(param, group)``, the entry's shape for a parameter of ``group`` when
            it is not the parameter's, or None where that parameter keeps no such entry
            (Adafactor keeps factored row and column moments for a matrix, a full one
            for a vector; NorMuon per-row statistics; SOAP preconditioners). Such an
            entry starts at ``init``: a number, or ``init(param, group)``.
        non_negative: never below zero (second moments, sums of squares): quantised
            state (``state_dtype="int8"`` / ``"int4"``) then uses the unsigned map, with
            twice the resolution.
        doc: one line for the docs.
    """

    name: str
    scalar: bool = False
    init: float | Callable[[torch.Tensor, Mapping[str, Any]], torch.Tensor] = 0.0
    when: str | None = None
    uses: tuple[str, ...] = ()
    lazy: bool = False
    shape: Callable[[torch.Tensor, Mapping[str, Any]], tuple[int, ...] | None] | None = None
    non_negative: bool = False
    doc: str = ""

    def applies(self, group: Mapping[str, Any]) -> bool:
        """Whether a parameter of ``group`` keeps this entry (once it has stepped)."""
        return self.when is None or bool(group[self.when])

    def shape_for(self, param: torch.Tensor, group: Mapping[str, Any]) -> tuple[int, ...] | None:
        """The entry's shape for ``param``; None if ``param`` keeps no such entry."""
        if self.shape is None:
            return tuple(param.shape)
        shape = self.shape(param, group)
        return None if shape is None else tuple(shape)


STANDARD: dict[str, tuple[Check, str]] = {
    "lr": (check.non_negative, r"learning rate :math:`\eta`"),
    "betas": (check.betas, r"decay rates :math:`(\beta_1, \beta_2)` of the moment averages"),
    "eps": (check.non_negative, r"term :math:`\epsilon` added to the denominator"),
    "weight_decay": (check.non_negative, r"weight decay :math:`\lambda`"),
    "momentum": (check.non_negative, r"momentum factor :math:`\mu`"),
    "maximize": (check.flag, "maximize the objective instead of minimizing it"),
    "foreach": (check.FOREACH, "torch's hint; accepted, descent's engine decides how to run"),
    "fused": (check.FUSED, "torch's hint; accepted, descent's engine decides how to run"),
    "capturable": (check.CAPTURABLE, "CUDA-graph capture of the step; only False is supported"),
    "differentiable": (
        check.DIFFERENTIABLE,
        "only False; differentiate through steps with descent.functional",
    ),
    "decoupled_weight_decay": (
        check.flag,
        "decay the parameter directly instead of adding "
        r":math:`\lambda\theta` to the gradient",
    ),
    "cautious": (
        check.flag,
        "cautious masking: keep the update only where it agrees in sign "
        "with the gradient, and decoupled weight decay only where it "
        "agrees with the update (descent.optim._cautious)",
    ),
}
"""The check and doc of hyperparameters that many algorithms share, by name."""


def format_default(value: Any) -> str:
    """A default as the docs show it."""
    return "required" if value is _MISSING else f"``{value!r}``"


__all__ = ["STANDARD", "Hyper", "State", "format_default", "hyper"]
