"""A protocol's tasks from a dataset: each task's labelled (and unlabelled) training images, and
the test set the run is scored on."""
from __future__ import annotations

import numpy as np
import torch

from .methods.base import TaskData
from .protocol import Protocol
from .splits import labelled_indices


def build_tasks(protocol: Protocol, ds, device: torch.device) -> tuple[list[TaskData], dict, list[list[int]]]:
    from .data.augment import images_to_tensor

    num_classes = len(ds.classes)
    task_classes = protocol.tasks(num_classes)
    lab_idx, split_info = labelled_indices(protocol, ds.train_y)
    is_lab = np.zeros(len(ds.train_y), bool)
    is_lab[lab_idx] = True
    x_all = images_to_tensor(ds.train_x)
    tasks, seen = [], []
    for k, classes in enumerate(task_classes):
        seen = seen + list(classes)
        in_task = np.isin(ds.train_y, classes)
        lab = np.flatnonzero(in_task & is_lab)
        unl = np.flatnonzero(in_task) if protocol.semi_supervised else np.array([], dtype=np.int64)
        tasks.append(TaskData(
            index=k, classes=list(classes), seen_classes=list(seen),
            x=x_all[torch.from_numpy(lab)].to(device), y=torch.from_numpy(ds.train_y[lab]).long().to(device),
            unlabelled_x=x_all[torch.from_numpy(unl)].to(device)))
    split_info["labelled_total"] = int(is_lab.sum())
    return tasks, split_info, task_classes


def test_set(ds, task_classes: list[list[int]]) -> tuple[torch.Tensor, np.ndarray, list[int] | None]:
    """(test images, labels, covered classes or None). Tasks that cover some of the dataset's
    classes make a benchmark of those classes: it is tested on their images only (no accuracy on
    classes no task trains), and ``covered`` lists them."""
    from .data.augment import images_to_tensor

    test_x, test_y = ds.test_x, np.asarray(ds.test_y)
    covered = sorted(c for t in task_classes for c in t)
    if len(covered) == len(ds.classes):
        return images_to_tensor(test_x), test_y, None
    keep = np.isin(test_y, covered)
    return images_to_tensor(test_x[keep]), test_y[keep], covered
