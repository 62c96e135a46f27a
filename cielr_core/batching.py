"""Dynamic batching of a resident model across the callers in flight.

A :class:`DynamicBatcher` wraps a function that takes a list of requests and returns a list of
results (one batched forward). Callers call :meth:`DynamicBatcher.submit` with one request each,
from any thread; the requests that arrive together (up to ``max_batch``, or whatever has come
within ``max_wait_ms`` of the first) run as one call, and each caller gets its own result back.
There is no background thread: the first caller to find the model idle collects the batch and runs
it (the others wait on a condition), so an idle batcher costs nothing.

* Requests only batch with requests of the same ``key`` (e.g. the same image size for models whose
  processor keeps the aspect ratio, the same query set for OWLv2); other keys wait for the next
  batch.
* A caller's exception goes to that caller only: when a batched call raises, each request of the
  batch is run again on its own, so the bad one raises its own error and the others get results.
* ``max_batch`` 1 runs each request at once in the caller's thread (no waiting, no locking beyond
  one call at a time).

**When batching is on.** A batched forward gives results equal to batch 1 within float tolerance,
not always the same bits: CPU kernels may block a GEMM or a convolution differently for another
batch size, and which requests share a batch depends on timing. The dataset flow promises
byte-identical outputs at any number of images in flight, so the rule is: batching is ON on CUDA
(where the throughput is) and OFF on CPU, unless a setting says otherwise (``batching`` ``on`` /
``off``; ``batch_size``; ``max_batch_wait_ms``). On CUDA, outputs are equal to batch 1 within
tolerance, and byte-identity between runs is not promised (it is not on CUDA anyway).

The batched functions for each model live here too (:func:`sam2_encode`, :func:`owlv2_detect`,
:func:`depth_predict`, :func:`clip_image_embeds`, :func:`dino_cls`, :func:`inpaint_batch`); each
equals its batch-1 form within float tolerance (tests/test_batching.py checks each on the tiny
models).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

Req = TypeVar("Req")
Res = TypeVar("Res")


@dataclass
class _Pending(Generic[Req]):
    item: Any
    key: Hashable
    done: bool = False
    result: Any = None
    error: BaseException | None = None


class DynamicBatcher(Generic[Req, Res]):
    """One batched call for the requests that arrive together; see the module docstring."""

    def __init__(self, fn: Callable[[list[Req]], Sequence[Res]], *, max_batch: int = 8, max_wait_ms: float = 5.0,
                 name: str = "batcher"):
        if max_batch < 1:
            raise ValueError(f"{name}: max_batch must be >= 1, got {max_batch}")
        self.fn = fn
        self.max_batch = int(max_batch)
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
        self.name = name
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._busy = False
        self.sizes: Counter[int] = Counter()  # batch size -> how many batched calls had it

    # -- the caller's side ----------------------------------------------------------------------
    def submit(self, item: Req, key: Hashable = None) -> Res:
        """``fn([item])[0]``, batched with the other callers' requests of the same key."""
        p = _Pending(item, key)
        with self._cond:
            self._queue.append(p)
            self._cond.notify_all()
            while not p.done:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True  # this caller runs the next batch (its own request or an earlier one's)
                try:
                    batch = self._collect()
                    self._cond.release()
                    try:
                        self._run(batch)
                    finally:
                        self._cond.acquire()
                finally:
                    self._busy = False
                    self._cond.notify_all()
        if p.error is not None:
            raise p.error
        return p.result

    # -- the runner's side (called holding the condition) ----------------------------------------
    def _same_key(self, key: Hashable) -> list[_Pending]:
        return [q for q in self._queue if q.key == key]

    def _collect(self) -> list[_Pending]:
        head = self._queue[0]
        if self.max_batch > 1 and self.max_wait_s > 0:
            deadline = time.monotonic() + self.max_wait_s
            while len(self._same_key(head.key)) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        batch = self._same_key(head.key)[: self.max_batch]
        taken = {id(q) for q in batch}
        self._queue = [q for q in self._queue if id(q) not in taken]
        return batch

    def _run(self, batch: list[_Pending]) -> None:
        try:
            results = list(self.fn([q.item for q in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: {len(batch)} requests but {len(results)} results")
            for q, r in zip(batch, results):
                q.result = r
            self.sizes[len(batch)] += 1
        except BaseException as e:  # noqa: BLE001
            if len(batch) == 1:
                batch[0].error = e
                self.sizes[1] += 1
            else:  # one bad request must not fail the others: each again on its own
                for q in batch:
                    self._run([q])
        finally:
            for q in batch:
                q.done = True

    def stats(self) -> dict[int, int]:
        with self._cond:
            return dict(sorted(self.sizes.items()))


# -- one batcher per resident model ---------------------------------------------------------------
_registry_lock = threading.Lock()
_batchers: dict[tuple[str, int], DynamicBatcher] = {}


def batcher_for(name: str, model: Any, fn: Callable[[list], Sequence], *, max_batch: int,
                max_wait_ms: float) -> DynamicBatcher:
    """The batcher of ``model`` (one per model object and purpose, per process)."""
    k = (name, id(model))
    with _registry_lock:
        b = _batchers.get(k)
        if b is None or b.max_batch != max_batch:
            b = _batchers[k] = DynamicBatcher(fn, max_batch=max_batch, max_wait_ms=max_wait_ms, name=name)
        return b


def stats() -> dict[str, dict[int, int]]:
    """Observed batch sizes per batcher name (batch size -> calls), over this process."""
    out: dict[str, Counter[int]] = {}
    with _registry_lock:
        items = list(_batchers.items())
    for (name, _), b in items:
        out.setdefault(name, Counter()).update(b.stats())
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def clear() -> None:
    with _registry_lock:
        _batchers.clear()


def enabled(mode: str, device: str) -> bool:
    """The batching rule: ``auto`` = on CUDA only (CPU results must stay byte-identical)."""
    if mode == "on":
        return True
    if mode == "off":
        return False
    if mode != "auto":
        raise ValueError(f"batching must be 'auto', 'on' or 'off', got {mode!r}")
    return str(device).startswith("cuda")


# -- the batched forwards ---------------------------------------------------------------------------
@dataclass
class SAM2Features:
    """One image's SAM2 embeddings, as SAM2ImagePredictor keeps them after set_image."""

    orig_hw: tuple[int, int]
    image_embed: Any
    high_res_feats: list[Any] = field(default_factory=list)


def sam2_encode(model: Any, images: Sequence[np.ndarray]) -> list[SAM2Features]:
    """SAM2's image encoder over a batch of RGB images (any sizes: each is resized to the model's
    square input), as ``SAM2ImagePredictor.set_image`` computes it for one."""
    import torch
    from sam2.utils.transforms import SAM2Transforms

    from cielr_core.devices import device_lock, script_lock

    device = next(model.parameters()).device
    with script_lock:  # SAM2Transforms scripts its resize/normalise (not thread-safe)
        transforms = SAM2Transforms(resolution=model.image_size, mask_threshold=0.0, max_hole_area=0.0,
                                    max_sprinkle_area=0.0)
    x = torch.stack([transforms(np.asarray(im)) for im in images]).to(device)
    s = model.image_size
    bb_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    with device_lock(device), torch.inference_mode():  # the lock around the one forward, not the wait
        backbone_out = model.forward_image(x)
        _, vision_feats, _, _ = model._prepare_backbone_features(backbone_out)
        if model.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
        feats = [feat.permute(1, 2, 0).view(len(images), -1, *size)
                 for feat, size in zip(vision_feats[::-1], bb_sizes[::-1])][::-1]
    return [SAM2Features(tuple(np.asarray(im).shape[:2]), feats[-1][i:i + 1].clone(),
                         [f[i:i + 1].clone() for f in feats[:-1]]) for i, im in enumerate(images)]


def sam2_crops(rgb: np.ndarray, crop_n_layers: int, crop_overlap_ratio: float = 512 / 1500) -> list[np.ndarray]:
    """The crops SAM2's automatic mask generator encodes for ``rgb``, in the order it encodes them
    (the whole image first, then each crop layer's boxes)."""
    from sam2.utils.amg import generate_crop_boxes

    boxes, _ = generate_crop_boxes(rgb.shape[:2], int(crop_n_layers), crop_overlap_ratio)
    return [rgb[y0:y1, x0:x1, :] for x0, y0, x1, y1 in boxes]


def install_sam2_features(predictor: Any, f: SAM2Features) -> None:
    """Put precomputed features into a SAM2ImagePredictor (what its set_image leaves behind)."""
    predictor.reset_predictor()
    predictor._orig_hw = [tuple(f.orig_hw)]
    predictor._features = {"image_embed": f.image_embed, "high_res_feats": list(f.high_res_feats)}
    predictor._is_image_set = True


def owlv2_detect(model: Any, processor: Any, images: Sequence[np.ndarray], queries: Sequence[str],
                 **kwargs: Any) -> list:
    """OWLv2 over a batch of images with one query set (see perception.label.detect_batch)."""
    from cielr_core.perception import label

    return label.detect_batch(model, processor, list(images), list(queries), **kwargs)


def depth_predict(model: Any, processor: Any, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """DepthAnything over a batch of SAME-SIZE images (batch them by key = image size)."""
    from cielr_core.perception import depth

    return depth.predict_depth_batch(model, processor, list(images))


def clip_image_embeds(model: Any, processor: Any, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Normalised CLIP image embeddings, one per image (the processor resizes each alike)."""
    from cielr_core.metrics.learned import _clip_image_embeds

    e = _clip_image_embeds(model, processor, list(images))
    return [row.cpu().numpy() for row in e]


def dino_cls(model: Any, processor: Any, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Normalised DINO CLS features, one per image."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    pv = processor(images=list(images), return_tensors="pt")["pixel_values"].to(device)
    with torch.inference_mode():
        cls = F.normalize(model(pixel_values=pv).last_hidden_state[:, 0].float(), dim=-1)
    return [row.cpu().numpy() for row in cls]


@dataclass(frozen=True)
class InpaintRequest:
    """One inpainting call at the model's working size (``image``, ``mask`` already resized)."""

    image: np.ndarray  # uint8 (h, w, 3)
    mask: np.ndarray  # bool (h, w)
    prompt: str
    seed: int
    negative_prompt: str = ""

    @property
    def key(self) -> tuple:
        """Requests batch only with the same size and the same has-negative-prompt (one call's shape)."""
        return (self.image.shape[:2], bool(self.negative_prompt))


def inpaint_batch(pipe: Any, requests: Sequence[InpaintRequest], *, steps: int, guidance_scale: float,
                  strength: float | None = None) -> list[np.ndarray]:
    """One diffusers inpaint call for same-size requests, each with its own prompt and its own seeded
    generator (so each row's initial noise is what it would be at batch 1); float outputs in [0, 1]."""
    import inspect

    import torch
    from PIL import Image

    if not requests:
        return []
    keys = {r.key for r in requests}
    if len(keys) != 1:
        raise ValueError(f"an inpaint batch needs one size (same-size buckets), got {sorted(map(str, keys))}")
    h, w = requests[0].image.shape[:2]
    kwargs: dict[str, Any] = {
        "prompt": [r.prompt for r in requests],
        "image": [Image.fromarray(r.image) for r in requests],
        "mask_image": [Image.fromarray(r.mask.astype(np.uint8) * 255) for r in requests],
        "height": h,
        "width": w,
        "num_inference_steps": int(steps),
        "guidance_scale": float(guidance_scale),
        "generator": [torch.Generator(device="cpu").manual_seed(int(r.seed)) for r in requests],
        "output_type": "np",
    }
    accepted = inspect.signature(pipe.__call__).parameters
    if requests[0].negative_prompt and "negative_prompt" in accepted:
        kwargs["negative_prompt"] = [r.negative_prompt for r in requests]
    if strength is not None and "strength" in accepted:
        kwargs["strength"] = float(strength)
    with torch.inference_mode():
        result = pipe(**kwargs)
    nsfw = getattr(result, "nsfw_content_detected", None)
    if nsfw and any(bool(x) for x in nsfw):
        # the batcher then runs each request alone, so only the flagged one fails (with the inpainter's message)
        raise RuntimeError("the pipeline's safety checker flagged an output of the batch")
    return [np.asarray(o, dtype=np.float32) for o in result.images]
