"""The baselines' training loops against their bare steps, in one process (issue 23):
``jdcl-bench bench --loop --method dgr`` (or guide: the same generator and loop), ``--method nncsl``.

What the two mean is jdcl_bench/loop_bench.py's: the *loop* is the generator stage's own
``GeneratorStage._train`` on random uint8 images of CIFAR's shape (index draws from the stage's CPU
generator, the flip, diffusion noise, the loss check every 100 steps, the training curve, ticks);
the *bare step* is the same compiled UNet, AdamW and EMA on one batch already on the device. The
classifier loop of task 2 (``_train_classifier``: real and replay images, GUIDE's augmentation, SGD)
is timed against the classifier's bare step too; it regenerates its replay by DDIM every
``regen_every`` steps (GUIDE: guided by the classifier), which is sampling rather than loop
overhead, so the time spent in it is reported apart (``replay_generation_s``) and the loop's share
of the bare rate is given without it as well. The replaying generator is untrained (random
weights): sampling costs the same whatever it has learnt.
NNCSL's loop is ``train_task`` (label and anchor draws, the global views and multicrops of PAWS'
colour pipeline, the schedule, reporting); its bare step is ``_model_loss`` and the LARS step on one
fixed set of views, in task 1 and in task 2 (where the previous model's NND forward joins).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from jdcl_bench.data import augment as A
from jdcl_bench.fastpath import cuda_channels_last
from jdcl_bench.loop_bench import (CLASSES, SHAPE, _stage_result, _task, _timed, add_profiles, bench_context,
                                   log_stage, stage_lines, window_text)
from jdcl_bench.methods.base import optimiser_step
from jdcl_bench.profiling import sync_device

from .cond_diffusion import ConditionalGenerator, GeneratorStage
from .dgr import classifier_augment


def time_generator_loop(cfg, preset: str, device: torch.device, steps: int = 200, warmup: int = 25,
                        log=print, profile: int = 0) -> dict:
    """The generator's diffusion loop of a DGR/GUIDE config ``cfg`` (its ``preset``) and its bare step.
    ``profile`` > 0: that many more loop steps, and as many bare steps, under torch.profiler after the
    timed window (jdcl_bench.loop_bench.time_jdcl_loops says what is recorded)."""
    g = cfg.generator
    with bench_context(device) as (info, ctx, clock, rng):
        gen = ConditionalGenerator(g, info, device, cfg.amp and device.type == "cuda", compile=cfg.compile,
                                   log=ctx.info)
        first = CLASSES[0]
        task = _task(0, first, first, 10_000, 0, SHAPE, rng, device)  # a CIFAR-10 task's images
        stage = GeneratorStage(gen, ctx, 0, first, first, None, seed=0, semi=False)
        stage.total = warmup + steps + profile
        clock.window(warmup, warmup + steps, profile)
        log(f"loop bench: generator diffusion loop, {window_text(warmup, steps, profile)}")
        stage._train(task)
        loop_s = clock.seconds()
        stage.prev = stage.result  # the trained weights again, with a fresh AdamW and EMA
        stage._new_net()
        bare = _bare_generator_step(stage, task, rng)
        bare_s = _timed(bare, device, warmup, steps)
        result = _stage_result("generator", loop_s, bare_s, steps, g.batch_size)
        add_profiles(result, clock, bare, device)
    out = {"preset": preset, "semi_supervised": False, "steps": steps, "warmup": warmup, "unet": g.unet,
           "batch_size": g.batch_size, "compile": cfg.compile, "stages": [result]}
    if profile:
        out["profile_steps"] = profile
    log_stage(log, f"{preset} generator", result)
    return out


def _bare_generator_step(stage: GeneratorStage, task, rng: torch.Generator):
    gen, dev = stage.gen, stage.device
    net = gen.compiled(stage.net)
    idx = torch.randint(len(task.x), (stage.cfg.batch_size,), generator=rng).to(dev)
    x_t, t, noise = gen.diffusion.sample_t_and_noise(task.x[idx].float() / 127.5 - 1,
                                                     torch.Generator(dev).manual_seed(1))
    x_t, y = x_t.contiguous(memory_format=gen.memory_format), task.y[idx]

    def step():
        with gen.autocast():
            eps = net(x_t, t, y)
        optimiser_step(stage.opt, F.mse_loss(eps.float(), noise))
        stage.ema.update(stage.net)
    return step


def time_classifier_loop(cls, preset: str, device: torch.device, steps: int = 200, warmup: int = 25,
                         log=print, profile: int = 0, overrides: dict | None = None) -> dict:
    """Task 2's classifier loop of DGR/GUIDE (``cls``) at ``preset``, replay generation timed apart.
    ``profile`` > 0: as time_generator_loop; the profiled loop steps include the replay regenerations
    that fall among them (every ``regen_every`` steps), the bare steps none."""
    cfg = cls.config_for(preset, {**(overrides or {}), "classifier.steps_later": warmup + steps + profile,
                                  "diagnostics": False, "cache": False})
    c = cfg.classifier
    with bench_context(device) as (info, ctx, clock, rng):
        m = cls(cfg, ctx)
        m.setup(info)
        m.G = {"ema": {"module": m.gen.new_model().state_dict()}}  # G_1's weights, untrained
        m.counters["generator_source"].append("loop bench (untrained)")  # the replay artefacts name it
        task = _task(1, CLASSES[1], CLASSES[0] + CLASSES[1], 10_000, 0, SHAPE, rng, device)
        ctx.task_index = 1
        m.begin_task(task)
        regen, generate = [0.0], m._generate_replay

        def timed_generation(*args):  # only the generations inside the timed window count
            inside = warmup <= clock.n < warmup + steps
            sync_device(device)
            t0 = time.perf_counter()
            out = generate(*args)
            sync_device(device)
            regen[0] += (time.perf_counter() - t0) if inside else 0.0
            return out
        m._generate_replay = timed_generation
        clock.window(warmup, warmup + steps, profile)
        log(f"loop bench: {cls.name} classifier loop of task 2, {window_text(warmup, steps, profile)}")
        m._train_classifier(task)
        loop_s = clock.seconds()
        bare = _bare_classifier_step(m, task, rng)
        bare_s = _timed(bare, device, warmup, steps)
        s = _stage_result("classifier", loop_s, bare_s, steps, c.batch_size)
        add_profiles(s, clock, bare, device)
    s.update(replay_generation_s=regen[0], regen_every=c.regen_every, ddim_steps=c.ddim_steps,
             loop_share_of_bare_without_generation=(steps / (loop_s - regen[0])) / s["bare_steps_per_s"])
    log(f"{preset} {cls.name} classifier: loop {s['loop_steps_per_s']:.2f} steps/s ({100 * regen[0] / loop_s:.0f} % of "
        f"it generating replay), bare step {s['bare_steps_per_s']:.2f} steps/s: the loop keeps "
        f"{100 * s['loop_share_of_bare_without_generation']:.1f} % without the generation")
    for line in stage_lines(f"{preset} {cls.name} classifier", s)[1:]:  # the profiles, where taken
        log(line)
    return s


def _bare_classifier_step(m, task, rng: torch.Generator):
    """The classifier's step on one fixed, augmented batch of real and replay images: forward, CE, SGD."""
    c, dev = m.cfg.classifier, m.device
    idx = torch.randint(len(task.x), (c.batch_size - len(m.replay["y"]),), generator=rng).to(dev)
    x, y = torch.cat([task.x[idx], m.replay["x"]]), torch.cat([task.y[idx], m.replay["y"]])
    view = cuda_channels_last(classifier_augment(A.to_unit(x), rng, m.info.flip_p, c.rotate_p) * 2 - 1)
    seen = torch.zeros(m.info.num_classes, dtype=torch.bool, device=dev)
    seen[task.seen_classes] = True

    def step():
        with m.autocast():
            logits = m.classifier(view)
        loss = F.cross_entropy(logits.float().masked_fill(~seen, float("-inf")), y)
        optimiser_step(m.cls_opt, loss, c.lr_later)
    return step


