import json
import math

import pytest
import torch
from click.testing import CliRunner

from jdcl_bench.cli import main
from jdcl_bench.jdcl.losses import group_mean, kd_classifier, kd_diffusion
from jdcl_bench.testing import check_method


def test_kd_diffusion_by_hand():
    s = torch.tensor([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]]).view(3, 2, 1, 1)
    t = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 0.0]]).view(3, 2, 1, 1)
    is_old = torch.tensor([True, False, False])
    # per-sample MSE: (1 + 4)/2 = 2.5, (1 + 1)/2 = 1.0, (0 + 4)/2 = 2.0
    assert kd_diffusion(s, t, is_old, "main").item() == pytest.approx(2 * (2.5 + 1.0 + 2.0) / 3)
    assert kd_diffusion(s, t, is_old, "paper_branch").item() == pytest.approx(2.5 + (1.0 + 2.0) / 2)
    # "main" is the official 2 (n_new/B) mean_new + 2 (n_old/B) mean_old
    assert kd_diffusion(s, t, is_old, "main").item() == pytest.approx(2 * (1 / 3) * 2.5 + 2 * (2 / 3) * 1.5)


def test_kd_classifier_by_hand():
    ls = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])   # p_S = [1/4, 3/4], [1/2, 1/2]
    lt = torch.tensor([[math.log(3.0), 0.0], [0.0, -1e9]])  # p_T = [3/4, 1/4], [1, 0]
    is_old = torch.tensor([True, False])
    ce0 = -(0.75 * math.log(0.25) + 0.25 * math.log(0.75))
    ce1 = -math.log(0.5)
    assert kd_classifier(ls, lt, is_old, "main").item() == pytest.approx(ce0 + ce1, rel=1e-5)
    assert kd_classifier(ls, lt, is_old, "paper_branch").item() == pytest.approx(ce0 + ce1, rel=1e-5)
    with pytest.raises(ValueError, match="kd_weighting"):
        group_mean(torch.ones(2), is_old, "other")


