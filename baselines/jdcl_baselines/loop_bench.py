"""DGR's and GUIDE's generator loop against its bare step, in one process (issue 23):
``jdcl-bench bench --loop --method dgr`` (or guide: the same generator and loop).

What the two mean is jdcl_bench/loop_bench.py's: the *loop* is the generator stage's own
``GeneratorStage._train`` on random uint8 images of CIFAR's shape (index draws from the stage's CPU
generator, the flip, diffusion noise, the loss check every 100 steps, the training curve, ticks);
the *bare step* is the same compiled UNet, AdamW and EMA on one batch already on the device. The
classifier loop is not timed here: it regenerates its replay by DDIM every ``regen_every`` steps,
which is sampling cost rather than loop overhead (the sampler is timed by ``jdcl-bench bench``).
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
