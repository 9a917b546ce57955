"""Leaderboard, show and plot, on fake run directories with known numbers (CPU, fast)."""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from jdcl_bench.results import (Cell, leaderboard, load_records, render_csv, render_latex,
                                    render_markdown, render_show, render_show_text)

P10, P100 = "cifar10-t5", "cifar100_t10"  # the underscore exercises LaTeX escaping
TRICKY = "Fine_tune #1 & 50%"              # every LaTeX special a label is likely to carry

# (label, method, protocol) -> per-seed (final_acc, forgetting, gpu_seconds)
RUNS = {
    ("JDCL", "jdcl", P10): [(83.1, 5.0, 600.0), (84.0, 4.0, 660.0), (82.5, 6.5, 630.0)],
    ("NNCSL (M=500)", "nncsl", P10): [(80.0, 3.0, 900.0), (81.5, 2.5, 960.0)],
    (TRICKY, "tricky-method", P10): [(20.0, 70.0, 120.0)],
    ("JDCL", "jdcl", P100): [(60.0, 10.0, 1200.0), (62.0, 9.0, 1260.0)],
    ("NNCSL (M=500)", "nncsl", P100): [(55.0, 8.0, 1500.0)],
    (TRICKY, "tricky-method", P100): [(10.0, 80.0, 300.0), (11.0, 79.0, 310.0), (12.5, 78.5, 320.0)],
}


def _preset_config_json(method, preset):
    """What a run of a registered method's preset records as its method_config (a record of a preset
    whose config differs from today's gets the difference in its label); a made-up one otherwise."""
    from jdcl_bench.config import ConfigError, to_json_dict
    from jdcl_bench.registry import METHODS, RegistryError

    try:
        return to_json_dict(METHODS.get(method).config_for(preset, {}))
    except (RegistryError, ConfigError):
        return {"lr": 0.001, "replay": {"buffer": 500, "ratio": 0.5}}


def write_run(root, protocol, method, label, seed, final_acc, forgetting=5.0, gpu_seconds=60.0, *,
              complete=True, canonical=True, preset="full", reduced=False, num_tasks=5,
              subdir=None, finished_at="2024-01-01T00:00:00+00:00"):
    """A run directory laid out as jdcl_bench.records writes it."""
    run = root / (subdir or f"{protocol}/{method}-{label.replace(' ', '')}/{preset}/seed{seed}")
    run.mkdir(parents=True)
    classes = [[2 * t, 2 * t + 1] for t in range(num_tasks)]
    # Lower-triangular matrix (tasks not trained yet score 0) ending near final_acc.
    matrix = [[(final_acc + 2 * (i - j)) if j <= i else 0.0 for j in range(num_tasks)] for i in range(num_tasks)]
    seen = [final_acc + 3 * (num_tasks - 1 - i) for i in range(num_tasks)]
    config = {"protocol": protocol, "method": method, "preset": preset, "seed": seed,
              "method_config": _preset_config_json(method, preset), "run": {}}
    manifest = {
        "code_version": {"commit": "abc123", "dirty": False, "package_version": "0.1.0"},
        "packages": {"torch": "2.3.0"},
        "hardware": {"device": "cuda", "gpu_name": "NVIDIA H100 80GB HBM3", "cpu": "x86_64"},
        "dataset": {"name": "cifar10", "variant": "canonical" if canonical else "imagefolder-jpeg",
                    "canonical": canonical, "content_hash": "deadbeef",
                    "note": None if canonical else "CIFAR-10 re-encoded as JPEG (lossy); not canonical"},
        "wall_time_s": gpu_seconds * 1.1, "gpu_seconds": gpu_seconds,
        "budget": {"preset": preset, "reduced": reduced, "steps": 1000, "images_seen": 64000},
        "started_at": "2024-01-01T00:00:00+00:00", "finished_at": finished_at,
    }
    metrics = {"complete": complete, "tasks_done": num_tasks if complete else 2, "num_tasks": num_tasks,
               "task_classes": classes, "acc_matrix": matrix, "seen_acc": seen, "final_acc": final_acc,
               "avg_acc": float(np.mean(matrix[-1])), "avg_inc_acc": float(np.mean(seen)),
               "forgetting": forgetting, "method_label": label}
    for name, obj in (("config.json", config), ("manifest.json", manifest), ("metrics.json", metrics)):
        (run / name).write_text(json.dumps(obj))
    return run


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    for (label, method, protocol), seeds in RUNS.items():
        for seed, (acc, fgt, gpu) in enumerate(seeds):
            write_run(root, protocol, method, label, seed, acc, fgt, gpu)
    # Noise that must not reach the tables.
    write_run(root, P10, "jdcl", "JDCL", 7, 99.9, 0.0, complete=False)
    bad = root / "broken" / "run"
    bad.mkdir(parents=True)
    (bad / "metrics.json").write_text('{"complete": true, "final_acc": ')
    return root


def expected(protocol, label, column):
    seeds = next(v for (lab, _, p), v in RUNS.items() if p == protocol and lab == label)
    values = np.array([s[column] for s in seeds])
    return values.mean(), (values.std(ddof=1) if len(values) > 1 else np.nan), len(values)


