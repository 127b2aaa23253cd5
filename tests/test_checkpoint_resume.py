"""Exact resume: a training loop killed with SIGKILL and restarted ends bit-identical.

A plain loop (dropout, NumPy and Python random draws, gradient accumulation with an
uneven last window per epoch, AdamW, StepLR, a seeded resumable sampler) saves a
checkpoint every 2 optimizer steps and at each epoch's end. The reference is one
uninterrupted run in a fresh interpreter. The trials run the same script as a fork
server (one interpreter that imports torch once and warms up with a full run, then
forks a child process per run, so a run costs well under a second instead of ~4 s of
imports); the test SIGKILLs children at random moments, or while a chosen checkpoint
commit is stalled between writing and renaming, starts new children that resume, and
compares the final parameters with the reference bit for bit. A few trials run by
default; ``python -m pytest -m slow`` runs many more. The fork server and the kill
helpers are in ``tests/kill_harness.py``, shared with
``tests/test_train_checkpoint_resume.py``.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from descent.checkpoint import CheckpointManager
from kill_harness import (
    ForkServer,
    assert_bit_identical,
    kill_at_random,
    run_and_kill,
    run_in_fresh_interpreter,
    run_to_end,
)

pytestmark = pytest.mark.skipif(
    not (hasattr(signal, "SIGKILL") and hasattr(os, "fork")),
    reason="needs SIGKILL and fork (POSIX)",
)

SCRIPT = r"""
import os, random, sys, time
import numpy as np
import torch
from torch import nn
from safetensors.torch import save_file
from kill_harness import serve   # tests/ is on PYTHONPATH (kill_harness.script_env)

import descent
from descent.checkpoint import CheckpointManager, _atomic
from descent.distributed import ResumableSampler

torch.set_num_threads(1)
EPOCHS, BATCH, ACCUMULATION, N = 3, 8, 3, 100     # 13 micro-batches: windows 3,3,3,3,1


def train(workdir, result, stall_commit, say, restore_rng=True, pause=0.0):
    if stall_commit:  # the stall_commit-th commit sleeps between writing and renaming
        real_commit, commits = _atomic._commit, []

        def stalling_commit(source, target):
            commits.append(target)
            if len(commits) == stall_commit:
                say("STALLED")
                time.sleep(60)
            real_commit(source, target)

        _atomic._commit = stalling_commit
    data = torch.Generator().manual_seed(1234)
    x, y = torch.randn(N, 5, generator=data), torch.randn(N, 1, generator=data)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.2), nn.Tanh(), nn.Linear(16, 1))
    opt = descent.AdamW(model, lr=1e-2, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.7)
    sampler = ResumableSampler(N, seed=7)
    manager = CheckpointManager(workdir, keep_last=2, monitor="loss")
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)

    state = {"epoch": 0, "position": 0, "global_step": 0}
    resumed = manager.load_latest(model=model, optimizers=opt, schedulers=sched,
                                  restore_rng=restore_rng)
    if resumed is not None:
        state = resumed.trainer_state
        sampler.load_state_dict(state["sampler"])
    say(f"RESUMED {state['global_step']}")

    step = state["global_step"]
    for epoch in range(state["epoch"], EPOCHS):
        position = state["position"] if epoch == state["epoch"] else 0
        sampler.set_epoch(epoch, position=position)
        batches = list(torch.utils.data.BatchSampler(sampler, BATCH, drop_last=False))
        for start in range(0, len(batches), ACCUMULATION):
            window = batches[start:start + ACCUMULATION]
            for index in window:
                noise = torch.from_numpy(np.random.normal(0.0, 0.01, (len(index), 1))).float()
                scale = random.uniform(0.9, 1.1)
                loss = ((model(x[index]) - y[index] - noise) ** 2).mean() * scale / len(window)
                loss.backward()
                time.sleep(pause)  # so that kills land at spread-out moments
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            position += sum(len(index) for index in window)
            end = start + ACCUMULATION >= len(batches)
            if end:
                sampler.set_epoch(epoch + 1)
            state = {"epoch": epoch + 1 if end else epoch, "position": 0 if end else position,
                     "global_step": step,
                     "sampler": sampler.state_dict(position=0 if end else position)}
            if step % 2 == 0 or end:
                manager.save(step, model=model, optimizers=opt, schedulers=sched,
                             trainer_state=state, metrics={"loss": loss.item()})
            say(f"STEP {step}")
    save_file(dict(model.state_dict()), result)
    say("DONE")


def warm_up(scratch):
    train(os.path.join(scratch, "ckpt"), os.path.join(scratch, "out"), 0, lambda _: None)


def run(fields, say):
    workdir, result, stall_commit, restore_rng = fields
    train(workdir, result, int(stall_commit), say, restore_rng == "1", pause=0.002)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(warm_up, run)
    else:
        train(sys.argv[1], sys.argv[2], 0, lambda message: print(message, flush=True))
