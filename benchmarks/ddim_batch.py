"""DDIM sampling rate of the paper-config joint model against the generation batch size.

``jdcl-bench bench`` times the ε evaluation at the recipe's generation batch (2000 images per
sampler call). The sampler only runs per-sample ops, so how a replay request is split into calls
changes the speed, not the samples. This times one ε evaluation of the optimised path (bf16,
channels_last, compiled with CUDA graphs, eval mode: what ``ddim_sample`` calls 250 times) at
several batch sizes in one process, with each size's GPU time split by kernel kind, so the record
shows whether the element-wise kernels gain when a layer's activations fit in the 50 MB L2 cache.

Usage (GPU): python benchmarks/ddim_batch.py [--batch 128 --batch 2000 ...] [--inductor-option K=V]
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="paper")
    ap.add_argument("--batch", type=int, action="append", help="generation batch sizes (repeatable)")
    ap.add_argument("--steps", type=int, default=250, help="DDIM steps the rate is reported for")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--mode", default="reduce-overhead", help="torch.compile mode")
    ap.add_argument("--inductor-option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--top", type=int, default=12, help="kernels listed per batch size in the record")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    ap.add_argument("--streams", type=int, default=0,
                    help="instead of mode=..., split each batch into this many parts, each a CUDA graph of the "
                         "default-mode compiled model captured on a stream of its own, replayed concurrently")
    ap.add_argument("--triton-norm", choices=("on", "off", "both"), default="on",
                    help="the ResBlock norm steps through triton_norm (on), inductor's kernels (off), or both, "
                         "each batch size timed without it first (its row is '<batch>-no-triton-norm')")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()
    batches = args.batch or [128, 256, 512, 1000, 2000]

    import torch._inductor.config as icfg

    from jdcl_bench.bench import (device_info, flops_per_image, median_time, record_path, trained_looking_model,
                                  unet_config)
    from jdcl_bench.profiling import kernel_breakdown
    from jdcl_bench.jdcl.unet import apply_fast_path
    from jdcl_bench.kernels import FastPath
    from jdcl_bench.records import atomic_write_bytes, code_version, now

    for kv in args.inductor_option:
        key, value = kv.split("=", 1)
        setattr(icfg, key, {"True": True, "False": False}.get(value, value))
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    cfg = unet_config(args.config)
    model = trained_looking_model(cfg).to(dev).to(memory_format=torch.channels_last).eval()
    flops = flops_per_image(cfg, dev)["eps_eval"]
    record = {"created_at": now(), "code_version": code_version(), **device_info(dev),
              "settings": {**vars(args), "batches": batches}, "eps_flops_per_image": flops, "batches": {}}
    path = record_path(args.out, "ddim-batch", record["gpu_name"])
    runs = [(n, tn) for n in batches for tn in {"on": (True,), "off": (False,), "both": (False, True)}[args.triton_norm]]
    for n, tn in runs:
        apply_fast_path(model, FastPath(triton_norm=tn))
        key = str(n) if tn or args.triton_norm == "off" else f"{n}-no-triton-norm"
        torch._dynamo.reset()  # one static-shape graph per size: no dynamic-shape kernels
        x = torch.randn((n, cfg.in_channels, cfg.image_size, cfg.image_size), device=dev)
        t = torch.full((n,), 500, device=dev, dtype=torch.long)
        if args.streams:
            call = concurrent_graphs(model, x, t, args.streams)
        else:
            eps_model = torch.compile(model, mode=args.mode, dynamic=False)

            def call():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return eps_model(x, t)

        t0 = time.perf_counter()
        with torch.no_grad():
            call(), call()
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            sec = median_time(call, dev, 3, args.iters)
        row = {"eps_eval_ms": 1000 * sec, "ddim_images_per_s": n / (sec * args.steps),
               "tflops": n * flops / sec / 1e12, "compile_s": first}
        if not args.no_profile:
            prof = kernel_breakdown(call, no_grad=True, top=args.top)
            row["gpu_ms_per_call"] = prof["gpu_ms_per_call"]
            row["gpu_ms_by_kind"] = prof["gpu_ms_by_kind"]
            row["top_kernels"] = prof["top_kernels"]
        record["batches"][key] = row
        print(f"batch {key:>5}: ε {1000 * sec:8.2f} ms, DDIM-{args.steps} {row['ddim_images_per_s']:6.1f} img/s, "
              f"{row['tflops']:.0f} TFLOP/s" + ("" if args.no_profile else ", GPU ms by kind " + ", ".join(
                  f"{k.split(' ')[0]} {v:.2f}" for k, v in row["gpu_ms_by_kind"].items())), flush=True)
        atomic_write_bytes(path, json.dumps(record, indent=2).encode())  # a stopped sweep keeps what it measured
        del call
    print(f"wrote {path}")



def concurrent_graphs(model, x, t, parts: int):
    """ε of ``x`` as ``parts`` CUDA graphs (one per slice of the batch), each captured on its own
    stream with its own memory pool, replayed on those streams at once: the GPU may run one part's
    memory-bound norm kernels while another part's convolutions run."""
    compiled = torch.compile(model, dynamic=False)
    xs, ts = x.chunk(parts), t.chunk(parts)
    streams = [torch.cuda.Stream() for _ in range(parts)]

    def eps(i):
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return compiled(xs[i], ts[i])

    for s in streams:  # compile and warm up off the capture
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for i in range(parts):
                eps(i)
    torch.cuda.synchronize()
    graphs, outs = [], []
    for i, s in enumerate(streams):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=s):
            outs.append(eps(i))
        graphs.append(g)

    def call():
        cur = torch.cuda.current_stream()
        for g, s in zip(graphs, streams):
            s.wait_stream(cur)
            with torch.cuda.stream(s):
                g.replay()
        for s in streams:
            cur.wait_stream(s)
        return outs

    return call


if __name__ == "__main__":
    main()
