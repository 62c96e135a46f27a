"""Instruction editing (``global`` and ``transform`` steps): a diffusers pipeline that edits an image
by a text instruction, by model id or local path (``editing.instruct``).

The pipeline class comes from the model's ``model_index.json`` (``DiffusionPipeline.from_pretrained``)
or, when set, from ``editing.instruct.pipeline_class`` (e.g. an inpaint variant of a repo that
holds both). Known to work through the same call:

* InstructPix2Pix: ``timbrooks/instruct-pix2pix`` (``StableDiffusionInstructPix2PixPipeline``; SDXL:
  ``StableDiffusionXLInstructPix2PixPipeline``) -- ``image_guidance_scale`` is passed;
* FLUX.1 Kontext: ``black-forest-labs/FLUX.1-Kontext-dev`` (``FluxKontextPipeline``;
  ``FluxKontextInpaintPipeline`` for mask-bounded edits);
* Qwen-Image-Edit: ``Qwen/Qwen-Image-Edit`` (``QwenImageEditPipeline``; ``QwenImageEditInpaintPipeline``).

Keyword arguments the pipeline's ``__call__`` does not take are left out; a pipeline that takes
``mask_image`` gets the step's mask for ``transform`` (an inpaint variant). The image is resized to
the model's resolution (long side ``resolution``, sides multiples of the VAE factor, x2 for FLUX)
and the output back to the input's size. Loaded once per process through :mod:`cielr_core.models`.

Preservation: a ``transform`` is composited inside its dilated mask like any inpainting step (the
guarantee holds); a ``global`` step changes the whole image, so the step reports how much of it
changed (:func:`preservation_report`) instead of claiming anything.
"""

from __future__ import annotations

import inspect
import os
import threading
from typing import Any

import numpy as np

from cielr_core import models as registry

from .errors import EditingError
from .inpainters import _finite_and_not_black, dtype_kwarg
from .prep import model_size, resize_mask, resize_rgb

KIND = "instruct"
_locks: dict[int, threading.Lock] = {}
_guard = threading.Lock()


def _lock_for(pipe: Any) -> threading.Lock:
    with _guard:
        return _locks.setdefault(id(pipe), threading.Lock())


def instruct_loader(source: str, revision: str | None, device: str, dtype_name: str, pipeline_class: str | None):
    def load() -> Any:
        import diffusers

        if registry.looks_local(source) and not os.path.exists(source):
            raise registry.ModelUnavailableError(
                f"instruction-editing pipeline {source!r} does not exist; fix editing.instruct.model.path "
                "(CIELR_EDITING__INSTRUCT__MODEL__PATH), or run `cielr models tiny` with --profile tiny")
        cls = getattr(diffusers, pipeline_class) if pipeline_class else diffusers.DiffusionPipeline
        kw = registry.hf_kwargs(revision)
        kw[dtype_kwarg()] = registry.resolve_dtype(dtype_name, device)
        try:
            pipe = cls.from_pretrained(source, **kw)
        except (OSError, ValueError, ImportError) as e:
            raise registry.ModelUnavailableError(
                f"instruction-editing pipeline {source!r} is not available: {str(e).strip()[:300]}. To fix: "
                f"{registry.download_hint(source)} where the hub is reachable, or set editing.instruct.model.path "
                "(CIELR_EDITING__INSTRUCT__MODEL__PATH) to a local diffusers folder") from e
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return load


