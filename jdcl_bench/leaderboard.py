"""Leaderboards and run inspection, read from a results folder.

This module only *reads* run records (``config.json``, ``manifest.json``, ``metrics.json``, see
``jdcl_bench.records``); it never writes runs.

Typical use (this is what ``jdcl-bench`` does)::

    df = load_records("results/")                    # one row per complete run
    table = leaderboard(df, ["final_acc", "forgetting"], protocols=["cifar10-t5"])
    print(render_markdown(table))                    # or render_latex(table) / render_csv(table)
    rich.console.Console().print(render_show("results/cifar10-t5/jdcl/seed0"))

A leaderboard is a ``pandas.DataFrame`` whose rows are method labels and whose columns are
protocols (one metric) or ``(protocol, metric)`` pairs (several metrics). Every cell is a
:class:`Cell` (mean, sample std, number of seeds, best-in-column flag and provenance marks) or
``None`` when there is no complete run for it. Cells carry their own metric, so the renderers need
nothing but the table.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

# Metrics a table can show. The first four come from metrics.json, the timings from manifest.json.
METRICS = ("final_acc", "avg_acc", "avg_inc_acc", "forgetting", "gpu_minutes", "wall_minutes")

# Which direction wins, per metric: decides the bold "best" cell of each column.
LOWER_IS_BETTER = {
    "final_acc": False,
    "avg_acc": False,
    "avg_inc_acc": False,
    "forgetting": True,
    "gpu_minutes": True,
    "wall_minutes": True,
}

# Captions must say what was measured, in words (definitions as in jdcl_bench.metrics).
METRIC_WORDS = {
    "final_acc": "final top-1 accuracy (%) on the whole test set after the last task",
    "avg_acc": "average accuracy (%) over the tasks' classes after the last task",
    "avg_inc_acc": "average incremental accuracy (%), i.e. accuracy on all classes seen so far "
                   "averaged over the tasks",
    "forgetting": "average forgetting (percentage points) of the earlier tasks after the last task",
    "gpu_minutes": "GPU time (minutes)",
    "wall_minutes": "wall-clock time (minutes)",
}

# Short column headers when a table shows several metrics.
METRIC_SHORT = {
    "final_acc": "Final acc. (%)",
    "avg_acc": "Avg. acc. (%)",
    "avg_inc_acc": "Avg. inc. acc. (%)",
    "forgetting": "Forgetting (pp)",
    "gpu_minutes": "GPU min",
    "wall_minutes": "Wall min",
}

RECORD_COLUMNS = [
    "protocol", "method", "method_label", "base_label", "overrides_text", "bound", "preset", "seed",
    *METRICS,
    "tasks_done", "num_tasks",
    "dataset_name", "dataset_variant", "dataset_canonical", "dataset_note",
    "reduced", "gpu_shared_by", "gpu_name", "device", "commit", "dirty", "finished_at",
    "seen_acc", "acc_matrix", "run_dir", "budget", "method_config", "overrides",
]


@dataclass(frozen=True)
class Cell:
    """One leaderboard cell: a metric aggregated over the seeds of one (method, protocol).

    ``std`` is the sample standard deviation (ddof=1) and is NaN when ``n == 1``: one seed says
    nothing about spread, so no std is shown for it. ``noncanonical`` holds the notes of the
    non-canonical datasets that went into the cell (dagger mark) and ``reduced_presets`` the
    presets with a reduced compute budget (double-dagger mark).
    """

    metric: str
    mean: float
    std: float
    n: int
    best: bool = False
    noncanonical: tuple[str, ...] = ()
    reduced_presets: tuple[str, ...] = ()
    shared_gpu: bool = False  # a time metric from runs that shared one GPU with others (section mark)


# A folder holding this file is kept out of tables read from any folder above it: superseded runs,
# or reruns of a seed on other hardware (results/distributed), which must not count as seeds.
IGNORE_MARKER = ".not-in-leaderboard"


@functools.lru_cache(maxsize=None)
def method_meta(method: str) -> tuple[str, str | None]:
    """(display name, bound) of a registered method; (name, None) when it cannot be loaded, so a
    table of old records still renders after a plugin is uninstalled."""
    try:
        from .registry import METHODS

        cls = METHODS.get(method)
    except Exception:  # a broken or missing plugin must not sink a table
        return method, None
    return getattr(cls, "display_name", "") or method, getattr(cls, "bound", None)


def config_label(method: str, method_config: dict) -> str | None:
    """The label the method gives a record of this config (``Method.label_for_config``), or None:
    the method keeps the recorded label, or it cannot be loaded (a plugin not installed)."""
    try:
        from .registry import METHODS

        fn = getattr(METHODS.get(method), "label_for_config", None)
        label = fn(method_config) if fn is not None else None
    except Exception:  # a broken plugin must not sink a table; the recorded label stays
        return None
    return label if isinstance(label, str) and label else None


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def _read_json(path: Path) -> tuple[Any, str | None]:
    """(object, None) or (None, reason). Never raises: one bad file must not sink a table."""
    if not path.is_file():
        return None, f"missing {path.name}"
    try:
        return json.loads(path.read_text()), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"malformed {path.name} ({err})"


def _is_number(value: Any) -> bool:
    """A metric value a table can use: a number (NaN included: 'not defined'), or null."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _float(value: Any) -> float:
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _record(run_dir: Path, metrics: dict, config: dict, manifest: dict) -> dict:
    dataset = _dict(manifest.get("dataset"))
    budget = _dict(manifest.get("budget"))
    code = _dict(manifest.get("code_version"))
    hw = _dict(manifest.get("hardware"))
    canonical = dataset.get("canonical")
    reduced = budget.get("reduced")
    display, bound = method_meta(config["method"])
    label = str(metrics.get("method_label") or config["method"])
    if label == config["method"]:  # records written before methods had display names
        label = display
    # A label follows from the config the record ran with, not from today's defaults: NNCSL's
    # records from before the BatchNorm default changed say "NNCSL (M=500)" in metrics.json but ran
    # with train-mode BN, which their config.json says.
    from_config = config_label(config["method"], _dict(config.get("method_config")))
    if from_config is not None:
        label = from_config
    bare = label == config["method"]  # no display name recorded or installed: see _adopt_recorded_labels
    if bound:
        label += f" ({bound} bound)"
    base_label = label
    # A run with --set overrides is not its preset: its own row, never averaged with (or replacing)
    # the preset's seeds. Its overrides are part of the label, as in its run directory's name.
    overrides = _dict(config.get("overrides"))
    overrides_text = ", ".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    if overrides_text:
        label += f" [{overrides_text}]"
    return {
        "_bare_label": bare,
        "base_label": base_label,
        "overrides_text": overrides_text,
        "_method_config": dict(_flatten(_dict(config.get("method_config")))),
        "protocol": config["protocol"],
        "method": config["method"],
        # Rows of a table are labels ("NNCSL (M=500)"), so two configs of one method stay apart.
        "method_label": label,
        "bound": bound,
        "gpu_shared_by": manifest.get("gpu_shared_by"),
        "preset": config.get("preset") or budget.get("preset"),
        "seed": config.get("seed"),
        "final_acc": _float(metrics.get("final_acc")),
        "avg_acc": _float(metrics.get("avg_acc")),
        "avg_inc_acc": _float(metrics.get("avg_inc_acc")),
        "forgetting": _float(metrics.get("forgetting")),
        "gpu_minutes": _float(manifest.get("gpu_seconds")) / 60.0,
        "wall_minutes": _float(manifest.get("wall_time_s")) / 60.0,
        "tasks_done": metrics.get("tasks_done"),
        "num_tasks": metrics.get("num_tasks"),
        "dataset_name": dataset.get("name"),
        "dataset_variant": dataset.get("variant"),
        # Unknown stays None: only an explicit "canonical": false earns the dagger.
        "dataset_canonical": canonical if isinstance(canonical, bool) else None,
        "dataset_note": dataset.get("note"),
        "reduced": reduced if isinstance(reduced, bool) else None,
        "gpu_name": hw.get("gpu_name"),
        "device": hw.get("device"),
        "commit": code.get("commit"),
        "dirty": code.get("dirty"),
        "finished_at": manifest.get("finished_at"),
        "seen_acc": list(metrics.get("seen_acc") or []),
        "acc_matrix": metrics.get("acc_matrix") or [],
        "run_dir": str(run_dir),
        "budget": budget,                       # the manifest's budget (steps etc. in the method's units)
        "method_config": _dict(config.get("method_config")),
        "overrides": _dict(config.get("overrides")),   # the run's --set values
    }


