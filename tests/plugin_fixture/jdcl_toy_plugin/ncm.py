"""Nearest class mean on raw pixels: a method written only against jdcl_bench's public API."""
from dataclasses import dataclass

import torch

from jdcl_bench.methods.base import Method


@dataclass
class NCMConfig:
    shrink: float = 0.0


class NearestClassMean(Method):
    name = "toy-ncm"
    description = "Toy plugin: nearest class mean on raw pixels"
    Config = NCMConfig
    presets = {"smoke": {}}

    def setup(self, info):
        super().setup(info)
        d = int(torch.tensor(info.image_shape).prod())
        self.sums = torch.zeros(info.num_classes, d)
        self.counts = torch.zeros(info.num_classes)

    def train_task(self, task):
        x = task.x.flatten(1).float().cpu()
        self.sums.index_add_(0, task.y.cpu(), x)
        self.counts.index_add_(0, task.y.cpu(), torch.ones(len(x)))
        self.ctx.tick()

    def predict(self, x):
        means = self.sums / self.counts.clamp(min=1)[:, None]
        d = torch.cdist(x.flatten(1).float().cpu(), means)
        d[:, self.counts == 0] = float("inf")
        return -d

    def state_dict(self):
        return {"sums": self.sums.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, s):
        self.sums, self.counts = s["sums"].clone(), s["counts"].clone()
