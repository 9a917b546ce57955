"""benchmarks/fork_run.py: a run's state after a task, continued under other settings."""
import json

import pytest
import torch
from click.testing import CliRunner

from jdcl_bench.cli import main
from jdcl_bench.results import load_records
from script_module import load_script

ARGS = ["run", "--protocol", "synthetic-t2", "--method", "jdcl", "--preset", "smoke", "--device", "cpu"]


def test_a_fork_inherits_the_finished_tasks_and_runs_the_rest_with_its_settings(tmp_path):
    fork_run = load_script("benchmarks/fork_run.py")
    src_out = tmp_path / "src"
    r = CliRunner().invoke(main, ARGS + ["--out", str(src_out), "--time-limit", "0.01", "--stop-between-tasks"])
    assert r.exit_code == 0, r.output
    src = src_out / "runs" / "synthetic-t2" / "jdcl" / "smoke" / "seed0"
    src_state = torch.load(src / "checkpoint.pt", weights_only=True)
    assert src_state["phase"] == "task_done" and src_state["task"] == 0

    with pytest.raises(SystemExit, match="changes nothing"):
        fork_run.fork(src, tmp_path / "probe", [])
    dest = fork_run.fork(src, tmp_path / "probe", ["replay_per_class=3"])
    r = CliRunner().invoke(main, ARGS + ["--set", "replay_per_class=3", "--out", str(tmp_path / "probe")])
    assert r.exit_code == 0, r.output
    assert "resuming" in r.output and "at task 2" in r.output

    metrics = json.loads((dest / "metrics.json").read_text())
    assert metrics["complete"] and metrics["acc_matrix"][0] == src_state["acc_rows"][0]
    counts = json.loads((dest / "artefacts" / "replay_counts_task2.json").read_text())
    assert {v["accepted"] + v["duplicated"] for v in counts["per_class"].values()} <= {0, 3}
    config = json.loads((dest / "config.json").read_text())
    assert config["method_config"]["replay_per_class"] == 3
    assert config["forked_from"] == {"run": str(src), "after_task": 1, "changed": {"replay_per_class": "3"}}
    manifest = json.loads((dest / "manifest.json").read_text())
    assert "fork_run.py" in manifest["note"]
    # the inherited task's time counts: the fork's GPU-seconds include the source's task 1
    assert manifest["wall_time_s"] >= src_state["wall_s"]
    # a probe, never a seed of the preset: the only complete record here is the fork's, and no table
    # read from above it counts it
    assert (tmp_path / "probe" / ".not-in-leaderboard").exists()
    assert load_records(tmp_path).empty
    (tmp_path / "probe" / ".not-in-leaderboard").unlink()
    assert len(load_records(tmp_path)) == 1

    with pytest.raises(SystemExit, match="exists already"):
        fork_run.fork(src, tmp_path / "probe", ["replay_per_class=3"])
    with pytest.raises(SystemExit, match="nothing left"):
        fork_run.fork(dest, tmp_path / "probe2", ["replay_per_class=4"])
