"""JDCL's distillation terms (global stage), written out so they can be checked by hand.

Each replay sample i has one teacher T(i): the previous global model for old-class samples, the
current local model for new-class samples. Per-sample terms are combined by ``group_mean``:

- ``main`` (official main branch): 2 (n_new/B) mean_new + 2 (n_old/B) mean_old, which is simply
  2 x the plain batch mean;
- ``paper_branch``: mean_old + mean_new (each group weighted equally whatever its size).
"""
from __future__ import annotations

import torch


def group_mean(per_sample: torch.Tensor, is_old: torch.Tensor, weighting: str = "main") -> torch.Tensor:
    if weighting == "main":
        return 2 * per_sample.mean()
    if weighting == "paper_branch":
        terms = [per_sample[m].mean() for m in (is_old, ~is_old) if bool(m.any())]
        return torch.stack(terms).sum()
    raise ValueError(f"kd_weighting must be 'main' or 'paper_branch', got {weighting!r}")


def kd_diffusion(eps_student: torch.Tensor, eps_teacher: torch.Tensor, is_old: torch.Tensor,
                 weighting: str = "main") -> torch.Tensor:
    """MSE between the student's and the sample's teacher's eps on the same x_t, t (ground-truth eps unused)."""
    per_sample = (eps_student.float() - eps_teacher.float()).pow(2).flatten(1).mean(1)
    return group_mean(per_sample, is_old, weighting)


def kd_classifier(logits_student: torch.Tensor, logits_teacher: torch.Tensor, is_old: torch.Tensor,
                  weighting: str = "main") -> torch.Tensor:
    """Soft-target cross-entropy -sum_c p_T(c) log p_S(c), temperature 1, no T^2 factor."""
    p_t = logits_teacher.float().softmax(1)
    per_sample = -(p_t * logits_student.float().log_softmax(1)).sum(1)
    return group_mean(per_sample, is_old, weighting)
