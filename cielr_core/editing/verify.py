"""Checked results: verify each step's edit, retry with another seed, then re-plan once.

After a step is executed a judge looks at it (:class:`Judge`):

* :class:`VLMJudge` -- a vision-language model (``eval.vlm``) sees the input and the output side by
  side and answers ``{"reason", "done", "changed_elsewhere"}``: does the edited region now show what
  the step asked, and did anything outside it change? Used when ``editing.verify.judge`` is ``vlm``,
  or ``auto`` with a VLM endpoint configured (``eval.vlm.base_url``).
* :class:`ClipJudge` -- CLIP (``eval.clip``) similarity of the edited region's crop to text: for
  ``remove`` (and the hole of ``move``) the removed objects' labels must be LESS similar after than
  before; for the other operations the crop must match the step's prompt (the whole image for
  ``global``) by at least ``editing.verify.clip_threshold`` (cosine).

:func:`execute_verified` runs a step up to ``editing.max_attempts`` times with seeds ``seed``,
``seed + 1``, ... (an attempt whose output equals the previous one -- a deterministic backend --
ends the seed retries early), then, if every attempt was rejected and a ``replan`` callback is
given, asks it once for a new step with the judge's last reason and runs that. Every attempt, with
its verdict, is in :attr:`Verified.attempts`; ``verified`` is True (accepted), False (all rejected)
or None (not checked: the step was skipped, or no judge could be loaded -- the reason is recorded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cielr_core.plan import EditStep

from .errors import EditingError
from .execute import StepResult, execute_step
from .inpainters import editing_config


@dataclass
class Verdict:
    ok: bool
    reason: str
    judge: str
    score: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@runtime_checkable
class Judge(Protocol):
    name: str

    def judge(self, before: np.ndarray, after: np.ndarray, mask: np.ndarray, step: EditStep,
              labels: list[str]) -> Verdict: ...


@dataclass
class Verified:
    result: StepResult
    step: EditStep  # the step that produced ``result`` (a re-planned one if it came to that)
    verified: bool | None
    attempts: list[dict] = field(default_factory=list)
    replanned: bool = False
    note: str | None = None

    def trace(self) -> dict:
        return {"verified": self.verified, "replanned": self.replanned, "note": self.note, "attempts": self.attempts}


# -- judges --------------------------------------------------------------------------------------
def _crop(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return rgb
    return rgb[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


class ClipJudge:
    def __init__(self, settings, threshold: float):
        from cielr_core.metrics import models as mm

        self.settings = settings
        self.threshold = float(threshold)
        self.model, self.processor = mm.get_clip(settings)
        self.name = f"clip/{settings.eval.clip.id}"

    def _sims(self, images: list[np.ndarray], texts: list[str]) -> np.ndarray:
        from cielr_core.metrics.learned import _clip_image_embeds, _clip_text_embeds

        img = _clip_image_embeds(self.model, self.processor, images)
        txt = _clip_text_embeds(self.model, self.processor, texts)
        return (img @ txt.T).cpu().numpy()

    def judge(self, before, after, mask, step, labels):
        removing = step.operation == "remove"
        if removing:
            if not labels:
                return Verdict(True, "no label to check the removal against", self.name)
            region = mask
            sims = self._sims([_crop(before, region), _crop(after, region)], [f"a photo of a {lb}" for lb in labels])
            b, a = float(sims[0].max()), float(sims[1].max())
            ok = a < b
            return Verdict(ok, f"CLIP similarity of the region to {labels}: {b:.3f} before, {a:.3f} after "
                               + ("(less: removed)" if ok else "(not less: the object still shows)"), self.name, a)
        text = step.prompt or step.subtask
        region = np.ones(after.shape[:2], bool) if step.operation == "global" else mask
        score = float(self._sims([_crop(after, region)], [text])[0, 0])
        ok = score >= self.threshold
        return Verdict(ok, f"CLIP similarity of the edited region to {text!r}: {score:.3f} "
                           f"({'>=' if ok else '<'} threshold {self.threshold:g})", self.name, score)


class JudgeAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(max_length=400, description="what the edited image shows in the region, compared with the input")
    done: bool = Field(description="the region now shows what the step asked for")
    changed_elsewhere: bool = Field(description="something outside the region changed that the step did not ask for")


JUDGE_SYSTEM = ("You check image edits. You see two images side by side: the input on the left, the edited image "
                "on the right. Answer with one JSON object: reason first, then done and changed_elsewhere.")
JUDGE_USER = ("The edit step was: {what}. {where} Did the edit do what the step asked? Did anything else in the "
              "image change that the step did not ask for?")


class VLMJudge:
    def __init__(self, vlm, name: str):
        self.vlm = vlm
        self.name = f"vlm/{name}"

    def judge(self, before, after, mask, step, labels):
        from cielr_core.metrics.idcs import side_by_side

        what = f"{step.operation} ({step.prompt or step.subtask})"
        if step.operation == "global":
            where = "The whole image may change."
        else:
            ys, xs = np.nonzero(mask)
            where = (f"Only the region x {xs.min()}..{xs.max()}, y {ys.min()}..{ys.max()} (pixels of the input) may "
                     "change." if len(ys) else "")
        if labels:
            what += f"; objects: {', '.join(labels)}"
        msgs = [{"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": JUDGE_USER.format(what=what, where=where)}]
        call = self.vlm.complete(msgs, JudgeAnswer, image=side_by_side(before, after), call_name="verify")
        a = call.parsed
        ok = bool(a.done) and (step.operation == "global" or not bool(a.changed_elsewhere))
        return Verdict(ok, a.reason, self.name)


def make_judge(settings) -> Judge:
    """The configured judge (``editing.verify.judge``); ModelUnavailableError when it cannot load."""
    cfg, _ = editing_config(settings)
    v = cfg.verify
    kind = v.judge
    if kind == "auto":
        kind = "vlm" if settings.eval.vlm.base_url else "clip"
    if kind == "vlm":
        from cielr_core.reasoning.factory import make_llm

        return VLMJudge(make_llm(settings.eval.vlm.model_copy(update={"temperature": 0.0}), settings),
                        settings.eval.vlm.model.id)
    return ClipJudge(settings, v.clip_threshold)


# -- the loop ------------------------------------------------------------------------------------
Replan = Callable[[EditStep, str], EditStep | None]


def _labels(step: EditStep, scene) -> list[str]:
    if scene is None:
        return []
    return sorted({scene.ssr.objects[i].label for i in step.target_ids if i in scene.ssr.objects} - {"unknown"})


def execute_verified(rgb: np.ndarray, step: EditStep, scene, settings, seed: int | None = None, *,
                     judge: Judge | None, replan: Replan | None = None, inpainter=None,
                     scene_for: Callable[[EditStep], Any] | None = None) -> Verified:
    """Execute ``step`` and check it with ``judge``; retry with other seeds up to
    ``editing.max_attempts``, then once re-plan (``replan(step, judge_reason)``) and check that."""
    cfg, _ = editing_config(settings)
    seed = cfg.seed if seed is None else int(seed)
    first = execute_step(rgb, step, scene, settings, seed, inpainter=inpainter)
    if first.skipped:
        return Verified(first, step, None, note="skipped: nothing to check")
    if judge is None:
        return Verified(first, step, None, note="not checked (no judge)")
    attempts: list[dict] = []
    result = first
    last_reason = ""
    previous = None
    for a in range(max(1, int(cfg.max_attempts))):
        s = seed + a
        if a > 0:
            result = execute_step(rgb, step, scene, settings, s, inpainter=inpainter)
            if previous is not None and np.array_equal(result.image, previous):
                attempts.append({"attempt": a, "seed": s, "backend": result.backend,
                                 "verdict": None, "note": "same output as the previous seed: the backend is "
                                 "deterministic, seed retries stop"})
                break
        v = judge.judge(rgb, result.image, result.mask, step, _labels(step, scene))
        attempts.append({"attempt": a, "seed": s, "backend": result.backend, "verdict": v.to_dict()})
        if v.ok:
            return Verified(result, step, True, attempts)
        last_reason = v.reason
        previous = result.image
    if replan is None:
        return Verified(result, step, False, attempts, note="rejected; no re-plan available")
    try:
        new_step = replan(step, last_reason)
    except (EditingError, ValueError) as e:
        return Verified(result, step, False, attempts, note=f"re-plan failed: {e}")
    if new_step is None or new_step.status != "ok":
        why = getattr(new_step, "reason", "") if new_step is not None else ""
        return Verified(result, step, False, attempts, note=f"re-plan gave no edit: {why}".strip())
    new_scene = scene_for(new_step) if scene_for is not None else scene
    r2 = execute_step(rgb, new_step, new_scene, settings, seed, inpainter=inpainter)
    if r2.skipped:
        attempts.append({"attempt": len(attempts), "seed": seed, "replanned": True, "step": new_step.model_dump(
            mode="json"), "verdict": None, "note": f"re-planned step skipped: {r2.reason}"})
        return Verified(result, step, False, attempts, replanned=True)
    v = judge.judge(rgb, r2.image, r2.mask, new_step, _labels(new_step, new_scene))
    attempts.append({"attempt": len(attempts), "seed": seed, "replanned": True, "backend": r2.backend,
                     "step": new_step.model_dump(mode="json"), "verdict": v.to_dict()})
    return Verified(r2, new_step, v.ok, attempts, replanned=True)
