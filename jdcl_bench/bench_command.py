"""``jdcl-bench bench``: the joint model's training step and DDIM sampling timed path by path (bench.py),
written as a JSON record after every path; with ``--loop``, JDCL's own local and global loops timed next
to the bare step of the same model in one process (loop_bench.py)."""
from __future__ import annotations

import click

# the JDCL presets the model bench times (`standard` trains the `fast` model with the same batches)
BENCH_CONFIGS = ("paper", "fast", "smoke")


def preset_sizes(name: str) -> tuple[int, int, int]:
    """Training batch, generation batch and sampler steps of JDCL's preset ``name``, read from the
    preset itself so the bench times what a run does (DDIM and DPM-Solver++(2M) both make one ε
    evaluation a step, so the per-step time serves either)."""
    from .methods.jdcl import JDCL

    cfg = JDCL.config_for(name, {})
    return cfg.batch_size, cfg.gen_batch, cfg.ddim_steps


@click.command()
@click.option("--config", "configs", multiple=True, default=("paper", "fast"), show_default=True,
              help=f"Joint-model configuration(s) to time ({', '.join(BENCH_CONFIGS)}); with --loop, any preset of "
                   "the method.")
@click.option("--device", default="auto", show_default=True)
@click.option("--iters", default=None, type=int,
              help="Timed repetitions (median reported) [default: 10; with --loop, timed steps per stage: 200].")
@click.option("--warmup", default=None, type=int, help="Untimed repetitions first [default: 3; with --loop: 25].")
@click.option("--loop", is_flag=True, help="Time JDCL's local- and global-stage loops (augmentations, index draws, "
              "replay batches, teachers, EMA, reporting) next to the bare training step of the same model.")
@click.option("--semi", is_flag=True, help="With --loop: the semi-supervised (FixMatch) local stage.")
@click.option("--profile", default=0, type=click.IntRange(min=0), show_default=True,
              help="With --loop: profile this many more steps of each loop, and as many bare steps, after the timed "
                   "window (host and device ms per step, syncs, copies, launches, the host's costliest operators).")
@click.option("--method", default="jdcl", show_default=True,
              help="With --loop: whose loops (jdcl: local and global stage; dgr, guide: the generator's diffusion "
                   "loop and task 2's classifier loop; nncsl: tasks 1 and 2).")
@click.option("--no-compile", is_flag=True, help="Skip the torch.compile paths.")
@click.option("--no-cudagraphs", is_flag=True, help="Skip the torch.compile(mode='reduce-overhead') path.")
@click.option("--contiguous-path", is_flag=True,
              help="Also time the bf16 paths with contiguous (NCHW) weights: what channels_last buys.")
@click.option("--path", "only", multiple=True, metavar="NAME",
              help="Time only this path (repeatable; the fp32 reference always runs). Overrides the flags above. "
                   "Names: reference_fp32_eager, optimised_bf16, optimised_bf16_contiguous, optimised_bf16_compiled, "
                   "optimised_bf16_compiled_contiguous, optimised_bf16_compiled_nchw_blocks (torch's "
                   "GroupNorm kernel and the NCHW attention: the UNet before 2026-11-25), optimised_bf16_compiled_options (needs --inductor-option), optimised_bf16_cudagraphs.")
@click.option("--inductor-option", "inductor_options", multiple=True, metavar="KEY=VALUE",
              help="torch._inductor.config setting for one more compiled path (optimised_bf16_compiled_options), "
                   "timed next to the default one; repeatable, e.g. --inductor-option max_autotune=True.")