# ------------------------------------------------------------------------------- loading


def test_load_records_skips_incomplete_and_malformed(results):
    df = load_records(results)
    assert len(df) == sum(len(v) for v in RUNS.values())
    assert 99.9 not in set(df["final_acc"])
    warnings = "\n".join(df.attrs["warnings"])
    assert "malformed metrics.json" in warnings and "broken" in warnings
    assert "1 run(s) in progress" in warnings
    assert len(df.attrs["incomplete"]) == 1
    assert df.loc[df["method_label"] == "JDCL", "gpu_minutes"].max() == pytest.approx(1260 / 60)
    assert isinstance(df["seen_acc"].iloc[0], list)
    assert set(df["gpu_name"]) == {"NVIDIA H100 80GB HBM3"}


def test_missing_manifest_and_duplicate_seed(tmp_path):
    root = tmp_path / "r"
    write_run(root, P10, "jdcl", "JDCL", 0, 70.0, subdir="old", finished_at="2024-01-01T00:00:00+00:00")
    write_run(root, P10, "jdcl", "JDCL", 0, 75.0, subdir="new", finished_at="2024-02-01T00:00:00+00:00")
    run = write_run(root, P10, "jdcl", "JDCL", 1, 80.0, subdir="nomanifest")
    (run / "manifest.json").unlink()
    df = load_records(root)
    # The rerun of seed 0 replaces the older one, so seed 0 is not counted twice.
    assert list(df["final_acc"]) == [75.0]
    warnings = "\n".join(df.attrs["warnings"])
    assert "missing manifest.json" in warnings and "duplicate run" in warnings


def test_marked_folders_stay_out_of_tables_read_from_above(tmp_path):
    from jdcl_bench.results import IGNORE_MARKER

    root = tmp_path / "results"
    write_run(root, P10, "jdcl", "JDCL", 0, 70.0, subdir="runs/a", finished_at="2024-01-01T00:00:00+00:00")
    # a later rerun of the same seed, set aside: it must neither replace nor join the seed above
    write_run(root, P10, "jdcl", "JDCL", 0, 60.0, subdir="superseded/a", finished_at="2024-02-01T00:00:00+00:00")
    (root / "superseded" / IGNORE_MARKER).write_text("")
    df = load_records(root)
    assert list(df["final_acc"]) == [70.0]
    assert any("superseded" in w and IGNORE_MARKER in w for w in df.attrs["warnings"])
    # read directly, the marked folder is an ordinary results folder
    assert list(load_records(root / "superseded")["final_acc"]) == [60.0]


def test_empty_results_folder(tmp_path):
    df = load_records(tmp_path)
    assert df.empty and df.attrs["warnings"] == []
    table = leaderboard(df)
    assert table.empty
    with pytest.raises(FileNotFoundError):
        load_records(tmp_path / "nope")


# ------------------------------------------------------------------------------- aggregation


def test_leaderboard_mean_std_n(results):
    table = leaderboard(load_records(results), "final_acc")
    assert list(table.columns) == sorted([P10, P100])  # sorted by default
    assert sorted(table.index) == sorted({k[0] for k in RUNS})
    for (label, _, protocol) in RUNS:
        cell = table.at[label, protocol]
        mean, std, n = expected(protocol, label, 0)
        assert isinstance(cell, Cell) and cell.n == n
        assert cell.mean == pytest.approx(mean)
        if n == 1:
            assert np.isnan(cell.std)
        else:
            assert cell.std == pytest.approx(std)


def test_protocol_order_and_best(results):
    df = load_records(results)
    table = leaderboard(df, "final_acc", protocols=[P10, P100])
    assert list(table.columns) == [P10, P100]
    assert table.at["JDCL", P10].best and not table.at["NNCSL (M=500)", P10].best
    fgt = leaderboard(df, "forgetting", protocols=[P10])
    assert fgt.at["NNCSL (M=500)", P10].best  # lowest forgetting wins
    assert not fgt.at["JDCL", P10].best
    gpu = leaderboard(df, "gpu_minutes", protocols=[P10])
    assert gpu.at[TRICKY, P10].best  # cheapest wins


# ------------------------------------------------------------------------------- Markdown


def md_row(text, label):
    return next(line for line in text.splitlines() if line.startswith(f"| {label} |"))


def test_markdown(results):
    df = load_records(results)
    text = render_markdown(leaderboard(df, "final_acc", protocols=[P10, P100]))
    mean, std, _ = expected(P10, "JDCL", 0)
    assert f"**{mean:.1f} ± {std:.1f}** (n=3)" in md_row(text, "JDCL")
    assert "20.0 (n=1)" in md_row(text, TRICKY)  # one seed: value, no invented std
    assert "**" not in md_row(text, "NNCSL (M=500)").split("|")[2]
    assert "Final top-1 accuracy" in text and "ddof=1" in text
    assert "†" not in text and "‡" not in text

    fgt = render_markdown(leaderboard(df, "forgetting", protocols=[P10]))
    assert "**2.8 ± 0.4** (n=2)" in md_row(fgt, "NNCSL (M=500)")
    assert "**" not in md_row(fgt, "JDCL")
    assert "lower is better" in fgt


