"""What the perception stages hand each other: segmentation masks and labelled detections.

Both serialise to small, exact, versionable forms (npz bytes, JSON) so a task can persist one
stage's output and the next stage can read it back in another process.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class SegmentResult:
    """SAM2 automatic masks of one image: ``masks`` (N, H, W) bool and ``scores`` (N,) predicted IoU."""

    masks: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        m = np.asarray(self.masks)
        if m.ndim != 3:
            raise ValueError(f"masks must be (N, H, W), got shape {m.shape}")
        self.masks = m if m.dtype == bool else m > 0
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if self.scores.shape[0] != self.masks.shape[0]:
            raise ValueError(f"{self.masks.shape[0]} masks but {self.scores.shape[0]} scores")

    @classmethod
    def empty(cls, height: int, width: int) -> SegmentResult:
        return cls(np.zeros((0, height, width), dtype=bool), np.zeros((0,), dtype=np.float32))

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def to_npz_bytes(self) -> bytes:
        """Bit-packed masks + scores in a compressed npz (exact round trip)."""
        n, h, w = self.masks.shape
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            packed=np.packbits(self.masks.reshape(n, h * w), axis=1),
            shape=np.array([n, h, w], dtype=np.int64),
            scores=self.scores,
        )
        return buf.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> SegmentResult:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            n, h, w = (int(v) for v in z["shape"])
            bits = np.unpackbits(z["packed"], axis=1, count=h * w) if n else np.zeros((0, h * w), np.uint8)
            return cls(bits.reshape(n, h, w).astype(bool), z["scores"])


@dataclass
class Detections:
    """OWLv2 detections of one image: ``boxes`` (M, 4) xyxy in image pixels, ``scores`` (M,), ``labels``,
    and optionally per detection its top-k ``candidates`` ``[(query, score), ...]`` best first (the
    best queries on that patch; the first is the detection's own label)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str] = field(default_factory=list)
    candidates: list[list[tuple[str, float]]] | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.labels = [str(x) for x in self.labels]
        if not (len(self.boxes) == len(self.scores) == len(self.labels)):
            raise ValueError(
                f"detections disagree in length: {len(self.boxes)} boxes, {len(self.scores)} scores, "
                f"{len(self.labels)} labels"
            )
        if self.candidates is not None:
            self.candidates = [[(str(q), float(s)) for q, s in c] for c in self.candidates]
            if len(self.candidates) != len(self.labels):
                raise ValueError(f"{len(self.labels)} detections but {len(self.candidates)} candidate lists")

    def label_candidates(self, j: int) -> list[tuple[str, float]]:
        """Detection ``j``'s candidate labels with scores (its own label alone when none were kept)."""
        if self.candidates is not None and self.candidates[j]:
            return list(self.candidates[j])
        return [(self.labels[j], float(self.scores[j]))]

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), [], [])

    def __len__(self) -> int:
        return len(self.labels)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "boxes": [[float(v) for v in b] for b in self.boxes],
            "scores": [float(s) for s in self.scores],
            "labels": list(self.labels),
        }
        if self.candidates is not None:
            out["candidates"] = [[[q, float(s)] for q, s in c] for c in self.candidates]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Detections:
        cands = data.get("candidates")
        return cls(np.asarray(data.get("boxes") or np.zeros((0, 4)), dtype=np.float32), data.get("scores") or [],
                   data.get("labels") or [], None if cands is None else [[(q, s) for q, s in c] for c in cands])
