"""Evaluation: metrics against scikit-image and hand-computed values, benchmark loaders (all of
CIEBench, synthetic SmartEdit / MagicBrush folders), report rendering, missing models, tiny
CLIP / DINO through the real classes, IDCS with a scripted LLM double."""

from __future__ import annotations

import json
import math
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from cielr_core import metrics as MX
from cielr_core.benchmarks import (
    load_benchmark,
    load_ciebench,
    load_gt_mask,
    load_magicbrush,
    load_smartedit,
    to_manifest,
)
from cielr_core.config import load_settings
from cielr_core.report import aggregate, histogram_svg, render_html, render_markdown, thumbnail_data_uri


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def metric_models_dir(session_tmp) -> Path:
    """Only the tiny CLIP and DINO families (the real factories), in the session's models dir."""
    from cielr_core.tiny import make

    d = session_tmp / "models"
    make("clip", d)
    make("dino", d)
    return d


@pytest.fixture()
def settings(metric_models_dir):
    """tiny profile: tiny CLIP/DINO, random LPIPS backbone, CPU."""
    return load_settings(profile="tiny", overrides={"models_dir": str(metric_models_dir)})


@pytest.fixture()
def missing_settings(tmp_path):
    """Every metric model points at something that does not exist."""
    return load_settings(profile="tiny", overrides={
        "models_dir": str(tmp_path / "nothing-here"),
        "eval": {"lpips_backbone": "pretrained", "lpips_backbone_path": str(tmp_path / "no-alexnet.pth")},
    })


def _pair(seed=0, h=48, w=64, noise=20):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-noise, noise + 1, a.shape), 0, 255).astype(np.uint8)
    return a, b


def _photo(h=96, w=128):
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[100:100 + h, 150:150 + w])


# --- PSNR / SSIM vs scikit-image -----------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_psnr_ssim_equal_scikit_image_full_image(seed):
    a, b = _pair(seed)
    assert MX.psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-12)
    ref = structural_similarity(a, b, channel_axis=2, data_range=255)
    assert MX.ssim(a, b) == pytest.approx(ref, abs=1e-12)


def test_masked_statistics_with_full_region_equal_scikit_image():
    a = _photo()
    b = np.clip(a.astype(int) + np.random.default_rng(3).integers(-15, 16, a.shape), 0, 255).astype(np.uint8)
    full = np.ones(a.shape[:2], bool)
    assert MX.psnr(a, b, full) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-12)
    assert MX.ssim(a, b, full) == pytest.approx(structural_similarity(a, b, channel_axis=2, data_range=255), abs=1e-10)


def test_masked_psnr_excludes_the_edited_region_exactly():
    a, _ = _pair(5, noise=0)
    a = np.clip(a, 20, 235).astype(np.uint8)
    gt = np.zeros(a.shape[:2], bool)
    gt[10:30, 20:40] = True
    b = a.copy()
    b[~gt] += 10  # every kept pixel off by exactly 10 -> MSE 100
    b[gt] = np.random.default_rng(9).integers(0, 256, (int(gt.sum()), 3))  # anything inside the edit
    assert MX.psnr(a, b, ~gt) == pytest.approx(10 * math.log10(255**2 / 100.0), abs=1e-12)
    # the same pixels by hand through scikit-image: PSNR of the kept pixels only
    assert MX.psnr(a, b, ~gt) == pytest.approx(peak_signal_noise_ratio(a[~gt], b[~gt], data_range=255), abs=1e-12)


def test_masked_ssim_is_one_when_only_the_edited_region_changed():
    a = _photo()
    gt = np.zeros(a.shape[:2], bool)
    gt[30:60, 40:90] = True
    b = a.copy()
    b[gt] = 255 - b[gt]
    assert MX.ssim(a, b, ~gt) == pytest.approx(1.0, abs=1e-12)
    assert MX.psnr(a, b, ~gt) == math.inf
    # without excluding the region the edit is visible
    assert MX.ssim(a, b) < 0.9


