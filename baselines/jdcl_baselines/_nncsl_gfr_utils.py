"""Small helpers shared by the NNCSL and GFR baselines.

* batched colour augmentations that ``jdcl_bench.data.augment`` does not offer (SimCLR-style colour
  jitter, solarize, equalize), written in the same style: one (B, k) matrix of uniforms drawn on
  the CPU from the run's generator, then pure tensor ops on whatever device the images live on;
* index sampling from the run's generator;
* bf16 autocast / channels_last switches;
* PAWS' SGD wrapped in LARS (NNCSL's optimiser).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


# ---- randomness ------------------------------------------------------------------------------

def uniforms(n: int, k: int, gen: torch.Generator, device) -> torch.Tensor:
    """(n, k) float32 uniforms in [0, 1) drawn on the CPU from ``gen`` (row i belongs to sample i)."""
    return torch.rand(n, k, generator=gen).to(device)


def sample_indices(n: int, k: int, gen: torch.Generator, device) -> torch.Tensor:
    """``k`` indices into range(n): without replacement when the pool is large enough."""
    if n <= 0:
        raise ValueError("cannot sample from an empty pool")
    if n >= k:
        return torch.randperm(n, generator=gen)[:k].to(device)
    return torch.randint(n, (k,), generator=gen).to(device)


# ---- colour augmentations ---------------------------------------------------------------------

def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_FROM_YIQ = torch.linalg.inv(_TO_YIQ)


def _hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the chroma plane of YIQ by ``shift`` turns (a cheap, batched stand-in for the HSV hue
    shift of torchvision's ColorJitter; identical on greys)."""
    yiq = torch.einsum("ij,bjhw->bihw", _TO_YIQ.to(x.device, x.dtype), x)
    a = (2 * math.pi * shift).view(-1, 1, 1)
    cos, sin = torch.cos(a), torch.sin(a)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
    return torch.einsum("ij,bjhw->bihw", _FROM_YIQ.to(x.device, x.dtype), yiq).clamp(0, 1)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel on 256 levels (cdf remapping)."""
    b, c, h, w = x.shape
    q = (x * 255).round().long().clamp_(0, 255).reshape(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device).scatter_add_(1, q, torch.ones_like(q, dtype=torch.float))
    cdf = hist.cumsum(1)
    cdf_min = torch.where(hist > 0, cdf, torch.full_like(cdf, float(h * w))).amin(1, keepdim=True)
    lut = ((cdf - cdf_min) / (h * w - cdf_min).clamp(min=1)).clamp(0, 1)
    flat = (h * w - cdf_min) <= 0  # a constant channel stays as it is
    out = torch.where(flat, q.float() / 255, lut.gather(1, q))
    return out.view(b, c, h, w).to(x.dtype)


def color_distort(x: torch.Tensor, gen: torch.Generator, strength: float = 0.5, p_jitter: float = 0.8,
                  p_solarize: float = 0.2, p_equalize: float = 0.2) -> torch.Tensor:
    """PAWS' CIFAR colour pipeline: ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) with probability ``p_jitter``
    (brightness, contrast, saturation, hue in that fixed order), then Solarize and Equalize, each
    with its own probability. ``x``: float (B, C, H, W) in [0, 1]; one-channel images skip the
    saturation and hue jitters, which are the identity on greys anyway."""
    b = x.shape[0]
    u = uniforms(b, 7, gen, x.device)
    s = 0.8 * strength
    view = (-1, 1, 1, 1)
    jitter = (u[:, 0] < p_jitter).view(view)
    bright = (1 + s * (2 * u[:, 1] - 1)).view(view)
    contrast = (1 + s * (2 * u[:, 2] - 1)).view(view)
    sat = (1 + s * (2 * u[:, 3] - 1)).view(view)
    hue = 0.2 * strength * (2 * u[:, 4] - 1)
    y = (x * bright).clamp(0, 1)
    m = _grey(y).mean(dim=(1, 2, 3), keepdim=True)
    y = ((y - m) * contrast + m).clamp(0, 1)
    if x.shape[1] == 3:
        g = _grey(y)
        y = ((y - g) * sat + g).clamp(0, 1)
        y = _hue_shift(y, hue)
    x = torch.where(jitter, y, x)
    x = torch.where((u[:, 5] < p_solarize).view(view), torch.where(x >= 0.5, 1 - x, x), x)
    return torch.where((u[:, 6] < p_equalize).view(view), equalize(x), x)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


# ---- devices ------------------------------------------------------------------------------------

def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA; a no-op elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def to_model_layout(x: torch.Tensor) -> torch.Tensor:
    """channels_last on CUDA (the convolutions' fast path there), unchanged on CPU."""
    return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x


def unseen_mask(num_classes: int, seen: list[int], device) -> torch.Tensor:
    """True for the classes no task has introduced yet."""
    mask = torch.ones(num_classes, dtype=torch.bool, device=device)
    if seen:
        mask[torch.tensor(seen, device=device)] = False
    return mask


# ---- optimiser ------------------------------------------------------------------------------------

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
