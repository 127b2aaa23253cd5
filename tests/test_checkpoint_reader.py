"""What a checkpoint reader refuses, before reading or parsing what it protects; what
saving does with what is already on disk; how the manager and a resumed trainer fall back.

Files are damaged or forged by hand here (forged: the checksums recomputed, so that only
the structural checks can catch them); the broad seeded fuzz is test_checkpoint_fuzz.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import descent
from checkpoint_fuzz import SPARSE_SIZE, deadline, dump, read_tensor_file, reseal, same, snapshot
from checkpoint_fuzz import write_tensor_file as forge_tensor_file
from descent.checkpoint import (
    CheckpointManager,
    CheckpointMismatchError,
    CorruptCheckpointError,
    _atomic,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from descent.checkpoint import format as checkpoint_format
from descent.checkpoint.format import INDEX_NAME

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and links"),
]


def objects(seed: int = 0) -> tuple[nn.Module, Any, Any]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    optimizer = descent.Adam(model, lr=0.01)
    scheduler = descent.schedules.StepLR(optimizer, step_size=2)
    return model, optimizer, scheduler


def trained(steps: int = 6) -> tuple[nn.Module, Any, Any]:
    model, optimizer, scheduler = objects()
    for step in range(steps):
        optimizer.zero_grad()
        (
            model(torch.randn(5, 3, generator=torch.Generator().manual_seed(step))) ** 2
        ).sum().backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def saved(path: Path, steps: int = 6, **options: Any) -> Path:
    model, optimizer, scheduler = trained(steps)
    return save_checkpoint(
        path,
        model=model,
        optimizers=optimizer,
        schedulers=scheduler,
        trainer_state={"epoch": 1},
        extra=None,
        step=steps,
        **options,
    )


def tensors_of(path: Path) -> Path:
    (found,) = path.glob("tensors-*.safetensors")
    return found


def refused(path: Path, pattern: str) -> None:
    """Loading ``path`` into fresh objects refuses with ``pattern`` and changes nothing."""
    model, optimizer, scheduler = objects(seed=5)
    before = snapshot(model, optimizer, scheduler)
    with deadline(10), pytest.raises(CorruptCheckpointError, match=pattern):
        load_checkpoint(path, model=model, optimizers=optimizer, schedulers=scheduler)
    assert same(snapshot(model, optimizer, scheduler), before)


def forge(path: Path, change: Any) -> None:
    index = path / INDEX_NAME
    document = json.loads(index.read_bytes())
    change(document)
    reseal(index, dump(document))


# ---------------------------------------------------------------------- not regular files


@pytest.mark.parametrize("which", ["index", "tensors"])
def test_links_fifos_and_directories_are_refused_before_reading(tmp_path: Path, which: str) -> None:
    path = saved(tmp_path / "c")
    target = path / INDEX_NAME if which == "index" else tensors_of(path)
    name = target.name.replace(".", r"\.")
    original = target.read_bytes()
    valid_copy = tmp_path / "copy"
    valid_copy.write_bytes(original)
    for make, kind in [
        (lambda: target.symlink_to("/dev/zero"), "a symbolic link to '/dev/zero'"),
        (lambda: target.symlink_to(valid_copy), "a symbolic link to '.*copy'"),
        (lambda: os.mkfifo(target), r"a FIFO \(named pipe\)"),
        (lambda: target.mkdir(), "a directory"),
    ]:
        target.unlink() if not target.is_dir() else target.rmdir()
        make()
        refused(path, f"{name} is {kind}; a descent checkpoint holds only regular files")
    target.rmdir()
    target.write_bytes(original)
    load_checkpoint(path, model=objects()[0])


def test_a_checkpoint_path_that_is_a_device_or_fifo_is_refused(tmp_path: Path) -> None:
    (tmp_path / "zero").symlink_to("/dev/zero")
    refused(tmp_path / "zero", "zero is a character device; a descent checkpoint is a directory")
    os.mkfifo(tmp_path / "pipe")
    refused(tmp_path / "pipe", r"pipe is a FIFO \(named pipe\)")


def test_oversized_files_are_refused_without_reading_them(tmp_path: Path) -> None:
    path = saved(tmp_path / "c")
    tensors, index = tensors_of(path), path / INDEX_NAME
    size = tensors.stat().st_size
    with open(tensors, "r+b") as file:  # a 64 GiB sparse file: reading it would never end
        file.truncate(SPARSE_SIZE)
    start = time.perf_counter()
    refused(path, f"{tensors.name} has {SPARSE_SIZE} bytes, the index records {size}")
    with open(tensors, "r+b") as file:
        file.truncate(size)
    text = index.read_bytes()
    with open(index, "r+b") as file:
        file.truncate(SPARSE_SIZE)
    refused(
        path,
        rf"checkpoint\.json has {SPARSE_SIZE} bytes, more than the index limit "
        r"\(MAX_INDEX_BYTES\) of 67108864 bytes; it is not read",
    )
    assert time.perf_counter() - start < 5
    index.write_bytes(text)
    # an index whose checksum is right but that records a tensor file larger than memory
    forge(path, lambda d: d["tensor_file"].update(size=1 << 50))
    refused(
        path,
        r"records a tensor file of 1125899906842624 bytes, more than this machine's "
        "memory",
    )


# ---------------------------------------------------------------------- the index


def test_the_checksum_is_verified_before_the_json_is_parsed(tmp_path: Path) -> None:
    """Damage cannot reach the parser: 100,000 nested lists are refused by the checksum."""
    path = saved(tmp_path / "c")
    index = path / INDEX_NAME
    document = json.loads(index.read_bytes())
    document["content"]["extra"] = "@"
    text = dump(document).replace(b'"@"', b"[" * 100_000 + b"]" * 100_000)
    index.write_bytes(text)  # the old checksum
    refused(path, r"checkpoint\.json fails its SHA-256 checksum")
    index.write_bytes(b"[" * 100_000)
    refused(path, r'checkpoint\.json does not begin with its "sha256" field')


@pytest.mark.parametrize(
    "payload,pattern",
    [
        (
            "[" * 100_000 + "]" * 100_000,
            "nests 100002 levels deep, more than the limit of 256; it is not parsed",
        ),
        ("[" * 300 + "]" * 300, "nests 302 levels deep"),
        ("7" * 5000, "holds an integer of 5000 digits \\(the limit is 4300\\)"),
        ("-" + "1" * 4301, "holds an integer of 4301 digits"),
        ("0." + "5" * 5000, "holds a number written with 5002 characters \\(the limit is 100\\)"),
        ("1e999", "holds the number 1e999 is out of range"),
        ("NaN", "holds the constant NaN"),
        ("Infinity", "holds the constant Infinity"),
        ('{"a": 1, "b": 2, "a": 3}', "holds the key 'a' twice in one object"),
        ('"\\ud800"', None),  # a lone surrogate is valid JSON and a valid Python str
    ],
)
def test_forged_json_beyond_the_limits_is_refused(
    tmp_path: Path, payload: str, pattern: str | None
) -> None:
    path = saved(tmp_path / "c")
    index = path / INDEX_NAME
    document = json.loads(index.read_bytes())
    document["content"]["extra"] = "@"
    reseal(index, dump(document).replace(b'"@"', payload.encode()))
    if pattern is None:
        assert load_checkpoint(path, model=objects()[0]).extra == "\ud800"
        return
    refused(path, rf"{re.escape(str(path / INDEX_NAME))} {pattern}")


def test_every_missing_content_key_is_named(tmp_path: Path) -> None:
    path = saved(tmp_path / "c")
    text = (path / INDEX_NAME).read_bytes()
    for key in checkpoint_format.CONTENT_KEYS:
        forge(path, lambda d, key=key: d["content"].pop(key))
        refused(
            path,
            r"content has \[.*\]; expected the keys \['step', 'metrics', 'models', "
            r"'optimizers', 'schedulers', 'trainer_state', 'extra', 'rng'\]",
        )
        (path / INDEX_NAME).write_bytes(text)
    forge(path, lambda d: d["content"].update(surprise=1))
    refused(path, "content has")


@pytest.mark.parametrize("label", [-3, "six", 2.5, True, [4]])
def test_an_invalid_step_label_is_refused(tmp_path: Path, label: Any) -> None:
    path = saved(tmp_path / "c")
    forge(path, lambda d: d["content"].update(step=label))
    refused(
        path,
        rf"the step label is {label!r}; expected an integer >= 0 or null".replace(
            "[", r"\["
        ).replace("]", r"\]"),
    )
    assert CheckpointManager(tmp_path).records() == []


@pytest.mark.parametrize(
    "change,pattern",
    [
        (lambda c: c.update(models=[]), "models is a list; expected an object of named entries"),
        (lambda c: c.update(optimizers="adam"), "optimizers is a str"),
        (lambda c: c.update(schedulers=None), "schedulers is a NoneType"),
        (lambda c: c.update(rng={}), "rng is a dict; expected null or a list of per-rank states"),
        (lambda c: c.update(rng=[]), "rng is a list"),
        (lambda c: c["models"]["0"].pop("state"), r"models\['0'\] has \['metadata', 'type'\]"),
        (
            lambda c: c["models"]["0"]["metadata"]["1"].update(version="2"),
            r"models\['0'\]\['metadata'\]\['1'\]=\{'version': '2'\}; expected an object whose "
            "'version' is an integer",
        ),
        (
            lambda c: c["optimizers"]["0"]["state"].pop("state"),
            r"optimizers\['0'\]\['state'\] is not an optimizer state dict",
        ),
        (
            lambda c: c["optimizers"]["0"]["state"]["state"]["__dict__"].append([42, {}]),
            r"optimizers\['0'\]\['state'\]\['state'\]\[42\] is the state of a parameter that no "
            "param group lists",
        ),
        (
            lambda c: c["optimizers"]["0"]["state"]["state"]["__dict__"][0][1].update(step=-2),
            r"\['state'\]\[0\]\['step'\]=-2; expected a whole number >= 0",
        ),
        (
            lambda c: c["schedulers"]["0"]["state"].update(last_epoch=-3),
            r"schedulers\['0'\]\['state'\]\['last_epoch'\]=-3; expected an integer >= -1",
        ),
        (
            lambda c: c["schedulers"]["0"]["state"].update(last_epoch="six"),
            r"\['last_epoch'\]='six'",
        ),
        (
            lambda c: c["rng"][0]["numpy"].update(keys=[1, 2]),
            r"rng\[0\]: restore_rng_state: "
            "malformed Python or NumPy state",
        ),
        (lambda c: c["rng"][0]["python"].update(gauss_next="x"), r"rng\[0\]: .*gauss_next='x'"),
        (lambda c: c.update(extra={"__tuple__": {"a": 1}}), "a tuple tag holds a dict"),
        (lambda c: c.update(extra={"__dict__": [[[1], 2]]}), "a dict key is a list"),
        (lambda c: c.update(extra={"__dict__": [[1, 2], [1, 3]]}), "the key 1 appears twice"),
        (lambda c: c.update(extra={"__ndarray__": 3}), "refers to tensor 3"),
    ],
)
def test_forged_structure_is_refused_naming_the_field(
    tmp_path: Path, change: Any, pattern: str
) -> None:
    path = saved(tmp_path / "c")
    forge(path, lambda d: change(d["content"]))
    refused(path, rf"checkpoint:? {path}.*{pattern}")


# ---------------------------------------------------------------------- the tensor file


def test_a_step_relabelled_int32_is_refused(tmp_path: Path) -> None:
    """The issue's case: float32 6.0 read as int32 is a step of 1,086,324,736."""
    from safetensors.torch import load

    path = saved(tmp_path / "c", steps=6)
    header, data = read_tensor_file(tensors_of(path))
    name = "content['optimizers']['0']['state']['state'][0]['step']"
    header[name]["dtype"] = "I32"
    forge_tensor_file(path, header, data)
    assert load(tensors_of(path).read_bytes())[name].item() == 1_086_324_736
    refused(
        path,
        r"optimizers\['0'\]\['state'\]\['state'\]\[0\]\['step'\] is a torch.int32 "
        "tensor of shape \\(\\); torch and descent keep a step count as a "
        "one-element float32 or float64 tensor",
    )


