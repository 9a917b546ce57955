"""``joint`` ("Continual Joint"): the upper bound. At each task, train on all labelled data seen so far.

The model continues from the previous task's weights; the buffer holds every labelled image seen
(so this method ``stores_buffer``). On semi-supervised protocols it uses the labelled images only.
"""
from __future__ import annotations

import torch

from .base import TaskData
from .finetune import Finetune


class Joint(Finetune):
    name = "joint"
    display_name = "Joint"
    bound = "upper"
    description = "Upper bound: train on all labelled data seen so far at every task"
    stores_buffer = True

    def setup(self, info) -> None:
        super().setup(info)
        self.buf_x = torch.empty((0, *info.image_shape), dtype=torch.uint8, device=self.device)
        self.buf_y = torch.empty((0,), dtype=torch.long, device=self.device)

    def training_data(self, task: TaskData) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([self.buf_x, task.x]), torch.cat([self.buf_y, task.y])

    def end_task(self, task: TaskData) -> None:
        self.buf_x, self.buf_y = self.training_data(task)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "buf_x": self.buf_x.cpu(), "buf_y": self.buf_y.cpu()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.buf_x, self.buf_y = state["buf_x"].to(self.device), state["buf_y"].to(self.device)
