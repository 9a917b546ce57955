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


def test_loop_bench_prints_each_stage_when_it_is_measured():
    """A device command's time limit can stop the bench while the next stage compiles: the stage
    already measured must be in the output by then, not only at the end."""
    from jdcl_bench import loop_bench
    from jdcl_bench.methods.jdcl import JDCL

    lines = []
    loop_bench.time_jdcl_loops(JDCL, "smoke", torch.device("cpu"), steps=1, warmup=1, log=lines.append)
    global_start = next(i for i, m in enumerate(lines) if m.startswith("loop bench: global stage"))
    assert any(m.startswith("smoke local : loop") for m in lines[:global_start]), lines
    assert any(m.startswith("smoke global: loop") for m in lines[global_start:]), lines



def test_loop_bench_profile_says_per_step_where_the_host_goes(tmp_path, monkeypatch):
    """`--profile N` profiles N more steps of each loop (trained after the timed window) and N bare
    steps: host and device time per step, syncs, copies and launches per step, and the host's
    costliest operators. On a CPU the device columns are zero; the structure and the step counts are
    the same. The model bench (no --loop) refuses it."""
    from jdcl_bench.methods.jdcl import JDCL

    seen = {}
    real_local = JDCL._train_local

    def local(self, task):
        real_local(self, task)
        seen["local"] = self.counters["local_steps"]

    monkeypatch.setattr(JDCL, "_train_local", local)
    r = CliRunner().invoke(main, ["bench", "--loop", "--config", "smoke", "--device", "cpu", "--iters", "1",
                                  "--warmup", "1", "--profile", "2", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert seen["local"] == 1 + 1 + 2
    (run,) = json.loads(next(tmp_path.glob("loop-*.json")).read_text())["runs"]
    assert run["profile_steps"] == 2
    for s in run["stages"]:
        assert s["steps"] == 1  # the rates are still those of the timed window
        for key in ("loop_profile", "bare_profile"):
            p = s[key]
            assert p["steps"] == 2 and p["host_ms_per_step"] > 0 and p["device_ms_per_step"] == 0
            assert p["device_busy_share"] is None
            assert p["top_host_ops"] and all(o["self_ms_per_step"] > 0 for o in p["top_host_ops"])
            assert p["syncs_per_step"] == 0 and p["launches_per_step"] == 0  # no CUDA on a CPU run
            assert p["sync_sites"] is None
    assert "host" in r.output and "ms/step" in r.output
    r = CliRunner().invoke(main, ["bench", "--profile", "3", "--device", "cpu"])
    assert r.exit_code == 2 and "--profile applies to --loop" in r.output
    # a loop bench whose time_loops takes no profile argument (a plugin's, say) is refused before it runs
    from jdcl_baselines.dgr import DGR

    monkeypatch.setattr(DGR, "time_loops", classmethod(lambda cls, preset, device, steps, warmup, semi, log: {}))
    r = CliRunner().invoke(main, ["bench", "--loop", "--method", "dgr", "--config", "fast", "--profile", "3",
                                  "--device", "cpu", "--out", str(tmp_path / "dgr")])
    assert r.exit_code == 2 and "does not profile yet" in r.output and not (tmp_path / "dgr").exists()
    r = CliRunner().invoke(main, ["bench", "--loop", "--method", "finetune", "--config", "fast", "--profile", "3",
                                  "--device", "cpu", "--out", str(tmp_path / "ft")])
    assert r.exit_code == 2 and "has no loop bench" in r.output


def test_sync_sites_name_the_lines_that_synchronised():
    """The warnings of torch.cuda.set_sync_debug_mode("warn") become per-step counts by file:line,
    most frequent first; warnings of anything else are not counted."""
    import warnings

    from jdcl_bench.profiling import sync_sites

    def rec(msg, filename, lineno):
        return warnings.WarningMessage(UserWarning(msg), UserWarning, filename, lineno)

    sync = "called a synchronizing CUDA operation"
    records = [rec(sync, "/x/jdcl_bench/data/augment.py", 222)] * 4 + [rec(sync, "/x/jdcl_bench/methods/jdcl.py", 9)] * 2
    records += [rec("some deprecation", "/x/other.py", 1)] * 9
    assert sync_sites(records, steps=2) == [{"site": "augment.py:222", "per_step": 2.0},
                                            {"site": "jdcl.py:9", "per_step": 1.0}]
    assert sync_sites([], steps=2) == []



def test_packed_loop_benches_wait_for_each_other_at_each_window(tmp_path, monkeypatch):
    """benchmarks/loop_packing.py's processes meet at the start of every timed window: the last to
    arrive releases all; one that never arrives holds the others only until the timeout, which they say."""
    import os

    from jdcl_bench.loop_bench import BARRIER_ENV, BARRIER_N_ENV, packing_barrier

    said = []
    packing_barrier(1, said.append)  # no folder: not packed, nothing happens
    assert said == [] and not list(tmp_path.iterdir())
    monkeypatch.setenv(BARRIER_ENV, str(tmp_path))
    monkeypatch.setenv(BARRIER_N_ENV, "2")
    (tmp_path / "w1-999999").touch()  # the other process is already there
    packing_barrier(1, said.append, timeout_s=5)
    assert (tmp_path / f"w1-{os.getpid()}").exists() and "started by 2 processes together" in said[-1]
    packing_barrier(2, said.append, timeout_s=0.05)  # window 2: the other never comes
    assert "timed out" in said[-1]


def test_packing_totals_add_the_rates_and_bound_them_by_the_slowest_window():
    from script_module import load_script

    lp = load_script("benchmarks/loop_packing.py")

    def run(local, glob):
        return {"stages": [{"stage": "local", "steps": 100, "images_per_step": 512, "loop_steps_per_s": local,
                            "bare_steps_per_s": 30.0},
                           {"stage": "global", "steps": 100, "images_per_step": 512, "loop_steps_per_s": glob,
                            "bare_steps_per_s": 20.0}]}

    local, glob = lp.totals([run(10.0, 8.0), run(12.5, 8.0)])
    assert local["rates"] == [10.0, 12.5] and local["total_steps_per_s"] == 22.5
    assert local["total_steps_per_s_bound"] == 200 / 10.0  # all steps over the slower window (10 s)
    assert glob["total_steps_per_s"] == glob["total_steps_per_s_bound"] == 16.0


def test_loop_presets_and_overrides_are_the_loop_benchs_only(tmp_path):
    """The model bench times its named configurations; a method's other presets (JDCL's standard) and
    --settings/--set belong to --loop, where they change the loops timed."""
    r = CliRunner().invoke(main, ["bench", "--config", "standard", "--device", "cpu", "--out", str(tmp_path)])
    assert r.exit_code != 0 and "paper, fast, smoke" in r.output
    r = CliRunner().invoke(main, ["bench", "--config", "smoke", "--set", "batch_size=8", "--device", "cpu",
                                  "--out", str(tmp_path)])
    assert r.exit_code != 0 and "--loop only" in r.output
    r = CliRunner().invoke(main, ["bench", "--loop", "--config", "smoke", "--set", "batch_size=8", "--device", "cpu",
                                  "--iters", "1", "--warmup", "1", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    (run,) = json.loads(next(tmp_path.glob("loop-*.json")).read_text())["runs"]
    assert run["batch_size"] == 8 and run["stages"][1]["images_per_step"] == 8 and run["overrides"] == {"batch_size": "8"}
