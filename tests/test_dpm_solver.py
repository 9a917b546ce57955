"""DPM-Solver++(2M) (GaussianDiffusion.dpm_solver_sample): exact on a point mass, DDIM at first order,
second-order convergence on Gaussian data, and parity with diffusers' DPMSolverMultistepScheduler."""
import math

import numpy as np
import pytest
import torch

from jdcl_bench.jdcl.diffusion import SOLVER_SPACINGS, GaussianDiffusion, ddim_timesteps, solver_timesteps


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion()  # T = 1000, betas 1e-3 .. 2e-2: the schedule JDCL trains with


def gaussian_eps(diffusion, mu: float, s: float):
    """The exact eps-prediction E[eps | x_t] for data x0 ~ N(mu, s^2 I) (s = 0: the point mass mu)."""
    ac = diffusion.alphas_cumprod_f64

    def eps_fn(x, t):
        a, v = ac[t].sqrt().view(-1, *[1] * (x.dim() - 1)), (1 - ac[t]).view(-1, *[1] * (x.dim() - 1))
        return (v.sqrt() * (x.double() - a * mu) / (a * a * s * s + v)).to(x.dtype)

    return eps_fn


def toy_eps(x, t):
    """A smooth nonlinear eps-model (depends on x and t) for comparisons between samplers."""
    tt = (t.double() / 1000).view(-1, *[1] * (x.dim() - 1))
    return (0.6 * torch.sin(3 * x.double()) * tt + 0.4 * x.double() * (1 - tt) + 0.1 * tt).to(x.dtype)


def test_timestep_grids(diffusion):
    ac = diffusion.alphas_cumprod_f64
    assert solver_timesteps(ac, 10, "uniform").tolist() == ddim_timesteps(1000, 10).flip(0).tolist()
    assert solver_timesteps(ac, 10, "linspace").tolist() == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
    for steps in (5, 10, 25, 50, 250):
        ts = solver_timesteps(ac, steps, "logsnr")
        assert len(ts) == steps and ts[0] == 999 and ts[-1] == 0
        assert (ts[1:] < ts[:-1]).all()  # strictly decreasing: distinct timesteps
    with pytest.raises(ValueError, match="spacing"):
        solver_timesteps(ac, 10, "karras")


@pytest.mark.parametrize("steps", [2, 3, 5, 10])
@pytest.mark.parametrize("spacing", SOLVER_SPACINGS)
def test_point_mass_recovered_at_low_step_counts(diffusion, steps, spacing):
    """(a) Data = one point x0*: the exact eps makes every x0-prediction x0*, so the sample is x0*."""
    x0 = torch.linspace(-0.9, 0.9, 3 * 8 * 8).view(1, 3, 8, 8).repeat(4, 1, 1, 1)
    eps_fn = gaussian_eps(diffusion, x0.double(), 0.0)  # (x_t - sqrt(abar_t) x0*) / sqrt(1 - abar_t)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    out = diffusion.dpm_solver_sample(eps_fn, x0.shape, steps=steps, spacing=spacing, noise=noise)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("steps", [3, 10, 50])
def test_first_order_is_ddim_step_for_step(diffusion, steps, clip):
    """(b) DPM-Solver++ of order 1 on DDIM's timesteps is DDIM (eta = 0): the model sees the same x_t at
    the same t at every step, and the result is DDIM's last x0-prediction (clipped or not)."""
    seen = {"ddim": [], "dpm": []}

    def recording(key):
        def fn(x, t):
            seen[key].append((int(t[0]), x.clone()))
            return 3 * toy_eps(x, t)  # large enough that clipping bites
        return fn

    # float64 updates: the two write the same step differently, so float32 rounding differs (~1e-5)
    noise = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = diffusion.ddim_sample(recording("ddim"), noise.shape, steps=steps, noise=noise, return_pred_x0=True,
                                clip_denoised=clip, dtype=torch.float64)
    out = diffusion.dpm_solver_sample(recording("dpm"), noise.shape, steps=steps, order=1, spacing="uniform",
                                      noise=noise, clip_denoised=clip, dtype=torch.float64)
    assert [t for t, _ in seen["dpm"]] == [t for t, _ in seen["ddim"]]
    for (_, a), (_, b) in zip(seen["ddim"], seen["dpm"]):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    if clip:
        assert out.abs().max() <= 1


