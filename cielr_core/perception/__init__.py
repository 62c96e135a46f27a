"""Perception (CIELR §3.3): SAM2 masks + OWLv2 labels + DepthAnything depth -> SSR.

One module per concern: ``segment`` (SAM2 automatic masks), ``label`` (OWLv2 detection, query
embedding cache, non-square box scaling, NMS), ``depth`` (DepthAnything), ``build`` (mask/box IoU
matching, same-label merging, depth medians, ids), ``overlay`` (picture for humans), ``loading``
(models through the registry), ``perceiver`` (the stage object the tasks call). No prefect here.
"""

from cielr_core.perception.build import (
    assemble,
    carry_ids,
    match_labels,
    merge_groups,
    normalised_median_depth,
)
from cielr_core.perception.overlay import render_overlay
from cielr_core.perception.perceiver import Perceiver
from cielr_core.perception.results import Detections, SegmentResult
from cielr_core.perception.versions import (
    ASSEMBLE_CODE_VERSION,
    DEPTH_CODE_VERSION,
    LABEL_CODE_VERSION,
    SEGMENT_CODE_VERSION,
)
from cielr_core.perception.vocabulary import load_vocabulary

__all__ = [
    "ASSEMBLE_CODE_VERSION",
    "DEPTH_CODE_VERSION",
    "LABEL_CODE_VERSION",
    "SEGMENT_CODE_VERSION",
    "Detections",
    "Perceiver",
    "SegmentResult",
    "assemble",
    "carry_ids",
    "load_vocabulary",
    "match_labels",
    "merge_groups",
    "normalised_median_depth",
    "render_overlay",
]
