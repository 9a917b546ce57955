#!/usr/bin/env bash
# JDCL's `standard` preset on one protocol, one device command at a time (the JDCL budget issue).
# A run is about 30 GPU-minutes, so it spans several 10-minute commands. Each command trains until
# DEADLINE seconds, stops inside a task (checkpoint.pt stays on the warm machine) and returns the
# state after its last finished task (checkpoint-task.pt, about 30 MB, as $OUT/ckpt-*.partNN) as
# insurance; the same command, again, resumes. On a fresh machine, carry the returned parts in
# .gpu-stage/ and set JOIN=1 (docs/jdcl.md, "Runs longer than one command").
#
#   bash scripts/issue20_standard.sh [protocol] [seed]        # on the device, from the repository root
#   JOIN=1 DEADLINE=560 bash scripts/issue20_standard.sh cifar10-semi-5pct
#   CONFIG=FILE.toml bash scripts/issue20_standard.sh
#   DETACH=1500 bash scripts/issue20_standard.sh   # the run trains in a background process of its own
#   ATTACH=1 bash scripts/issue20_standard.sh      # for up to 1500 s, across commands on the warm
#                                     # machine (compiled once); each later command waits with ATTACH=1
#                                     # and brings the records and the between-task checkpoint home
#                                     # `standard` with a settings file's values (as `jdcl-bench run
#                                     # --config FILE`: the same run folder, standard+<hash>)
#
# One call per command, on a fresh machine or a warm one: `bash scripts/slim_tree.sh drop` here first
# (docs/jdcl.md), then carry the data archive and labels, `.cache`, the returned parts in .gpu-stage/
# and the run's record folder in .gpu-runs/ (`python scripts/gpu_batch.py --home FILES_AT` puts what a
# call returned there).
#
# Commit first and put the commit in the command (JDCL_BENCH_COMMIT=<git rev-parse HEAD here> bash
# scripts/...): the device machine's git can be older than the tree it received (on 2026-12-06 it
# showed the session's first commit), and records.code_version takes the commit from that variable
# when set. A record made without it says dirty: true against the stale commit; its source_hash
# still names the code (scripts/commit_for_source_hash.py finds the commit).
set -euo pipefail
cd "$(dirname "$0")/.."
P=${1:-cifar10-t5}
SEED=${2:-0}
DATA=${DATA:-.data/cifar10-jpeg}
export PYTHONUNBUFFERED=1 JDCL_BENCH_CACHE=$PWD/.cache/jb TORCHINDUCTOR_CACHE_DIR=$PWD/.inductor-cache
export JDCL_BENCH_TENSORBOARD=0
if [ "${ATTACH:-0}" = 1 ]; then  # nothing to install or unpack: the detached process has it all
  exec python3 scripts/gpu_batch.py --attach --deadline "${DEADLINE:-560}" --out .gpu-runs --bring-checkpoints
fi
[ -d "$DATA/train" ] || (cd "$DATA" && tar xzf cifar10-jpeg.tar.gz)
python3 -m pip install -q --no-deps --no-build-isolation -e .
join=()
if [ "${JOIN:-0}" = 1 ]; then join=(--join-checkpoints .gpu-stage); fi
sets=""
if [ -n "${CONFIG:-}" ]; then sets=":@$CONFIG"; fi  # the chain's --set part: the file's values (gpu_batch.py)
# a fork with the same settings (scripts/issue20_fork.sh) has the same run folder: never resume one as
# the whole run (the fork inherits another run's first tasks)
for c in .gpu-runs/runs/"$P"/jdcl/standard*/seed"$SEED"/config.json; do
  if [ -f "$c" ] && grep -q '"forked_from"' "$c"; then
    echo "$(dirname "$c") is a fork (scripts/issue20_fork.sh); move it out of .gpu-runs before a whole run"; exit 2
  fi
done
detach=()
if [ -n "${DETACH:-}" ]; then detach=(--detach "$DETACH"); fi
python3 scripts/gpu_batch.py --deadline "${DEADLINE:-560}" --min-start 60 --out .gpu-runs --data-dir "$DATA" \
  --bring-checkpoints "${join[@]}" "${detach[@]}" --chain "$P:jdcl:standard:$SEED$sets"
