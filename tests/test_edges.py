"""Issue 25, "trust at the edges": each finding of the issue with a test that failed before its fix."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from jdcl_bench.cli import main
from jdcl_bench.data import datasets as D
from jdcl_bench.progress import Reporter
from jdcl_bench.runner import RunConfig, run

QUIET = Reporter(quiet=True)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    for var in (D.DATA_ENV, D.ALLOW_NONCANONICAL_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(D.CACHE_ENV, str(tmp_path / "cache"))


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ---- 1. the dataset a run loads must be the protocol's ----------------------------------------

@pytest.mark.parametrize("protocol", ["cifar100-t5", "cifar100-semi-5pct"])
def test_cifar100_protocol_refuses_a_cifar10_image_folder(tmp_path, protocol):
    from jdcl_bench.data.fixtures import write_imagefolder_fixture

    write_imagefolder_fixture(tmp_path / "c10", D.CIFAR10_CLASSES, 2, 32, fmt="png")
    r = invoke("run", "--protocol", protocol, "--method", "finetune", "--preset", "smoke", "--device", "cpu",
               "--data-dir", tmp_path / "c10", "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    msg = " ".join(r.output.split())
    assert "CIFAR-100" in msg and "10 classes instead of 100" in msg and str(tmp_path / "c10") in msg
    assert "--data-dir" in msg and "airplane" in msg
    assert not list((tmp_path / "out").rglob("metrics.json"))


def test_wrong_image_shape_and_class_names_are_named(tmp_path):
    ds = D.make_synthetic(num_classes=4, image_size=8)
    with pytest.raises(D.DatasetError, match=r"images of shape 8x8x3 \(HxWxC\) instead of 16x16x3"):
        D.check_dataset(ds, "synthetic", synthetic={"image_size": 16}, protocol="p")
    ds.classes = ["a", "b", "c", "d"]
    with pytest.raises(D.DatasetError, match="label 0: 'a' instead of 'class0'"):
        D.check_dataset(ds, "synthetic", protocol="p")
    digits = D.load_digits()
    D.check_dataset(digits, "digits", protocol="digits-t5")  # the real thing passes
    with pytest.raises(D.DatasetError, match="10 classes instead of 100"):
        D.check_dataset(digits, "cifar100", protocol="cifar100-t5")


def test_an_injected_dataset_of_another_protocol_is_refused(tmp_path):
    ds = D.make_synthetic(num_classes=6)
    with pytest.raises(D.DatasetError, match="6 classes instead of 4"):
        run(RunConfig("synthetic-t2", "finetune", preset="smoke", out=str(tmp_path), device="cpu"), QUIET, dataset=ds)
