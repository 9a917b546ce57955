"""The baselines' training loops against their bare steps, in one process (issue 23):
``jdcl-bench bench --loop --method dgr`` (or guide: the same generator and loop), ``--method nncsl``.

What the two mean is jdcl_bench/loop_bench.py's: the *loop* is the generator stage's own
``GeneratorStage._train`` on random uint8 images of CIFAR's shape (index draws from the stage's CPU
generator, the flip, diffusion noise, the loss check every 100 steps, the training curve, ticks);
the *bare step* is the same compiled UNet, AdamW and EMA on one batch already on the device. The
classifier loop is not timed here: it regenerates its replay by DDIM every ``regen_every`` steps,
which is sampling cost rather than loop overhead (the sampler is timed by ``jdcl-bench bench``).
NNCSL's loop is ``train_task`` (label and anchor draws, the global views and multicrops of PAWS'
colour pipeline, the schedule, reporting); its bare step is ``_model_loss`` and the LARS step on one
fixed set of views, in task 1 and in task 2 (where the previous model's NND forward joins).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from jdcl_bench.loop_bench import CLASSES, SHAPE, _stage_result, _task, _timed, bench_context
from jdcl_bench.methods.base import optimiser_step

from .cond_diffusion import ConditionalGenerator, GeneratorStage


def time_generator_loop(cfg, preset: str, device: torch.device, steps: int = 200, warmup: int = 25,
                        log=print) -> dict:
    """The generator's diffusion loop of a DGR/GUIDE config ``cfg`` (its ``preset``) and its bare step."""
    g = cfg.generator
    with bench_context(device) as (info, ctx, clock, rng):
        gen = ConditionalGenerator(g, info, device, cfg.amp and device.type == "cuda", compile=cfg.compile,
                                   log=ctx.info)
        first = CLASSES[0]
        task = _task(0, first, first, 10_000, 0, SHAPE, rng, device)  # a CIFAR-10 task's images
        stage = GeneratorStage(gen, ctx, 0, first, first, None, seed=0, semi=False)
        stage.total = warmup + steps
        clock.window(warmup, warmup + steps)
        log(f"loop bench: generator diffusion loop, {warmup} + {steps} steps")
        stage._train(task)
        loop_s = clock.seconds()
        stage.prev = stage.result  # the trained weights again, with a fresh AdamW and EMA
        stage._new_net()
        bare_s = _timed(_bare_generator_step(stage, task, rng), device, warmup, steps)
    out = {"preset": preset, "semi_supervised": False, "steps": steps, "warmup": warmup, "unet": g.unet,
           "batch_size": g.batch_size, "compile": cfg.compile,
           "stages": [_stage_result("generator", loop_s, bare_s, steps, g.batch_size)]}
    s = out["stages"][0]
    log(f"{preset} generator: loop {s['loop_steps_per_s']:.2f} steps/s, bare step {s['bare_steps_per_s']:.2f} "
        f"steps/s: the loop keeps {100 * s['loop_share_of_bare']:.1f} %")
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


def time_nncsl_loop(cls, preset: str, device: torch.device, steps: int = 200, warmup: int = 25, semi: bool = False,
                    log=print) -> dict:
    """NNCSL's loop in tasks 1 and 2 at ``preset`` (``semi``: 5 % labelled, the rest the anchor stream)."""
    cfg = cls.config_for(preset, {"steps_per_task": warmup + steps})
    out = {"preset": preset, "semi_supervised": semi, "steps": steps, "warmup": warmup, "stages": []}
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
            clock.window(warmup, warmup + steps)
            log(f"loop bench: NNCSL task {k + 1}, {warmup} + {steps} steps")
            m.train_task(task)
            loop_s = clock.seconds()
            views = m._views()
            images = len(views[0]) + (len(views[1]) if views[1] is not None else 0)

            def step():
                loss, _ = m._model_loss(*views)
                optimiser_step(m.opt, loss, cfg.ref_lr)
            bare_s = _timed(step, device, warmup, steps)
            out["stages"].append(_stage_result(f"task {k + 1}", loop_s, bare_s, steps, images))
            m.end_task(task)
    for s in out["stages"]:
        log(f"{preset} NNCSL {s['stage']}: loop {s['loop_steps_per_s']:.2f} steps/s, bare step "
            f"{s['bare_steps_per_s']:.2f} steps/s: the loop keeps {100 * s['loop_share_of_bare']:.1f} %")
    return out
