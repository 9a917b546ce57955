import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from jdcl_bench.methods.base import Method
from jdcl_bench.progress import Reporter
from jdcl_bench.registry import METHODS
from jdcl_bench.runner import NonFiniteLoss, RunConfig, run

QUIET = Reporter(quiet=True)


def cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "jdcl_bench.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_finetune_run_writes_a_complete_record(tmp_path):
    d = run(RunConfig("synthetic-t2", "finetune", preset="smoke", out=str(tmp_path), device="cpu"), QUIET)
    assert d == tmp_path / "runs/synthetic-t2/finetune/smoke/seed0"
    m = json.loads((d / "metrics.json").read_text())
    assert m["complete"] and m["tasks_done"] == 2 and np.asarray(m["acc_matrix"]).shape == (2, 2)
    assert m["task_classes"] == [[0, 1], [2, 3]]
    man = json.loads((d / "manifest.json").read_text())
    assert man["dataset"]["name"] == "synthetic" and "content_hash" in man["dataset"]
    assert man["budget"]["preset"] == "smoke" and man["budget"]["reduced"] is True
    assert man["hardware"]["device"] == "cpu" and man["packages"]["torch"]
    assert "commit" in man["code_version"] and man["wall_time_s"] > 0
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["method_config"]["classifier"]["width"] == 8 and cfg["seed"] == 0
    # a second invocation sees the complete run and does nothing
    assert run(RunConfig("synthetic-t2", "finetune", preset="smoke", out=str(tmp_path), device="cpu"), QUIET) == d


def test_a_preset_equal_to_paper_is_recorded_as_both(tmp_path):
    """Fine-tune's standard preset is its paper recipe: the record says so (same_as), its budget is
    not reduced, and a preset that differs from every other records none."""
    tiny = {"classifier.width": "8", "classifier.layers": "[1,1,1,1]", "classifier.epochs": "1"}
    d = run(RunConfig("synthetic-t2", "finetune", preset="standard", overrides=tiny, out=str(tmp_path),
                      device="cpu"), QUIET)
    assert json.loads((d / "config.json").read_text())["same_as"] == ["paper"]
    assert json.loads((d / "manifest.json").read_text())["budget"]["reduced"] is False
    s = run(RunConfig("synthetic-t2", "finetune", preset="smoke", out=str(tmp_path), device="cpu"), QUIET)
    assert json.loads((s / "config.json").read_text())["same_as"] == []
    assert METHODS.get("nncsl").same_presets("paper-5120", {}) == ["standard-5120"]
    assert METHODS.get("jdcl").same_presets("standard", {}) == []


def test_complete_run_of_another_config_says_so(tmp_path):
    """A run directory is named by preset and overrides, not by the defaults: after a default changed,
    the same command finds the old record complete, and says that it ran with another config."""
    class Capture(Reporter):
        def __init__(self):
            super().__init__(quiet=True)
            self.lines = []

        def info(self, msg):
            self.lines.append(msg)

    cfg = RunConfig("synthetic-t2", "finetune", preset="smoke", out=str(tmp_path), device="cpu")
    d = run(cfg, QUIET)
    rep = Capture()
    run(cfg, rep)
    assert not [line for line in rep.lines if "another method config" in line]  # same config: no note
    doc = json.loads((d / "config.json").read_text())
    doc["method_config"]["classifier"]["lr"] = 123.0  # as if the default had been 123 then
    (d / "config.json").write_text(json.dumps(doc))
    rep = Capture()
    assert run(cfg, rep) == d
    note = [line for line in rep.lines if "another method config" in line]
    assert note and "classifier.lr: 123.0 there" in note[0] and "--restart" in note[0]
    assert json.loads((d / "config.json").read_text())["method_config"]["classifier"]["lr"] == 123.0  # untouched


