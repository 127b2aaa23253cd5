"""``optimizer.state`` as a mapping that counts its changes, so the engine can keep its lists.

The engine gathers, for a bucket of parameters, the lists of their state tensors
(every ``exp_avg``, every ``exp_avg_sq``, ...). Rebuilding those lists from the dicts at
every step costs a dictionary lookup per parameter and entry, which on ten thousand
parameters is most of a step. So ``optimizer.state`` is a :class:`StateTable`: a
``defaultdict(dict)`` (as in torch.optim) whose values are :class:`StateEntry` dicts, and
every write to either (``opt.state[p] = {...}``, ``opt.state[p]["exp_avg"] = t``, ``del``,
``update``, ``clear``, ...) increments :attr:`StateTable.changes`. The engine rebuilds its
lists only when that count moved.

What is not a write to the mapping is not counted, and does not need to be: changing a
state tensor in place (``opt.state[p]["exp_avg"].zero_()``) changes the tensor the engine
already holds. A plain dict assigned as an entry (``opt.state[p] = d``) is copied into a
:class:`StateEntry` (so later writes to ``d`` itself are not seen: write through
``opt.state[p]``). Both classes pickle, copy and ``torch.save`` as the plain
``defaultdict`` and ``dict`` they stand for.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    # The mixin below is only ever combined with dict or defaultdict; typed as a dict, its
    # ``super()`` calls check against dict's methods.
    _MixinBase = dict[Any, Any]
else:
    _MixinBase = object


_CountedT = TypeVar("_CountedT", bound="_Counted")


class _Changes:
    """A counter shared by a table and its entries."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class _Counted(_MixinBase):
    """The writes a dict and a defaultdict share, each counted in ``self._changes``."""

    _changes: _Changes

    def __delitem__(self, key: Any) -> None:
        self._changes.count += 1
        super().__delitem__(key)

    def pop(self, *args: Any) -> Any:
        self._changes.count += 1
        return super().pop(*args)

    def popitem(self) -> Any:
        self._changes.count += 1
        return super().popitem()

    def clear(self) -> None:
        self._changes.count += 1
        super().clear()

    # |= takes what update takes (as dict's own does), more than | does
    def __ior__(self: _CountedT, other: Any) -> _CountedT:  # type: ignore[misc]
        self.update(other)
        return self


class StateEntry(_Counted, dict[Any, Any]):
    """One parameter's state: a dict whose writes are counted."""

    __slots__ = ("_changes",)

    def __init__(self, changes: _Changes, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._changes = changes

    def __setitem__(self, key: Any, value: Any) -> None:
        self._changes.count += 1
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._changes.count += 1
        super().update(*args, **kwargs)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._changes.count += 1
        return super().setdefault(key, default)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))

    def __copy__(self) -> dict[Any, Any]:
        return dict(self)


class StateTable(_Counted, defaultdict[Any, Any]):
    """torch.optim's ``state`` mapping (parameter -> dict) with its writes counted."""

    def __init__(self, items: Iterable[tuple[Any, Any]] | Mapping[Any, Any] = ()) -> None:
        self._changes = _Changes()
        super().__init__(self._entry)
        for key, value in items.items() if isinstance(items, Mapping) else items:
            self[key] = value

    def _entry(self, values: Mapping[Any, Any] | None = None) -> StateEntry:
        return StateEntry(self._changes, values or {})

    @property
    def changes(self) -> int:
        """How many writes the table and its entries have seen."""
        return self._changes.count

    def __setitem__(self, key: Any, value: Any) -> None:
        self._changes.count += 1
        if not (isinstance(value, StateEntry) and value._changes is self._changes):
            value = self._entry(value)
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = {} if default is None else default
        return self[key]

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            defaultdict,
            (dict,),
            None,
            None,
            iter([(key, dict(value)) for key, value in self.items()]),
        )

    # copy.copy gives the plain defaultdict the table stands for, not another table
    def __copy__(self) -> defaultdict[Any, Any]:  # type: ignore[override]
        return defaultdict(dict, {key: dict(value) for key, value in self.items()})

    def __repr__(self) -> str:
        return repr(defaultdict(dict, self))


def tracked(state: Any) -> StateTable:
    """``state`` as a :class:`StateTable` (itself if it is one)."""
    return state if isinstance(state, StateTable) else StateTable(state)


__all__ = ["StateEntry", "StateTable", "tracked"]
