"""The paper's evaluation metrics, computed honestly.

* background preservation over the region that must stay unchanged (outside the GT mask):
  :func:`psnr`, :func:`ssim`, :func:`lpips_distance`; protocol ``masked`` (default: the edited
  region is EXCLUDED, native resolution) or ``smartedit`` (the published resize-and-zero protocol,
  for comparison with published numbers); see :mod:`.pixel`;
* :func:`clip_score` of the crop at the GT mask's box against the reference text;
* MagicBrush: :func:`magicbrush_metrics` (L1, L2, CLIP-I, DINO);
* :func:`idcs`: VLM describes the differences, an LLM scores 1-5 against the instruction
  (judges from :func:`make_idcs_judges`, prompts versioned as files under ``prompts/idcs/``);
* :func:`target_iou`: edited mask vs GT mask.

A metric whose model is unavailable is ``None`` (missing), never zero. Models load once per
process through :mod:`cielr_core.models`. ``METRICS_CODE_VERSION`` goes into cache digests:
bump it whenever a number could change.
"""

from cielr_core.metrics.idcs import (
    IDCS_PROMPTS,
    DifferenceDescription,
    IDCSJudgement,
    IDCSResult,
    idcs,
    load_prompts,
    make_idcs_judges,
    side_by_side,
)
from cielr_core.metrics.learned import (
    clip_i,
    clip_score,
    crop_to_mask_box,
    dino_similarity,
    lpips_distance,
    magicbrush_metrics,
)
from cielr_core.metrics.pixel import as_rgb, binarize, fit_mask, l1_l2, psnr, smartedit_prepare, ssim, target_iou
from cielr_core.metrics.sample import (
    ALL_METRICS,
    BASE_METRICS,
    HIGHER_IS_BETTER,
    MAGICBRUSH_METRICS,
    SampleEvaluation,
    evaluate_sample,
    evaluate_sample_full,
    metrics_table,
    row_to_jsonable,
)

METRICS_CODE_VERSION = "1"

__all__ = [
    "METRICS_CODE_VERSION", "BASE_METRICS", "MAGICBRUSH_METRICS", "HIGHER_IS_BETTER",
    "psnr", "ssim", "lpips_distance", "smartedit_prepare", "clip_score", "clip_i", "dino_similarity",
    "magicbrush_metrics", "l1_l2", "target_iou", "idcs", "IDCSResult", "IDCS_PROMPTS", "DifferenceDescription",
    "IDCSJudgement", "side_by_side", "evaluate_sample", "evaluate_sample_full", "SampleEvaluation", "as_rgb",
    "crop_to_mask_box", "ALL_METRICS", "binarize", "fit_mask", "load_prompts", "make_idcs_judges", "row_to_jsonable",
    "metrics_table",
]
