import pytest
import torch
import torch.nn.functional as F

from jdcl_bench.jdcl.unet import JointUNet, UNetConfig, count_parameters


def unet_params(model: JointUNet) -> int:
    return count_parameters(model) - count_parameters(model.head)


def test_paper_config_matches_official_counts():
    # built on the meta device: shapes only, no memory, no init cost
    with torch.device("meta"):
        model = JointUNet(UNetConfig.paper(10))
        model100 = JointUNet(UNetConfig.paper(100))
    assert unet_params(model) == 52_542_979
    assert count_parameters(model.head) == 3_812_362
    assert count_parameters(model100.head) == 3_904_612
    assert model.feature_dim == UNetConfig.paper(10).feature_dim == 3712
    # encoder half (time MLP + conv_in + input blocks + middle), as counted on the official model
    enc = sum(count_parameters(m) for m in (model.time_embed, model.conv_in, model.input_blocks, model.middle_block))
    assert enc == 20_406_912


def test_paper_config_feature_maps():
    with torch.device("meta"):
        model = JointUNet(UNetConfig.paper(10))
        x = torch.empty(2, 3, 32, 32)
        h, hs = model._encode(x, model._emb(torch.zeros(2, dtype=torch.long)))
        feats = model.features(x, torch.zeros(2, dtype=torch.long))
    maps = hs + [h]
    assert len(maps) == 17  # conv_in, 12 ResBlocks, 3 Downsamples, middle
    assert [m.shape[1] for m in maps] == [128] * 5 + [256] * 12
    assert [m.shape[-1] for m in maps] == [32] * 4 + [16] * 4 + [8] * 4 + [4] * 5
    assert feats.shape == (2, 3712)


def test_attention_placement_paper():
    model_cfg = UNetConfig.paper(10)
    with torch.device("meta"):
        model = JointUNet(model_cfg)
    names = [n for n, m in model.named_modules() if type(m).__name__ == "AttentionBlock"]
    # 3 per attended encoder level (16x16, 8x8), 1 in the middle, 4 per attended decoder level
    assert sum(n.startswith("input_blocks") for n in names) == 6
    assert sum(n.startswith("middle_block") for n in names) == 1
    assert sum(n.startswith("output_blocks") for n in names) == 8


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("size", [8, 16, 32])
def test_smoke_shapes(in_channels, size):
    torch.manual_seed(0)
    cfg = UNetConfig.smoke(num_classes=5, image_size=size, in_channels=in_channels)
    model = JointUNet(cfg)
    x = torch.randn(8, in_channels, size, size)
    t = torch.randint(0, 1000, (8,))
    assert model(x, t).shape == x.shape
    assert model.features(x, t).shape == (8, model.feature_dim)
    assert model.classify(x).shape == (8, 5)
    eps, logits = model.forward_joint(x, t, x[:4])
    assert eps.shape == x.shape and logits.shape == (4, 5)


def test_forward_joint_equals_separate_passes():
    torch.manual_seed(0)
    model = JointUNet(UNetConfig.smoke(10, image_size=16)).eval()  # eval: no dropout noise
    _perturb_zero_init(model)
    x_t, x_cls = torch.randn(6, 3, 16, 16), torch.randn(3, 3, 16, 16)
    t = torch.randint(0, 1000, (6,))
    eps, logits = model.forward_joint(x_t, t, x_cls)
    torch.testing.assert_close(eps, model(x_t, t), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, model.classify(x_cls), rtol=1e-4, atol=1e-5)