@pytest.mark.parametrize("protocol", ["digits-t5", "digits-semi-10pct"])
def test_jdcl_smoke_run_on_embedded_protocol(tmp_path, protocol):
    r = CliRunner().invoke(main, ["run", "--protocol", protocol, "--method", "jdcl", "--preset", "smoke",
                                  "--device", "cpu", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    d = tmp_path / "runs" / protocol / "jdcl" / "smoke" / "seed0"
    m = json.loads((d / "metrics.json").read_text())
    assert m["complete"] and len(m["acc_matrix"]) == 5
    art = d / "artefacts"
    for k in range(2, 6):
        assert (art / f"replay_task{k}.png").stat().st_size > 0
        counts = json.loads((art / f"replay_counts_task{k}.json").read_text())
        assert set(map(int, counts["per_class"])) == set(range(2 * k))
        for v in counts["per_class"].values():
            assert v["accepted"] + v["duplicated"] in (0, 6)
    assert (art / "samples_task1.png").exists()
    budget = json.loads((d / "manifest.json").read_text())["budget"]
    assert budget["local_steps"] == 5 * 6 and budget["global_steps"] == 4 * 6 and budget["ddim_steps"] == 3
    shown = CliRunner().invoke(main, ["show", str(d)])
    assert shown.exit_code == 0 and "replay_task2.png" in shown.output



def test_the_sampler_sees_one_batch_shape_per_run(tmp_path, monkeypatch):
    """Replay and the end-of-task sample grids draw the same batch shape: under torch.compile every
    new shape is a new compilation (a grid of its own size cost one per task on the GPU)."""
    from jdcl_bench.methods.jdcl import JDCL

    sizes = []
    real = JDCL._sample_labelled

    def spy(self, state, n, gen, filtered=True):
        sizes.append(n)
        return real(self, state, n, gen, filtered=filtered)

    monkeypatch.setattr(JDCL, "_sample_labelled", spy)
    r = CliRunner().invoke(main, ["run", "--protocol", "digits-t5", "--method", "jdcl", "--preset", "smoke",
                                  "--set", "gen_batch=100", "--device", "cpu", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert len(sizes) > 5 and set(sizes) == {100}, sizes


def test_digits_preset_runs_on_cpu(tmp_path, monkeypatch):
    """README's first run: the `digits` preset exists and completes digits-t5 with its replay grids,
    here at a few steps (the measured run and its accuracy: results/probes/jdcl-digits-first-run)."""
    from jdcl_bench.methods.jdcl import PRESETS

    assert {"sampler_clip_x0", "global_ema_restart", "local_init", "diagnostics"} <= set(PRESETS["digits"])
    monkeypatch.setenv("JDCL_BENCH_CACHE", str(tmp_path / "cache"))
    fewer = {"local_steps": 4, "global_steps": 4, "ddim_steps": 2, "replay_per_class": 4, "gen_batch": 16}
    r = CliRunner().invoke(main, ["run", "--protocol", "digits-t5", "--method", "jdcl", "--preset", "digits",
                                  *[a for k, v in fewer.items() for a in ("--set", f"{k}={v}")],
                                  "--device", "cpu", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    d = next((tmp_path / "runs" / "digits-t5" / "jdcl").glob("digits+*/seed0"))
    m = json.loads((d / "metrics.json").read_text())
    assert m["complete"] and len(m["acc_matrix"]) == 5
    assert [e["kind"] for e in m["diagnostics"]].count("replay") == 4
    assert all((d / "artefacts" / f"replay_task{k}.png").stat().st_size > 0 for k in range(2, 6))
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["budget"]["preset"] == "digits" and manifest["budget"]["batch_size"] == 64
    table = CliRunner().invoke(main, ["table", "--results", str(tmp_path), "--preset", "digits"])
    # a run with --set overrides is its own row, its overrides in the label
    assert table.exit_code == 0 and "| JDCL [ddim_steps=2, gen_batch=16, global_steps=4" in table.output

SHORT_BUDGET = {"sampler_clip_x0": True, "global_ema_restart": True, "local_init": "global"}


@pytest.mark.parametrize("semi", [False, True])
def test_jdcl_conformance(tmp_path, monkeypatch, semi):
    """Semi-supervised: the official settings. Supervised: what `standard` changes (the short-budget
    options, the diagnostics, lr and the few-step sampler on DDIM's grid), so the kit's crash at 3/4 of
    the ticks (inside task 2's global stage) checks that a resume there is exact with them, the
    diagnostics in metrics.json included."""
    monkeypatch.setenv("JDCL_BENCH_CACHE", str(tmp_path / "cache"))
    standard = {"lr": 5e-4, "sampler": "dpm-solver++", "sampler_spacing": "uniform"}
    overrides = {} if semi else {**SHORT_BUDGET, "diagnostics": True, **standard}
    out = check_method("jdcl", preset="smoke", semi=semi, overrides=overrides, workdir=tmp_path)
    assert out["semi"] is semi and out["ticks"] > 0
    if not semi:
        assert max(out["crash_points"]) > 12  # smoke: 6 + 6 local ticks, then the global stage
        assert [e["kind"] for e in out["metrics"]["diagnostics"]] == ["accuracy", "accuracy", "replay"]


@pytest.mark.parametrize("semi", [False, True])
def test_real_images_for_the_diffusion_terms_only(tmp_path, monkeypatch, semi):
    """global_new_source=real-diffusion: the replay set is the recipe's (all generated), the classifier
    sees it unchanged, and the diffusion view of each new-class sample comes from the task's real
    images (semi-supervised: unlabelled ones too); old-class samples keep their replay image in both.
    A resume inside the global stage is exact (the conformance kit's crash points)."""
    from jdcl_bench.data import augment as A
    from jdcl_bench.methods import jdcl as M

    monkeypatch.setenv("JDCL_BENCH_CACHE", str(tmp_path / "cache"))
    calls, pools = [], {}
    diffusion_pool, views = M.JDCL._diffusion_pool, M.JDCL._views

    def spy_pool(self, task):
        pools[id(self)] = (task, diffusion_pool(self, task))
        return pools[id(self)][1]

    def spy_views(self, x, crop_scale, x_diff=None):
        if x_diff is None:
            return views(self, x, crop_scale)
        # the global stage: what it drew, from which replay set and pool; and, with the same randomness,
        # that the diffusion view is x_diff's and the classifier's view x's
        rng = self.ctx.rng
        start = rng.get_state()
        d, c = views(self, x, crop_scale, x_diff)
        end = rng.get_state()
        rng.set_state(start)
        assert torch.equal(d, views(self, x_diff, crop_scale)[0])
        rng.set_state(start)
        assert torch.equal(c, views(self, x, crop_scale)[1])
        rng.set_state(end)
        calls.append((x.clone(), x_diff.clone(), self.replay, *pools[id(self)]))
        return d, c

    monkeypatch.setattr(M.JDCL, "_diffusion_pool", spy_pool)
    monkeypatch.setattr(M.JDCL, "_views", spy_views)
    out = check_method("jdcl", preset="smoke", semi=semi, overrides={"global_new_source": "real-diffusion"},
                       workdir=tmp_path)
    assert max(out["crash_points"]) > 12  # smoke: 6 + 6 local ticks, then the global stage
    assert calls

    def index_in(rows, table):  # each row's first match in table, -1 where none
        eq = (rows[:, None, :] == table[None, :, :]).all(2)
        return torch.where(eq.any(1), eq.float().argmax(1), torch.full((len(rows),), -1))

    from_unlabelled = 0
    for x, x_diff, replay, task, pool in calls:
        x, x_diff = x.flatten(1), x_diff.flatten(1)
        where = index_in(x, A.to_unit(replay["x"]).flatten(1))
        assert bool((where >= 0).all())  # the classifier's images: replay only
        is_old = torch.isin(replay["y"][where], replay["old"])
        same = (x == x_diff).all(1)
        assert bool(same[is_old].all()) and not bool(same[~is_old].any())
        assert torch.equal(pool, torch.cat([task.x, task.unlabelled_x]) if semi else task.x)
        assert bool((index_in(x_diff[~is_old], A.to_unit(pool).flatten(1)) >= 0).all())
        if semi:
            from_unlabelled += int((index_in(x_diff[~is_old], A.to_unit(task.x).flatten(1)) < 0).sum())
    if semi:
        assert from_unlabelled > 0
    assert any("real images" in d for d in M.JDCL.differences_from_paper({"global_new_source": "real-diffusion"}))


def test_unknown_compile_mode_is_a_clear_config_error(tmp_path):
    from click.testing import CliRunner

    from jdcl_bench.cli import main

    r = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "jdcl", "--preset", "smoke",
                                  "--set", "compile_mode=fastest", "--out", str(tmp_path), "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert "compile_mode = 'fastest'" in r.output and "reduce-overhead" in r.output
    r = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "jdcl", "--preset", "smoke",
                                  "--set", "unet=huge", "--out", str(tmp_path), "--device", "cpu"])
    assert r.exit_code == 2 and "unet = 'huge'" in r.output and "fast" in r.output, r.output


def test_ema_start_share_matches_real_updates():
    from jdcl_bench.jdcl.diffusion import EMA, ema_start_share

    for decay, warmup, start in ((0.999, False, 0), (0.9999, True, 0), (0.9999, True, 800)):
        init = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            init.weight.fill_(1.0)
        ema = EMA(init, decay, warmup=warmup)
        ema.num_updates = start
        with torch.no_grad():
            init.weight.zero_()  # every update pulls towards 0: what is left is the start's share
        for _ in range(300):
            ema.update(init)
        assert float(ema.module.weight) == pytest.approx(ema_start_share(decay, warmup, 300, start), rel=1e-4)


@pytest.mark.parametrize("preset", ["paper", "standard", "fast", "digits"])
@pytest.mark.parametrize("semi", [False, True])
def test_local_stage_ema_forgets_the_random_initialisation(preset, semi):
    # the EMA is what samples replay and what is evaluated: at the end of a local stage it must be the
    # trained model, not its random start (0.999 without warm-up kept 45 % of it after fast's 800 steps)
    from jdcl_bench.jdcl.diffusion import ema_start_share
    from jdcl_bench.methods.jdcl import JDCL, JDCLConfig

    cfg = JDCLConfig(**JDCL.presets.get(preset, {}))
    decay, warmup = (cfg.ssl_ema_decay, cfg.ssl_ema_warmup) if semi else (cfg.ema_decay, True)
    assert ema_start_share(decay, warmup, cfg.local_steps) < 0.01


def test_semi_run_warns_when_the_ema_would_keep_its_random_start(tmp_path):
    args = ["run", "--protocol", "digits-semi-10pct", "--method", "jdcl", "--preset", "smoke", "--device", "cpu",
            "--out", str(tmp_path)]
    r = CliRunner().invoke(main, args + ["--set", "ssl_ema_warmup=false"])
    assert r.exit_code == 0, r.output
    assert "EMA still holds" in r.output and "ssl_ema_warmup" in r.output
    r = CliRunner().invoke(main, args[:-1] + [str(tmp_path / "b")])  # the preset warms up
    assert r.exit_code == 0, r.output
    assert "EMA still holds" not in r.output


def test_global_ema_does_not_inherit_fixmatch_decay():
    # semi-supervised: G_1 is a local model with FixMatch's EMA (0.999, no warm-up); the global student
    # keeps its weights and count but runs the recipe's 0.9999 with warm-up
    from jdcl_bench.jdcl.diffusion import EMA
    from jdcl_bench.jdcl.diffusion import global_ema

    net = torch.nn.Linear(1, 1, bias=False)
    local = EMA(net, 0.999, warmup=False)
    for _ in range(7):
        local.update(net)
    with torch.no_grad():
        local.module.weight.fill_(3.0)
    g = global_ema(torch.nn.Linear(1, 1, bias=False), local.state_dict(), 0.9999)
    assert (g.decay, g.warmup, g.num_updates) == (0.9999, True, 7)
    assert float(g.module.weight) == 3.0
    assert g.current_decay() == pytest.approx(9 / 18)


def test_teachers_run_through_the_compiled_call(monkeypatch):
    # the global stage's two teacher passes go through JDCL._fn (torch.compile on CUDA) as a
    # module call; reaching forward_joint on the wrapper would run the eager module instead
    from jdcl_bench.jdcl.unet import JointForward
    from jdcl_bench.methods.jdcl import JDCL
    from jdcl_bench.jdcl.unet import JointUNet, UNetConfig

    wrapped = []

    def fake_fn(self, module):
        wrapped.append(module)
        return lambda *args: ("compiled", module(*args))

    monkeypatch.setattr(JDCL, "_fn", fake_fn)
    jdcl = JDCL.__new__(JDCL)
    torch.manual_seed(0)
    old, new = JointUNet(UNetConfig.smoke(10)).eval(), JointUNet(UNetConfig.smoke(10)).eval()
    jdcl.teachers = {"old": old, "new": new}
    fns = jdcl._teacher_fns()
    assert [type(m) for m in wrapped] == [JointForward, JointForward] and [m.net for m in wrapped] == [old, new]
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 500])
    tag, (eps, logits) = fns["new"](x, t, x)
    ref_eps, ref_logits = new.forward_joint(x, t, x)
    assert tag == "compiled"
    torch.testing.assert_close(eps, ref_eps)
    torch.testing.assert_close(logits, ref_logits)


@pytest.mark.parametrize("on", [False, True])
def test_short_budget_options_reach_the_code_they_name(tmp_path, monkeypatch, on):
    """sampler_clip_x0 -> the DDIM call clips x̂0 and returns it; global_ema_restart -> the student's EMA
    starts its warm-up at zero; local_init=global -> L_2 starts from G_1's weights. Off: the official code."""
    from jdcl_bench.methods import jdcl as M
    from jdcl_bench.jdcl.diffusion import GaussianDiffusion

    seen = {"ddim": [], "ema_count": [], "local_from_G": []}
    ddim = GaussianDiffusion.ddim_sample

    def spy_ddim(self, *a, **kw):
        seen["ddim"].append((kw.get("clip_denoised"), kw.get("return_pred_x0")))
        return ddim(self, *a, **kw)

    begin_global, begin_task = M.JDCL._begin_global, M.JDCL.begin_task

    def spy_global(self):
        begin_global(self)
        seen["ema_count"].append((self.ema.num_updates, self.G["ema"]["num_updates"]))

    def spy_task(self, task):
        begin_task(self, task)
        if self.G is not None:
            g = self.G["raw"] if "raw" in self.G else self.G["ema"]["module"]
            seen["local_from_G"].append(all(torch.equal(v, g[k]) for k, v in self.net.state_dict().items()))

    monkeypatch.setattr(GaussianDiffusion, "ddim_sample", spy_ddim)
    monkeypatch.setattr(M.JDCL, "_begin_global", spy_global)
    monkeypatch.setattr(M.JDCL, "begin_task", spy_task)
    sets = [a for k, v in SHORT_BUDGET.items() for a in ("--set", f"{k}={v if on else M.JDCLConfig().__dict__[k]}")]
    r = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "jdcl", "--preset", "smoke",
                                  *sets, "--device", "cpu", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert seen["ddim"] and set(seen["ddim"]) == {(on, on)}
    (count, inherited), = seen["ema_count"]
    assert inherited > 0 and count == (0 if on else inherited)
    assert seen["local_from_G"] == [on]


def test_dpm_solver_sampler_replaces_ddim_in_replay(tmp_path, monkeypatch):
    from jdcl_bench.jdcl.diffusion import GaussianDiffusion

    calls = []
    dpm = GaussianDiffusion.dpm_solver_sample

    def spy(self, *a, **kw):
        calls.append((kw.get("steps"), kw.get("clip_denoised"), kw.get("spacing")))
        return dpm(self, *a, **kw)

    monkeypatch.setattr(GaussianDiffusion, "dpm_solver_sample", spy)
    monkeypatch.setattr(GaussianDiffusion, "ddim_sample", lambda *a, **kw: pytest.fail("DDIM was called"))
    r = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "jdcl", "--preset", "smoke",
                                  "--set", "sampler=dpm-solver++", "--set", "sampler_clip_x0=true",
                                  "--set", "sampler_spacing=uniform", "--device", "cpu", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert calls and set(calls) == {(3, True, "uniform")}  # smoke: ddim_steps = 3 model evaluations
    grid = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "jdcl", "--preset", "smoke",
                                     "--set", "sampler_spacing=karras", "--device", "cpu", "--out", str(tmp_path)])
    assert grid.exit_code == 2 and "sampler_spacing" in grid.output and "uniform" in grid.output
    bad = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "jdcl", "--preset", "smoke",
                                    "--set", "sampler=euler", "--device", "cpu", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "dpm-solver++" in bad.output


