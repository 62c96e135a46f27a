"""The perception stage as one object: models resident, one method per stage.

``Perceiver(settings)`` resolves device and dtype once; models load lazily on first use through
the registry (:mod:`cielr_core.models`), so each loads once per process however many Perceivers
or images there are. The orchestration layer calls the stages separately (each a cached task);
:meth:`perceive` runs them all for library and CLI use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cielr_core import batching
from cielr_core.canonical import sha256_json
from cielr_core.config import Settings, settings_from_dict
from cielr_core.images import check_rgb
from cielr_core.models import resolve_device, resolve_dtype
from cielr_core.perception import build, label, loading, working
from cielr_core.perception import depth as depth_mod
from cielr_core.perception import segment as seg_mod
from cielr_core.perception.results import Detections, SegmentResult
from cielr_core.perception.versions import (
    ASSEMBLE_CODE_VERSION,
    DEPTH_CODE_VERSION,
    LABEL_CODE_VERSION,
    SEGMENT_CODE_VERSION,
)
from cielr_core.perception.vocabulary import BUILTIN, load_vocabulary, merge_queries
from cielr_core.ssr import Scene


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    return check_rgb(rgb)


# Every model sees a bounded working copy (limits.max_working_side) and its results come back at the
# image's own size: see cielr_core.perception.working. Each stage method below does both.


class Perceiver:
    def __init__(self, settings: Settings | dict[str, Any]):
        self.settings = settings if isinstance(settings, Settings) else settings_from_dict(settings)
        self.cfg = self.settings.perception
        self.device = resolve_device(self.cfg.device)
        self.dtype = resolve_dtype(self.cfg.dtype, self.device)
        self._vocabulary: list[str] | None = None

    # -- models (registry: once per process) --------------------------------------------------
    def _source(self, ref) -> str:
        return self.settings.resolve_model(ref)

    def sam2_model(self) -> Any:
        c = self.cfg.sam2
        return loading.load_sam2(self._source(c.model), config_name=c.config_name, hydra_overrides=c.hydra_overrides,
                                 revision=c.model.revision, device=self.device, models_dir=self.settings.models_dir)

    def owlv2_model(self) -> tuple[Any, Any]:
        c = self.cfg.owlv2
        return loading.load_owlv2(self._source(c.model), revision=c.model.revision, device=self.device,
                                  dtype=self.dtype, models_dir=self.settings.models_dir)

    def depth_model(self) -> tuple[Any, Any]:
        c = self.cfg.depth
        return loading.load_depth(self._source(c.model), revision=c.model.revision, device=self.device,
                                  dtype=self.dtype, models_dir=self.settings.models_dir)

    @property
    def vocabulary(self) -> list[str]:
        if self._vocabulary is None:
            self._vocabulary = load_vocabulary(self.cfg.owlv2.vocabulary)
        return self._vocabulary

    # -- stages -------------------------------------------------------------------------------
    @property
    def max_working_side(self) -> int:
        return self.settings.limits.max_working_side

    def segment(self, rgb: np.ndarray, sam2_overrides: dict[str, Any] | None = None) -> SegmentResult:
        """SAM2 automatic masks; ``sam2_overrides`` (generator settings) merged over the config."""
        rgb = _check_rgb(rgb)
        settings = seg_mod.generator_settings(self.cfg.sam2, sam2_overrides)
        small = working.working_copy(rgb, self.max_working_side)
        model = self.sam2_model()
        features = None
        if self.batching:  # the encoder batched across the images in flight; the decoder per image
            enc = self._batcher("sam2-encoder", model, lambda ims: self._sam2_encode(model, ims))
            features = [enc.submit(c) for c in batching.sam2_crops(small, settings["crop_n_layers"])]
        seg = seg_mod.run_generator(model, small, settings, device=self.device, dtype=self.dtype, features=features)
        return working.segment_to_size(seg, *rgb.shape[:2])

    # -- dynamic batching across the images in flight (cielr_core.batching; off on CPU by default) --
    @property
    def batching(self) -> bool:
        return batching.enabled(self.cfg.batching, self.device)

    def _batcher(self, name: str, model: Any, fn) -> batching.DynamicBatcher:
        return batching.batcher_for(name, model, fn, max_batch=self.cfg.batch_size,
                                    max_wait_ms=self.cfg.max_batch_wait_ms)

    def _sam2_encode(self, model: Any, images: list[np.ndarray]) -> list[batching.SAM2Features]:
        with seg_mod.autocast_context(self.device, self.dtype):
            return batching.sam2_encode(model, images)

    def queries(self, extra_queries: Sequence[str] = ()) -> list[str]:
        return merge_queries(self.vocabulary, extra_queries)

    def detect(self, rgb: np.ndarray, extra_queries: Sequence[str] = ()) -> Detections:
        """OWLv2 over the vocabulary + ``extra_queries`` in one pass; boxes in image pixels."""
        rgb = _check_rgb(rgb)
        model, processor = self.owlv2_model()
        c = self.cfg.owlv2
        small = working.working_copy(rgb, self.max_working_side)
        queries = tuple(self.queries(extra_queries))

        def run(images: list[np.ndarray], queries: tuple[str, ...] = queries) -> list[Detections]:
            return label.detect_batch(
                model, processor, images, list(queries),
                score_threshold=c.score_threshold, nms_iou=c.nms_iou, max_queries_per_pass=c.max_queries_per_pass,
                cache_key=f"{self._source(c.model)}@{c.model.revision}:{self.device}:{self.dtype}",
                top_k=c.label_candidates,
            )

        if self.batching:  # images batch with images of the same query set
            b = self._batcher("owlv2", model, lambda reqs: run([im for im, _ in reqs], reqs[0][1]))
            det = b.submit((small, queries), key=queries)
        else:
            det = run([small])[0]
        return working.detections_to_size(det, small.shape[:2], *rgb.shape[:2])

    def depth(self, rgb: np.ndarray) -> np.ndarray:
        """Relative depth, float32 (H, W), larger = nearer (not normalised)."""
        rgb = _check_rgb(rgb)
        model, processor = self.depth_model()
        small = working.working_copy(rgb, self.max_working_side)
        if self.batching:  # the processor keeps the aspect ratio: images batch with same-size images
            b = self._batcher("depth", model, lambda ims: depth_mod.predict_depth_batch(model, processor, ims))
            d = b.submit(small, key=small.shape[:2])
        else:
            d = depth_mod.predict_depth(model, processor, small)
        return working.depth_to_size(d, *rgb.shape[:2])

    # -- batches (models resident; OWLv2 and depth batched by cfg.batch_size) ------------------
    def detect_many(self, rgbs: Sequence[np.ndarray], extra_queries: Sequence[str] = ()) -> list[Detections]:
        full = [_check_rgb(r) for r in rgbs]
        rgbs = [working.working_copy(r, self.max_working_side) for r in full]
        model, processor = self.owlv2_model()
        c = self.cfg.owlv2
        queries = self.queries(extra_queries)
        bs = max(1, self.cfg.batch_size)
        out: list[Detections] = []
        for i in range(0, len(rgbs), bs):
            out += label.detect_batch(
                model, processor, rgbs[i : i + bs], queries,
                score_threshold=c.score_threshold, nms_iou=c.nms_iou, max_queries_per_pass=c.max_queries_per_pass,
                cache_key=f"{self._source(c.model)}@{c.model.revision}:{self.device}:{self.dtype}",
                top_k=c.label_candidates,
            )
        return [working.detections_to_size(d, r.shape[:2], *f.shape[:2]) for d, r, f in zip(out, rgbs, full)]

    def depth_many(self, rgbs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Depth of many images: same-size images share forward passes of up to batch_size."""
        full = [_check_rgb(r) for r in rgbs]
        rgbs = [working.working_copy(r, self.max_working_side) for r in full]
        model, processor = self.depth_model()
        groups: dict[tuple[int, int], list[int]] = {}
        for i, r in enumerate(rgbs):
            groups.setdefault(r.shape[:2], []).append(i)
        out: list[np.ndarray | None] = [None] * len(rgbs)
        bs = max(1, self.cfg.batch_size)
        for idx in groups.values():
            for j in range(0, len(idx), bs):
                chunk = idx[j : j + bs]
                for i, d in zip(chunk, depth_mod.predict_depth_batch(model, processor, [rgbs[i] for i in chunk])):
                    out[i] = working.depth_to_size(d, *full[i].shape[:2])
        return out  # type: ignore[return-value]

    def perceive_many(self, rgbs: Sequence[np.ndarray], *, image_sha256s: Sequence[str] | None = None,
                      extra_queries: Sequence[str] = ()) -> list[Scene]:
        """SSR version 0 of each image: SAM2 resident and run per image, OWLv2 and depth batched."""
        from cielr_core.images import image_digest

        rgbs = [_check_rgb(r) for r in rgbs]
        shas = list(image_sha256s) if image_sha256s is not None else [image_digest(r) for r in rgbs]
        if len(shas) != len(rgbs):
            raise ValueError(f"{len(rgbs)} images but {len(shas)} digests")
        segs = [self.segment(r) for r in rgbs]
        dets = self.detect_many(rgbs, extra_queries)
        deps = self.depth_many(rgbs)
        prov = self.provenance()
        if extra_queries:
            prov["extra_queries"] = list(merge_queries(extra_queries))
        return [
            self.assemble(sg, dt, dp, image_sha256=sha, width=r.shape[1], height=r.shape[0], version=0,
                          provenance=dict(prov))
            for r, sha, sg, dt, dp in zip(rgbs, shas, segs, dets, deps)
        ]

    def assemble(
        self,
        seg: SegmentResult,
        det: Detections,
        depth: np.ndarray | None,
        *,
        image_sha256: str,
        width: int,
        height: int,
        version: int = 0,
        provenance: dict[str, Any] | None = None,
    ) -> Scene:
        return build.assemble(
            seg, det, depth, image_sha256=image_sha256, width=width, height=height, version=version,
            provenance=provenance if provenance is not None else self.provenance(),
            match_min_iou=self.cfg.match_min_iou, merge_gap_px=self.cfg.merge_gap_px,
            min_object_area=self.cfg.min_object_area, match_rule=self.cfg.match_rule,
            match_min_coverage=self.cfg.match_min_coverage, merge_inside_fraction=self.cfg.merge_inside_fraction,
            label_candidates=self.cfg.owlv2.label_candidates, merge_rule=self.cfg.merge_rule,
        )

    def perceive(
        self,
        rgb: np.ndarray,
        *,
        image_sha256: str | None = None,
        extra_queries: Sequence[str] = (),
        sam2_overrides: dict[str, Any] | None = None,
    ) -> Scene:
        """Segment, detect, depth and assemble: SSR version 0 of ``rgb``."""
        from cielr_core.images import image_digest

        rgb = _check_rgb(rgb)
        h, w = rgb.shape[:2]
        prov = self.provenance()
        if extra_queries:
            prov["extra_queries"] = list(merge_queries(extra_queries))
        if sam2_overrides:
            prov["sam2_overrides"] = dict(sam2_overrides)
        return self.assemble(
            self.segment(rgb, sam2_overrides), self.detect(rgb, extra_queries), self.depth(rgb),
            image_sha256=image_sha256 or image_digest(rgb), width=w, height=h, version=0, provenance=prov,
        )

    def update_semantic(
        self,
        rgb: np.ndarray,
        scene: Scene,
        extra_queries: Sequence[str],
        sam2_overrides: dict[str, Any] | None = None,
    ) -> Scene:
        """Version i+1 of ``scene``: re-detect with the extra queries added (to those of earlier
        updates) and re-match; with ``sam2_overrides``, re-segment with the adjusted generator
        settings first, else re-label the scene's own object masks. Objects whose mask did not
        change keep their ids (and attributes); new ones get fresh ids. With no query that the
        scene's query set lacks and no SAM2 change there is nothing to do: ``scene`` itself is
        returned (no new version)."""
        rgb = _check_rgb(rgb)
        h, w = rgb.shape[:2]
        if (h, w) != (scene.ssr.height, scene.ssr.width):
            raise ValueError(f"image is {w}x{h} but the SSR describes {scene.ssr.width}x{scene.ssr.height}")
        old_prov = scene.ssr.provenance or {}
        queries = merge_queries(old_prov.get("extra_queries", []), extra_queries)
        if not sam2_overrides and not set(self.queries(queries)) - set(self.queries(old_prov.get("extra_queries", []))):
            return scene
        if sam2_overrides:
            seg = self.segment(rgb, sam2_overrides)
        else:
            ids = scene.ssr.ids
            seg = (
                SegmentResult(np.stack([scene.masks[i] for i in ids]),
                              [scene.ssr.objects[i].mask_score or 0.0 for i in ids])
                if ids else SegmentResult.empty(h, w)
            )
        prov = {**self.provenance(), "parent_version": scene.ssr.version, "extra_queries": queries}
        overrides = {**old_prov.get("sam2_overrides", {}), **(sam2_overrides or {})}
        if overrides:
            prov["sam2_overrides"] = overrides
        new = self.assemble(seg, self.detect(rgb, queries), self.depth(rgb), image_sha256=scene.ssr.image_sha256,
                            width=w, height=h, version=scene.ssr.version + 1, provenance=prov)
        return build.carry_ids(scene, new, version=scene.ssr.version + 1)

    def provenance(self) -> dict[str, Any]:
        """Model ids/revisions, code versions and the perception config digest (no local paths, so
        the same config gives the same SSR on every machine)."""
        c = self.cfg
        return {
            "models": {
                "sam2": {"id": c.sam2.model.id, "revision": c.sam2.model.revision, "config": c.sam2.config_name},
                "owlv2": {"id": c.owlv2.model.id, "revision": c.owlv2.model.revision},
                "depth": {"id": c.depth.model.id, "revision": c.depth.model.revision},
            },
            "vocabulary": {
                "name": c.owlv2.vocabulary if c.owlv2.vocabulary in BUILTIN else "file",
                "n": len(self.vocabulary),
                "sha256": sha256_json(self.vocabulary),
            },
            "code": {
                "segment": SEGMENT_CODE_VERSION,
                "label": LABEL_CODE_VERSION,
                "depth": DEPTH_CODE_VERSION,
                "assemble": ASSEMBLE_CODE_VERSION,
            },
            "perception_config": c.digest(SEGMENT_CODE_VERSION, LABEL_CODE_VERSION, DEPTH_CODE_VERSION,
                                          ASSEMBLE_CODE_VERSION),
        }
