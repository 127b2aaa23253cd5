"""Exact resume of the trainers: runs killed with SIGKILL and restarted end bit-identical.

Each of the three trainers trains with a scheduler, dropout and gradient accumulation
(the RecurrentTrainer accumulates two batches of sequences per step, the
SupervisedTrainer three micro-batches with an uneven last window per epoch, the
AdversarialTrainer takes two critic steps per generator step), writing a checkpoint
every 2 optimizer steps and after every epoch, through ``train(..., resume=True)``.
The reference is an uninterrupted run of the same script with the same seed.

The runs are children forked by one server process that imports torch and warms up
once (a run then costs a fraction of a second instead of seconds of imports). The test
SIGKILLs children at random moments (a random 0-15 ms after a random batch, so the
kill lands inside a batch, between micro-batches of an accumulation window, or inside
a checkpoint write) or while a chosen checkpoint commit is stalled between writing and
renaming (``descent.checkpoint._atomic._commit`` is the seam, as in
``tests/test_checkpoint_resume.py``), starts new children that resume, and compares
the final parameters with the reference bit for bit. A few trials run by default;
``python -m pytest -m slow`` runs many more. The fork server and the kill helpers are in
``tests/kill_harness.py``, shared with ``tests/test_checkpoint_resume.py``.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest
from safetensors.torch import load_file

from descent.checkpoint import CheckpointManager
from kill_harness import (
    ForkServer,
    assert_bit_identical,
    kill_at_random,
    lines,
    run_and_kill,
    run_in_fresh_interpreter,
    run_to_end,
)

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "SIGKILL") or not hasattr(os, "fork"), reason="needs SIGKILL and fork"
)

SCRIPT = r'''
import os, sys, time
import torch
from torch import nn
from safetensors.torch import save_file
from kill_harness import serve   # tests/ is on PYTHONPATH (kill_harness.script_env)

import descent
from descent.checkpoint import _atomic
from descent.data import gaussian_mixture
from descent.train import (AdversarialTrainer, Callback, EarlyStopping, RecurrentTrainer,
                           SupervisedTrainer)

torch.set_num_threads(1)


class Report(Callback):
    """Says where the run is; sleeps a little after each batch to spread the kills."""

    def __init__(self, say, pause):
        self.say, self.pause = say, pause

    def on_train_begin(self, trainer):
        self.say(f"RESUMED {trainer.state.step}")

    def on_batch_end(self, trainer, batch, logs):
        self.say(f"BATCH {trainer.state.step}")
        time.sleep(self.pause)


class GRUTagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 8, batch_first=True)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(8, 2)

    def forward(self, x, hidden):
        out, hidden = self.gru(x, hidden)
        return self.head(self.drop(out)), hidden


def train(kind, workdir, result, stall_commit, say, pause=0.0):
    real_commit, commits = _atomic._commit, []

    def reporting_commit(source, target):
        commits.append(target)
        if len(commits) == stall_commit:
            say("STALLED")
            time.sleep(60)
        real_commit(source, target)
        say(f"COMMIT {target.name if target.name != 'checkpoint.json' else target.parent.name}")

    _atomic._commit = reporting_commit
    if kind.endswith("-without-rng"):  # the control: resume without the generator states
        import functools
        import descent.train.checkpointing as checkpointing
        checkpointing.load_checkpoint = functools.partial(checkpointing.load_checkpoint,
                                                          restore_rng=False)
        kind = kind.removesuffix("-without-rng")
    options = dict(checkpoint_dir=workdir, checkpoint_every=2, keep_last=2)
    if workdir == "-":  # the same run without checkpoints
        options = {}
    resume = bool(options)
    callbacks = [Report(say, pause)]
    data = torch.Generator().manual_seed(1234)
    torch.manual_seed(0)
    if kind == "supervised":
        x, y = torch.randn(125, 5, generator=data), torch.randint(0, 3, (125,), generator=data)
        model = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.2), nn.Tanh(), nn.Linear(16, 3))
        opt = descent.Adam(model, lr=1e-2)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.7)
        callbacks.append(EarlyStopping(monitor="val_loss", patience=50))
        trainer = SupervisedTrainer(opt, batch_size=8, epochs=3, gradient_accumulation_steps=3,
                                    scheduler=sched, callbacks=callbacks, metrics=["accuracy"],
                                    seed=3, **options)
        torch.manual_seed(1)
        trainer.train(model, x, y, nn.CrossEntropyLoss(), validation_split=0.2, resume=resume)
    elif kind == "recurrent":
        x = torch.randn(32, 12, 3, generator=data)
        y = (x.cumsum(1)[..., 0] > 0).long()
        model = GRUTagger()
        opt = descent.RMSprop(model, lr=1e-2)
        sched = descent.schedules.StepLR(opt, step_size=3, gamma=0.8)
        trainer = RecurrentTrainer(opt, batch_size=4, epochs=3, bptt_steps=5,
                                   gradient_accumulation_steps=2, step_every="sequence",
                                   scheduler=sched, clip_grad_norm=1.0, callbacks=callbacks,
                                   seed=5, **options)
        torch.manual_seed(1)
        trainer.train(model, x, y, nn.CrossEntropyLoss(), resume=resume)
    else:
        points, _ = gaussian_mixture(128, modes=4, seed=2)
        g = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        d = nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Dropout(0.1), nn.Linear(16, 1))
        g_opt, d_opt = descent.Adam(g, lr=2e-3, betas=(0.5, 0.9)), descent.Adam(d, lr=2e-3)
        trainer = AdversarialTrainer(
            g, d, g_opt, d_opt, latent_dim=4, batch_size=16, epochs=3, n_critic=2,
            g_scheduler=torch.optim.lr_scheduler.StepLR(g_opt, step_size=3, gamma=0.8),
            d_scheduler=torch.optim.lr_scheduler.ExponentialLR(d_opt, gamma=0.97),
            callbacks=callbacks, seed=7, **options)
        torch.manual_seed(1)
        trainer.train(points, resume=resume)
        model = trainer.model
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, result)
    say("DONE")


def warm_up(scratch):
    for kind in ("supervised", "recurrent", "adversarial"):
        train(kind, os.path.join(scratch, kind), os.path.join(scratch, "out"), 0,
              lambda _: None)


def run(fields, say):
    kind, workdir, result, stall_commit = fields
    train(kind, workdir, result, int(stall_commit), say, pause=0.002)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(warm_up, run)
    else:  # kind workdir result: one run in this interpreter
        train(sys.argv[1], sys.argv[2], sys.argv[3], 0, lambda message: print(message, flush=True))
'''

KINDS = ("supervised", "recurrent", "adversarial")


def fields(kind: str, workdir: Path | str, result: Path, stall_commit: int = 0) -> list[object]:
    """The fields of a run, as the script's ``run`` reads them."""
    return [kind, workdir, result, stall_commit]


