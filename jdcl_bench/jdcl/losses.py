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


def teacher_targets(teachers: dict, is_old: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                    x_cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's teacher's (eps, logits): ``teachers["old"]`` for old-class samples, ``["new"]`` else.
    Each teacher sees the whole batch and the mask picks its samples (fixed shapes). Both teachers
    replay one compiled graph; under CUDA graphs (compile_mode=reduce-overhead) the second call
    reuses the first's output memory, so the first's outputs are copied (a few MB)."""
    eps_o, log_o = (v.clone() for v in teachers["old"](x_t, t, x_cls))
    eps_n, log_n = teachers["new"](x_t, t, x_cls)
    return (torch.where(is_old.view(-1, 1, 1, 1), eps_o, eps_n),
            torch.where(is_old.view(-1, 1), log_o, log_n))


def fixmatch(logits: torch.Tensor, n_labelled: int, n_unlabelled: int, y: torch.Tensor,
             threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FixMatch's two terms on logits of [labelled | weak unlabelled | strong unlabelled] views:
    cross-entropy on the labels, and cross-entropy of the strong view against the weak view's
    confident argmax (mean over all unlabelled samples, masked below ``threshold``); and the mask."""
    nl, nu = n_labelled, n_unlabelled
    lab, weak, strong = logits[:nl], logits[nl:nl + nu], logits[nl + nu:]
    conf, pseudo = weak.detach().softmax(1).max(1)
    mask = (conf >= threshold).float()
    l_unsup = (torch.nn.functional.cross_entropy(strong, pseudo, reduction="none") * mask).mean()
    return torch.nn.functional.cross_entropy(lab, y), l_unsup, mask


def fixmatch_forward(fwd, weak, autocast, x_t: torch.Tensor, t: torch.Tensor, wl: torch.Tensor,
                     wu: torch.Tensor, su: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The semi-supervised local step's model work: (eps on ``x_t`` at ``t``, float logits on the
    labelled weak, unlabelled weak and unlabelled strong views in [-1, 1], in ``fixmatch``'s order).

    FixMatch uses the weak unlabelled views only through their detached confident argmax, so they
    pass the classifier (``weak``: its own compiled call) without gradients; the joint forward
    ``fwd`` takes the rest. The UNet normalises per sample (GroupNorm, no BatchNorm), so the logits
    are those one joint pass over all three views gives, and the backward skips the encoder's work
    on about a third of the images it saw before (448 of 1408 at `fast`'s batch)."""
    with torch.no_grad(), autocast():
        weak_logits = weak(wu).float()  # a copy, outside a CUDA graph's reused output memory
    with autocast():
        eps, logits = fwd(x_t, t, torch.cat([wl, su]))
    logits, nl = logits.float(), len(wl)
    return eps, torch.cat([logits[:nl], weak_logits, logits[nl:]])
