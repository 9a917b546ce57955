"""Reading a results folder into one DataFrame row per complete run (``load_records``)."""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..records import flat_items as _flatten
from .schema import IGNORE_MARKER, RECORD_COLUMNS, _dict, _float


@functools.lru_cache(maxsize=None)
def method_meta(method: str) -> tuple[str, str | None]:
    """(display name, bound) of a registered method; (name, None) when it cannot be loaded, so a
    table of old records still renders after a plugin is uninstalled."""
    try:
        from ..registry import METHODS

        cls = METHODS.get(method)
    except Exception:  # a broken or missing plugin must not sink a table
        return method, None
    return getattr(cls, "display_name", "") or method, getattr(cls, "bound", None)


def config_label(method: str, method_config: dict) -> str | None:
    """The label the method gives a record of this config (``Method.label_for_config``), or None:
    the method keeps the recorded label, or it cannot be loaded (a plugin not installed)."""
    try:
        from ..registry import METHODS

        fn = getattr(METHODS.get(method), "label_for_config", None)
        label = fn(method_config) if fn is not None else None
    except Exception:  # a broken plugin must not sink a table; the recorded label stays
        return None
    return label if isinstance(label, str) and label else None


@functools.lru_cache(maxsize=None)
def _preset_config(method: str, preset: str) -> tuple[tuple[str, Any], ...] | None:
    """The flattened config ``--preset PRESET`` gives METHOD with today's code (JSON values, as a
    record's config.json holds them; ``""``: the config class's defaults), or None when the method or
    preset cannot be loaded."""
    try:
        from ..config import to_json_dict
        from ..registry import METHODS

        cls = METHODS.get(method)
        cfg = cls.Config() if preset == "" else cls.config_for(preset, {})  # "": no preset, the defaults
        return tuple(_flatten(to_json_dict(cfg)))
    except Exception:  # a broken or missing plugin, a preset since removed: the recorded overrides stay
        return None


def effective_overrides(method: str, preset: str | None, overrides: dict, method_config: dict) -> dict:
    """The --set values of a record that still make it differ from its preset as the code defines it
    today. An override equal to the preset's value today restates the preset (the preset has since
    taken it) and is dropped; when the record's whole config is what the preset gives today, none is
    left and the record is one of the preset's seeds. Every other override stays."""
    if not overrides or not preset:
        return dict(overrides)
    current = _preset_config(method, str(preset))
    if current is None:
        return dict(overrides)
    now = dict(current)
    ran = dict(_flatten(method_config))
    if all(k in ran and ran[k] == v for k, v in now.items()):
        return {}
    return {k: v for k, v in overrides.items() if not (k in now and k in ran and ran[k] == now[k])}


# Fields that change how a run is measured or executed, not what it computes (replay diagnostics,
# sample grids, compilation): a preset that changed one of them was not redefined for its records.
NOT_RECIPE = frozenset({"diagnostics", "grid_per_class", "compile", "compile_mode"})


def _unused(field: str, semi: bool) -> bool:
    """A field the record's run never read. Fields named ``ssl_*`` configure a method's
    semi-supervised part (the naming rule of docs/plugins.md): a run of a fully supervised protocol
    does not read them, so a preset that changed one was not redefined for it. Semi-supervised-only
    fields named otherwise (DGR's ``generator.labeller_*``) still count: at worst a supervised
    record gets a row of its own that it did not need."""
    name = field.rsplit(".", 1)[-1]
    return name in NOT_RECIPE or (not semi and name.startswith("ssl_"))


def preset_drift(method: str, preset: str | None, overrides: dict, method_config: dict,
                 semi: bool = True) -> dict:
    """The values a record ran with where its preset, as the code defines it today, says otherwise
    (not among the record's --set values): the preset was redefined since the run. Such a record is
    not one of today's preset's seeds; its label names these values as it would name --set values,
    so it keeps a row (and a curve point) of its own. A field the record lacks was added after the
    run and counts at its default: new options default to what the code did before them. ``semi``:
    the record's protocol has unlabelled data (when not known, every field counts)."""
    current = _preset_config(method, str(preset)) if preset and method_config else None
    if current is None:  # no preset, or no config recorded: nothing to compare
        return {}
    ran = {**dict(_preset_config(method, "") or ()), **dict(_flatten(method_config))}
    return {k: ran[k] for k, v in current
            if k in ran and ran[k] != v and k not in overrides and not _unused(k, semi)}


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


