"""GroupNorm (+ FiLM) (+ SiLU) for inference in one kernel that reads its input from memory once.

Compiled, each norm-activation step of the UNet is two kernels: a reduction that reads the whole
map for the per-channel statistics, then an element-wise kernel that reads it again and writes
the activated map. At DDIM's batch of 2000 the reductions were half of the element-wise GPU time
of an ε evaluation (18.8 of 37.6 ms on an H100, results/bench/ddim-batch-...T101829.json).
GroupNorm's statistics are per sample, so one program holds a (sample, whole groups of channels)
slice of a map in registers: one read, the statistics, the normalisation, one write.

The arithmetic is :class:`jdcl_bench.kernels.norm_act._NormAct`'s forward without dropout: each channel's mean and
variance over H, W (two passes over the registers: no E[x^2] - E[x]^2 cancellation), the group's
from its channels' (law of total variance), then f = (x - mean) * rstd * w * (1 + scale) +
b * (1 + scale) + shift in fp32, SiLU, one rounding to the output dtype. A per-channel bias can be
added to the input first: the preceding convolution's, which then needs no pass of its own.

The kernel is opaque to torch.compile, so an input the compiler would otherwise recompute inside
its own norm kernels (a residual sum) gets written out for it; the UNet sends only inputs that
are in memory anyway (a convolution's output, a decoder concatenation). Inference only (no
autograd), channels_last maps. On CPU the kernel runs only under Triton's interpreter
(``TRITON_INTERPRET=1``, the tests).
"""
from __future__ import annotations

import os

import torch

from .layout import is_channels_last

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - torch builds without triton
    triton = None

# (lanes, warps) per map size in pixels: each program holds a (sample, `lanes` channels) slice,
# whole groups of channels, in registers. Measured with benchmarks/norm_act_infer.py on H100s at
# batch 2000 against inductor's two kernels (statistics, then normalise): 8x8 and 16x16 with
# 8192-value slices and 4 warps, 0.16-0.58 ms against 0.20-1.03 (results/bench/norm-act-...T104056,
# ...T104759); 32x32 with 16-channel slices (32 bytes of each pixel, one memory sector) and 8
# warps, 0.572 against 0.793 ms at 128 channels (...T124207; 8- and 32-channel slices, 4 or 16
# warps, a bf16-held slice and register caps were slower there). 4x4 maps: the compiled form was
# as fast. Other sizes do not occur in the UNet.
LAUNCH = {64: (64, 4), 256: (32, 4), 1024: (16, 8)}


