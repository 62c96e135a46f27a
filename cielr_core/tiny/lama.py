"""Tiny random-weight LaMa stand-in: a TorchScript module with big-lama.pt's call signature.

``forward(image, mask) -> image``: ``image`` 1x3xHxW float in [0, 1], ``mask`` 1x1xHxW float (1 =
fill), output 1x3xHxW in [0, 1], masked pixels predicted and the rest kept (as the published
export composites). Like big-lama it downsamples by 8, so H and W must be multiples of 8 (it
raises otherwise: the caller must pad). Saved with ``torch.jit.save`` as ``big-lama.pt`` and loaded
by the same ``torch.jit.load`` code as the real checkpoint. Random weights: the fill is meaningless.
"""

from __future__ import annotations

from pathlib import Path

STRIDE = 8


def build(seed: int = 0):
    import torch
    import torch.nn.functional as F
    from torch import nn

    class TinyLama(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.Sequential(
                nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
            )
            self.head = nn.Conv2d(8 + 4, 3, 3, padding=1)

        def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            h, w = image.shape[2], image.shape[3]
            if h % 8 != 0 or w % 8 != 0:
                raise RuntimeError("LaMa input height and width must be multiples of 8")
            known = image * (1.0 - mask)
            x = torch.cat([known, mask], dim=1)
            z = F.interpolate(self.down(x), size=[h, w], mode="nearest")
            pred = torch.sigmoid(self.head(torch.cat([z, x], dim=1)))
            return mask * pred + (1.0 - mask) * image

    torch.manual_seed(seed)
    return torch.jit.script(TinyLama().eval())


def make(out_dir: Path, seed: int) -> None:
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.jit.save(build(seed), str(out_dir / "big-lama.pt"))
