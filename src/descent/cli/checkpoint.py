"""``descent checkpoint inspect|verify PATH``: what a descent checkpoint holds, and whether
it is intact and loads.

Both read the checkpoint with descent's own reader (:mod:`descent.checkpoint.format`):
the index's and the tensor file's SHA-256 checksums, sizes, the safetensors layout and
the structure of the content, without unpickling anything. ``verify`` also rebuilds
each optimizer whose class is descent's or torch.optim's over parameters shaped as the
model's (matched by the parameter names its state dict records) and loads its state
dict with that class's checks.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import FORMAT_VERSION, CheckpointError, read_checkpoint
from ..checkpoint.format import INDEX_NAME, read_index
from ..optim.registry import algorithms
from ._parser import add_command


def _count(value: int) -> str:
    return f"{value:,}"


def _names(items: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def describe_index(path: Path, document: Mapping[str, Any]) -> list[str]:
    """Lines about the index: format, writer, files, checksums, step and metrics."""
    written = document["written_by"]
    entry = document["tensor_file"]
    content = document["content"]
    index_bytes = (path / INDEX_NAME).stat().st_size
    metrics = (
        ", ".join(
            f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
            for key, value in content["metrics"].items()
        )
        or "none"
    )
    writer = (
        ", ".join(f"{key} {value}" for key, value in written.items())
        if isinstance(written, Mapping)
        else str(written)
    )
    return [
        f"checkpoint {path.resolve()}",
        f"  format        {document['format']} version {document['format_version']} "
        f"(this descent reads 1 to {FORMAT_VERSION})",
        f"  written by    {writer}",
        f"  index         {INDEX_NAME}, {_count(index_bytes)} bytes, sha256 {document['sha256']}",
        f"  tensors       {entry['name']}, {_count(entry['size'])} bytes, {entry['count']} "
        f"tensors, sha256 {entry['sha256']}",
        f"  step          {content['step']}",
        f"  metrics       {metrics}",
    ]


def _tensors(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, Mapping):
        return [t for value in tree.values() for t in _tensors(value)]
    if isinstance(tree, list | tuple):
        return [t for value in tree for t in _tensors(value)]
    return []


def _dtypes(tensors: Sequence[torch.Tensor]) -> str:
    return ", ".join(sorted({str(t.dtype).removeprefix("torch.") for t in tensors})) or "-"


def describe_content(content: Mapping[str, Any]) -> list[str]:
    """Lines about what the checkpoint holds: models, optimizers, schedulers, the
    trainer state, extra data and random generator states."""
    lines = ["  models" + ("" if content["models"] else "        none")]
    for name, model in content["models"].items():
        state = model["state"]
        tensors = [value for value in state.values() if isinstance(value, torch.Tensor)]
        lines.append(
            f"    {name}: {model['type']}, {len(state)} tensors, "
            f"{_count(sum(t.numel() for t in tensors))} values ({_dtypes(tensors)}); "
            f"{_names(list(state))}"
        )
    lines.append("  optimizers" + ("" if content["optimizers"] else "    none"))
    for name, optimizer in content["optimizers"].items():
        lines.append(f"    {name}: {optimizer['type']}, {_optimizer_summary(optimizer['state'])}")
    lines.append("  schedulers" + ("" if content["schedulers"] else "    none"))
    for name, scheduler in content["schedulers"].items():
        state = scheduler["state"]
        where = (
            f"last_epoch {state['last_epoch']}"
            if isinstance(state, Mapping) and "last_epoch" in state
            else f"{len(state)} entries"
        )
        lines.append(f"    {name}: {scheduler['type']}, {where}")
    for part in ("trainer_state", "extra"):
        value = content[part]
        shown = (
            "none"
            if value is None
            else f"keys {_names([str(k) for k in value])}"
            if isinstance(value, Mapping)
            else type(value).__name__
        )
        lines.append(f"  {part:<14}{shown}")
    rng = content["rng"]
    lines.append(
        f"  {'rng':<14}" + ("none" if not rng else f"{len(rng)} process(es): {', '.join(rng[0])}")
    )
    return lines


def _optimizer_summary(state_dict: Any) -> str:
    if not isinstance(state_dict, Mapping) or "param_groups" not in state_dict:
        return "no state dict"
    groups = state_dict["param_groups"]
    state = state_dict.get("state", {})
    lrs = sorted({group["lr"] for group in groups if isinstance(group.get("lr"), float)})
    keys = sorted({key for entry in state.values() for key in entry})
    steps = sorted({float(entry["step"]) for entry in state.values() if "step" in entry})
    parts = [
        f"{len(groups)} group(s), {sum(len(g['params']) for g in groups)} parameters",
        f"lr {', '.join(f'{lr:g}' for lr in lrs)}" if lrs else "",
        f"state for {len(state)} parameters ({', '.join(keys)})" if state else "no state",
        f"step {', '.join(f'{s:g}' for s in steps)}" if steps else "",
    ]
    return "; ".join(part for part in parts if part)


def _optimizer_class(name: str) -> Callable[..., torch.optim.Optimizer] | None:
    """descent's or torch.optim's optimizer class called ``name``, if there is one."""
    if name in algorithms():
        return algorithms()[name]
    found = getattr(torch.optim, name, None)
    if isinstance(found, type) and issubclass(found, torch.optim.Optimizer):
        return found
    return None


def check_optimizers(content: Mapping[str, Any]) -> list[tuple[str, bool | None, str]]:
    """For each optimizer: ``(name, loads, what)``; ``loads`` is True when its state dict
    loads into a fresh optimizer of its class over parameters shaped as the model's,
    False when that class refuses it (``what`` says why), None when it cannot be
    checked here (``what`` says why)."""
    parameters = {
        key: value
        for model in content["models"].values()
        for key, value in model["state"].items()
        if isinstance(value, torch.Tensor)
    }
    results: list[tuple[str, bool | None, str]] = []
    for name, entry in content["optimizers"].items():
        state_dict = entry["state"]
        cls = _optimizer_class(entry["type"])
        if cls is None:
            results.append(
                (name, None, f"{entry['type']} is neither descent's nor torch.optim's; not rebuilt")
            )
            continue
        groups = state_dict["param_groups"]
        names = [group.get("param_names") for group in groups]
        missing = [n for group in names for n in group or () if n not in parameters]
        if any(group is None for group in names) or missing:
            why = (
                f"parameters {missing[:3]} are not in the checkpoint's models"
                if missing
                else "its state dict names no parameters"
            )
            results.append((name, None, f"{entry['type']}: {why}; not rebuilt"))
            continue
        fresh = cls(
            [
                {"params": [parameters[n].clone().requires_grad_() for n in group]}
                for group in names
                if group is not None
            ]
        )
        try:
            fresh.load_state_dict(state_dict)
        except (ValueError, KeyError, TypeError, RuntimeError) as error:
            results.append((name, False, f"{entry['type']} refuses it: {error}"))
        else:
            results.append(
                (name, True, f"loads into a fresh {entry['type']} over the model's parameters")
            )
    return results


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def inspect(path: Path) -> int:
    """Print what the checkpoint at ``path`` holds; 0 if it reads, 1 if it does not."""
    try:
        document = read_index(path)
    except CheckpointError as error:
        print(f"checkpoint {path}: cannot read its index: {error}")
        return 1
    for line in describe_index(path, document):
        print(line)
    try:
        content = read_checkpoint(path)
    except CheckpointError as error:
        print(f"  NOT VERIFIED: {error}")
        return 1
    for line in describe_content(content):
        print(line)
    print(
        "  verified      checksums, sizes and structure ('descent checkpoint verify' also "
        "loads the optimizers)"
    )
    return 0


def verify(path: Path) -> int:
    """Check the checkpoint at ``path`` and print each check; 0 if all pass, else 1."""
    try:
        document = read_index(path)
        print(
            f"{INDEX_NAME}: sha256 {document['sha256']} matches its content; format "
            f"version {document['format_version']}"
        )
        content = read_checkpoint(path)
    except CheckpointError as error:
        print(f"FAILED: {error}")
        return 1
    entry = document["tensor_file"]
    print(
        f"{entry['name']}: {_count(entry['size'])} bytes, sha256 {_sha256(path / entry['name'])}"
        f" as recorded, {entry['count']} tensors, every one referred to"
    )
    print(
        f"structure: {len(content['models'])} model(s), {len(content['optimizers'])} "
        f"optimizer(s), {len(content['schedulers'])} scheduler(s), "
        f"{len(content['rng'] or [])} generator state(s): as a checkpoint's"
    )
    failed = False
    for name, loads, what in check_optimizers(content):
        mark = {True: "ok", False: "FAILED", None: "skipped"}[loads]
        print(f"optimizer {name}: {what}: {mark}")
        failed = failed or loads is False
    if failed:
        print(f"FAILED: {path.resolve()} is intact but an optimizer's state does not load")
        return 1
    print(f"verified: {path.resolve()}")
    return 0


_DESCRIPTION = """\
Both read the checkpoint directory with descent's own reader, which never unpickles:
the index's and the tensor file's SHA-256 checksums and sizes, the safetensors layout
and the structure of the content. 'inspect' prints the format version, the writer's
versions, the files and their hashes, the step and metrics, and what the models,
optimizers, schedulers, trainer state and generator states hold. 'verify' prints each
check and also rebuilds every optimizer whose class is descent's or torch.optim's over
parameters shaped as the model's (matched by the names its state dict records) and
loads its state dict with that class's checks.