def test_unknown_local_init_is_a_clear_config_error(tmp_path):
    r = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "jdcl", "--preset", "smoke",
                                  "--set", "local_init=copy", "--out", str(tmp_path), "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert "local_init = 'copy'" in r.output and "global" in r.output



def test_training_curves_are_kept(tmp_path):
    r = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "jdcl", "--preset", "smoke",
                                  "--set", "local_steps=100", "--set", "global_steps=100", "--device", "cpu",
                                  "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    d = next((tmp_path / "runs" / "synthetic-t2" / "jdcl").glob("smoke+*/seed0"))
    lines = [json.loads(x) for x in (d / "curves.jsonl").read_text().splitlines()]
    assert [(x["task"], x["stage"], x["step"]) for x in lines] == [(1, "local stage", 100), (2, "local stage", 100),
                                                                    (2, "global stage", 100)]
    assert all(math.isfinite(x["loss"]) and "diff" in x for x in lines) and "kd" in lines[-1]


def test_records_from_before_the_short_budget_options_get_their_own_label():
    """A record whose config lacks `sampler_clip_x0` ran LDM's unclipped sampler: it must not share a
    table row with the `fast` preset's newer records. Today's configs keep the plain label, and the
    options they turn on are listed as differences from the published setting."""
    from dataclasses import asdict

    from jdcl_bench.methods.jdcl import JDCL

    old = {"local_steps": 800, "global_steps": 500, "unet": "fast"}
    assert JDCL.label_for_config(old) == "JDCL (before the short-budget options)"
    fast = asdict(JDCL.config_for("fast", {}))
    assert JDCL.label_for_config(fast) is None
    assert any("sampler_clip_x0" in d for d in JDCL.differences_from_paper(fast))
    assert JDCL.differences_from_paper(asdict(JDCL.config_for("paper", {}))) == []


