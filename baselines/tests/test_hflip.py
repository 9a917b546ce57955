"""A protocol that forbids mirroring ([augment] hflip = false, the digits default) reaches every flip
a baseline draws: its own augmentations and the shared views alike."""
from pathlib import Path

import pytest

from jdcl_bench.data import augment as A
from jdcl_bench.progress import Reporter
from jdcl_bench.protocol import get_protocol
from jdcl_bench.runner import RunConfig, run


@pytest.mark.parametrize("method", ["dgr", "guide", "gfr", "nncsl"])
def test_flip_probability_follows_the_protocol(tmp_path, monkeypatch, method):
    import jdcl_baselines.dgr as dgr

    seen = []
    real_flip, real_aug = A._hflip, dgr.classifier_augment
    monkeypatch.setattr(A, "_hflip", lambda x, u, p: seen.append(p) or real_flip(x, u, p))
    monkeypatch.setattr(dgr, "classifier_augment", lambda x, g, flip_p=0.5, *a: seen.append(flip_p) or real_aug(x, g, flip_p, *a))
    text = Path(get_protocol("synthetic-semi-t2").path).read_text()  # semi: the unlabelled views run too
    for hflip in (False, True):
        f = tmp_path / f"flip-{hflip}.toml"
        f.write_text(text + f"[augment]\nhflip = {str(hflip).lower()}\n")
        seen.clear()
        run(RunConfig(str(f), method, preset="smoke", out=str(tmp_path), device="cpu"), Reporter(quiet=True))
        assert seen and set(seen) == ({0.5} if hflip else {0.0}), (hflip, set(seen))
