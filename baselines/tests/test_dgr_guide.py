import json

import pytest
import torch

from jdcl_baselines.cond_diffusion import GuidedEps, ancestral_sample
from jdcl_baselines.dgr import classifier_augment
from jdcl_baselines.guide import new_class_log_prob
from jdcl_bench.jdcl.diffusion import GaussianDiffusion
from jdcl_bench.jdcl.unet import JointUNet, UNetConfig, count_parameters
from jdcl_bench.testing import check_method


# ---- the class-conditional UNet ------------------------------------------------------------------

@pytest.mark.parametrize("in_channels,size", [(1, 8), (3, 8), (3, 32)])
def test_class_conditional_unet(in_channels, size):
    torch.manual_seed(0)
    cfg = UNetConfig.smoke(num_classes=5, image_size=size, in_channels=in_channels).replace(class_cond=True)
    model = JointUNet(cfg).eval()
    with torch.no_grad():  # zero-initialised convs would hide the conditioning: perturb them
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.05)
    x, t = torch.randn(4, in_channels, size, size), torch.randint(0, 1000, (4,))
    y = torch.tensor([0, 1, 2, 4])
    eps = model(x, t, y)
    assert eps.shape == x.shape
    assert not torch.allclose(eps, model(x, t, (y + 1) % 5))  # the label matters
    assert model(x, t).shape == x.shape  # y=None: the unconditional path still works
    plain = JointUNet(cfg.replace(class_cond=False))
    assert count_parameters(model) - count_parameters(plain) == 5 * 4 * cfg.model_channels
    with pytest.raises(ValueError, match="class_cond"):
        plain(x, t, y)


def test_paper_param_count_unchanged_without_class_cond():
    with torch.device("meta"):
        model = JointUNet(UNetConfig.paper(10))
        cond = JointUNet(UNetConfig.paper(10).replace(class_cond=True))
    assert count_parameters(model) - count_parameters(model.head) == 52_542_979
    assert count_parameters(cond) - count_parameters(model) == 10 * 512


# ---- guidance and sampling -----------------------------------------------------------------------

def test_guided_eps_matches_hand_computed_gradient():
    """eps(x, t) = a x and a linear classifier: log p(c | x0) has a closed-form gradient."""
    diffusion = GaussianDiffusion(1000, 1e-4, 2e-2)
    torch.manual_seed(0)
    a, scale = 0.3, 0.7
    W, b = torch.randn(3, 4), torch.randn(3)   # 3 classes over a 4-pixel "image"
    x = torch.randn(5, 1, 2, 2)
    t = torch.tensor([0, 10, 250, 600, 999])

    def log_prob(x0):  # log softmax read at c* = argmax over "new" classes {1, 2}
        logits = x0.flatten(1) @ W.T + b
        return new_class_log_prob(logits, torch.tensor([0, 1, 2]), torch.tensor([1, 2]))

    got = GuidedEps(lambda x_t, t_: a * x_t, diffusion, log_prob, scale)(x, t)

    # by hand: x0 = k x with k = (1 - sqrt(1 - abar) a) / sqrt(abar); d log p / d x0 = W^T (e_c - p)
    ab = diffusion.alphas_cumprod[t].view(-1, 1)
    k = (1 - (1 - ab).sqrt() * a) / ab.sqrt()
    x0 = k * x.flatten(1)
    p = (x0 @ W.T + b).softmax(1)
    c = 1 + (x0 @ W.T + b)[:, 1:].argmax(1)
    grad = k * ((torch.eye(3)[c] - p) @ W)
    want = a * x.flatten(1) - scale * (1 - ab).sqrt() * grad
    torch.testing.assert_close(got.flatten(1), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpm-solver++"])
def test_samplers_recover_a_point_mass(sampler):
    """With the exact eps of a data distribution concentrated on x0*, sampling returns x0*."""
    diffusion = GaussianDiffusion(1000, 1e-4, 2e-2)
    target = torch.tensor([0.5, -0.25, 0.0, 0.9]).view(1, 1, 2, 2)

    def eps(x_t, t):
        ab = diffusion.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x_t - ab.sqrt() * target) / (1 - ab).sqrt()

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(3, 1, 2, 2, generator=g)
    if sampler == "ancestral":
        out = ancestral_sample(diffusion, eps, noise.shape, noise=noise, generator=g)
    elif sampler == "ddim":
        out = diffusion.ddim_sample(eps, noise.shape, steps=50, noise=noise, return_pred_x0=True, clip_denoised=True)
    else:
        out = diffusion.dpm_solver_sample(eps, noise.shape, steps=10, noise=noise, clip_denoised=True)
    torch.testing.assert_close(out, target.expand_as(out), rtol=0, atol=1e-3)