def loaded_generator_minutes(budget: dict) -> float:
    """Minutes of generator training a run used but did not pay for: generators loaded from the
    cache another run wrote (GUIDE loads DGR's). 0.0 when it loaded none; NaN when a loaded one did
    not record its training time (caches written before baselines recorded it)."""
    sources = budget.get("generator_source")
    if not isinstance(sources, list) or "cache" not in sources:
        return 0.0
    seconds = budget.get("generator_seconds_loaded")
    if budget.get("generators_loaded_untimed") or seconds is None or not _is_number(seconds):
        return math.nan
    return float(seconds) / 60.0


def _record(run_dir: Path, metrics: dict, config: dict, manifest: dict) -> dict:
    dataset = _dict(manifest.get("dataset"))
    budget = _dict(manifest.get("budget"))
    code = _dict(manifest.get("code_version"))
    hw = _dict(manifest.get("hardware"))
    canonical = dataset.get("canonical")
    reduced = budget.get("reduced")
    # GPU time only: a run on the CPU has no GPU-minutes, and loads generators trained on the CPU
    loaded = loaded_generator_minutes(budget) if hw.get("device") == "cuda" else 0.0
    own = _float(manifest.get("gpu_seconds")) / 60.0
    display, bound = method_meta(config["method"])
    label = str(metrics.get("method_label") or config["method"])
    if label == config["method"]:  # records written before methods had display names
        label = display
    # A label follows from the config the record ran with, not from today's defaults: NNCSL's
    # records from before the BatchNorm default changed say "NNCSL (M=500)" in metrics.json but ran
    # with train-mode BN, which their config.json says.
    method_config = _dict(config.get("method_config"))
    from_config = config_label(config["method"], method_config)
    if from_config is not None:
        label = from_config
    bare = label == config["method"]  # no display name recorded or installed: see _adopt_recorded_labels
    if bound:
        label += f" ({bound} bound)"
    base_label = label
    # A run with --set overrides is not its preset: its own row, never averaged with (or replacing)
    # the preset's seeds. Its overrides are part of the label, as in its run directory's name, except
    # those the preset has taken since (effective_overrides: a run whose config is today's preset is
    # one of its seeds; its config.json still says what was typed).
    preset = config.get("preset") or budget.get("preset")
    typed = _dict(config.get("overrides"))
    overrides = effective_overrides(config["method"], preset, typed, method_config)
    # A record of a preset since redefined names what it ran differently, unless its method's label
    # already says (config_label: "JDCL (lr 2e-4, DDIM-50)", "NNCSL (M=500, BN in train mode)").
    # They are named in the label only: they are not --set values (compare's "differs from the
    # published setting" reads the config the record ran with, not them).
    named = dict(overrides)
    if from_config is None:
        # Protocol.semi from the recorded spec; older records lack it: then every field counts
        semi = _dict(config.get("protocol_spec")).get("label_regime") != "full"
        named.update(preset_drift(config["method"], preset, typed, method_config, semi))
    overrides_text = ", ".join(f"{k}={v}" for k, v in sorted(named.items()))
    if overrides_text:
        label += f" [{overrides_text}]"
    return {
        "_bare_label": bare,
        "base_label": base_label,
        "overrides_text": overrides_text,
        "_method_config": dict(_flatten(method_config)),
        "protocol": config["protocol"],
        "method": config["method"],
        # Rows of a table are labels ("NNCSL (M=500)"), so two configs of one method stay apart.
        "method_label": label,
        "bound": bound,
        "gpu_shared_by": manifest.get("gpu_shared_by"),
        "preset": preset,
        # other presets with this very config (runner.py): the run counts in their tables too
        "same_as": tuple(str(p) for p in config.get("same_as") or () if isinstance(p, str)),
        "seed": config.get("seed"),
        "final_acc": _float(metrics.get("final_acc")),
        "avg_acc": _float(metrics.get("avg_acc")),
        "avg_inc_acc": _float(metrics.get("avg_inc_acc")),
        "forgetting": _float(metrics.get("forgetting")),
        # what the result cost: the run's own GPU time plus the training of generators it loaded from
        # another run's cache (GUIDE after DGR), where those recorded it (generator_minutes_loaded)
        "gpu_minutes": own + (0.0 if math.isnan(loaded) else loaded),
        "gpu_minutes_own": own,
        "generator_minutes_loaded": loaded,
        "generators_loaded_shared_by": budget.get("generators_loaded_shared_by"),
        # a run resumed across commands lists each process (runner.py); each paid its own start-up
        "processes": max(1, len(manifest.get("segments") or [])),
        "wall_minutes": _float(manifest.get("wall_time_s")) / 60.0,
        "tasks_done": metrics.get("tasks_done"),
        "num_tasks": metrics.get("num_tasks"),
        "dataset_name": dataset.get("name"),
        "dataset_variant": dataset.get("variant"),
        # Unknown stays None: only an explicit "canonical": false earns the dagger.
        "dataset_canonical": canonical if isinstance(canonical, bool) else None,
        "dataset_note": dataset.get("note"),
        "reduced": reduced if isinstance(reduced, bool) else None,
        **_gpu_names(manifest, hw, metrics.get("tasks_done")),
        "device": hw.get("device"),
        "commit": code.get("commit"),
        "dirty": code.get("dirty"),
        "finished_at": manifest.get("finished_at"),
        "seen_acc": list(metrics.get("seen_acc") or []),
        "acc_matrix": metrics.get("acc_matrix") or [],
        "run_dir": str(run_dir),
        "budget": budget,                       # the manifest's budget (steps etc. in the method's units)
        "method_config": method_config,
        "overrides": overrides,   # the run's --set values that differ from its preset today
    }


