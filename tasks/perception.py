"""Perception tasks: segment (SAM2), detect (OWLv2), depth (DepthAnything), merge into the SSR."""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import get_run_logger, task

from cielr_core.perception import Detections, SegmentResult, render_overlay
from cielr_core.ssr import Scene, load_scene, save_scene
from tasks import keys, runtime
from tasks.images import get_rgb


@task(name="segment")
def segment(image: dict[str, Any], settings: runtime.SettingsRef, sam2_overrides: dict[str, Any] | None = None) -> dict:
    s = runtime.settings(settings)
    key = f"seg/{image['sha']}/{keys.segment_digest(s, sam2_overrides)}/masks.npz"
    rgb = get_rgb(image, s)
    try:
        result = runtime.perceiver(s).segment(rgb, sam2_overrides=sam2_overrides)
    except Exception as e:  # noqa: BLE001
        if not is_cuda_oom(e):
            raise
        # CUDA out of memory: once more at half the point batch (points_per_batch is not in the
        # digest: it changes memory, not masks); a second OOM fails the task, and its retry policy
        # treats OOM as transient.
        import torch

        torch.cuda.empty_cache()
        smaller = {**(sam2_overrides or {}), "points_per_batch": max(1, s.perception.sam2.points_per_batch // 2)}
        _logger().warning("segment: CUDA out of memory; retrying with points_per_batch %d",
                          smaller["points_per_batch"])
        result = runtime.perceiver(s).segment(rgb, sam2_overrides=smaller)
    runtime.store(s).put_bytes(key, result.to_npz_bytes())
    return {"key": key, "n_masks": int(result.masks.shape[0])}


def _logger():
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - called outside a run (tests, scripts)
        import logging

        return logging.getLogger(__name__)


def is_cuda_oom(exc: BaseException) -> bool:
    return "OutOfMemoryError" in type(exc).__name__ or "CUDA out of memory" in str(exc)


def segment_cache_key(p: dict[str, Any]) -> str:
    s = runtime.settings(p["settings"])
    return f"segment-{p['image']['sha']}-{keys.segment_digest(s, p.get('sam2_overrides'))}"


@task(name="detect")
def detect(image: dict[str, Any], settings: runtime.SettingsRef, extra_queries: list[str] | None = None) -> dict:
    s = runtime.settings(settings)
    key = f"det/{image['sha']}/{keys.detect_digest(s, extra_queries)}/detections.json"
    det = runtime.perceiver(s).detect(get_rgb(image, s), extra_queries=list(extra_queries or []))
    runtime.store(s).put_json(key, det.to_json())
    return {"key": key, "n_detections": len(det.labels)}


def detect_cache_key(p: dict[str, Any]) -> str:
    s = runtime.settings(p["settings"])
    return f"detect-{p['image']['sha']}-{keys.detect_digest(s, p.get('extra_queries'))}"


@task(name="depth")
def depth(image: dict[str, Any], settings: runtime.SettingsRef) -> dict:
    s = runtime.settings(settings)
    key = f"depth/{image['sha']}/{keys.depth_digest(s)}/depth.npy"
    d = runtime.perceiver(s).depth(get_rgb(image, s))
    runtime.store(s).put_array(key, np.asarray(d, dtype=np.float32))
    return {"key": key}


def depth_cache_key(p: dict[str, Any]) -> str:
    s = runtime.settings(p["settings"])
    return f"depth-{p['image']['sha']}-{keys.depth_digest(s)}"


@task(name="merge-ssr")
def merge_ssr(image: dict[str, Any], seg: dict, det: dict, dep: dict, settings: runtime.SettingsRef) -> dict:
    """Match labels to masks, merge same-label neighbours, attach depth: SSR version 0."""
    s = runtime.settings(settings)
    st = runtime.store(s)
    p = runtime.perceiver(s)
    scene = p.assemble(
        SegmentResult.from_npz_bytes(st.get_bytes(seg["key"])),
        Detections.from_json(st.get_json(det["key"])),
        st.get_array(dep["key"]),
        image_sha256=image["sha"],
        width=image["width"],
        height=image["height"],
        version=0,
        provenance=p.provenance(),
    )
    prefix = keys.ssr_prefix(image["sha"], s)
    digest = save_scene(st, prefix, scene)
    st.put_png(f"{prefix}/overlay.png", render_overlay(get_rgb(image, s), scene))
    return {"prefix": prefix, "digest": digest, "n_objects": len(scene.ssr.objects)}


def merge_cache_key(p: dict[str, Any]) -> str:
    s = runtime.settings(p["settings"])
    return f"ssr-{p['image']['sha']}-{keys.perception_digest(s)}"


def read_scene(ssr: dict[str, Any], settings: runtime.SettingsRef) -> Scene:
    s = runtime.settings(settings)
    return load_scene(runtime.store(s), ssr["prefix"])
