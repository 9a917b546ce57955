"""GFR, Generative Feature Replay (Liu et al., CVPR-W 2020): replay generated *features*, not images.

Per task t (see docs/gfr.md and /work/shared/specs/baselines.md §4):

1. feature-extractor stage: a ResNet-18 F with a linear head over all classes.
   - t = 0: cross-entropy on the task's data;
   - t >= 1: F (in eval mode: BN statistics frozen at their task-0 values, as the official code)
     is distilled towards the previous F with ``T_old * ||F(x) - F_old(x)||_2`` (Frobenius norm
     over the batch), and the head learns real and generated old-class features,
     ``[CE(real) + T_old * CE(G(z, y_old))] / (T_old + 1)``; T_old = #old classes / #new classes.
2. feature-generator stage (skipped after the last task): a conditional WGAN-GP on the frozen F's
   features; G also matches the previous G on old classes (summed squared error, weight
   1e-3 * T_old). One critic step per batch, one generator step every ``n_critic`` batches.

On semi-supervised protocols (the suite's extension, not in the paper) the extractor also trains on
confident pseudo-labels of the unlabelled stream (FixMatch-style: weak view labels, strong view
learns, threshold 0.95), and the GAN learns from the labelled images plus the confidently
pseudo-labelled unlabelled ones.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from jdcl_bench.data import augment as A
from jdcl_bench.fastpath import autocast, cuda_channels_last, to_device
from jdcl_bench.methods.base import Method, ProtocolInfo, TaskData, derive_seed, optimiser_step, sample_indices
from jdcl_bench.models import cifar_resnet, normalise

from .nets import FeatureGenerator, ProjectionDiscriminator  # noqa: F401 (importable from here)
from .gfr_losses import critic_loss, feature_distillation, generator_loss, gradient_penalty, replay_cross_entropy
from .plots import plot_feature_generator


# ---- config ----------------------------------------------------------------------------------------

@dataclass
class GFRConfig:
    width: int = 64
    layers: tuple[int, ...] = (2, 2, 2, 2)
    # feature-extractor stage (official CIFAR-100 README values)
    epochs: float = 201.0               # over the task's images (the unlabelled stream when semi-supervised)
    batch_size: int = 128
    lr: float = 1e-3                    # Adam
    weight_decay: float = 2e-4
    lr_step_epochs: float = 200.0       # StepLR
    lr_gamma: float = 0.1
    fd_weight: float = 1.0              # "tradeoff" of the feature distillation
    replay_batch: int = 128             # generated old-class features per step
    freeze_bn: bool = True              # t >= 1: extractor trained in eval mode (official)
    # feature-generator stage
    gan_epochs: float = 501.0
    gan_batch: int = 128
    gan_lr: float = 1e-4                # Adam, betas (0.5, 0.999)
    gan_step_epochs: float = 200.0
    gan_gamma: float = 0.3
    n_critic: int = 5
    lambda_gp: float = 10.0
    gan_distill: float = 1e-3           # "gan_tradeoff", times T_old
    latent_dim: int = 200
    hidden_dim: int = 512
    # semi-supervised extension (the suite's, not the paper's)
    pseudo_threshold: float = 0.95
    unlabelled_ratio: int = 1           # unlabelled images per labelled image in a step
    unlabelled_weight: float = 1.0
    amp: bool = True                    # bf16 autocast on CUDA (the extractor; the GAN runs in fp32)
    artefact_samples: int = 128         # generated features per class for the after-task plot


# ~12 % of the extractor epochs and GAN epochs of the paper, larger batches: about 3 minutes for CIFAR-10/5 on one H100
FAST = {"epochs": 25.0, "batch_size": 256, "lr": 2e-3, "lr_step_epochs": 20.0, "replay_batch": 256,
        "gan_epochs": 60.0, "gan_batch": 256, "gan_lr": 2e-4, "gan_step_epochs": 40.0}
SMOKE = {"width": 8, "layers": (1, 1, 1, 1), "epochs": 1.0, "batch_size": 32, "replay_batch": 16,
         "gan_epochs": 1.0, "gan_batch": 32, "n_critic": 2, "latent_dim": 16, "hidden_dim": 32,
         "artefact_samples": 16}
PRESETS = {"fast": FAST, "smoke": SMOKE}


class GFR(Method):
    name = "gfr"
    display_name = "GFR"
    description = "GFR (CVPR-W 2020): generative feature replay with a conditional WGAN-GP and feature distillation"
    Config = GFRConfig
    presets = PRESETS
    has_generator = True
    uses_unlabelled = True  # only on semi-supervised protocols, through the suite's pseudo-label extension
    supports_resume_in_task = True

    # ---- setup -----------------------------------------------------------------------------------
    def setup(self, info: ProtocolInfo) -> None:
        super().setup(info)
        c = self.cfg
        self.net = cifar_resnet(info.num_classes, info.image_shape[0], c.width, c.layers).to(self.device)
        if self.device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
        d = self.net.num_features
        self.G = FeatureGenerator(c.latent_dim, info.num_classes, c.hidden_dim, d).to(self.device)
        self.D = ProjectionDiscriminator(d, info.num_classes, c.hidden_dim).to(self.device)
        self.net_old = self.gen_old = self.opt = self.opt_G = self.opt_D = self.gan_pool = None
        self.phase, self.step = "idle", 0
        self.gen_classes: list[int] = []  # classes the generator has learnt
        self.counters = {"extractor_steps": 0, "critic_steps": 0, "generator_steps": 0, "images_seen": 0,
                         "features_generated": 0}
        self.num_params = {k: sum(p.numel() for p in m.parameters()) for k, m in
                           (("extractor", self.net), ("generator", self.G), ("discriminator", self.D))}

    def _features(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model.global_pool(model.forward_features(cuda_channels_last(x)))

    def _adam(self, params, lr, **kw):
        return torch.optim.Adam(params, lr=lr, fused=self.device.type == "cuda", **kw)

    def _steps_per_epoch(self, task: TaskData, batch: int) -> int:
        n = max(len(task.x), len(task.unlabelled_x))  # the task's images: fixes the budget per task
        return max(1, n // batch)                      # drop_last, as the official loaders

    def _t_old(self, task: TaskData) -> float:
        """Official old_task_factor nb_cl_fg / cpt + t - 1 = #old classes / #classes per new task."""
        return (len(task.seen_classes) - len(task.classes)) / len(task.classes)

    # ---- hooks -------------------------------------------------------------------------------------
    def begin_task(self, task: TaskData) -> None:
        c = self.cfg
        self.phase, self.step = "extractor", 0
        self.net_old = self._frozen(self.net) if task.index > 0 else None
        self.opt = self._adam(self.net.parameters(), c.lr, weight_decay=c.weight_decay)

    def train_task(self, task: TaskData) -> None:
        if self.phase == "extractor":
            self._train_extractor(task)
            last = task.index == len(self.info.task_classes) - 1
            if last:
                self.phase = "done"
            else:
                self._begin_gan(task)
                self.phase = "gan"
        if self.phase == "gan":
            self._train_gan(task)
            self.gen_classes = list(task.seen_classes)
            self.phase = "done"

    def end_task(self, task: TaskData) -> None:
        self._save_generator_artefact(task)
        self.net_old = self.gen_old = self.opt = self.opt_G = self.opt_D = self.gan_pool = None
        self.phase = "idle"

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Argmax over all the head's logits (as the official test)."""
        self.net.eval()
        with autocast(self.device, self.cfg.amp):
            return self.net(cuda_channels_last(normalise(x))).float()

    # ---- stage 1: feature extractor ---------------------------------------------------------------
    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """RandomCrop(pad H/8, zero fill) + h-flip, on uint8 -> [-1, 1]."""
        rng = self.ctx.rng
        x = A.random_crop(A.to_unit(x), rng, padding=x.shape[2] // 8, mode="constant")
        x = A.hflip(x, rng, self.info.flip_p)
        return x * 2 - 1

    def _train_extractor(self, task: TaskData) -> None:
        c = self.cfg
        spe = self._steps_per_epoch(task, c.batch_size)
        total = math.ceil(c.epochs * spe)
        # semi-supervised: the task's classes on the device for the pseudo-labels, made once per task
        cur = to_device(torch.tensor(task.classes), self.device) if len(task.unlabelled_x) else None
        # official: from task 1 on the extractor trains in eval mode (BN statistics frozen)
        self.net.train(not (c.freeze_bn and task.index > 0))
        with self.ctx.progress("GFR feature extractor", total - self.step):
            while self.step < total:
                loss, parts = self._extractor_loss(task, cur)
                optimiser_step(self.opt, loss, c.lr * c.lr_gamma ** math.floor(self.step / max(1, c.lr_step_epochs * spe)))
                self.step += 1
                self.counters["extractor_steps"] += 1
                self.ctx.log_step(self.step, loss, **parts)
                self.ctx.tick()

    def _extractor_loss(self, task: TaskData, cur: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        """``cur``: the task's classes on the device, semi-supervised; None, fully supervised."""
        c, rng, dev = self.cfg, self.ctx.rng, self.device
        semi = cur is not None
        li = sample_indices(len(task.x), c.batch_size, rng, dev)
        xl, y = task.x[li], task.y[li]
        views = [self._augment(xl)]
        if semi:
            ui = sample_indices(len(task.unlabelled_x), c.batch_size * c.unlabelled_ratio, rng, dev)
            xu = task.unlabelled_x[ui]
            views += [self._augment(xu), A.strong_view(A.to_unit(xu), rng, self.info.flip_p) * 2 - 1]
        x = torch.cat(views)
        nl, nu = len(xl), (len(x) - len(xl)) // 2
        self.counters["images_seen"] += nl + nu
        with autocast(dev, c.amp):
            f = self._features(self.net, x)
            logits = self.net.fc(f).float()
        f = f.float()
        l_real = F.cross_entropy(logits[:nl], y)
        parts = {"ce": l_real}
        if semi:
            # pseudo-labels among the current task's classes (the unlabelled stream belongs to them)
            probs = logits[nl:nl + nu].detach()[:, cur].softmax(1)
            conf, arg = probs.max(1)
            mask = (conf >= c.pseudo_threshold).float()
            l_u = (F.cross_entropy(logits[nl + nu:], cur[arg], reduction="none") * mask).mean()
            l_real = l_real + c.unlabelled_weight * l_u
            parts.update(unlabelled=l_u, mask=mask.mean())
        if self.net_old is None:
            return l_real, parts

        t_old = self._t_old(task)
        n_real = nl + nu  # distil on every real image, strong views excluded
        with torch.no_grad(), autocast(dev, c.amp):
            f_old = self._features(self.net_old, x[:n_real]).float()
        l_fd = c.fd_weight * t_old * feature_distillation(f[:n_real], f_old)
        with torch.no_grad():
            y_gen = self._old_labels(task, c.replay_batch)
            f_gen = self.G(self._noise(c.replay_batch), y_gen)
        self.counters["features_generated"] += c.replay_batch
        l_gen = F.cross_entropy(self.net.fc(f_gen), y_gen)
        l_ce = replay_cross_entropy(l_real, l_gen, t_old)
        parts.update(fd=l_fd, replay=l_gen)
        return l_fd + l_ce, parts

    # ---- stage 2: feature generator ------------------------------------------------------------------
    def _begin_gan(self, task: TaskData) -> None:
        c = self.cfg
        self.step = 0
        self.gen_old = self._frozen(self.G) if self.gen_classes else None
        self.opt_G = self._adam(self.G.parameters(), c.gan_lr, betas=(0.5, 0.999))
        self.opt_D = self._adam(self.D.parameters(), c.gan_lr, betas=(0.5, 0.999))
        self.gan_pool = self._gan_pool(task)

    @torch.no_grad()
    def _gan_pool(self, task: TaskData) -> dict:
        """Images the GAN learns from: the labelled ones, plus (semi-supervised) the unlabelled ones
        the frozen extractor labels with confidence >= pseudo_threshold among the task's classes.
        Indices into cat(task.x, task.unlabelled_x), and their labels."""
        idx, ys = [torch.arange(len(task.x), device=self.device)], [task.y]
        if len(task.unlabelled_x):
            self.net.eval()
            cur = torch.tensor(task.classes, device=self.device)
            for i in range(0, len(task.unlabelled_x), 1024):
                chunk = task.unlabelled_x[i:i + 1024]
                probs = self.predict(chunk)[:, cur].softmax(1)
                conf, arg = probs.max(1)
                keep = torch.nonzero(conf >= self.cfg.pseudo_threshold).flatten()
                idx.append(len(task.x) + i + keep)
                ys.append(cur[arg[keep]])
        return {"idx": torch.cat(idx), "y": torch.cat(ys)}

    def _train_gan(self, task: TaskData) -> None:
        c, rng, dev = self.cfg, self.ctx.rng, self.device
        spe = self._steps_per_epoch(task, c.gan_batch)
        total = math.ceil(c.gan_epochs * spe)
        images = torch.cat([task.x, task.unlabelled_x]) if len(task.unlabelled_x) else task.x
        pool_idx, pool_y = self.gan_pool["idx"], self.gan_pool["y"]
        t_old = self._t_old(task) if self.gen_old is not None else 0.0
        self.net.eval()
        self.G.train()
        self.D.train()
        with self.ctx.progress("GFR feature generator", total - self.step):
            while self.step < total:
                lr = c.gan_lr * c.gan_gamma ** math.floor(self.step / max(1, c.gan_step_epochs * spe))
                for opt in (self.opt_G, self.opt_D):
                    for g in opt.param_groups:
                        g["lr"] = lr
                pick = sample_indices(len(pool_idx), c.gan_batch, rng, dev)
                x, y = images[pool_idx[pick]], pool_y[pick]
                with torch.no_grad(), autocast(dev, c.amp):
                    real = self._features(self.net, self._augment(x)).float()
                z = self._noise(len(y))
                alpha = to_device(torch.rand(len(y), 1, generator=rng), dev)
                self.counters["images_seen"] += len(y)

                # critic step, every batch
                self.D.requires_grad_(True)
                fake = self.G(z, y).detach()
                gp = gradient_penalty(self.D, real, fake, y, alpha)
                d_loss = critic_loss(self.D(real, y), self.D(fake, y), gp, c.lambda_gp)
                self.opt_D.zero_grad(set_to_none=True)
                d_loss.backward()
                self.opt_D.step()
                self.counters["critic_steps"] += 1
                parts = {"d": d_loss, "gp": gp}

                # generator step, every n_critic batches (same z and labels)
                if self.step % c.n_critic == 0:
                    self.D.requires_grad_(False)
                    replay = replay_old = None
                    if self.gen_old is not None:
                        y_old = self._old_labels(task, len(y), among=self.gen_classes)
                        replay = self.G(z, y_old)
                        with torch.no_grad():
                            replay_old = self.gen_old(z, y_old)
                    g_loss = generator_loss(self.D(self.G(z, y), y), replay, replay_old, c.gan_distill * t_old)
                    self.opt_G.zero_grad(set_to_none=True)
                    g_loss.backward()
                    self.opt_G.step()
                    self.counters["generator_steps"] += 1
                    parts["g"] = g_loss
                self.step += 1
                self.ctx.log_step(self.step, d_loss, **parts)
                self.ctx.tick()

    # ---- helpers ---------------------------------------------------------------------------------------
    def _noise(self, n: int) -> torch.Tensor:
        return to_device(torch.randn(n, self.cfg.latent_dim, generator=self.ctx.rng), self.device)

    def _old_labels(self, task: TaskData, n: int, among: list[int] | None = None) -> torch.Tensor:
        old = among if among is not None else [k for k in task.seen_classes if k not in task.classes]
        pick = torch.randint(len(old), (n,), generator=self.ctx.rng)
        return to_device(torch.tensor(old)[pick], self.device)

    @staticmethod
    def _frozen(m: nn.Module) -> nn.Module:
        return copy.deepcopy(m).eval().requires_grad_(False)

    # ---- artefact ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def _save_generator_artefact(self, task: TaskData) -> None:
        """What the generator knows after this task: per class, the head's accuracy on generated
        features and how close the generated class mean is to the real one (current classes only:
        old images are gone). A JSON always, a PNG heatmap when matplotlib is installed."""
        c, dev, k = self.cfg, self.device, task.index + 1
        self.net.eval()
        gen = torch.Generator().manual_seed(derive_seed(self.ctx.seed, "gfr-artefact", task.index))
        classes = list(self.gen_classes)
        n = c.artefact_samples
        stats, gen_means = {}, []
        for cls in classes:
            z = torch.randn(n, c.latent_dim, generator=gen).to(dev)
            f = self.G(z, torch.full((n,), cls, device=dev))
            acc = (self.net.fc(f).argmax(1) == cls).float().mean()
            gen_means.append(f.mean(0))
            stats[int(cls)] = {"head_accuracy_on_generated": float(acc), "generated_mean_norm": float(f.mean(0).norm()),
                               "generated_std": float(f.std(0).mean()) if n > 1 else 0.0}
        real_means = {}
        for cls in task.classes:
            xs = task.x[task.y == cls][:512]
            if len(xs) == 0:
                continue
            with autocast(dev, c.amp):
                f = self._features(self.net, normalise(xs)).float()
            real_means[cls] = f.mean(0)
            if cls in stats:
                g = gen_means[classes.index(cls)]
                stats[int(cls)].update(real_mean_norm=float(f.mean(0).norm()),
                                       cosine_generated_vs_real_mean=float(F.cosine_similarity(g, f.mean(0), 0)))
        doc = {"task": k, "generator_classes": [int(x) for x in classes], "per_class": stats,
               "samples_per_class": n, "note": "the generator is not retrained after the last task"}
        self.ctx.artefact_path(f"gfr_generator_task{k}.json").write_text(json.dumps(doc, indent=2))
        if gen_means:
            plot_feature_generator(self.ctx.artefact_path(f"gfr_generator_task{k}.png"), k, classes,
                                   torch.stack(gen_means).float().cpu(),
                                   {int(a): b.float().cpu() for a, b in real_means.items()}, stats)

    # ---- state -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        s = {"F": self.net.state_dict(), "G": self.G.state_dict(), "D": self.D.state_dict(), "phase": self.phase,
             "step": self.step, "gen_classes": list(self.gen_classes), "counters": dict(self.counters)}
        if self.phase == "extractor":
            s.update(net_old=self.net_old.state_dict() if self.net_old is not None else None, opt=self.opt.state_dict())
        if self.phase == "gan":
            s.update(gen_old=self.gen_old.state_dict() if self.gen_old is not None else None,
                     opt_G=self.opt_G.state_dict(), opt_D=self.opt_D.state_dict(),
                     gan_pool={k: v.cpu() for k, v in self.gan_pool.items()})
        return s

    def load_state_dict(self, s: dict) -> None:
        c = self.cfg
        self.net.load_state_dict(s["F"])
        self.G.load_state_dict(s["G"])
        self.D.load_state_dict(s["D"])
        self.phase, self.step = s["phase"], s["step"]
        self.gen_classes, self.counters = list(s["gen_classes"]), dict(s["counters"])
        if self.phase == "extractor":
            self.net_old = None
            if s["net_old"] is not None:
                self.net_old = self._frozen(self.net)
                self.net_old.load_state_dict(s["net_old"])
            self.opt = self._adam(self.net.parameters(), c.lr, weight_decay=c.weight_decay)
            self.opt.load_state_dict(s["opt"])
        if self.phase == "gan":
            self.gen_old = None
            if s["gen_old"] is not None:
                self.gen_old = self._frozen(self.G)
                self.gen_old.load_state_dict(s["gen_old"])
            self.opt_G = self._adam(self.G.parameters(), c.gan_lr, betas=(0.5, 0.999))
            self.opt_D = self._adam(self.D.parameters(), c.gan_lr, betas=(0.5, 0.999))
            self.opt_G.load_state_dict(s["opt_G"])
            self.opt_D.load_state_dict(s["opt_D"])
            self.gan_pool = {k: v.to(self.device) for k, v in s["gan_pool"].items()}

    # ---- reporting -------------------------------------------------------------------------------------
    def label(self) -> str:
        return "GFR"

    def budget(self) -> dict:
        c = self.cfg
        gd_bytes = 4 * (self.num_params["generator"] + self.num_params["discriminator"])
        return {**self.counters, "epochs": c.epochs, "gan_epochs": c.gan_epochs, "batch_size": c.batch_size,
                "gan_batch": c.gan_batch, "params": self.num_params, "generator_bytes_fp32": gd_bytes,
                "buffer_images": 0, "paper_epochs": 201, "paper_gan_epochs": 501}
