#!/usr/bin/env bash
# Regenerate every table and plot under results/ from the committed run records (nothing typed by hand).
# Only results/runs/ feeds the leaderboard: results/distributed/ (a 2-GPU rerun of a seed already in it,
# compared by scripts/distributed_report.py) and results/superseded/ must not count as runs. Their
# .not-in-leaderboard files keep them out of `--results results` as well.
set -euo pipefail
cd "$(dirname "$0")/.."
P=(--protocol cifar10-t5 --protocol cifar10-semi-0.8pct --protocol cifar10-semi-5pct)
M=(--metric final_acc --metric forgetting --metric gpu_minutes)
# --all: the budget-matched table (preset standard; cells without a standard record say "missing"),
# the paper table, then every other preset tier (fast, ...) in a table of its own, labelled
jdcl-bench table --results results/runs "${P[@]}" "${M[@]}" --all -o results/LEADERBOARD.md
jdcl-bench table --results results/runs "${P[@]}" "${M[@]}" --all --format latex -o results/leaderboard.tex
jdcl-bench table --results results/runs "${P[@]}" "${M[@]}" --all --format csv -o results/leaderboard.csv
jdcl-bench compare --results results/runs --published results/published.toml -o results/PAPER_VS_SUITE.md
jdcl-bench plot --results results/runs --out-dir results/plots "${P[@]}"
# accuracy against compute: every folder of results/curves/ holds one method's runs at several budgets
for c in results/curves/*/; do jdcl-bench plot --results "$c" --x gpu-minutes --out-dir "$c"; done
# the README's copy of the final-accuracy table, between its markers
jdcl-bench table --results results/runs "${P[@]}" --all -o results/.readme_table.md
python - <<'PY'
import re
from pathlib import Path
readme, table = Path("README.md"), Path("results/.readme_table.md")
text = readme.read_text()
start, end = "<!-- leaderboard:start (scripts/make_results.sh writes this part) -->", "<!-- leaderboard:end -->"
head, rest = text.split(start, 1)
readme.write_text(head + start + "\n" + table.read_text().strip() + "\n" + end + rest.split(end, 1)[1])
table.unlink()
PY
