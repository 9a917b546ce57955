"""One run, for ``jdcl-bench show RUN_DIR``: its config, budget, accuracies and diagnostics."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any


from .load import _is_number, _read_json
from ..records import flat_items as _flatten
from .schema import _dict, _float

# --------------------------------------------------------------------------------------------
# One run, for `jdcl-bench show RUN_DIR`
# --------------------------------------------------------------------------------------------


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

    confusion = _task_confusion_table(metrics.get("task_confusion"), task_classes)
    if confusion is not None:
        parts.append(confusion)

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
    shared = manifest.get("gpu_shared_by")
    if isinstance(shared, int) and shared > 1:
        timing_rows.append(("GPU shared by", Text(f"{shared} runs at once: GPU seconds are shared wall time, "
                                                  "not this run's alone", style="yellow")))
    if manifest.get("note"):
        timing_rows.append(("launcher note", str(manifest["note"])))
    segments = [sg for sg in manifest.get("segments") or [] if isinstance(sg, dict)]
    if len(segments) > 1:  # a resumed run: which process trained which tasks, on what
        for i, sg in enumerate(segments, 1):
            timing_rows.append((f"process {i}", f"from task {sg.get('from_task', '?')}: source {sg.get('source_hash')}, "
                                                f"{sg.get('gpu_name') or 'no GPU'}, GPU shared by {sg.get('gpu_shared_by', 1)}"))
    if manifest.get("mixed_source_hashes"):
        timing_rows.append(("code", Text("its processes ran different code: " +
                                         ", ".join(map(str, manifest["mixed_source_hashes"])), style="bold red")))
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


def _task_confusion_table(entries, task_classes):
    """The last evaluation's ``task_confusion`` (jdcl_bench.metrics) as a table: where each seen
    task's test images went, by the task of the predicted class; None when the run has none (runs
    made before it was recorded, or a foreign metrics.json)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    if not isinstance(entries, list):
        return None
    last = [(i, e) for i, e in enumerate(entries)
            if isinstance(e, list) and e and all(isinstance(r, list) and all(_is_number(v) for v in r) for r in e)]
    if not last:
        return None
    after, rows = last[-1]
    width = max(len(r) for r in rows)
    t = Table(title=f"Task confusion after task {after + 1} (%)",
              caption="row: a task's test images; column: the share predicted as a class of that task. "
                      "Diagonal: the right task; the newest task's column: recency bias", caption_justify="left",
              title_justify="left", box=box.SIMPLE_HEAD)
    t.add_column("images of", justify="right", style="bold")
    for i in range(width):
        classes = _classes_short(task_classes[i]) if i < len(task_classes) else ""
        t.add_column(f"→T{i + 1}" + (f"\n{classes}" if classes else ""), justify="right")
    for j, row in enumerate(rows):
        t.add_row(f"T{j + 1}", *[Text(_fmt(v, 1), style="bold" if i == j else ("dim" if i > after else ""))
                                 for i, v in enumerate(row)])
    return t


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
