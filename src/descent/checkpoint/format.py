"""The on-disk format of a descent checkpoint, and its checks.

A checkpoint is a **directory** holding two files::

    step-000120/
        checkpoint.json                      everything that is not a tensor, and the checksums
        tensors-<16 hex>.safetensors         every tensor, in safetensors format

``checkpoint.json`` is a JSON object whose keys are, in this order:

``sha256``
    SHA-256 of the file's own bytes, computed with this value replaced by 64 zeros;
    so a change to any byte of the file is detected.
``format``, ``format_version``
    ``"descent.checkpoint"`` and :data:`FORMAT_VERSION`.
``written_by``
    the descent, torch and Python versions that wrote it.
``tensor_file``
    ``{"name", "size", "sha256", "count"}`` of the safetensors file; its name is the
    first 16 hex digits of its SHA-256 (so rewriting a checkpoint in place never
    overwrites a file the current index names).
``content``
    the checkpoint's state as a JSON tree; see below.

The content tree holds JSON values, and tagged objects for what JSON lacks:
``{"__tensor__": name}`` (a tensor in the safetensors file), ``{"__complex__": name}``
(a complex tensor, kept as its real view of (real, imaginary) pairs, which safetensors
can hold), ``{"__ndarray__": name}`` (a NumPy array kept as a tensor),
``{"__tuple__": [...]}``, ``{"__float__": "nan" | "inf" | "-inf"}`` and
``{"__dict__": [[key, value], ...]}`` (a dict whose keys are not all strings, such as
an optimizer's ``state``, or whose only key is a tag). Key order is kept.

Reading never unpickles anything: tensors come from safetensors, the rest from JSON.
Every failure raises a :class:`CheckpointError` that names the file and what is
wrong (missing, truncated, checksum mismatch, not JSON, a pickle file, a newer
format), and nothing is returned from a checkpoint that fails a check.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _atomic

FORMAT = "descent.checkpoint"
FORMAT_VERSION = 1
"""Version of the checkpoint layout; readers refuse versions newer than theirs."""

INDEX_NAME = "checkpoint.json"
_TENSOR_FILE = re.compile(r"tensors-[0-9a-f]{16}\.safetensors")
_ZERO_DIGEST = "0" * 64
_TAGS = frozenset({"__tensor__", "__complex__", "__ndarray__", "__tuple__", "__float__",
                   "__dict__"})
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and the reason."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint is missing, damaged, truncated or not in descent's format."""


class CheckpointMismatchError(CheckpointError):
    """A valid checkpoint does not fit the model, optimizers or schedulers it is loaded into."""


# ---------------------------------------------------------------------- tree encoding


def _encode(value: Any, where: str, tensors: dict[str, torch.Tensor]) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isfinite(number):
            return number
        return {"__float__": "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf")}
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, torch.Tensor | np.ndarray):
        return _encode_array(value, where, tensors)
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(item, f"{where}[{i}]", tensors)
                              for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(item, f"{where}[{i}]", tensors) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        keys = list(value)
        if all(isinstance(key, str) for key in keys) and not (len(keys) == 1 and keys[0] in _TAGS):
            return {key: _encode(item, f"{where}[{key!r}]", tensors) for key, item in value.items()}
        pairs = []
        for key, item in value.items():
            if key is not None and not isinstance(key, str | int | float | bool):
                raise TypeError(f"checkpoint: {where} has a key {key!r} of type "
                                f"{type(key).__name__}; dict keys must be str, int, float, "
                                "bool or None")
            pairs.append([_encode(key, where, tensors),
                          _encode(item, f"{where}[{key!r}]", tensors)])
        return {"__dict__": pairs}
    raise TypeError(f"checkpoint: {where} has type {type(value).__name__}; a checkpoint holds "
                    "only None, bool, int, float, str, lists, tuples, dicts, tensors and "
                    "NumPy arrays")


