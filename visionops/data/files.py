"""File primitives the data layer relies on: atomic writes, atomic directories, links, hashes.

Every dataset VisionOps writes is either complete or absent: files are written beside their target
and renamed into place, directories are built in a hidden sibling and renamed when whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

LinkMode = Literal["hardlink", "symlink", "copy"]


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        Path(tmp).chmod(0o644)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A hidden sibling of `target` to build into; on success it replaces `target` whole.

    On any exception the staging directory is removed and `target` is left as it was. An existing
    `target` is moved aside first and deleted only after the new one is in place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_dir(source: Path, target: Path) -> None:
    """Rename directory `source` onto `target`, replacing an existing `target`."""
    old: Path | None = None
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        old.rmdir()
        target.rename(old)
    try:
        source.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def link_file(source: Path | str, target: Path | str) -> LinkMode:
    """Make `target` show `source`'s bytes without copying where possible.

    A hard link first (same filesystem), then an absolute symbolic link, then a copy.
    """
    try:
        os.link(source, target)
        return "hardlink"
    except OSError:
        pass
    try:
        Path(target).symlink_to(Path(source).resolve())
        return "symlink"
    except OSError:
        shutil.copyfile(source, target)
        return "copy"


def sha256_file(path: Path | str, chunk: int = 1 << 23) -> str:
    """Hex SHA-256 of a file's content, read with raw system calls.

    For the many small files of a dataset this costs half of what a buffered file object does.
    """
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        while block := os.read(fd, chunk):
            digest.update(block)
    finally:
        os.close(fd)
    return digest.hexdigest()


def dir_is_empty(path: Path) -> bool:
    """True for a directory without entries (and for a path that does not exist)."""
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except FileNotFoundError:
        return True


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object stored at `path`, or None if it is absent, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
