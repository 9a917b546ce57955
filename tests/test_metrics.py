"""jdcl_bench.metrics: the task confusion that says where a task's errors went."""
import json
import math

import numpy as np
import torch
from click.testing import CliRunner

from jdcl_bench.cli import main
from jdcl_bench.metrics import per_task_accuracy, task_confusion
from jdcl_bench.results.show import render_show_text


def test_task_confusion_counts_each_seen_tasks_images_by_the_task_of_the_predicted_class():
    tasks = [[0, 1], [2, 3], [4, 5]]
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    # task 1: one right class, one wrong class of task 1 (the right task), two taken by task 2's classes;
    # task 2: three within task 2, one predicted as class 9, which no task holds
    pred = np.array([0, 1, 2, 3, 2, 3, 9, 2])
    out = task_confusion(pred, y, tasks, seen_tasks=2)
    assert out == [[50.0, 50.0, 0.0], [0.0, 75.0, 0.0]]  # task 2's row sums to 100 less class 9's share
    acc = per_task_accuracy(pred, y, tasks)
    assert out[0][0] >= acc[0] and out[1][1] >= acc[1]  # the right task counts more than the right class
    # a task without test images (a protocol evaluated on some classes only) gives NaN, not an error
    assert all(math.isnan(v) for v in task_confusion(pred, y, tasks, seen_tasks=3)[2])


def test_a_run_records_the_task_confusion_and_show_prints_it(tmp_path):
    args = ["run", "--protocol", "synthetic-t2", "--method", "finetune", "--preset", "smoke", "--device", "cpu",
            "--out", str(tmp_path)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    d = tmp_path / "runs/synthetic-t2/finetune/smoke/seed0"
    m = json.loads((d / "metrics.json").read_text())
    conf = m["task_confusion"]
    assert [len(c) for c in conf] == [1, 2]  # after task i: one row per seen task
    for after, rows in enumerate(conf):
        for j, row in enumerate(rows):
            assert len(row) == 2 and sum(row) == 100.0
            assert row[j] >= m["acc_matrix"][after][j]
    text = render_show_text(d)
    assert "Task confusion after task 2" in text and "→T2" in text


def test_a_run_resumed_from_a_checkpoint_without_it_marks_the_earlier_tasks_unknown(tmp_path):
    """Runs checkpointed before the field existed resume: their finished tasks get None, the
    tasks after them their matrix, and show prints the last one."""
    args = ["run", "--protocol", "synthetic-t2", "--method", "finetune", "--preset", "smoke", "--device", "cpu",
            "--out", str(tmp_path)]
    r = CliRunner().invoke(main, args + ["--time-limit", "0.01", "--stop-between-tasks"])
    assert r.exit_code == 0, r.output
    d = tmp_path / "runs/synthetic-t2/finetune/smoke/seed0"
    state = torch.load(d / "checkpoint.pt", weights_only=True)
    assert state["phase"] == "task_done" and state["task"] == 0
    del state["task_confusion"]
    torch.save(state, d / "checkpoint.pt")
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "resuming" in r.output, r.output
    conf = json.loads((d / "metrics.json").read_text())["task_confusion"]
    assert conf[0] is None and len(conf[1]) == 2
    assert "Task confusion after task 2" in render_show_text(d)
