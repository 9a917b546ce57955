"""`jdcl-bench sweep`: grid expansion, skipping complete cells, failures, submitit, fail-fast, dry run.

Every cell is the tiny synthetic protocol with the smoke preset on CPU (seconds each)."""
import json

import pytest
from click.testing import CliRunner

from jdcl_bench.cli import main
from jdcl_bench.sweep import Cell, SubmititOptions, executor_parameters, expand_grid, parse_seeds, split_list

SMOKE = ("--preset", "smoke", "--device", "cpu")


def sweep(tmp_path, *args):
    return CliRunner().invoke(main, ["sweep", *SMOKE, "--out", str(tmp_path), *args], catch_exceptions=False)


def rows(output):
    """(method, protocol, seed, status) of each row of the printed table."""
    out = []
    for line in output.splitlines():
        cols = [c.strip() for c in line.split("│")[1:-1]]
        if len(cols) == 7 and cols[2].isdigit():
            out.append((cols[0], cols[1], int(cols[2]), cols[3]))
    return out


def test_grid_parsing():
    assert split_list(["finetune,joint", "jdcl", "joint"]) == ["finetune", "joint", "jdcl"]
    assert parse_seeds(["0-2", "5", "1"]) == [0, 1, 2, 5]
    with pytest.raises(ValueError, match="inclusive range"):
        parse_seeds(["3-1"])
    assert expand_grid(["a", "b"], ["p"], [0, 1]) == [Cell("a", "p", 0), Cell("a", "p", 1), Cell("b", "p", 0),
                                                       Cell("b", "p", 1)]


def test_sweep_runs_the_grid_then_skips_complete_cells(tmp_path):
    args = ("--methods", "finetune,joint", "--protocols", "synthetic-t2", "--seeds", "0", "--seeds", "1")
    r = sweep(tmp_path, *args)
    assert r.exit_code == 0, r.output
    assert rows(r.output) == [("finetune", "synthetic-t2", 0, "done"), ("finetune", "synthetic-t2", 1, "done"),
                              ("joint", "synthetic-t2", 0, "done"), ("joint", "synthetic-t2", 1, "done")]
    for method in ("finetune", "joint"):
        for seed in (0, 1):
            m = json.loads((tmp_path / f"runs/synthetic-t2/{method}/smoke/seed{seed}/metrics.json").read_text())
            assert m["complete"]
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("metrics.json")}

    again = sweep(tmp_path, *args)
    assert again.exit_code == 0, again.output
    assert [row[3] for row in rows(again.output)] == ["skipped"] * 4 and "4 skipped" in again.output
    assert "[1/" not in again.output  # nothing was started
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("metrics.json")} == stamps


def test_a_failing_cell_does_not_stop_the_others(tmp_path, monkeypatch):
    # CIFAR-10 is missing from --data-dir: that cell fails when it loads its data, first in the grid
    monkeypatch.delenv("JDCL_BENCH_DATA", raising=False)
    r = sweep(tmp_path, "--methods", "finetune", "--protocols", "cifar10-t5,synthetic-t2",
              "--data-dir", str(tmp_path / "nowhere"))
    assert r.exit_code == 1, r.output
    assert rows(r.output) == [("finetune", "cifar10-t5", 0, "failed"), ("finetune", "synthetic-t2", 0, "done")]
    assert "DatasetError" in r.output and "1 done, 1 failed" in r.output
    assert json.loads((tmp_path / "runs/synthetic-t2/finetune/smoke/seed0/metrics.json").read_text())["complete"]


def test_submitit_local_runs_cells_into_the_shared_results_folder(tmp_path):
    pytest.importorskip("submitit")
    # seed 0 done here first; the submitit sweep then skips it and runs seed 1 as a job in another process
    assert sweep(tmp_path, "--methods", "finetune", "--protocols", "synthetic-t2").exit_code == 0
    r = sweep(tmp_path, "--executor", "submitit-local", "--methods", "finetune", "--protocols", "synthetic-t2",
              "--seeds", "0,1", "--time-min", "5")
    assert r.exit_code == 0, r.output
    assert rows(r.output) == [("finetune", "synthetic-t2", 0, "skipped"), ("finetune", "synthetic-t2", 1, "done")]
    run_dir = tmp_path / "runs/synthetic-t2/finetune/smoke/seed1"
    assert json.loads((run_dir / "metrics.json").read_text())["complete"]
    # the job ran the cell with an absolute results folder and a time limit inside the job's 5 minutes
    run = json.loads((run_dir / "config.json").read_text())["run"]
    assert run["out"] == str(tmp_path.resolve()) and 0 < run["time_limit_s"] < 300
    assert list((tmp_path / "sweep_logs").rglob("*_log.out"))


