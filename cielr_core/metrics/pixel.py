"""Pixel metrics: PSNR, SSIM, L1/L2 and the target-mask IoU.

Two protocols for the background-preservation metrics (PSNR, SSIM, LPIPS):

``masked`` (our default)
    Statistics over the pixels that must stay unchanged (``region`` = outside the ground-truth
    mask) at native resolution. The edited region is EXCLUDED from the statistic, not zeroed:
    PSNR is ``10 log10(R^2 / MSE)`` with the MSE averaged over the region's pixels (all
    channels); SSIM computes every local window's means, variances and covariance from the
    region's pixels only (normalised convolution) and averages the SSIM map over the region.
    With ``region=None`` both equal scikit-image's full-image values exactly.

``smartedit`` (to set our numbers beside published ones)
    The published SmartEdit evaluation: resize both images to ``size`` x ``size`` (bicubic; the
    mask nearest-neighbour), multiply by the inverted mask (the edited region becomes zero in
    BOTH images, so it counts as a perfect match) and compute the metric over the whole square.

Identical inputs give ``PSNR = inf`` (scikit-image's convention). It is returned as
``float('inf')``; :func:`cielr_core.report.aggregate` counts infinite values separately and
averages the finite ones. A region with no pixels makes the statistic undefined: ``None``.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from cielr_core import masks as M
from cielr_core.images import as_rgb

SSIM_WIN = 7  # scikit-image's default window (uniform filter)
SSIM_K1, SSIM_K2 = 0.01, 0.03


def binarize(mask, threshold: int = 127) -> np.ndarray:
    """A bool mask. Bool stays; integer masks (8-bit GT masks with anti-aliased edges) are
    ``> threshold``; float masks in 0..1 are ``> 0.5``. A 3-channel mask uses its first channel."""
    m = np.asarray(mask.convert("L")) if isinstance(mask, Image.Image) else np.asarray(mask)
    if m.ndim == 3:
        m = m[:, :, 0]
    if m.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {m.shape}")
    if m.dtype == bool:
        return m
    if np.issubdtype(m.dtype, np.floating) and m.size and float(np.nanmax(m)) <= 1.0:
        return m > 0.5
    return m > threshold


def fit_mask(mask, shape: tuple[int, int]) -> np.ndarray:
    """:func:`binarize`, then resize nearest-neighbour to ``shape`` (rows, cols) when it differs
    (how a GT mask stored at another resolution than its image, e.g. CIEBench sample 5, is used)."""
    m = binarize(mask)
    if m.shape != tuple(shape):
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((shape[1], shape[0]),
                                                                        Image.Resampling.NEAREST)) > 127
    return m


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = as_rgb(a), as_rgb(b)
    if a.shape != b.shape:
        raise ValueError(
            f"images differ in size: {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]} "
            "(the masked protocol compares at native resolution; resize upstream or use protocol='smartedit')"
        )
    return a, b


def _region(region, shape: tuple[int, int]) -> np.ndarray | None:
    if region is None:
        return None
    r = M.as_bool(region)
    if r.shape != shape:
        raise ValueError(f"region {r.shape} does not match the image {shape}")
    return r


def _psnr_from_mse(mse: float, data_range: float) -> float:
    if mse == 0:
        return math.inf
    return float(10.0 * math.log10((data_range**2) / mse))


def smartedit_prepare(img, mask, size: int = 256) -> np.ndarray:
    """The published SmartEdit preprocessing: resize to ``size``x``size`` (bicubic), multiply by the
    inverted mask (resized nearest-neighbour; 8-bit masks are used as weights ``1 - m/255``,
    exactly as published, so anti-aliased edges are partly kept). Returns float64 HxWx3 in 0..255.

    ``mask`` is the GT mask of the EDITED region (bool or 8-bit)."""
    rgb = Image.fromarray(as_rgb(img)).resize((size, size), resample=Image.Resampling.BICUBIC)
    m = np.asarray(mask)
    if m.dtype == bool:
        m = m.astype(np.uint8) * 255
    mimg = Image.fromarray(m.astype(np.uint8), mode="L").resize((size, size), resample=Image.Resampling.NEAREST)
    keep = 1.0 - np.asarray(mimg, dtype=np.float64) / 255.0
    return np.asarray(rgb, dtype=np.float64) * keep[:, :, None]


def psnr(a, b, region: np.ndarray | None = None, *, protocol: str = "masked", data_range: float = 255,
         size: int = 256) -> float | None:
    """PSNR in dB between ``a`` and ``b``. ``region``: bool mask of the pixels that must stay
    unchanged (True = compared). Identical pixels -> ``inf``; an empty region -> ``None``."""
    if protocol == "smartedit":
        if region is None:
            raise ValueError("protocol 'smartedit' needs the region (outside the GT mask)")
        edited = ~M.as_bool(region)
        pa, pb = smartedit_prepare(a, edited, size), smartedit_prepare(b, edited, size)
        return _psnr_from_mse(float(np.mean((pa - pb) ** 2)), data_range)
    if protocol != "masked":
        raise ValueError(f"unknown protocol {protocol!r}; use 'masked' or 'smartedit'")
    a, b = _pair(a, b)
    r = _region(region, a.shape[:2])
    d = a.astype(np.float64) - b.astype(np.float64)
    if r is None:
        return _psnr_from_mse(float(np.mean(d**2)), data_range)
    if not r.any():
        return None
    return _psnr_from_mse(float(np.mean(d[r] ** 2)), data_range)


def _masked_ssim_channel(x: np.ndarray, y: np.ndarray, w: np.ndarray, data_range: float) -> tuple[np.ndarray, np.ndarray]:
    """SSIM map with window statistics computed from the pixels where ``w`` is 1 only.

    Mirrors scikit-image's defaults (7x7 uniform window, sample covariance, K1=0.01, K2=0.03,
    reflect at the borders); with ``w`` all ones it is exactly scikit-image's map. Returns the
    map and the pixels where it is defined (w == 1 and at least 2 region pixels in the window)."""
    filt = lambda v: ndi.uniform_filter(v, size=SSIM_WIN)
    n_win = SSIM_WIN**2
    frac = filt(w)  # fraction of the window inside the region
    count = np.rint(frac * n_win)
    safe = np.where(frac > 0, frac, 1.0)
    ux, uy = filt(w * x) / safe, filt(w * y) / safe
    uxx, uyy, uxy = filt(w * x * x) / safe, filt(w * y * y) / safe, filt(w * x * y) / safe
    cov_norm = np.where(count > 1, count / np.maximum(count - 1, 1), 1.0)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s, (w > 0) & (count > 1)


def ssim(a, b, region: np.ndarray | None = None, *, protocol: str = "masked", data_range: float = 255,
         size: int = 256) -> float | None:
    """Mean SSIM. ``masked``: scikit-image's SSIM (7x7 uniform window, per channel, averaged) with
    every window restricted to the region's pixels, averaged over the region (pixels within 3 px of
    the image border are left out, as scikit-image does). ``smartedit``: on the prepared squares,
    Gaussian window sigma=1.5 without sample covariance (the Wang et al. settings that torchmetrics,
    used by the published code, implements; its border handling differs slightly)."""
    from skimage.metrics import structural_similarity

    if protocol == "smartedit":
        if region is None:
            raise ValueError("protocol 'smartedit' needs the region (outside the GT mask)")
        edited = ~M.as_bool(region)
        pa, pb = smartedit_prepare(a, edited, size), smartedit_prepare(b, edited, size)
        return float(structural_similarity(pa, pb, channel_axis=2, data_range=data_range, gaussian_weights=True,
                                           sigma=1.5, use_sample_covariance=False))
    if protocol != "masked":
        raise ValueError(f"unknown protocol {protocol!r}; use 'masked' or 'smartedit'")
    a, b = _pair(a, b)
    r = _region(region, a.shape[:2])
    if r is None:
        return float(structural_similarity(a.astype(np.float64), b.astype(np.float64), channel_axis=2,
                                           data_range=data_range))
    pad = (SSIM_WIN - 1) // 2
    inner = np.zeros_like(r)
    inner[pad:r.shape[0] - pad, pad:r.shape[1] - pad] = True
    w = r.astype(np.float64)
    total, n = 0.0, 0
    for c in range(3):
        s, valid = _masked_ssim_channel(a[:, :, c].astype(np.float64), b[:, :, c].astype(np.float64), w, data_range)
        sel = valid & inner
        total += float(s[sel].sum())
        n += int(sel.sum())
    if n == 0:
        return None
    return total / n


def l1_l2(edited, target) -> tuple[float, float]:
    """MagicBrush's L1 and L2 (mean absolute / squared difference on 0..1 values); the edited image
    is resized to the target's size first (bicubic), as the published evaluation does."""
    e, t = as_rgb(edited), as_rgb(target)
    if e.shape != t.shape:
        e = np.asarray(Image.fromarray(e).resize((t.shape[1], t.shape[0]), resample=Image.Resampling.BICUBIC))
    d = e.astype(np.float64) / 255.0 - t.astype(np.float64) / 255.0
    return float(np.mean(np.abs(d))), float(np.mean(d**2))


def target_iou(edited_mask, gt_mask) -> float:
    """IoU between the mask the system edited and the GT mask (the most direct measure of the
    reasoning, independent of the inpainter). An empty edited mask scores 0; the edited mask is
    resized nearest-neighbour to the GT mask's size when they differ."""
    g = binarize(gt_mask)
    return M.mask_iou(fit_mask(edited_mask, g.shape), g)
