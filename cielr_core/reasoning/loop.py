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
(``reasoning.max_invalid_retries`` times). Only the final ``reason`` answer is required: when it
stays invalid, :class:`InvalidAnswerError` fails the image. The other calls refine: a
decomposition that stays invalid falls back to the instruction as one sub-task, an assessment or
spatial code that stays invalid ends the update chain, and the loop reasons with the SSR it has
(the trace records each as ``optional step failed``).

The query set: the decomposition also names the instruction's objects (``query_objects``); each
sub-task first asks perception for those the SSR's query set lacks (a ``semantic-instruction``
update), and the trace records the whole query set (vocabulary + added queries) whenever it
changes. Built-in relations are recomputed after every semantic update (never carried stale), and
``finer`` / ``coarser`` move one step per request from the SSR's current segmentation
(:mod:`.presets`).
Mode ``single_pass`` (the paper's ablation) reasons on the input SSR with no assess/update chain.
Multi-step edits: ``plan`` reasons every sub-task on the given image, carrying the SSR forward;
the pipeline instead perceives step j on the image step j-1 produced and calls ``plan_step``.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

import numpy as np
from pydantic import BaseModel, ValidationError

from cielr_core.editing.color import color_names
from cielr_core.plan import EditPlan, EditStep, Placement
from cielr_core.reasoning import presets
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
from cielr_core.reasoning.vision import VISION_NOTE, set_of_marks
from cielr_core.relations import has_builtin, refresh_builtin
from cielr_core.ssr import SSR, Scene
from cielr_core.vocabulary import load_vocabulary, merge_queries

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
        self.query_objects: list[str] = []  # from the last decomposition
        self._marks: tuple[str, np.ndarray] | None = None  # (SSR digest, set-of-mark picture)
        self._vision_ctx: tuple[Scene, np.ndarray | None] | None = None  # the chain's current scene and image
        self._recorded_query_sets: set[tuple] = set()

    # -- one validated call -----------------------------------------------------------------------
    def _ask(self, call_name: str, messages: list[dict], schema: type[BaseModel], *,
             convert: Optional[Callable[[Any], Any]] = None, subtask: Optional[str] = None,
             scene: Scene | None = None, rgb: np.ndarray | None = None) -> Any:
        attempts = int(self.cfg.max_invalid_retries) + 1
        error = ""
        if scene is None and self._vision_ctx is not None:  # a call made deeper in the chain (spatial code)
            scene, rgb = self._vision_ctx
        image = self._image_for(scene, rgb)
        if image is not None:
            messages = [{**messages[0], "content": messages[0]["content"] + "\n" + VISION_NOTE}, *messages[1:]]
        for attempt in range(attempts):
            try:
                call = (self.llm.complete(messages, schema, call_name=call_name) if image is None
                        else self.llm.complete(messages, schema, image=image, call_name=call_name))
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
    def decompose(self, instruction: str, scene: Scene, rgb: np.ndarray | None = None) -> list[str]:
        self.trace.ssr(scene, reason="input")
        msgs = self.prompts.messages("decompose", instruction=instruction, ssr=scene.ssr.llm_view(),
                                     max_subtasks=self.cfg.max_subtasks)

        def convert(a: Any) -> tuple[list[str], list[str]]:
            subs = [" ".join(s.split()) for s in a.subtasks]
            subs = [s for s in subs if s]
            if not subs:
                raise ValueError("subtasks: give at least one non-empty sub-task")
            return subs, merge_queries(getattr(a, "query_objects", None) or [])

        try:
            subs, self.query_objects = self._ask(
                "decompose", msgs, decomposition_schema(self.cfg.max_subtasks, self.cfg.max_text_chars), convert=convert,
                scene=scene, rgb=rgb)
        except InvalidAnswerError as e:
            self._optional_failed(e)
            self.query_objects = []
            return [" ".join(instruction.split()) or instruction]
        if self.query_objects:
            self.trace.note("instruction objects", query_objects=self.query_objects)
        return subs

    def _image_for(self, scene: Scene | None, rgb: np.ndarray | None) -> np.ndarray | None:
        """The set-of-mark picture of ``scene`` when ``reasoning.show_image`` is on and the image is
        at hand (drawn once per SSR version)."""
        if not self.cfg.show_image or scene is None or rgb is None:
            return None
        digest = scene.ssr.digest()
        if self._marks is None or self._marks[0] != digest:
            self._marks = (digest, set_of_marks(rgb, scene))
        return self._marks[1]

    def _optional_failed(self, e: InvalidAnswerError, subtask: str | None = None) -> None:
        self.trace.note("optional step failed", subtask=subtask, call_name=e.call_name, error=e.error,
                        attempts=e.attempts)

    def _record_query_set(self, scene: Scene, subtask: str | None) -> None:
        """The detector queries behind ``scene`` (vocabulary + added queries), once per distinct set."""
        prov = scene.ssr.provenance or {}
        extra = list(prov.get("extra_queries") or [])
        spec = self.settings.perception.owlv2.vocabulary
        vocab = dict(prov.get("vocabulary") or {"name": spec})
        key = (json.dumps(vocab, sort_keys=True, default=str), tuple(extra))
        if key in self._recorded_query_sets:
            return
        self._recorded_query_sets.add(key)
        try:
            words = load_vocabulary(spec)
        except ValueError as e:  # an SSR read back without its vocabulary file: record what is known
            words, vocab["error"] = [], str(e)
        self.trace.note("query set", subtask=subtask, version=scene.ssr.version, vocabulary=vocab,
                        extra_queries=extra, queries=merge_queries(words, extra))

    def _instruction_queries(self, objects: list[str], rgb: np.ndarray | None, scene: Scene,
                             subtask: str) -> Scene:
        """Ask perception for the instruction's objects (a semantic update that re-labels the SSR's
        masks) unless the SSR's query set has them all already (the updater then returns ``scene``)."""
        if self.updater is None or rgb is None:
            self.trace.note("instruction objects not queried", subtask=subtask,
                            why="no perception updater" if self.updater is None else "no image")
            return scene
        new = self.updater(rgb, scene, objects, sam2_overrides=None)
        if new is scene:
            return scene
        scene = _as_next(scene, new, "semantic-instruction", {"queries": objects})
        self.trace.ssr(scene, reason="semantic-instruction", subtask=subtask, detail={"queries": objects})
        return scene

    # -- one sub-task -------------------------------------------------------------------------
    def plan_step(self, subtask: str, instruction: str, rgb: np.ndarray | None, scene: Scene,
                  query_objects: list[str] | None = None) -> tuple[EditStep, Scene]:
        """Assess / update / reason one sub-task. ``query_objects``: the instruction's objects
        (default: those of this Reasoner's last decomposition) join the query set first."""
        self.trace.ssr(scene, reason="input", subtask=subtask)
        objects = self.query_objects if query_objects is None else merge_queries(query_objects)
        if objects:
            scene = self._instruction_queries(objects, rgb, scene, subtask)
        self._record_query_set(scene, subtask)
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
                         subtask=subtask, scene=scene, rgb=rgb)
        return step, scene

    def replan_step(self, subtask: str, instruction: str, scene: Scene, rejected: EditStep, why: str) -> EditStep:
        """Reason ``subtask`` once more over ``scene`` after the edit judge rejected the edit of
        ``rejected`` for ``why`` (the ``reason`` call, followed by the ``replan`` prompt)."""
        if "replan" not in self.prompts.templates:
            raise ValueError(f"prompt set {self.cfg.prompt_version} has no replan prompt (sets 3 and later have)")
        ssr = scene.ssr
        digest = ssr.digest()
        msgs = self.prompts.messages("reason", instruction=instruction, subtask=subtask, version=ssr.version,
                                     ssr=ssr.llm_view(), colors=", ".join(color_names()))
        msgs.append({"role": "user", "content": self.prompts.render(
            "replan", step=rejected.model_dump_json(exclude_none=True), why=why)})
        self.trace.note("re-plan after a rejected edit", subtask=subtask, why=why)
        schema = reason_schema(ssr.ids, ssr.width, ssr.height, self.cfg.max_text_chars,
                               operations_for_prompt_version(self.cfg.prompt_version))
        return self._ask("reason", msgs, schema, convert=lambda a: _to_step(a, subtask, digest), subtask=subtask)

    def plan(self, instruction: str, rgb: Optional[np.ndarray], scene: Scene) -> EditPlan:
        steps = []
        for subtask in self.decompose(instruction, scene, rgb):
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
            try:
                a: Assessment = self._ask("assess", msgs, assessment_schema(self.cfg.max_text_chars), subtask=subtask,
                                          scene=scene, rgb=rgb)
            except InvalidAnswerError as e:  # the check only refines: reason with the SSR we have
                self._optional_failed(e, subtask)
                history.append(f"the sufficiency check gave no valid answer ({e.error})")
                break
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
                level = presets.current_level(ssr.provenance)
                new_level = presets.next_level(level, a.segmentation, self.cfg.max_segmentation_steps)
                overrides = (None if new_level is None
                             else presets.overrides_for_level(self.settings.perception.sam2, new_level))
                if a.segmentation != "keep" and new_level is None:
                    bound = "finest" if a.segmentation == "finer" else "coarsest"
                    history.append(f"segmentation is already the {bound} allowed "
                                   f"({self.cfg.max_segmentation_steps} step(s) from the configured settings): "
                                   "not changed")
                    self.trace.note("segmentation bound reached", subtask=subtask, level=level,
                                    request=a.segmentation, max_segmentation_steps=self.cfg.max_segmentation_steps)
                if not queries and not overrides:
                    history.append("semantic update asked for, but with no queries and no segmentation change: "
                                   "nothing was done")
                    continue
                before = len(ssr.objects)
                new = self.updater(rgb, scene, queries, sam2_overrides=overrides)
                if new is scene:
                    history.append(f"queries {queries} are all in the query set already: nothing new to detect")
                    continue
                scene = _as_next(scene, new, "semantic", {"queries": queries, "sam2_overrides": overrides},
                                 level=new_level)
                builtin_done = _has_builtin(scene.ssr)
                self.trace.ssr(scene, reason="semantic", subtask=subtask,
                               detail={"queries": queries, "sam2_overrides": overrides})
                self._record_query_set(scene, subtask)
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
                    self._vision_ctx = (scene, rgb)
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


