"""The runnable examples in the docstrings of the utilities, interop and functional API."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "descent.functional",
    "descent.interop.arrays",
    "descent.interop.groups",
    "descent.interop.torch_optim",
    "descent.utils.clip",
    "descent.utils.ema",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.attempted > 0, f"{name} has no runnable example"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