def batches_after(reference_log: list[str], step: int) -> int:
    """How many batches a run resumed from the checkpoint of ``step`` has left to train:
    the reference's batches after that checkpoint's (last) commit."""
    start = 0
    if step:
        start = max(i for i, line in enumerate(reference_log) if line == f"COMMIT step-{step:09d}")
    return sum(line.startswith("BATCH") for line in reference_log[start:])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A fork server, and per trainer the reference run and its log (batches, commits)."""
    root = tmp_path_factory.mktemp("train-resume")
    script = root / "train.py"
    script.write_text(SCRIPT)
    server = ForkServer(script)
    references = {}
    for kind in KINDS:
        log = root / f"{kind}.log"
        run_to_end(
            server, fields(kind, root / f"{kind}-reference", root / f"{kind}.safetensors"), log
        )
        references[kind] = (load_file(root / f"{kind}.safetensors"), lines(log))
    yield server, references, root
    server.close()


@pytest.mark.parametrize("kind", KINDS)
def test_checkpointing_does_not_change_the_run(setup, tmp_path, kind):
    """The reference (checkpoints, resume=True on an empty directory) equals a run
    without checkpoints, and a run in a fresh interpreter gives the same parameters."""
    server, references, _ = setup
    reference, reference_log = references[kind]
    assert reference_log[0] == "RESUMED 0"
    run_to_end(server, fields(kind, "-", tmp_path / "plain.safetensors"), tmp_path / "log")
    assert_bit_identical(tmp_path / "plain.safetensors", reference)
    if kind == "supervised":
        done = run_in_fresh_interpreter(
            setup[2] / "train.py", kind, tmp_path / "fresh", tmp_path / "fresh.safetensors"
        )
        assert done.returncode == 0, done.stderr
        assert_bit_identical(tmp_path / "fresh.safetensors", reference)


def commits(log: list[str]) -> list[str]:
    return [line.split()[1] for line in log if line.startswith("COMMIT")]


def stall_trial(setup, tmp_path: Path, kind: str, commit: int) -> None:
    """Kill the run while its ``commit``-th checkpoint commit is stalled, then resume."""
    server, references, _ = setup
    reference, reference_log = references[kind]
    names = commits(reference_log)
    workdir, result, log = tmp_path / "ckpt", tmp_path / "final.safetensors", tmp_path / "log"
    run_and_kill(
        server, fields(kind, workdir, result, stall_commit=commit), log, "STALLED", 1, delay=0.02
    )
    interrupted = names[commit - 1]
    # the write was complete but not renamed: nothing of it is visible as a checkpoint
    assert (
        any(entry.name.startswith(f".{interrupted}.") for entry in workdir.iterdir())
        or (workdir / interrupted).exists()
    )
    latest = CheckpointManager(workdir).latest()
    assert latest is not None and latest.name == names[commit - 2]
    resumed = run_to_end(server, fields(kind, workdir, result), log)
    assert resumed == int(names[commit - 2].split("-")[1])
    assert_bit_identical(result, reference)


def random_trial(setup, tmp_path: Path, kind: str, rng: random.Random, kills: int) -> list[int]:
    """Kill the run ``kills`` times, each a random 0-15 ms after a random batch, then let it
    finish; return the steps the runs resumed from."""
    server, references, _ = setup
    reference, reference_log = references[kind]
    first_commit = next(i for i, line in enumerate(reference_log) if line.startswith("COMMIT"))
    first = sum(line.startswith("BATCH") for line in reference_log[:first_commit]) + 1
    workdir, result, log = tmp_path / "ckpt", tmp_path / "final.safetensors", tmp_path / "log"

    def target(resumed: int) -> int | None:
        # the first kill comes after the first checkpoint; every kill leaves 2 batches
        remaining = batches_after(reference_log, resumed)
        low = first if resumed == 0 else 1
        return rng.randint(low, remaining - 2) if remaining - 2 >= low else None

    resumed_from = kill_at_random(
        server, fields(kind, workdir, result), log, "BATCH", target, rng, kills
    )
    assert_bit_identical(result, reference)
    return resumed_from


@pytest.mark.parametrize("kind", KINDS)
def test_killed_while_committing_a_checkpoint(setup, tmp_path, kind):
    stall_trial(setup, tmp_path, kind, commit=3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(3))
def test_killed_at_random_moments(setup, tmp_path, kind, seed):
    resumed_from = random_trial(setup, tmp_path, kind, random.Random(f"{kind}-{seed}"), kills=3)
    assert resumed_from[0] == 0 and resumed_from[-1] > 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(3, 43))
def test_killed_at_random_moments_many_trials(setup, tmp_path, kind, seed):
    random_trial(setup, tmp_path, kind, random.Random(f"{kind}-{seed}"), kills=4)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("commit", [2, 4, 5, 7, 8])
def test_killed_while_committing_other_checkpoints(setup, tmp_path, kind, commit):
    stall_trial(setup, tmp_path, kind, commit)


def test_resuming_without_the_generator_states_breaks_exactness(setup, tmp_path):
    """The check can fail: the same kill and resume, with the generator states left out
    of the resume (dropout masks then differ), ends with different parameters."""
    server, references, _ = setup
    reference, _ = references["supervised"]
    workdir, result, log = tmp_path / "ckpt", tmp_path / "final.safetensors", tmp_path / "log"
    run_and_kill(server, fields("supervised", workdir, result), log, "BATCH", 25, delay=0.0)
    assert run_to_end(server, fields("supervised-without-rng", workdir, result), log) > 0
    with pytest.raises(AssertionError, match="differs by up to"):
        assert_bit_identical(result, reference)


def test_rerunning_a_finished_run_with_resume_changes_nothing(setup, tmp_path):
    """The last checkpoint of a finished run says it is finished: running the script
    again with resume=True trains no further step."""
    server, references, _ = setup
    reference, _ = references["supervised"]
    workdir, result, log = tmp_path / "ckpt", tmp_path / "final.safetensors", tmp_path / "log"
    run_to_end(server, fields("supervised", workdir, result), log)
    final_step = int(commits(lines(log))[-1].split("-")[1])
    assert run_to_end(server, fields("supervised", workdir, result), log) == final_step
    assert not any(line.startswith("BATCH") for line in lines(log))
    assert_bit_identical(result, reference)