"""

TOTAL_STEPS = 15


def fields(
    workdir: Path, result: Path, stall_commit: int = 0, restore_rng: bool = True
) -> list[object]:
    """The fields of a run, as the script's ``run`` reads them."""
    return [workdir, result, stall_commit, "1" if restore_rng else "0"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The reference: an uninterrupted run in a fresh interpreter; and a fork server."""
    root = tmp_path_factory.mktemp("resume")
    script = root / "loop.py"
    script.write_text(SCRIPT)
    reference = root / "reference.safetensors"
    done = run_in_fresh_interpreter(script, root / "reference-run", reference)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "DONE", done.stderr
    server = ForkServer(script)
    yield server, load_file(reference)
    server.close()


def test_an_uninterrupted_forked_run_matches_a_fresh_interpreter(setup, tmp_path):
    server, reference = setup
    result = tmp_path / "final.safetensors"
    assert run_to_end(server, fields(tmp_path / "ckpt", result), tmp_path / "log") == 0
    assert_bit_identical(result, reference)


@pytest.mark.parametrize("commit", [2, 5])
def test_killed_while_committing_a_checkpoint(setup, tmp_path, commit):
    """Killed inside the commit of a checkpoint: the previous one is the latest valid."""
    server, reference = setup
    workdir, result, log = tmp_path / "ckpt", tmp_path / "final.safetensors", tmp_path / "log"
    run_and_kill(
        server, fields(workdir, result, stall_commit=commit), log, "STALLED", 1, delay=0.05
    )
    saved_steps = [2, 4, 5, 6, 8, 10, 12, 14, 15]
    interrupted, previous = saved_steps[commit - 1], saved_steps[commit - 2]
    assert any(
        entry.name.startswith(f".step-{interrupted:09d}.tmp-") for entry in workdir.iterdir()
    )
    assert CheckpointManager(workdir).latest() == workdir / f"step-{previous:09d}"
    assert run_to_end(server, fields(workdir, result), log) == previous
    assert_bit_identical(result, reference)
    assert not any(entry.name.startswith(".") for entry in workdir.iterdir())


def random_trial(server: ForkServer, tmp_path: Path, rng: random.Random, kills: int) -> list[int]:
    """Kill the run ``kills`` times at random moments, then let it finish.

    Each kill comes a random 0-15 ms after a random step's end (steps take about as
    long, sleeping 2 ms after each micro-batch), so it lands inside a step, between
    micro-batches of an accumulation window, or inside a checkpoint write.
    Returns the steps the runs resumed from.
    """
    workdir, result, log = tmp_path / "ckpt", tmp_path / "final.safetensors", tmp_path / "log"

    def target(resumed: int) -> int | None:
        remaining = TOTAL_STEPS - resumed
        first = 3 if resumed == 0 else 1  # the first kill comes after the first checkpoint
        return rng.randint(first, remaining - 3) if remaining >= first + 3 else None

    return kill_at_random(server, fields(workdir, result), log, "STEP", target, rng, kills)


@pytest.mark.parametrize("seed", range(6))
def test_killed_at_random_moments(setup, tmp_path, seed):
    server, reference = setup
    resumed_from = random_trial(server, tmp_path, random.Random(seed), kills=2)
    assert resumed_from[0] == 0 and resumed_from[-1] > 0
    assert_bit_identical(tmp_path / "final.safetensors", reference)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6, 46))
def test_killed_at_random_moments_many_trials(setup, tmp_path, seed):
    server, reference = setup
    random_trial(server, tmp_path, random.Random(seed), kills=4)
    assert_bit_identical(tmp_path / "final.safetensors", reference)


@pytest.mark.slow
@pytest.mark.parametrize("commit", [3, 4, 6, 7, 8, 9])
def test_killed_while_committing_every_checkpoint(setup, tmp_path, commit):
    server, reference = setup
    workdir, result, log = tmp_path / "ckpt", tmp_path / "final.safetensors", tmp_path / "log"
    run_and_kill(
        server, fields(workdir, result, stall_commit=commit), log, "STALLED", 1, delay=0.05
    )
    run_to_end(server, fields(workdir, result), log)
    assert_bit_identical(result, reference)


def test_resuming_without_the_rng_state_breaks_exactness(setup, tmp_path):
    """The check can fail: resuming without the generator states changes the result."""
    server, reference = setup
    workdir, result, log = tmp_path / "ckpt", tmp_path / "final.safetensors", tmp_path / "log"
    run_and_kill(server, fields(workdir, result), log, "STEP", 7, delay=0.0)
    assert run_to_end(server, fields(workdir, result, restore_rng=False), log) > 0
    final = load_file(result)
    assert any(not torch.equal(final[name], tensor) for name, tensor in reference.items())
