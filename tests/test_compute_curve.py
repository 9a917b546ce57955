"""`jdcl-bench plot --x gpu-minutes`: final accuracy and replay fidelity against the runs' GPU-minutes."""
import json

from click.testing import CliRunner
from test_leaderboard import write_run

from jdcl_bench.cli import main


def test_compute_curve_plot_and_table(tmp_path):
    root = tmp_path / "results"
    for seed, (acc, gpu_s, fid) in enumerate([(40.0, 300.0, 0.5), (55.0, 900.0, 0.6), (61.0, 1800.0, 0.7)]):
        run = write_run(root, "cifar10-t5", "jdcl", "JDCL", seed, acc, gpu_seconds=gpu_s, preset=f"b{seed}",
                        reduced=True)
        m = json.loads((run / "metrics.json").read_text())
        m["diagnostics"] = [{"task": 2, "kind": "replay", "overall": {"fidelity": fid}},
                            {"task": 2, "kind": "accuracy", "acc": 0.9}]
        (run / "metrics.json").write_text(json.dumps(m))
    shared = write_run(root, "cifar10-t5", "dgr", "DGR", 0, 20.0, gpu_seconds=600.0, preset="fast", reduced=True)
    man = json.loads((shared / "manifest.json").read_text())
    man["gpu_shared_by"] = 4
    (shared / "manifest.json").write_text(json.dumps(man))

    out = tmp_path / "figs"
    r = CliRunner().invoke(main, ["plot", "--results", str(root), "--x", "gpu-minutes", "--out-dir", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "compute_curve_cifar10-t5.png").stat().st_size > 0
    table = (out / "compute_curve_cifar10-t5.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| JDCL")]
    # sorted by GPU-minutes, with each run's mean replay fidelity
    assert [row.split("|")[4].strip() for row in rows] == ["5.0", "15.0", "30.0"]
    assert [row.split("|")[6].strip() for row in rows] == ["50.0", "60.0", "70.0"]
    assert "10.0 (shared by 4 runs)" in table and "| DGR |" in table

    only = CliRunner().invoke(main, ["plot", "--results", str(root), "--x", "gpu-minutes", "--method", "dgr",
                                     "--out-dir", str(tmp_path / "dgr")])
    assert only.exit_code == 0, only.output
    assert "JDCL" not in (tmp_path / "dgr" / "compute_curve_cifar10-t5.md").read_text()


def test_run_resumed_on_another_gpu_names_both(tmp_path):
    """A run whose tasks ran on two GPU models is not credited to the last one alone."""
    from jdcl_bench.results.load import load_records

    root = tmp_path / "results"
    run = write_run(root, "cifar10-t5", "jdcl", "JDCL", 0, 70.0, gpu_seconds=1800.0, preset="standard")
    man = json.loads((run / "manifest.json").read_text())
    man["hardware"] = {"device": "cuda", "gpu_name": "H200"}
    man["segments"] = [{"from_task": 1, "gpu_name": "H100"}, {"from_task": 2, "gpu_name": "H100"},
                       {"from_task": 3, "gpu_name": "H200"}, {"from_task": 5, "gpu_name": "H200"}]
    (run / "manifest.json").write_text(json.dumps(man))
    assert load_records(root)["gpu_name"].tolist() == ["H100 (tasks 1-2), H200 (tasks 3-5)"]
    assert load_records(root)["gpu_models"].tolist() == [["H100", "H200"]]

    man["segments"] = [{"from_task": 1, "gpu_name": "H200"}, {"from_task": 4, "gpu_name": "H200"}]
    (run / "manifest.json").write_text(json.dumps(man))
    assert load_records(root)["gpu_name"].tolist() == ["H200"]
    assert load_records(root)["gpu_models"].tolist() == [["H200"]]


def test_table_caption_names_each_gpu_model_once_and_where_a_run_ran_on_two(tmp_path):
    """The caption's GPU list is models, not runs' task spans run together ("H100, H100 (tasks 1-2), ...")."""
    root = tmp_path / "results"
    run = write_run(root, "cifar10-t5", "jdcl", "JDCL", 0, 70.0, gpu_seconds=1800.0, preset="standard")
    man = json.loads((run / "manifest.json").read_text())
    man["segments"] = [{"from_task": 1, "gpu_name": "H100"}, {"from_task": 3, "gpu_name": "H200"}]
    (run / "manifest.json").write_text(json.dumps(man))
    other = write_run(root, "cifar10-t5", "finetune", "Fine-tune", 0, 19.0, gpu_seconds=180.0, preset="standard")
    man = json.loads((other / "manifest.json").read_text())
    man["hardware"] = {"device": "cuda", "gpu_name": "H100"}
    (other / "manifest.json").write_text(json.dumps(man))

    r = CliRunner().invoke(main, ["table", "--results", str(root), "--protocol", "cifar10-t5"])
    assert r.exit_code == 0, r.output
    assert "GPUs: H100, H200; JDCL on cifar10-t5, seed 0: H100 (tasks 1-2), H200 (tasks 3-5).\n" in r.output


def test_a_recipe_change_is_a_line_of_its_own_and_a_budget_change_a_point(tmp_path):
    """JDCL's `standard` (the replay levers) beside `fast`'s recipe: one line through them would draw
    the levers as the effect of compute. Runs that differ only in steps (--set local_steps=...) stay
    one line; a recipe that is a preset's today is named after it, another by what sets it apart."""
    from jdcl_bench.results.load import load_records
    from jdcl_bench.results.plots import compute_curve

    root = tmp_path / "results"
    write_run(root, "cifar10-t5", "jdcl", "JDCL", 0, 52.0, gpu_seconds=500.0, preset="fast", reduced=True)
    longer = write_run(root, "cifar10-t5", "jdcl", "JDCL", 0, 70.0, gpu_seconds=1800.0, preset="fast",
                       reduced=True, subdir="cifar10-t5/jdcl/fast+steps/seed0")
    cfg = json.loads((longer / "config.json").read_text())
    cfg["method_config"].update(local_steps=4000, global_steps=2500)
    cfg["overrides"] = {"local_steps": "4000", "global_steps": "2500"}
    (longer / "config.json").write_text(json.dumps(cfg))
    write_run(root, "cifar10-t5", "jdcl", "JDCL", 0, 75.0, gpu_seconds=1700.0, preset="standard", reduced=True)
    curve = compute_curve(load_records(root), "cifar10-t5")
    series = dict(zip(curve["final_acc"], curve["method"]))
    assert series[52.0] == series[70.0] == "JDCL (fast recipe)"  # fast's settings at standard's steps: a point
    assert series[75.0] == "JDCL (standard recipe)"
    # a recipe no preset has today (here the recipe's lr): named by what sets it apart
    old = write_run(root, "cifar10-t5", "jdcl", "JDCL", 0, 45.0, gpu_seconds=400.0, preset="fast", reduced=True,
                    subdir="cifar10-t5/jdcl/fast+lr/seed0")
    cfg = json.loads((old / "config.json").read_text())
    cfg["method_config"].update(lr=2e-4)
    cfg["overrides"] = {"lr": "2e-4"}
    (old / "config.json").write_text(json.dumps(cfg))
    series = dict(zip(*(lambda c: (c["final_acc"], c["method"]))(compute_curve(load_records(root), "cifar10-t5"))))
    assert series[45.0] == "JDCL [lr=0.0002]" and series[75.0] == "JDCL (standard recipe)"
