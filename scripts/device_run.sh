#!/usr/bin/env bash
# One run of any method on the device machine, one command at a time (docs/jdcl.md, "Runs longer than
# one command"). A `standard` or `paper` run is 20-30 GPU-minutes, so it spans several 10-minute
# commands. Each command trains until DEADLINE seconds, stops inside a task (checkpoint.pt stays on
# the warm machine) and returns the state after its last finished task (checkpoint-task.pt, as
# $OUT/ckpt-*.partNN, when small enough: JDCL's is about 30 MB) as insurance; the same command, again,
# resumes. On a fresh machine, carry the returned parts in .gpu-stage/ and set JOIN=1.
#
#   bash scripts/device_run.sh PROTOCOL METHOD PRESET [SEED]   # on the device, from the repository root
#   JOIN=1 DEADLINE=560 bash scripts/device_run.sh cifar10-semi-5pct jdcl standard
#   CONFIG=FILE.toml bash scripts/device_run.sh ...  # the preset with a settings file's values (as
#                                     # `jdcl-bench run --config FILE`: the same run folder, PRESET+<hash>)
#   CHAINS="P:M:PRESET:SEED P2:M2:PRESET2:SEED2" bash scripts/device_run.sh
#                                     # several runs side by side on the one GPU (each a gpu_batch.py
#                                     # --chain; their records say they shared it)
#   CHAINS="P:M:PRESET:SEED,P2:M2:PRESET2:SEED2" bash scripts/device_run.sh
#                                     # one after the other (a comma: one chain), each alone on the GPU:
#                                     # the first finishes, the second starts in the same command or
#                                     # detached process
#   DETACH=SECONDS bash scripts/device_run.sh ...   # the runs train in a background process of their own
#                                     # for SECONDS (give it the session's device time left), across commands
#                                     # on the warm machine (compiled once)
#   ATTACH=1 bash scripts/device_run.sh               # each later command: wait for them (DEADLINE) and
#                                     # bring the records and between-task checkpoints home
#   RESEND=1 ATTACH=1 bash scripts/device_run.sh      # the same, every checkpoint part sent again (a call whose
#                                     # files never came back: parts go once each otherwise)
#
# Here first: `bash scripts/slim_tree.sh drop`, then carry the data archive and labels, the returned
# parts in .gpu-stage/ and the run folders in .gpu-runs/ (`python
# scripts/gpu_batch.py --home FILES_AT` puts what a call returned there). Baselines whose between-task state is larger than
# a call returns (DGR, GUIDE, NNCSL: a ResNet-18 and its optimiser are about 94 MB) come home over several
# ATTACH calls and go back over several calls (--home prints which files each carries); best, they finish on one warm
# machine: DETACH, then ATTACH until done.
#
# Commit first and put the commit in the command (JDCL_BENCH_COMMIT=<git rev-parse HEAD here> bash
# scripts/...): the device machine's git can be older than the tree it received (on 2026-12-06 it
# showed the session's first commit), and records.code_version takes the commit from that variable
# when set. A record made without it says dirty: true against the stale commit; its source_hash
# still names the code (scripts/commit_for_source_hash.py finds the commit).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/device_setup.sh
if [ "${ATTACH:-0}" = 1 ]; then  # nothing to install or unpack: the detached process has it all
  resend=(); if [ "${RESEND:-0}" = 1 ]; then resend=(--resend-checkpoints); fi  # a call's files never arrived
  exec python3 scripts/gpu_batch.py --attach --deadline "${DEADLINE:-560}" --out .gpu-runs --bring-checkpoints "${resend[@]}"
fi
sets=""
if [ -n "${CONFIG:-}" ]; then sets=":@$CONFIG"; fi  # the chain's --set part: the file's values (gpu_batch.py)
if [ -n "${CHAINS:-}" ]; then
  read -r -a specs <<< "$CHAINS"
else
  [ $# -ge 3 ] || { echo "usage: $0 PROTOCOL METHOD PRESET [SEED]  (or CHAINS=\"P:M:PRESET:SEED ...\" $0)" >&2; exit 2; }
  specs=("$1:$2:$3:${4:-0}$sets")
fi
runs=()  # every run of every chain (a chain's runs are separated by commas)
for spec in "${specs[@]}"; do IFS=, read -r -a more <<< "$spec"; runs+=("${more[@]}"); done
needs=""
for spec in "${runs[@]}"; do
  IFS=: read -r p m preset seed _ <<< "$spec"; seed=${seed:-0}
  # a fork (scripts/issue20_fork.sh, benchmarks/fork_run.py) with the same settings has the same run
  # folder: never resume one as the whole run (the fork inherits another run's first tasks)
  for c in .gpu-runs/runs/"$p"/"$m"/"$preset"*/seed"$seed"/config.json; do
    if [ -f "$c" ] && grep -q '"forked_from"' "$c"; then
      echo "$(dirname "$c") is a fork; move it out of .gpu-runs before a whole run"; exit 2
    fi
  done
  case "$m" in jdcl|finetune|joint) ;; *) needs=baselines ;; esac  # ./baselines only where a run needs it
done
device_install $needs
join=()
if [ "${JOIN:-0}" = 1 ]; then join=(--join-checkpoints .gpu-stage); fi
detach=()
if [ -n "${DETACH:-}" ]; then detach=(--detach "$DETACH"); fi
chains=()
for spec in "${specs[@]}"; do chains+=(--chain "$spec"); done
python3 scripts/gpu_batch.py --deadline "${DEADLINE:-560}" --min-start 60 --out .gpu-runs --data-dir "$DATA" \
  --bring-checkpoints "${join[@]}" "${detach[@]}" "${chains[@]}"
