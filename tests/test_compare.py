import json

import pandas as pd
import pytest

from jdcl_bench.results.compare import comparison, load_published, render_comparison
from jdcl_bench.results import load_records


def _record(root, method, seed, acc, label=None, preset="fast"):
    d = root / "runs" / "cifar10-t5" / method / preset / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"protocol": "cifar10-t5", "method": method, "preset": preset, "seed": seed}))
    (d / "manifest.json").write_text(json.dumps({
        "code_version": {"commit": "x", "dirty": False}, "hardware": {"device": "cuda", "gpu_name": "H100"},
        "dataset": {"name": "cifar10", "variant": "imagefolder-jpeg", "canonical": False, "note": "jpeg"},
        "wall_time_s": 600.0, "gpu_seconds": 600.0, "budget": {"preset": preset, "reduced": True}}))
    (d / "metrics.json").write_text(json.dumps({
        "complete": True, "tasks_done": 5, "num_tasks": 5, "task_classes": [[0, 1]] * 5,
        "acc_matrix": [[acc] * 5] * 5, "seen_acc": [acc] * 5, "final_acc": acc, "avg_acc": acc,
        "avg_inc_acc": acc, "forgetting": 1.0, "method_label": label or method}))
    return d


def test_comparison_pairs_published_and_suite_numbers(tmp_path):
    _record(tmp_path, "jdcl", 0, 30.0)
    _record(tmp_path, "jdcl", 1, 34.0)
    _record(tmp_path, "nncsl", 0, 50.0, label="NNCSL (M=500)")
    pub = tmp_path / "published.toml"
    pub.write_text('[[result]]\nmethod = "jdcl"\nprotocol = "cifar10-t5"\nfinal_acc = 83.69\nsource = "paper"\n'
                   'budget = "full"\n[[result]]\nmethod = "nncsl"\nlabel = "NNCSL (M=5120)"\nprotocol = "cifar10-t5"\n'
                   'final_acc = 79.3\nsource = "paper"\n[[result]]\nmethod = "gfr"\nprotocol = "cifar10-t5"\n'
                   'final_acc = 26.7\nsource = "paper"\n')
    df = comparison(load_records(tmp_path), load_published(pub))
    assert list(df["method"]) == ["JDCL"]  # the display name; NNCSL's buffer label differs, GFR has no runs
    row = df.iloc[0]
    assert row["suite_final_acc"] == pytest.approx(32.0) and row["suite_seeds"] == 2
    assert row["suite_std"] == pytest.approx(pd.Series([30.0, 34.0]).std(ddof=1))
    assert row["gap_pp"] == pytest.approx(32.0 - 83.69)
    text = render_comparison(df)
    assert "83.69" in text and "32.00 ± 2.83 (n=2)" in text and "preset fast" in text and "imagefolder-jpeg" in text


def test_published_entries_must_name_their_source(tmp_path):
    pub = tmp_path / "p.toml"
    pub.write_text('[[result]]\nmethod = "jdcl"\nprotocol = "cifar10-t5"\nfinal_acc = 1.0\n')
    with pytest.raises(ValueError, match="source"):
        load_published(pub)


def test_the_committed_published_file_parses():
    from pathlib import Path

    df = load_published(Path(__file__).parent.parent / "results" / "published.toml")
    assert {"jdcl", "guide", "dgr", "gfr", "nncsl", "joint"} <= set(df["method"])


