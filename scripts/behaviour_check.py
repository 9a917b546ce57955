"""Did a refactor change what the suite computes? Run every built-in method and baseline on
digits-t5 (embedded, CPU, `smoke` preset, seed 0, one thread) and compare their metrics with the
values recorded before the change, exactly.

    python scripts/behaviour_check.py --record   # before the change: writes the reference file
    python scripts/behaviour_check.py            # after it: exit 1 on any difference

CPU float results depend on the machine's instruction set and torch build, so the reference is
only meaningful on the machine that recorded it (the file says which); this is a check to run
around a refactor, not a CI test. Each run goes to a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ["finetune", "joint", "jdcl", "nncsl", "guide", "dgr", "gfr"]
# the replay diagnostics (Fréchet distances, fidelity) move with any change to a generator's weights
KEYS = ["tasks_done", "acc_matrix", "seen_acc", "final_acc", "avg_acc", "avg_inc_acc", "forgetting", "diagnostics"]
# At `smoke` the generative methods predict one class per task on digits, so their accuracies would
# hide a change: their replay diagnostics are compared too, and JDCL runs its short-budget options.
EXTRA = {"jdcl": ["diagnostics=true", "sampler_clip_x0=true", "global_ema_restart=true", "local_init=global"],
         "dgr": ["diagnostics=true"], "guide": ["diagnostics=true"]}
DEFAULT_REF = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "behaviour" / "digits-t5-smoke.json"


def run_method(method: str, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "jdcl_bench.cli", "run", "--protocol", "digits-t5", "--method", method,
           "--preset", "smoke", "--seed", "0", "--device", "cpu", "--out", str(out)]
    cmd += [a for kv in EXTRA.get(method, []) for a in ("--set", kv)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{method}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    [metrics] = list(out.rglob("metrics.json"))
    m = json.loads(metrics.read_text())
    return {k: m.get(k) for k in KEYS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", action="store_true", help="write the reference file instead of comparing")
    ap.add_argument("--ref", type=Path, default=DEFAULT_REF)
    ap.add_argument("--method", action="append", help="only these methods (default: all)")
    ap.add_argument("--why", help="with --record --method: why these methods' reference changes (kept in the file)")
    args = ap.parse_args()
    methods = args.method or METHODS
    got, seconds = {}, {}
    for method in methods:
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            got[method] = run_method(method, Path(tmp))
        seconds[method] = round(time.time() - t0, 1)
        print(f"{method:10s} final {got[method]['final_acc']:.4f}  ({seconds[method]} s)", flush=True)
    if args.record:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        if args.method and args.ref.exists():
            # a deliberate change of some methods' results: only their entries are replaced, with why
            if not args.why:
                raise SystemExit("--record --method replaces part of the reference: say why with --why")
            ref = json.loads(args.ref.read_text())
            ref["metrics"].update(got)
            ref.setdefault("rerecorded", {}).update({m: {"after_commit": commit, "why": args.why} for m in got})
            args.ref.write_text(json.dumps(ref, indent=1) + "\n")
            print(f"replaced {', '.join(got)} in {args.ref}")
            return
        args.ref.parent.mkdir(parents=True, exist_ok=True)
        args.ref.write_text(json.dumps({"recorded_at_commit": commit, "machine": platform.platform(),
                                        "cpu": platform.processor() or platform.machine(),
                                        "metrics": got}, indent=1) + "\n")
        print(f"wrote {args.ref}")
        return
    ref = json.loads(args.ref.read_text())
    bad = [m for m in methods if ref["metrics"].get(m) != got[m]]
    for m in bad:
        print(f"DIFFERS: {m}\n  reference {ref['metrics'].get(m)}\n  now       {got[m]}")
    again = {m: v["after_commit"] for m, v in ref.get("rerecorded", {}).items() if m in methods}
    print(f"{len(methods) - len(bad)}/{len(methods)} methods identical to the reference of commit "
          f"{ref['recorded_at_commit']}" + "".join(f"; {m} recorded again after {c}" for m, c in again.items()))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
