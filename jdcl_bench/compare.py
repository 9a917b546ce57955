"""Published numbers next to the suite's own, per method and protocol, with each side's budget.

The published side comes from a TOML file of ``[[result]]`` entries (method, protocol, optional
label, final_acc, optional forgetting, source, budget); the suite's side from the run records,
through the same loader as the leaderboard. Nothing is typed into the output by hand.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def load_published(path: str | Path) -> pd.DataFrame:
    rows = tomllib.loads(Path(path).read_text()).get("result", [])
    for r in rows:
        missing = [k for k in ("method", "protocol", "final_acc", "source") if k not in r]
        if missing:
            raise ValueError(f"{path}: a [[result]] entry lacks {missing}: {r}")
    return pd.DataFrame(rows)


def _suite_budget(runs: pd.DataFrame) -> str:
    presets = ", ".join(sorted(set(runs["preset"])))
    gpu = runs["gpu_minutes"].mean()
    hw = ", ".join(sorted({str(g) for g in runs.get("gpu_name", pd.Series(dtype=str)).dropna()})) or "CPU"
    shared = pd.to_numeric(runs.get("gpu_shared_by", pd.Series(dtype=float)), errors="coerce").max()
    where = f" shared with up to {int(shared) - 1} other runs (wall time)" if shared == shared and shared > 1 else ""
    return f"preset {presets}; {gpu:.1f} GPU-min per run on {hw}{where}"


def comparison(records: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """One row per published result that the suite has runs for (same method and protocol)."""
    rows = []
    for _, p in published.iterrows():
        mine = records[(records["method"] == p["method"]) & (records["protocol"] == p["protocol"])]
        label = p.get("label")
        if isinstance(label, str):
            mine = mine[mine["method_label"] == label]
        if mine.empty:
            continue
        acc = mine["final_acc"]
        data = "; ".join(sorted({str(v) for v in mine["dataset_variant"]})) if "dataset_variant" in mine else ""
        rows.append({
            "method": label if isinstance(label, str) else str(mine["method_label"].iloc[0]),
            "protocol": p["protocol"],
            "published_final_acc": p["final_acc"], "published_budget": p.get("budget", ""),
            "suite_final_acc": acc.mean(), "suite_std": acc.std(ddof=1) if len(acc) > 1 else float("nan"),
            "suite_seeds": len(acc), "suite_budget": _suite_budget(mine), "suite_data": data,
            "gap_pp": acc.mean() - p["final_acc"], "source": p["source"],
        })
    return pd.DataFrame(rows)


def render_comparison(df: pd.DataFrame) -> str:
    if df.empty:
        return "No published result has a matching suite run yet.\n"
    lines = ["| Method | Protocol | Published | Published budget | Suite (this repo) | Suite budget | Suite data | Gap (pp) |",
             "|:---|:---|---:|:---|---:|:---|:---|---:|"]
    for _, r in df.iterrows():
        std = "" if pd.isna(r["suite_std"]) else f" ± {r['suite_std']:.2f}"
        lines.append(f"| {r['method']} | {r['protocol']} | {r['published_final_acc']:.2f} | {r['published_budget']} | "
                     f"{r['suite_final_acc']:.2f}{std} (n={r['suite_seeds']}) | {r['suite_budget']} | "
                     f"{r['suite_data']} | {r['gap_pp']:+.2f} |")
    lines += ["", "Final top-1 accuracy (%) on the whole test set after the last task. Sources of the published "
              "numbers:", ""]
    lines += [f"- {r['method']} / {r['protocol']}: {r['source']}" for _, r in df.iterrows()]
    return "\n".join(lines) + "\n"
