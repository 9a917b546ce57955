import pytest
from script_module import load_script


def load_gpu_batch():
    return load_script("scripts/gpu_batch.py")


def test_checkpoint_parts_have_names_the_device_returns_and_join_back(tmp_path):
    """A preset with overrides ("fast+ab12") puts '+' in the run's path; the device machine returns
    only files named in letters, digits, '.', '_' and '-', so the parts must not carry it. Finished
    runs' checkpoints are not returned."""
    gpu_batch = load_gpu_batch()
    out, dest = tmp_path / "out", tmp_path / "dest"
    dest.mkdir()
    run = out / "runs" / "cifar10-first2-d25f" / "jdcl" / "fast+ab12" / "seed0"
    run.mkdir(parents=True)
    data = bytes(range(256)) * 5
    (run / "checkpoint.pt").write_bytes(data)
    done = out / "runs" / "cifar10-first2-d25f" / "jdcl" / "fast" / "seed0"
    done.mkdir(parents=True)
    (done / "checkpoint.pt").write_bytes(b"done")
    (done / "metrics.json").write_text('{"tasks_done": 2, "num_tasks": 2}')
    gpu_batch.bring_checkpoints(out, dest, part_bytes=500)
    returned = sorted(dest.iterdir())
    assert all(set(p.name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") for p in returned)
    parts = sorted(dest.glob("*.part*"))
    assert len(parts) == 3 and len(returned) == 4  # and the whole file's hash, size and part count
    assert b"".join(p.read_bytes() for p in parts) == data


def _run_folder(tmp_path, preset):
    """(results folder, folder the parts come back to, a cifar10-t5 JDCL run folder with its record)."""
    out, back = tmp_path / "out", tmp_path / "back"
    back.mkdir()
    run = out / "runs" / "cifar10-t5" / "jdcl" / preset / "seed0"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    return out, back, run


def _returned(tmp_path, preset, data, part_bytes):
    """A run whose checkpoint ``data`` came back as parts of ``part_bytes`` (in ``back``) and is gone
    from its folder, as on a fresh machine: (gpu_batch, out, back, run)."""
    gpu_batch = load_gpu_batch()
    out, back, run = _run_folder(tmp_path, preset)
    (run / "checkpoint.pt").write_bytes(data)
    gpu_batch.bring_checkpoints(out, back, part_bytes=part_bytes)
    (run / "checkpoint.pt").unlink()
    return gpu_batch, out, back, run


@pytest.mark.parametrize("phase", ["task_done", "in_task"])
def test_a_joined_between_task_checkpoint_is_also_kept_as_the_task_checkpoint(tmp_path, phase):
    """A resumed run's first in-task save replaces checkpoint.pt; the joined between-task state stays
    as checkpoint-task.pt, which bring_checkpoints returns if the machine is lost inside that task."""
    import torch

    gpu_batch = load_gpu_batch()
    out, back, run = _run_folder(tmp_path, "standard")
    torch.save({"phase": phase, "task": 1, "method": {"w": torch.ones(3)}, "rng": torch.Generator().get_state(),
                "acc_rows": [], "seen_acc": [], "wall_s": 0.0}, run / "checkpoint.pt")  # a runner checkpoint's keys
    gpu_batch.bring_checkpoints(out, back)
    (run / "checkpoint.pt").unlink()
    gpu_batch.join_checkpoints(out, [back])
    kept = run / "checkpoint-task.pt"
    assert kept.exists() == (phase == "task_done")
    if kept.exists():
        assert kept.read_bytes() == (run / "checkpoint.pt").read_bytes()


def test_parts_from_two_calls_join_back_into_their_run_folder(tmp_path):
    """The parts of one checkpoint carried in two device calls (two folders) become the run's
    checkpoint again; a missing part is refused and nothing is written."""
    data = bytes(range(256)) * 9
    gpu_batch, out, back, run = _returned(tmp_path, "standard+ab12", data, 1000)
    first, second = tmp_path / "call1", tmp_path / "call2"
    first.mkdir(), second.mkdir()
    parts = sorted(back.glob("*.part*"))
    parts[0].rename(first / parts[0].name)
    for p in [*parts[1:], *back.glob("*.sha256")]:
        p.rename(second / p.name)
    with pytest.raises(SystemExit, match=r"missing \[0\]"):
        gpu_batch.join_checkpoints(out, [second])
    assert not (run / "checkpoint.pt").exists()
    assert gpu_batch.join_checkpoints(out, [first, second]) == [run / "checkpoint.pt"]
    assert (run / "checkpoint.pt").read_bytes() == data
    # the parts are used up: joining again (the next command on the same machine) changes nothing
    (run / "checkpoint.pt").write_bytes(b"newer, written by the resumed run")
    assert gpu_batch.join_checkpoints(out, [first, second]) == []
    assert (run / "checkpoint.pt").read_bytes() == b"newer, written by the resumed run"


def test_an_in_task_checkpoint_too_large_to_return_sends_the_between_task_one(tmp_path):
    gpu_batch = load_gpu_batch()
    out, dest = tmp_path / "out", tmp_path / "dest"
    dest.mkdir()
    run = out / "runs" / "cifar10-t5" / "jdcl" / "standard" / "seed0"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"i" * 5000)       # in-task: over the limit below
    (run / "checkpoint-task.pt").write_bytes(b"t" * 1500)  # after the last finished task
    gpu_batch.bring_checkpoints(out, dest, part_bytes=1000, max_bytes=2000)
    assert b"".join(p.read_bytes() for p in sorted(dest.glob("*.part*"))) == b"t" * 1500


def test_a_chain_entry_takes_a_settings_file_as_jdcl_bench_run_config_does(tmp_path):
    """``@FILE.toml`` among a chain entry's overrides: the file's values as --set text, in the form
    `jdcl-bench run --config` gives them (so the run folder is the same), beside plain KEY=VALUE items."""
    from jdcl_bench.config import load_settings_file

    gpu_batch = load_gpu_batch()
    f = tmp_path / "c.toml"
    f.write_text('replay_per_class = 4000\nglobal_new_source = "real-diffusion"\n[classifier]\nlr = 0.1\n')
    expected = [f"{k}={v}" for k, v in load_settings_file(f).items()]
    assert expected == ["replay_per_class=4000", "global_new_source=real-diffusion", "classifier.lr=0.1"]
    assert gpu_batch.chain_sets(f"seed_x=1;@{f}") == ["seed_x=1", *expected]
    assert gpu_batch.chain_sets("") == [] and gpu_batch.chain_sets("a=1;;b=2") == ["a=1", "b=2"]


def test_a_log_is_named_for_the_whole_protocol_name_or_a_protocol_files_stem():
    """2026-12-07: cifar10-semi-0.8pct's log was named cifar10-semi-0__... (the name taken as a path)."""
    gpu_batch = load_gpu_batch()
    assert gpu_batch.log_name("cifar10-semi-0.8pct", "jdcl", "standard", "0", [], 7) == \
        "cifar10-semi-0.8pct__jdcl__standard__seed0__7.log"
    assert gpu_batch.log_name("benchmarks/protocols/cifar10-first2.toml", "dgr", "fast", "1",
                              ["classifier.sampler=dpm-solver++", "a=1"], 7) == \
        "cifar10-first2__dgr__fast__seed1__classifier.sampler_dpm-solver___a_1__7.log"


def test_home_puts_a_calls_records_and_parts_where_the_next_call_carries_them_from(tmp_path):
    """What the device returns ($OUT: runs.tar.gz and the parts) goes back under the same relative
    paths here, and the parts join into the run they came from; parts of an older, longer checkpoint
    of the same run are replaced, not mixed in."""
    gpu_batch = load_gpu_batch()
    device_out, files_at = tmp_path / "device" / ".gpu-runs", tmp_path / "files_at"
    files_at.mkdir()
    run = device_out / "runs" / "cifar10-t5" / "jdcl" / "standard" / "seed0"
    (run / "artefacts").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "metrics.json").write_text('{"tasks_done": 3, "num_tasks": 5}')
    (run / "artefacts" / "replay_task3.png").write_bytes(b"png")
    (device_out / "_logs").mkdir()
    (device_out / "_logs" / "a.log").write_text("log")
    data = bytes(range(256)) * 7
    (run / "checkpoint.pt").write_bytes(data)
    gpu_batch.archive(device_out, files_at)
    gpu_batch.bring_checkpoints(device_out, files_at, part_bytes=1000)
    here_out, stage = tmp_path / "here" / ".gpu-runs", tmp_path / "here" / ".gpu-stage"
    stage.mkdir(parents=True)
    stale = stage / next(files_at.glob("*.part00")).name.replace("part00", "part07")
    stale.write_bytes(b"an older checkpoint's last part")
    gpu_batch.home(files_at, here_out, stage)
    back = here_out / "runs" / "cifar10-t5" / "jdcl" / "standard" / "seed0"
    assert (back / "metrics.json").read_text() == (run / "metrics.json").read_text()
    assert (back / "artefacts" / "replay_task3.png").exists() and (here_out / "_logs" / "a.log").exists()
    assert not (back / "checkpoint.pt").exists() and not stale.exists()
    gpu_batch.join_checkpoints(here_out, [stage])
    assert (back / "checkpoint.pt").read_bytes() == data
    with pytest.raises(SystemExit, match="files_at"):
        gpu_batch.home(tmp_path / "nothing", here_out, stage)


