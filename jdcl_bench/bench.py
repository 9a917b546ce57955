"""Speed benchmark of the joint model: training step and DDIM replay sampling, two paths side by side.

- ``reference``: the same model in plain fp32, eager, contiguous memory, unfused AdamW: the
  arithmetic of the official implementation.
- ``optimised``: what the methods use: bf16 autocast, channels_last, fused AdamW, scaled-dot-product
  (flash) attention, and optionally ``torch.compile`` (default mode, as the
  methods run it) and ``torch.compile(mode="reduce-overhead")`` (CUDA graphs: the whole step or
  ε-evaluation replayed as one graph, no per-kernel launch cost). On request also the eager and
  compiled bf16 paths with contiguous (NCHW) weights, to measure what channels_last buys.
  The methods run channels_last only when compiled (``fastpath.unet_memory_format``): their eager
  form is ``optimised_bf16_contiguous``; ``optimised_bf16`` keeps its name and layout so records compare.
  With inductor options (``--inductor-option max_autotune=True``), ``optimised_bf16_compiled_options``
  compiles with them, timed next to the default compiled path: a config experiment in one process.
  ``optimised_bf16_compiled_nchw_blocks`` (on request) runs GroupNorm and attention in their NCHW
  forms, i.e. the UNet before its layout-keeping blocks: what those bought, in one process.
  ``optimised_bf16_cudagraphs_prev_blocks`` (on request) is the CUDA-graph path with the
  upsampling, attention-input cast, decoder concatenation and norm-activation steps as they were
  before the sub-pixel upsampling (``unet.Upsample``) and ``kernels.norm_act``: what those bought,
  in one process. The fp32 reference always
  runs the literal upsampling (interpolate, then a 3x3 convolution), so parity checks the
  sub-pixel form against it.

On CUDA a profile of every optimised path splits the GPU time of one training step and one ε evaluation
into convolutions, matrix multiplies, attention, Triton-generated fused kernels (norms, activations,
element-wise) and the rest, so the record says what limits the rate.

The training step is JDCL's local-stage step: ε-MSE on x_t plus the classifier on a second view at
t = 0 (``forward_joint``), backward, AdamW, EMA update. Sampling is timed per DDIM step at the
generation batch size and reported as images/s for a full ``ddim_steps`` run. Every number is the
median of repeated, synchronised timings after warm-up, all in one process; FLOPs are counted with
``torch.utils.flop_counter`` on the real model, and the achieved rate is set against a bf16 matrix
multiply measured on the same device in the same process.
"""
from __future__ import annotations

import pathlib
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .jdcl.diffusion import EMA, GaussianDiffusion
from .jdcl.unet import JointUNet, UNetConfig, apply_fast_path, count_parameters
from .profiling import kernel_breakdown, sync_device as _sync
from .kernels import FastPath


@dataclass
class BenchSettings:
    config: str = "paper"        # paper | fast | smoke
    batch: int = 256             # training batch
    gen_batch: int = 2000        # sampling batch
    ddim_steps: int = 250
    warmup: int = 3
    iters: int = 10
    compile: bool = True
    cudagraphs: bool = True      # also time torch.compile(mode="reduce-overhead")
    profile: bool = True         # kernel-time breakdown of the fastest path (CUDA only)
    contiguous_path: bool = False  # also the bf16 paths without channels_last: what the layout buys
    only: tuple[str, ...] = ()   # time only these paths (plus the reference every ratio needs)
    # inductor settings for one more compiled path, timed next to the default one in the same process
    inductor_options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PathSpec:
    """One path the bench knows. Paths marked ``on_request`` run only when their switch or
    ``--path`` asks for them: they are experiments, not what the methods run."""
    name: str
    optimised: bool = True        # bf16 autocast, fused AdamW (the reference: fp32, unfused)
    compiled: bool = False
    mode: str | None = None       # torch.compile mode
    channels_last: bool = True
    options: bool = False         # torch.compile(options=settings.inductor_options)
    nchw_blocks: bool = False     # norm and attention in their NCHW forms (the UNet before 2026-11-25)
    # upsampling, attention input, decoder concatenation and norm-activation steps as they were
    # before 2026-11-25's second session: interpolate + 3x3 conv, the attention input cast by
    # autocast, torch.cat, GroupNorm / FiLM / SiLU / dropout as separate modules
    prev_blocks: bool = False
    on_request: bool = False