def test_records_at_the_recipes_lr_and_ddim_get_their_own_label():
    """`fast` ran lr 2e-4 and DDIM-50 until it took lr 5e-4 and DPM-Solver++: those records (the
    accuracy-vs-compute runs among them) are a recipe of their own, never averaged with today's
    `fast`; today's presets keep the plain label."""
    from dataclasses import asdict

    from jdcl_bench.methods.jdcl import JDCL

    earlier = asdict(JDCL.config_for("fast", {"lr": "2e-4", "sampler": "ddim", "ddim_steps": "50"}))
    assert JDCL.label_for_config(earlier) == "JDCL (lr 2e-4, DDIM-50)"
    for preset in ("fast", "standard", "digits", "paper"):
        assert JDCL.label_for_config(asdict(JDCL.config_for(preset, {}))) is None, preset
    assert "lr 0.0005 (recipe 2e-4)" in JDCL.differences_from_paper(asdict(JDCL.config_for("fast", {})))


def test_replay_confidence_threshold_keeps_only_sure_labels(tmp_path):
    """replay_confidence_threshold: a sample's label is kept only at that probability or above (-1 = no
    class, never taken into the replay); 0 keeps every label. A threshold nothing passes stops the run
    with what to change."""
    from jdcl_bench.methods.jdcl import JDCL
    from jdcl_bench.jdcl.replay import confident_labels

    logits = torch.tensor([[4.0, 0.0, 0.0], [0.1, 0.0, 0.2], [0.0, 3.0, 0.0]])  # sure, unsure, sure
    assert confident_labels(logits, 0.0).tolist() == [0, 2, 1]
    assert confident_labels(logits, 0.8).tolist() == [0, -1, 1]
    assert confident_labels(logits, 0.99).tolist() == [-1, -1, -1]
    assert any("confidence >= 0.5" in d for d in JDCL.differences_from_paper({"replay_confidence_threshold": 0.5}))
    r = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "jdcl", "--preset", "smoke",
                                  "--set", "replay_confidence_threshold=1.0", "--device", "cpu", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "no replay sample was kept" in r.output and "replay_confidence_threshold" in r.output
    # task 1 (no replay) is recorded and checkpointed: nothing before the error is lost
    assert json.loads(next(tmp_path.rglob("metrics.json")).read_text())["tasks_done"] == 1


