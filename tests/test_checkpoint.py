"""Checkpoints: round trips, refusal of damaged or mismatched ones, atomic writes, the manager.

References are independent of the code under test: the objects' own ``state_dict()``
before saving, a continued run compared with an uninterrupted one, and files damaged
by hand (every single byte flipped, truncations, a pickle put in place).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import descent
from descent.checkpoint import (
    CheckpointManager,
    CheckpointMismatchError,
    CorruptCheckpointError,
    _atomic,
    capture_rng_state,
    load_checkpoint,
    read_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from descent.checkpoint.format import INDEX_NAME


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.25), nn.Linear(8, 2)
    )


def train_steps(
    model: nn.Module, opt: torch.optim.Optimizer, sched, steps: int, data_seed: int
) -> None:
    data = torch.Generator().manual_seed(data_seed)
    for _ in range(steps):
        x = torch.randn(6, 4, generator=data)
        opt.zero_grad()
        (model(x) ** 2).mean().backward()  # dropout draws from the global torch generator
        opt.step()
        sched.step()


def fresh(seed: int = 1):
    model = make_model(seed)
    opt = descent.Adam(model, lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return model, opt, sched


def tensor_file(path: Path) -> Path:
    (found,) = path.glob("tensors-*.safetensors")
    return found


def assert_same_tree(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same_tree(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_tree(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


# ---------------------------------------------------------------------- round trips


def test_round_trip_restores_every_state_dict_exactly(tmp_path):
    model, opt, sched = fresh(0)
    model.train()
    train_steps(model, opt, sched, 3, data_seed=0)
    trainer_state = {
        "epoch": 2,
        "global_step": 3,
        "history": {"loss": [0.5, 0.25], "lr": [1e-2, 5e-3]},
        "best": float("inf"),
        "worst": float("-inf"),
        "undefined": float("nan"),
        "pair": (1, "a"),
        "by_index": {0: "zero", 7: [1.5]},
        "tag_like": {"__tensor__": "x"},
        "weights": {"w": torch.arange(6, dtype=torch.float64).reshape(2, 3)},
        "mask": np.array([[True, False]]),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(3),
        "half": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
        "complex": torch.tensor([1 + 2j, -3j], dtype=torch.complex64),
        "none": None,
    }
    path = save_checkpoint(
        tmp_path / "ckpt",
        model=model,
        optimizers=opt,
        schedulers=sched,
        trainer_state=trainer_state,
        extra={"note": "hi"},
        step=3,
        metrics={"loss": 0.25},
    )
    assert path == tmp_path / "ckpt"
    assert sorted(p.name for p in path.iterdir())[0] == INDEX_NAME

    model2, opt2, sched2 = fresh(1)
    ckpt = load_checkpoint(path, model=model2, optimizers=opt2, schedulers=sched2)
    assert_same_tree(dict(model.state_dict()), dict(model2.state_dict()))
    assert_same_tree(opt.state_dict(), opt2.state_dict())
    assert sched.state_dict() == sched2.state_dict()
    assert_same_tree(ckpt.trainer_state, trainer_state)
    assert ckpt.extra == {"note": "hi"} and ckpt.step == 3 and ckpt.metrics == {"loss": 0.25}


def test_resumed_training_is_bit_identical_to_uninterrupted(tmp_path):
    """Save mid-run, keep going; load into fresh objects, go on: the same parameters."""
    torch.manual_seed(123)
    model, opt, sched = fresh(0)
    train_steps(model, opt, sched, 4, data_seed=1)
    save_checkpoint(tmp_path / "mid", model=model, optimizers=opt, schedulers=sched)
    train_steps(model, opt, sched, 5, data_seed=2)

    torch.manual_seed(999)  # a different generator state, which the load must undo
    model2, opt2, sched2 = fresh(1)
    load_checkpoint(tmp_path / "mid", model=model2, optimizers=opt2, schedulers=sched2)
    train_steps(model2, opt2, sched2, 5, data_seed=2)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert opt.lr == opt2.lr == 1e-2 * 0.5**4


def test_named_objects_and_ddp_free_models(tmp_path):
    gen, disc = nn.Linear(2, 3), nn.Linear(3, 1)
    g_opt, d_opt = descent.Adam(gen, lr=1e-3), descent.SGD(disc, lr=1e-2, momentum=0.9)
    save_checkpoint(
        tmp_path / "gan",
        model={"generator": gen, "discriminator": disc},
        optimizers={"g": g_opt, "d": d_opt},
        rng=False,
    )
    gen2, disc2 = nn.Linear(2, 3), nn.Linear(3, 1)
    load_checkpoint(
        tmp_path / "gan",
        model={"generator": gen2, "discriminator": disc2},
        optimizers={"g": descent.Adam(gen2), "d": descent.SGD(disc2, lr=0.5)},
    )
    assert torch.equal(gen.weight, gen2.weight) and torch.equal(disc.bias, disc2.bias)
    with pytest.raises(CheckpointMismatchError, match=r"models \['discriminator', 'generator'\]"):
        load_checkpoint(tmp_path / "gan", model=gen2)


def test_torch_optimizer_and_complex_parameters(tmp_path):
    weights = torch.randn(3, dtype=torch.complex128, requires_grad=True)
    opt = torch.optim.Adam([weights], lr=0.1)
    weights.grad = torch.randn(3, dtype=torch.complex128)
    opt.step()
    save_checkpoint(tmp_path / "c", optimizers=opt, rng=False)
    other = torch.randn(3, dtype=torch.complex128, requires_grad=True)
    opt2 = torch.optim.Adam([other], lr=0.5)
    load_checkpoint(tmp_path / "c", optimizers=opt2)
    assert_same_tree(opt.state_dict(), opt2.state_dict())
    bigger = torch.optim.Adam([other, torch.zeros(2, requires_grad=True)])
    with pytest.raises(CheckpointMismatchError, match="1 parameters in the checkpoint, 2"):
        load_checkpoint(tmp_path / "c", optimizers=bigger)


def test_rng_state_round_trip_covers_python_numpy_torch():
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(2))
    random.random(), np.random.rand(), torch.rand(5)
    restore_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])
    with pytest.raises(ValueError, match="state\\['torch'\\]"):
        restore_rng_state({**state, "torch": torch.zeros(3)})


def test_unsupported_values_are_named_and_nothing_is_written(tmp_path):
    with pytest.raises(
        TypeError,
        match=r"content\['trainer_state'\]\['callback'\] has type "
        "function",
    ):
        save_checkpoint(tmp_path / "x", trainer_state={"callback": lambda: 0})
    with pytest.raises(TypeError, match=r"key .* of type object"):
        save_checkpoint(tmp_path / "x", extra={object(): 1})
    assert not (tmp_path / "x").exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match=r"expected an nn\.Module"):
        save_checkpoint(tmp_path / "x", model="model")


# ---------------------------------------------------------------------- mismatches


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: nn.Sequential(nn.Linear(4, 8)), "the checkpoint has keys the model lacks"),
        (
            lambda m: nn.Sequential(
                nn.Linear(4, 9), nn.BatchNorm1d(9), nn.Tanh(), nn.Dropout(), nn.Linear(9, 2)
            ),
            r"'0.weight' has shape \(8, 4\) in the checkpoint",
        ),
        (
            lambda m: m.double(),
            "'0.weight' has dtype torch.float32 in the checkpoint, torch.float64",
        ),
    ],
)
def test_a_different_model_is_refused_and_nothing_changes(tmp_path, change, message):
    model = make_model(0)
    save_checkpoint(tmp_path / "c", model=model)
    target = change(make_model(5))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    rng_before = torch.get_rng_state()
    with pytest.raises(CheckpointMismatchError, match=message):
        load_checkpoint(tmp_path / "c", model=target)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_a_different_optimizer_is_refused_before_the_model_is_touched(tmp_path):
    model, opt, sched = fresh(0)
    train_steps(model, opt, sched, 1, data_seed=0)
    save_checkpoint(tmp_path / "c", model=model, optimizers=opt, schedulers=sched)
    model2 = make_model(7)
    before = [p.clone() for p in model2.parameters()]
    cases = [
        (descent.SGD(model2, lr=0.1), "holds a Adam, but a SGD was given"),
        (
            descent.Adam(
                [
                    {"params": list(model2.parameters())[:2]},
                    {"params": list(model2.parameters())[2:]},
                ]
            ),
            "1 param groups, the optimizer has 2",
        ),
        (descent.Adam(list(model2.parameters())[:3]), "6 parameters in the state dict, 3"),
    ]
    for optimizer, message in cases:
        with pytest.raises(CheckpointMismatchError, match=message):
            load_checkpoint(tmp_path / "c", model=model2, optimizers=optimizer)
        assert not optimizer.state
    opt2 = descent.Adam(model2)
    with pytest.raises(CheckpointMismatchError, match="holds a StepLR, but a ExponentialLR"):
        load_checkpoint(
            tmp_path / "c",
            model=model2,
            optimizers=opt2,
            schedulers=torch.optim.lr_scheduler.ExponentialLR(opt2, 0.9),
        )
    assert all(torch.equal(a, b) for a, b in zip(before, model2.parameters(), strict=True))
    assert not opt2.state


# ---------------------------------------------------------------------- damage


def small_checkpoint(path: Path) -> Path:
    model = nn.Linear(2, 1)
    opt = descent.SGD(model, lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    return save_checkpoint(path, model=model, optimizers=opt, trainer_state={"epoch": 1}, rng=False)


@pytest.mark.parametrize("which", ["index", "tensors"])
def test_every_single_byte_flip_is_detected(tmp_path, which):
    path = small_checkpoint(tmp_path / "c")
    target = path / INDEX_NAME if which == "index" else tensor_file(path)
    original = target.read_bytes()
    model = nn.Linear(2, 1)
    for position in range(len(original)):
        damaged = bytearray(original)
        damaged[position] ^= 0x01 << (position % 8)
        target.write_bytes(bytes(damaged))
        with pytest.raises(CorruptCheckpointError, match=str(target.name)):
            load_checkpoint(path, model=model)
    target.write_bytes(original)
    load_checkpoint(path, model=model)


def test_truncated_missing_and_pickled_files_are_named(tmp_path):
    path = small_checkpoint(tmp_path / "c")
    tensors, index = tensor_file(path), path / INDEX_NAME
    data, text = tensors.read_bytes(), index.read_bytes()

    tensors.write_bytes(data[:-5])
    with pytest.raises(CorruptCheckpointError, match=f"{tensors.name} has {len(data) - 5} bytes"):
        read_checkpoint(path)
    tensors.unlink()
    with pytest.raises(CorruptCheckpointError, match=f"{tensors.name} is missing"):
        read_checkpoint(path)
    tensors.write_bytes(data)

    index.write_bytes(text[: len(text) // 2])  # the checksum is verified before parsing
    with pytest.raises(
        CorruptCheckpointError,
        match=r"checkpoint\.json fails its SHA-256 "
        r"checksum; the file is truncated",
    ):
        read_checkpoint(path)
    index.write_bytes(pickle.dumps({"state": 1}))
    with pytest.raises(CorruptCheckpointError, match=r"checkpoint\.json is a pickle file"):
        read_checkpoint(path)
    index.write_bytes(text)

    torch.save({"weight": torch.ones(1)}, tmp_path / "model.pt")
    with pytest.raises(
        CorruptCheckpointError,
        match=r"model\.pt is a pickle file .* never "
        r"unpickles",
    ):
        load_checkpoint(tmp_path / "model.pt", model=nn.Linear(2, 1))
    with pytest.raises(CorruptCheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    read_checkpoint(path)


def test_a_newer_format_version_is_refused(tmp_path):
    path = small_checkpoint(tmp_path / "c")
    index = path / INDEX_NAME
    document = json.loads(index.read_text())
    document["format_version"] = 99
    document["sha256"] = "0" * 64
    draft = (json.dumps(document, indent=1) + "\n").encode()
    import hashlib

    digest = hashlib.sha256(draft).hexdigest()
    index.write_bytes(draft.replace(b"0" * 64, digest.encode(), 1))
    with pytest.raises(CorruptCheckpointError, match="format_version=99"):
        read_checkpoint(path)


# ---------------------------------------------------------------------- atomic writes


class Crash(Exception):
    pass


def crash_at_commit(source, target):
    raise Crash(f"simulated crash before renaming {source} to {target}")


def test_a_crash_before_the_commit_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    save_checkpoint(tmp_path / "c", model=model, rng=False)
    old_files = sorted(p.name for p in (tmp_path / "c").iterdir())
    with torch.no_grad():
        model.weight.fill_(2.0)
    monkeypatch.setattr(_atomic, "_commit", crash_at_commit)
    with pytest.raises(Crash):  # overwriting in place
        save_checkpoint(tmp_path / "c", model=model, rng=False)
    with pytest.raises(Crash):  # a new directory
        save_checkpoint(tmp_path / "d", model=model, rng=False)
    monkeypatch.undo()

    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == old_files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    loaded = nn.Linear(2, 1)
    load_checkpoint(tmp_path / "c", model=loaded)
    assert torch.all(loaded.weight == 1.0)

    save_checkpoint(tmp_path / "c", model=model, rng=False)  # a real overwrite
    load_checkpoint(tmp_path / "c", model=loaded)
    assert torch.all(loaded.weight == 2.0)
    assert len(list((tmp_path / "c").glob("*.safetensors"))) == 1


def test_refuses_to_overwrite_what_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a descent checkpoint"):
        save_checkpoint(tmp_path / "notes", model=nn.Linear(1, 1))
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"):
        save_checkpoint(tmp_path / "file", model=nn.Linear(1, 1))
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


# ---------------------------------------------------------------------- manager


def test_manager_keeps_last_k_and_the_best(tmp_path):
    model = nn.Linear(2, 1)
    manager = CheckpointManager(tmp_path / "run", keep_last=2, monitor="loss", mode="min")
    losses = {1: 0.9, 2: 0.3, 3: 0.5, 4: 0.6, 5: 0.7}
    for step, loss in losses.items():
        with torch.no_grad():
            model.weight.fill_(step)
        manager.save(step, model=model, metrics={"loss": torch.tensor(loss, dtype=torch.float64)})
    assert [r.step for r in manager.records()] == [2, 4, 5]
    assert manager.best().step == 2 and manager.best().metrics == {"loss": 0.3}
    assert manager.latest() == tmp_path / "run" / "step-000000005"

    maximizing = CheckpointManager(tmp_path / "run", keep_last=1, monitor="loss", mode="max")
    assert maximizing.best().step == 5


def test_manager_falls_back_when_the_latest_is_damaged(tmp_path):
    model, opt, sched = fresh(0)
    manager = CheckpointManager(tmp_path, keep_last=3)
    for step in (1, 2):
        train_steps(model, opt, sched, 1, data_seed=step)
        manager.save(
            step, model=model, optimizers=opt, schedulers=sched, trainer_state={"step": step}
        )
    damaged = tensor_file(manager.path_for(2))
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    (tmp_path / ".step-000000003.tmp-abc").mkdir()  # left by a killed write

    model2, opt2, sched2 = fresh(1)
    with pytest.warns(UserWarning, match="skipping the checkpoint of step 2.*SHA-256"):
        ckpt = manager.load_latest(model=model2, optimizers=opt2, schedulers=sched2)
    assert ckpt.trainer_state == {"step": 1} and ckpt.path == manager.path_for(1)
    assert opt2.state_dict()["state"][0]["step"].item() == 1

    with pytest.warns(
        UserWarning,
        match=r"step-000000002 is in the way of the checkpoint of "
        r"step 2 \(.*SHA-256.*\); moved it to "
        r"step-000000002\.damaged-",
    ):
        manager.save(
            2, model=model2, optimizers=opt2, schedulers=sched2, trainer_state={"step": 2}
        )  # the damaged one is kept aside
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert manager.latest() == manager.path_for(2)
    (aside,) = tmp_path.glob("step-000000002.damaged-*")
    assert tensor_file(aside).read_bytes() == bytes(data)  # nothing lost
    assert not (tmp_path / ".step-000000003.tmp-abc").exists()
    with pytest.raises(CheckpointMismatchError):  # a mismatch is not a reason to fall back
        manager.load_latest(model=nn.Linear(1, 1))


def test_saving_an_earlier_step_discards_later_checkpoints(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=5)
    model = nn.Linear(1, 1)
    for step in (10, 20, 30):
        manager.save(step, model=model)
    manager.save(15, model=model)
    assert [r.step for r in manager.records()] == [10, 15]


def test_manager_without_checkpoints_and_bad_arguments(tmp_path):
    manager = CheckpointManager(tmp_path / "empty")
    assert manager.load_latest(model=nn.Linear(1, 1)) is None and manager.latest() is None
    with pytest.raises(ValueError, match="keep_last=0"):
        CheckpointManager(tmp_path, keep_last=0)
    with pytest.raises(ValueError, match="mode='best'"):
        CheckpointManager(tmp_path, mode="best")
    with pytest.raises(ValueError, match="step=-1"):
        manager.save(-1, model=nn.Linear(1, 1))
    with pytest.raises(TypeError, match="metrics\\['loss'\\]='low'"):
        CheckpointManager(tmp_path, monitor="loss").save(1, metrics={"loss": "low"})


def test_checkpoint_files_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    """The order of durable operations: every file synced, then the one rename."""
    events = []
    real_fsync, real_commit = os.fsync, _atomic._commit
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        _atomic, "_commit", lambda s, t: (events.append("rename"), real_commit(s, t))[1]
    )
    save_checkpoint(tmp_path / "c", model=nn.Linear(1, 1), rng=False)
    # two files + the staging directory, the rename, then the parent directory
    assert events == ["fsync", "fsync", "fsync", "rename", "fsync"]


def test_tensors_sharing_storage_are_saved_apart(tmp_path):
    """Tied weights, and parameters that the engine keeps as views of one buffer."""
    tied = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1))
    opt = descent.Adam(model, lr=0.1)
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c", model={"tied": tied, "model": model}, optimizers=opt)
    tied2 = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tied2[1].weight = tied2[0].weight
    model2 = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1))
    opt2 = descent.Adam(model2, lr=0.1)
    load_checkpoint(tmp_path / "c", model={"tied": tied2, "model": model2}, optimizers=opt2)
    assert tied2[1].weight is tied2[0].weight and torch.equal(tied2[0].weight, tied[0].weight)
    assert_same_tree(dict(model.state_dict()), dict(model2.state_dict()))
    assert_same_tree(opt.state_dict(), opt2.state_dict())
