"""Layout-keeping forms of the UNet's steps for channels_last maps under torch.compile.

Each function here computes what a plain torch op computes (GroupNorm, nearest-2x-then-conv,
batch split, channel concatenation, autocast's cast), written so that a channels_last map and its
gradient stay channels_last and inductor can fuse the work: torch's own forms hand back NCHW
tensors or strided slices that the compiled step then copies (results/bench/README.md measures
each). On NCHW inputs (CPU, eager runs) the UNet takes torch's ops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-d tensor laid out channels_last and not also plain contiguous (as a 1x1 map would be):
    the inputs the layout-keeping forms below are for."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def group_norm_channels_last(x: torch.Tensor, groups: int, weight: torch.Tensor | None,
                             bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """GroupNorm from plain ops, statistics per channel first, then per group.

    Each channel's mean and variance over H, W is a reduction along the strided axis of a
    channels_last tensor, which inductor compiles into coalesced kernels; a group's mean is the
    mean of its channels' means and its variance the mean of their variances plus the variance of
    their means (law of total variance, exact; no E[x^2] - E[x]^2 cancellation). Reducing over a
    (B, G, C/G, H, W) view directly gives the same numbers but compiled 1.5x slower forward and
    2.4x slower forward + backward on an H100 (benchmarks/groupnorm_layouts.py,
    results/bench/groupnorm-NVIDIA_H100_80GB_HBM3-20261125T0418.json)."""
    xf = x.float()
    mean, rstd = _group_stats(xf, groups, eps)  # (B, C): one value per channel, broadcast over H, W
    y = (xf - mean[:, :, None, None]) * rstd[:, :, None, None]
    if weight is not None:
        y = y * weight.float()[:, None, None]
    if bias is not None:
        y = y + bias.float()[:, None, None]
    return y


def _group_stats(xf: torch.Tensor, groups: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm's mean and 1/std per (sample, group) of an fp32 map, expanded to (B, C):
    per-channel statistics first, then per group (as :func:`group_norm_channels_last`)."""
    var_c, mean_c = torch.var_mean(xf, dim=(2, 3), correction=0)
    mean = _per_group_mean(mean_c, groups)
    var = _per_group_mean(var_c + (mean_c - mean).pow(2), groups)  # law of total variance
    return mean, torch.rsqrt(var + eps)


def _per_group_mean(v: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, C) -> the mean over each group's channels, broadcast back to (B, C)."""
    B, C = v.shape
    return v.view(B, groups, C // groups).mean(-1, keepdim=True).expand(B, groups, C // groups).reshape(B, C)


def autocast_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype autocast would give the next matrix multiply (unchanged outside autocast).

    The cast autocast makes anyway, made where the value is produced: GroupNorm's output is fp32,
    and the attention's token reshape between it and the qkv matmul made torch.compile store the
    fp32 map and cast it in a kernel of its own (an fp32 write and read of every attention input:
    2000 x 256 x 16 x 16 x 4 bytes per block when sampling, results/bench/). Cast first, the norm
    kernel writes the bf16 tokens itself."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return x.to(torch.get_autocast_dtype(dev))
    return x


def _phase_taps(w: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2-tap kernels along ``dim`` (a 3-tap axis) of the even and odd output phases.

    Nearest 2x upsampling repeats input row i at output rows 2i and 2i+1, so the 3x3 kernel's taps
    at offsets -1, 0, +1 read, for output row 2i, input rows i-1, i, i (taps 0 | 1+2) and, for
    row 2i+1, input rows i, i, i+1 (taps 0+1 | 2)."""
    t0, t1, t2 = w.unbind(dim)
    return torch.stack([t0, t1 + t2], dim), torch.stack([t0 + t1, t2], dim)


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`` for a
    3x3 ``weight``, computed on the low-resolution ``x`` (same function; the summed taps round
    differently, by the input dtype's precision).

    One 2x2 convolution with padding 1 makes all four phases at once (4 * C_out channels, an
    (H+1) x (W+1) map): phase (a, b)'s output pixel (i, j) sits at (i + a, j + b) of its channel
    block. The interleave into (2H, 2W) is done on the (B, H, W, C) view, so a channels_last input
    gives a channels_last output without a transpose."""
    B, _, H, W = x.shape
    c_out = weight.shape[0]
    kernels = [kc for kr in _phase_taps(weight, 2) for kc in _phase_taps(kr, 3)]  # (a, b) = 00, 01, 10, 11
    full = F.conv2d(x, torch.cat(kernels), padding=1)  # (B, 4 * C_out, H + 1, W + 1)
    nhwc = full.permute(0, 2, 3, 1).unflatten(3, (2, 2, c_out))  # (B, H+1, W+1, a, b, C_out)
    rows = [nhwc[:, a:a + H, :, a] for a in (0, 1)]  # (B, H, W+1, b, C_out)
    phases = [torch.stack([r[:, :, b:b + W, b] for b in (0, 1)], dim=3) for r in rows]  # (B, H, W, 2, C_out)
    y = torch.stack(phases, dim=2).reshape(B, 2 * H, 2 * W, c_out).permute(0, 3, 1, 2)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1).to(y.dtype)
    return y.contiguous(memory_format=torch.channels_last if is_channels_last(x) else torch.contiguous_format)


class _SplitBatch(torch.autograd.Function):
    """``(m[:n], m[n:])``, whose backward joins the two gradients in ``m``'s memory layout.

    Autograd's own backward of a slice writes the gradient into a fresh NCHW zero tensor, so every
    encoder map of ``forward_joint`` would get an NCHW gradient in a channels_last model, and the
    compiled backward would copy it back to channels_last for cuDNN (whole-activation
    ``aten::copy_`` next to ``convolution_backward`` in the H100 profiles, results/bench/)."""

    @staticmethod
    def forward(ctx, m: torch.Tensor, n: int):
        ctx.channels_last = is_channels_last(m)
        return m[:n], m[n:]

    @staticmethod
    def backward(ctx, g_first: torch.Tensor, g_rest: torch.Tensor):
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        return torch.cat([g_first.contiguous(memory_format=fmt), g_rest.contiguous(memory_format=fmt)]), None


def split_batch(m: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples and the rest, as views; gradients come back in ``m``'s layout."""
    return _SplitBatch.apply(m, n)


class _CatChannels(torch.autograd.Function):
    """``torch.cat([a, b], dim=1)`` whose backward gives ``a`` and ``b`` gradients in their layout.

    Autograd's backward of a channel concatenation hands each input a channel slice of the
    gradient; for channels_last maps that slice is strided (every pixel's channels are split),
    and cuDNN's convolution_backward copies it before use (the decoder's share of the
    ``direct_copy_kernel`` launches in the compiled step's profile, results/bench/). Made contiguous
    here, the copy is a pointwise op the compiled backward can fuse into the kernel that produced
    the gradient."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor):
        ctx.split = a.shape[1]
        return torch.cat([a, b], dim=1)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        ga, gb = g[:, :ctx.split], g[:, ctx.split:]
        return ga.contiguous(memory_format=torch.channels_last), gb.contiguous(memory_format=torch.channels_last)


def cat_channels(a: torch.Tensor, b: torch.Tensor, layout_keeping: bool = True) -> torch.Tensor:
    """The decoder's ``torch.cat([a, b], dim=1)``; for two channels_last maps through
    :class:`_CatChannels` unless ``layout_keeping`` is off."""
    if layout_keeping and is_channels_last(a) and is_channels_last(b):
        return _CatChannels.apply(a, b)
    return torch.cat([a, b], dim=1)
