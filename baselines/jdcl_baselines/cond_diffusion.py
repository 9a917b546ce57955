"""The class-conditional diffusion generator shared by DGR-diffusion and GUIDE (their stage 1).

Per task k (spec: baselines.md §2.1; docs/dgr.md for every decision):

1. ``label`` (semi-supervised protocols only, the suite's extension): a task-local FixMatch
   labeller learns the task's classes from its labelled images and its unlabelled stream, then
   pseudo-labels every unlabelled image, so that the generator can be conditioned on all of them;
2. ``replay`` (k > 0): G_{k-1} (EMA weights) generates ``replay_per_task * k`` images of the old
   classes, classes drawn uniformly, labelled by their conditioning class (self-replay);
3. ``train``: continue from G_{k-1}'s raw weights on real task-k data + self-replay, with a fresh
   AdamW and a fresh EMA. The result is G_k = {"raw", "ema", "meta"}.

Stage 1 never looks at the classifier, so DGR and GUIDE compute the same G_k for the same
protocol and seed: ``GeneratorCache`` stores G_k under ``<out>/shared/generators`` and the second
method loads it instead of training. Everything here is resumable at any ``ctx.tick()``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from jdcl_bench.data import augment as A
from jdcl_bench.fastpath import autocast, cuda_channels_last, maybe_compile, to_device, unet_memory_format
from jdcl_bench.jdcl.diffusion import EMA, GaussianDiffusion
from jdcl_bench.jdcl.unet import JointUNet, UNetConfig, count_parameters
from jdcl_bench import records
from jdcl_bench.methods.base import ProtocolInfo, TaskData, optimiser_step
from jdcl_bench.models import cifar_resnet

# Bump when the same config and seed would train a different generator (cached files then miss).
CACHE_FORMAT = 1


@dataclass
class GeneratorConfig:
    unet: str = "paper"             # paper | fast | smoke (UNetConfig presets, made class-conditional)
    model_channels: int = 0         # > 0 overrides the preset's base width
    timesteps: int = 1000
    beta_start: float = 1e-4        # guided-diffusion's linear schedule (1e-4 .. 0.02)
    beta_end: float = 2e-2
    batch_size: int = 256
    lr: float = 2e-4                # AdamW, constant
    weight_decay: float = 0.0
    steps_first: int = 100_000      # task 1
    steps_later: int = 50_000       # tasks 2.. (CIFAR-10/5 in GUIDE's README)
    ema_decay: float = 0.9999
    ema_warmup: bool = False        # LDM-style warm-up min(decay, (1+n)/(10+n)); guided-diffusion has none
    hflip: bool = True              # the only augmentation
    replay_per_task: int = 10_000   # self-replay images per past task
    replay_sampler: str = "ancestral"  # ancestral (all T steps, fixed large variance) | ddim | dpm-solver++
    replay_ddim_steps: int = 50     # steps of replay_sampler = "ddim" or "dpm-solver++"
    gen_batch: int = 1000           # images per sampling call
    # semi-supervised protocols only: the task-local FixMatch labeller
    labeller_width: int = 64
    labeller_layers: tuple[int, ...] = (2, 2, 2, 2)
    labeller_steps: int = 5000
    labeller_batch: int = 64        # labelled images per step (the unlabelled batch is mu times that)
    labeller_mu: int = 7
    labeller_lr: float = 0.03
    labeller_threshold: float = 0.95

    def validate(self) -> dict[str, str]:
        # named before any training: an unknown sampler would otherwise fail at task 2's self-replay
        if self.replay_sampler not in SAMPLERS:
            return {"replay_sampler": f"not one of {', '.join(SAMPLERS)} (e.g. --set generator.replay_sampler=ddim)"}
        return {}


SAMPLERS = ("ancestral", "ddim", "dpm-solver++")  # what ConditionalGenerator.sample runs


# -----------------------------------------------------------------------------
# small helpers


def quiet_build(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module whose weights are overwritten right away, without drawing from torch's global
    generators: a resumed run rebuilds models at other moments than the uninterrupted one did, and
    the global generators also drive dropout."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        return build()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 images."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_cpu(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: to_cpu(v) for k, v in tree.items()}
    return tree


def fixmatch_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float):
    """FixMatch's unlabelled term: CE on the strong view against the weak view's confident argmax."""
    conf, pseudo = weak_logits.detach().float().softmax(1).max(1)
    mask = (conf >= threshold).float()
    loss = (F.cross_entropy(strong_logits.float(), pseudo, reduction="none") * mask).mean()
    return loss, mask.mean()


def ancestral_sample(diffusion: GaussianDiffusion, model, shape: tuple[int, ...], *, noise: torch.Tensor,
                     generator: torch.Generator, model_kwargs: dict | None = None) -> torch.Tensor:
    """DDPM ancestral sampling over all T steps, as guided-diffusion's p_sample_loop with
    ``learn_sigma=False, sigma_small=False`` (variance beta_t) and ``clip_denoised=True``.

    x_{t-1} = mu(x0_hat, x_t) + sqrt(beta_t) z, with x0_hat clipped to [-1, 1]; no noise at t = 0.
    """
    model_kwargs = model_kwargs or {}
    ac = diffusion.alphas_cumprod_f64
    ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
    betas = 1 - ac / ac_prev
    # posterior mean mu = c0 * x0 + ct * x_t (float64 coefficients, python floats per step)
    c0 = (betas * ac_prev.sqrt() / (1 - ac)).tolist()
    ct = ((1 - ac_prev) * (1 - betas).sqrt() / (1 - ac)).tolist()
    sd = betas.sqrt().tolist()
    acl = ac.tolist()
    x = noise.float()
    with torch.no_grad():
        for step in reversed(range(diffusion.num_timesteps)):
            t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
            eps = model(x, t, **model_kwargs).float()
            x0 = ((x - math.sqrt(1 - acl[step]) * eps) / math.sqrt(acl[step])).clamp(-1, 1)
            x = c0[step] * x0 + ct[step] * x
            if step > 0:
                x = x + sd[step] * torch.randn(x.shape, device=x.device, generator=generator)
    return x


class GuidedEps:
    """Classifier guidance as an eps-function for any sampler (Dhariwal & Nichol's condition_score):

        eps'(x_t, t) = eps(x_t, t) - scale * sqrt(1 - abar_t) * grad_{x_t} log_prob(x0_hat(x_t, eps))

    ``log_prob`` maps the x0-prediction (B, C, H, W) to one log-probability per sample (B,); the
    gradient flows back through the eps-model into x_t. ``ddim_sample`` runs under no_grad, so the
    gradient is taken inside ``enable_grad``.
    """

    def __init__(self, eps_fn, diffusion: GaussianDiffusion, log_prob: Callable[[torch.Tensor], torch.Tensor],
                 scale: float):
        self.eps_fn, self.diffusion, self.log_prob, self.scale = eps_fn, diffusion, log_prob, scale

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **model_kwargs) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x.detach().float().requires_grad_(True)
            eps = self.eps_fn(x_in, t, **model_kwargs).float()
            x0 = self.diffusion.predict_x0(x_in, t, eps)
            (grad,) = torch.autograd.grad(self.log_prob(x0).float().sum(), x_in)
        sigma = self.diffusion.sqrt_one_minus_alphas_cumprod[t].view(-1, *([1] * (x.dim() - 1)))
        return eps.detach() - self.scale * sigma * grad


# -----------------------------------------------------------------------------
# the generator: model factory and samplers (no training state)


class ConditionalGenerator:
    def __init__(self, cfg: GeneratorConfig, info: ProtocolInfo, device: torch.device, amp: bool,
                 compile: bool = False, log=print):
        base = UNetConfig.named(cfg.unet, info.num_classes, info.image_shape, cfg.model_channels)
        self.unet_cfg = base.replace(class_cond=True)
        self.cfg, self.info, self.device, self.amp = cfg, info, device, amp
        self.compile, self.log = compile, log
        self.diffusion = GaussianDiffusion(cfg.timesteps, cfg.beta_start, cfg.beta_end).to(device)
        with torch.device("meta"):  # the classifier head JointUNet carries is never used here
            m = JointUNet(self.unet_cfg)
            self.num_params = count_parameters(m) - count_parameters(m.head)

    def autocast(self):
        return autocast(self.device, self.amp)

    def new_model(self) -> JointUNet:
        """A freshly initialised UNet (draws from torch's global generators)."""
        m = JointUNet(self.unet_cfg).to(self.device)
        return m.to(memory_format=self.memory_format)

    @property
    def memory_format(self) -> torch.memory_format:
        """The UNet's layout, and its inputs': channels_last only when compiled (fastpath.unet_memory_format)."""
        return unet_memory_format(self.device, self.compile)

    def model_from(self, weights: dict) -> JointUNet:
        m = quiet_build(self.new_model)
        m.load_state_dict(weights)
        return m

    def compiled(self, model: nn.Module) -> nn.Module:
        """``model`` through torch.compile when the method asks for it (CUDA; eager if it fails)."""
        return maybe_compile(model, enabled=self.compile, device=self.device, info=self.log, name="the generator UNet")

    def sampler_from(self, weights: dict) -> JointUNet:
        """Frozen eval-mode model for sampling (EMA weights of a finished generator), compiled if asked."""
        return self.compiled(self.model_from(weights).eval().requires_grad_(False))

    def sample(self, eps_fn, y: torch.Tensor, *, generator: torch.Generator, sampler: str = "ddim",
               steps: int = 50) -> torch.Tensor:
        """Images of classes ``y`` as uint8 (N, C, H, W); ``eps_fn(x, t, y=y)`` is a model or a
        guidance wrapper. Noise comes from the device ``generator`` only."""
        shape = (len(y), *self.info.image_shape)
        noise = torch.randn(shape, device=self.device, generator=generator)
        noise = noise.contiguous(memory_format=self.memory_format)
        with self.autocast():
            if sampler == "ancestral":
                x = ancestral_sample(self.diffusion, eps_fn, shape, noise=noise, generator=generator,
                                     model_kwargs={"y": y})
            elif sampler == "ddim":
                # x0-predictions clipped at every step, as guided-diffusion's DDIM (unclipped DDIM
                # drifts to saturated images with briefly trained models); the last step's
                # x0-prediction is the denoised image
                x = self.diffusion.ddim_sample(eps_fn, shape, steps=steps, noise=noise, device=self.device,
                                               model_kwargs={"y": y}, return_pred_x0=True, clip_denoised=True)
            elif sampler == "dpm-solver++":
                # DPM-Solver++(2M) with the same clipping; its sample is the last x0-prediction
                x = self.diffusion.dpm_solver_sample(eps_fn, shape, steps=steps, noise=noise, device=self.device,
                                                     model_kwargs={"y": y}, clip_denoised=True)
            else:
                raise ValueError(f"unknown sampler {sampler!r} (ancestral | ddim | dpm-solver++)")
        return to_uint8(x)


# -----------------------------------------------------------------------------
# stage 1 of one task


class GeneratorStage:
    """label (semi) -> replay (k > 0) -> train -> done; ``state_dict`` is valid at every tick.

    ``prev`` (G_{k-1}) is not part of the state: the owner keeps it and passes it in again.
    """

    @classmethod
    def restore(cls, gen: ConditionalGenerator, ctx, prev: dict | None, semi: bool, state: dict) -> "GeneratorStage":
        stage = cls(gen, ctx, state["k"], [], [], None, 0, semi)
        stage.prev = prev
        stage.load_state_dict(state)
        return stage

    def __init__(self, gen: ConditionalGenerator, ctx, task_index: int, seen: list[int], new: list[int],
                 prev: dict | None, seed: int, semi: bool):
        self.gen, self.cfg, self.ctx, self.device = gen, gen.cfg, ctx, gen.device
        self.k, self.new, self.old = task_index, list(new), [c for c in seen if c not in new]
        self.prev = prev  # G_{k-1} ({"raw", "ema", "meta"}) or None
        self.semi = semi
        self.phase = "label" if semi else ("replay" if prev is not None else "train")
        # stage 1 has its own streams, seeded from ctx.rng, so it never depends on the classifier
        self.rng = torch.Generator().manual_seed(seed)
        self.dev_rng = torch.Generator(self.device).manual_seed(seed + 1)
        self.lab = self.lab_opt = None
        self.lab_step = 0
        self.pseudo: torch.Tensor | None = None
        n = self.cfg.replay_per_task * task_index if prev is not None else 0
        self.replay_y = torch.tensor(self.old, dtype=torch.long)[torch.randint(
            len(self.old), (n,), generator=self.rng)].to(self.device) if n else None
        self.replay_x: list[torch.Tensor] = []
        self.net = self.opt = self.ema = None
        self.step = 0
        self.total = self.cfg.steps_first if task_index == 0 else self.cfg.steps_later
        self.result: dict | None = None
        # What training G_k cost, for the runs that load it from the cache (GUIDE after DGR): their
        # budgets count it (DGR.budget, the tables' GPU-minutes). Seconds of this stage over every
        # process that ran a part of it, the GPU waited for at the end of each part.
        self.seconds = 0.0
        self._started: float | None = None

    def elapsed(self) -> float:
        return self.seconds + (time.perf_counter() - self._started if self._started is not None else 0.0)

    # ---- the phases -------------------------------------------------------------------------
    def run(self, task: TaskData) -> dict:
        self._started = time.perf_counter()
        try:
            if self.phase == "label":
                if len(task.unlabelled_x):
                    self._label(task)
                self.phase = "replay" if self.prev is not None else "train"
            if self.phase == "replay":
                self._self_replay()
                self.phase = "train"
            if self.phase == "train":
                self._train(task)
                self.phase = "done"
        finally:  # also when a time limit stops the stage: the next process adds its own part
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds, self._started = self.elapsed(), None
        self.result["meta"]["seconds"] = round(self.seconds, 1)
        return self.result

    def _label(self, task: TaskData) -> None:
        """FixMatch on the task's own classes, then pseudo-label the whole unlabelled stream."""
        c, rng = self.cfg, self.rng
        classes = torch.tensor(self.new, device=self.device)
        y_local = (task.y[:, None] == classes[None]).float().argmax(1)  # labels -> 0..len(new)-1
        if self.lab is None:
            self._new_labeller()
        bl, bu = c.labeller_batch, c.labeller_batch * c.labeller_mu
        with self.ctx.progress("generator: pseudo-labeller", c.labeller_steps - self.lab_step):
            while self.lab_step < c.labeller_steps:
                li = to_device(torch.randint(len(task.x), (bl,), generator=rng), self.device)
                ui = to_device(torch.randint(len(task.unlabelled_x), (bu,), generator=rng), self.device)
                xu = A.to_unit(task.unlabelled_x[ui])
                fp = self.gen.info.flip_p
                x = torch.cat([A.weak_view(A.to_unit(task.x[li]), rng, fp), A.weak_view(xu, rng, fp),
                               A.strong_view(xu, rng, fp)]) * 2 - 1
                with self.gen.autocast():
                    logits = self.lab(cuda_channels_last(x)).float()
                l_sup = F.cross_entropy(logits[:bl], y_local[li])
                l_u, mask = fixmatch_loss(logits[bl:bl + bu], logits[bl + bu:], c.labeller_threshold)
                loss = l_sup + l_u
                # FixMatch's cosine, cos(7 pi s / 16 S)
                optimiser_step(self.lab_opt, loss, c.labeller_lr * math.cos(7 * math.pi * self.lab_step / (16 * c.labeller_steps)))
                self.lab_step += 1
                self.ctx.log_step(self.lab_step, loss, mask=mask)
                self.ctx.tick()
        self.lab.eval()
        preds = []
        with torch.no_grad(), self.gen.autocast():
            for i in range(0, len(task.unlabelled_x), 1024):
                xb = A.to_unit(task.unlabelled_x[i:i + 1024]) * 2 - 1
                preds.append(self.lab(cuda_channels_last(xb)).float().argmax(1))
        self.pseudo = classes[torch.cat(preds)]
        self.lab = self.lab_opt = None  # the labeller is task-local: dropped once it has labelled

    def _new_labeller(self, quiet: bool = False) -> None:
        c = self.cfg
        build = lambda: cuda_channels_last(cifar_resnet(len(self.new), self.gen.info.image_shape[0],
                                                        c.labeller_width, c.labeller_layers).to(self.device))
        self.lab = quiet_build(build) if quiet else build()
        self.lab.train()
        self.lab_opt = torch.optim.SGD(self.lab.parameters(), lr=c.labeller_lr, momentum=0.9, nesterov=True,
                                       weight_decay=5e-4)

    def _self_replay(self) -> None:
        """G_{k-1} samples the old classes, ``gen_batch`` images per call (a tick after each)."""
        c = self.cfg
        model = self.gen.sampler_from(self.prev["ema"]["module"])
        n, done = len(self.replay_y), sum(len(x) for x in self.replay_x)
        with self.ctx.progress(f"generator: self-replay ({c.replay_sampler})", n - done) as advance:
            while done < n:
                y = self.replay_y[done:done + c.gen_batch]
                self.replay_x.append(self.gen.sample(model, y, generator=self.dev_rng, sampler=c.replay_sampler,
                                                     steps=c.replay_ddim_steps))
                done += len(y)
                advance(len(y))
                self.ctx.tick()

    def _train(self, task: TaskData) -> None:
        c = self.cfg
        if self.net is None:
            self._new_net()
        # the training set: real images of the task (semi: every image, with pseudo-labels) + self-replay
        xs, ys = [task.x], [task.y]
        if self.pseudo is not None:
            xs.append(task.unlabelled_x)
            ys.append(self.pseudo)
        if self.replay_x:
            xs.append(torch.cat(self.replay_x))
            ys.append(self.replay_y)
        data_x, data_y = torch.cat(xs), torch.cat(ys)
        diffusion = self.gen.diffusion
        self.net.train()
        net = self.gen.compiled(self.net)
        with self.ctx.progress("generator: diffusion", self.total - self.step):
            while self.step < self.total:
                idx = to_device(torch.randint(len(data_x), (c.batch_size,), generator=self.rng), self.device)
                x = A.to_unit(data_x[idx])
                if c.hflip:  # the recipe's flip, unless the protocol forbids mirroring (digits)
                    x = A.hflip(x, self.rng, self.gen.info.flip_p)
                x_t, t, noise = diffusion.sample_t_and_noise(x * 2 - 1, self.dev_rng)
                with self.gen.autocast():
                    eps = net(x_t.contiguous(memory_format=self.gen.memory_format), t, data_y[idx])
                loss = F.mse_loss(eps.float(), noise)
                optimiser_step(self.opt, loss)
                self.ema.update(self.net)
                self.step += 1
                self.ctx.log_step(self.step, loss, every=100)
                self.ctx.tick()
        self.result = {"raw": self.net.state_dict(), "ema": self.ema.state_dict(),
                       "meta": {"task": self.k + 1, "steps": self.total, "batch_size": c.batch_size,
                                "self_replay_images": len(self.replay_y) if self.replay_y is not None else 0,
                                "self_replay_sampler": c.replay_sampler,
                                "labeller_steps": self.lab_step, "pseudo_labelled": len(self.pseudo)
                                if self.pseudo is not None else 0,
                                # where its seconds (set by run) were measured: a GPU shared with other
                                # runs (scripts/gpu_batch.py sets the count) is slower than one alone
                                "device_name": records.hardware(str(self.device)).get("gpu_name", self.device.type),
                                "gpu_shared_by": records.gpu_shared_by() or 1}}
        self.net = self.opt = self.ema = None
        self.replay_x = []

    def _new_net(self, quiet: bool = False) -> None:
        c = self.cfg
        if self.prev is None:  # task 1 starts from a fresh init (global generators, seeded per task)
            self.net = quiet_build(self.gen.new_model) if quiet else self.gen.new_model()
        else:  # later tasks continue from G_{k-1}'s raw weights with a fresh optimiser and EMA
            self.net = self.gen.model_from(self.prev["raw"])
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=c.lr, weight_decay=c.weight_decay,
                                     fused=self.device.type == "cuda")
        self.ema = EMA(self.net, c.ema_decay, warmup=c.ema_warmup)

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        s = {"k": self.k, "new": self.new, "old": self.old, "total": self.total,
             "phase": self.phase, "rng": self.rng.get_state(), "dev_rng": self.dev_rng.get_state(),
             "lab_step": self.lab_step, "pseudo": self.pseudo, "replay_y": self.replay_y,
             "replay_x": torch.cat(self.replay_x) if self.replay_x else None,
             "step": self.step, "result": self.result, "seconds": self.elapsed()}
        if self.lab is not None:
            s["lab"] = {"model": self.lab.state_dict(), "opt": self.lab_opt.state_dict()}
        if self.net is not None:
            s["net"] = {"model": self.net.state_dict(), "opt": self.opt.state_dict(), "ema": self.ema.state_dict()}
        return s

    def load_state_dict(self, s: dict) -> None:
        self.k, self.new, self.old, self.total = s["k"], s["new"], s["old"], s["total"]
        self.phase, self.lab_step, self.step, self.result = s["phase"], s["lab_step"], s["step"], s["result"]
        self.seconds = float(s.get("seconds", 0.0))  # checkpoints from before it was recorded: 0
        self.rng.set_state(s["rng"])
        self.dev_rng.set_state(s["dev_rng"])
        dev = lambda t: None if t is None else t.to(self.device)
        self.pseudo, self.replay_y = dev(s["pseudo"]), dev(s["replay_y"])
        self.replay_x = [s["replay_x"].to(self.device)] if s["replay_x"] is not None else []
        if "lab" in s:
            self._new_labeller(quiet=True)
            self.lab.load_state_dict(s["lab"]["model"])
            self.lab_opt.load_state_dict(s["lab"]["opt"])
        if "net" in s:
            self._new_net(quiet=True)
            self.net.load_state_dict(s["net"]["model"])
            self.opt.load_state_dict(s["net"]["opt"])
            self.ema.load_state_dict(s["net"]["ema"])
