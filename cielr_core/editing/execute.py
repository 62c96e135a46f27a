"""Executing edit steps and plans.

One step: build the step's mask (:func:`step_mask`), dilate it by ``editing.dilate_px``, inpaint
(a crop around the mask at the model's resolution when ``editing.crop_mode``, else the whole
image), then paste back with a feathered seam. Pixels outside the dilated mask are the input's,
exactly; :attr:`StepResult.mask` is that dilated mask (the region allowed to change).

Operations and their defaults (``EditingConfig``):

* ``remove``  -- backend ``remove_backend`` (``opencv`` by default); with diffusers the prompt is
  ``remove_prompt`` and the removed objects' labels join the negative prompt;
* ``replace`` -- backend ``backend``; the step's prompt describes the new object;
* ``add``     -- backend ``backend``; the mask is the placement region (:mod:`.placement`);
* ``recolor`` -- backend ``backend``; the step's prompt, within the object's mask.

A prompt-following operation routed to the OpenCV backend is skipped with a reason (a classical
inpainter cannot draw a described object). An empty mask skips the step with a reason.

A plan runs its steps in order, step j editing step j-1's output, with the same seed per step (the
same as the per-step orchestration task does).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cielr_core import masks as M
from cielr_core.config import EditingConfig, Settings
from cielr_core.plan import EditPlan, EditStep
from cielr_core.ssr import Scene

from .errors import EditingError
from .inpainters import Inpainter, editing_config, make_inpainter
from .placement import placement_mask
from .prep import check_mask_size, check_rgb, composite, crop_box, feather_alpha


@dataclass
class StepResult:
    image: np.ndarray  # HxWx3 uint8, the input's size
    mask: np.ndarray  # HxW bool: the dilated region allowed to differ from the input (all False if skipped)
    skipped: bool
    backend: str | None
    reason: str | None = None
    operation: str | None = None
    prompt: str | None = None
    crop: tuple[int, int, int, int] | None = None  # the window that was inpainted
    seconds: float = 0.0


@dataclass
class PlanResult:
    image: np.ndarray
    step_images: list[np.ndarray] = field(default_factory=list)  # the image after each step
    steps: list[StepResult] = field(default_factory=list)
    mask: np.ndarray | None = None  # union of the steps' dilated masks

    @property
    def n_edited(self) -> int:
        return sum(not r.skipped for r in self.steps)


SceneSource = Scene | Sequence[Scene] | Callable[[int, EditStep, np.ndarray], Scene]


# -- masks ---------------------------------------------------------------------------------------
def step_mask(step: EditStep, scene: Scene | None, shape: tuple[int, ...], settings=None) -> np.ndarray:
    """The (undilated) region a step edits, HxW bool.

    ``remove`` / ``replace`` / ``recolor``: the union of the target objects' masks. ``add``: the
    placement region (relative to an object of ``scene`` or an explicit box). A step that is not
    ``ok`` has an empty mask. Unknown object ids and masks of another size are EditingErrors.
    """
    h, w = int(shape[0]), int(shape[1])
    if step.status != "ok" or step.operation is None:
        return np.zeros((h, w), dtype=bool)
    if scene is not None and (scene.ssr.width, scene.ssr.height) != (w, h):
        raise EditingError(
            f"the scene's masks are {scene.ssr.width}x{scene.ssr.height} (WxH) but the image is {w}x{h}; "
            "the SSR must describe this image (re-run perception on the current image)"
        )
    if step.operation == "add":
        p = step.placement
        anchor = None
        if p.relation != "box":
            _need(scene, [p.object_id])
            anchor = M.bbox(check_mask_size(scene.mask(p.object_id), (h, w), f"mask of object {p.object_id}"))
            if anchor is None:
                raise EditingError(f"placement anchor object {p.object_id} has an empty mask")
        return placement_mask(p, anchor, (h, w))
    _need(scene, step.target_ids)
    return M.union(
        (check_mask_size(scene.mask(i), (h, w), f"mask of object {i}") for i in step.target_ids), shape=(h, w)
    )


def _need(scene: Scene | None, ids: Sequence[int]) -> None:
    if scene is None:
        raise EditingError(f"the step refers to objects {list(ids)} but no scene was given")
    missing = [i for i in ids if i not in scene.masks]
    if missing:
        raise EditingError(f"the step refers to objects {missing} that the scene lacks (it has {scene.ssr.ids})")


# -- one region ----------------------------------------------------------------------------------
def inpaint_region(
    rgb: np.ndarray,
    mask: np.ndarray,
    inpainter: Inpainter,
    settings: Settings | EditingConfig,
    *,
    prompt: str = "",
    negative_prompt: str = "",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int] | None]:
    """Inpaint ``mask`` (undilated) of ``rgb``; returns (image, dilated mask, crop window).

    The image differs from ``rgb`` only inside the dilated mask. An empty mask returns a copy.
    """
    cfg, _ = editing_config(settings)
    rgb = check_rgb(rgb)
    core = check_mask_size(mask, rgb.shape)
    allowed = M.dilate(core, cfg.dilate_px)
    H, W = core.shape
    if not allowed.any():
        return rgb.copy(), allowed, None
    if cfg.crop_mode:
        min_side = (inpainter.resolution // 2) if inpainter.resolution else 0
        box = crop_box(allowed, cfg.crop_margin, min_side)
    else:
        box = (0, 0, W, H)
    x0, y0, x1, y1 = box
    patch = inpainter.inpaint(
        rgb[y0:y1, x0:x1], allowed[y0:y1, x0:x1], prompt=prompt, negative_prompt=negative_prompt, seed=seed
    )
    patch = np.asarray(patch)
    if patch.shape != (y1 - y0, x1 - x0, 3) or patch.dtype != np.uint8:
        raise EditingError(
            f"{inpainter.name} returned {patch.shape} {patch.dtype} for a {x1 - x0}x{y1 - y0} crop"
        )
    alpha = feather_alpha(allowed, core, cfg.feather_px, box)
    return composite(rgb, patch, alpha, box, allowed), allowed, box


# -- one step ------------------------------------------------------------------------------------
def _plan_for(step: EditStep, scene: Scene | None, cfg: EditingConfig) -> tuple[str, str, str]:
    """(backend, prompt, negative prompt) for a step."""
    op = step.operation
    neg = cfg.negative_prompt
    if op == "remove":
        labels = []
        if scene is not None:
            labels = sorted({scene.ssr.objects[i].label for i in step.target_ids if i in scene.ssr.objects}
                            - {"unknown"})
        if labels:
            neg = ", ".join([neg, *labels]) if neg else ", ".join(labels)
        return cfg.remove_backend, cfg.remove_prompt, neg
    return cfg.backend, (step.prompt or step.subtask), neg


def execute_step(
    rgb: np.ndarray,
    step: EditStep,
    scene: Scene | None,
    settings: Settings | EditingConfig,
    seed: int | None = None,
    *,
    inpainter: Inpainter | None = None,
) -> StepResult:
    """Execute one plan step on ``rgb`` (HxWx3 uint8). ``seed`` defaults to ``editing.seed``.

    ``inpainter`` overrides the backend chosen from the config (tests, benchmarks).
    """
    t0 = time.perf_counter()
    cfg, _ = editing_config(settings)
    rgb = check_rgb(rgb)
    seed = cfg.seed if seed is None else int(seed)
    H, W = rgb.shape[:2]

    def skipped(reason: str, backend: str | None = None) -> StepResult:
        return StepResult(rgb.copy(), np.zeros((H, W), dtype=bool), True, backend, reason, step.operation,
                          None, None, time.perf_counter() - t0)

    if step.status != "ok":
        return skipped(step.reason or f"step status {step.status!r}: nothing to edit")
    core = step_mask(step, scene, rgb.shape, settings)
    if not core.any():
        what = (f"placement {step.placement.relation!r} lies outside the image" if step.operation == "add"
                else f"the masks of objects {step.target_ids} are empty")
        return skipped(f"empty mask: {what}")
    backend, prompt, negative = _plan_for(step, scene, cfg)
    if inpainter is None:
        if backend == "opencv" and step.operation != "remove":
            return skipped(
                f"operation {step.operation!r} needs a prompt-following inpainter but the backend is 'opencv' "
                "(set editing.backend to 'diffusers')", "opencv")
        inpainter = make_inpainter(backend, settings)
    image, allowed, box = inpaint_region(rgb, core, inpainter, settings, prompt=prompt,
                                         negative_prompt=negative, seed=seed)
    return StepResult(image, allowed, False, inpainter.name, None, step.operation,
                      prompt if inpainter.follows_prompt else None, box, time.perf_counter() - t0)


# -- a plan --------------------------------------------------------------------------------------
def execute_plan(
    rgb: np.ndarray,
    plan: EditPlan,
    scenes: SceneSource,
    settings: Settings | EditingConfig,
    seed: int | None = None,
    *,
    inpainter: Inpainter | None = None,
) -> PlanResult:
    """Run ``plan.steps`` in order, step j on step j-1's output.

    ``scenes`` is one Scene used for every step, a sequence with one Scene per step, or a callback
    ``(j, step, current_image) -> Scene`` (e.g. re-perceiving the current image).
    """
    current = check_rgb(rgb)
    H, W = current.shape[:2]
    if not callable(scenes) and not isinstance(scenes, Scene):
        scenes = list(scenes)
        if len(scenes) != len(plan.steps):
            raise EditingError(f"the plan has {len(plan.steps)} steps but {len(scenes)} scenes were given")
    out = PlanResult(image=current, mask=np.zeros((H, W), dtype=bool))
    for j, step in enumerate(plan.steps):
        if step.status != "ok":
            scene = None
        elif isinstance(scenes, Scene):
            scene = scenes
        elif callable(scenes):
            scene = scenes(j, step, current)
        else:
            scene = scenes[j]
        r = execute_step(current, step, scene, settings, seed, inpainter=inpainter)
        out.steps.append(r)
        if not r.skipped:
            current = r.image
            out.mask |= r.mask
        out.step_images.append(current)
    out.image = current
    return out
