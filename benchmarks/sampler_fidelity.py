"""Replay fidelity against sampling speed: DDIM at 50 / 250 steps vs DPM-Solver++(2M) at 10-25 steps.

Issue 23's target is replay at DDIM-50's fidelity at >= 3x its rate. This samples the global
model G of a trained JDCL run the way JDCL's replay does (EMA weights, eval mode, bf16 autocast and
torch.compile on CUDA, unconditional samples labelled by the model's own classifier, uint8), from
the same noise for every sampler, and measures each sampler's output with the run's replay
diagnostics (jdcl_bench.replay_quality: the dataset's reference classifier):

- ``fidelity``: how often the reference classifier agrees with the label the replay carries;
- ``fd``: Fréchet distance to real test images of the same classes in the reference classifier's
  features (``fd_real``: real train vs real test, the floor);
- pixel health (saturated and high-frequency shares);
- ``images_per_s``: sampling rate (model evaluations and solver updates, synchronised; the first
  batch of each sampler is a warm-up and not timed; labelling is not timed);
- ``mean_abs_diff_vs_reference``: mean |x - x_ref| in [-1, 1] units against the reference sampler
  (default DDIM-250) from the same noise: all the samplers solve the same ODE, so this is how far
  each is from the many-step solution;
- with ``--confidence 0.5,0.9``: for each threshold, the replay JDCL's
  ``replay_confidence_threshold`` would keep (samples whose own-classifier label has at least that
  probability): the share kept overall and per class, and the kept samples' fidelity and Fréchet
  distance. It measures that option on a trained G without training anything.

Samplers are named ``ddim-<steps>`` or ``dpm-<steps>[-<spacing>]`` (spacing logsnr by default, or
uniform = DDIM's grid, or linspace = diffusers'). The record goes to
``results/bench/sampler-fidelity-<device>-<time>.json`` and a table is printed.

GPU (a finished run; its checkpoint's global model is sampled):

    python benchmarks/sampler_fidelity.py --run results/runs/cifar10-t5/jdcl/fast/seed0 \\
        --data-dir .data/cifar10-jpeg --n 5000

CPU smoke (what the test runs: a random smoke-size model on the synthetic protocol; the numbers
mean nothing, the pipeline is what is tested):

    python benchmarks/sampler_fidelity.py --random-model --protocol synthetic-t2 --device cpu \\
        --n 24 --samplers ddim-4,dpm-3 --reference ddim-4 --out /tmp/bench
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

DEFAULT_SAMPLERS = ("ddim-250,ddim-50,dpm-10,dpm-15,dpm-20,dpm-25,"
                    "dpm-10-uniform,dpm-15-uniform,dpm-20-uniform,dpm-25-uniform")


def parse_sampler(name: str) -> dict:
    """``ddim-50`` -> DDIM, 50 steps; ``dpm-10[-spacing]`` -> DPM-Solver++(2M), 10 steps, that grid."""
    from jdcl_bench.jdcl.diffusion import SOLVER_SPACINGS

    parts = name.split("-")
    try:
        kind, steps, spacing = parts[0], int(parts[1]), (parts[2] if len(parts) > 2 else "logsnr")
    except (IndexError, ValueError):
        raise SystemExit(f"sampler {name!r}: expected ddim-<steps> or dpm-<steps>[-<spacing>]") from None
    if kind not in ("ddim", "dpm") or len(parts) > 3 or (kind == "ddim" and len(parts) > 2) \
            or spacing not in SOLVER_SPACINGS:
        raise SystemExit(f"sampler {name!r}: expected ddim-<steps> or dpm-<steps>[-<spacing>], "
                         f"spacing one of {', '.join(SOLVER_SPACINGS)}")
    return {"name": name, "kind": kind, "steps": steps, "spacing": spacing if kind == "dpm" else "uniform"}


def unet_config_for(method_cfg: dict, num_classes: int, image_shape: tuple[int, int, int]):
    """The UNet a JDCL run of this config trains (as JDCL.setup builds it)."""
    from jdcl_bench.jdcl.unet import UNetConfig

    return UNetConfig.named(method_cfg.get("unet", "fast"), num_classes, image_shape,
                            method_cfg.get("model_channels", 0))


def load_global_model(path: Path) -> tuple[dict, int | None, str]:
    """(EMA weights of G, index of the task G finished or None, what was loaded) from a run directory,
    a runner checkpoint, a ``{"ema": {"module": ...}}`` record, or a plain state dict."""
    from jdcl_bench.records import load_checkpoint
    from jdcl_bench.runner import TASK_CHECKPOINT

    ckpt = path
    if path.is_dir():  # a run folder: its latest state, else the state after its last finished task
        ckpt = next((path / n for n in ("checkpoint.pt", TASK_CHECKPOINT) if (path / n).is_file()),
                    path / "checkpoint.pt")
    state = load_checkpoint(ckpt)
    if "method" in state:  # a runner checkpoint: the method's state holds G
        G = state["method"].get("G")
        if G is None:
            raise SystemExit(f"{ckpt}: no global model yet (the run has not finished its first task)")
        task = state["task"] if state["phase"] == "task_done" else state["task"] - 1
        return G["ema"]["module"], task, f"G after task {task + 1} (EMA weights) from {ckpt}"
    if "ema" in state:
        return state["ema"]["module"], None, f"EMA weights from {ckpt}"
    return state, None, f"state dict from {ckpt}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="a JDCL run directory (its config.json and checkpoint.pt, "
                                              "else checkpoint-task.pt)")
    src.add_argument("--checkpoint", type=Path,
                     help="a checkpoint or model state file; needs --protocol (and --unet unless fast)")
    src.add_argument("--random-model", action="store_true", help="an untrained model (smoke tests only)")
    ap.add_argument("--protocol", help="protocol (default: the run's)")
    ap.add_argument("--unet", default=None, help="paper | fast | smoke (default: the run's; fast, or smoke "
                                                 "with --random-model)")
    ap.add_argument("--model-channels", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--samplers", default=DEFAULT_SAMPLERS, help="comma-separated sampler names")
    ap.add_argument("--reference", default="ddim-250", help="sampler the others are compared with pixel-wise")
    ap.add_argument("--n", type=int, default=5000, help="images per sampler")
    ap.add_argument("--gen-batch", type=int, default=None, help="images per sampler call (default: the run's "
                                                                 "gen_batch, else 1000)")
    ap.add_argument("--clip", choices=("run", "on", "off"), default="run",
                    help="clip x0-predictions to [-1, 1] (run: the run's sampler_clip_x0)")
    ap.add_argument("--no-compile", action="store_true", help="eager model on CUDA (compiled by default)")
    ap.add_argument("--compile-mode", default="reduce-overhead")
    ap.add_argument("--confidence", default="",
                    help="comma-separated thresholds in (0, 1): also measure the replay each would keep "
                         "(replay_confidence_threshold)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args(argv)
    try:
        thresholds = [float(t) for t in args.confidence.split(",") if t.strip()]
    except ValueError:
        ap.error(f"--confidence {args.confidence!r}: expected numbers such as 0.5,0.9")
    if any(not 0 < t < 1 for t in thresholds):
        ap.error(f"--confidence {args.confidence!r}: each threshold must lie in (0, 1)")

    from jdcl_bench.bench import device_info
    from jdcl_bench.data.datasets import load_dataset
    from jdcl_bench.fastpath import maybe_compile, unet_memory_format
    from jdcl_bench.jdcl.diffusion import GaussianDiffusion
    from jdcl_bench.jdcl.unet import JointUNet
    from jdcl_bench.protocol import get_protocol
    from jdcl_bench.records import atomic_write_bytes, code_version, now
    from jdcl_bench.replay_quality import for_dataset, summary_line
    from jdcl_bench.runner import resolve_device

    # the reference first, so that every other sampler is compared with it
    samplers = [parse_sampler(args.reference)] + [parse_sampler(s) for s in args.samplers.split(",")
                                                  if s and s != args.reference]
    device = resolve_device(args.device)

    # ---- the model and its protocol
    method_cfg, task, source = {}, None, "random initialisation (smoke test)"
    if args.run:
        run_cfg = json.loads((args.run / "config.json").read_text())
        if run_cfg.get("method") != "jdcl":
            raise SystemExit(f"{args.run} is a run of {run_cfg.get('method')!r}, not jdcl")
        method_cfg = run_cfg["method_config"]
        protocol_name = args.protocol or run_cfg["protocol"]
        try:
            protocol = get_protocol(protocol_name)
        except Exception:  # a protocol file named by its hash: use the recorded path
            protocol = get_protocol(run_cfg["protocol_spec"]["path"])
    else:
        if not args.protocol:
            raise SystemExit("--checkpoint and --random-model need --protocol")
        protocol = get_protocol(args.protocol)
    if args.unet:
        method_cfg = {**method_cfg, "unet": args.unet}
    method_cfg.setdefault("unet", "smoke" if args.random_model else "fast")
    if args.model_channels:
        method_cfg["model_channels"] = args.model_channels

    ds = load_dataset(protocol.dataset, data_dir=args.data_dir, image_size=protocol.image_size,
                      class_names=protocol.class_names, synthetic=protocol.synthetic)
    num_classes = len(ds.classes)
    x_shape = tuple(int(v) for v in ds.train_x.shape[1:])  # (H, W, C)
    image_shape = (x_shape[2], x_shape[0], x_shape[1])
    cfg = unet_config_for(method_cfg, num_classes, image_shape)
    compiled = device.type == "cuda" and not args.no_compile
    model = JointUNet(cfg)
    if not args.random_model:
        weights, task, source = load_global_model(args.run or args.checkpoint)
        model.load_state_dict(weights)
    model = model.to(device).to(memory_format=unet_memory_format(device, compiled)).eval().requires_grad_(False)
    tasks = protocol.tasks(num_classes)
    seen = sorted(c for t in tasks[: (task + 1 if task is not None else len(tasks))] for c in t)
    clip = {"on": True, "off": False}.get(args.clip, bool(method_cfg.get("sampler_clip_x0", False)))
    gen_batch = args.gen_batch or int(method_cfg.get("gen_batch", 1000))
    amp = device.type == "cuda"
    fn = maybe_compile(model, enabled=compiled, device=device, info=print, name="the JDCL UNet",
                       mode=None if args.compile_mode == "default" else args.compile_mode)
    diffusion = GaussianDiffusion().to(device)
    diag = for_dataset(ds, device, flip=protocol.hflip)
    print(f"model: {source}; UNet {method_cfg['unet']}, classes seen {seen}, clip {clip}, "
          f"{args.n} images per sampler in batches of {gen_batch}, {device}{' compiled' if compiled else ''}")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def sample(spec: dict, noise: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if spec["kind"] == "ddim":
                return diffusion.ddim_sample(fn, noise.shape, steps=spec["steps"], noise=noise, device=device,
                                             clip_denoised=clip, return_pred_x0=clip)
            return diffusion.dpm_solver_sample(fn, noise.shape, steps=spec["steps"], spacing=spec["spacing"],
                                               noise=noise, device=device, clip_denoised=clip)

    @torch.no_grad()
    def label(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As JDCL's replay: clamp, the model's own classifier's label and its probability, uint8."""
        x = x.clamp(-1, 1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            prob = model.classify(x).float().softmax(1)
        conf, y = prob.max(1)
        return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8), y, conf

    gen = torch.Generator(device).manual_seed(args.seed)
    noises = []
    for start in range(0, args.n, gen_batch):
        noises.append(torch.randn((min(gen_batch, args.n - start), *image_shape), device=device, generator=gen)
                      .contiguous(memory_format=unet_memory_format(device, compiled)))

    record = {"created_at": now(), "code_version": code_version(), **device_info(device),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "model": {"source": source, "unet": method_cfg["unet"], "model_channels": cfg.model_channels,
                        "protocol": protocol.name, "dataset": ds.identity.get("name"), "seen_classes": seen,
                        "clip_x0": clip, "gen_batch": gen_batch, "compiled": compiled, "bf16": amp},
              "reference_classifier": {"test_acc": diag.reference_acc, "cache": getattr(diag, "cache_note", None)},
              "complete": False, "samplers": {}}
    out = Path(args.out) / (f"sampler-fidelity-{record.get('gpu_name', device.type).replace(' ', '_')}-"
                            f"{time.strftime('%Y%m%dT%H%M%S')}.json")
    ref_x: list[torch.Tensor] = []
    for spec in samplers:
        for noise in {tuple(z.shape): z for z in noises}.values():  # warm-up, once per batch shape:
            sample(spec, noise)                                       # compilation and CUDA graph capture
        sync()
        xs, x_u8, ys, confs, t_total = [], [], [], [], 0.0
        for noise in noises:
            sync()
            t0 = time.perf_counter()
            x = sample(spec, noise)
            sync()
            t_total += time.perf_counter() - t0
            xs.append(x.float().clamp(-1, 1).cpu())
            u8, y, conf = label(x)
            x_u8.append(u8.cpu())
            ys.append(y.cpu())
            confs.append(conf.cpu())
        x_all, u8_all, y_all, conf_all = torch.cat(xs), torch.cat(x_u8), torch.cat(ys), torch.cat(confs)
        keep = torch.isin(y_all, torch.tensor(seen))
        report = diag.measure(u8_all[keep], y_all[keep], seen)
        row = {"kind": spec["kind"], "steps": spec["steps"], "spacing": spec["spacing"], "model_evals": spec["steps"],
               "images": args.n, "seconds": round(t_total, 4), "images_per_s": args.n / t_total,
               "labelled_in_seen_classes": float(keep.float().mean()),
               "label_counts": {int(k): int((y_all == k).sum()) for k in seen},
               **{k: report["overall"][k] for k in ("fidelity", "fidelity_real", "fd", "fd_real", "saturated",
                                                    "saturated_real", "hf", "hf_real")},
               "chance": report["chance"], "per_class": report["per_class"]}
        if spec["name"] == args.reference:
            ref_x = xs
        row["mean_abs_diff_vs_reference"] = float((x_all - torch.cat(ref_x)).abs().mean())
        record["samplers"][spec["name"]] = row
        print(f"{spec['name']:>16s}: {row['images_per_s']:9.1f} img/s  " + summary_line("", report).lstrip(": "))
        if thresholds:
            row["confidence"] = {}
        for t in thresholds:
            kept = keep & (conf_all >= t)
            # what JDCL's replay would keep: its quota is per class, so a class the threshold starves is
            # filled with duplicates (or stops the run), whatever the overall share
            per_class_kept = {int(c): float(kept[y_all == c].float().sum() / max(int((y_all == c).sum()), 1))
                              for c in seen}
            if not bool(kept.any()):
                row["confidence"][str(t)] = {"kept": 0.0, "kept_per_class": per_class_kept}
                print(f"{'':>16s}  confidence >= {t}: nothing kept")
                continue
            rep_t = diag.measure(u8_all[kept], y_all[kept], seen)
            row["confidence"][str(t)] = {
                "kept": float(kept.float().sum() / max(int(keep.sum()), 1)), "kept_per_class": per_class_kept,
                **{k: rep_t["overall"][k] for k in ("fidelity", "fd", "saturated", "hf")},
                "per_class": rep_t["per_class"]}
            print(f"{'':>16s}  confidence >= {t}: kept {100 * row['confidence'][str(t)]['kept']:.1f} % "
                  f"(least-kept class {100 * min(per_class_kept.values()):.1f} %)"
                  + summary_line("", rep_t))
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, json.dumps(record, indent=1).encode())

    # ---- the comparison issue 23 asks for: each DPM-Solver++ row against DDIM-50
    base = record["samplers"].get("ddim-50")
    if base:
        record["vs_ddim50"] = {
            name: {"speedup": row["images_per_s"] / base["images_per_s"],
                   "fidelity_minus_ddim50": (None if row["fidelity"] is None or base["fidelity"] is None
                                             else row["fidelity"] - base["fidelity"]),
                   "fd_minus_ddim50": (None if row["fd"] is None or base["fd"] is None else row["fd"] - base["fd"])}
            for name, row in record["samplers"].items() if row["kind"] == "dpm"}
    record["complete"] = True
    atomic_write_bytes(out, json.dumps(record, indent=1).encode())
    print(f"record: {out}")
    record["path"] = str(out)
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
