"""`edit(image, instruction)`: one image through CIELR as a plain function call, without Prefect.

It runs the stages of flows/pipeline.py in the same order with the same stage logic
(:mod:`cielr_core.pipeline`, which the Prefect tasks call too), so its edited image, mask and plan are
byte for byte those of `cielr edit` with the same settings and seed. Nothing is cached or written:
intermediate values pass through the same codecs as the store (PNG images, 1-bit PNG masks, npz
segmentations, JSON), so each stage sees exactly what it would have read back from the store.
``EditResult.save(folder)`` writes the files that `cielr edit --out folder` writes.

    from cielr_core import edit

    result = edit("photo.jpg", "remove the object that tells the time", profile="tiny")
    result.status, result.plan.steps, result.edited.shape
    result.save("out/")
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cielr_core import pipeline
from cielr_core.canonical import canonical_json, sha256_json
from cielr_core.config import Settings, load_settings
from cielr_core.images import BadImageError, decode_image, decode_png, encode_png, image_digest
from cielr_core.masks import decode_mask_png, encode_mask_png
from cielr_core.plan import EditPlan, EditStep
from cielr_core.ssr import Scene, load_scene, save_scene

OUTPUT_FILES = ("edited.png", "mask.png", "overlay.png", "ssr.json", "plan.json", "trace.json")

_lock = threading.Lock()
_perceivers: dict[str, Any] = {}
_llms: dict[str, Any] = {}
_models_checked: set[str] = set()


@dataclass
class EditResult:
    """What `cielr edit` writes, in memory.

    ``status``: ``ok`` (at least one step edited), ``no_target`` (nothing to edit; ``edited`` is the
    input) or ``failed`` (``error`` names the stage and the cause; the other fields hold what was
    done before it). ``edited``: RGB uint8, the input's size. ``mask``: bool, exactly the region
    allowed to differ from the input. ``plan``: the executed steps. ``ssr``: SSR version 0 with its
    masks. ``overlay``: the SSR's masks drawn on the input. ``trace``: as trace.json (every LLM call
    with prompt, raw answer, parsed answer, latency and tokens; every SSR version; every edit's trace).
    """

    status: str
    error: str | None = None
    edited: np.ndarray | None = None
    mask: np.ndarray | None = None
    plan: EditPlan | None = None
    ssr: Scene | None = None
    overlay: np.ndarray | None = None
    trace: dict[str, Any] = field(default_factory=dict)
    verified: bool | None = None
    n_steps: int = 0
    n_edited_steps: int = 0
    failed_stage: str | None = None

    def files(self) -> dict[str, bytes]:
        """The bytes of edited.png, mask.png, overlay.png, ssr.json, plan.json and trace.json, as
        `cielr edit` writes them (nothing for a failed image)."""
        if self.status == "failed" or self.edited is None:
            return {}
        return {
            "edited.png": encode_png(self.edited),
            "mask.png": encode_mask_png(self.mask),
            "overlay.png": encode_png(self.overlay),
            "ssr.json": self.ssr.ssr.canonical_json(),
            "plan.json": self.plan.canonical_json(),
            "trace.json": canonical_json(self.trace),
        }

    def save(self, folder: str | os.PathLike) -> Path:
        """Write :meth:`files` into ``folder`` (created); returns it. A failed image raises ValueError."""
        files = self.files()
        if not files:
            raise ValueError(f"nothing to save: the edit failed ({self.error})")
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (out / name).write_bytes(data)
        return out


class _Failed(Exception):
    def __init__(self, stage: str, cause: BaseException):
        super().__init__(f"{stage}: {type(cause).__name__}: {cause}")
        self.stage = stage


def _stage(name: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - the image fails naming the stage, as in the pipeline
        raise _Failed(name, e) from e


class _Memory:
    """The part of the artifact store's interface that SSR save/load uses, in memory."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def put_bytes(self, key: str, data: bytes) -> None:
        self.data[key] = bytes(data)

    def get_bytes(self, key: str) -> bytes:
        return self.data[key]

    def put_mask(self, key: str, mask: np.ndarray) -> None:
        self.data[key] = encode_mask_png(mask)

    def get_mask(self, key: str) -> np.ndarray:
        return decode_mask_png(self.data[key])


