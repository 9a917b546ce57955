"""jdcl_bench/compile_cache.py: compiled graphs carried to a fresh machine (opt-in by environment)."""
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from jdcl_bench import compile_cache


def test_without_a_folder_nothing_is_read_or_written(tmp_path, monkeypatch):
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with compile_cache.kept("p__m__s__seed0", print):
        pass
    assert list(tmp_path.iterdir()) == []


def test_every_blob_is_loaded_a_bad_one_skipped_and_the_runs_blob_saved_also_when_it_fails(tmp_path, monkeypatch):
    import torch

    loaded, said = [], []
    def load(blob):
        if blob == b"broken":
            raise RuntimeError("unpickling failed")
        loaded.append(blob)
        return SimpleNamespace(artifacts={"inductor": ["k1", "k2"]})
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", load)
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"this process's graphs", None))
    (tmp_path / "a.bin").write_bytes(b"run a")
    (tmp_path / "b.bin").write_bytes(b"broken")
    (tmp_path / "notes.txt").write_text("not a blob")
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path))
    with pytest.raises(ValueError):
        with compile_cache.kept("cifar10-semi-0.8pct__jdcl__standard+ab__seed0", said.append):
            raise ValueError("the run failed")
    assert loaded == [b"run a"]
    assert any("b.bin not loaded (RuntimeError: unpickling failed)" in s for s in said)
    assert any("2 artifacts from a.bin" in s for s in said)
    saved = tmp_path / "cifar10-semi-0.8pct__jdcl__standard-ab__seed0.bin"   # '+' is not returned by the device
    assert saved.read_bytes() == b"this process's graphs" and not list(tmp_path.glob("*.tmp"))
    # a process that compiled nothing writes nothing (and never an empty file over a run's blob)
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: None)
    with compile_cache.kept("cifar10-semi-0.8pct__jdcl__standard+ab__seed0", said.append):
        pass
    assert saved.read_bytes() == b"this process's graphs"


def test_a_fresh_process_reads_the_graph_a_first_process_compiled(tmp_path):
    """The real mechanism on CPU (inductor's C++ backend: the same caches as on CUDA): two processes,
    each with an empty inductor cache of its own, the second given the first one's blob."""
    script = textwrap.dedent("""
        import os, sys, torch
        from torch._dynamo.utils import counters
        from jdcl_bench.compile_cache import kept
        with kept("p__m__s__seed0", print):
            torch.compile(lambda x: (x * 2).sin(), dynamic=False)(torch.randn(4))
        print("hits", counters["inductor"]["fxgraph_cache_hit"], "misses", counters["inductor"]["fxgraph_cache_miss"])
    """)
    cache = tmp_path / "carried"
    outs = []
    for i in range(2):
        env = {**os.environ, compile_cache.ENV: str(cache), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor{i}")}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        outs.append(done.stdout)
    assert "hits 0 misses 1" in outs[0] and "saved" in outs[0]
    assert "artifacts from p__m__s__seed0.bin" in outs[1] and "hits 1 misses 0" in outs[1]
