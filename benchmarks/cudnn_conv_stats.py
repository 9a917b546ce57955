"""Does cuDNN's graph API fuse a 3x3 convolution with the next GroupNorm's statistics?

Each ResBlock convolution's output is read again right away for per-(sample, channel) sums (the
next norm's statistics): half of the element-wise GPU time of the DDIM ε evaluation
(results/bench/). cuDNN's runtime fusion engines can add reductions after a convolution's
pointwise epilogue. This builds, with the cuDNN frontend (``pip install nvidia-cudnn-frontend``),
conv + bias (+ residual) -> Y, with per-(sample, channel) sums of Y and of Y^2 as reductions in
the same graph, checks them against torch, and times them against torch's cuDNN convolution (the
kernel the compiled UNet calls) on the paper config's 32x32 ResBlock shape at batch 2000.

Usage (GPU): python benchmarks/cudnn_conv_stats.py [--out results/bench]
"""
from __future__ import annotations

import argparse
import json
import traceback

import torch
import torch.nn.functional as F


def nhwc_stride(n, c, h, w):
    return [c * h * w, 1, w * c, c]


def build(cudnn, handle, N, C, K, H, W, *, stats: str, residual: bool):
    """stats: '' (none), 'nk' (per sample and channel, what GroupNorm needs), 'k' (per channel, BN's)."""
    bf16, f32 = cudnn.data_type.BFLOAT16, cudnn.data_type.FLOAT
    g = cudnn.pygraph(io_data_type=bf16, intermediate_data_type=f32, compute_data_type=f32, handle=handle)
    X = g.tensor(name="X", dim=[N, C, H, W], stride=nhwc_stride(N, C, H, W), data_type=bf16)
    Wt = g.tensor(name="W", dim=[K, C, 3, 3], stride=nhwc_stride(K, C, 3, 3), data_type=bf16)
    B = g.tensor(name="B", dim=[1, K, 1, 1], stride=[K, 1, K, K], data_type=f32)
    y = g.conv_fprop(image=X, weight=Wt, padding=[1, 1], stride=[1, 1], dilation=[1, 1], compute_data_type=f32)
    y = g.bias(input=y, bias=B, compute_data_type=f32)
    tensors = {"X": X, "W": Wt, "B": B}
    if residual:
        R = g.tensor(name="R", dim=[N, K, H, W], stride=nhwc_stride(N, K, H, W), data_type=bf16)
        y = g.add(a=y, b=R, compute_data_type=f32)
        tensors["R"] = R
    y.set_output(True).set_data_type(bf16).set_stride(nhwc_stride(N, K, H, W))
    tensors["Y"] = y
    if stats:
        dims = [N, K, 1, 1] if stats == "nk" else [1, K, 1, 1]
        s1 = g.reduction(input=y, mode=cudnn.reduction_mode.ADD, compute_data_type=f32)
        s1.set_output(True).set_data_type(f32).set_dim(dims).set_stride([K, 1, K, K])
        sq = g.mul(a=y, b=y, compute_data_type=f32)
        s2 = g.reduction(input=sq, mode=cudnn.reduction_mode.ADD, compute_data_type=f32)
        s2.set_output(True).set_data_type(f32).set_dim(dims).set_stride([K, 1, K, K])
        tensors["S1"], tensors["S2"] = s1, s2
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans()
    return g, tensors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()
    import cudnn

    from jdcl_bench.bench import median_time, record_path
    from jdcl_bench.records import atomic_write_bytes, code_version, now

    dev = torch.device("cuda")
    handle = cudnn.create_handle()
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
    gen = torch.Generator(device=dev).manual_seed(0)
    rec = {"created_at": now(), "code_version": code_version(), "gpu_name": torch.cuda.get_device_name(dev),
           "torch": torch.__version__, "cudnn_backend": torch.backends.cudnn.version(),
           "cudnn_frontend": cudnn.__version__, "rows": []}
    path = record_path(args.out, "cudnn-conv-stats", rec["gpu_name"])
    for N, C, K, H in ((args.batch, 128, 128, 32), (args.batch, 256, 256, 16)):
        W = H
        cl = torch.channels_last
        x = torch.randn(N, C, H, W, device=dev, generator=gen).to(torch.bfloat16).contiguous(memory_format=cl)
        w = (torch.randn(K, C, 3, 3, device=dev, generator=gen) * 0.05).to(torch.bfloat16).contiguous(memory_format=cl)
        b = torch.randn(1, K, 1, 1, device=dev, generator=gen)
        r = torch.randn(N, K, H, W, device=dev, generator=gen).to(torch.bfloat16).contiguous(memory_format=cl)
        ref_conv = lambda: F.conv2d(x, w, b.view(-1).to(torch.bfloat16), padding=1)  # noqa: E731
        ms_torch = 1000 * median_time(ref_conv, dev, 3, 20)
        ms_torch_stats = 1000 * median_time(lambda: torch.var_mean(ref_conv().float() + r.float(), dim=(2, 3)),
                                            dev, 3, 20)
        row0 = {"shape": [N, C, K, H, W], "form": "torch conv2d (cuDNN) + bias", "ms": ms_torch,
                "ms_with_separate_stats_and_residual": ms_torch_stats}
        rec["rows"].append(row0)
        print(json.dumps(row0), flush=True)
        y_ref = (F.conv2d(x.float(), w.float(), b.view(-1), padding=1) + r.float())
        for stats in ("", "nk", "k"):
            for residual in (False, True):
                row = {"shape": [N, C, K, H, W], "form": f"cudnn graph conv+bias{'+residual' if residual else ''}"
                       f"{' + sums per ' + ('(sample, channel)' if stats == 'nk' else 'channel') if stats else ''}"}
                try:
                    g, t = build(cudnn, handle, N, C, K, H, W, stats=stats, residual=residual)
                    ws = torch.empty(g.get_workspace_size(), device=dev, dtype=torch.uint8)
                    y = torch.empty(N, K, H, W, device=dev, dtype=torch.bfloat16).contiguous(memory_format=cl)
                    feed = {t["X"]: x, t["W"]: w, t["B"]: b, t["Y"]: y}
                    if residual:
                        feed[t["R"]] = r
                    if stats:
                        shape = (N, K, 1, 1) if stats == "nk" else (1, K, 1, 1)
                        s1 = torch.empty(shape, device=dev)
                        s2 = torch.empty(shape, device=dev)
                        feed[t["S1"]], feed[t["S2"]] = s1, s2
                    run = lambda: g.execute(feed, ws, handle=handle)  # noqa: E731
                    run()
                    torch.cuda.synchronize()
                    yr = y_ref if residual else y_ref - r.float()
                    row["y_rel_err"] = float((y.float() - yr).norm() / yr.norm())
                    if stats:
                        dims = (2, 3) if stats == "nk" else (0, 2, 3)
                        s1r = y.float().sum(dims)
                        s2r = y.float().pow(2).sum(dims)
                        row["sum_rel_err"] = float((s1.view(-1) - s1r.view(-1)).norm() / s1r.norm())
                        row["sqsum_rel_err"] = float((s2.view(-1) - s2r.view(-1)).norm() / s2r.norm())
                    row["ms"] = 1000 * median_time(run, dev, 3, 20)
                    row["engine"] = str(g.get_plan_name_at_index(0)) if hasattr(g, "get_plan_name_at_index") else None
                except Exception as exc:  # a pattern cuDNN does not support: record why
                    row["error"] = f"{type(exc).__name__}: {exc}"[:600]
                    traceback.print_exc(limit=1)
                rec["rows"].append(row)
                print(json.dumps(row), flush=True)
        atomic_write_bytes(path, json.dumps(rec, indent=1).encode())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
