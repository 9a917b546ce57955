import math

import pytest
import torch
import torch.nn as nn

from jdcl_bench.jdcl.diffusion import EMA, GaussianDiffusion, ddim_timesteps


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion()


def test_schedule(diffusion):
    assert diffusion.num_timesteps == 1000
    assert diffusion.betas.shape == (1000,)
    assert diffusion.betas.dtype == torch.float32
    assert diffusion.betas[0].item() == pytest.approx(1e-3)
    assert diffusion.betas[-1].item() == pytest.approx(2e-2)
    # linear spacing
    torch.testing.assert_close(diffusion.betas[1] - diffusion.betas[0], torch.tensor(1.9e-2 / 999))
    ac = diffusion.alphas_cumprod
    assert ac[0].item() == pytest.approx(0.999)
    assert ac[1].item() == pytest.approx(0.999 * (1 - 1e-3 - 1.9e-2 / 999))
    # log abar_T = sum log(1 - beta); roughly exp(-sum beta) = exp(-10.5)
    assert ac[-1].item() == pytest.approx(math.exp(torch.log1p(-diffusion.betas.double()).sum().item()), rel=1e-4)
    assert (ac[1:] < ac[:-1]).all()


def test_ddim_timesteps():
    ts = ddim_timesteps(1000, 250)
    assert ts.tolist() == list(range(1, 998, 4))
    assert len(ts) == 250 and ts[0] == 1 and ts[1] == 5 and ts[-1] == 997
    assert ddim_timesteps(1000, 50).tolist() == list(range(1, 1000, 20))
    assert ddim_timesteps(1000, 500)[-1] == 999
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 1000)  # would need t = 1000


def test_ddim_schedule_ldm_convention(diffusion):
    rows = diffusion.ddim_schedule(250)
    ac = diffusion.alphas_cumprod_f64
    # noisiest first; each step's abar_prev is the next (less noisy) DDIM step's abar
    assert rows[0][0] == 997 and rows[-1][0] == 1
    assert rows[0][2] == pytest.approx(ac[993].item())
    # the last step goes to abar[0], not to 1 (LDM: alphas_prev = [abar[0]] + abar[ts[:-1]])
    assert rows[-1][1] == pytest.approx(ac[1].item()) and rows[-1][2] == pytest.approx(ac[0].item())
    assert all(sigma == 0 for *_, sigma in rows)
    assert all(s > 0 for *_, s in diffusion.ddim_schedule(250, eta=1.0))


def test_q_sample_statistics(diffusion):
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1), 0.7)
    for step in (0, 250, 999):
        t = torch.full((x0.shape[0],), step, dtype=torch.long)
        x_t = diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=g))
        ab = diffusion.alphas_cumprod[step].item()
        assert x_t.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=0.01)
        assert x_t.std().item() == pytest.approx(math.sqrt(1 - ab), rel=0.01)


def test_predict_x0_inverts_q_sample(diffusion):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(16, 3, 4, 4, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (16,), generator=g)
    x_t = diffusion.q_sample(x0, t, noise)
    torch.testing.assert_close(diffusion.predict_x0(x_t, t, noise), x0, rtol=1e-3, atol=1e-3)


def test_loss_and_sample_t_and_noise(diffusion):
    x0 = torch.randn(8, 3, 4, 4)
    x_t, t, noise = diffusion.sample_t_and_noise(x0, torch.Generator().manual_seed(1))
    assert t.dtype == torch.long and ((0 <= t) & (t < 1000)).all()
    torch.testing.assert_close(x_t, diffusion.q_sample(x0, t, noise))
    # same generator seed -> same draw, so the loss of an oracle that returns that noise is 0
    oracle = lambda x, tt: noise  # noqa: E731
    assert diffusion.loss(oracle, x0, generator=torch.Generator().manual_seed(1)).item() == 0.0
    zero = lambda x, tt: torch.zeros_like(x)  # noqa: E731
    loss = diffusion.loss(zero, x0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loss, noise.pow(2).mean())


def point_mass_eps(diffusion, x0_star):
    """Exact E[eps | x_t] when the data is the single point x0_star."""
    def eps(x, t):
        return (x - diffusion._at(diffusion.sqrt_alphas_cumprod, t, x) * x0_star) / diffusion._at(
            diffusion.sqrt_one_minus_alphas_cumprod, t, x)
    return eps


def test_ddim_point_mass_recovers_data(diffusion):
    g = torch.Generator().manual_seed(0)
    x0_star = torch.randn(1, 3, 8, 8, generator=g).clamp(-1, 1)
    eps_fn = point_mass_eps(diffusion, x0_star)
    noise = torch.randn(16, 3, 8, 8, generator=g)
    # the final x0-prediction is the data point, from any starting noise
    x0_hat = diffusion.ddim_sample(eps_fn, noise.shape, noise=noise, return_pred_x0=True)
    torch.testing.assert_close(x0_hat, x0_star.expand_as(x0_hat), rtol=1e-4, atol=1e-4)
    # LDM's sampler stops at the abar[0] noise level: with eta=0 and the exact eps, the eps that
    # explains the start x_997 = noise is kept along the whole trajectory, so the output is
    # q_sample(x0*, t=0, that eps)
    x = diffusion.ddim_sample(eps_fn, noise.shape, noise=noise, steps=50)
    ac = diffusion.alphas_cumprod_f64
    t_start = ddim_timesteps(1000, 50)[-1]
    e0 = (noise - ac[t_start].sqrt() * x0_star) / (1 - ac[t_start]).sqrt()
    expected = ac[0].sqrt() * x0_star + (1 - ac[0]).sqrt() * e0
    torch.testing.assert_close(x, expected.float(), rtol=1e-4, atol=1e-4)


