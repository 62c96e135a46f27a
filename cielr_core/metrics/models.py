"""Metric models (LPIPS backbone + linear heads, CLIP, DINO), loaded once per process through
:mod:`cielr_core.models`. A model that cannot be found raises ``ModelUnavailableError``; the metric
functions turn that into ``None`` (reported as missing, never as zero).

LPIPS uses the ``lpips`` package: its calibrated linear layers ship inside the wheel, but its
torchvision backbone (AlexNet / VGG16 / SqueezeNet ImageNet weights) would be downloaded by
torchvision. We never let it download: the backbone is built with random weights
(``pnet_rand=True``) and then filled from a local torchvision checkpoint, by default the torch hub
cache (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth`` etc., what torchvision writes
there), or ``eval.lpips_backbone_path``. No checkpoint -> unavailable -> LPIPS missing.
``eval.lpips_backbone = "random"`` keeps the random backbone (the tiny profile / tests only:
meaningless numbers).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from cielr_core import models as registry
from cielr_core.models import ModelUnavailableError

_TV_BUILDERS = {"alex": ("alexnet", "AlexNet_Weights"), "vgg": ("vgg16", "VGG16_Weights"),
                "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights")}


def _eval_cfg(settings):
    return settings.eval


def metric_device(settings) -> str:
    return registry.resolve_device(getattr(_eval_cfg(settings), "device", "auto") or "auto")


def lpips_backbone_checkpoint(net: str, path: str | None = None) -> str:
    """The local torchvision checkpoint the LPIPS backbone is read from."""
    if path:
        return os.path.expanduser(path)
    import torchvision.models as tvm

    weights = getattr(tvm, _TV_BUILDERS[net][1]).IMAGENET1K_V1
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def _build_lpips(net: str, backbone: str, checkpoint: str | None, device: str):
    try:
        import lpips
    except ImportError as e:  # pragma: no cover - declared dependency
        raise ModelUnavailableError(f"the `lpips` package is not installed: {e}") from e
    if backbone == "pretrained":
        assert checkpoint is not None
        if not os.path.isfile(checkpoint):
            raise ModelUnavailableError(
                f"LPIPS {net} backbone weights not found at {checkpoint}. To fix: copy torchvision's "
                f"ImageNet checkpoint there (torchvision downloads it into the torch hub cache, "
                f"$TORCH_HOME/hub/checkpoints) or set CIELR_EVAL__LPIPS_BACKBONE_PATH"
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        if backbone == "pretrained":
            import torchvision.models as tvm

            tv = getattr(tvm, _TV_BUILDERS[net][0])(weights=None)
            try:
                tv.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
            except Exception as e:
                raise ModelUnavailableError(f"LPIPS backbone checkpoint {checkpoint} could not be loaded: {e}") from e
            feats = tv.features
            for i in range(1, model.net.N_slices + 1):
                for name, mod in getattr(model.net, f"slice{i}").named_children():
                    mod.load_state_dict(feats[int(name)].state_dict())
    return model.eval().to(device)


def get_lpips(settings, *, net: str | None = None):
    cfg = _eval_cfg(settings)
    net = net or cfg.lpips_net
    backbone = getattr(cfg, "lpips_backbone", "pretrained")
    ckpt = lpips_backbone_checkpoint(net, getattr(cfg, "lpips_backbone_path", None)) if backbone == "pretrained" else None
    device = metric_device(settings)
    source = f"lpips:{net}:{backbone}:{ckpt or 'random'}"
    return registry.get_model("lpips", source, lambda: _build_lpips(net, backbone, ckpt, device),
                              device=device, dtype="float32")


def get_clip(settings) -> tuple[Any, Any]:
    """(CLIPModel, CLIPProcessor) for ``eval.clip``."""
    cfg = _eval_cfg(settings)
    return registry.load_pretrained_pair(
        "clip", settings.resolve_model(cfg.clip), registry.transformers_class("CLIPModel"),
        registry.transformers_class("CLIPProcessor"), revision=cfg.clip.revision, device=metric_device(settings))


def get_dino(settings) -> tuple[Any, Any]:
    """(model, image processor) for ``eval.dino`` (a ViT / DINOv2 checkpoint; CLS token features)."""
    cfg = _eval_cfg(settings)
    return registry.load_pretrained_pair(
        "dino", settings.resolve_model(cfg.dino), registry.transformers_class("AutoModel"),
        registry.transformers_class("AutoImageProcessor"), revision=cfg.dino.revision, device=metric_device(settings))
