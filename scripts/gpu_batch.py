"""Run several jdcl-bench runs side by side on one GPU machine inside one time-limited command.

Small models leave most of an H100 idle, so chains of runs share the GPU as parallel processes.
Each run gets ``--time-limit`` = what is left of the deadline, so a run that cannot finish stops
cleanly with its checkpoint and the same command resumes it. Every run's manifest carries a note
saying how many runs shared the GPU: its GPU-seconds are wall-clock seconds on a shared device.

    python scripts/gpu_batch.py --deadline 520 --out .gpu-runs --data-dir .data/cifar10-jpeg \
        --chain cifar10-t5:dgr:fast,cifar10-t5:guide:fast --chain cifar10-t5:gfr:fast

At the end the records (everything but checkpoints and shared generator caches) are packed into
``$OUT/runs.tar.gz`` when ``$OUT`` is set, and a one-line status per run is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path


def run_chain(chain: list[str], args, t0: float, n_parallel: int, status: dict) -> None:
    for spec in chain:
        protocol, method, preset, *rest = spec.split(":")
        seed = rest[0] if rest else "0"
        sets = [kv for kv in (rest[1].split(";") if len(rest) > 1 else []) if kv]
        left = args.deadline - (time.time() - t0)
        if left < args.min_start:
            status[spec] = "not started (deadline)"
            continue
        # one chain: the run had the GPU to itself (records before 2026-12-06 said "one of 1 parallel chains")
        note = ("ran alone on the GPU (scripts/gpu_batch.py, one chain)" if n_parallel == 1 else
                f"ran as one of {n_parallel} parallel chains of runs sharing one GPU (scripts/gpu_batch.py); "
                f"GPU-seconds are shared wall time")
        env = {**os.environ, "JDCL_BENCH_RUN_NOTE": note, "JDCL_BENCH_GPU_SHARED_BY": str(n_parallel)}
        log_dir = Path(args.out) / "_logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        tag = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in "+".join(sets))[:80]
        name = Path(protocol).stem
        log = log_dir / f"{name}__{method}__{preset}__seed{seed}{'__' + tag if tag else ''}__{int(time.time())}.log"
        cmd = [sys.executable, "-m", "jdcl_bench.cli", "run", "--protocol", protocol, "--method", method,
               "--preset", preset, "--seed", seed, "--out", args.out, "--data-dir", args.data_dir,
               "--time-limit", f"{left:.0f}"] + [a for kv in sets for a in ("--set", kv)]
        if args.stop_between_tasks:
            cmd.append("--stop-between-tasks")
        with open(log, "w") as fh:
            rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        tail = log.read_text().strip().splitlines()[-1:] or [""]
        status[spec] = f"rc={rc} {tail[0][:160]}"
        if rc != 0:
            break  # a later run of the chain may depend on this one (GUIDE on DGR's generators)


def bring_checkpoints(out: Path, dest: Path, part_bytes: int = 15 * 2**20) -> None:
    """Split each unfinished run's checkpoint into parts the device machine can return."""
    for ckpt in sorted(out.rglob("checkpoint.pt")):
        metrics = ckpt.parent / "metrics.json"
        if metrics.is_file():
            d = json.loads(metrics.read_text())
            if d.get("tasks_done") == d.get("num_tasks"):
                continue
        data = ckpt.read_bytes()
        name = "__".join(ckpt.parent.relative_to(out).parts[-4:])  # protocol__method__preset__seed
        # the device returns only names of letters, digits, '.', '_' and '-': "fast+e35c90d1" (a preset
        # with overrides) would be left behind, so other characters become '-'; the line below says
        # which run each file belongs to
        name = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in name)
        for i in range(0, len(data), part_bytes):
            (dest / f"ckpt-{name}.pt.part{i // part_bytes:02d}").write_bytes(data[i:i + part_bytes])
        print(f"checkpoint {ckpt} ({len(data) / 2**20:.1f} MB) returned as ckpt-{name}.pt.part* "
              f"({-(-len(data) // part_bytes)} part(s))")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chain", action="append", required=True,
                    help="comma-separated protocol:method:preset[:seed[:key=value;key=value]] (the last part: --set overrides)")
    ap.add_argument("--deadline", type=float, default=520, help="seconds from now by which every run stops")
    ap.add_argument("--out", default=".gpu-runs")
    ap.add_argument("--data-dir", default=".data/cifar10-jpeg")
    ap.add_argument("--min-start", type=float, default=30,
                    help="seconds that must be left to start (or resume) a run; with --stop-between-tasks a run "
                         "always finishes the task it starts, so give it at least one task's length")
    ap.add_argument("--stop-between-tasks", action="store_true",
                    help="pass --stop-between-tasks to every run: a run stops only between tasks, leaving the small "
                         "between-task checkpoint")
    ap.add_argument("--bring-checkpoints", action="store_true",
                    help="with $OUT set: also return the checkpoint of every unfinished run, split into parts under "
                         "16 MB ($OUT/ckpt-<protocol>__<method>__<preset>__<seed>.pt.partNN; `cat` them back together), in case the machine goes cold")
    args = ap.parse_args()
    t0 = time.time()
    chains = [c.split(",") for c in args.chain]
    specs = [s for c in chains for s in c]
    if len(set(specs)) != len(specs):  # the run lock would stop the second copy mid-batch; say it up front
        dup = sorted({s for s in specs if specs.count(s) > 1})
        ap.error(f"run(s) listed twice: {', '.join(dup)}; name each run once")
    status: dict[str, str] = {}
    threads = [threading.Thread(target=run_chain, args=(c, args, t0, len(chains), status)) for c in chains]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for spec in specs:
        print(f"{spec:40s} {status.get(spec, '?')}")
    for m in sorted(Path(args.out).rglob("metrics.json")):
        d = json.loads(m.read_text())
        print(f"{str(m.parent):60s} tasks {d['tasks_done']}/{d['num_tasks']} final {d.get('final_acc', float('nan')):.2f}")
    if os.environ.get("OUT"):
        with tarfile.open(Path(os.environ["OUT"]) / "runs.tar.gz", "w:gz") as tf:
            tf.add(args.out, arcname="runs",
                   filter=lambda ti: None if ti.name.endswith((".pt", ".lock")) or "/shared" in ti.name else ti)
        if args.bring_checkpoints:
            bring_checkpoints(Path(args.out), Path(os.environ["OUT"]))
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