class InstructEditor:
    """Edits a whole image (or a crop) by an instruction."""

    follows_prompt = True

    def __init__(self, source: str, *, revision: str | None = None, device: str = "cpu", dtype: str = "float32",
                 resolution: int = 512, steps: int = 20, guidance_scale: float = 7.5,
                 image_guidance_scale: float = 1.5, pipeline_class: str | None = None, label: str | None = None,
                 loader=None):
        self.source, self.revision, self.device, self.dtype = source, revision, device, dtype
        self.resolution = int(resolution)
        self.steps = int(steps)
        self.guidance_scale = float(guidance_scale)
        self.image_guidance_scale = float(image_guidance_scale)
        self.pipeline_class = pipeline_class
        self.name = f"instruct/{label or source}"
        self._loader = loader or instruct_loader(source, revision, device, dtype, pipeline_class)

    def pipeline(self) -> Any:
        return registry.get_model(KIND, f"{self.source}#{self.pipeline_class or 'auto'}", self._loader,
                                  revision=self.revision, device=self.device, dtype=self.dtype)

    def edit(self, image: np.ndarray, instruction: str, *, seed: int = 0, mask: np.ndarray | None = None,
             negative_prompt: str = "") -> np.ndarray:
        import torch
        from PIL import Image

        pipe = self.pipeline()
        image = np.asarray(image)
        h, w = image.shape[:2]
        factor = int(getattr(pipe, "vae_scale_factor", 8) or 8)
        if type(pipe).__name__.startswith("Flux"):
            factor *= 2
        mw, mh = model_size(w, h, self.resolution, factor)
        accepted = inspect.signature(pipe.__call__).parameters
        kwargs: dict[str, Any] = {
            "prompt": instruction,
            "image": Image.fromarray(resize_rgb(image, (mw, mh))),
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "image_guidance_scale": self.image_guidance_scale,
            "height": mh,
            "width": mw,
            "generator": torch.Generator(device="cpu").manual_seed(int(seed)),
            "output_type": "np",
        }
        if negative_prompt:
            kwargs["negative_prompt"] = negative_prompt
        if mask is not None and "mask_image" in accepted:
            kwargs["mask_image"] = Image.fromarray(resize_mask(mask, (mw, mh)).astype(np.uint8) * 255)
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        with _lock_for(pipe), torch.inference_mode():
            result = pipe(**kwargs)
        out = np.asarray(result.images[0] if isinstance(result.images, (list, tuple)) else result.images)
        if out.ndim == 4:
            out = out[0]
        out = out.astype(np.float32)
        bad = _finite_and_not_black(out, image)
        if bad is not None:
            raise EditingError(f"{self.name}: unusable output ({bad})")
        u8 = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
        return resize_rgb(u8, (w, h))

    # the Inpainter protocol, so a mask-bounded ``transform`` goes through inpaint_region's crop and
    # feathered composite (only the dilated mask may change)
    def inpaint(self, image, mask, *, prompt="", negative_prompt="", seed=0):
        return self.edit(image, prompt, seed=seed, mask=mask, negative_prompt=negative_prompt)


def make_instruct_editor(settings) -> InstructEditor:
    from .inpainters import editing_config, model_source

    cfg, _ = editing_config(settings)
    ic = cfg.instruct
    ref = ic.model
    source = model_source(settings, ref, "editing.instruct.model.path")
    device = registry.resolve_device(cfg.device)
    dtype = registry.resolve_dtype(cfg.dtype, device)
    dtype_name = {"torch.float32": "float32", "torch.float16": "float16", "torch.bfloat16": "bfloat16"}[str(dtype)]
    ed = InstructEditor(source, revision=ref.revision, device=device, dtype=dtype_name, resolution=ic.resolution,
                        steps=ic.steps, guidance_scale=ic.guidance_scale,
                        image_guidance_scale=ic.image_guidance_scale, pipeline_class=ic.pipeline_class, label=ref.id)
    ed.pipeline()
    return ed


def preservation_report(before: np.ndarray, after: np.ndarray, tolerance: int = 8) -> dict:
    """How much of the image a scene-wide edit changed: the fraction of pixels whose largest channel
    difference exceeds ``tolerance``, and the mean absolute difference (0..255)."""
    d = np.abs(before.astype(np.int16) - after.astype(np.int16))
    return {"guaranteed": False, "changed_fraction": round(float((d.max(axis=2) > tolerance).mean()), 4),
            "mean_abs_diff": round(float(d.mean()), 3), "tolerance": tolerance}
