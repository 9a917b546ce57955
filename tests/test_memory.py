"""A run that cannot fit its device is refused before it trains (jdcl_bench.memory), with what it
needs, what is free and what to change, instead of the kernel's 'Killed' mid-run."""
import torch
from click.testing import CliRunner

from jdcl_bench import memory
from jdcl_bench.cli import main


def test_saved_tensors_grow_with_the_batch_and_views_count_once():
    lin = torch.nn.Linear(16, 16)

    def step(n):
        x = torch.randn(n, 16)
        return memory.saved_tensor_bytes(lambda: torch.relu(lin(x)).sum())

    one, two = step(1), step(2)
    assert 0 < one < two
    x = torch.randn(8, 16, requires_grad=True)
    assert memory.saved_tensor_bytes(lambda: (x * x).sum()) == x.numel() * 4  # x saved twice, one storage


def run_jdcl(tmp_path, *sets):
    return CliRunner().invoke(main, ["run", "--protocol", "synthetic-t2", "--method", "jdcl", "--preset", "smoke",
                                     "--device", "cpu", "--out", str(tmp_path), *[a for s in sets for a in ("--set", s)]])


def test_a_run_that_cannot_fit_is_refused_with_what_to_change(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 64 * 1024 ** 2)  # a 64 MB machine
    r = run_jdcl(tmp_path, "batch_size=4096")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    text = " ".join(r.output.split())
    assert "GB are free" in text and "activations" in text and "--set batch_size=" in text
    assert not list(tmp_path.rglob("metrics.json")) and not list(tmp_path.rglob("checkpoint.pt"))

    monkeypatch.setenv(memory.SKIP_ENV, "1")  # the way round it, said in the message
    assert memory.SKIP_ENV in text
    r = run_jdcl(tmp_path / "skip", "local_steps=2", "global_steps=2")
    assert r.exit_code == 0, r.output


def test_the_same_settings_run_where_they_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 64 * 1024 ** 3)
    r = run_jdcl(tmp_path, "local_steps=2", "global_steps=2")
    assert r.exit_code == 0 and "may not fit" not in r.output, r.output
