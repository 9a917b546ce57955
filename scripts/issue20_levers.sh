#!/usr/bin/env bash
# The JDCL budget issue's next measurement, one device command: the levers that act on the local
# generator, each one change to `fast`, on the two-task probe (benchmarks/protocols/cifar10-first2.toml),
# as parallel runs sharing the GPU. They compare replay fidelity and accuracy, not minutes (their
# manifests say the GPU was shared); a lever that pays is then sized on cifar10-t5 alone on the GPU.
#
#   bash scripts/issue20_levers.sh            # on the device, from the repository root
#   DEADLINE=540 DATA=.data/cifar10-jpeg OUT=$OUT bash scripts/issue20_levers.sh
#
# Why these (results/probes/jdcl-cifar10-t5-levers/README.md): on cifar10-t5 only more local steps
# lifted the first generator's replay (G_1 = L_1), which bounds every later generation; more global
# steps and raised class weights did not. What to read: task 2's replay fidelity of the old classes
# (G_1's samples), L_2's own accuracy and the seen accuracy after task 2 (the table printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-.data/cifar10-jpeg}
P=benchmarks/protocols/cifar10-first2.toml
export JDCL_BENCH_TENSORBOARD=0
# LEVERS: the changes to try, space-separated `key=value[;key=value]` ("" = `fast` itself).
LEVERS=${LEVERS:-" lr=5e-4 lr=1e-3 local_steps=1600 replay_confidence_threshold=0.9 ddim_steps=100"}
chains=(--chain "$P:jdcl:fast:0")
for lever in $LEVERS; do chains+=(--chain "$P:jdcl:fast:0:$lever"); done
python3 scripts/gpu_batch.py --deadline "${DEADLINE:-540}" --min-start 60 --out .gpu-runs/levers --data-dir "$DATA" "${chains[@]}"
python3 - <<'PY'
import json
from pathlib import Path

print(f"{'run':60s} {'old fid.':>8s} {'new fid.':>8s} {'L_2 acc':>8s} {'seen acc':>8s}")
for m in sorted(Path(".gpu-runs/levers/runs").rglob("metrics.json")):
    d, overrides = json.loads(m.read_text()), json.loads((m.parent / "config.json").read_text())["overrides"]
    rep = [x for x in d.get("diagnostics", []) if x["kind"] == "replay" and x["task"] == 2]
    loc = [x["acc"] for x in d.get("diagnostics", []) if x["kind"] == "accuracy" and x["task"] == 2]
    fid = lambda cls: sum(rep[0]["per_class"][str(c)]["fidelity"] for c in cls) / len(cls) if rep else float("nan")
    seen = d["seen_acc"][1] if len(d["seen_acc"]) > 1 else float("nan")
    name = ",".join(f"{k}={v}" for k, v in overrides.items()) or "fast"
    print(f"{name:60s} {100 * fid([0, 1]):8.1f} {100 * fid([2, 3]):8.1f} {100 * (loc[0] if loc else float('nan')):8.1f} {seen:8.1f}")
PY
