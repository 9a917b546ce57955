"""JDCL's replay set: unconditional samples labelled by the sampling model's own classifier, kept
class-balanced by rejection, and topped up with flipped and cropped duplicates of the accepted ones
when a class stays short (the official fallback)."""
from __future__ import annotations

from typing import Callable

import torch

from .. import distributed as D
from ..data import augment as A
from ..methods.base import ProtocolInfo


def class_balanced(sample: Callable[[], tuple[torch.Tensor, torch.Tensor]], classes: list[int], quota: int,
                   max_sampled_factor: float, crop_scale: float, info: ProtocolInfo, rng: torch.Generator,
                   device: torch.device, advance: Callable[[int], None]):
    """``quota`` uint8 images for each class in ``classes``: (x, y, counts per class, images sampled).

    ``sample()`` gives one batch of (uint8 images, labels). Sampling stops when every class has its
    quota or after ``max_sampled_factor * quota * len(classes)`` images. Distributed: each rank samples
    its part of every batch with its own noise; the parts are gathered, so every rank then makes the
    same choices on the same images."""
    kept = {k: [] for k in classes}
    have = {k: 0 for k in classes}
    sampled, cap = 0, int(max_sampled_factor * quota * len(classes))
    while sampled < cap and min(have.values()) < quota:
        x, y = sample()
        x, y = D.all_gather_tensor(x), D.all_gather_tensor(y)
        sampled += len(x)
        before = sum(have.values())
        for k in classes:
            take = x[y == k][: quota - have[k]]
            if len(take):
                kept[k].append(take)
                have[k] += len(take)
        advance(sum(have.values()) - before)
    counts, xs, ys = {}, [], []
    for k in classes:
        got = torch.cat(kept[k]) if kept[k] else torch.empty((0, *info.image_shape), dtype=torch.uint8, device=device)
        accepted = len(got)
        if 0 < accepted < quota:  # official fallback: flipped/cropped duplicates of accepted samples
            idx = torch.randint(accepted, (quota - accepted,), generator=rng).to(device)
            dup = A.random_resized_crop(A.hflip(A.to_unit(got[idx]), rng, info.flip_p), rng, scale=(crop_scale, 1.0))
            got = torch.cat([got, (dup * 255).round().to(torch.uint8)])
        counts[int(k)] = {"accepted": int(accepted), "duplicated": int(len(got) - accepted)}
        xs.append(got)
        ys.append(torch.full((len(got),), int(k), device=device, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys), counts, sampled


def confident_labels(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """The classifier's labels, -1 (no class: never kept) where the label's probability is below
    ``threshold``. -1 rather than dropping the sample: every rank's batch keeps its size for the
    gather in :func:`class_balanced`."""
    y = logits.argmax(1)
    if threshold <= 0:
        return y
    return torch.where(logits.softmax(1).amax(1) >= threshold, y, torch.full_like(y, -1))
