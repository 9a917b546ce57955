"""GroupNorm, FiLM, SiLU and dropout as one autograd function with its backward written out."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layout import _group_stats, _per_group_mean


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
