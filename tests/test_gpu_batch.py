import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_gpu_batch():
    spec = importlib.util.spec_from_file_location("gpu_batch", ROOT / "scripts" / "gpu_batch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_checkpoint_parts_have_names_the_device_returns_and_join_back(tmp_path):
    """A preset with overrides ("fast+ab12") puts '+' in the run's path; the device machine returns
    only files named in letters, digits, '.', '_' and '-', so the parts must not carry it. Finished
    runs' checkpoints are not returned."""
    gpu_batch = load_gpu_batch()
    out, dest = tmp_path / "out", tmp_path / "dest"
    dest.mkdir()
    run = out / "runs" / "cifar10-first2-d25f" / "jdcl" / "fast+ab12" / "seed0"
    run.mkdir(parents=True)
    data = bytes(range(256)) * 5
    (run / "checkpoint.pt").write_bytes(data)
    done = out / "runs" / "cifar10-first2-d25f" / "jdcl" / "fast" / "seed0"
    done.mkdir(parents=True)
    (done / "checkpoint.pt").write_bytes(b"done")
    (done / "metrics.json").write_text('{"tasks_done": 2, "num_tasks": 2}')
    gpu_batch.bring_checkpoints(out, dest, part_bytes=500)
    parts = sorted(dest.iterdir())
    assert len(parts) == 3
    assert all(set(p.name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") for p in parts)
    assert b"".join(p.read_bytes() for p in parts) == data
