"""Metrics that need a model: LPIPS, CLIP score, CLIP-I, DINO.

Each returns ``None`` when its model is unavailable (see :mod:`cielr_core.metrics.models`); the
reason is logged and :func:`cielr_core.metrics.sample.evaluate_sample_full` records it.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from cielr_core import masks as M
from cielr_core.metrics import models as mm
from cielr_core.metrics.pixel import _pair, _region, as_rgb, fit_mask, l1_l2, smartedit_prepare
from cielr_core.models import ModelUnavailableError

log = logging.getLogger(__name__)

SMARTEDIT_LPIPS_NET = "squeeze"  # what the published SmartEdit evaluation uses


def _to_lpips_tensor(x: np.ndarray, device: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
    return (t / 127.5 - 1.0).to(device)


@torch.no_grad()
def _lpips_value(model, a: np.ndarray, b: np.ndarray, region: np.ndarray | None) -> float:
    """LPIPS v0.1 forward (as ``lpips.LPIPS.forward``); with a region, each layer's distance map is
    upsampled to the image (as ``spatial=True`` does) and averaged over the region only."""
    import lpips

    device = next(model.parameters()).device
    t0, t1 = _to_lpips_tensor(a, device), _to_lpips_tensor(b, device)
    o0, o1 = model.net(model.scaling_layer(t0)), model.net(model.scaling_layer(t1))
    h, w = a.shape[:2]
    total = 0.0
    rw = None if region is None else torch.from_numpy(region.astype(np.float32)).to(device)
    for k in range(model.L):
        d = (lpips.normalize_tensor(o0[k]) - lpips.normalize_tensor(o1[k])) ** 2
        layer = model.lins[k](d)
        if rw is None:
            total += float(layer.mean())
        else:
            up = F.interpolate(layer, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            total += float((up * rw).sum() / rw.sum())
    return total


def lpips_distance(a, b, region: np.ndarray | None = None, *, settings, protocol: str | None = None) -> float | None:
    """LPIPS (lower = more similar) over the region that must stay unchanged.

    ``masked``: the edited region of ``b`` is replaced by ``a``'s pixels (so edited content cannot
    leak into the features of nearby unchanged pixels), then the spatial LPIPS map is averaged over
    the region only, at native resolution. ``smartedit``: LPIPS(SqueezeNet) on the prepared
    squares, as published. ``None`` when the LPIPS model is unavailable."""
    protocol = protocol or settings.eval.protocol
    try:
        model = mm.get_lpips(settings, net=SMARTEDIT_LPIPS_NET if protocol == "smartedit" else None)
    except ModelUnavailableError as e:
        log.warning("LPIPS missing: %s", e)
        return None
    if protocol == "smartedit":
        if region is None:
            raise ValueError("protocol 'smartedit' needs the region (outside the GT mask)")
        edited = ~M.as_bool(region)
        size = settings.eval.smartedit_size
        return _lpips_value(model, smartedit_prepare(a, edited, size), smartedit_prepare(b, edited, size), None)
    if protocol != "masked":
        raise ValueError(f"unknown protocol {protocol!r}; use 'masked' or 'smartedit'")
    a, b = _pair(a, b)
    r = _region(region, a.shape[:2])
    if r is None:
        return _lpips_value(model, a.astype(np.float32), b.astype(np.float32), None)
    if not r.any():
        return None
    comp = np.where(r[:, :, None], b, a)
    return _lpips_value(model, a.astype(np.float32), comp.astype(np.float32), r)


@torch.no_grad()
def _clip_image_embeds(model, processor, images: list[np.ndarray]) -> torch.Tensor:
    device = next(model.parameters()).device
    pv = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
    feats = model.visual_projection(model.vision_model(pixel_values=pv).pooler_output)
    return F.normalize(feats.float(), dim=-1)


@torch.no_grad()
def _clip_text_embeds(model, processor, texts: list[str]) -> torch.Tensor:
    device = next(model.parameters()).device
    tok = processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    out = model.text_model(input_ids=tok["input_ids"].to(device), attention_mask=tok["attention_mask"].to(device))
    return F.normalize(model.text_projection(out.pooler_output).float(), dim=-1)


def _batched_features(kind: str, model, processor, images: list[np.ndarray], settings) -> torch.Tensor | None:
    """Normalised image features ([n, d]) of CLIP (``kind`` "clip") or DINO ("dino") through the
    model's dynamic batcher (cielr_core.batching), so the samples being scored at once share one
    forward; ``None`` when ``eval.batching`` is off for this device (auto: CUDA only), and the caller
    computes them as before."""
    from cielr_core import batching

    cfg = settings.eval
    if not batching.enabled(cfg.batching, str(next(model.parameters()).device)):
        return None
    fn = batching.clip_image_embeds if kind == "clip" else batching.dino_cls
    b = batching.batcher_for(f"{kind}-image", model, lambda ims: fn(model, processor, ims),
                             max_batch=cfg.batch_size, max_wait_ms=cfg.max_batch_wait_ms)
    return torch.stack([torch.as_tensor(b.submit(im)) for im in images])


def crop_to_mask_box(rgb, mask) -> np.ndarray | None:
    """The crop of ``rgb`` at the bounding box of ``mask`` (resized nearest to the image if needed);
    ``None`` for an empty mask."""
    img = as_rgb(rgb)
    m = fit_mask(mask, img.shape[:2])
    box = M.bbox(m)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return img[y0:y1, x0:x1]


def clip_score(rgb, mask, text: str, *, settings) -> float | None:
    """CLIP score of the crop at the GT mask's box against the reference text:
    ``100 * max(cos(image, text), 0)`` (the CLIPScore definition torchmetrics implements, which the
    published evaluations use). ``None`` when CLIP is unavailable or the mask is empty."""
    crop = crop_to_mask_box(rgb, mask)
    if crop is None:
        return None
    try:
        model, processor = mm.get_clip(settings)
    except ModelUnavailableError as e:
        log.warning("CLIP missing: %s", e)
        return None
    image = _batched_features("clip", model, processor, [crop], settings)
    if image is None:
        image = _clip_image_embeds(model, processor, [crop])
    cos = float((image @ _clip_text_embeds(model, processor, [text]).T)[0, 0])
    return 100.0 * max(cos, 0.0)


def clip_i(a, b, *, settings) -> float | None:
    """Cosine similarity of the two images' CLIP image embeddings (MagicBrush's CLIP-I)."""
    try:
        model, processor = mm.get_clip(settings)
    except ModelUnavailableError as e:
        log.warning("CLIP missing: %s", e)
        return None
    e = _batched_features("clip", model, processor, [as_rgb(a), as_rgb(b)], settings)
    if e is None:
        e = _clip_image_embeds(model, processor, [as_rgb(a), as_rgb(b)])
    return float(e[0] @ e[1])


@torch.no_grad()
def dino_similarity(a, b, *, settings) -> float | None:
    """Cosine similarity of DINO CLS features (MagicBrush's DINO metric)."""
    try:
        model, processor = mm.get_dino(settings)
    except ModelUnavailableError as e:
        log.warning("DINO missing: %s", e)
        return None
    cls = _batched_features("dino", model, processor, [as_rgb(a), as_rgb(b)], settings)
    if cls is None:
        device = next(model.parameters()).device
        pv = processor(images=[as_rgb(a), as_rgb(b)], return_tensors="pt")["pixel_values"].to(device)
        cls = F.normalize(model(pixel_values=pv).last_hidden_state[:, 0].float(), dim=-1)
    return float(cls[0] @ cls[1])


def magicbrush_metrics(edited, target, *, settings) -> dict[str, float | None]:
    """MagicBrush's metrics of an edited image against the ground-truth target: ``l1``, ``l2``
    (0..1 pixel values, edited resized to the target's size), ``clip_i``, ``dino`` (cosine
    similarities; ``None`` when the model is unavailable)."""
    l1, l2 = l1_l2(edited, target)
    return {"l1": l1, "l2": l2, "clip_i": clip_i(edited, target, settings=settings),
            "dino": dino_similarity(edited, target, settings=settings)}
