from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from cielr_core import masks as M
from cielr_core.ssr import SSR, Scene, load_scene, make_object, save_scene
from storage import ArtifactStore

SHA = "a" * 64


def rect(shape, x0, y0, x1, y1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_bbox_area_centroid_hand_computed():
    m = rect((10, 12), 2, 3, 5, 7)  # cols 2..4, rows 3..6
    assert M.bbox(m) == (2, 3, 5, 7)
    assert M.area(m) == 12
    assert M.centroid(m) == (3.0 + 0.5, 4.5 + 0.5)  # mean col 3, mean row 4.5, + half a pixel
    assert M.bbox(np.zeros((3, 3), bool)) is None and M.centroid(np.zeros((3, 3), bool)) is None


def test_mask_iou_and_union():
    a, b = rect((10, 10), 0, 0, 4, 4), rect((10, 10), 2, 2, 6, 6)
    assert M.mask_iou(a, b) == pytest.approx(4 / 28)
    assert M.area(M.union([a, b])) == 28
    assert M.mask_iou(a, np.zeros_like(a)) == 0.0
    with pytest.raises(ValueError):
        M.mask_iou(a, np.zeros((3, 3), bool))


def test_mask_box_iou_hand_computed():
    m = rect((20, 20), 5, 5, 10, 10)  # area 25
    assert M.mask_box_iou(m, (5, 5, 10, 10)) == 1.0
    assert M.mask_box_iou(m, (5.0, 5.0, 15.0, 10.0)) == pytest.approx(25 / 50)
    assert M.mask_box_iou(m, (4.6, 4.6, 10.4, 10.4)) == 1.0  # edges round to pixel boundaries
    assert M.mask_box_iou(m, (-5, -5, 100, 100)) == pytest.approx(25 / 400)  # clipped to the image
    assert M.box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)


def test_adjacency_with_gap():
    a = rect((10, 20), 0, 0, 5, 5)
    touching = rect((10, 20), 5, 0, 8, 5)
    diagonal = rect((10, 20), 5, 5, 8, 8)
    gap2 = rect((10, 20), 7, 0, 9, 5)  # two empty columns (5, 6) between
    assert M.adjacent(a, touching, gap=0)
    assert M.adjacent(a, diagonal, gap=0)
    assert not M.adjacent(a, gap2, gap=0)
    assert not M.adjacent(a, gap2, gap=1)
    assert M.adjacent(a, gap2, gap=2)
    assert M.adjacent(a, a, gap=0)
    assert not M.adjacent(a, np.zeros_like(a))


def test_median_in_mask():
    vals = np.arange(16, dtype=float).reshape(4, 4)
    m = np.zeros((4, 4), bool)
    m[0, :3] = True  # 0, 1, 2
    m[3, 3] = True  # 15
    assert M.median_in_mask(vals, m) == 1.5
    assert M.median_in_mask(vals, np.zeros((4, 4), bool)) is None


def _scene():
    shape = (8, 10)
    m1, m2 = rect(shape, 0, 0, 3, 3), rect(shape, 5, 2, 10, 8)
    ssr = SSR(
        image_sha256=SHA, width=10, height=8, provenance={"models": {"sam2": "x"}},
        objects={1: make_object(1, m1, label="cup", score=0.9, depth=0.25),
                 2: make_object(2, m2, label="table", score=0.5, depth=1.0, attributes={"left_of": [1]})},
    )
    return Scene(ssr, {1: m1, 2: m2})


def test_ssr_round_trip_and_digest_stability(tmp_path):
    scene = _scene()
    data = scene.ssr.canonical_json()
    again = SSR.from_json(data)
    assert again == scene.ssr and again.digest() == scene.ssr.digest()
    # reordering the dict does not change the digest
    reordered = SSR.from_json({**again.to_json_dict(), "objects": dict(reversed(list(again.to_json_dict()["objects"].items())))})
    assert reordered.digest() == scene.ssr.digest()
    store = ArtifactStore(str(tmp_path))
    digest = save_scene(store, "ssr/x/y", scene)
    assert digest == scene.ssr.digest()
    assert store.list("ssr/x/y") == ["ssr/x/y/masks/1.png", "ssr/x/y/masks/2.png", "ssr/x/y/ssr.json"]
    loaded = load_scene(store, "ssr/x/y")
    assert loaded.ssr == scene.ssr and all(np.array_equal(loaded.masks[i], scene.masks[i]) for i in (1, 2))
    view = scene.ssr.llm_view()
    assert "masks/" not in str(view) and view["objects"][0]["label"] == "cup"


def test_ssr_validation():
    m = rect((8, 10), 0, 0, 3, 3)
    with pytest.raises(ValidationError):
        SSR(image_sha256="zz", width=10, height=8)
    with pytest.raises(ValidationError, match="outside"):
        SSR(image_sha256=SHA, width=2, height=2, objects={1: make_object(1, m)})
    with pytest.raises(ValidationError):
        SSR(image_sha256=SHA, width=10, height=8, objects={2: make_object(1, m)})
    obj = make_object(1, m).model_dump()
    obj["mask"] = "/etc/passwd"
    with pytest.raises(ValidationError):
        SSR(image_sha256=SHA, width=10, height=8, objects={1: obj})
    with pytest.raises(ValidationError):
        make_object(1, m, depth=1.5)
    with pytest.raises(ValueError, match="empty mask"):
        make_object(1, np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="10x8"):
        Scene(SSR(image_sha256=SHA, width=10, height=8, objects={1: make_object(1, m)}), {1: np.zeros((3, 3), bool)})
