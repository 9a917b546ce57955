"""GroupNorm + scale-shift + SiLU on channels_last activations: which formulation inductor compiles best.

The UNet's element-wise work (GroupNorm statistics, normalise, FiLM, SiLU, residual adds) is about
half of the GPU time of the compiled step and of DDIM sampling (results/bench/). This times one
norm block, compiled, in three formulations that compute the same function, against the memory
roofline of the same bytes (a compiled copy of the input), forward alone (sampling) and forward +
backward (training):

- ``native``: ``F.group_norm`` (torch's kernel; the UNet's form before 2026-11-25);
- ``group_view``: fp32 ``var_mean`` over a (B, G, C/G, H, W) view, as ``kernels.layout.group_norm_channels_last``;
- ``per_channel``: per-channel ``var_mean`` over H, W (a reduction along the strided axis of a
  channels_last tensor), then the group's mean and variance from its channels' (law of total
  variance: exact, no E[x^2] - E[x]^2 cancellation): ``kernels.layout.group_norm_channels_last`` itself,
  whose code was inlined here when the 20261125T0418 record was made.

Usage (GPU): python benchmarks/groupnorm_layouts.py [--out results/bench/groupnorm-....json]
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F


def native(x, G, w, b, scale, shift):
    return F.silu(F.group_norm(x, G, w, b, 1e-5) * (1 + scale) + shift).to(torch.bfloat16)


def group_view(x, G, w, b, scale, shift):
    B, C, H, W = x.shape
    xg = x.float().view(B, G, C // G, H, W)
    var, mean = torch.var_mean(xg, dim=(2, 3, 4), correction=0, keepdim=True)
    y = ((xg - mean) * torch.rsqrt(var + 1e-5)).view(B, C, H, W) * w[:, None, None] + b[:, None, None]
    return F.silu(y * (1 + scale) + shift).to(torch.bfloat16)


def per_channel(x, G, w, b, scale, shift):  # what the UNet runs (kernels.layout.group_norm_channels_last)
    from jdcl_bench.kernels.layout import group_norm_channels_last

    y = group_norm_channels_last(x, G, w, b, 1e-5)
    return F.silu(y * (1 + scale) + shift).to(torch.bfloat16)


def copy(x, G, w, b, scale, shift):  # the roofline: read x, write one tensor of the same size
    return x * 1


FORMS = {"copy": copy, "native": native, "group_view": group_view, "per_channel": per_channel}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    args = ap.parse_args()

    from jdcl_bench.bench import median_time

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    rows = []
    for B, C, S in ((2000, 128, 32), (2000, 256, 16), (512, 128, 32)):
        G = 32
        x = (torch.randn(B, C, S, S, device=dev, generator=g) * 2 + 0.5).to(torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(C, device=dev, generator=g), torch.randn(C, device=dev, generator=g)
        scale = torch.randn(B, C, 1, 1, device=dev, generator=g) * 0.1
        shift = torch.randn(B, C, 1, 1, device=dev, generator=g) * 0.1
        ref = native(x.float().contiguous(), G, w, b, scale, shift).float()
        nbytes = x.numel() * x.element_size()
        for name, fn in FORMS.items():
            torch._dynamo.reset()
            cfn = torch.compile(fn)
            out = cfn(x, G, w, b, scale, shift)
            err = None if name == "copy" else float((out.float() - ref).abs().max())
            fwd = 1000 * median_time(lambda: cfn(x, G, w, b, scale, shift), dev, 3, 20)
            xg = x.detach().requires_grad_(True)
            gy = torch.randn_like(out, memory_format=torch.channels_last)

            def step():
                y = cfn(xg, G, w, b, scale, shift)
                y.backward(gy)
            step()
            fwdbwd = 1000 * median_time(step, dev, 3, 20)
            row = {"shape": [B, C, S, S], "form": name, "fwd_ms": fwd, "fwd_bwd_ms": fwdbwd,
                   "fwd_GBps_2x_bytes": 2 * nbytes / fwd / 1e6, "max_abs_err_vs_fp32_native": err,
                   "out_channels_last": out.is_contiguous(memory_format=torch.channels_last),
                   "grad_channels_last": xg.grad.is_contiguous(memory_format=torch.channels_last)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    rec = {"gpu_name": torch.cuda.get_device_name(dev), "torch": torch.__version__, "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rec, f, indent=1)


if __name__ == "__main__":
    main()
