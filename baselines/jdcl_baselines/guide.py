"""GUIDE (Cywiński et al., arXiv 2403.03938): DGR-diffusion whose replay sampler is guided by the
current classifier toward the classes of the current task, i.e. toward the decision boundary the
classifier is about to move (spec: baselines.md §2.2; docs/guide.md).

At every DDIM step of a replay sample of old class y, with x0_hat the sampler's x0-prediction,
logits = f(x0_hat) cut to the seen classes and c* the most likely *new-task* class,

    eps' = eps - s * sqrt(1 - abar_t) * grad_{x_t} log softmax(logits)[c*]

(back-propagated through the UNet). The label stays y. Stage 1 (the generator with self-replay)
is DGR's, so both methods share cached generators (generator_cache.GeneratorCache).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from jdcl_bench.fastpath import cuda_channels_last
from jdcl_bench.methods.base import TaskData

from .cond_diffusion import GuidedEps
from .dgr import DGR, DGRConfig, PRESETS as DGR_PRESETS


@dataclass
class GUIDEConfig(DGRConfig):
    guidance_scale: float = 0.5     # s; CIFAR-10/5 in GUIDE's README (C10/2: 0.2, C100/10: 1.0)


# the generator part of every preset must stay DGR's, or the two methods stop sharing generators
PRESETS = {name: dict(p) for name, p in DGR_PRESETS.items()}


def new_class_log_prob(logits: torch.Tensor, seen: torch.Tensor, new_pos: torch.Tensor) -> torch.Tensor:
    """log softmax over the seen classes, read at c* = argmax over the new-task logits.

    The softmax shares one normaliser, so argmax of the new-task logits is argmax of their
    log-probabilities and the value is their max; max routes the gradient to c* only.
    """
    logp = logits.float()[:, seen].log_softmax(1)
    return logp[:, new_pos].max(1).values


class GUIDE(DGR):
    name = "guide"
    display_name = "GUIDE"
    description = ("GUIDE: DGR-diffusion with classifier guidance of the replay sampler toward the "
                   "current task's classes")
    Config = GUIDEConfig
    presets = PRESETS

    def guidance_scale(self) -> float:
        return float(self.cfg.guidance_scale)

    def replay_eps(self, model, task: TaskData):
        if self.cfg.guidance_scale == 0:
            return model
        seen = torch.tensor(task.seen_classes, device=self.device)
        new_pos = torch.tensor([task.seen_classes.index(c) for c in task.classes], device=self.device)

        def log_prob(x0: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                logits = self.classifier(cuda_channels_last(x0))
            return new_class_log_prob(logits, seen, new_pos)

        return GuidedEps(model, self.gen.diffusion, log_prob, self.cfg.guidance_scale)
