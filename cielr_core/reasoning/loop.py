"""The reasoning loop of CIELR (§3.4): decompose → per sub-task (assess → update)* → reason.

* **decompose** the instruction into ordered sub-tasks;
* for each sub-task, **assess** whether the SSR suffices (``none`` / ``semantic`` / ``spatial``) and
  **update** it: a semantic update calls perception's ``update_semantic(rgb, scene, queries,
  sam2_overrides=...)`` with the LLM's label queries (and finer/coarser segmentation); a spatial
  update first computes the built-in relations (:mod:`.spatial`) and, only if the next assessment
  still says ``spatial``, asks for code that runs in the sandbox (:mod:`.sandbox`). At most
  ``reasoning.max_iterations`` assess/update rounds; past the bound the loop reasons on what it has
  (the trace says so);
* **reason**: target ids (an enum of the ids in the current SSR), operation, inpainter prompt and,
  for ``add``, a placement — or ``no_target`` with a reason.

Every answer is validated; an invalid one is re-asked with the validation error appended
(``reasoning.max_invalid_retries`` times), then :class:`InvalidAnswerError` fails the image.
Mode ``single_pass`` (the paper's ablation) reasons on the input SSR with no assess/update chain.
Multi-step edits: ``plan`` reasons every sub-task on the given image, carrying the SSR forward;
the pipeline instead perceives step j on the image step j-1 produced and calls ``plan_step``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
from pydantic import BaseModel, ValidationError

from cielr_core.editing.color import color_names
from cielr_core.plan import EditPlan, EditStep, Placement
from cielr_core.reasoning.llm import (
    LLM,
    AnswerParseError,
    InvalidAnswerError,
    LLMError,
    format_validation_error,
)
from cielr_core.reasoning.prompting import Prompts
from cielr_core.reasoning.sandbox import SandboxError, SandboxRefused, check_code, run_code, sandbox_status
from cielr_core.reasoning.schemas import (
    Assessment,
    SpatialCode,
    answer_fields,
    assessment_schema,
    decomposition_schema,
    operations_for_prompt_version,
    reason_schema,
    spatial_code_schema,
)
from cielr_core.reasoning.spatial import BUILTIN_RELATIONS_VERSION, builtin_relations, with_attributes
from cielr_core.reasoning.trace import Trace
from cielr_core.ssr import SSR, Scene

# update_semantic(rgb, scene, extra_queries, sam2_overrides=None) -> Scene
Updater = Callable[..., Scene]

NEEDS_PROMPT = ("replace", "add", "recolor", "transform", "global")


class Reasoner:
    def __init__(self, settings: Any, llm: LLM, updater: Optional[Updater] = None, trace: Optional[Trace] = None):
        self.settings = settings
        self.cfg = settings.reasoning
        self.llm = llm
        self.updater = updater
        self.trace = trace if trace is not None else Trace()
        self.trace.redact(*_secrets(settings))
        self.prompts = Prompts(self.cfg.prompt_version)

    # -- one validated call -----------------------------------------------------------------------
    def _ask(self, call_name: str, messages: list[dict], schema: type[BaseModel], *,
             convert: Optional[Callable[[Any], Any]] = None, subtask: Optional[str] = None) -> Any:
        attempts = int(self.cfg.max_invalid_retries) + 1
        error = ""
        for attempt in range(attempts):
            try:
                call = self.llm.complete(messages, schema, call_name=call_name)
            except AnswerParseError as e:
                error, raw = str(e), e.raw
                self.trace.llm_call(call_name=call_name, attempt=attempt, messages=messages, raw=raw, error=error,
                                    latency_s=e.latency_s, tokens=e.tokens, extra=e.extra, subtask=subtask)
            except LLMError as e:
                self.trace.llm_call(call_name=call_name, attempt=attempt, messages=messages, raw=None,
                                    error=f"LLMError: {e}", subtask=subtask)
                raise
            else:
                try:
                    value = convert(call.parsed) if convert else call.parsed
                except ValidationError as e:
                    error = format_validation_error(e)
                except (ValueError, SandboxRefused) as e:
                    error = str(e)
                else:
                    self.trace.llm_call(call_name=call_name, attempt=attempt, messages=messages, raw=call.raw,
                                        parsed=call.parsed, latency_s=call.latency_s, tokens=call.tokens,
                                        extra=call.extra, subtask=subtask)
                    return value
                raw = call.raw
                self.trace.llm_call(call_name=call_name, attempt=attempt, messages=messages, raw=raw,
                                    parsed=call.parsed, error=error, latency_s=call.latency_s, tokens=call.tokens,
                                    extra=call.extra, subtask=subtask)
            messages = messages + [
                {"role": "assistant", "content": raw},
                {"role": "user", "content": self.prompts.render("retry", error=error)},
            ]
        raise InvalidAnswerError(call_name, error, attempts)

    # -- decompose ----------------------------------------------------------------------------
    def decompose(self, instruction: str, scene: Scene) -> list[str]:
        self.trace.ssr(scene, reason="input")
        msgs = self.prompts.messages("decompose", instruction=instruction, ssr=scene.ssr.llm_view(),
                                     max_subtasks=self.cfg.max_subtasks)

        def convert(a: Any) -> list[str]:
            subs = [" ".join(s.split()) for s in a.subtasks]
            subs = [s for s in subs if s]
            if not subs:
                raise ValueError("subtasks: give at least one non-empty sub-task")
            return subs

        return self._ask("decompose", msgs, decomposition_schema(self.cfg.max_subtasks, self.cfg.max_text_chars), convert=convert)

    # -- one sub-task -------------------------------------------------------------------------
    def plan_step(self, subtask: str, instruction: str, rgb: Optional[np.ndarray], scene: Scene) -> tuple[EditStep, Scene]:
        self.trace.ssr(scene, reason="input", subtask=subtask)
        if self.cfg.mode == "full":
            scene = self._update_chain(subtask, instruction, rgb, scene)
        else:
            self.trace.note("single_pass: no assess/update chain", subtask=subtask)
        ssr = scene.ssr
        digest = ssr.digest()
        msgs = self.prompts.messages("reason", instruction=instruction, subtask=subtask, version=ssr.version,
                                     ssr=ssr.llm_view(), colors=", ".join(color_names()))

        def convert(a: Any) -> EditStep:
            return _to_step(a, subtask, digest)

        step = self._ask("reason", msgs, reason_schema(ssr.ids, ssr.width, ssr.height, self.cfg.max_text_chars,
                                                      operations_for_prompt_version(self.cfg.prompt_version)), convert=convert,
                         subtask=subtask)
        return step, scene

    def plan(self, instruction: str, rgb: Optional[np.ndarray], scene: Scene) -> EditPlan:
        steps = []
        for subtask in self.decompose(instruction, scene):
            step, scene = self.plan_step(subtask, instruction, rgb, scene)
            steps.append(step)
        return EditPlan(instruction=instruction, steps=steps)

    # -- the update chain ---------------------------------------------------------------------
    def _update_chain(self, subtask: str, instruction: str, rgb: Optional[np.ndarray], scene: Scene) -> Scene:
        history: list[str] = []
        builtin_done = _has_builtin(scene.ssr)
        previous_error = ""
        for it in range(int(self.cfg.max_iterations)):
            ssr = scene.ssr
            msgs = self.prompts.messages(
                "assess", instruction=instruction, subtask=subtask, version=ssr.version, ssr=ssr.llm_view(),
                history="\n".join(f"- {h}" for h in history) or "- none yet",
            )
            a: Assessment = self._ask("assess", msgs, assessment_schema(self.cfg.max_text_chars), subtask=subtask)
            if a.need == "none":
                self.trace.note("sufficient", subtask=subtask, iteration=it)
                return scene
            if a.need == "semantic":
                if self.updater is None or rgb is None:
                    why = "no perception updater" if self.updater is None else "no image"
                    history.append(f"semantic update not possible here ({why})")
                    self.trace.note("semantic update unavailable", subtask=subtask, why=why)
                    break
                queries = list(dict.fromkeys(q.strip() for q in a.queries if q.strip()))
                overrides = self._sam2_overrides(a.segmentation)
                if not queries and not overrides:
                    history.append("semantic update asked for, but with no queries and no segmentation change: "
                                   "nothing was done")
                    continue
                before = len(ssr.objects)
                new = self.updater(rgb, scene, queries, sam2_overrides=overrides)
                scene = _as_next(scene, new, "semantic", {"queries": queries, "sam2_overrides": overrides})
                builtin_done = _has_builtin(scene.ssr)
                self.trace.ssr(scene, reason="semantic", subtask=subtask,
                               detail={"queries": queries, "sam2_overrides": overrides})
                history.append(f"semantic update with queries {queries}"
                               + (f" and segmentation {a.segmentation}" if overrides else "")
                               + f": {before} -> {len(scene.ssr.objects)} objects")
            else:  # spatial
                if not builtin_done:
                    scene = with_attributes(scene, builtin_relations(scene), update="spatial-builtin",
                                            detail={"builtin_relations": BUILTIN_RELATIONS_VERSION})
                    builtin_done = True
                    self.trace.ssr(scene, reason="spatial-builtin", subtask=subtask)
                    history.append("built-in spatial relations added to the attributes (x_rank, y_rank, "
                                   "size_rank, depth_rank, nearest_object, contains, inside, label_count, ...)")
                elif self.cfg.allow_sandbox and not (status := sandbox_status(self.cfg.sandbox)).ok:
                    history.append(status.detail)  # fail closed: no OS isolation, no LLM-written code
                    self.trace.note("sandbox unavailable", subtask=subtask, detail=status.detail)
                    break
                elif self.cfg.allow_sandbox:
                    scene, previous_error = self._sandbox_round(subtask, instruction, scene, a.reason,
                                                                previous_error, history)
                else:
                    history.append("spatial code is disabled (reasoning.allow_sandbox = false)")
                    self.trace.note("sandbox disabled", subtask=subtask)
                    break
        else:
            self.trace.note("iteration bound reached", subtask=subtask, max_iterations=self.cfg.max_iterations)
            return scene
        self.trace.note("update chain stopped", subtask=subtask, history=history)
        return scene

    def _sandbox_round(self, subtask, instruction, scene, why, previous_error, history) -> tuple[Scene, str]:
        ssr = scene.ssr
        prev = f"Your previous code failed: {previous_error}" if previous_error else ""
        msgs = self.prompts.messages("spatial_code", instruction=instruction, subtask=subtask, why=why,
                                     version=ssr.version, ssr=ssr.llm_view(), previous_error=prev)

        def convert(a: SpatialCode) -> str:
            try:
                check_code(a.code)
            except SandboxRefused as e:
                raise ValueError(f"the code was refused by the sandbox: {e.reason}") from None
            return a.code

        try:
            code = self._ask("spatial_code", msgs, spatial_code_schema(self.cfg.max_text_chars), convert=convert,
                             subtask=subtask)
        except InvalidAnswerError as e:
            # spatial code only refines the SSR: code that stays refused (or answers that stay invalid)
            # are recorded and the loop reasons with the SSR it has
            self.trace.sandbox(code=None, ok=False, error=f"no runnable code: {e}", subtask=subtask, refused=True)
            history.append(f"spatial code was refused every time ({e})")
            return scene, str(e)
        try:
            res = run_code(code, scene, self.cfg.sandbox)
        except SandboxError as e:
            self.trace.sandbox(code=code, ok=False, error=e.reason, subtask=subtask,
                               refused=isinstance(e, SandboxRefused))
            history.append(f"spatial code failed: {e.reason}")
            return scene, e.reason
        self.trace.sandbox(code=code, ok=True, attributes=res.attributes, duration_s=res.duration_s, subtask=subtask,
                           isolation=res.isolation)
        scene = with_attributes(scene, res.attributes, update="spatial-code")
        self.trace.ssr(scene, reason="spatial-code", subtask=subtask)
        names = sorted({k for v in res.attributes.values() for k in v})
        history.append(f"spatial code added attributes {names} to {len(res.attributes)} object(s)")
        return scene, ""

    def _sam2_overrides(self, segmentation: str) -> dict[str, Any] | None:
        if segmentation == "keep":
            return None
        s = self.settings.perception.sam2
        if segmentation == "finer":
            return {"points_per_side": s.points_per_side * 2,
                    "pred_iou_thresh": round(max(0.0, s.pred_iou_thresh - 0.1), 4),
                    "stability_score_thresh": round(max(0.0, s.stability_score_thresh - 0.05), 4)}
        return {"points_per_side": max(2, s.points_per_side // 2),
                "pred_iou_thresh": round(min(1.0, s.pred_iou_thresh + 0.1), 4),
                "stability_score_thresh": round(min(1.0, s.stability_score_thresh + 0.03), 4)}


def _to_step(parsed: Any, subtask: str, digest: str) -> EditStep:
    a = answer_fields(parsed)
    reason = (getattr(a, "reason", "") or "").strip()
    if a.status == "no_target":
        return EditStep(subtask=subtask, status="no_target", reason=reason or "no object matches", ssr_digest=digest)
    op = getattr(a, "operation", None)
    prompt = (getattr(a, "prompt", "") or "").strip()
    if op is None:
        raise ValueError("operation: an ok answer needs an operation (remove, replace, add or recolor)")
    if op in NEEDS_PROMPT and not prompt:
        raise ValueError(f"prompt: a {op!r} answer needs a prompt for the inpainter")
    placement = None
    if op in ("add", "move"):
        p = getattr(a, "placement", None)
        if p is None:
            raise ValueError(f"placement: an {op!r} answer needs a placement")
        box = getattr(p, "box", None)
        placement = Placement(relation=p.relation, object_id=getattr(p, "object_id", None),
                              box=None if box is None else tuple(float(x) for x in box),
                              size_fraction=p.size_fraction)
    targets = sorted(set(getattr(a, "target_ids", []) or [])) if op not in ("add", "global") else []
    extra = {k: getattr(a, k) for k in ("scale", "anchor", "color") if getattr(a, k, None) is not None}
    return EditStep(subtask=subtask, status="ok", reason=reason, operation=op, target_ids=targets, prompt=prompt,
                    placement=placement, ssr_digest=digest, **extra)


def _has_builtin(ssr: SSR) -> bool:
    return bool(ssr.objects) and all("x_rank" in o.attributes for o in ssr.objects.values())


def _as_next(old: Scene, new: Scene, kind: str, detail: Any) -> Scene:
    """Make sure an updated scene is a later version in the chain, with its parent recorded."""
    if not isinstance(new, Scene):
        raise TypeError(f"the perception updater returned {type(new).__name__}, not a Scene")
    data = new.ssr.model_dump(mode="python")
    changed = False
    if new.ssr.version <= old.ssr.version:
        data["version"] = old.ssr.version + 1
        changed = True
    prov = dict(data.get("provenance") or {})
    if "parent" not in prov:
        prov["parent"] = old.ssr.digest()
        prov.setdefault("update", {"kind": kind, "detail": detail})
        data["provenance"] = prov
        changed = True
    if not changed:
        return new
    return Scene(ssr=SSR.model_validate(data), masks=new.masks)


def _secrets(settings: Any) -> list:
    out = []
    for path in (("llm", "api_key"), ("eval", "vlm", "api_key"), ("store", "key"), ("store", "secret")):
        v = settings
        for p in path:
            v = getattr(v, p, None)
        out.append(v)
    return out
