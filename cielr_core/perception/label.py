"""Semantic perception: OWLv2 open-vocabulary detection.

* All queries in ONE pass per image: the vision tower runs once, and the class head scores every
  image patch against every query embedding (chunked only by ``max_queries_per_pass`` to bound
  memory; the image is never re-encoded per query).
* Query text embeddings are computed once per process and cached per (model, query), so the
  vocabulary is embedded on the first image only; the reasoning loop's extra queries are embedded
  once when first seen.
* Boxes on non-square images: the processor pads the image to a square at the bottom/right
  before resizing, so the model's normalised boxes are fractions of the PADDED side
  ``max(H, W)``; scaling both axes by it (and clipping to the image) gives image pixels. Scaling
  x by W and y by H (the OWL-ViT v1 way) would be wrong.
* Score threshold, then per-label NMS (torchvision ``batched_nms``), both from config.
* Label candidates: besides its best query (the detection's label), each kept detection carries
  the ``top_k`` best queries on its patch with their scores (those above the threshold), so a
  refined query that lost to another word on the same patch is not lost.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cielr_core.devices import device_lock
from cielr_core.perception.results import Detections

_embed_lock = threading.Lock()
_text_embeds: dict[tuple[str, str], torch.Tensor] = {}
_embed_counts: dict[str, int] = {"computed": 0}


def text_embed_stats() -> dict[str, int]:
    """How many query embeddings this process computed (tests: the vocabulary is embedded once)."""
    with _embed_lock:
        return {"computed": _embed_counts["computed"], "cached": len(_text_embeds)}


def clear_text_cache() -> None:
    with _embed_lock:
        _text_embeds.clear()
        _embed_counts["computed"] = 0


def query_embeddings(model: Any, processor: Any, queries: Sequence[str], *, cache_key: str | None = None,
                     batch: int = 256) -> torch.Tensor:
    """(Q, D) text embeddings of ``queries``; each computed once per (model, query) per process.

    ``cache_key`` names the model (source, revision, device, dtype); by default the object's id."""
    mid = cache_key or f"id:{id(model)}"
    with _embed_lock:
        missing = [q for q in dict.fromkeys(queries) if (mid, q) not in _text_embeds]
    if missing:
        tok = processor.tokenizer
        device = next(model.parameters()).device
        max_len = getattr(model.config.text_config, "max_position_embeddings", 16)
        for i in range(0, len(missing), batch):
            chunk = missing[i : i + batch]
            enc = tok(chunk, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
            with device_lock(device), torch.inference_mode():
                out = model.owlv2.get_text_features(
                    input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)
                )
            emb = out.pooler_output if hasattr(out, "pooler_output") else out
            with _embed_lock:
                for q, e in zip(chunk, emb):
                    _text_embeds[(mid, q)] = e.detach()
                _embed_counts["computed"] += len(chunk)
    with _embed_lock:
        return torch.stack([_text_embeds[(mid, q)] for q in queries])


def boxes_to_pixels(pred_boxes_cxcywh: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised (cx, cy, w, h) boxes of the padded square -> (x0, y0, x1, y1) image pixels, clipped."""
    b = np.asarray(pred_boxes_cxcywh, dtype=np.float64).reshape(-1, 4)
    side = float(max(height, width))
    cx, cy, bw, bh = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    out = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1) * side
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out.astype(np.float32)


def per_label_nms(boxes: np.ndarray, scores: np.ndarray, label_idx: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by NMS run separately per label, best score first."""
    if len(scores) == 0:
        return np.zeros((0,), dtype=np.int64)
    from torchvision.ops import batched_nms

    keep = batched_nms(
        torch.as_tensor(boxes, dtype=torch.float32),
        torch.as_tensor(scores, dtype=torch.float32),
        torch.as_tensor(label_idx, dtype=torch.int64),
        float(iou),
    )
    return keep.numpy()


def detect(
    model: Any,
    processor: Any,
    rgb: np.ndarray,
    queries: Sequence[str],
    *,
    score_threshold: float,
    nms_iou: float,
    max_queries_per_pass: int = 1024,
    cache_key: str | None = None,
    top_k: int = 1,
) -> Detections:
    return detect_batch(model, processor, [rgb], queries, score_threshold=score_threshold, nms_iou=nms_iou,
                        max_queries_per_pass=max_queries_per_pass, cache_key=cache_key, top_k=top_k)[0]


def detect_batch(
    model: Any,
    processor: Any,
    rgbs: Sequence[np.ndarray],
    queries: Sequence[str],
    *,
    score_threshold: float,
    nms_iou: float,
    max_queries_per_pass: int = 1024,
    cache_key: str | None = None,
    top_k: int = 1,
) -> list[Detections]:
    """One vision pass over a batch of images (the processor pads each to a square and resizes to
    the model's input size, so any mix of sizes stacks), every query scored in the same pass."""
    if not rgbs:
        return []
    if not queries:
        return [Detections.empty() for _ in rgbs]
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    q_emb = query_embeddings(model, processor, list(queries), cache_key=cache_key)
    pixel_values = processor.image_processor(images=list(rgbs), return_tensors="pt")["pixel_values"].to(device, dtype)
    with device_lock(device), torch.inference_mode():  # one forward on a GPU at a time
        feature_map, _ = model.image_embedder(pixel_values=pixel_values)
        b, ph, pw, d = feature_map.shape
        image_feats = feature_map.reshape(b, ph * pw, d)
        pred_boxes = model.box_predictor(image_feats, feature_map)  # (B, P, 4) cxcywh in [0, 1] of the square
        step = max(1, int(max_queries_per_pass))
        logits = torch.cat(
            [
                model.class_predictor(image_feats, q_emb[i : i + step][None].expand(b, -1, -1).to(dtype), None)[0]
                for i in range(0, q_emb.shape[0], step)
            ],
            dim=-1,
        )  # (B, P, Q)
    best = logits.float().max(dim=-1)
    top = logits.float().topk(max(1, min(int(top_k), logits.shape[-1])), dim=-1)
    out = []
    for k, rgb in enumerate(rgbs):
        h, w = rgb.shape[:2]
        scores = torch.sigmoid(best.values[k]).cpu().numpy()
        label_idx = best.indices[k].cpu().numpy()
        boxes = boxes_to_pixels(pred_boxes[k].float().cpu().numpy(), h, w)
        sel = np.flatnonzero(scores > score_threshold)
        # degenerate boxes (clipped away entirely) cannot match a mask
        sel = sel[(boxes[sel, 2] > boxes[sel, 0]) & (boxes[sel, 3] > boxes[sel, 1])]
        keep = sel[per_label_nms(boxes[sel], scores[sel], label_idx[sel], nms_iou)]
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        top_scores = torch.sigmoid(top.values[k]).cpu().numpy()
        top_idx = top.indices[k].cpu().numpy()
        candidates = [
            [(queries[int(q)], float(v)) for r, (q, v) in enumerate(zip(top_idx[p], top_scores[p]))
             if r == 0 or v > score_threshold]
            for p in keep
        ]
        out.append(Detections(boxes[keep], scores[keep], [queries[i] for i in label_idx[keep]], candidates))
    return out
