"""The on-disk format of a descent checkpoint, and its checks.

A checkpoint is a **directory** holding two files::

    step-000120/
        checkpoint.json                      everything that is not a tensor, and the checksums
        tensors-<16 hex>.safetensors         every tensor, in safetensors format

``checkpoint.json`` (the *index*) is a JSON object whose keys are, in this order:

``sha256``
    SHA-256 of the file's own bytes, computed with this value replaced by 64 zeros;
    so a change to any byte of the file is detected. It is the first key, so a reader
    finds it in the first bytes and verifies the file before parsing it.
``format``, ``format_version``
    ``"descent.checkpoint"`` and :data:`FORMAT_VERSION`.
``written_by``
    the descent, torch and Python versions that wrote it.
``tensor_file``
    ``{"name", "size", "sha256", "count"}`` of the safetensors file; its name is the
    first 16 hex digits of its SHA-256 (so rewriting a checkpoint in place never
    overwrites a file the current index names with other bytes).
``content``
    the checkpoint's state as a JSON tree: exactly the keys ``step``, ``metrics``,
    ``models``, ``optimizers``, ``schedulers``, ``trainer_state``, ``extra`` and
    ``rng`` (see :func:`descent.checkpoint.save_checkpoint`).

The content tree holds JSON values, and tagged objects for what JSON lacks:
``{"__tensor__": name}`` (a tensor in the safetensors file), ``{"__complex__": name}``
(a complex tensor, kept as its real view of (real, imaginary) pairs, which safetensors
can hold), ``{"__ndarray__": name}`` (a NumPy array kept as a tensor),
``{"__tuple__": [...]}``, ``{"__float__": "nan" | "inf" | "-inf"}`` and
``{"__dict__": [[key, value], ...]}`` (a dict whose keys are not all strings, such as
an optimizer's ``state``, or whose only key is a tag). Key order is kept.

What a reader refuses, and why
------------------------------

Reading never unpickles anything: tensors come from safetensors, the rest from JSON.
A checkpoint is input from outside the program (a disk that filled up, a copy that
stopped half-way, a file put in its place), so every check below runs before the
part it protects, and every refusal is a :class:`CorruptCheckpointError` naming the
file and the fault; nothing is returned from, and nothing is loaded out of, a
checkpoint that fails one. The refusals, in the order they are made:

1. **Anything that is not a regular file**, before reading a byte: a symbolic link
   (descent never writes one; a link to ``/dev/zero`` would never end), a FIFO (it
   would block forever), a device, a socket, a directory. Files are opened so that
   neither a link nor a FIFO swapped in after the check takes effect.
2. **Oversized files**, before reading them: an index over :data:`MAX_INDEX_BYTES`;
   a tensor file whose size is not exactly the one its index records, or that is
   larger than this machine's memory. Reads stop at the limit.
3. **An index that fails its checksum**, verified on the raw bytes before any JSON is
   parsed (so damage cannot reach the parser).
4. **JSON beyond the limits**: nesting deeper than :data:`MAX_DEPTH` (measured without
   parsing), integers of more than :data:`MAX_INT_DIGITS` digits, numbers written with
   more than :data:`MAX_NUMBER_CHARS` characters, non-finite numbers, ``NaN`` /
   ``Infinity`` constants, a key repeated in one object. descent never writes any of
   these, so the limits reject only damage or forgery.
5. **A structure that is not a checkpoint's**: a missing or unknown key, a value of
   the wrong type, a format version newer than this reader's, a step label that is
   not a whole number >= 0, a tensor file whose size, checksum, safetensors layout or
   tensor count disagree with the index, a tensor referred to but absent (or present
   but never referred to), a malformed tag.
6. **State that cannot be right for any model**: an optimizer's ``step`` that is not a
   whole number >= 0 held as a Python number or a one-element float32/float64 tensor
   (torch and descent keep it so; an integer tensor there means the dtype was
   changed, and its bits would be read as another number), a state entry for a
   parameter no group lists, a scheduler's ``last_epoch`` that is not an integer
   >= -1, module metadata whose ``version`` is not an integer, malformed random
   generator states.

Checksums detect damage, not forgery: a file rewritten together with a matching
checksum passes the checksum, and is then held to every other check above.
Whether an intact checkpoint fits the model, optimizers and schedulers it is loaded
into is checked by :func:`descent.checkpoint.load_checkpoint`
(:class:`CheckpointMismatchError`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from . import _atomic, _read
from ._errors import CheckpointError, CheckpointMismatchError, CorruptCheckpointError
from .rng import check_rng_state

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "INDEX_NAME",
    "MAX_DEPTH",
    "MAX_INDEX_BYTES",
    "MAX_INT_DIGITS",
    "MAX_NUMBER_CHARS",
    "CheckpointError",
    "CheckpointMismatchError",
    "CorruptCheckpointError",
    "decode_tree",
    "encode_tree",
    "read_checkpoint",
    "read_index",
    "write_checkpoint",
]

FORMAT = "descent.checkpoint"
FORMAT_VERSION = 1
"""Version of the checkpoint layout; readers refuse versions newer than theirs."""

INDEX_NAME = "checkpoint.json"
MAX_INDEX_BYTES = 64 * 2**20
"""The largest index a reader reads, and a writer writes (64 MiB): put big arrays in tensors."""
MAX_DEPTH = 256
"""How deep the index's JSON may nest (a tuple or a non-string-keyed dict adds levels)."""
MAX_INT_DIGITS = 4300
"""The most digits an integer in the index may have (Python's own default limit)."""
MAX_NUMBER_CHARS = 100
"""The most characters a non-integer number in the index may be written with."""

