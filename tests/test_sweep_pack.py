"""`jdcl-bench sweep --per-gpu N [--gpus ...]`: cells side by side as subprocesses, each manifest saying
how many shared the device. On CPU with the tiny synthetic protocol and the smoke preset."""
import json

import pytest
from click.testing import CliRunner

from jdcl_bench.cli import main
from jdcl_bench.runner import RunConfig
from jdcl_bench.sweep import Cell, PackOptions, SweepSpec, cell_command, cell_env, pack_slots, sweep


def test_pack_slots_fill_the_gpus_round_robin():
    assert pack_slots(5, PackOptions(per_gpu=2)) == [(None, 2), (None, 2)]
    assert pack_slots(1, PackOptions(per_gpu=4)) == [(None, 1)]  # one cell: not shared
    assert pack_slots(8, PackOptions(per_gpu=2, gpus=["0", "1"])) == [("0", 2), ("1", 2), ("0", 2), ("1", 2)]
    # 3 cells on 2 GPUs x 2: GPU 0 gets two slots, GPU 1 one
    assert pack_slots(3, PackOptions(per_gpu=2, gpus=["0", "1"])) == [("0", 2), ("1", 1), ("0", 2)]
    assert pack_slots(3, PackOptions(per_gpu=1, gpus=["2", "3"])) == [("2", 1), ("3", 1)]


def test_a_cells_log_keeps_a_dotted_protocol_name_whole(tmp_path):
    """cifar10-semi-0.8pct's dot is not a suffix (gpu_batch.py named its log cifar10-semi-0__...
    until 2026-12-07; the sweep's logs did the same); a protocol file gives its stem."""
    from jdcl_bench.protocol import protocol_stem
    from jdcl_bench.sweep.pack import _log_name

    f = tmp_path / "my.protocol.toml"
    f.write_text("")
    assert protocol_stem("cifar10-semi-0.8pct") == "cifar10-semi-0.8pct"
    assert protocol_stem(str(f)) == "my.protocol" and protocol_stem("elsewhere/p.toml") == "p"
    assert _log_name(Cell(protocol="cifar10-semi-0.8pct", method="jdcl", seed=0)).startswith(
        "cifar10-semi-0.8pct__jdcl__seed0__")


def test_cell_command_and_environment(monkeypatch):
    monkeypatch.setenv("JDCL_BENCH_RUN_NOTE", "from outside")
    cfg = RunConfig(protocol="synthetic-t2", method="jdcl", seed=3, preset="smoke",
                    overrides={"ddim_steps": "4", "unet": "smoke"}, data_dir="d", out="o", device="cuda",
                    time_limit_s=60, download=True)
    cmd = cell_command(cfg)
    assert cmd[1:4] == ["-m", "jdcl_bench.cli", "run"]
    joined = " ".join(cmd)
    for part in ("--protocol synthetic-t2", "--method jdcl", "--seed 3", "--preset smoke", "--set ddim_steps=4",
                 "--set unet=smoke", "--data-dir d", "--out o", "--device cuda", "--time-limit 60.0", "--download"):
        assert part in joined
    env = cell_env("1", 4, PackOptions(per_gpu=4, gpus=["0", "1"]))
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["JDCL_BENCH_GPU_SHARED_BY"] == "4"
    assert "up to 4" in env["JDCL_BENCH_RUN_NOTE"] and "GPU 1" in env["JDCL_BENCH_RUN_NOTE"]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cell_env(None, 2, PackOptions(per_gpu=2), threads=8)["OMP_NUM_THREADS"] == "8"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the caller's setting wins
    assert cell_env(None, 2, PackOptions(per_gpu=2), threads=8)["OMP_NUM_THREADS"] == "3"
    alone = cell_env("0", 1, PackOptions(per_gpu=1, gpus=["0"]))
    assert alone["CUDA_VISIBLE_DEVICES"] == "0"
    assert "JDCL_BENCH_GPU_SHARED_BY" not in alone and "JDCL_BENCH_RUN_NOTE" not in alone


def test_bad_packing_options_fail_before_anything_runs(tmp_path):
    spec = SweepSpec(methods=["finetune"], protocols=["synthetic-t2"], seeds=[0], preset="smoke", out=str(tmp_path),
                     device="cpu")
    with pytest.raises(ValueError, match="per-gpu"):
        sweep(spec, pack=PackOptions(per_gpu=0))
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        sweep(spec, pack=PackOptions(gpus=["0"]))  # with --device cpu
    with pytest.raises(ValueError, match="executor local"):
        sweep(spec, executor="submitit-local", pack=PackOptions(per_gpu=2))
    assert not (tmp_path / "runs").exists()


