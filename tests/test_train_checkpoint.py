"""Trainer checkpoints: arguments, what is kept, what a resume restores, and what it refuses.

The SIGKILL tests of exact resume are in ``test_train_checkpoint_resume.py``; here the
runs are interrupted by an exception inside the process, and the resumed trainer is
built from fresh objects, as a restarted script would build it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import descent
from descent.checkpoint import (
    CheckpointManager,
    CheckpointMismatchError,
    CorruptCheckpointError,
)
from descent.train import Callback, EarlyStopping, SupervisedTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


class Crash(Callback):
    """Raises RuntimeError after batch ``batch`` of epoch ``epoch``."""

    def __init__(self, at: tuple[int, int] | None) -> None:
        self.at = at

    def on_batch_end(self, trainer, batch, logs):
        if (trainer.state.epoch, batch) == self.at:
            raise RuntimeError("crash")


def data():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(100, 5, generator=generator)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def setup(
    directory: Path | None, crash: tuple[int, int] | None = None, hidden: int = 16, **options
):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, hidden), nn.Dropout(0.1), nn.Tanh(), nn.Linear(hidden, 2))
    optimizer = descent.Adam(model, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.7)
    if directory is not None:
        options.setdefault("checkpoint_every", 2)
    trainer = SupervisedTrainer(
        optimizer,
        batch_size=8,
        epochs=4,
        gradient_accumulation_steps=3,
        scheduler=scheduler,
        metrics=["accuracy"],
        callbacks=[EarlyStopping("val_loss", patience=20), Crash(crash)],
        checkpoint_dir=directory,
        **options,
    )
    return model, optimizer, scheduler, trainer


def fit(model, trainer, resume=False):
    x, y = data()
    torch.manual_seed(1)
    return trainer.train(model, x, y, nn.CrossEntropyLoss(), validation_split=0.2, resume=resume)


def same_parameters(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(p, q)
        for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize(
    ("options", "error", "pattern"),
    [
        ({"checkpoint_every": 0}, ValueError, r"checkpoint_every=0; expected a positive integer"),
        (
            {"checkpoint_dir": None, "checkpoint_every": 5},
            ValueError,
            r"checkpoint_every=5 needs a checkpoint directory",
        ),
        (
            {"checkpoint_dir": None, "checkpoint_monitor": "val_loss"},
            ValueError,
            r"checkpoint_monitor='val_loss' needs a checkpoint directory",
        ),
        ({"checkpoint_each_epoch": False}, ValueError, r"would never save"),
        (
            {"checkpoint_every": 2, "checkpoint_each_epoch": False, "checkpoint_monitor": "loss"},
            ValueError,
            r"needs checkpoint_each_epoch=True",
        ),
        ({"keep_last": 0}, ValueError, r"keep_last=0; expected a positive integer"),
        ({"checkpoint_mode": "best"}, ValueError, r"checkpoint_mode='best'; expected one of"),
        ({"checkpoint_dir": 7}, TypeError, r"checkpoint_dir=7; expected a path"),
        ({"checkpoint_each_epoch": "yes"}, TypeError, r"checkpoint_each_epoch='yes'"),
        ({"checkpoint_monitor": 3}, TypeError, r"checkpoint_monitor=3"),
        ({"zero_redundancy": 1}, TypeError, r"zero_redundancy=1; expected a bool"),
    ],
)
def test_bad_checkpoint_arguments_are_refused(tmp_path, options, error, pattern):
    options = {"checkpoint_dir": tmp_path / "ckpt", **options}
    model = nn.Linear(2, 2)
    with pytest.raises(error, match=pattern):
        SupervisedTrainer(descent.SGD(model, lr=0.1), **options)
    assert not (tmp_path / "ckpt").exists()


def test_checkpoint_dir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(ValueError, match="is a file; expected a directory"):
        SupervisedTrainer(descent.SGD(nn.Linear(2, 2), lr=0.1), checkpoint_dir=path)


def test_resume_needs_a_checkpoint_dir_and_a_bool(tmp_path):
    model, _, _, trainer = setup(None)
    with pytest.raises(
        ValueError,
        match=r"resume=True needs a checkpoint directory; pass "
        r"checkpoint_dir",
    ):
        fit(model, trainer, resume=True)
    model, _, _, trainer = setup(tmp_path)
    with pytest.raises(TypeError, match=r"resume='yes'; expected a bool"):
        fit(model, trainer, resume="yes")
    assert trainer.state.step == 0


def test_keeps_the_last_k_and_the_best_by_the_monitored_metric(tmp_path):
    # mode="max" on val_loss keeps the *worst* epoch, the first: an old checkpoint that
    # only the best-rule can explain
    model, _, _, trainer = setup(
        tmp_path, keep_last=2, checkpoint_monitor="val_loss", checkpoint_mode="max"
    )
    history = fit(model, trainer)
    # 80 training samples, batches of 8 -> 10 micro-batches, windows 3,3,3,1 -> 4 steps
    assert trainer.state.step == 16
    records = CheckpointManager(tmp_path).records()
    worst_epoch = max(range(4), key=lambda e: history["val_loss"][e])
    assert [r.step for r in records] == sorted({4 * (worst_epoch + 1), 14, 16})
    best = next(r for r in records if r.step == 4 * (worst_epoch + 1))
    assert best.metrics["val_loss"] == history["val_loss"][worst_epoch]
    assert best.metrics["accuracy"] == history["accuracy"][worst_epoch]


def test_a_crashed_run_resumes_with_everything_restored(tmp_path):
    reference_model, _, reference_scheduler, reference = setup(None)
    fit(reference_model, reference)

    model, _, _, trainer = setup(tmp_path, crash=(2, 7))
    with pytest.raises(RuntimeError, match="crash"):
        fit(model, trainer)
    # 4 steps per epoch: step 10 after batch 5 of epoch 2 (saved), the crash in batch 7
    # comes with one micro-batch of the next window accumulated
    assert CheckpointManager(tmp_path).records()[-1].step == 10
    model, _, scheduler, trainer = setup(tmp_path)
    torch.manual_seed(99)  # the generators come from the checkpoint, not from here
    history = fit(model, trainer, resume=True)
    assert same_parameters(model, reference_model)
    assert trainer.state.state_dict() == reference.state.state_dict()
    assert history.state_dict() == reference.history.state_dict()
    assert trainer.callbacks[0].state_dict() == reference.callbacks[0].state_dict()
    assert scheduler.state_dict() == reference_scheduler.state_dict()
    assert len(history["loss"]) == 4 and history.epochs == [0, 1, 2, 3]


def test_a_new_run_in_a_used_directory_is_refused(tmp_path):
    model, _, _, trainer = setup(tmp_path)
    fit(model, trainer)
    before = sorted(p.name for p in tmp_path.iterdir())
    model, _, _, trainer = setup(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"already holds checkpoints \(steps \[12, 14, 16\]\)"
        r" .* pass resume=True",
    ):
        fit(model, trainer)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path):
    reference_model, _, _, reference = setup(None)
    fit(reference_model, reference)
    model, _, _, trainer = setup(tmp_path, crash=(3, 2))
    with pytest.raises(RuntimeError):
        fit(model, trainer)
    latest = CheckpointManager(tmp_path).records()[-1].path
    tensors = next(p for p in latest.iterdir() if p.suffix == ".safetensors")
    raw = bytearray(tensors.read_bytes())
    raw[-3] ^= 0xFF
    tensors.write_bytes(bytes(raw))
    model, _, _, trainer = setup(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(model, trainer, resume=True)
    assert any("skipping the checkpoint of step" in str(w.message) for w in caught)
    assert same_parameters(model, reference_model)


def test_a_checkpoint_of_another_model_is_refused_and_nothing_changes(tmp_path):
    model, _, _, trainer = setup(tmp_path, crash=(1, 5))
    with pytest.raises(RuntimeError):
        fit(model, trainer)
    model, optimizer, _, trainer = setup(tmp_path, hidden=12)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(
        CheckpointMismatchError,
        match=r"'0.weight' has shape \(16, 5\) in the "
        r"checkpoint, \(12, 5\) in the model",
    ):
        fit(model, trainer, resume=True)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert trainer.state.step == 0 and not optimizer.state and len(trainer.history) == 0
    assert trainer.callbacks[0].state_dict() == EarlyStopping("val_loss", patience=20).state_dict()


def test_a_checkpoint_with_another_seed_is_refused(tmp_path):
    model, _, _, trainer = setup(tmp_path, crash=(1, 5))
    with pytest.raises(RuntimeError):
        fit(model, trainer)
    model, optimizer, _, trainer = setup(tmp_path, seed=1)
    with pytest.raises(ValueError, match=r"saved with seed=0, this trainer has seed=1"):
        fit(model, trainer, resume=True)
    assert trainer.state.step == 0 and not optimizer.state


def test_resume_on_an_empty_directory_starts_afresh(tmp_path):
    reference_model, _, _, reference = setup(None)
    fit(reference_model, reference)
    model, _, _, trainer = setup(tmp_path / "new")
    fit(model, trainer, resume=True)
    assert same_parameters(model, reference_model)


def test_a_missing_monitored_metric_is_named(tmp_path):
    model, _, _, trainer = setup(tmp_path, checkpoint_monitor="val_acc")
    with pytest.raises(
        ValueError,
        match=r"checkpoint_monitor='val_acc' is not among the "
        r"epoch metrics \['accuracy', 'loss', ",
    ):
        fit(model, trainer)


def test_only_epoch_checkpoints_without_checkpoint_every(tmp_path):
    model, _, _, trainer = setup(tmp_path, checkpoint_every=None, keep_last=10)
    fit(model, trainer)
    assert [r.step for r in CheckpointManager(tmp_path).records()] == [4, 8, 12, 16]


# ---------------------------------------------------------------- impossible counters


def resign(path: Path, edit) -> None:
    """Apply ``edit`` to the trainer payload of the checkpoint at ``path`` and sign the index
    again as the format describes it (SHA-256 of the file with its own digest replaced by
    64 zeros): a checkpoint whose files are intact and whose counters are not."""
    import hashlib
    import json

    index = path / "checkpoint.json"
    document = json.loads(index.read_text())
    edit(document["content"]["trainer_state"])
    document["sha256"] = "0" * 64
    draft = (json.dumps(document, indent=1) + "\n").encode()
    index.write_bytes(draft.replace(b"0" * 64, hashlib.sha256(draft).hexdigest().encode(), 1))


def set_loop(**counters):
    def edit(payload):
        payload["trainer"]["loop"].update(counters)

    return edit


def bump_optimizer_step(payload):
    payload["ranks"][0]["optimizer_steps"]["optimizer"] += 1


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (set_loop(window=2), "window=2; a checkpoint is only written with no accumulation window"),
        (set_loop(window=3), "window=3; expected less than gradient_accumulation_steps=3"),
        (set_loop(batch=999), "batch=999; expected at most the 10 batches of an epoch"),
        (set_loop(epoch=5), "epoch=5; expected at most end_epoch=4"),
        (
            bump_optimizer_step,
            "optimizer 'optimizer' has step 12.0 in its state, the trainer recorded step 13.0",
        ),
    ],
    ids=["open-window", "window", "batch", "epoch", "optimizer-step"],
)
def test_impossible_counters_fall_back_to_the_previous_checkpoint(tmp_path, edit, named):
    reference_model, _, _, reference = setup(None)
    fit(reference_model, reference)
    model, _, _, trainer = setup(tmp_path, crash=(3, 2))
    with pytest.raises(RuntimeError):
        fit(model, trainer)
    records = CheckpointManager(tmp_path).records()
    assert [r.step for r in records][-2:] == [10, 12]
    resign(records[-1].path, edit)
    assert CheckpointManager(tmp_path).latest() == records[-1].path  # the files are intact
    model, _, _, trainer = setup(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(model, trainer, resume=True)
    messages = [str(w.message) for w in caught if "skipping the checkpoint" in str(w.message)]
    assert len(messages) == 1 and named in messages[0] and "step-000000012" in messages[0]
    assert same_parameters(model, reference_model)  # resumed from step 10, exactly


def test_when_every_checkpoint_is_impossible_the_resume_refuses_and_changes_nothing(tmp_path):
    model, _, _, trainer = setup(tmp_path, crash=(1, 5))
    with pytest.raises(RuntimeError):
        fit(model, trainer)
    records = CheckpointManager(tmp_path).records()
    for record in records:
        resign(record.path, set_loop(batch=999))
    model, optimizer, _, trainer = setup(tmp_path)
    before = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(
            CorruptCheckpointError,
            match=r"no checkpoint in .* can be resumed: "
            r".*batch=999",
        ):
            fit(model, trainer, resume=True)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert trainer.state.step == 0 and not optimizer.state
    assert [r.step for r in CheckpointManager(tmp_path).records()] == [r.step for r in records]


def test_another_configuration_is_an_error_not_a_fallback(tmp_path):
    model, _, _, trainer = setup(tmp_path, crash=(1, 5))
    with pytest.raises(RuntimeError):
        fit(model, trainer)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.1), nn.Tanh(), nn.Linear(16, 2))
    trainer = SupervisedTrainer(
        descent.Adam(model, lr=1e-2),
        batch_size=16,
        epochs=4,
        gradient_accumulation_steps=3,
        checkpoint_dir=tmp_path,
        checkpoint_every=2,
        metrics=["accuracy"],
        callbacks=[EarlyStopping("val_loss", patience=20), Crash(None)],
    )
    with pytest.raises(
        ValueError,
        match=r"was written with \{'batches_per_epoch': 10, "
        r"'batches_per_window': 3\}; this trainer has "
        r"\{'batches_per_epoch': 5, .*same data, batch size",
    ):
        fit(model, trainer, resume=True)
    assert trainer.state.step == 0