def test_overrides_get_their_own_run_dir_and_config_mismatch_is_refused(tmp_path):
    base = dict(protocol="synthetic-t2", method="finetune", preset="smoke", out=str(tmp_path), device="cpu")
    d1 = run(RunConfig(**base, overrides={"classifier.epochs": "1"}), QUIET)
    assert d1.parent.name.startswith("smoke+") and json.loads((d1 / "config.json").read_text())[
        "method_config"]["classifier"]["epochs"] == 1.0


def test_killed_run_resumes_to_identical_metrics(tmp_path):
    args = ["run", "--protocol", "digits-t5", "--method", "finetune", "--preset", "smoke", "--device", "cpu",
            "--set", "classifier.epochs=6"]
    ref = cli(*args, "--out", str(tmp_path / "ref"))
    assert ref.wait(300) == 0, ref.stdout.read()
    ref_metrics = json.loads(next((tmp_path / "ref").rglob("metrics.json")).read_text())

    out = tmp_path / "killed"
    p = cli(*args, "--out", str(out), "--checkpoint-every", "0")
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and p.poll() is None:
        ms = list(out.rglob("metrics.json"))
        if ms:
            done = json.loads(ms[0].read_text())["tasks_done"]
            if 1 <= done < 5:
                time.sleep(0.3)  # land inside the next task
                p.send_signal(signal.SIGKILL)
                killed_at = done
                break
        time.sleep(0.05)
    p.wait(60)
    assert killed_at is not None, "the run finished before it could be killed"
    partial = json.loads(next(out.rglob("metrics.json")).read_text())
    assert not partial["complete"]
    # the state after the last finished task survives the in-task checkpoints: a copy of the run
    # resumed from it (what a fresh machine gets, scripts/gpu_batch.py) repeats the killed task exactly
    import shutil

    from_task = tmp_path / "from-task"
    shutil.copytree(out, from_task)
    run_dir = next(from_task.rglob("checkpoint-task.pt")).parent
    task_state = torch.load(run_dir / "checkpoint-task.pt", weights_only=True)
    assert task_state["phase"] == "task_done" and task_state["task"] == killed_at - 1
    shutil.copyfile(run_dir / "checkpoint-task.pt", run_dir / "checkpoint.pt")
    for where in (out, from_task):
        again = cli(*args, "--out", str(where))
        log = again.stdout.read()
        assert again.wait(300) == 0, log
        assert "resuming" in log
        got = json.loads(next(where.rglob("metrics.json")).read_text())
        for k in ("acc_matrix", "seen_acc", "final_acc", "avg_inc_acc", "forgetting"):
            assert got[k] == ref_metrics[k], (where.name, k)


@dataclass
class _Cfg:
    nan_at_task: int = 1


class _NaNMethod(Method):
    name = "nan-test"
    Config = _Cfg
    presets = {"smoke": {}}

    def train_task(self, task):
        if task.index == self.cfg.nan_at_task:
            self.ctx.check_loss(torch.tensor(float("nan")))

    def predict(self, x):
        return torch.zeros(len(x), self.info.num_classes)


def test_nan_loss_is_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
    METHODS.register("nan-test", _NaNMethod)
    try:
        with pytest.raises(NonFiniteLoss, match="became nan in task 2"):
            run(RunConfig("synthetic-t2", "nan-test", preset="smoke", out=str(tmp_path), device="cpu"), QUIET)
    finally:
        METHODS.unregister("nan-test")
    d = tmp_path / "runs/synthetic-t2/nan-test/smoke/seed0"
    m = json.loads((d / "metrics.json").read_text())
    assert m["tasks_done"] == 1 and not m["complete"]
    assert torch.load(d / "checkpoint.pt", weights_only=True)["task"] == 0


def test_parallel_runs_share_a_results_folder(tmp_path):
    procs = [cli("run", "--protocol", "synthetic-t2", "--method", m, "--preset", "smoke", "--seed", str(s),
                 "--device", "cpu", "--out", str(tmp_path)) for m in ("finetune", "joint") for s in (0, 1)]
    for p in procs:
        assert p.wait(300) == 0, p.stdout.read()
    records = sorted(str(p.parent.relative_to(tmp_path)) for p in tmp_path.rglob("metrics.json"))
    assert len(records) == 4
    for r in tmp_path.rglob("metrics.json"):
        assert json.loads(r.read_text())["complete"]


