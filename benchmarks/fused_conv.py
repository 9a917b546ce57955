"""GroupNorm + FiLM + SiLU + 3x3 convolution at DDIM sampling shapes: separate kernels against the
convolution that applies the activation while loading its input (``jdcl/triton_conv.py``).

For each shape (batch 2000, the UNet's 32x32 and 16x16 blocks), in one process on the GPU:
- ``separate``: what the compiled UNet runs now: norm_act (statistics, then normalise/FiLM/SiLU
  written as a bf16 map) and cuDNN's convolution, one torch.compile'd function;
- ``cudnn_conv``: cuDNN's convolution alone on the activated map (its share of ``separate``);
- ``stats``: the compiled statistics alone (per-(sample, channel) coefficients a, k0);
- ``triton_plain``: our kernel without the activation (its raw efficiency against cuDNN);
- ``triton_fused``: our kernel with the activation, per tile configuration and SiLU form;
with the fused result's distance from ``separate``.

Usage (GPU): python benchmarks/fused_conv.py [--out results/bench/fused-conv-....json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = ((2000, 128, 32, 32, 128), (2000, 256, 16, 16, 256), (2000, 256, 32, 32, 128))
CONFIGS = ((128, 128, 64, 8, 3), (128, 128, 64, 4, 3), (128, 128, 64, 8, 4), (128, 256, 64, 8, 3),
           (64, 128, 64, 4, 4), (128, 128, 32, 8, 4), (256, 128, 64, 8, 3))


def median_ms(fn, iters=15, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()
    from jdcl_bench.bench import device_info
    from jdcl_bench.jdcl.triton_conv import conv3x3_norm_act, pack_weight
    from jdcl_bench.jdcl.unet import _group_stats, norm, norm_act
    from jdcl_bench.records import atomic_write_bytes, code_version, now

    dev = torch.device("cuda")
    rec = {"created_at": now(), "code_version": code_version(), **device_info(dev), "shapes": {}}
    path = Path(args.out) / f"fused-conv-{rec['gpu_name'].replace(' ', '_')}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    g = torch.Generator(device=dev).manual_seed(0)
    for B, C, H, W, CO in SHAPES:
        gn = norm(C).to(dev)
        with torch.no_grad():
            gn.weight.normal_(1, 0.1, generator=g), gn.bias.normal_(0, 0.1, generator=g)
        x = (torch.randn((B, C, H, W), device=dev, generator=g) * 2 + 0.5).to(torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)
        scale = torch.randn((B, C), device=dev, generator=g) * 0.1
        shift = torch.randn((B, C), device=dev, generator=g) * 0.1
        conv = torch.nn.Conv2d(C, CO, 3, padding=1).to(dev).to(memory_format=torch.channels_last)
        flops = 2 * B * H * W * CO * C * 9

        def separate():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return conv(norm_act(gn, x, scale, shift))

        def coefficients():
            mean, rstd = _group_stats(x.float(), gn.num_groups, gn.eps)
            gamma = gn.weight.float()[None] * (1 + scale)
            a = rstd * gamma
            return a, gn.bias.float()[None] * (1 + scale) + shift - mean * a

        sep_c, coef_c = torch.compile(separate), torch.compile(coefficients)
        row = {"flops": flops}
        with torch.no_grad():
            ref = sep_c()
            row["separate_ms"] = median_ms(sep_c)
            h = F.silu(gn(x.float()) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]).to(torch.bfloat16)
            h = h.contiguous(memory_format=torch.channels_last)
            w16, b16 = conv.weight.to(torch.bfloat16), conv.bias.to(torch.bfloat16)
            row["cudnn_conv_ms"] = median_ms(lambda: F.conv2d(h, w16, b16, padding=1))
            a, k0 = coef_c()
            row["stats_ms"] = median_ms(coef_c)
            packed = pack_weight(conv.weight)
            row["triton"] = {}
            for cfg in CONFIGS:
                bm, bn, bk, nw, ns = cfg
                if (H * W) % bm or C % bk:
                    continue
                kw = dict(block_m=bm, block_n=bn, block_k=bk, num_warps=nw, num_stages=ns, packed=packed)
                name = "x".join(map(str, cfg))
                try:
                    r = {"plain_ms": median_ms(lambda: conv3x3_norm_act(x, conv.weight, conv.bias, **kw))}
                    for mode in (1, 2):
                        fn = lambda: conv3x3_norm_act(x, conv.weight, conv.bias, a, k0, mode=mode, **kw)
                        y = fn()
                        r[f"fused_mode{mode}_ms"] = median_ms(fn)
                        r[f"fused_mode{mode}_rel_diff"] = float((y.float() - ref.float()).norm() / ref.float().norm())
                except Exception as exc:  # a config the compiler rejects (shared memory): say so, go on
                    r = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                row["triton"][name] = r
                print(f"[{B},{C},{H},{W}]->{CO} {name}: {r}", flush=True)
        print(f"[{B},{C},{H},{W}]->{CO}: separate {row['separate_ms']:.2f} ms, cudnn conv {row['cudnn_conv_ms']:.2f} "
              f"({flops / row['cudnn_conv_ms'] / 1e9:.0f} TFLOP/s), stats {row['stats_ms']:.2f}", flush=True)
        rec["shapes"][f"{B}x{C}x{H}x{W}->{CO}"] = row
        atomic_write_bytes(path, json.dumps(rec, indent=2).encode())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