def test_second_order_converges_faster_than_ddim(diffusion):
    """(c) Gaussian data N(mu, s^2): the probability-flow ODE maps x_T to mu + s z exactly, z the
    standardised start (x_T - alpha_T mu) / sqrt(alpha_T^2 s^2 + sigma_T^2). DDIM's error falls about as
    1 / steps; DPM-Solver++(2M)'s (on its default log-SNR grid) as 1 / steps^2, and it is far smaller
    at every step count from 10 to 25."""
    mu, s = 0.3, 0.5
    eps_fn = gaussian_eps(diffusion, mu, s)
    ac = diffusion.alphas_cumprod_f64
    noise = torch.randn(2048, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def error(x, t0):
        a, v = ac[t0].sqrt(), 1 - ac[t0]
        exact = mu + s * (noise - a * mu) / (a * a * s * s + v).sqrt()
        return float((x.double() - exact).abs().mean())

    steps = [10, 15, 20, 25]
    ddim = [error(diffusion.ddim_sample(eps_fn, noise.shape, steps=n, noise=noise, return_pred_x0=True,
                                        dtype=torch.float64), int(ddim_timesteps(1000, n)[-1])) for n in steps]
    dpm = [error(diffusion.dpm_solver_sample(eps_fn, noise.shape, steps=n, noise=noise, dtype=torch.float64), 999)
           for n in steps]

    def slope(errs):  # -d log(error) / d log(steps) between 15 and 25 steps
        return math.log(errs[1] / errs[3]) / math.log(25 / 15)

    assert 0.6 < slope(ddim) < 1.2, ddim
    assert slope(dpm) > 1.7, dpm
    for n, e_ddim, e_dpm in zip(steps, ddim, dpm):
        assert e_dpm < e_ddim / 8, (n, e_ddim, e_dpm)
    # DPM-Solver++ at 10 steps beats DDIM at 50 here
    e50 = error(diffusion.ddim_sample(eps_fn, noise.shape, steps=50, noise=noise, return_pred_x0=True,
                                      dtype=torch.float64), int(ddim_timesteps(1000, 50)[-1]))
    assert dpm[0] < e50


def test_runs_in_the_callers_precision_and_passes_model_kwargs(diffusion):
    calls = []

    def fn(x, t, y=None):
        calls.append(y)
        return toy_eps(x, t).to(torch.bfloat16)  # as a model under autocast would

    out = diffusion.dpm_solver_sample(fn, (2, 1, 4, 4), steps=4, generator=torch.Generator().manual_seed(0),
                                      model_kwargs={"y": "label"})
    assert out.dtype == torch.float32 and out.shape == (2, 1, 4, 4) and torch.isfinite(out).all()
    assert calls == ["label"] * 4
    with pytest.raises(ValueError, match="order"):
        diffusion.dpm_solver_sample(fn, (2, 1, 4, 4), steps=4, order=3)


# ---- parity with diffusers (an optional test dependency) -----------------------------------------

@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2's copy keyword, inside diffusers
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("spacing,steps", [("linspace", 10), ("linspace", 25), ("uniform", 15), ("logsnr", 20)])
def test_parity_with_diffusers(diffusion, spacing, steps, clip):
    """The same model, noise and timesteps through diffusers' DPMSolverMultistepScheduler
    (dpmsolver++, order 2, midpoint, final sigma zero; thresholding with sample_max_value=1 is a clamp
    to [-1, 1]). diffusers' own "linspace" grid is used as is, the others are passed as custom timesteps."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=1e-3, beta_end=2e-2, beta_schedule="linear", solver_order=2,
        prediction_type="epsilon", algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
        final_sigmas_type="zero", timestep_spacing="linspace", thresholding=clip, sample_max_value=1.0)
    ts = solver_timesteps(diffusion.alphas_cumprod_f64, steps, spacing)
    if spacing == "linspace":
        sched.set_timesteps(steps)
    else:
        sched.set_timesteps(timesteps=ts.tolist())
    assert [int(t) for t in sched.timesteps] == ts.tolist()

    def model(x, t):  # a bounded, smooth, nonlinear eps-model
        tt = (t.double() / 1000).view(-1, 1, 1, 1)
        return (torch.tanh(x.double()) * (0.5 + 0.5 * tt) + 0.3 * torch.sin(2 * x.double()) * (1 - tt)).float()

    noise = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    x = noise.clone()
    for t in sched.timesteps:
        x = sched.step(model(x, torch.full((len(x),), int(t))), t, x).prev_sample
    ours = diffusion.dpm_solver_sample(model, noise.shape, steps=steps, spacing=spacing, noise=noise,
                                       clip_denoised=clip)
    # diffusers builds its schedule in float32, ours in float64: agreement to float32 precision
    np.testing.assert_allclose(ours.numpy(), x.numpy(), atol=1e-4, rtol=1e-5)
