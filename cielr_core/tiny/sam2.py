"""Tiny random-weight SAM2.1 (the sam2 package's own Hiera/SAM2Base classes), written locally.

The architecture is ``configs/sam2.1/sam2.1_hiera_t.yaml`` with
:data:`cielr_core.config.TINY_SAM2_OVERRIDES` applied (a 24-wide, 5-block Hiera trunk and a
64-wide neck/decoder; about 2.9M parameters). The checkpoint is ``model.pt`` holding
``{"model": state_dict}``, the format ``sam2.build_sam.build_sam2`` loads (strictly), so the real
loader reads it with the same config name and overrides.
"""

from __future__ import annotations

from pathlib import Path

import torch

CONFIG_NAME = "configs/sam2.1/sam2.1_hiera_t.yaml"
CHECKPOINT = "model.pt"


def make(out_dir: Path, seed: int) -> None:
    import sam2  # noqa: F401  (initialises hydra's config search path on the sam2 package)
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from cielr_core.config import TINY_SAM2_OVERRIDES

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = compose(config_name=CONFIG_NAME, overrides=list(TINY_SAM2_OVERRIDES))
    OmegaConf.resolve(cfg)
    torch.manual_seed(seed)
    model = instantiate(cfg.model, _recursive_=True)
    torch.save({"model": model.state_dict()}, out_dir / CHECKPOINT)
    (out_dir / "README.txt").write_text(
        "Tiny random-weight SAM2.1 made by `cielr models tiny`.\n"
        f"Load: build_sam2({CONFIG_NAME!r}, 'model.pt', hydra_overrides_extra=TINY_SAM2_OVERRIDES)\n"
        "(TINY_SAM2_OVERRIDES lives in cielr_core.config). Its masks are meaningless.\n"
    )
