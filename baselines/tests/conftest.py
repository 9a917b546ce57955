import json

import pytest
import torch
from click.testing import CliRunner


@pytest.fixture(autouse=True)
def one_thread():
    # tiny models: extra intra-op threads only add contention (and on a busy machine, a lot of it)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def smoke_cli_run(tmp_path):
    """``jdcl-bench run --preset smoke`` of a method on CPU through the CLI: (run dir, metrics, budget)."""
    def run(method: str, protocol: str):
        from jdcl_bench.cli import main

        r = CliRunner().invoke(main, ["run", "--protocol", protocol, "--method", method, "--preset", "smoke",
                                      "--device", "cpu", "--out", str(tmp_path)], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        d = tmp_path / "runs" / protocol / method / "smoke" / "seed0"
        budget = json.loads((d / "manifest.json").read_text())["budget"]
        return d, json.loads((d / "metrics.json").read_text()), budget
    return run
