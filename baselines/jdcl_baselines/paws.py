"""PAWS' soft nearest-neighbour losses (Assran et al., ICCV 2021), on which NNCSL builds its loss and
its distillation; checked by the tests on hand-computed values (baselines/tests/test_nncsl.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def smoothed_one_hot(targets: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """PAWS' support labels: 1 - s + s/K on the true class, s/K elsewhere."""
    off = smoothing / num_classes
    out = torch.full((len(targets), num_classes), off, device=targets.device)
    return out.scatter_(1, targets.view(-1, 1), 1 - smoothing + off)


def snn(query: torch.Tensor, supports: torch.Tensor, support_labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Soft nearest neighbours: softmax over the supports of cos(query, support) / tau, times their labels."""
    q, s = F.normalize(query, dim=1), F.normalize(supports, dim=1)
    return F.softmax(q @ s.T / tau, dim=1) @ support_labels


def sharpen(p: torch.Tensor, T: float) -> torch.Tensor:
    p = p ** (1.0 / T)
    return p / p.sum(dim=1, keepdim=True)


def paws_targets(swapped_probs: torch.Tensor, num_multicrop: int, T: float) -> torch.Tensor:
    """Targets of the anchors [v1, v2, mc_1..mc_m] from the SNN predictions of [v2, v1]: sharpened;
    each multicrop gets the mean of the two global targets; entries below 1e-4 are zeroed."""
    t = sharpen(swapped_probs, T)
    if num_multicrop:
        b = len(t) // 2
        mc = 0.5 * (t[:b] + t[b:])
        t = torch.cat([t, mc.repeat(num_multicrop, 1)])
    return torch.where(t < 1e-4, torch.zeros_like(t), t)


def cross_entropy_soft(target: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """mean over rows of -sum target * log(probs) (PAWS' loss and NND's)."""
    return -(target * probs.log()).sum(dim=1).mean()


def memax(probs: torch.Tensor, T: float) -> torch.Tensor:
    """sum p_bar log p_bar of the batch-mean sharpened prediction (minimising it maximises the entropy)."""
    avg = sharpen(probs, T).mean(dim=0)
    return (avg * avg.log()).sum()