def test_ddim_clip_denoised_keeps_samples_in_range():
    """An eps-model that overshoots drives unclipped DDIM far out of [-1, 1]; clipping does not."""
    diffusion = GaussianDiffusion(1000, 1e-4, 2e-2)
    noise = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    bad = lambda x_t, t: -3 * x_t  # noqa: E731
    free = diffusion.ddim_sample(bad, noise.shape, steps=20, noise=noise, return_pred_x0=True)
    clipped = diffusion.ddim_sample(bad, noise.shape, steps=20, noise=noise, return_pred_x0=True, clip_denoised=True)
    assert free.abs().max() > 10 and clipped.abs().max() <= 1


def test_classifier_augment_is_seeded_and_in_range():
    x = torch.rand(6, 3, 8, 8)
    a = classifier_augment(x, torch.Generator().manual_seed(3))
    b = classifier_augment(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert classifier_augment(torch.rand(2, 1, 8, 8), torch.Generator()).shape == (2, 1, 8, 8)


def test_classifier_augment_rotates_with_probability_rotate_p():
    """kornia's RandomRotation in GUIDE's code rotates with its default p = 0.5: each image of a
    rotate_p = 0.5 batch is its unrotated or its rotated version (same draws), and both occur."""
    x = torch.rand(32, 3, 8, 8)
    out = {p: classifier_augment(x, torch.Generator().manual_seed(5), rotate_p=p) for p in (0.0, 0.5, 1.0)}
    same_as = lambda p: torch.tensor([torch.equal(out[0.5][i], out[p][i]) for i in range(32)])  # noqa: E731
    assert not torch.equal(out[0.0], out[1.0])
    assert bool((same_as(0.0) | same_as(1.0)).all())
    assert 4 <= int(same_as(1.0).sum()) <= 28 and 4 <= int(same_as(0.0).sum()) <= 28


# ---- the methods -----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["dgr", "guide"])
@pytest.mark.parametrize("semi", [False, True])
def test_conformance(tmp_path, method, semi):
    out = check_method(method, preset="smoke", semi=semi, workdir=tmp_path)
    assert out["semi"] is semi and out["ticks"] > 0


def _generator(run_dir):
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    return state["method"]["G"]


@pytest.mark.parametrize("protocol", ["digits-t5", "digits-semi-10pct"])
def test_smoke_runs_and_guide_reuses_dgr_generators(tmp_path, smoke_cli_run, protocol):
    d, m, budget = smoke_cli_run("dgr", protocol)  # into tmp_path: GUIDE below shares the folder
    assert m["complete"] and len(m["acc_matrix"]) == 5
    assert budget["generator_source"] == ["trained"] * 5 and not budget["generator_from_cache"]
    assert budget["generator_steps"] == budget["generator_steps_trained"] == 6 + 4 * 4
    # each generator's training time is measured and travels with it in the cache
    assert budget["generator_seconds_trained"] > 0 and budget["generator_seconds_loaded"] == 0.0
    assert budget["classifier_steps"] == 6 + 4 * 4 and budget["ddim_steps"] == 3
    assert budget["self_replay_images"] == 6 * (1 + 2 + 3 + 4)
    assert budget["replay_images"] > 0 and budget["guidance_scale"] == 0.0
    if protocol.startswith("digits-semi"):
        assert budget["labeller_steps"] == 5 * 3
    art = d / "artefacts"
    for k in range(1, 6):
        assert (art / f"replay_task{k}.png").stat().st_size > 0
    for k in range(2, 6):
        counts = json.loads((art / f"replay_counts_task{k}.json").read_text())
        assert set(map(int, counts["per_class"])) <= set(range(2 * (k - 1)))
        assert (art / f"classifier_replay_task{k}.png").exists()
    cached = sorted(p.name for p in (tmp_path / "shared" / "generators" / protocol).glob("*/task*.pt"))
    assert cached == [f"task{k}.pt" for k in range(1, 6)]

    # GUIDE on the same protocol, seed and results folder trains no generator
    g, gm, gb = smoke_cli_run("guide", protocol)
    assert gb["generator_source"] == ["cache"] * 5 and gb["generator_from_cache"]
    assert gb["generator_steps"] == budget["generator_steps"] and gb["generator_steps_trained"] == 0
    # GUIDE did not train them, but its budget names what they cost the run that did
    assert gb["generator_seconds_trained"] == 0.0 and gb["generators_loaded_untimed"] == 0
    assert gb["generator_seconds_loaded"] == pytest.approx(budget["generator_seconds_trained"])
    assert gb["guidance_scale"] == 0.5 and gb["images_generated"] == gb["replay_images"]
    a, b = _generator(d), _generator(g)
    for part in ("raw", "ema"):
        sa = a[part] if part == "raw" else a[part]["module"]
        sb = b[part] if part == "raw" else b[part]["module"]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # and the classifiers differ: GUIDE's replay is guided
    assert gm["complete"]


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++"])
def test_generator_sample_by_name(sampler):
    """The generator's sample() takes each sampler by name (generator.replay_sampler), uint8 out."""
    from jdcl_bench.methods.base import ProtocolInfo
    from jdcl_baselines.cond_diffusion import ConditionalGenerator, GeneratorConfig

    info = ProtocolInfo("t", 2, (1, 8, 8), [[0, 1]], False)
    gen = ConditionalGenerator(GeneratorConfig(unet="smoke"), info, torch.device("cpu"), amp=False, log=lambda *a: None)
    torch.manual_seed(0)
    model = gen.new_model().eval()
    x = gen.sample(model, torch.tensor([0, 1, 1]), generator=torch.Generator().manual_seed(0), sampler=sampler, steps=3)
    assert x.dtype == torch.uint8 and x.shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="dpm-solver"):
        gen.sample(model, torch.tensor([0]), generator=torch.Generator(), sampler="euler", steps=3)


