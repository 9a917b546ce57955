"""triton_norm: the inference GroupNorm (+ FiLM) (+ SiLU) kernel the UNet uses for 8x8-32x32 maps
when sampling. On CPU the kernel runs under Triton's interpreter, which is chosen when the kernel
is defined, so each check runs in a fresh process with TRITON_INTERPRET=1."""
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")


def _interpreted(code: str) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def test_kernel_matches_the_norm_act_composition():
    _interpreted("""
        import torch, torch.nn.functional as F
        from jdcl_bench.kernels import triton_norm
        from jdcl_bench.jdcl.unet import GroupNorm
        from jdcl_bench.kernels.layout import group_norm_channels_last
        g = torch.Generator().manual_seed(0)
        # 8x8 (64-channel slices): 4 channels per group, 2 slices; one group per slice;
        # 16x16 (32-channel slices): 16 channels per group, 2 slices;
        # 32x32 (16-channel slices): 4 channels per group, 2 slices
        for B, C, G, H in ((2, 128, 32, 8), (2, 64, 1, 8), (3, 64, 4, 16), (2, 32, 8, 32)):
            n = GroupNorm(G, C)
            with torch.no_grad():
                n.weight.normal_(1, 0.3, generator=g), n.bias.normal_(0, 0.3, generator=g)
            # a large mean: the variance must not come from E[x^2] - E[x]^2
            x = (torch.randn(B, C, H, H, generator=g) * 2 + 50).contiguous(memory_format=torch.channels_last)
            xb = torch.randn(C, generator=g)
            sc, sh = torch.randn(B, C, generator=g) * 0.2, torch.randn(B, C, generator=g) * 0.2
            with torch.no_grad():
                y = triton_norm.norm_act(n, x, sc, sh, x_bias=xb)
                ref = F.silu(group_norm_channels_last(x + xb[:, None, None], G, n.weight, n.bias, n.eps)
                             * (1 + sc[:, :, None, None]) + sh[:, :, None, None])
                assert y.is_contiguous(memory_format=torch.channels_last) and y.dtype == x.dtype
                assert torch.allclose(y, ref, atol=2e-5, rtol=1e-5), (C, G, (y - ref).abs().max())
                y2 = triton_norm.norm_act(n, x, silu=False)  # no FiLM, no SiLU, no bias: the plain norm
                ref2 = F.group_norm(x.contiguous(), G, n.weight, n.bias, n.eps)
                assert torch.allclose(y2, ref2, atol=2e-5, rtol=1e-5), (C, G, (y2 - ref2).abs().max())
        torch.library.opcheck(triton_norm._norm_act_op, (x, n.weight.detach(), n.bias.detach(), sc, sh, xb, G, n.eps, True))
        # 4x4, and 12-channel groups (idle lanes): the compiled form's; a clear error, not a wrong result
        for C, G, H in ((64, 4, 4), (384, 32, 16), (384, 32, 32)):
            try:
                triton_norm.norm_act(GroupNorm(G, C), torch.randn(2, C, H, H).contiguous(memory_format=torch.channels_last))
            except ValueError as exc:
                assert "not supported" in str(exc), exc
            else:
                raise AssertionError(f"{C} channels in {G} groups at {H}x{H} were accepted")
    """)


def test_resblocks_take_the_kernel_only_for_inference_and_match_their_compiled_form():
    _interpreted("""
        import torch
        from jdcl_bench.kernels import FastPath, triton_norm
        from jdcl_bench.jdcl.unet import ResBlock
        g = torch.Generator().manual_seed(1)
        calls = []
        kernel = triton_norm.norm_act
        def counted(norm, x, *args, **kw):
            calls.append(norm)
            return kernel(norm, x, *args, **kw)
        triton_norm.norm_act = counted
        def cl(t):
            return t.contiguous(memory_format=torch.channels_last)
        # a 1x1 skip convolution reads x anyway: both norms here; an identity skip: x is a residual
        # sum the compiler would rather not write out, so only the second norm; 96 channels in 32
        # groups do not fit the kernel's slices at 16x16: the second norm alone again
        for c_in, c_out, expected in ((64, 128, 2), (128, 128, 1), (96, 128, 1)):
            blk = ResBlock(c_in, c_out, 32, dropout=0.1).eval()
            with torch.no_grad():
                for p in blk.parameters():
                    p.normal_(0, 0.1, generator=g)
            x, emb = cl(torch.randn(2, c_in, 16, 16, generator=g)), torch.randn(2, 32, generator=g)
            with torch.no_grad():
                calls.clear()
                ours = blk(x, emb)
                assert len(calls) == expected, (c_in, c_out, len(calls))
                blk.fast = FastPath(triton_norm=False)
                ref = blk(x, emb)
            assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4), (c_in, (ours - ref).abs().max())
            blk.fast = FastPath()
            n1 = blk.in_layers[0]
            assert not triton_norm.usable(blk, n1, x)  # grad enabled: training keeps norm_act's backward
            with torch.no_grad():
                assert not triton_norm.usable(blk.train(), n1, x)  # dropout is the composition's
                blk.eval()
                assert not triton_norm.usable(blk, n1, cl(torch.randn(2, c_in, 4, 4)))  # 4x4: inductor's
                assert not triton_norm.usable(blk, n1, torch.randn(2, c_in, 16, 16))  # NCHW
    """)


def test_unet_eps_is_the_same_with_and_without_the_kernel():
    _interpreted("""
        import torch
        from jdcl_bench.kernels import triton_norm
        from jdcl_bench.kernels import FastPath
        from jdcl_bench.jdcl.unet import JointUNet, UNetConfig, apply_fast_path
        calls = []
        kernel = triton_norm.norm_act
        triton_norm.norm_act = lambda norm, x, *a, **kw: calls.append(x.shape) or kernel(norm, x, *a, **kw)
        torch.manual_seed(0)
        model = JointUNet(UNetConfig.smoke()).eval().to(memory_format=torch.channels_last)
        with torch.no_grad():
            for p in model.parameters():  # the zero-initialised output convolutions too
                p.add_(torch.randn_like(p) * 0.05)
            x = torch.randn(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
            t = torch.tensor([10, 500, 990])
            ours = model(x, t)
            # both levels; the 48-channel decoder blocks (3-channel groups) stay compiled
            assert {s[2] for s in calls} == {16, 32}, calls
            assert all(s[1] != 48 for s in calls), calls
            apply_fast_path(model, FastPath(triton_norm=False))
            ref = model(x, t)
        assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4), (ours - ref).abs().max()
    """)


def test_no_kernel_path_on_cpu_without_the_interpreter(monkeypatch):
    import torch

    from jdcl_bench.kernels import triton_norm
    from jdcl_bench.jdcl.unet import ResBlock

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    blk = ResBlock(64, 64, 32, dropout=0.0).eval()
    x = torch.randn(2, 64, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert not triton_norm.usable(blk, blk.in_layers[0], x)