@click.option("--settings", "settings_file", default=None, type=click.Path(), metavar="FILE.toml",
              help="With --loop: the preset's fields changed by a settings file (as `jdcl-bench run --config`), e.g. "
                   "benchmarks/candidates/dgr-standard.toml.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="With --loop: one field changed (repeatable; "
              "over --settings).")
@click.option("--out", default="results/bench", show_default=True, type=click.Path())
def bench(configs, device, iters, warmup, loop, semi, profile, method, no_compile, no_cudagraphs, contiguous_path,
          only, inductor_options, settings_file, sets, out) -> None:
    """Time the joint model's training step and DDIM sampling: fp32 reference vs the optimised path."""
    import json

    from .bench import BenchSettings, check_paths, device_info, parse_inductor_options, record_path, run_bench
    from .records import atomic_write_bytes, code_version, now
    from .runner import resolve_device

    try:
        options = parse_inductor_options(inductor_options)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--inductor-option") from None
    try:
        check_paths(only, options)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--path") from None
    dev = resolve_device(device)
    if loop:
        from .config import settings_overrides

        try:
            overrides = settings_overrides(settings_file, sets)
        except ValueError as exc:  # ConfigError among them
            raise click.BadParameter(str(exc), param_hint="--settings/--set") from None
        return _bench_loops(method, configs, dev, 200 if iters is None else iters, 25 if warmup is None else warmup,
                            semi, out, profile, overrides)
    if settings_file or sets:
        raise click.UsageError("--settings and --set apply to --loop only (the model bench times named configurations)")
    unknown = [c for c in configs if c not in BENCH_CONFIGS]
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}: the model bench times {', '.join(BENCH_CONFIGS)}",
                                 param_hint="--config")
    if semi:
        raise click.UsageError("--semi applies to --loop only")
    if profile:
        raise click.UsageError("--profile applies to --loop only (the model bench reports kernels by kind already)")
    iters, warmup = 10 if iters is None else iters, 3 if warmup is None else warmup
    record = {"created_at": now(), "code_version": code_version(), **device_info(dev), "complete": False, "runs": []}
    path = record_path(out, "bench", record.get("gpu_name", "cpu"))

    def save(partial=None):  # after every timed path: a bench stopped later keeps what it measured
        runs = record["runs"] + ([partial] if partial is not None else [])
        atomic_write_bytes(path, json.dumps({**record, "runs": runs}, indent=2).encode())

    for name in configs:
        batch, gen_batch, steps = preset_sizes(name)
        s = BenchSettings(config=name, batch=batch, gen_batch=gen_batch, ddim_steps=steps, iters=iters,
                          warmup=warmup, compile=not no_compile, cudagraphs=not no_cudagraphs,
                          contiguous_path=contiguous_path, only=tuple(only), inductor_options=options)
        record["runs"].append(run_bench(s, dev, log=click.echo, on_path=save))
    record["complete"] = True
    save()
    peak = record.get("bf16_matmul_tflops_measured")
    for r in record["runs"]:
        for pname, v in r["paths"].items():
            if "error" in v:
                click.echo(f"{r['config']:6s} {pname:26s} {v['error']}")
                continue
            frac = f" ({100 * v['train_tflops'] / peak:.0f}% of the measured bf16 matmul rate)" if peak else ""
            click.echo(f"{r['config']:6s} {pname:26s} train {v['train_images_per_s']:8.0f} img/s "
                       f"x{v['train_speedup_vs_reference']:.2f}, {v['train_tflops']:.0f} TFLOP/s{frac}; "
                       f"DDIM {v['ddim_images_per_s']:7.1f} img/s x{v['ddim_speedup_vs_reference']:.2f}")
    click.echo(f"wrote {path}")


def _bench_loops(method: str, configs, dev, steps: int, warmup: int, semi: bool, out, profile: int = 0,
                 overrides: dict | None = None) -> None:
    import inspect
    import json

    from .bench import device_info, record_path
    from .records import atomic_write_bytes, code_version, now
    from .registry import METHODS, RegistryError

    try:
        cls = METHODS.get(method)
        unknown = [p for p in configs if p not in cls.presets]
    except RegistryError as exc:
        raise click.BadParameter(str(exc), param_hint="--method") from None
    if unknown:
        raise click.BadParameter(f"{method} has no preset {', '.join(unknown)}; its presets: {', '.join(cls.presets)}",
                                 param_hint="--config")
    from .methods.base import Method

    has_bench = getattr(cls.time_loops, "__func__", None) is not Method.time_loops.__func__
    takes = inspect.signature(cls.time_loops).parameters if has_bench else {}
    if profile and has_bench and "profile" not in takes:
        raise click.UsageError(f"--profile: {method}'s loop bench does not profile yet (its time_loops takes no "
                               "profile argument)")
    if overrides and has_bench and "overrides" not in takes:
        raise click.UsageError(f"--settings/--set: {method}'s loop bench takes no overrides (its time_loops has no "
                               "overrides argument)")
    record = {"created_at": now(), "code_version": code_version(), **device_info(dev), "method": method,
              "complete": False, "runs": []}
    path = record_path(out, "loop" if method == "jdcl" else f"loop-{method}", record.get("gpu_name", "cpu"))
    for name in configs:
        try:
            extra = {"profile": profile} if profile and has_bench else {}
            if overrides and has_bench:
                extra["overrides"] = overrides
            run = cls.time_loops(name, dev, steps, warmup, semi, click.echo, **extra)
            record["runs"].append({**run, "overrides": dict(overrides)} if overrides else run)
        except (NotImplementedError, ValueError) as exc:
            raise click.UsageError(str(exc)) from None
        atomic_write_bytes(path, json.dumps(record, indent=2).encode())
    record["complete"] = True
    atomic_write_bytes(path, json.dumps(record, indent=2).encode())
    click.echo(f"wrote {path}")
