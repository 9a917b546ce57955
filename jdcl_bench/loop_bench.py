"""JDCL's training loops against the bare training step of the same model, in one process (issue 23).

The *bare step* is what the model costs: the joint forward (compiled as the method compiles it), the
stage's losses, backward, fused AdamW and the EMA update, and in the global stage the two teacher
forwards, all on one batch that is already on the device. The *loop* is the method's own
``_train_local`` / ``_train_global`` on synthetic uint8 images of the protocol's shape: index draws
from the run's CPU generator, augmentations, diffusion noise, the loss check and report every 100
steps, the training curve, ticks. Both run ``steps`` steps back to back after ``warmup`` steps
(compilation, CUDA-graph capture), with the device synchronised only at the two ends of the timed
window, so ``loop / bare`` is the share of the model's rate the loop keeps.

``cls_start_fraction`` is 0 so that every global step of the loop computes the class terms the bare
step computes; the runner is replaced by a clock (no checkpoints: their cost is the runner's, set by
``checkpoint_every_s``). The images are random: the loop's cost does not depend on what they show.
"""
from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .jdcl.losses import fixmatch, fixmatch_forward, kd_classifier, kd_diffusion, teacher_targets
from .methods.base import Method, ProtocolInfo, RunContext, TaskData
from .profiling import StepProfile, sync_device
from .progress import Reporter


# Several loop benches side by side on one GPU (benchmarks/loop_packing.py): each process waits at the
# start of every timed window until all have reached it, so that the windows run together and their
# rates add up to what the GPU does packed. The folder the processes meet in, and how many they are.
BARRIER_ENV, BARRIER_N_ENV = "JDCL_BENCH_PACK_BARRIER", "JDCL_BENCH_PACK_N"


def packing_barrier(window: int, log=print, timeout_s: float = 900.0, poll_s: float = 0.005) -> None:
    """With ``$JDCL_BENCH_PACK_BARRIER`` set: mark this process as at the start of timed window
    ``window`` and wait until ``$JDCL_BENCH_PACK_N`` processes are (a process that died leaves the others
    waiting ``timeout_s``, then they go on and say so: that window was not timed together)."""
    import os

    folder = os.environ.get(BARRIER_ENV)
    if not folder:
        return
    n = int(os.environ.get(BARRIER_N_ENV, "1"))
    here = Path(folder)
    here.mkdir(parents=True, exist_ok=True)
    (here / f"w{window}-{os.getpid()}").touch()
    t0 = time.monotonic()
    while len(list(here.glob(f"w{window}-*"))) < n:
        if time.monotonic() - t0 > timeout_s:
            log(f"packing barrier: window {window} timed out after {timeout_s:.0f} s waiting for {n} processes; "
                "its rates were not measured together")
            return
        time.sleep(poll_s)
    log(f"packing barrier: window {window} started by {n} processes together ({time.monotonic() - t0:.1f} s waited)")


class _Clock:
    """Stands in for the runner: ``tick`` counts steps and reads the clock at the ends of the window;
    with a profile, the steps right after the window run under it (outside the timed window)."""

    def __init__(self, device: torch.device):
        self.device, self.n, self.marks, self.times, self.profile = device, 0, (), {}, None
        self.windows = 0  # timed windows so far: the packing barrier meets per window

    def window(self, start: int, stop: int, profile_steps: int = 0) -> None:
        self.n, self.marks, self.times = 0, (start, stop), {}
        self.windows += 1
        self.profile = StepProfile(self.device, profile_steps) if profile_steps else None

    def tick(self) -> None:
        self.n += 1
        if self.n in self.marks:
            sync_device(self.device)
            if self.n == self.marks[0]:
                packing_barrier(self.windows)
            self.times[self.n] = time.perf_counter()
        if self.profile is not None:
            if self.n == self.marks[1]:
                self.profile.start()
            elif self.n == self.marks[1] + self.profile.steps:
                self.profile.stop()

    def seconds(self) -> float:
        start, stop = self.marks
        return self.times[stop] - self.times[start]


