"""Every ``descent`` command run as a user runs it: a subprocess, its output and exit status.

The commands start in separate processes, several at a time (one module fixture starts
them all, each test reads its result). Results are checked against values computed
here independently: torch's schedulers and closed forms for ``descent schedule``,
hashes computed with hashlib for ``descent checkpoint``, the environment this test set
for ``descent env``, the printed sweep itself for ``descent lr-find``'s suggestion.
Bad arguments must exit with status 2 and a message naming the argument.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import descent

SRC = Path(__file__).resolve().parents[1] / "src"
PNG = b"\x89PNG\r\n\x1a\n"


def _save_checkpoints(root: Path) -> dict[str, Path]:
    """An intact checkpoint, a copy with one flipped byte, and one whose optimizer state
    belongs to parameters of other shapes than its model's."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = descent.Adam(model, lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    good = descent.save_checkpoint(
        root / "good",
        model=model,
        optimizers=opt,
        schedulers=sched,
        trainer_state={"epoch": 3},
        step=5,
        metrics={"loss": 0.5},
    )
    damaged = descent.save_checkpoint(root / "damaged", model=model, optimizers=opt)
    tensor_file = next(damaged.glob("*.safetensors"))
    data = bytearray(tensor_file.read_bytes())
    data[-3] ^= 0x01
    tensor_file.write_bytes(bytes(data))
    other = torch.nn.Sequential(torch.nn.Linear(4, 9), torch.nn.Tanh(), torch.nn.Linear(9, 1))
    other_opt = descent.Adam(other, lr=1e-2)
    other(torch.randn(3, 4)).sum().backward()
    other_opt.step()
    mismatched = descent.save_checkpoint(root / "mismatched", model=model, optimizers=other_opt)
    return {"good": good, "damaged": damaged, "mismatched": mismatched}


def _commands(tmp: Path, checkpoints: dict[str, Path]) -> dict[str, tuple[list[str], dict]]:
    """One subprocess per command (process start-up dominates these tests' time); the
    other cases of each command run in this process through ``descent.cli.main``."""
    return {
        "version": (["--version"], {}),
        "schedule cosine": (
            [
                "schedule",
                "Cosine",
                "total_steps=100",
                "--every",
                "10",
                "--out",
                str(tmp / "cosine.png"),
            ],
            {},
        ),
        "inspect": (["checkpoint", "inspect", str(checkpoints["good"])], {}),
        "verify damaged": (["checkpoint", "verify", str(checkpoints["damaged"])], {}),
        "env": (["env", "--json"], {"DESCENT_ENGINE": "per_tensor", "DESCENT_NO_CODEGEN": "1"}),
        "compare": (
            [
                "compare",
                "--optimizers",
                "SGD",
                "adam",
                "--epochs",
                "2",
                "--out",
                str(tmp / "compare"),
            ],
            {},
        ),
        "lr-find": (["lr-find", "--steps", "12", "--out", str(tmp / "lr.png")], {}),
        "bench bad": (["bench", "--only", "Adamm"], {}),
    }


@pytest.fixture(scope="module")
def checkpoints(workdir: Path) -> dict[str, Path]:
    return _save_checkpoints(workdir / "checkpoints")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def results(workdir: Path, checkpoints: dict[str, Path]) -> dict[str, subprocess.CompletedProcess]:
    commands = _commands(workdir, checkpoints)
    base = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DESCENT_ENGINE", "DESCENT_NO_CODEGEN")
    }
    base.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
        OMP_NUM_THREADS="1",
        MPLBACKEND="Agg",
    )

    def run(item: tuple[str, tuple[list[str], dict]]) -> subprocess.CompletedProcess:
        argv, env = item[1]
        return subprocess.run(
            [sys.executable, "-m", "descent", *argv],
            cwd=workdir,
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(commands, pool.map(run, commands.items()), strict=True))


