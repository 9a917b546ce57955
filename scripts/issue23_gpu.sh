#!/usr/bin/env bash
# Issue 23's GPU measurements that are still to be made, one device command each (each meant to fit the
# device machines' 10-minute command limit, as planned: none has run yet; records go to $OUT, else
# results/bench/).
#
#   bash scripts/issue23_gpu.sh sampler   # train the cifar10-first2 probe (JDCL fast + the short-budget
#                                         # options, --time-limit 330), then benchmarks/sampler_fidelity.py
#                                         # on its global model: DDIM-50/250 vs DPM-Solver++(2M) 10-25 steps
#   bash scripts/issue23_gpu.sh loop [jdcl|jdcl-semi|dgr|nncsl]
#                                         # jdcl-bench bench --loop (all four, or the one named): JDCL's local and global loops next to
#                                         # the bare step of the same model (and 30 steps of each under
#                                         # torch.profiler: where the host time goes), fast preset, fully and
#                                         # semi-supervised, DGR/GUIDE's generator and classifier loops and
#                                         # NNCSL, all profiled (one record each, no data needed); the
#                                         # profiles name the Python lines that synchronised (sync_sites)
#                                         # Time: on a fresh H100 (2026-12-07) the JDCL command reached the end of
#                                         # its global loop at 174 s (first compilations 85 s local, 30 s global)
#                                         # and still had the bare global step to compile; NNCSL's task-2 loop
#                                         # ended at 71 s. Give each command 300 s of its own, not 200 / 120 (both
#                                         # were cut there, before any record was written; each stage's rates
#                                         # are printed as soon as it is measured since)
#   bash scripts/issue23_gpu.sh loop-packing nncsl paper 1,2,4 --semi
#                                         # benchmarks/loop_packing.py: N copies of a method's loop side by
#                                         # side, their windows started together: the total rate against one
#   bash scripts/issue23_gpu.sh packing 1,2   # benchmarks/sweep_packing.py: the same 8 cells at 1 and 2
#   bash scripts/issue23_gpu.sh packing 4,8   # per GPU (one record each; speedups against N = 1 are the
#                                             # ratio of the records' wall_s)
#
# Run it where the suite is installed (as for `jdcl-bench bench`: pip install -e . -e ./baselines).
# Needs the CIFAR-10 JPEG variant at $DATA (default .data/cifar10-jpeg, as scripts/gpu_batch.py) for
# `sampler`; the packing grid (finetune and joint on digits-t5, default presets) needs no data.
# A fresh device machine has no checkpoints (they are not committed), so `sampler` trains its model
# in the same command. If the run stops at its time limit inside task 2, the benchmark samples G
# after task 1 (two classes) and its record says so ("model.source").
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-.data/cifar10-jpeg}
DEST=${OUT:-results/bench}
WORK=${WORK:-.gpu-runs/issue23}
case "${1:-}" in
  sampler)
    jdcl-bench reference --protocol benchmarks/protocols/cifar10-first2.toml --data-dir "$DATA"
    jdcl-bench run --protocol benchmarks/protocols/cifar10-first2.toml --method jdcl --preset fast \
      --set sampler_clip_x0=true --set global_ema_restart=true --set local_init=global \
      --data-dir "$DATA" --out "$WORK" --time-limit 330 2>&1 | tail -n 20
    run_dir=$(dirname "$(ls -d "$WORK"/runs/cifar10-first2-*/jdcl/fast+*/seed0/checkpoint.pt | head -n 1)")
    python benchmarks/sampler_fidelity.py --run "$run_dir" --data-dir "$DATA" --n 5000 --out "$DEST"
    ;;
  loop)  # all four, or the one named: loop jdcl | jdcl-semi | dgr | nncsl (a command each fits 10 minutes)
    which=${2:-all}
    case "$which" in all|jdcl|jdcl-semi|dgr|nncsl) ;; *) echo "loop: unknown $which (jdcl, jdcl-semi, dgr, nncsl)" >&2; exit 2 ;; esac
    bench() { jdcl-bench bench --loop --profile 30 --config fast --device cuda --out "$DEST" "$@"; }
    if [ "$which" = all ] || [ "$which" = jdcl ]; then bench; fi
    if [ "$which" = all ] || [ "$which" = jdcl-semi ]; then bench --semi; fi
    if [ "$which" = all ] || [ "$which" = dgr ]; then bench --method dgr; fi
    if [ "$which" = all ] || [ "$which" = nncsl ]; then bench --method nncsl --semi; fi
    ;;
  loop-packing)  # loop-packing METHOD PRESET N[,N...] [--semi]: N copies of the loop side by side (one record)
    [ $# -ge 4 ] || { echo "usage: $0 loop-packing METHOD PRESET N[,N...] [--semi]" >&2; exit 2; }
    python benchmarks/loop_packing.py --method "$2" --config "$3" --ns "$4" "${@:5}" --work-dir "$WORK/loop-packing" \
      --out "$DEST"
    ;;
  packing)
    python benchmarks/sweep_packing.py --methods finetune,joint --protocols digits-t5 --cells 4 --preset paper \
      --ns "${2:-1,2}" --time-limit 240 --work-dir "$WORK/packing" --out "$DEST"
    ;;
  *)
    echo "usage: $0 sampler | loop [jdcl|jdcl-semi|dgr|nncsl] | loop-packing METHOD PRESET N[,N...] [--semi] | packing N[,N...]" >&2
    exit 2
    ;;
esac
