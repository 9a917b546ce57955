"""GFR's losses (Liu et al., CVPR-W 2020), as the official code computes them; checked by the tests on
hand-computed values (baselines/tests/test_gfr.py)."""
from __future__ import annotations

import torch
from torch import nn


def feature_distillation(f: torch.Tensor, f_old: torch.Tensor) -> torch.Tensor:
    """Official ``torch.dist(F(x), F_old(x), 2)``: the Frobenius norm of the whole batch's difference
    (not squared, not averaged)."""
    return torch.linalg.vector_norm(f - f_old)


def replay_cross_entropy(ce_real: torch.Tensor, ce_generated: torch.Tensor, t_old: float) -> torch.Tensor:
    """[CE(real) + T_old * CE(generated)] / (T_old + 1): old tasks weigh by their count."""
    return (ce_real + t_old * ce_generated) / (t_old + 1)


def gradient_penalty(D: nn.Module, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor,
                     alpha: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: mean (||grad_x D(x, y)|| - 1)^2 at x = alpha real + (1 - alpha) fake."""
    x = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(D(x, y).sum(), x, create_graph=True)
    return ((g.norm(2, dim=1) - 1) ** 2).mean()


def critic_loss(real_score: torch.Tensor, fake_score: torch.Tensor, gp: torch.Tensor, lambda_gp: float) -> torch.Tensor:
    return -real_score.mean() + fake_score.mean() + lambda_gp * gp


def generator_loss(fake_score: torch.Tensor, replay: torch.Tensor | None = None,
                   replay_old: torch.Tensor | None = None, distill_weight: float = 0.0) -> torch.Tensor:
    """-E D(G(z, y), y) + weight * sum ||G(z, y_old) - G_old(z, y_old)||^2 (official sum-reduced MSE)."""
    loss = -fake_score.mean()
    if replay is not None:
        loss = loss + distill_weight * ((replay - replay_old) ** 2).sum()
    return loss
