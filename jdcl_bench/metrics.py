"""Continual-learning metrics, computed from per-task test accuracies.

Notation: after training task i (0-based, T tasks), ``acc[i][j]`` is top-1 accuracy (%) on the
test images of task j's classes, predicting over *all* classes of the protocol (class-incremental:
no task id at test time).

- final_acc: top-1 accuracy on the whole test set after the last task (unseen classes: none left).
- seen_acc[i]: top-1 accuracy on the test images of all classes seen up to task i.
- avg_acc: mean over tasks j of acc[T-1][j] (equals final_acc when tasks have equal test sizes).
- avg_inc_acc: mean over i of seen_acc[i] (Rebuffi et al.'s average incremental accuracy).
- forgetting: mean over j < T-1 of max_{i<T-1} acc[i][j] - acc[T-1][j] (Chaudhry et al. 2018),
  in percentage points; 0 for a single task.
- task_confusion[i][j][t]: % of task j's test images (j <= i) predicted as a class of task t after
  task i: where the errors behind acc[i][j] went (the newest task: recency bias).
"""
from __future__ import annotations

import numpy as np


def per_task_accuracy(pred: np.ndarray, y: np.ndarray, task_classes: list[list[int]]) -> list[float]:
    out = []
    for classes in task_classes:
        mask = np.isin(y, classes)
        out.append(float(100.0 * (pred[mask] == y[mask]).mean()) if mask.any() else float("nan"))
    return out


def seen_accuracy(pred: np.ndarray, y: np.ndarray, seen: list[int]) -> float:
    mask = np.isin(y, seen)
    return float(100.0 * (pred[mask] == y[mask]).mean())


def task_confusion(pred: np.ndarray, y: np.ndarray, task_classes: list[list[int]], seen_tasks: int) -> list[list[float]]:
    """Where each seen task's test images went: ``out[j][i]`` is the % of task j's test images
    (j < seen_tasks) predicted as one of task i's classes. The diagonal counts a right task, not a
    right class (it is at least ``acc[.][j]``); off it, the errors split by task: those in the newest
    task's column are recency bias, those in older ones are confusion among replayed classes. A
    row sums to 100 less the share predicted as classes outside every task."""
    owner = np.full(max([int(pred.max(initial=0))] + [c for cl in task_classes for c in cl]) + 1, -1)
    for i, classes in enumerate(task_classes):
        owner[classes] = i
    pred_task = owner[pred]
    out = []
    for j in range(seen_tasks):
        mask = np.isin(y, task_classes[j])
        n = int(mask.sum())
        out.append([float(100.0 * (pred_task[mask] == i).sum() / n) if n else float("nan")
                    for i in range(len(task_classes))])
    return out


def summarise(acc_matrix: list[list[float]], seen_acc: list[float], final_acc: float) -> dict:
    a = np.asarray(acc_matrix, dtype=float)
    t = len(a)
    last = a[-1, :t]
    forgetting = float(np.mean([a[:t - 1, j].max() - a[t - 1, j] for j in range(t - 1)])) if t > 1 else 0.0
    return {
        "final_acc": float(final_acc),
        "avg_acc": float(last.mean()),
        "avg_inc_acc": float(np.mean(seen_acc)),
        "forgetting": forgetting,
    }
