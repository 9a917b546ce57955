"""Batched image augmentations on tensors, the same code on CPU and GPU.

Every op takes a float tensor ``x`` of shape (B, C, H, W) with values in [0, 1], on any device,
and a CPU ``torch.Generator``. The few random numbers per sample are drawn on the CPU from that
generator as one (B, k) matrix and only then moved to ``x.device``. So:

* the global RNGs are never touched, and a run is reproducible from the generator's state;
* CPU and GPU get exactly the same random parameters for the same generator state;
* sample i gets row i of the matrix whatever else is in the batch: a prefix of a batch is
  augmented exactly as the start of the full batch, and no sample's result depends on another's.

The ops are vectorised over the batch (indexing, ``gather``, ``grid_sample``, masks), never a
Python loop over samples. ``rand_augment`` follows FixMatch's RandAugmentMC semantics.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..fastpath import to_device
from .colour import equalize, luma

__all__ = ["images_to_tensor", "to_unit", "to_float", "hflip", "random_crop", "random_resized_crop", "cutout",
           "rand_augment", "weak_view", "strong_view", "RAND_AUGMENT_OPS"]

# FixMatch's RandAugmentMC pool, in its order (the op index drawn per sample refers to this list).
RAND_AUGMENT_OPS = ("AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize",
                    "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY")
_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
# FixMatch's levels are v * max_v / 10 (+ bias) for an integer magnitude v in 1..m-1.
_PARAMETER_MAX = 10
# Cutout paints mid-grey like FixMatch's CutoutAbs (127, 127, 127).
CUTOUT_FILL = 0.5
# Geometric ops fill uncovered pixels with black and sample nearest, as PIL's rotate/transform
# do by default in FixMatch's RandAugmentMC.
GEOMETRIC_FILL = 0.0


# ---- conversions ------------------------------------------------------------------------------

def images_to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W, C) as a numpy array -> contiguous uint8 tensor (N, C, H, W)."""
    if x.ndim != 4:
        raise ValueError(f"expected images (N, H, W, C), got shape {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 tensor (any layout, any device) -> float32 in [0, 1]."""
    if x.dtype != torch.uint8:
        raise ValueError(f"to_unit expects uint8 images, got {x.dtype}")
    return x.float().div_(255.0)  # in place on the fresh float copy, never on the caller's tensor


def to_float(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 (N, C, H, W) in [0, 1]. numpy input is taken as NHWC (the dataset
    layout), tensor input as NCHW (the model layout)."""
    if isinstance(x, np.ndarray):
        x = images_to_tensor(x)
    return to_unit(x)


# ---- random parameters ------------------------------------------------------------------------

def _uniforms(x: torch.Tensor, gen: torch.Generator, k: int) -> torch.Tensor:
    """(B, k) float64 uniforms in [0, 1) drawn on the CPU from ``gen``; row i belongs to sample i."""
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"expected a float tensor (B, C, H, W), got {tuple(x.shape)} {x.dtype}")
    if not isinstance(gen, torch.Generator) or gen.device.type != "cpu":
        raise ValueError("pass a CPU torch.Generator: parameters are drawn on the CPU so that CPU and GPU "
                         "runs agree")
    # torch.rand fills element by element, so a (B, k) draw hands sample i the same k numbers
    # for any B >= i + 1.
    return torch.rand(x.shape[0], k, generator=gen, dtype=torch.float64)


def _randint(u: torch.Tensor, n: int) -> torch.Tensor:
    """Uniform integers 0..n-1 from uniforms in [0, 1)."""
    return (u * n).long().clamp_(max=n - 1)


def _on(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return to_device(t, x.device, x.dtype)


# ---- flips and crops --------------------------------------------------------------------------

def hflip(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    return _hflip(x, _uniforms(x, gen, 1)[:, 0], p)


def _hflip(x, u, p):
    flip = to_device(u < p, x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


def random_crop(x: torch.Tensor, gen: torch.Generator, padding: int = 4, mode: str = "reflect") -> torch.Tensor:
    """Pad by ``padding`` on each side (``mode`` as in F.pad; "constant" pads with 0), then crop
    back to H x W at a random integer offset per sample."""
    return _random_crop(x, _uniforms(x, gen, 2), padding, mode)


def _random_crop(x, u, padding, mode):
    b, c, h, w = x.shape
    if padding == 0:
        return x.clone()
    if mode == "reflect" and padding >= min(h, w):
        raise ValueError(f"reflect padding {padding} needs images larger than that, got {h}x{w}")
    padded = F.pad(x, (padding, padding, padding, padding), mode=mode)
    hp, wp = h + 2 * padding, w + 2 * padding
    oy = to_device(_randint(u[:, 0], 2 * padding + 1), x.device)
    ox = to_device(_randint(u[:, 1], 2 * padding + 1), x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = ox[:, None] + torch.arange(w, device=x.device)  # (B, W)
    # flat index of every output pixel inside its padded image, shared by the channels
    idx = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, hp * wp).gather(2, idx).view(b, c, h, w)


def random_resized_crop(x: torch.Tensor, gen: torch.Generator, scale: tuple[float, float] = (0.85, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Crop a box of random area fraction (``scale``) and aspect ratio (``ratio``, log-uniform) at a
    random place, resized back to H x W with bilinear sampling."""
    return _random_resized_crop(x, _uniforms(x, gen, 4), scale, ratio)


def _random_resized_crop(x, u, scale, ratio):
    b, _, h, w = x.shape
    area = scale[0] + u[:, 0] * (scale[1] - scale[0])
    log_r = math.log(ratio[0]) + u[:, 1] * (math.log(ratio[1]) - math.log(ratio[0]))
    r = torch.exp(log_r)  # width / height of the box in pixels
    # box size as a fraction of the image side; boxes that would not fit are clipped to the image
    bw = torch.sqrt(area * r * h / w).clamp(max=1.0)
    bh = torch.sqrt(area * w / (r * h)).clamp(max=1.0)
    cx = (2 * u[:, 2] - 1) * (1 - bw)  # box centre in normalised coordinates, box inside the image
    cy = (2 * u[:, 3] - 1) * (1 - bh)
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = bw, cx
    theta[:, 1, 1], theta[:, 1, 2] = bh, cy
    grid = F.affine_grid(_on(theta, x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def cutout(x: torch.Tensor, gen: torch.Generator, size: int = 16, fill: float = CUTOUT_FILL) -> torch.Tensor:
    """Paint a ``size`` x ``size`` square, centred on a uniformly drawn pixel and clipped at the
    borders, with ``fill`` (FixMatch's CutoutAbs grey). Pass a smaller ``size`` for small images."""
    return _cutout(x, _uniforms(x, gen, 2), size, fill)


def _cutout(x, u, size, fill):
    _, _, h, w = x.shape
    if size <= 0:
        return x.clone()
    y0 = to_device(_randint(u[:, 0], h) - size // 2, x.device)
    x0 = to_device(_randint(u[:, 1], w) - size // 2, x.device)
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= y0[:, None]) & (rows < y0[:, None] + size)  # (B, H)
    in_cols = (cols >= x0[:, None]) & (cols < x0[:, None] + size)  # (B, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]    # (B, 1, H, W)
    return x.masked_fill(mask, fill)


# ---- RandAugment (FixMatch's RandAugmentMC) ----------------------------------------------------

def rand_augment(x: torch.Tensor, gen: torch.Generator, n: int = 2, m: int = 10) -> torch.Tensor:
    """For each sample, ``n`` ops drawn with replacement from ``RAND_AUGMENT_OPS``, each applied
    with probability 0.5 at a magnitude drawn uniformly from 1..m-1 (FixMatch's RandAugmentMC,
    without its final cutout: ``strong_view`` adds that)."""
    return _rand_augment(x, _uniforms(x, gen, 4 * n), n, m)


def _rand_augment(x, u, n, m):
    if not 2 <= m <= _PARAMETER_MAX:
        raise ValueError(f"m must be in 2..{_PARAMETER_MAX} (magnitudes are drawn from 1..m-1), got {m}")
    for step in range(n):
        v = u[:, 4 * step: 4 * step + 4]
        op = _randint(v[:, 0], len(RAND_AUGMENT_OPS))
        level = 1 + _randint(v[:, 1], m - 1)  # 1..m-1, like np.random.randint(1, m)
        apply = v[:, 2] < 0.5
        sign = torch.where(v[:, 3] < 0.5, -1.0, 1.0).double()  # FixMatch flips geometric ops half the time
        x = _apply_ops(x, op, level.double(), apply, sign)
    return x


def _apply_ops(x, op, level, apply, sign):
    """One RandAugment step: every op is computed for the whole batch (they are cheap) and each
    sample keeps the result of its own op; geometric ops share one affine grid_sample."""
    b, c, h, w = x.shape
    dev = x.device
    # Each sample's op as a one-hot row and its three magnitudes, made on the CPU and copied in one
    # transfer each, not one per op and per magnitude: those were 40 of the 60 host-to-device copies
    # a step of JDCL's local stage (two RandAugment steps; results/bench/README.md, loop bench)
    onehot = to_device(apply[:, None] & (op[:, None] == torch.arange(len(RAND_AUGMENT_OPS))), dev)
    chosen = {name: onehot[:, i].view(b, 1, 1, 1) for i, name in enumerate(RAND_AUGMENT_OPS)}
    magnitudes = _on(torch.stack([
        level * 0.9 / _PARAMETER_MAX + 0.05,              # Brightness, Color, Contrast, Sharpness
        (level * 4 / _PARAMETER_MAX).floor() + 4,          # Posterize: 4..7 bits kept
        256 - (level * 256 / _PARAMETER_MAX).floor(),      # Solarize: the threshold
    ], 1), x)
    fac, bits, threshold = (magnitudes[:, i].view(b, 1, 1, 1) for i in range(3))

    out = x
    grey = luma(x)
    out = torch.where(chosen["AutoContrast"], _autocontrast(x), out)
    out = torch.where(chosen["Brightness"], _blend(torch.zeros_like(x), x, fac), out)
    if c == 3:  # Color is the identity on one-channel images
        out = torch.where(chosen["Color"], _blend(grey.expand_as(x), x, fac), out)
    out = torch.where(chosen["Contrast"], _blend(grey.mean(dim=(1, 2, 3), keepdim=True).expand_as(x), x, fac),
                      out)
    out = torch.where(chosen["Equalize"], equalize(x), out)
    out = torch.where(chosen["Posterize"], _posterize(x, bits), out)
    out = torch.where(chosen["Sharpness"], _blend(_smooth(x), x, fac), out)
    out = torch.where(chosen["Solarize"], _solarize(x, threshold), out)

    # Geometric ops: one pixel-space matrix per sample (identity where none applies).
    geo = torch.zeros(b, dtype=torch.bool)
    mats = torch.eye(3, dtype=torch.float64).repeat(b, 1, 1)
    for name in _GEOMETRIC:
        sel = apply & (op == RAND_AUGMENT_OPS.index(name))
        geo |= sel
        mats[sel] = _geometric_matrix(name, level[sel], sign[sel], h, w)
    if bool(geo.any()):
        warped = _affine(x, mats, fill=GEOMETRIC_FILL)
        out = torch.where(to_device(geo, dev).view(b, 1, 1, 1), warped, out)
    return out


def _geometric_matrix(name, level, sign, h, w):
    """Output -> input pixel maps (3x3) in continuous pixel coordinates (pixel i's centre at i+0.5),
    as PIL's AFFINE transform data for FixMatch's ops."""
    k = len(level)
    m = torch.eye(3, dtype=torch.float64).repeat(k, 1, 1)
    if name == "Rotate":
        # PIL's img.rotate(deg): counter-clockwise about the image centre; degrees = int(v * 30 / 10)
        deg = (level * 30 / _PARAMETER_MAX).floor() * sign
        a = -torch.deg2rad(deg)
        cos, sin = torch.cos(a), torch.sin(a)
        cx, cy = w / 2, h / 2
        m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = cos, sin, cx - cos * cx - sin * cy
        m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = -sin, cos, cy + sin * cx - cos * cy
    elif name == "ShearX":
        m[:, 0, 1] = level * 0.3 / _PARAMETER_MAX * sign
    elif name == "ShearY":
        m[:, 1, 0] = level * 0.3 / _PARAMETER_MAX * sign
    elif name == "TranslateX":
        m[:, 0, 2] = torch.trunc(level * 0.3 / _PARAMETER_MAX * sign * w)  # int(v * width)
    elif name == "TranslateY":
        m[:, 1, 2] = torch.trunc(level * 0.3 / _PARAMETER_MAX * sign * h)
    return m


def _affine(x, mats, fill):
    """Warp each image by its output->input pixel map ``mats`` (B, 3, 3), nearest sampling,
    uncovered pixels set to ``fill``."""
    b, _, h, w = x.shape
    # pixel coordinates -> grid_sample's normalised coordinates (align_corners=False)
    s = torch.tensor([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1]], dtype=torch.float64)
    s_inv = torch.tensor([[w / 2, 0, w / 2], [0, h / 2, h / 2], [0, 0, 1]], dtype=torch.float64)
    theta = (s @ mats @ s_inv)[:, :2]
    grid = F.affine_grid(_on(theta, x), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    if fill != 0:
        inside = F.grid_sample(torch.ones_like(x[:, :1]), grid, mode="nearest", padding_mode="zeros",
                               align_corners=False)
        out = out + (1 - inside) * fill
    return out


def _blend(degenerate, x, factor):
    """PIL ImageEnhance: degenerate + factor * (x - degenerate), clipped."""
    return (degenerate + factor * (x - degenerate)).clamp(0, 1)


def _autocontrast(x):
    """Stretch each channel of each image to the full range (PIL autocontrast, no cutoff)."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    stretched = (x - lo) / span.clamp(min=1e-8)
    return torch.where(span > 1e-8, stretched, x)  # flat channels stay as they are


def _posterize(x, bits):
    """Keep the top ``bits`` bits of each 8-bit value (PIL ImageOps.posterize)."""
    q = (x * 255).round().long()
    mask = (255 - (2 ** (8 - bits.long()) - 1))  # e.g. 4 bits -> 0b11110000
    return (q & mask).to(x.dtype) / 255


def _solarize(x, threshold):
    """Invert values at or above ``threshold`` (on the 0..255 scale), as PIL ImageOps.solarize."""
    q = (x * 255).round()
    return torch.where(q >= threshold, 1 - x, x)


def _smooth(x):
    """PIL's SMOOTH filter (3x3, centre weight 5, total 13) inside the image; borders unchanged,
    which is the degenerate image ImageEnhance.Sharpness blends with."""
    c = x.shape[1]
    # built on the CPU and copied as every parameter here is: ``k[1, 1] = 5`` on a CUDA tensor copies a
    # CPU scalar from pageable memory, which waits for the device (pytorch/pytorch PRs 186482 and 188267
    # describe it; the device machines' torch 2.11 has it). Called in both RandAugment ops of a
    # step, it is the likely source of the two host waits a step in JDCL's loops (results/bench/README.md,
    # H200 loop profile; the next profile's sync_sites will say)
    k = _on(torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype) / 13, x).expand(c, 1, 3, 3)
    inner = F.conv2d(x, k, groups=c)
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = inner
    return out


# ---- the two views used by semi-supervised methods ---------------------------------------------

def weak_view(x: torch.Tensor, gen: torch.Generator, flip_p: float = 0.5) -> torch.Tensor:
    """Flip (probability ``flip_p``) + reflect-padded random crop; padding H // 8 (4 pixels at 32x32)."""
    u = _uniforms(x, gen, 3)
    return _random_crop(_hflip(x, u[:, 0], flip_p), u[:, 1:3], x.shape[2] // 8, "reflect")


def strong_view(x: torch.Tensor, gen: torch.Generator, flip_p: float = 0.5) -> torch.Tensor:
    """Weak view, then RandAugment(2, 10) and cutout of H // 2 (FixMatch's strong augmentation)."""
    n, m = 2, 10
    # one draw for everything, so that the prefix property holds for the whole view
    u = _uniforms(x, gen, 3 + 4 * n + 2)
    h = x.shape[2]
    x = _random_crop(_hflip(x, u[:, 0], flip_p), u[:, 1:3], h // 8, "reflect")
    x = _rand_augment(x, u[:, 3:3 + 4 * n], n, m)
    return _cutout(x, u[:, 3 + 4 * n:], h // 2, CUTOUT_FILL)
