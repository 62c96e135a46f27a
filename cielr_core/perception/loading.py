"""Loading the three perception models through the registry (once per process).

``source`` is what :meth:`Settings.resolve_model` gives: a local path (``${models_dir}``
expanded) or a hub id. Missing weights raise :class:`ModelUnavailableError` naming the model
and the ways out (a local copy, the Hugging Face cache, or ``cielr models tiny`` + ``--profile tiny``).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from cielr_core.models import (
    ModelUnavailableError,
    get_model,
    hf_kwargs,
    load_pretrained_pair,
    looks_local,
    transformers_class,
    unavailable_message,
)


def missing_local(kind: str, source: str, revision: str | None, models_dir: str | None) -> ModelUnavailableError:
    """The error for a configured local path that does not exist."""
    msg = unavailable_message(kind, source, revision, f"no such file or directory: {source}")
    if models_dir and os.path.abspath(source).startswith(os.path.abspath(os.path.expanduser(models_dir))):
        msg += (
            f" This path is inside models_dir ({models_dir}): `cielr models tiny` writes the tiny models there "
            "(then run with `--profile tiny`)."
        )
    return ModelUnavailableError(msg)


# -- SAM2 ---------------------------------------------------------------------------------------
def _sam2_checkpoint(source: str, revision: str | None, models_dir: str | None) -> str:
    if os.path.exists(source):
        return source
    if looks_local(source) or "/" not in source:
        raise missing_local("sam2", source, revision, models_dir)
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    if source not in HF_MODEL_ID_TO_FILENAMES:
        raise ModelUnavailableError(
            unavailable_message(
                "sam2", source, revision,
                f"unknown SAM2 hub id (known: {', '.join(sorted(HF_MODEL_ID_TO_FILENAMES))}); "
                "give a local checkpoint path instead",
            )
        )
    filename = HF_MODEL_ID_TO_FILENAMES[source][1]
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo_id=source, filename=filename, **hf_kwargs(revision))
    except Exception as e:
        raise ModelUnavailableError(unavailable_message("sam2", source, revision, e)) from e


def load_sam2(source: str, *, config_name: str, hydra_overrides: list[str], revision: str | None, device: str,
              models_dir: str | None = None) -> Any:
    """The SAM2 model (float32 weights; bf16 comes from autocast at call time on CUDA)."""

    def loader() -> Any:
        from sam2.build_sam import build_sam2

        ckpt = _sam2_checkpoint(source, revision, models_dir)
        try:
            return build_sam2(config_name, ckpt, device=device, mode="eval",
                              hydra_overrides_extra=list(hydra_overrides))
        except RuntimeError as e:  # strict state-dict load: the checkpoint does not fit the config
            raise ModelUnavailableError(
                unavailable_message("sam2", source, revision,
                                    f"checkpoint does not match config {config_name} "
                                    f"(overrides {list(hydra_overrides)}): {str(e)[:400]}")
            ) from e

    key_source = source if not hydra_overrides else f"{source}#{config_name}#{'|'.join(hydra_overrides)}"
    return get_model("sam2", key_source, loader, revision=revision, device=device, dtype="float32")


# -- transformers models ------------------------------------------------------------------------
def _hf_check(kind: str, source: str, revision: str | None, models_dir: str | None) -> None:
    if not os.path.exists(source) and looks_local(source):
        raise missing_local(kind, source, revision, models_dir)


def load_owlv2(source: str, *, revision: str | None, device: str, dtype: torch.dtype,
               models_dir: str | None = None) -> tuple[Any, Any]:
    """(Owlv2ForObjectDetection, Owlv2Processor)."""
    return load_pretrained_pair("owlv2", source, transformers_class("Owlv2ForObjectDetection"),
                                transformers_class("Owlv2Processor"),
                                revision=revision, device=device, dtype=dtype,
                                check=lambda: _hf_check("owlv2", source, revision, models_dir))


def load_depth(source: str, *, revision: str | None, device: str, dtype: torch.dtype,
               models_dir: str | None = None) -> tuple[Any, Any]:
    """(DepthAnythingForDepthEstimation (or any depth-estimation model), its image processor)."""
    return load_pretrained_pair("depth", source, transformers_class("AutoModelForDepthEstimation"),
                                transformers_class("AutoImageProcessor"), revision=revision, device=device,
                                dtype=dtype, check=lambda: _hf_check("depth", source, revision, models_dir))
