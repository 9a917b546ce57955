"""JDCL: one UNet that is both a diffusion model and a classifier, trained in two stages per task.

Per task k (see ../shared/specs/jdcl-recipe.md, and docs/jdcl.md for every decision):

1. local stage: a fresh joint model L_k learns task k's real data
   (diffusion loss + 0.001 CE on a strong view at t=0; FixMatch inside the model when labels are scarce);
2. replay: G_{k-1} samples images for the old classes and L_k for the new ones (unconditional DDIM,
   labelled by the sampling model's own classifier, class-balanced by rejection);
3. global stage: the student (initialised from G_{k-1}) trains on the replay set only, distilling
   ε-predictions and class posteriors from G_{k-1} (old-class samples) and L_k (new-class samples).
   The result is G_k. For task 1, L_1 becomes G_1.

The method trains in a step loop that calls ``ctx.tick()``, so a run can stop and resume inside any
stage; ``phase`` records where it is (local -> replay -> global -> done). Distributed, every rank
draws the same global batch and trains on its slice (``D.shard``); docs/distributed.md says why.
"""
from __future__ import annotations

import json
from functools import partial

import torch
import torch.nn.functional as F

from .. import distributed as D
from ..artefacts import save_class_grid
from ..config import ConfigError
from ..data import augment as A
from ..fastpath import autocast, maybe_compile, to_device, unet_memory_format
from ..memory import check_joint_unet_fits
from .base import Method, ProtocolInfo, TaskData, optimiser_step
from ..jdcl.diffusion import EMA, GaussianDiffusion, global_ema
from ..jdcl.losses import fixmatch, fixmatch_forward, kd_classifier, kd_diffusion, teacher_targets
from ..jdcl.replay import class_balanced, confident_labels
from ..jdcl.config import PRESETS, JDCLConfig, differences_from_paper, label_for_config
from ..jdcl.unet import ClassifyForward, JointForward, JointUNet, UNetConfig, count_parameters


