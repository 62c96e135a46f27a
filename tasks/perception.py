"""Perception tasks: segment (SAM2), detect (OWLv2), depth (DepthAnything), merge into the SSR."""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import get_run_logger, task

from cielr_core.perception import Detections, SegmentResult, render_overlay
from cielr_core.pipeline import assemble_ssr, segment_image
from cielr_core.ssr import Scene, load_scene, save_scene
from tasks import keys, runtime
from tasks.images import get_rgb
from tasks.refs import DepthRef, DetectionsRef, ImageRef, SegmentRef, SSRRef


@task(name="segment")
def segment(image: ImageRef, settings: runtime.SettingsRef, sam2_overrides: dict[str, Any] | None = None) -> SegmentRef:
    s = runtime.settings(settings)
    result = segment_image(runtime.perceiver(s), get_rgb(image, s), s, sam2_overrides, on_retry=lambda n: _logger().warning(
        "segment: CUDA out of memory; retrying with points_per_batch %d", n))
    key = keys.segment_key(keys.segment_prefix(image.sha, s, sam2_overrides))
    runtime.store(s).put_bytes(key, result.to_npz_bytes())
    return SegmentRef(key=key, n_masks=int(result.masks.shape[0]))


def _logger():
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - called outside a run (tests, scripts)
        import logging

        return logging.getLogger(__name__)


def segment_cache_key(p: dict[str, Any]) -> str:
    s = runtime.settings(p["settings"])
    return keys.cache_key(keys.segment_prefix(p["image"].sha, s, p.get("sam2_overrides")))


@task(name="detect")
def detect(image: ImageRef, settings: runtime.SettingsRef, extra_queries: list[str] | None = None) -> DetectionsRef:
    s = runtime.settings(settings)
    key = keys.detect_key(keys.detect_prefix(image.sha, s, extra_queries))
    det = runtime.perceiver(s).detect(get_rgb(image, s), extra_queries=list(extra_queries or []))
    runtime.store(s).put_json(key, det.to_json())
    return DetectionsRef(key=key, n_detections=len(det.labels))


def detect_cache_key(p: dict[str, Any]) -> str:
    s = runtime.settings(p["settings"])
    return keys.cache_key(keys.detect_prefix(p["image"].sha, s, p.get("extra_queries")))


@task(name="depth")
def depth(image: ImageRef, settings: runtime.SettingsRef) -> DepthRef:
    s = runtime.settings(settings)
    key = keys.depth_key(keys.depth_prefix(image.sha, s))
    d = runtime.perceiver(s).depth(get_rgb(image, s))
    runtime.store(s).put_array(key, np.asarray(d, dtype=np.float32))
    return DepthRef(key=key)


def depth_cache_key(p: dict[str, Any]) -> str:
    s = runtime.settings(p["settings"])
    return keys.cache_key(keys.depth_prefix(p["image"].sha, s))


@task(name="merge-ssr")
def merge_ssr(image: ImageRef, seg: SegmentRef, det: DetectionsRef, dep: DepthRef,
              settings: runtime.SettingsRef) -> SSRRef:
    """Match labels to masks, merge same-label neighbours, attach depth: SSR version 0."""
    s = runtime.settings(settings)
    st = runtime.store(s)
    p = runtime.perceiver(s)
    scene = assemble_ssr(
        p,
        SegmentResult.from_npz_bytes(st.get_bytes(seg.key)),
        Detections.from_json(st.get_json(det.key)),
        st.get_array(dep.key),
        image_sha256=image.sha,
        width=image.width,
        height=image.height,
    )
    prefix = keys.ssr_prefix(image.sha, s)
    digest = save_scene(st, prefix, scene)
    st.put_png(keys.overlay_key(prefix), render_overlay(get_rgb(image, s), scene))
    return SSRRef(prefix=prefix, digest=digest, n_objects=len(scene.ssr.objects))


def merge_cache_key(p: dict[str, Any]) -> str:
    s = runtime.settings(p["settings"])
    return keys.cache_key(keys.ssr_prefix(p["image"].sha, s))


def read_scene(ssr: SSRRef, s) -> Scene:
    return load_scene(runtime.store(s), ssr.prefix)
