"""A 3x3 convolution that applies GroupNorm + FiLM + SiLU to its input as it loads it (inference).

In the UNet every 3x3 convolution but the first reads ``silu(GroupNorm(x) * (1 + scale) + shift)``.
Done as separate kernels, that activation is written to memory and read back by cuDNN: per block
a read and a write of the whole map, about half of the element-wise traffic of DDIM sampling
(results/bench/). Here the convolution loads the raw ``x`` and computes the activation on its
operand tile before the matrix multiply, so the map is never written; only the per-(sample,
channel) statistics are computed beforehand (one read of ``x``).

The activation is per (sample, channel) affine then SiLU: ``f = x * a[b, c] + k[b, c]`` with
``a = rstd * gamma * (1 + scale)`` and ``k = (beta - mean * rstd * gamma) * (1 + scale) + shift``.
Padding is zero *after* the activation, as for a convolution of the activated map.

Implicit GEMM on channels_last (NHWC) maps: M = output pixels, N = output channels, K = 9 taps x
input channels. A tile of BLOCK_M pixels lies within one sample (H * W must be a multiple of
BLOCK_M), so the affine coefficients are one vector per K chunk. Forward only: sampling runs
under ``torch.no_grad``; training keeps cuDNN and :func:`unet.norm_act` (whose backward is
written out).
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - torch builds without triton
    triton = None


if triton is not None:
    @triton.jit
    def _silu(f, MODE: tl.constexpr):
        if MODE == 2:  # one MUFU op per value: silu(f) = h + h * tanh(h), h = f / 2
            h = 0.5 * f
            t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [h], dtype=tl.float32,
                                          is_pure=True, pack=1)
            return h + h * t
        return f * tl.sigmoid(f)

    @triton.jit
    def _conv3x3_kernel(X, A, K0, Wt, Bias, Y, H, W, M, CIN: tl.constexpr, COUT: tl.constexpr,
                        NORM: tl.constexpr, MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr):
        num_n: tl.constexpr = (COUT + BLOCK_N - 1) // BLOCK_N
        pid = tl.program_id(0)
        pid_m, pid_n = pid // num_n, pid % num_n  # the N tiles of one pixel tile run together (L2 reuse)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        hw = H * W
        sample = (pid_m * BLOCK_M) // hw  # one sample per tile
        oh = (offs_m % hw) // W
        ow = offs_m % W
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        in_m = offs_m < M
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for tap in tl.static_range(9):
            ih = oh + (tap // 3 - 1)
            iw = ow + (tap % 3 - 1)
            valid = in_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            src = (offs_m + (tap // 3 - 1) * W + (tap % 3 - 1)) * CIN  # the neighbour's row of x
            for k in range(0, CIN, BLOCK_K):
                x = tl.load(X + src[:, None] + (k + offs_k)[None, :], mask=valid[:, None], other=0.0)
                if NORM:
                    a = tl.load(A + sample * CIN + k + offs_k)
                    k0 = tl.load(K0 + sample * CIN + k + offs_k)
                    f = x.to(tl.float32) * a[None, :] + k0[None, :]
                    x = tl.where(valid[:, None], _silu(f, MODE), 0.0)
                x = x.to(Wt.dtype.element_ty)  # bf16 on the GPU; fp32 in the CPU interpreter's tests
                w = tl.load(Wt + (tap * CIN + k + offs_k)[:, None] * COUT + offs_n[None, :],
                            mask=(offs_n < COUT)[None, :], other=0.0)
                acc = tl.dot(x, w, acc)
        acc += tl.load(Bias + offs_n, mask=offs_n < COUT, other=0.0)[None, :]
        tl.store(Y + offs_m[:, None] * COUT + offs_n[None, :], acc.to(Y.dtype.element_ty),
                 mask=in_m[:, None] & (offs_n < COUT)[None, :])


def pack_weight(weight: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> (9 * C_in, C_out), row tap * C_in + c: the K x N operand. The
    kernel's matrix multiply runs in its dtype (bf16; fp32 only for CPU-interpreter tests, whose
    bf16 dot is wrong)."""
    c_out, c_in = weight.shape[:2]
    return weight.permute(2, 3, 1, 0).reshape(9 * c_in, c_out).to(dtype).contiguous()


def conv3x3_norm_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, a: torch.Tensor | None = None,
                     k0: torch.Tensor | None = None, *, mode: int = 2, block_m: int = 128, block_n: int = 128,
                     block_k: int = 64, num_warps: int = 8, num_stages: int = 3,
                     packed: torch.Tensor | None = None) -> torch.Tensor:
    """``conv2d(silu(x * a + k0), weight, bias, padding=1)`` (a, k0: (B, C_in) fp32, per sample and
    channel; both None: a plain convolution of x) for a bf16 channels_last ``x``; bf16 channels_last
    out. ``mode`` 1 computes SiLU as f * sigmoid(f), 2 with one ``tanh.approx`` per value."""
    B, c_in, H, W = x.shape
    c_out = weight.shape[0]
    if (H * W) % block_m or c_in % block_k:
        raise ValueError(f"conv3x3_norm_act: H*W={H * W} must be a multiple of block_m={block_m} "
                         f"and C_in={c_in} of block_k={block_k}")
    xl = x.permute(0, 2, 3, 1)  # NHWC view; contiguous for a channels_last x
    if not xl.is_contiguous():
        xl = xl.contiguous()
    y = torch.empty((B, H, W, c_out), device=x.device, dtype=torch.bfloat16)
    wt = pack_weight(weight) if packed is None else packed
    norm = a is not None
    a_ = a.float().contiguous() if norm else xl
    k_ = k0.float().contiguous() if norm else xl
    M = B * H * W
    grid = (triton.cdiv(M, block_m) * triton.cdiv(c_out, block_n),)
    _conv3x3_kernel[grid](xl, a_, k_, wt, bias.float().contiguous(), y, H, W, M, CIN=c_in, COUT=c_out,
                          NORM=norm, MODE=mode, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                          num_warps=num_warps, num_stages=num_stages)
    return y.permute(0, 3, 1, 2)