def test_markdown_multi_metric(results):
    table = leaderboard(load_records(results), ["final_acc", "forgetting", "gpu_minutes"], protocols=[P10])
    assert isinstance(table.columns, pd.MultiIndex) and len(table.columns) == 3
    text = render_markdown(table)
    header = text.splitlines()[0]
    assert f"{P10} / Final acc. (%)" in header and f"{P10} / Forgetting (pp)" in header
    assert header.count("|") == 5


# ------------------------------------------------------------------------------- CSV


def test_csv_round_trip(results):
    df = load_records(results)
    table = leaderboard(df, ["final_acc", "forgetting"])
    back = pd.read_csv(io.StringIO(render_csv(table)))
    assert list(back.columns) == ["method", "protocol", "metric", "mean", "std", "n"]
    assert len(back) == 2 * len(RUNS)
    for (label, _, protocol) in RUNS:
        for column, metric in ((0, "final_acc"), (1, "forgetting")):
            row = back[(back["method"] == label) & (back["protocol"] == protocol) & (back["metric"] == metric)]
            mean, std, n = expected(protocol, label, column)
            assert row["mean"].item() == pytest.approx(mean, abs=1e-12)
            assert row["n"].item() == n
            if n == 1:
                assert np.isnan(row["std"].item())
            else:
                assert row["std"].item() == pytest.approx(std, abs=1e-12)


# ------------------------------------------------------------------------------- LaTeX


def tabular_rows(latex):
    body = latex[latex.index("\\toprule"):latex.index("\\bottomrule")]
    return [line for line in body.splitlines() if line.rstrip().endswith("\\\\")]


def ampersands(line):
    return len(re.findall(r"(?<!\\)&", line))


def assert_balanced(latex):
    depth = 0
    for ch in latex.replace("\\{", "").replace("\\}", ""):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0


def test_latex_compiles(results, tmp_path):
    """Single-metric, multi-metric and footnoted tables in one booktabs document."""
    if shutil.which("pdflatex") is None:
        # Only this step needs a TeX install; the other LaTeX tests check the structure everywhere.
        pytest.skip("pdflatex not on PATH")
    write_run(results, P100, "gfr", "GFR", 0, 40.0, canonical=False)
    write_run(results, P100, "dgr", "DGR", 0, 30.0, preset="fast", reduced=True)
    df = load_records(results)
    tables = [render_latex(leaderboard(df, "final_acc"), label="tab:a"),
              render_latex(leaderboard(df, ["final_acc", "forgetting", "gpu_minutes"], protocols=[P10, P100])),
              render_latex(leaderboard(df, "wall_minutes", protocols=[P100, "no_runs_yet"]))]
    doc = tmp_path / "tables.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                   + "\n".join(tables) + "\n\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "tables.pdf").stat().st_size > 0


def test_latex_single_metric(results):
    table = leaderboard(load_records(results), "final_acc", protocols=[P10, P100])
    latex = render_latex(table, label="tab:final")
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert latex.count(rule) == 1
    assert "cifar100\\_t10" in latex and "cifar100_t10" not in latex
    assert "Fine\\_tune \\#1 \\& 50\\%" in latex
    jdcl = next(line for line in latex.splitlines() if line.startswith("JDCL &"))
    mean, std, _ = expected(P10, "JDCL", 0)
    assert "\\textbf{\\boldmath $" in jdcl.split("&")[1]
    assert f"{mean:.1f} \\pm {std:.1f}" in jdcl and "{\\scriptsize (n=3)}" in jdcl
    assert "\\textbf" not in next(line for line in latex.splitlines() if line.startswith("NNCSL"))
    assert "\\caption{" in latex and "ddof=1" in latex and "\\label{tab:final}" in latex
    assert "\\dagger" not in latex and "\\ddagger" not in latex
    rows = tabular_rows(latex)
    assert len(rows) == 1 + len(table.index)
    assert {ampersands(r) for r in rows} == {len(table.columns)}
    assert_balanced(latex)


def test_latex_multi_metric(results):
    df = load_records(results)
    table = leaderboard(df, ["final_acc", "forgetting", "gpu_minutes"], protocols=[P10, P100])
    latex = render_latex(table)
    assert "\\multicolumn{3}{c}{cifar10-t5}" in latex and "\\multicolumn{3}{c}{cifar100\\_t10}" in latex
    assert "\\cmidrule(lr){2-4} \\cmidrule(lr){5-7}" in latex
    rows = tabular_rows(latex)
    # first header row spans 3 columns per protocol; the rest have one & per column
    assert ampersands(rows[0]) == 2
    assert {ampersands(r) for r in rows[1:]} == {6}
    nncsl = next(line for line in latex.splitlines() if line.startswith("NNCSL"))
    assert "\\textbf" in nncsl.split("&")[2]  # lowest forgetting on cifar10-t5
    assert "Forgetting (pp)" in latex and "Final acc. (\\%)" in latex
    assert_balanced(latex)


