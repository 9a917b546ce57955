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


def test_pyproject_lists_every_package_a_wheel_needs():
    """setuptools is given the package list by hand: a subpackage missing from it is missing from a
    wheel (an editable install would still find it, so nothing else would notice)."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "jdcl_bench").rglob("__init__.py")}
    assert on_disk - listed == set(), f"add to [tool.setuptools] packages in pyproject.toml: {sorted(on_disk - listed)}"


def test_a_records_source_hash_leads_back_to_its_commit():
    """On a GPU machine git may be older than the copied tree; the source hash still names the code,
    and scripts/commit_for_source_hash.py hashes a commit's files exactly as records.source_hash
    hashes the tree."""
    from jdcl_bench.records import source_hash
    from script_module import load_script

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("no git checkout")
    if subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "jdcl_bench"],
                      capture_output=True, text=True).stdout.strip():
        pytest.skip("jdcl_bench has uncommitted changes: HEAD is not the code that runs")
    mod = load_script("scripts/commit_for_source_hash.py")
    assert mod.tree_source_hash("HEAD") == source_hash()
