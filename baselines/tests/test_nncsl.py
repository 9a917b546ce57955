"""NNCSL: hand-computed loss values, conformance kit (semi and fully supervised), CLI smoke runs."""
import json
import math

import pytest
import torch
from click.testing import CliRunner

from jdcl_baselines._nncsl_gfr_utils import LARSSGD, color_distort, equalize, warmup_cosine
from jdcl_baselines.nncsl import (NNCSL, cross_entropy_soft, memax, paws_targets, sharpen, smoothed_one_hot, snn)


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
    ramp = torch.linspace(0.2, 0.4, 64).view(1, 1, 8, 8)
    eq = equalize(ramp)
    assert float(eq.min()) == 0 and float(eq.max()) == 1  # stretched to the full range


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