def _stored_scene(scene: Scene) -> Scene:
    """``scene`` as a stage reads it back from the store (ssr.json and 1-bit PNG masks)."""
    mem = _Memory()
    save_scene(mem, "ssr", scene)
    return load_scene(mem, "ssr")


def _stored_rgb(rgb: np.ndarray) -> np.ndarray:
    return decode_png(encode_png(rgb))


def _json(value: Any) -> Any:
    return json.loads(canonical_json(value))


def _check_models(s: Settings) -> None:
    """The run-level model check of `cielr run` / `cielr edit` (cielr_core.preflight), once per
    process and settings: a missing model raises ModelsUnavailable naming each model's own setting
    and `hf download <id>`, before any model is loaded."""
    from cielr_core.preflight import check_models

    key = sha256_json(s.model_dump(mode="json"))
    if key in _models_checked:
        return
    check_models(s)
    with _lock:
        _models_checked.add(key)


def _perceiver(s: Settings):
    from cielr_core.perception import Perceiver

    key = sha256_json([s.perception.digest(), s.perception.device, s.models_dir])
    with _lock:
        if key not in _perceivers:
            _perceivers[key] = Perceiver(s)
        return _perceivers[key]


def _llm(s: Settings):
    from cielr_core.reasoning import make_llm

    key = sha256_json([s.llm.digest(), s.llm.device, s.llm.base_url, s.models_dir])
    with _lock:
        if key not in _llms:
            _llms[key] = make_llm(s.llm, s)
        return _llms[key]


def _read_image(image: Any, s: Settings) -> np.ndarray:
    """A path, bytes, PIL image or RGB array, decoded and normalised as the load-image stage does."""
    lim = s.limits
    if isinstance(image, (str, os.PathLike)):
        path = Path(image).expanduser()
        try:
            with open(path, "rb") as f:
                data = f.read(lim.max_image_bytes + 1)
        except FileNotFoundError as e:
            raise BadImageError(f"{path}: no such file") from e
        except IsADirectoryError as e:
            raise BadImageError(f"{path}: is a directory, not an image") from e
        if len(data) > lim.max_image_bytes:
            raise BadImageError(f"{path}: larger than the {lim.max_image_bytes}-byte limit (limits.max_image_bytes)")
        try:
            return decode_image(data, max_pixels=lim.max_image_pixels, max_bytes=lim.max_image_bytes)
        except BadImageError as e:
            raise BadImageError(f"{path}: {e}") from e
    if isinstance(image, (bytes, bytearray)):
        return decode_image(bytes(image), max_pixels=lim.max_image_pixels, max_bytes=lim.max_image_bytes)
    return decode_image(encode_png(image), max_pixels=lim.max_image_pixels)


def _perceive(p: Any, s: Settings, rgb: np.ndarray, sha: str) -> Scene:
    from cielr_core.perception import Detections, SegmentResult

    seg = _stage("segment", pipeline.segment_image, p, rgb, s, None)
    seg = SegmentResult.from_npz_bytes(seg.to_npz_bytes())
    det = _stage("detect", p.detect, rgb, extra_queries=[])
    det = Detections.from_json(_json(det.to_json()))
    dep = np.asarray(_stage("depth", p.depth, rgb), dtype=np.float32)
    scene = _stage("merge", pipeline.assemble_ssr, p, seg, det, dep, image_sha256=sha, width=int(rgb.shape[1]),
                   height=int(rgb.shape[0]))
    return _stored_scene(scene)


