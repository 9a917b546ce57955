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


@pytest.mark.parametrize("semi", [False, True])
def test_jdcl_conformance(tmp_path, semi):
    out = check_method("jdcl", preset="smoke", semi=semi, workdir=tmp_path)
    assert out["semi"] is semi and out["ticks"] > 0


def test_unknown_compile_mode_is_a_clear_config_error(tmp_path):
    from click.testing import CliRunner

    from jdcl_bench.cli import main

    r = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "jdcl", "--preset", "smoke",
                                  "--set", "compile_mode=fastest", "--out", str(tmp_path), "--device", "cpu"])
    assert r.exit_code == 2, r.output
    assert "compile_mode='fastest'" in r.output and "reduce-overhead" in r.output
