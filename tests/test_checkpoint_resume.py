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
default; ``python -m pytest -m slow`` runs many more.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from descent.checkpoint import CheckpointManager

pytestmark = pytest.mark.skipif(not (hasattr(signal, "SIGKILL") and hasattr(os, "fork")),
                                reason="needs SIGKILL and fork (POSIX)")

SCRIPT = r'''
import os, random, sys, tempfile, time, traceback
import numpy as np
import torch
from torch import nn
from safetensors.torch import save_file

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


def serve():
    # A fork server: imports and warms up once with a full run (the first optimizer
    # imports torch._dynamo, ~2 s), then runs each requested training in a forked child.
    with tempfile.TemporaryDirectory() as scratch:
        train(os.path.join(scratch, "ckpt"), os.path.join(scratch, "out"), 0, lambda _: None)
    for line in sys.stdin:
        workdir, result, stall_commit, restore_rng, log = line.rstrip("\n").split("\t")
        pid = os.fork()
        if pid == 0:
            with open(log, "a") as file:
                def say(message):
                    file.write(message + "\n")
                    file.flush()
                try:
                    train(workdir, result, int(stall_commit), say, restore_rng == "1",
                          pause=0.002)
                    code = 0
                except BaseException:
                    file.write(traceback.format_exc())
                    file.flush()
                    code = 1
            os._exit(code)
        print("PID", pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print("EXIT", os.waitstatus_to_exitcode(status), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        train(sys.argv[1], sys.argv[2], 0, lambda message: print(message, flush=True))
'''

TOTAL_STEPS = 15



class ForkServer:
    """The script in server mode: each ``run`` is a forked child that the test may kill."""

    def __init__(self, script: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        self.process = subprocess.Popen([sys.executable, str(script), "serve"], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)

    def start(self, workdir: Path, result: Path, log: Path, stall_commit: int = 0,
              restore_rng: bool = True) -> int:
        fields = [str(workdir), str(result), str(stall_commit), "1" if restore_rng else "0",
                  str(log)]
        self.process.stdin.write("\t".join(fields) + "\n")
        self.process.stdin.flush()
        word, pid = self.process.stdout.readline().split()
        assert word == "PID"
        return int(pid)

    def wait(self) -> int:
        word, code = self.process.stdout.readline().split()
        assert word == "EXIT"
        return int(code)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def wait_for(log: Path, trigger: str, count: int, timeout: float = 60.0) -> None:
    """Return once ``log`` has ``count`` lines starting with ``trigger``."""
    deadline = time.monotonic() + timeout
    while sum(line.startswith(trigger) for line in lines(log)) < count:
        assert time.monotonic() < deadline, f"no {count} x {trigger!r} in {lines(log)}"
        time.sleep(0.0005)


def run_to_end(server: ForkServer, workdir: Path, result: Path, log: Path,
               restore_rng: bool = True) -> int:
    """Run (resuming) to completion; return the step it resumed from."""
    log.unlink(missing_ok=True)
    server.start(workdir, result, log, restore_rng=restore_rng)
    assert server.wait() == 0, log.read_text()
    assert lines(log)[-1] == "DONE"
    return int(lines(log)[0].split()[1])


def run_and_kill(server: ForkServer, workdir: Path, result: Path, log: Path, trigger: str,
                 count: Any, delay: float, stall_commit: int = 0) -> int:
    """Start a run; SIGKILL it ``delay`` s after its ``count``-th ``trigger`` line.

    ``count`` may be a function of the step the run resumed from; None (or a function
    returning None) lets the run finish. Returns the step the run resumed from.
    """
    log.unlink(missing_ok=True)
    pid = server.start(workdir, result, log, stall_commit=stall_commit)
    wait_for(log, "RESUMED", 1)
    resumed = int(lines(log)[0].split()[1])
    if callable(count):
        count = count(resumed)
    if count is None:
        assert server.wait() == 0, log.read_text()
        return resumed
    wait_for(log, trigger, count)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    assert server.wait() == -signal.SIGKILL, f"the run ended before the kill: {lines(log)}"
    return resumed


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The reference: an uninterrupted run in a fresh interpreter; and a fork server."""
    root = tmp_path_factory.mktemp("resume")
    script = root / "loop.py"
    script.write_text(SCRIPT)
    reference = root / "reference.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, str(script), str(root / "reference-run"),
                           str(reference)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "DONE", done.stderr
    server = ForkServer(script)
    yield server, load_file(reference)
    server.close()


def assert_bit_identical(result: Path, reference: dict[str, torch.Tensor]) -> None:
    final = load_file(result)
    assert list(final) == list(reference)
    for name, tensor in reference.items():
        difference = (final[name] - tensor).abs().max().item()
        assert torch.equal(final[name], tensor), f"{name} differs by up to {difference:.3g}"


def test_an_uninterrupted_forked_run_matches_a_fresh_interpreter(setup, tmp_path):
    server, reference = setup
    result = tmp_path / "final.safetensors"
    assert run_to_end(server, tmp_path / "ckpt", result, tmp_path / "log") == 0
    assert_bit_identical(result, reference)


@pytest.mark.parametrize("commit", [2, 5])
def test_killed_while_committing_a_checkpoint(setup, tmp_path, commit):
    """Killed inside the commit of a checkpoint: the previous one is the latest valid."""
    server, reference = setup
    workdir, result, log = tmp_path / "ckpt", tmp_path / "final.safetensors", tmp_path / "log"
    run_and_kill(server, workdir, result, log, "STALLED", 1, delay=0.05, stall_commit=commit)
    saved_steps = [2, 4, 5, 6, 8, 10, 12, 14, 15]
    interrupted, previous = saved_steps[commit - 1], saved_steps[commit - 2]
    assert any(entry.name.startswith(f".step-{interrupted:09d}.tmp-")
               for entry in workdir.iterdir())
    assert CheckpointManager(workdir).latest() == workdir / f"step-{previous:09d}"
    assert run_to_end(server, workdir, result, log) == previous
    assert_bit_identical(result, reference)
    assert not any(entry.name.startswith(".") for entry in workdir.iterdir())


def random_trial(server: ForkServer, tmp_path: Path, rng: random.Random,
                 kills: int) -> list[int]:
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

    resumed_from = []
    for _ in range(kills + 1):
        resumed = run_and_kill(server, workdir, result, log, "STEP",
                               target if len(resumed_from) < kills else None,
                               rng.uniform(0.0, 0.015))
        resumed_from.append(resumed)
        if lines(log)[-1] == "DONE":
            break
    return resumed_from


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
    run_and_kill(server, workdir, result, log, "STALLED", 1, delay=0.05, stall_commit=commit)
    run_to_end(server, workdir, result, log)
    assert_bit_identical(result, reference)


def test_resuming_without_the_rng_state_breaks_exactness(setup, tmp_path):
    """The check can fail: resuming without the generator states changes the result."""
    server, reference = setup
    workdir, result, log = tmp_path / "ckpt", tmp_path / "final.safetensors", tmp_path / "log"
    run_and_kill(server, workdir, result, log, "STEP", 7, delay=0.0)
    assert run_to_end(server, workdir, result, log, restore_rng=False) > 0
    final = load_file(result)
    assert any(not torch.equal(final[name], tensor) for name, tensor in reference.items())
