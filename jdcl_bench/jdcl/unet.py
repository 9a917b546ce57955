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

from ..kernels import FastPath
from ..kernels.layout import (autocast_input, cat_channels, group_norm_channels_last, is_channels_last, split_batch,
                              upsample_conv)
from ..kernels import triton_norm
from ..kernels.norm_act import norm_act


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

    @classmethod
    def named(cls, name: str, num_classes: int, image_shape: tuple, model_channels: int = 0) -> "UNetConfig":
        """The preset ``name`` (paper | fast | smoke) for images of ``image_shape``; a base width > 0 replaces its own."""
        ch, h, _ = image_shape
        cfg = cls.paper(num_classes).replace(image_size=h, in_channels=ch) if name == "paper" else \
            {"fast": cls.fast, "smoke": cls.smoke}[name](num_classes, h, ch)
        return cfg.replace(model_channels=model_channels) if model_channels > 0 else cfg

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
        if self.fast.layout_norm and is_channels_last(x):
            return group_norm_channels_last(x, self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x)

    fast = FastPath()  # apply_fast_path sets a model's


def use_norm_act(owner: nn.Module, norm: nn.GroupNorm, x: torch.Tensor) -> bool:
    """Whether ``owner`` (a ResBlock or the output head) runs its norm-activation step through
    :func:`norm_act`: its switch is on, the norm keeps layouts, and ``x`` is channels_last."""
    return owner.fast.fused_norm_act and norm.fast.layout_norm and is_channels_last(x)


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
    # written-out backward the compiler turns into two passes (FastPath.fused_norm_act); in
    # inference on the maps triton_norm takes, the norm steps through its one-read kernel
    # (FastPath.triton_norm)
    fast = FastPath()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if use_norm_act(self, self.in_layers[0], x):
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
        n1, conv1 = self.in_layers[0], self.in_layers[2]
        first = isinstance(self.skip, nn.Conv2d) and triton_norm.usable(self, n1, x)
        a = triton_norm.norm_act(n1, x) if first else norm_act(n1, x)
        h = F.conv2d(a, conv1.weight, None, padding=1)
        scale, shift = self.emb_layers(emb).chunk(2, dim=1)
        h = self.out_layers[2](triton_norm.norm_act(self.out_norm, h, scale, shift, x_bias=conv1.bias))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Full self-attention over the H*W positions of a feature map (residual, zero-init proj)."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        assert channels % num_heads == 0, (channels, num_heads)
        self.num_heads = num_heads
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    # FastPath.layout_norm off: the NCHW form for every input (the bench times it against the
    # token form); FastPath.cast_early: cast the norm's output for the qkv matmul right away
    # (autocast_input)
    fast = FastPath()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        nh = self.num_heads
        if self.fast.layout_norm and is_channels_last(x):
            h = self.norm(x)
            return x + self._tokens(autocast_input(h) if self.fast.cast_early else h)
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

    ``FastPath.subpixel`` (the default) computes the same function without building the upsampled map:
    each of the four output phases (even/odd row, even/odd column) is a 2x2 convolution of the
    low-resolution input whose taps are sums of the 3x3 taps that land on the same input pixel
    (:func:`upsample_conv`). That is 16 instead of 36 multiply-adds per input pixel and channel
    pair, and no 4x-sized map to write, read and (in the backward) scatter-add back. The
    weights are the 3x3 ones, so checkpoints are unchanged. With it off, the literal form
    (the bench's fp32 reference runs it)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    fast = FastPath()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        if self.fast.subpixel:
            return upsample_conv(x, self.conv.weight, self.conv.bias)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


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

    # FastPath.layout_cat: the decoder's concatenation keeps gradients channels_last (cat_channels);
    # FastPath.fused_norm_act: the output head's norm-SiLU through norm_act, as in every ResBlock
    fast = FastPath()

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
            h = b(cat_channels(h, skip, layout_keeping=self.fast.layout_cat), emb)
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


class JointForward(nn.Module):
    """``forward`` = ``net.forward_joint``: DDP syncs gradients only for calls of ``forward``."""

    def __init__(self, net: JointUNet):
        super().__init__()
        self.net = net

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, x_cls: torch.Tensor):
        return self.net.forward_joint(x_t, t, x_cls)


class ClassifyForward(nn.Module):
    """``forward`` = ``net.classify``: the classifier's pass alone (encoder and head), compiled as a call."""

    def __init__(self, net: JointUNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.classify(x)


def apply_fast_path(model: nn.Module, fast: FastPath) -> nn.Module:
    """Run ``model``'s blocks (this module's classes) with the steps ``fast`` turns on."""
    for m in model.modules():
        if isinstance(m, (GroupNorm, ResBlock, AttentionBlock, Upsample, JointUNet)):
            m.fast = fast
    return model
