"""Store contract suite, run against a temp directory and against S3 on moto's server."""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
import pytest

from storage import ArtifactStore, KeyError_, StoreError, canonical_json, sha256_bytes
from storage.store import ArtifactExists, ArtifactNotFound


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return ArtifactStore(str(tmp_path / "store"))
    endpoint = request.getfixturevalue("moto_server")
    bucket = request.getfixturevalue("s3_bucket")
    return ArtifactStore(f"s3://{bucket}/prefix", endpoint_url=endpoint, key="testing", secret="testing")


def test_bytes_round_trip_and_digest(store):
    digest = store.put_bytes("a/b/c.bin", b"\x00\x01hello")
    assert store.get_bytes("a/b/c.bin") == b"\x00\x01hello"
    assert digest == sha256_bytes(b"\x00\x01hello") == store.sha256("a/b/c.bin")
    assert store.exists("a/b/c.bin")
    assert not store.exists("a/b/missing.bin")


def test_missing_object_is_named(store):
    with pytest.raises(ArtifactNotFound, match="nope.json"):
        store.get_bytes("nope.json")


def test_json_is_canonical(store):
    d1 = store.put_json("x/1.json", {"b": 1, "a": [1, 2, {"z": None, "y": "é"}]})
    d2 = store.put_json("x/2.json", {"a": [1, 2, {"y": "é", "z": None}], "b": 1})
    assert d1 == d2
    assert store.get_bytes("x/1.json") == store.get_bytes("x/2.json")
    assert store.get_json("x/1.json") == {"a": [1, 2, {"y": "é", "z": None}], "b": 1}


def test_png_and_mask_and_array(store):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    store.put_png("img/rgb.png", rgb)
    assert np.array_equal(store.get_png("img/rgb.png"), rgb)
    mask = rng.random((31, 9)) > 0.5
    store.put_mask("img/m.png", mask)
    raw = store.get_bytes("img/m.png")
    import io

    from PIL import Image

    assert Image.open(io.BytesIO(raw)).mode == "1"  # 1-bit PNG on disk
    back = store.get_mask("img/m.png")
    assert back.dtype == bool and np.array_equal(back, mask)
    arr = rng.standard_normal((4, 5)).astype(np.float32)
    store.put_array("arr/x.npy", arr)
    out = store.get_array("arr/x.npy")
    assert out.dtype == np.float32 and np.array_equal(out, arr)


def test_list_is_recursive_sorted_and_relative(store):
    for k in ["r/b.txt", "r/a/1.txt", "r/a/2.txt", "other/x.txt"]:
        store.put_bytes(k, k.encode())
    assert store.list("r") == ["r/a/1.txt", "r/a/2.txt", "r/b.txt"]
    assert store.list("r/a/") == ["r/a/1.txt", "r/a/2.txt"]
    assert store.list("nothing-here") == []
    assert set(store.list()) >= {"r/b.txt", "other/x.txt"}


@pytest.mark.parametrize(
    "bad",
    ["../escape", "a/../b", "/abs/path", "a\\b", "a//b", "a/./b", "tab\there", "nul\x00", "", "a/", "s3://x/y"],
)
def test_bad_keys_are_refused(store, bad):
    with pytest.raises(KeyError_):
        store.put_bytes(bad, b"x")
    with pytest.raises(KeyError_):
        store.get_bytes(bad)


def test_overwrite_false_keeps_finished_result(store):
    store.put_bytes("runs/r1/results.parquet", b"first")
    with pytest.raises(ArtifactExists):
        store.put_bytes("runs/r1/results.parquet", b"second", overwrite=False)
    assert store.get_bytes("runs/r1/results.parquet") == b"first"


def test_uri_for(store, tmp_path):
    uri = store.uri_for("a/b.json")
    if store.protocol == "file":
        assert uri == os.path.join(str(tmp_path / "store"), "a", "b.json")
    else:
        assert uri.startswith("s3://") and uri.endswith("/prefix/a/b.json")


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_local_files_respect_the_umask(tmp_path, umask):
    """A store file gets the mode open() would give it (0666 less the umask), not mkstemp's 0600."""
    store = ArtifactStore(str(tmp_path / "s"))
    old = os.umask(umask)
    try:
        store.put_bytes("runs/r1/index.html", b"<html></html>")
        store.put_png("out/a/edited.png", np.zeros((2, 2, 3), np.uint8))
    finally:
        os.umask(old)
    for key in ("runs/r1/index.html", "out/a/edited.png"):
        assert os.stat(store.uri_for(key)).st_mode & 0o777 == 0o666 & ~umask, key


