"""The cache of trained class-conditional generators shared by the methods of one results folder
(DGR and GUIDE train the same generators: each G_k is trained once)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from jdcl_bench.methods.base import ProtocolInfo, TaskData
from jdcl_bench.records import RunLocked, atomic_torch_save, run_lock, safe_name

from .cond_diffusion import CACHE_FORMAT, GeneratorConfig, to_cpu


def data_fingerprint(task: TaskData, parent: str = "") -> str:
    """A hash of what stage 1 of this task reads (its images, their labels, its classes) chained
    with the parent generator's fingerprint: a cached G_k is only reused for the very same data."""
    h = hashlib.sha256(f"{parent}|{task.index}|{task.classes}|{task.seen_classes}".encode())
    for t in (task.x, task.y, task.unlabelled_x):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


class GeneratorCache:
    """``<shared>/<protocol>/<hash of generator config + seed>/task{k}.pt``, written atomically.

    A process training a generator holds the folder's lock; another one that wants the same file
    waits for the lock and then loads what the first one wrote, so a pair of methods started at
    the same time still trains each generator once.
    """

    def __init__(self, shared: Path, protocol: str, key: dict, poll_s: float = 10.0):
        self.key = json.dumps({**key, "format": CACHE_FORMAT}, sort_keys=True, default=str)
        digest = hashlib.sha256(self.key.encode()).hexdigest()[:16]
        self.folder = Path(shared) / safe_name(protocol) / digest
        self.poll_s = poll_s

    @staticmethod
    def key_for(cfg: GeneratorConfig, seed: int, info: ProtocolInfo, device: torch.device, amp: bool) -> dict:
        return {"generator": asdict(cfg), "seed": seed, "num_classes": info.num_classes,
                "image_shape": list(info.image_shape), "task_classes": info.task_classes,
                "semi": info.semi_supervised, "device": device.type, "amp": amp}

    def path(self, task_index: int) -> Path:
        return self.folder / f"task{task_index + 1}.pt"

    def load(self, task_index: int, fingerprint: str, device: torch.device) -> dict | None:
        p = self.path(task_index)
        if not p.exists():
            return None
        obj = torch.load(p, map_location=device, weights_only=True)
        if obj.get("key") != self.key or obj.get("fingerprint") != fingerprint:
            return None  # another config or other data behind the same name: never reuse it
        return obj["generator"]

    def save(self, task_index: int, generator: dict, fingerprint: str) -> None:
        atomic_torch_save({"key": self.key, "fingerprint": fingerprint, "generator": to_cpu(generator)},
                          self.path(task_index))

    @contextlib.contextmanager
    def claim(self, ctx):
        """Hold the folder's lock (waiting while another process holds it)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            waited = False
            while True:
                try:
                    stack.enter_context(run_lock(self.folder))
                    break
                except RunLocked:
                    if not waited:
                        ctx.info(f"another run is training the generator in {self.folder}; waiting for it")
                        waited = True
                    time.sleep(self.poll_s)
            yield