def test_channels_last_matches():
    torch.manual_seed(0)
    model = JointUNet(UNetConfig.smoke(10, image_size=16)).eval()
    _perturb_zero_init(model)
    x = torch.randn(4, 3, 16, 16)
    t = torch.randint(0, 1000, (4,))
    ref = model(x, t)
    model_cl = model.to(memory_format=torch.channels_last)
    out = model_cl(x.contiguous(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def _perturb_zero_init(model):
    # zero-initialised output convs would make the decoder's gradients (and outputs) vanish at
    # init; give every all-zero weight small random values so the whole graph is exercised
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.05)


def test_joint_loss_reaches_every_parameter():
    torch.manual_seed(0)
    model = JointUNet(UNetConfig.smoke(10, image_size=16))
    _perturb_zero_init(model)
    x = torch.randn(4, 3, 16, 16)
    t = torch.randint(0, 1000, (4,))
    noise = torch.randn_like(x)
    eps, logits = model.forward_joint(x, t, x)
    loss = F.mse_loss(eps, noise) + F.cross_entropy(logits, torch.randint(0, 10, (4,)))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    # the decoder is trained by the diffusion term alone, the head by CE alone
    assert model.output_blocks[0][0].in_layers[2].weight.grad.abs().sum() > 0
    assert model.input_blocks[0][0].in_layers[2].weight.grad.abs().sum() > 0


def test_zero_init_makes_unet_output_zero():
    # the output conv is zero-initialised, so a fresh model predicts eps = 0 everywhere
    model = JointUNet(UNetConfig.smoke(10, image_size=8))
    x = torch.randn(2, 3, 8, 8)
    assert model(x, torch.tensor([0, 999])).abs().max() == 0


def test_group_norm_keeps_channels_last_and_matches_torch():
    from jdcl_bench.jdcl.unet import GroupNorm

    g = torch.Generator().manual_seed(0)
    gn = GroupNorm(8, 32)
    with torch.no_grad():
        gn.weight.copy_(torch.randn(32, generator=g))
        gn.bias.copy_(torch.randn(32, generator=g))
    x = (torch.randn(3, 32, 6, 5, generator=g) * 3 + 1).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    grad_out = torch.randn(3, 32, 6, 5, generator=g).contiguous(memory_format=torch.channels_last)
    y = gn(x)
    (dx, dw, db) = torch.autograd.grad(y, (x, gn.weight, gn.bias), grad_out)
    x_ref = x.detach().contiguous().requires_grad_(True)
    y_ref = F.group_norm(x_ref, 8, gn.weight, gn.bias, gn.eps)
    (dx_ref, dw_ref, db_ref) = torch.autograd.grad(y_ref, (x_ref, gn.weight, gn.bias), grad_out.contiguous())
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in ((dx, dx_ref), (dw, dw_ref), (db, db_ref)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # the point of it: output and input gradient stay channels_last
    assert not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last)
    assert not dx.is_contiguous() and dx.is_contiguous(memory_format=torch.channels_last)
    # NCHW inputs take torch's own kernel and stay NCHW
    assert gn(x.detach().contiguous()).is_contiguous()


def test_group_norm_layout_as_torch_compile_traces_it_on_cuda():
    # torch.compile plans layouts from fake tensors; on a (fake) CUDA device torch's group norm
    # reports an NCHW result for a channels_last input, ours keeps channels_last. No GPU needed.
    from torch._subclasses.fake_tensor import FakeTensorMode

    from jdcl_bench.kernels.layout import group_norm_channels_last

    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(2, 128, 8, 8, device="cuda").contiguous(memory_format=torch.channels_last)
        w, b = torch.empty(128, device="cuda"), torch.empty(128, device="cuda")
        native = torch.ops.aten.native_group_norm(x, w, b, 2, 128, 64, 32, 1e-5)[0]
        ours = F.silu(group_norm_channels_last(x, 32, w, b, 1e-5))
    assert native.is_contiguous()  # the mismatch the layout-keeping norm exists for
    assert ours.is_contiguous(memory_format=torch.channels_last) and not ours.is_contiguous()


def test_attention_token_form_matches_the_nchw_form_with_grads():
    from jdcl_bench.jdcl.unet import AttentionBlock

    torch.manual_seed(0)
    blk = AttentionBlock(64, 4)
    torch.nn.init.normal_(blk.proj.weight, 0, 0.05)  # zero-init would hide the output projection
    x = torch.randn(2, 64, 8, 8)
    x_nchw = x.clone().requires_grad_(True)
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    gy = torch.randn(2, 64, 8, 8)
    ref, out = blk(x_nchw), blk(x_cl)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    g_ref = torch.autograd.grad(ref, [x_nchw, blk.qkv.weight, blk.proj.weight], gy)
    g_out = torch.autograd.grad(out, [x_cl, blk.qkv.weight, blk.proj.weight], gy)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_group_norm_statistics_hold_for_a_large_mean():
    # the group's variance comes from per-channel ones: it must be as accurate as torch's kernel
    # where E[x^2] - E[x]^2 would cancel to nothing (mean 300, std 0.01: 1e-9 of E[x^2] in fp32)
    from jdcl_bench.kernels.layout import group_norm_channels_last

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 8, 8, generator=g, dtype=torch.float64) * 0.01 + 300.0
    truth = F.group_norm(x, 4, None, None, 1e-5)
    x32 = x.float()
    err_torch = (F.group_norm(x32, 4, None, None, 1e-5).double() - truth).abs().max()
    ours = group_norm_channels_last(x32.contiguous(memory_format=torch.channels_last), 4, None, None, 1e-5)
    err_ours = (ours.double() - truth).abs().max()
    assert err_ours <= 2 * err_torch + 1e-6, (err_ours, err_torch)