def test_detached_chains_train_on_after_the_command_returns_and_attach_brings_them_back(tmp_path):
    """--detach: the chains run in a process of their own session (which a device machine leaves
    running when the command returns) and the command returns at its --deadline; --attach, the next
    command, waits for them and returns the finished records."""
    import json
    import os
    import subprocess
    import sys
    import tarfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out, back1, back2 = tmp_path / "gpu-runs", tmp_path / "back1", tmp_path / "back2"
    back1.mkdir(), back2.mkdir()
    script = [sys.executable, str(repo / "scripts" / "gpu_batch.py"), "--out", str(out)]
    chain = "synthetic-t2:finetune:smoke:0,synthetic-t2:joint:smoke:0"
    first = subprocess.run(script + ["--deadline", "0.5", "--detach", "300", "--chain", chain], cwd=tmp_path,
                           env={**os.environ, "OUT": str(back1)}, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "still run" in first.stdout and (back1 / "runs.tar.gz").exists()
    second = subprocess.run(script + ["--deadline", "240", "--attach"], cwd=tmp_path,
                            env={**os.environ, "OUT": str(back2)}, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("tasks 2/2 final") == 2, second.stdout
    state = json.loads((out / "_background.json").read_text())
    assert state["sid"] == state["pid"]  # a session leader: not ended with the command that started it
    assert "finished_at" in state and all(v.startswith("rc=0") for v in state["status"].values())
    names = tarfile.open(back2 / "runs.tar.gz").getnames()
    assert sum(n.endswith("seed0/metrics.json") for n in names) == 2
    # detaching again: the finished chains' state must not end the wait for the new ones
    again = subprocess.run(script + ["--deadline", "0.5", "--detach", "300", "--chain", "synthetic-t2:finetune:smoke:1"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "still run" in again.stdout, again.stdout
    last = subprocess.run(script + ["--deadline", "240", "--attach"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert "seed1" in last.stdout and last.stdout.count("tasks 2/2 final") == 3, last.stdout


def test_attach_without_detached_chains_says_what_to_do(tmp_path, capsys):
    gpu_batch = load_gpu_batch()
    assert gpu_batch.wait_background(tmp_path, until=0.0) is True
    assert "no chains were detached here" in capsys.readouterr().out


def test_land_copies_a_finished_record_with_the_logs_of_its_processes_only(tmp_path):
    import json

    gpu_batch = load_gpu_batch()
    out = tmp_path / ".gpu-runs"
    run = out / "runs" / "cifar10-t5" / "jdcl" / "standard" / "seed0"
    (run / "artefacts").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"complete": False, "tasks_done": 3, "num_tasks": 5}))
    (run / "checkpoint.pt").write_bytes(b"state")
    (run / "artefacts" / "replay_task2.png").write_bytes(b"png")
    (out / "_logs").mkdir()
    (out / "_logs" / "a.log").write_text("[ 6.6s] resuming .gpu-runs/runs/cifar10-t5/jdcl/standard/seed0 at task 2\n")
    (out / "_logs" / "b.log").write_text("  run directory: .gpu-runs/runs/cifar10-t5/jdcl/standard/seed0\n")
    (out / "_logs" / "other.log").write_text("  run directory: .gpu-runs/runs/cifar10-t5/jdcl/standard+ab12/seed0\n")
    (out / "_logs" / "seed01.log").write_text("  run directory: .gpu-runs/runs/cifar10-t5/jdcl/standard/seed01\n")
    dest = tmp_path / "results" / "runs" / "cifar10-t5" / "jdcl" / "standard" / "seed0"
    with pytest.raises(SystemExit, match="3/5 tasks done"):
        gpu_batch.land(run, dest, out)
    assert not dest.exists()
    (run / "metrics.json").write_text(json.dumps({"complete": True, "tasks_done": 5, "num_tasks": 5}))
    logs = gpu_batch.land(run, dest, out)
    assert sorted(f.name for f in logs) == ["a.log", "b.log"]
    assert sorted(p.name for p in (dest / "logs").iterdir()) == ["a.log", "b.log"]
    assert (dest / "artefacts" / "replay_task2.png").exists() and not (dest / "checkpoint.pt").exists()
    with pytest.raises(SystemExit, match="exists"):
        gpu_batch.land(run, dest, out)


def test_report_says_why_an_unfinished_run_stopped_from_its_latest_process_log(tmp_path, capsys, monkeypatch):
    # a detached process that declines the next task for lack of time says so in its log only: the
    # command's report must repeat it (2026-12-07: task 5 declined, seen in _logs afterwards)
    import json

    monkeypatch.delenv("OUT", raising=False)
    gpu_batch = load_gpu_batch()
    out = tmp_path / ".gpu-runs"
    run = out / "runs" / "cifar10-t5" / "jdcl" / "standard" / "seed0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"complete": False, "tasks_done": 4, "num_tasks": 5,
                                                  "seen_acc": [99.4, 92.1, 83.0, 75.2], "final_acc": 60.1}))
    (out / "_logs").mkdir()
    name = "cifar10-t5__jdcl__standard__seed0__"
    (out / "_logs" / f"{name}100.log").write_text(
        "[ 288.4s] time limit: task 2 would not finish in time; stopped before it (checkpointed)\n")
    (out / "_logs" / f"{name}200.log").write_text(
        "[ 12.4s] resuming .gpu-runs/runs/cifar10-t5/jdcl/standard/seed0 at task 4\n"
        "[ 480.6s] time limit: task 5 would not finish in time; stopped before it (checkpointed)\n")
    (out / "_logs" / "background__200.log").write_text(
        "cifar10-t5:jdcl:standard:0  rc=0  run directory: .gpu-runs/runs/cifar10-t5/jdcl/standard/seed0\n")
    (out / "_logs" / f"{name}99.log").write_text(  # an older process (by start time), listed after 200 by name
        "[ 1.0s] time limit: task 1 would not finish in time\n  run directory: .gpu-runs/runs/cifar10-t5/jdcl/standard/seed0\n")
    gpu_batch.report(out, bring=False)
    printed = capsys.readouterr().out
    assert "tasks 4/5 seen-class 75.20" in printed
    assert "stopped: time limit: task 5 would not finish in time" in printed
    (run / "metrics.json").write_text(json.dumps({"complete": True, "tasks_done": 5, "num_tasks": 5, "final_acc": 75.4}))
    gpu_batch.report(out, bring=False)
    assert "stopped" not in capsys.readouterr().out


