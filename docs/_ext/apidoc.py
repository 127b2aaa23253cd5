"""The API reference's pages, written from the package itself at every build.

Every public module of descent (no component of its dotted name starts with ``_``) gets
one page: its docstring, a table of its public names, and the documentation of each
name whose *home* is that module. A public name is one listed in the module's
``__all__``; a module without ``__all__`` exposes the classes and functions it defines
and the upper-case constants it assigns. A name's home is the public module that
defines it (for a name defined in a private module, the nearest public module above
it that exports it); every other module that exports it links there, so each object
is described once. :func:`undocumented` lists the public names without documentation
(tests/test_docs_build.py requires it to be empty).
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

PACKAGE = "descent"
SKIPPED = ("__main__",)
"""Module names (last component) that are entry points, not APIs."""
EXCLUDED = ("descent.bench",)
"""Packages left out with all their modules: the benchmark is a program (``descent
bench``, described in the Speed page), not an API, and its internals change with it."""


def is_public(name: str) -> bool:
    parts = name.split(".")
    return (
        not any(part.startswith("_") for part in parts)
        and parts[-1] not in SKIPPED
        and not any(name == x or name.startswith(x + ".") for x in EXCLUDED)
    )


@functools.cache
def public_modules() -> tuple[str, ...]:
    """Every public module of the package, the package first, then in name order."""
    package = importlib.import_module(PACKAGE)
    names = [module.name for module in pkgutil.walk_packages(package.__path__, f"{PACKAGE}.")]
    return (PACKAGE, *sorted(name for name in names if is_public(name)))


@functools.cache
def _assigned(module_name: str) -> frozenset[str]:
    """Names the module's source assigns or defines at module level (not imports)."""
    source = inspect.getsource(importlib.import_module(module_name))
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        names.update(target.id for target in targets if isinstance(target, ast.Name))
    return frozenset(names)


@functools.cache
def _attribute_docs(module_name: str) -> dict[str, str]:
    """Docstrings of the module's assigned names (``#:`` comments or a string after)."""
    from sphinx.pycode import ModuleAnalyzer

    analyzer = ModuleAnalyzer.for_module(module_name)
    return {
        name: "\n".join(lines).strip()
        for (scope, name), lines in analyzer.find_attr_docs().items()
        if not scope
    }


def _is_function(value: Any) -> bool:
    """A function, also behind ``functools`` wrappers such as ``functools.cache``."""
    return callable(value) and (
        inspect.isfunction(inspect.unwrap(value)) or inspect.isbuiltin(value)
    )


def _is_code(value: Any) -> bool:
    return inspect.isclass(value) or _is_function(value)


def _defines(module: ModuleType, name: str, value: Any) -> bool:
    owner = getattr(value, "__module__", None)
    if _is_code(value):
        return owner == module.__name__
    if inspect.ismodule(value):
        return False
    return name in _assigned(module.__name__)


@functools.cache
def public_names(module_name: str) -> tuple[str, ...]:
    """The module's public names (see the module doc), in their order."""
    module = importlib.import_module(module_name)
    listed = getattr(module, "__all__", None)
    if listed is not None:
        return tuple(listed)
    return tuple(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and _defines(module, name, value)
        and (_is_code(value) or name.isupper())
    )


def _value(module_name: str, name: str) -> Any:
    return getattr(importlib.import_module(module_name), name)


def home(module_name: str, name: str) -> str:
    """The module where ``module_name.name`` is documented (a module, for a module)."""
    value = _value(module_name, name)
    if inspect.ismodule(value):
        return value.__name__
    candidates = [m for m in public_modules() if name in public_names(m)]
    owner = getattr(value, "__module__", None)
    if _is_code(value) and isinstance(owner, str):
        parts = owner.split(".")
        for end in range(len(parts), 0, -1):
            nearest = ".".join(parts[:end])
            if nearest in candidates and _value(nearest, name) is value:
                return nearest
    # data: the module whose source assigns it, this one's own first, then below it
    ordered = [module_name] + [m for m in candidates if m.startswith(module_name + ".")]
    for candidate in ordered + candidates:
        if (
            candidate in candidates
            and name in _assigned(candidate)
            and _value(candidate, name) is value
        ):
            return candidate
    return module_name


