"""Replay diagnostics (jdcl_bench.replay_quality): the instrument behaves, and runs record it."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from jdcl_bench.cli import main
from jdcl_bench.data.augment import images_to_tensor
from jdcl_bench.data.datasets import load_digits
from jdcl_bench.replay_quality import (ReferenceSpec, ReplayDiagnostics, for_dataset, frechet_distance, high_frequency_share,
                                       near_chance, saturated_share)


@pytest.fixture(scope="module")
def digits_diag(tmp_path_factory):
    import os

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("JDCL_BENCH_CACHE")
    os.environ["JDCL_BENCH_CACHE"] = str(cache)
    try:
        ds = load_digits()
        yield ds, for_dataset(ds, torch.device("cpu"), flip=False, log=lambda m: None), cache
    finally:
        if old is None:
            os.environ.pop("JDCL_BENCH_CACHE")
        else:
            os.environ["JDCL_BENCH_CACHE"] = old


def test_real_images_as_replay_score_near_the_reference(digits_diag):
    ds, diag, _ = digits_diag
    assert diag.reference_acc > 0.9  # the instrument itself works on digits
    classes = [0, 1, 2, 3]
    m = np.isin(ds.test_y, classes)
    x, y = images_to_tensor(ds.test_x[m]), torch.from_numpy(ds.test_y[m])
    r = diag.measure(x, y, classes)
    o = r["overall"]
    # the real test images of these classes, labelled correctly: fidelity is the reference's own accuracy
    assert o["fidelity"] == pytest.approx(o["fidelity_real"])
    assert o["fidelity"] > 0.9 and not near_chance(r)
    assert o["fd"] == pytest.approx(0.0, abs=1e-3)  # the same images as the real side
    assert o["saturated"] == pytest.approx(o["saturated_real"]) and o["hf"] == pytest.approx(o["hf_real"])
    assert set(r["per_class"]) == {"0", "1", "2", "3"} and r["chance"] == 0.25


def test_pure_noise_scores_near_chance(digits_diag):
    ds, diag, _ = digits_diag
    classes = [0, 1, 2, 3]
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (400, 1, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(4).repeat(100)
    r = diag.measure(x, y, classes)
    o = r["overall"]
    assert abs(o["fidelity"] - r["chance"]) < 0.1 and near_chance(r)
    assert o["fd"] > 10 * max(o["fd_real"], 1.0)
    assert o["hf"] > o["hf_real"]


def test_the_reference_classifier_is_cached_and_reloaded(digits_diag):
    ds, diag, cache = digits_diag
    files = list((cache / "reference").glob("digits-*.pt"))
    assert len(files) == 1
    again = for_dataset(ds, torch.device("cpu"), flip=False, log=lambda m: None)
    assert again.cache_note.startswith("loaded from") and again.reference_acc == diag.reference_acc


def test_a_damaged_cache_is_retrained_not_trusted(tmp_path):
    from jdcl_bench.data.datasets import make_synthetic

    ds = make_synthetic()
    path = tmp_path / "ref.pt"
    path.write_bytes(b"not a checkpoint")
    messages = []
    d = ReplayDiagnostics(images_to_tensor(ds.train_x), ds.train_y, images_to_tensor(ds.test_x), ds.test_y, 4,
                          torch.device("cpu"), path, spec=ReferenceSpec(widths=(4, 4, 4), epochs=1, min_steps=8),
                          log=messages.append)
    assert any("unreadable" in m for m in messages) and d.cache_note.startswith("trained")
    torch.load(path, weights_only=True)  # rewritten, loadable without unpickling code


def test_pixel_measures_by_hand():
    x = torch.tensor([[[[0, 255], [128, 7]]]], dtype=torch.uint8)
    assert saturated_share(x) == pytest.approx(0.5)
    flat = torch.full((1, 1, 8, 8), 100, dtype=torch.uint8)
    checker = ((torch.arange(8).view(8, 1) + torch.arange(8)) % 2 * 255).to(torch.uint8).view(1, 1, 8, 8)
    assert high_frequency_share(checker) == pytest.approx(1.0)  # all power at the Nyquist corner
    assert high_frequency_share(flat) == pytest.approx(0.0)
    a = np.random.default_rng(0).normal(size=(500, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, a + 2.0) == pytest.approx(12.0, rel=1e-6)  # |mu shift|^2 = 3 * 4
    assert frechet_distance(a[:1], a) is None


def test_jdcl_run_records_its_diagnostics(tmp_path, monkeypatch):
    monkeypatch.setenv("JDCL_BENCH_CACHE", str(tmp_path / "cache"))
    r = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "jdcl", "--preset", "smoke",
                                  "--set", "diagnostics=true", "--device", "cpu", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    d = next((tmp_path / "runs" / "synthetic-t2" / "jdcl").glob("smoke+*/seed0"))
    diag = json.loads((d / "metrics.json").read_text())["diagnostics"]
    kinds = [(e["task"], e["kind"]) for e in diag]
    assert kinds == [(1, "accuracy"), (2, "accuracy"), (2, "replay")]
    replay = diag[-1]
    assert replay["classes"] == [0, 1, 2, 3] and replay["overall"]["fidelity_real"] > 0.5
    assert "diagnostics_seconds" in json.loads((d / "manifest.json").read_text())
    shown = CliRunner().invoke(main, ["show", str(d)], env={"COLUMNS": "160"})
    assert shown.exit_code == 0 and "Replay diagnostics" in shown.output and "local model" in shown.output


def test_diagnostics_off_records_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("JDCL_BENCH_CACHE", str(tmp_path / "cache"))
    r = CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "jdcl", "--preset", "smoke",
                                  "--device", "cpu", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    d = tmp_path / "runs" / "synthetic-t2" / "jdcl" / "smoke" / "seed0"
    assert "diagnostics" not in json.loads((d / "metrics.json").read_text())
    assert not (tmp_path / "cache").exists()  # no reference classifier was trained
