"""The training page's examples (docs/trainers.md) and the scripts in docs/examples run as
written."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def training_blocks() -> list[str]:
    text = (ROOT / "docs" / "trainers.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.fixture(autouse=True)
def in_tmp_path_on_one_thread(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)  # examples write their plots and logs here


def test_the_training_page_has_one_example_per_trainer():
    blocks = training_blocks()
    for trainer in ("SupervisedTrainer", "RecurrentTrainer", "AdversarialTrainer"):
        assert sum(trainer in block for block in blocks) == 1, trainer


@pytest.mark.parametrize("index", range(3))
def test_training_page_example_runs(index, tmp_path, capsys):
    exec(compile(training_blocks()[index], f"docs/trainers.md block {index}", "exec"), {})
    if index == 0:
        assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "name", ["train_supervised", "train_recurrent", "train_adversarial", "train_lr_find"]
)
def test_docs_example_runs(name, tmp_path, capsys):
    if name in ("train_supervised", "train_lr_find"):
        pytest.importorskip("sklearn")
    runpy.run_path(str(ROOT / "docs" / "examples" / f"{name}.py"), run_name="__main__")
    out = capsys.readouterr().out
    if name == "train_supervised":
        accuracy = float(re.search(r"validation accuracy ([\d.]+)%", out).group(1))
        assert accuracy >= 90.0 and (tmp_path / "runs" / "digits.csv").exists()
    elif name == "train_lr_find":
        suggestion = float(re.search(r"suggestion ([\d.e-]+)", out).group(1))
        accuracy = float(re.search(r"validation accuracy ([\d.]+)%", out).group(1))
        assert 1e-4 < suggestion < 1e-1 and accuracy >= 95.0
        assert (tmp_path / "runs" / "lr_find.png").exists()
    elif name == "train_recurrent":
        held_out, unigram = map(float, re.findall(r"(\d\.\d+)", out)[:2])
        assert held_out < 0.75 * unigram
    else:
        assert "8 of 8 modes covered" in out


@pytest.mark.parametrize(
    "module",
    [
        "descent.train.data",
        "descent.train.supervised",
        "descent.train.groups",
        "descent.train.metrics",
        "descent.data.text",
        "descent.data.mixture",
    ],
)
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
