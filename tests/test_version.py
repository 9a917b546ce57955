"""The version is written once (pyproject.toml); everything else reads it."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import jdcl_bench
from click.testing import CliRunner

from jdcl_bench.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_package_cli_and_citation_report_pyproject_version():
    want = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert jdcl_bench.__version__ == want
    out = CliRunner().invoke(main, ["--version"]).output
    assert want in out
    cff = dict(line.split(": ", 1) for line in (ROOT / "CITATION.cff").read_text().splitlines()
               if line and not line.startswith((" ", "-", "#")) and ": " in line)
    assert cff["version"].strip().strip('"') == want, "CITATION.cff's version must follow pyproject.toml"


def test_changelog_cites_commits_of_this_repository():
    """A result-altering change is looked up by its commit: every hash the CHANGELOG cites exists."""
    hashes = re.findall(r"\(([0-9a-f]{7})[,)]", (ROOT / "CHANGELOG.md").read_text())
    assert hashes, "the CHANGELOG cites the commits of its changes"
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("no git checkout to look the commits up in")
    shallow = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--is-shallow-repository"],
                             capture_output=True, text=True).stdout.strip()
    if shallow == "true":
        pytest.skip("a shallow clone lacks the older commits")
    missing = [h for h in hashes if subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{h}^{{commit}}"],
                                                    capture_output=True).returncode != 0]
    assert not missing, f"CHANGELOG.md cites commits that do not exist: {missing}"
