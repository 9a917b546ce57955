"""A plain supervised classifier trainer (SGD + cosine, weak augmentation) for simple methods.

``finetune`` and ``joint`` use it directly; baselines reuse it for their classifiers. Training is a
fixed number of steps, each drawing a random batch with ``ctx.rng`` and calling ``ctx.tick()``, so
a run can stop and resume inside a task.

Distributed (docs/distributed.md): ``batch_size`` is the global batch. Every rank draws and augments
the same global batch from ``ctx.rng`` and trains on its slice through DDP, so the step equals the
one-process step on the global batch (BatchNorm becomes SyncBatchNorm on CUDA; on CPU its batch
statistics stay per rank).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import distributed as D
from ..fastpath import to_device
from ..models import cifar_resnet
from .base import optimiser_step


@dataclass
class ClassifierConfig:
    width: int = 64
    layers: tuple[int, ...] = (2, 2, 2, 2)
    epochs: float = 50.0          # per task, counted over the task's training set
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True
    amp: bool = True              # bf16 autocast on CUDA

    def validate(self) -> dict[str, str]:
        """Values out of range, by field (jdcl_bench.config.validate reports them)."""
        bad = {}
        if self.width < 1:
            bad["width"] = "the network width must be >= 1"
        if not self.layers or any(n < 1 for n in self.layers):
            bad["layers"] = "needs at least one stage, each with >= 1 block, e.g. [2,2,2,2]"
        if not self.epochs > 0:
            bad["epochs"] = "must be > 0"
        if not self.lr > 0:
            bad["lr"] = "must be > 0"
        if not 0 <= self.momentum < 1:
            bad["momentum"] = "must be in [0, 1)"
        if self.weight_decay < 0:
            bad["weight_decay"] = "must be >= 0"
        return bad


class ClassifierTrainer:
    def __init__(self, cfg: ClassifierConfig, num_classes: int, in_chans: int, device: torch.device,
                 flip_p: float = 0.5):
        self.cfg = cfg
        self.flip_p = flip_p  # the protocol's (ProtocolInfo.flip_p): 0 where mirroring changes the class
        self.device = device
        self.model = cifar_resnet(num_classes, in_chans, cfg.width, cfg.layers).to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model = D.convert_sync_batchnorm(D.sync_params(self.model))
        self.net = D.wrap_ddp(self.model)  # what training calls; predict and checkpoints use the plain model
        self.step = 0
        self.total_steps = 0
        self.images_seen = 0
        self.opt = None

    def start(self, n: int) -> None:
        """New optimiser and schedule for a task of ``n`` training images."""
        c = self.cfg
        self.total_steps = max(1, math.ceil(c.epochs * n / c.batch_size))
        self.step = 0
        self.opt = torch.optim.SGD(self.model.parameters(), lr=c.lr, momentum=c.momentum,
                                   weight_decay=c.weight_decay, nesterov=True)

    def lr_at(self, step: int) -> float:
        return self.cfg.lr * 0.5 * (1 + math.cos(math.pi * step / self.total_steps))

    def train(self, x: torch.Tensor, y: torch.Tensor, ctx, description: str = "classifier") -> None:
        """Continue training on uint8 images ``x`` with labels ``y`` until the step budget is spent."""
        from ..data.augment import to_unit, weak_view

        self.model.train()
        with ctx.progress(description, self.total_steps - self.step):
            while self.step < self.total_steps:
                idx = to_device(torch.randint(len(x), (min(self.cfg.batch_size, len(x)),), generator=ctx.rng), x.device)
                xb = to_unit(x[idx])
                if self.cfg.augment:
                    xb = weak_view(xb, ctx.rng, self.flip_p)
                loss = self.loss(D.shard(xb) * 2 - 1, D.shard(y[idx]))  # this rank's slice (all of it in one process)
                optimiser_step(self.opt, loss, self.lr_at(self.step))
                self.step += 1
                self.images_seen += len(idx)
                ctx.log_step(self.step, loss)
                ctx.tick()

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        amp = self.cfg.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = self.net(x)
        return F.cross_entropy(logits.float(), y)

    @torch.no_grad()
    def predict(self, x_uint8: torch.Tensor) -> torch.Tensor:
        from ..models import normalise

        self.model.eval()
        amp = self.cfg.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
            return self.model(normalise(x_uint8)).float()

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict() if self.opt else None,
                "step": self.step, "total_steps": self.total_steps, "images_seen": self.images_seen}

    def load_state_dict(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        if s["opt"] is not None:
            self.start(1)  # builds the optimiser; its state and the counters are restored below
            self.opt.load_state_dict(s["opt"])
        self.step, self.total_steps, self.images_seen = s["step"], s["total_steps"], s["images_seen"]