@pytest.mark.parametrize("value", [-1.0, 0.5, float("nan"), float("inf")])
def test_an_impossible_step_value_is_refused(tmp_path: Path, value: float) -> None:
    path = saved(tmp_path / "c")
    header, data = read_tensor_file(tensors_of(path))
    begin, end = header["content['optimizers']['0']['state']['state'][2]['step']"]["data_offsets"]
    forge_tensor_file(path, header, data[:begin] + struct.pack("<f", value) + data[end:])
    refused(path, rf"\[2\]\['step'\]={value!r}; expected a whole number >= 0")


def test_tensors_missing_or_never_referred_to_are_refused(tmp_path: Path) -> None:
    path = saved(tmp_path / "c")
    header, data = read_tensor_file(tensors_of(path))
    header["stray"] = {"dtype": "U8", "shape": [2], "data_offsets": [len(data), len(data) + 2]}
    forge_tensor_file(path, header, data + b"\x01\x02")
    refused(path, r"holds tensors the index never refers to: \['stray'\]")
    header["content['models']['0']['state']['0.weight']x"] = header.pop(
        "content['models']['0']['state']['0.weight']"
    )
    forge_tensor_file(path, header, data + b"\x01\x02")
    refused(
        path,
        r"refers to tensor \"content\['models'\]\['0'\]\['state'\]\['0.weight'\]\", "
        "which the tensor file lacks",
    )