def test_noncanonical_and_reduced_marks(results):
    write_run(results, P100, "gfr", "GFR", 0, 40.0, canonical=False)
    write_run(results, P100, "gfr", "GFR", 1, 42.0, canonical=False)
    write_run(results, P100, "dgr", "DGR", 0, 30.0, preset="fast", reduced=True)
    df = load_records(results)

    # Only tables that contain a non-canonical run carry the dagger and its note.
    clean = leaderboard(df, "final_acc", protocols=[P10])
    assert "†" not in render_markdown(clean) and "\\dagger" not in render_latex(clean)

    table = leaderboard(df, "final_acc", protocols=[P100])
    text = render_markdown(table)
    assert "†" in md_row(text, "GFR") and "†" not in md_row(text, "JDCL")
    assert "‡" in md_row(text, "DGR") and "‡" not in md_row(text, "GFR")
    assert "CIFAR-10 re-encoded as JPEG (lossy); not canonical" in text
    assert "preset fast" in text

    latex = render_latex(table)
    gfr = next(line for line in latex.splitlines() if line.startswith("GFR &"))
    assert "$^{\\dagger}$" in gfr
    caption = latex[latex.index("\\caption{"):latex.index("\\begin{tabular}")]
    assert "$^{\\dagger}$ Non-canonical dataset: CIFAR-10 re-encoded as JPEG" in caption
    assert "$^{\\ddagger}$ Reduced compute budget (preset fast)" in caption
    assert_balanced(latex)


def test_unknown_metric(results):
    with pytest.raises(ValueError, match="unknown metric"):
        leaderboard(load_records(results), "top5")


# ------------------------------------------------------------------------------- show and plot


def test_show_renders_matrix_and_artefacts(results):
    run = next((results / P10).glob("jdcl-*/full/seed0"))
    (run / "confusion.png").write_bytes(b"\x89PNG fake")
    (run / "replay_counts_task2.json").write_text("{}")
    text = render_show_text(run)
    for fragment in ("cifar10-t5", "jdcl", "seed", "83.1", "89.1", "91.1", "Accuracy (%)",
                     "method_config.replay.buffer", "500", "NVIDIA H100", "abc123", "cifar10",
                     "confusion.png", "replay_counts_task2.json", str(run)):
        assert fragment in text, fragment
    # matrix rows: the diagonal after task 1 and the final row both appear
    assert re.search(r"\b1\s+83\.1\s+0\.0", text)
    assert re.search(r"\b5\s+91\.1\s+89\.1\s+87\.1\s+85\.1\s+83\.1", text)
    assert render_show(run) is not None


def test_show_says_a_resumed_run_shared_its_gpu_and_ran_mixed_code(results):
    import json

    run = next((results / P10).glob("jdcl-*/full/seed0"))
    man = json.loads((run / "manifest.json").read_text())
    man.update(gpu_shared_by=4, note="from task 1: one of 4 runs; from task 2: alone",
               mixed_source_hashes=["aaaa1111", "bbbb2222"],
               segments=[{"from_task": 1, "source_hash": "aaaa1111", "gpu_name": "NVIDIA H100", "gpu_shared_by": 4},
                         {"from_task": 2, "source_hash": "bbbb2222", "gpu_name": "NVIDIA H100", "gpu_shared_by": 1}])
    (run / "manifest.json").write_text(json.dumps(man))
    text = render_show_text(run, width=200)
    for fragment in ("GPU shared by", "4 runs at once", "one of 4 runs", "process 2", "from task 2: source bbbb2222",
                     "ran different code", "aaaa1111"):
        assert fragment in text, fragment


def test_show_rejects_non_run_dir(results):
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        render_show(results)
    with pytest.raises(ValueError, match="malformed"):
        render_show(results / "broken" / "run")


