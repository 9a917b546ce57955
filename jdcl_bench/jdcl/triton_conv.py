"""A 3x3 convolution whose epilogue does the element-wise work that follows it (inference).

In a UNet ResBlock each 3x3 convolution's output is read again right away: after the first, for
the second GroupNorm's statistics; after the second, to add the residual (and, in the compiled
model, the next norm's statistics with it). Here the convolution does that work on its output
tile while it is still in registers:

- bias, and optionally the residual, are added before the single store;
- optionally each tile's per-channel mean and sum of squared deviations (of the stored bf16
  values) are written, a (B, H*W / BLOCK_M, C_out) array, from which :func:`channel_stats`
  gives every channel's mean and variance exactly (Chan et al.'s pairwise combination: no
  E[x^2] - E[x]^2 cancellation).

That removes a read of the output for the statistics and, for the residual, a read and a write
of a whole map per block. Implicit GEMM on channels_last (NHWC) maps: M = output pixels,
N = output channels, K = 9 taps x input channels; a tile of BLOCK_M pixels lies within one
sample (H * W must be a multiple of BLOCK_M). Forward only: DDIM sampling runs under
``torch.no_grad``; training keeps cuDNN and :func:`unet.norm_act`'s written-out backward.

Tried first, and measured slower (results/bench/fused-conv-...20261125T083624.json): applying
GroupNorm + FiLM + SiLU to the *input* tile as it is loaded. Every input value is loaded once
per tap, so the activation was computed nine times, and the convolution took 1.7-3x as long as
the norm pass plus cuDNN's convolution it replaced.

On CPU the kernel runs only under Triton's interpreter (``TRITON_INTERPRET=1``, the tests), with
an fp32 matrix multiply: the interpreter's bf16 dot is wrong.
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - torch builds without triton
    triton = None

BLOCK_M, BLOCK_K = 128, 64


def available(x: torch.Tensor) -> bool:
    """Whether :func:`conv3x3` can run on ``x``'s device: CUDA with Triton, or the interpreter."""
    if triton is None:
        return False
    return x.is_cuda or (x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def supports(batch: int, c_in: int, height: int, width: int, c_out: int) -> bool:
    """Shapes the kernel takes: whole pixel tiles per sample, whole K chunks, one N tile, and
    element offsets that fit the kernel's 32-bit index arithmetic."""
    return ((height * width) % BLOCK_M == 0 and c_in % BLOCK_K == 0 and c_out % 64 == 0 and c_out <= 256
            and batch * height * width * max(c_in, c_out) < 2**31)


if triton is not None:
    @triton.jit
    def _conv3x3_kernel(X, Wt, Bias, R, Y, TileMean, TileM2, H, W, CIN, COUT: tl.constexpr,
                        HAS_RES: tl.constexpr, STATS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr):
        num_n: tl.constexpr = COUT // BLOCK_N
        pid = tl.program_id(0)
        pid_m, pid_n = pid // num_n, pid % num_n  # the N tiles of one pixel tile run together (L2 reuse)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        hw = H * W
        oh = (offs_m % hw) // W
        ow = offs_m % W
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        # one loop over K = 9 taps x C_in, not a loop per tap: a long loop the compiler pipelines
        # (loads for later steps in flight during the matrix multiply), where nine two-step loops
        # each paid the pipeline's fill and drain
        for kk in range(0, 9 * CIN, BLOCK_K):
            tap = kk // CIN
            k = kk - tap * CIN
            dh = tap // 3 - 1
            dw = tap % 3 - 1
            ih = oh + dh
            iw = ow + dw
            valid = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)  # zero padding
            src = (offs_m + dh * W + dw) * CIN + k  # the neighbour's row of x, this K chunk
            x = tl.load(X + src[:, None] + offs_k[None, :], mask=valid[:, None], other=0.0)
            w = tl.load(Wt + (kk + offs_k)[:, None] * COUT + offs_n[None, :])
            acc = tl.dot(x.to(Wt.dtype.element_ty), w, acc)  # bf16 on the GPU; fp32 in the interpreter
        acc += tl.load(Bias + offs_n)[None, :]
        out_ptr = offs_m[:, None] * COUT + offs_n[None, :]
        if HAS_RES:
            acc += tl.load(R + out_ptr).to(tl.float32)
        y = acc.to(Y.dtype.element_ty)
        tl.store(Y + out_ptr, y)
        if STATS:  # of the values as stored, which is what the next norm reads
            yf = y.to(tl.float32)
            mean = tl.sum(yf, axis=0) / BLOCK_M
            d = yf - mean[None, :]
            tl.store(TileMean + pid_m * COUT + offs_n, mean)
            tl.store(TileM2 + pid_m * COUT + offs_n, tl.sum(d * d, axis=0))


