#!/usr/bin/env bash
# The JDCL budget issue's lever measurements at full scale, from `standard`'s cifar10-t5 run
# (results/superseded/cifar10-t5-jdcl-standard-seed0-before-replay-levers: 71.44 %) after one of its tasks, without paying
# again for the tasks before it. The source state is a between-task checkpoint of that run, carried
# as parts (about 29 MB) in .gpu-stage/ in a call of their own on a warm machine that already holds
# the data and the reference-classifier cache (docs/jdcl.md, "Runs longer than one command"):
#
#   bash scripts/issue20_fork.sh probe                 # the checkpoint's generator G_k: replay under
#                                                      # several samplers and confidence thresholds (~3 min)
#   JDCL_BENCH_COMMIT=<hash> bash scripts/issue20_fork.sh fork KEY=VALUE ...
#                                                      # fork the state under those settings and train
#                                                      # until DEADLINE; the fork's checkpoint comes back
#   JDCL_BENCH_COMMIT=<hash> [JOIN=1] bash scripts/issue20_fork.sh continue KEY=VALUE ...
#                                                      # the same fork's next tasks (JOIN=1 on a fresh
#                                                      # machine: the fork's parts in .gpu-stage/; with
#                                                      # FORK_RECORD=<committed record's seed folder> when
#                                                      # the record is not on the machine either)
#
# Task 1 has no global stage and no replay, so a fork of the state after task 1 under a setting that
# acts on the global stage or the replay is the run that setting makes (same seed, same task
# randomness). The fork's record says where it came from and stays out of tables (fork_run.py).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:?usage: issue20_fork.sh probe | fork KEY=VALUE ... | continue KEY=VALUE ...}
shift
RECORD=results/superseded/cifar10-t5-jdcl-standard-seed0-before-replay-levers
SRC=.gpu-src
source scripts/device_setup.sh
device_install

source_state() {  # the source's record files and its between-task state, joined once per machine
  if [ ! -f "$SRC/checkpoint-task.pt" ]; then
    parts=(.gpu-stage/ckpt-cifar10-t5__jdcl__standard__seed0.pt.part*)
    [ -f "${parts[0]}" ] || { echo "no parts of the source checkpoint in .gpu-stage/"; exit 2; }
    mkdir -p "$SRC"
    cp "$RECORD"/config.json "$RECORD"/manifest.json "$RECORD"/metrics.json "$SRC"/
    cat "${parts[@]}" > "$SRC/checkpoint-task.pt.joining" && mv "$SRC/checkpoint-task.pt.joining" "$SRC/checkpoint-task.pt"
  fi
  python3 -c "import sys; from jdcl_bench.records import load_checkpoint as l; s = l(sys.argv[1]); \
print(f'source: the state after task {s[\"task\"] + 1} ({s[\"phase\"]})')" "$SRC/checkpoint-task.pt"
}
chain() { local IFS=';'; echo "cifar10-t5:jdcl:standard:0:$*"; }
batch() {  # between tasks only: an in-task checkpoint (266 MB on cifar10-t5) cannot come back, and a
           # task started that the earlier tasks' times say cannot finish is device time lost
  python3 scripts/gpu_batch.py --deadline "${DEADLINE:-560}" --min-start 60 --out .gpu-runs --data-dir "$DATA" \
    --stop-between-tasks --bring-checkpoints "$@"
}

case "$MODE" in
  probe)
    source_state
    mkdir -p "${OUT:-/tmp/issue20-fork}"
    python3 benchmarks/sampler_fidelity.py --run "$SRC" --data-dir "$DATA" --n "${N:-10000}" \
      --gen-batch "${GEN_BATCH:-2500}" --reference dpm-10-uniform \
      --samplers "${SAMPLERS:-dpm-10-uniform,dpm-20-uniform,ddim-50}" --confidence "${CONFIDENCE:-0.5,0.7,0.9}" \
      --out "${OUT:-/tmp/issue20-fork}"
    ;;
  fork)
    [ $# -gt 0 ] || { echo "fork needs at least one KEY=VALUE"; exit 2; }
    source_state
    sets=(); for kv in "$@"; do sets+=(--set "$kv"); done
    python3 benchmarks/fork_run.py --from "$SRC" --out .gpu-runs "${sets[@]}"
    batch --chain "$(chain "$@")"
    ;;
  continue)
    [ $# -gt 0 ] || { echo "continue needs the fork's KEY=VALUE settings"; exit 2; }
    join=(); if [ "${JOIN:-0}" = 1 ]; then join=(--join-checkpoints .gpu-stage); fi
    if [ -n "${FORK_RECORD:-}" ]; then  # a committed fork record (results/probes/...): its parts join there
      dest=.gpu-runs/runs/${FORK_RECORD#*/runs/}
      [ -f "$dest/config.json" ] || { mkdir -p "$(dirname "$dest")" && cp -r "$FORK_RECORD" "$dest"; }
    fi
    batch "${join[@]}" --chain "$(chain "$@")"
    ;;
  *) echo "unknown mode $MODE (probe | fork | continue)"; exit 2 ;;
esac
