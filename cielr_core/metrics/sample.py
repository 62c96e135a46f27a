"""All metrics of one sample in one call.

:func:`evaluate_sample` returns one flat, parquet-friendly dict per sample (what
``metrics.parquet`` keeps); :func:`evaluate_sample_full` returns the same as a
:class:`SampleEvaluation`. Metric names: ``psnr``, ``ssim``, ``lpips``, ``clip``, ``target_iou``,
``idcs`` and, with a ground-truth ``target`` image (MagicBrush), ``l1``, ``l2``, ``clip_i``,
``dino``.

A metric is ``None`` (missing, never zero) when its model is unavailable, when it is undefined
(empty region or mask), when its input was not given (no edited mask, no reference text, no
VLM/LLM) or when the IDCS judges failed to answer; ``missing_reasons`` (a JSON object, metric ->
why) says which. Any other error propagates: the caller records the sample as failed.

Infinite PSNR (the unchanged region is pixel-identical) is a real value, not an error: it is the
float ``inf`` in the dict and in Parquet (IEEE doubles hold it); :func:`row_to_jsonable` writes it
as the string ``"inf"`` for strict JSON. Reports count infinite values separately
(:func:`cielr_core.report.aggregate`).

The GT mask is binarised (8-bit masks ``> 127``) and, when stored at another size than the image
(CIEBench sample 5: 320x240 for a 796x597 photo, the same aspect ratio), resized
nearest-neighbour to the image; ``gt_mask_resized`` in the row says so.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from cielr_core.metrics import models as mm
from cielr_core.metrics.idcs import IDCSResult, idcs
from cielr_core.metrics.learned import SMARTEDIT_LPIPS_NET, clip_score, lpips_distance, magicbrush_metrics
from cielr_core.metrics.pixel import as_rgb, binarize, fit_mask, psnr, ssim, target_iou
from cielr_core.models import ModelUnavailableError
from cielr_core.report import STEP_CHECK_COLUMNS

log = logging.getLogger(__name__)

BASE_METRICS = ("psnr", "ssim", "lpips", "clip", "target_iou", "idcs")
MAGICBRUSH_METRICS = ("l1", "l2", "clip_i", "dino")
ALL_METRICS = BASE_METRICS + MAGICBRUSH_METRICS
# direction of "better", for reports
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "clip": True, "target_iou": True, "idcs": True,
                    "l1": False, "l2": False, "clip_i": True, "dino": True}


@dataclass
class SampleEvaluation:
    metrics: dict[str, float | None]
    missing: dict[str, str] = field(default_factory=dict)  # metric -> why it is None
    idcs: IDCSResult | None = None
    protocol: str = "masked"
    gt_mask_resized: bool = False

    def to_row(self) -> dict[str, Any]:
        """Flat, parquet-friendly: metric values, the IDCS answers and the missing reasons (JSON)."""
        row: dict[str, Any] = dict(self.metrics)
        row["protocol"] = self.protocol
        row["gt_mask_resized"] = self.gt_mask_resized
        row["idcs_vlm_answer"] = self.idcs.vlm_answer if self.idcs else None
        row["idcs_llm_answer"] = self.idcs.llm_answer if self.idcs else None
        row["idcs_prompt_version"] = self.idcs.prompt_version if self.idcs else None
        row["missing_reasons"] = json.dumps(self.missing, sort_keys=True)
        return row


def row_to_jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """A copy of a metric row that strict JSON can carry: ``inf``/``-inf`` -> ``"inf"``/``"-inf"``,
    NaN -> ``None``."""
    out = {}
    for k, v in row.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        out[k] = v
    return out


ROW_STRING_COLUMNS = ("protocol", "idcs_vlm_answer", "idcs_llm_answer", "idcs_prompt_version", "missing_reasons")
ROW_INT_COLUMNS = STEP_CHECK_COLUMNS  # the edit judge's per-step counts, null when there was no edit


def metrics_table(rows: list[dict[str, Any]]):
    """A ``pyarrow.Table`` of metric rows (what ``metrics.parquet`` holds): every metric in
    :data:`ALL_METRICS` that appears is float64 (``inf`` kept, ``None`` null), the IDCS answers and
    reasons strings, ``gt_mask_resized`` and ``verified`` bool (``verified`` null: not checked), the
    edit judge's step counts int64, other columns as pyarrow infers them."""
    import pyarrow as pa

    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    arrays, fields = [], []
    for c in cols:
        vals = [r.get(c) for r in rows]
        if c in ALL_METRICS:
            typ = pa.float64()
            vals = [None if v is None else float(v) for v in vals]
        elif c in ROW_STRING_COLUMNS:
            typ = pa.string()
        elif c in ("gt_mask_resized", "verified"):
            typ = pa.bool_()
        elif c in ROW_INT_COLUMNS:
            typ = pa.int64()
        else:
            typ = None
        arr = pa.array(vals, type=typ) if typ is not None else pa.array(vals)
        arrays.append(arr)
        fields.append(pa.field(c, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _model_reason(kind: str, settings, protocol: str = "masked") -> str:
    try:
        if kind == "lpips":
            mm.get_lpips(settings, net=SMARTEDIT_LPIPS_NET if protocol == "smartedit" else None)
        elif kind == "clip":
            mm.get_clip(settings)
        else:
            mm.get_dino(settings)
    except ModelUnavailableError as e:
        return f"model unavailable: {e}"
    return "undefined"


def evaluate_sample_full(
    before, after, gt_mask, edited_mask, instruction: str, reference_text: str | None, *,
    settings, protocol: str | None = None, vlm=None, llm=None, idcs_missing_reason: str | None = None,
    target=None,
) -> SampleEvaluation:
    """See :func:`evaluate_sample`."""
    protocol = protocol or settings.eval.protocol
    before, after = as_rgb(before), as_rgb(after)
    out: dict[str, float | None] = {}
    missing: dict[str, str] = {}
    size = settings.eval.smartedit_size

    resized = False
    gt = None
    if gt_mask is not None:
        gt = binarize(gt_mask)
        if gt.shape != before.shape[:2]:
            resized = True
            log.info("GT mask %s resized nearest-neighbour to the image %s", gt.shape, before.shape[:2])
            gt = fit_mask(gt, before.shape[:2])
    if gt is None:
        for k in ("psnr", "ssim", "lpips", "clip", "target_iou"):
            out[k] = None
            missing[k] = "no ground-truth mask"
    else:
        region = ~gt
        out["psnr"] = psnr(before, after, region, protocol=protocol, size=size)
        out["ssim"] = ssim(before, after, region, protocol=protocol, size=size)
        out["lpips"] = lpips_distance(before, after, region, settings=settings, protocol=protocol)
        if reference_text:
            out["clip"] = clip_score(after, gt, reference_text, settings=settings)
        else:
            out["clip"] = None
            missing["clip"] = "no reference text"
        if edited_mask is None:
            out["target_iou"] = None
            missing["target_iou"] = "no edited mask given"
        else:
            out["target_iou"] = target_iou(edited_mask, gt)
        for k in ("psnr", "ssim"):
            if out[k] is None:
                missing[k] = "undefined: the region outside the GT mask is empty"
        if out["lpips"] is None:
            missing["lpips"] = _model_reason("lpips", settings, protocol) if region.any() else "undefined: empty region"
        if out["clip"] is None and "clip" not in missing:
            missing["clip"] = _model_reason("clip", settings) if gt.any() else "undefined: empty GT mask"

    result: IDCSResult | None = None
    if vlm is None or llm is None:
        out["idcs"] = None
        missing["idcs"] = idcs_missing_reason or "no VLM/LLM given"
    else:
        try:
            result = idcs(before, after, instruction, vlm=vlm, llm=llm,
                          prompt_version=getattr(settings.eval, "idcs_prompt_version", "1"))
            out["idcs"] = float(result.score)
        except ModelUnavailableError as e:
            out["idcs"] = None
            missing["idcs"] = f"model unavailable: {e}"
        except Exception as e:
            if isinstance(e, ValueError) and "unknown IDCS prompt version" in str(e):
                raise
            log.warning("IDCS missing: %s: %s", type(e).__name__, e)
            out["idcs"] = None
            missing["idcs"] = f"judge failed: {type(e).__name__}: {e}"

    if target is not None:
        mb = magicbrush_metrics(after, target, settings=settings)
        out.update(mb)
        for k in ("clip_i", "dino"):
            if mb[k] is None:
                missing[k] = _model_reason("clip" if k == "clip_i" else "dino", settings)
    for k, v in out.items():
        if v is not None and not isinstance(v, float):
            out[k] = float(v)
        if v is not None and math.isnan(float(v)):
            out[k] = None
            missing[k] = "undefined (NaN)"
    return SampleEvaluation(metrics=out, missing=missing, idcs=result, protocol=protocol, gt_mask_resized=resized)


def evaluate_sample(
    before, after, gt_mask, edited_mask, instruction: str, reference_text: str | None, *,
    settings, protocol: str | None = None, vlm=None, llm=None, idcs_missing_reason: str | None = None,
    target=None,
) -> dict[str, Any]:
    """Every metric of one sample as one flat dict (a ``metrics.parquet`` row, without ids/status).

    ``before``/``after``: the input and the edited image (HxWx3 uint8 arrays or PIL images, same
    size). ``gt_mask``: the GT mask of the region that should change (bool or 8-bit; ``None`` ->
    the mask-based metrics are missing). ``edited_mask``: the union of the masks the system edited
    (``None`` -> ``target_iou`` missing). ``reference_text``: CLIP text (``None`` -> ``clip``
    missing). ``vlm``/``llm``: IDCS judges from :func:`cielr_core.metrics.make_idcs_judges` (made
    once per process); without them ``idcs`` is missing with ``idcs_missing_reason``. ``target``:
    MagicBrush's ground-truth edited image (adds ``l1``, ``l2``, ``clip_i``, ``dino``).

    Keys: each metric (float, ``inf`` or ``None``), ``protocol``, ``gt_mask_resized``,
    ``idcs_vlm_answer``, ``idcs_llm_answer``, ``idcs_prompt_version``, ``missing_reasons`` (JSON)."""
    return evaluate_sample_full(before, after, gt_mask, edited_mask, instruction, reference_text, settings=settings,
                                protocol=protocol, vlm=vlm, llm=llm, idcs_missing_reason=idcs_missing_reason,
                                target=target).to_row()
