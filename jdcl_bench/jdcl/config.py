"""JDCL's settings: the official recipe's values as defaults (``paper``), the short-budget options
(deviations, all off in ``paper``, each documented in docs/jdcl.md with its measured effect) and
the presets."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class JDCLConfig:
    unet: str = "paper"                # paper | fast | smoke (UNetConfig presets)
    model_channels: int = 0            # > 0 overrides the preset's base width
    batch_size: int = 256
    lr: float = 2e-4
    weight_decay: float = 0.01
    local_steps: int = 50_000          # CIFAR-10 (CIFAR-100: 100k)
    global_steps: int = 30_000         # CIFAR-10 (CIFAR-100: 70k)
    ema_decay: float = 0.9999          # with LDM warm-up min(decay, (1+n)/(10+n))
    cls_weight: float = 0.001          # local stage: CE scale
    local_crop_scale: float = 0.85     # RandomResizedCrop scale floor of the diffusion view
    global_crop_scale: float = 0.64    # CIFAR-10 global stages (0.85 for CIFAR-100)
    # global stage
    l_simple_weight: float = 0.01
    kd_diff_weight: float = 1.0
    global_ce_weight: float = 1e-5
    kd_cls_weight: float = 0.001
    kd_weighting: str = "main"         # main: 2 x batch mean; paper_branch: mean_old + mean_new
    cls_start_fraction: float = 1 / 3  # CE and class-KD switch on after this fraction of global steps (10k of 30k)
    teacher_weights: str = "raw"       # raw (official) | ema
    keep_raw_global: bool = True       # False: the global model is kept as EMA weights only (student init,
                                       # old teacher and sampling all use them); halves checkpoints
    # replay
    replay_per_class: int = 1000       # CIFAR-10 (CIFAR-100: 400)
    ddim_steps: int = 250
    gen_batch: int = 2000
    max_sampled_factor: float = 2.0    # stop sampling after this x quota images, then duplicate
    # semi-supervised local stage (FixMatch in the joint model)
    ssl_labelled_batch: int = 32
    ssl_mu: int = 7
    ssl_threshold: float = 0.95
    ssl_ema_decay: float = 0.999       # FixMatchEma: no warm-up
    # Without warm-up, 0.999 leaves 0.999^n of the random initialisation in the EMA: nothing after the
    # official 50 k steps, but 45 % after 800 (the `fast` preset), so its sampler and classifier are
    # mostly noise. `fast` and `smoke` turn on the LDM warm-up the supervised local stage uses.
    ssl_ema_warmup: bool = False
    # speed
    amp: bool = True                   # bf16 autocast on CUDA
    compile: bool = True               # torch.compile the UNet (CUDA only; eager if it fails)
    # torch.compile mode. CUDA graphs ("reduce-overhead") remove the compiled step's launch cost:
    # in one H100 command (results/bench/jdcl-loop-*-20261125-cmd*.log) JDCL's fast local stage ran
    # 18.8 steps/s against 14.8 with "default" (+27 %), and a 5-task cifar10-t5 run with replay and
    # the global stage completed under it. Compiling takes longer (about 45 s more, cold cache).
    compile_mode: str = "reduce-overhead"
    grid_per_class: int = 8
    # ---- short-budget options: deviations from the official recipe, all off in `paper` -----------
    # (docs/jdcl.md, "Short-budget options", gives each one's measured effect)
    # DDIM with x̂0 clipped to [-1, 1] at every step and the last x̂0 returned (guided-diffusion's
    # clip_denoised): LDM's sampler does not clip, and at high noise levels it multiplies the ε error
    # of a briefly trained model by up to 1/sqrt(ᾱ_t) ≈ 160, which gives saturated colour noise.
    sampler_clip_x0: bool = False
    # ddim (the official sampler) | dpm-solver++ (DPM-Solver++(2M), GaussianDiffusion.dpm_solver_sample,
    # which always returns its last x̂0); either runs `ddim_steps` model evaluations. On a `fast` G
    # (results/bench/sampler-fidelity-NVIDIA_H100_80GB_HBM3-20261206T131643.json) 10 steps on DDIM's
    # grid gave replay fidelity 53.5 % / Fréchet distance 13.6 against DDIM-50's 48.2 % / 18.5 at
    # 5.0x its rate (on the log-SNR grid: 48.6 % / 18.3); `fast` and `standard` use that.
    sampler: str = "ddim"
    # the few-step solver's timesteps (dpm-solver++ only): uniform = DDIM's grid | logsnr | linspace
    sampler_spacing: str = "logsnr"
    # The global student's EMA restarts its warm-up at each global stage (from G_{k-1}'s EMA weights)
    # instead of continuing G_{k-1}'s update count at full decay: a short stage otherwise leaves
    # much of the evaluated EMA from before the classification terms switched on.
    global_ema_restart: bool = False
    # scratch: every local model L_k starts from random weights (the official CIFAR scripts);
    # global: from G_{k-1} (the official ImageNet-100 recipe; the paper's text describes a copy).
    local_init: str = "scratch"
    # Replay filtered by confidence: a sample joins the replay only if its own classifier gives its label
    # at least this probability (0: every sample, the official rule). A short-budget generator makes
    # blurred or wrong images whose labels are guesses; this keeps the ones its classifier is sure of,
    # at the cost of more sampling (max_sampled_factor still caps it). `standard` uses 0.7 (REPLAY_LEVERS).
    replay_confidence_threshold: float = 0.0
    # Where the global stage's diffusion terms take their new-class images from. replay: L_k's samples
    # (the official rule: no real data in any global stage). real-diffusion: the replay set stays the
    # recipe's and the classifier sees it unchanged, but the diffusion view of each new-class sample
    # (the noise-prediction and diffusion-distillation terms, which use no label) is a random real
    # image of the task, labelled or unlabelled. Aimed at the loss `standard`'s cifar10-t5 diagnostics
    # show: G_k learns the new classes second-hand, from 1000 of L_k's samples a class (task 2: 86.7 %
    # against L_2's 95.9 %), and its own samples of them, the next task's old-class replay, lose about
    # 17 points of fidelity in that one step. On digits-t5 (CPU, two seeds,
    # results/probes/jdcl-digits-global-new-source) +1.8 / +2.0 points final over the recipe. Giving
    # the classifier the real images too (an earlier option, in git history) cost 6 points there:
    # realness marked the new classes. `standard` uses it, with the two replay levers (REPLAY_LEVERS);
    # on cifar10-t5 measured only together with them (docs/jdcl.md).
    global_new_source: str = "replay"
    # Replay diagnostics (jdcl_bench.replay_quality): the local model's accuracy on its own task and
    # the replay's fidelity, Fréchet distance and pixel health, in metrics.json. Measurement only.
    diagnostics: bool = False

    def validate(self) -> dict[str, str]:
        """Values out of range beyond the rules every config follows (jdcl_bench.config)."""
        bad = {}
        for key in ("local_steps", "global_steps", "replay_per_class"):
            if getattr(self, key) < 1:
                bad[key] = "JDCL needs >= 1 (a task trains a local model, then a global one, on replay)"
        if not self.lr > 0:
            bad["lr"] = "must be > 0"
        if self.max_sampled_factor < 1:
            bad["max_sampled_factor"] = "must be >= 1 (samples drawn per replay image before duplicates fill in)"
        if self.model_channels < 0:
            bad["model_channels"] = "must be >= 0 (0: the UNet preset's width)"
        from .diffusion import SOLVER_SPACINGS  # torch: only where used (the grids solver_timesteps knows)

        for key, allowed, example in (("unet", UNETS, "fast"), ("compile_mode", COMPILE_MODES, "reduce-overhead"),
                                      ("sampler", SAMPLERS, "ddim"), ("local_init", LOCAL_INITS, "global"),
                                      ("sampler_spacing", SOLVER_SPACINGS, "uniform"),
                                      ("global_new_source", NEW_SOURCES, "real-diffusion")):
            if getattr(self, key) not in allowed:
                bad[key] = f"not one of {', '.join(allowed)} (e.g. --set {key}={example})"
        return bad

    def ssl_ema_warning(self) -> str | None:
        """A reduced budget with the official 0.999-without-warm-up keeps the random initialisation in
        the EMA that samples replay and is evaluated (results/superseded/README.md)."""
        from .diffusion import ema_start_share  # torch: only where used
        left = ema_start_share(self.ssl_ema_decay, self.ssl_ema_warmup, self.local_steps)
        if left <= 0.05:
            return None
        return (f"warning: after {self.local_steps} local steps the EMA still holds {100 * left:.0f} % of the "
                f"random initialisation (ssl_ema_decay={self.ssl_ema_decay}, ssl_ema_warmup={self.ssl_ema_warmup}); "
                "use --set ssl_ema_warmup=true, a smaller ssl_ema_decay or more local_steps")


UNETS = ("paper", "fast", "smoke")  # UNetConfig's presets
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
LOCAL_INITS = ("scratch", "global")
SAMPLERS = ("ddim", "dpm-solver++")
NEW_SOURCES = ("replay", "real-diffusion")

# The short-budget options (all off in `paper`), measured on the two-task probe (H200, fast UNet,
# results/probes/jdcl-cifar10-first2): seen accuracy after task 2 69.4 % -> 76.9 % with all three,
# replay fidelity 41.9 % -> 55.3 %, saturated pixel values 44 % -> 5 %.
SHORT_BUDGET = {"sampler_clip_x0": True, "global_ema_restart": True, "local_init": "global", "diagnostics": True}

# The quick look: a 7.5M-parameter UNet, batch 512 (the small model is launch-bound at 256, so 512
# costs little more per step), 1.6 % / 1.7 % of the official local / global steps, 1000 replay images
# per class (as the paper), the short-budget options and the diagnostics, and two measured changes:
# lr 5e-4 (recipe 2e-4) and replay by DPM-Solver++(2M) in 10 steps on DDIM's grid (recipe DDIM-250).
# cifar10-t5, seed 0, H100 (results/curves/jdcl-cifar10-t5): 44.88 % -> 52.83 % at these steps with
# both (lr 2e-4 and DDIM-50 before), 36.48 -> 39.49 % at half of them; the replay of every generation
# more faithful (fidelity +7 to +11 points, feature Fréchet distance 15 -> 8-10). On the two-task
# probe (results/probes/jdcl-cifar10-first2-levers) lr 5e-4 alone lifted G_1's replay fidelity
# 49.5 -> 59.9 %; the sampler alone replays at 5x DDIM-50's rate, as faithfully or more
# (results/bench/sampler-fidelity-*T131643.json).
FAST = {"unet": "fast", "batch_size": 512, "lr": 5e-4, "local_steps": 800, "global_steps": 500,
        "sampler": "dpm-solver++", "sampler_spacing": "uniform", "ddim_steps": 10,
        "replay_per_class": 1000, "gen_batch": 2500, "ssl_labelled_batch": 64,
        "teacher_weights": "ema", "keep_raw_global": False, "ssl_ema_warmup": True, **SHORT_BUDGET}

# Three replay levers (deviations, off in `paper`; docs/jdcl.md): 4x the recipe's replay images a
# class (cheap with the 10-step sampler), a replay image kept only where its own classifier gives its
# label >= 70 %, and the global stage's diffusion terms on the task's real images for the new classes.
# Measured together on cifar10-t5 (seed 0, one H100; results/probes/jdcl-cifar10-t5-fork-levers): at
# `standard`'s steps 75.92 % final against 71.44 % without them, the old classes' replay 70.7 % faithful
# after four generations against 59.2 %, 28.3 GPU-minutes for the run (a fork of the run without them
# after task 1, which has no replay and no global stage: the run these settings make).
REPLAY_LEVERS = {"replay_per_class": 4000, "replay_confidence_threshold": 0.7, "global_new_source": "real-diffusion"}

PRESETS = {
    "fast": FAST,
    # `fast` at 5x the steps, sized from the rates measured alone (fast UNet compiled: about 25 local /
    # 17 global steps per second on an H100 or H200) for about 30 GPU-minutes a cifar10-t5 run with
    # compilation and replay, plus the replay levers. Without the levers (`fast`'s recipe at these
    # steps, results/superseded/cifar10-t5-jdcl-standard-seed0-before-replay-levers): 71.44 % in 31.1 GPU-minutes (H100 and H200,
    # five processes; docs/jdcl.md); along that recipe's curve 39.49 % at half of `fast`'s steps,
    # 52.83 % at `fast`'s.
    "standard": {**FAST, "local_steps": 4000, "global_steps": 2500, **REPLAY_LEVERS},
    # The first run: digits-t5 on a 2-core CPU in about 5 minutes (results/probes/jdcl-digits-first-run).
    # The tiny `smoke` UNet is enough for 8x8 digits. With steps this few the recipe's class weights
    # leave the global model's classifier behind (seen accuracy 36.7 % after task 4 against 96.4 %,
    # for replay about as faithful), so the class terms are raised together: local CE, global CE and
    # class distillation, on from the first global step. EMA 0.999 (with warm-up) so the evaluated
    # weights follow a 500-step stage; DDIM-20 and 150 replay images a class keep sampling to
    # seconds. compile off: sized for a CPU, where the UNet runs eager anyway. On the semi-supervised
    # digits protocol the local EMA warms up (as in `fast`): without it, 500 steps leave 61 % of the
    # starting weights (G_{k-1}'s, with local_init = global) in the EMA that samples the new classes,
    # and digits-semi-10pct ended at 10.0 / 26.7 % (two seeds) against 91.6 / 89.8 % with it
    # (results/probes/jdcl-digits-semi).
    "digits": {"unet": "smoke", "batch_size": 64, "lr": 1e-3, "local_steps": 500, "global_steps": 300,
               "ema_decay": 0.999, "cls_weight": 0.05, "global_ce_weight": 0.01, "kd_cls_weight": 0.05,
               "cls_start_fraction": 0.0, "ddim_steps": 20, "replay_per_class": 150, "gen_batch": 500,
               "teacher_weights": "ema", "compile": False, "ssl_ema_warmup": True, **SHORT_BUDGET},
    "smoke": {"unet": "smoke", "batch_size": 16, "local_steps": 6, "global_steps": 6, "ddim_steps": 3,
              "replay_per_class": 6, "gen_batch": 16, "ssl_labelled_batch": 4, "ssl_mu": 2, "grid_per_class": 2,
              "ssl_ema_warmup": True},
}


def label_for_config(method_config: dict) -> str | None:
    """A record whose config has no ``sampler_clip_x0`` ran before the short-budget options existed
    (LDM's unclipped sampler, continued global EMA, local model from scratch), whatever its preset
    is called today: its own row, never averaged with the preset's newer seeds. Likewise a record
    with the options at the recipe's lr and DDIM (`fast` until it took lr 5e-4 and DPM-Solver++)."""
    if "local_steps" in method_config and "sampler_clip_x0" not in method_config:  # a JDCL config, older
        return "JDCL (before the short-budget options)"
    # With the short-budget options but the recipe's lr and DDIM: `fast` before it took lr 5e-4 and
    # DPM-Solver++ (and the accuracy-vs-compute runs made with it), a recipe of its own.
    if (method_config.get("sampler_clip_x0") is True and method_config.get("lr") == 2e-4
            and method_config.get("sampler", "ddim") == "ddim"):
        return f"JDCL (lr 2e-4, DDIM-{method_config.get('ddim_steps')})"
    return None


def differences_from_paper(method_config: dict) -> list[str]:
    """The short-budget options a record ran with (docs/jdcl.md): each a deviation from the recipe."""
    out = [f"{k} on" for k in ("sampler_clip_x0", "global_ema_restart") if method_config.get(k) is True]
    if method_config.get("local_init") == "global":
        out.append("local model initialised from G_{k-1}")
    if method_config.get("sampler") not in (None, "ddim"):
        out.append(f"sampler {method_config['sampler']} ({method_config.get('ddim_steps')} steps, "
                   f"{method_config.get('sampler_spacing', 'logsnr')} grid)")
    if method_config.get("lr") not in (None, 2e-4):
        out.append(f"lr {method_config['lr']:g} (recipe 2e-4)")
    if method_config.get("replay_per_class") not in (None, 1000, 400):
        out.append(f"replay_per_class {method_config['replay_per_class']} (recipe 1000 on CIFAR-10, 400 on CIFAR-100)")
    if method_config.get("replay_confidence_threshold"):
        out.append(f"replay kept at classifier confidence >= {method_config['replay_confidence_threshold']}")
    source = method_config.get("global_new_source", "replay")
    if source == "real-diffusion":
        out.append("global stage: diffusion terms on the task's real images for new classes (recipe: L_k's replay)")
    return out