def test_forward_joint_gradients_keep_channels_last_and_match_nchw():
    # the encoder maps' gradients must come back channels_last (an NCHW gradient costs a copy of
    # every map before cuDNN's backward) and equal those of the NCHW model
    torch.manual_seed(0)
    model = JointUNet(UNetConfig.smoke(10, image_size=16)).eval()
    _perturb_zero_init(model)
    model_cl = JointUNet(UNetConfig.smoke(10, image_size=16)).eval()
    model_cl.load_state_dict(model.state_dict())
    model_cl = model_cl.to(memory_format=torch.channels_last)
    x_t, x_cls = torch.randn(6, 3, 16, 16), torch.randn(3, 3, 16, 16)
    t = torch.randint(0, 1000, (6,))
    layouts = []
    encode = model_cl._encode

    def watched(x, emb):
        h, hs = encode(x, emb)
        for m in hs + [h]:
            m.register_hook(lambda g: layouts.append(g.is_contiguous(memory_format=torch.channels_last)
                                                     and not g.is_contiguous()))
        return h, hs

    model_cl._encode = watched
    grads = []
    for m, xs in ((model, (x_t, x_cls)), (model_cl, [v.contiguous(memory_format=torch.channels_last) for v in (x_t, x_cls)])):
        eps, logits = m.forward_joint(xs[0], t, xs[1])
        (eps.pow(2).mean() + logits.logsumexp(1).mean()).backward()
        grads.append([p.grad for p in m.parameters()])
    assert len(layouts) == len(model_cl.input_blocks) + 2 and all(layouts)
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def _norm_act_reference(x, w, b, scale, shift, keep, groups, eps, keep_prob):
    n = F.group_norm(x, groups, w, b, eps)
    if scale is not None:
        n = n * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    out = F.silu(n)
    return out if keep is None else out * keep.double() / keep_prob


@pytest.mark.parametrize("film", [True, False])
def test_norm_act_matches_the_module_composition_with_grads(film):
    # the fused norm-FiLM-SiLU-dropout with its written-out backward against autograd through
    # torch's GroupNorm, in float64 (the function computes in fp32): output and every gradient
    from jdcl_bench.kernels.norm_act import _NormAct

    g = torch.Generator().manual_seed(3)
    B, C, H, W, G = 3, 8, 5, 4, 4
    x = (torch.randn(B, C, H, W, generator=g, dtype=torch.float64) * 2 + 1).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(C, generator=g, dtype=torch.float64), torch.randn(C, generator=g, dtype=torch.float64)
    scale = torch.randn(B, C, generator=g, dtype=torch.float64) if film else None
    shift = torch.randn(B, C, generator=g, dtype=torch.float64) if film else None
    keep = (torch.rand(B, C, H, W, generator=g) > 0.3) if film else None  # bool, as norm_act draws it
    inputs = [t.requires_grad_() for t in (x, w, b, scale, shift) if t is not None]
    ours = _NormAct.apply(x, w, b, scale, shift, keep, G, 1e-5, 0.7)
    ref = _norm_act_reference(x, w, b, scale, shift, keep, G, 1e-5, 0.7)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    for a, r in zip(torch.autograd.grad(ours, inputs, grad_out.float()), torch.autograd.grad(ref, inputs, grad_out)):
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-5 * r.abs().max().item())