def test_fast_and_standard_take_the_measured_lr_and_few_step_sampler_and_say_so():
    """`fast` and `standard` run lr 5e-4 and DPM-Solver++ in 10 steps on DDIM's grid (measured on
    cifar10-t5 at `fast`'s steps); both are deviations from the recipe that the paper comparison
    lists, `paper` none. `standard` is `fast`'s recipe at more steps, with the three replay levers."""
    from dataclasses import asdict

    from jdcl_bench.jdcl.config import REPLAY_LEVERS
    from jdcl_bench.methods.jdcl import JDCL

    std = asdict(JDCL.config_for("standard", {}))
    assert (std["lr"], std["sampler"], std["ddim_steps"], std["sampler_spacing"]) == (5e-4, "dpm-solver++", 10, "uniform")
    diffs = JDCL.differences_from_paper(std)
    assert any("dpm-solver++ (10 steps, uniform grid)" in d for d in diffs)
    assert any(d.startswith("lr 0.0005") for d in diffs)
    fast = asdict(JDCL.config_for("fast", {}))
    per_preset = ("local_steps", "global_steps", *REPLAY_LEVERS)
    assert {k: v for k, v in fast.items() if k not in per_preset} == {k: v for k, v in std.items() if k not in per_preset}
    assert (std["local_steps"], std["global_steps"]) == (5 * fast["local_steps"], 5 * fast["global_steps"])
    paper = asdict(JDCL.config_for("paper", {}))
    assert paper["lr"] == 2e-4 and paper["sampler"] == "ddim"


