"""A run's outputs for people: runs/<run_id>/index.html, `cielr export`, the results table's links.

Unit tests build a run in a store by hand (the keys the flow uses, real PNGs, a real plan and a
real results.parquet), on a temp directory and on S3 (moto's server), so they need no models.
The end-to-end check of a real 3-image tiny run's page in headless Chromium is in
tests/test_orchestration.py (it shares that module's run).
"""

from __future__ import annotations

import json
import os
import posixpath
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cielr_core.images import image_digest
from cielr_core.plan import EditPlan, EditStep
from cielr_core.run_index import make_entry, render_index, safe_href
from storage import ArtifactStore
from tasks import keys
from tasks.refs import ResultRow, results_table
from tasks.run_outputs import ExportError, export_run, markdown_links, write_run_index

HOSTILE_ID = '<img src=x onerror="alert(1)">'
HOSTILE_INSTRUCTION = 'remove the cat"><script>alert("i")</script>'
HOSTILE_ERROR = "</td></tr></table><script>alert('e')</script>"


class _Page(HTMLParser):
    """Tags, attributes and text of a page, as a browser's parser sees them."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    return p


def _picture(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = rng.integers(0, 255, 3, dtype=np.uint8)
    img[h // 4: h // 2, w // 4: w // 2] = rng.integers(0, 255, 3, dtype=np.uint8)
    return img


def build_run(st: ArtifactStore, run_id: str = "run-1") -> list[dict]:
    """A finished run as the flow leaves it: ok / no_target / failed rows with their files, an
    invalid row with a hostile id and instruction."""
    rows = []
    for i, (iid, status) in enumerate([("cat-1", "ok"), ("bowl-2", "no_target"), ("dog-3", "failed")]):
        img = _picture(i)
        sha = image_digest(img)
        st.put_png(keys.image_key(sha), img)
        row = ResultRow(image_id=iid, image_uri=f"/data/{iid}.jpg", instruction=f"remove the {iid[:-2]} <now>",
                        status=status, image_sha256=sha)
        if status != "failed":
            prefix = f"out/{sha}/{i}/cfg"
            edited = img.copy()
            edited[:8] = 255
            mask = np.zeros(img.shape[:2], bool)
            mask[:8] = True
            st.put_png(keys.output_key(prefix, "edited"), edited)
            st.put_mask(keys.output_key(prefix, "mask"), mask)
            st.put_png(keys.output_key(prefix, "overlay"), 255 - img)
            st.put_json(keys.output_key(prefix, "ssr"), {"objects": {}})
            step = (EditStep(subtask="remove the cat", operation="remove", target_ids=[3], prompt="empty floor",
                             reason="object 3 is the <b>largest</b> cat")
                    if status == "ok" else EditStep(subtask="find a bowl", status="no_target", reason="no bowl in view"))
            st.put_bytes(keys.output_key(prefix, "plan"), EditPlan(instruction=row.instruction, steps=[step]).canonical_json())
            st.put_json(keys.output_key(prefix, "trace"), {"decompose": {}, "steps": [], "edits": []})
            row = row.model_copy(update={f"{k}_uri": st.uri_for(keys.output_key(prefix, k)) for k in keys.OUTPUT_FILES})
        else:
            row = row.model_copy(update={"error": HOSTILE_ERROR, "failed_stage": "segment"})
        rows.append(row)
    rows.append(ResultRow(image_id=HOSTILE_ID, image_uri="/etc/passwd", instruction=HOSTILE_INSTRUCTION,
                          status="invalid", error=f"unsafe image_id {HOSTILE_ID!r}"))
    st.put_table(keys.results_key(run_id), results_table(rows), overwrite=False)
    return [r.model_dump() for r in rows]


_S3_RUN: dict[str, ArtifactStore] = {}


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """A store holding build_run's run-1: a fresh local one, or one S3 store (moto) built once for the
    module (the tests only read the run, and write the same index.html)."""
    if request.param == "local":
        st = ArtifactStore(str(tmp_path / "store"))
        build_run(st)
        return st
    if "s3" not in _S3_RUN:
        endpoint = request.getfixturevalue("moto_server")
        bucket = request.getfixturevalue("s3_bucket")
        st = ArtifactStore(f"s3://{bucket}/cielr", endpoint_url=endpoint, key="testing", secret="testing")
        build_run(st)
        _S3_RUN["s3"] = st
    return _S3_RUN["s3"]


def _assert_safe(page: str) -> _Page:
    p = parse(page)
    assert not [t for t, _ in p.tags if t in ("script", "iframe", "object", "embed", "form", "base")]
    for tag, attrs in p.tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        if tag == "img":
            assert attrs["src"].startswith("data:image/"), attrs
        if tag == "a":
            assert not attrs["href"].lower().startswith(("javascript:", "data:", "//")), attrs
    csp = [a for t, a in p.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"] and "script-src" not in csp[0]["content"]
    return p


def test_page_escapes_hostile_text_and_links():
    row = {"image_id": HOSTILE_ID, "instruction": HOSTILE_INSTRUCTION, "status": "failed", "error": HOSTILE_ERROR}
    plan = EditPlan(instruction="x", steps=[EditStep(subtask="<i>s</i>", operation="recolor", target_ids=[1],
                                                      color="red", prompt='"><script>p</script>',
                                                      reason="<script>r</script>")]).canonical_json()
    e = make_entry(row, {"plan": plan, "edited": b"not a png"},
                   {"edited": "javascript:alert(1)", "plan": "../../out/a b/plan.json", "trace": "//evil.example/x"})
    page = render_index([e], title="<t>", meta={"<k>": "<v>"})
    p = _assert_safe(page)
    text = "".join(p.text)
    for hostile in (HOSTILE_ID, HOSTILE_INSTRUCTION, HOSTILE_ERROR, '"><script>p</script>', "<script>r</script>"):
        assert hostile in text, f"{hostile!r} must be shown as text"
    hrefs = [a["href"] for t, a in p.tags if t == "a"]
    assert hrefs == ["#row-1", "../../out/a%20b/plan.json"], hrefs
    assert safe_href("javascript:alert(1)") is None and safe_href("JaVaScRiPt:x") is None
    assert safe_href("data:text/html,x") is None and safe_href("//host/x") is None
    assert safe_href("cat-1/edited.png") == "cat-1/edited.png"


def test_run_index_in_the_store_links_every_file_relative(store):
    rows = store.get_table(keys.results_key("run-1")).to_pylist()
    uri = write_run_index(store, "run-1", rows)
    assert uri == store.uri_for("runs/run-1/index.html")
    page = store.get_bytes(keys.run_index_key("run-1")).decode()
    p = _assert_safe(page)
    trs = [a for t, a in p.tags if t == "tr" and (a.get("id") or "").startswith("row-")]
    assert len(trs) == 4
    imgs = [a for t, a in p.tags if t == "img"]
    # ok and no_target rows: before, after, mask, overlay; the failed row: its input only
    assert len(imgs) == 4 + 4 + 1, [a["alt"] for a in imgs]
    hrefs = [a["href"] for t, a in p.tags if t == "a" and not a["href"].startswith("#")]
    assert "results.parquet" in hrefs
    stored = set(store.list())
    for h in hrefs:  # every link resolves, relative to the page, to a file of the store
        assert not h.startswith(("/", "s3:", "file:")), h
        assert posixpath.normpath(posixpath.join("runs/run-1", h)) in stored, h
    assert sum(1 for h in hrefs if h.endswith("/edited.png")) == 2 * 2  # the thumbnail and the files list
    text = "".join(p.text)
    assert "object 3 is the <b>largest</b> cat" in text and "no bowl in view" in text
    assert HOSTILE_ERROR in text and HOSTILE_ID in text
    if store.protocol == "file":  # opened as file://, the relative links are files on disk
        for h in hrefs:
            assert (Path(store.root) / "runs" / "run-1" / h).resolve().is_file(), h


def test_table_artifact_links_outputs(tmp_path):
    st = ArtifactStore(str(tmp_path / "s"))
    ok, _, failed, _ = build_run(st)
    links = markdown_links(ok)
    assert links["edited"] == f"[edited.png](file://{ok['edited_uri']})"
    assert links["mask"].startswith("[mask.png](file:///") and links["mask"].endswith("/mask.png)")
    assert markdown_links(failed) == {"edited": None, "mask": None}


def test_export_layout_index_and_refusals(store, tmp_path):
    out = tmp_path / "export"
    done = export_run(store, keys.results_key("run-1"), str(out))
    assert done["missing"] == []
    assert sorted(os.listdir(out)) == ["bowl-2", "cat-1", "dog-3", "export.json", "index.html", "results.parquet"]
    assert (out / "results.parquet").read_bytes() == store.get_bytes(keys.results_key("run-1"))
    assert sorted(os.listdir(out / "cat-1")) == ["edited.png", "input.png", "mask.png", "overlay.png",
                                                 "plan.json", "ssr.json", "trace.json"]
    assert sorted(os.listdir(out / "dog-3")) == ["error.txt", "input.png"]
    assert (out / "dog-3" / "error.txt").read_text() == f"failed at segment: {HOSTILE_ERROR}\n"
    first = store.get_table(keys.results_key("run-1")).to_pylist()[0]
    src = store.get_bytes(store.key_for(first["edited_uri"]))
    assert (out / "cat-1" / "edited.png").read_bytes() == src
    listed = json.loads((out / "export.json").read_text())
    assert listed["source"] == store.uri_for(keys.results_key("run-1"))
    invalid = [r for r in listed["rows"] if r["status"] == "invalid"]
    assert invalid == [{"image_id": HOSTILE_ID, "status": "invalid", "error": f"unsafe image_id {HOSTILE_ID!r}",
                        "folder": None, "files": []}]
    page = (out / "index.html").read_text()
    p = _assert_safe(page)
    hrefs = [a["href"] for t, a in p.tags if t == "a" and not a["href"].startswith("#")]
    assert hrefs and all((out / h).is_file() for h in hrefs), hrefs
    assert "cat-1/edited.png" in hrefs
    assert len([a for t, a in p.tags if t == "img"]) == 9
    if store.protocol == "s3":
        return  # the rest is about the target folder, whatever the store
    # the same export again is fine; a folder holding something else is refused, nothing written
    export_run(store, keys.results_key("run-1"), str(out))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="--force") as e:
        export_run(store, keys.results_key("run-1"), str(other))
    assert e.value.usage and sorted(os.listdir(other)) == ["notes.txt"]
    export_run(store, keys.results_key("run-1"), str(other), force=True)
    assert (other / "notes.txt").read_text() == "mine" and (other / "cat-1" / "edited.png").is_file()


def test_export_command_exit_codes(tmp_path, monkeypatch):
    from cli.main import app

    st = ArtifactStore(str(tmp_path / "store"))
    build_run(st)
    runner = CliRunner()
    results = st.uri_for(keys.results_key("run-1"))
    res = runner.invoke(app, ["export", results, "--to", str(tmp_path / "e1")])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == str(tmp_path / "e1" / "index.html")
    # the run folder works too, and a re-export of the same run into the same folder
    res = runner.invoke(app, ["export", os.path.dirname(results), "--to", str(tmp_path / "e1")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["export", str(tmp_path / "nope.parquet"), "--to", str(tmp_path / "e2")])
    assert res.exit_code == 2 and "not a run's results" in res.output
    res = runner.invoke(app, ["export", st.uri_for("runs/run-2"), "--to", str(tmp_path / "e2")])
    assert res.exit_code == 2 and "no results.parquet" in res.output
    (tmp_path / "e3").mkdir()
    (tmp_path / "e3" / "x").write_text("x")
    res = runner.invoke(app, ["export", results, "--to", str(tmp_path / "e3")])
    assert res.exit_code == 2 and "--force" in res.output and not (tmp_path / "e3" / "index.html").exists()
    # a file the results name that is gone: exported all the rest, exit 1, named
    row = st.get_table(keys.results_key("run-1")).to_pylist()[0]
    os.remove(row["overlay_uri"])
    res = runner.invoke(app, ["export", results, "--to", str(tmp_path / "e4")])
    assert res.exit_code == 1 and "cat-1: overlay" in res.output
    assert (tmp_path / "e4" / "cat-1" / "edited.png").is_file()