def _sent(folder):
    return sorted(int(f.name[-2:]) for f in folder.glob("*.part*"))


def test_a_checkpoint_larger_than_a_call_returns_comes_back_over_several_calls_and_joins(tmp_path):
    """NNCSL's and DGR's between-task state (about 100-140 MB) is more than one device call returns
    (64 MiB): each call sends the parts the earlier ones did not, a call after the last sends nothing,
    the parts gathered here from three calls join into the exact file, and a newer checkpoint is
    taken only once the last one has gone whole."""
    gpu_batch = load_gpu_batch()
    out, _, run = _run_folder(tmp_path, "standard")
    data = bytes(range(256)) * 40  # 10,240 bytes: 7 parts of 1,500
    (run / "checkpoint.pt").write_bytes(b"i" * 50_000)  # in-task, larger than a call: stays
    (run / "checkpoint-task.pt").write_bytes(data)
    calls = [tmp_path / f"call{i}" for i in range(4)]
    for c in calls:
        c.mkdir()
        gpu_batch.bring_checkpoints(out, c, part_bytes=1500, max_bytes=4500, max_files=8)
    assert [_sent(c) for c in calls] == [[0, 1, 2], [3, 4, 5], [6], []]

    assert all((c / "ckpt-cifar10-t5__jdcl__standard__seed0.pt.sha256").is_file() for c in calls[:3])
    here_out, stage = tmp_path / "here", tmp_path / "stage"
    for c in calls[:3]:
        gpu_batch.archive(out, c)
        gpu_batch.home(c, here_out, stage)  # the parts of one checkpoint accumulate, none is dropped
    assert len(list(stage.glob("*.part*"))) == 7
    back = here_out / "runs" / "cifar10-t5" / "jdcl" / "standard" / "seed0"
    assert gpu_batch.join_checkpoints(here_out, [stage]) == [back / "checkpoint.pt"]
    assert (back / "checkpoint.pt").read_bytes() == data and not list(stage.iterdir())
    # the run finishes another task: its newer between-task checkpoint goes from part 0 again
    newer = b"n" * 2000
    (run / "checkpoint-task.pt").write_bytes(newer)
    gpu_batch.bring_checkpoints(out, calls[3], part_bytes=1500, max_bytes=4500, max_files=8)
    assert _sent(calls[3]) == [0, 1]
    assert b"".join(f.read_bytes() for f in sorted(calls[3].glob("*.part*"))) == newer
    again = tmp_path / "again"  # a call whose files never arrived: RESEND=1 sends its parts once more
    again.mkdir()
    gpu_batch.bring_checkpoints(out, again, part_bytes=1500, max_bytes=4500, max_files=8)
    assert _sent(again) == []
    gpu_batch.bring_checkpoints(out, again, part_bytes=1500, max_bytes=4500, max_files=8, resend=True)
    assert _sent(again) == [0, 1]


