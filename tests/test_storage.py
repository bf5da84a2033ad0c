"""The storage layer against a real S3 server (SeaweedFS on 127.0.0.1) and the local disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.servers import S3Server, free_port
from visionops.config import Settings
from visionops.errors import StorageError, UsageError
from visionops.storage import LocalStore, ObjectStore, S3Store, open_store, s3_client, split_s3_uri


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _roundtrip(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "model"
    (source / "sub").mkdir(parents=True)
    (source / "model.onnx").write_bytes(b"\x00onnx" * 1000)
    (source / "sub" / "metadata.json").write_text('{"names": ["scratch"]}')
    keys = store.upload_tree(source, "models/v1")
    assert keys == ["models/v1/model.onnx", "models/v1/sub/metadata.json"]
    assert store.list_keys("models") == keys
    assert store.exists("models/v1/model.onnx")
    assert not store.exists("models/v1/missing.onnx")
    store.write_bytes("logs/a.jsonl", b"{}\n")
    assert store.read_bytes("logs/a.jsonl") == b"{}\n"
    out = store.download_tree("models/v1", tmp_path / "out" / "v1")
    assert _tree(out) == _tree(source)
    with pytest.raises(StorageError, match="nothing found"):
        store.download_tree("models/v2", tmp_path / "out" / "v2")
    assert not (tmp_path / "out" / "v2").exists()


def test_local_store_roundtrip(tmp_path: Path):
    _roundtrip(LocalStore(tmp_path / "store"), tmp_path)


def test_local_store_refuses_keys_that_escape(tmp_path: Path):
    with pytest.raises(StorageError, match="escapes"):
        LocalStore(tmp_path).write_bytes("../outside.txt", b"x")


def test_s3_store_roundtrip(s3_settings: Settings, tmp_path: Path):
    store = open_store(f"s3://{s3_settings.s3_bucket}/prefix", s3_settings)
    assert isinstance(store, S3Store)
    assert store.uri("a/b") == f"s3://{s3_settings.s3_bucket}/prefix/a/b"
    _roundtrip(store, tmp_path)


def test_s3_wrong_secret_is_a_clear_error(s3: S3Server, s3_settings: Settings):
    wrong = Settings(**{**s3_settings.model_dump(), "s3_secret_key": "not-the-secret"})
    store = open_store(f"s3://{s3_settings.s3_bucket}/x", wrong)
    with pytest.raises(StorageError, match="SignatureDoesNotMatch: the secret key is wrong"):
        store.write_bytes("k", b"v")


def test_s3_unreachable_endpoint_fails_after_bounded_retries(tmp_path: Path):
    port = free_port()  # nothing listens there
    settings = Settings(data_dir=tmp_path, s3_endpoint=f"http://127.0.0.1:{port}")
    store = S3Store(s3_client(settings, retries=1), "bucket", endpoint=settings.s3_endpoint or "")
    with pytest.raises(
        StorageError, match=rf"cannot reach S3 at http://127\.0\.0\.1:{port} to read .*refused"
    ):
        store.read_bytes("anything")


def test_s3_uri_parsing():
    assert split_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b")
    with pytest.raises(UsageError, match="not an s3:// URI"):
        split_s3_uri("s3:/bucket")