class InProcess:
    """``descent.cli.main(argv)`` in this process, with its exit status and output."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *argv: str) -> subprocess.CompletedProcess:
        from descent.cli import main

        try:
            code = main(list(argv))
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        out, err = self.capsys.readouterr()
        return subprocess.CompletedProcess(list(argv), code, out, err)


@pytest.fixture
def descent_cli(capsys: pytest.CaptureFixture[str]) -> InProcess:
    return InProcess(capsys)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def usage_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2, a usage line and a message holding every fragment, on stderr."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr[-2000:])
    assert "usage:" in result.stderr and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


# ---------------------------------------------------------------------- descent itself


def test_version_names_descent_torch_and_python(results):
    assert ok(results["version"]).strip() == (
        f"descent {descent.__version__} (torch {torch.__version__}, Python "
        f"{platform.python_version()})"
    )


def test_help_lists_every_command_with_examples(descent_cli):
    from descent.cli import COMMANDS

    text = ok(descent_cli("--help"))
    for name in COMMANDS:
        assert re.search(rf"^\s+{name}\b", text, flags=re.MULTILINE), name
    assert "examples:" in text


def test_an_unknown_command_is_a_usage_error(descent_cli):
    usage_error(descent_cli("frobnicate"), "invalid choice: 'frobnicate'")


def test_every_command_has_help_with_examples(capsys):
    from descent.cli import COMMANDS, main

    for name in COMMANDS:
        with pytest.raises(SystemExit) as stop:
            main([name, "--help"])
        assert stop.value.code == 0, name
        text = capsys.readouterr().out
        assert f"usage: descent {name}" in text and f"examples:\n  descent {name}" in text, name


# ---------------------------------------------------------------------- schedule


def _table(text: str) -> dict[int, list[float]]:
    rows = {}
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0].isdigit() and len(fields) >= 2:
            rows[int(fields[0])] = [float(value) for value in fields[1:]]
    return rows


def test_schedule_prints_the_cosine_closed_form_and_plots_it(results, workdir):
    text = ok(results["schedule cosine"])
    assert text.startswith("Cosine(total_steps=100, init=1.0, final=0.0")
    rows = _table(text)
    assert sorted(rows) == [*range(0, 110, 10), 109]  # 110% of total_steps, every 10
    for step, (value,) in rows.items():
        expected = 0.5 * (1 + math.cos(math.pi * min(step, 100) / 100))
        assert value == pytest.approx(expected, rel=1e-5, abs=1e-9), step
    assert (workdir / "cosine.png").read_bytes()[:8] == PNG


def test_schedule_of_a_scheduler_follows_torch(descent_cli):
    text = ok(
        descent_cli(
            "schedule", "StepLR", "3", "gamma=0.5", "--lr", "0.2", "--steps", "12", "--every", "1"
        )
    )
    assert "StepLR(step_size=3, gamma=0.5) on SGD(lr=0.2)" in text
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=0.2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    expected = []
    for _ in range(12):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    rows = _table(text)
    assert [rows[t][0] for t in range(12)] == pytest.approx(expected, rel=1e-6)


def test_schedule_refuses_unknown_names_and_bad_values(descent_cli):
    usage_error(descent_cli("schedule", "Cosin", "100"), "unknown schedule 'Cosin'", "Cosine")
    usage_error(descent_cli("schedule", "Cosine", "total_steps=0"), "total_steps=0")
    usage_error(descent_cli("schedule", "Warmup", "Foo(3)", "10"), "cannot read 'Foo(3)'")
    usage_error(
        descent_cli(
            "schedule",
            "OneCycle",
            "total_steps=10",
            "initial=0.1",
            "peak=1",
            "final=0",
            "--steps",
            "20",
        ),
        "step=11 is past total_steps=10",
    )


# ---------------------------------------------------------------------- checkpoint


def test_checkpoint_inspect_shows_format_hashes_and_content(results):
    text = ok(results["inspect"])
    path = Path(re.search(r"^checkpoint (.+)$", text, flags=re.MULTILINE).group(1))
    index = json.loads((path / "checkpoint.json").read_text())
    tensor_file = next(path.glob("*.safetensors"))
    assert "version 1" in text and index["format_version"] == 1
    assert index["sha256"] in text
    assert hashlib.sha256(tensor_file.read_bytes()).hexdigest() in text
    assert f"descent {descent.__version__}" in text
    assert re.search(r"step\s+5\b", text) and "loss=0.5" in text
    assert "Sequential, 4 tensors, 49 values (float32)" in text  # 4*8 + 8 + 8 + 1
    assert "Adam" in text and "StepLR, last_epoch 0" in text
    assert "keys epoch" in text and "verified" in text


def test_checkpoint_verify_passes_an_intact_checkpoint(descent_cli, checkpoints):
    text = ok(descent_cli("checkpoint", "verify", str(checkpoints["good"])))
    assert "loads into a fresh Adam over the model's parameters: ok" in text
    assert text.strip().splitlines()[-1].startswith("verified: ")


def test_checkpoint_verify_fails_on_a_flipped_byte(results):
    result = results["verify damaged"]
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED" in result.stdout and "SHA-256" in result.stdout


def test_checkpoint_verify_fails_when_the_optimizer_state_does_not_fit_the_model(
    descent_cli, checkpoints
):
    result = descent_cli("checkpoint", "verify", str(checkpoints["mismatched"]))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Adam refuses it" in result.stdout and "FAILED" in result.stdout


def test_checkpoint_of_a_missing_path_or_an_unknown_action_is_a_usage_error(descent_cli, workdir):
    usage_error(
        descent_cli("checkpoint", "verify", str(workdir / "nowhere")),
        "argument PATH",
        "does not exist",
    )
    usage_error(descent_cli("checkpoint", "check", str(workdir)), "invalid choice: 'check'")


# ---------------------------------------------------------------------- env


def test_env_reports_versions_devices_and_the_mode_set_in_the_environment(results):
    report = json.loads(ok(results["env"]))
    assert report["descent"] == descent.__version__
    assert report["torch"]["version"] == torch.__version__
    assert report["devices"]["cpu"]["logical_cores"] == os.cpu_count()
    assert len(report["devices"]["cuda"]) == torch.cuda.device_count()
    assert report["engine"]["default_mode"] == "per_tensor"  # DESCENT_ENGINE
    assert report["engine"]["cpu_kernels"] is False  # DESCENT_NO_CODEGEN
    assert report["engine"]["cuda_kernels"] is False


def test_env_names_an_invalid_engine_mode(descent_cli, monkeypatch):
    monkeypatch.setenv("DESCENT_ENGINE", "fastest")
    result = descent_cli("env")
    assert result.returncode == 2 and "mode='fastest'" in result.stderr, result.stderr


# ---------------------------------------------------------------------- compare


def test_compare_prints_a_table_and_writes_an_overlaid_plot(results, workdir):
    pytest.importorskip("sklearn")
    text = ok(results["compare"])
    rows = {
        line.split()[0]: line.split()
        for line in text.splitlines()
        if line.startswith(("SGD ", "Adam "))
    }
    assert list(rows) == ["SGD", "Adam"]  # names resolved
    for fields in rows.values():
        train_loss, test_loss = float(fields[1]), float(fields[2])
        final, best = (float(fields[i].rstrip("%")) for i in (3, 4))
        assert 0 < train_loss < math.log(10) and 0 < test_loss < math.log(10)
        assert 0 <= final <= best <= 100 and fields[5] in ("1", "2")
    assert float(rows["SGD"][3].rstrip("%")) > 80  # the preset trains the MLP
    assert "SGD(lr=0.1, momentum=0.9, nesterov=True)" in text
    assert (workdir / "compare" / "compare.png").read_bytes()[:8] == PNG


def test_compare_refuses_unknown_optimizers_and_bad_numbers(descent_cli):
    usage_error(
        descent_cli("compare", "--optimizers", "SGD", "Adamm"),
        "argument --optimizers",
        "'Adamm'",
        "Adam",
    )
    usage_error(descent_cli("compare", "--epochs", "0"), "argument --epochs", "0")
    usage_error(descent_cli("compare", "--lr", "-1"), "argument --lr", "-1")


# ---------------------------------------------------------------------- lr-find


def test_lr_find_suggests_a_tenth_of_the_rate_at_the_lowest_smoothed_loss(results, workdir):
    text = ok(results["lr-find"])
    rows = [
        line.split()
        for line in text.splitlines()
        if re.match(r"^\s+\d+\s+[\d.e+-]+\s+[\d.na]+\s+[\d.]+$", line)
    ]
    assert [int(row[0]) for row in rows] == list(range(1, 13))  # every step shown
    lowest = min(rows, key=lambda row: float(row[3]))
    suggestion = float(re.search(r"suggestion ([\d.e+-]+)", text).group(1))
    assert suggestion == pytest.approx(float(lowest[1]) / 10, rel=2e-2)
    assert (workdir / "lr.png").read_bytes()[:8] == PNG


def test_lr_find_refuses_too_few_steps(descent_cli):
    usage_error(descent_cli("lr-find", "--steps", "1"), "argument --steps", "at least 2")
    usage_error(descent_cli("lr-find", "--steps", "ten"), "argument --steps", "'ten'")


# ---------------------------------------------------------------------- bench


def test_bench_help_shows_examples_and_the_benchmarks_options(descent_cli):
    text = ok(descent_cli("bench", "--help"))
    assert "descent bench --quick" in text and "--repetitions" in text


def test_bench_passes_its_arguments_to_the_benchmark(results):
    usage_error(results["bench bad"], "--only", "Adamm")


@pytest.mark.slow
def test_bench_quick_writes_its_report(tmp_path):
    report = tmp_path / "bench.md"
    env = dict(os.environ, PYTHONPATH=str(SRC))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "descent",
            "bench",
            "--quick",
            "--only",
            "Adam",
            "--output",
            str(report),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Adam" in report.read_text()
