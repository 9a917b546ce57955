"""Figures from run records (see ``jdcl_bench.leaderboard.load_records``).

matplotlib is an optional dependency (``pip install jdcl-bench[plot]``), so it is imported inside
the functions; figures are drawn on the Agg canvas directly, which needs no display and leaves
pyplot's global backend alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .leaderboard import is_flag


def _seen_matrix(lists: list) -> np.ndarray:
    """Stack per-seed ``seen_acc`` lists into (seeds, tasks), NaN-padded if lengths differ."""
    length = max(len(x) for x in lists)
    out = np.full((len(lists), length), np.nan)
    for i, values in enumerate(lists):
        out[i, :len(values)] = [np.nan if v is None else float(v) for v in values]
    return out


def _marks(runs: pd.DataFrame) -> str:
    """Same marks as the tables: dagger = non-canonical data, double dagger = reduced budget."""
    noncanonical = any(is_flag(v, False) for v in runs["dataset_canonical"])
    reduced = any(is_flag(v, True) for v in runs["reduced"])
    return ("†" if noncanonical else "") + ("‡" if reduced else "")


def _subtitle(runs: pd.DataFrame) -> str:
    parts = []
    noncanonical = runs[[is_flag(v, False) for v in runs["dataset_canonical"]]]
    if len(noncanonical):
        names = sorted({f"{r.dataset_name} ({r.dataset_variant})" for r in noncanonical.itertuples()})
        parts.append("† non-canonical data: " + ", ".join(names))
    reduced = runs[[is_flag(v, True) for v in runs["reduced"]]]
    if len(reduced):
        parts.append("‡ reduced budget: preset " + ", ".join(sorted({str(p) for p in reduced["preset"]})))
    return "; ".join(parts)


def plot_seen_accuracy(records: pd.DataFrame, protocol: str, out_png: str | Path) -> Path:
    """Plot accuracy on all classes seen so far after each task, one line per method label.

    ``records`` is the DataFrame of :func:`jdcl_bench.leaderboard.load_records` (it uses the
    ``protocol``, ``method_label`` and ``seen_acc`` columns, plus dataset/budget columns for the
    subtitle). Each line is the mean over seeds; when a method has more than one seed a shaded band
    shows ± one sample std (ddof=1). The title names the protocol, the subtitle flags non-canonical
    data and reduced budgets. Writes ``out_png`` (parent folders created) and returns its path.
    Raises ValueError when no run of ``protocol`` has a ``seen_acc`` curve.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    runs = records[records["protocol"] == protocol]
    runs = runs[[isinstance(v, (list, tuple)) and len(v) > 0 for v in runs["seen_acc"]]]
    if runs.empty:
        raise ValueError(f"no complete run with seen-class accuracies for protocol {protocol!r}")

    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    max_tasks = 0
    for label, group in sorted(runs.groupby("method_label"), key=lambda kv: str(kv[0])):
        acc = _seen_matrix(list(group["seen_acc"]))
        tasks = np.arange(1, acc.shape[1] + 1)
        max_tasks = max(max_tasks, acc.shape[1])
        counts = np.sum(~np.isnan(acc), axis=0)
        mean = np.nanmean(acc, axis=0)
        # "$" would switch matplotlib to mathtext and garble (or break) the legend.
        name = str(label).replace("$", r"\$")
        line, = ax.plot(tasks, mean, marker="o", label=f"{name} (n={len(group)}) {_marks(group)}".rstrip())
        if len(group) > 1:
            # std only where at least two seeds reached that task; elsewhere no band (not zero).
            spread = np.array([np.std(col[~np.isnan(col)], ddof=1) if k > 1 else np.nan
                               for col, k in zip(acc.T, counts)])
            ax.fill_between(tasks, mean - spread, mean + spread, color=line.get_color(), alpha=0.2,
                            linewidth=0)

    ax.set_xticks(np.arange(1, max_tasks + 1))
    ax.set_xlim(0.8, max_tasks + 0.2)
    ax.set_ylim(0, 100)
    ax.set_xlabel("after task")
    ax.set_ylabel("accuracy on seen classes (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"{protocol}: accuracy on all classes seen so far")
    note = _subtitle(runs)
    ax.set_title("mean over seeds, band = ±1 std (ddof=1)" + (f"\n{note}" if note else ""), fontsize=8)
    fig.tight_layout()

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=150)
    return out_png
