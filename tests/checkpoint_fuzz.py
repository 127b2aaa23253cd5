"""Seeded corruption of a real checkpoint, file by file, and what descent does with each.

A small run (a model with BatchNorm buffers and module versions, ``descent.Adam`` with its
step counts, a scheduler, trainer state, extra data and the random generator states) is
saved by a :class:`~descent.checkpoint.CheckpointManager` at steps 1 and 2. Each case
copies that directory, damages the newest checkpoint in one way, and then requires:

1. **refused**: ``load_checkpoint`` of the damaged checkpoint into fresh objects raises
   ``CorruptCheckpointError`` whose message names the checkpoint and matches the fault
   (the damaged file, or the field), within 10 seconds; the objects, the random
   generators and the files on disk are as they were;
2. **fell back**: the manager's ``load_latest`` loads step 1, exactly as it was saved
   (parameters, buffers, optimizer state, generator states), warning about step 2;
3. **repaired**: saving step 2 again (the same objects, the same generator states, so
   the same bytes and file names as the original) leaves a newest checkpoint that the
   manager takes without a warning and that loads the step-2 state.

A case that fails any of these is **silent** (a damaged checkpoint loaded, another
exception, a hang), with the reason recorded.

The damages cover every file of a checkpoint: raw damage to the index, the tensor file
and the directory (bit flips, truncation, appended and overwritten bytes, deletion,
empty files, links to ``/dev/zero`` and to valid copies, FIFOs, 64 GiB sparse files,
directories and pickles in their place, files from the older checkpoint), and forged
files whose checksums were recomputed, so that only the structural checks can catch
them (missing keys, wrong types, nesting 100,000 deep, numbers of 5,000 digits, NaN,
repeated keys, invalid step labels, a float32 step relabelled int32, impossible step
values, malformed tags, missing and unreferenced tensors, broken generator states).

Run as a script for the figures::

    PYTHONPATH=src python tests/checkpoint_fuzz.py --cases 2000 --seed 0
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import random
import re
import shutil
import signal
import struct
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import descent
from descent.checkpoint import (
    CheckpointManager,
    CorruptCheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)
from descent.checkpoint.format import INDEX_NAME

SPARSE_SIZE = 64 * 2**30
TIMEOUT_S = 10
_HEADER = re.compile(rb'\A\{\s*"sha256"\s*:\s*"([0-9a-f]{64})"')


# ---------------------------------------------------------------------- the run


def make_objects(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.2), nn.Linear(6, 2)
    )
    optimizer = descent.Adam(model, lr=1e-2, weight_decay=0.01)
    scheduler = descent.schedules.CosineAnnealingLR(optimizer, T_max=10, eta_min=1e-4)
    return model, optimizer, scheduler


def train_step(model: nn.Module, optimizer: Any, scheduler: Any, step: int) -> None:
    data = torch.Generator().manual_seed(100 + step)
    optimizer.zero_grad()
    (model(torch.randn(8, 4, generator=data)) ** 2).mean().backward()
    optimizer.step()
    scheduler.step()


def snapshot(model: nn.Module, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Everything a load could change, as comparable copies."""
    return {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "scheduler": copy.deepcopy(scheduler.state_dict()),
        "lrs": [g["lr"] for g in optimizer.param_groups],
        "rng": capture_rng_state(),
    }


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(torch.equal(a, b))
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b, strict=True))
        )
    return a == b


@dataclass
class Run:
    """The pristine run directory and what was saved at each step."""

    directory: Path
    saved: dict[int, dict[str, Any]]
    objects: tuple[nn.Module, Any, Any]

    def manager(self, directory: Path) -> CheckpointManager:
        return CheckpointManager(directory, keep_last=3)

    def save(self, manager: CheckpointManager, step: int) -> None:
        model, optimizer, scheduler = self.objects
        restore_rng_state(self.saved[step]["rng"])
        manager.save(
            step,
            model=model,
            optimizers=optimizer,
            schedulers=scheduler,
            trainer_state={"epoch": 0, "step": step, "history": [0.5, 0.25]},
            extra={"note": "fuzz"},
            metrics={"loss": 1.0 / step},
        )


