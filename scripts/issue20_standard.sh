#!/usr/bin/env bash
# JDCL's `standard` preset on one protocol (the JDCL budget issue): scripts/device_run.sh with JDCL
# and `standard`, which says how a run spans several device commands (JOIN, DETACH, ATTACH, CONFIG).
#
#   JDCL_BENCH_COMMIT=<hash> [JOIN=1] [DETACH=SECONDS] bash scripts/issue20_standard.sh [protocol] [seed]
#   ATTACH=1 bash scripts/issue20_standard.sh
exec bash "$(dirname "$0")/device_run.sh" "${1:-cifar10-t5}" jdcl standard "${2:-0}"
