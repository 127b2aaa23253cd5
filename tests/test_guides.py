"""Each guide's example in docs/examples runs and does what its guide says.

The examples print measured differences (a resumed run against an uninterrupted one,
a sharded run against one process, a compiled step against an eager one); the tests
read them and hold them to the guides' claims. The distributed examples run together
in one ``torchrun`` launch of 2 CPU processes (tests/run_distributed_guides.py).
"""

from __future__ import annotations

import math
import os
import re
import runpy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"


def example(name: str) -> dict[str, Any]:
    return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="guide")


def measured(text: str, label: str) -> float:
    """The number after ``label`` in the example's output."""
    found = re.search(re.escape(label) + r"\s*([-+\d.e]+)", text)
    assert found, (label, text)
    return float(found.group(1))


@pytest.fixture(autouse=True)
def quiet(one_thread: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)


def test_lightning_resume_from_checkpoint_is_exact(tmp_path, capsys):
    pytest.importorskip("lightning")
    # Importing torch's own optimizer test tables (tests/torch_optim_db.py) freezes the
    # global torch.backends flags, which Lightning's Trainer sets; allow it as it would be
    # allowed in a process without those tables.
    with torch.backends.__allow_nonbracketed_mutation():
        example("guide_lightning")["main"](tmp_path)
    out = capsys.readouterr().out
    assert "optimizer AdamW, step 32" in out  # 4 epochs of 8 steps
    cosine = 1e-2 * (1 + math.cos(math.pi * 32 / 40)) / 2  # CosineAnnealingLR
    assert measured(out, "lr") == pytest.approx(cosine, rel=1e-3)
    assert measured(out, "resumed vs uninterrupted: largest parameter difference") == 0.0


def test_transformers_trainer_resume_is_exact(tmp_path, capsys):
    pytest.importorskip("transformers")
    example("guide_transformers")["main"](tmp_path)
    out = capsys.readouterr().out
    runs = re.findall(r"^(\d+) steps.*lr ([\d.e+-]+), losses (\[.*\])$", out, flags=re.M)
    assert [steps for steps, _, _ in runs] == ["8", "4", "8"]
    assert float(runs[0][1]) == pytest.approx(3e-3 * 0.1) == float(runs[2][1])  # LinearLR
    assert runs[0][2] == runs[2][2]  # same logged losses
    assert measured(out, "resumed vs uninterrupted: largest parameter difference") == 0.0


@pytest.fixture
def fresh_accelerate() -> Iterator[None]:
    accelerate = pytest.importorskip("accelerate")
    yield
    accelerate.state.AcceleratorState._reset_state(reset_partial_state=True)


def test_accelerate_save_and_load_state_resume_exactly(tmp_path, capsys, fresh_accelerate):
    example("guide_accelerate")["main"](tmp_path)
    out = capsys.readouterr().out
    assert "optimizer AdamW (wrapped by accelerate)" in out
    assert measured(out, "lr") == pytest.approx(1e-2 * 0.5 ** (16 // 4))  # StepLR, 16 steps
    assert measured(out, "loss") == measured(out, "resumed")
    assert measured(out, "resumed vs uninterrupted: largest parameter difference") == 0.0


def test_migrating_from_torch_optim_keeps_the_trajectory(capsys):
    example("guide_migrate")["main"]()
    out = capsys.readouterr().out
    assert measured(out, "the parameters moved by up to") > 1e-2  # it trained
    for label in (
        "descent.AdamW vs torch.optim.AdamW",
        "switched libraries twice mid-run",
        "checkpoints across libraries",
    ):
        assert measured(out, f"{label}: largest relative difference") <= 1e-12, label


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_model_and_training_step_match_eager(backend, capsys):
    import torch

    torch._dynamo.reset()
    example("guide_compile")["main"](backend)
    out = capsys.readouterr().out
    limit = 0.0 if backend == "aot_eager" else 1e-5  # generated kernels may round differently
    assert measured(out, "compiled model vs eager: largest parameter difference") <= limit
    assert measured(out, "compiled training step vs eager: largest parameter difference") <= limit
    torch._dynamo.reset()


def test_distributed_guides_on_two_processes(tmp_path):
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    )
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            str(ROOT / "tests" / "run_distributed_guides.py"),
            str(tmp_path / "dcp"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sections = dict(re.findall(r"^== (\w+)\n(.*?)(?=^== |\Z)", done.stdout, flags=re.M | re.S))
    ddp, fsdp, dcp = (sections[f"guide_{name}"] for name in ("ddp_zero", "fsdp2", "dcp"))
    assert measured(ddp, "DDP vs one process: largest parameter difference") <= 1e-13
    assert measured(ddp, "ZeRO vs one process: largest parameter difference") <= 1e-13
    kept, total = map(int, re.search(r"keeps the state of (\d+) of (\d+)", ddp).groups())
    assert 0 < kept < total == 4  # sharded state
    assert "parameters are DTensors: True" in fsdp and "sharded alike: True" in fsdp
    assert measured(fsdp, "FSDP2 vs one process: largest parameter difference") <= 1e-13
    assert measured(dcp, "loaded lr") == 0.01  # not the fresh 0.5
    assert measured(dcp, "resumed vs uninterrupted: largest parameter difference") == 0.0