def _encode_array(value: torch.Tensor | np.ndarray, where: str,
                  tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    tag = "__tensor__"
    if isinstance(value, np.ndarray):
        tag = "__ndarray__"
        try:
            value = torch.from_numpy(np.ascontiguousarray(value))
        except TypeError as error:
            raise TypeError(f"checkpoint: {where} is a NumPy array of dtype {value.dtype}, "
                            "which torch cannot hold") from error
    if value.layout != torch.strided:
        raise TypeError(f"checkpoint: {where} is a {value.layout} tensor; only dense "
                        "(strided) tensors can be saved")
    value = value.detach().to("cpu")
    if value.is_complex():  # safetensors lacks complex128: keep (real, imag) pairs
        tag = "__complex__" if tag == "__tensor__" else tag
        value = torch.view_as_real(value.resolve_conj())
    name = where
    while name in tensors:
        name += "'"
    # clone: safetensors refuses tensors that share memory (tied weights)
    tensors[name] = value.contiguous().clone()
    return {tag: name}


def encode_tree(value: Any, root: str = "content") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a state tree into a JSON-able tree and the tensors it refers to by name.

    Raises ``TypeError`` naming the path of the first value that cannot be stored.
    """
    tensors: dict[str, torch.Tensor] = {}
    return _encode(value, root, tensors), tensors


def decode_tree(value: Any, tensors: Mapping[str, torch.Tensor], where: str = "content") -> Any:
    """Inverse of :func:`encode_tree`; ``ValueError`` if the tree is malformed."""
    if isinstance(value, list):
        return [decode_tree(item, tensors, where) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, body), = value.items()
        if tag in ("__tensor__", "__complex__", "__ndarray__"):
            if body not in tensors:
                raise ValueError(f"{where}: refers to tensor {body!r}, which the tensor file "
                                 "lacks")
            tensor = tensors[body]
            if tag == "__complex__":
                return torch.view_as_complex(tensor)
            return tensor.numpy() if tag == "__ndarray__" else tensor
        if tag == "__tuple__":
            return tuple(decode_tree(item, tensors, where) for item in body)
        if tag == "__float__":
            if body not in ("nan", "inf", "-inf"):
                raise ValueError(f"{where}: unknown float {body!r}")
            return float(body)
        if tag == "__dict__":
            return {decode_tree(key, tensors, where): decode_tree(item, tensors, where)
                    for key, item in body}
    return {key: decode_tree(item, tensors, where) for key, item in value.items()}


# ---------------------------------------------------------------------- writing


def _dump(document: Mapping[str, Any]) -> bytes:
    return (json.dumps(document, indent=1, ensure_ascii=True, allow_nan=False) + "\n").encode()


def write_checkpoint(path: str | Path, content: Mapping[str, Any]) -> Path:
    """Write ``content`` (a state tree) as a checkpoint directory at ``path``, atomically.

    ``path`` must not exist, or must already be a descent checkpoint (it is then
    replaced in one step); missing parent directories are created. Returns ``path``
    as a ``Path``.
    """
    from safetensors.torch import save as safetensors_bytes

    import descent

    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"checkpoint: {path} exists and is a file; a checkpoint is a "
                                  "directory, refusing to overwrite the file")
        if not (path / INDEX_NAME).exists() and any(path.iterdir()):
            raise FileExistsError(f"checkpoint: {path} exists and is not a descent checkpoint "
                                  f"(no {INDEX_NAME}); refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)

    tree, tensors = encode_tree(dict(content))
    data = safetensors_bytes(tensors)
    digest = hashlib.sha256(data).hexdigest()
    tensor_name = f"tensors-{digest[:16]}.safetensors"
    document = {
        "sha256": _ZERO_DIGEST,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "written_by": {"descent": descent.__version__, "torch": torch.__version__,
                       "python": platform.python_version()},
        "tensor_file": {"name": tensor_name, "size": len(data), "sha256": digest,
                        "count": len(tensors)},
        "content": tree,
    }
    draft = _dump(document)
    index = draft.replace(_ZERO_DIGEST.encode(), hashlib.sha256(draft).hexdigest().encode(), 1)
    _atomic.write_directory(path, {tensor_name: data}, INDEX_NAME, index)
    return path


# ---------------------------------------------------------------------- reading


def _looks_pickled(data: bytes) -> bool:
    return data.startswith(_PICKLE_MAGIC)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CorruptCheckpointError(f"checkpoint: {path} is missing") from None
    except OSError as error:
        raise CorruptCheckpointError(f"checkpoint: cannot read {path}: {error}") from error


def read_index(path: str | Path) -> dict[str, Any]:
    """Read and verify ``checkpoint.json`` of the checkpoint at ``path`` (not the tensors).

    Cheap: used to list checkpoints and their steps and metrics. Raises
    :class:`CorruptCheckpointError` on any problem.
    """
    path = Path(path)
    if not path.exists():
        raise CorruptCheckpointError(f"checkpoint: {path} does not exist")
    if path.is_file():
        head = path.read_bytes()[:4]
        if _looks_pickled(head):
            raise CorruptCheckpointError(
                f"checkpoint: {path} is a pickle file (torch.save format), not a descent "
                "checkpoint; descent never unpickles, since unpickling can run arbitrary code. "
                "If you trust it, read it with torch.load(..., weights_only=True) and write it "
                "again with descent.save_checkpoint")
        raise CorruptCheckpointError(f"checkpoint: {path} is a file; a descent checkpoint is a "
                                     f"directory holding {INDEX_NAME} and a .safetensors file")
    index_path = path / INDEX_NAME
    raw = _read_bytes(index_path)
    if _looks_pickled(raw):
        raise CorruptCheckpointError(f"checkpoint: {index_path} is a pickle file, not JSON; "
                                     "descent never unpickles")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptCheckpointError(f"checkpoint: {index_path} is not valid JSON ({error}); "
                                     "the file is truncated or corrupted") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CorruptCheckpointError(f"checkpoint: {index_path} is not a descent checkpoint "
                                     f"index (no \"format\": \"{FORMAT}\")")
    recorded = document.get("sha256")
    if not isinstance(recorded, str) or not re.fullmatch(r"[0-9a-f]{64}", recorded):
        raise CorruptCheckpointError(f"checkpoint: {index_path} has no valid sha256 field")
    draft = raw.replace(recorded.encode(), _ZERO_DIGEST.encode(), 1)
    if hashlib.sha256(draft).hexdigest() != recorded:
        raise CorruptCheckpointError(f"checkpoint: {index_path} fails its SHA-256 checksum; "
                                     "the file was modified or corrupted")
    version = document.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CorruptCheckpointError(f"checkpoint: {index_path} has format_version={version!r}; "
                                     f"this descent reads versions 1 to {FORMAT_VERSION} "
                                     "(a newer descent wrote it?)")
    tensor_file = document.get("tensor_file")
    if (not isinstance(tensor_file, dict) or not isinstance(tensor_file.get("name"), str)
            or not _TENSOR_FILE.fullmatch(tensor_file["name"])):
        raise CorruptCheckpointError(f"checkpoint: {index_path} has an invalid tensor_file entry")
    return document


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and verify a whole checkpoint; return its content tree with tensors in place.

    Checks the index (JSON, checksum, format version), then the tensor file (size,
    SHA-256, safetensors structure, every referenced tensor present). Tensors are
    returned on the CPU. Raises :class:`CorruptCheckpointError` naming the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    path = Path(path)
    document = read_index(path)
    entry = document["tensor_file"]
    tensor_path = path / entry["name"]
    data = _read_bytes(tensor_path)
    if len(data) != entry.get("size"):
        raise CorruptCheckpointError(
            f"checkpoint: {tensor_path} has {len(data)} bytes, the index records "
            f"{entry.get('size')}; the file is truncated or was replaced")
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise CorruptCheckpointError(f"checkpoint: {tensor_path} fails its SHA-256 checksum; "
                                     "the file is corrupted")
    try:
        tensors = safetensors_load(data)
    except SafetensorError as error:
        raise CorruptCheckpointError(f"checkpoint: {tensor_path} is not a valid safetensors "
                                     f"file: {error}") from None
    if len(tensors) != entry.get("count"):
        raise CorruptCheckpointError(f"checkpoint: {tensor_path} holds {len(tensors)} tensors, "
                                     f"the index records {entry.get('count')}")
    try:
        return decode_tree(document["content"], tensors)
    except (ValueError, TypeError, KeyError) as error:
        raise CorruptCheckpointError(f"checkpoint: {path / INDEX_NAME}: {error}") from None