def test_standard_takes_the_replay_levers_and_paper_and_fast_keep_the_recipes_replay():
    """The three replay levers (measured together on cifar10-t5: docs/jdcl.md) are on in `standard`
    only, and the paper comparison lists each as a deviation; `paper` keeps the recipe's replay."""
    from dataclasses import asdict

    from jdcl_bench.jdcl.config import REPLAY_LEVERS
    from jdcl_bench.methods.jdcl import JDCL

    std = asdict(JDCL.config_for("standard", {}))
    assert {k: std[k] for k in REPLAY_LEVERS} == REPLAY_LEVERS
    for preset in ("paper", "fast"):
        cfg = asdict(JDCL.config_for(preset, {}))
        assert (cfg["replay_per_class"], cfg["replay_confidence_threshold"], cfg["global_new_source"]) == \
            (1000, 0.0, "replay"), preset
    diffs = JDCL.differences_from_paper(std)
    assert "replay_per_class 4000 (recipe 1000 on CIFAR-10, 400 on CIFAR-100)" in diffs
    assert "replay kept at classifier confidence >= 0.7" in diffs
    assert any(d.startswith("global stage: diffusion terms on the task's real images") for d in diffs)
    assert not any("replay" in d for d in JDCL.differences_from_paper(asdict(JDCL.config_for("fast", {}))))