_TENSOR_FILE = re.compile(r"tensors-[0-9a-f]{16}\.safetensors")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_HEADER = re.compile(rb'\A\{\s*"sha256"\s*:\s*"([0-9a-f]{64})"')
_ZERO_DIGEST = "0" * 64
_TAGS = frozenset(
    {"__tensor__", "__complex__", "__ndarray__", "__tuple__", "__float__", "__dict__"}
)
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")
_DOCUMENT_KEYS = ("sha256", "format", "format_version", "written_by", "tensor_file", "content")
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
_STEP_DTYPES = (torch.float32, torch.float64)


def _check_integer(value: int, where: str) -> int:
    if value.bit_length() > 3 * MAX_INT_DIGITS and abs(value) >= 10**MAX_INT_DIGITS:
        raise ValueError(
            f"checkpoint: {where} is an integer of more than {MAX_INT_DIGITS} "
            "digits, more than a checkpoint index holds; store it as a string"
        )
    return value


# ---------------------------------------------------------------------- tree encoding


def _encode(value: Any, where: str, tensors: dict[str, torch.Tensor]) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return _check_integer(int(value), where)
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
        return {
            "__tuple__": [_encode(item, f"{where}[{i}]", tensors) for i, item in enumerate(value)]
        }
    if isinstance(value, list):
        return [_encode(item, f"{where}[{i}]", tensors) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        keys = list(value)
        if all(isinstance(key, str) for key in keys) and not (len(keys) == 1 and keys[0] in _TAGS):
            return {key: _encode(item, f"{where}[{key!r}]", tensors) for key, item in value.items()}
        pairs = []
        for key, item in value.items():
            if key is not None and not isinstance(key, str | int | float | bool):
                raise TypeError(
                    f"checkpoint: {where} has a key {key!r} of type "
                    f"{type(key).__name__}; dict keys must be str, int, float, "
                    "bool or None"
                )
            pairs.append(
                [_encode(key, where, tensors), _encode(item, f"{where}[{key!r}]", tensors)]
            )
        return {"__dict__": pairs}
    raise TypeError(
        f"checkpoint: {where} has type {type(value).__name__}; a checkpoint holds "
        "only None, bool, int, float, str, lists, tuples, dicts, tensors and "
        "NumPy arrays"
    )


def _encode_array(
    value: torch.Tensor | np.ndarray, where: str, tensors: dict[str, torch.Tensor]
) -> dict[str, str]:
    tag = "__tensor__"
    if isinstance(value, np.ndarray):
        tag = "__ndarray__"
        try:
            value = torch.from_numpy(np.ascontiguousarray(value))
        except TypeError as error:
            raise TypeError(
                f"checkpoint: {where} is a NumPy array of dtype {value.dtype}, "
                "which torch cannot hold"
            ) from error
    if value.layout != torch.strided:
        raise TypeError(
            f"checkpoint: {where} is a {value.layout} tensor; only dense "
            "(strided) tensors can be saved"
        )
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


def decode_tree(
    value: Any,
    tensors: Mapping[str, torch.Tensor],
    where: str = "content",
    used: set[str] | None = None,
) -> Any:
    """Inverse of :func:`encode_tree`; ``ValueError`` naming the place if the tree is malformed.

    The names of the tensors referred to are added to ``used`` when given.
    """
    if isinstance(value, list):
        return [decode_tree(item, tensors, f"{where}[{i}]", used) for i, item in enumerate(value)]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((tag, body),) = value.items()
        if tag in ("__tensor__", "__complex__", "__ndarray__"):
            return _decode_array(tag, body, tensors, where, used)
        if tag == "__tuple__":
            if not isinstance(body, list):
                raise ValueError(f"{where}: a tuple tag holds a {type(body).__name__}, not a list")
            return tuple(
                decode_tree(item, tensors, f"{where}[{i}]", used) for i, item in enumerate(body)
            )
        if tag == "__float__":
            if body not in ("nan", "inf", "-inf"):
                raise ValueError(f"{where}: unknown float {body!r}")
            return float(body)
        if tag == "__dict__":
            if not isinstance(body, list) or not all(
                isinstance(pair, list) and len(pair) == 2 for pair in body
            ):
                raise ValueError(f"{where}: a dict tag must hold a list of [key, value] pairs")
            result = {}
            for key, item in body:
                if isinstance(key, list | dict):
                    raise ValueError(f"{where}: a dict key is a {type(key).__name__}")
                if key in result:
                    raise ValueError(f"{where}: the key {key!r} appears twice")
                result[key] = decode_tree(item, tensors, f"{where}[{key!r}]", used)
            return result
    return {
        key: decode_tree(item, tensors, f"{where}[{key!r}]", used) for key, item in value.items()
    }


def _decode_array(
    tag: str, body: Any, tensors: Mapping[str, torch.Tensor], where: str, used: set[str] | None
) -> Any:
    if not isinstance(body, str) or body not in tensors:
        raise ValueError(f"{where}: refers to tensor {body!r}, which the tensor file lacks")
    if used is not None:
        used.add(body)
    tensor = tensors[body]
    if tag == "__complex__":
        if not (
            tensor.dtype in (torch.float16, torch.float32, torch.float64)
            and tensor.dim() >= 1
            and tensor.shape[-1] == 2
        ):
            raise ValueError(
                f"{where}: the complex tensor {body!r} is stored as "
                f"{tensor.dtype} of shape {tuple(tensor.shape)}, not as "
                "(real, imaginary) float pairs"
            )
        return torch.view_as_complex(tensor)
    if tag == "__ndarray__":
        try:
            return tensor.numpy()
        except TypeError as error:
            raise ValueError(
                f"{where}: the array {body!r} has dtype {tensor.dtype}, which "
                f"NumPy cannot hold ({error})"
            ) from None
    return tensor


# ---------------------------------------------------------------------- writing


def _dump(document: Mapping[str, Any]) -> bytes:
    return (json.dumps(document, indent=1, ensure_ascii=True, allow_nan=False) + "\n").encode()


def _check_writable(path: Path) -> None:
    """Refuse to write a checkpoint over anything that is not one."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        kind = "a file" if stat.S_ISREG(info.st_mode) else _read.describe_kind(info.st_mode)
        raise FileExistsError(
            f"checkpoint: {path} exists and is {kind}; a checkpoint is a "
            "directory, refusing to overwrite it"
        )
    index = path / INDEX_NAME
    if os.path.lexists(index):
        mode = os.lstat(index).st_mode
        if not stat.S_ISREG(mode):
            raise FileExistsError(
                f"checkpoint: {index} is {_read.describe_kind(mode)}, not a "
                "checkpoint index; refusing to overwrite it"
            )
    elif any(path.iterdir()):
        raise FileExistsError(
            f"checkpoint: {path} exists and is not a descent checkpoint "
            f"(no {INDEX_NAME}); refusing to overwrite it"
        )


def write_checkpoint(path: str | Path, content: Mapping[str, Any]) -> Path:
    """Write ``content`` (a state tree) as a checkpoint directory at ``path``, atomically.

    ``path`` must not exist, or must already be a descent checkpoint (it is then
    replaced in one step, every file written afresh: nothing already on disk is
    trusted); missing parent directories are created. Returns ``path`` as a ``Path``.
    Raises ``ValueError`` (nothing written) if the index would exceed the reading
    limits (:data:`MAX_INDEX_BYTES`, :data:`MAX_DEPTH`).
    """
    from safetensors.torch import save as safetensors_bytes

    import descent

    path = Path(path)
    _check_writable(path)
    tree, tensors = encode_tree(dict(content))
    data = safetensors_bytes(tensors)
    digest = hashlib.sha256(data).hexdigest()
    tensor_name = f"tensors-{digest[:16]}.safetensors"
    document = {
        "sha256": _ZERO_DIGEST,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "written_by": {
            "descent": descent.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "tensor_file": {
            "name": tensor_name,
            "size": len(data),
            "sha256": digest,
            "count": len(tensors),
        },
        "content": tree,
    }
    draft = _dump(document)
    if len(draft) > MAX_INDEX_BYTES:
        raise ValueError(
            f"checkpoint: the index of {path} would hold {len(draft)} bytes, more "
            f"than MAX_INDEX_BYTES={MAX_INDEX_BYTES}; keep large data as tensors or "
            "NumPy arrays (they go to the tensor file)"
        )
    depth = _read.nesting_depth(draft)
    if depth > MAX_DEPTH:
        raise ValueError(
            f"checkpoint: the index of {path} would nest {depth} levels deep, "
            f"more than MAX_DEPTH={MAX_DEPTH}; flatten the trainer_state or extra"
        )
    index = draft.replace(_ZERO_DIGEST.encode(), hashlib.sha256(draft).hexdigest().encode(), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic.write_directory(path, {tensor_name: data}, INDEX_NAME, index)
    return path


# ---------------------------------------------------------------------- reading


def _looks_pickled(data: bytes) -> bool:
    return data.startswith(_PICKLE_MAGIC)


def _corrupt(where: Path, message: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"checkpoint: {where}: {message}")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_index(path: str | Path) -> dict[str, Any]:
    """Read and verify ``checkpoint.json`` of the checkpoint at ``path`` (not the tensors).

    Cheap: used to list checkpoints and their steps and metrics. Raises
    :class:`CorruptCheckpointError` on any problem (see the module's list of refusals).
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise CorruptCheckpointError(f"checkpoint: {path} does not exist") from None
    except OSError as error:
        raise CorruptCheckpointError(f"checkpoint: cannot read {path}: {error}") from None
    if stat.S_ISREG(info.st_mode):
        if _looks_pickled(_read.read_head(path, 4)):
            raise CorruptCheckpointError(
                f"checkpoint: {path} is a pickle file (torch.save format), not a descent "
                "checkpoint; descent never unpickles, since unpickling can run arbitrary code. "
                "If you trust it, read it with torch.load(..., weights_only=True) and write it "
                "again with descent.save_checkpoint"
            )
        raise CorruptCheckpointError(
            f"checkpoint: {path} is a file; a descent checkpoint is a "
            f"directory holding {INDEX_NAME} and a .safetensors file"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise CorruptCheckpointError(
            f"checkpoint: {path} is {_read.describe_kind(info.st_mode)}"
            "; a descent checkpoint is a directory"
        )
    index_path = path / INDEX_NAME
    raw = _read.read_regular_file(
        index_path, limit=MAX_INDEX_BYTES, limit_name="the index limit (MAX_INDEX_BYTES)"
    )
    if _looks_pickled(raw):
        raise CorruptCheckpointError(
            f"checkpoint: {index_path} is a pickle file, not JSON; descent never unpickles"
        )
    header = _HEADER.match(raw)
    if header is None:
        raise CorruptCheckpointError(
            f'checkpoint: {index_path} does not begin with its "sha256" field: it is not a '
            "descent checkpoint index, or its first bytes are damaged"
        )
    recorded = header.group(1).decode()
    draft = raw[: header.start(1)] + _ZERO_DIGEST.encode() + raw[header.end(1) :]
    if hashlib.sha256(draft).hexdigest() != recorded:
        raise CorruptCheckpointError(
            f"checkpoint: {index_path} fails its SHA-256 checksum; "
            "the file is truncated, modified or corrupted"
        )
    document = _read.parse_json(
        raw,
        index_path,
        max_depth=MAX_DEPTH,
        max_int_digits=MAX_INT_DIGITS,
        max_number_chars=MAX_NUMBER_CHARS,
    )
    _check_document(index_path, document)
    return cast(dict[str, Any], document)  # checked: an object with the index's keys


def _check_document(index_path: Path, document: Any) -> None:
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CorruptCheckpointError(
            f'checkpoint: {index_path} is not a descent checkpoint index (no "format": "{FORMAT}")'
        )
    if list(document) != list(_DOCUMENT_KEYS):
        raise _corrupt(
            index_path, f"has the keys {list(document)}; expected {list(_DOCUMENT_KEYS)}"
        )
    version = document["format_version"]
    if (
        isinstance(version, bool)
        or not isinstance(version, int)
        or not (1 <= version <= FORMAT_VERSION)
    ):
        raise CorruptCheckpointError(
            f"checkpoint: {index_path} has format_version={version!r}; "
            f"this descent reads versions 1 to {FORMAT_VERSION} "
            "(a newer descent wrote it?)"
        )
    entry = document["tensor_file"]
    if not (
        isinstance(entry, dict)
        and set(entry) == {"name", "size", "sha256", "count"}
        and isinstance(entry["name"], str)
        and _TENSOR_FILE.fullmatch(entry["name"])
        and _is_count(entry["size"])
        and _is_count(entry["count"])
        and isinstance(entry["sha256"], str)
        and _DIGEST.fullmatch(entry["sha256"])
    ):
        raise _corrupt(
            index_path,
            f"tensor_file={entry!r} is invalid; expected name "
            "'tensors-<16 hex>.safetensors', size and count integers "
            ">= 0 and a 64-hex sha256",
        )
    if entry["name"] != f"tensors-{entry['sha256'][:16]}.safetensors":
        raise _corrupt(
            index_path,
            f"tensor_file names {entry['name']!r}, which is not the "
            f"name of its recorded sha256 {entry['sha256'][:16]}...",
        )
    content = document["content"]
    if not isinstance(content, dict) or list(content) != list(CONTENT_KEYS):
        found = list(content) if isinstance(content, dict) else type(content).__name__
        raise _corrupt(index_path, f"content has {found!r}; expected the keys {list(CONTENT_KEYS)}")
    step = content["step"]
    if step is not None and not _is_count(step):
        raise _corrupt(index_path, f"the step label is {step!r}; expected an integer >= 0 or null")
    metrics = content["metrics"]
    if not isinstance(metrics, dict):
        raise _corrupt(index_path, f"metrics has type {type(metrics).__name__}; expected an object")


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and verify a whole checkpoint; return its content tree with tensors in place.

    Checks the index (see :func:`read_index`), then the tensor file (regular, the
    recorded size, SHA-256, safetensors structure, every tensor referred to and no
    other), then the structure of the content (see the module's list of refusals).
    Tensors are returned on the CPU. Raises :class:`CorruptCheckpointError` naming the
    file and the fault.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    path = Path(path)
    document = read_index(path)
    index_path = path / INDEX_NAME
    entry = document["tensor_file"]
    tensor_path = path / entry["name"]
    memory = _memory_bytes()
    if memory is not None and entry["size"] > memory:
        raise _corrupt(
            index_path,
            f"records a tensor file of {entry['size']} bytes, more "
            f"than this machine's memory ({memory} bytes)",
        )
    data = _read.read_regular_file(
        tensor_path, limit=entry["size"], exact=True, limit_name="the index"
    )
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CorruptCheckpointError(
            f"checkpoint: {tensor_path} fails its SHA-256 checksum; the file is corrupted"
        )
    try:
        tensors = safetensors_load(data)
    except (SafetensorError, ValueError, TypeError, KeyError, RuntimeError, OverflowError) as error:
        raise CorruptCheckpointError(
            f"checkpoint: {tensor_path} is not a valid safetensors file: {error}"
        ) from None
    if len(tensors) != entry["count"]:
        raise CorruptCheckpointError(
            f"checkpoint: {tensor_path} holds {len(tensors)} tensors, "
            f"the index records {entry['count']}"
        )
    used: set[str] = set()
    try:
        content = decode_tree(document["content"], tensors, used=used)
    except (ValueError, TypeError, RuntimeError) as error:
        raise _corrupt(index_path, str(error)) from None
    _check_content(path, content)
    unused = sorted(set(tensors) - used)
    if unused:
        raise CorruptCheckpointError(
            f"checkpoint: {tensor_path} holds tensors the index never refers to: {unused[:5]}"
        )
    return cast(dict[str, Any], content)  # checked by _check_content


# ---------------------------------------------------------------------- content checks


def _require(condition: bool, path: Path, message: str) -> None:
    if not condition:
        raise CorruptCheckpointError(f"checkpoint {path}: {message}")


def _named_entries(
    path: Path, content: Mapping[str, Any], part: str, keys: frozenset[str]
) -> dict[str, Mapping[str, Any]]:
    entries = content[part]
    _require(
        isinstance(entries, dict) and all(isinstance(k, str) for k in entries),
        path,
        f"{part} is a {type(entries).__name__}; expected an object of named entries",
    )
    for name, entry in entries.items():
        _require(
            isinstance(entry, dict) and set(entry) == keys,
            path,
            f"{part}[{name!r}] has "
            f"{sorted(entry) if isinstance(entry, dict) else type(entry).__name__}; "
            f"expected the keys {sorted(keys)}",
        )
        _require(
            isinstance(entry["type"], str), path, f"{part}[{name!r}]['type'] is not a class name"
        )
    return cast(dict[str, Mapping[str, Any]], entries)  # checked above


def _check_content(path: Path, content: Mapping[str, Any]) -> None:
    """Structural checks that hold for every checkpoint, whatever it is loaded into."""
    for name, saved in _named_entries(
        path, content, "models", frozenset({"type", "state", "metadata"})
    ).items():
        where = f"models[{name!r}]"
        state, metadata = saved["state"], saved["metadata"]
        _require(
            isinstance(state, dict) and all(isinstance(k, str) for k in state),
            path,
            f"{where}['state'] is not an object of named tensors",
        )
        _require(isinstance(metadata, dict), path, f"{where}['metadata'] is not an object")
        for prefix, entry in metadata.items():
            version = entry.get("version") if isinstance(entry, dict) else None
            _require(
                isinstance(entry, dict)
                and (
                    version is None or (isinstance(version, int) and not isinstance(version, bool))
                ),
                path,
                f"{where}['metadata'][{prefix!r}]={entry!r}; expected an object whose "
                "'version' is an integer",
            )
    for name, saved in _named_entries(
        path, content, "optimizers", frozenset({"type", "state"})
    ).items():
        _check_optimizer_state(path, f"optimizers[{name!r}]['state']", saved["state"])
    for name, saved in _named_entries(
        path, content, "schedulers", frozenset({"type", "state"})
    ).items():
        state = saved["state"]
        if isinstance(state, dict) and "last_epoch" in state:
            last_epoch = state["last_epoch"]
            _require(
                isinstance(last_epoch, int)
                and not isinstance(last_epoch, bool)
                and last_epoch >= -1,
                path,
                f"schedulers[{name!r}]['state']['last_epoch']={last_epoch!r}; expected an "
                "integer >= -1",
            )
    rng = content["rng"]
    _require(
        rng is None or (isinstance(rng, list) and bool(rng)),
        path,
        f"rng is a {type(rng).__name__}; expected null or a list of per-rank states",
    )
    for rank, state in enumerate(rng or []):
        try:
            check_rng_state(state)
        except ValueError as error:
            raise CorruptCheckpointError(f"checkpoint {path}: rng[{rank}]: {error}") from None


def _check_optimizer_state(path: Path, where: str, state_dict: Any) -> None:
    _require(
        isinstance(state_dict, dict) and {"state", "param_groups"} <= set(state_dict),
        path,
        f"{where} is not an optimizer state dict (it needs 'state' and 'param_groups')",
    )
    groups, state = state_dict["param_groups"], state_dict["state"]
    _require(
        isinstance(groups, list)
        and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups),
        path,
        f"{where}['param_groups'] is not a list of groups with a 'params' list",
    )
    _require(
        isinstance(state, dict),
        path,
        f"{where}['state'] is a {type(state).__name__}; expected an object",
    )
    listed = {
        param_id
        for group in groups
        for param_id in group["params"]
        if isinstance(param_id, int | str)
    }
    for param_id, entry in state.items():
        label = f"{where}['state'][{param_id!r}]"
        _require(
            param_id in listed,
            path,
            f"{label} is the state of a parameter that no param group lists",
        )
        _require(
            isinstance(entry, dict),
            path,
            f"{label} is a {type(entry).__name__}; expected an object",
        )
        if "step" in entry:
            _check_step(path, f"{label}['step']", entry["step"])


def _check_step(path: Path, where: str, step: Any) -> None:
    if isinstance(step, torch.Tensor):
        _require(
            step.numel() == 1 and step.dtype in _STEP_DTYPES,
            path,
            f"{where} is a {step.dtype} tensor of shape {tuple(step.shape)}; torch and "
            "descent keep a step count as a one-element float32 or float64 tensor (a "
            "changed dtype reads its bits as another number)",
        )
        number = step.item()
    else:
        _require(
            isinstance(step, int | float) and not isinstance(step, bool),
            path,
            f"{where}={step!r}; expected a number or a one-element float tensor",
        )
        number = step
    _require(
        math.isfinite(number) and number >= 0 and number == int(number),
        path,
        f"{where}={number!r}; expected a whole number >= 0",
    )
