"""``finetune``: the lower bound. Train one classifier on each task in turn, nothing else."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import Method, ProtocolInfo, TaskData
from .classifier import ClassifierConfig, ClassifierTrainer


@dataclass
class FinetuneConfig:
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)


SMOKE = {"classifier.width": 8, "classifier.layers": (1, 1, 1, 1), "classifier.epochs": 2.0,
         "classifier.batch_size": 32}


class Finetune(Method):
    name = "finetune"
    display_name = "Fine-tune"
    bound = "lower"
    description = "Lower bound: fine-tune one ResNet-18 on each task in turn (labelled data only)"
    Config = FinetuneConfig
    # standard (the budget-matched table) is the paper's 50 epochs a task: a few GPU-minutes,
    # far inside the budget (one run of either counts in both tables: Method.same_presets)
    presets = {"fast": {"classifier.epochs": 15.0, "classifier.batch_size": 256, "classifier.lr": 0.2},
               "standard": {}, "smoke": SMOKE}
    supports_resume_in_task = True
    supports_distributed = True

    def setup(self, info: ProtocolInfo) -> None:
        super().setup(info)
        self.trainer = ClassifierTrainer(self.cfg.classifier, info.num_classes, info.image_shape[0], self.device,
                                         info.flip_p)

    def training_data(self, task: TaskData) -> tuple[torch.Tensor, torch.Tensor]:
        return task.x, task.y

    def begin_task(self, task: TaskData) -> None:
        x, _ = self.training_data(task)
        self.trainer.start(len(x))

    def train_task(self, task: TaskData) -> None:
        x, y = self.training_data(task)
        self.trainer.train(x, y, self.ctx)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.trainer.predict(x)

    def state_dict(self) -> dict:
        return {"trainer": self.trainer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state["trainer"])

    @classmethod
    def global_batch(cls, cfg: FinetuneConfig) -> int:
        return cfg.classifier.batch_size

    def budget(self) -> dict:
        return {"steps_last_task": self.trainer.total_steps, "images_seen": self.trainer.images_seen}
