"""Total throughput of a sweep packed N cells per GPU (``jdcl-bench sweep --per-gpu N``), N = 1, 2, 4, 8.

Small models leave most of a GPU idle, so cells side by side finish more work per GPU-hour until
they contend for it. For each N this runs the same grid of cells (``--cells`` seeds of each method
x protocol) into a fresh folder of its own, through the packed executor (every N, 1 included, as
``jdcl-bench run`` subprocesses, so process start-up costs the same everywhere), and records:

- ``wall_s``: the grid's wall time; ``cells_per_hour``; ``speedup`` against N = 1 (the ratio of
  wall times for the same grid);
- each cell's own wall time (``manifest.json``), so the per-cell slowdown from sharing shows, and
  its status (a cell that did not finish makes the row's throughput meaningless: it is marked);
- the ``gpu_shared_by`` its manifest records.

The record goes to ``results/bench/sweep-packing-<GPU>-<time>.json`` and is rewritten after every N
(``"complete": false`` until the end). One command on the device machines may run 10 minutes: pick
a grid whose N = 1 pass fits (or pass one N per command, ``--ns 8``; each writes its own record).

    python benchmarks/sweep_packing.py --methods finetune --protocols cifar10-t5 --preset fast \\
        --data-dir .data/cifar10-jpeg --cells 8 --ns 1,2,4,8

CPU smoke (not a measurement): ``--device cpu --methods finetune --protocols synthetic-t2 --preset
smoke --cells 2 --ns 1,2``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="finetune")
    ap.add_argument("--protocols", default="cifar10-t5")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--cells", type=int, default=8, help="seeds 0..cells-1 of each method x protocol")
    ap.add_argument("--ns", default="1,2,4,8", help="cells side by side per GPU, one pass each")
    ap.add_argument("--gpus", default=None, help="CUDA_VISIBLE_DEVICES values to pin to (default: one GPU, "
                                                 "the first)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--time-limit", type=float, default=None, help="per cell (a cell stopped by it is marked)")
    ap.add_argument("--work-dir", default=".sweep-packing", help="the runs of each pass (emptied first)")
    ap.add_argument("--keep", action="store_true", help="keep the runs (default: delete each pass's folder after it)")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args(argv)

    import torch

    from jdcl_bench.bench import device_info
    from jdcl_bench.config import parse_set
    from jdcl_bench.records import atomic_write_bytes, code_version, now, read_json
    from jdcl_bench.runner import resolve_device
    from jdcl_bench.sweep import PackOptions, SweepSpec, plan, run_packed, split_list, validate

    ns = [int(n) for n in split_list(args.ns)]
    gpus = split_list(args.gpus) if args.gpus else None
    if gpus is None and args.device != "cpu" and torch.cuda.is_available():
        gpus = ["0"]  # one GPU: what "N per GPU" is about
    device = resolve_device(args.device if not gpus else "cuda")
    record = {"created_at": now(), "code_version": code_version(), **device_info(device),
              "settings": {**vars(args), "ns": ns, "gpus": gpus}, "complete": False, "passes": {}}
    name = record.get("gpu_name", device.type).replace(" ", "_")
    out = Path(args.out) / f"sweep-packing-{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    base_wall = None
    for n in ns:
        work = Path(args.work_dir) / f"per-gpu-{n}"
        if work.exists():
            shutil.rmtree(work)
        spec = SweepSpec(methods=split_list(args.methods), protocols=split_list(args.protocols),
                         seeds=list(range(args.cells)), preset=args.preset, overrides=parse_set(args.sets),
                         data_dir=args.data_dir, out=str(work), device="auto" if gpus else args.device,
                         time_limit_s=args.time_limit)
        validate(spec)
        todo = [(cell, cfg) for cell, cfg, done in plan(spec) if done is None]
        print(f"--- {n} per GPU: {len(todo)} cells")
        t0 = time.time()
        results = run_packed(todo, PackOptions(per_gpu=n, gpus=gpus), work, log=print)
        wall = time.time() - t0
        cells = []
        for r in results:
            row = {"cell": str(r.cell), "status": r.status, "error": r.error,
                   "subprocess_s": (r.ended_at - r.started_at) if r.started_at and r.ended_at else None}
            manifest = Path(r.run_dir or "") / "manifest.json"
            if r.run_dir and manifest.is_file():
                m = read_json(manifest)
                row.update(wall_time_s=m.get("wall_time_s"), gpu_shared_by=m.get("gpu_shared_by"),
                           budget=m.get("budget"))
            cells.append(row)
        done = sum(r.status == "done" for r in results)
        base_wall = base_wall if base_wall is not None else (wall if n == ns[0] and n == 1 else None)
        per_cell = [c["wall_time_s"] for c in cells if c.get("wall_time_s")]
        record["passes"][str(n)] = {
            "per_gpu": n, "cells": len(results), "done": done, "all_done": done == len(results), "wall_s": wall,
            "cells_per_hour": 3600 * done / wall if wall > 0 else None,
            "speedup_vs_1": (base_wall / wall) if base_wall and done == len(results) else None,
            "mean_cell_wall_s": sum(per_cell) / len(per_cell) if per_cell else None, "per_cell": cells}
        p = record["passes"][str(n)]
        print(f"{n} per GPU: {done}/{len(results)} done in {wall:.0f}s, {p['cells_per_hour']:.1f} cells/h, "
              f"mean cell {p['mean_cell_wall_s'] or float('nan'):.0f}s"
              + (f", {p['speedup_vs_1']:.2f}x N=1" if p["speedup_vs_1"] else ""))
        atomic_write_bytes(out, json.dumps(record, indent=1, default=str).encode())
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    record["complete"] = True
    atomic_write_bytes(out, json.dumps(record, indent=1, default=str).encode())
    print(f"record: {out}")
    record["path"] = str(out)
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