def _ssim_bruteforce(a, b, region, win=7, data_range=255.0):
    """Reference: per pixel, the 7x7 window's statistics from the region's pixels only (sample
    covariance), averaged over region pixels whose window lies inside the image."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    pad = win // 2
    total, n = 0.0, 0
    h, w = region.shape
    for c in range(3):
        x, y = a[:, :, c].astype(np.float64), b[:, :, c].astype(np.float64)
        for i in range(pad, h - pad):
            for j in range(pad, w - pad):
                if not region[i, j]:
                    continue
                sel = region[i - pad:i + pad + 1, j - pad:j + pad + 1]
                k = int(sel.sum())
                if k < 2:
                    continue
                xs, ys = x[i - pad:i + pad + 1, j - pad:j + pad + 1][sel], y[i - pad:i + pad + 1, j - pad:j + pad + 1][sel]
                ux, uy = xs.mean(), ys.mean()
                vx, vy = xs.var(ddof=1), ys.var(ddof=1)
                vxy = ((xs - ux) * (ys - uy)).sum() / (k - 1)
                total += ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
                n += 1
    return total / n


def test_masked_ssim_matches_a_brute_force_reference():
    a, b = _pair(7, h=24, w=28, noise=30)
    gt = np.zeros(a.shape[:2], bool)
    gt[6:15, 9:20] = True
    b[gt] = 0
    assert MX.ssim(a, b, ~gt) == pytest.approx(_ssim_bruteforce(a, b, ~gt), abs=1e-9)


def test_identical_images_give_infinite_psnr_without_crashing(tmp_path):
    a = _photo(40, 50)
    gt = np.zeros(a.shape[:2], bool)
    gt[5:15, 5:15] = True
    assert MX.psnr(a, a) == math.inf
    assert MX.psnr(a, a, ~gt) == math.inf
    assert MX.psnr(a, a, ~gt, protocol="smartedit", size=32) == math.inf
    assert MX.ssim(a, a, ~gt) == pytest.approx(1.0)
    # representation: float inf in the row and in Parquet, "inf" in strict JSON
    row = {"image_id": "x", "psnr": math.inf, "ssim": 1.0, "lpips": None}
    assert json.loads(json.dumps(MX.row_to_jsonable(row), allow_nan=False))["psnr"] == "inf"
    pq.write_table(MX.metrics_table([row]), tmp_path / "m.parquet")
    back = pq.read_table(tmp_path / "m.parquet").to_pylist()[0]
    assert back["psnr"] == math.inf and back["lpips"] is None
    agg = aggregate([row, {"image_id": "y", "psnr": 20.0, "ssim": 0.5}])
    p = next(m for m in agg["metrics"] if m["metric"] == "psnr")
    assert p["n_inf"] == 1 and p["mean"] == 20.0 and p["n_values"] == 2


def test_empty_region_is_undefined_not_zero():
    a, b = _pair(2)
    nothing = np.zeros(a.shape[:2], bool)
    assert MX.psnr(a, b, nothing) is None
    assert MX.ssim(a, b, nothing) is None


def test_smartedit_protocol_is_resize_and_zero():
    a, b = _pair(4, h=50, w=70)
    gt = np.zeros(a.shape[:2], bool)
    gt[10:30, 10:40] = True
    pa = np.asarray(Image.fromarray(a).resize((32, 32), Image.Resampling.BICUBIC), np.float64)
    pb = np.asarray(Image.fromarray(b).resize((32, 32), Image.Resampling.BICUBIC), np.float64)
    keep = ~(np.asarray(Image.fromarray(gt.astype(np.uint8) * 255).resize((32, 32), Image.Resampling.NEAREST)) > 127)
    pa, pb = pa * keep[:, :, None], pb * keep[:, :, None]
    np.testing.assert_array_equal(MX.smartedit_prepare(a, gt, 32), pa)
    assert MX.psnr(a, b, ~gt, protocol="smartedit", size=32) == pytest.approx(
        peak_signal_noise_ratio(pa, pb, data_range=255), abs=1e-12)
    assert MX.ssim(a, b, ~gt, protocol="smartedit", size=32) == pytest.approx(structural_similarity(
        pa, pb, channel_axis=2, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False))
    # zeroing counts the edited region as a perfect match: the two protocols differ
    assert MX.psnr(a, b, ~gt, protocol="smartedit", size=32) != MX.psnr(a, b, ~gt)
    with pytest.raises(ValueError):
        MX.psnr(a, b, ~gt, protocol="bogus")


def test_target_iou_l1_l2_exact():
    gt = np.zeros((10, 10), np.uint8)
    gt[0:4, 0:5] = 255  # 20 px
    gt[5, 5] = 100  # anti-aliased edge pixel: below the threshold
    edited = np.zeros((10, 10), bool)
    edited[2:6, 0:5] = True  # 20 px, 10 shared
    assert MX.target_iou(edited, gt) == pytest.approx(10 / 30)
    assert MX.target_iou(np.zeros((10, 10), bool), gt) == 0.0
    # an edited mask at another resolution is resized nearest-neighbour
    assert MX.target_iou(np.kron(edited, np.ones((2, 2), bool)), gt) == pytest.approx(10 / 30)
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 51, np.uint8)  # 0.2 on 0..1
    l1, l2 = MX.l1_l2(b, a)
    assert l1 == pytest.approx(0.2) and l2 == pytest.approx(0.04)


# --- learned metrics -----------------------------------------------------------------------------
def test_tiny_clip_and_dino_through_real_classes(settings):
    from transformers import CLIPModel, CLIPProcessor

    from cielr_core.metrics import models as mm

    model, proc = mm.get_clip(settings)
    assert isinstance(model, CLIPModel) and isinstance(proc, CLIPProcessor)
    dino, _ = mm.get_dino(settings)
    assert type(dino).__name__ == "ViTModel"
    a = _photo(64, 80)
    b = 255 - a
    gt = np.zeros(a.shape[:2], bool)
    gt[10:40, 20:60] = True
    s = MX.clip_score(a, gt, "an astronaut", settings=settings)
    assert isinstance(s, float) and 0.0 <= s <= 100.0
    assert MX.clip_i(a, a, settings=settings) == pytest.approx(1.0, abs=1e-5)
    assert MX.dino_similarity(a, a, settings=settings) == pytest.approx(1.0, abs=1e-5)
    mb = MX.magicbrush_metrics(b, a, settings=settings)
    assert set(mb) == {"l1", "l2", "clip_i", "dino"} and all(isinstance(v, float) for v in mb.values())
    assert mm.get_clip(settings)[0] is model  # loaded once, through the registry


def test_lpips_masked_excludes_the_edited_region(settings):
    a = _photo(64, 64)
    gt = np.zeros(a.shape[:2], bool)
    gt[16:40, 16:40] = True
    b = a.copy()
    b[gt] = 0
    assert MX.lpips_distance(a, b, ~gt, settings=settings) == pytest.approx(0.0, abs=1e-7)
    assert MX.lpips_distance(a, b, None, settings=settings) > 0  # the whole image sees the edit
    b2 = np.clip(a.astype(int) + 40, 0, 255).astype(np.uint8)
    assert MX.lpips_distance(a, b2, ~gt, settings=settings) > 0
    # without a region it is exactly lpips's own forward
    import torch

    from cielr_core.metrics import models as mm

    model = mm.get_lpips(settings)
    t = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        ref = float(model(t(a), t(b2), normalize=True))
    assert MX.lpips_distance(a, b2, None, settings=settings) == pytest.approx(ref, rel=1e-5)


def test_missing_metric_models_are_reported_missing_never_zero(missing_settings):
    a, b = _pair(1, h=40, w=40)
    gt = np.zeros(a.shape[:2], bool)
    gt[10:20, 10:20] = True
    target = np.clip(b.astype(int) + 5, 0, 255).astype(np.uint8)
    row = MX.evaluate_sample(a, b, gt, gt, "recolour it", "a red square", settings=missing_settings, target=target)
    reasons = json.loads(row["missing_reasons"])
    for k in ("lpips", "clip", "clip_i", "dino"):
        assert row[k] is None, k
        assert "unavailable" in reasons[k], (k, reasons[k])
    assert "no-alexnet.pth" in reasons["lpips"]
    assert row["idcs"] is None and reasons["idcs"] == "no VLM/LLM given"
    # the metrics that need no model are there
    assert isinstance(row["psnr"], float) and isinstance(row["l1"], float) and row["target_iou"] == 1.0
    agg = aggregate([{**row, "image_id": "s", "status": "ok"}])
    clip = next(m for m in agg["metrics"] if m["metric"] == "clip")
    assert clip["n_missing"] == 1 and clip["mean"] is None


# --- IDCS with a scripted double -----------------------------------------------------------------
@dataclass
class _ScriptedCall:
    parsed: Any
    raw: str
    latency_s: float = 0.0
    tokens: int | None = None


class ScriptedLLMDouble:
    """Test double of the reasoning LLM protocol: returns scripted answers, records the calls."""

    def __init__(self, answers: list[dict[str, Any]]):
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    def complete(self, messages, schema, *, image=None, call_name=""):
        self.calls.append({"messages": messages, "schema": schema, "image": image, "call_name": call_name})
        ans = self.answers.pop(0)
        raw = json.dumps(ans)
        try:
            parsed = schema.model_validate(ans)
        except Exception:  # noqa: BLE001 - a bad answer passes through as a dict (the last guard's job)
            parsed = ans
        return _ScriptedCall(parsed=parsed, raw=raw)


def test_idcs_with_scripted_double_stores_both_answers(settings):
    a = _photo(40, 50)
    b = a.copy()
    b[10:20, 10:20] = 0
    vlm = ScriptedLLMDouble([{"differences": "a black square appeared top left"}])
    llm = ScriptedLLMDouble([{"reason": "right object, recoloured", "score": 4}])
    row = MX.evaluate_sample(a, b, None, None, "paint the patch black", None, settings=settings, vlm=vlm, llm=llm)
    assert row["idcs"] == 4.0
    assert "black square" in row["idcs_vlm_answer"] and '"score": 4' in row["idcs_llm_answer"]
    assert row["idcs_prompt_version"] == "1"
    img = vlm.calls[0]["image"]
    assert isinstance(img, np.ndarray) and img.shape == (40, 50 + 8 + 50, 3)
    np.testing.assert_array_equal(img[:, :50], a)
    np.testing.assert_array_equal(img[:, 58:], b)
    user = llm.calls[0]["messages"][-1]["content"]
    assert "paint the patch black" in user and "black square appeared" in user
    assert vlm.calls[0]["messages"][-1]["content"] == MX.load_prompts("1")["vlm_user"]


def test_idcs_score_outside_1_to_5_is_rejected():
    a = _photo(20, 20)
    with pytest.raises(ValueError, match="1..5"):
        MX.idcs(a, a, "x", vlm=ScriptedLLMDouble([{"differences": "none"}]),
                llm=ScriptedLLMDouble([{"reason": "r", "score": 7}]))
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        MX.IDCSJudgement.model_validate({"reason": "r", "score": 0})
    with pytest.raises(ValueError, match="unknown IDCS prompt version"):
        MX.load_prompts("999")


def test_idcs_judge_failure_leaves_idcs_missing(settings):
    a = _photo(20, 20)
    row = MX.evaluate_sample(a, a, None, None, "x", None, settings=settings,
                             vlm=ScriptedLLMDouble([{"differences": "none"}]),
                             llm=ScriptedLLMDouble([{"reason": "r", "score": 9}]))
    assert row["idcs"] is None
    assert json.loads(row["missing_reasons"])["idcs"].startswith("judge failed")


def test_make_idcs_judges_uses_make_llm_at_temperature_zero(monkeypatch, settings):
    seen = []
    fake_llm = types.ModuleType("cielr_core.reasoning.factory")
    fake_llm.make_llm = lambda cfg, s: seen.append(cfg) or ScriptedLLMDouble([])
    fake_pkg = types.ModuleType("cielr_core.reasoning")
    fake_pkg.__path__ = []
    fake_pkg.factory = fake_llm
    monkeypatch.setitem(sys.modules, "cielr_core.reasoning", fake_pkg)
    monkeypatch.setitem(sys.modules, "cielr_core.reasoning.factory", fake_llm)
    s = settings.model_copy(deep=True)
    s.eval.vlm.temperature = 0.7
    vlm, llm = MX.make_idcs_judges(s)
    assert isinstance(vlm, ScriptedLLMDouble) and isinstance(llm, ScriptedLLMDouble)
    assert [c.temperature for c in seen] == [0.0, 0.0]
    assert seen[0].model.id == s.eval.vlm.model.id and seen[1].model.id == s.llm.model.id


# --- benchmarks ----------------------------------------------------------------------------------
def test_all_86_ciebench_samples_load(ciebench_dir, tmp_path):
    rows = load_ciebench(ciebench_dir)
    assert len(rows) == 86 and rows.rejected == []
    assert [r["image_id"] for r in rows] == [str(i) for i in range(86)]
    for r in rows:
        assert os.path.isfile(r["image_uri"]) and os.path.isfile(r["mask_uri"])
        assert r["instruction"] and r["reference_text"]
    assert sum(1 for r in rows if r["notes"]) == 8  # "notes" (7) and "note" (1)
    s5 = rows[5]
    assert s5["image_size"] == [796, 597] and s5["mask_size"] == [320, 240]
    assert any("resized nearest-neighbour" in q for q in s5["quirks"])
    assert all(r["image_size"] == r["mask_size"] for r in rows if r["image_id"] != "5")
    m5 = load_gt_mask(s5["mask_uri"], tuple(s5["image_size"]))
    assert m5.shape == (597, 796) and m5.dtype == bool and 0 < m5.mean() < 1
    np.testing.assert_array_equal(load_gt_mask(Path(s5["mask_uri"]).read_bytes(), (796, 597)), m5)
    assert any("contradicts" in q for q in rows[4]["quirks"])
    path = to_manifest(rows, tmp_path / "ciebench.parquet")
    t = pq.read_table(path)
    assert t.column_names == ["image_id", "image_uri", "instruction", "seed", "mask_uri", "reference_text"]
    assert t.num_rows == 86 and t.column("image_id").to_pylist()[5] == "5"
    assert len(load_benchmark(f"ciebench:{ciebench_dir}")) == 86


def test_ciebench_sample_5_evaluates_with_resized_mask(ciebench_dir, settings):
    s5 = load_ciebench(ciebench_dir)[5]
    img = np.asarray(Image.open(s5["image_uri"]).convert("RGB"))
    raw_mask = np.asarray(Image.open(s5["mask_uri"]))
    edited = img.copy()
    gt = load_gt_mask(s5["mask_uri"], tuple(s5["image_size"]))
    edited[gt] = 255
    row = MX.evaluate_sample(img, edited, raw_mask, gt, s5["instruction"], s5["reference_text"], settings=settings)
    assert row["gt_mask_resized"] is True
    assert row["psnr"] == math.inf and row["target_iou"] == 1.0 and row["ssim"] == pytest.approx(1.0)


def test_ciebench_bad_entries_are_reported_not_fatal(ciebench_dir, tmp_path):
    data = json.loads((ciebench_dir / "updated_data.json").read_text())
    sub = {k: data[k] for k in ("0", "1", "2")}
    for k in sub:
        os.makedirs(tmp_path / k)
        for p in [sub[k]["image path"]] + sub[k]["mask path"]:
            os.symlink(ciebench_dir / p, tmp_path / p)
    sub["7"] = {"image path": "7/7.png", "instruction": "remove it", "mask path": ["7/7_mask.png"], "CLIP": ["x"]}
    sub["8"] = {"image path": "0/0.png", "instruction": "", "mask path": ["0/0_mask.png"], "CLIP": ["x"]}
    os.makedirs(tmp_path / "9")
    Image.new("L", (10, 100)).save(tmp_path / "9" / "9_mask.png")
    sub["9"] = {"image path": "0/0.png", "instruction": "remove it", "mask path": ["9/9_mask.png"], "CLIP": ["x"]}
    (tmp_path / "updated_data.json").write_text(json.dumps(sub))
    rows = load_ciebench(tmp_path)
    assert [r["image_id"] for r in rows] == ["0", "1", "2"]
    errors = {r["image_id"]: r["error"] for r in rows.rejected}
    assert set(errors) == {"7", "8", "9"}
    assert "unreadable" in errors["7"] and "instruction" in errors["8"] and "aspect" in errors["9"]


def _write_smartedit(root: Path) -> None:
    root.mkdir()
    for i in (1, 2, 3, 4):
        Image.new("RGB", (16, 12), (i * 40, 0, 0)).save(root / f"{i}.png")
    for i in (1, 2, 4):
        m = np.zeros((12, 16), np.uint8)
        m[2:6, 3:9] = 255
        Image.fromarray(m).save(root / f"{i}_mask.jpg")
    (root / "Reason_test.txt").write_text(
        "Remove the fruit richest in vitamin C CLIP: background\n"
        "What keeps the rain off? Make it red. CLIP: a red umbrella\n"
        "a line with no clip text\n"
        "Replace the animal CLIP: a cat\n"
        "An extra line CLIP: nothing\n"
        "\n"
    )


def test_smartedit_loader_on_a_synthetic_folder(tmp_path):
    root = tmp_path / "smartedit"
    _write_smartedit(root)
    rows = load_smartedit(root)
    assert [(r["image_id"], r["instruction"], r["reference_text"]) for r in rows] == [
        ("1", "Remove the fruit richest in vitamin C", "background"),
        ("2", "What keeps the rain off? Make it red.", "a red umbrella"),
        ("4", "Replace the animal", "a cat"),
    ]
    assert rows[0]["image_uri"].endswith("1.png") and rows[0]["mask_uri"].endswith("1_mask.jpg")
    errors = [r["error"] for r in rows.rejected]
    assert len(errors) == 2
    assert any("CLIP:" in e for e in errors) and any("no image" in e for e in errors)
    m = load_gt_mask(rows[0]["mask_uri"])
    assert m.dtype == bool and m.sum() == 24  # JPEG noise binarised away
    path = to_manifest(rows, tmp_path / "m" / "smartedit.parquet")
    assert pq.read_table(path).column("reference_text").to_pylist() == ["background", "a red umbrella", "a cat"]


def test_magicbrush_loader_on_the_assumed_layout(tmp_path):
    root = tmp_path / "mb"
    (root / "images" / "242679").mkdir(parents=True)
    for n in ("242679-input.png", "242679-output1.png", "242679-mask1.png", "242679-output2.png",
              "242679-mask2.png"):
        Image.new("RGB", (8, 8)).save(root / "images" / "242679" / n)
    sessions = {"242679": [
        {"input": "242679-input.png", "mask": "242679-mask1.png", "instruction": "put a hat on him",
         "output": "242679-output1.png"},
        {"input": "242679-output1.png", "mask": "242679-mask2.png", "instruction": "make the hat red",
         "output": "242679-output2.png"},
        {"input": "242679-output2.png", "mask": "242679-mask3.png", "instruction": "add a dog",
         "output": "242679-output3.png"},
    ]}
    (root / "edit_sessions.json").write_text(json.dumps(sessions))
    (root / "local_descriptions.json").write_text(json.dumps({"242679-output1.png": "a man with a hat"}))
    rows = load_magicbrush(root)
    assert [r["image_id"] for r in rows] == ["242679-1", "242679-2"]
    assert rows[0]["reference_text"] == "a man with a hat" and rows[1]["reference_text"] is None
    assert rows[1]["image_uri"].endswith("242679-output1.png") and rows[1]["target_uri"].endswith("output2.png")
    assert len(rows.rejected) == 1 and "not found" in rows.rejected[0]["error"]
    t = pq.read_table(to_manifest(rows, tmp_path / "mb.parquet", extra_columns=["target_uri"]))
    assert "target_uri" in t.column_names and t.num_rows == 2


# --- report --------------------------------------------------------------------------------------
def _report_rows():
    return [
        {"image_id": "0", "status": "ok", "instruction": "remove the lamp", "psnr": math.inf, "ssim": 1.0,
         "lpips": 0.0, "clip": 25.0, "target_iou": 0.8, "idcs": 5.0, "missing_reasons": "{}"},
        {"image_id": "1", "status": "ok", "instruction": "recolour the cup", "psnr": 30.0, "ssim": 0.9,
         "lpips": None, "clip": 20.0, "target_iou": 0.4, "idcs": 3.0,
         "missing_reasons": json.dumps({"lpips": "model unavailable: no backbone"})},
        {"image_id": "2", "status": "failed", "error": "reason: no valid answer", "instruction": "replace <x>",
         "psnr": None, "ssim": None, "lpips": None, "clip": None, "target_iou": None, "idcs": None},
    ]


def test_report_aggregates_count_failures():
    agg = aggregate(_report_rows())
    assert (agg["n_samples"], agg["n_ok"], agg["n_failed"]) == (3, 2, 1)
    by = {m["metric"]: m for m in agg["metrics"]}
    assert by["target_iou"]["mean"] == pytest.approx(0.6)
    assert by["target_iou"]["mean_failed_as_worst"] == pytest.approx(1.2 / 3)
    assert by["idcs"]["mean_failed_as_worst"] == pytest.approx(9 / 3)
    assert by["lpips"]["n_missing"] == 1 and by["lpips"]["n_failed"] == 1 and by["lpips"]["mean"] == 0.0
    assert by["psnr"]["n_inf"] == 1 and by["psnr"]["mean"] == 30.0


def test_report_renders_markdown_and_html():
    rows = _report_rows()
    img = _photo(30, 40)
    png = Image.fromarray(img)
    import io

    buf = io.BytesIO()
    png.save(buf, format="PNG")
    images = {"0": {"before": buf.getvalue(), "after": img, "mask": np.eye(30, 40, dtype=bool)},
              "2": {"before": b"not an image"}}
    md = render_markdown(rows, title="CIEBench run r1", meta={"profile": "tiny"})
    assert "# CIEBench run r1" in md and "ok 2, failed 1" in md
    assert "| target_iou ↑ | 2/3 | 0.6000 |" in md
    assert "`2` (failed): reason: no valid answer" in md
    assert "| 2 | failed | FAILED |" in md and "| 0 | ok | inf |" in md
    assert "no best-of-k" in md and "model unavailable: no backbone" in md
    html = render_html(rows, images=images, title="CIEBench run r1")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert '<span id="n-failed">1</span>' in html and '<span id="n-samples">3</span>' in html
    assert html.count("data:image/jpeg;base64,") == 2 and html.count("data:image/png;base64,") == 1
    assert html.count("<svg") == 6 and 'class="failed"' in html
    assert "replace &lt;x&gt;" in html and "<x>" not in html  # escaped
    assert "http" not in html.replace("http://www.w3.org/2000/svg", "")  # standalone
    assert thumbnail_data_uri(b"garbage") is None
    assert render_html(rows, thumbnails=images, title="CIEBench run r1") == html


def test_report_best_of_k_only_when_asked_and_labelled():
    rows = [{"image_id": "a", "status": "ok", "psnr": 20.0, "lpips": 0.3},
            {"image_id": "a", "status": "ok", "psnr": 25.0, "lpips": 0.4},
            {"image_id": "b", "status": "failed", "psnr": None, "lpips": None},
            {"image_id": "b", "status": "failed", "psnr": None, "lpips": None}]
    plain = aggregate(rows)
    assert plain["n_samples"] == 4 and plain["best_of"] is None
    best = aggregate(rows, best_of=2)
    by = {m["metric"]: m for m in best["metrics"]}
    assert best["n_samples"] == 2 and best["n_failed"] == 1
    assert by["psnr"]["mean"] == 25.0 and by["lpips"]["mean"] == pytest.approx(0.3)
    assert "BEST OF 2" in render_markdown(rows, best_of=2) and "BEST OF 2" in render_html(rows, best_of=2)
    assert "BEST OF" not in render_markdown(rows)


def test_histogram_svg_counts_inf_and_missing():
    svg = histogram_svg([1.0, 2.0, 2.5, math.inf, None], title="psnr")
    assert svg.startswith("<svg") and "3 finite, 1 inf, 1 missing" in svg and ">inf<" in svg


def test_lpips_backbone_is_filled_from_a_local_torchvision_checkpoint(tmp_path):
    """The 'pretrained' LPIPS path: the torchvision checkpoint (here a random SqueezeNet, the
    smartedit protocol's net) is copied layer by layer into lpips's slices; nothing downloads."""
    import torch
    import torchvision.models as tvm

    from cielr_core.metrics import models as mm

    torch.manual_seed(0)
    tv = tvm.squeezenet1_1(weights=None)
    ckpt = tmp_path / "squeezenet1_1.pth"
    torch.save(tv.state_dict(), ckpt)
    s = load_settings(profile="tiny", overrides={
        "models_dir": str(tmp_path), "eval": {"lpips_backbone": "pretrained", "lpips_backbone_path": str(ckpt)}})
    model = mm.get_lpips(s, net="squeeze")
    ours = {n: p for i in range(1, model.net.N_slices + 1)
            for n, p in getattr(model.net, f"slice{i}").named_parameters()}
    assert ours and len(ours) == len(list(tv.features.parameters()))
    for name, p in ours.items():
        idx, rest = name.split(".", 1)
        torch.testing.assert_close(p.detach(), tv.features[int(idx)].get_parameter(rest).detach())
    a, b = _pair(0, h=64, w=64)
    gt = np.zeros((64, 64), bool)
    gt[20:40, 20:40] = True
    v = MX.lpips_distance(a, b, ~gt, settings=s, protocol="smartedit")
    assert isinstance(v, float) and v > 0


def test_metrics_digest_follows_eval_and_llm_config(settings):
    d = MX.metrics_digest(settings)
    assert d == MX.metrics_digest(settings.model_copy(deep=True))
    s2 = settings.model_copy(deep=True)
    s2.eval.protocol = "smartedit"
    s3 = settings.model_copy(deep=True)
    s3.llm.max_new_tokens = 17
    s4 = settings.model_copy(deep=True)
    s4.eval.device = "cpu:0"  # devices do not change results
    assert len({d, MX.metrics_digest(s2), MX.metrics_digest(s3)}) == 3 and MX.metrics_digest(s4) == d
