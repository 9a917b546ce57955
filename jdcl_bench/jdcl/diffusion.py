"""Gaussian diffusion as JDCL uses it: DDPM training, deterministic DDIM sampling, EMA weights.

Conventions follow the official code (LDM at e544c57): T = 1000 steps, betas linear from 1e-3 to
2e-2 (LDM calls this "sqrt_linear"), epsilon prediction, plain MSE loss, and LDM's DDIM sampler
(uniform timesteps 1, 5, ..., 997 for 250 steps, x0-prediction not clipped).

Besides DDIM, a second-order multistep solver of the same probability-flow ODE for few-step
sampling: DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", Algorithm 2), ``dpm_solver_sample``.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

EpsFn = Callable[..., torch.Tensor]  # eps_fn(x_t, t, **model_kwargs) -> eps; an nn.Module works


def ddim_timesteps(T: int, steps: int) -> torch.Tensor:
    """LDM's "uniform" DDIM discretisation: every c-th step, shifted by one.

    For T=1000, steps=250 this is 1, 5, 9, ..., 997. When T % steps != 0, LDM's range() yields more
    than `steps` entries and the last one can be T itself (an IndexError there); we keep the first
    `steps`, which is identical whenever steps divides T.
    """
    c = T // steps
    if c < 2:  # c == 1 would ask for timestep T, which does not exist (LDM fails with an IndexError)
        raise ValueError(f"uniform DDIM needs steps <= T // 2, got steps={steps} for T={T}")
    return (torch.arange(0, T, c, dtype=torch.long) + 1)[:steps]


SOLVER_SPACINGS = ("uniform", "linspace", "logsnr")


def solver_timesteps(alphas_cumprod: torch.Tensor, steps: int, spacing: str = "uniform") -> torch.Tensor:
    """The timesteps a few-step solver evaluates the model at, noisiest first (``steps`` of them).

    - ``uniform``: LDM's DDIM grid (:func:`ddim_timesteps`, reversed: 901, 801, ..., 1 for 10 steps),
      so that a solver and DDIM at the same step count see the same timesteps;
    - ``linspace``: diffusers' default ``timestep_spacing="linspace"``: round(linspace(0, T-1, steps+1)),
      reversed, without the last (0): 999, 899, ..., 100 for 10 steps;
    - ``logsnr``: uniform in log-SNR lambda = log(sqrt(abar) / sqrt(1 - abar)) from t = T-1 to t = 0
      (both included), each point rounded to the timestep of nearest lambda, equal neighbours near
      t = 0 moved apart by one;

    ``uniform`` and ``logsnr`` end at t = 1 and t = 0, the least noisy levels; ``linspace`` ends at
    t ~ T / steps, so its final x0-prediction is made at a noise level that grows as steps shrink
    (sigma 0.42 at t = 100, for 10 steps).
    """
    T = len(alphas_cumprod)
    if steps < 1:
        raise ValueError(f"a solver needs steps >= 1, got {steps}")
    if spacing == "uniform":
        return ddim_timesteps(T, steps).flip(0)
    if spacing == "linspace":
        return torch.from_numpy(np.linspace(0, T - 1, steps + 1).round()[::-1][:-1].astype(np.int64))
    if spacing == "logsnr":
        lam = 0.5 * (alphas_cumprod.double().log() - (1 - alphas_cumprod.double()).log())  # decreasing in t
        targets = torch.linspace(float(lam[-1]), float(lam[0]), steps, dtype=torch.float64)
        ts = (lam.view(1, -1) - targets.view(-1, 1)).abs().argmin(1).tolist()
        # lambda falls steeply near t = 0: many steps round two targets to one timestep there; move the
        # noisier of two equal ones up by one (from the clean end), so the timesteps stay distinct
        for i in range(steps - 2, -1, -1):
            ts[i] = max(ts[i], ts[i + 1] + 1)
        if ts[0] > T - 1:
            raise ValueError(f"logsnr spacing: {steps} steps do not give distinct timesteps for T={T}")
        return torch.tensor(ts, dtype=torch.long)
    raise ValueError(f"unknown timestep spacing {spacing!r}; one of {', '.join(SOLVER_SPACINGS)}")


class GaussianDiffusion(nn.Module):
    """The noise schedule, q(x_t | x_0), the training loss and the samplers (DDIM, DPM-Solver++(2M)).

    A module only so that `.to(device)` moves the schedule; the buffers are not persistent because
    they are a pure function of the constructor arguments.
    """

    def __init__(self, timesteps: int = 1000, beta_start: float = 1e-3, beta_end: float = 2e-2):
        super().__init__()
        self.num_timesteps = timesteps
        # float64 for the cumulative product (1000 factors), float32 for use
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.alphas_cumprod_f64 = alphas_cumprod  # plain CPU tensor: the DDIM schedule is built from it
        for name, value in {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": alphas_cumprod.rsqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1.0).sqrt(),
        }.items():
            self.register_buffer(name, value.float(), persistent=False)

    @staticmethod
    def _at(a: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """a[t] shaped (B, 1, 1, ...) to broadcast against x."""
        return a[t].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))

    # --- forward process and training

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        return self._at(self.sqrt_alphas_cumprod, t, x0) * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert q_sample given the noise: x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return self._at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps

    def sample_t_and_noise(self, x0: torch.Tensor, generator: torch.Generator | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw t ~ U{0..T-1} (one per sample) and eps ~ N(0, I); returns (x_t, t, noise).

        Exposed separately from `loss` so that distillation can feed the same x_t / t to student
        and teachers.
        """
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        return self.q_sample(x0, t, noise), t, noise

    def loss(self, model: EpsFn, x0: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Simple DDPM loss: MSE(eps_hat(x_t, t), eps) averaged over all elements (fp32)."""
        x_t, t, noise = self.sample_t_and_noise(x0, generator)
        return F.mse_loss(model(x_t, t).float(), noise.float())

    # --- sampling

    def ddim_schedule(self, steps: int, eta: float = 0.0) -> list[tuple[int, float, float, float]]:
        """Per-step (t, abar_t, abar_prev, sigma), from the noisiest step down, as python floats.

        Exactly LDM's `make_ddim_sampling_parameters`: abar_prev of the first DDIM timestep is
        abar[0] (not 1), so the last update lands on the t=0 noise level, not on the clean x0.
        """
        ts = ddim_timesteps(self.num_timesteps, steps)
        ac = self.alphas_cumprod_f64
        a = ac[ts]
        a_prev = torch.cat([ac[:1], ac[ts[:-1]]])
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
        rows = list(zip(ts.tolist(), a.tolist(), a_prev.tolist(), sigma.tolist()))
        return rows[::-1]

    @torch.no_grad()
    def ddim_sample(self, model: EpsFn, shape: tuple[int, ...], *, steps: int = 250, eta: float = 0.0,
                    generator: torch.Generator | None = None, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32, noise: torch.Tensor | None = None,
                    model_kwargs: dict | None = None, return_pred_x0: bool = False,
                    clip_denoised: bool = False) -> torch.Tensor:
        """DDIM sampling (LDM's sampler). eta=0 is deterministic; x0-prediction is not clipped
        (unless `clip_denoised`).

        `model` is anything called as model(x_t, t, **model_kwargs) -> eps: a module, or a wrapper
        that swaps in EMA weights, autocasts or runs a compiled graph. The whole `shape` batch is
        sampled at once; the caller splits large requests. The update itself runs in `dtype`
        (fp32 by default) whatever precision the model computes in.

        Like LDM, the returned sample is the last x_prev, i.e. it sits at the abar[0] = 0.999 noise
        level (a residual of std ~0.03 in [-1, 1] units). `return_pred_x0=True` instead returns the
        last step's x0-prediction, the fully denoised image.

        `clip_denoised=True` clamps every x0-prediction to [-1, 1] and re-derives eps from it before
        the update (guided-diffusion's DDIM with `clip_denoised=True`); it keeps samples of briefly
        trained models from drifting out of range. Off by default (LDM's sampler does not clip).
        """
        model_kwargs = model_kwargs or {}
        device = device if device is not None else self.betas.device
        if noise is None:
            noise = torch.randn(shape, device=device, dtype=dtype, generator=generator)
        x = noise.to(device=device, dtype=dtype)
        pred_x0 = x
        for step, a_t, a_prev, sigma in self.ddim_schedule(steps, eta):
            t = torch.full((x.shape[0],), step, device=device, dtype=torch.long)
            eps = model(x, t, **model_kwargs).to(dtype)
            pred_x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
            if clip_denoised:
                pred_x0 = pred_x0.clamp(-1, 1)
                eps = (x - a_t ** 0.5 * pred_x0) / (1 - a_t) ** 0.5
            # deterministic part: re-noise the x0 estimate to level a_prev along the predicted eps
            x = a_prev ** 0.5 * pred_x0 + (1 - a_prev - sigma ** 2) ** 0.5 * eps
            if sigma > 0:  # python float: static control flow
                x = x + sigma * torch.randn(x.shape, device=device, dtype=dtype, generator=generator)
        return pred_x0 if return_pred_x0 else x

    @torch.no_grad()
    def dpm_solver_sample(self, model: EpsFn, shape: tuple[int, ...], *, steps: int = 20, order: int = 2,
                          spacing: str = "logsnr", generator: torch.Generator | None = None,
                          device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                          noise: torch.Tensor | None = None, model_kwargs: dict | None = None,
                          clip_denoised: bool = False, return_pred_x0: bool = True) -> torch.Tensor:
        """DPM-Solver++(2M): multistep, data prediction, second order; returns the final x0-prediction.

        Called like :meth:`ddim_sample` (``model(x_t, t, **model_kwargs) -> eps``, ``steps`` model
        evaluations, the update in ``dtype``). With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t),
        lambda_t = log(alpha_t / sigma_t), evaluation timesteps t_0 > t_1 > ... > t_{N-1}
        (:func:`solver_timesteps`) and D_i the x0-prediction at t_i, each step is

            x_{i+1} = (sigma_{i+1} / sigma_i) x_i + alpha_{i+1} (1 - exp(-h_i)) D,   h_i = lambda_{i+1} - lambda_i,

        with D = D_i for the first step (and for ``order=1``: exactly DDIM with eta = 0 on the same
        timesteps) and D = D_i + (D_i - D_{i-1}) / (2 r_i), r_i = h_{i-1} / h_i, afterwards (second
        order in h, from the previous step's x0-prediction: no extra model call). The last step goes
        to zero noise, where the formula gives D_{N-1}: the sample is the last x0-prediction (as
        ``ddim_sample(return_pred_x0=True)``). The last x and the last x0-prediction are therefore the
        same here: ``return_pred_x0`` is accepted for call compatibility with ``ddim_sample`` and
        changes nothing.

        ``clip_denoised=True`` clamps every x0-prediction to [-1, 1] before it is used (DDIM's
        ``clip_denoised``; diffusers' ``thresholding`` with ``sample_max_value=1`` does the same).
        ``spacing`` picks the timesteps (``uniform``: DDIM's grid; ``linspace``: diffusers' default;
        ``logsnr``: uniform in lambda). The default is ``logsnr``: on Gaussian data, where the exact
        ODE solution is known (tests/test_dpm_solver.py), 2M's mean error at 10 and 25 steps is 1.9x
        and 1.2x lower than DDIM's on DDIM's grid (whose last step spans much of lambda's range), 16x
        and 22x lower on the log-SNR grid. That is a property of the ODE, not a measure of image fidelity with a trained model
        (benchmarks/sampler_fidelity.py compares both on one).
        """
        if order not in (1, 2):
            raise ValueError(f"DPM-Solver++ order must be 1 or 2, got {order}")
        model_kwargs = model_kwargs or {}
        device = device if device is not None else self.betas.device
        ts = solver_timesteps(self.alphas_cumprod_f64, steps, spacing)
        abar = self.alphas_cumprod_f64[ts]
        # python floats (float64): static per-step coefficients
        alpha, sigma = abar.sqrt().tolist(), (1 - abar).sqrt().tolist()
        lam = [math.log(a / s) for a, s in zip(alpha, sigma)]
        if noise is None:
            noise = torch.randn(shape, device=device, dtype=dtype, generator=generator)
        x = noise.to(device=device, dtype=dtype)
        prev_x0, h_prev = None, None
        for i, step in enumerate(ts.tolist()):
            t = torch.full((x.shape[0],), step, device=device, dtype=torch.long)
            eps = model(x, t, **model_kwargs).to(dtype)
            x0 = (x - sigma[i] * eps) / alpha[i]
            if clip_denoised:
                x0 = x0.clamp(-1, 1)
            if i == len(ts) - 1:  # the step to zero noise: x = x0-prediction
                return x0
            h = lam[i + 1] - lam[i]
            d = x0
            if order == 2 and prev_x0 is not None:
                d = x0 + (x0 - prev_x0) * (h / (2 * h_prev))  # 1 / (2 r) = h / (2 h_prev)
            x = (sigma[i + 1] / sigma[i]) * x + (alpha[i + 1] * -math.expm1(-h)) * d
            prev_x0, h_prev = x0, h
        raise AssertionError("unreachable")


# -----------------------------------------------------------------------------
# exponential moving average of weights


def ema_decay_at(decay: float, warmup: bool, n: int) -> float:
    """The decay of the n-th update (n from 1): LDM's warm-up min(decay, (1+n)/(10+n)), or flat."""
    return min(decay, (1 + n) / (10 + n)) if warmup else decay


def ema_start_share(decay: float, warmup: bool, steps: int, start: int = 0) -> float:
    """How much of its starting weights an EMA still holds after ``steps`` updates from count ``start``:
    the product of the decays it applies."""
    share = 1.0
    for n in range(start + 1, start + steps + 1):
        share *= ema_decay_at(decay, warmup, n)
    return share


class EMA:
    """EMA of a module's weights, kept as a full fp32 copy of the module (`ema.module`).

    Same arithmetic as LDM's LitEma: each update first increments the counter n, then uses
    decay_n = min(decay, (1 + n) / (10 + n)) if warm-up is on, and moves
    shadow <- shadow + (1 - decay_n) * (param - shadow). Floating-point buffers are averaged the
    same way; integer buffers are copied. Keeping a whole module (rather than a dict of tensors)
    means evaluation and sampling just use `ema.module`, with one fused foreach op per update.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        # pass the plain module, not a torch.compile wrapper: it is deep-copied
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        ema_f, src_f, ema_i, src_i = [], [], [], []
        ema_t = list(self.module.parameters()) + list(self.module.buffers())
        src_t = list(model.parameters()) + list(model.buffers())
        assert len(ema_t) == len(src_t), "EMA module and model have different structures"
        for e, s in zip(ema_t, src_t):
            (ema_f if e.is_floating_point() else ema_i).append(e)
            (src_f if e.is_floating_point() else src_i).append(s.detach())
        return ema_f, src_f, ema_i, src_i

    def current_decay(self) -> float:
        """The decay the *next* update will use."""
        return ema_decay_at(self.decay, self.warmup, self.num_updates + 1)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.num_updates += 1
        ema_f, src_f, ema_i, src_i = self._pairs(model)
        src_f = [s if s.dtype == e.dtype else s.to(e.dtype) for e, s in zip(ema_f, src_f)]
        torch._foreach_lerp_(ema_f, src_f, 1.0 - decay)
        for e, s in zip(ema_i, src_i):
            e.copy_(s)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's weights with the EMA weights."""
        ema_f, src_f, ema_i, src_i = self._pairs(model)
        for e, s in zip(ema_f + ema_i, src_f + src_i):
            s.copy_(e)

    def to(self, *args, **kwargs) -> "EMA":
        self.module.to(*args, **kwargs)
        return self

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.warmup = state["warmup"]
        self.num_updates = state["num_updates"]
        self.module.load_state_dict(state["module"])


def global_ema(net: nn.Module, g_ema: dict, decay: float) -> EMA:
    """The global student's EMA: G_{k-1}'s EMA weights and update count, at ``decay`` with warm-up.

    Only weights and count are taken from ``g_ema``, not its decay and warm-up: in the semi-supervised
    chain G_1 is a local model whose EMA is FixMatch's (0.999, no warm-up), and inheriting that would
    make every later global stage 0.999 without warm-up (over the `fast` preset's 500 steps, 61 % of
    G_{k-1} would stay in the EMA). The recipe's decision (docs/jdcl.md): 0.9999 with the inherited count, as supervised."""
    ema = EMA(net, decay, warmup=True)
    ema.module.load_state_dict(g_ema["module"])
    ema.num_updates = g_ema["num_updates"]
    return ema
