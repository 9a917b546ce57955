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


def test_the_state_after_task_1_does_not_depend_on_the_replay_levers(tmp_path):
    """The premise of the levers' fork (results/probes/jdcl-cifar10-t5-fork-levers, REPLAY_LEVERS'
    comment): task 1 has no replay and no global stage, so the state after it, from which the fork
    continued, is the one a run with the levers from the start reaches. Same weights, optimiser,
    EMA, random streams and diagnostics; only the timings may differ."""
    from jdcl_bench.jdcl.config import REPLAY_LEVERS

    levers = [f"{k}={v}" for k, v in REPLAY_LEVERS.items()]
    states = []
    for name, sets in (("recipe", []), ("levers", levers)):
        args = ARGS + ["--out", str(tmp_path / name), "--time-limit", "0.01", "--stop-between-tasks"]
        r = CliRunner().invoke(main, args + [a for s in sets for a in ("--set", s)])
        assert r.exit_code == 0, r.output
        (ckpt,) = (tmp_path / name).glob("runs/*/jdcl/*/seed0/checkpoint-task.pt")
        states.append(torch.load(ckpt, weights_only=True))

    def same(a, b, path=""):
        assert type(a) is type(b), path
        if isinstance(a, dict):
            assert a.keys() == b.keys(), path
            for k in a:
                if k not in ("wall_s", "task_seconds", "segments"):  # timings and start times
                    same(a[k], b[k], f"{path}/{k}")
        elif isinstance(a, (list, tuple)):
            assert len(a) == len(b), path
            for i, (x, y) in enumerate(zip(a, b)):
                same(x, y, f"{path}[{i}]")
        elif isinstance(a, torch.Tensor):
            assert torch.equal(a, b), path
        else:
            assert a == b, path

    assert states[0]["phase"] == "task_done" and states[0]["task"] == 0
    same(*states)
