"""DGR with a diffusion generator ("DGR diffusion" of GUIDE's and JDCL's tables).

Per task k (spec: baselines.md §3.2 and §2; docs/dgr.md for every decision):

1. generator (stage 1, ``cond_diffusion.GeneratorStage``): G_k = G_{k-1} trained further on the real
   task-k images plus its own replay of the old classes; loaded from the shared cache when DGR or
   GUIDE already trained it for this protocol, config and seed;
2. classifier (stage 2): one ResNet-18 trained on a batch of B/(k+1) real task-k images and
   B*k/(k+1) images that G_{k-1} generates for uniformly drawn old classes (labels = the
   conditioning class), regenerated every ``regen_every`` steps; CE over the seen classes.

GUIDE (guide.py) is this class with classifier guidance switched on in the replay sampler.
Both stages run in step loops calling ``ctx.tick()``, so a run can stop and resume anywhere.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from jdcl_bench.artefacts import save_class_grid
from jdcl_bench.data import augment as A
from jdcl_bench.data.colour import color_jitter
from jdcl_bench.fastpath import autocast, cuda_channels_last, to_device
from jdcl_bench.methods.base import Method, ProtocolInfo, TaskData, derive_seed, optimiser_step
from jdcl_bench.models import cifar_resnet, normalise

from .cond_diffusion import ConditionalGenerator, GeneratorConfig, GeneratorStage, fixmatch_loss
from .generator_cache import GeneratorCache, data_fingerprint


@dataclass
class ClassifierStageConfig:
    width: int = 64
    layers: tuple[int, ...] = (2, 2, 2, 2)
    batch_size: int = 256           # real B/(k+1) + replay B*k/(k+1)
    steps_first: int = 5000
    steps_later: int = 2000
    lr_first: float = 0.1           # SGD, linearly annealed to 0 over each task
    lr_later: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True            # GUIDE's CIFAR augmentation (crop, rotation, flip, colour jitter, erasing)
    rotate_p: float = 0.5           # kornia RandomRotation's default p in GUIDE's code (the suite rotated all before)
    # replay sampler: ddim (GUIDE's code), or dpm-solver++ (DPM-Solver++(2M), its log-SNR grid; as
    # faithful as DDIM-50 at 5x the rate on a JDCL model in 10 steps, results/bench/README.md; not yet
    # measured on DGR's conditional generator, so no preset uses it); either runs ddim_steps evaluations
    sampler: str = "ddim"
    ddim_steps: int = 50
    regen_every: int = 5            # replay batches are regenerated every this many steps
    # semi-supervised protocols only (the suite's extension): FixMatch on the unlabelled stream
    ssl_unlabelled_batch: int = 448
    ssl_threshold: float = 0.95
    ssl_weight: float = 1.0

    def validate(self) -> dict[str, str]:
        if self.sampler not in ("ddim", "dpm-solver++"):
            return {"sampler": "not one of ddim, dpm-solver++ (e.g. --set classifier.sampler=ddim)"}
        return {}


@dataclass
class DGRConfig:
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    classifier: ClassifierStageConfig = field(default_factory=ClassifierStageConfig)
    amp: bool = True                # bf16 autocast on CUDA
    compile: bool = True            # torch.compile the generator UNet (CUDA only; eager if it fails)
    cache: bool = True              # share generators through <out>/shared/generators
    grid_per_class: int = 8
    # Replay diagnostics (jdcl_bench.replay_quality, ctx.replay_diagnostics): the fidelity, feature
    # Fréchet distance and pixel health of the classifier's replay, in metrics.json. Measurement
    # only (nothing reaches training); on in `fast`, off in `paper` and `smoke`.
    diagnostics: bool = False


PRESETS = {
    # CIFAR-10/5 in about 4 minutes on one H100 (bf16). A generator step of the suite's "fast" UNet
    # (7M params with the label embedding) costs ~60 ms at batch 128 there, so the generator gets
    # ~1-2 % of the official steps; self-replay and replay use DDIM-25; the classifier ~15 %.
    "fast": {"generator.unet": "fast", "generator.batch_size": 128, "generator.steps_first": 1000,
             "generator.steps_later": 350, "generator.ema_decay": 0.999, "generator.ema_warmup": True,
             "generator.replay_per_task": 1000, "generator.replay_sampler": "ddim",
             "generator.replay_ddim_steps": 25, "generator.gen_batch": 2000,
             "generator.labeller_steps": 300, "generator.labeller_batch": 32,
             "classifier.steps_first": 600, "classifier.steps_later": 300, "classifier.ddim_steps": 25,
             "classifier.regen_every": 10, "classifier.ssl_unlabelled_batch": 256, "diagnostics": True},
    "smoke": {"generator.unet": "smoke", "generator.batch_size": 16, "generator.steps_first": 6,
              "generator.steps_later": 4, "generator.ema_decay": 0.9, "generator.ema_warmup": True,
              "generator.replay_per_task": 6, "generator.replay_sampler": "ddim", "generator.replay_ddim_steps": 3,
              "generator.gen_batch": 8, "generator.labeller_width": 8, "generator.labeller_layers": (1, 1, 1, 1),
              "generator.labeller_steps": 3, "generator.labeller_batch": 4, "generator.labeller_mu": 2,
              "classifier.width": 8, "classifier.layers": (1, 1, 1, 1), "classifier.batch_size": 16,
              "classifier.steps_first": 6, "classifier.steps_later": 4, "classifier.ddim_steps": 3,
              "classifier.regen_every": 2, "classifier.ssl_unlabelled_batch": 8, "grid_per_class": 2},
}


def classifier_augment(x: torch.Tensor, gen: torch.Generator, flip_p: float = 0.5,
                       rotate_p: float = 0.5) -> torch.Tensor:
    """GUIDE's classifier augmentation on [0, 1] images, batched: RandomCrop (zero padding H/8),
    RandomRotation(±30°, probability ``rotate_p``), h-flip (probability ``flip_p``), ColorJitter(0.1, 0.1, 0.1, 0.1),
    RandomErasing(p=0.5, scale 0.1-0.5, ratio 0.3-3.3, black). Random numbers come from the CPU
    generator ``gen``."""
    b, c, h, w = x.shape
    x = A.random_crop(x, gen, padding=max(1, h // 8), mode="constant")
    u = torch.rand(b, 12, generator=gen, dtype=torch.float64)
    dev = lambda v: to_device(v, x.device, x.dtype).view(-1, 1, 1, 1)
    # rotation about the centre, bilinear, zeros outside
    a = (2 * u[:, 0] - 1) * math.radians(30)
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    grid = F.affine_grid(to_device(theta, x.device, x.dtype), list(x.shape), align_corners=False)
    rotated = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = torch.where(dev(u[:, 11] < rotate_p).bool(), rotated, x)
    x = torch.where(dev(u[:, 1] < flip_p).bool(), x.flip(3), x)
    # colour jitter, fixed order: brightness, contrast, saturation, hue (0.1 of a turn at most)
    x = color_jitter(x, dev(1 + 0.1 * (2 * u[:, 2] - 1)), dev(1 + 0.1 * (2 * u[:, 3] - 1)),
                     dev(1 + 0.1 * (2 * u[:, 4] - 1)), dev(0.1 * (2 * u[:, 5] - 1)))
    # random erasing of one rectangle with probability 0.5
    area = (0.1 + 0.4 * u[:, 6]) * h * w
    ratio = torch.exp(math.log(0.3) + u[:, 7] * (math.log(3.3) - math.log(0.3)))
    eh = (area * ratio).sqrt().round().clamp(1, h).long()
    ew = (area / ratio).sqrt().round().clamp(1, w).long()
    y0 = (u[:, 8] * (h - eh + 1)).long()
    x0 = (u[:, 9] * (w - ew + 1)).long()
    on = u[:, 10] < 0.5
    rows = torch.arange(h)[None]
    cols = torch.arange(w)[None]
    in_r = (rows >= y0[:, None]) & (rows < (y0 + eh)[:, None])
    in_c = (cols >= x0[:, None]) & (cols < (x0 + ew)[:, None])
    mask = to_device((in_r[:, :, None] & in_c[:, None, :] & on[:, None, None])[:, None], x.device)
    return x.masked_fill(mask, 0.0)


class DGR(Method):
    name = "dgr"
    display_name = "DGR (diffusion)"
    description = ("DGR diffusion: continually trained class-conditional diffusion model (self-replay) + "
                   "ResNet-18 trained on real current and generated past data")
    Config = DGRConfig
    presets = PRESETS
    uses_unlabelled = True      # on semi-supervised protocols (the suite's extension)
    has_generator = True
    supports_resume_in_task = True

    # ---- setup ------------------------------------------------------------------------------
    @classmethod
    def time_loops(cls, preset, device, steps, warmup, semi, log, profile: int = 0, overrides: dict | None = None) -> dict:
        """``jdcl-bench bench --loop --method dgr``: the generator's diffusion loop and task 2's
        classifier loop (loop_bench.py); ``profile``: that many more steps of each under torch.profiler;
        ``overrides``: the preset's fields changed (--settings, --set)."""
        from .loop_bench import time_classifier_loop, time_generator_loop

        if semi:
            raise ValueError("--semi: the generator's diffusion loop is the same; its FixMatch labeller is not timed")
        out = time_generator_loop(cls.config_for(preset, overrides or {}), preset, device, steps=steps, warmup=warmup,
                                  log=log, profile=profile)
        out["stages"].append(time_classifier_loop(cls, preset, device, steps=steps, warmup=warmup, log=log,
                                                  profile=profile, overrides=overrides))
        return out

    def setup(self, info: ProtocolInfo) -> None:
        super().setup(info)
        c = self.cfg
        self.amp = c.amp and self.device.type == "cuda"
        self.semi = info.semi_supervised
        self.gen = ConditionalGenerator(c.generator, info, self.device, self.amp, compile=c.compile, log=self.ctx.info)
        self.cache = None
        if c.cache:
            key = GeneratorCache.key_for(c.generator, self.ctx.seed, info, self.device, self.amp)
            self.cache = GeneratorCache(self.ctx.shared_dir("generators"), info.name, key)
        cc = c.classifier
        self.classifier = cifar_resnet(info.num_classes, info.image_shape[0], cc.width, cc.layers).to(self.device)
        if self.device.type == "cuda":
            self.classifier = self.classifier.to(memory_format=torch.channels_last)
        self.classifier_params = sum(p.numel() for p in self.classifier.parameters())
        self.G: dict | None = None          # the latest finished generator {"raw", "ema", "meta"}
        self.replay_G: dict | None = None   # EMA weights the classifier replays from (G_{k-1})
        self.phase = "idle"
        self.stage: GeneratorStage | None = None
        self.counters = {"generator_steps": 0, "generator_steps_trained": 0, "generator_source": [],
                         "self_replay_images": 0, "self_replay_images_generated": 0, "labeller_steps": 0,
                         "classifier_steps": 0, "classifier_images_seen": 0, "replay_images": 0,
                         "replay_regenerations": 0,
                         # seconds the run's generators took to train: here, or in the run that
                         # cached those it loaded (untimed: loaded ones that did not record it)
                         "generator_seconds_trained": 0.0, "generator_seconds_loaded": 0.0,
                         "generators_loaded_untimed": 0, "generators_loaded_shared_by": 1}

    # ---- hooks ------------------------------------------------------------------------------
    def begin_task(self, task: TaskData) -> None:
        c = self.cfg.classifier
        # two draws, always in this order: stage 1 never depends on what stage 2 does
        gen_seed = int(torch.randint(0, 2**62, (1,), generator=self.ctx.rng))
        cls_seed = int(torch.randint(0, 2**62, (1,), generator=self.ctx.rng))
        self.replay_G = self.G["ema"]["module"] if self.G is not None else None
        self.stage = GeneratorStage(self.gen, self.ctx, task.index, task.seen_classes, task.classes,
                                    self.G, gen_seed, self.semi)
        self.phase = "generator"
        self.cls_dev_rng = torch.Generator(self.device).manual_seed(cls_seed)
        self.cls_step = 0
        self.cls_total = c.steps_first if task.index == 0 else c.steps_later
        self.cls_opt = self._new_optimizer()
        self.replay: dict | None = None
        self.replay_counts: dict[int, int] = {}
        self._replay_model = None

    def train_task(self, task: TaskData) -> None:
        if self.phase == "generator":
            self.G = self._generator_stage(task)
            self.stage = None
            self.phase = "classifier"
        if self.phase == "classifier":
            self._train_classifier(task)
            self.phase = "done"

    def end_task(self, task: TaskData) -> None:
        self._save_generator_grid(task)
        self.replay_G = self.replay = self._replay_model = self.cls_opt = None
        self.phase = "idle"

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.classifier.eval()
        with self.autocast():
            return self.classifier(cuda_channels_last(normalise(x))).float()

    def autocast(self):
        return autocast(self.device, self.amp)

    # ---- stage 1: the generator, trained here or loaded from the shared cache ----------------
    def _generator_stage(self, task: TaskData) -> dict:
        parent = self.G["meta"]["fingerprint"] if self.G is not None else ""
        fp = data_fingerprint(task, parent)
        G = self._from_cache(task, fp)
        if G is not None:
            return G
        if self.cache is None:
            return self._train_generator(task, fp)
        with self.cache.claim(self.ctx):
            G = self._from_cache(task, fp)  # another process may have trained it while we waited
            if G is None:
                G = self._train_generator(task, fp)
                self.cache.save(task.index, G, fp)
        return G

    def _from_cache(self, task: TaskData, fp: str) -> dict | None:
        G = self.cache.load(task.index, fp, self.device) if self.cache is not None else None
        if G is not None:
            self.ctx.info(f"generator of task {task.index + 1} loaded from {self.cache.path(task.index)}")
            self._count_generator(G["meta"], "cache")
        return G

    def _train_generator(self, task: TaskData, fp: str) -> dict:
        G = self.stage.run(task)
        G["meta"]["fingerprint"] = fp
        self._count_generator(G["meta"], "trained")
        self.counters["generator_steps_trained"] += G["meta"]["steps"]
        self.counters["self_replay_images_generated"] += G["meta"]["self_replay_images"]
        return G

    def _count_generator(self, meta: dict, source: str) -> None:
        self.counters["generator_source"].append(source)
        seconds = meta.get("seconds")  # absent in generators cached before it was recorded
        if seconds is None:
            self.counters["generators_loaded_untimed"] = self.counters.get("generators_loaded_untimed", 0) + 1
        else:
            key = "generator_seconds_loaded" if source == "cache" else "generator_seconds_trained"
            self.counters[key] = self.counters.get(key, 0.0) + float(seconds)
        if source == "cache":  # the most runs that shared the GPU where a loaded generator trained
            self.counters["generators_loaded_shared_by"] = max(self.counters.get("generators_loaded_shared_by", 1),
                                                               int(meta.get("gpu_shared_by") or 1))
        self.counters["generator_steps"] += meta["steps"]
        self.counters["self_replay_images"] += meta["self_replay_images"]
        self.counters["labeller_steps"] += meta["labeller_steps"]

    # ---- stage 2: the classifier with generative replay --------------------------------------
    def _new_optimizer(self) -> torch.optim.Optimizer:
        c = self.cfg.classifier
        return torch.optim.SGD(self.classifier.parameters(), lr=c.lr_first, momentum=c.momentum,
                               weight_decay=c.weight_decay)

    def _train_classifier(self, task: TaskData) -> None:
        c, rng, k = self.cfg.classifier, self.ctx.rng, task.index
        seen = torch.zeros(self.info.num_classes, dtype=torch.bool, device=self.device)
        seen[task.seen_classes] = True
        old = [cl for cl in task.seen_classes if cl not in task.classes]
        n_real = c.batch_size if k == 0 else max(1, round(c.batch_size / (k + 1)))
        n_replay = c.batch_size - n_real if old else 0
        lr0 = c.lr_first if k == 0 else c.lr_later
        semi = self.semi and len(task.unlabelled_x) > 0
        self.classifier.train()
        with self.ctx.progress("classifier", self.cls_total - self.cls_step):
            while self.cls_step < self.cls_total:
                if n_replay and (self.replay is None or self.cls_step % c.regen_every == 0):
                    self.replay = self._generate_replay(task, old, n_replay)
                    if self.cls_step == 0:
                        self._diagnose_replay(task, old, "first")
                ri = to_device(torch.randint(len(task.x), (n_real,), generator=rng), self.device)
                x, y = task.x[ri], task.y[ri]
                if n_replay:
                    x, y = torch.cat([x, self.replay["x"]]), torch.cat([y, self.replay["y"]])
                x = A.to_unit(x)
                fp = self.info.flip_p
                views = [classifier_augment(x, rng, fp, c.rotate_p) if c.augment else x]
                if semi:
                    ui = torch.randint(len(task.unlabelled_x), (c.ssl_unlabelled_batch,), generator=rng)
                    xu = A.to_unit(task.unlabelled_x[to_device(ui, self.device)])
                    views += [A.weak_view(xu, rng, fp), A.strong_view(xu, rng, fp)]
                with self.autocast():
                    logits = self.classifier(cuda_channels_last(torch.cat(views) * 2 - 1))
                logits = logits.float().masked_fill(~seen, float("-inf"))  # CE over the seen classes
                n = len(y)
                loss = F.cross_entropy(logits[:n], y)
                parts = {"ce": loss.detach()}
                if semi:
                    nu = c.ssl_unlabelled_batch
                    l_u, mask = fixmatch_loss(logits[n:n + nu], logits[n + nu:], c.ssl_threshold)
                    loss = loss + c.ssl_weight * l_u
                    parts["mask"] = mask
                optimiser_step(self.cls_opt, loss, lr0 * (1 - self.cls_step / self.cls_total))
                self.cls_step += 1
                self.counters["classifier_steps"] += 1
                self.counters["classifier_images_seen"] += n + (2 * c.ssl_unlabelled_batch if semi else 0)
                self.ctx.log_step(self.cls_step, loss, **parts)
                self.ctx.tick()
        if n_replay:
            self._diagnose_replay(task, old, "last")
            self._save_replay_artefacts(task)

    def _diagnose_replay(self, task: TaskData, old: list[int], which: str) -> None:
        """Replay diagnostics of one replay batch of the classifier: the *first* of the task and the
        *last* (the one the replay grid shows). DGR's batches are i.i.d. draws from the fixed G_{k-1},
        so the two are two samples of one distribution (their spread is the measurement's noise);
        GUIDE's are guided by the classifier as it is at that step, so the first shows the guidance
        of the previous task's classifier and the last that of the classifier trained on this task.
        Measuring batches the classifier trains on anyway costs no extra sampling. The batch is
        small (B·k/(k+1) images over the old classes), so per-class Fréchet distances are rough;
        fidelity and pixel health are the robust readings. Images are already uint8 (N, C, H, W)
        (``ConditionalGenerator.sample``)."""
        if not self.cfg.diagnostics or self.replay is None:
            return
        scale = self.guidance_scale()
        what = f"guided replay (s={scale:g})" if scale else "replay"
        self.ctx.replay_diagnostics(self.replay["x"], self.replay["y"], old,
                                    f"classifier {what}, {which} batch, from G{task.index}")

    def _generate_replay(self, task: TaskData, old: list[int], n: int) -> dict:
        """n images of uniformly drawn old classes from G_{k-1}; labels are the conditioning class."""
        c = self.cfg.classifier
        y_cpu = torch.tensor(old, dtype=torch.long)[torch.randint(len(old), (n,), generator=self.ctx.rng)]
        y = to_device(y_cpu, self.device)
        if self._replay_model is None:
            self._replay_model = self.gen.sampler_from(self.replay_G)
        was_training = self.classifier.training
        self.classifier.eval()  # guidance reads the classifier with its running BN statistics
        x = self.gen.sample(self.replay_eps(self._replay_model, task), y, generator=self.cls_dev_rng,
                            sampler=c.sampler, steps=c.ddim_steps)
        self.classifier.train(was_training)
        self.counters["replay_images"] += n
        self.counters["replay_regenerations"] += 1
        # counted on the CPU copy: torch.unique and int() on the device's labels would wait for the GPU
        for cl, cnt in zip(*torch.unique(y_cpu, return_counts=True)):
            self.replay_counts[int(cl)] = self.replay_counts.get(int(cl), 0) + int(cnt)
        return {"x": x, "y": y}

    def replay_eps(self, model, task: TaskData):
        """The eps-function the replay sampler uses: DGR samples plainly (GUIDE guides it)."""
        return model

    # ---- artefacts ----------------------------------------------------------------------------
    def _save_replay_artefacts(self, task: TaskData) -> None:
        """What the classifier was shown: the last replay batch and the per-class counts."""
        k = task.index + 1
        save_class_grid(self.ctx, f"classifier_replay_task{k}.png", self.replay["x"], self.replay["y"],
                        self.cfg.grid_per_class)
        counts = {"task": k, "per_class": {str(cl): n for cl, n in sorted(self.replay_counts.items())},
                  "regenerate_every": self.cfg.classifier.regen_every, "ddim_steps": self.cfg.classifier.ddim_steps,
                  "guidance_scale": self.guidance_scale(),
                  "generator_source": self.counters["generator_source"][-1]}
        self.ctx.artefact_path(f"replay_counts_task{k}.json").write_text(json.dumps(counts, indent=2))

    def _save_generator_grid(self, task: TaskData) -> None:
        """After each task: what G_k replays, ``grid_per_class`` plain samples of every seen class.
        Its own generator (seeded from the run seed and task) keeps training randomness untouched."""
        n = self.cfg.grid_per_class
        y = torch.tensor(task.seen_classes, device=self.device).repeat_interleave(n)
        g = torch.Generator(self.device).manual_seed(derive_seed(self.ctx.seed, "grid", task.index))
        model = self.gen.sampler_from(self.G["ema"]["module"])
        x = self.gen.sample(model, y, generator=g, sampler=self.cfg.classifier.sampler, steps=self.cfg.classifier.ddim_steps)
        save_class_grid(self.ctx, f"replay_task{task.index + 1}.png", x, y, self.cfg.grid_per_class)

    def guidance_scale(self) -> float:
        return 0.0

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        s = {"phase": self.phase, "G": self.G, "classifier": self.classifier.state_dict(),
             "counters": json.loads(json.dumps(self.counters))}
        if self.phase in ("generator", "classifier", "done"):
            s.update(replay_G=self.replay_G, stage=self.stage.state_dict() if self.stage is not None else None,
                     cls_step=self.cls_step, cls_total=self.cls_total, cls_opt=self.cls_opt.state_dict(),
                     cls_dev_rng=self.cls_dev_rng.get_state(), replay_counts=dict(self.replay_counts),
                     replay=self.replay)
        return s

    def load_state_dict(self, s: dict) -> None:
        self.phase, self.G, self.counters = s["phase"], s["G"], json.loads(json.dumps(s["counters"]))
        self.classifier.load_state_dict(s["classifier"])
        if self.phase not in ("generator", "classifier", "done"):
            return
        self.replay_G = s["replay_G"]
        self.stage = None
        if s["stage"] is not None:  # stage 1 was running: G is still G_{k-1}, its parent
            self.stage = GeneratorStage.restore(self.gen, self.ctx, self.G, self.semi, s["stage"])
        self.cls_step, self.cls_total = s["cls_step"], s["cls_total"]
        self.cls_opt = self._new_optimizer()
        self.cls_opt.load_state_dict(s["cls_opt"])
        self.cls_dev_rng = torch.Generator(self.device)
        self.cls_dev_rng.set_state(s["cls_dev_rng"])
        self.replay_counts = {int(k): v for k, v in s["replay_counts"].items()}
        self.replay = {k: v.to(self.device) for k, v in s["replay"].items()} if s["replay"] is not None else None
        self._replay_model = None

    # ---- reporting ----------------------------------------------------------------------------
    def budget(self) -> dict:
        g, c = self.cfg.generator, self.cfg.classifier
        sources = self.counters["generator_source"]
        return {**self.counters,
                "generator_from_cache": bool(sources) and all(s == "cache" for s in sources),
                "images_generated": self.counters["self_replay_images_generated"] + self.counters["replay_images"],
                "ddim_steps": c.ddim_steps, "replay_sampler": c.sampler, "self_replay_sampler": g.replay_sampler,
                "self_replay_sampler_steps": g.timesteps if g.replay_sampler == "ancestral" else g.replay_ddim_steps,
                "guidance_scale": self.guidance_scale(), "generator_batch_size": g.batch_size,
                "classifier_batch_size": c.batch_size, "unet": g.unet, "unet_params": self.gen.num_params,
                "classifier_params": self.classifier_params,
                "paper_generator_steps": [100_000, 50_000], "paper_classifier_steps": [5000, 2000],
                "paper_ddim_steps": 50, "paper_self_replay": "ancestral-1000, 10000 per past task"}
