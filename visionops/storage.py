"""S3 (MinIO SDK) and local directories behind one small interface.

Datasets, model directories and prediction logs are written through an `ObjectStore` rooted at a
location: a local directory, or `s3://bucket/prefix` on the endpoint of the settings (MinIO on a
cluster, any S3 server locally). Code above this module never cares which one it talks to.
S3 calls are retried with backoff; then a `StorageError` names the endpoint and the problem. There
is never a silent fallback from S3 to local disk.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from visionops.config import Settings, get_settings
from visionops.diagnose import error_status, network_problem
from visionops.errors import StorageError, UsageError

if TYPE_CHECKING:
    from minio import Minio

log = logging.getLogger(__name__)

S3_SCHEME = "s3://"
_S3_ERROR_HINTS = {
    "InvalidAccessKeyId": "the access key is not known to the S3 server",
    "SignatureDoesNotMatch": "the secret key is wrong",
    "AccessDenied": "access denied (check the credentials and the bucket policy)",
    "NoSuchBucket": "the bucket does not exist",
    "NoSuchKey": "no such object",
}


def is_s3_uri(location: str | Path) -> bool:
    return str(location).startswith(S3_SCHEME)


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> (`bucket`, `some/prefix`)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise UsageError(f"not an s3:// URI: {uri!r} (expected s3://bucket/prefix)")
    return parsed.netloc, parsed.path.strip("/")


def _join(prefix: str, key: str) -> str:
    return "/".join(part.strip("/") for part in (prefix, key) if part.strip("/"))


class ObjectStore(ABC):
    """Keys are `/`-separated paths relative to the store's root."""

    @abstractmethod
    def uri(self, key: str = "") -> str:
        """A URI (`s3://...` or an absolute path) for `key`."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one object completely, or not at all."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key under `prefix`, recursively, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; removing one that is already gone is not an error."""

    @abstractmethod
    def list_folders(self, prefix: str = "") -> list[str]:
        """The folders (common prefixes) right below `prefix`, as keys without a trailing `/`,
        sorted: one listing, however many objects they hold."""

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under the folder `prefix`; returns how many there were."""
        keys = self.list_keys(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)

    @abstractmethod
    def upload_file(self, path: Path, key: str) -> None: ...

    @abstractmethod
    def download_file(self, key: str, path: Path) -> None: ...

    def upload_tree(self, source: Path, prefix: str = "") -> list[str]:
        """Copy every file below `source` to `prefix/<relative path>`; returns the keys."""
        if not source.is_dir():
            raise StorageError(f"cannot upload {source}: not a directory")
        keys = []
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            key = _join(prefix, path.relative_to(source).as_posix())
            self.upload_file(path, key)
            keys.append(key)
        return keys

    def download_tree(self, prefix: str, destination: Path) -> Path:
        """Copy every object under `prefix` into `destination`, atomically.

        The files land in a temporary sibling directory that is renamed into place only when all
        of them arrived, so an interrupted download never leaves a half-filled `destination`.
        """
        keys = self.list_keys(prefix)
        if not keys:
            raise StorageError(f"nothing found at {self.uri(prefix)}")
        destination.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
        try:
            for key in keys:
                relative = key[len(prefix) :].lstrip("/") if prefix else key
                self.download_file(key, staging / relative)
            if destination.exists():
                shutil.rmtree(destination)
            staging.rename(destination)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return destination


class LocalStore(ObjectStore):
    """A directory on the local disk."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise StorageError(f"key {key!r} escapes the store root {self.root}")
        return path

    def uri(self, key: str = "") -> str:
        return str(self._path(key))

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.name}.", delete=False
        ) as f:
            f.write(data)
        Path(f.name).replace(path)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as error:
            raise StorageError(f"no such file: {self._path(key)}") from error

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str = "") -> list[str]:
        base = self._path(prefix)
        if base.is_file():
            return [prefix]
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list_folders(self, prefix: str = "") -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.iterdir()
            if p.is_dir() and not p.name.startswith(".")
        )

    def delete_prefix(self, prefix: str) -> int:
        base = self._path(prefix)
        if base == self.root:
            raise StorageError(f"refusing to delete the whole store {self.root}")
        count = super().delete_prefix(prefix)
        shutil.rmtree(base, ignore_errors=True)  # the emptied folders
        return count

    def upload_file(self, path: Path, key: str) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.{os.getpid()}.upload")
        try:
            shutil.copyfile(path, staging)  # streamed: large files never sit in memory
            staging.replace(target)
        finally:
            staging.unlink(missing_ok=True)

    def download_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(key), path)


