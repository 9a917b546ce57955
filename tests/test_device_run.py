"""scripts/device_run.sh, the device procedure for any method: run in a copy of the scripts folder with
a stand-in for pip (the suite is installed here already), on the embedded digits protocol."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo(tmp_path):
    """A folder laid out as the repository root, with the two scripts, a data folder that counts as
    unpacked, and a `python3` that logs pip calls instead of installing."""
    (tmp_path / "scripts").mkdir()
    for name in ("device_run.sh", "device_setup.sh", "issue20_standard.sh", "gpu_batch.py"):
        shutil.copy(ROOT / "scripts" / name, tmp_path / "scripts" / name)
    (tmp_path / "data" / "train").mkdir(parents=True)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python3").write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = -m ] && [ "$2" = pip ]; then echo "$*" >> {tmp_path}/pip.log; exit 0; fi\n'
        f'exec {sys.executable} "$@"\n')
    (shim / "python3").chmod(0o755)
    return tmp_path


def run(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PATH": f"{repo / 'bin'}:{os.environ['PATH']}", "DATA": str(repo / "data"),
            "DEADLINE": "300", **env}
    full.pop("OUT", None)
    return subprocess.run(["bash", str(repo / "scripts" / "device_run.sh"), *args], cwd=repo, env=full,
                          capture_output=True, text=True, timeout=600)


def test_without_a_run_it_says_how_to_name_one(repo):
    r = run(repo)
    assert r.returncode == 2 and "PROTOCOL METHOD PRESET" in r.stderr


def test_runs_side_by_side_and_installs_the_baselines_only_when_a_run_needs_them(repo):
    r = run(repo, "digits-t5", "finetune", "smoke")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (repo / "pip.log").read_text().split("\n")[0].endswith("-e .")  # fine-tune lives in jdcl_bench
    r = run(repo, CHAINS="digits-t5:finetune:smoke:1 digits-t5:gfr:smoke:0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (repo / "pip.log").read_text().splitlines()[-1].endswith("-e . -e ./baselines")
    for method, seed in (("finetune", 0), ("finetune", 1), ("gfr", 0)):
        metrics = json.loads((repo / ".gpu-runs" / "runs" / "digits-t5" / method / "smoke" / f"seed{seed}" /
                              "metrics.json").read_text())
        assert metrics["complete"]
    manifest = json.loads((repo / ".gpu-runs/runs/digits-t5/gfr/smoke/seed0/manifest.json").read_text())
    assert manifest["gpu_shared_by"] == 2  # the two chains of the second command shared the device


def test_a_fork_is_never_resumed_as_the_whole_run(repo):
    seed = repo / ".gpu-runs" / "runs" / "digits-t5" / "jdcl" / "standard" / "seed0"
    seed.mkdir(parents=True)
    (seed / "config.json").write_text(json.dumps({"forked_from": "elsewhere"}))
    r = subprocess.run(["bash", str(repo / "scripts" / "issue20_standard.sh"), "digits-t5"], cwd=repo,
                       env={**os.environ, "PATH": f"{repo / 'bin'}:{os.environ['PATH']}", "DATA": str(repo / "data")},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "is a fork" in r.stdout
    assert not (repo / "pip.log").exists()  # refused before installing anything


def test_a_comma_runs_one_after_the_other_each_alone_and_the_later_run_is_checked_too(repo):
    # the second run of the chain is a baseline: the baselines are installed for it
    r = run(repo, CHAINS="digits-t5:finetune:smoke:0,digits-t5:gfr:smoke:0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (repo / "pip.log").read_text().splitlines()[-1].endswith("-e . -e ./baselines")
    for method in ("finetune", "gfr"):
        d = repo / ".gpu-runs" / "runs" / "digits-t5" / method / "smoke" / "seed0"
        assert json.loads((d / "metrics.json").read_text())["complete"]
        assert json.loads((d / "manifest.json").read_text())["gpu_shared_by"] == 1
    # a fork as the chain's second run is refused before anything runs
    cfg = repo / ".gpu-runs" / "runs" / "digits-t5" / "joint" / "smoke" / "seed0" / "config.json"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(json.dumps({"forked_from": "elsewhere"}))
    r = run(repo, CHAINS="digits-t5:finetune:smoke:1,digits-t5:joint:smoke")
    assert r.returncode == 2 and "is a fork" in r.stdout
    assert not (repo / ".gpu-runs" / "runs" / "digits-t5" / "finetune" / "smoke" / "seed1").exists()
