"""LaMa removal (Suvorov et al. 2022), the paper's best removal variant (CIELR Table 2: LaMa, no dilation).

The published big-lama TorchScript checkpoint (``big-lama.pt``, as lama-cleaner / IOPaint ship it)
is loaded with ``torch.jit.load`` from ``editing.lama.model.path`` (a local file) or, when no path
is set, from the Hugging Face cache file ``editing.lama.filename`` of the hub repo
``editing.lama.model.id`` (never downloaded at run time). Its call signature::

    out = model(image, mask)   # image: 1x3xHxW float in [0, 1] (RGB); mask: 1x1xHxW float, 1 = fill
                               # out:   1x3xHxW float in [0, 1]; H and W multiples of the stride (8)

The crop (or whole image) is padded to a multiple of ``editing.lama.pad_multiple`` by symmetric
reflection, run at its native resolution, and cropped back; a crop whose long side is above
``limits.max_working_side`` is run on a copy of that long side (area-averaged; the mask grown so no
masked pixel is lost) and the fill resized back, since the caller composites only masked pixels. The model is loaded once per process
through :mod:`cielr_core.models`.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from cielr_core import models as registry

from .errors import EditingError

KIND = "lama"
_lock = threading.Lock()


def lama_checkpoint(source: str, filename: str, revision: str | None = None) -> str:
    """The local file of the LaMa TorchScript: ``source`` itself when it is a path, else the cached
    ``filename`` of the hub repo ``source``. ``ModelUnavailableError`` (with the ways out) if absent."""
    if os.path.isabs(source) or source.startswith((".", "~")) or os.path.exists(source):
        path = os.path.expanduser(source)
        if os.path.isfile(path):
            return path
        raise registry.ModelUnavailableError(
            f"LaMa checkpoint {path!r} does not exist; fix editing.lama.model.path (CIELR_EDITING__LAMA__MODEL__PATH), "
            "or unset it to use the Hugging Face cache")
    try:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError as e:  # pragma: no cover - a dependency
        raise registry.ModelUnavailableError(f"LaMa: huggingface_hub is missing ({e})") from e
    cache_dir = os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else HF_HUB_CACHE
    found = try_to_load_from_cache(source, filename, cache_dir=cache_dir, revision=revision)
    if isinstance(found, str) and os.path.isfile(found):
        return found
    raise registry.ModelUnavailableError(
        f"LaMa checkpoint {filename!r} of {source!r} is not in the Hugging Face cache ({cache_dir}). To fix: "
        f"{registry.download_hint(source, filename)} where the hub is reachable, or set "
        "editing.lama.model.path (CIELR_EDITING__LAMA__MODEL__PATH) to a big-lama.pt TorchScript file; until then "
        "`remove` uses the next backend (SD inpainting, then OpenCV)")


def load_lama(path: str, device: str) -> Any:
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # torch deprecates TorchScript; the published checkpoint is one
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(path, map_location="cpu")
    except (RuntimeError, ValueError) as e:
        raise registry.ModelUnavailableError(f"LaMa checkpoint {path!r} is not a loadable TorchScript file: {e}") from e
    return model.eval().to(device)


def pad_to_multiple(a: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``a`` (HxW[xC]) padded at the bottom and right to multiples of ``multiple`` by symmetric
    reflection; returns (padded, (H, W) of the original)."""
    h, w = a.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return a, (h, w)
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, pad, mode="symmetric"), (h, w)


class LamaInpainter:
    follows_prompt = False
    resolution = None  # native resolution of the crop

    def __init__(self, path: str, *, device: str = "cpu", pad_multiple: int = 8, label: str | None = None,
                 model: Any = None, max_side: int | None = None):
        self.path = path
        self.max_side = max_side
        self.device = device
        self.pad_multiple = int(pad_multiple)
        self.name = f"lama/{label or os.path.basename(path)}"
        self._model = model

    def model(self) -> Any:
        if self._model is None:
            self._model = registry.get_model(KIND, self.path, lambda: load_lama(self.path, self.device),
                                             device=self.device, dtype="float32")
        return self._model

    def inpaint(self, image, mask, *, prompt="", negative_prompt="", seed=0):
        import torch

        img = np.asarray(image)
        m = np.asarray(mask).astype(bool)
        h, w = img.shape[:2]
        full_size = None
        if self.max_side and max(h, w) > self.max_side:
            from .prep import model_size, resize_mask, resize_rgb

            full_size = (w, h)
            size = model_size(w, h, self.max_side, self.pad_multiple)
            img, m = resize_rgb(img, size), resize_mask(m, size)
            h, w = img.shape[:2]
        pimg, _ = pad_to_multiple(img, self.pad_multiple)
        pmask, _ = pad_to_multiple(m.astype(np.uint8), self.pad_multiple)
        t_img = torch.from_numpy(np.ascontiguousarray(pimg)).permute(2, 0, 1)[None].float().div(255.0)
        t_mask = torch.from_numpy(np.ascontiguousarray(pmask))[None, None].float()
        model = self.model()
        with _lock, torch.inference_mode():
            out = model(t_img.to(self.device), t_mask.to(self.device))
        out = out.detach().float().cpu()
        if out.ndim != 4 or tuple(out.shape[-2:]) != tuple(pimg.shape[:2]) or out.shape[1] != 3:
            raise EditingError(f"{self.name} returned {tuple(out.shape)} for a {tuple(t_img.shape)} input")
        arr = out[0].permute(1, 2, 0).numpy()
        if not np.all(np.isfinite(arr)):
            raise EditingError(f"{self.name}: NaN/inf values in the output")
        out_u8 = np.clip(np.rint(arr[:h, :w] * 255.0), 0, 255).astype(np.uint8)
        return out_u8 if full_size is None else resize_rgb(out_u8, full_size)


def make_lama(settings) -> LamaInpainter:
    """A LaMa inpainter from the settings (``ModelUnavailableError`` when the checkpoint is absent)."""
    from .inpainters import editing_config, model_source

    cfg, _ = editing_config(settings)
    ref = cfg.lama.model
    source = model_source(settings, ref, "editing.lama.model.path")
    path = lama_checkpoint(source, cfg.lama.filename, ref.revision)
    device = registry.resolve_device(cfg.device)
    limits = getattr(settings, "limits", None)
    return LamaInpainter(path, device=device, pad_multiple=cfg.lama.pad_multiple, label=ref.id,
                         max_side=limits.max_working_side if limits is not None else None)