def test_compare_command_writes_the_page(tmp_path):
    from click.testing import CliRunner

    from jdcl_bench.cli import main

    _record(tmp_path, "jdcl", 0, 30.0)
    (tmp_path / "published.toml").write_text('[[result]]\nmethod = "jdcl"\nprotocol = "cifar10-t5"\n'
                                             'final_acc = 83.69\nsource = "paper"\nbudget = "full"\n')
    out = tmp_path / "PAPER_VS_SUITE.md"
    r = CliRunner().invoke(main, ["compare", "--results", str(tmp_path), "-o", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "do not edit by hand" in text and "| JDCL | cifar10-t5 | 83.69 |" in text and "-53.69" in text
    # without --published and a published.toml of its own, the repository's committed list is used
    r = CliRunner().invoke(main, ["compare", "--results", str(tmp_path / "none")])
    assert r.exit_code != 0 and "none does not exist" in r.output
    r = CliRunner().invoke(main, ["compare", "--results", str(tmp_path), "--published", str(tmp_path / "no.toml")])
    assert r.exit_code != 0 and "published" in r.output


def test_differs_column_reads_budget_data_and_overrides_from_the_records(tmp_path):
    from jdcl_bench.results.compare import label_matches

    _record(tmp_path, "jdcl", 0, 30.0)
    d = _record_paper(tmp_path)
    pub = tmp_path / "published.toml"
    pub.write_text('[[result]]\nmethod = "jdcl"\nprotocol = "cifar10-t5"\nfinal_acc = 83.69\nsource = "paper"\n')
    df = comparison(load_records(tmp_path), load_published(pub))
    # one row per suite configuration (label and preset) that ran the published setting
    assert list(df["suite_budget"].str.split(";").str[0]) == ["preset fast", "preset paper"]
    fast, paper = df.iloc[0], df.iloc[1]
    assert fast["differs"] == ("budget: preset fast, reduced (not the paper's steps); "
                               "data: imagefolder-jpeg, not the canonical dataset")
    assert paper["differs"] == "budget: preset paper (the paper's steps); --set lr=0.1"
    text = render_comparison(df)
    assert "| Differs from the published setting |" in text and "--set lr=0.1" in text
    assert text.count("- JDCL / cifar10-t5: paper") == 1  # one source line per published result
    assert label_matches("NNCSL (M=500)", "NNCSL (M=500, BN in train mode)")
    assert not label_matches("NNCSL (M=500)", "NNCSL (M=5120)") and label_matches("JDCL", "JDCL")
    assert d.is_dir()


def _record_paper(root):
    """A paper-preset record on canonical data, run with a --set override."""
    d = root / "runs" / "cifar10-t5" / "jdcl" / "paper+abc" / "seed0"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"protocol": "cifar10-t5", "method": "jdcl", "preset": "paper", "seed": 0,
                                               "overrides": {"lr": 0.1}}))
    (d / "manifest.json").write_text(json.dumps({
        "hardware": {"device": "cuda", "gpu_name": "H200"}, "gpu_shared_by": 1,
        "dataset": {"name": "cifar10", "variant": "canonical", "canonical": True},
        "wall_time_s": 6000.0, "gpu_seconds": 6000.0, "budget": {"preset": "paper", "reduced": False}}))
    (d / "metrics.json").write_text(json.dumps({
        "complete": True, "tasks_done": 5, "num_tasks": 5, "final_acc": 80.0, "avg_acc": 80.0,
        "avg_inc_acc": 80.0, "forgetting": 1.0, "method_label": "JDCL"}))
    return d


def test_differs_column_names_set_values_only_not_a_redefined_presets_old_values(tmp_path):
    """A record of `standard` from before it took the replay levers is labelled by the values it ran
    (the recipe's), but it typed no --set: the column must not say it did."""
    from jdcl_bench.methods.jdcl import JDCL
    from jdcl_bench.config import to_json_dict

    d = _record(tmp_path, "jdcl", 0, 71.4, preset="standard")
    config = json.loads((d / "config.json").read_text())
    mc = to_json_dict(JDCL.config_for("standard", {}))
    mc.update(replay_per_class=1000, replay_confidence_threshold=0.0, global_new_source="replay")
    config.update(method_config=mc, overrides={})
    (d / "config.json").write_text(json.dumps(config))
    pub = tmp_path / "published.toml"
    pub.write_text('[[result]]\nmethod = "jdcl"\nprotocol = "cifar10-t5"\nfinal_acc = 83.69\nsource = "paper"\n')
    records = load_records(tmp_path)
    assert records["method_label"].iloc[0].startswith("JDCL [global_new_source=replay, ")
    df = comparison(records, load_published(pub))
    assert len(df) == 1 and "--set" not in df["differs"].iloc[0]
    assert "replay_per_class" not in df["differs"].iloc[0]  # the recipe's value: no difference
