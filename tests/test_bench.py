"""The optimised path computes the same model as the fp32 reference (bf16 tolerance), and the
benchmark writes a complete record. Speed itself is measured on the GPU by `jdcl-bench bench`."""
import json

import torch
from click.testing import CliRunner

from jdcl_bench.bench import parity, unet_config
from jdcl_bench.cli import main
from jdcl_bench.jdcl.unet import JointUNet
from jdcl_bench.methods.jdcl import JDCL


def _weights(cfg):
    torch.manual_seed(0)
    m = JointUNet(cfg)
    with torch.no_grad():  # perturb the zero-initialised convs so the check is not trivially exact
        for p in m.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return m.state_dict()


def test_optimised_path_matches_reference_on_cpu():
    cfg = unet_config("smoke").replace(image_size=16)
    r = parity(cfg, _weights(cfg), torch.device("cpu"), n=4, steps=10)
    assert r["loss_rel_diff"] < 1e-2          # bf16 autocast vs fp32 on the same batch and weights
    assert 0 < r["eps_rel_diff"] < 2e-2       # one ε evaluation, relative L2 error
    assert r["ddim_mean_abs_diff"] < 0.1      # samples in [-1, 1] from the same noise
    assert r["loss_reference"] != r["loss_optimised"]  # the two paths really differ in precision
    # fp32 with every ε perturbed by noise of the bf16 error's size drifts as far as bf16 does: the
    # sample difference is the sampler's sensitivity to per-step error, not a flaw of the fast path
    ratio = r["ddim_mean_abs_diff"] / r["ddim_mean_abs_diff_fp32_perturbed"]
    assert 1 / 3 < ratio < 3, r


def test_bench_command_writes_a_record(tmp_path):
    r = CliRunner().invoke(main, ["bench", "--config", "smoke", "--device", "cpu", "--iters", "1", "--warmup", "0",
                                  "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    rec = json.loads(next(tmp_path.glob("bench-*.json")).read_text())
    run = rec["runs"][0]
    assert rec["torch"] == torch.__version__ and run["config"] == "smoke" and rec["complete"] is True
    assert set(run["paths"]) == {"reference_fp32_eager", "optimised_bf16"}
    for p in run["paths"].values():
        assert p["train_images_per_s"] > 0 and p["ddim_images_per_s"] > 0
    assert run["flops_per_image"]["train_step"] > run["flops_per_image"]["eps_eval"] > 0
    assert run["paths"]["reference_fp32_eager"]["train_speedup_vs_reference"] == 1.0
    # the bench times the preset's own batches and sampler steps (it timed DDIM-50 for `fast` after
    # `fast` moved to 10 steps)
    smoke = JDCL.config_for("smoke", {})
    s = run["settings"]
    assert (s["batch"], s["gen_batch"], s["ddim_steps"]) == (smoke.batch_size, smoke.gen_batch, smoke.ddim_steps)


def test_every_timed_path_is_handed_over_as_it_finishes():
    from jdcl_bench.bench import BenchSettings, run_bench

    seen = []
    s = BenchSettings(config="smoke", batch=4, gen_batch=4, ddim_steps=2, warmup=0, iters=1, profile=False)
    run_bench(s, torch.device("cpu"), log=lambda m: None, on_path=lambda out: seen.append(list(out["paths"])))
    assert seen == [["reference_fp32_eager"], ["reference_fp32_eager", "optimised_bf16"]]


def test_contiguous_paths_only_on_request():
    from jdcl_bench.bench import BenchSettings, run_bench

    s = BenchSettings(config="smoke", batch=4, gen_batch=4, ddim_steps=2, warmup=0, iters=1, profile=False,
                      contiguous_path=True)
    out = run_bench(s, torch.device("cpu"), log=lambda m: None)
    assert list(out["paths"]) == ["reference_fp32_eager", "optimised_bf16", "optimised_bf16_contiguous"]


def test_path_choice_times_only_those_paths_plus_the_reference(tmp_path):
    r = CliRunner().invoke(main, ["bench", "--config", "smoke", "--device", "cpu", "--iters", "1", "--warmup", "0",
                                  "--path", "optimised_bf16_contiguous", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    run = json.loads(next(tmp_path.glob("bench-*.json")).read_text())["runs"][0]
    assert list(run["paths"]) == ["reference_fp32_eager", "optimised_bf16_contiguous"]


def test_unknown_path_is_refused_with_the_known_names(tmp_path):
    r = CliRunner().invoke(main, ["bench", "--config", "smoke", "--device", "cpu", "--path", "warp_speed",
                                  "--out", str(tmp_path)])
    assert r.exit_code != 0 and "warp_speed" in r.output and "optimised_bf16_compiled" in r.output
    assert not list(tmp_path.glob("bench-*.json"))  # nothing written for a refused command


def test_inductor_options_reach_torch_compile_for_their_own_path(monkeypatch):
    import jdcl_bench.bench as B

    seen = []
    monkeypatch.setattr(B.torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    cfg = unet_config("smoke")
    B.Path(cfg, _weights(cfg), torch.device("cpu"), optimised=True, compile=True, options={"max_autotune": True})
    B.Path(cfg, _weights(cfg), torch.device("cpu"), optimised=True, compile=True, mode="reduce-overhead")
    assert seen == [{"options": {"max_autotune": True}}] * 2 + [{"mode": "reduce-overhead"}] * 2


def test_inductor_option_is_checked_and_parsed(tmp_path):
    from jdcl_bench.bench import parse_inductor_options

    assert parse_inductor_options(["max_autotune=True", "triton.cudagraphs=False"]) == {
        "max_autotune": True, "triton.cudagraphs": False}
    r = CliRunner().invoke(main, ["bench", "--config", "smoke", "--device", "cpu", "--inductor-option",
                                  "max_autotuned=True", "--out", str(tmp_path)])
    assert r.exit_code != 0 and "max_autotuned" in r.output and "max_autotune" in r.output
    assert not list(tmp_path.glob("bench-*.json"))


def test_nchw_blocks_path_runs_only_when_named_and_switches_norm_and_attention():
    from jdcl_bench.bench import BenchSettings, Path, selected_paths
    from jdcl_bench.jdcl.unet import AttentionBlock, GroupNorm

    cuda = torch.device("cuda")  # path selection only: nothing runs on it
    default = [p.name for p in selected_paths(BenchSettings(), cuda)]
    assert default == ["reference_fp32_eager", "optimised_bf16", "optimised_bf16_compiled", "optimised_bf16_cudagraphs"]
    named = BenchSettings(only=("optimised_bf16_compiled_nchw_blocks",))
    assert [p.name for p in selected_paths(named, cuda)] == ["reference_fp32_eager", "optimised_bf16_compiled_nchw_blocks"]
    assert [p.name for p in selected_paths(named, torch.device("cpu"))] == ["reference_fp32_eager"]  # compiled: CUDA only
    cfg = unet_config("smoke")
    for nchw in (False, True):
        p = Path(cfg, _weights(cfg), torch.device("cpu"), optimised=True, compile=False, nchw_blocks=nchw)
        blocks = [m for m in p.model.modules() if isinstance(m, (GroupNorm, AttentionBlock))]
        assert any(isinstance(m, AttentionBlock) for m in blocks)
        assert all(m.fast.layout_norm is not nchw for m in blocks)
