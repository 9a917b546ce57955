"""Colour operations shared by the methods' augmentations: one luma, one hue rotation, one
equalisation and one colour jitter, batched, with per-sample parameters.

Like :mod:`jdcl_bench.data.augment`, every op takes a float tensor (B, C, H, W) in [0, 1] on any
device; the random parameters are drawn by the caller from its CPU generator.

Written by hand because no dependency of the suite does it batched with a factor per sample:
torchvision's ``adjust_hue`` and ``equalize`` take one factor per call (a Python loop over the
batch), and kornia (whose ``adjust_hue`` takes one per sample) is not a dependency. The hue shift
is torchvision's: through HSV, checked against ``torchvision.transforms.functional.adjust_hue``
image by image (tests/test_data.py), as in the ColorJitter that PAWS (NNCSL) and GUIDE use.
"""
from __future__ import annotations

import torch

from ..fastpath import to_device

__all__ = ["luma", "hue_shift", "equalize", "color_jitter", "color_distort"]


def luma(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (PIL's "L" conversion), (B, 1, H, W); one-channel images as they are."""
    if x.shape[1] == 1:
        return x
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def hue_shift(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Shift each RGB image's HSV hue by ``turns`` (B,) of a full turn: torchvision's ``adjust_hue``
    with ``hue_factor = turns[i]`` for image i (saturation and value kept)."""
    v, arg = x.max(dim=1)  # arg: the first channel holding the maximum (red, then green, then blue)
    c = v - x.min(dim=1).values
    s = torch.where(v > 0, c / v.clamp(min=1e-12), torch.zeros_like(v))
    r, g, b = x.unbind(1)
    cc = c.clamp(min=1e-12)
    sector = torch.stack([(g - b) / cc, 2 + (b - r) / cc, 4 + (r - g) / cc], 1).gather(1, arg[:, None])[:, 0]
    h = torch.where(c > 0, sector / 6, torch.zeros_like(v))
    h = torch.remainder(h + turns.reshape(-1, 1, 1).to(x.dtype), 1.0)
    # back to RGB: channel n is v - v*s*clamp(min(k, 4 - k), 0, 1) with k = (n + 6h) mod 6, n = 5, 3, 1
    # made on the CPU and copied without waiting: torch.tensor(..., device="cuda") copies from pageable
    # memory and waits for the device, once per call (NNCSL's colour views, GUIDE's jitter: every step)
    n = to_device(torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype), x.device).view(1, 3, 1, 1)
    k = torch.remainder(n + 6 * h[:, None], 6.0)
    return (v[:, None] * (1 - s[:, None] * torch.minimum(k, 4 - k).clamp(0, 1))).clamp(0, 1)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel on 256 levels, as PIL's ``ImageOps.equalize``
    (the one FixMatch's RandAugment and PAWS' colour distortion call), lut included."""
    b, c, h, w = x.shape
    q = (x * 255).round().long().clamp_(0, 255).reshape(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, q, torch.ones_like(q))
    # PIL: step = (number of pixels - count of the last non-empty level) // 255
    last = 255 - torch.argmax(hist.flip(1).gt(0).long(), dim=1, keepdim=True)
    step = (h * w - hist.gather(1, last)) // 255  # (B*C, 1)
    cum_before = hist.cumsum(1) - hist
    lut = ((step // 2 + cum_before) // step.clamp(min=1)).clamp_(0, 255)
    # step 0 (a near-constant channel) leaves the channel unchanged, as in PIL
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device).expand_as(lut))
    return (lut.gather(1, q).to(x.dtype) / 255).view(b, c, h, w)


def color_jitter(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor,
                 hue_turns: torch.Tensor) -> torch.Tensor:
    """ColorJitter's four steps in its fixed order with per-sample factors ((B, 1, 1, 1) each,
    ``hue_turns`` (B,)): brightness, contrast about the mean luma, saturation about each pixel's
    luma, hue; each step clipped to [0, 1]. One-channel images skip saturation and hue (the
    identity on greys)."""
    y = (x * brightness).clamp(0, 1)
    m = luma(y).mean(dim=(1, 2, 3), keepdim=True)
    y = ((y - m) * contrast + m).clamp(0, 1)
    if x.shape[1] == 3:
        g = luma(y)
        y = ((y - g) * saturation + g).clamp(0, 1)
        y = hue_shift(y, hue_turns)
    return y


def color_distort(x: torch.Tensor, gen: torch.Generator, strength: float = 0.5, p_jitter: float = 0.8,
                  p_solarize: float = 0.2, p_equalize: float = 0.2) -> torch.Tensor:
    """PAWS' CIFAR colour pipeline (NNCSL's views): ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) with
    probability ``p_jitter``, then Solarize and Equalize, each with its own probability."""
    b = x.shape[0]
    u = to_device(torch.rand(b, 7, generator=gen), x.device)  # row i belongs to sample i
    s = 0.8 * strength
    view = (-1, 1, 1, 1)
    y = color_jitter(x, (1 + s * (2 * u[:, 1] - 1)).view(view), (1 + s * (2 * u[:, 2] - 1)).view(view),
                     (1 + s * (2 * u[:, 3] - 1)).view(view), 0.2 * strength * (2 * u[:, 4] - 1))
    x = torch.where((u[:, 0] < p_jitter).view(view), y, x)
    x = torch.where((u[:, 5] < p_solarize).view(view), torch.where(x >= 0.5, 1 - x, x), x)
    return torch.where((u[:, 6] < p_equalize).view(view), equalize(x), x)