def pack_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> (9 * C_in, C_out), row tap * C_in + c: the K x N operand."""
    c_out, c_in = weight.shape[:2]
    return weight.permute(2, 3, 1, 0).reshape(9 * c_in, c_out).to(dtype).contiguous()


def _launch(x, weight, bias, residual, stats: bool):
    B, c_in, H, W = x.shape
    c_out = weight.shape[0]
    if not supports(B, c_in, H, W, c_out):
        raise ValueError(f"conv3x3: shape {tuple(x.shape)} -> {c_out} channels not supported "
                         f"(H*W a multiple of {BLOCK_M}, C_in of {BLOCK_K}, C_out of 64 and at most 256)")
    dtype = torch.bfloat16 if x.is_cuda else torch.float32
    xl = x.permute(0, 2, 3, 1).contiguous()  # NHWC: a view, no copy, for a channels_last x
    y = torch.empty((B, H, W, c_out), device=x.device, dtype=x.dtype)
    tiles = B * H * W // BLOCK_M
    t_mean = torch.empty((tiles if stats else 0, c_out), device=x.device, dtype=torch.float32)
    t_m2 = torch.empty_like(t_mean)
    res = residual.permute(0, 2, 3, 1).contiguous() if residual is not None else y
    block_n = c_out  # one N tile: the input tile is loaded once (64..256 output channels)
    _conv3x3_kernel[(tiles,)](xl, pack_weight(weight, dtype), bias.float().contiguous(), res, y, t_mean, t_m2,
                              H, W, c_in, COUT=c_out, HAS_RES=residual is not None, STATS=stats,
                              BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_K=BLOCK_K,
                              num_warps=4 if block_n <= 128 else 8, num_stages=3)
    return (y.permute(0, 3, 1, 2), t_mean.view(B, H * W // BLOCK_M if stats else 0, c_out),
            t_m2.view(B, H * W // BLOCK_M if stats else 0, c_out))


# the kernel indexes x, the residual and y as NHWC: the compiler must hand them over in the strides
# they were traced with (channels_last), not a layout of its choosing
_STRIDES = tuple(t for t in (getattr(torch.Tag, "needs_exact_strides", None),
                             getattr(torch.Tag, "needs_fixed_stride_order", None)) if t is not None)[:1]


@torch.library.custom_op("jdcl_bench::conv3x3", mutates_args=(), tags=_STRIDES)
def _conv3x3_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None,
                stats: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y, m, m2 = _launch(x, weight, bias, residual, stats)
    return y, m, m2


@_conv3x3_op.register_fake
def _(x, weight, bias, residual, stats):
    B, _, H, W = x.shape
    c_out = weight.shape[0]
    y = torch.empty((B, H, W, c_out), device=x.device, dtype=x.dtype).permute(0, 3, 1, 2)
    n = H * W // BLOCK_M if stats else 0
    m = x.new_empty((B, n, c_out), dtype=torch.float32)
    return y, m, torch.empty_like(m)


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None = None,
            stats: bool = False):
    """``conv2d(x, weight, bias, padding=1) (+ residual)`` for a channels_last ``x`` (bf16 on CUDA),
    channels_last out in x's dtype, and with ``stats`` the per-tile statistics for
    :func:`channel_stats` (else two empty tensors). No autograd: inference only."""
    return _conv3x3_op(x, weight, bias, residual, stats)


def channel_stats(tile_mean: torch.Tensor, tile_m2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, C) per-tile means and sums of squared deviations over equal-sized tiles -> each
    channel's mean and (biased) variance, (B, C): mean of the means; within-tile plus between-tile
    squared deviations over the count."""
    T = tile_mean.shape[1]
    mean = tile_mean.mean(1)
    between = (tile_mean - mean[:, None]).pow(2).sum(1) * BLOCK_M
    return mean, (tile_m2.sum(1) + between) / (T * BLOCK_M)