class JDCL(Method):
    name = "jdcl"
    display_name = "JDCL"
    description = "JDCL (ICCV 2025): joint diffusion + classifier UNet, local/global stages with generative replay"
    Config = JDCLConfig
    presets = PRESETS
    uses_unlabelled = True
    has_generator = True
    supports_resume_in_task = True
    supports_distributed = True

    @classmethod
    def global_batch(cls, cfg: JDCLConfig) -> int:
        return cfg.batch_size

    @classmethod
    def time_loops(cls, preset, device, steps, warmup, semi, log, profile: int = 0, overrides: dict | None = None) -> dict:
        from ..loop_bench import time_jdcl_loops

        return time_jdcl_loops(cls, preset, device, steps=steps, warmup=warmup, semi=semi, log=log, profile=profile,
                               overrides=overrides)

    label_for_config = staticmethod(label_for_config)  # jdcl/config.py: from a record's method config
    differences_from_paper = staticmethod(differences_from_paper)

    # ---- setup ------------------------------------------------------------------------
    def setup(self, info: ProtocolInfo) -> None:
        super().setup(info)
        c = self.cfg
        if c.compile and c.compile_mode != "default" and D.is_distributed() and self.device.type == "cuda":
            self.ctx.info(f"compile_mode={c.compile_mode} runs as 'default' in distributed runs (no CUDA graphs "
                          "around DDP's gradient hooks)")
        self.unet_cfg = base = UNetConfig.named(c.unet, info.num_classes, info.image_shape, c.model_channels)
        with torch.device("meta"):  # count parameters without allocating them
            self.num_params = count_parameters(JointUNet(base))
        self.diffusion = GaussianDiffusion().to(self.device)
        self.amp = c.amp and self.device.type == "cuda"
        self.semi = info.semi_supervised
        check_joint_unet_fits(base, info.image_shape, self._images_per_forward(), self.num_params, self.device,
                              self.autocast, c.batch_size, self.ctx.info)
        if D.is_distributed():  # every global batch must split evenly over the processes
            D.local_batch(c.batch_size, "batch_size")
            if self.semi:
                D.local_batch(c.ssl_labelled_batch, "ssl_labelled_batch")
        if self.semi and (warning := c.ssl_ema_warning()):
            self.ctx.info(warning)
        self.G: dict | None = None  # {"raw": state_dict, "ema": EMA state} of the global model
        self.phase = "idle"
        self.counters = {"local_steps": 0, "global_steps": 0, "images_seen": 0, "replay_sampled": 0,
                         "replay_accepted": 0, "ddim_steps": c.ddim_steps}

    def _images_per_forward(self) -> int:
        """Images in one training forward on this process: the batch (supervised, global stage), or the
        FixMatch local step's labelled and strong unlabelled views (semi-supervised; the weak
        unlabelled views pass without gradients, keeping nothing for the backward)."""
        c = self.cfg
        images = max(c.batch_size, c.ssl_labelled_batch * (1 + c.ssl_mu) if self.semi else 0)
        return -(-images // D.world_size())

    def new_model(self) -> JointUNet:
        m = JointUNet(self.unet_cfg).to(self.device)
        return m.to(memory_format=unet_memory_format(self.device, self.compiled))

    def model_from(self, state: dict, ema: bool) -> JointUNet:
        m = self.new_model()
        m.load_state_dict(state["raw"] if not ema and "raw" in state else state["ema"]["module"])
        return m

    def snapshot(self) -> dict:
        """The current model as a global/local model record (raw weights kept only if configured)."""
        s = {"ema": self.ema.state_dict()}
        if self.cfg.keep_raw_global:
            s["raw"] = self.net.state_dict()
        return s

    def _device_rng(self) -> torch.Generator:
        seed = int(torch.randint(0, 2**62, (1,), generator=self.ctx.rng))
        return torch.Generator(self.device).manual_seed(seed)

    def _adamw(self) -> torch.optim.AdamW:
        return torch.optim.AdamW(self.net.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                 fused=self.device.type == "cuda")

    def _train_fn(self, find_unused_parameters: bool = False):
        """The training forward, ``(x_t, t, x_cls) -> (eps, logits)``: through DDP when distributed."""
        if D.is_distributed():
            return self._fn(D.wrap_ddp(JointForward(self.net), find_unused_parameters))
        # through a module's forward: torch.compile compiles calls, not other methods
        return self._fn(JointForward(self.net))

    def _weak_fn(self):
        """The classifier's pass alone (the FixMatch weak views' pseudo-labels), compiled as _train_fn."""
        return self._fn(ClassifyForward(self.net))

    def autocast(self):
        return autocast(self.device, self.amp)

    @property
    def compiled(self) -> bool:
        """Whether the UNet runs under torch.compile (on CUDA; elsewhere maybe_compile leaves it eager)."""
        return self.cfg.compile

    def _fn(self, model):
        """Compiled forward where asked for (CUDA only), with a clean fallback to eager. Under DDP,
        dynamo compiles the wrapped module in pieces at DDP's gradient buckets (its DDPOptimizer), so
        the all-reduce still overlaps the backward; CUDA graphs are left out there (setup says so)."""
        mode = None if self.cfg.compile_mode == "default" or D.is_distributed() else self.cfg.compile_mode
        # dynamic=False: every call here has a fixed batch shape per stage, and only a few of them. Left
        # to torch's default, the joint forward's second shape (the semi-supervised local stage's 448
        # noised + 512 classifier images, then the global stage's 512 + 512) compiled a graph with a
        # symbolic batch size, which then served the global stage and every later local stage of the
        # process: on the 2026-12-07 semi-5pct `standard` run (H100), 17.5 s per 250 global steps
        # against cifar10-t5's 13.5, and 19.1 s per 400 local steps in a process's second task against
        # 13.7 in its first (the run's logs)
        return maybe_compile(model, enabled=self.compiled, device=self.device, info=self.ctx.info,
                             name="the JDCL UNet", mode=mode, dynamic=False)

    # ---- hooks --------------------------------------------------------------------------
    def begin_task(self, task: TaskData) -> None:
        c = self.cfg
        self.phase, self.step = "local", 0
        self.dev_rng = self._device_rng()
        # CIFAR recipe: every local model starts from scratch (rank 0's initialisation on every rank);
        # local_init=global starts it from G_{k-1} (raw weights where kept, else its EMA weights)
        self.net = D.sync_params(self.new_model())
        if c.local_init == "global" and self.G is not None:
            self.net.load_state_dict(self.G["raw"] if "raw" in self.G else self.G["ema"]["module"])
        self.opt = self._adamw()
        self.ema = self._local_ema()
        self.replay = None

    def train_task(self, task: TaskData) -> None:
        if self.phase == "local":
            self._train_local(task)
            self.L = self.snapshot()
            if self.cfg.diagnostics:
                self.ctx.model_accuracy(self._predictor(self.L), task.classes, "local model (EMA)")
            self.phase = "replay" if task.index > 0 else "done"
            if task.index == 0:
                self.G = self.L
        if self.phase == "replay":
            self.replay = self._make_replay(task)
            self._begin_global()
            self.phase = "global"
        if self.phase == "global":
            self._train_global(task)
            self.G = self.snapshot()
            self.phase = "done"

    def end_task(self, task: TaskData) -> None:
        self._save_sample_grid(task)
        # free everything but the global model: it is all the next task needs
        self.net = self.opt = self.ema = self.replay = self.L = None
        self.teachers = None
        self.phase = "idle"

    def _predictor(self, state: dict):
        """uint8 images -> logits of ``state``'s EMA model (for diagnostics)."""
        model = self.model_from(state, ema=True).eval()

        @torch.no_grad()
        def predict(x):
            with self.autocast():
                return model.classify(A.to_unit(x) * 2 - 1).float()
        return predict

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "_eval_of", None) is not self.G:  # one eval model per global model
            self._eval_predict, self._eval_of = self._predictor(self.G), self.G
        return self._eval_predict(x)

    # ---- local stage -------------------------------------------------------------------
    def _local_ema(self) -> EMA:
        c = self.cfg
        if self.semi:
            return EMA(self.net, c.ssl_ema_decay, warmup=c.ssl_ema_warmup)
        return EMA(self.net, c.ema_decay, warmup=True)

    def _train_local(self, task: TaskData) -> None:
        c = self.cfg
        fwd = self._train_fn()
        loss_fn = partial(self._ssl_loss, weak=self._weak_fn()) if self.semi else self._sup_loss
        self.net.train()
        with self.ctx.progress("local stage", c.local_steps - self.step):
            while self.step < c.local_steps:
                loss, parts = loss_fn(fwd, task)
                self._optimise(loss)
                self.step += 1
                self.counters["local_steps"] += 1
                self.ctx.log_step(self.step, loss, every=100, **parts)
                self.ctx.tick()

    def _views(self, x: torch.Tensor, crop_scale: float,
               x_diff: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The diffusion view (flip, crop) and the classifier's strong view of ``x`` in [0, 1], as [-1, 1];
        the diffusion view of ``x_diff`` instead where given (global_new_source = real-diffusion)."""
        rng, fp = self.ctx.rng, self.info.flip_p
        x_diff = A.random_resized_crop(A.hflip(x if x_diff is None else x_diff, rng, fp), rng,
                                       scale=(crop_scale, 1.0))
        return x_diff * 2 - 1, A.strong_view(x, rng, fp) * 2 - 1

    def _sup_loss(self, fwd, task: TaskData):
        c = self.cfg
        idx = to_device(torch.randint(len(task.x), (c.batch_size,), generator=self.ctx.rng), self.device)
        x_diff, x_cls = self._views(A.to_unit(task.x[idx]), c.local_crop_scale)
        x_t, t, noise = self.diffusion.sample_t_and_noise(x_diff, self.dev_rng)
        # this rank's slice of the global batch (all of it in one process)
        x_t, t, noise, x_cls, y = map(D.shard, (x_t, t, noise, x_cls, task.y[idx]))
        with self.autocast():
            eps, logits = fwd(x_t, t, x_cls)
        l_diff = F.mse_loss(eps.float(), noise)
        l_ce = F.cross_entropy(logits.float(), y)
        self.counters["images_seen"] += c.batch_size
        return l_diff + c.cls_weight * l_ce, {"diff": l_diff, "ce": l_ce}

    def _ssl_loss(self, fwd, task: TaskData, weak):
        """FixMatch inside the joint model: diffusion on the unlabelled stream only."""
        c = self.cfg
        bl, bu = c.ssl_labelled_batch, c.ssl_labelled_batch * c.ssl_mu
        li = to_device(torch.randint(len(task.x), (bl,), generator=self.ctx.rng), self.device)
        ui = to_device(torch.randint(len(task.unlabelled_x), (bu,), generator=self.ctx.rng), self.device)
        xl, xu = A.to_unit(task.x[li]), A.to_unit(task.unlabelled_x[ui])
        rng, fp = self.ctx.rng, self.info.flip_p
        u_diff = A.random_resized_crop(A.hflip(xu, rng, fp), rng, scale=(c.local_crop_scale, 1.0)) * 2 - 1
        wl, wu, su = A.weak_view(xl, rng, fp), A.weak_view(xu, rng, fp), A.strong_view(xu, rng, fp)
        x_t, t, noise = self.diffusion.sample_t_and_noise(u_diff, self.dev_rng)
        # this rank's slice of each part of the global batch (all of it in one process)
        wl, wu, su, yl, x_t, t, noise = map(D.shard, (wl, wu, su, task.y[li], x_t, t, noise))
        eps, logits = fixmatch_forward(fwd, weak, self.autocast, x_t, t, wl * 2 - 1, wu * 2 - 1, su * 2 - 1)
        l_diff = F.mse_loss(eps.float(), noise)
        l_sup, l_unsup, mask = fixmatch(logits, len(wl), len(wu), yl, c.ssl_threshold)
        self.counters["images_seen"] += bl + bu
        return l_diff + c.cls_weight * (l_sup + l_unsup), {"diff": l_diff, "ce": l_sup, "mask": mask.mean()}

    def _optimise(self, loss: torch.Tensor, idle=()) -> None:
        optimiser_step(self.opt, loss, idle=idle)  # idle: out of this step's loss (see optimiser_step)
        self.ema.update(self.net)

    # ---- replay ----------------------------------------------------------------------------
    @torch.no_grad()
    def _sample_labelled(self, state: dict, n: int, gen: torch.Generator,
                         filtered: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """n unconditional DDIM samples (EMA weights, eval mode) and their own classifier's labels;
        ``filtered``: -1 (no class, never kept) where that label's probability is below
        ``replay_confidence_threshold``."""
        model = self.model_from(state, ema=True).eval()
        fn = self._fn(model)
        shape = (n, *self.info.image_shape)
        noise = torch.randn(shape, device=self.device, generator=gen)
        with self.autocast():
            clip = self.cfg.sampler_clip_x0
            if self.cfg.sampler == "ddim":
                sample = self.diffusion.ddim_sample
            else:
                sample = partial(self.diffusion.dpm_solver_sample, spacing=self.cfg.sampler_spacing)
            x = sample(fn, shape, steps=self.cfg.ddim_steps, noise=noise, device=self.device,
                       clip_denoised=clip, return_pred_x0=clip)
            x = x.clamp(-1, 1)
            logits = model.classify(x).float()
        y = confident_labels(logits, self.cfg.replay_confidence_threshold if filtered else 0.0)
        return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8), y

    def _gen_batch_per_rank(self) -> int:
        """Each rank's share of ``gen_batch``: the one batch shape the compiled sampler sees."""
        return -(-self.cfg.gen_batch // D.world_size())

    def _fill(self, state: dict, classes: list[int], crop_scale: float, desc: str, gen: torch.Generator):
        """Class-balanced replay for ``classes`` from one generator (replay.class_balanced)."""
        c = self.cfg
        per_rank = self._gen_batch_per_rank()
        with self.ctx.progress(f"replay ({desc})", c.replay_per_class * len(classes)) as advance:
            x, y, counts, sampled = class_balanced(
                lambda: self._sample_labelled(state, per_rank, gen), classes, c.replay_per_class,
                c.max_sampled_factor, crop_scale, self.info, self.ctx.rng, self.device, advance)
        self.counters["replay_sampled"] += sampled
        self.counters["replay_accepted"] += sum(v["accepted"] for v in counts.values())
        return x, y, counts, sampled

    def _make_replay(self, task: TaskData) -> dict:
        old = [k for k in task.seen_classes if k not in task.classes]
        gen = self._replay_rng()
        xo, yo, co, so = self._fill(self.G, old, 0.90, "old classes from G", gen)
        xn, yn, cn, sn = self._fill(self.L, task.classes, 0.85, "new classes from L", gen)
        counts = {"task": task.index + 1, "per_class": {**co, **cn}, "sampled_old": so, "sampled_new": sn,
                  "ddim_steps": self.cfg.ddim_steps, "quota_per_class": self.cfg.replay_per_class}
        missing = [k for k, v in counts["per_class"].items() if v["accepted"] == 0]
        if missing:
            self.ctx.info(f"warning: the generators produced no sample of classes {missing}; they get no replay")
        x, y = torch.cat([xo, xn]), torch.cat([yo, yn])
        if len(x) == 0:
            raise ConfigError(f"task {task.index + 1}: no replay sample was kept for any class (sampled {so + sn}); "
                               f"lower replay_confidence_threshold (now {self.cfg.replay_confidence_threshold}) or "
                               "raise max_sampled_factor")
        if self.cfg.diagnostics:
            self.ctx.replay_diagnostics(x, y, task.seen_classes, "replay (old from G, new from L)")
        if D.is_main():  # every rank holds the same replay set; one writes it down
            self.ctx.artefact_path(f"replay_counts_task{task.index + 1}.json").write_text(json.dumps(counts, indent=2))
            save_class_grid(self.ctx, f"replay_task{task.index + 1}.png", x, y, self.cfg.grid_per_class)
        return {"x": x, "y": y, "old": torch.tensor(old, device=self.device, dtype=torch.long)}

    def _diffusion_pool(self, task: TaskData) -> torch.Tensor | None:
        """The task's real images, labelled and unlabelled, for the diffusion terms of the new-class
        samples (``global_new_source = "real-diffusion"``; None otherwise). Those terms use no label,
        so the unlabelled images need none. Rebuilt from the task at each stage start and on resume:
        nothing of it is in a checkpoint."""
        if self.cfg.global_new_source != "real-diffusion":
            return None
        return torch.cat([task.x, task.unlabelled_x]) if len(task.unlabelled_x) else task.x

    def _replay_rng(self) -> torch.Generator:
        """Replay noise: the shared ``dev_rng`` in one process; one generator per rank, seeded from it,
        when distributed (the ranks must sample different images)."""
        if not D.is_distributed():
            return self.dev_rng
        seed = int(torch.randint(0, 2**62, (1,), generator=self.dev_rng, device=self.device))
        return torch.Generator(self.device).manual_seed(D.rank_seed(seed))

    def _save_sample_grid(self, task: TaskData) -> None:
        """After each task: what the global model generates, grouped by its own labels (rank 0 only)."""
        if not D.is_main():
            return
        gen_state = self.dev_rng.get_state()
        n = max(64, 4 * self.cfg.grid_per_class * len(task.seen_classes))
        # sampled at the replay's batch shape and cut: a shape of its own (64, 128, ... as classes are
        # seen) made the compiled sampler compile again after every task, 15-30 s each on an H100
        # (the logs of results/superseded/cifar10-t5-jdcl-standard-seed0-before-replay-levers), where the extra
        # images cost well under a second
        x, y = self._sample_labelled(self.G, self._gen_batch_per_rank(), self.dev_rng,  # not counted: a diagnostic
                                     filtered=False)
        x, y = x[:n], y[:n]
        self.dev_rng.set_state(gen_state)  # diagnostics must not change the training randomness
        save_class_grid(self.ctx, f"samples_task{task.index + 1}.png", x, y, self.cfg.grid_per_class)

    # ---- global stage -----------------------------------------------------------------------
    def _begin_global(self) -> None:
        c = self.cfg
        self.step = 0
        ema_t = c.teacher_weights == "ema"
        self.teachers = {"old": self.model_from(self.G, ema_t).eval().requires_grad_(False),
                         "new": self.model_from(self.L, ema_t).eval().requires_grad_(False)}
        # the student starts from G_{k-1}'s raw weights and continues its EMA (count included), or
        # with global_ema_restart its EMA starts at G_{k-1}'s EMA weights with the warm-up from zero
        self.net = self.model_from(self.G, ema=False)
        self.opt = self._adamw()
        self.ema = global_ema(self.net, self.G["ema"], c.ema_decay)
        if c.global_ema_restart:
            self.ema.num_updates = 0

    def _teacher_fns(self) -> dict:
        """Each frozen teacher's joint forward, compiled like the student's. Through a module's
        forward: ``self._fn(m).forward_joint`` would reach the eager module's method, and the two
        teacher passes of every global step ran eager."""
        return {k: self._fn(JointForward(m)) for k, m in self.teachers.items()}

    def _train_global(self, task: TaskData) -> None:
        c = self.cfg
        # the classifier head is out of the loss until cls_start: DDP must not wait for its gradients
        fwd = self._train_fn(find_unused_parameters=True)
        teachers = self._teacher_fns()
        rx, ry = self.replay["x"], self.replay["y"]
        n = len(ry)
        real_pool = self._diffusion_pool(task)
        cls_start = int(c.cls_start_fraction * c.global_steps)
        head = tuple(self.net.head.parameters())  # out of the loss until cls_start
        self.net.train()
        with self.ctx.progress("global stage", c.global_steps - self.step):
            while self.step < c.global_steps:
                # drawn on the CPU from the run's generator, as every index draw
                idx = to_device(torch.randint(n, (c.batch_size,), generator=self.ctx.rng), self.device)
                x, y = A.to_unit(rx[idx]), ry[idx]
                is_old = torch.isin(y, self.replay["old"])
                real = None
                if real_pool is not None:  # new-class samples: a real image of the task for the diffusion terms
                    ridx = to_device(torch.randint(len(real_pool), (c.batch_size,), generator=self.ctx.rng),
                                     self.device)
                    real = torch.where(is_old.view(-1, 1, 1, 1), x, A.to_unit(real_pool[ridx]))
                x_diff, x_cls = self._views(x, c.global_crop_scale, real)
                x_t, t, noise = self.diffusion.sample_t_and_noise(x_diff, self.dev_rng)
                # this rank's slice of the global batch (all of it in one process)
                x_t, t, noise, x_cls, y, is_old = map(D.shard, (x_t, t, noise, x_cls, y, is_old))
                with torch.no_grad(), self.autocast():
                    eps_T, logits_T = teacher_targets(teachers, is_old, x_t, t, x_cls)
                with self.autocast():
                    eps, logits = fwd(x_t, t, x_cls)
                eps, logits = eps.float(), logits.float()
                l_simple = F.mse_loss(eps, noise)
                kd_diff = kd_diffusion(eps, eps_T, is_old, c.kd_weighting)
                loss = c.l_simple_weight * l_simple + c.kd_diff_weight * kd_diff
                parts = {"diff": l_simple, "kd": kd_diff}
                if self.step >= cls_start:
                    kd_cls = kd_classifier(logits, logits_T, is_old, c.kd_weighting)
                    ce = F.cross_entropy(logits, y)
                    loss = loss + c.global_ce_weight * ce + c.kd_cls_weight * c.kd_diff_weight * kd_cls
                    parts["kd_cls"] = kd_cls
                self._optimise(loss, idle=() if self.step >= cls_start else head)
                self.step += 1
                self.counters["global_steps"] += 1
                self.counters["images_seen"] += c.batch_size
                self.ctx.log_step(self.step, loss, every=100, **parts)
                self.ctx.tick()

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        s = {"phase": self.phase, "G": self.G, "counters": dict(self.counters)}
        if self.phase in ("local", "replay", "global", "done"):
            s.update(step=self.step, net=self.net.state_dict(), opt=self.opt.state_dict(),
                     ema=self.ema.state_dict(), dev_rng=self.dev_rng.get_state(),
                     L=getattr(self, "L", None) if self.phase != "local" else None)
        if self.phase == "global":
            s["replay"] = {k: v.cpu() for k, v in self.replay.items()}
        return s

    def load_state_dict(self, s: dict) -> None:
        self.phase, self.G, self.counters = s["phase"], s["G"], dict(s["counters"])
        if self.phase in ("local", "replay", "global", "done"):
            self.L = s["L"]
            if self.phase == "global":
                self.replay = {k: v.to(self.device) for k, v in s["replay"].items()}
                self._begin_global()
            else:
                self.net = self.new_model()
                self.opt = self._adamw()
                self.ema = self._local_ema()
            self.net.load_state_dict(s["net"])
            self.opt.load_state_dict(s["opt"])
            self.ema.load_state_dict(s["ema"])
            self.step = s["step"]
            self.dev_rng = torch.Generator(self.device)
            self.dev_rng.set_state(s["dev_rng"])

    # ---- reporting -------------------------------------------------------------------------
    def budget(self) -> dict:
        c = self.cfg
        return {**self.counters, "batch_size": c.batch_size, "unet": c.unet,
                "unet_params": self.num_params,
                "paper_local_steps": 50_000, "paper_global_steps": 30_000, "paper_ddim_steps": 250}
