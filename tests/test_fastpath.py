"""jdcl_bench.fastpath: compile with a clean fallback to eager; backend switches only on CUDA."""
import pytest
import torch

from jdcl_bench.profiling import kernel_kind
from jdcl_bench.fastpath import maybe_compile, tune_backends, unet_memory_format


def _double(x):
    return 2 * x


def test_not_compiled_on_cpu_or_when_off():
    assert maybe_compile(_double, enabled=True, device="cpu") is _double
    assert maybe_compile(_double, enabled=False, device="cuda") is _double


def test_a_broken_compiler_falls_back_to_eager_once_and_says_why():
    calls, said = [], []

    def broken(fn, **_):
        def compiled(*a):
            calls.append(1)
            raise RuntimeError("no C compiler found\nmore detail")
        return compiled

    f = maybe_compile(_double, enabled=True, device="cpu", compiler=broken, info=said.append, name="the model")
    assert f(torch.tensor(2.0)) == 4.0 and f(torch.tensor(3.0)) == 6.0
    assert len(calls) == 1  # not retried after the first failure
    assert len(said) == 1 and "RuntimeError: no C compiler found" in said[0] and "eager" in said[0]


def test_a_working_compiler_is_used_and_modules_keep_their_attributes():
    used = []

    def fake(fn, **_):
        def compiled(*a):
            used.append(1)
            return fn(*a)
        return compiled

    lin = torch.nn.Linear(2, 2)
    f = maybe_compile(lin, enabled=True, device="cpu", compiler=fake)
    x = torch.ones(1, 2)
    assert torch.equal(f(x), lin(x)) and torch.equal(f(x), lin(x))
    assert len(used) == 2
    assert f.weight is lin.weight and f.training == lin.training


def test_backend_switches_leave_cpu_runs_alone():
    before = torch.backends.cudnn.benchmark
    tune_backends("cpu")
    assert torch.backends.cudnn.benchmark == before


def test_kernel_names_are_sorted_into_kinds():
    assert kernel_kind("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc") == "convolution"
    assert kernel_kind("sm90_xmma_wgrad_implicit_gemm_indexed_bf16") == "convolution"
    assert kernel_kind("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT") == "matmul"
    assert kernel_kind("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>") == "attention"
    # cuDNN's attention kernels carry "fprop" like its convolutions (seen in an H200 profile)
    assert kernel_kind("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64_4x1x1_cga1x1x1_kernel0_0") \
        == "attention"
    assert kernel_kind("_norm_act_kernel") == "triton (fused norm / element-wise)"
    assert kernel_kind("triton_red_fused_native_group_norm_silu_3") == "triton (fused norm / element-wise)"
    # inductor names fused kernels after what they absorbed: still Triton, not a convolution
    assert kernel_kind("triton_poi_fused__to_copy_add_convolution_mul_native_group_norm_silu_17") == \
        "triton (fused norm / element-wise)"
    assert kernel_kind("void at::native::elementwise_kernel<128, 4, direct_copy_kernel_cuda>") == "copy / layout"
    assert kernel_kind("void at::native::vectorized_elementwise_kernel<4, FillFunctor>") == "other"


def test_op_profile_reads_the_profiler_api_of_this_torch():
    from jdcl_bench.profiling import _top_ops

    x = torch.randn(64, 64)
    rows = _top_ops(lambda: (x @ x).sum(), torch.no_grad, 5)
    assert isinstance(rows, list)  # on CPU no op has GPU time; an API mismatch would return a string


def test_unet_is_channels_last_only_where_it_runs_compiled_on_cuda():
    # eager GroupNorm on CUDA converts channels_last activations back and forth (measured slower)
    assert unet_memory_format("cuda", compiled=True) is torch.channels_last
    assert unet_memory_format("cuda", compiled=False) is torch.contiguous_format
    assert unet_memory_format("cpu", compiled=True) is torch.contiguous_format


def test_jdcl_and_the_generators_build_their_unet_in_that_layout(monkeypatch):
    # pretend CPU were CUDA for the layout rule, so the wiring from each compile switch to the
    # weights' memory format is visible without a GPU
    import types

    import jdcl_baselines.cond_diffusion as cd
    import jdcl_bench.methods.jdcl as jm
    from jdcl_bench.bench import unet_config

    rule = lambda device, compiled: torch.channels_last if compiled else torch.contiguous_format
    monkeypatch.setattr(jm, "unet_memory_format", rule)
    monkeypatch.setattr(cd, "unet_memory_format", rule)
    cfg = unet_config("smoke")
    for compile in (True, False):
        jdcl = jm.JDCL.__new__(jm.JDCL)
        jdcl.cfg, jdcl.device, jdcl.unet_cfg = types.SimpleNamespace(compile=compile), torch.device("cpu"), cfg
        gen = cd.ConditionalGenerator.__new__(cd.ConditionalGenerator)
        gen.device, gen.compile, gen.unet_cfg = torch.device("cpu"), compile, cfg
        for m in (jdcl.new_model(), gen.new_model()):
            conv = next(p for p in m.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1)
            assert conv.is_contiguous(memory_format=torch.channels_last) is compile
            assert conv.is_contiguous() is not compile


def test_to_device_keeps_values_and_converts_on_the_cpu_first():
    """CPU-drawn indices and augmentation parameters reach the device unchanged; a dtype change
    rounds as ``.to(dtype)`` does (on a CUDA device the copy is queued from pinned memory)."""
    from jdcl_bench.fastpath import to_device

    g = torch.Generator().manual_seed(0)
    u = torch.rand(64, 3, generator=g, dtype=torch.float64)
    assert torch.equal(to_device(u, "cpu", torch.float32), u.to(torch.float32))
    idx = torch.randint(100, (32,), generator=g)
    assert to_device(idx, "cpu") is idx or torch.equal(to_device(idx, "cpu"), idx)


@pytest.mark.gpu
def test_to_device_on_cuda_equals_a_blocking_copy():
    from jdcl_bench.fastpath import to_device

    g = torch.Generator().manual_seed(0)
    u = torch.rand(512, 7, generator=g, dtype=torch.float64)
    for dtype in (None, torch.float32, torch.bfloat16):
        want = u.to("cuda", dtype) if dtype else u.to("cuda")
        got = to_device(u, "cuda", dtype)
        assert got.device.type == "cuda" and torch.equal(got, want)