def test_jdcl_conformance_with_the_replay_levers(tmp_path, monkeypatch):
    """`standard`'s replay levers (more replay a class, a confidence filter on it, real images for the
    new classes' diffusion terms) on top of the short-budget options, on the smoke model: a resume
    inside task 2's global stage is exact. The smoke model's replay labeller is barely trained, so its
    filter's threshold is lowered to one it can pass."""
    from jdcl_bench.jdcl.config import REPLAY_LEVERS
    from jdcl_bench.methods import jdcl as M

    monkeypatch.setenv("JDCL_BENCH_CACHE", str(tmp_path / "cache"))
    overrides = {**SHORT_BUDGET, "diagnostics": True, "lr": 5e-4, "sampler": "dpm-solver++",
                 "sampler_spacing": "uniform", "global_new_source": REPLAY_LEVERS["global_new_source"],
                 "replay_per_class": 12, "replay_confidence_threshold": 0.3}
    turned_away, confident_labels = [], M.confident_labels

    def spy(logits, threshold):
        y = confident_labels(logits, threshold)
        turned_away.append(int((y < 0).sum()))
        return y
    monkeypatch.setattr(M, "confident_labels", spy)
    out = check_method("jdcl", preset="smoke", semi=False, overrides=overrides, workdir=tmp_path)
    assert max(out["crash_points"]) > 12  # inside the global stage
    assert sum(turned_away) > 0  # the filter was at work in the runs the resume is compared on


