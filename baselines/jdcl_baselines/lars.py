"""NNCSL's optimiser and schedule as PAWS writes them: SGD wrapped in LARS, warm-up then cosine."""
from __future__ import annotations

import math

import torch


class LARSSGD(torch.optim.Optimizer):
    """SGD as PAWS writes it, wrapped in LARS.

    Per parameter: d = g + wd * w; for LARS groups d is scaled by the trust ratio
    ``trust * |w| / (|g| + wd * |w| + eps)`` (1 when |w| or |g| is 0); then the learning rate
    multiplies d *before* the momentum buffer (buf = momentum * buf + lr * d; w -= buf), so an lr
    change acts on new gradients only. Groups take ``lars`` (bool) and ``weight_decay``.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust: float = 0.001, eps: float = 1e-8):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, lars=True,
                                      trust=trust, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            wd, lr = group["weight_decay"], group["lr"]
            # torch's multi-tensor (foreach) kernels: a handful of launches per group instead of
            # several per parameter, and no host sync for the trust ratios
            if group["lars"]:
                pn = torch.stack(torch._foreach_norm(params)).float()
                gn = torch.stack(torch._foreach_norm(grads)).float()
                ratio = group["trust"] * pn / (gn + wd * pn + group["eps"])
                scale = torch.where((pn > 0) & (gn > 0), ratio, torch.ones_like(ratio)) * lr
            else:
                scale = torch.full((len(params),), lr, device=params[0].device)
            d = torch._foreach_add(grads, params, alpha=wd) if wd else torch._foreach_mul(grads, 1.0)
            torch._foreach_mul_(d, list(scale.unbind()))
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, d)
            torch._foreach_sub_(params, bufs)


def warmup_cosine(step: int, total: int, warmup: int, start: float, ref: float, final: float) -> float:
    """PAWS' schedule: linear warm-up start -> ref over ``warmup`` steps, then cosine ref -> final."""
    if step < warmup:
        return start + (ref - start) * step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(final, final + (ref - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