def test_plot_seen_accuracy(results, tmp_path):
    from jdcl_bench.results.plots import plot_seen_accuracy

    write_run(results, P10, "gfr", "GFR", 0, 40.0, canonical=False, preset="fast", reduced=True)
    out = plot_seen_accuracy(load_records(results), P10, tmp_path / "figs" / "seen.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError):
        plot_seen_accuracy(load_records(results), "no-such-protocol", tmp_path / "x.png")


def test_plot_legend_sits_below_the_axes_and_grows_the_figure(results, tmp_path):
    """A label with --set values is wider than the axes: inside them the legend hid the lines and was
    cut at the figure's edge. Below the axes, each entry adds height to the saved figure."""
    from matplotlib.image import imread

    from jdcl_bench.results.plots import plot_seen_accuracy

    one = tmp_path / "one"
    write_run(one, P10, "jdcl", "JDCL", 0, 50.0, preset="fast")
    heights = [imread(plot_seen_accuracy(load_records(one), P10, tmp_path / "one.png")).shape[0]]
    for i in range(6):
        write_run(one, P10, "jdcl", f"JDCL [replay_per_class={1000 + i}, global_new_source=real-diffusion]", 0,
                  50.0 + i, preset="fast", subdir=f"{P10}/jdcl/fast+{i}/seed0")
    heights.append(imread(plot_seen_accuracy(load_records(one), P10, tmp_path / "seven.png")).shape[0])
    assert heights[1] - heights[0] > 6 * 8 * 150 / 72  # six more 8-point lines at 150 dpi


def test_reference_bounds_are_listed_last_and_never_bold(results):
    # joint (upper bound) beats every continual learner, yet the bold cell stays among the learners
    write_run(results, P10, "joint", "joint", 0, 95.0, 1.0)
    write_run(results, P10, "joint", "joint", 1, 94.0, 1.5)
    table = leaderboard(load_records(results), "final_acc")
    assert list(table.index)[-1] == "Joint (upper bound)"
    assert not table.at["Joint (upper bound)", P10].best
    assert table.at["JDCL", P10].best
    md = render_markdown(table)
    assert "never bold" in md and "**95" not in md and "**94.5" not in md


def test_times_from_a_shared_gpu_are_marked_and_not_ranked(results):
    for seed, shared in ((0, 4), (1, None)):
        d = write_run(results, P10, "gfr", "GFR", seed, 30.0, 50.0, gpu_seconds=600.0)
        if shared:
            man = json.loads((d / "manifest.json").read_text())
            man["gpu_shared_by"] = shared
            (d / "manifest.json").write_text(json.dumps(man))
    table = leaderboard(load_records(results), ["final_acc", "gpu_minutes"])
    cell = table.at["GFR", (P10, "gpu_minutes")]
    assert cell.shared_gpu and not any(c.best for c in table[(P10, "gpu_minutes")] if c is not None)
    assert "§" in render_markdown(table)


def test_bare_method_name_takes_the_label_of_records_with_a_matching_config(tmp_path):
    """Old records name an uninstalled plugin's method bare ("oldm"); a newer record of the same
    config names its label, and the seeds then share one row. A setting only one of them has (added
    later) does not count against a match; a setting they both have and disagree on does."""
    root = tmp_path / "r"

    def run(label, seed, **config):
        d = write_run(root, P10, "oldm", label, seed, 50.0 + seed)
        cfg = json.loads((d / "config.json").read_text())
        cfg["method_config"].update(config)
        (d / "config.json").write_text(json.dumps(cfg))

    run("Old (M=500)", 0, buffer=500, compile=True)  # written after display names and `compile` came in
    run("oldm", 1, buffer=500)                       # before both: the same config, so the same label
    run("oldm", 2, buffer=5120)                      # another buffer: no record names its label
    labels = dict(zip(load_records(root)["seed"], load_records(root)["method_label"]))
    assert labels == {0: "Old (M=500)", 1: "Old (M=500)", 2: "oldm"}
    assert leaderboard(load_records(root)).loc["Old (M=500)", P10].n == 2


# ---- the budget-matched table: one table per preset tier (issue 21) -----------------------------------

def _tiered(tmp_path):
    root = tmp_path / "tiers"
    write_run(root, P10, "jdcl", "JDCL", 0, 80.0, preset="standard", reduced=True, gpu_seconds=1500.0)
    write_run(root, P10, "jdcl", "JDCL", 1, 82.0, preset="standard", reduced=True, gpu_seconds=1560.0)
    shared = write_run(root, P10, "gfr", "GFR", 0, 30.0, preset="standard", reduced=True, gpu_seconds=600.0)
    write_run(root, P10, "nncsl", "NNCSL (M=5120)", 0, 74.0, preset="paper-5120")
    write_run(root, P10, "dgr", "DGR (diffusion)", 0, 20.0, preset="fast", reduced=True)
    write_run(root, P100, "dgr", "DGR (diffusion)", 0, 10.0, preset="fast", reduced=True)
    write_run(root, P10, "finetune", "Fine-tune", 0, 19.0, preset="smoke", reduced=True)
    old = write_run(root, P10, "gfr", "GFR", 1, 25.0, preset="x", subdir="old/gfr/seed1")
    for d, edit in ((shared, {"gpu_shared_by": 4}), (old, {})):
        man = json.loads((d / "manifest.json").read_text())
        man.update(edit)
        (d / "manifest.json").write_text(json.dumps(man))
    cfg = json.loads((old / "config.json").read_text())
    del cfg["preset"]  # an older record: no preset recorded anywhere
    (old / "config.json").write_text(json.dumps(cfg))
    man = json.loads((old / "manifest.json").read_text())
    del man["budget"]["preset"]
    (old / "manifest.json").write_text(json.dumps(man))
    for d in root.glob(f"{P10}/jdcl-*/standard/seed*"):  # the standard JDCL runs ran alone
        man = json.loads((d / "manifest.json").read_text())
        (d / "manifest.json").write_text(json.dumps({**man, "gpu_shared_by": 1}))
    return root


def test_tier_tables_main_table_is_standard_only_and_says_what_is_missing(tmp_path):
    from jdcl_bench.results import preset_tier, tier_tables

    assert [preset_tier(p) for p in ("standard", "paper-5120", "fast-5120", "smoke", None)] == \
        ["standard", "paper", "fast", "smoke", "unknown"]
    df = load_records(_tiered(tmp_path))
    (main, paper), left = tier_tables(df, "final_acc", [P10, P100])
    assert main.attrs["tier"] == "standard" and paper.attrs["tier"] == "paper"
    assert left == {"fast": 2, "smoke": 1, "unknown": 1}
    # JDCL and GFR have standard runs; every other method in the folder gets a row of missing cells
    jd = main.at["JDCL", P10]
    assert isinstance(jd, Cell) and jd.n == 2 and jd.mean == pytest.approx(81.0)
    assert main.at["JDCL", P100] is None and main.at["GFR", P10].n == 1   # not the preset-less GFR seed
    for row in ("DGR (diffusion)", "NNCSL", "Fine-tune (lower bound)"):
        assert main.loc[row].isna().all() or all(c is None for c in main.loc[row])
    assert list(main.index)[-1] == "Fine-tune (lower bound)"  # bounds last, as ever
    md = render_markdown(main)
    assert "| DGR (diffusion) | missing | missing |" in md and "| JDCL | **81.0 ± 1.4** (n=2) ‡ | missing |" in md
    assert "Cells reading missing: no standard record yet (8 of 10 cells)" in md
    assert "does not fall back on other presets" in md
    # the caption states each method's budget: steps from the manifests, GPU-minutes alone or not
    assert "JDCL: steps 1,000 per run; cifar10-t5 25.5 GPU-min alone (n=2)." in md
    assert "GFR: steps 1,000 per run; cifar10-t5 10.0 min on a shared GPU (n=1)." in md
    assert "did not run alone" in md
    assert paper.at["NNCSL (M=5120)", P10].mean == 74.0 and "Preset paper" in render_markdown(paper)


def test_budget_matched_caption_says_when_a_run_alone_went_over_the_budget(tmp_path):
    from jdcl_bench.results import tier_tables

    root = _tiered(tmp_path)
    md = render_markdown(tier_tables(load_records(root), "final_acc", [P10, P100])[0][0])
    assert "25.5 GPU-min alone (n=2)." in md and "over the" not in md
    slow = write_run(root, P10, "jdcl", "JDCL", 2, 84.0, preset="standard", reduced=True, gpu_seconds=3300.0)
    man = json.loads((slow / "manifest.json").read_text())
    (slow / "manifest.json").write_text(json.dumps({**man, "gpu_shared_by": 1}))
    md = render_markdown(tier_tables(load_records(root), "final_acc", [P10, P100])[0][0])
    assert "cifar10-t5 35.3 GPU-min alone (n=3), over the 30-minute budget." in md
    # minutes on a shared GPU are not a measurement alone: never called over (or within) the budget
    assert "10.0 min on a shared GPU (n=1)." in md


def test_budget_caption_says_how_many_processes_a_resumed_run_took(tmp_path):
    """A run resumed across device commands pays each process's start-up and compilation (the
    cifar10-semi-5pct standard record: four processes, 38.2 GPU-minutes): the caption says so."""
    from jdcl_bench.results import tier_tables

    root = _tiered(tmp_path)
    md = render_markdown(tier_tables(load_records(root), "final_acc", [P10, P100])[0][0])
    assert "processes" not in md
    split = write_run(root, P10, "jdcl", "JDCL", 2, 84.0, preset="standard", reduced=True)
    man = json.loads((split / "manifest.json").read_text())
    segs = [{"from_task": t, "source_hash": "x", "gpu_name": "G", "gpu_shared_by": 1} for t in (1, 2, 4)]
    (split / "manifest.json").write_text(json.dumps({**man, "gpu_shared_by": 1, "segments": segs}))
    md = render_markdown(tier_tables(load_records(root), "final_acc", [P10, P100])[0][0])
    assert "GPU-min alone (n=3, in 1–3 processes)" in md
    assert "counts each process's start-up and compilation" in md


def test_a_run_whose_config_is_another_presets_counts_in_both_tables(tmp_path):
    """``same_as`` (runner.py): NNCSL's standard preset is its paper recipe, so a paper run is also a
    standard record, shown under the standard name there (no "mixes presets" warning); where a seed
    has a run of each, the tier's own one stays and the seed is counted once."""
    from jdcl_bench.results import tier_tables

    root = tmp_path / "r"

    def run(preset, seed, acc, same_as):
        d = write_run(root, P10, "nncsl", "NNCSL", seed, acc, preset=preset)
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, "same_as": same_as}))

    run("paper", 0, 70.0, ["standard"])
    run("paper", 1, 72.0, ["standard"])
    run("standard", 1, 73.0, ["paper"])
    write_run(root, P10, "gfr", "GFR", 0, 25.0, preset="fast", reduced=True)  # no same_as: its own tier only
    (main, paper), left = tier_tables(load_records(root), "final_acc", [P10])
    for table, seed1 in ((main, 73.0), (paper, 72.0)):  # each tier keeps its own run of seed 1
        cell = table.at["NNCSL (M=500)", P10]  # the label NNCSL gives its standard/paper config
        assert cell.n == 2 and cell.mean == pytest.approx((70.0 + seed1) / 2)
        assert not table.attrs["warnings"]
    assert main.attrs["tier_presets"] == ["standard"] and paper.attrs["tier_presets"] == ["paper"]
    assert left == {"fast": 1}


