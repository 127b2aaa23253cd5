"""Crash-safe writing of a checkpoint directory: the commit is one rename.

A checkpoint directory holds data files and one *index* file (``checkpoint.json``)
that names them. Two cases:

* the directory does not exist yet: every file is written into a temporary
  sibling directory ``.<name>.tmp-<random>`` in the same parent, each file flushed
  and fsynced, the temporary directory fsynced, then renamed to ``<name>`` (the
  commit) and the parent directory fsynced;
* the directory already holds a checkpoint: every new data file is written to a
  temporary file, fsynced and renamed into place, also when a file of that name is
  already there (what is on disk is never trusted: a damaged file of the same name is
  replaced, not kept). The names are content-addressed by the caller, so a name the
  current index also uses receives the very bytes that index expects. Then the new
  index is written to a temporary file, fsynced, and renamed over the old index (the
  commit); then the files the new index does not name are removed.

Either way, a crash at any instant leaves the old checkpoint or the new one, never a
mixture: before the commit the old index still names old files, which are untouched;
after it, everything the new index names is already on disk. Leftover temporary
files and directories are ignored by readers (their names start with a dot).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path


def _fsync_directory(path: Path) -> None:
    """Make a rename or a file creation inside ``path`` durable (a no-op where unsupported)."""
    if os.name == "nt":  # Windows cannot open a directory for fsync
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_file(path: Path, data: bytes) -> None:
    """Write a new file and force its bytes to disk before returning."""
    with open(path, "xb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _commit(source: Path, target: Path) -> None:
    """The single rename that publishes a written checkpoint (a seam for crash tests)."""
    os.replace(source, target)


def _temporary_name(name: str, kind: str) -> str:
    return f".{name}.{kind}-{uuid.uuid4().hex[:12]}"


def write_directory(path: Path, files: Mapping[str, bytes], index_name: str, index: bytes) -> None:
    """Write ``files`` and then ``index`` into the directory ``path`` atomically.

    ``path`` must be absent or already hold ``index_name``; the caller checks that.
    A name in ``files`` may equal a data file the current index names only if the
    bytes are the same (the old checkpoint must survive until the commit), which
    content-addressed names ensure.
    """
    parent = path.parent
    if not path.exists():
        staging = parent / _temporary_name(path.name, "tmp")
        staging.mkdir()
        try:
            for name, data in files.items():
                _write_file(staging / name, data)
            _write_file(staging / index_name, index)
            _fsync_directory(staging)
            _commit(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_directory(parent)
        return

    created: list[Path] = []
    try:
        for name, data in files.items():
            temporary = path / _temporary_name(name, "tmp")
            created.append(temporary)
            _write_file(temporary, data)
            replaces = os.path.lexists(path / name)  # then the old index may name it: keep it
            os.replace(temporary, path / name)
            created.pop()
            if not replaces:
                created.append(path / name)
        temporary_index = path / _temporary_name(index_name, "tmp")
        created.append(temporary_index)
        _write_file(temporary_index, index)
        _fsync_directory(path)
        _commit(temporary_index, path / index_name)
    except BaseException:
        for leftover in created:
            leftover.unlink(missing_ok=True)
        raise
    _fsync_directory(path)
    suffixes = {Path(name).suffix for name in files}
    for entry in path.iterdir():
        stale = entry.name.startswith(".") or entry.suffix in suffixes
        if stale and entry.name not in files and entry.is_file():
            entry.unlink(missing_ok=True)
    _fsync_directory(path)


def remove_directory(path: Path) -> None:
    """Remove a checkpoint directory: first rename it out of sight (one step), then delete."""
    trash = path.parent / _temporary_name(path.name, "deleted")
    os.replace(path, trash)
    _fsync_directory(path.parent)
    shutil.rmtree(trash, ignore_errors=True)
