"""The UNet's inference norm step: inductor's two kernels against triton_norm's one, per shape.

One norm-activation step as DDIM sampling runs it (no grad, bf16, channels_last, batch 2000):
the preceding convolution's bias added, GroupNorm, FiLM, SiLU, bf16 out. Timed for every map
shape of the paper config's ResBlocks at 16x16 and 8x8 (the maps triton_norm takes):

- ``compiled``: ``unet.norm_act`` under torch.compile, what the UNet ran before triton_norm
  (a statistics reduction over the map, then an element-wise pass that reads it again);
- ``triton SLICE/NUM_WARPS``: :func:`triton_norm.norm_act`, one program per (sample, channel
  slice), the slice held in registers (read once), in several slice sizes and warp counts;
- ``copy``: a compiled read and write of the same bytes, the memory roofline.

Usage (GPU): python benchmarks/norm_act_infer.py [--out results/bench]
"""
from __future__ import annotations

import argparse
import json

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--maps", default="128@16,256@16,512@16,384@16,256@8,512@8",
                    help="channels@size of the maps to time, comma-separated")
    ap.add_argument("--slices", default="4096,8192,16384", help="SLICE values (values per program) to try")
    ap.add_argument("--warps", default="4,8")
    ap.add_argument("--compact", choices=("off", "on", "both"), default="off",
                    help="also (or only) hold the slice in bf16 (triton_norm.COMPACT)")
    ap.add_argument("--maxnreg", default="0", help="register caps to try (0 = none), comma-separated")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()

    from jdcl_bench.bench import median_time, record_path
    from jdcl_bench.jdcl import triton_norm
    from jdcl_bench.jdcl.unet import GroupNorm, norm_act
    from jdcl_bench.records import atomic_write_bytes, code_version, now

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    B = args.batch
    rec = {"created_at": now(), "code_version": code_version(), "gpu_name": torch.cuda.get_device_name(dev),
           "torch": torch.__version__, "batch": B, "rows": []}
    path = record_path(args.out, "norm-act", rec["gpu_name"])
    maps = [tuple(int(v) for v in m.split("@")) for m in args.maps.split(",")]
    triton_norm.MAX_HW = max(triton_norm.MAX_HW, max(S * S for _, S in maps))  # let 32x32 maps through
    compacts = {"off": (False,), "on": (True,), "both": (False, True)}[args.compact]
    for C, S in maps:
        n = GroupNorm(32, C).to(dev)
        with torch.no_grad():
            n.weight.normal_(1, 0.2, generator=g), n.bias.normal_(0, 0.2, generator=g)
        x = (torch.randn(B, C, S, S, device=dev, generator=g) * 2 + 0.5).to(torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)
        xb = torch.randn(C, device=dev, generator=g)
        sc = (torch.randn(B, C, device=dev, generator=g) * 0.1).to(torch.bfloat16)
        sh = (torch.randn(B, C, device=dev, generator=g) * 0.1).to(torch.bfloat16)
        nbytes = 2 * x.numel() * x.element_size()

        def reference(x, xb, sc, sh):
            return norm_act(n, x + xb[:, None, None], sc, sh).to(torch.bfloat16)

        with torch.no_grad():
            ref32 = norm_act(n, x.float() + xb[:, None, None], sc.float(), sh.float())
            forms = {"copy": torch.compile(lambda x, xb, sc, sh: x * 1), "compiled": torch.compile(reference)}
            for slice_ in map(int, args.slices.split(",")):
                for nw in map(int, args.warps.split(",")):
                    for compact in compacts:
                        for mr in map(int, args.maxnreg.split(",")):
                            def mine(x, xb, sc, sh, cfg=(slice_, nw, compact, mr or None)):
                                (triton_norm.SLICE, triton_norm.NUM_WARPS, triton_norm.COMPACT,
                                 triton_norm.MAXNREG) = cfg
                                return triton_norm.norm_act(n, x, sc, sh, x_bias=xb)
                            forms[f"triton {slice_}/{nw}" + (" bf16" if compact else "") + (f" r{mr}" if mr else "")] = mine
            for name, fn in forms.items():
                try:
                    out = fn(x, xb, sc, sh)
                except ValueError as exc:  # a width the kernel does not split (12-channel groups)
                    print(json.dumps({"shape": [B, C, S, S], "form": name, "error": str(exc)}), flush=True)
                    continue
                ms = 1000 * median_time(lambda: fn(x, xb, sc, sh), dev, 3, 20)
                row = {"shape": [B, C, S, S], "form": name, "ms": ms, "GBps_2x_bytes": nbytes / ms / 1e6,
                       "max_abs_err_vs_fp32": None if name == "copy" else float((out.float() - ref32).abs().max())}
                rec["rows"].append(row)
                print(json.dumps(row), flush=True)
        atomic_write_bytes(path, json.dumps(rec, indent=1).encode())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
