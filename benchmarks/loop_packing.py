"""What packing buys: N copies of one method's training loop side by side on one GPU, N = 1, 2, 4, ...

The suite's runs keep their GPU busy only part of the time (JDCL's local stage 70 %, NNCSL's loop
about two thirds of its bare step: results/bench/README.md), so several runs on one GPU may finish
more work per GPU-minute than one. This measures it on the loops themselves, without data or whole
runs: for each N it starts N processes of ``jdcl-bench bench --loop --method M --config PRESET`` at
once, which compile on their own and then wait for each other at the start of every timed window
(``jdcl_bench.loop_bench.packing_barrier``), so the N windows run together. Per stage it records
each process's loop rate and two totals:

- ``total_steps_per_s``: the sum of the N rates (each process's steps over its own window);
- ``total_steps_per_s_bound``: all steps over the slowest window (a lower bound: the faster
  processes stop first and leave the GPU to the others);

and ``speedup``, the total against N = 1's rate of the same stage in the same record. What a whole
run gains is less where it has work that is not one of these loops (replay generation, evaluation,
compilation, which packed processes do at the same time on the host's cores).

    python benchmarks/loop_packing.py --method nncsl --config paper --semi --ns 1,2,4
    python benchmarks/loop_packing.py --method jdcl --config standard --ns 1,2
    python benchmarks/loop_packing.py --method dgr --config fast --settings benchmarks/candidates/dgr-standard.toml

Each N runs in a command of its own if the device's command limit is near (``--ns 4``); the record
(``results/bench/loop-packing-<method>-<preset>-<GPU>-<time>.json``) is rewritten after every N, and
each process's output is kept beside it in the work folder. CPU smoke (not a measurement):
``--device cpu --config smoke --iters 2 --warmup 1 --ns 1,2``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def totals(runs: list[dict]) -> list[dict]:
    """Per stage, the N processes' loop rates and their totals (see the module docstring). ``runs``:
    each process's ``runs[0]`` of its loop bench record."""
    out = []
    for i, stage in enumerate(runs[0]["stages"]):
        rates = [r["stages"][i]["loop_steps_per_s"] for r in runs]
        steps = [r["stages"][i]["steps"] for r in runs]
        window = max(n / rate for n, rate in zip(steps, rates))
        out.append({"stage": stage["stage"], "images_per_step": stage["images_per_step"], "rates": rates,
                    "total_steps_per_s": sum(rates), "total_steps_per_s_bound": sum(steps) / window,
                    "bare_steps_per_s": [r["stages"][i]["bare_steps_per_s"] for r in runs]})
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="jdcl")
    ap.add_argument("--config", default="fast", help="the method's preset")
    ap.add_argument("--semi", action="store_true", help="the semi-supervised loop (JDCL's FixMatch stage, NNCSL)")
    ap.add_argument("--settings", default=None, metavar="FILE.toml",
                    help="the preset's fields changed by a settings file, e.g. benchmarks/candidates/dgr-standard.toml")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--ns", default="1,2,4", help="processes side by side, one pass each")
    ap.add_argument("--iters", type=int, default=200, help="timed steps of each loop")
    ap.add_argument("--warmup", type=int, default=25)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--timeout", type=float, default=560, help="seconds a pass may take (its processes are then stopped)")
    ap.add_argument("--work-dir", default=".loop-packing", help="each process's record and output (emptied first)")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args(argv)

    from jdcl_bench.bench import device_info
    from jdcl_bench.loop_bench import BARRIER_ENV, BARRIER_N_ENV
    from jdcl_bench.records import atomic_write_bytes, code_version, now, safe_name
    from jdcl_bench.runner import resolve_device

    ns = [int(n) for n in args.ns.split(",") if n.strip()]
    if not ns or min(ns) < 1:
        ap.error(f"--ns takes positive counts, got {args.ns!r}")
    device = resolve_device(args.device)
    record = {"created_at": now(), "code_version": code_version(), **device_info(device),
              "settings": {**vars(args), "ns": ns}, "complete": False, "passes": {}}
    gpu = safe_name(record.get("gpu_name", device.type))
    tag = args.config + (f"+{Path(args.settings).stem}" if args.settings else "") + ("+set" if args.sets else "")
    out = Path(args.out) / f"loop-packing-{args.method}-{safe_name(tag, '-')}-{gpu}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "jdcl_bench.cli", "bench", "--loop", "--method", args.method, "--config", args.config,
           "--device", args.device, "--iters", str(args.iters), "--warmup", str(args.warmup)]
    if args.semi:
        cmd.append("--semi")
    if args.settings:
        cmd += ["--settings", args.settings]
    cmd += [a for kv in args.sets for a in ("--set", kv)]
    for n in ns:
        work = Path(args.work_dir) / f"n{n}"
        shutil.rmtree(work, ignore_errors=True)
        (work / "barrier").mkdir(parents=True)
        env = {**os.environ, BARRIER_ENV: str(work / "barrier"), BARRIER_N_ENV: str(n)}
        t0 = time.time()
        procs = []
        for i in range(n):
            (work / str(i)).mkdir()
            log = open(work / f"{i}.log", "w")
            procs.append((subprocess.Popen([*cmd, "--out", str(work / str(i))], stdout=log, stderr=subprocess.STDOUT,
                                           env=env), log))
        for p, log in procs:
            try:
                p.wait(timeout=max(1.0, args.timeout - (time.time() - t0)))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            log.close()
        runs, problems = [], []
        for i, (p, _) in enumerate(procs):
            recs = sorted((work / str(i)).glob("loop*.json"))
            said = (work / f"{i}.log").read_text(errors="replace")
            if p.returncode != 0 or not recs:
                problems.append(f"process {i}: exit {p.returncode}, {'no record' if not recs else 'record'}; see {work / f'{i}.log'}")
                continue
            if "timed out" in said:
                problems.append(f"process {i}: a barrier timed out (its windows were not all timed together)")
            runs.append(json.loads(recs[-1].read_text())["runs"][0])
        row = {"processes": n, "wall_s": time.time() - t0, "problems": problems}
        if runs and not problems:
            row["stages"] = totals(runs)
            base = record["passes"].get("1", {}).get("stages")
            for s in row["stages"]:
                one = next((b["total_steps_per_s"] for b in base or [] if b["stage"] == s["stage"]), None)
                s["speedup"] = s["total_steps_per_s"] / one if one else None
                print(f"N={n} {s['stage']:10s} total {s['total_steps_per_s']:.2f} steps/s "
                      f"(at least {s['total_steps_per_s_bound']:.2f}), each {min(s['rates']):.2f}-{max(s['rates']):.2f}"
                      + (f", {s['speedup']:.2f}x one process" if s["speedup"] else ""), flush=True)
        else:
            print(f"N={n}: not measured: {'; '.join(problems) or 'no process wrote a record'}", flush=True)
        record["passes"][str(n)] = row
        atomic_write_bytes(out, json.dumps(record, indent=2).encode())
    record["complete"] = True
    atomic_write_bytes(out, json.dumps(record, indent=2).encode())
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
