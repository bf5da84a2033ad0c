"""Content hashes of many files, remembered across runs by file identity (as git's index does).

Converting the same raw dataset again (another output folder, extra drift data merged in, a
re-run pipeline) would otherwise read every image again. A file whose device, inode, size and
modification time are unchanged keeps its recorded SHA-256; anything else is read and hashed.
The record is an SQLite file under the data dir; if it cannot be used, every file is hashed.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from visionops.config import get_settings
from visionops.data.files import sha256_file
from visionops.errors import DataError

log = logging.getLogger(__name__)


def default_digest_cache() -> Path:
    return get_settings().data_dir / "cache" / "digests.sqlite3"


def file_digests(
    paths: Sequence[str],
    *,
    cache: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Hex SHA-256 of each file in `paths`, reusing digests recorded in `cache` when valid.

    Raises DataError naming the first file that is missing or unreadable.
    """
    known = _load(cache, paths) if cache is not None else {}
    digests: list[str] = []
    fresh: list[tuple[str, int, int, int, int, str]] = []
    for done, path in enumerate(paths, 1):
        try:
            st = os.stat(path)  # noqa: PTH116 - strings in the hot loop
            identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            recorded = known.get(path)
            if recorded is not None and recorded[0] == identity:
                digests.append(recorded[1])
            else:
                digest = sha256_file(path)
                digests.append(digest)
                fresh.append((path, *identity, digest))
        except FileNotFoundError as error:
            raise DataError(f"image file missing: {path}") from error
        except OSError as error:
            raise DataError(f"cannot read {path}: {error}") from error
        if progress is not None and (done % 512 == 0 or done == len(paths)):
            progress(done)
    if cache is not None and fresh:
        _store(cache, fresh)
    return digests


def _connect(cache: Path) -> sqlite3.Connection:
    cache.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(cache, timeout=30)
    connection.execute(
        "CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER,"
        " size INTEGER, mtime_ns INTEGER, digest TEXT) WITHOUT ROWID"
    )
    return connection


def _load(cache: Path, paths: Sequence[str]) -> dict[str, tuple[tuple[int, int, int, int], str]]:
    """Recorded digests for `paths`: one range scan per folder, not one lookup per file."""
    folders = sorted({os.path.dirname(p) for p in paths})  # noqa: PTH120
    wanted = set(paths)
    known: dict[str, tuple[tuple[int, int, int, int], str]] = {}
    try:
        connection = _connect(cache)
        try:
            for folder in folders:
                # every path under folder/ sorts between "folder/" and "folder0" ('0' follows '/')
                rows = connection.execute(
                    "SELECT path, dev, ino, size, mtime_ns, digest FROM digests"
                    " WHERE path > ? AND path < ?",
                    (folder + "/", folder + "0"),
                )
                for path, dev, ino, size, mtime_ns, digest in rows:
                    if path in wanted:
                        known[path] = ((dev, ino, size, mtime_ns), digest)
        finally:
            connection.close()
    except (sqlite3.Error, OSError) as error:  # a read-only data dir: hash without a cache
        log.warning("digest cache %s unusable (%s); hashing every file", cache, error)
        return {}
    return known


def _store(cache: Path, rows: list[tuple[str, int, int, int, int, str]]) -> None:
    try:
        connection = _connect(cache)
        try:
            with connection:
                connection.executemany(
                    "INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?)", rows
                )
        finally:
            connection.close()
    except (sqlite3.Error, OSError) as error:  # a read-only data dir: hash without a cache
        log.warning("could not record digests in %s: %s", cache, error)
