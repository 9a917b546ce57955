#!/usr/bin/env bash
# The JDCL budget issue's next measurement, from `standard`'s cifar10-t5 run after task 4 (G_4, the
# generator four generations deep; results/runs/cifar10-t5/jdcl/standard/seed0 ended at 71.44 %, its
# old-class replay at 59.2 % fidelity against 91.0 % one generation deep). Two modes, each one device
# command on a warm machine that holds the data, the reference-classifier cache (.cache) and the
# task-4 checkpoint's parts (.gpu-stage/, about 29 MB, carried in a call of their own: docs/jdcl.md):
#
#   bash scripts/issue20_task5.sh probe                 # G_4's replay under several samplers and
#                                                       # confidence thresholds; no training, ~3 min
#   bash scripts/issue20_task5.sh fork KEY=VALUE ...    # task 5 again with those settings, ~6 min
#
# probe: benchmarks/sampler_fidelity.py on G_4 (10,000 samples per sampler, the run's batch of 2500,
# from the same noise): fidelity and Fréchet distance of the replay each sampler gives and of what
# each replay_confidence_threshold would keep. fork: benchmarks/fork_run.py, then the fork's task 5;
# its final accuracy reads against the run's own task 5 (71.44 %, same seed, same task-5 randomness).
# Both write to $OUT (the record and the fork's folder, as runs.tar.gz).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:?usage: issue20_task5.sh probe | fork KEY=VALUE ...}
shift
RECORD=results/runs/cifar10-t5/jdcl/standard/seed0
SRC=.gpu-runs/standard-after-task4
DATA=${DATA:-.data/cifar10-jpeg}
OUT=${OUT:-/tmp/issue20-task5}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 JDCL_BENCH_CACHE=$PWD/.cache/jb TORCHINDUCTOR_CACHE_DIR=$PWD/.inductor-cache
export JDCL_BENCH_TENSORBOARD=0
[ -d "$DATA/train" ] || (cd "$DATA" && tar xzf cifar10-jpeg.tar.gz)
python3 -m pip install -q --no-deps --no-build-isolation -e .

# the source: the committed record's files and the task-4 state, joined once per machine
if [ ! -f "$SRC/checkpoint-task.pt" ]; then
  parts=(.gpu-stage/ckpt-cifar10-t5__jdcl__standard__seed0.pt.part*)
  [ -f "${parts[0]}" ] || { echo "no checkpoint parts in .gpu-stage/ (carry them in a call of their own)"; exit 2; }
  mkdir -p "$SRC"
  cp "$RECORD"/config.json "$RECORD"/manifest.json "$RECORD"/metrics.json "$SRC"/
  cat "${parts[@]}" > "$SRC/checkpoint-task.pt.joining" && mv "$SRC/checkpoint-task.pt.joining" "$SRC/checkpoint-task.pt"
fi
python3 - "$SRC/checkpoint-task.pt" <<'PY'
import sys
from jdcl_bench.records import load_checkpoint
s = load_checkpoint(sys.argv[1])
if (s["phase"], s["task"]) != ("task_done", 3):
    sys.exit(f"{sys.argv[1]} is not the state after task 4 (phase {s['phase']}, task index {s['task']})")
PY

case "$MODE" in
  probe)
    python3 benchmarks/sampler_fidelity.py --run "$SRC" \
      --data-dir "$DATA" --n "${N:-10000}" --gen-batch "${GEN_BATCH:-2500}" --reference dpm-10-uniform \
      --samplers "${SAMPLERS:-dpm-10-uniform,dpm-20-uniform,ddim-50}" --confidence "${CONFIDENCE:-0.5,0.7,0.9}" \
      --out "$OUT"
    ;;
  fork)
    [ $# -gt 0 ] || { echo "fork needs at least one KEY=VALUE"; exit 2; }
    sets=(); for kv in "$@"; do sets+=(--set "$kv"); done
    tag=$(echo "$*" | tr ' =' '+-' | tr -cd 'A-Za-z0-9._+-')
    probe=.gpu-runs/forks/$tag
    python3 benchmarks/fork_run.py --from "$SRC" --out "$probe" "${sets[@]}"
    jdcl-bench run --protocol cifar10-t5 --method jdcl --preset standard --seed 0 "${sets[@]}" \
      --out "$probe" --data-dir "$DATA"
    tar czf "$OUT/runs.tar.gz" --exclude='*.pt' -C .gpu-runs/forks "$tag"
    ;;
  *) echo "unknown mode $MODE (probe | fork KEY=VALUE ...)"; exit 2 ;;
esac