class _Exploding:
    """bytes-like object whose buffer export fails midway through a write."""


def test_failed_local_write_leaves_nothing(tmp_path, monkeypatch):
    store = ArtifactStore(str(tmp_path / "s"))
    store.put_bytes("k/old.bin", b"old")
    real_fsync = os.fsync

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(StoreError, match="No space left"):
        store.put_bytes("k/new.bin", b"x" * 100_000)
    with pytest.raises(StoreError):
        store.put_bytes("k/old.bin", b"new content")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not store.exists("k/new.bin")
    assert store.get_bytes("k/old.bin") == b"old"  # the finished object is untouched
    assert store.list("k") == ["k/old.bin"]  # no temp files visible
    assert [p for p in os.listdir(tmp_path / "s" / "k") if p.startswith(".tmp")] == []


def test_failed_s3_write_leaves_nothing(moto_server, s3_bucket, monkeypatch):
    store = ArtifactStore(f"s3://{s3_bucket}", endpoint_url=moto_server, key="testing", secret="testing")
    store.put_bytes("k/old.bin", b"old")

    def boom(path, data, **kw):
        raise ConnectionResetError("connection reset mid-upload")

    monkeypatch.setattr(store.fs, "pipe_file", boom)
    with pytest.raises(StoreError, match="connection reset") as info:
        store.put_bytes("k/old.bin", b"new")
    assert info.value.transient
    monkeypatch.undo()
    assert store.get_bytes("k/old.bin") == b"old"
    assert store.list("k") == ["k/old.bin"]


def test_concurrent_readers_never_see_partial_local_objects(tmp_path):
    store = ArtifactStore(str(tmp_path / "s"))
    a, b = b"A" * 2_000_000, b"B" * 2_000_000
    store.put_bytes("big.bin", a)
    stop = threading.Event()
    bad = []

    def reader():
        while not stop.is_set():
            data = store.get_bytes("big.bin")
            if data not in (a, b):
                bad.append(len(data))

    t = threading.Thread(target=reader)
    t.start()
    for i in range(20):
        store.put_bytes("big.bin", a if i % 2 else b)
    stop.set()
    t.join()
    assert bad == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_s3_names_url_not_credentials():
    endpoint = f"http://127.0.0.1:{_free_port()}"
    store = ArtifactStore("s3://some-bucket/p", endpoint_url=endpoint, key="AKIDSECRETKEY", secret="SUPERSECRET")
    with pytest.raises(StoreError) as info:
        store.put_bytes("x.json", b"{}")
    msg = str(info.value)
    assert "s3://some-bucket/p" in msg and endpoint in msg
    assert "SUPERSECRET" not in msg and "AKIDSECRETKEY" not in msg
    assert info.value.transient
    with pytest.raises(StoreError, match="some-bucket"):
        store.check()


def test_missing_bucket_and_bad_scheme(moto_server):
    store = ArtifactStore("s3://no-such-bucket-here", endpoint_url=moto_server, key="testing", secret="testing")
    with pytest.raises(StoreError, match="no-such-bucket-here"):
        store.check()
    with pytest.raises(StoreError, match="unsupported scheme"):
        ArtifactStore("ftp://host/x")
    with pytest.raises(StoreError, match="no bucket"):
        ArtifactStore("s3://")


def test_unwritable_local_store(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "file").write_text("x")
    store = ArtifactStore(str(ro / "file" / "sub"))  # a path under a regular file can never be created
    with pytest.raises(StoreError, match=str(ro / "file")):
        store.put_bytes("a.bin", b"x")


def test_canonical_json_rules():
    assert canonical_json({"b": 1, "a": 2}) == b'{"a":2,"b":1}'
    assert canonical_json({1: "x"}) == b'{"1":"x"}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    assert canonical_json({"é": np.int64(3)}) == '{"é":3}'.encode()


def test_key_for_inverts_uri_for(store):
    assert store.key_for(store.uri_for("runs/r/results.parquet")) == "runs/r/results.parquet"
    with pytest.raises(StoreError, match="not inside"):
        store.key_for("/somewhere/else/x")