def test_tier_tables_all_and_named_tiers_keep_every_record_readable(tmp_path):
    from jdcl_bench.results import render_tiers, tier_tables

    df = load_records(_tiered(tmp_path))
    tabs, left = tier_tables(df, "final_acc", include_all=True)
    assert [t.attrs["tier"] for t in tabs] == ["standard", "paper", "fast", "smoke", "unknown"] and left == {}
    fast = tabs[2]
    assert fast.at["DGR (diffusion)", P100].mean == 10.0 and "Preset fast (fast): a reduced budget" in render_markdown(fast)
    assert "Records without a preset" in render_markdown(tabs[4])
    (only,), left = tier_tables(df, "final_acc", tiers=["fast-5120"])  # a preset names its tier
    assert only.attrs["tier"] == "fast" and left == {"standard": 3, "paper": 1, "smoke": 1, "unknown": 1}
    md = render_tiers(*tier_tables(df, "final_acc"))
    assert "Not in these tables: 4 record(s) of other presets (fast: 2, smoke: 1, unknown: 1)" in md
    # CSV and LaTeX carry the same tables: the tier, missing cells as rows
    csv = pd.read_csv(io.StringIO(render_tiers(tabs, {}, "csv")))
    assert list(csv.columns) == ["table", "method", "protocol", "metric", "mean", "std", "n", "status"]
    assert set(csv["table"]) == {"standard", "paper", "fast", "smoke", "unknown"}
    miss = csv[(csv["table"] == "standard") & (csv["status"] == "missing")]
    assert len(miss) == 8 and (miss["n"] == 0).all() and miss["mean"].isna().all()
    ok = csv[(csv["table"] == "standard") & (csv["method"] == "JDCL") & (csv["protocol"] == P10)]
    assert ok["mean"].iloc[0] == pytest.approx(81.0) and ok["n"].iloc[0] == 2
    tex = render_tiers(tabs, {}, "latex")
    assert tex.count("\\begin{table}") == 5 and "tab:leaderboard-standard" in tex and "DGR (diffusion) & missing" in tex


