"""Structured semantic representation (SSR): the schema every stage speaks.

An SSR describes one image: its objects (integer ids) with label, detector score, mask reference,
box, area, centroid and depth, plus an open ``attributes`` map that spatial updates extend. The
reasoning loop builds a chain of versions ``i = 0, 1, 2, ...``.

* ``mask`` is a key RELATIVE to the SSR's own folder (``masks/<id>.png``), never an absolute path.
* ``depth`` is the median of the image's relative depth inside the mask, normalised per image to
  [0, 1] where **1 = nearest to the camera** and 0 = farthest.
* Boxes are ``(x0, y0, x1, y1)`` in pixel-edge coordinates, end-exclusive; centroids are
  ``(x, y)`` means of pixel centres (see :mod:`cielr_core.masks`).

:class:`Scene` pairs an SSR with its masks as arrays (in memory); :func:`save_scene` and
:func:`load_scene` persist one under a store prefix as ``ssr.json`` + ``masks/<id>.png``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cielr_core import masks as M
from cielr_core.canonical import canonical_json, sha256_bytes

SCHEMA_VERSION = 1
UNKNOWN = "unknown"


class LabelCandidate(BaseModel):
    """One alternative label for an object with the detector's score for it."""

    model_config = ConfigDict(extra="forbid")

    label: str
    score: float = Field(ge=0.0, le=1.0)


class SSRObject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: int = Field(ge=0)
    label: str = Field(description="open-vocabulary label, 'unknown' when no detection matched")
    score: float = Field(ge=0.0, le=1.0, description="detector score of the matched label (0 if unknown)")
    mask: str = Field(description="mask key relative to the SSR folder, e.g. masks/3.png")
    bbox: tuple[int, int, int, int] = Field(description="(x0, y0, x1, y1), pixel edges, end-exclusive")
    area: int = Field(ge=0, description="pixels in the mask")
    centroid: tuple[float, float] = Field(description="(x, y) mean of pixel centres")
    depth: float | None = Field(
        default=None, ge=0.0, le=1.0, description="median normalised depth in the mask; 1 = nearest, 0 = farthest"
    )
    mask_score: float | None = Field(default=None, description="segmenter's predicted IoU for the mask")
    label_candidates: list[LabelCandidate] = Field(
        default_factory=list,
        description="top-k labels of the detections this mask matched, with scores, best first (empty: unknown)")
    attributes: dict[str, Any] = Field(default_factory=dict, description="open map extended by spatial updates")

    @field_validator("mask")
    @classmethod
    def _relative_mask(cls, v: str) -> str:
        from cielr_core.canonical import validate_key

        validate_key(v)
        return v


class SSR(BaseModel):
    """One version of the structured semantic representation of one image."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    image_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    version: int = Field(default=0, ge=0, description="position i in the chain of SSR updates")
    provenance: dict[str, Any] = Field(default_factory=dict, description="models, configs, parent version")
    objects: dict[int, SSRObject] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ids_match(self) -> SSR:
        for k, o in self.objects.items():
            if k != o.id:
                raise ValueError(f"object key {k} does not match its id {o.id}")
            x0, y0, x1, y1 = o.bbox
            if not (0 <= x0 <= x1 <= self.width and 0 <= y0 <= y1 <= self.height):
                raise ValueError(f"object {k} bbox {o.bbox} lies outside the {self.width}x{self.height} image")
        return self

    # -- canonical form ------------------------------------------------------------------------
    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def canonical_json(self) -> bytes:
        return canonical_json(self.to_json_dict())

    def digest(self) -> str:
        return sha256_bytes(self.canonical_json())

    @classmethod
    def from_json(cls, data: bytes | str | dict) -> SSR:
        if isinstance(data, dict):
            return cls.model_validate(data)
        return cls.model_validate_json(data)

    @property
    def ids(self) -> list[int]:
        return sorted(self.objects)

    def llm_view(self) -> dict[str, Any]:
        """What the LLM may see: no storage paths."""
        return {
            "image": {"width": self.width, "height": self.height},
            "version": self.version,
            "objects": [
                {
                    "id": o.id,
                    "label": o.label,
                    "score": round(o.score, 3),
                    "bbox": list(o.bbox),
                    "area": o.area,
                    "centroid": [round(o.centroid[0], 1), round(o.centroid[1], 1)],
                    "depth": None if o.depth is None else round(o.depth, 3),
                    **({"label_candidates": [[c.label, round(c.score, 3)] for c in o.label_candidates]}
                       if o.label_candidates else {}),
                    "attributes": o.attributes,
                }
                for o in (self.objects[i] for i in self.ids)
            ],
        }


def mask_key(object_id: int) -> str:
    return f"masks/{object_id}.png"


def make_object(
    object_id: int,
    mask: np.ndarray,
    *,
    label: str = UNKNOWN,
    score: float = 0.0,
    depth: float | None = None,
    mask_score: float | None = None,
    attributes: dict[str, Any] | None = None,
    label_candidates: list[tuple[str, float]] | None = None,
) -> SSRObject:
    """An SSRObject whose geometry is computed from ``mask`` (which must not be empty)."""
    m = M.as_bool(mask)
    box = M.bbox(m)
    if box is None:
        raise ValueError(f"object {object_id} has an empty mask")
    return SSRObject(
        id=object_id,
        label=label,
        score=float(min(1.0, max(0.0, score))),
        mask=mask_key(object_id),
        bbox=box,
        area=M.area(m),
        centroid=M.centroid(m),
        depth=depth,
        mask_score=mask_score,
        label_candidates=[LabelCandidate(label=lab, score=float(min(1.0, max(0.0, sc))))
                          for lab, sc in (label_candidates or [])],
        attributes=dict(attributes or {}),
    )


@dataclass
class Scene:
    """An SSR together with its masks as boolean arrays (id -> HxW)."""

    ssr: SSR
    masks: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = set(self.ssr.objects) - set(self.masks)
        if missing:
            raise ValueError(f"scene lacks masks for objects {sorted(missing)}")
        for i, m in self.masks.items():
            if m.shape != (self.ssr.height, self.ssr.width):
                raise ValueError(
                    f"mask {i} is {m.shape[1]}x{m.shape[0]} but the image is {self.ssr.width}x{self.ssr.height}"
                )

    def mask(self, object_id: int) -> np.ndarray:
        return self.masks[object_id]


def save_scene(store: Any, prefix: str, scene: Scene) -> str:
    """Persist masks then ``ssr.json`` (last, so its presence means complete). Returns the SSR digest."""
    prefix = prefix.rstrip("/")
    for oid, obj in scene.ssr.objects.items():
        store.put_mask(f"{prefix}/{obj.mask}", scene.masks[oid])
    store.put_bytes(f"{prefix}/ssr.json", scene.ssr.canonical_json())
    return scene.ssr.digest()


def load_scene(store: Any, prefix: str) -> Scene:
    prefix = prefix.rstrip("/")
    ssr = SSR.from_json(store.get_bytes(f"{prefix}/ssr.json"))
    masks = {oid: store.get_mask(f"{prefix}/{obj.mask}") for oid, obj in ssr.objects.items()}
    return Scene(ssr=ssr, masks=masks)
