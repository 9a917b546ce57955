"""Seeds into cells: one leaderboard per metric (``leaderboard``) and one table per preset tier
(``tier_tables``, the budget-matched leaderboard)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from .load import method_meta
from .schema import LOWER_IS_BETTER, METRICS, Cell, _dict, _float, is_flag

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
# the budget the standard presets are sized to: GPU-minutes of one run of this protocol, alone on the GPU
BUDGET_MINUTES, BUDGET_PROTOCOL = 30.0, "cifar10-t5"

TIER_WORDS = {
    MAIN_TIER: "Budget-matched table, preset standard: every method at its best within one budget, "
               f"defined as at most {BUDGET_MINUTES:g} GPU-minutes of one H200 per {BUDGET_PROTOCOL} run with the "
               "run alone on the GPU; each method's steps and measured GPU-minutes follow.",
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


def _loaded_generator_bits(g: pd.DataFrame) -> list[str]:
    """What a cell's minutes say about generators its runs loaded from another run's cache (GUIDE
    loads DGR's): their training counts in the minutes (load.loaded_generator_minutes), or, where a
    loaded generator did not record its time, the minutes leave it out and say so."""
    if "generator_minutes_loaded" not in g:
        return []
    loaded = pd.to_numeric(g["generator_minutes_loaded"], errors="coerce")
    untimed, timed = loaded.isna(), loaded.gt(0)
    out = []
    if timed.any():
        shared = pd.to_numeric(g.loc[timed, "generators_loaded_shared_by"], errors="coerce").max()
        where = f", trained on a GPU shared by up to {int(shared)} runs" if shared > 1 else ""
        out.append(f"including {loaded[timed].mean():.1f} min of generator training loaded from another run's "
                   f"cache (n={int(timed.sum())}{where})")
    if untimed.any():
        out.append(f"not counting the generators loaded from another run's cache (n={int(untimed.sum())}: "
                   "their training time was not recorded)")
    return out


def _span(values: Sequence[float], digits: int = 0) -> str:
    vals = sorted(set(values))
    fmt = (lambda v: f"{v:,.{digits}f}")
    return fmt(vals[0]) if len(vals) == 1 else f"{fmt(vals[0])}–{fmt(vals[-1])}"


def budget_sentences(runs: pd.DataFrame, labels: Sequence[str], protocols: Sequence[str] | None = None,
                     limit: tuple[str, float] | None = None) -> list[str]:
    """Sentences on what each row's runs cost: training steps per run (from the manifests'
    ``budget``) and GPU-minutes per protocol, said apart for runs alone on their GPU
    (``gpu_shared_by`` = 1), runs that shared it (> 1: wall-clock minutes on a shared device, no
    measurement alone) and runs that did not record it; then the GPUs used. ``limit`` = (protocol,
    minutes): the table's budget; a mean alone above it is said to be over it, not left for the
    reader to compare."""
    order = list(protocols or sorted(set(runs["protocol"])))
    out, any_shared, any_split = [], False, False
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
            for mask, words, alone in ((on_gpu & shared_by.eq(1), "GPU-min alone", True),
                                       (on_gpu & shared_by.gt(1), "min on a shared GPU", False),
                                       (on_gpu & shared_by.isna(), "GPU-min, sharing not recorded", False)):
                sel = g[mask]
                if len(sel):
                    mean = sel["gpu_minutes"].mean()
                    # only a measurement alone can be held against the budget
                    over = alone and limit is not None and proto == limit[0] and round(mean, 1) > limit[1]
                    procs = pd.to_numeric(sel["processes"], errors="coerce").fillna(1).astype(int)
                    in_procs = f", in {_span(procs.tolist())} processes" if procs.max() > 1 else ""
                    any_split |= bool(in_procs)
                    bits.append(f"{mean:.1f} {words} (n={len(sel)}{in_procs})"
                                + (f", over the {limit[1]:g}-minute budget" if over else ""))
            if (~on_gpu).any():
                bits.append(f"CPU (n={int((~on_gpu).sum())})")
            bits += _loaded_generator_bits(g)
            any_shared |= bool((on_gpu & shared_by.gt(1)).any())
            gpu_parts.append(f"{proto} " + ", ".join(bits))
        out.append(f"{label}: {step_text} per run; " + "; ".join(gpu_parts) + ".")
    if any_shared:
        most = int(pd.to_numeric(runs["gpu_shared_by"], errors="coerce").max())
        out.append(f"Minutes on a shared GPU are wall-clock minutes of runs that shared one GPU with other runs (up to "
                   f"{most} at once): those runs did not run alone, and no GPU-minutes alone were measured for them.")
    if any_split:
        out.append("A run in several processes (resumed across device commands) counts each process's "
                   "start-up and compilation in its GPU-minutes.")
    # each model once; a run resumed on another model says which of its tasks ran where
    gpus = sorted({str(m) for models in runs["gpu_models"] if isinstance(models, list) for m in models})
    mixed = [f"{r.method_label} on {r.protocol}, seed {r.seed}: {r.gpu_name}"
             for r in runs.itertuples() if isinstance(r.gpu_models, list) and len(r.gpu_models) > 1]
    if gpus:
        out.append("GPUs: " + ", ".join(gpus) + "".join(f"; {m}" for m in mixed) + ".")
    return out


def _family_label(df: pd.DataFrame, method: str) -> str:
    display, bound = method_meta(method)
    return display + (f" ({bound} bound)" if bound else "")


def _by_tier(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``tier`` column, a record listed once in each tier it belongs to: its preset's,
    and those of the presets with the very same config (``same_as``: NNCSL's ``standard`` is its
    ``paper`` recipe, so one run of either counts in both tables). In another preset's tier the row
    takes that preset's name, so a cell never reads as mixing presets; where a seed has a record of
    each, the one run under the tier's own preset stays."""
    same = df["same_as"] if "same_as" in df else pd.Series([()] * len(df), index=df.index)
    rows = []
    for (_, r), also in zip(df.iterrows(), same):
        own = r["preset"]
        rows.append({**r, "tier": preset_tier(own), "_own": True})
        for p in (also if isinstance(also, (tuple, list)) else ()):
            if preset_tier(p) != preset_tier(own):
                rows.append({**r, "preset": p, "tier": preset_tier(p), "_own": False})
    out = pd.DataFrame(rows, columns=[*df.columns, "tier", "_own"]) if rows else df.assign(tier=[], _own=[])
    key = ["tier", "protocol", "method_label", "preset", "seed"]
    out = out.sort_values("_own", kind="stable")  # own-preset rows last: they win a duplicate
    keep = ~out[key].astype(str).duplicated(keep="last") | out["seed"].isna()
    return out[keep].sort_index(kind="stable").drop(columns="_own")


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
    df = _by_tier(df)
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
            # a method whose standard records all ran other settings (--set values, or the preset
            # since redefined: the label says which) has no record of the preset as it is: a row of
            # missing cells under its plain name, beside theirs
            have = set(runs.loc[runs["overrides_text"].fillna("") == "", "method"])
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
                runs, [lab for lab in table.index if lab in set(runs["method_label"])], protocols,
                limit=(BUDGET_PROTOCOL, BUDGET_MINUTES))
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