def test_cli_table_tiers(tmp_path):
    from click.testing import CliRunner

    from jdcl_bench.cli import main

    root = _tiered(tmp_path)
    r = CliRunner().invoke(main, ["table", "--results", str(root)])
    assert r.exit_code == 0 and "missing" in r.output and "--preset fast" in r.output
    assert "| JDCL |" in r.output and "20.0 (n=1)" not in r.output  # the fast DGR run is not in the main table
    r = CliRunner().invoke(main, ["table", "--results", str(root), "--preset", "fast"])
    assert r.exit_code == 0 and "20.0 (n=1)" in r.output and "Budget-matched" not in r.output
    r = CliRunner().invoke(main, ["table", "--results", str(root), "--all", "--format", "csv"])
    assert r.exit_code == 0 and r.output.startswith("table,method,protocol,metric,mean,std,n,status")
    r = CliRunner().invoke(main, ["table", "--results", str(root), "--all", "--preset", "fast"])
    assert r.exit_code == 2 and "exclude each other" in r.output


def test_overrides_a_preset_has_since_taken_make_the_run_one_of_its_seeds(tmp_path):
    """A run made as `fast --set lr=5e-4` before `fast` took lr 5e-4 is, by its config, a `fast` run:
    one of the preset's seeds, its config.json still saying what was typed. An override the preset
    took while another still differs drops out of the label; the other stays. Each is read against
    the preset as the code defines it now, so a run whose config differs from it keeps its overrides."""
    from dataclasses import asdict

    from jdcl_bench.methods.jdcl import JDCL

    root = tmp_path / "results"
    fast_now = json.loads(json.dumps(asdict(JDCL.config_for("fast", {}))))

    def run(seed, overrides, **changes):
        d = write_run(root, P10, "jdcl", "JDCL", seed, 50.0 + seed, preset="fast",
                      subdir=f"{P10}/jdcl/fast+{seed}/seed{seed}")
        config = json.loads((d / "config.json").read_text())
        config["method_config"] = {**fast_now, **changes}
        config["overrides"] = overrides
        (d / "config.json").write_text(json.dumps(config))

    run(0, {"lr": "5e-4", "ddim_steps": str(fast_now["ddim_steps"])})           # what fast gives today
    run(1, {"lr": "5e-4", "local_steps": "1600"}, local_steps=1600)              # lr taken, steps not
    run(2, {"lr": "1e-3"}, lr=1e-3)                                              # differs from today's fast
    df = load_records(root)
    labels = dict(zip(df["seed"], df["method_label"]))
    assert labels == {0: "JDCL", 1: "JDCL [local_steps=1600]", 2: "JDCL [lr=1e-3]"}
    assert dict(zip(df["seed"], df["overrides"]))[0] == {}
    assert json.loads((root / P10 / "jdcl/fast+0/seed0/config.json").read_text())["overrides"]["lr"] == "5e-4"


def test_a_run_with_overrides_is_its_own_row_not_the_presets_seed(tmp_path):
    """`--set local_steps=1600` on `fast` is not the `fast` preset: it must neither replace the preset's
    record of the same seed (the newer of two duplicates wins) nor be averaged with it."""
    root = tmp_path / "results"
    write_run(root, P10, "jdcl", "JDCL", 0, 46.5, preset="fast", finished_at="2024-01-01T00:00:00+00:00")
    longer = write_run(root, P10, "jdcl", "JDCL", 0, 53.9, preset="fast", subdir=f"{P10}/jdcl/fast+0ff0431e/seed0",
                       finished_at="2024-01-02T00:00:00+00:00")
    config = json.loads((longer / "config.json").read_text())
    config["overrides"] = {"local_steps": "1600", "global_steps": "1000"}
    config["method_config"].update(local_steps=1600, global_steps=1000)
    (longer / "config.json").write_text(json.dumps(config))

    df = load_records(root)
    assert sorted(df["final_acc"]) == [46.5, 53.9]
    labels = dict(zip(df["final_acc"], df["method_label"]))
    assert labels[46.5] == "JDCL" and labels[53.9] == "JDCL [global_steps=1000, local_steps=1600]"
    table = leaderboard(df, "final_acc")
    assert len(table) == 2


