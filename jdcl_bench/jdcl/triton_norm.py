"""GroupNorm (+ FiLM) (+ SiLU) for inference in one kernel that reads its input from memory once.

Compiled, each norm-activation step of the UNet is two kernels: a reduction that reads the whole
map for the per-channel statistics, then an element-wise kernel that reads it again and writes
the activated map. At DDIM's batch of 2000 the reductions were half of the element-wise GPU time
of an ε evaluation (18.8 of 37.6 ms on an H100, results/bench/ddim-batch-...T101829.json). GroupNorm's
statistics are per sample, so one program can own a (sample, group-aligned channel block) slice
of the map: it reads the slice once for the statistics and then applies the normalisation to it,
reading the slice a second time *from L2*. The grid is persistent (a few programs per SM, each
looping over slices), which bounds the slices in flight (programs x slice bytes) well below the
L2 cache, so the second read does not go to HBM; it also walks the slice backwards, so the most
recently loaded rows come first.

The arithmetic is :func:`unet._NormAct`'s forward without dropout: each channel's mean and
variance over H, W (here Welford's update per element of a row chunk, the rows then combined exactly:
no E[x^2] - E[x]^2 cancellation), the group's from its channels' (law of total
variance), then f = (x - mean) * rstd * w * (1 + scale) + b * (1 + scale) + shift in fp32, SiLU,
one rounding to the output dtype. A per-channel bias can be added to the input first: the
preceding convolution's, which then needs no pass of its own.

Inference only (no autograd), channels_last maps. On CPU the kernel runs only under Triton's
interpreter (``TRITON_INTERPRET=1``, the tests).
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - torch builds without triton
    triton = None

BLOCK_C = 64          # channel lanes per program (a slice uses the largest whole number of groups)
PROGRAMS_PER_SM = 16  # persistent grid: SMs x this programs, each looping over slices
NUM_WARPS = 8
CHUNK = 2048          # elements per step of a program (rows = CHUNK // BLOCK_C)
# a slice of at most RESIDENT_MAX elements is loaded once and kept in registers (one program
# per slice); larger ones stream through the persistent grid
RESIDENT = True
RESIDENT_MAX = 32768
# Map sizes the UNet sends here. The launch settings above and this range come from
# benchmarks/norm_act_infer.py on an H100 at batch 2000 (results/bench/norm-act-...T102626.json):
# at 16x16 the kernel took 0.37-0.69 ms where inductor's two kernels took 0.53-1.10 ms, at 8x8
# the two tie, and at 32x32 (a 128 KB slice per program: the second read misses L2) and 4x4 the
# compiled form is as fast or faster.
MIN_HW, MAX_HW = 64, 256


def available(x: torch.Tensor) -> bool:
    """Whether the kernel can run on ``x``'s device: CUDA with Triton, or Triton's interpreter."""
    if triton is None:
        return False
    return x.is_cuda or (x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def usable(owner: torch.nn.Module, norm: torch.nn.GroupNorm, x: torch.Tensor) -> bool:
    """Whether ``owner`` (a ResBlock or attention block, switch ``triton_norm``) runs ``norm`` on
    ``x`` here: no autograd, eval mode (no dropout), a channels_last map of a size in
    [MIN_HW, MAX_HW] pixels, a device the kernel runs on, whole groups per slice."""
    from .unet import is_channels_last

    return (owner.triton_norm and not owner.training and not torch.is_grad_enabled() and is_channels_last(x)
            and MIN_HW <= x.shape[2] * x.shape[3] <= MAX_HW and available(x)
            and _slice_channels(x.shape[1], norm.num_groups) > 0)


def _slice_channels(channels: int, groups: int) -> int:
    """Channels per program: the most whole groups that fit BLOCK_C lanes and divide the width."""
    cpg = channels // groups
    if cpg == 0 or cpg > BLOCK_C or channels % groups:
        return 0
    k = BLOCK_C // cpg
    while groups % k:
        k -= 1
    return k * cpg


if triton is not None:
    @triton.jit
    def _coefficients(mean, var, same, b, ch, lane_ok, Wt, Bn, Sc, Sh, C, eps, CPG: tl.constexpr,
                      AFFINE: tl.constexpr, FILM: tl.constexpr):
        """Per-channel statistics -> the group mean g and f = (x - g) * a + beta's a and beta."""
        g_mean = tl.sum(tl.where(same, mean[None, :], 0.0), 1) / CPG
        dev = var + (mean - g_mean) * (mean - g_mean)  # law of total variance over the group's channels
        g_var = tl.sum(tl.where(same, dev[None, :], 0.0), 1) / CPG
        rstd = 1.0 / tl.sqrt(g_var + eps)
        if AFFINE:
            gamma = tl.load(Wt + ch, mask=lane_ok, other=0.0).to(tl.float32)
            beta = tl.load(Bn + ch, mask=lane_ok, other=0.0).to(tl.float32)
        else:
            gamma = tl.full(mean.shape, 1.0, tl.float32)
            beta = tl.zeros(mean.shape, tl.float32)
        if FILM:
            s1 = 1 + tl.load(Sc + b * C + ch, mask=lane_ok, other=0.0).to(tl.float32)
            gamma = gamma * s1
            beta = beta * s1 + tl.load(Sh + b * C + ch, mask=lane_ok, other=0.0).to(tl.float32)
        return g_mean, rstd * gamma, beta

    @triton.jit
    def _act(v, g_mean, a, beta, SILU: tl.constexpr):
        f = (v - g_mean[None, :]) * a[None, :] + beta[None, :]
        if SILU:
            f = f / (1.0 + tl.exp(-f))
        return f

    @triton.jit
    def _norm_act_kernel(X, XB, Wt, Bn, Sc, Sh, Y, n_items, n_blocks, HW, C, CH, eps,
                         CPG: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
                         RESIDENT: tl.constexpr, HAS_XB: tl.constexpr, AFFINE: tl.constexpr,
                         FILM: tl.constexpr, SILU: tl.constexpr):
        lane = tl.arange(0, BLOCK_C)
        lane_ok = lane < CH
        rows = tl.arange(0, BLOCK_P)
        # lanes of one group: the group statistics are means over this mask's rows
        same = ((lane[:, None] // CPG) == (lane[None, :] // CPG)) & lane_ok[None, :]
        n_chunks = HW // BLOCK_P
        for item in range(tl.program_id(0), n_items, tl.num_programs(0)):
            b = item // n_blocks
            ch = (item % n_blocks) * CH + lane
            base = b.to(tl.int64) * HW * C
            if HAS_XB:
                xb = tl.load(XB + ch, mask=lane_ok, other=0.0).to(tl.float32)
            if RESIDENT:  # the whole slice in registers: one load, exact two-pass statistics
                off = base + rows[:, None] * C + ch[None, :]
                v = tl.load(X + off, mask=lane_ok[None, :], other=0.0).to(tl.float32)
                if HAS_XB:
                    v += xb[None, :]
                mean = tl.sum(v, 0) / HW
                d = v - mean[None, :]
                var = tl.sum(d * d, 0) / HW
                g_mean, a, beta = _coefficients(mean, var, same, b, ch, lane_ok, Wt, Bn, Sc, Sh, C, eps,
                                                CPG, AFFINE, FILM)
                tl.store(Y + off, _act(v, g_mean, a, beta, SILU).to(Y.dtype.element_ty), mask=lane_ok[None, :])
            else:
                # Welford per element of the [BLOCK_P, BLOCK_C] chunk (every element sees one value
                # per step, so the count is the step number), rows combined once at the end: no
                # cross-warp reduction inside the loop
                acc_mean = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
                acc_m2 = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
                for i in range(n_chunks):
                    off = base + (i * BLOCK_P + rows)[:, None] * C + ch[None, :]
                    v = tl.load(X + off, mask=lane_ok[None, :], other=0.0).to(tl.float32)
                    if HAS_XB:
                        v += xb[None, :]
                    delta = v - acc_mean
                    acc_mean += delta * (1.0 / (i + 1))
                    acc_m2 += delta * (v - acc_mean)
                mean = tl.sum(acc_mean, 0) / BLOCK_P
                dm = acc_mean - mean[None, :]
                var = (tl.sum(acc_m2, 0) + n_chunks * tl.sum(dm * dm, 0)) / HW
                g_mean, a, beta = _coefficients(mean, var, same, b, ch, lane_ok, Wt, Bn, Sc, Sh, C, eps,
                                                CPG, AFFINE, FILM)
                # second pass, last rows first: they are the most likely still in L2
                for j in range(n_chunks):
                    off = base + ((n_chunks - 1 - j) * BLOCK_P + rows)[:, None] * C + ch[None, :]
                    v = tl.load(X + off, mask=lane_ok[None, :], other=0.0,
                                eviction_policy="evict_first").to(tl.float32)
                    if HAS_XB:
                        v += xb[None, :]
                    tl.store(Y + off, _act(v, g_mean, a, beta, SILU).to(Y.dtype.element_ty), mask=lane_ok[None, :])


def _num_programs(x: torch.Tensor, items: int) -> int:
    if x.is_cuda:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        return max(1, min(items, sms * PROGRAMS_PER_SM))
    return min(items, 4)


def _launch(x, weight, bias, scale, shift, x_bias, groups: int, eps: float, silu: bool):
    B, C, H, W = x.shape
    ch = _slice_channels(C, groups)
    if not ch:
        raise ValueError(f"norm_act: {C} channels in {groups} groups: need whole groups of at most {BLOCK_C} channels")
    hw = H * W
    resident = RESIDENT and hw * BLOCK_C <= RESIDENT_MAX
    block_p = hw if resident else max(1, min(hw, CHUNK // BLOCK_C))
    while hw % block_p:
        block_p //= 2
    y = torch.empty_like(x, memory_format=torch.channels_last)
    n_blocks = C // ch
    items = B * n_blocks
    dummy = x.new_empty(0)
    _norm_act_kernel[(items if resident else _num_programs(x, items),)](
        x, x_bias if x_bias is not None else dummy, weight if weight is not None else dummy,
        bias if bias is not None else dummy, scale if scale is not None else dummy,
        shift if shift is not None else dummy, y, items, n_blocks, hw, C, ch, eps,
        CPG=C // groups, BLOCK_C=BLOCK_C, BLOCK_P=block_p, RESIDENT=resident, HAS_XB=x_bias is not None,
        AFFINE=weight is not None, FILM=scale is not None, SILU=silu, num_warps=NUM_WARPS)
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