def test_norm_act_holds_for_a_large_mean_and_drops_as_dropout():
    from jdcl_bench.jdcl.unet import GroupNorm
    from jdcl_bench.kernels.norm_act import norm_act

    g = torch.Generator().manual_seed(4)
    norm = GroupNorm(4, 16)
    # mean 300, std 0.01: the statistics must not cancel (truth: float64 arithmetic on the same
    # fp32 input; torch's fp32 kernel as the bar)
    x = (torch.randn(2, 16, 8, 8, generator=g) * 0.01 + 300.0)
    truth = F.silu(F.group_norm(x.double(), 4, norm.weight.double(), norm.bias.double(), norm.eps))
    err_torch = (F.silu(F.group_norm(x, 4, norm.weight, norm.bias, norm.eps)).double() - truth).abs().max()
    ours = norm_act(norm, x.contiguous(memory_format=torch.channels_last))
    assert (ours.double() - truth).abs().max() <= 2 * err_torch + 1e-6
    # training with p = 0.5: about half the values zeroed, the rest scaled by 2
    torch.manual_seed(0)
    dropped = norm_act(norm, x.contiguous(memory_format=torch.channels_last), dropout=0.5, training=True)
    zero = dropped == 0
    assert 0.4 < zero.float().mean() < 0.6
    torch.testing.assert_close(dropped[~zero], 2 * ours[~zero])


def test_resblock_fused_form_matches_the_modules_with_grads():
    from jdcl_bench.jdcl.unet import ResBlock

    torch.manual_seed(5)
    block = ResBlock(16, 32, 24, dropout=0.1).eval()
    for p in block.parameters():  # the zero-initialised output conv would hide the second half
        torch.nn.init.normal_(p, 0, 0.2)
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    emb = torch.randn(2, 24)
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    out_ref, out = block(x, emb), block(x_cl, emb)
    torch.testing.assert_close(out, out_ref, rtol=1e-4, atol=1e-5)
    g_ref = torch.autograd.grad(out_ref.pow(2).sum(), [x] + list(block.parameters()))
    g = torch.autograd.grad(out.pow(2).sum(), [x_cl] + list(block.parameters()))
    # absolute tolerance on the gradients' overall scale: the first conv's bias has an exactly zero
    # gradient here (32 groups of one channel: the second norm removes any per-channel constant)
    scale = max(r.abs().max().item() for r in g_ref)
    for a, r in zip(g, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-6 * scale)
    assert g[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("size", [(4, 4), (5, 3), (1, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_subpixel_upsample_equals_interpolate_then_conv(size, channels_last):
    from jdcl_bench.kernels.layout import upsample_conv

    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 6, *size, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(7, 6, 3, 3, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (x, w, b)]
    ours = upsample_conv(x, w, b)
    ref = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), w, b, padding=1)
    torch.testing.assert_close(ours, ref)
    assert ours.is_contiguous(memory_format=torch.channels_last if channels_last and size != (1, 1) else torch.contiguous_format)
    grad_out = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    for a, r in zip(torch.autograd.grad(ours, inputs, grad_out), torch.autograd.grad(ref, inputs, grad_out)):
        torch.testing.assert_close(a, r)


def test_decoder_concatenation_returns_channels_last_gradients():
    from jdcl_bench.kernels.layout import cat_channels

    a = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    b = torch.randn(2, 5, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = cat_channels(a, b)
    torch.testing.assert_close(y, torch.cat([a, b], dim=1))
    weights = torch.randn(y.shape)
    (y * weights).sum().backward()
    torch.testing.assert_close(a.grad, weights[:, :3])
    torch.testing.assert_close(b.grad, weights[:, 3:])
    for grad in (a.grad, b.grad):  # autograd's own cat backward gives strided channel slices
        assert grad.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous()