def _short_list(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def load_records(results_dir: str | Path) -> pd.DataFrame:
    """Read every complete run below ``results_dir`` into a DataFrame, one row per run.

    Run directories are found recursively by their ``metrics.json``. Columns: ``protocol``,
    ``method``, ``method_label``, ``preset``, ``seed``, the metrics ``final_acc``, ``avg_acc``,
    ``avg_inc_acc``, ``forgetting``, ``gpu_minutes``, ``wall_minutes``, then ``tasks_done``,
    ``num_tasks``, ``dataset_name``, ``dataset_variant``, ``dataset_canonical`` (bool or None),
    ``dataset_note``, ``reduced`` (reduced-budget preset: bool or None), ``gpu_name``, ``device``,
    ``commit``, ``dirty``, ``finished_at``, ``seen_acc`` (list), ``acc_matrix`` (list of lists)
    and ``run_dir``.

    Never fails because of one run: runs with malformed or missing JSON are skipped, runs with
    ``"complete": false`` are left out (still in progress), and if the same (protocol, method,
    label, preset, seed) completed more than once only the most recently finished run is kept,
    so a seed is never counted twice. Each of these is reported as a line of text in
    ``df.attrs["warnings"]``; the directories of incomplete runs are in ``df.attrs["incomplete"]``.
    Folders below ``results_dir`` that hold an ``IGNORE_MARKER`` file are skipped, and said so.
    Raises FileNotFoundError only when ``results_dir`` itself does not exist.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist (or is not a directory); runs land in "
                                f"jdcl-runs/ unless run with --out, and --results results reads the repository's "
                                f"committed records")

    warnings: list[str] = []
    incomplete: list[str] = []
    rows: list[dict] = []
    set_aside = sorted(p.parent for p in root.rglob(IGNORE_MARKER) if p.parent != root)
    if set_aside:
        warnings.append(f"not in tables (folders with a {IGNORE_MARKER} file; pass one as the results folder "
                        f"to read it): {_short_list([str(d) for d in set_aside])}")
    for metrics_path in sorted(root.rglob("metrics.json")):
        run_dir = metrics_path.parent
        if any(d in run_dir.parents or d == run_dir for d in set_aside):
            continue
        metrics, problem = _read_json(metrics_path)
        if problem or not isinstance(metrics, dict):
            warnings.append(f"skipped {run_dir}: {problem or 'metrics.json is not a JSON object'}")
            continue
        if metrics.get("complete") is not True:
            incomplete.append(str(run_dir))
            continue
        # A complete run needs its config (what was run) and manifest (on what data and budget):
        # without the manifest a non-canonical dataset could pass as canonical.
        config, problem = _read_json(run_dir / "config.json")
        if problem is None and not (isinstance(config, dict) and config.get("protocol") and config.get("method")):
            problem = "config.json lacks protocol/method"
        if problem is None and not (isinstance(config["protocol"], str) and isinstance(config["method"], str)):
            problem = "config.json's protocol/method are not strings"
        if problem is None:
            # a metric that is not a number would become NaN and vanish from the table without a word
            bad = [f"{k} = {json.dumps(metrics[k])[:40]}" for k in ("final_acc", "avg_acc", "avg_inc_acc", "forgetting")
                   if k in metrics and not _is_number(metrics[k])]
            if "final_acc" not in metrics or metrics["final_acc"] is None:
                bad.insert(0, "no final_acc")
            if bad:
                problem = f"metrics.json has {', '.join(bad)} (not a number)"
        if problem is None:
            manifest, problem = _read_json(run_dir / "manifest.json")
            if problem is None and not isinstance(manifest, dict):
                problem = "manifest.json is not a JSON object"
        if problem:
            warnings.append(f"skipped {run_dir}: {problem}")
            continue
        row = _record(run_dir, metrics, config, manifest)
        row["_mtime"] = metrics_path.stat().st_mtime
        rows.append(row)

    _adopt_recorded_labels(rows)
    if incomplete:
        warnings.append(f"{len(incomplete)} run(s) in progress or incomplete, not in tables: "
                        f"{_short_list(incomplete)}")

    df = pd.DataFrame(rows, columns=[*RECORD_COLUMNS, "_mtime"])
    if len(df):
        df = _drop_duplicate_seeds(df, warnings)
    df = df.drop(columns="_mtime").reset_index(drop=True)
    df.attrs["warnings"] = warnings
    df.attrs["incomplete"] = incomplete
    return df


def _adopt_recorded_labels(rows: list[dict]) -> None:
    """Give a record labelled by its bare method name the label that records of the same method
    and a matching config carry.

    Records written before methods had display names say "dgr"; where the method's plugin is not
    installed, nothing can turn that into "DGR (diffusion)", and the table would split one
    method's seeds over two rows. A label is a function of the method and its config ("NNCSL
    (M=500)"), so it is taken from records whose config agrees on every setting both have (a
    setting added to the method later, such as a speed switch, is in one of them only). Where
    those records disagree, or there are none, the bare name stays."""
    named = [r for r in rows if not r["_bare_label"]]
    for r in rows:
        if not r["_bare_label"]:
            continue
        mine = r["_method_config"]
        labels = {o["method_label"] for o in named if o["method"] == r["method"]
                  and all(o["_method_config"][k] == v for k, v in mine.items() if k in o["_method_config"])}
        if len(labels) == 1:
            r["method_label"] = labels.pop()


def _drop_duplicate_seeds(df: pd.DataFrame, warnings: list[str]) -> pd.DataFrame:
    key = ["protocol", "method", "method_label", "preset", "seed"]
    # The latest finished run wins; the file time breaks ties and covers a missing timestamp.
    order = df.assign(_fin=df["finished_at"].fillna("").astype(str)).sort_values(["_fin", "_mtime"])
    keyed = order[key].astype(str)
    dup = keyed.duplicated(keep="last") & order["seed"].notna()
    for _, dropped in order[dup].iterrows():
        warnings.append(f"duplicate run for {dropped['protocol']} / {dropped['method_label']} / "
                        f"preset {dropped['preset']} / seed {dropped['seed']}: ignored {dropped['run_dir']} "
                        "(a more recent run of the same seed is used)")
    return order[~dup].drop(columns="_fin").sort_values("run_dir")


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------

def _check_metrics(metric: str | Sequence[str]) -> list[str]:
    metrics = [metric] if isinstance(metric, str) else list(metric)
    if not metrics:
        raise ValueError("no metric given")
    for m in metrics:
        if m not in METRICS:
            raise ValueError(f"unknown metric {m!r}; choose from {', '.join(METRICS)}")
    return metrics


def is_flag(value: Any, flag: bool) -> bool:
    """True when ``value`` is explicitly the boolean ``flag`` (None/NaN = unknown = neither).

    pandas may hand back numpy booleans from a bool column, so ``is False`` would not do.
    """
    return isinstance(value, (bool, np.bool_)) and bool(value) is flag


def _noncanonical_note(row: pd.Series) -> str:
    note = row.get("dataset_note")
    if isinstance(note, str) and note.strip():
        return note.strip()
    return f"{row.get('dataset_name')} ({row.get('dataset_variant')}) is not the canonical dataset"


def _make_cell(runs: pd.DataFrame, metric: str) -> Cell | None:
    used = runs[runs[metric].notna()]
    if used.empty:
        return None
    values = used[metric].to_numpy(dtype=float)
    n = len(values)
    std = float(np.std(values, ddof=1)) if n > 1 else math.nan
    rows = [r for _, r in used.iterrows()]
    noncanonical = sorted({_noncanonical_note(r) for r in rows if is_flag(r["dataset_canonical"], False)})
    reduced = sorted({str(r["preset"]) for r in rows if is_flag(r["reduced"], True)})
    shared = metric in ("gpu_minutes", "wall_minutes") and any(
        (_float(r.get("gpu_shared_by")) or 0) > 1 for r in rows)
    return Cell(metric, float(values.mean()), std, n, False, tuple(noncanonical), tuple(reduced), shared)


def leaderboard(df: pd.DataFrame, metric: str | Sequence[str] = "final_acc",
                protocols: Sequence[str] | None = None) -> pd.DataFrame:
    """Aggregate runs from :func:`load_records` into a table of :class:`Cell` objects.

    Rows are ``method_label`` (sorted), columns are protocols in the order given by
    ``protocols`` (default: every protocol present, sorted). ``metric`` is one name from
    :data:`METRICS` or a list of them; with several, columns become a MultiIndex of
    ``(protocol, metric)``. Each cell holds mean, sample std (ddof=1, NaN when n=1) and n over the
    seeds; ``None`` where a method has no complete run. The best cell of each column (highest mean,
    or lowest for metrics in :data:`LOWER_IS_BETTER`; ties all count) is flagged ``best`` when the
    column has at least two entries. ``table.attrs["warnings"]`` lists cells that mix presets or
    dataset variants (their numbers are averaged all the same, so the caller should filter ``df``).
    """
    metrics = _check_metrics(metric)
    if protocols is None:
        protocols = sorted(df["protocol"].dropna().unique())
    protocols = list(dict.fromkeys(protocols))  # keep the caller's order, drop repeats
    data = df[df["protocol"].isin(protocols)]
    # continual learners first (sorted), then the reference bounds, lower before upper
    bounds = data["bound"] if "bound" in data else [None] * len(data)
    bound_of = {lab: b for lab, b in zip(data["method_label"], bounds) if isinstance(b, str)}
    order = {"lower": 1, "upper": 2}
    labels = sorted(data["method_label"].dropna().unique(), key=lambda lab: (order.get(bound_of.get(lab), 0), lab))
    contenders = [lab not in bound_of for lab in labels]

    warnings: list[str] = []
    present = set(data["protocol"])
    for p in protocols:
        if p not in present:
            warnings.append(f"no complete run for protocol {p}")

    columns = [(p, m) for p in protocols for m in metrics]
    cells: dict[tuple, list] = {col: [] for col in columns}
    groups = {key: g for key, g in data.groupby(["method_label", "protocol"], sort=False)}
    for label in labels:
        for p in protocols:
            runs = groups.get((label, p))
            if runs is not None:
                if runs["preset"].nunique(dropna=False) > 1:
                    warnings.append(f"{label} on {p} mixes presets "
                                    f"{sorted(map(str, runs['preset'].unique()))}: averaged together")
                variants = runs[["dataset_name", "dataset_variant"]].astype(str).drop_duplicates()
                if len(variants) > 1:
                    warnings.append(f"{label} on {p} mixes dataset variants "
                                    f"{sorted(variants['dataset_variant'])}: averaged together")
            for m in metrics:
                cells[(p, m)].append(_make_cell(runs, m) if runs is not None else None)

    for (p, m), column in cells.items():
        _mark_best(column, LOWER_IS_BETTER[m], contenders)

    if len(metrics) == 1:
        table = pd.DataFrame({p: cells[(p, metrics[0])] for p in protocols}, index=labels, dtype=object)
        table.columns = pd.Index(protocols, name="protocol", dtype=object)
    else:
        table = pd.DataFrame({col: cells[col] for col in columns}, index=labels, dtype=object)
        table.columns = pd.MultiIndex.from_tuples(columns, names=["protocol", "metric"])
    table.index = pd.Index(labels, name="method", dtype=object)
    table.attrs["metrics"] = metrics
    table.attrs["protocols"] = protocols
    table.attrs["warnings"] = warnings
    return table


def _mark_best(column: list, lower_is_better: bool, eligible: Sequence[bool]) -> None:
    """Flag, in place, the best cell among the eligible rows (the reference bounds are not)."""
    pool = [i for i, c in enumerate(column) if c is not None and eligible[i]]
    if any(column[i].shared_gpu for i in pool):
        return  # times measured on a shared GPU do not rank runs
    # A lone entry is not "best" of anything; bolding it would suggest a comparison.
    if len(pool) < 2:
        return
    means = [column[i].mean for i in pool]
    target = min(means) if lower_is_better else max(means)
    for i in pool:
        if math.isclose(column[i].mean, target, rel_tol=1e-12, abs_tol=1e-9):
            column[i] = dataclasses.replace(column[i], best=True)


# --------------------------------------------------------------------------------------------
# The budget-matched leaderboard: one table per preset tier
# --------------------------------------------------------------------------------------------

MAIN_TIER = "standard"   # the budget-matched table
PAPER_TIER = "paper"     # the published budgets, in a table of their own

TIER_WORDS = {
    MAIN_TIER: "Budget-matched table, preset standard: every method at its best within one budget, "
               "defined as at most 30 GPU-minutes of one H200 per cifar10-t5 run with the run alone on the GPU; "
               "each method's steps and measured GPU-minutes follow.",
    PAPER_TIER: "Preset paper (and its variants such as paper-5120): each method at the step counts of its paper, "
                "so the budgets differ from method to method.",
}


def preset_tier(preset: Any) -> str:
    """The table a preset's records belong to: its name up to the first '-' (``paper-5120`` is a
    ``paper`` preset with another buffer, ``fast-5120`` a ``fast`` one); ``unknown`` without a preset."""
    if not isinstance(preset, str) or not preset:
        return "unknown"
    return preset.split("-", 1)[0]


def _tier_order(tier: str) -> tuple:
    return ({MAIN_TIER: 0, PAPER_TIER: 1}.get(tier, 2 if tier != "unknown" else 3), tier)


def _tier_words(tier: str, presets: Sequence[str]) -> str:
    if tier in TIER_WORDS:
        return TIER_WORDS[tier]
    if tier == "unknown":
        return "Records without a preset (older records): not budget-matched; their budgets are in their manifests."
    which = ", ".join(presets) if presets else tier
    return (f"Preset {tier} ({which}): a reduced budget, neither the papers' nor the budget-matched standard one; "
            "kept for reference, not for ranking methods against the standard table.")


def _steps_of(budget: Any) -> dict[str, float]:
    """The training-step counts of a manifest's budget: ``steps``, ``*_steps``, ``steps_*`` (sampler
    steps and the ``paper_*`` reference counts left out)."""
    out = {}
    for k, v in _dict(budget).items():
        if k.startswith("paper_") or "ddim" in k or "sampler" in k:
            continue
        if not (k == "steps" or k.endswith("_steps") or k.startswith("steps_")):
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v
    return out


def _span(values: Sequence[float], digits: int = 0) -> str:
    vals = sorted(set(values))
    fmt = (lambda v: f"{v:,.{digits}f}")
    return fmt(vals[0]) if len(vals) == 1 else f"{fmt(vals[0])}–{fmt(vals[-1])}"


def budget_sentences(runs: pd.DataFrame, labels: Sequence[str], protocols: Sequence[str] | None = None) -> list[str]:
    """Sentences on what each row's runs cost: training steps per run (from the manifests'
    ``budget``) and GPU-minutes per protocol, said apart for runs alone on their GPU
    (``gpu_shared_by`` = 1), runs that shared it (> 1: wall-clock minutes on a shared device, no
    measurement alone) and runs that did not record it; then the GPUs used."""
    order = list(protocols or sorted(set(runs["protocol"])))
    out, any_shared = [], False
    for label in labels:
        r = runs[runs["method_label"] == label]
        if r.empty:
            continue
        steps: dict[str, list] = {}
        for b in r["budget"]:
            for k, v in _steps_of(b).items():
                steps.setdefault(k, []).append(v)
        step_text = ", ".join(f"{k} {_span(v)}" for k, v in steps.items()) or "no step count recorded"
        gpu_parts = []
        for proto in [p for p in order if p in set(r["protocol"])]:
            g = r[r["protocol"] == proto]
            shared_by = pd.to_numeric(g["gpu_shared_by"], errors="coerce")
            on_gpu = g["device"].astype(str).eq("cuda") | (g["gpu_minutes"].fillna(0) > 0)
            bits = []
            for mask, words in ((on_gpu & shared_by.eq(1), "GPU-min alone"),
                                (on_gpu & shared_by.gt(1), "min on a shared GPU"),
                                (on_gpu & shared_by.isna(), "GPU-min, sharing not recorded")):
                sel = g[mask]
                if len(sel):
                    bits.append(f"{sel['gpu_minutes'].mean():.1f} {words} (n={len(sel)})")
            if (~on_gpu).any():
                bits.append(f"CPU (n={int((~on_gpu).sum())})")
            any_shared |= bool((on_gpu & shared_by.gt(1)).any())
            gpu_parts.append(f"{proto} " + ", ".join(bits))
        out.append(f"{label}: {step_text} per run; " + "; ".join(gpu_parts) + ".")
    if any_shared:
        most = int(pd.to_numeric(runs["gpu_shared_by"], errors="coerce").max())
        out.append(f"Minutes on a shared GPU are wall-clock minutes of runs that shared one GPU with other runs (up to "
                   f"{most} at once): those runs did not run alone, and no GPU-minutes alone were measured for them.")
    gpus = sorted({str(x) for x in runs["gpu_name"].dropna()})
    if gpus:
        out.append("GPUs: " + ", ".join(gpus) + ".")
    return out


def _family_label(df: pd.DataFrame, method: str) -> str:
    display, bound = method_meta(method)
    return display + (f" ({bound} bound)" if bound else "")


def tier_tables(df: pd.DataFrame, metric: str | Sequence[str] = "final_acc", protocols: Sequence[str] | None = None,
                tiers: Sequence[str] | None = None, include_all: bool = False) -> tuple[list[pd.DataFrame], dict]:
    """The leaderboard as ``jdcl-bench table`` shows it: one table per preset tier.

    The main table holds the ``standard`` records of every method; a method with records in the
    folder but none at ``standard`` gets a row of ``missing`` cells, and so does every cell of a
    listed method without a ``standard`` record: the table never falls back on another preset. Its
    caption states each method's steps and GPU-minutes (measured alone, or said not to be). ``paper``
    records form their own table. Other tiers (``fast``, ``smoke``, records without a preset) are
    left out unless ``include_all`` or named in ``tiers`` (each then a table of its own, labelled).
    Returns the tables (``attrs["tier"]``; a tier without records gives a table without rows) and
    ``{tier: number of records}`` of the tiers left out.
    """
    metrics = _check_metrics(metric)
    df = df.assign(tier=[preset_tier(p) for p in df["preset"]])
    if protocols is None:
        protocols = sorted(df["protocol"].dropna().unique())
    protocols = list(dict.fromkeys(protocols))
    data = df[df["protocol"].isin(protocols)]
    present = sorted(set(data["tier"]), key=_tier_order)
    if tiers:
        wanted = list(dict.fromkeys(preset_tier(t) for t in tiers))
    else:
        wanted = [MAIN_TIER, PAPER_TIER] + ([t for t in present if t not in (MAIN_TIER, PAPER_TIER)]
                                            if include_all else [])
    left_out = {t: int((data["tier"] == t).sum()) for t in present if t not in wanted}
    tables = []
    for tier in wanted:
        runs = data[data["tier"] == tier]
        presets = sorted({str(p) for p in runs["preset"].dropna()})
        head = [_tier_words(tier, presets)]
        if tier == MAIN_TIER:
            table = leaderboard(runs, metrics, protocols)
            have = set(runs["method"])
            extra = [_family_label(data, m) for m in sorted(set(data["method"]) - have)]
            if extra:
                bounds = {lab: b for lab, b in zip(data["method_label"], data["bound"]) if isinstance(b, str)}
                for m in sorted(set(data["method"]) - have):
                    _, b = method_meta(m)
                    if b:
                        bounds[_family_label(data, m)] = b
                order = {"lower": 1, "upper": 2}
                labels = sorted(set(table.index) | set(extra), key=lambda lab: (order.get(bounds.get(lab), 0), lab))
                attrs = dict(table.attrs)
                table = table.reindex(pd.Index(labels, name="method", dtype=object))
                table = table.astype(object).where(table.notna(), None)
                table.attrs.update(attrs)
            table.attrs["empty_text"] = "missing"
            n_missing = sum(not isinstance(table.at[r, c], Cell) for r in table.index for c in table.columns)
            n_cells = len(table.index) * len(table.columns)
            table.attrs["warnings"] = [w for w in table.attrs.get("warnings", []) if not w.startswith("no complete run")]
            table.attrs["empty_caption"] = (f"Cells reading missing: no standard record yet ({n_missing} of {n_cells} cells); "
                                            "the table does not fall back on other presets, whose records are in "
                                            "their own tables (jdcl-bench table --all).")
            table.attrs["caption_tail"] = budget_sentences(
                runs, [lab for lab in table.index if lab in set(runs["method_label"])], protocols)
        elif runs.empty:
            table = pd.DataFrame(index=pd.Index([], name="method", dtype=object), dtype=object)
        else:
            shown = sorted(set(runs["protocol"]), key=protocols.index)
            table = leaderboard(runs, metrics, shown)
            table.attrs["caption_tail"] = budget_sentences(runs, list(table.index), shown)
        table.attrs["tier"] = tier
        table.attrs["tier_presets"] = presets
        table.attrs["caption_head"] = head
        table.attrs.setdefault("caption_tail", [])
        table.attrs.setdefault("metrics", metrics)
        tables.append(table)
    return tables, left_out


def _left_out_sentence(left_out: dict) -> str:
    parts = ", ".join(f"{t}: {n}" for t, n in left_out.items())
    first = next(iter(left_out))
    return (f"Not in these tables: {sum(left_out.values())} record(s) of other presets ({parts}); "
            f"`jdcl-bench table --preset {first}` or `--all` shows them, each tier in a table of its own.")


def render_tiers(tables: Sequence[pd.DataFrame], left_out: dict, fmt: str = "markdown", *,
                 precision: int = 1) -> str:
    """The tables of :func:`tier_tables` in one document: Markdown paragraphs, LaTeX table
    environments, or one CSV whose ``table`` column names the tier (missing cells as rows with
    status ``missing``). A tier without records is said in words (a LaTeX comment; no CSV rows)."""
    parts = []
    header_done = False
    for t in tables:
        tier = t.attrs.get("tier")
        if len(t.index) == 0:
            words = " ".join(t.attrs.get("caption_head", []))
            if fmt == "markdown":
                parts.append(f"**Table (preset {tier}).** No record of preset {tier}. {words}\n")
            elif fmt == "latex":
                parts.append(f"% no record of preset {tier}\n")
            continue
        if fmt == "markdown":
            parts.append(render_markdown(t, precision=precision))
        elif fmt == "latex":
            parts.append(render_latex(t, precision=precision, label=f"tab:leaderboard-{tier}"))
        else:
            text = render_csv(t)
            parts.append(text if not header_done else text.split("\n", 1)[1])
            header_done = True
    if left_out and fmt == "markdown":
        parts.append(_left_out_sentence(left_out) + "\n")
    elif left_out and fmt == "latex":
        parts.append("% " + _left_out_sentence(left_out) + "\n")
    return ("\n" if fmt != "csv" else "").join(parts)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def _columns(table: pd.DataFrame, metric: str | None) -> list[tuple[Any, str, str]]:
    """(column key, protocol, metric) for each column of a leaderboard table."""
    if isinstance(table.columns, pd.MultiIndex):
        cols = [(col, str(col[0]), str(col[1])) for col in table.columns]
    else:
        known = table.attrs.get("metrics") or []
        out = []
        for col in table.columns:
            found = next((c.metric for c in table[col] if isinstance(c, Cell)), None)
            # An empty column has no cell to ask: fall back on what leaderboard() recorded.
            m = found or (known[0] if len(known) == 1 else None) or metric
            if m is None:
                raise ValueError("cannot tell which metric this table shows; pass metric=")
            out.append((col, str(col), m))
        cols = out
    if metric is not None:
        shown = {m for _, _, m in cols}
        if shown - {metric}:
            raise ValueError(f"metric={metric!r} but the table shows {sorted(shown)}")
    return cols


def _cells(table: pd.DataFrame) -> list[Cell]:
    return [c for col in table.columns for c in table[col] if isinstance(c, Cell)]


def _num(x: float, precision: int) -> str:
    text = f"{x:.{precision}f}"
    # "-0.0" reads like a sign that is not there.
    return text[1:] if re.fullmatch(r"-0\.?0*", text) else text


def _has_std(cell: Cell) -> bool:
    return cell.n > 1 and math.isfinite(cell.std)


def _caption_sentences(table: pd.DataFrame, cols: list, style: str) -> tuple[list[str], list[str]]:
    """Caption sentences and footnote sentences, for style "md" (plain text) or "latex"."""
    tex = style == "latex"
    esc = _latex_escape if tex else (lambda s: s)
    pm = "$\\pm$" if tex else "±"
    dagger, ddagger = ("$^{\\dagger}$", "$^{\\ddagger}$") if tex else ("†", "‡")
    section = "$^{\\S}$" if tex else "§"
    metrics = list(dict.fromkeys(m for _, _, m in cols))
    cells = _cells(table)

    def words(m: str) -> str:
        return f"{METRIC_WORDS[m]} ({'lower' if LOWER_IS_BETTER[m] else 'higher'} is better)"

    caption = [esc(t) for t in table.attrs.get("caption_head", [])]
    if len(metrics) == 1:
        first = words(metrics[0])
        caption.append(esc(first[0].upper() + first[1:]) + ".")
    else:
        caption.append("Metrics: " + "; ".join(esc(f"{METRIC_SHORT[m]}: {words(m)}") for m in metrics) + ".")
    caption.append(f"Each cell: mean {pm} standard deviation over seeds (sample std, ddof=1), "
                   "n = number of seeds; a cell with n=1 shows its single value and no std.")
    ns = sorted({c.n for c in cells})
    if ns:
        seeds = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}" + ("--" if tex else "–") + f"{ns[-1]}"
        caption.append(f"Seeds per cell: {seeds}.")
    if any(c.best for c in cells):
        bounds = [str(r) for r in table.index if str(r).endswith(" bound)")]
        caption.append("Best per column in bold" + (
            f", among continual learners: the reference bounds ({', '.join(esc(b) for b in bounds)}) are "
            "listed last and never bold." if bounds else "."))
    if any(not isinstance(table.at[r, col], Cell) for r in table.index for col, _, _ in cols):
        empty = table.attrs.get("empty_text")
        caption.append(esc(table.attrs.get("empty_caption", f"{empty}: no complete run.")) if empty
                       else ("--" if tex else "–") + ": no complete run.")
    caption += [esc(t) for t in table.attrs.get("caption_tail", [])]

    notes: list[str] = []
    noncanonical = sorted({n for c in cells for n in c.noncanonical})
    if noncanonical:
        notes.append(f"{dagger} Non-canonical dataset: " + "; ".join(esc(n) for n in noncanonical) + ".")
    reduced = sorted({p for c in cells for p in c.reduced_presets})
    if reduced:
        which = ", ".join(esc(p) for p in reduced)
        notes.append(f"{ddagger} Reduced compute budget (preset {which}), not the paper's full budget.")
    if any(c.shared_gpu for c in cells):
        notes.append(f"{section} Time of runs that shared one GPU with other runs in parallel: wall-clock "
                     "minutes on a shared device, an upper bound on the run's own GPU time.")
    return caption, notes


def render_markdown(table: pd.DataFrame, metric: str | None = None, *, precision: int = 1) -> str:
    """GitHub-flavoured Markdown: the table, then a caption paragraph and the footnotes.

    Cells read ``83.7 ± 0.4 (n=3)``, or ``83.7 (n=1)`` for a single seed; the best cell of a
    column is ``**bold**``; ``†`` marks a non-canonical dataset, ``‡`` a reduced-budget preset.
    With several metrics the headers read ``protocol / metric``. ``metric`` is optional (cells know
    their metric); if given it must match the table.
    """
    cols = _columns(table, metric)
    multi = isinstance(table.columns, pd.MultiIndex)

    def md(text: str) -> str:
        return str(text).replace("|", "\\|")

    def cell_text(cell: Any) -> str:
        if not isinstance(cell, Cell):
            return table.attrs.get("empty_text") or "–"
        core = _num(cell.mean, precision)
        if _has_std(cell):
            core += f" ± {_num(cell.std, precision)}"
        if cell.best:
            core = f"**{core}**"
        marks = ("†" if cell.noncanonical else "") + ("‡" if cell.reduced_presets else "") + \
            ("§" if cell.shared_gpu else "")
        return f"{core} (n={cell.n})" + (f" {marks}" if marks else "")

    headers = ["Method"] + [md(f"{p} / {METRIC_SHORT[m]}" if multi else p) for _, p, m in cols]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join([":---"] + ["---:"] * len(cols)) + "|"]
    for label in table.index:
        row = [md(label)] + [cell_text(table.at[label, col]) for col, _, _ in cols]
        lines.append("| " + " | ".join(row) + " |")
    caption, notes = _caption_sentences(table, cols, "md")
    out = "\n".join(lines) + "\n\n" + "**Table.** " + " ".join(caption) + "\n"
    if notes:
        out += "\n" + "\n".join(f"{n}  " for n in notes) + "\n"
    return out


def render_csv(table: pd.DataFrame, metric: str | None = None) -> str:
    """Tidy CSV, one line per non-empty cell: ``method,protocol,metric,mean,std,n``.

    Numbers are written at full precision (std empty when n=1), so
    ``pandas.read_csv(io.StringIO(text))`` gives back exactly the aggregated values.
    """
    cols = _columns(table, metric)
    tier = table.attrs.get("tier")  # a table of one preset tier (jdcl-bench table): says so, and its missing cells
    rows = []
    for label in table.index:
        for col, p, m in cols:
            cell = table.at[label, col]
            if isinstance(cell, Cell):
                rows.append({"table": tier, "method": label, "protocol": p, "metric": m, "mean": cell.mean,
                             "std": cell.std if _has_std(cell) else math.nan, "n": cell.n, "status": "ok"})
            elif tier is not None and table.attrs.get("empty_text"):
                rows.append({"table": tier, "method": label, "protocol": p, "metric": m, "mean": math.nan,
                             "std": math.nan, "n": 0, "status": table.attrs["empty_text"]})
    columns = ["method", "protocol", "metric", "mean", "std", "n"]
    if tier is not None:
        columns = ["table", *columns, "status"]
    out = pd.DataFrame(rows, columns=columns)
    return out.to_csv(index=False)


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def _latex_escape(text: str) -> str:
    # One pass, so the backslashes added for one character are not escaped again.
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIAL[m.group()], str(text))


def render_latex(table: pd.DataFrame, metric: str | None = None, *, precision: int = 1,
                 label: str | None = None) -> str:
    """A booktabs ``table`` environment built with pandas Styler (needs ``\\usepackage{booktabs}``).

    Cells read ``$83.7 \\pm 0.4$ {\\scriptsize (n=3)}`` (just ``$83.7$`` and n=1 for one seed);
    the best cell per column is wrapped in ``\\textbf{\\boldmath ...}`` (``\\boldmath`` so the
    numbers in math mode turn bold too); ``$^{\\dagger}$`` marks a non-canonical dataset and
    ``$^{\\ddagger}$`` a reduced-budget preset, with both notes spelled out in the caption.
    Method labels and protocol names are LaTeX-escaped. With several metrics the header has a
    protocol row (``\\multicolumn`` + ``\\cmidrule``) above a metric row. ``label`` adds
    ``\\label{...}``.
    """
    cols = _columns(table, metric)
    multi = isinstance(table.columns, pd.MultiIndex)

    def cell_text(cell: Any) -> str:
        if not isinstance(cell, Cell):
            return _latex_escape(table.attrs["empty_text"]) if table.attrs.get("empty_text") else "--"
        core = f"${_num(cell.mean, precision)}"
        core += f" \\pm {_num(cell.std, precision)}$" if _has_std(cell) else "$"
        marks = ("\\dagger" if cell.noncanonical else "") + ("\\ddagger" if cell.reduced_presets else "") + \
            ("\\S" if cell.shared_gpu else "")
        return core + f" {{\\scriptsize (n={cell.n})}}" + (f"$^{{{marks}}}$" if marks else "")

    if multi:
        header = pd.MultiIndex.from_tuples([(p, METRIC_SHORT[m]) for _, p, m in cols], names=[None, "Method"])
    else:
        header = pd.Index([p for _, p, _ in cols], name="Method", dtype=object)
    body = pd.DataFrame([[cell_text(table.at[r, col]) for col, _, _ in cols] for r in table.index],
                        index=pd.Index([str(r) for r in table.index], dtype=object), columns=header)
    best = pd.DataFrame([["textbf: --rwrap; boldmath: ;" if getattr(table.at[r, col], "best", False) else ""
                          for col, _, _ in cols] for r in table.index],
                        index=body.index, columns=body.columns)

    caption, notes = _caption_sentences(table, cols, "latex")
    styler = (body.style
              .format_index(escape="latex", axis=0)
              .format_index(escape="latex", axis=1)
              .apply(lambda _: best, axis=None))
    latex = styler.to_latex(hrules=True, column_format="l" + "c" * len(cols), multicol_align="c",
                            position_float="centering", caption=" ".join(caption + notes), label=label)
    if multi:
        latex = _add_cmidrules(latex, cols)
    return latex


def _add_cmidrules(latex: str, cols: list) -> str:
    """Underline each protocol's group header, booktabs style (Styler does not do this)."""
    spans, start = [], 2  # column 1 holds the method labels
    for p in dict.fromkeys(p for _, p, _ in cols):
        width = sum(1 for _, q, _ in cols if q == p)
        spans.append(f"\\cmidrule(lr){{{start}-{start + width - 1}}}")
        start += width
    lines = latex.split("\n")
    for i, line in enumerate(lines):
        if line.strip() == "\\toprule" and i + 1 < len(lines):
            lines.insert(i + 2, " ".join(spans))
            break
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# One run, for `jdcl-bench show RUN_DIR`
# --------------------------------------------------------------------------------------------

