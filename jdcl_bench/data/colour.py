"""Colour operations shared by the methods' augmentations: one luma, one hue rotation, one
equalisation and one colour jitter, batched, with per-sample parameters.

Like :mod:`jdcl_bench.data.augment`, every op takes a float tensor (B, C, H, W) in [0, 1] on any
device; the random parameters are drawn by the caller from its CPU generator.

Written by hand because no dependency of the suite does it batched with a factor per sample:
torchvision's ``adjust_hue`` and ``equalize`` take one factor per call (a Python loop over the
batch), and kornia is not a dependency. The hue rotation is YIQ's, a stand-in for the HSV hue
shift of torchvision's ColorJitter that PAWS (NNCSL) and DGR's recipe use: the same on greys and
near it for small shifts; the difference is documented where each method cites its recipe.
"""
from __future__ import annotations

import math

import torch

__all__ = ["luma", "hue_rotate", "equalize", "color_jitter", "color_distort"]


def luma(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma (PIL's "L" conversion), (B, 1, H, W); one-channel images as they are."""
    if x.shape[1] == 1:
        return x
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_FROM_YIQ = torch.linalg.inv(_TO_YIQ)


def hue_rotate(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate each RGB image's chroma plane (YIQ's I, Q) by ``turns`` (B,) of a full turn; clipped."""
    yiq = torch.einsum("ij,bjhw->bihw", _TO_YIQ.to(x.device, x.dtype), x)
    a = (2 * math.pi * turns.reshape(-1)).view(-1, 1, 1)
    cos, sin = torch.cos(a), torch.sin(a)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
    return torch.einsum("ij,bjhw->bihw", _FROM_YIQ.to(x.device, x.dtype), yiq).clamp(0, 1)


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
        y = hue_rotate(y, hue_turns)
    return y


def color_distort(x: torch.Tensor, gen: torch.Generator, strength: float = 0.5, p_jitter: float = 0.8,
                  p_solarize: float = 0.2, p_equalize: float = 0.2) -> torch.Tensor:
    """PAWS' CIFAR colour pipeline (NNCSL's views): ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) with
    probability ``p_jitter``, then Solarize and Equalize, each with its own probability."""
    b = x.shape[0]
    u = torch.rand(b, 7, generator=gen).to(x.device)  # row i belongs to sample i
    s = 0.8 * strength
    view = (-1, 1, 1, 1)
    y = color_jitter(x, (1 + s * (2 * u[:, 1] - 1)).view(view), (1 + s * (2 * u[:, 2] - 1)).view(view),
                     (1 + s * (2 * u[:, 3] - 1)).view(view), 0.2 * strength * (2 * u[:, 4] - 1))
    x = torch.where((u[:, 0] < p_jitter).view(view), y, x)
    x = torch.where((u[:, 5] < p_solarize).view(view), torch.where(x >= 0.5, 1 - x, x), x)
    return torch.where((u[:, 6] < p_equalize).view(view), equalize(x), x)