PATHS = (PathSpec("reference_fp32_eager", optimised=False, channels_last=False),
         PathSpec("optimised_bf16"),
         PathSpec("optimised_bf16_contiguous", channels_last=False, on_request=True),
         PathSpec("optimised_bf16_compiled", compiled=True),
         PathSpec("optimised_bf16_compiled_contiguous", compiled=True, channels_last=False, on_request=True),
         PathSpec("optimised_bf16_compiled_nchw_blocks", compiled=True, nchw_blocks=True, on_request=True),
         PathSpec("optimised_bf16_compiled_options", compiled=True, options=True, on_request=True),
         PathSpec("optimised_bf16_cudagraphs", compiled=True, mode="reduce-overhead"),
         PathSpec("optimised_bf16_cudagraphs_prev_blocks", compiled=True, mode="reduce-overhead", prev_blocks=True,
                  on_request=True))
PATH_NAMES = tuple(p.name for p in PATHS)


def selected_paths(s: "BenchSettings", device: torch.device) -> list[PathSpec]:
    """The paths ``s`` asks for, in table order. The reference always runs: every ratio needs it.
    Compiled paths need CUDA (the methods compile only there)."""
    def wanted(p: PathSpec) -> bool:
        if p.name == "reference_fp32_eager":
            return True
        if p.compiled and device.type != "cuda":
            return False
        if s.only:  # an explicit choice overrides the switches
            return p.name in s.only
        if p.compiled and not s.compile or p.mode and not s.cudagraphs:
            return False
        if not p.on_request:
            return True
        return (not p.channels_last and s.contiguous_path) or (p.options and bool(s.inductor_options))
    return [p for p in PATHS if wanted(p)]


def median_time(fn, device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_tflops(device: torch.device, n: int = 8192, iters: int = 20) -> float | None:
    """Measured bf16 matrix-multiply rate: the ceiling the model's rate is compared with."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    t = median_time(lambda: a @ b, device, 3, iters)
    return 2 * n ** 3 / t / 1e12


def unet_config(name: str, num_classes: int = 10) -> UNetConfig:
    return {"paper": UNetConfig.paper, "fast": UNetConfig.fast, "smoke": UNetConfig.smoke}[name](num_classes)


class _JointCall(torch.nn.Module):
    """forward_joint as a module's forward, so torch.compile sees one graph."""

    def __init__(self, model: JointUNet):
        super().__init__()
        self.model = model

    def forward(self, x_t, t, x_cls):
        return self.model.forward_joint(x_t, t, x_cls)


class Path:
    """One way of running the joint model (reference or optimised) around a shared set of weights."""

    def __init__(self, cfg: UNetConfig, state: dict, device: torch.device, *, optimised: bool, compile: bool,
                 mode: str | None = None, channels_last: bool = True, options: dict | None = None,
                 nchw_blocks: bool = False, prev_blocks: bool = False, model_cls: type = JointUNet):
        # model_cls: another version's JointUNet with the same parameters (benchmarks/train_ab.py);
        # the switches below reach only this module's block classes, others keep their defaults
        self.device, self.optimised = device, optimised
        self.model = model_cls(cfg).to(device)
        self.model.load_state_dict(state)
        # the reference keeps the official arithmetic (interpolate, then conv: subpixel off)
        apply_fast_path(self.model, FastPath(
            layout_norm=not nchw_blocks, cast_early=not prev_blocks, fused_norm_act=not prev_blocks,
            triton_norm=not prev_blocks, subpixel=optimised and not prev_blocks, layout_cat=not prev_blocks))
        if optimised and channels_last and device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=2e-4, weight_decay=0.01,
                                     fused=optimised and device.type == "cuda")
        self.ema = EMA(self.model, 0.9999)
        self.joint, self.eps_model = _JointCall(self.model), self.model
        if compile:  # torch.compile takes a mode or inductor options, not both
            kw = {"options": options} if options else {"mode": mode}
            self.joint = torch.compile(self.joint, **kw)
            self.eps_model = torch.compile(self.model, **kw)
        self.diffusion = GaussianDiffusion().to(device)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.optimised)

    def loss(self, x_t, t, noise, x_cls, y) -> torch.Tensor:
        with self.autocast():
            eps, logits = self.joint(x_t, t, x_cls)
        return F.mse_loss(eps.float(), noise) + 0.001 * F.cross_entropy(logits.float(), y)

    def train_step(self, batch) -> torch.Tensor:
        loss = self.loss(*batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.ema.update(self.model)
        return loss

    def eps(self, x, t):
        with self.autocast():
            return self.eps_model(x, t)

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, steps: int) -> torch.Tensor:
        return self.diffusion.ddim_sample(lambda x, t: self.eps(x, t).float(), tuple(noise.shape), steps=steps,
                                          noise=noise, device=self.device)


