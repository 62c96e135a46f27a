"""Hostile manifests at the library and task level: wrongly typed columns are coerced or make their row
invalid with a message naming the column and type, the other rows stay; unusable manifests (missing
columns, not Parquet, a FIFO, a device, too large) are one clear ManifestError; ids and URIs that
leave the allowed roots are invalid rows."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cielr_core.config import load_settings
from cielr_core.manifest import ManifestError, validate


def _table(**cols) -> pa.Table:
    return pa.table(cols)


def _by_row(m):
    out = {r["row"]: ("ok", r) for r in m.rows}
    out.update({r["row"]: ("invalid", r) for r in m.rejected})
    return [out[i] for i in sorted(out)]


def test_wrong_types_are_coerced_or_the_row_is_invalid_naming_column_and_type(tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(b"x")
    uri = str(tmp_path / "m.parquet")
    # an integer image_id column and a float seed column as pandas writes one with a missing value
    m = validate(uri, _table(image_id=pa.array([7, 8, 9], pa.int64()), image_uri=[str(img)] * 3,
                             instruction=["remove the cup"] * 3, seed=pa.array([3.0, math.nan, 2.5])),
                 allowed_roots=[])
    rows = _by_row(m)
    assert rows[0] == ("ok", rows[0][1]) and rows[0][1]["image_id"] == "7" and rows[0][1]["seed"] == 3
    assert rows[1][0] == "ok" and rows[1][1]["image_id"] == "8" and rows[1][1]["seed"] is None
    assert rows[2][0] == "invalid" and rows[2][1]["error"] == "row 2: seed must be a non-negative integer, got float 2.5"
    assert rows[2][1]["image_id"] == "9" and isinstance(rows[2][1]["instruction"], str)

    # a string seed column, a list-typed instruction column
    m = validate(uri, _table(image_id=["a", "b", "c", "d"], image_uri=[str(img)] * 4,
                             instruction=[["remove", "it"], ["x"], ["y"], ["z"]], seed=["1", " 2 ", "three", None]),
                 allowed_roots=[])
    assert not m.rows
    assert {r["error"] for r in m.rejected} == {f"row {i}: instruction must be a string, got list {v!r}"
                                                 for i, v in enumerate([["remove", "it"], ["x"], ["y"], ["z"]])}
    assert all(isinstance(r["instruction"], str) and r["instruction"].startswith("[") for r in m.rejected)
    m = validate(uri, _table(image_id=["a", "b", "c", "d"], image_uri=[str(img)] * 4, instruction=["go"] * 4,
                             seed=["1", " 2 ", "three", None]), allowed_roots=[])
    assert [r["seed"] for r in m.rows] == [1, 2, None]
    assert m.rejected[0]["error"] == "row 2: seed must be a non-negative integer, got str 'three'"
    # booleans, bytes, negative and huge seeds, float ids that are not whole numbers
    m = validate(uri, _table(image_id=pa.array([1.5, 2.0, 3.0, 4.0]), image_uri=[str(img)] * 4,
                             instruction=["go"] * 4, seed=pa.array([1, 2**63 - 1, -1, None], pa.int64())), allowed_roots=[])
    errors = sorted(r["error"] for r in m.rejected)
    assert errors == ["row 0: image_id must be a string (or an integer), got float 1.5",
                      "row 2: seed must be a non-negative integer, got int -1"]
    assert [(r["image_id"], r["seed"]) for r in m.rows] == [("2", 2**63 - 1), ("4", None)]
    m = validate(uri, _table(image_id=["a", "b"], image_uri=pa.array([b"/x.png", b"/y.png"]),
                             instruction=["go", "go"], seed=pa.array([1, 2])), allowed_roots=[])
    assert [r["error"] for r in m.rejected] == ["row 0: image_uri must be a string, got bytes b'/x.png'",
                                                "row 1: image_uri must be a string, got bytes b'/y.png'"]
    m = validate(uri, _table(image_id=["a"], image_uri=[str(img)], instruction=["go"], seed=pa.array([True])),
                 allowed_roots=[])
    assert [r["error"] for r in m.rejected] == ["row 0: seed must be a non-negative integer, got bool True"]


def test_missing_values_unsafe_ids_duplicates_and_uris_outside_the_roots(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"x")
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    (folder / "link.png").symlink_to(outside)
    (folder / "zero.png").symlink_to("/dev/zero")
    rows = [
        ("ok", "a.png", "go"),
        (None, "a.png", "go"),
        ("nan-instruction", "a.png", None),
        ("../escape", "a.png", "go"),
        ("a" * 200, "a.png", "go"),
        ("ok", "a.png", "go again"),
        ("http", "http://example.com/a.png", "go"),
        ("passwd", "file:///etc/passwd", "go"),
        ("dotdot", "../secret.png", "go"),
        ("link", "link.png", "go"),
        ("zero", "zero.png", "go"),
        ("dev", "/dev/zero", "go"),
        ("ctl", "a.png", "go\x00now"),
        ("long", "a.png", "x" * 3000),
    ]
    t = _table(image_id=[r[0] for r in rows], image_uri=[r[1] for r in rows], instruction=[r[2] for r in rows])
    m = validate(str(folder / "m.parquet"), t, allowed_roots=[])
    assert [r["image_id"] for r in m.rows] == ["ok"]
    err = {r["row"]: r["error"] for r in m.rejected}
    assert len(err) == len(rows) - 1, "every other row is reported"
    expect = {1: "missing image_id", 2: "missing instruction", 3: "unsafe image_id '../escape'",
              4: "unsafe image_id", 5: "duplicate image_id 'ok'", 6: "outside the allowed input roots",
              7: "outside the allowed input roots", 8: "outside the allowed input roots",
              9: "outside the allowed input roots", 10: "outside the allowed input roots",
              11: "outside the allowed input roots", 12: "control characters", 13: "longer than 2000"}
    for i, part in expect.items():
        assert part in err[i], (i, err[i])
        assert err[i].startswith(f"row {i}: ")


def test_unusable_manifests_are_one_clear_error(tmp_path):
    from tasks.manifest import load_manifest

    s = load_settings(profile="tiny", overrides={"store": {"url": str(tmp_path / "store")},
                                                 "limits": {"max_manifest_bytes": 100_000}})
    cases: dict[str, tuple[Path, str]] = {}
    p = tmp_path / "no-columns.parquet"
    pq.write_table(_table(path=["a.png"], text=["go"]), p)
    cases["missing columns"] = (p, "missing required column(s) image_id, image_uri, instruction (has path, text)")
    p = tmp_path / "text.parquet"
    p.write_text("image_id,image_uri,instruction\na,a.png,go\n")
    cases["not parquet"] = (p, "not a readable Parquet file")
    p = tmp_path / "empty-file.parquet"
    p.write_bytes(b"")
    cases["empty file"] = (p, "not a readable Parquet file")
    p = tmp_path / "fifo.parquet"
    os.mkfifo(p)
    cases["fifo"] = (p, "is a FIFO (named pipe), not a regular file")
    cases["device"] = (Path("/dev/zero"), "is a character device, not a regular file")
    cases["directory"] = (tmp_path, "is a directory, not a regular file")
    cases["missing"] = (tmp_path / "nope.parquet", "no such file")
    p = tmp_path / "big.parquet"
    p.write_bytes(b"\0" * 100_001)
    cases["too large"] = (p, "100001 bytes, above the 100000-byte limit (limits.max_manifest_bytes)")
    for name, (path, message) in cases.items():
        box: dict = {}

        def run(path=path, box=box):
            try:
                load_manifest(str(path), s)
            except BaseException as e:  # noqa: BLE001
                box["error"] = e

        th = threading.Thread(target=run, daemon=True)
        th.start()
        th.join(10)
        assert not th.is_alive(), f"{name}: reading the manifest blocked"
        assert isinstance(box.get("error"), ManifestError), (name, box)
        assert message in str(box["error"]) and str(box["error"]).startswith("manifest "), (name, str(box["error"]))

    # an empty manifest (the columns, no rows) is not an error: nothing to do
    p = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"image_id": pa.array([], pa.string()), "image_uri": pa.array([], pa.string()),
                             "instruction": pa.array([], pa.string())}), p)
    m = load_manifest(str(p), s)
    assert m.rows == [] and m.rejected == []


@pytest.mark.parametrize("limit", [0, 2])
def test_limit_counts_rows_before_they_are_read(tmp_path, limit):
    (tmp_path / "a.png").write_bytes(b"x")
    t = _table(image_id=["a", "b", "c"], image_uri=["a.png"] * 3, instruction=["go"] * 3, seed=["x", "1", "2"])
    m = validate(str(tmp_path / "m.parquet"), t, allowed_roots=[], limit=limit)
    assert len(m.rows) + len(m.rejected) == limit