class S3Store(ObjectStore):
    """A bucket prefix on an S3 server, through the MinIO SDK."""

    def __init__(self, client: Minio, bucket: str, prefix: str = "", endpoint: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint

    def uri(self, key: str = "") -> str:
        return f"{S3_SCHEME}{self.bucket}/{_join(self.prefix, key)}".rstrip("/")

    @contextmanager
    def _errors(self, action: str, key: str = "") -> Iterator[None]:
        """Turn MinIO/urllib3 failures into one StorageError that says what and where."""
        from minio.error import S3Error  # heavy (over a second with minio): only S3 stores need it
        from urllib3.exceptions import HTTPError

        target = self.uri(key)
        try:
            yield
        except S3Error as error:
            hint = _S3_ERROR_HINTS.get(error.code, error.message or error.code)
            raise StorageError(
                f"S3 at {self.endpoint} refused to {action} {target}: {error.code}: {hint}"
            ) from error
        except (HTTPError, OSError) as error:
            status = error_status(str(error))
            if status is not None:
                raise StorageError(
                    f"S3 at {self.endpoint} failed to {action} {target}: it answered {status} "
                    "(after its retries)"
                ) from error
            network = network_problem(error) or f"{type(error).__name__}: {error}"
            raise StorageError(
                f"cannot reach S3 at {self.endpoint} to {action} {target} (network: {network})"
            ) from error

    def ensure_bucket(self) -> None:
        with self._errors("create bucket"):
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._errors("write", key):
            self.client.put_object(
                self.bucket, _join(self.prefix, key), io.BytesIO(data), len(data)
            )

    def read_bytes(self, key: str) -> bytes:
        with self._errors("read", key):
            response = self.client.get_object(self.bucket, _join(self.prefix, key))
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def exists(self, key: str) -> bool:
        from minio.error import S3Error  # heavy (over a second with minio): only S3 stores need it

        try:
            with self._errors("stat", key):
                self.client.stat_object(self.bucket, _join(self.prefix, key))
        except StorageError as error:
            if isinstance(error.__cause__, S3Error) and error.__cause__.code in (
                "NoSuchKey",
                "NoSuchObject",
            ):
                return False
            raise
        return True

    def list_keys(self, prefix: str = "") -> list[str]:
        full = _join(self.prefix, prefix)
        with self._errors("list", prefix):
            objects = self.client.list_objects(
                self.bucket, prefix=f"{full}/" if full else None, recursive=True
            )
            names = [o.object_name for o in objects if o.object_name and not o.is_dir]
        if not names and full:
            exact = full
            with self._errors("list", prefix):
                names = [
                    o.object_name
                    for o in self.client.list_objects(self.bucket, prefix=exact)
                    if o.object_name == exact
                ]
        cut = len(self.prefix) + 1 if self.prefix else 0
        return sorted(name[cut:] for name in names)

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self.client.remove_object(self.bucket, _join(self.prefix, key))

    def list_folders(self, prefix: str = "") -> list[str]:
        full = _join(self.prefix, prefix)
        with self._errors("list", prefix):
            objects = self.client.list_objects(
                self.bucket, prefix=f"{full}/" if full else None, recursive=False
            )
            names = [o.object_name.rstrip("/") for o in objects if o.object_name and o.is_dir]
        cut = len(self.prefix) + 1 if self.prefix else 0
        return sorted(name[cut:] for name in names)

    def delete_prefix(self, prefix: str) -> int:
        """Batched: one request per thousand objects (S3's DeleteObjects)."""
        from minio.deleteobjects import DeleteObject

        if not _join(self.prefix, prefix):
            raise StorageError(f"refusing to delete the whole bucket {self.uri()}")
        keys = self.list_keys(prefix)
        with self._errors("delete under", prefix):
            errors = list(
                self.client.remove_objects(
                    self.bucket, (DeleteObject(_join(self.prefix, k)) for k in keys)
                )
            )
        if errors:
            first = errors[0]
            raise StorageError(
                f"S3 at {self.endpoint} refused to delete {len(errors)} objects under "
                f"{self.uri(prefix)}: {first.code}: {first.message} ({first.name})"
            )
        return len(keys)

    def upload_file(self, path: Path, key: str) -> None:
        with self._errors("upload", key):
            self.client.fput_object(self.bucket, _join(self.prefix, key), str(path))

    def download_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._errors("download", key):
            self.client.fget_object(self.bucket, _join(self.prefix, key), str(path))


def s3_client(settings: Settings | None = None, *, retries: int = 3) -> Minio:
    """A MinIO client for the configured endpoint, with bounded retries and timeouts."""
    settings = settings or get_settings()
    if not settings.s3_endpoint:
        raise StorageError("an s3:// location needs VISIONOPS_S3_ENDPOINT to be set")
    import urllib3  # with minio: heavy (over a second), only S3 stores need it
    from minio import Minio

    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5.0, read=60.0),
        retries=urllib3.Retry(
            total=retries,
            backoff_factor=0.5,
            status_forcelist=(500, 502, 503, 504),
            allowed_methods=None,
        ),
        maxsize=int(os.cpu_count() or 2) * 4,
    )
    parsed = urlparse(settings.s3_endpoint)
    return Minio(
        parsed.netloc,
        access_key=settings.s3_access_key.get_secret_value() if settings.s3_access_key else None,
        secret_key=settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None,
        region=settings.s3_region,
        secure=settings.s3_secure,
        http_client=http,
    )


def open_store(location: str | Path, settings: Settings | None = None) -> ObjectStore:
    """The store rooted at `location`: `s3://bucket/prefix` or a local directory."""
    if is_s3_uri(location):
        settings = settings or get_settings()
        bucket, prefix = split_s3_uri(str(location))
        return S3Store(s3_client(settings), bucket, prefix, endpoint=settings.s3_endpoint or "")
    return LocalStore(Path(location))


def default_store(prefix: str, settings: Settings | None = None) -> ObjectStore:
    """Where VisionOps keeps `prefix` (e.g. `predictions`): the S3 bucket if configured, else
    the data dir."""
    settings = settings or get_settings()
    if settings.s3_endpoint:
        return open_store(f"{S3_SCHEME}{settings.s3_bucket}/{prefix}", settings)
    return LocalStore(settings.data_dir / prefix)
