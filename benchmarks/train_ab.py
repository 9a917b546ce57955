"""Training step of the paper config: the current UNet code against another version's unet.py.

A rate measured on one machine cannot be compared with one from another (H100s of one kind
differ by a few percent, results/bench/). This builds the joint model from the current
``jdcl_bench/jdcl/unet.py`` and from another file (e.g. an older commit's, via ``git show``),
with the same weights and batch, and times the training step of ``jdcl-bench bench``'s CUDA-graph
path (``bench.Path``: bf16 autocast, channels_last, fused AdamW, ``torch.compile(mode=
"reduce-overhead")``; forward_joint, ε and classifier losses, backward, optimizer step, EMA)
for both alternately in one process: A, B, A, B.

Usage (GPU): git show e760edd:jdcl_bench/jdcl/unet.py > /tmp/unet_old.py
             python benchmarks/train_ab.py --other /tmp/unet_old.py --label e760edd
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time

import torch


def load_module(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the file runs
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--other", required=True, help="path of the other unet.py")
    ap.add_argument("--label", default="other")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()

    from jdcl_bench.bench import Path as BenchPath
    from jdcl_bench.bench import (batch_for, device_info, median_time, record_path, trained_looking_model,
                                  unet_config)
    from jdcl_bench.jdcl import unet as current
    from jdcl_bench.records import atomic_write_bytes, code_version, now

    dev = torch.device("cuda")
    cfg = unet_config("paper")
    state = trained_looking_model(cfg).state_dict()
    batch = batch_for(cfg, args.batch, dev)
    versions = {"current": current, args.label: load_module(args.other, "unet_other")}
    steps, compile_s = {}, {}
    for name, mod in versions.items():
        t0 = time.perf_counter()
        bench_path = BenchPath(cfg, state, dev, optimised=True, compile=True, mode="reduce-overhead",
                               model_cls=mod.JointUNet)
        steps[name] = lambda p=bench_path: p.train_step(batch)
        steps[name](), steps[name]()
        torch.cuda.synchronize()
        compile_s[name] = time.perf_counter() - t0
        print(f"{name}: compiled in {compile_s[name]:.0f} s", flush=True)
    rounds = []
    for r in range(2):
        for name in versions:
            sec = median_time(steps[name], dev, 3, args.iters)
            rounds.append({"round": r, "version": name, "ms_per_step": 1000 * sec, "images_per_s": args.batch / sec})
            print(json.dumps(rounds[-1]), flush=True)
    record = {"created_at": now(), "code_version": code_version(), **device_info(dev),
              "settings": {**vars(args), "config": "paper"}, "compile_s": compile_s, "rounds": rounds}
    path = record_path(args.out, "train-ab", record["gpu_name"])
    atomic_write_bytes(path, json.dumps(record, indent=2).encode())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