def time_nncsl_loop(cls, preset: str, device: torch.device, steps: int = 200, warmup: int = 25, semi: bool = False,
                    log=print, profile: int = 0, overrides: dict | None = None) -> dict:
    """NNCSL's loop in tasks 1 and 2 at ``preset`` (``semi``: 5 % labelled, the rest the anchor stream).
    ``profile`` > 0: that many more loop steps, and as many bare steps, under torch.profiler after the
    timed window (jdcl_bench.loop_bench.time_jdcl_loops says what is recorded)."""
    cfg = cls.config_for(preset, {**(overrides or {}), "steps_per_task": warmup + steps + profile})
    out = {"preset": preset, "semi_supervised": semi, "steps": steps, "warmup": warmup, "stages": []}
    if profile:
        out["profile_steps"] = profile
    with bench_context(device, semi) as (info, ctx, clock, rng):
        m = cls(cfg, ctx)
        m.setup(info)
        seen: list[int] = []
        for k, classes in enumerate(CLASSES):
            seen = seen + classes
            n = 10_000 // 20 if semi else 10_000
            task = _task(k, classes, seen, n, 10_000 - n if semi else 0, SHAPE, rng, device)
            ctx.task_index = k
            m.begin_task(task)
            clock.window(warmup, warmup + steps, profile)
            log(f"loop bench: NNCSL task {k + 1}, {window_text(warmup, steps, profile)}")
            m.train_task(task)
            loop_s = clock.seconds()
            views = m._views()
            images = len(views[0]) + (len(views[1]) if views[1] is not None else 0)

            def step():
                loss, _ = m._model_loss(*views)
                optimiser_step(m.opt, loss, cfg.ref_lr)
            bare_s = _timed(step, device, warmup, steps)
            out["stages"].append(_stage_result(f"task {k + 1}", loop_s, bare_s, steps, images))
            add_profiles(out["stages"][-1], clock, step, device)
            log_stage(log, f"{preset} NNCSL {out['stages'][-1]['stage']}", out["stages"][-1])
            m.end_task(task)
    return out