def batch_for(cfg: UNetConfig, n: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, cfg.in_channels, cfg.image_size, cfg.image_size)
    x0 = torch.rand(shape, generator=g) * 2 - 1
    x_cls = torch.rand(shape, generator=g) * 2 - 1
    t = torch.randint(0, 1000, (n,), generator=g)
    noise = torch.randn(shape, generator=g)
    y = torch.randint(0, cfg.num_classes, (n,), generator=g)
    diffusion = GaussianDiffusion()
    x_t = diffusion.q_sample(x0, t, noise)
    return tuple(v.to(device) for v in (x_t, t, noise, x_cls, y))


def trained_looking_model(cfg: UNetConfig) -> JointUNet:
    """The model every bench times (seed 0): zero-initialised output convolutions would make every
    path trivially equal, so all-zero parameters get small random values."""
    torch.manual_seed(0)
    model = JointUNet(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model


def flops_per_image(cfg: UNetConfig, device: torch.device) -> dict:
    """FLOPs of one training step (forward + backward of forward_joint) and one ε evaluation, per image."""
    from torch.utils.flop_counter import FlopCounterMode

    model = JointUNet(cfg).to(device)
    batch = batch_for(cfg, 2, device)
    with FlopCounterMode(display=False) as fc:
        eps, logits = model.forward_joint(batch[0], batch[1], batch[3])
        (eps.float().pow(2).mean() + logits.float().logsumexp(1).mean()).backward()
    train = fc.get_total_flops() / 2
    with torch.no_grad(), FlopCounterMode(display=False) as fc2:
        model(batch[0], batch[1])
    return {"train_step": train, "eps_eval": fc2.get_total_flops() / 2}


def parity(cfg: UNetConfig, state: dict, device: torch.device, n: int = 8, steps: int = 20) -> dict:
    """Same weights, same batch: loss and DDIM samples of the optimised path against the reference."""
    ref = Path(cfg, state, device, optimised=False, compile=False)
    opt = Path(cfg, state, device, optimised=True, compile=False)
    ref.model.eval(), opt.model.eval()  # no dropout: the two paths must see the same function
    batch = batch_for(cfg, n, device, seed=1)
    with torch.no_grad():
        l_ref, l_opt = float(ref.loss(*batch)), float(opt.loss(*batch))
    noise = torch.randn((n, cfg.in_channels, cfg.image_size, cfg.image_size), generator=torch.Generator().manual_seed(2)).to(device)
    with torch.no_grad():  # one ε evaluation: the per-step error that DDIM then carries along
        e_ref, e_opt = ref.eps(batch[0], batch[1]).float(), opt.eps(batch[0], batch[1]).float()
    s_ref, s_opt = ref.sample(noise, steps), opt.sample(noise, steps)
    eps_rel = float((e_ref - e_opt).norm() / e_ref.norm())
    # Baseline for the sample difference: the fp32 reference itself, with every ε evaluation
    # perturbed by random noise of the same relative size as the bf16 error. If this drifts as far
    # as the optimised path does, the drift is the sampler's sensitivity to any per-step error of
    # that size (large for untrained weights), not a mistake in the optimised path.
    g = torch.Generator(device=device).manual_seed(3)

    def perturbed(x, t):
        e = ref.eps(x, t).float()
        z = torch.randn(e.shape, generator=g, device=e.device)
        return e + eps_rel * e.norm() / z.norm() * z

    with torch.no_grad():
        s_pert = ref.diffusion.ddim_sample(perturbed, tuple(noise.shape), steps=steps, noise=noise, device=device)
    return {"loss_reference": l_ref, "loss_optimised": l_opt, "loss_rel_diff": abs(l_ref - l_opt) / abs(l_ref),
            "eps_rel_diff": eps_rel,
            "ddim_max_abs_diff": float((s_ref - s_opt).abs().max()),
            "ddim_mean_abs_diff": float((s_ref - s_opt).abs().mean()),
            "ddim_mean_abs_diff_fp32_perturbed": float((s_ref - s_pert).abs().mean()), "ddim_steps": steps}


def parse_inductor_options(pairs) -> dict:
    """``KEY=VALUE`` strings -> inductor settings, values as Python literals (``True``, ``3``) or text."""
    import ast

    from torch._inductor import config as inductor_config

    known = set(inductor_config.get_config_copy())
    options = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--inductor-option {pair!r} is not KEY=VALUE")
        if key not in known:
            close = ", ".join(sorted(k for k in known if key.lower() in k.lower())[:8]) or "none similar"
            raise ValueError(f"--inductor-option {key!r} is not a torch._inductor.config setting (similar: {close})")
        try:
            options[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            options[key] = raw
    return options


def check_paths(only, inductor_options) -> None:
    """A chosen path set the bench can run: known names, and inductor options for the path that needs them."""
    unknown = sorted(set(only) - set(PATH_NAMES))
    if unknown:
        raise ValueError(f"unknown bench path(s) {unknown}; known: {', '.join(PATH_NAMES)}")
    if "optimised_bf16_compiled_options" in only and not inductor_options:
        raise ValueError("optimised_bf16_compiled_options needs at least one --inductor-option")


def run_bench(s: BenchSettings, device: torch.device, log=print, on_path=None) -> dict:
    """Time every path of ``s``; ``on_path(partial_result)`` runs after each path (the CLI writes
    the record then, so a bench stopped while compiling a later path keeps what it measured)."""
    check_paths(s.only, s.inductor_options)  # before the model, FLOP count and parity cost anything
    cfg = unet_config(s.config)
    init = trained_looking_model(cfg)
    state = init.state_dict()
    flops = flops_per_image(cfg, device)
    out = {"settings": s.__dict__, "config": s.config, "unet_params": count_parameters(init) - count_parameters(init.head),
           "flops_per_image": flops, "paths": {}}
    out["parity"] = parity(cfg, state, device)
    log(f"parity: {out['parity']}")
    batch = batch_for(cfg, s.batch, device)
    for spec in selected_paths(s, device):
        name, optimised = spec.name, spec.optimised
        p = Path(cfg, state, device, optimised=optimised, compile=spec.compiled, mode=spec.mode,
                 channels_last=spec.channels_last, options=s.inductor_options if spec.options else None,
                 nchw_blocks=spec.nchw_blocks, prev_blocks=spec.prev_blocks)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        try:
            p.train_step(batch)  # first call: compilation for the compiled path
        except Exception as exc:  # a toolchain without a working compiler: say so, keep the other paths
            log(f"{name} failed: {type(exc).__name__}: {exc}")
            out["paths"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        _sync(device)
        first = time.perf_counter() - t0
        t_train = median_time(lambda: p.train_step(batch), device, s.warmup, s.iters)
        mem_train = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        p.model.eval()
        x = torch.randn((s.gen_batch, cfg.in_channels, cfg.image_size, cfg.image_size), device=device)
        t = torch.full((s.gen_batch,), 500, device=device, dtype=torch.long)
        with torch.no_grad():
            t_eps = median_time(lambda: p.eps(x, t), device, s.warmup, s.iters)
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        train_ips = s.batch / t_train
        sample_ips = s.gen_batch / (t_eps * s.ddim_steps)
        out["paths"][name] = {
            "train_images_per_s": train_ips, "train_step_ms": 1000 * t_train, "first_step_s": first,
            "train_tflops": train_ips * flops["train_step"] / 1e12,
            "ddim_images_per_s": sample_ips, "eps_eval_ms": 1000 * t_eps,
            "ddim_tflops": s.gen_batch / t_eps * flops["eps_eval"] / 1e12,
            "peak_memory_gib_train": mem_train, "peak_memory_gib": mem}
        log(f"{s.config} {name}: train {train_ips:.0f} img/s ({1000 * t_train:.1f} ms/step), "
            f"replay in {s.ddim_steps} steps {sample_ips:.1f} img/s (batch {s.gen_batch})")
        if s.profile and device.type == "cuda" and optimised:
            # every optimised path keeps its own profile (before, each faster path's replaced the last)
            # each in the mode it was timed in: sampling runs the model in eval mode (no dropout);
            # before 2026-11-25 both were profiled in train mode, so eps_eval profiles up to then
            # include dropout kernels the timed ε evaluation never ran
            p.model.train()
            prof = {"train_step": {**kernel_breakdown(lambda: p.train_step(batch)), "images": s.batch}}
            p.model.eval()
            prof["eps_eval"] = {**kernel_breakdown(lambda: p.eps(x, t), no_grad=True), "images": s.gen_batch,
                                "model_mode": "eval"}
            out["paths"][name]["profile"] = prof
            log(f"{s.config} {name} profile: " + "; ".join(
                f"{k}: " + ", ".join(f"{c} {v:.0f}%" for c, v in prof[k]["share_pct"].items()) for k in prof))
        del p
        if on_path is not None:
            on_path(out)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ref = out["paths"]["reference_fp32_eager"]
    for name, r in out["paths"].items():
        if "error" in r:
            continue
        r["train_speedup_vs_reference"] = r["train_images_per_s"] / ref["train_images_per_s"]
        r["ddim_speedup_vs_reference"] = r["ddim_images_per_s"] / ref["ddim_images_per_s"]
    return out


# kernel-name patterns, checked in order. Triton first: inductor names its fused kernels after
# every op they absorbed ("triton_poi_fused_..._convolution_..._group_norm_silu"), so a later
# "conv" match would count fused element-wise work as convolution. cuDNN/CUTLASS convolution
# kernels are named for their pass (fprop/dgrad/wgrad); "gemm"/"nvjet"/"cutlass" covers the
# matrix multiplies of linear layers; flash/efficient attention; copies are named as such.
def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name(device)
        info["bf16_matmul_tflops_measured"] = matmul_tflops(device)
    return info


def record_path(out, kind: str, gpu_name: str) -> pathlib.Path:
    """Where a speed record goes: ``<out>/<kind>-<GPU name>-<timestamp>.json``, results/bench/'s naming."""
    return pathlib.Path(out) / f"{kind}-{gpu_name.replace(' ', '_')}-{time.strftime('%Y%m%dT%H%M%S')}.json"