def test_fixmatch_weak_views_without_gradients_give_the_one_pass_loss_and_gradients():
    """fixmatch_forward passes the weak unlabelled views through the classifier on their own, without
    gradients: the logits, the FixMatch loss and every parameter's gradient are those of one joint
    pass over all three views (the UNet normalises per sample; dropout off to compare draws alike)."""
    from contextlib import nullcontext

    from jdcl_bench.jdcl.losses import fixmatch, fixmatch_forward
    from jdcl_bench.jdcl.unet import ClassifyForward, JointForward, JointUNet, UNetConfig

    torch.manual_seed(0)
    net = JointUNet(UNetConfig.smoke(num_classes=4, image_size=8)).eval()
    gen = torch.Generator().manual_seed(1)
    wl, wu, su = (torch.rand(n, 3, 8, 8, generator=gen) * 2 - 1 for n in (3, 5, 5))
    x_t, t = torch.randn(5, 3, 8, 8, generator=gen), torch.randint(1000, (5,), generator=gen)
    y = torch.tensor([0, 1, 2])
    net.head[-1].weight.data.mul_(50)  # confident enough that the pseudo-label mask is not all zero

    def loss_and_grads(eps, logits):
        l_sup, l_unsup, mask = fixmatch(logits.float(), 3, 5, y, threshold=0.97)
        loss = eps.float().pow(2).mean() + l_sup + l_unsup
        grads = torch.autograd.grad(loss, [p for p in net.parameters()], allow_unused=True)
        return loss, mask, logits.detach(), grads

    one = loss_and_grads(*JointForward(net)(x_t, t, torch.cat([wl, wu, su])))
    split = loss_and_grads(*fixmatch_forward(JointForward(net), ClassifyForward(net), nullcontext,
                                             x_t, t, wl, wu, su))
    assert 0 < one[1].sum() < 5  # some unlabelled samples pass the threshold, some do not
    torch.testing.assert_close(split[2], one[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split[0], one[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(split[1], one[1])
    for g_split, g_one in zip(split[3], one[3]):
        assert (g_split is None) == (g_one is None)
        if g_one is not None:
            torch.testing.assert_close(g_split, g_one, rtol=1e-4, atol=1e-6)


def test_compiled_calls_keep_static_shapes_across_stages_and_tasks(tmp_path, monkeypatch):
    """The semi-supervised local stage calls the joint forward with other batch sizes than the global
    stage. Under torch's default the second size compiled a graph with a symbolic batch size, which
    then served every later stage (on the GPU: 30-40 % slower steps). Dynamo traces here as on CUDA
    (an eager backend stands in for inductor): no graph may take a symbolic size, and a later task
    must reuse the graphs of the first ones, not compile new ones."""
    from jdcl_bench.methods import jdcl as M
    from jdcl_bench.testing import traced_compiles

    with traced_compiles(monkeypatch, M) as traced:
        r = CliRunner().invoke(main, ["run", "--protocol", "digits-semi-10pct", "--method", "jdcl", "--preset",
                                      "smoke", "--set", "compile=true", "--device", "cpu", "--out", str(tmp_path)])
        assert r.exit_code == 0, r.output
    graphs = [symbolic for _, symbolic in traced]
    # local (FixMatch) and global training forwards, the teachers' and the weak views' passes, the sampler
    assert graphs and not any(graphs), graphs
    assert len(graphs) <= 8, f"{len(graphs)} graphs for a run of five tasks: later tasks compiled again"