# ---- replay diagnostics (jdcl_bench.replay_quality) --------------------------------------------------

def test_diagnostics_on_in_fast_only():
    from jdcl_baselines.dgr import DGR
    from jdcl_baselines.guide import GUIDE

    for cls in (DGR, GUIDE):
        assert cls.config_for("fast", {}).diagnostics is True
        assert cls.config_for("paper", {}).diagnostics is False
        assert cls.config_for("smoke", {}).diagnostics is False


@pytest.mark.parametrize("method", ["dgr", "guide"])
def test_replay_diagnostics_of_the_classifier_replay(tmp_path, monkeypatch, method):
    """--set diagnostics=true: the first and the last replay batch of every task after the first are
    measured against the reference classifier and stored in metrics.json."""
    from click.testing import CliRunner

    from jdcl_bench.cli import main

    monkeypatch.setenv("JDCL_BENCH_CACHE", str(tmp_path / "cache"))  # the reference classifier is cached there
    r = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", method, "--preset", "smoke",
                                  "--set", "diagnostics=true", "--device", "cpu", "--out", str(tmp_path / "out")],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    (d,) = (tmp_path / "out" / "runs" / "synthetic-t2" / method).glob("smoke+*/seed0")
    m = json.loads((d / "metrics.json").read_text())
    assert m["complete"]
    replay = [e for e in m["diagnostics"] if e["kind"] == "replay"]
    assert [(e["task"], e["tag"].split(", ")[1]) for e in replay] == [(2, "first batch"), (2, "last batch")]
    for e in replay:
        assert e["classes"] == [0, 1] and e["overall"]["n"] == 16 - 8  # B*k/(k+1) of batch 16 at k=1
        assert 0 <= e["overall"]["fidelity"] <= 1 and e["overall"]["fidelity_real"] > 0.5
        assert ("guided replay (s=0.5)" in e["tag"]) is (method == "guide") and e["tag"].endswith("from G1")
    assert json.loads((d / "manifest.json").read_text())["diagnostics_seconds"] >= 0
    assert list((tmp_path / "cache" / "reference").glob("*.pt"))