def test_per_gpu_2_runs_two_cells_side_by_side(tmp_path):
    r = CliRunner().invoke(main, ["sweep", "--methods", "finetune", "--protocols", "synthetic-t2", "--seeds", "0-1",
                                  "--preset", "smoke", "--device", "cpu", "--out", str(tmp_path), "--per-gpu", "2"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "2 cell(s), 2 at a time" in r.output and "2 done" in r.output
    for seed in (0, 1):
        d = tmp_path / f"runs/synthetic-t2/finetune/smoke/seed{seed}"
        metrics = json.loads((d / "metrics.json").read_text())
        manifest = json.loads((d / "manifest.json").read_text())
        assert metrics["complete"] and metrics["tasks_done"] == metrics["num_tasks"] == 2
        assert manifest["gpu_shared_by"] == 2 and "up to 2 sweep cells side by side" in manifest["note"]
    assert len(list((tmp_path / "sweep_logs").glob("*.log"))) == 2
    # both cells started before either ended: they ran side by side
    events = [ln for ln in r.output.splitlines() if ln.startswith("[") and ("started on" in ln or ": done" in ln)]
    assert ["started on" in ln for ln in events] == [True, True, False, False], events
    assert all("(2 side by side)" in ln for ln in events[:2])

    # complete cells are skipped without starting anything
    spec = SweepSpec(methods=["finetune"], protocols=["synthetic-t2"], seeds=[0, 1], preset="smoke",
                     out=str(tmp_path), device="cpu")
    again = sweep(spec, pack=PackOptions(per_gpu=2), log=lambda *_: None)
    assert [x.status for x in again] == ["skipped", "skipped"]
    assert [x.cell for x in again] == [Cell("finetune", "synthetic-t2", 0), Cell("finetune", "synthetic-t2", 1)]


def test_a_failing_packed_cell_is_reported_and_the_others_finish(tmp_path, monkeypatch):
    monkeypatch.delenv("JDCL_BENCH_DATA", raising=False)  # CIFAR-10 is not there: that cell fails at once
    spec = SweepSpec(methods=["finetune"], protocols=["cifar10-t5", "synthetic-t2"], seeds=[0], preset="smoke",
                     out=str(tmp_path), device="cpu", data_dir=str(tmp_path / "nodata"))
    res = sweep(spec, pack=PackOptions(per_gpu=2), log=lambda *_: None)
    assert [x.status for x in res] == ["failed", "done"]
    assert res[0].error.startswith("exit ") and "see " in res[0].details
    b = res[1]
    assert b.started_at < b.ended_at and b.log and b.tasks_done == 2


def _packing_record(path, gpu="NVIDIA H200", methods="finetune,joint", preset="standard", passes=None, sets=()):
    passes = passes or {"1": (1, True, 10.0), "2": (2, True, 17.0), "4": (4, True, 21.0), "8": (8, False, 40.0)}
    rec = {"gpu_name": gpu, "complete": True,
           "settings": {"methods": methods, "protocols": "cifar10-t5", "preset": preset, "sets": list(sets)},
           "passes": {k: {"per_gpu": n, "all_done": ok, "cells_per_hour": r} for k, (n, ok, r) in passes.items()}}
    path.write_text(json.dumps(rec))


def test_per_gpu_auto_takes_the_best_measured_n_of_the_same_cells(tmp_path):
    from jdcl_bench.sweep import measured_per_gpu

    _packing_record(tmp_path / "sweep-packing-NVIDIA_H200-20261201T000000.json")
    n, why = measured_per_gpu(tmp_path, "NVIDIA H200", ["joint", "finetune"], ["cifar10-t5"], "standard")
    assert n == 4 and "20261201T000000" in why  # N = 8 did not finish all its cells: not a throughput
    # the newest matching record wins
    _packing_record(tmp_path / "sweep-packing-NVIDIA_H200-20261202T000000.json",
                    passes={"1": (1, True, 10.0), "2": (2, True, 30.0), "4": (4, True, 21.0)})
    assert measured_per_gpu(tmp_path, "NVIDIA H200", ["finetune", "joint"], ["cifar10-t5"], "standard")[0] == 2
    # other cells, another GPU model, other --set values: no measurement, so 1
    for args in [("NVIDIA H200", ["jdcl"], ["cifar10-t5"], "standard"),
                 ("NVIDIA H100 80GB HBM3", ["finetune", "joint"], ["cifar10-t5"], "standard"),
                 ("NVIDIA H200", ["finetune", "joint"], ["cifar10-t5"], "fast"),
                 (None, ["finetune", "joint"], ["cifar10-t5"], "standard")]:
        n, why = measured_per_gpu(tmp_path, *args)
        assert n == 1 and "benchmarks/sweep_packing.py" in why, args
    _packing_record(tmp_path / "sweep-packing-NVIDIA_H200-20261203T000000.json", sets=["lr=1"], preset="x")
    assert measured_per_gpu(tmp_path, "NVIDIA H200", ["finetune", "joint"], ["cifar10-t5"], "x")[0] == 1


def test_per_gpu_auto_on_the_command_line(tmp_path):
    r = CliRunner().invoke(main, ["sweep", "--methods", "finetune", "--protocols", "synthetic-t2", "--preset", "smoke",
                                  "--device", "cpu", "--per-gpu", "auto", "--packing-records", str(tmp_path),
                                  "--out", str(tmp_path / "o"), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "--per-gpu auto: 1 (no packing record for finetune on synthetic-t2" in r.output
    r = CliRunner().invoke(main, ["sweep", "--methods", "finetune", "--protocols", "synthetic-t2", "--per-gpu", "two",
                                  "--out", str(tmp_path / "o"), "--dry-run"])
    assert r.exit_code != 0 and "neither a number nor 'auto'" in r.output
