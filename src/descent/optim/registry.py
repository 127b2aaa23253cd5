"""The registry: every optimizer descent defines, found from the classes themselves.

An algorithm's module in :mod:`descent.optim` is imported here, and every public
:class:`~descent.optim.base.Optimizer` subclass it defines is registered under its class
name. The command line, the benchmark, the functional API and the test table read this
registry, so an algorithm added in its own file appears in all of them.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from .base import Optimizer


@functools.cache
def algorithms() -> dict[str, type[Optimizer]]:
    """Every descent optimizer class by class name, in the order the modules define them."""
    package = importlib.import_module(__package__ or "descent.optim")
    found: dict[str, type[Optimizer]] = {}
    for module_info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_") or module_info.name in ("base", "registry"):
            continue
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            if isinstance(value, type) and issubclass(value, Optimizer):
                found[name] = value
    return found


def lookup(name: str) -> type[Optimizer]:
    """The optimizer class called ``name`` (any case: ``"adamw"``, ``"AdamW"``)."""
    table = algorithms()
    if name in table:
        return table[name]
    lowered = {key.lower(): cls for key, cls in table.items()}
    lowered.update({cls.registry_name: cls for cls in table.values()})
    if name.lower() in lowered:
        return lowered[name.lower()]
    raise KeyError(f"no optimizer named {name!r}; descent has {', '.join(table)}")


__all__ = ["algorithms", "lookup"]
