"""NNCSL: hand-computed loss values, conformance kit (semi and fully supervised), CLI smoke runs."""
import json
import math

import pytest
import torch
from click.testing import CliRunner

from jdcl_baselines.lars import LARSSGD, warmup_cosine
from jdcl_bench.data.colour import color_distort, equalize
from jdcl_baselines.nncsl import NNCSL
from jdcl_baselines.paws import cross_entropy_soft, memax, paws_targets, sharpen, smoothed_one_hot, snn


# ---- losses on hand-computed values ------------------------------------------------------------

def test_smoothed_one_hot():
    y = smoothed_one_hot(torch.tensor([0, 1]), 2, 0.1)
    assert torch.allclose(y, torch.tensor([[0.95, 0.05], [0.05, 0.95]]))


def test_snn_is_softmax_of_cosines_times_labels():
    q = torch.tensor([[2.0, 0.0]])             # normalised: (1, 0)
    s = torch.tensor([[3.0, 0.0], [0.0, 5.0]])  # cosines 1 and 0
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    e = math.e
    assert torch.allclose(snn(q, s, labels, tau=1.0), torch.tensor([[e / (e + 1), 1 / (e + 1)]]))
    # tau 0.5 doubles the logits; smoothed labels mix the rows
    w = torch.tensor([e ** 2, 1.0]) / (e ** 2 + 1)
    sl = smoothed_one_hot(torch.tensor([0, 1]), 2, 0.1)
    assert torch.allclose(snn(q, s, sl, tau=0.5), (w @ sl)[None])


def test_sharpen():
    p = sharpen(torch.tensor([[0.6, 0.4]]), T=0.5)
    assert torch.allclose(p, torch.tensor([[0.36 / 0.52, 0.16 / 0.52]]))


def test_paws_targets_swap_multicrop_and_threshold():
    pa, pb = torch.tensor([0.6, 0.4]), torch.tensor([0.2, 0.8])
    t = paws_targets(torch.stack([pa, pb]), num_multicrop=2, T=1.0)
    mc = 0.5 * (pa + pb)
    assert torch.allclose(t, torch.stack([pa, pb, mc, mc]))
    # entries below 1e-4 after sharpening are zeroed
    t = paws_targets(torch.tensor([[0.99, 0.01]]), num_multicrop=0, T=0.25)
    assert t[0, 1] == 0 and torch.allclose(t[0, 0], torch.tensor(1.0))


def test_paws_loss_and_memax_values():
    probs = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expect = (-math.log(0.5) - math.log(0.75)) / 2
    assert math.isclose(float(cross_entropy_soft(target, probs)), expect, rel_tol=1e-6)
    # me-max on one row, sharpened with T = 0.5: (9/13, 4/13)
    a, b = 9 / 13, 4 / 13
    assert math.isclose(float(memax(torch.tensor([[0.6, 0.4]]), T=0.5)), a * math.log(a) + b * math.log(b),
                        rel_tol=1e-6)
    # a uniform batch mean gives -log K
    assert math.isclose(float(memax(torch.tensor([[0.9, 0.1], [0.1, 0.9]]), T=1.0)), -math.log(2), rel_tol=1e-6)


def test_nnd_distillation_value():
    """NND: cross-entropy of the current model's SNN over old supports to the teacher's (unsharpened)."""
    labels = torch.eye(2)
    z_cur, s_cur = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z_old, s_old = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p_cur, p_old = snn(z_cur, s_cur, labels, 1.0), snn(z_old, s_old, labels, 1.0)
    e = math.e
    expect = -(1 / (e + 1) * math.log(e / (e + 1)) + e / (e + 1) * math.log(1 / (e + 1)))
    assert math.isclose(float(cross_entropy_soft(p_old, p_cur)), expect, rel_tol=1e-6)


def test_lars_sgd_step_by_hand():
    w = torch.nn.Parameter(torch.ones(2, 2))   # |w| = 2
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARSSGD([{"params": [w], "weight_decay": 0.1, "lars": True},
                   {"params": [b], "weight_decay": 0.0, "lars": False}], lr=0.5, momentum=0.9, trust=0.001)
    w.grad, b.grad = torch.full((2, 2), 2.0), torch.tensor([2.0])  # |g| = 4
    opt.step()
    ratio = 0.001 * 2 / (4 + 0.1 * 2)
    step_w = 0.5 * ratio * (2 + 0.1 * 1)
    assert torch.allclose(w, torch.full((2, 2), 1 - step_w)) and torch.allclose(b, torch.tensor([0.0]))
    # momentum: the buffer keeps lr * d of the first step
    b.grad = torch.tensor([0.0])
    w.grad = None
    opt.step()
    assert torch.allclose(b, torch.tensor([-0.9]))