Exit status: 0 when the checkpoint passes, 1 when it does not, 2 for bad arguments
(such as a path that does not exist)."""

_EXAMPLES = """\
  descent checkpoint inspect runs/ckpt/step-000000120
  descent checkpoint verify runs/ckpt/step-000000120 && echo intact
"""


def add_parser(commands: Any) -> None:
    """Declare ``descent checkpoint inspect`` and ``descent checkpoint verify``."""
    parser = add_command(
        commands,
        "checkpoint",
        run=run,
        summary="inspect or verify a descent checkpoint (format, hashes, content, loading)",
        description=_DESCRIPTION,
        examples=_EXAMPLES,
    )
    parser.add_argument(
        "action",
        choices=["inspect", "verify"],
        help="inspect: what it holds; verify: every check, and loading",
    )
    parser.add_argument("path", metavar="PATH", type=Path, help="the checkpoint directory")


def run(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Run ``descent checkpoint`` with parsed arguments."""
    if not args.path.exists():
        args.parser.error(f"argument PATH: {str(args.path)!r} does not exist")
    return inspect(args.path) if args.action == "inspect" else verify(args.path)


__all__ = [
    "add_parser",
    "check_optimizers",
    "describe_content",
    "describe_index",
    "inspect",
    "run",
    "verify",
]
