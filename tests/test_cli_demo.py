"""``descent demo``: all three trainers run, plots are written where the demo says."""

from __future__ import annotations

import re

import pytest

from descent.cli import main


def test_quick_demo_runs_all_trainers_and_writes_plots(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    text = captured.out
    for section in ("SupervisedTrainer", "RecurrentTrainer", "AdversarialTrainer"):
        assert section in text
    assert f"plots written to {out.resolve()}" in text
    written = sorted(p.name for p in out.iterdir())
    assert written == ["adversarial.png", "gan_samples.png", "recurrent.png", "supervised_Adam.png"]
    for path in out.iterdir():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r"test accuracy \d+\.\d+%", text)
    assert re.search(r"modes covered: \d/8", text)
    assert "epoch 1/2" in captured.err  # progress bars on stderr


def test_demo_compares_several_optimizers_in_a_table(tmp_path, capsys):
    pytest.importorskip("sklearn")
    assert (
        main(
            [
                "demo",
                "--quick",
                "--no-progress",
                "--only",
                "supervised",
                "--epochs",
                "1",
                "--optimizers",
                "SGD",
                "Lion",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    table = [
        line.split()
        for line in captured.out.splitlines()
        if line.strip().startswith(("SGD ", "Lion "))
    ]
    assert [row[0] for row in table] == ["SGD", "Lion"]
    assert captured.err == ""


def test_demo_refuses_unknown_names(capsys):
    for argv, message in (
        (["--optimizers", "Adamm", "--no-progress"], "unknown optimizer 'Adamm'"),
        (["--epochs", "0"], "argument --epochs: 0; expected a positive"),
        (["--only", "reinforcement"], "invalid choice: 'reinforcement'"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(["demo", *argv])
        assert stop.value.code == 2 and message in capsys.readouterr().err, argv