def test_a_call_respects_the_devices_file_count_and_the_archives_share_of_its_bytes(tmp_path):
    """8 files a call, the records' archive one of them and its bytes off the 64 MiB: with 6 files
    left, a call sends the sidecar and 5 parts."""
    gpu_batch = load_gpu_batch()
    out, dest, run = _run_folder(tmp_path, "standard")
    (run / "checkpoint.pt").write_bytes(b"c" * 10_000)
    gpu_batch.bring_checkpoints(out, dest, part_bytes=1000, max_bytes=50_000, max_files=6)
    assert _sent(dest) == [0, 1, 2, 3, 4] and len(list(dest.iterdir())) == 6
    gpu_batch.archive(out, dest)  # the outbox on the device is no record: it never travels in runs.tar.gz
    import tarfile

    with tarfile.open(dest / "runs.tar.gz") as tf:
        assert not [m.name for m in tf.getmembers() if ".outbox" in m.name]


def test_join_refuses_an_incomplete_or_mixed_set_of_parts_and_writes_nothing(tmp_path):
    data = bytes(range(256)) * 8
    gpu_batch, out, back, run = _returned(tmp_path, "standard", data, 500)
    last = max(back.glob("*.part*"))
    kept = last.read_bytes()
    last.unlink()  # the last part did not come: no gap to see, only the part count says so
    with pytest.raises(SystemExit, match="missing"):
        gpu_batch.join_checkpoints(out, [back])
    last.write_bytes(kept[::-1])  # a part of another version of the checkpoint
    with pytest.raises(SystemExit, match="sha256"):
        gpu_batch.join_checkpoints(out, [back])
    assert not (run / "checkpoint.pt").exists() and not list(run.glob("*.joining"))
    last.write_bytes(kept)
    gpu_batch.join_checkpoints(out, [back])
    assert (run / "checkpoint.pt").read_bytes() == data