def _gpu_names(manifest: dict, hw: dict, tasks_done: Any) -> dict:
    """``gpu_name``: the GPU a run ran on, or for a run resumed on another GPU model each model with
    its tasks; ``gpu_models``: the models alone (for a plot's title, without parsing that text).

    ``hardware`` holds the last process's machine only, so a run whose first tasks ran on an H100
    and the rest on an H200 would otherwise be credited to the H200 alone (its GPU-minutes mix both).
    """
    segs = [s for s in manifest.get("segments") or [] if isinstance(s, dict) and _is_number(s.get("from_task"))]
    models = sorted({str(s.get("gpu_name")) for s in segs if s.get("gpu_name")})
    if len({s.get("gpu_name") for s in segs}) < 2:
        name = hw.get("gpu_name")
        return {"gpu_name": name, "gpu_models": [name] if name else []}
    spans: list[list] = []                                  # [gpu, first task, last task]
    for i, seg in enumerate(segs):
        last = segs[i + 1]["from_task"] - 1 if i + 1 < len(segs) else (tasks_done or seg["from_task"])
        if spans and spans[-1][0] == seg.get("gpu_name"):
            spans[-1][2] = last
        else:
            spans.append([seg.get("gpu_name"), seg["from_task"], last])
    return {"gpu_name": ", ".join(f"{g or 'no GPU'} (task{'s' if b > a else ''} {a}{f'-{b}' if b > a else ''})"
                                  for g, a, b in spans),
            "gpu_models": models}


def _short_list(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def load_records(results_dir: str | Path) -> pd.DataFrame:
    """Read every complete run below ``results_dir`` into a DataFrame, one row per run.

    Run directories are found recursively by their ``metrics.json``. Columns: ``protocol``,
    ``method``, ``method_label``, ``preset``, ``seed``, the metrics ``final_acc``, ``avg_acc``,
    ``avg_inc_acc``, ``forgetting``, ``gpu_minutes``, ``wall_minutes``, then ``tasks_done``,
    ``num_tasks``, ``dataset_name``, ``dataset_variant``, ``dataset_canonical`` (bool or None),
    ``dataset_note``, ``reduced`` (reduced-budget preset: bool or None), ``gpu_shared_by``, ``processes`` (1, or
    how many processes a resumed run took), ``gpu_name``, ``gpu_models``, ``device``,
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