def test_schedule_and_colour_ops():
    assert warmup_cosine(0, 100, 10, 0.08, 0.4, 0.032) == pytest.approx(0.08)
    assert warmup_cosine(10, 100, 10, 0.08, 0.4, 0.032) == pytest.approx(0.4)
    assert warmup_cosine(100, 100, 10, 0.08, 0.4, 0.032) == pytest.approx(0.032)
    g = torch.Generator().manual_seed(0)
    for c in (1, 3):
        x = torch.rand(5, c, 8, 8)
        y = color_distort(x, g)
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    # PAWS' Equalize is PIL's ImageOps.equalize: a 32x32 ramp is stretched to the full range as PIL does
    import numpy as np
    from PIL import Image, ImageOps
    ramp = torch.linspace(0.2, 0.4, 1024).view(1, 1, 32, 32)
    pil = np.asarray(ImageOps.equalize(Image.fromarray((ramp[0, 0] * 255).round().byte().numpy())))
    eq = equalize(ramp)
    assert torch.equal((eq[0, 0] * 255).round().byte(), torch.from_numpy(pil.copy()))
    assert float(eq.min()) == 0 and float(eq.max()) == 1


# ---- the framework contract -------------------------------------------------------------------------

@pytest.mark.parametrize("semi", [True, False])
def test_conformance(tmp_path, semi):
    from jdcl_bench.testing import check_method

    out = check_method("nncsl", preset="smoke", semi=semi, workdir=tmp_path)
    assert out["semi"] is semi


def test_buffer_is_class_balanced_and_label_carries_its_size():
    from jdcl_bench.methods.base import ProtocolInfo, TaskData

    class Ctx:
        device = torch.device("cpu")
        rng = torch.Generator().manual_seed(0)

        def artefact_path(self, name):
            import tempfile
            from pathlib import Path
            return Path(tempfile.mkdtemp()) / name

    m = NNCSL(NNCSL.config_for("smoke", {"buffer_size": 7}), Ctx())
    m.setup(ProtocolInfo("t", 4, (1, 8, 8), [[0, 1], [2, 3]], False))
    x = torch.randint(0, 255, (20, 1, 8, 8), dtype=torch.uint8)
    t0 = TaskData(0, [0, 1], [0, 1], x[:10], torch.tensor([0] * 5 + [1] * 5), x[:0])
    m.end_task(t0)
    assert m.buf_y.tolist() == [0] * 4 + [1] * 3  # 7 // 2 each, the leftover slot to the first class
    kept0 = m.buf_x[:4].clone()
    t1 = TaskData(1, [2, 3], [0, 1, 2, 3], x[10:], torch.tensor([2] * 5 + [3] * 5), x[:0])
    m.end_task(t1)
    assert m.buf_y.tolist() == [0, 0, 1, 1, 2, 2, 3]  # 7 // 4 each, three leftover slots
    assert torch.equal(m.buf_x[:2], kept0[:2])  # shrinking keeps a prefix of the class's order
    assert m.label() == "NNCSL (M=7)"
    assert NNCSL.config_for("paper-5120", {}).buffer_size == 5120
    assert NNCSL.config_for("fast-5120", {}).buffer_size == 5120


@pytest.mark.parametrize("protocol", ["digits-t5", "digits-semi-10pct"])
def test_cli_smoke_run(smoke_cli_run, protocol):
    d, m, budget = smoke_cli_run("nncsl", protocol)
    assert m["complete"] and m["num_tasks"] == 5 and m["method_label"] == "NNCSL (M=20)"
    assert budget["steps"] == 5 * 4 and budget["unlabelled_images_seen"] == 5 * 4 * 16
    assert (d / "artefacts" / "nncsl_buffer_task5.json").exists()


def test_listed_as_plugin():
    from jdcl_bench.cli import main
    from jdcl_bench.registry import METHODS

    out = CliRunner().invoke(main, ["list", "methods"]).output
    assert "nncsl" in out and "jdcl-bench-baselines" in out
    assert METHODS.entry("nncsl").source == "jdcl-bench-baselines"
    assert METHODS.get("nncsl") is NNCSL


