"""The candidate settings files under benchmarks/candidates/: what the next GPU measurements run with
--config before a candidate becomes a preset (baselines/docs/standard.md, docs/jdcl.md)."""
from pathlib import Path

import pytest

from jdcl_bench.config import load_settings_file
from jdcl_bench.registry import METHODS


@pytest.mark.parametrize("method,candidate", [("dgr", "dgr-standard"), ("guide", "dgr-standard"),
                                              ("gfr", "gfr-standard")])
def test_standard_candidates_load_as_checked_settings(method, candidate):
    """The candidate files the next GPU measurement runs with --config: every key a field, every
    value valid, and DGR's and GUIDE's generator parts identical (they share cached generators)."""
    root = Path(__file__).resolve().parents[1]
    settings = load_settings_file(root / "benchmarks" / "candidates" / f"{candidate}.toml")
    cfg = METHODS.get(method).config_for("fast", settings)  # each candidate is run on `fast`
    assert cfg != METHODS.get(method).config_for("fast", {})
    if method in ("dgr", "guide"):
        assert METHODS.get("dgr").config_for("fast", settings).generator == cfg.generator
