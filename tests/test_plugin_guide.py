"""docs/plugins.md shows the test plugin's code: the page and the fixture must not drift apart."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugins.md"
FIXTURE = ROOT / "tests" / "plugin_fixture"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", GUIDE.read_text(), flags=re.S)


def test_the_guide_shows_the_fixture_method_verbatim():
    python = _blocks("python")
    for f in ("ncm.py", "__init__.py"):
        assert (FIXTURE / "jdcl_toy_plugin" / f).read_text() in python, f


def test_the_guides_pyproject_is_the_fixtures_less_the_broken_plugin():
    (toml,) = _blocks("toml")
    fixture = (FIXTURE / "pyproject.toml").read_text().splitlines()
    for line in toml.splitlines():
        assert line in fixture, line


def test_readme_points_at_the_guide_and_the_guide_documents_ctx():
    readme = (ROOT / "README.md").read_text()
    assert "docs/plugins.md" in readme
    text = GUIDE.read_text()
    from jdcl_bench.runner import RunContext

    public = {n for n in vars(RunContext) if not n.startswith("_")} | {"device", "seed", "run_dir", "rng",
                                                                          "task_index", "reporter"}
    for name in public - {"reporter"}:
        assert f"ctx.{name}" in text, name
    assert "`smoke` is needed by the conformance kit" in text


def test_check_method_says_it_needs_a_smoke_preset():
    from jdcl_bench.methods.base import Method
    from jdcl_bench.registry import METHODS
    from jdcl_bench.testing import ConformanceError, check_method

    @dataclass
    class Cfg:
        k: int = 1

    class NoSmoke(Method):
        name = "no-smoke"
        Config = Cfg
        presets = {"fast": {}}

        def train_task(self, task):
            pass

        def predict(self, x):
            return torch.zeros(len(x), self.info.num_classes)

    METHODS.register("no-smoke", NoSmoke)
    try:
        with pytest.raises(ConformanceError, match="no preset 'smoke'.*declare presets = \\{'smoke'"):
            check_method("no-smoke")
    finally:
        METHODS.unregister("no-smoke")