def test_the_tensor_file_name_must_be_its_checksum(tmp_path: Path) -> None:
    path = saved(tmp_path / "c")
    tensors = tensors_of(path)
    other = path / "tensors-0123456789abcdef.safetensors"
    tensors.rename(other)
    forge(path, lambda d: d["tensor_file"].update(name=other.name))
    refused(
        path,
        "tensor_file names 'tensors-0123456789abcdef.safetensors', which is not the "
        "name of its recorded sha256",
    )


# ---------------------------------------------------------------------- loading


def test_a_scheduler_state_is_checked_before_anything_is_loaded(tmp_path: Path) -> None:
    """Loading checks every part first: an unfit scheduler state changes no model weight."""
    path = saved(tmp_path / "c")
    forge(path, lambda d: d["content"]["schedulers"]["0"]["state"]["base_values"].update(lr=[-0.5]))
    model, optimizer, scheduler = objects(seed=3)
    before = snapshot(model, optimizer, scheduler)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"schedulers\['0'\]: StepLR.load_state_"
        r"dict: base_values\['lr'\]\[0\]=-0.5",
    ):
        load_checkpoint(path, model=model, optimizers=optimizer, schedulers=scheduler)
    assert same(snapshot(model, optimizer, scheduler), before)


# ---------------------------------------------------------------------- writing


