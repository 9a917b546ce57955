"""triton_conv: the 3x3 convolution with a fused epilogue (bias, residual, norm statistics) that the
UNet's ResBlocks use for inference. On CPU the kernel runs under Triton's interpreter, which is
chosen when the kernel is defined, so each check runs in a fresh process with TRITON_INTERPRET=1."""
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


def test_conv3x3_matches_conv2d_with_residual_and_channel_statistics():
    _interpreted("""
        import torch, torch.nn.functional as F
        from jdcl_bench.jdcl import triton_conv
        g = torch.Generator().manual_seed(0)
        # 16x16 maps: two 128-pixel tiles per sample, so the statistics combine tiles
        x = (torch.randn(2, 64, 16, 16, generator=g) + 3).contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(128, 64, 3, 3, generator=g) * 0.1, torch.randn(128, generator=g)
        r = torch.randn(2, 128, 16, 16, generator=g).contiguous(memory_format=torch.channels_last)
        y, tm, tm2 = triton_conv.conv3x3(x, w, b, residual=r, stats=True)
        ref = F.conv2d(x, w, b, padding=1) + r
        assert y.is_contiguous(memory_format=torch.channels_last), y.stride()
        assert torch.allclose(y, ref, atol=1e-4, rtol=1e-4), (y - ref).abs().max()
        assert tm.shape == (2, 2, 128), tm.shape
        mean, var = triton_conv.channel_stats(tm, tm2)
        var_ref, mean_ref = torch.var_mean(ref, dim=(2, 3), correction=0)
        assert torch.allclose(mean, mean_ref, atol=1e-5), (mean - mean_ref).abs().max()
        assert torch.allclose(var, var_ref, rtol=1e-5, atol=1e-5), (var - var_ref).abs().max()
        y2, tm, _ = triton_conv.conv3x3(x, w, b)  # no residual, no statistics
        assert torch.allclose(y2, F.conv2d(x, w, b, padding=1), atol=1e-4, rtol=1e-4)
        assert tm.numel() == 0
        torch.library.opcheck(triton_conv._conv3x3_op, (x, w, b, r, True))  # schema, fake tensors, strides
        try:
            triton_conv.conv3x3(x[:, :, :10, :10].contiguous(memory_format=torch.channels_last), w, b)
        except ValueError as exc:
            assert "not supported" in str(exc)
        else:
            raise AssertionError("a 10x10 map (100 pixels, not a whole tile) was accepted")
    """)


def test_resblock_inference_path_matches_the_module_composition():
    _interpreted("""
        import torch
        from jdcl_bench.jdcl.unet import ResBlock
        g = torch.Generator().manual_seed(1)
        for c_in, c_out in ((64, 128), (128, 128)):  # a 1x1 skip convolution, then the identity skip
            blk = ResBlock(c_in, c_out, 32, dropout=0.1).eval()
            with torch.no_grad():
                for p in blk.parameters():
                    p.normal_(0, 0.1, generator=g)
            x = torch.randn(2, c_in, 16, 16, generator=g).contiguous(memory_format=torch.channels_last)
            emb = torch.randn(2, 32, generator=g)
            with torch.no_grad():
                assert blk._infer_fits(x)
                ours = blk(x, emb)
                blk.triton_infer = False
                ref = blk(x, emb)
            assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4), (c_in, (ours - ref).abs().max())
            blk.triton_infer = True
            assert not blk._infer_fits(x)  # grad enabled: training keeps cuDNN and norm_act's backward
            with torch.no_grad():
                assert not blk.train()._infer_fits(x)  # train mode: dropout is the composition's
                assert not blk.eval()._infer_fits(x[:, :, :8, :8].contiguous(memory_format=torch.channels_last))
    """)


def test_no_triton_path_on_cpu_without_the_interpreter():
    import torch

    from jdcl_bench.jdcl import triton_conv
    from jdcl_bench.jdcl.unet import ResBlock

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process runs Triton's interpreter")
    x = torch.randn(1, 64, 16, 16).contiguous(memory_format=torch.channels_last)
    assert not triton_conv.available(x)
    with torch.no_grad():
        assert not ResBlock(64, 64, 32, 0.1).eval()._infer_fits(x)