def test_same_run_twice_at_once_is_refused(tmp_path):
    from jdcl_bench.records import RunLocked, run_lock

    d = tmp_path / "runs/synthetic-t2/finetune/smoke/seed0"
    with run_lock(d):
        with pytest.raises(RunLocked, match="another process"):
            run(RunConfig("synthetic-t2", "finetune", preset="smoke", out=str(tmp_path), device="cpu"), QUIET)


def test_same_seed_same_result_other_seed_differs(tmp_path):
    a = run(RunConfig("synthetic-t2", "finetune", preset="smoke", out=str(tmp_path), seed=0, device="cpu"), QUIET)
    b = run(RunConfig("synthetic-t2", "finetune", preset="smoke", out=str(tmp_path / "x"), seed=0, device="cpu"), QUIET)
    c = run(RunConfig("synthetic-t2", "finetune", preset="smoke", out=str(tmp_path), seed=1, device="cpu"), QUIET)
    ma, mb, mc = (json.loads((d / "metrics.json").read_text()) for d in (a, b, c))
    assert ma["acc_matrix"] == mb["acc_matrix"]
    assert (torch.load(a / "checkpoint.pt", weights_only=True)["method"]["trainer"]["model"]["conv1.weight"] !=
            torch.load(c / "checkpoint.pt", weights_only=True)["method"]["trainer"]["model"]["conv1.weight"]).any()


@pytest.mark.parametrize("method", ["finetune", "jdcl"])
def test_a_protocol_without_hflip_reaches_every_flip_of_the_method(tmp_path, monkeypatch, method):
    """[augment] hflip = false (the digits default) sets every flip the method draws to p = 0;
    the same protocol with flips allowed keeps the usual 0.5."""
    from jdcl_bench.data import augment as A

    seen = []
    real = A._hflip
    monkeypatch.setattr(A, "_hflip", lambda x, u, p: seen.append(p) or real(x, u, p))
    from jdcl_bench.protocol import get_protocol

    text = Path(get_protocol("synthetic-t2").path).read_text()
    for hflip in (False, True):
        f = tmp_path / f"flip-{hflip}.toml"
        f.write_text(text + f"[augment]\nhflip = {str(hflip).lower()}\n")
        seen.clear()
        run(RunConfig(str(f), method, preset="smoke", out=str(tmp_path), device="cpu"), QUIET)
        assert seen and set(seen) == ({0.5} if hflip else {0.0}), (hflip, set(seen))


def test_stop_between_tasks_leaves_a_small_checkpoint_and_resumes(tmp_path):
    """--stop-between-tasks never stops inside a task: a tiny time limit still finishes task 1, stops before
    task 2 with the between-task state only (JDCL: the global model), refuses to start a task the longest
    so far says cannot fit, and the run then completes."""
    import json

    import torch
    from click.testing import CliRunner

    from jdcl_bench.cli import main

    args = ["run", "--protocol", "synthetic-t2", "--method", "jdcl", "--preset", "smoke", "--device", "cpu",
            "--out", str(tmp_path)]
    r = CliRunner().invoke(main, args + ["--time-limit", "0.01", "--stop-between-tasks"])
    assert r.exit_code == 0, r.output
    d = tmp_path / "runs" / "synthetic-t2" / "jdcl" / "smoke" / "seed0"
    assert json.loads((d / "metrics.json").read_text())["tasks_done"] == 1
    state = torch.load(d / "checkpoint.pt", weights_only=True)
    assert state["phase"] == "task_done" and set(state["method"]) == {"phase", "G", "counters"}
    assert len(state["task_seconds"]) == 1
    again = CliRunner().invoke(main, args + ["--time-limit", "0.01", "--stop-between-tasks"])
    assert again.exit_code == 0 and "nothing was run" in again.output
    assert json.loads((d / "metrics.json").read_text())["tasks_done"] == 1
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    assert json.loads((d / "metrics.json").read_text())["complete"]


