"""GFR: hand-computed loss values, networks, conformance kit (semi and fully supervised), CLI smoke runs."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from jdcl_baselines.gfr import GFR, FeatureGenerator, ProjectionDiscriminator
from jdcl_baselines.gfr_losses import (critic_loss, feature_distillation, generator_loss, gradient_penalty,
                                       replay_cross_entropy)


# ---- losses on hand-computed values ------------------------------------------------------------

def test_feature_distillation_is_the_batch_frobenius_norm():
    assert float(feature_distillation(torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 4.0]]))) == pytest.approx(5.0)
    # not averaged over the batch: four unit differences give 2, not 1
    assert float(feature_distillation(torch.ones(2, 2), torch.zeros(2, 2))) == pytest.approx(2.0)


def test_replay_cross_entropy_weights_old_tasks():
    real = torch.tensor([[0.0, math.log(3.0)]])  # CE for class 1: log(4/3)
    gen = torch.zeros(1, 2)                       # CE: log 2
    got = replay_cross_entropy(F.cross_entropy(real, torch.tensor([1])), F.cross_entropy(gen, torch.tensor([0])), t_old=2.0)
    assert float(got) == pytest.approx((math.log(4 / 3) + 2 * math.log(2)) / 3)


def test_gan_losses():
    gp = torch.tensor(0.5)
    assert float(critic_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.0]), gp, 10.0)) == pytest.approx(4.0)
    assert float(generator_loss(torch.tensor([1.0, 3.0]))) == pytest.approx(-2.0)
    # distillation: summed squared error (1 + 4) times its weight
    got = generator_loss(torch.tensor([1.0, 3.0]), torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), 0.1)
    assert float(got) == pytest.approx(-1.5)


def test_gradient_penalty_of_a_linear_critic():
    class Linear(nn.Module):  # D(x, y) = w . x: the gradient is w everywhere, |w| = 2
        def forward(self, x, y):
            return x @ torch.tensor([0.0, 2.0])

    real, fake = torch.randn(4, 2), torch.randn(4, 2)
    gp = gradient_penalty(Linear(), real, fake, torch.zeros(4, dtype=torch.long), torch.rand(4, 1))
    assert float(gp) == pytest.approx(1.0)  # (2 - 1)^2


def test_networks():
    g = FeatureGenerator(latent_dim=5, num_classes=3, hidden=8, feat_dim=6)
    with torch.no_grad():
        f = g(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))
    assert f.shape == (4, 6) and float(f.min()) >= 0  # ReLU output, like the real features
    d = ProjectionDiscriminator(feat_dim=6, num_classes=3, hidden=8)
    x, y = torch.rand(4, 6), torch.tensor([0, 1, 2, 0])
    h = d.body(x)
    assert torch.allclose(d(x, y), d.out(h).squeeze(1) + (d.embed.weight[y] * h).sum(1))


# ---- the framework contract -------------------------------------------------------------------------

@pytest.mark.parametrize("semi", [True, False])
def test_conformance(tmp_path, semi):
    from jdcl_bench.testing import check_method

    out = check_method("gfr", preset="smoke", semi=semi, workdir=tmp_path)
    assert out["semi"] is semi


def test_resume_inside_the_extractor_stage_with_a_teacher(tmp_path):
    """The kit's crash points land in task 1's GAN stage; also crash in task 2's extractor stage,
    where the frozen previous extractor and the Adam state must come back from the checkpoint."""
    from jdcl_bench.progress import Reporter
    from jdcl_bench.runner import RunConfig, Runner

    class Crash(Exception):
        pass

    class CrashAt(Runner):
        def __init__(self, *a, at, **kw):
            super().__init__(*a, **kw)
            self.at, self.n = at, 0

        def tick(self):
            self.n += 1
            if self.n == self.at:
                raise Crash()
            super().tick()

    base = dict(protocol="synthetic-t2", method="gfr", preset="smoke", device="cpu")
    quiet = Reporter(quiet=True)
    ref = json.loads((Runner(RunConfig(out=str(tmp_path / "ref"), **base), quiet).run() / "metrics.json").read_text())
    cfg = RunConfig(out=str(tmp_path / "crash"), checkpoint_every_s=0.0, **base)
    with pytest.raises(Crash):
        CrashAt(cfg, quiet, at=6).run()  # ticks: task 1 extractor 1-2, GAN 3-4; task 2 extractor 5-6
    got = json.loads((Runner(cfg, quiet).run() / "metrics.json").read_text())
    assert got["acc_matrix"] == ref["acc_matrix"]


@pytest.mark.parametrize("protocol", ["digits-t5", "digits-semi-10pct"])
def test_cli_smoke_run(smoke_cli_run, protocol):
    d, m, budget = smoke_cli_run("gfr", protocol)
    assert m["complete"] and m["num_tasks"] == 5 and m["method_label"] == "GFR"
    assert budget["extractor_steps"] > 0 and budget["critic_steps"] > 0 and budget["buffer_images"] == 0
    art = json.loads((d / "artefacts" / "gfr_generator_task4.json").read_text())
    assert art["generator_classes"] == list(range(8))  # the GAN learnt every class of tasks 1-4
    pytest.importorskip("matplotlib")
    assert (d / "artefacts" / "gfr_generator_task4.png").stat().st_size > 0


def test_listed_as_plugin():
    from jdcl_bench.cli import main
    from jdcl_bench.registry import METHODS

    out = CliRunner().invoke(main, ["list", "methods"]).output
    assert "gfr" in out and "jdcl-bench-baselines" in out
    assert METHODS.entry("gfr").source == "jdcl-bench-baselines"
    assert METHODS.get("gfr") is GFR and GFR.has_generator