def build_run(directory: Path) -> Run:
    model, optimizer, scheduler = make_objects()
    run = Run(directory, {}, (model, optimizer, scheduler))
    manager = run.manager(directory)
    for step in (1, 2):
        train_step(model, optimizer, scheduler, step)
        torch.manual_seed(1000 + step)
        run.saved[step] = snapshot(model, optimizer, scheduler)
        run.save(manager, step)
    return run


# ---------------------------------------------------------------------- forging


def reseal(index: Path, text: bytes) -> None:
    """Write ``text`` as the index with a correct checksum (a forgery, not damage)."""
    match = _HEADER.match(text)
    assert match is not None, "the forged index must keep its sha256 field first"
    draft = text[: match.start(1)] + b"0" * 64 + text[match.end(1) :]
    digest = hashlib.sha256(draft).hexdigest().encode()
    index.write_bytes(draft[: match.start(1)] + digest + draft[match.start(1) + 64 :])


def dump(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=1) + "\n").encode()


def read_tensor_file(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def write_tensor_file(checkpoint: Path, header: dict[str, Any], data: bytes) -> None:
    """Replace the tensor file by ``header`` + ``data`` and reseal the index to match."""
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    raw = struct.pack("<Q", len(encoded)) + encoded + data
    index = checkpoint / INDEX_NAME
    document = json.loads(index.read_bytes())
    (checkpoint / document["tensor_file"]["name"]).unlink()
    digest = hashlib.sha256(raw).hexdigest()
    name = f"tensors-{digest[:16]}.safetensors"
    (checkpoint / name).write_bytes(raw)
    document["tensor_file"] = {
        "name": name,
        "size": len(raw),
        "sha256": digest,
        "count": len([k for k in header if k != "__metadata__"]),
    }
    reseal(index, dump(document))


# ---------------------------------------------------------------------- damages


@dataclass
class Case:
    """One damaged checkpoint: the newest of a copied run, and the fault to be named."""

    checkpoint: Path
    previous: Path
    rng: random.Random
    scratch: Path
    description: str = ""
    expect: str = ""

    @property
    def index(self) -> Path:
        return self.checkpoint / INDEX_NAME

    @property
    def tensors(self) -> Path:
        (found,) = [p for p in self.checkpoint.iterdir() if p.suffix == ".safetensors"]
        return found

    def target(self) -> Path:
        return self.index if self.rng.random() < 0.5 else self.tensors

    def document(self) -> dict[str, Any]:
        return json.loads(self.index.read_bytes())

    def forge(self, change: Callable[[dict[str, Any]], Any], what: str, expect: str) -> None:
        document = self.document()
        change(document)
        reseal(self.index, dump(document))
        self.description, self.expect = f"forged index: {what}", expect

    def forge_text(self, payload: str, what: str, expect: str) -> None:
        document = self.document()
        document["content"]["extra"] = "@PAYLOAD@"
        reseal(self.index, dump(document).replace(b'"@PAYLOAD@"', payload.encode()))
        self.description, self.expect = f"forged index: {what}", expect


def _replace(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def flip_bits(case: Case) -> None:
    target = case.target()
    data = bytearray(target.read_bytes())
    for _ in range(case.rng.randint(1, 8)):
        data[case.rng.randrange(len(data))] ^= 1 << case.rng.randrange(8)
    if bytes(data) == target.read_bytes():  # the flips cancelled out
        data[0] ^= 1
    target.write_bytes(bytes(data))
    case.description, case.expect = f"bits flipped in {target.name}", re.escape(target.name)


def truncate(case: Case) -> None:
    target = case.target()
    data = target.read_bytes()
    target.write_bytes(data[: case.rng.randrange(len(data))])
    case.description, case.expect = f"{target.name} truncated", re.escape(target.name)


def append(case: Case) -> None:
    target = case.target()
    extra = bytes(case.rng.randrange(256) for _ in range(case.rng.randint(1, 300)))
    target.write_bytes(target.read_bytes() + extra)
    case.description, case.expect = f"bytes appended to {target.name}", re.escape(target.name)


def overwrite(case: Case) -> None:
    target = case.target()
    data = bytearray(target.read_bytes())
    start = case.rng.randrange(len(data))
    end = min(len(data), start + case.rng.randint(1, 64))
    fill = case.rng.choice([b"\x00", b"\xff", None])
    for i in range(start, end):
        data[i] = fill[0] if fill else case.rng.randrange(256)
    if bytes(data) == target.read_bytes():
        data[start] ^= 0xFF
    target.write_bytes(bytes(data))
    case.description, case.expect = f"bytes overwritten in {target.name}", re.escape(target.name)


def delete(case: Case) -> None:
    target = case.target()
    target.unlink()
    case.description, case.expect = f"{target.name} deleted", f"{re.escape(target.name)} is missing"


def empty(case: Case) -> None:
    target = case.target()
    target.write_bytes(b"")
    case.description, case.expect = f"{target.name} emptied", re.escape(target.name)


def link_dev_zero(case: Case) -> None:
    target = case.target()
    target.unlink()
    target.symlink_to("/dev/zero")
    case.description = f"{target.name} replaced by a link to /dev/zero"
    case.expect = f"{re.escape(target.name)} is a symbolic link to '/dev/zero'"


def link_to_copy(case: Case) -> None:
    target = case.target()
    copy_path = case.scratch / f"copy-{target.name}"
    shutil.copyfile(target, copy_path)
    target.unlink()
    target.symlink_to(copy_path)
    case.description = f"{target.name} replaced by a link to a valid copy"
    case.expect = f"{re.escape(target.name)} is a symbolic link"


def fifo(case: Case) -> None:
    target = case.target()
    target.unlink()
    os.mkfifo(target)
    case.description = f"{target.name} replaced by a FIFO"
    case.expect = f"{re.escape(target.name)} is a FIFO"


def sparse(case: Case) -> None:
    target = case.target()
    with open(target, "r+b") as file:
        file.truncate(SPARSE_SIZE)
    case.description = f"{target.name} grown to a 64 GiB sparse file"
    case.expect = f"{re.escape(target.name)} has {SPARSE_SIZE} bytes"


def directory(case: Case) -> None:
    target = case.target()
    target.unlink()
    target.mkdir()
    (target / "inside").write_text("x")
    case.description = f"{target.name} replaced by a directory"
    case.expect = f"{re.escape(target.name)} is a directory"


def pickled(case: Case) -> None:
    target = case.target()
    torch.save({"weight": torch.ones(2)}, target)
    case.description = f"{target.name} replaced by a pickle"
    case.expect = re.escape(target.name)


def from_previous(case: Case) -> None:
    if case.rng.random() < 0.5:
        shutil.copyfile(case.previous / INDEX_NAME, case.index)
        case.description = "the index replaced by the previous checkpoint's"
        case.expect = "is missing"  # it names the previous tensor file, not here
    else:
        (older,) = case.previous.glob("*.safetensors")
        shutil.copyfile(older, case.tensors)
        case.description, case.expect = (
            "the tensor file's bytes replaced by the previous checkpoint's",
            "SHA-256",
        )


def whole_directory(case: Case) -> None:
    kind = case.rng.choice(["file", "fifo", "dev-zero", "empty", "removed", "pickle"])
    shutil.rmtree(case.checkpoint)
    path = case.checkpoint
    if kind == "file":
        path.write_text("not a checkpoint")
        case.expect = "is a file"
    elif kind == "fifo":
        os.mkfifo(path)
        case.expect = "is a FIFO"
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
        case.expect = "is a character device"
    elif kind == "empty":
        path.mkdir()
        case.expect = f"{INDEX_NAME} is missing"
    elif kind == "pickle":
        torch.save({"model": torch.ones(1)}, path)
        case.expect = "is a pickle file"
    else:
        case.expect = "does not exist"
    case.description = f"the checkpoint directory: {kind}"


def forged_document(case: Case) -> None:
    choices: list[tuple[Callable[[dict[str, Any]], Any], str, str]] = [
        (lambda d: d.pop("format"), "no format", "not a descent checkpoint index"),
        (lambda d: d.update(format="other"), "another format", "not a descent checkpoint"),
        (lambda d: d.pop("written_by"), "no written_by", "has the keys"),
        (lambda d: d.update(format_version=99), "format_version 99", "format_version=99"),
        (lambda d: d.update(format_version="1"), "format_version '1'", "format_version='1'"),
        (lambda d: d.pop("tensor_file"), "no tensor_file", "has the keys"),
        (lambda d: d["tensor_file"].update(size=-1), "tensor size -1", "tensor_file="),
        (
            lambda d: d["tensor_file"].update(size=SPARSE_SIZE),
            "tensor size 64 GiB",
            "has .* bytes, the index records 68719476736|more than this machine's memory",
        ),
        (lambda d: d["tensor_file"].update(count="2"), "tensor count '2'", "tensor_file="),
        (
            lambda d: d["tensor_file"].update(count=d["tensor_file"]["count"] + 1),
            "tensor count + 1",
            "holds .* tensors, the index records",
        ),
        (
            lambda d: d["tensor_file"].update(name="tensors-0000000000000000.safetensors"),
            "another tensor file name",
            "not the name of its recorded sha256",
        ),
        (
            lambda d: d["tensor_file"].update(sha256="0" * 64),
            "tensor sha256 zeroed",
            "not the name of its recorded sha256",
        ),
    ]
    change, what, expect = case.rng.choice(choices)
    case.forge(change, what, expect)


CONTENT_KEYS = (
    "step",
    "metrics",
    "models",
    "optimizers",
    "schedulers",
    "trainer_state",
    "extra",
    "rng",
)


def forged_content_key(case: Case) -> None:
    key = case.rng.choice(CONTENT_KEYS)
    if case.rng.random() < 0.5 or key in ("trainer_state", "extra"):
        case.forge(
            lambda d: d["content"].pop(key),
            f"content without {key!r}",
            "content has .* expected the keys",
        )
        return
    bad = {
        "step": [-3, "six", 2.5, True, [2]],
        "metrics": [[], "x", 5],
        "models": [[], "x", 5, None],
        "optimizers": [[], "x", 5, None],
        "schedulers": [[], "x", 5, None],
        "rng": [{}, "x", 5, []],
    }[key]
    value = case.rng.choice(bad)
    expect = {"step": "the step label is", "metrics": "metrics has type", "rng": "rng is a"}.get(
        key, f"{key} is a"
    )
    case.forge(lambda d: d["content"].update({key: value}), f"content[{key!r}] = {value!r}", expect)


def forged_json(case: Case) -> None:
    depth = case.rng.choice([300, 5000, 100_000])
    choices = [
        ("[" * depth + "]" * depth, f"lists nested {depth} deep", "levels deep, more than"),
        ("1" * 5000, "an integer of 5,000 digits", "an integer of 5000 digits"),
        ("-" + "9" * 4301, "an integer of 4,301 digits", "an integer of 4301 digits"),
        ("1." + "3" * 5000, "a float of 5,002 characters", "a number written with 5002"),
        ("1e999", "1e999", "out of range"),
        ("NaN", "NaN", "the constant NaN"),
        ("-Infinity", "-Infinity", "the constant -Infinity"),
        ('{"a": 1, "a": 2}', "a repeated key", "the key 'a' twice"),
    ]
    payload, what, expect = case.rng.choice(choices)
    case.forge_text(payload, what, expect)


def _optimizer(document: dict[str, Any]) -> dict[str, Any]:
    return document["content"]["optimizers"]["0"]["state"]


def _state_entries(document: dict[str, Any]) -> list[list[Any]]:
    return _optimizer(document)["state"]["__dict__"]


def forged_structure(case: Case) -> None:
    content = "content"
    choices: list[tuple[Callable[[dict[str, Any]], Any], str, str]] = [
        (
            lambda d: d[content]["models"]["0"].pop("metadata"),
            "a model without metadata",
            r"models\['0'\] has",
        ),
        (
            lambda d: d[content]["models"]["0"].update(type=7),
            "a model type 7",
            r"models\['0'\]\['type'\]",
        ),
        (
            lambda d: d[content]["models"]["0"]["metadata"][""].update(version="x"),
            "module version 'x'",
            r"models\['0'\]\['metadata'\]\[''\]",
        ),
        (
            lambda d: d[content]["models"]["0"].update(state=[1]),
            "model state a list",
            r"models\['0'\]\['state'\]",
        ),
        (
            lambda d: _optimizer(d).pop("param_groups"),
            "no param_groups",
            r"optimizers\['0'\]\['state'\] is not an optimizer state dict",
        ),
        (
            lambda d: _optimizer(d)["param_groups"][0].update(params=5),
            "params = 5",
            r"\['param_groups'\] is not a list",
        ),
        (
            lambda d: _state_entries(d).append([99, {}]),
            "state of parameter 99",
            r"\['state'\]\[99\] is the state of a parameter that no param group lists",
        ),
        (
            lambda d: _state_entries(d)[0].__setitem__(1, [1, 2]),
            "a state entry that is a list",
            r"\['state'\]\[0\] is a list",
        ),
        (
            lambda d: _state_entries(d)[1][1].update(step=-1),
            "step -1",
            r"\['state'\]\[1\]\['step'\]=-1; expected a whole number >= 0",
        ),
        (
            lambda d: _state_entries(d)[1][1].update(step=2.5),
            "step 2.5",
            r"\['step'\]=2.5; expected a whole number",
        ),
        (
            lambda d: _state_entries(d)[1][1].update(step="six"),
            "step 'six'",
            r"\['step'\]='six'; expected a number",
        ),
        (lambda d: _state_entries(d)[1][1].update(step=True), "step true", r"\['step'\]=True"),
        (
            lambda d: d[content]["schedulers"]["0"]["state"].update(last_epoch=-3),
            "scheduler last_epoch -3",
            r"\['last_epoch'\]=-3; expected an integer >= -1",
        ),
        (
            lambda d: d[content]["schedulers"]["0"]["state"].update(last_epoch="six"),
            "scheduler last_epoch 'six'",
            r"\['last_epoch'\]='six'",
        ),
        (
            lambda d: d[content]["schedulers"]["0"].pop("type"),
            "scheduler without type",
            r"schedulers\['0'\] has",
        ),
        (
            lambda d: d[content]["rng"][0]["python"].update(state=[1, 2, 3]),
            "a short Python generator state",
            r"rng\[0\]: restore_rng_state",
        ),
        (
            lambda d: d[content]["rng"][0]["numpy"].pop("keys"),
            "NumPy keys missing",
            r"rng\[0\]: restore_rng_state",
        ),
        (
            lambda d: d[content]["rng"][0].update(torch=5),
            "torch generator state 5",
            r"rng\[0\]: restore_rng_state: state\['torch'\]",
        ),
        (
            lambda d: d[content]["rng"][0].update(cuda=[1]),
            "CUDA states [1]",
            r"rng\[0\]: restore_rng_state: state\['cuda'\]",
        ),
        (
            lambda d: d[content].update(extra={"__tuple__": 5}),
            "a tuple tag holding 5",
            "a tuple tag holds a int",
        ),
        (
            lambda d: d[content].update(extra={"__float__": "big"}),
            "a float tag 'big'",
            "unknown float 'big'",
        ),
        (
            lambda d: d[content].update(extra={"__dict__": 5}),
            "a dict tag holding 5",
            "a dict tag must hold",
        ),
        (
            lambda d: d[content].update(extra={"__tensor__": "nowhere"}),
            "a missing tensor",
            "refers to tensor 'nowhere'",
        ),
        (
            lambda d: d[content]["trainer_state"].update(
                w={"__complex__": _state_entries(d)[0][1]["exp_avg"]["__tensor__"]}
            ),
            "a real tensor tagged complex",
            "is stored as .* not as",
        ),
        (
            lambda d: d[content]["models"]["0"]["state"].pop("0.weight"),
            "a tensor no longer referred to",
            "never refers to",
        ),
    ]
    change, what, expect = case.rng.choice(choices)
    case.forge(change, what, expect)


def forged_tensors(case: Case) -> None:
    header, data = read_tensor_file(case.tensors)
    steps = sorted(name for name in header if name.endswith("['step']"))
    name = case.rng.choice(steps)
    kind = case.rng.choice(["int32", "negative", "fraction", "nan", "drop", "extra", "rename"])
    entry = header[name]
    begin, end = entry["data_offsets"]
    if kind == "int32":  # the same bytes, read as another number
        entry["dtype"] = "I32"
        expect = r"\['step'\] is a torch.int32 tensor"
    elif kind in ("negative", "fraction", "nan"):
        value = {"negative": -1.0, "fraction": 2.5, "nan": float("nan")}[kind]
        data = data[:begin] + struct.pack("<f", value) + data[end:]
        expect = r"\['step'\]=(-1.0|2.5|nan); expected a whole number >= 0"
    elif kind == "drop":  # its bytes stay: the layout no longer covers the data
        header.pop(name)
        expect = "which the tensor file lacks|is not a valid safetensors file"
    elif kind == "extra":
        size = len(data)
        header["stray"] = {"dtype": "F32", "shape": [1], "data_offsets": [size, size + 4]}
        data += struct.pack("<f", 1.0)
        expect = r"never refers to: \['stray'\]"
    else:
        header["renamed"] = header.pop(name)
        expect = "which the tensor file lacks"
    write_tensor_file(case.checkpoint, header, data)
    case.description, case.expect = f"forged tensor file: {kind} ({name})", expect


DAMAGES: list[Callable[[Case], None]] = [
    flip_bits,
    truncate,
    append,
    overwrite,
    delete,
    empty,
    link_dev_zero,
    link_to_copy,
    fifo,
    sparse,
    directory,
    pickled,
    from_previous,
    whole_directory,
    forged_document,
    forged_content_key,
    forged_json,
    forged_structure,
    forged_tensors,
]


# ---------------------------------------------------------------------- one case


class Hang(Exception):
    """A case took longer than TIMEOUT_S."""


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def listing(path: Path) -> dict[str, tuple[int, int, int]]:
    """What is on disk (without following links or reading anything)."""
    if not os.path.lexists(path):
        return {}
    entries = [path] + (sorted(path.iterdir()) if path.is_dir() and not path.is_symlink() else [])
    return {
        str(p): (s.st_mode, s.st_size, s.st_mtime_ns)
        for p, s in ((p, os.lstat(p)) for p in entries)
    }


@dataclass
class Outcome:
    description: str
    refused: bool = False
    fell_back: bool = False
    repaired: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def silent(self) -> bool:
        return bool(self.problems)


def run_case(run: Run, number: int, seed: int, workspace: Path) -> Outcome:
    rng = random.Random(f"{seed}-{number}")
    root = workspace / f"case-{number}"
    scratch = workspace / f"scratch-{number}"
    scratch.mkdir(parents=True)
    shutil.copytree(run.directory, root)
    manager = run.manager(root)
    case = Case(manager.path_for(2), manager.path_for(1), rng, scratch)
    damage = DAMAGES[number % len(DAMAGES)]
    damage(case)
    outcome = Outcome(f"{damage.__name__}: {case.description}")
    try:
        with deadline(TIMEOUT_S), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _check_refusal(case, outcome)
            _check_fallback(run, manager, outcome)
            _check_repair(run, manager, outcome)
    except Hang as error:
        outcome.problems.append(str(error))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return outcome


def _check_refusal(case: Case, outcome: Outcome) -> None:
    model, optimizer, scheduler = make_objects(seed=7)
    torch.manual_seed(4242)
    before, on_disk = snapshot(model, optimizer, scheduler), listing(case.checkpoint)
    try:
        load_checkpoint(case.checkpoint, model=model, optimizers=optimizer, schedulers=scheduler)
    except CorruptCheckpointError as error:
        message = str(error)
        if str(case.checkpoint) not in message:
            outcome.problems.append(f"the refusal does not name {case.checkpoint}: {message}")
        elif not re.search(case.expect, message):
            outcome.problems.append(f"the refusal does not match {case.expect!r}: {message}")
        elif not same(snapshot(model, optimizer, scheduler), before):
            outcome.problems.append("the refusal changed the objects or the generators")
        elif listing(case.checkpoint) != on_disk:
            outcome.problems.append("reading changed the files")
        else:
            outcome.refused = True
    except Exception as error:  # any other error is a finding
        outcome.problems.append(f"{type(error).__name__} instead of a refusal: {error}")
    else:
        outcome.problems.append("the damaged checkpoint was loaded")


def _check_fallback(run: Run, manager: CheckpointManager, outcome: Outcome) -> None:
    model, optimizer, scheduler = make_objects(seed=8)
    try:
        loaded = manager.load_latest(model=model, optimizers=optimizer, schedulers=scheduler)
    except Exception as error:
        outcome.problems.append(f"load_latest raised {type(error).__name__}: {error}")
        return
    if loaded is None or loaded.path != manager.path_for(1):
        outcome.problems.append(f"load_latest loaded {loaded and loaded.path}, not step 1")
    elif not same(snapshot(model, optimizer, scheduler), run.saved[1]):
        outcome.problems.append("the fallback did not restore step 1 exactly")
    else:
        outcome.fell_back = True


def _check_repair(run: Run, manager: CheckpointManager, outcome: Outcome) -> None:
    try:
        run.save(manager, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            newest = manager.latest()
        model, optimizer, scheduler = make_objects(seed=9)
        load_checkpoint(
            manager.path_for(2), model=model, optimizers=optimizer, schedulers=scheduler
        )
    except Exception as error:
        outcome.problems.append(f"saving step 2 again: {type(error).__name__}: {error}")
        return
    if newest != manager.path_for(2):
        outcome.problems.append(f"after saving step 2 again the latest is {newest}")
    elif not same(snapshot(model, optimizer, scheduler), run.saved[2]):
        outcome.problems.append("the checkpoint saved again does not hold step 2")
    else:
        outcome.repaired = True


# ---------------------------------------------------------------------- all cases


def fuzz(cases: int, seed: int, workspace: Path) -> tuple[Counter[str], list[Outcome]]:
    """Run ``cases`` cases; return the counts and the outcomes."""
    state = capture_rng_state()
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = build_run(workspace / "pristine")
        outcomes = [run_case(run, number, seed, workspace) for number in range(cases)]
    finally:
        torch.set_num_threads(torch_threads)
        restore_rng_state(state)
    counts: Counter[str] = Counter(cases=cases)
    for outcome in outcomes:
        counts["refused"] += outcome.refused
        counts["fell back"] += outcome.fell_back
        counts["repaired"] += outcome.repaired
        counts["silent"] += outcome.silent
    return counts, outcomes


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workspace:
        counts, outcomes = fuzz(options.cases, options.seed, Path(workspace))
    by_damage: Counter[str] = Counter(o.description.split(":")[0] for o in outcomes)
    sys.stdout.write(
        f"cases {counts['cases']}, refused {counts['refused']}, fell back "
        f"{counts['fell back']}, repaired {counts['repaired']}, silent "
        f"{counts['silent']}\n"
    )
    sys.stdout.write(
        "cases per damage: "
        + ", ".join(f"{name} {count}" for name, count in sorted(by_damage.items()))
        + "\n"
    )
    for outcome in outcomes:
        if outcome.silent:
            sys.stdout.write(f"SILENT {outcome.description}: {'; '.join(outcome.problems)}\n")
    return 1 if counts["silent"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
