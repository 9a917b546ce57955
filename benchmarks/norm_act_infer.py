"""The UNet's inference norm step: inductor's two kernels against triton_norm's one, per shape.

One norm-activation step as DDIM sampling runs it (no grad, bf16, channels_last, batch 2000):
the preceding convolution's bias added, GroupNorm, FiLM, SiLU, bf16 out. Timed for map shapes of
the paper config's ResBlocks (``--maps``):

- ``compiled``: ``kernels.norm_act`` under torch.compile, what the UNet runs where triton_norm does
  not (a statistics reduction over the map, then an element-wise pass that reads it again);
- ``triton LANES/WARPS``: :func:`triton_norm.norm_act`, one program per (sample, LANES channels),
  the slice held in registers (read once), for each slice width and warp count asked for
  (``triton_norm.LAUNCH`` holds the chosen ones);
- ``copy``: a compiled read and write of the same bytes, the memory roofline.

(The record ...T124207 was made by this script's form at 7b1410b, with ``--slices`` in values per
program and two switches since removed.)

Usage (GPU): python benchmarks/norm_act_infer.py [--maps 128@32,256@16] [--lanes 16,32] [--warps 4,8]
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
    ap.add_argument("--lanes", default="16,32,64", help="channels per program to try, comma-separated")
    ap.add_argument("--warps", default="4,8")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()

    from jdcl_bench.bench import median_time, record_path
    from jdcl_bench.kernels import triton_norm
    from jdcl_bench.jdcl.unet import GroupNorm
    from jdcl_bench.kernels.norm_act import norm_act
    from jdcl_bench.records import atomic_write_bytes, code_version, now

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    B = args.batch
    rec = {"created_at": now(), "code_version": code_version(), "gpu_name": torch.cuda.get_device_name(dev),
           "torch": torch.__version__, "batch": B, "rows": []}
    path = record_path(args.out, "norm-act", rec["gpu_name"])
    maps = [tuple(int(v) for v in m.split("@")) for m in args.maps.split(",")]
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
            for lanes in map(int, args.lanes.split(",")):
                for nw in map(int, args.warps.split(",")):
                    def mine(x, xb, sc, sh, launch=(lanes, nw), hw=S * S):
                        triton_norm.LAUNCH[hw] = launch
                        return triton_norm.norm_act(n, x, sc, sh, x_bias=xb)
                    forms[f"triton {lanes}/{nw}"] = mine
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