def edit(image: Any, instruction: str, settings: Settings | None = None, *, seed: int | None = None,
         profile: str | None = None, config: dict[str, Any] | None = None) -> EditResult:
    """Perceive -> reason -> edit one image, as `cielr edit` does, in this process without Prefect.

    Args:
        image: A path, the file's bytes, a PIL image or an RGB uint8 array.
        instruction: The implicit instruction, e.g. "remove the object that tells the time".
        settings: The settings to use. Default: loaded as the command line loads them (profile, then
            ``config`` as the YAML file, then CIELR_* variables).
        seed: The inpainting seed. Default: ``editing.seed``.
        profile: With ``settings`` None: the profile (default, tiny, paper).
        config: With ``settings`` None: settings over the profile, as the YAML config file would.

    Returns:
        An :class:`EditResult`. A failure of the image (unreadable image, a model error, an invalid
        final answer) is ``status="failed"`` with ``error`` naming the stage, as `cielr edit` reports
        it; a settings error raises.

    Raises:
        cielr_core.preflight.ModelsUnavailable: A model the settings need is not available (checked
            once per process and settings, before any model is loaded; the message names each
            model's setting and `hf download <id>`).
    """
    if settings is None:
        settings = load_settings(profile=profile, config_data=config)
    elif profile is not None or config is not None:
        raise ValueError("give either settings or profile/config, not both")
    s = settings
    from cielr_core.models import pin_intra_op_threads

    pin_intra_op_threads(s.orchestration.torch_threads)  # as every task does: the same bytes
    seed = s.editing.seed if seed is None else int(seed)
    result = EditResult(status="failed")
    try:
        rgb = _stored_rgb(_stage("load", _read_image, image, s))
        sha = image_digest(rgb)
        _check_models(s)  # raises (not a failed image): nothing can be edited without the models
        p = _perceiver(s)
        llm = _llm(s)
        ssr0 = _perceive(p, s, rgb, sha)
        result.ssr = ssr0

        def reasoner():
            return pipeline.make_reasoner(s, llm, p)

        r = reasoner()
        subtasks = _stage("decompose", r.decompose, instruction, ssr0, rgb if s.reasoning.show_image else None)
        query_objects = list(r.query_objects)
        traces: dict[str, Any] = {"decompose": _json(json.loads(r.trace.to_json_bytes())), "steps": [], "edits": []}
        current, scene = rgb, ssr0
        steps: list[EditStep] = []
        edits: list[pipeline.StepEdit | None] = []
        for j, subtask in enumerate(subtasks):
            if j > 0:  # step j is perceived on the image that step j-1 produced
                scene = _perceive(p, s, current, image_digest(current))
            r = reasoner()
            step, final = _stage("reason", r.plan_step, subtask, instruction, current, scene,
                                 query_objects=list(query_objects))
            step_scene = _stored_scene(final) if final.ssr.digest() != scene.ssr.digest() else scene
            steps.append(step)
            traces["steps"].append(_json(json.loads(r.trace.to_json_bytes())))
            done = None
            if step.status == "ok":
                done = _stage("inpaint", pipeline.edit_step, current, step, step_scene, s, seed,
                              instruction=instruction, new_reasoner=reasoner)
                done.mask = decode_mask_png(encode_mask_png(done.mask))
                done.trace = _json(done.trace)
                if not done.skipped:
                    current = _stored_rgb(done.image)
            edits.append(done)
            traces["edits"].append(done.trace if done is not None else None)
        executed = [e for e in edits if e is not None and not e.skipped]
        from cielr_core.perception import render_overlay

        result.edited = current
        result.mask = pipeline.final_mask([e.mask for e in executed], (rgb.shape[0], rgb.shape[1]))
        result.plan = pipeline.final_plan(instruction, steps, [e.replanned_step if e else None for e in edits])
        result.overlay = _stored_rgb(render_overlay(rgb, ssr0))
        result.trace = traces
        result.verified = pipeline.final_verdict([e.verified for e in executed])
        result.n_steps, result.n_edited_steps = len(steps), len(executed)
        result.status = pipeline.final_status(len(executed))
        result.error = None if result.status == "ok" else pipeline.no_edit_reason(steps)
    except _Failed as e:
        result.status, result.error, result.failed_stage = "failed", str(e), e.stage
    return result