# ---- the official run's BatchNorm and LARS (issue 21) -------------------------------------------------

def test_official_batchnorm_and_classifier_lars_are_the_paper_defaults():
    paper = NNCSL.config_for("paper", {})
    assert paper.frozen_bn_after_first_task is True and paper.classifier_lars is True
    for preset in ("paper-5120", "paper-cifar100", "smoke"):
        c = NNCSL.config_for(preset, {})
        assert c.frozen_bn_after_first_task is True and c.classifier_lars is True, preset
    for preset in ("fast", "fast-5120"):  # fast keeps its committed choice for the classifier
        c = NNCSL.config_for(preset, {})
        assert c.frozen_bn_after_first_task is True and c.classifier_lars is False, preset
    assert NNCSL.config_for("paper", {"frozen_bn_after_first_task": "false"}).frozen_bn_after_first_task is False


class _Ctx:
    device = torch.device("cpu")
    rng = torch.Generator().manual_seed(0)

    def progress(self, *a, **k):
        import contextlib
        return contextlib.nullcontext(lambda *a, **k: None)

    def tick(self):
        pass

    def check_loss(self, loss):
        pass

    def log_step(self, step, loss, every=50, **parts):
        pass

    def artefact_path(self, name):
        import tempfile
        from pathlib import Path
        return Path(tempfile.mkdtemp()) / name


def _nncsl(**overrides):
    from jdcl_bench.methods.base import ProtocolInfo

    m = NNCSL(NNCSL.config_for("smoke", overrides), _Ctx())
    m.setup(ProtocolInfo("t", 4, (1, 8, 8), [[0, 1], [2, 3]], False))
    return m


