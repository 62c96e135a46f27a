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
from cielr_core.metrics.pixel import (
    as_rgb,
    binarize,
    fit_mask,
    l1_l2,
    psnr,
    smartedit_prepare,
    ssim,
    target_iou,
)
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


def metrics_digest(settings) -> str:
    """Cache key part for per-sample metrics: the eval section (models, protocol, LPIPS backbone,
    IDCS prompt version, VLM), the LLM that scores IDCS, and :data:`METRICS_CODE_VERSION`."""
    return settings.eval.digest(METRICS_CODE_VERSION, settings.llm.digest())

__all__ = [
    "ALL_METRICS",
    "BASE_METRICS",
    "HIGHER_IS_BETTER",
    "IDCS_PROMPTS",
    "MAGICBRUSH_METRICS",
    "METRICS_CODE_VERSION",
    "DifferenceDescription",
    "IDCSJudgement",
    "IDCSResult",
    "SampleEvaluation",
    "as_rgb",
    "binarize",
    "clip_i",
    "clip_score",
    "crop_to_mask_box",
    "dino_similarity",
    "evaluate_sample",
    "evaluate_sample_full",
    "fit_mask",
    "idcs",
    "l1_l2",
    "load_prompts",
    "lpips_distance",
    "magicbrush_metrics",
    "make_idcs_judges",
    "metrics_digest",
    "metrics_table",
    "psnr",
    "row_to_jsonable",
    "side_by_side",
    "smartedit_prepare",
    "ssim",
    "target_iou",
]