def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)) and len(v) > 6:
        return f"[{len(v)} items]"
    return str(v)


def _classes_short(classes: Any) -> str:
    if not isinstance(classes, list) or not classes:
        return ""
    if len(classes) <= 3:
        return ",".join(map(str, classes))
    if all(isinstance(c, int) for c in classes) and classes == list(range(classes[0], classes[-1] + 1)):
        return f"{classes[0]}–{classes[-1]}"
    return f"{len(classes)} cls"


def _fmt(v: Any, digits: int = 2) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return "–" if isinstance(v, float) and math.isnan(v) else f"{v:.{digits}f}"
    return "–" if v is None else str(v)


def render_show(run_dir: str | Path):
    """Everything about one run as a ``rich.console.Group``; print it with ``Console().print``.

    Shows the config (protocol, method, preset, seed, method_config values), the per-task accuracy
    matrix, the final metrics, timings and budget, the dataset identity, the code version and
    hardware, and the artefact files of the run (``*.png``, ``replay_counts*.json``) with their
    paths. Works for incomplete runs too (marked as in progress). Raises FileNotFoundError when
    ``run_dir`` holds no ``metrics.json`` and ValueError when that file is not valid JSON.
    """
    from rich import box
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        hint = ""
        if run_dir.is_dir():
            below = sorted(p.parent for p in run_dir.rglob("metrics.json"))
            if below:
                hint = (f" It has {len(below)} run director{'y' if len(below) == 1 else 'ies'} below it, "
                        f"e.g. {below[0]}; pass one of those.")
        where = "is not a directory" if not run_dir.is_dir() else "has no metrics.json"
        raise FileNotFoundError(
            f"{run_dir} {where}: a run directory must contain metrics.json (with config.json and "
            f"manifest.json beside it), as written by `jdcl-bench run`.{hint}")
    metrics, problem = _read_json(metrics_path)
    if problem or not isinstance(metrics, dict):
        raise ValueError(f"cannot read {metrics_path}: {problem or 'not a JSON object'}")
    config, config_problem = _read_json(run_dir / "config.json")
    manifest, manifest_problem = _read_json(run_dir / "manifest.json")
    config, manifest = _dict(config), _dict(manifest)

    def kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
        t = Table(title=title, title_justify="left", show_header=False, box=box.SIMPLE, pad_edge=False)
        t.add_column(style="bold")
        t.add_column()
        for k, v in rows:
            t.add_row(escape(str(k)), v if isinstance(v, Text) else escape(_value(v)))
        return t

    parts: list[Any] = []
    done, total = metrics.get("tasks_done"), metrics.get("num_tasks")
    status = (Text("complete", style="green") if metrics.get("complete") is True
              else Text(f"in progress / incomplete ({done}/{total} tasks)", style="yellow"))
    parts.append(Text.assemble(("Run ", "bold"), (str(run_dir), "bold cyan"), "  ", status))
    for name, prob in (("config.json", config_problem), ("manifest.json", manifest_problem)):
        if prob:
            parts.append(Text(f"warning: {prob} ({name})", style="yellow"))

    method_config = _flatten(_dict(config.get("method_config")))
    rows = [("protocol", config.get("protocol")), ("method", config.get("method")),
            ("label", metrics.get("method_label")), ("preset", config.get("preset")),
            ("seed", config.get("seed"))]
    rows += [(f"method_config.{k}", v) for k, v in method_config[:25]]
    if len(method_config) > 25:
        rows.append(("method_config", f"... {len(method_config) - 25} more in config.json"))
    parts.append(kv_table("Config", rows))

    # a hand-edited or foreign metrics.json may hold anything: show what can be shown, say what cannot
    matrix = metrics.get("acc_matrix") or []
    seen = metrics.get("seen_acc") or []
    task_classes = metrics.get("task_classes") or []
    for key, value, ok in (("acc_matrix", matrix, isinstance(matrix, list) and all(isinstance(r, list) for r in matrix)),
                           ("seen_acc", seen, isinstance(seen, list)),
                           ("task_classes", task_classes, isinstance(task_classes, list))):
        if not ok:
            parts.append(Text(f"warning: metrics.json's {key} is not a list{' of lists' if key == 'acc_matrix' else ''}"
                              f" ({escape(_value(value))[:60]}); not shown", style="yellow"))
    matrix = matrix if isinstance(matrix, list) and all(isinstance(r, list) for r in matrix) else []
    seen = seen if isinstance(seen, list) else []
    task_classes = task_classes if isinstance(task_classes, list) else []
    for key in ("final_acc", "avg_acc", "avg_inc_acc", "forgetting"):
        if key in metrics and not _is_number(metrics[key]):
            parts.append(Text(f"warning: metrics.json's {key} is {escape(_value(metrics[key]))[:60]}, not a number "
                              "(tables skip this record)", style="yellow"))
    if matrix:
        width = max(len(r) for r in matrix)
        t = Table(title="Accuracy (%) on task j's classes after training task i", title_justify="left",
                  box=box.SIMPLE_HEAD)
        t.add_column("after task", justify="right", style="bold")
        for j in range(width):
            classes = _classes_short(task_classes[j]) if j < len(task_classes) else ""
            t.add_column(f"T{j + 1}" + (f"\n{classes}" if classes else ""), justify="right")
        t.add_column("seen", justify="right", style="cyan")
        for i, row in enumerate(matrix):
            # Tasks not trained yet are measured too (usually 0): dim them so they don't distract.
            values = [Text(_fmt(v, 1), style="bold" if j == i else ("dim" if j > i else ""))
                      for j, v in enumerate(row)]
            values += [Text("")] * (width - len(row))
            t.add_row(str(i + 1), *values, Text(_fmt(seen[i], 1) if i < len(seen) else "–"))
        parts.append(t)
    else:
        parts.append(Text("No accuracy matrix yet.", style="yellow"))

    parts.append(kv_table("Final metrics", [
        ("final_acc (%)", _fmt(metrics.get("final_acc"))), ("avg_acc (%)", _fmt(metrics.get("avg_acc"))),
        ("avg_inc_acc (%)", _fmt(metrics.get("avg_inc_acc"))),
        ("forgetting (pp)", _fmt(metrics.get("forgetting"))), ("tasks", f"{done}/{total}")]))

    diag = _diagnostics_table(metrics.get("diagnostics"))
    if diag is not None:
        parts.append(diag)

    wall, gpu = _float(manifest.get("wall_time_s")), _float(manifest.get("gpu_seconds"))
    budget = _dict(manifest.get("budget"))
    timing_rows = [("wall time", "–" if math.isnan(wall) else f"{wall:.1f} s ({wall / 60:.1f} min)"),
                   ("GPU seconds", "–" if math.isnan(gpu) else f"{gpu:.1f} s ({gpu / 60:.1f} min)")]
    timing_rows += [(f"budget.{k}", v) for k, v in budget.items()]
    if budget.get("reduced") is True:
        timing_rows.append(("note", Text("reduced budget: not the paper's full training budget", style="yellow")))
    timing_rows += [("started", manifest.get("started_at")), ("finished", manifest.get("finished_at"))]
    parts.append(kv_table("Timings and budget", timing_rows))

    dataset = _dict(manifest.get("dataset"))
    ds_rows = [(k, v) for k, v in dataset.items() if k != "canonical"]
    if "canonical" in dataset:
        ds_rows.insert(2, ("canonical", Text(str(dataset["canonical"]).lower(),
                                             style="green" if dataset["canonical"] is True else "bold red")))
    parts.append(kv_table("Dataset", ds_rows or [("dataset", "unknown (no manifest)")]))

    code = _dict(manifest.get("code_version"))
    hw = _dict(manifest.get("hardware"))
    packages = _dict(manifest.get("packages"))
    env_rows = [(f"code.{k}", v) for k, v in code.items()]
    env_rows += [(f"hardware.{k}", hw[k]) for k in ("device", "gpu_name", "cpu") if k in hw]
    env_rows += [(f"package.{k}", v) for k, v in packages.items()]
    parts.append(kv_table("Code and environment", env_rows or [("manifest", "missing")]))

    artefacts = sorted({p for pattern in ("*.png", "replay_counts*.json") for p in run_dir.rglob(pattern)})
    if artefacts:
        parts.append(kv_table("Artefacts", [(p.name, str(p)) for p in artefacts]))
    else:
        parts.append(Text("Artefacts: none (*.png, replay_counts*.json)", style="dim"))
    return Group(*parts)


