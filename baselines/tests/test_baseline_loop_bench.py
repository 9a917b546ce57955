"""`jdcl-bench bench --loop --method dgr|guide|nncsl`: the baselines' loops next to their bare steps.
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
    stage, classifier = run["stages"]
    cfg = DGR.config_for("smoke", {})
    assert stage["stage"] == "generator" and stage["steps"] == 2
    assert stage["images_per_step"] == cfg.generator.batch_size
    assert stage["loop_steps_per_s"] > 0 and stage["bare_steps_per_s"] > 0
    # task 2's classifier loop: replay generated every regen_every steps, its time counted apart
    assert classifier["stage"] == "classifier" and classifier["images_per_step"] == cfg.classifier.batch_size
    assert classifier["regen_every"] == cfg.classifier.regen_every and 0 < classifier["replay_generation_s"]
    assert classifier["loop_share_of_bare_without_generation"] > classifier["loop_share_of_bare"] > 0
    assert "the loop keeps" in r.output


def test_generator_and_classifier_loops_profile(tmp_path, monkeypatch):
    """--profile N: N more steps of the generator loop and of task 2's classifier loop run under the
    profiler after the timed windows, beside N bare steps of each; the timed window is unchanged."""
    from jdcl_baselines.cond_diffusion import GeneratorStage

    trained, train = [], GeneratorStage._train

    def spy(self, task):
        train(self, task)
        trained.append(self.step)
    monkeypatch.setattr(GeneratorStage, "_train", spy)
    r = CliRunner().invoke(main, ["bench", "--loop", "--method", "dgr", "--config", "smoke", "--device", "cpu",
                                  "--iters", "2", "--warmup", "1", "--profile", "3", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert trained == [1 + 2 + 3]
    (run,) = json.loads(next(tmp_path.glob("loop-dgr-*.json")).read_text())["runs"]
    assert run["profile_steps"] == 3
    for s in run["stages"]:
        assert s["steps"] == 2
        for key in ("loop_profile", "bare_profile"):
            assert s[key]["steps"] == 3 and s[key]["host_ms_per_step"] > 0 and s[key]["top_host_ops"]
    assert r.output.count("host self ms/step") == 4


def test_nncsl_loop_bench_times_both_tasks(tmp_path, monkeypatch):
    """NNCSL's own train_task runs warm-up + timed (+ profiled) steps per task; task 2 with the NND
    teacher; with --profile, each task's loop and bare step say where a step's host time goes."""
    from jdcl_baselines.nncsl import NNCSL

    seen = []
    real = NNCSL.train_task

    def train_task(self, task):
        real(self, task)
        seen.append((task.index, self.step, self.teacher is not None, len(task.unlabelled_x)))
    monkeypatch.setattr(NNCSL, "train_task", train_task)
    r = CliRunner().invoke(main, ["bench", "--loop", "--method", "nncsl", "--semi", "--config", "smoke", "--device",
                                  "cpu", "--iters", "2", "--warmup", "1", "--profile", "2", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert seen == [(0, 5, False, 9500), (1, 5, True, 9500)]
    (run,) = json.loads(next(tmp_path.glob("loop-nncsl-*.json")).read_text())["runs"]
    assert [s["stage"] for s in run["stages"]] == ["task 1", "task 2"] and run["semi_supervised"] is True
    assert all(s["loop_steps_per_s"] > 0 and s["bare_steps_per_s"] > 0 for s in run["stages"])
    assert run["profile_steps"] == 2 and all(s[k]["steps"] == 2 and s[k]["host_ms_per_step"] > 0 and s[k]["top_host_ops"]
                                             for s in run["stages"] for k in ("loop_profile", "bare_profile"))
    assert "ms/step" in r.output


def test_loop_bench_refuses_what_it_cannot_time(tmp_path):
    r = CliRunner().invoke(main, ["bench", "--loop", "--method", "dgr", "--semi", "--config", "smoke", "--device",
                                  "cpu", "--out", str(tmp_path)])
    assert r.exit_code != 0 and "FixMatch labeller is not timed" in r.output
    r = CliRunner().invoke(main, ["bench", "--loop", "--method", "gfr", "--config", "smoke", "--device", "cpu",
                                  "--out", str(tmp_path)])
    assert r.exit_code != 0 and "has no loop bench" in r.output
    r = CliRunner().invoke(main, ["bench", "--loop", "--method", "nope", "--config", "smoke", "--device", "cpu",
                                  "--out", str(tmp_path)])
    assert r.exit_code != 0 and "nope" in r.output
    assert not list(tmp_path.glob("loop-*.json"))


def test_loop_bench_times_a_preset_changed_by_a_settings_file_and_set(tmp_path):
    """`--settings FILE --set KEY=VALUE`: the loops of the preset as a run with those values trains
    (a candidate such as benchmarks/candidates/dgr-standard.toml), the values in the record."""
    settings = tmp_path / "candidate.toml"
    settings.write_text("[generator]\nbatch_size = 6\n[classifier]\nbatch_size = 10\n")
    r = CliRunner().invoke(main, ["bench", "--loop", "--method", "dgr", "--config", "smoke", "--device", "cpu",
                                  "--iters", "2", "--warmup", "1", "--settings", str(settings),
                                  "--set", "classifier.batch_size=12", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    (run,) = json.loads(next(tmp_path.glob("loop-dgr-*.json")).read_text())["runs"]
    generator, classifier = run["stages"]
    assert generator["images_per_step"] == 6 and classifier["images_per_step"] == 12  # --set over the file
    assert run["overrides"] == {"generator.batch_size": "6", "classifier.batch_size": "12"}
    r = CliRunner().invoke(main, ["bench", "--loop", "--method", "dgr", "--config", "smoke", "--device", "cpu",
                                  "--set", "classifier.no_such_field=1", "--out", str(tmp_path / "bad")])
    assert r.exit_code != 0 and "no_such_field" in r.output