@pytest.mark.parametrize("old_checkpoint", [False, True])
def test_a_resumed_run_keeps_what_its_earlier_processes_ran_on(tmp_path, monkeypatch, old_checkpoint):
    """Task 1 shares the GPU with 3 other runs, task 2 runs alone: the record still says the run
    shared a GPU (the most it shared with), keeps both processes' notes and lists each process. A
    checkpoint from before segments were kept falls back on the manifest its process wrote."""
    from click.testing import CliRunner

    from jdcl_bench.cli import main

    args = ["run", "--protocol", "synthetic-t2", "--method", "finetune", "--preset", "smoke", "--device", "cpu",
            "--out", str(tmp_path)]
    monkeypatch.setenv("JDCL_BENCH_GPU_SHARED_BY", "4")
    monkeypatch.setenv("JDCL_BENCH_RUN_NOTE", "one of 4 runs on the GPU")
    r = CliRunner().invoke(main, args + ["--time-limit", "0.01", "--stop-between-tasks"])
    assert r.exit_code == 0, r.output
    d = tmp_path / "runs" / "synthetic-t2" / "finetune" / "smoke" / "seed0"
    first = json.loads((d / "manifest.json").read_text())
    assert first["gpu_shared_by"] == 4 and len(first["segments"]) == 1
    if old_checkpoint:
        state = torch.load(d / "checkpoint.pt", weights_only=True)
        del state["segments"]
        torch.save(state, d / "checkpoint.pt")
    monkeypatch.setenv("JDCL_BENCH_GPU_SHARED_BY", "1")
    monkeypatch.setenv("JDCL_BENCH_RUN_NOTE", "alone")
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    man = json.loads((d / "manifest.json").read_text())
    assert json.loads((d / "metrics.json").read_text())["complete"]
    assert man["gpu_shared_by"] == 4
    assert [s["from_task"] for s in man["segments"]] == [1, 2]
    assert [s["gpu_shared_by"] for s in man["segments"]] == [4, 1]
    assert "one of 4 runs" in man["note"] and "alone" in man["note"]
    assert man["started_at"] == first["started_at"]
    assert man["segments"][0].get("from_manifest", False) is old_checkpoint


def test_the_next_task_is_estimated_by_tasks_that_did_not_compile():
    """A process's first task compiles the models (on a fresh GPU machine 684 s against 380 s for the
    next one of the same process, 2026-12-07): a later task of a process is estimated by the longest
    task that did not open a process, where one is known; a process's first task by the longest."""
    from jdcl_bench.runner import next_task_seconds

    # tasks 1-3 ran in a process started at task 1 (index 0), task 4 in one started at task 4
    secs, starts = [278.0, 684.0, 380.0, 448.0], {0, 3}
    # a run that went on from task 2 in one process (index 1 opened it: the old rule's 684 s)
    assert next_task_seconds(secs[:3], 3, {0, 1}, 3, 1, every_process=True) == 380.0
    assert next_task_seconds(secs[:2], 2, {0, 1}, 2, 1, every_process=True) == 684.0  # nothing warm yet
    # a new process: its first task counts every task, compilation included
    assert next_task_seconds(secs, 4, starts | {4}, 4, 4, every_process=True) == 684.0
    # without --stop-between-tasks only this process's tasks count; none yet: nothing to go on
    assert next_task_seconds(secs, 4, starts | {4}, 4, 4, every_process=False) == 0.0
    assert next_task_seconds(secs + [400.0], 5, starts | {4}, 5, 4, every_process=False) == 400.0
    # a checkpoint from before task_seconds was kept has fewer times than tasks done: they are the last
    assert next_task_seconds([300.0, 350.0], 4, {0, 2}, 4, 4, every_process=True) == 350.0
    assert next_task_seconds([300.0, 350.0], 4, {0, 2}, 5, 4, every_process=True) == 350.0
    assert next_task_seconds([300.0, 350.0], 4, {0, 3}, 5, 4, every_process=True) == 300.0
