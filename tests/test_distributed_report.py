"""scripts/distributed_report.py: rates from log timestamps, accuracy side by side, refusal of unlike runs."""
import json
from pathlib import Path

import pytest
from script_module import load_script

report_mod = load_script("scripts/distributed_report.py")


def _log(path: Path, step_seconds: float, tasks=(1, 2)) -> Path:
    lines, t = ["[     1.0s] cifar10-t5: loaded"], 5.0
    for task in tasks:
        for n in range(0, 801, 80):
            # step 0 -> first report takes 30 s (compile/warm-up), which the rate must leave out
            t += 30.0 if n == 80 else (step_seconds * 80 if n else 0.0)
            lines.append(f"[{t:9.1f}s] task {task}: local stage: {n}/800")
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(root: Path, world: int, accs, step_seconds: float, batch=512, compile=False) -> Path:
    d = root / f"w{world}"
    (d / "logs").mkdir(parents=True)
    cfg = {"protocol": "p", "method": "jdcl", "preset": "fast", "seed": 0,
           "method_config": {"batch_size": batch, "compile": compile}}
    met = {"acc_matrix": accs, "task_classes": [[0, 1], [2, 3]], "final_acc": sum(accs[-1]) / 2, "forgetting": 1.0}
    man = {"hardware": {"gpu_name": "GPU"}, "dataset": {"variant": "v", "canonical": False}, "wall_time_s": 600.0,
           "gpu_seconds": 600.0 * world, "code_version": {"commit": "abc"},
           "distributed": {"world_size": world, "backend": "nccl", "per_rank_batch": batch // world} if world > 1 else None}
    for name, obj in (("config", cfg), ("metrics", met), ("manifest", man)):
        (d / f"{name}.json").write_text(json.dumps(obj))
    _log(d / "logs" / "log1.txt", step_seconds)
    return d


def test_rates_skip_the_warm_up_interval(tmp_path):
    rates = report_mod.merged_rates([_log(tmp_path / "a.txt", 0.1)])
    assert rates["local"] == pytest.approx(10.0, rel=1e-3)


def test_report_puts_both_runs_side_by_side(tmp_path):
    one = _run(tmp_path, 1, [[90.0, 0.0], [60.0, 40.0]], 0.1)
    two = _run(tmp_path, 2, [[80.0, 0.0], [50.0, 50.0]], 0.05)
    probe = _log(tmp_path / "probe.txt", 0.08, tasks=(1,))
    text = report_mod.report(report_mod.load(one), report_mod.load(two), probe, ("a", "b"))
    assert "| 1 | 45.00 | 40.00 | -5.00 |" in text  # all-class accuracy: unseen classes count as 0
    assert "| local | 10.00 | 20.00 | 2.00× |" in text
    assert "**1.60×**" in text  # 20 steps/s vs the probe's 12.5


def test_report_refuses_runs_with_different_configs(tmp_path):
    one = _run(tmp_path, 1, [[90.0, 0.0], [60.0, 40.0]], 0.1)
    two = _run(tmp_path, 2, [[80.0, 0.0], [50.0, 50.0]], 0.05, batch=256)
    with pytest.raises(SystemExit, match="batch_size"):
        report_mod.report(report_mod.load(one), report_mod.load(two), None, ("a", "b"))


def test_speed_switches_are_reported_not_refused(tmp_path):
    one = _run(tmp_path, 1, [[90.0, 0.0], [60.0, 40.0]], 0.1, compile=False)
    two = _run(tmp_path, 2, [[80.0, 0.0], [50.0, 50.0]], 0.05, compile=True)
    text = report_mod.report(report_mod.load(one), report_mod.load(two), None, ("a", "b"))
    assert "except speed switches that keep the math (compile: False vs True)" in text
