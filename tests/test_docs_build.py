"""The documentation: every public name documented, the guides showing their tested
examples, the API pages describing each object once, the Sphinx build free of warnings
(slow), and descent's types visible to a type checker in a user's script (slow).
"""

from __future__ import annotations

import collections
import importlib
import inspect
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))
apidoc = pytest.importorskip("apidoc", reason="docs/_ext/apidoc.py needs sphinx")

KNOWN_UNDOCUMENTED = {
    "descent.__version__",
    "descent.checkpoint.format.FORMAT",
    "descent.checkpoint.format.INDEX_NAME",
    "descent.data.text.TEXTS",
    "descent.engine.tensors.Operand",
    "descent.train.accumulation.NORMALIZE_BY",
    "descent.train.accumulation.check_normalize_by",
    "descent.train.adversarial.LOSSES",
    "descent.train.checkpointing.PAYLOAD_KEYS",
    "descent.train.checks.check_choice",
    "descent.train.checks.check_optimizer",
    "descent.train.checks.check_optional_positive",
    "descent.train.checks.check_positive_int",
    "descent.train.groups.EMBEDDING_TYPES",
    "descent.train.lr_finder.RULE",
    "descent.train.recurrent.STEP_EVERY",
    "descent.train.step.NONFINITE_POLICIES",
    "descent.train.step.PRECISIONS",
    "descent.train.supervised.BUILTIN_METRICS",
}
"""Public names without documentation when the API reference was introduced (constants
and helpers of modules without ``__all__``). The list may only shrink: a new public
name must come with its docstring."""


def test_every_public_name_is_documented():
    missing = set(apidoc.undocumented())
    assert missing <= KNOWN_UNDOCUMENTED, sorted(missing - KNOWN_UNDOCUMENTED)
    assert not KNOWN_UNDOCUMENTED - missing, (
        f"now documented, remove from KNOWN_UNDOCUMENTED: {sorted(KNOWN_UNDOCUMENTED - missing)}"
    )


def test_every_public_module_has_a_docstring():
    modules = apidoc.public_modules()
    assert {"descent", "descent.optim.adam", "descent.cli.compare", "descent.train"} <= set(modules)
    assert [m for m in modules if not (importlib.import_module(m).__doc__ or "").strip()] == []


def test_api_pages_describe_each_object_once_and_list_every_name(tmp_path):
    modules = apidoc.write_pages(tmp_path)
    described = collections.Counter()
    for module in modules:
        text = (tmp_path / f"{module}.rst").read_text()
        described.update(re.findall(r"^\.\. (?:auto\w+|py:data):: (\S+)$", text, flags=re.M))
        for entry in apidoc.entries(module):
            assert f"`~{entry.target}`" in text, (module, entry.name)
    assert [name for name, count in described.items() if count > 1] == []
    for name in (
        "descent.optim.adam.Adam",
        "descent.optim.base.Optimizer",
        "descent.schedules.functions.Cosine",
        "descent.train.supervised.SupervisedTrainer",
        "descent.checkpoint.state.save_checkpoint",
        "descent.optim.registry.algorithms",
        "descent.cli.compare.compare_on_digits",
    ):
        assert described[name] == 1, name
    # re-exports link to the one description: descent.Adam is described in descent.optim.adam
    assert "`~descent.optim.adam.Adam`" in (tmp_path / "descent.rst").read_text()


def test_optimizer_docstrings_carry_a_generated_args_section():
    from descent.optim.registry import algorithms

    for name, cls in algorithms().items():
        args = cls.__doc__.split("\nArgs:\n", 1)
        assert len(args) == 2, name
        documented = re.findall(r"^    (\w+): ", args[1], flags=re.M)
        assert documented == list(inspect.signature(cls).parameters), name  # in order


GUIDES = {
    "migrate": "guide_migrate.py",
    "lightning": "guide_lightning.py",
    "transformers": "guide_transformers.py",
    "accelerate": "guide_accelerate.py",
    "compile": "guide_compile.py",
    "ddp-zero": "guide_ddp_zero.py",
    "fsdp2": "guide_fsdp2.py",
    "dcp": "guide_dcp.py",
}


def test_each_guide_shows_the_example_its_test_runs():
    tests = (ROOT / "tests" / "test_guides.py").read_text() + (
        ROOT / "tests" / "run_distributed_guides.py"
    ).read_text()
    assert sorted(p.name for p in (DOCS / "examples").glob("guide_*.py")) == sorted(GUIDES.values())
    for page, example in GUIDES.items():
        text = (DOCS / "guides" / f"{page}.md").read_text()
        assert f"```{{literalinclude}} ../examples/{example}" in text, page
        assert f'"{example.removesuffix(".py")}"' in tests, example
        assert page in (DOCS / "guides" / "index.md").read_text()


def test_readme_is_a_front_page_linking_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 100
    for page in (
        "optimizers",
        "schedules",
        "beyond-torch",
        "trainers",
        "training",
        "checkpoints",
        "guides/index",
        "cli",
        "speed",
        "development",
    ):
        assert f"(docs/{page}.md)" in readme, page
        assert (DOCS / f"{page}.md").exists(), page
    command = 'pip install -c constraints.txt -e ".[test]" && python -m pytest tests'
    assert command in readme and command in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_sphinx_builds_without_warnings(tmp_path):
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            str(DOCS),
            str(tmp_path / "html"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    adam = (tmp_path / "html" / "api" / "generated" / "descent.optim.adam.html").read_text()
    assert "Parameters" in adam and "decoupled_weight_decay" in adam  # the Args section


@pytest.mark.slow
def test_the_wheel_ships_py_typed(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    wheel = next(tmp_path.glob("descent-*.whl"))
    assert "descent/py.typed" in zipfile.ZipFile(wheel).namelist()


USER_SCRIPT = """\
import torch
import descent

model = torch.nn.Linear(3, 1)
opt = descent.Adam(model.parameters(), lr=1e-3)
sched = descent.schedules.StepLR(opt, step_size=3)
checkpoint = descent.load_checkpoint("run", model=model)
label: int = checkpoint.step                # planted: step is int | None
value: str = descent.schedules.Cosine(10)(3)  # planted: a schedule returns a float
"""


def _mypy(tmp_path: Path, source: str) -> list[str]:
    pytest.importorskip("mypy")
    (tmp_path / "user.py").write_text(source)
    env = dict(os.environ, MYPYPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--ignore-missing-imports", "user.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return re.findall(r"^user\.py:(\d+): error", done.stdout, flags=re.M)


@pytest.mark.slow
def test_a_type_checker_catches_planted_errors_in_a_users_script(tmp_path):
    lines = _mypy(tmp_path, USER_SCRIPT)
    assert {"8", "9"} <= set(lines), lines


@pytest.mark.slow
def test_a_type_checker_raises_no_false_alarm_on_correct_constructors(tmp_path):
    assert _mypy(tmp_path, USER_SCRIPT) == ["8", "9"]
