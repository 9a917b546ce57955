"""The JDCL joint model: an LDM-style diffusion UNet with a classifier on its encoder.

The UNet follows the layout of LDM's `openaimodel.UNetModel` (improved-diffusion lineage) as
JDCL configures it for CIFAR (legacy=True, use_scale_shift_norm=True, conv resampling, no class
conditioning, epsilon prediction), so the paper config has the same 52,542,979 parameters.
``UNetConfig.class_cond=True`` adds an ADM-style label embedding to the timestep embedding for the
class-conditional generators of the DGR / GUIDE baselines (``forward(x, t, y)``).
The classifier reads the encoder only: every input-block output plus the middle-block output is
global-average-pooled and concatenated (3712 features for the paper config), then an MLP head.

Written for speed rather than as a port: attention goes through
`F.scaled_dot_product_attention` (flash / memory-efficient kernels on GPU), there is no gradient
checkpointing, and forward passes have no data-dependent Python control flow, so the model runs
under `torch.compile`, `torch.autocast(dtype=torch.bfloat16)` and with channels_last inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F


# -----------------------------------------------------------------------------
# config


@dataclass
class UNetConfig:
    image_size: int = 32
    in_channels: int = 3
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 3
    # downsample factors (1 = input resolution) at which self-attention is used, as in LDM:
    # (2, 4) on a 32x32 input means attention at 16x16 and 8x8
    attention_resolutions: tuple[int, ...] = (2, 4)
    num_heads: int = 4
    num_head_channels: int = -1  # > 0 overrides num_heads with channels // num_head_channels
    dropout: float = 0.1
    num_classes: int = 10
    head_hidden: int = 1024
    head_dropout: float = 0.1
    # class-conditional generation (DGR / GUIDE): a learned label embedding is added to the
    # timestep embedding, as ADM's label_emb; off for JDCL, which keeps the official param count
    class_cond: bool = False

    @classmethod
    def paper(cls, num_classes: int = 10) -> "UNetConfig":
        """The official JDCL CIFAR model (52.5M UNet params)."""
        return cls(num_classes=num_classes)

    @classmethod
    def fast(cls, num_classes: int = 10, image_size: int = 32, in_channels: int = 3) -> "UNetConfig":
        """A few-M-param model for quick but meaningful runs (attention at 8x8 for 32x32 inputs)."""
        return cls(image_size=image_size, in_channels=in_channels, model_channels=64,
                   channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(4,),
                   num_classes=num_classes, head_hidden=512)

    @classmethod
    def smoke(cls, num_classes: int = 10, image_size: int = 32, in_channels: int = 3) -> "UNetConfig":
        """A tiny model for unit tests on CPU; attention only at the lowest resolution."""
        return cls(image_size=image_size, in_channels=in_channels, model_channels=16,
                   channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
                   num_classes=num_classes, head_hidden=32)

    def replace(self, **changes) -> "UNetConfig":
        return replace(self, **changes)

    @property
    def feature_dim(self) -> int:
        """Width of the pooled encoder features the classifier reads."""
        mc, mult = self.model_channels, self.channel_mult
        dim = mc  # conv_in
        for level, m in enumerate(mult):
            dim += self.num_res_blocks * mc * m  # ResBlock(+attn) outputs
            if level != len(mult) - 1:
                dim += mc * m  # Downsample output
        return dim + mc * mult[-1]  # middle block


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -----------------------------------------------------------------------------
# building blocks


def is_channels_last(x: torch.Tensor) -> bool:
    """A 4-d tensor laid out channels_last and not also plain contiguous (as a 1x1 map would be):
    the inputs the layout-keeping forms below are for."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that keeps a channels_last input channels_last, forward and backward.

    torch's CUDA group-norm kernel works in NCHW, and the shapes and strides torch.compile traces
    say so: for a channels_last input its output and its input gradient are NCHW. The compiled
    UNet then transposes whole activations around every norm (the fused kernels' "clone") and,
    in the backward, copies them again so that cuDNN's convolution_backward gets the layout it
    was traced with (``aten::copy_``: 23 % of the paper config's compiled training step on an
    H100, results/bench/). For a channels_last input this computes the same normalisation from
    plain ops: fp32 statistics (biased variance, as GroupNorm's) and element-wise ops, so the
    result and its gradient keep the input's layout and inductor fuses it all. The output is fp32,
    as autocast makes GroupNorm's. NCHW inputs (CPU, eager runs) take torch's kernel.
    Measured (paper config, H100, one process): the compiled training step 2,415 -> 2,847 img/s,
    copies 23 % -> 13 % of its GPU time (results/bench/...20261125T040637.json, the group-view
    form of the statistics; the per-channel form below is faster again).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout_preserving and is_channels_last(x):
            return group_norm_channels_last(x, self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x)

    # the bench turns this off on one path to time torch's own kernel against it
    layout_preserving: bool = True


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


def _film(v: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``v * (1 + scale)``, or ``v`` without FiLM: how the norm's gain and bias, and their
    gradients, pass through the scale."""
    return v * (1 + scale.float()) if scale is not None else v


class _NormAct(torch.autograd.Function):
    """silu(GroupNorm(x) * (1 + scale) + shift) * keep / keep_prob in one function with a
    backward written out: one reduction pass over (x, grad) for two sums per (sample, channel),
    then one element-wise pass for the input gradient.

    Left to autograd, the composition's backward made torch.compile store three fp32 maps per
    block between its reduction and element-wise kernels (x - mean, the FiLM output, a gradient
    term; one of them in NCHW order): about 18 bf16-map sizes of memory traffic per decoder block
    at 32x32 in the H100 training step, where this needs about 7 (results/bench/). The arithmetic
    is the composition's: the same statistics (:func:`_group_stats`), (x - mean) * a + c in fp32."""

    @staticmethod
    def forward(ctx, x, weight, bias, scale, shift, keep, groups: int, eps: float, keep_prob: float):
        xf = x.float()
        mean, rstd = _group_stats(xf, groups, eps)
        gamma, c = _film(weight.float()[None], scale), _film(bias.float()[None], scale)
        if shift is not None:
            c = c + shift.float()
        a = rstd * gamma  # f = (x - mean) * a + c
        f = (xf - mean[:, :, None, None]) * a[:, :, None, None] + c[:, :, None, None]
        out = F.silu(f)
        if keep is not None:
            out = out * keep * (1.0 / keep_prob)
        ctx.save_for_backward(x, mean, rstd, a, c, weight, bias, scale, keep)  # gamma: rebuilt from weight, scale
        ctx.groups, ctx.keep_prob = groups, keep_prob
        return out

    @staticmethod
    def backward(ctx, dout):
        x, mean, rstd, a, c, weight, bias, scale, keep = ctx.saved_tensors
        gamma = _film(weight.float()[None], scale)
        B, C, H, W = x.shape
        xc = x.float() - mean[:, :, None, None]
        f = xc * a[:, :, None, None] + c[:, :, None, None]
        sig = torch.sigmoid(f)
        dg = dout.float() if keep is None else dout.float() * keep * (1.0 / ctx.keep_prob)
        df = dg * sig * (1 + f * (1 - sig))
        s1 = df.sum(dim=(2, 3))          # (B, C): sum of df
        s2 = (df * xc).sum(dim=(2, 3))   # (B, C): sum of df * (x - mean)
        # through the normalisation: dx = a * df - rstd * mean_g(gamma * s1) / HW
        #                                 - (x - mean) * rstd^3 * mean_g(gamma * s2) / HW
        hw = H * W
        k1 = -rstd * _per_group_mean(gamma * s1, ctx.groups) / hw
        k2 = -rstd.pow(3) * _per_group_mean(gamma * s2, ctx.groups) / hw
        dx = df * a[:, :, None, None] + xc * k2[:, :, None, None] + k1[:, :, None, None]
        s2n = s2 * rstd  # sum of df * x_hat
        d_weight, d_bias = _film(s2n, scale).sum(0), _film(s1, scale).sum(0)
        d_scale = (weight.float()[None] * s2n + bias.float()[None] * s1) if ctx.needs_input_grad[3] else None
        d_shift = s1 if ctx.needs_input_grad[4] else None
        return (dx.to(x.dtype), d_weight.to(weight.dtype), d_bias.to(bias.dtype),
                None if d_scale is None else d_scale.to(scale.dtype), d_shift, None, None, None, None)


def norm_act(norm: nn.GroupNorm, x: torch.Tensor, scale: torch.Tensor | None = None,
             shift: torch.Tensor | None = None, dropout: float = 0.0, training: bool = False) -> torch.Tensor:
    """``dropout(silu(norm(x) * (1 + scale) + shift))`` (scale, shift: (B, C) or None) through
    :class:`_NormAct`; fp32 out, as autocast's GroupNorm. The keep mask is drawn outside the
    function (``torch.rand_like``, the same Bernoulli(1 - p) as ``nn.Dropout``; another stream)."""
    keep = None
    if training and dropout > 0:
        # a bool mask in x's layout: an fp32 NCHW one (torch.rand(x.shape)) made the compiled
        # forward write and the backward read 4 bytes per value across the map's layout, 5x slower
        # than autograd's dropout (H100 profile, results/bench/...20261125T072827.json)
        keep = torch.rand_like(x, dtype=torch.float32) >= dropout
    return _NormAct.apply(x, norm.weight, norm.bias, scale, shift, keep, norm.num_groups, norm.eps, 1.0 - dropout)


def use_norm_act(owner: nn.Module, norm: nn.GroupNorm, x: torch.Tensor) -> bool:
    """Whether ``owner`` (a ResBlock or the output head) runs its norm-activation step through
    :func:`norm_act`: its switch is on, the norm keeps layouts, and ``x`` is channels_last."""
    return owner.fused_norm_act and norm.layout_preserving and is_channels_last(x)


def norm(channels: int) -> GroupNorm:
    # 32 groups as in LDM whenever the width allows it; tiny test models get the largest group
    # count dividing their width, so every width works without special-casing configs
    return GroupNorm(math.gcd(32, channels), channels)


def zero_init(module: nn.Module) -> nn.Module:
    # residual branches start as the identity, which keeps deep UNets stable early in training
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Sinusoidal embedding, [cos | sin] order as in LDM / improved-diffusion."""
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, then FiLM by the timestep (scale-shift on the second norm), then
    SiLU-dropout-zero-conv; the skip is a 1x1 conv when the width changes."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch))
        self.out_norm = norm(out_ch)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout),
                                        zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1)))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    # channels_last input (the compiled path): norm, FiLM, SiLU and dropout through norm_act, whose
    # written-out backward the compiler turns into two passes; off on the bench's before-path
    fused_norm_act: bool = True
    # inference on the maps triton_norm takes: the norm steps through its one-read kernel
    triton_norm: bool = True

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if use_norm_act(self, self.in_layers[0], x):
            from . import triton_norm
            if triton_norm.usable(self, self.out_norm, x):
                return self._infer(x, emb)
            return self._fused(x, emb)
        h = self.in_layers(x)
        scale, shift = self.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.out_layers(self.out_norm(h) * (1 + scale) + shift)
        return self.skip(x) + h

    def _fused(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The same block with its norm-activation steps through :func:`norm_act`."""
        h = self.in_layers[2](norm_act(self.in_layers[0], x))
        scale, shift = self.emb_layers(emb).chunk(2, dim=1)
        drop = self.out_layers[1]
        h = self.out_layers[2](norm_act(self.out_norm, h, scale, shift, drop.p, drop.training))
        return self.skip(x) + h

    def _infer(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The same block for inference, norm steps through :func:`triton_norm.norm_act`: the
        second always (its input is the first convolution's output, whose bias the kernel adds as
        it reads the map), the first when ``x`` is in memory anyway because the 1x1 skip
        convolution reads it (a decoder concatenation, a downsampled map) and the kernel takes its
        groups. Otherwise ``x`` is a residual sum, which the compiler folds into its own norm
        kernels rather than write it out, and which this opaque kernel would make it write
        (measured: a net loss, results/bench/); or its groups do not fit the kernel's slices (the
        384-channel decoder concatenation at 32x32), and the compiler keeps the first norm."""
        from . import triton_norm

        n1, conv1 = self.in_layers[0], self.in_layers[2]
        first = isinstance(self.skip, nn.Conv2d) and triton_norm.usable(self, n1, x)
        a = triton_norm.norm_act(n1, x) if first else norm_act(n1, x)
        h = F.conv2d(a, conv1.weight, None, padding=1)
        scale, shift = self.emb_layers(emb).chunk(2, dim=1)
        h = self.out_layers[2](triton_norm.norm_act(self.out_norm, h, scale, shift, x_bias=conv1.bias))
        return self.skip(x) + h


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


class AttentionBlock(nn.Module):
    """Full self-attention over the H*W positions of a feature map (residual, zero-init proj)."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        assert channels % num_heads == 0, (channels, num_heads)
        self.num_heads = num_heads
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    # off: the NCHW form for every input (the bench times it against the token form)
    layout_preserving: bool = True

    # cast the norm's output for the qkv matmul right away (autocast_input); off on the bench path
    # that times the blocks as they were before
    cast_early: bool = True

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        nh = self.num_heads
        if self.layout_preserving and is_channels_last(x):
            h = self.norm(x)
            return x + self._tokens(autocast_input(h) if self.cast_early else h)
        # (B, 3C, H, W) -> three (B, heads, HW, head_dim) tensors, head_dim the unit-stride axis
        qkv = self.qkv(self.norm(x)).reshape(B, 3, nh, C // nh, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(h)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The same attention for a channels_last map, as (B, HW, C) tokens: a channels_last map
        is that matrix already, the 1x1 convolutions are matrix multiplies with the same weights,
        and the heads split the channel axis by views. The NCHW form's reshapes of q, k, v and
        of their gradients are copies for a channels_last map (measured as whole-activation
        copies in the compiled training step's backward, results/bench/)."""
        B, C, H, W = x.shape
        nh = self.num_heads
        tokens = x.permute(0, 2, 3, 1).reshape(B, H * W, C)  # a view for channels_last
        qkv = F.linear(tokens, self.qkv.weight.flatten(1), self.qkv.bias)  # (B, HW, 3C)
        q, k, v = qkv.view(B, H * W, 3, nh, C // nh).permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, HW, hd)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, H * W, C)
        h = F.linear(h, self.proj.weight.flatten(1), self.proj.bias)
        return h.view(B, H, W, C).permute(0, 3, 1, 2)  # channels_last (B, C, H, W), a view


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, then a 3x3 convolution (LDM's conv resampling).

    ``subpixel`` (the default) computes the same function without building the upsampled map:
    each of the four output phases (even/odd row, even/odd column) is a 2x2 convolution of the
    low-resolution input whose taps are sums of the 3x3 taps that land on the same input pixel
    (:func:`upsample_conv`). That is 16 instead of 36 multiply-adds per input pixel and channel
    pair, and no 4x-sized map to write, read and (in the backward) scatter-add back. The
    weights are the 3x3 ones, so checkpoints are unchanged. ``subpixel = False`` is the literal form
    (the bench's fp32 reference runs it)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    subpixel: bool = True

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        if self.subpixel:
            return upsample_conv(x, self.conv.weight, self.conv.bias)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


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


class EmbSequential(nn.ModuleList):
    """A chain of blocks that all take (x, emb); blocks that ignore emb just accept it, which
    keeps the forward free of isinstance() dispatch."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb)
        return x


# -----------------------------------------------------------------------------
# the joint model


class JointUNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        mc = cfg.model_channels
        emb_dim = 4 * mc

        def heads(ch: int) -> int:
            return cfg.num_heads if cfg.num_head_channels <= 0 else ch // cfg.num_head_channels

        def block(in_ch: int, out_ch: int, ds: int) -> EmbSequential:
            layers = [ResBlock(in_ch, out_ch, emb_dim, cfg.dropout)]
            if ds in cfg.attention_resolutions:
                layers.append(AttentionBlock(out_ch, heads(out_ch)))
            return EmbSequential(layers)

        # timestep embedding: fixed sinusoid (frequencies cached; not part of the state dict)
        half = mc // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(cfg.num_classes, emb_dim) if cfg.class_cond else None

        # encoder: conv_in, then per level num_res_blocks blocks and a Downsample (except the last)
        self.conv_in = nn.Conv2d(cfg.in_channels, mc, 3, padding=1)
        self.input_blocks = nn.ModuleList()
        skip_chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.input_blocks.append(block(ch, mc * mult, ds))
                ch = mc * mult
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(EmbSequential([Downsample(ch)]))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = EmbSequential([
            ResBlock(ch, ch, emb_dim, cfg.dropout),
            AttentionBlock(ch, heads(ch)),
            ResBlock(ch, ch, emb_dim, cfg.dropout),
        ])

        # decoder: num_res_blocks + 1 blocks per level, each eating one skip (legacy LDM layout);
        # the last block of every level but the top one ends with an Upsample
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                b = block(ch + skip_chans.pop(), mc * mult, ds)
                ch = mc * mult
                if level and i == cfg.num_res_blocks:
                    b.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(b)
        assert not skip_chans

        self.out = nn.Sequential(norm(ch), nn.SiLU(), zero_init(nn.Conv2d(ch, cfg.in_channels, 3, padding=1)))

        # classifier head on the pooled encoder features (no timestep input, no BatchNorm)
        self.feature_dim = cfg.feature_dim
        self.head = nn.Sequential(
            nn.Linear(self.feature_dim, cfg.head_hidden),
            nn.LeakyReLU(0.2),
            nn.Dropout(cfg.head_dropout),
            nn.Linear(cfg.head_hidden, cfg.num_classes),
        )

    # the decoder's concatenation keeps gradients channels_last (cat_channels); the bench turns
    # this off on the path that times the blocks as they were before
    layout_cat: bool = True
    # the output head's norm-SiLU through norm_act (ResBlock.fused_norm_act does the same per block)
    fused_norm_act: bool = True

    # --- internals

    def _emb(self, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.freqs))
        if y is not None:
            if self.label_emb is None:
                raise ValueError("class labels given to a UNet built with class_cond=False")
            emb = emb + self.label_emb(y)
        return emb

    def _encode(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder + middle block. Returns the middle output and every input-block output
        (conv_in first), which are both the decoder skips and the classifier's feature maps."""
        h = self.conv_in(x)
        hs = [h]
        for b in self.input_blocks:
            h = b(h, emb)
            hs.append(h)
        return self.middle_block(h, emb), hs

    def _decode(self, h: torch.Tensor, hs: list[torch.Tensor], emb: torch.Tensor) -> torch.Tensor:
        for b, skip in zip(self.output_blocks, reversed(hs)):
            h = b(cat_channels(h, skip, layout_keeping=self.layout_cat), emb)
        if use_norm_act(self, self.out[0], h):
            return self.out[2](norm_act(self.out[0], h))
        return self.out(h)

    @staticmethod
    def _pool(h: torch.Tensor, hs: list[torch.Tensor]) -> torch.Tensor:
        # global average pool of each map (JDCL pools with kernel min(H, 10000), i.e. globally)
        return torch.cat([m.mean(dim=(2, 3)) for m in hs] + [h.mean(dim=(2, 3))], dim=1)

    # --- public API

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the noise eps in x (= x_t) at integer timesteps t of shape (B,).

        ``y`` (B,) int64 class labels condition a ``class_cond`` model; None is the unconditional
        path (the label embedding is simply not added)."""
        emb = self._emb(t, y)
        h, hs = self._encode(x, emb)
        return self._decode(h, hs, emb)

    def features(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features, (B, feature_dim). Runs the encoder half only."""
        h, hs = self._encode(x, self._emb(t))
        return self._pool(h, hs)

    def classify(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits; t defaults to 0, i.e. x is a clean image (JDCL's setting)."""
        if t is None:
            t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return self.head(self.features(x, t))

    def forward_joint(self, x_t: torch.Tensor, t: torch.Tensor,
                      x_cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps on x_t at t, logits on x_cls at t=0) in one call.

        Both inputs go through the encoder as one batch (per-sample ops only, so this equals two
        separate passes), then only the x_t half is decoded: fewer, larger kernels than two passes.
        """
        n = x_t.shape[0]
        t_all = torch.cat([t, t.new_zeros(x_cls.shape[0])])
        emb = self._emb(t_all)
        h, hs = self._encode(torch.cat([x_t, x_cls]), emb)
        (h_t, h_cls), halves = split_batch(h, n), [split_batch(m, n) for m in hs]
        logits = self.head(self._pool(h_cls, [c for _, c in halves]))
        eps = self._decode(h_t, [t_ for t_, _ in halves], emb[:n])
        return eps, logits


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
