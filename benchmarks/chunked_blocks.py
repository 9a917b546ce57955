"""The 32x32 stages of the ε evaluation run whole-batch against chunk by chunk.

At the recipe's generation batch (2000) a 32x32 map of 128 channels is 524 MB, so every pass of a
norm step (statistics read, normalise read + write, convolution read) goes to memory. Run a stage
on a chunk of samples at a time and one map is a few MB: the second read of the norm step and the
convolution's read of the activated map could come from the 50 MB L2 cache instead. This times
the paper model's two 32x32 stages both ways in one process (eval mode, bf16, channels_last,
compiled with CUDA graphs, as the sampler runs them):

- encoder: the three 128-channel ResBlocks after conv_in (all three outputs are kept: the decoder
  reads them);
- decoder: the four top-level ResBlocks (inputs 384 or 256 channels: the running map concatenated
  with a skip) and the output norm + convolution.

Usage (GPU): python benchmarks/chunked_blocks.py [--chunk 250 --chunk 125 ...]
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def encoder_stage(blocks):
    def run(h, emb):
        outs = []
        for b in blocks:
            h = b(h, emb)
            outs.append(h)
        return outs
    return run


def decoder_stage(blocks, out_fn):
    from jdcl_bench.jdcl.unet import cat_channels

    def run(h, skips, emb):
        for b, s in zip(blocks, skips):
            h = b(cat_channels(h, s), emb)
        return out_fn(h)
    return run


def chunked(run, chunk: int):
    """``run`` over slices of the batch (dim 0 of every tensor argument), outputs joined again."""
    def call(*args):
        n = args[0].shape[0]
        parts = []
        for i in range(0, n, chunk):
            sl = [[a[i:i + chunk] for a in x] if isinstance(x, list) else x[i:i + chunk] for x in args]
            parts.append(run(*sl))
        if isinstance(parts[0], list):
            return [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))]
        return torch.cat(parts)
    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--chunk", type=int, action="append", help="samples per chunk (repeatable)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()
    chunks = [args.batch] + (args.chunk or [250, 125, 80, 50])

    from jdcl_bench.bench import (device_info, kernel_breakdown, median_time, record_path, trained_looking_model,
                                  unet_config)
    from jdcl_bench.jdcl.unet import norm_act
    from jdcl_bench.records import atomic_write_bytes, code_version, now

    dev = torch.device("cuda")
    cfg = unet_config("paper")
    model = trained_looking_model(cfg).to(dev).to(memory_format=torch.channels_last).eval()
    n, cl = args.batch, torch.channels_last
    gen = torch.Generator(device=dev).manual_seed(0)

    def rand(c):
        return torch.randn((n, c, 32, 32), device=dev, generator=gen, dtype=torch.bfloat16).contiguous(memory_format=cl)

    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        emb = model._emb(torch.full((n,), 500, device=dev, dtype=torch.long))
    enc_blocks = [model.input_blocks[i] for i in range(cfg.num_res_blocks)]
    dec_blocks = list(model.output_blocks)[-(cfg.num_res_blocks + 1):]
    out = model.out
    stages = {
        "encoder": (encoder_stage(enc_blocks), (rand(128), emb)),
        "decoder": (decoder_stage(dec_blocks, lambda h: out[2](norm_act(out[0], h))),
                    (rand(256), [rand(128) for _ in dec_blocks], emb)),
    }
    record = {"created_at": now(), "code_version": code_version(), **device_info(dev),
              "settings": {**vars(args), "chunks": chunks}, "stages": {}}
    path = record_path(args.out, "chunked-blocks", record["gpu_name"])
    for stage, (run, inputs) in stages.items():
        ref = None
        for c in chunks:
            torch._dynamo.reset()
            fn = torch.compile(run if c >= n else chunked(run, c), mode="reduce-overhead", dynamic=False)

            def call():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return fn(*inputs)

            t0 = time.perf_counter()
            with torch.no_grad():
                y = call()
                y = [v.float() for v in y] if isinstance(y, list) else [y.float()]
                call()
                torch.cuda.synchronize()
                first = time.perf_counter() - t0
                sec = median_time(call, dev, 3, args.iters)
            # the same arithmetic per sample: chunks must agree with the whole batch to bf16 rounding
            ref = ref or y
            diff = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(y, ref))
            row = {"ms_per_call": 1000 * sec, "compile_s": first, "max_rel_diff_vs_whole": diff}
            if args.profile:
                prof = kernel_breakdown(call, no_grad=True, top=8)
                row["gpu_ms_by_kind"] = prof["gpu_ms_by_kind"]
                row["top_kernels"] = prof["top_kernels"]
            record["stages"].setdefault(stage, {})[str(c)] = row
            print(f"{stage} chunk {c:5d}: {1000 * sec:7.2f} ms (compiled in {first:.0f} s, diff {diff:.1e})"
                  + ("" if not args.profile else "  " + ", ".join(
                      f"{k.split(' ')[0]} {v:.2f}" for k, v in row["gpu_ms_by_kind"].items())), flush=True)
            atomic_write_bytes(path, json.dumps(record, indent=2).encode())
            del fn, call, y
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
