"""Every method's training loops report through ctx.log_step, so every run keeps its training curve
(curves.jsonl), and `jdcl-bench plot --curves RUN_DIR` draws it."""
import json
import math

import pytest
from click.testing import CliRunner

from jdcl_bench.cli import main


@pytest.mark.parametrize("method", ["finetune", "joint", "nncsl", "dgr", "guide", "gfr"])  # jdcl: tests/test_jdcl.py
def test_every_method_keeps_its_training_curve(tmp_path, method):
    r = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", method, "--preset", "smoke",
                                  "--device", "cpu", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    run = next((tmp_path / "runs" / "synthetic-t2" / method).glob("*/seed0"))
    lines = [json.loads(x) for x in (run / "curves.jsonl").read_text().splitlines()]
    # at least the last step of every task's training stage, with a finite loss
    assert {x["task"] for x in lines} == {1, 2}
    assert all(math.isfinite(x["loss"]) and x["step"] > 0 and x["stage"] for x in lines)

    out = tmp_path / "figs"
    p = CliRunner().invoke(main, ["plot", "--curves", str(run), "--out-dir", str(out)])
    assert p.exit_code == 0, p.output
    assert [f.suffix for f in out.iterdir()] == [".png"]


def test_plot_curves_of_a_run_without_them_says_why(tmp_path):
    r = CliRunner().invoke(main, ["plot", "--curves", str(tmp_path)])
    assert r.exit_code != 0 and "no curves.jsonl" in r.output


def test_a_resumed_stage_keeps_the_last_line_of_each_step(tmp_path):
    from jdcl_bench.results.plots import read_curves

    (tmp_path / "curves.jsonl").write_text("\n".join(json.dumps(x) for x in [
        {"task": 1, "stage": "s", "step": 50, "loss": 2.0}, {"task": 1, "stage": "s", "step": 100, "loss": 1.5},
        {"task": 1, "stage": "s", "step": 100, "loss": 1.0}]) + "\n")
    df = read_curves(tmp_path)
    assert list(df["loss"]) == [2.0, 1.0]


def test_curves_also_go_to_tensorboard_when_it_is_installed(tmp_path, monkeypatch):
    """The optional `tensorboard` extra: the same scalars as curves.jsonl, per task and stage."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "finetune", "--preset", "smoke",
                                  "--device", "cpu", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    run = next((tmp_path / "runs" / "synthetic-t2" / "finetune").glob("*/seed0"))
    lines = [json.loads(x) for x in (run / "curves.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for x in lines:
        [point] = [e for e in events.Scalars(f"task{x['task']}/{x['stage']}/loss") if e.step == x["step"]]
        assert point.value == pytest.approx(x["loss"], rel=1e-6)
    # off on request: curves.jsonl alone
    monkeypatch.setenv("JDCL_BENCH_TENSORBOARD", "0")
    r = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "finetune", "--preset", "smoke",
                                  "--device", "cpu", "--out", str(tmp_path / "off")])
    assert r.exit_code == 0 and not list((tmp_path / "off").rglob("tensorboard"))
