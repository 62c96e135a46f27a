"""Inpainters: one protocol, two backends.

* :class:`OpenCVInpainter` -- classical Telea / Navier-Stokes inpainting (``cv2.inpaint``): no
  weights, CPU, deterministic; good for ``remove`` (it cannot follow a prompt).
* :class:`DiffusersInpainter` -- any diffusers inpaint pipeline by model id or local path: SD 1.5
  (default ``stable-diffusion-v1-5/stable-diffusion-inpainting``), SD 2 and SDXL inpaint through
  ``AutoPipelineForInpainting``, FLUX.1 Fill through ``FluxFillPipeline``. The pipeline is loaded
  once per process through :mod:`cielr_core.models` (keyed by source, revision, device, dtype).
  It works at the model's resolution (long side = ``resolution``, sides multiples of the VAE
  factor) and returns an image of the input's size. A NaN or all-black output (fp16 overflow) is
  retried once with the float32 pipeline (loaded through the registry too, so it then stays
  resident beside the half-precision one); if that is unusable too, :class:`EditingError`. An
  output flagged by the pipeline's own safety checker is an :class:`EditingError` (no retry).

Both take ``image`` (HxWx3 uint8) and ``mask`` (HxW bool, True = repaint) and return an HxWx3 uint8
image of the same size. Compositing (only the mask may change) is done by the caller
(:mod:`cielr_core.editing.execute`), not here.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from cielr_core import models as registry
from cielr_core.config import EditingConfig, ModelRef, Settings

from .errors import EditingError
from .prep import model_size, resize_mask, resize_rgb

log = logging.getLogger(__name__)

KIND = "inpaint"


@runtime_checkable
class Inpainter(Protocol):
    #: e.g. ``opencv/telea`` or ``diffusers/<model>``
    name: str
    #: True when the prompt steers the fill (a classical inpainter ignores it)
    follows_prompt: bool
    #: the working resolution (long side) the inpainter wants, or None for any size
    resolution: int | None

    def inpaint(
        self, image: np.ndarray, mask: np.ndarray, *, prompt: str = "", negative_prompt: str = "", seed: int = 0
    ) -> np.ndarray: ...


class OpenCVInpainter:
    follows_prompt = False
    resolution = None

    def __init__(self, method: str = "telea", radius: int = 5):
        if method not in ("telea", "ns"):
            raise EditingError(f"unknown OpenCV inpainting method {method!r}; use 'telea' or 'ns'")
        self.method = method
        self.radius = int(radius)
        self.name = f"opencv/{method}"
        self._flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS

    def inpaint(self, image, mask, *, prompt="", negative_prompt="", seed=0):
        m = np.asarray(mask).astype(np.uint8) * 255
        return cv2.inpaint(np.ascontiguousarray(image), m, self.radius, self._flag)


# -- diffusers -----------------------------------------------------------------------------------
PipelineLoader = Callable[[str], Any]  # dtype name ("float32", ...) -> pipeline on the device

_pipe_locks: dict[int, threading.Lock] = {}
_pipe_locks_guard = threading.Lock()


def _lock_for(pipe: Any) -> threading.Lock:
    # diffusers schedulers keep per-call state: one call at a time per pipeline object
    with _pipe_locks_guard:
        return _pipe_locks.setdefault(id(pipe), threading.Lock())


def _is_flux_fill(source: str) -> bool:
    index = os.path.join(source, "model_index.json")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                return json.load(f).get("_class_name") == "FluxFillPipeline"
        except (OSError, ValueError):
            return False
    s = source.lower()
    return "flux" in s and "fill" in s


def unavailable_hint(source: str, revision: str | None, cause: BaseException | str) -> str:
    """The ModelUnavailableError message for an inpaint pipeline: what failed and the ways out."""
    rev = f" (revision {revision})" if revision else ""
    if os.path.isdir(source):
        where = f"the local folder {source!r} exists but is not a loadable diffusers pipeline (model_index.json + components); re-create it or"
    elif registry.looks_local(source):
        where = f"the local path {source!r} does not exist; fix editing.model.path (CIELR_EDITING__MODEL__PATH) or"
    else:
        where = (
            f"download it once where the hub is reachable ({registry.download_hint(source)}) into the Hugging Face "
            "cache (HF_HOME), or point editing.model.path (CIELR_EDITING__MODEL__PATH) at a local diffusers folder, or"
        )
    return (
        f"inpaint pipeline {source!r}{rev} is not available: {str(cause).strip().rstrip('.')}. To fix: {where} "
        "run offline with `cielr models tiny` and `--profile tiny` (random weights, meaningless edits), or use the "
        "classical inpainter with CIELR_EDITING__BACKEND=opencv (no weights; it can only `remove`)."
    )


def diffusers_loader(source: str, revision: str | None, device: str) -> PipelineLoader:
    """A loader of the pipeline at ``source`` in a given dtype, on ``device``."""

    def load(dtype_name: str) -> Any:
        from diffusers import AutoPipelineForInpainting

        if registry.looks_local(source) and not os.path.exists(source):
            raise registry.ModelUnavailableError(unavailable_hint(source, revision, "no such file or directory"))
        dtype = registry.resolve_dtype(dtype_name, device)
        kw = registry.hf_kwargs(revision)
        kw[dtype_kwarg()] = dtype
        try:
            if _is_flux_fill(source):
                from diffusers import FluxFillPipeline

                pipe = FluxFillPipeline.from_pretrained(source, **kw)
            else:
                pipe = AutoPipelineForInpainting.from_pretrained(source, **kw)
        except (OSError, ValueError, ImportError) as e:
            raise registry.ModelUnavailableError(unavailable_hint(source, revision, e)) from e
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return load


@functools.cache
def dtype_kwarg() -> str:
    """The dtype argument's name in diffusers' from_pretrained: ``dtype`` from diffusers 0.36 (which
    deprecates ``torch_dtype``). Asked when a pipeline loads, not at import: importing diffusers'
    pipeline module costs seconds, which a command that only checks or plans should not pay."""
    try:
        from diffusers.pipelines import pipeline_utils

        return "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"
    except ImportError:  # pragma: no cover
        return "torch_dtype"



def _finite_and_not_black(out: np.ndarray, reference: np.ndarray) -> str | None:
    """None when the output is usable, else why not."""
    if not np.all(np.isfinite(out)):
        return "NaN/inf values in the output"
    if float(np.max(out)) <= 1.0 / 255 and int(reference.max()) > 8:
        return "an all-black output for a non-black input"
    return None


class DiffusersInpainter:
    follows_prompt = True

    def __init__(
        self,
        source: str,
        *,
        revision: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        resolution: int = 512,
        steps: int = 30,
        guidance_scale: float = 7.5,
        strength: float = 1.0,
        loader: PipelineLoader | None = None,
        label: str | None = None,
        batching: bool = False,
        batch_size: int = 4,
        max_batch_wait_ms: float = 5.0,
    ):
        self.source = source
        self.revision = revision
        self.device = device
        self.dtype = str(dtype)
        self.resolution = int(resolution)
        self.steps = int(steps)
        self.guidance_scale = float(guidance_scale)
        self.strength = float(strength)
        self._loader = loader or diffusers_loader(source, revision, device)
        self.name = f"diffusers/{label or source}"
        self.retried_fp32 = 0  # how many calls fell back to float32
        # concurrent calls (images in flight) batched into one pipeline call: cielr_core.batching
        self.batching = bool(batching)
        self.batch_size = int(batch_size)
        self.max_batch_wait_ms = float(max_batch_wait_ms)

    def pipeline(self, dtype: str | None = None) -> Any:
        """The pipeline in ``dtype`` (default: this inpainter's), loaded once per process."""
        dt = dtype or self.dtype
        return registry.get_model(
            KIND, self.source, lambda: self._loader(dt), revision=self.revision, device=self.device, dtype=dt
        )

    def _run(self, pipe: Any, image: np.ndarray, mask: np.ndarray, prompt: str, negative_prompt: str, seed: int):
        import torch
        from PIL import Image

        h, w = image.shape[:2]
        factor = int(getattr(pipe, "vae_scale_factor", 8) or 8)
        if _is_flux_pipe(pipe):
            factor *= 2  # FLUX packs 2x2 latent patches
        mw, mh = model_size(w, h, self.resolution, factor)
        img = Image.fromarray(resize_rgb(image, (mw, mh)))
        msk = Image.fromarray(resize_mask(mask, (mw, mh)).astype(np.uint8) * 255)
        kwargs: dict[str, Any] = {
            "prompt": prompt,
            "image": img,
            "mask_image": msk,
            "height": mh,
            "width": mw,
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "generator": torch.Generator(device="cpu").manual_seed(int(seed)),
            "output_type": "np",
        }
        accepted = inspect.signature(pipe.__call__).parameters
        if "negative_prompt" in accepted and negative_prompt:
            kwargs["negative_prompt"] = negative_prompt
        if "strength" in accepted:
            kwargs["strength"] = self.strength
        kwargs = {k: v for k, v in kwargs.items() if k in accepted or "kwargs" in accepted}
        if self.batching:
            return self._run_batched(pipe, img, msk, prompt, negative_prompt, seed), (mw, mh)
        with _lock_for(pipe), torch.inference_mode():
            result = pipe(**kwargs)
        nsfw = getattr(result, "nsfw_content_detected", None)
        if nsfw and any(bool(x) for x in nsfw):
            raise EditingError(
                "the pipeline's safety checker flagged the inpainted output (it returns a black image); "
                "change the prompt"
            )
        out = np.asarray(result.images[0] if isinstance(result.images, (list, tuple)) else result.images)
        if out.ndim == 4:
            out = out[0]
        return out.astype(np.float32), (mw, mh)

    def _run_batched(self, pipe: Any, img: Any, msk: Any, prompt: str, negative_prompt: str, seed: int) -> np.ndarray:
        """One request to the pipeline's batcher: same-size requests in flight share one call."""
        from cielr_core import batching

        def run(reqs: list[batching.InpaintRequest]) -> list[np.ndarray]:
            with _lock_for(pipe):
                return batching.inpaint_batch(pipe, reqs, steps=self.steps, guidance_scale=self.guidance_scale,
                                              strength=self.strength)

        req = batching.InpaintRequest(np.asarray(img), np.asarray(msk) > 0, prompt, int(seed), negative_prompt)
        name = f"inpaint:{self.steps}:{self.guidance_scale}:{self.strength}"
        b = batching.batcher_for(name, pipe, run, max_batch=self.batch_size, max_wait_ms=self.max_batch_wait_ms)
        try:
            return b.submit(req, key=req.key)
        except RuntimeError as e:
            if "safety checker" in str(e):
                raise EditingError("the pipeline's safety checker flagged the inpainted output (it returns a black "
                                   "image); change the prompt") from e
            raise

    def inpaint(self, image, mask, *, prompt="", negative_prompt="", seed=0):
        image = np.asarray(image)
        h, w = image.shape[:2]
        out, _ = self._run(self.pipeline(), image, mask, prompt, negative_prompt, seed)
        bad = _finite_and_not_black(out, image)
        if bad is not None:
            if self.dtype == "float32":
                raise EditingError(f"{self.name}: unusable inpainting output in float32 ({bad})")
            log.warning("%s: %s in %s; retrying in float32", self.name, bad, self.dtype)
            self.retried_fp32 += 1
            out, _ = self._run(self.pipeline("float32"), image, mask, prompt, negative_prompt, seed)
            bad32 = _finite_and_not_black(out, image)
            if bad32 is not None:
                raise EditingError(
                    f"{self.name}: unusable inpainting output in {self.dtype} ({bad}) and again in float32 ({bad32})"
                )
        u8 = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
        return resize_rgb(u8, (w, h))


def _batching_enabled(mode: str, device: str) -> bool:
    from cielr_core.batching import enabled

    return enabled(mode, device)


def _is_flux_pipe(pipe: Any) -> bool:
    return type(pipe).__name__.startswith("Flux")


# -- factory -------------------------------------------------------------------------------------
def model_source(settings: Settings | EditingConfig, ref: ModelRef, setting: str) -> str:
    """The local path or hub id of ``ref`` (``setting`` names it in errors). With only the editing
    section at hand, a path that uses ``${models_dir}`` cannot be resolved: that is an error."""
    if isinstance(settings, Settings):
        return settings.resolve_model(ref)
    if ref.path and "${models_dir}" in ref.path:
        raise EditingError(
            f"{setting} {ref.path!r} uses ${{models_dir}}: pass the whole Settings, not only its editing section"
        )
    return os.path.expanduser(ref.path) if ref.path else ref.id


def editing_config(settings: Settings | EditingConfig) -> tuple[EditingConfig, str]:
    """The editing section and the resolved model source (local path or hub id)."""
    if isinstance(settings, Settings):
        return settings.editing, settings.resolve_model(settings.editing.model)
    if isinstance(settings, EditingConfig):
        return settings, model_source(settings, settings.model, "editing.model.path")
    raise TypeError(f"expected Settings or EditingConfig, got {type(settings).__name__}")


def make_inpainter(backend: str, settings: Settings | EditingConfig, *, load: bool = True) -> Inpainter:
    """An inpainter for ``backend`` (``diffusers`` or ``opencv``) configured from ``settings``.

    For ``diffusers`` the pipeline is fetched from the model registry now (loaded on first use in
    the process) unless ``load=False``; missing weights raise ``ModelUnavailableError`` with the
    ways to provide them.
    """
    cfg, source = editing_config(settings)
    if backend == "opencv":
        return OpenCVInpainter(cfg.opencv_method, cfg.opencv_radius)
    if backend != "diffusers":
        raise EditingError(f"unknown inpainting backend {backend!r}; use 'diffusers' or 'opencv'")
    device = registry.resolve_device(cfg.device)
    dtype = registry.resolve_dtype(cfg.dtype, device)
    dtype_name = {"torch.float32": "float32", "torch.float16": "float16", "torch.bfloat16": "bfloat16"}[str(dtype)]
    inp = DiffusersInpainter(
        source,
        revision=cfg.model.revision,
        device=device,
        dtype=dtype_name,
        resolution=cfg.resolution,
        steps=cfg.steps,
        guidance_scale=cfg.guidance_scale,
        strength=cfg.strength,
        label=cfg.model.id,
        batching=_batching_enabled(cfg.batching, device),
        batch_size=cfg.batch_size,
        max_batch_wait_ms=cfg.max_batch_wait_ms,
    )
    if load:
        inp.pipeline()
    return inp