@pytest.mark.parametrize("lars", [True, False])
def test_classifier_lars_switch_sets_its_param_group(lars):
    m = _nncsl(classifier_lars=lars)
    cls_params = {id(p) for p in m.model.classifier.parameters()}
    groups = [g for g in m.opt.param_groups if {id(p) for p in g["params"]} == cls_params]
    assert len(groups) == 1 and groups[0]["lars"] is lars and groups[0]["weight_decay"] == 0.0
    # the classifier's step is trust-ratio scaled only when it is in LARS
    w0 = m.model.classifier.weight.detach().clone()
    for p in m.model.parameters():
        p.grad = torch.ones_like(p)
    for g in m.opt.param_groups:
        g["lr"] = 1.0
    m.opt.step()
    step = (w0 - m.model.classifier.weight.detach()).norm()
    lr_cls = groups[0]["lr"]
    if lars:
        torch.testing.assert_close(step, m.cfg.lars_trust * w0.norm() * lr_cls, rtol=1e-4, atol=1e-8)
    else:
        torch.testing.assert_close(step, torch.ones_like(w0).norm() * lr_cls, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("frozen", [True, False])
def test_batchnorm_eval_mode_from_the_second_task(frozen):
    """Official behaviour (default): task 1 trains BN in train mode, later tasks in eval mode (running
    statistics untouched); the clean switch keeps train mode in every task."""
    from jdcl_bench.methods.base import TaskData

    m = _nncsl(frozen_bn_after_first_task=frozen)
    x = torch.randint(0, 255, (20, 1, 8, 8), dtype=torch.uint8)
    t0 = TaskData(0, [0, 1], [0, 1], x[:10], torch.tensor([0] * 5 + [1] * 5), x[:0])
    t1 = TaskData(1, [2, 3], [0, 1, 2, 3], x[10:], torch.tensor([2] * 5 + [3] * 5), x[:0])
    bn = next(mod for mod in m.model.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    m.begin_task(t0)
    m.train_task(t0)
    assert m.model.training
    stats0 = bn.running_mean.clone()
    m.end_task(t0)
    m.begin_task(t1)
    m.train_task(t1)
    assert m.model.training is not frozen
    assert torch.equal(bn.running_mean, stats0) is frozen  # frozen: the statistics of the end of task 1


def test_label_follows_the_batchnorm_switch_and_old_records():
    assert _nncsl().label() == "NNCSL (M=20)"
    assert _nncsl(frozen_bn_after_first_task=False).label() == "NNCSL (M=20, BN in train mode)"
    assert NNCSL.label_for_config({"buffer_size": 500, "frozen_bn_after_first_task": True}) == "NNCSL (M=500)"
    # a record from before the switch existed trained in train mode
    assert NNCSL.label_for_config({"buffer_size": 500}) == "NNCSL (M=500, BN in train mode)"
    assert NNCSL.label_for_config({}) is None


def test_leaderboard_labels_records_by_their_config(tmp_path):
    """A record written before the BatchNorm default changed carries "NNCSL (M=500)" in its metrics but
    ran in train mode (its config says so): the table labels it by its config, apart from new runs."""
    from jdcl_bench.results import leaderboard, load_records, render_markdown

    def record(seed, frozen, preset="fast"):
        d = tmp_path / "runs" / "cifar10-semi-5pct" / "nncsl" / preset / f"seed{seed}"
        d.mkdir(parents=True)
        mc = {"buffer_size": 500, "steps_per_task": 750}
        if frozen is not None:
            mc["frozen_bn_after_first_task"] = frozen
        (d / "config.json").write_text(json.dumps({"protocol": "cifar10-semi-5pct", "method": "nncsl",
                                                   "preset": preset, "seed": seed, "method_config": mc}))
        (d / "manifest.json").write_text(json.dumps({"budget": {"preset": preset, "reduced": True}}))
        (d / "metrics.json").write_text(json.dumps({"complete": True, "final_acc": 50.0 + seed, "avg_acc": 50.0,
                                                    "avg_inc_acc": 60.0, "forgetting": 20.0,
                                                    "method_label": "NNCSL (M=500)"}))

    record(0, False)
    record(1, None)   # older still: no switch in the config at all
    record(2, True)
    df = load_records(tmp_path)
    labels = dict(zip(df["seed"], df["method_label"]))
    assert labels == {0: "NNCSL (M=500, BN in train mode)", 1: "NNCSL (M=500, BN in train mode)",
                      2: "NNCSL (M=500)"}
    text = render_markdown(leaderboard(df, "final_acc"))
    assert "| NNCSL (M=500) | **52.0** (n=1)" in text and "| NNCSL (M=500, BN in train mode) | 50.5 ± 0.7 (n=2)" in text


def test_compare_names_the_batchnorm_and_lars_differences(tmp_path):
    """PAPER_VS_SUITE: a train-mode-BN record is a variant of the published "NNCSL (M=500)" setting,
    and its row says what differs; a record with the official settings lists neither."""
    from jdcl_bench.results.compare import comparison, load_published
    from jdcl_bench.results import load_records

    for seed, (frozen, lars, preset) in enumerate([(False, None, "fast"), (True, True, "paper")]):
        d = tmp_path / "runs" / "cifar10-semi-5pct" / "nncsl" / preset / f"seed{seed}"
        d.mkdir(parents=True)
        mc = {"buffer_size": 500, "frozen_bn_after_first_task": frozen}
        if lars is not None:
            mc["classifier_lars"] = lars
        (d / "config.json").write_text(json.dumps({"protocol": "cifar10-semi-5pct", "method": "nncsl",
                                                   "preset": preset, "seed": seed, "method_config": mc}))
        (d / "manifest.json").write_text(json.dumps({"budget": {"preset": preset, "reduced": preset != "paper"},
                                                     "dataset": {"variant": "canonical", "canonical": True}}))
        (d / "metrics.json").write_text(json.dumps({"complete": True, "final_acc": 50.0 + 20 * seed,
                                                    "method_label": "NNCSL (M=500)"}))
    pub = tmp_path / "p.toml"
    pub.write_text('[[result]]\nmethod = "nncsl"\nlabel = "NNCSL (M=500)"\nprotocol = "cifar10-semi-5pct"\n'
                   'final_acc = 77.2\nsource = "paper"\n')
    df = comparison(load_records(tmp_path), load_published(pub)).set_index("method")
    assert df.loc["NNCSL (M=500, BN in train mode)", "differs"] == (
        "budget: preset fast, reduced (not the paper's steps); BatchNorm in train mode in every task "
        "(official run: eval mode from task 2 on); linear classifier outside LARS (official: inside)")
    assert df.loc["NNCSL (M=500)", "differs"] == "budget: preset paper (the paper's steps)"


def test_views_are_the_labelled_and_anchor_images_each_augmented_on_its_own(monkeypatch):
    """One step's views: two views of the labelled images, then two of the anchors, then
    ``multicrop`` small crops of the anchors, each crop size augmented in one batched call (a launch
    per operation, not one per view: the loop's speed on a GPU). With the augmentation replaced by
    the identity every view is its source image, in that order; with the real one the two copies of
    an image get their own parameters (one augmentation repeated would fail this)."""
    import jdcl_baselines.nncsl as nncsl_module
    from jdcl_bench.methods.base import TaskData

    def views(m):
        m.ctx.rng.manual_seed(0)
        x = torch.randint(0, 255, (10, 1, 8, 8), dtype=torch.uint8)
        m._prepare(TaskData(0, [0, 1], [0, 1], x, torch.tensor([0] * 5 + [1] * 5), x[:0]))
        return x, m._views()

    m = _nncsl(multicrop=2)
    m.info.hflip = False
    calls = []
    monkeypatch.setattr(nncsl_module, "color_distort", lambda x, rng, s: calls.append(len(x)) or x)
    monkeypatch.setattr(nncsl_module.A, "random_resized_crop", lambda x, rng, scale: x)
    monkeypatch.setattr(nncsl_module, "resize", lambda x, px: x)
    x, (big, small, nl, nu) = views(m)
    c = m.cfg
    assert nl == len(m.blocks) * c.sup_per_class and nu == c.unsup_batch
    assert calls == [2 * nl + 2 * nu, c.multicrop * nu]  # one augmentation call per crop size
    rows = lambda v: [tuple(r.flatten().tolist()) for r in v]  # noqa: E731
    assert set(rows(big)) <= set(rows(x.float() / 255)) and len(small) == c.multicrop * nu
    # the copies of each image sit where the loss reads them: labelled, labelled, anchors, anchors, crops
    assert torch.equal(big[:nl], big[nl:2 * nl]) and torch.equal(big[2 * nl:2 * nl + nu], big[2 * nl + nu:])
    assert torch.equal(small[:nu], big[2 * nl:2 * nl + nu]) and torch.equal(small[nu:], small[:nu])
    monkeypatch.undo()

    m = _nncsl(multicrop=2)
    _, (big, small, nl, nu) = views(m)
    assert small.shape == (c.multicrop * nu, 1, m.mc_px, m.mc_px)
    assert not torch.equal(big[:nl], big[nl:2 * nl])  # two views of the labelled images, not one twice
    assert not torch.equal(big[2 * nl:2 * nl + nu], big[2 * nl + nu:])
    assert not torch.equal(small[:nu], small[nu:2 * nu])


def test_the_between_task_state_holds_the_network_once_and_resumes_the_teacher():
    """Between tasks the teacher is the model just copied: the state gives the same tensors for both,
    which torch.save writes once (NNCSL's between-task checkpoint is brought home and carried between
    device machines: a ResNet less to move). Inside a task, once the model has moved on, both are kept."""
    import io

    from jdcl_bench.methods.base import TaskData

    def saved_bytes(state):
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.tell()

    m = _nncsl()
    x = torch.randint(0, 255, (20, 1, 8, 8), dtype=torch.uint8)
    t0 = TaskData(0, [0, 1], [0, 1], x[:10], torch.tensor([0] * 5 + [1] * 5), x[:0])
    t1 = TaskData(1, [2, 3], [0, 1, 2, 3], x[10:], torch.tensor([2] * 5 + [3] * 5), x[:0])
    m.begin_task(t0)
    m.train_task(t0)
    m.end_task(t0)
    between = m.state_dict()
    assert between["teacher"] is between["model"]
    twice = {**between, "teacher": {k: v.clone() for k, v in between["model"].items()}}
    net = sum(v.numel() * v.element_size() for v in between["model"].values())
    assert saved_bytes(twice) - saved_bytes(between) >= 0.9 * net
    buf = io.BytesIO()
    torch.save(between, buf)
    buf.seek(0)
    resumed = _nncsl()
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    for k, v in m.teacher.state_dict().items():
        assert torch.equal(resumed.teacher.state_dict()[k], v)
    m.begin_task(t1)
    m.train_task(t1)
    inside = m.state_dict()
    assert inside["teacher"] is not inside["model"]
    assert any(not torch.equal(inside["teacher"][k], v) for k, v in inside["model"].items())
