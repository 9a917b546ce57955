"""`jdcl-bench bench --loop --method dgr|guide`: the generator's diffusion loop next to its bare step.
Only the wiring is checked here (CPU); the rates are measured on the GPU (results/bench/)."""
import json

from click.testing import CliRunner

from jdcl_bench.cli import main
from jdcl_baselines.dgr import DGR


def test_generator_loop_bench_record(tmp_path):
    r = CliRunner().invoke(main, ["bench", "--loop", "--method", "dgr", "--config", "smoke", "--device", "cpu",
                                  "--iters", "2", "--warmup", "1", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    rec = json.loads(next(tmp_path.glob("loop-dgr-*.json")).read_text())
    assert rec["complete"] is True and rec["method"] == "dgr"
    (run,) = rec["runs"]
    (stage,) = run["stages"]
    assert stage["stage"] == "generator" and stage["steps"] == 2
    assert stage["images_per_step"] == DGR.config_for("smoke", {}).generator.batch_size
    assert stage["loop_steps_per_s"] > 0 and stage["bare_steps_per_s"] > 0
    assert "the loop keeps" in r.output


def test_loop_bench_refuses_what_it_cannot_time(tmp_path):
    r = CliRunner().invoke(main, ["bench", "--loop", "--method", "dgr", "--semi", "--config", "smoke", "--device",
                                  "cpu", "--out", str(tmp_path)])
    assert r.exit_code != 0 and "FixMatch labeller is not timed" in r.output
    r = CliRunner().invoke(main, ["bench", "--loop", "--method", "nncsl", "--config", "smoke", "--device", "cpu",
                                  "--out", str(tmp_path)])
    assert r.exit_code != 0 and "has no loop bench" in r.output
    r = CliRunner().invoke(main, ["bench", "--loop", "--method", "nope", "--config", "smoke", "--device", "cpu",
                                  "--out", str(tmp_path)])
    assert r.exit_code != 0 and "nope" in r.output
    assert not list(tmp_path.glob("loop-*.json"))
