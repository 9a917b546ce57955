"""Published numbers next to the suite's own, per method and protocol, with each side's budget.

The published side comes from a TOML file of ``[[result]]`` entries (method, protocol, optional
label, final_acc, optional forgetting, source, budget); the suite's side from the run records,
through the same loader as the leaderboard. Nothing is typed into the output by hand.
"""
from __future__ import annotations

import json
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
    presets = ", ".join(sorted(set(runs["preset"].astype(str))))
    gpu = runs["gpu_minutes"].mean()
    hw = ", ".join(sorted({str(g) for g in runs.get("gpu_name", pd.Series(dtype=str)).dropna()})) or "CPU"
    shared = pd.to_numeric(runs.get("gpu_shared_by", pd.Series(dtype=float)), errors="coerce").max()
    where = f" shared with up to {int(shared) - 1} other runs (wall time)" if shared == shared and shared > 1 else ""
    return f"preset {presets}; {gpu:.1f} GPU-min per run on {hw}{where}"


def label_matches(published: str, suite: str) -> bool:
    """A suite label is the published configuration's, or a variant of it: ``NNCSL (M=500, BN in
    train mode)`` is ``NNCSL (M=500)`` with one setting changed, which the differences column names."""
    return suite == published or (published.endswith(")") and suite.startswith(published[:-1] + ", "))


def _fmt_value(v) -> str:
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def differences(runs: pd.DataFrame) -> str:
    """What a group of records does differently from the published setting, from what they recorded:
    budget (preset, reduced or not), data (canonical or which variant), the method's own differences
    (``Method.differences_from_paper`` on the config, e.g. NNCSL's BatchNorm), and --set overrides."""
    from .schema import is_flag

    out = []
    presets = sorted({str(p) for p in runs["preset"].dropna()}) or ["not recorded"]
    known = [bool(v) for v in runs["reduced"] if is_flag(v, True) or is_flag(v, False)]
    if len(known) < len(runs):
        out.append(f"budget: preset {', '.join(presets)}, reduced or not: not recorded for every run")
    elif all(known):
        out.append(f"budget: preset {', '.join(presets)}, reduced (not the paper's steps)")
    else:
        out.append(f"budget: preset {', '.join(presets)} (the paper's steps)")
    canon = list(runs["dataset_canonical"])
    variants = sorted({str(v) for v in runs["dataset_variant"].dropna()})
    if canon and all(is_flag(c, True) for c in canon):
        pass  # canonical data: no difference
    elif any(is_flag(c, False) for c in canon):
        out.append(f"data: {', '.join(variants) or 'a variant'}, not the canonical dataset")
    else:
        out.append("data: canonical or not, not recorded")
    method = str(runs["method"].iloc[0])
    found: list[str] = []
    for mc in runs["method_config"]:
        for d in _method_differences(method, mc if isinstance(mc, dict) else {}):
            if d not in found:
                found.append(d)
    out += found
    sets = sorted({f"{k}={_fmt_value(v)}" for ov in runs.get("overrides", []) if isinstance(ov, dict)
                   for k, v in ov.items()})
    if sets:
        out.append("--set " + " ".join(sets))
    return "; ".join(out)


def _method_differences(method: str, method_config: dict) -> list[str]:
    try:
        from ..registry import METHODS

        fn = getattr(METHODS.get(method), "differences_from_paper", None)
        got = fn(method_config) if fn is not None else []
    except Exception:  # a plugin that cannot be loaded: nothing known beyond budget and data
        return []
    return [str(g) for g in got or []]


def comparison(records: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """One row per published result and suite configuration that ran it (same method and protocol;
    the published label or a variant of it; one row per label and preset)."""
    rows = []
    for _, p in published.iterrows():
        mine = records[(records["method"] == p["method"]) & (records["protocol"] == p["protocol"])]
        label = p.get("label")
        if isinstance(label, str):
            mine = mine[[label_matches(label, str(lab)) for lab in mine["method_label"]]]
        if mine.empty:
            continue
        for (lab, preset), group in mine.groupby(["method_label", mine["preset"].astype(str)], sort=True):
            acc = group["final_acc"]
            data = "; ".join(sorted({str(v) for v in group["dataset_variant"]})) if "dataset_variant" in group else ""
            rows.append({
                "method": str(lab),
                "protocol": p["protocol"],
                "published_final_acc": p["final_acc"], "published_budget": p.get("budget", ""),
                "suite_final_acc": acc.mean(), "suite_std": acc.std(ddof=1) if len(acc) > 1 else float("nan"),
                "suite_seeds": len(acc), "suite_budget": _suite_budget(group), "suite_data": data,
                "differs": differences(group),
                "gap_pp": acc.mean() - p["final_acc"], "source": p["source"],
                "published_label": label if isinstance(label, str) else str(lab),
            })
    return pd.DataFrame(rows)


def render_comparison(df: pd.DataFrame) -> str:
    if df.empty:
        return "No published result has a matching suite run yet.\n"
    lines = ["| Method | Protocol | Published | Published budget | Suite (this repo) | Suite budget | Suite data | "
             "Differs from the published setting | Gap (pp) |",
             "|:---|:---|---:|:---|---:|:---|:---|:---|---:|"]
    for _, r in df.iterrows():
        std = "" if pd.isna(r["suite_std"]) else f" ± {r['suite_std']:.2f}"
        lines.append(f"| {r['method']} | {r['protocol']} | {r['published_final_acc']:.2f} | {r['published_budget']} | "
                     f"{r['suite_final_acc']:.2f}{std} (n={r['suite_seeds']}) | {r['suite_budget']} | "
                     f"{r['suite_data']} | {r['differs']} | {r['gap_pp']:+.2f} |")
    lines += ["", "Final top-1 accuracy (%) on the whole test set after the last task. \"Differs from the published "
              "setting\" is read from each record (its preset and budget, its dataset's identity, its config and "
              "--set values): a gap measured under a reduced budget or on other data is not a like-for-like "
              "reproduction. Sources of the published numbers:", ""]
    seen = set()
    for _, r in df.iterrows():
        key = (r["published_label"], r["protocol"])
        if key not in seen:
            seen.add(key)
            lines.append(f"- {r['published_label']} / {r['protocol']}: {r['source']}")
    return "\n".join(lines) + "\n"