def available(x: torch.Tensor) -> bool:
    """Whether the kernel can run on ``x``'s device: CUDA with Triton, or Triton's interpreter."""
    if triton is None:
        return False
    return x.is_cuda or (x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def usable(owner: torch.nn.Module, norm: torch.nn.GroupNorm, x: torch.Tensor) -> bool:
    """Whether ``owner`` (a ResBlock, switch ``triton_norm``) runs ``norm`` here on maps the size of
    ``x``: no autograd, eval mode (no dropout), a channels_last map of a size in LAUNCH, a device
    the kernel runs on, whole groups of ``norm`` per slice."""

    return (owner.fast.triton_norm and not owner.training and not torch.is_grad_enabled() and is_channels_last(x)
            and available(x) and _slice_channels(norm.num_channels, norm.num_groups, x.shape[2] * x.shape[3]) > 0)


def _slice_channels(channels: int, groups: int, hw: int) -> int:
    """Channels per program for maps of ``hw`` pixels (whole groups, dividing the width), or 0
    where the kernel does not take them: a size not in LAUNCH, or a width that does not split so
    (12-channel groups, 384 = 32 x 12, would leave lanes idle, and the compiled form was faster
    there: results/bench/norm-act-...T104759.json)."""
    if hw not in LAUNCH:
        return 0
    lanes = LAUNCH[hw][0]
    if channels % groups or lanes % (channels // groups) or channels % lanes:
        return 0
    return lanes


if triton is not None:
    @triton.jit
    def _norm_act_kernel(X, XB, Wt, Bn, Sc, Sh, Y, n_blocks, C, eps,
                         HW: tl.constexpr, CPG: tl.constexpr, BLOCK_C: tl.constexpr,
                         HAS_XB: tl.constexpr, AFFINE: tl.constexpr, FILM: tl.constexpr, SILU: tl.constexpr):
        item = tl.program_id(0)
        b = item // n_blocks
        lane = tl.arange(0, BLOCK_C)
        ch = (item % n_blocks) * BLOCK_C + lane
        off = b.to(tl.int64) * HW * C + tl.arange(0, HW)[:, None] * C + ch[None, :]
        v = tl.load(X + off).to(tl.float32)
        if HAS_XB:
            v += tl.load(XB + ch).to(tl.float32)[None, :]
        # per-channel mean and variance, two passes over the registers (no E[x^2] - E[x]^2)
        mean = tl.sum(v, 0) / HW
        d = v - mean[None, :]
        var = tl.sum(d * d, 0) / HW
        # the group's from its channels' (law of total variance); "same" marks one group's lanes
        same = (lane[:, None] // CPG) == (lane[None, :] // CPG)
        g_mean = tl.sum(tl.where(same, mean[None, :], 0.0), 1) / CPG
        dev = var + (mean - g_mean) * (mean - g_mean)
        rstd = 1.0 / tl.sqrt(tl.sum(tl.where(same, dev[None, :], 0.0), 1) / CPG + eps)
        if AFFINE:
            gamma = tl.load(Wt + ch).to(tl.float32)
            beta = tl.load(Bn + ch).to(tl.float32)
        else:
            gamma = tl.full((BLOCK_C,), 1.0, tl.float32)
            beta = tl.zeros((BLOCK_C,), tl.float32)
        if FILM:
            s1 = 1 + tl.load(Sc + b * C + ch).to(tl.float32)
            gamma = gamma * s1
            beta = beta * s1 + tl.load(Sh + b * C + ch).to(tl.float32)
        f = (v - g_mean[None, :]) * (rstd * gamma)[None, :] + beta[None, :]
        if SILU:
            f = f / (1.0 + tl.exp(-f))
        tl.store(Y + off, f.to(Y.dtype.element_ty))


def _launch(x, weight, bias, scale, shift, x_bias, groups: int, eps: float, silu: bool):
    B, C, H, W = x.shape
    lanes = _slice_channels(C, groups, H * W)
    if not lanes:
        sizes = ", ".join(f"{hw} ({n} channels)" for hw, (n, _) in sorted(LAUNCH.items()))
        raise ValueError(f"norm_act: a {H}x{W} map of {C} channels in {groups} groups is not supported: the "
                         f"kernel takes maps of these pixel counts, in slices of whole groups this wide: {sizes}")
    y = torch.empty_like(x, memory_format=torch.channels_last)
    n_blocks = C // lanes
    dummy = x.new_empty(0)
    _norm_act_kernel[(B * n_blocks,)](
        x, x_bias if x_bias is not None else dummy, weight if weight is not None else dummy,
        bias if bias is not None else dummy, scale if scale is not None else dummy,
        shift if shift is not None else dummy, y, n_blocks, C, eps,
        HW=H * W, CPG=C // groups, BLOCK_C=lanes, HAS_XB=x_bias is not None, AFFINE=weight is not None,
        FILM=scale is not None, SILU=silu, num_warps=LAUNCH[H * W][1])
    return y


# the kernel indexes every map as NHWC: the compiler must hand them over in the strides they were
# traced with (channels_last), not a layout of its choosing
_STRIDES = tuple(t for t in (getattr(torch.Tag, "needs_exact_strides", None),
                             getattr(torch.Tag, "needs_fixed_stride_order", None)) if t is not None)[:1]


@torch.library.custom_op("jdcl_bench::norm_act_infer", mutates_args=(), tags=_STRIDES)
def _norm_act_op(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                 scale: torch.Tensor | None, shift: torch.Tensor | None, x_bias: torch.Tensor | None,
                 groups: int, eps: float, silu: bool) -> torch.Tensor:
    return _launch(x, weight, bias, scale, shift, x_bias, groups, eps, silu)


@_norm_act_op.register_fake
def _(x, weight, bias, scale, shift, x_bias, groups, eps, silu):
    return torch.empty_like(x, memory_format=torch.channels_last)


def norm_act(norm: torch.nn.GroupNorm, x: torch.Tensor, scale: torch.Tensor | None = None,
             shift: torch.Tensor | None = None, *, x_bias: torch.Tensor | None = None,
             silu: bool = True) -> torch.Tensor:
    """``silu(norm(x + x_bias) * (1 + scale) + shift)`` (SiLU only with ``silu``) for a
    channels_last ``x``, in ``x``'s dtype and layout (scale, shift: (B, C) or None; x_bias: (C,))."""
    args = [t.contiguous() if t is not None else None for t in (norm.weight, norm.bias, scale, shift, x_bias)]
    return _norm_act_op(x, *args, norm.num_groups, norm.eps, silu)
