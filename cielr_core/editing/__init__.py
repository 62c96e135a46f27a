"""Editing (CIELR section 3.5): model-agnostic inpainting that executes edit plans.

* :mod:`.inpainters` -- the :class:`Inpainter` protocol; diffusers pipelines by model id and a
  classical OpenCV inpainter; :func:`make_inpainter`.
* :mod:`.prep` -- mask preparation: dilation, crop around the mask, feathered paste.
* :mod:`.placement` -- where an ``add`` step paints.
* :mod:`.color` -- ``recolor`` as a chroma shift in OKLab (named colours by a table).
* :mod:`.execute` -- :func:`step_mask`, :func:`execute_step`, :func:`execute_plan`.

Never imports prefect.
"""

from __future__ import annotations

from .errors import EditingError
from .execute import PlanResult, StepResult, execute_plan, execute_step, inpaint_region, step_mask
from .inpainters import DiffusersInpainter, Inpainter, OpenCVInpainter, make_inpainter
from .placement import placement_box, placement_mask

# Part of the editing stage's cache digest: bump when outputs for the same inputs/config change.
EDITING_CODE_VERSION = "2"

__all__ = [
    "EDITING_CODE_VERSION",
    "DiffusersInpainter",
    "EditingError",
    "Inpainter",
    "OpenCVInpainter",
    "PlanResult",
    "StepResult",
    "execute_plan",
    "execute_step",
    "inpaint_region",
    "make_inpainter",
    "placement_box",
    "placement_mask",
    "step_mask",
]
