"""benchmarks/sampler_fidelity.py in its CPU smoke mode: a random smoke-size model on the synthetic
protocol, tiny; the record is complete and carries every sampler's rate and replay measures."""
import json
from pathlib import Path

import pytest
import torch
from script_module import load_script



def load_sampler_fidelity():
    return load_script("benchmarks/sampler_fidelity.py")


@pytest.fixture(autouse=True)
def one_thread():
    # tiny models: extra intra-op threads only add contention on a shared 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def untrained_reference(tmp_path, monkeypatch):
    """Put an untrained reference classifier where the synthetic dataset's cache is looked up, so the
    test does not spend ~40 s of CPU training one (the measures are not what is tested here)."""
    from jdcl_bench.data.datasets import load_dataset, resolve_cache_dir
    from jdcl_bench.protocol import get_protocol
    from jdcl_bench.replay_quality import ReferenceNet, ReferenceSpec, reference_cache_path

    monkeypatch.setenv("JDCL_BENCH_CACHE", str(tmp_path / "cache"))
    p = get_protocol("synthetic-t2")
    ds = load_dataset(p.dataset, image_size=p.image_size, class_names=p.class_names, synthetic=p.synthetic)
    spec = ReferenceSpec.for_images(8)
    path = reference_cache_path(resolve_cache_dir(), ds.identity, len(ds.classes), spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save({"model": ReferenceNet(3, len(ds.classes), spec.widths).state_dict()}, path)
    return path


def test_parse_sampler():
    mod = load_sampler_fidelity()
    assert mod.parse_sampler("ddim-50") == {"name": "ddim-50", "kind": "ddim", "steps": 50, "spacing": "uniform"}
    assert mod.parse_sampler("dpm-10")["spacing"] == "logsnr"
    assert mod.parse_sampler("dpm-15-uniform")["spacing"] == "uniform"
    for bad in ("euler-10", "dpm-x", "dpm-10-karras", "ddim-50-logsnr"):
        with pytest.raises(SystemExit):
            mod.parse_sampler(bad)


def test_smoke_mode_writes_a_complete_record(tmp_path, untrained_reference):
    mod = load_sampler_fidelity()
    record = mod.main(["--random-model", "--protocol", "synthetic-t2", "--device", "cpu", "--n", "12",
                       "--gen-batch", "8", "--samplers", "ddim-50,ddim-4,dpm-3,dpm-3-uniform", "--reference", "ddim-4",
                       "--out", str(tmp_path / "bench")])
    saved = json.loads(Path(record["path"]).read_text())
    assert saved["complete"] and Path(record["path"]).parent == tmp_path / "bench"
    assert Path(record["path"]).name.startswith("sampler-fidelity-cpu-")
    assert list(saved["samplers"]) == ["ddim-4", "ddim-50", "dpm-3", "dpm-3-uniform"]  # the reference first
    for name, row in saved["samplers"].items():
        assert row["images"] == 12 and row["images_per_s"] > 0
        assert "fidelity" in row and "fd" in row and "saturated" in row and "per_class" in row
    assert saved["samplers"]["ddim-4"]["mean_abs_diff_vs_reference"] == 0
    assert saved["samplers"]["dpm-3"]["mean_abs_diff_vs_reference"] >= 0
    assert set(saved["vs_ddim50"]) == {"dpm-3", "dpm-3-uniform"}
    assert saved["model"]["seen_classes"] == [0, 1, 2, 3] and saved["model"]["unet"] == "smoke"


def test_confidence_thresholds_measure_the_replay_each_keeps(tmp_path, untrained_reference):
    mod = load_sampler_fidelity()
    record = mod.main(["--random-model", "--protocol", "synthetic-t2", "--device", "cpu", "--n", "16",
                       "--gen-batch", "16", "--samplers", "dpm-2", "--reference", "dpm-2",
                       "--confidence", "0.01,0.26,0.999", "--out", str(tmp_path / "bench")])
    conf = record["samplers"]["dpm-2"]["confidence"]
    assert list(conf) == ["0.01", "0.26", "0.999"]
    # a probability below 1/classes keeps everything; a higher bar never keeps more
    assert conf["0.01"]["kept"] == 1.0 and conf["0.01"]["fidelity"] == record["samplers"]["dpm-2"]["fidelity"]
    kept = [conf[t]["kept"] for t in conf]
    assert kept == sorted(kept, reverse=True)
    assert set(conf["0.26"]["kept_per_class"]) == {0, 1, 2, 3}
    for bad in ("1.5", "x"):
        with pytest.raises(SystemExit):
            mod.main(["--random-model", "--protocol", "synthetic-t2", "--device", "cpu", "--confidence", bad])


def test_a_run_folder_between_tasks_gives_its_task_checkpoint(tmp_path):
    """A run stopped between tasks and brought home keeps checkpoint-task.pt only: G is read from it."""
    mod = load_sampler_fidelity()
    state = {"phase": "task_done", "task": 3, "method": {"G": {"ema": {"module": {"w": torch.ones(2)}}}},
             "rng": torch.Generator().get_state(), "acc_rows": [], "seen_acc": [], "wall_s": 0.0}
    torch.save(state, tmp_path / "checkpoint-task.pt")
    weights, task, source = mod.load_global_model(tmp_path)
    assert task == 3 and torch.equal(weights["w"], torch.ones(2)) and "checkpoint-task.pt" in source
    torch.save({**state, "task": 4}, tmp_path / "checkpoint.pt")  # the latest state wins where both exist
    assert mod.load_global_model(tmp_path)[1] == 4