def test_the_carry_plan_names_files_and_fits_each_call(tmp_path, monkeypatch):
    """Parts too many for one call go in calls of their own before the run's call, each call within
    the bytes and paths a call carries, every part named once and never the stage folder whole."""
    gpu_batch = load_gpu_batch()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpu_batch, "_tree_bytes", lambda: 100)
    stage = tmp_path / ".gpu-stage"
    stage.mkdir()
    (tmp_path / "data.tar.gz").write_bytes(b"d" * 300)
    for i in range(7):
        (stage / f"ckpt-r.pt.part{i:02d}").write_bytes(b"p" * 150)
    (stage / "ckpt-r.pt.sha256").write_text("abc 1050 7\n")
    plan = gpu_batch.carry_plan(stage, data=("data.tar.gz",), runs="missing-runs", limit=700, max_paths=4)
    lines = plan.splitlines()
    assert lines[0].startswith("the staged parts need") and "JOIN=1" in lines[-1]
    named = [n for ln in lines[1:] for n in ln.split("carry ", 1)[1].strip("[]").replace("'", "").split(", ")]
    assert sorted(n for n in named if "ckpt" in n) == sorted(str(f) for f in stage.iterdir())
    assert str(stage) not in named and "data.tar.gz" in lines[-1]
    small = gpu_batch.carry_plan(stage, data=("data.tar.gz",), runs="missing-runs", limit=10_000)
    assert small.startswith("the next call carries") and str(stage) in small