def _diagnostics_table(entries):
    """The replay diagnostics of a run (``metrics["diagnostics"]``, jdcl_bench.replay_quality) as a
    table: one row per measurement, each replay value next to the real data's; None if there are none."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    if not isinstance(entries, list) or not entries:
        return None

    def pct(v):
        return "–" if not isinstance(v, (int, float)) or isinstance(v, bool) else f"{100 * v:.1f}"

    def num(v):
        return "–" if not isinstance(v, (int, float)) or isinstance(v, bool) else f"{v:.1f}"

    t = Table(title="Replay diagnostics, replay / real (fid.: reference classifier agrees with the label; FD: "
                    "feature Fréchet distance; sat.: values at 0 or 255; HF: power above half Nyquist; acc.: "
                    "model accuracy on its classes' test images)", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("task", "what", "n", "fid. %", "chance", "FD", "sat. %", "HF %", "acc. %"):
        t.add_column(col, justify="left" if col == "what" else "right")
    for e in entries:
        if not isinstance(e, dict):
            continue
        task, tag = str(e.get("task", "?")), str(e.get("tag", ""))
        if e.get("kind") == "accuracy":
            t.add_row(task, tag, "", "", "", "", "", "", pct(e.get("acc")))
            continue
        o = e.get("overall") if isinstance(e.get("overall"), dict) else {}
        chance = e.get("chance")
        fid = o.get("fidelity")
        low = isinstance(fid, (int, float)) and isinstance(chance, (int, float)) and fid < 1.5 * chance
        t.add_row(task, tag, str(o.get("n", "")),
                  Text(f"{pct(fid)} / {pct(o.get('fidelity_real'))}", style="bold red" if low else ""),
                  pct(chance), f"{num(o.get('fd'))} / {num(o.get('fd_real'))}",
                  f"{pct(o.get('saturated'))} / {pct(o.get('saturated_real'))}",
                  f"{pct(o.get('hf'))} / {pct(o.get('hf_real'))}", "")
    return t


def render_show_text(run_dir: str | Path, width: int = 120) -> str:
    """:func:`render_show` as plain text (no colours), e.g. for logs and tests."""
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(render_show(run_dir))
    return console.file.getvalue()