def documentation(module_name: str, name: str) -> str:
    """The documentation of ``module_name.name`` where it lives ("" if it has none)."""
    value = _value(module_name, name)
    where = home(module_name, name)
    if inspect.ismodule(value) or _is_code(value):
        return (value.__doc__ or "").strip()
    return _attribute_docs(where).get(name, "")


def undocumented() -> list[str]:
    """Public names (``module.name``) whose documentation is empty."""
    return [
        f"{module}.{name}"
        for module in public_modules()
        for name in public_names(module)
        if not documentation(module, name)
    ]


@dataclass(frozen=True)
class Entry:
    """One public name of a page: where it is documented, and with which directive."""

    name: str
    target: str
    directive: str | None
    module: bool = False


def _directive(module_name: str, name: str, value: Any) -> str:
    if inspect.isclass(value):
        return "autoexception" if issubclass(value, BaseException) else "autoclass"
    if _is_function(value):
        return "autofunction"
    # autodata would show the docstring of the value's type for an undocumented name
    return "autodata" if documentation(module_name, name) else "py:data"


def entries(module_name: str) -> Iterator[Entry]:
    """The page's names: documented here (a directive) or linked to their home."""
    for name in public_names(module_name):
        value = _value(module_name, name)
        if inspect.ismodule(value):
            yield Entry(name, value.__name__, None, module=True)
            continue
        where = home(module_name, name)
        yield Entry(
            name,
            f"{where}.{name}",
            _directive(module_name, name, value) if where == module_name else None,
        )


def summary(text: str) -> str:
    """The first sentence of ``text``'s first paragraph (a period inside a ````literal````
    does not end it), on one line."""
    paragraph = " ".join(inspect.cleandoc(text).split("\n\n", 1)[0].split())
    for index, char in enumerate(paragraph):
        if (
            char == "."
            and paragraph[index + 1 : index + 2] in ("", " ")
            and paragraph[:index].count("``") % 2 == 0
        ):
            return paragraph[: index + 1]
    return paragraph


def _table(rows: list[tuple[str, str]]) -> list[str]:
    lines = [".. list-table::", "   :widths: 35 65", ""]
    for reference, text in rows:
        lines += [f"   * - {reference}", f"     - {text or ' '}"]
    return lines + [""]


def page(module_name: str) -> str:
    """The reStructuredText of ``module_name``'s page."""
    title = f"``{module_name}``"
    lines = [
        title,
        "=" * len(title),
        "",
        f".. automodule:: {module_name}",
        "",
        ".. currentmodule:: None",
        "",
    ]
    listed = list(entries(module_name))
    submodules = [m for m in public_modules() if m.rpartition(".")[0] == module_name]
    if submodules:
        lines += ["**Modules**", ""] + _table(
            [
                (f":py:mod:`{m}`", summary(importlib.import_module(m).__doc__ or ""))
                for m in submodules
            ]
        )
    if listed:
        lines += ["**Names**", ""] + _table(
            [
                (
                    f":py:{'mod' if entry.module else 'obj'}:`~{entry.target}`",
                    summary(documentation(module_name, entry.name)),
                )
                for entry in listed
            ]
        )
    for entry in listed:
        if entry.directive is None:
            continue
        lines += [f".. {entry.directive}:: {entry.target}"]
        if entry.directive in ("autoclass", "autoexception"):
            lines += ["   :members:", "   :show-inheritance:"]
        elif entry.directive == "py:data":
            lines += [f"   :value: {_value(module_name, entry.name)!r}"]
        lines.append("")
    return "\n".join(lines)


def write_pages(directory: Path) -> list[str]:
    """Write every module's page into ``directory``; return the modules. Files are
    rewritten only when their text changes; pages of modules that no longer exist go."""
    directory.mkdir(parents=True, exist_ok=True)
    modules = list(public_modules())
    texts = {f"{module}.rst": page(module) for module in modules}
    for file_name, text in texts.items():
        path = directory / file_name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    for stale in set(p.name for p in directory.glob("*.rst")) - set(texts):
        (directory / stale).unlink()
    return modules


def _generate(app: Any) -> None:
    write_pages(Path(app.srcdir) / "api" / "generated")


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", _generate)
    return {"parallel_read_safe": True}