def test_slurm_job_parameters(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    opts = SubmititOptions(partition="gpu", time_min=90, cpus_per_job=8, max_parallel=4)
    params = executor_parameters("slurm", opts, device="auto")
    assert params["slurm_partition"] == "gpu" and params["slurm_array_parallelism"] == 4
    assert params["timeout_min"] == 90 and params["gpus_per_node"] == 1 and params["cpus_per_task"] == 8
    assert executor_parameters("submitit-local", opts, device="cpu")["gpus_per_node"] == 0
    # submitit refuses to build a Slurm executor without srun: a fake one lets us read the sbatch script
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin/srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{__import__('os').environ['PATH']}")
    from jdcl_bench.sweep import make_executor

    ex = make_executor("slurm", tmp_path / "logs/%j", opts)
    assert isinstance(ex, submitit.AutoExecutor)
    script = ex._executor._make_submission_file_text("CMD", "uid")
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --time=90" in script


def test_unknown_names_fail_fast_listing_the_known_ones(tmp_path):
    r = sweep(tmp_path, "--methods", "finetune,jdlc", "--protocols", "synthetic-t2")
    assert r.exit_code == 2 and "unknown method 'jdlc'" in r.output
    assert "known methods:" in r.output and "finetune" in r.output and "jdcl" in r.output
    r = sweep(tmp_path, "--methods", "finetune", "--protocols", "synthetic-t2,synthetic-t3")
    assert r.exit_code == 2 and "unknown protocol 'synthetic-t3'" in r.output and "synthetic-t2" in r.output
    r = sweep(tmp_path, "--methods", "finetune", "--protocols", "synthetic-t2", "--set", "lr=x")
    assert r.exit_code == 2 and "unknown config key 'lr'" in r.output
    # nothing ran, not even the valid cells
    assert not (tmp_path / "runs").exists()


def test_dry_run_lists_pending_cells_and_writes_nothing(tmp_path):
    assert sweep(tmp_path, "--methods", "finetune", "--protocols", "synthetic-t2").exit_code == 0
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    r = sweep(tmp_path, "--dry-run", "--methods", "finetune,joint", "--protocols", "synthetic-t2")
    assert r.exit_code == 0, r.output
    assert rows(r.output) == [("finetune", "synthetic-t2", 0, "skipped"), ("joint", "synthetic-t2", 0, "pending")]
    assert "dry run" in r.output
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    # a dry run into a folder that does not exist does not create it
    r = sweep(tmp_path / "fresh", "--dry-run", "--methods", "finetune", "--protocols", "synthetic-t2")
    assert r.exit_code == 0 and rows(r.output) == [("finetune", "synthetic-t2", 0, "pending")]
    assert not (tmp_path / "fresh").exists()


def test_a_complete_record_of_an_older_config_is_kept_and_said_to_be_stale(tmp_path):
    """A run directory is named by preset and --set values: after a preset changed (JDCL's `fast`
    took lr 5e-4), the complete record there ran another config. The sweep does not overwrite it, and
    does not pass it off as today's preset either: the skipped cell names what differs."""
    from jdcl_bench.sweep import SweepSpec
    from jdcl_bench.sweep.cells import plan

    assert sweep(tmp_path, "--methods", "finetune", "--protocols", "synthetic-t2").exit_code == 0
    spec = SweepSpec(["finetune"], ["synthetic-t2"], [0], preset="smoke", out=str(tmp_path), device="cpu")
    ((_, _, result),) = plan(spec)
    assert result.status == "skipped" and result.error is None  # today's config: nothing to say

    path = tmp_path / "runs/synthetic-t2/finetune/smoke/seed0/config.json"
    config = json.loads(path.read_text())
    table, key = config["method_config"], ""
    while True:  # the first number in the (nested) method config, changed as an older preset would have it
        k, v = next((k, v) for k, v in table.items() if isinstance(v, dict) or
                    (isinstance(v, (int, float)) and not isinstance(v, bool)))
        key += k
        if not isinstance(v, dict):
            table[k] = v + 1
            break
        table, key = v, key + "."
    path.write_text(json.dumps(config))
    ((_, _, result),) = plan(spec)
    assert result.status == "skipped" and f"{key}:" in result.error and "--restart" in result.error
    r = CliRunner().invoke(main, ["sweep", *SMOKE, "--out", str(tmp_path), "--methods", "finetune", "--protocols",
                                  "synthetic-t2"], terminal_width=250, catch_exceptions=False)
    assert r.exit_code == 0 and rows(r.output)[0][3] == "skipped" and "ran another config" in r.output
    assert json.loads(path.read_text()) == config  # the record is kept as it was
