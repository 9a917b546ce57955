"""Artefacts people look at, written into a run's ``artefacts/`` folder (public: plugins use it too)."""
from __future__ import annotations

import torch


def save_class_grid(ctx, name: str, x: torch.Tensor, y: torch.Tensor, per_class: int) -> None:
    """A PNG of uint8 images ``x`` with one row per class of ``y`` (in class order), ``per_class``
    images each, short rows padded with black. Nothing is written when ``y`` is empty."""
    from torchvision.utils import save_image

    rows = []
    for cl in sorted(set(y.tolist())):
        imgs = x[y == cl][:per_class]
        pad = torch.zeros((per_class - len(imgs), *imgs.shape[1:]), dtype=imgs.dtype, device=imgs.device)
        rows.append(torch.cat([imgs, pad]))
    if rows:
        save_image(torch.cat(rows).float().cpu() / 255, ctx.artefact_path(name), nrow=per_class, padding=1)