def _as_next(old: Scene, new: Scene, kind: str, detail: Any, level: int | None = None) -> Scene:
    """Make sure an updated scene is a later version in the chain, with its parent and its
    segmentation level (``level``, else the old scene's) recorded, and its built-in relations true
    for its objects whatever the updater copied over."""
    if not isinstance(new, Scene):
        raise TypeError(f"the perception updater returned {type(new).__name__}, not a Scene")
    data = new.ssr.model_dump(mode="python")
    if new.ssr.version <= old.ssr.version:
        data["version"] = old.ssr.version + 1
    prov = dict(data.get("provenance") or {})
    if "parent" not in prov:
        prov["parent"] = old.ssr.digest()
        prov.setdefault("update", {"kind": kind, "detail": detail})
    prov[presets.LEVEL_KEY] = presets.current_level(old.ssr.provenance) if level is None else level
    data["provenance"] = prov
    scene = Scene(ssr=SSR.model_validate(data), masks=new.masks)
    return refresh_builtin(scene, compute=has_builtin(old.ssr) or has_builtin(new.ssr))


def _secrets(settings: Any) -> list:
    out = []
    for path in (("llm", "api_key"), ("eval", "vlm", "api_key"), ("store", "key"), ("store", "secret")):
        v = settings
        for p in path:
            v = getattr(v, p, None)
        out.append(v)
    return out