def test_saving_again_rewrites_a_damaged_file_of_the_same_name(tmp_path: Path) -> None:
    """The same content has the same tensor file name: it is written again, not trusted."""
    model, optimizer, scheduler = trained()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    save_checkpoint(tmp_path / "c", model=model, optimizers=optimizer, schedulers=scheduler)
    tensors = tensors_of(tmp_path / "c")
    data = bytearray(tensors.read_bytes())
    data[len(data) // 2] ^= 0x10
    tensors.write_bytes(bytes(data))
    refused(tmp_path / "c", "fails its SHA-256 checksum")
    torch.set_rng_state(state)
    save_checkpoint(tmp_path / "c", model=model, optimizers=optimizer, schedulers=scheduler)
    assert tensors_of(tmp_path / "c") == tensors  # the same name, now the right bytes
    read_checkpoint(tmp_path / "c")


def test_a_crash_while_rewriting_keeps_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data file rewritten under the name the old index uses holds the bytes that index
    expects, and is not removed when the write fails before the commit."""
    model, optimizer, scheduler = trained()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    save_checkpoint(tmp_path / "c", model=model, optimizers=optimizer, schedulers=scheduler)
    before = {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()}

    def crash(source: Path, target: Path) -> None:
        raise KeyboardInterrupt("killed before the commit")

    monkeypatch.setattr(_atomic, "_commit", crash)
    torch.set_rng_state(state)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "c", model=model, optimizers=optimizer, schedulers=scheduler)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "c").iterdir()} == before
    read_checkpoint(tmp_path / "c")


def test_save_refuses_a_fifo_or_a_directory_index(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(FileExistsError, match=r"pipe exists and is a FIFO \(named pipe\)"):
        save_checkpoint(tmp_path / "pipe", model=nn.Linear(1, 1))
    (tmp_path / "c" / INDEX_NAME).mkdir(parents=True)
    with pytest.raises(
        FileExistsError,
        match=r"checkpoint\.json is a directory, not a "
        "checkpoint index",
    ):
        save_checkpoint(tmp_path / "c", model=nn.Linear(1, 1))


def test_the_writer_refuses_what_the_reader_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    with pytest.raises(ValueError, match="would nest 302 levels deep, more than MAX_DEPTH=256"):
        save_checkpoint(tmp_path / "c", model=nn.Linear(1, 1), extra=deep)
    with pytest.raises(
        ValueError,
        match=r"content\['extra'\]\['big'\] is an integer of more "
        "than 4300 digits",
    ):
        save_checkpoint(tmp_path / "c", model=nn.Linear(1, 1), extra={"big": 7**6000})
    monkeypatch.setattr(checkpoint_format, "MAX_INDEX_BYTES", 2000)
    with pytest.raises(ValueError, match=r"would hold .* bytes, more than MAX_INDEX_BYTES=2000"):
        save_checkpoint(tmp_path / "c", model=nn.Linear(1, 1), extra=list(range(1000)))
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------------- the manager


def test_a_stray_file_named_like_a_checkpoint_is_reported_and_moved_aside(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=5)
    model = nn.Linear(2, 1)
    manager.save(2, model=model)
    (tmp_path / "step-000000004").write_text("my notes")
    with pytest.warns(
        UserWarning,
        match="step-000000004 is named like a checkpoint but is a "
        "file, not a checkpoint directory; it is ignored",
    ):
        assert manager.latest() == manager.path_for(2)
    with pytest.warns(
        UserWarning,
        match=r"step-000000004 is in the way of the checkpoint of "
        r"step 4 \(it is a file\); moved it to "
        r"step-000000004\.stray-",
    ):
        manager.save(4, model=model)
    (aside,) = tmp_path.glob("step-000000004.stray-*")
    assert aside.read_text() == "my notes"
    assert [record.step for record in manager.records()] == [2, 4]


def test_a_link_or_fifo_named_like_a_checkpoint_is_moved_aside_untouched(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    run = tmp_path / "run"
    manager = CheckpointManager(run)
    run.mkdir()
    (run / "step-000000001").symlink_to(elsewhere)
    os.mkfifo(run / "step-000000002")
    with pytest.warns(UserWarning) as caught:
        assert manager.latest() is None
    named = {str(w.message).split(" is named")[0] for w in caught}
    assert named == {
        f"CheckpointManager: {run / name}" for name in ("step-000000001", "step-000000002")
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each stray entry is reported once per manager
        manager.records()
    with pytest.warns(UserWarning, match=r"\(it is a symbolic link\)"):
        manager.save(1, model=nn.Linear(1, 1))
    with pytest.warns(UserWarning, match=r"\(it is a FIFO \(named pipe\)\)"):
        manager.save(2, model=nn.Linear(1, 1))
    assert [p.name for p in elsewhere.iterdir()] == ["keep.txt"]
    assert manager.latest() == manager.path_for(2)


def test_a_step_label_that_differs_from_the_directory_falls_back(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    model = nn.Linear(2, 1)
    manager.save(1, model=model)
    manager.save(2, model=model)
    forge(manager.path_for(2), lambda d: d["content"].update(step=7))
    with pytest.warns(
        UserWarning,
        match="skipping the checkpoint of step 2: .*has the step "
        "label 7, but the directory is named for step 2",
    ):
        assert manager.load_latest(model=model).step == 1
    assert [record.step for record in manager.records()] == [1]


def test_a_caller_check_refusing_a_checkpoint_falls_back(tmp_path: Path) -> None:
    """The seam a trainer uses to refuse impossible loop counters."""
    manager = CheckpointManager(tmp_path)
    model = nn.Linear(2, 1)
    for step in (1, 2):
        manager.save(step, model=model, trainer_state={"batch": 5 * step})

    def check(content: Any) -> None:
        if content["trainer_state"]["batch"] > 9:
            raise CorruptCheckpointError(
                f"batch={content['trainer_state']['batch']} is past the 10 batches of an epoch"
            )

    with pytest.warns(UserWarning, match="skipping the checkpoint of step 2: batch=10 is past"):
        loaded = manager.load_latest(model=model, check=check)
    assert loaded.trainer_state == {"batch": 5}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert manager.latest() == manager.path_for(2)  # without the check


def test_a_trainer_resume_falls_back_past_a_hostile_checkpoint(tmp_path: Path) -> None:
    """train(resume=True) with the newest checkpoint's index replaced by a link to
    /dev/zero: a warning, the previous checkpoint, and the uninterrupted run's result."""
    from descent.train import SupervisedTrainer

    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    y = x.sum(dim=1, keepdim=True)

    def run(directory: Path, resume: bool = False) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        trainer = SupervisedTrainer(
            descent.SGD(model, lr=0.05, momentum=0.9),
            batch_size=10,
            epochs=2,
            checkpoint_dir=directory,
            keep_last=5,
        )
        trainer.train(model, x, y, nn.MSELoss(), resume=resume)
        return model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the trainers' own progress warnings
        uninterrupted = run(tmp_path / "uninterrupted")
        run(tmp_path / "run")
    manager = CheckpointManager(tmp_path / "run")
    steps = [record.step for record in manager.records()]
    assert len(steps) >= 2
    newest = manager.path_for(steps[-1])
    (newest / INDEX_NAME).unlink()
    (newest / INDEX_NAME).symlink_to("/dev/zero")
    with deadline(60), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = run(tmp_path / "run", resume=True)
    messages = [str(w.message) for w in caught]
    assert any(
        f"skipping the checkpoint of step {steps[-1]}" in m
        and "is a symbolic link to '/dev/zero'" in m
        for m in messages
    ), messages
    assert same(dict(resumed.state_dict()), dict(uninterrupted.state_dict()))


def test_checksums_are_sha256_of_the_bytes(tmp_path: Path) -> None:
    """An independent check of the recorded digests (hashlib on the files as written)."""
    path = saved(tmp_path / "c")
    raw = (path / INDEX_NAME).read_bytes()
    document = json.loads(raw)
    recorded = document["sha256"]
    assert hashlib.sha256(raw.replace(recorded.encode(), b"0" * 64, 1)).hexdigest() == recorded
    tensors = tensors_of(path).read_bytes()
    assert hashlib.sha256(tensors).hexdigest() == document["tensor_file"]["sha256"]
    assert document["tensor_file"]["size"] == len(tensors)