def test_conformance_with_diagnostics_on(tmp_path, monkeypatch):
    """Diagnostics only measure: GUIDE (whose replay depends on the classifier) still resumes exactly."""
    monkeypatch.setenv("JDCL_BENCH_CACHE", str(tmp_path / "cache"))
    out = check_method("guide", preset="smoke", overrides={"diagnostics": True}, semi=False, workdir=tmp_path)
    assert out["ticks"] > 0


def test_classifier_replay_sampler_is_an_option_and_bad_samplers_are_named_before_training(tmp_path, monkeypatch):
    """classifier.sampler=dpm-solver++ replays (and draws the grid) with DPM-Solver++ and says so in the
    budget; an unknown classifier or self-replay sampler is a config error before any step."""
    from click.testing import CliRunner

    from jdcl_baselines.cond_diffusion import ConditionalGenerator
    from jdcl_bench.cli import main

    used = []
    sample = ConditionalGenerator.sample

    def spy(self, eps_fn, y, **kw):
        used.append(kw.get("sampler"))
        return sample(self, eps_fn, y, **kw)

    monkeypatch.setattr(ConditionalGenerator, "sample", spy)
    base = ["run", "--protocol", "synthetic-t2", "--method", "dgr", "--preset", "smoke", "--device", "cpu",
            "--out", str(tmp_path)]
    r = CliRunner().invoke(main, base + ["--set", "classifier.sampler=dpm-solver++"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "dpm-solver++" in used and "ancestral" not in used  # smoke's self-replay is DDIM
    (d,) = (tmp_path / "runs" / "synthetic-t2" / "dgr").glob("smoke+*/seed0")
    assert json.loads((d / "manifest.json").read_text())["budget"]["replay_sampler"] == "dpm-solver++"
    for bad in ("classifier.sampler=euler", "generator.replay_sampler=euler"):
        r = CliRunner().invoke(main, base + ["--set", bad])
        assert r.exit_code == 2 and bad.split("=")[0] in r.output and "ddim" in r.output, r.output


def test_the_generators_training_graph_stays_static_across_tasks(tmp_path, monkeypatch):
    """JDCL's training forward once took a second batch shape and torch answered with a graph of
    symbolic batch size that served every later step (30 % slower on an H100, docs/jdcl.md). DGR's
    generator trains at one batch size; its sampler calls the same forward with others (self-replay
    chunks, the classifier's replay share B - B/(k+1), grids), and torch's default makes the
    sampler's graph symbolic. Traced on CPU (an eager backend stands in for inductor) through five
    tasks: the training calls (gradients on) keep one static graph; the sampler's share one."""
    from click.testing import CliRunner

    import jdcl_baselines.cond_diffusion as CD
    from jdcl_bench.cli import main
    from jdcl_bench.testing import traced_compiles

    with traced_compiles(monkeypatch, CD) as graphs:  # (gradients on while traced, batch size symbolic)
        r = CliRunner().invoke(main, ["run", "--protocol", "digits-t5", "--method", "dgr", "--preset", "smoke",
                                      "--set", "compile=true", "--device", "cpu", "--out", str(tmp_path)])
        assert r.exit_code == 0, r.output
    training = [sym for grad, sym in graphs if grad]
    assert training == [False], graphs          # one graph, static, for every task's generator steps
    assert len(graphs) <= 4, graphs             # the sampler: a first shape, then one symbolic graph
