"""Figures from run records (see ``jdcl_bench.results.load_records``).

matplotlib is an optional dependency (``pip install jdcl-bench[plot]``), so it is imported inside
the functions; figures are drawn on the Agg canvas directly, which needs no display and leaves
pyplot's global backend alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .schema import is_flag


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


def _save_with_legend_below(fig, ax, out_png: str | Path) -> Path:
    """Save ``fig`` with the legend under the axes, one entry a line: a label with its --set values
    can be wider than the axes, and inside them it would hide the lines it names."""
    # After tight_layout (which would shrink the axes to make room for it): anchored at the figure's
    # bottom edge, and savefig's bbox_inches="tight" grows the figure to hold it.
    fig.tight_layout()
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0),
              bbox_transform=ax.figure.transFigure, frameon=False)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=150, bbox_inches="tight")
    return out_png


def plot_seen_accuracy(records: pd.DataFrame, protocol: str, out_png: str | Path) -> Path:
    """Plot accuracy on all classes seen so far after each task, one line per method label.

    ``records`` is the DataFrame of :func:`jdcl_bench.results.load_records` (it uses the
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
    fig.suptitle(f"{protocol}: accuracy on all classes seen so far")
    note = _subtitle(runs)
    ax.set_title("mean over seeds, band = ±1 std (ddof=1)" + (f"\n{note}" if note else ""), fontsize=8)
    return _save_with_legend_below(fig, ax, out_png)


# ---- accuracy against compute ---------------------------------------------------------------------

def _replay_fidelity(run_dir: str | Path) -> float | None:
    """Mean replay fidelity (%) over a run's replay diagnostics, or None when it has none."""
    import json

    try:
        entries = json.loads((Path(run_dir) / "metrics.json").read_text()).get("diagnostics") or []
    except (OSError, ValueError, AttributeError):
        return None
    values = [e["overall"]["fidelity"] for e in entries if isinstance(e, dict) and e.get("kind") == "replay"
              and isinstance(e.get("overall"), dict) and isinstance(e["overall"].get("fidelity"), (int, float))]
    return 100 * float(np.mean(values)) if values else None


def _shared_by(value) -> int:
    """A record's ``gpu_shared_by`` as a count: 1 (alone) where it was not recorded."""
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return 1


def _series_names(runs: pd.DataFrame) -> list[str]:
    """Each run's series on the compute curve: its label without --set values, split further by
    recipe. Runs of one label whose configs differ in more than the budget (the method's
    ``differences_from_paper``, which leaves the budget out) are separate lines, since one line
    through them would draw a change of recipe as the effect of compute (JDCL's `standard`, with the
    replay levers, beside `fast`'s recipe at `standard`'s steps). A recipe that is one of the method's
    presets' as the code defines them today is named after it ("JDCL (standard recipe)"): the name a
    reader can run. Any other is named by the config values that set it apart (those constant within
    each of the label's recipes and different between them), except that where no recipe is a preset's,
    the one with the most runs keeps the bare label."""
    from ..config import to_json_dict
    from ..records import flat_items
    from ..registry import METHODS
    from .load import _preset_config

    def recipe(method: str, config) -> tuple:
        try:
            return tuple(sorted(METHODS.get(method).differences_from_paper(config if isinstance(config, dict) else {})))
        except Exception:  # a method not installed here, or a config it cannot read: one recipe
            return ()

    def preset_recipes(method: str) -> dict[str, tuple]:
        """Each of the method's presets today: its recipe (the budget left out, as above)."""
        try:
            cls = METHODS.get(method)
            return {p: recipe(method, to_json_dict(cls.config_for(p, {}))) for p in ("paper", *cls.presets)}
        except Exception:
            return {}

    keys = [(r.base_label, recipe(r.method, r.method_config)) for r in runs.itertuples()]
    # a field a record predates counts at the default it had then (new options default to the old behaviour)
    configs = [{**dict(_preset_config(m, "") or ()), **(dict(flat_items(c)) if isinstance(c, dict) else {})}
               for m, c in zip(runs["method"], runs["method_config"])]
    names = {}
    for label in dict.fromkeys(k[0] for k in keys):
        mine = [i for i, k in enumerate(keys) if k[0] == label]
        recipes = list(dict.fromkeys(keys[i][1] for i in mine))
        if len(recipes) == 1:
            names[(label, recipes[0])] = label
            continue
        members = {rc: [configs[i] for i in mine if keys[i][1] == rc] for rc in recipes}
        constant = {rc: {k: v for k, v in cs[0].items() if all(c.get(k) == v for c in cs)}
                    for rc, cs in members.items()}
        ran = {rc: [runs["preset"].iloc[i] for i in mine if keys[i][1] == rc] for rc in recipes}
        method = runs["method"].iloc[mine[0]]  # one label, one method
        of_preset = preset_recipes(method)
        for rc in recipes:  # a preset the recipe's own runs were made with first, then any other
            presets = [p for p in (*ran[rc], *of_preset) if of_preset.get(p) == rc]
            if presets:
                names[(label, rc)] = f"{label} ({presets[0]} recipe)"
        if not any((label, rc) in names for rc in recipes):
            main = max(recipes, key=lambda rc: (len(members[rc]), -len(rc)))
            names[(label, main)] = label
        for rc in recipes:
            if (label, rc) in names:
                continue
            # named against the nearest other recipe: the values in which they differ that make the recipe
            # (changing one to the other's changes this recipe), not budgets such as the steps; keys a
            # method cannot read (flattened nested ones) count as differences plainly
            base = members[rc][0]
            against = []
            for o in (o for o in recipes if o != rc):
                differ = {k: v for k, v in constant[rc].items() if k in constant[o] and constant[o][k] != v}
                makes = {k: v for k, v in differ.items() if recipe(method, {**base, k: constant[o][k]}) != rc}
                against.append(makes or differ)
            apart = min((a for a in against if a), key=len, default={})
            names[(label, rc)] = f"{label} [{', '.join(f'{k}={v}' for k, v in sorted(apart.items()))}]"
    return [names[k] for k in keys]


def compute_curve(records: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """One row per complete run of ``protocol`` that has GPU-minutes: method label, preset, seed,
    GPU-minutes, final accuracy, mean replay fidelity (None without diagnostics), how many runs
    shared its GPU (its minutes are then shared wall time, not the run's alone) and its directory;
    sorted by method and GPU-minutes."""
    runs = records[(records["protocol"] == protocol) & records["gpu_minutes"].notna() & (records["gpu_minutes"] > 0)]
    # One line per method and recipe across budgets: a budget set by --set overrides (steps, say) is a
    # point on the recipe's curve, so the series is the label without them and the table names them.
    series = _series_names(runs)
    rows = [{"method": name,
             "preset": f"{r.preset} [{r.overrides_text}]" if r.overrides_text else r.preset,
             "seed": r.seed, "gpu_minutes": float(r.gpu_minutes),
             "final_acc": float(r.final_acc), "replay_fidelity": _replay_fidelity(r.run_dir),
             "gpu_shared_by": _shared_by(r.gpu_shared_by), "gpu_name": r.gpu_name, "gpu_models": r.gpu_models,
             "run_dir": str(r.run_dir)}
            for r, name in zip(runs.itertuples(), series)]
    cols = ["method", "preset", "seed", "gpu_minutes", "final_acc", "replay_fidelity", "gpu_shared_by", "gpu_name",
            "gpu_models", "run_dir"]
    return pd.DataFrame(rows, columns=cols).sort_values(["method", "gpu_minutes"]).reset_index(drop=True)


def compute_curve_markdown(curve: pd.DataFrame, protocol: str) -> str:
    lines = [f"# {protocol}: final accuracy against GPU-minutes", "",
             "| method | preset | seed | GPU-minutes | final acc. (%) | replay fidelity (%) | GPU | run |",
             "|---|---|---|---|---|---|---|---|"]
    for r in curve.itertuples():
        fid = "–" if r.replay_fidelity is None or pd.isna(r.replay_fidelity) else f"{r.replay_fidelity:.1f}"
        shared = "" if r.gpu_shared_by <= 1 else f" (shared by {r.gpu_shared_by} runs)"
        lines.append(f"| {r.method} | {r.preset} | {r.seed} | {r.gpu_minutes:.1f}{shared} | {r.final_acc:.2f} | {fid} "
                     f"| {r.gpu_name or '–'} | `{r.run_dir}` |")
    lines += ["", "GPU-minutes are the runs' own GPU-seconds (compilation included) / 60; a run that shared its GPU "
              "says so, and its minutes are then shared wall time. Replay fidelity: mean over the run's replay "
              "generations of the reference classifier's agreement with the replay labels."]
    return "\n".join(lines) + "\n"


def plot_compute_curve(curve: pd.DataFrame, protocol: str, out_png: str | Path) -> Path:
    """Final accuracy (solid) and mean replay fidelity (dashed) against GPU-minutes, one colour per
    method; hollow markers for runs that shared their GPU. Raises ValueError without points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if curve.empty:
        raise ValueError(f"no complete run of protocol {protocol!r} records its GPU-minutes")
    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, group in curve.groupby("method", sort=True):
        name = str(label).replace("$", r"\$")
        line, = ax.plot(group["gpu_minutes"], group["final_acc"], marker="o", label=f"{name}: final accuracy")
        hollow = group[group["gpu_shared_by"] > 1]
        if len(hollow):
            ax.plot(hollow["gpu_minutes"], hollow["final_acc"], "o", mfc="white", color=line.get_color())
        fid = group[group["replay_fidelity"].notna()]
        if len(fid):
            ax.plot(fid["gpu_minutes"], fid["replay_fidelity"], marker="s", linestyle="--", color=line.get_color(),
                    label=f"{name}: replay fidelity")
    ax.set_ylim(0, 100)
    ax.set_xlim(left=0)
    ax.set_xlabel("GPU-minutes of the run")
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    fig.suptitle(f"{protocol}: accuracy against compute")
    # the models only (the table says which tasks of a resumed run ran on which)
    gpus = sorted({name for models in curve["gpu_models"] for name in models})
    ax.set_title(("GPU: " + ", ".join(gpus) + "; " if gpus else "") + "hollow = shared its GPU", fontsize=8)
    return _save_with_legend_below(fig, ax, out_png)


def read_curves(run_dir: str | Path) -> pd.DataFrame:
    """A run's ``curves.jsonl`` (``ctx.log_step``) as one row per (task, stage, step). A resumed run
    trains the steps since its last checkpoint again and writes them again: the last line wins.
    Raises ValueError when the run has no curve."""
    import json

    path = Path(run_dir) / "curves.jsonl"
    if not path.is_file():
        raise ValueError(f"{run_dir} has no curves.jsonl: runs made before the training curves existed "
                         "(or a method that does not report through ctx.log_step) have none")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:  # a run killed mid-write leaves a partial last line
            raise ValueError(f"{path}, line {n}: not JSON ({err})") from None
    df = pd.DataFrame(rows)
    if df.empty or not {"task", "stage", "step", "loss"} <= set(df.columns):
        raise ValueError(f"{path} holds no training-curve points (task, stage, step, loss)")
    return df.drop_duplicates(["task", "stage", "step"], keep="last").sort_values(["stage", "task", "step"])


def plot_training_curves(curves: pd.DataFrame, out_png: str | Path, title: str = "") -> Path:
    """The loss against the step, one panel per stage (in the order the run first reached them), one
    line per task; log scale, since losses fall by orders of magnitude."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    stages = list(dict.fromkeys(curves.sort_index()["stage"]))
    fig = Figure(figsize=(4.2 * len(stages), 3.6))
    FigureCanvasAgg(fig)
    for i, stage in enumerate(stages, 1):
        ax = fig.add_subplot(1, len(stages), i)
        for task, group in curves[curves["stage"] == stage].groupby("task"):
            ax.plot(group["step"], group["loss"], marker="." if len(group) < 20 else None, label=f"task {task}")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss" if i == 1 else "")
        ax.set_title(str(stage), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    return out_png