def test_a_record_of_a_preset_since_redefined_is_labelled_by_what_it_ran(tmp_path):
    """`standard` took the replay levers after a run of it: that run is not a seed of today's
    `standard` (never averaged with one), its label names the values it ran (a field it predates at
    its default), measurement-only fields do not count, and today's preset gets a row of missing
    cells beside it until a run of it lands."""
    from jdcl_bench.results import tier_tables

    root = tmp_path / "results"
    old = write_run(root, P10, "jdcl", "JDCL", 0, 71.4, preset="standard", reduced=True)
    config = json.loads((old / "config.json").read_text())
    config["method_config"].update(replay_per_class=1000, replay_confidence_threshold=0.0, diagnostics=False)
    del config["method_config"]["global_new_source"]  # a field added after the run: its default, "replay"
    (old / "config.json").write_text(json.dumps(config))
    df = load_records(root)
    assert df["method_label"].tolist() == \
        ["JDCL [global_new_source=replay, replay_confidence_threshold=0.0, replay_per_class=1000]"]
    (main, _), _ = tier_tables(df, "final_acc", [P10])
    assert main.at["JDCL", P10] is None and main.at[df["method_label"][0], P10].mean == 71.4

    write_run(root, P10, "jdcl", "JDCL", 1, 75.9, preset="standard", reduced=True)  # today's standard
    (main, _), _ = tier_tables(load_records(root), "final_acc", [P10])
    assert main.at["JDCL", P10].n == 1 and main.at["JDCL", P10].mean == 75.9
    # no method config recorded: nothing to compare, the record keeps its preset's label
    bare = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({k: v for k, v in bare.items() if k != "method_config"}))
    assert set(load_records(root)["method_label"]) == {"JDCL"}


@pytest.mark.parametrize("regime, label", [("full", "JDCL"), ("fraction", "JDCL [ssl_ema_warmup=False]")])
def test_a_semi_supervised_field_redefined_in_a_preset_labels_only_semi_supervised_records(tmp_path, regime, label):
    """`digits` took `ssl_ema_warmup` after runs of it: a digits-t5 run never read the field (it is
    still one of the preset's seeds), a digits-semi run did (its own row, named by the value it ran)."""
    root = tmp_path / "results"
    run = write_run(root, "digits-t5", "jdcl", "JDCL", 0, 91.1, preset="digits", reduced=True)
    config = json.loads((run / "config.json").read_text())
    assert config["method_config"]["ssl_ema_warmup"] is True  # the preset as it is today
    config["method_config"]["ssl_ema_warmup"] = False
    config["protocol_spec"] = {"name": "digits-t5", "label_regime": regime}
    (run / "config.json").write_text(json.dumps(config))
    assert load_records(root)["method_label"].tolist() == [label]


def test_minutes_count_the_generators_a_run_loaded_from_another_runs_cache(tmp_path):
    """GUIDE loads DGR's cached generators and does not pay for them in its own GPU time: its cost
    (the table's minutes, the budget check) adds their recorded training time, and the caption says
    so; where a loaded generator did not record it, the minutes leave it out and the caption says that."""
    from jdcl_bench.results import tier_tables

    root = tmp_path / "r"

    def guide(seed, budget_extra):
        d = write_run(root, P10, "guide", "GUIDE", seed, 50.0, gpu_seconds=300.0, preset="standard", reduced=True)
        man = json.loads((d / "manifest.json").read_text())
        man["gpu_shared_by"] = 1
        man["budget"].update({"generator_source": ["cache"] * 5, **budget_extra})
        (d / "manifest.json").write_text(json.dumps(man))

    guide(0, {"generator_seconds_loaded": 600.0, "generators_loaded_untimed": 0, "generators_loaded_shared_by": 1})
    rec = load_records(root)
    assert rec["gpu_minutes"].iloc[0] == pytest.approx(5.0 + 10.0) and rec["gpu_minutes_own"].iloc[0] == pytest.approx(5.0)
    md = render_markdown(tier_tables(rec, "final_acc", [P10])[0][0])
    assert "15.0 GPU-min alone (n=1)" in md and "including 10.0 min of generator training" in md
    assert "not counting" not in md

    guide(1, {})  # a record from before generators recorded their time
    rec = load_records(root).sort_values("seed")
    assert rec["gpu_minutes"].tolist() == pytest.approx([15.0, 5.0]) and np.isnan(rec["generator_minutes_loaded"].iloc[1])
    md = render_markdown(tier_tables(rec, "final_acc", [P10])[0][0])
    assert "not counting the generators loaded from another run's cache (n=1" in md
