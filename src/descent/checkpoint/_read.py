"""Reading checkpoint files with bounded, verified input.

Nothing here trusts the file system or the bytes it returns:

* :func:`read_regular_file` refuses, before reading a byte, anything that is not a
  regular file (a symbolic link, even to a regular file, a FIFO, a device, a socket, a
  directory) and any file over its size limit. It opens the file with ``O_NOFOLLOW``
  and ``O_NONBLOCK`` (a link or a FIFO swapped in after the check can neither redirect
  nor block the read), checks through the open descriptor that it is the same regular
  file within the limit, and reads at most the limit.
* :func:`nesting_depth` measures how deep a JSON text nests, without parsing it
  (and so without recursion), in bounded memory.
* :func:`parse_json` parses JSON that has already been verified, with limits: the
  nesting depth, the digits of an integer, the length of a number, finite floats
  only, no ``NaN`` / ``Infinity`` constants and no repeated keys.

Every refusal is a :class:`~descent.checkpoint.CorruptCheckpointError` naming the
file and the fault.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import CorruptCheckpointError

_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_BINARY", 0)
)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_CHUNK = 1 << 20


def describe_kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words ("a FIFO (named pipe)", ...)."""
    for test, words in _KINDS:
        if test(mode):
            return words
    return "not a regular file"


def _refuse_irregular(path: Path, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kind = describe_kind(mode)
    if stat.S_ISLNK(mode):
        with contextlib.suppress(OSError):
            kind += f" to {os.readlink(path)!r}"
    raise CorruptCheckpointError(
        f"checkpoint: {path} is {kind}; a descent checkpoint holds "
        "only regular files, and links, devices and pipes are never "
        "read"
    )


def read_regular_file(
    path: Path, *, limit: int, exact: bool = False, limit_name: str = "the limit"
) -> bytes:
    """The bytes of the regular file ``path``, which must hold at most ``limit`` bytes.

    With ``exact`` it must hold exactly ``limit`` bytes (a size recorded elsewhere).
    ``limit_name`` says where the limit comes from, for the message.
    """
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        raise CorruptCheckpointError(f"checkpoint: {path} is missing") from None
    except OSError as error:
        raise CorruptCheckpointError(f"checkpoint: cannot read {path}: {error}") from None
    _refuse_irregular(path, before.st_mode)
    _check_size(path, before.st_size, limit, exact, limit_name)
    try:
        descriptor = os.open(path, _OPEN_FLAGS)
    except OSError as error:
        raise CorruptCheckpointError(
            f"checkpoint: cannot open {path}: {error} (it changed while being read?)"
        ) from None
    with os.fdopen(descriptor, "rb") as file:
        opened = os.fstat(file.fileno())
        if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            raise CorruptCheckpointError(f"checkpoint: {path} was replaced while being read")
        _refuse_irregular(path, opened.st_mode)
        _check_size(path, opened.st_size, limit, exact, limit_name)
        data = file.read(limit + 1)
    _check_size(path, len(data), limit, exact, limit_name)
    return data


def _check_size(path: Path, size: int, limit: int, exact: bool, limit_name: str) -> None:
    if exact and size != limit:
        raise CorruptCheckpointError(
            f"checkpoint: {path} has {size} bytes, {limit_name} "
            f"records {limit}; the file is truncated or was replaced"
        )
    if size > limit:
        raise CorruptCheckpointError(
            f"checkpoint: {path} has {size} bytes, more than "
            f"{limit_name} of {limit} bytes; it is not read"
        )


def read_head(path: Path, count: int) -> bytes:
    """At most the first ``count`` bytes of the regular file ``path`` (links and pipes refused)."""
    try:
        before = os.lstat(path)
    except OSError as error:
        raise CorruptCheckpointError(f"checkpoint: cannot read {path}: {error}") from None
    _refuse_irregular(path, before.st_mode)
    try:
        descriptor = os.open(path, _OPEN_FLAGS)
    except OSError as error:
        raise CorruptCheckpointError(f"checkpoint: cannot open {path}: {error}") from None
    with os.fdopen(descriptor, "rb") as file:
        _refuse_irregular(path, os.fstat(file.fileno()).st_mode)
        return file.read(count)


def nesting_depth(text: bytes) -> int:
    """How deep the arrays and objects of the JSON ``text`` nest (strings ignored).

    Linear time, no recursion, memory bounded by one chunk; a text that is not JSON
    gives a meaningless but finite number.
    """
    bare = np.frombuffer(_STRING.sub(b'""', text), dtype=np.uint8)
    depth = deepest = 0
    for start in range(0, bare.size, _CHUNK):
        chunk = bare[start : start + _CHUNK]
        change = ((chunk == ord("[")) | (chunk == ord("{"))).astype(np.int64) - (
            (chunk == ord("]")) | (chunk == ord("}"))
        ).astype(np.int64)
        running = np.cumsum(change) + depth
        deepest = max(deepest, int(running.max()))
        depth = int(running[-1])
    return deepest


class _Refusal(Exception):
    """Raised inside the JSON parser's hooks; turned into a CorruptCheckpointError."""


def parse_json(
    text: bytes, path: Path, *, max_depth: int, max_int_digits: int, max_number_chars: int
) -> Any:
    """Parse the verified JSON ``text`` of ``path`` within the given limits."""
    depth = nesting_depth(text)
    if depth > max_depth:
        raise CorruptCheckpointError(
            f"checkpoint: {path} nests {depth} levels deep, more than "
            f"the limit of {max_depth}; it is not parsed"
        )

    def integer(token: str) -> int:
        digits = len(token.lstrip("-"))
        if digits > max_int_digits:
            raise _Refusal(f"an integer of {digits} digits (the limit is {max_int_digits})")
        return int(token)

    def real(token: str) -> float:
        if len(token) > max_number_chars:
            raise _Refusal(
                f"a number written with {len(token)} characters (the limit is {max_number_chars})"
            )
        number = float(token)
        if not math.isfinite(number):
            raise _Refusal(
                f"the number {token} is out of range (descent writes finite numbers only)"
            )
        return number

    def constant(token: str) -> Any:
        raise _Refusal(f"the constant {token} (descent writes non-finite floats as tagged objects)")

    def mapping(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise _Refusal(f"the key {key!r} twice in one object")
            result[key] = value
        return result

    try:
        return json.loads(
            text.decode("utf-8"),
            parse_int=integer,
            parse_float=real,
            parse_constant=constant,
            object_pairs_hook=mapping,
        )
    except _Refusal as refusal:
        raise CorruptCheckpointError(f"checkpoint: {path} holds {refusal}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise CorruptCheckpointError(
            f"checkpoint: {path} is not valid JSON ({error}); the file is truncated or corrupted"
        ) from None
