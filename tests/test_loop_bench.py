"""`jdcl-bench bench --loop`: JDCL's own loops timed next to the bare step of the same model. Only the
wiring is checked here (CPU); the rates are measured on the GPU (results/bench/)."""
import json

import torch
from click.testing import CliRunner

from jdcl_bench.cli import main


def test_loop_bench_times_both_stages_and_their_bare_steps(tmp_path):
    r = CliRunner().invoke(main, ["bench", "--loop", "--config", "smoke", "--device", "cpu", "--iters", "2",
                                  "--warmup", "1", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    rec = json.loads(next(tmp_path.glob("loop-*.json")).read_text())
    assert rec["complete"] is True and rec["torch"] == torch.__version__ and rec["code_version"]
    (run,) = rec["runs"]
    assert run["preset"] == "smoke" and run["steps"] == 2 and run["warmup"] == 1
    assert [s["stage"] for s in run["stages"]] == ["local", "global"]
    for s in run["stages"]:
        assert s["loop_steps_per_s"] > 0 and s["bare_steps_per_s"] > 0
        assert s["loop_share_of_bare"] == s["loop_steps_per_s"] / s["bare_steps_per_s"]
        assert s["images_per_step"] == 16  # the smoke preset's batch, in the loop and the bare step alike
    assert "the loop keeps" in r.output


def test_loop_bench_runs_the_method_loops_for_the_window(monkeypatch):
    """The timed loop is JDCL's own: it trains warm-up + timed steps in each stage, no more."""
    from jdcl_bench import loop_bench
    from jdcl_bench.methods.jdcl import JDCL

    seen = {}
    real_local, real_global = JDCL._train_local, JDCL._train_global

    def local(self, task):
        real_local(self, task)
        seen["local"] = self.counters["local_steps"]

    def global_(self, task):
        real_global(self, task)
        seen["global"] = self.counters["global_steps"]
    monkeypatch.setattr(JDCL, "_train_local", local)
    monkeypatch.setattr(JDCL, "_train_global", global_)
    out = loop_bench.time_jdcl_loops(JDCL, "smoke", torch.device("cpu"), steps=3, warmup=1, semi=True, log=lambda m: None)
    assert seen == {"local": 4, "global": 4}
    assert out["semi_supervised"] is True
    # FixMatch's local step: labelled + weak and strong unlabelled views of the smoke preset (4 + 2 x 8)
    assert out["stages"][0]["images_per_step"] == 4 * (1 + 2 * 2)