# the bench's protocol: CIFAR-10's shape and classes in two tasks
SHAPE, CLASSES = (3, 32, 32), [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


@contextlib.contextmanager
def bench_context(device: torch.device, semi: bool = False):
    """(protocol info, run context, its clock, a CPU generator) for one loop bench, in a temporary run folder."""
    clock = _Clock(device)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(clock, device, 0, Path(tmp), Reporter(rich_output=False))
        yield ProtocolInfo("loop-bench", 10, SHAPE, CLASSES, semi), ctx, clock, torch.Generator().manual_seed(0)


def _timed(fn, device: torch.device, warmup: int, steps: int) -> float:
    """Seconds for ``steps`` calls of ``fn`` back to back, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync_device(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync_device(device)
    return time.perf_counter() - t0


def _images(n: int, shape, gen: torch.Generator, device) -> torch.Tensor:
    return torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8).to(device)


def _task(index: int, classes: list[int], seen: list[int], n: int, n_unlabelled: int, shape, gen, device) -> TaskData:
    y = torch.tensor(classes, device=device).repeat_interleave(-(-n // len(classes)))[:n]
    return TaskData(index, classes, seen, _images(n, shape, gen, device), y, _images(n_unlabelled, shape, gen, device))


def _stage_result(name: str, loop_s: float, bare_s: float, steps: int, images_per_step: int) -> dict:
    loop, bare = steps / loop_s, steps / bare_s
    return {"stage": name, "steps": steps, "images_per_step": images_per_step,
            "loop_steps_per_s": loop, "bare_steps_per_s": bare, "loop_images_per_s": loop * images_per_step,
            "bare_images_per_s": bare * images_per_step, "loop_share_of_bare": loop / bare}


def stage_line(label: str, s: dict) -> str:
    """One stage of a loop bench as the command prints it."""
    return (f"{label}: loop {s['loop_steps_per_s']:.2f} steps/s, bare step {s['bare_steps_per_s']:.2f} steps/s: "
            f"the loop keeps {100 * s['loop_share_of_bare']:.1f} %")


def _profiled(fn, device: torch.device, steps: int) -> dict:
    """``steps`` calls of a bare step under the profiler (StepProfile.summary)."""
    prof = StepProfile(device, steps)
    prof.start()
    for _ in range(steps):
        fn()
    prof.stop()
    return prof.summary()


def add_profiles(stage: dict, clock: _Clock, bare, device: torch.device) -> None:
    """When the clock's window had a profile: it (``loop_profile``) and as many calls of the bare step
    under the profiler (``bare_profile``), into the stage's result."""
    if clock.profile is not None:
        stage.update(loop_profile=clock.profile.summary(), bare_profile=_profiled(bare, device, clock.profile.steps))


def window_text(warmup: int, steps: int, profile: int) -> str:
    return f"{warmup} + {steps} steps" + (f" + {profile} profiled" if profile else "")


def stage_lines(label: str, s: dict) -> list[str]:
    """A stage's rates as the command prints them, then its profiles when it has them."""
    return [stage_line(label, s)] + [profile_line(k.split("_")[0], s[k]) for k in ("loop_profile", "bare_profile")
                                     if k in s]


def log_stage(log, label: str, s: dict) -> None:
    """A stage's lines, logged as soon as the stage is measured: a command stopped by its time limit
    in the next stage's compilation still shows this one's rates (on 2026-12-07 a 200 s limit cut
    the JDCL bench after both loops had run, and it printed neither)."""
    for line in stage_lines(label, s):
        log(line)


def profile_line(label: str, p: dict) -> str:
    """One profiled loop or bare step as the command prints it: where a step's host time goes."""
    busy = "" if p["device_busy_share"] is None else f", device busy {100 * p['device_busy_share']:.0f} %"
    ops = ", ".join(f"{o['op']} {o['self_ms_per_step']:.2f}" for o in p["top_host_ops"][:4])
    return (f"  {label}: host {p['host_ms_per_step']:.2f} ms/step, device {p['device_ms_per_step']:.2f} ms/step{busy}; "
            f"per step {p['syncs_per_step']:.1f} syncs, {p['copies_per_step']:.1f} copies, "
            f"{p['launches_per_step']:.0f} launches; host self ms/step: {ops}"
            + "".join(f"; syncs from {w['site']} {w['per_step']:.1f}/step" for w in (p.get("sync_sites") or [])[:3]))


def time_jdcl_loops(cls: type[Method], preset: str, device: torch.device, steps: int = 200, warmup: int = 25,
                    semi: bool = False, overrides: dict | None = None, log=print, profile: int = 0) -> dict:
    """Local- and global-stage rates of JDCL (``cls``, passed in: the method's module calls this one) at
    ``preset`` (its loop and its bare step), on a two-task CIFAR-shaped protocol of random images;
    ``semi``: the FixMatch local stage. ``profile`` > 0: that many more steps of each loop, and as many
    bare steps, run under torch.profiler after the timed windows (``loop_profile``, ``bare_profile``)."""
    n_steps = warmup + steps + profile
    cfg = cls.config_for(preset, {**(overrides or {}), "local_steps": n_steps, "global_steps": n_steps,
                                   "cls_start_fraction": 0.0, "diagnostics": False})
    with bench_context(device, semi) as (info, ctx, clock, gen):
        m = cls(cfg, ctx)
        m.setup(info)
        n, nu = 10_000, (40_000 if semi else 0)  # a CIFAR-10 task's images (5 % labelled when semi)
        first = _task(0, CLASSES[0], CLASSES[0], n // 20 if semi else n, nu, SHAPE, gen, device)
        out = {"preset": preset, "semi_supervised": semi, "steps": steps, "warmup": warmup,
               "unet": cfg.unet, "batch_size": cfg.batch_size, "compile": m.compiled, "compile_mode": cfg.compile_mode,
               "stages": []}
        if profile:
            out["profile_steps"] = profile

        # ---- local stage: the loop, then the bare step on the same model, optimiser and EMA
        m.begin_task(first)
        clock.window(warmup, warmup + steps, profile)
        log(f"loop bench: local stage, {window_text(warmup, steps, profile)}")
        m._train_local(first)
        loop_s = clock.seconds()
        bare = _bare_local_step(m, first, gen)
        bare_s, per_step = _timed(bare, device, warmup, steps), _local_images(cfg, semi)
        out["stages"].append(_stage_result("local", loop_s, bare_s, steps, per_step))
        add_profiles(out["stages"][-1], clock, bare, device)
        log_stage(log, f"{preset} {out['stages'][-1]['stage']:6s}", out["stages"][-1])
        m.L = m.G = m.snapshot()

        # ---- global stage: replay of all ten classes (the quota of each), teachers G and L
        second = _task(1, CLASSES[1], CLASSES[0] + CLASSES[1], n, 0, SHAPE, gen, device)
        ctx.task_index = 1
        m.begin_task(second)
        m.L = m.snapshot()
        per_class = cfg.replay_per_class
        m.replay = {"x": _images(10 * per_class, SHAPE, gen, device),
                    "y": torch.arange(10, device=device).repeat_interleave(per_class),
                    "old": torch.tensor(CLASSES[0], device=device)}
        m._begin_global()
        clock.window(warmup, warmup + steps, profile)
        log(f"loop bench: global stage, {window_text(warmup, steps, profile)}")
        m._train_global(second)
        loop_s = clock.seconds()
        bare = _bare_global_step(m, gen)
        bare_s = _timed(bare, device, warmup, steps)
        out["stages"].append(_stage_result("global", loop_s, bare_s, steps, cfg.batch_size))
        add_profiles(out["stages"][-1], clock, bare, device)
        log_stage(log, f"{preset} {out['stages'][-1]['stage']:6s}", out["stages"][-1])
    return out


def _local_images(cfg, semi: bool) -> int:
    return cfg.ssl_labelled_batch * (1 + 2 * cfg.ssl_mu) if semi else cfg.batch_size


def _bare_local_step(m: Method, task: TaskData, gen: torch.Generator):
    """The local stage's step on one fixed batch: the model's work only."""
    c, dev = m.cfg, m.device
    fwd, dev_gen = m._train_fn(), torch.Generator(dev).manual_seed(1)
    if m.semi:
        nl, nu = c.ssl_labelled_batch, c.ssl_labelled_batch * c.ssl_mu
        weak = m._weak_fn()
        x_cls = torch.rand((nl + 2 * nu, *m.info.image_shape), generator=gen).to(dev) * 2 - 1
        wl, wu, su = x_cls[:nl], x_cls[nl:nl + nu], x_cls[nl + nu:]
        y = task.y[:nl]
        x_t, t, noise = m.diffusion.sample_t_and_noise(wu, dev_gen)
    else:
        x_cls = torch.rand((c.batch_size, *m.info.image_shape), generator=gen).to(dev) * 2 - 1
        y = task.y[torch.randint(len(task.y), (c.batch_size,), generator=gen).to(dev)]
        x_t, t, noise = m.diffusion.sample_t_and_noise(x_cls, dev_gen)

    def step():
        if m.semi:
            eps, logits = fixmatch_forward(fwd, weak, m.autocast, x_t, t, wl, wu, su)
            l_sup, l_unsup, _ = fixmatch(logits, nl, nu, y, c.ssl_threshold)
            l_cls = l_sup + l_unsup
        else:
            with m.autocast():
                eps, logits = fwd(x_t, t, x_cls)
            l_cls = F.cross_entropy(logits.float(), y)
        m._optimise(F.mse_loss(eps.float(), noise) + c.cls_weight * l_cls)
    return step


def _bare_global_step(m: Method, gen: torch.Generator):
    """The global stage's step on one fixed replay batch: teachers, student, losses, AdamW, EMA."""
    c, dev = m.cfg, m.device
    fwd, teachers = m._train_fn(find_unused_parameters=True), m._teacher_fns()
    idx = torch.randint(len(m.replay["y"]), (c.batch_size,), generator=gen).to(dev)
    y = m.replay["y"][idx]
    x_cls = m.replay["x"][idx].float() / 127.5 - 1
    x_t, t, noise = m.diffusion.sample_t_and_noise(x_cls, torch.Generator(dev).manual_seed(2))
    is_old = torch.isin(y, m.replay["old"])

    def step():
        with torch.no_grad(), m.autocast():
            eps_T, logits_T = teacher_targets(teachers, is_old, x_t, t, x_cls)
        with m.autocast():
            eps, logits = fwd(x_t, t, x_cls)
        eps, logits = eps.float(), logits.float()
        loss = (c.l_simple_weight * F.mse_loss(eps, noise) + c.kd_diff_weight * kd_diffusion(eps, eps_T, is_old, c.kd_weighting)
                + c.global_ce_weight * F.cross_entropy(logits, y)
                + c.kd_cls_weight * c.kd_diff_weight * kd_classifier(logits, logits_T, is_old, c.kd_weighting))
        m._optimise(loss)
    return step
