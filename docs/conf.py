"""Sphinx configuration: the guides (Markdown, through MyST) and the API reference
(autodoc, napoleon for the "Args:" sections, autosummary tables), built from ``src``.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).parent / "_ext"))

import descent  # noqa: E402

project = "descent"
author = "the descent authors"
copyright = "2026, the descent authors"
release = version = descent.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_parser",
    "apidoc",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "examples", "README.md"]
root_doc = "index"

# autodoc: signatures as written, members in source order, type hints in the signature
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {"show-inheritance": True}
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"descent {release}"
html_static_path: list[str] = []