def gaussian_ddim_std(diffusion, s, steps, eta=0.0):
    """Std of the DDIM output and of its last x0-prediction for data N(mu, s^2), starting from
    N(0, 1). With the exact eps each step is affine in x plus fresh noise:
    x_prev - m_prev = k (x - m) + sigma z, k = (sqrt(ap a) s^2 + sqrt((1-ap-sigma^2)(1-a))) / v."""
    var = 1.0
    for _, a, ap, sigma in diffusion.ddim_schedule(steps, eta):
        v = a * s * s + 1 - a
        var_x0 = var * (math.sqrt(a) * s * s / v) ** 2  # variance of E[x0 | x_t] along the way
        k = (math.sqrt(ap * a) * s * s + math.sqrt((1 - ap - sigma ** 2) * (1 - a))) / v
        var = k * k * var + sigma ** 2
    return math.sqrt(var), math.sqrt(var_x0)


def test_ddim_gaussian_data_matches_moments(diffusion):
    mu, s = 0.5, 0.3
    shape = (4096, 1, 4, 4)

    def eps_fn(x, t):  # exact E[eps | x_t] for data ~ N(mu, s^2 I)
        ab = diffusion._at(diffusion.alphas_cumprod, t, x)
        return (x - ab.sqrt() * mu) * (1 - ab).sqrt() / (ab * s * s + 1 - ab)

    ab0 = diffusion.alphas_cumprod_f64[0].item()
    for steps in (100, 250):
        g = torch.Generator().manual_seed(0)
        x0 = diffusion.ddim_sample(eps_fn, shape, steps=steps, generator=g, return_pred_x0=True)
        x = diffusion.ddim_sample(eps_fn, shape, steps=steps, generator=torch.Generator().manual_seed(0))
        std, std_x0 = gaussian_ddim_std(diffusion, s, steps)
        # the sampler does exactly the arithmetic the closed form predicts (up to sampling noise)
        assert x0.std().item() == pytest.approx(std_x0, rel=0.01)
        assert x.std().item() == pytest.approx(std, rel=0.01)
        # and the result approaches the data distribution (the default output at the abar[0]
        # level: N(sqrt(ab0) mu, ab0 s^2 + 1 - ab0)); deterministic DDIM undershoots the variance
        # a little, less with more steps (about 3.5% at 250 steps)
        assert x0.mean().item() == pytest.approx(mu, abs=0.01)
        assert x.mean().item() == pytest.approx(math.sqrt(ab0) * mu, abs=0.01)
        assert x0.std().item() == pytest.approx(s, rel=0.1)
    assert x0.std().item() == pytest.approx(s, rel=0.05)
    assert x.std().item() == pytest.approx(math.sqrt(ab0 * s * s + 1 - ab0), rel=0.05)
    # stochastic DDIM (eta=1): same check against the closed form (with only E[x0 | x_t], the
    # coarse ancestral steps undershoot the variance too)
    x = diffusion.ddim_sample(eps_fn, shape, eta=1.0, generator=torch.Generator().manual_seed(2))
    assert x.mean().item() == pytest.approx(math.sqrt(ab0) * mu, abs=0.01)
    assert x.std().item() == pytest.approx(gaussian_ddim_std(diffusion, s, 250, eta=1.0)[0], rel=0.01)
    assert x.std().item() == pytest.approx(math.sqrt(ab0 * s * s + 1 - ab0), rel=0.1)


def test_ddim_passes_model_kwargs_and_is_deterministic(diffusion):
    calls = []

    def eps_fn(x, t, scale):
        calls.append(t[0].item())
        return scale * x

    noise = torch.randn(2, 1, 2, 2)
    a = diffusion.ddim_sample(eps_fn, noise.shape, steps=10, noise=noise, model_kwargs={"scale": 0.1})
    b = diffusion.ddim_sample(eps_fn, noise.shape, steps=10, noise=noise, model_kwargs={"scale": 0.1})
    assert calls[:10] == list(range(901, 0, -100))
    torch.testing.assert_close(a, b)


def test_ema_warmup_arithmetic():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, decay=0.9999)
    # update 1: n=1, decay = min(0.9999, 2/11); shadow = d * 1 + (1 - d) * 3
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    d1 = 2 / 11
    expected = d1 * 1.0 + (1 - d1) * 3.0
    assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6)
    # update 2: n=2, decay = 3/12
    with torch.no_grad():
        model.weight.fill_(-1.0)
    ema.update(model)
    d2 = 3 / 12
    expected = d2 * expected + (1 - d2) * -1.0
    assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6)
    assert ema.num_updates == 2
    # far into training the cap applies
    ema.num_updates = 10**6
    assert ema.current_decay() == 0.9999
    # no warm-up: the plain decay from the first update
    ema2 = EMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema2.update(model)
    assert ema2.module.weight.item() == pytest.approx(0.9 * -1.0 + 0.1 * 1.0, rel=1e-6)


def test_ema_copy_to_and_state_round_trip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.99)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(8, 3))  # moves BN running stats
        ema.update(model)
    assert ema.module[1].num_batches_tracked.item() == 5  # integer buffers are copied

    state = ema.state_dict()
    fresh = EMA(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), decay=0.5)
    fresh.load_state_dict(state)
    assert fresh.num_updates == 5 and fresh.decay == 0.99
    for a, b in zip(fresh.module.state_dict().values(), ema.module.state_dict().values()):
        torch.testing.assert_close(a, b)
    # continuing from the loaded state gives the same result as never stopping
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    fresh.update(model)
    for a, b in zip(fresh.module.parameters(), ema.module.parameters()):
        torch.testing.assert_close(a, b)

    target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema.copy_to(target)
    for a, b in zip(target.state_dict().values(), ema.module.state_dict().values()):
        torch.testing.assert_close(a, b)
