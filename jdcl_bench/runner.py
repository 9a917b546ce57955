"""The task loop: data per task, method hooks, evaluation, checkpoints, resume.

A run is identified by (protocol, method, preset, config overrides, seed) and lives in
``<out>/runs/<protocol>/<method>/<preset>[+<overrides hash>]/seed<N>``. After every task the
runner writes ``checkpoint.pt`` atomically; a method that sets ``supports_resume_in_task`` also
gets checkpoints inside a task (every ``checkpoint_every_s`` seconds and when ``time_limit_s``
runs out, after which the run stops cleanly). Starting the same run again resumes from the last
checkpoint. Global torch generators (dropout, init) and ``ctx.rng`` are re-seeded from
(seed, task) at every task start and saved inside a task, so a resumed run computes exactly
what an uninterrupted one does on CPU.

Under ``torchrun`` with more than one process (docs/distributed.md) every rank runs this same loop
in lockstep: rank 0 alone writes files and evaluates, and every decision that depends on a clock
or a file (stop, checkpoint, resume) is rank 0's, broadcast to the others.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed as D
from . import records
from .config import ConfigError, to_dict
from .fastpath import tune_backends
from .metrics import per_task_accuracy, seen_accuracy, summarise
from .methods.base import Method, NonFiniteLoss, ProtocolInfo, RunContext, TaskData, derive_seed  # noqa: F401 (NonFiniteLoss, RunContext: importable from here too)
from .progress import Reporter
from .protocol import Protocol, get_protocol
from .registry import METHODS
from .splits import labelled_indices


# Users' runs go to a folder of their own, not into the repository's committed results/
# (which holds the records behind the published tables; `table --results results` reads them).
DEFAULT_OUT = "jdcl-runs"


class StopRun(Exception):
    """Raised inside a task when the time limit is reached; the run was checkpointed."""


def _checkpoint_note(run_dir: Path) -> str:
    """What a run stopped by non-finite values has left: only claim a checkpoint that exists."""
    if (run_dir / "checkpoint.pt").is_file():
        return (f"The last checkpoint, {run_dir / 'checkpoint.pt'}, was written before that and holds finite "
                "values only (checkpoints are checked before they are written).")
    return f"No checkpoint has been written yet in {run_dir}: nothing to resume, a new start begins afresh."


def _nonfinite_hint(runner: "Runner") -> str:
    """Advice naming the method's own learning-rate keys (``classifier.lr`` for fine-tune), never a key
    the method does not have."""
    method = getattr(runner, "method", None)
    cfg = getattr(method, "cfg", None)
    keys: list[tuple[str, Any]] = []

    def walk(obj: Any, prefix: str) -> None:
        if not dataclasses.is_dataclass(obj):
            return
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            elif (f.name == "lr" or f.name.startswith("lr_") or f.name.endswith("_lr")) and \
                    isinstance(value, (int, float)) and not isinstance(value, bool):
                keys.append((f"{prefix}{f.name}", value))

    walk(cfg, "")
    name = getattr(method, "name", "") or "the method"
    if keys:
        shown = ", ".join(f"--set {k}={v:g}" for k, v in keys[:4])
        return f"Lower {name}'s learning rate (now: {shown}; a smaller value) or check the data."
    return f"Check the data and {name}'s config (`--set` keys are its Config fields)."


def _nonfinite_tensors(obj: Any, prefix: str = "") -> list[str]:
    """Dotted paths of floating-point tensors holding NaN or inf, anywhere in nested dicts/lists
    (one device sync per device, not one per tensor)."""
    found: list[tuple[str, torch.Tensor]] = []

    def walk(o: Any, path: str) -> None:
        if isinstance(o, torch.Tensor):
            if (o.is_floating_point() or o.is_complex()) and o.numel():
                found.append((path or "<tensor>", o))
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                walk(v, f"{path}[{i}]")

    walk(obj, prefix)
    bad: list[str] = []
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for path, t in found:
        by_device.setdefault(t.device, []).append((path, t))
    for items in by_device.values():
        flags = torch.stack([~torch.isfinite(t.detach()).all() for _, t in items]).tolist()
        bad += [path for (path, _), b in zip(items, flags) if b]
    return bad


class RunMismatch(ConfigError):
    """The run directory holds a run of another protocol, config or dataset."""


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_same_protocol(run_dir: Path, old_config: dict, protocol: Protocol) -> None:
    """Refuse a run directory whose record is of another protocol (settings both records have must agree:
    a setting added to protocols later is absent from older records)."""
    old = old_config.get("protocol_spec")
    if not isinstance(old, dict):
        return
    new = protocol.spec()
    differ = sorted(k for k in set(old) & set(new) if k not in ("source", "path")
                    and old[k] != json.loads(json.dumps(new[k])))
    if differ:
        raise RunMismatch(f"{run_dir} holds a run of a different protocol ({', '.join(differ)} differ: "
                          f"{_short({k: old[k] for k in differ})} there, {_short({k: new[k] for k in differ})} "
                          "now); use another --out or delete the directory")


@dataclass
class RunConfig:
    protocol: str
    method: str
    seed: int = 0
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    out: str = DEFAULT_OUT
    device: str = "auto"
    eval_batch_size: int = 1000
    time_limit_s: float | None = None
    # stop only between tasks: never inside one at the time limit, and never start a task that the
    # longest task so far (this process or an earlier one) says would not finish. The checkpoint left
    # then holds the method's between-task state only (JDCL: the global model), small enough to carry
    # from one GPU command to the next (docs/jdcl.md, "Runs longer than one command").
    stop_between_tasks: bool = False
    checkpoint_every_s: float = 600.0
    download: bool = False
    restart: bool = False  # start afresh: drop the run directory's checkpoint and records first


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_globals(seed: int) -> None:
    """Seed torch's global generators (dropout and init use them); the seed comes from the run."""
    torch.manual_seed(seed)


def _config_diff(old: dict, new: dict, limit: int = 4) -> str:
    """'key: X there, Y now' for the (flattened) settings that differ, at most ``limit`` of them."""
    def flat(d, prefix=""):
        out = {}
        for k, v in (d or {}).items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = flat(old), flat(json.loads(json.dumps(new)))
    diff = [f"{k}: {a.get(k, '(absent)')} there, {b.get(k, '(absent)')} now" for k in sorted(set(a) | set(b))
            if a.get(k, "(absent)") != b.get(k, "(absent)")]
    return "; ".join(diff[:limit]) + (f"; {len(diff) - limit} more" if len(diff) > limit else "")


def run_dir_for(cfg: RunConfig, preset: str, protocol: Protocol | None = None) -> Path:
    """``<out>/runs/<protocol>/<method>/<preset>[+<overrides hash>]/seed<N>``; a user's protocol file
    is named by its content (``Protocol.run_name``), not by how its path is spelled."""
    tag = preset
    if cfg.overrides:
        digest = hashlib.sha256(json.dumps(cfg.overrides, sort_keys=True).encode()).hexdigest()[:8]
        tag = f"{preset}+{digest}"
    protocol = protocol or get_protocol(cfg.protocol)
    return Path(cfg.out) / "runs" / protocol.run_name / cfg.method / tag / f"seed{cfg.seed}"


def build_tasks(protocol: Protocol, ds, device: torch.device) -> tuple[list[TaskData], dict, list[list[int]]]:
    from .data.augment import images_to_tensor

    num_classes = len(ds.classes)
    task_classes = protocol.tasks(num_classes)
    lab_idx, split_info = labelled_indices(protocol, ds.train_y)
    is_lab = np.zeros(len(ds.train_y), bool)
    is_lab[lab_idx] = True
    x_all = images_to_tensor(ds.train_x)
    tasks, seen = [], []
    for k, classes in enumerate(task_classes):
        seen = seen + list(classes)
        in_task = np.isin(ds.train_y, classes)
        lab = np.flatnonzero(in_task & is_lab)
        unl = np.flatnonzero(in_task) if protocol.semi_supervised else np.array([], dtype=np.int64)
        tasks.append(TaskData(
            index=k, classes=list(classes), seen_classes=list(seen),
            x=x_all[torch.from_numpy(lab)].to(device), y=torch.from_numpy(ds.train_y[lab]).long().to(device),
            unlabelled_x=x_all[torch.from_numpy(unl)].to(device)))
    split_info["labelled_total"] = int(is_lab.sum())
    return tasks, split_info, task_classes


class Runner:
    def __init__(self, cfg: RunConfig, reporter: Reporter | None = None, dataset=None):
        self.cfg = cfg
        self.reporter = reporter or Reporter()
        self._dataset = dataset  # tests and the conformance kit may inject a dataset
        self._diag = None
        self.task_seconds: list[float] = []  # wall seconds of each task trained in this process or before
        self.diagnostics: list[dict] = []
        self.diagnostics_seconds = 0.0

    # ---- diagnostics -------------------------------------------------------------------------
    def diagnostics_instrument(self):
        """The dataset's replay diagnostics (reference classifier and real statistics), built on
        first use; None on ranks other than 0 (rank 0 alone measures and writes)."""
        if not D.is_main():
            return None
        if self._diag is None:
            from .replay_quality import for_dataset

            t0 = time.time()
            self._diag = for_dataset(self._ds, self.device, flip=self._protocol.hflip, log=self.reporter.info)
            self.diagnostics_seconds += time.time() - t0
        return self._diag

    def add_diagnostic(self, entry: dict) -> None:
        self.diagnostics.append(entry)

    # ---- time keeping and in-task checkpoints -------------------------------------------
    def nonfinite_advice(self) -> str:
        """What a run stopped by a non-finite loss has left and what to change (RunContext.check_loss)."""
        return f"{_checkpoint_note(self.run_dir)} {_nonfinite_hint(self)}"

    def tick(self) -> None:
        if not self.method.supports_resume_in_task:
            return
        now = time.time()
        over = self.cfg.time_limit_s is not None and now - self.t_start >= self.cfg.time_limit_s
        over = over and not self.cfg.stop_between_tasks
        due = over or now - self.last_save >= self.cfg.checkpoint_every_s
        over, due = D.broadcast_flags(over, due)  # rank 0's clock decides for every rank
        if due:
            self.save_checkpoint(phase="in_task")
            if over:
                raise StopRun()

    def _elapsed(self) -> float:
        return self.prev_wall + (time.time() - self.t_start)

    def save_checkpoint(self, phase: str) -> None:
        """Collective in a distributed run: every rank calls it at the same point, rank 0 writes.

        Never writes non-finite tensors: the loss is checked only every so many steps, so the state
        is checked here, and a run that has diverged stops with the previous checkpoint kept."""
        method_state = self.method.state_dict()
        bad = _nonfinite_tensors(method_state, "method")
        if D.broadcast_flags(bool(bad))[0]:  # rank 0's verdict: every rank stops together
            where = ", ".join(bad[:5]) + (f", ... ({len(bad)} tensors)" if len(bad) > 5 else "")
            raise NonFiniteLoss(f"the state of task {self.task_index + 1} holds NaN or inf ({where}); it was not "
                                f"checkpointed. {_checkpoint_note(self.run_dir)} {_nonfinite_hint(self)}")
        if D.is_distributed():
            # each rank's global generators (dropout) differ: keep all of them for an exact resume
            per_rank = D.gather_objects({"torch": torch.get_rng_state(),
                                         "cuda": torch.cuda.get_rng_state(self.device)
                                         if self.device.type == "cuda" else None})
            if not D.is_main():
                self.last_save = time.time()
                return
        state = {
            "phase": phase, "task": self.task_index, "method": method_state,
            "rng": {"ctx": self.ctx.rng.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None},
            "acc_rows": self.acc_rows, "seen_acc": self.seen_acc, "wall_s": self._elapsed(),
            "diagnostics": self.diagnostics, "task_seconds": self.task_seconds,
        }
        if D.is_distributed():
            state["rng"]["per_rank"] = per_rank
        records.atomic_torch_save(state, self.run_dir / "checkpoint.pt")
        self.last_save = time.time()

    # ---- the run ----------------------------------------------------------------------
    def run(self) -> Path:
        cfg = self.cfg
        protocol = get_protocol(cfg.protocol)
        method_cls: type[Method] = METHODS.get(cfg.method)
        mcfg = method_cls.config_for(cfg.preset, cfg.overrides)
        preset = cfg.preset or method_cls.default_preset
        self.run_dir = run_dir_for(cfg, preset, protocol)
        if D.env_world_size() == 1:
            self.device = resolve_device(cfg.device)
            return self._run(protocol, method_cls, mcfg, preset)

        # launched by torchrun with several processes
        if not method_cls.supports_distributed:
            raise ConfigError(f"method {cfg.method!r} does not support distributed (DDP) runs yet; run it as a "
                              "single process (without torchrun, or with --nproc_per_node 1)")
        started_group = not D.is_initialized()
        self.device = D.init(cfg.device)
        if not D.is_main():
            self.reporter = Reporter(quiet=True)  # one log: rank 0's
        ok = False
        try:
            path = self._run(protocol, method_cls, mcfg, preset)
            ok = True
            return path
        finally:
            if started_group:
                # The method's DDP wrappers hold the process group; left alive, they are freed at
                # interpreter exit, where gloo's worker threads can abort the process (SIGABRT
                # after a complete run). Free them first, while Python is fully alive.
                self.method = self.ctx = None
                gc.collect()
                D.shutdown(wait_for_all=ok)

    def _run(self, protocol: Protocol, method_cls: type[Method], mcfg, preset: str) -> Path:
        cfg = self.cfg
        tune_backends(self.device)  # TF32 for whatever fp32 work is left outside bf16 autocast
        # rank 0 alone holds the lock and writes files; if it fails, torchrun stops the other ranks
        lock = records.run_lock(self.run_dir) if D.is_main() else contextlib.nullcontext()
        with lock:
            config_doc = {"protocol": protocol.run_name, "method": cfg.method, "preset": preset, "seed": cfg.seed,
                          "overrides": cfg.overrides, "method_config": to_dict(mcfg),
                          "run": {k: v for k, v in asdict(cfg).items() if k not in ("overrides",)},
                          "protocol_spec": protocol.to_dict()}
            if D.is_distributed():
                # the config's batch is the global one; it must split evenly over the processes
                global_batch = method_cls.global_batch(mcfg)
                if global_batch is not None:
                    D.local_batch(global_batch)
                config_doc["distributed"] = D.describe(global_batch)
            ckpt_path = self.run_dir / "checkpoint.pt"
            metrics_path = self.run_dir / "metrics.json"
            if cfg.restart and D.is_main():
                dropped = [f.name for f in (ckpt_path, metrics_path, self.run_dir / "manifest.json",
                                            self.run_dir / "config.json") if f.exists()]
                for name in dropped:
                    (self.run_dir / name).unlink()
                if dropped:
                    self.reporter.info(f"--restart: removed {', '.join(dropped)} from {self.run_dir}")
            complete = metrics_path.exists() and bool(records.read_json(metrics_path).get("complete"))
            resume = ckpt_path.exists()
            complete, resume = D.broadcast_flags(complete, resume)  # what rank 0 sees, on every rank
            if (complete or resume) and D.is_main():
                try:
                    old = records.read_json(self.run_dir / "config.json")
                except (OSError, ValueError):  # missing or damaged: nothing to compare (a resume then refuses)
                    old = {}
                _check_same_protocol(self.run_dir, old if isinstance(old, dict) else {}, protocol)
            if complete:
                self.reporter.info(f"run already complete: {self.run_dir}")
                # the directory is named by preset and --set overrides, not by the defaults: after a
                # default changed (NNCSL's BatchNorm), the record here ran with another config
                if D.is_main() and isinstance(old, dict) and "method_config" in old and \
                        old["method_config"] != json.loads(json.dumps(config_doc["method_config"])):
                    self.reporter.info(f"note: that record ran with another method config than this command "
                                       f"asks for ({_config_diff(old['method_config'], config_doc['method_config'])}); "
                                       "it keeps its own config.json. --restart or another --out runs this one")
                return self.run_dir
            if resume and D.is_main():
                old = old if isinstance(old, dict) else {}
                for key in ("protocol", "method", "preset", "seed", "method_config"):
                    if old.get(key) != json.loads(json.dumps(config_doc[key])):
                        raise RunMismatch(f"{self.run_dir} holds a checkpoint of a different run ({key} differs: "
                                          f"{_short(old.get(key))} there, {_short(config_doc[key])} now); "
                                          "use another --out or delete the directory")
            elif D.is_main():
                records.write_json(self.run_dir / "config.json", config_doc)

            t_load = time.time()
            ds = self._dataset
            if ds is None:
                from .data.datasets import load_dataset

                if not D.is_main():
                    D.barrier()  # rank 0 loads (and downloads) first, the others then read its files
                ds = load_dataset(protocol.dataset, data_dir=cfg.data_dir, image_size=protocol.image_size,
                                  class_names=protocol.class_names, download=cfg.download, synthetic=protocol.synthetic)
                if D.is_main():
                    D.barrier()
            self._ds, self._protocol = ds, protocol  # for the replay diagnostics, built on first use
            from .data.datasets import check_dataset

            # the data must be the protocol's dataset (class count, names, image shape) before anything trains
            check_dataset(ds, protocol.dataset, image_size=protocol.image_size, class_names=protocol.class_names,
                          synthetic=protocol.synthetic, protocol=protocol.name, data_dir=cfg.data_dir)
            if resume and D.is_main() and (self.run_dir / "manifest.json").is_file():
                before = records.read_json(self.run_dir / "manifest.json").get("dataset", {}).get("content_hash")
                if before and before != ds.identity.get("content_hash"):
                    raise RunMismatch(f"{self.run_dir} was trained on other data (dataset content hash "
                                      f"{before[:12]}... there, {ds.identity.get('content_hash', '')[:12]}... now, "
                                      f"from {ds.identity.get('source')}); point --data-dir at the data it ran on, "
                                      "or use another --out or delete the directory to start afresh")
            tasks, split_info, task_classes = build_tasks(protocol, ds, self.device)
            self.reporter.info(f"{protocol.name}: {len(ds.classes)} classes, {len(tasks)} tasks, "
                               f"{split_info['labelled_total']} labelled training images "
                               f"({ds.identity.get('variant', '')}) loaded in {time.time() - t_load:.1f}s")
            test_x_np, test_y = ds.test_x, np.asarray(ds.test_y)
            covered = sorted(c for t in task_classes for c in t)
            subset = len(covered) < len(ds.classes)
            if subset:
                # [tasks].classes covering some of the dataset's classes: a benchmark of those classes,
                # so it is tested on their images only (no accuracy on classes no task trains)
                keep = np.isin(test_y, covered)
                test_x_np, test_y = test_x_np[keep], test_y[keep]
                self.reporter.info(f"{protocol.name}: its tasks cover {len(covered)} of the dataset's "
                                   f"{len(ds.classes)} classes; evaluated on those classes' {len(test_y)} test images")
            test_x = __import__("jdcl_bench.data.augment", fromlist=["x"]).images_to_tensor(test_x_np)

            self.ctx = RunContext(self, self.device, cfg.seed, self.run_dir, self.reporter)
            info = ProtocolInfo(protocol.name, len(ds.classes), tuple(test_x.shape[1:]), task_classes,
                                protocol.semi_supervised, protocol.hflip)
            self.method = method_cls(mcfg, self.ctx)
            # global generators (init, dropout) get a seed per rank; rank 0's is the one-process seed
            seed_globals(D.rank_seed(derive_seed(cfg.seed, "setup")))
            self.method.setup(info)

            self.acc_rows, self.seen_acc, self.prev_wall, start, in_task = [], [], 0.0, 0, False
            if resume:  # every rank loads rank 0's checkpoint
                state = records.load_checkpoint(ckpt_path)  # weights_only: a crafted file cannot run code
                self.method.load_state_dict(state["method"])
                self.acc_rows, self.seen_acc, self.prev_wall = state["acc_rows"], state["seen_acc"], state["wall_s"]
                self.diagnostics = list(state.get("diagnostics", []))
                self.task_seconds = list(state.get("task_seconds", []))
                in_task = state["phase"] == "in_task"
                start = state["task"] if in_task else state["task"] + 1
                if in_task:
                    self.ctx.rng.set_state(state["rng"]["ctx"])
                    mine = state["rng"].get("per_rank", [])
                    if D.is_distributed() and D.rank() < len(mine):
                        torch.set_rng_state(mine[D.rank()]["torch"])
                        if mine[D.rank()]["cuda"] is not None and self.device.type == "cuda":
                            torch.cuda.set_rng_state(mine[D.rank()]["cuda"], self.device)
                    else:
                        torch.set_rng_state(state["rng"]["torch"])
                        if state["rng"]["cuda"] is not None and self.device.type == "cuda":
                            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
                self.reporter.info(f"resuming {self.run_dir} at task {start + 1}" + (" (inside the task)" if in_task else ""))

            self.t_start = self.last_save = time.time()
            manifest = {"code_version": records.code_version(), "packages": records.package_versions(),
                        "hardware": records.hardware(str(self.device)),
                        "dataset": {**ds.identity, "labels": split_info}, "started_at": records.now()}
            if os.environ.get("JDCL_BENCH_RUN_NOTE"):
                # what the launcher knows and the run cannot see, e.g. "shared the GPU with 3 other runs"
                manifest["note"] = os.environ["JDCL_BENCH_RUN_NOTE"]
            if os.environ.get("JDCL_BENCH_GPU_SHARED_BY"):
                # runs sharing one GPU: their GPU-seconds are wall time on a shared device (tables mark them)
                manifest["gpu_shared_by"] = int(os.environ["JDCL_BENCH_GPU_SHARED_BY"])
            if D.is_distributed():
                manifest["distributed"] = config_doc["distributed"]
            # longest task so far: do not start one that cannot finish (with --stop-between-tasks the
            # tasks of earlier processes count too, compilation included: each process compiles again)
            longest = max(self.task_seconds, default=0.0) if cfg.stop_between_tasks else 0.0
            for k in range(start, len(tasks)):
                task = tasks[k]
                self.task_index = self.ctx.task_index = k
                t_task = time.time()
                if not (in_task and k == start):
                    no_time = (k > start or longest > 0) and cfg.time_limit_s is not None and \
                        time.time() - self.t_start + longest >= cfg.time_limit_s
                    if D.broadcast_flags(no_time)[0]:
                        if k == start:  # nothing done in this process: the limit is too short for any task
                            self.reporter.info(f"time limit: the longest task so far took {longest:.0f} s, more than "
                                               f"--time-limit {cfg.time_limit_s:.0f} s allows; nothing was run. Raise "
                                               "the limit, or drop --stop-between-tasks to stop inside tasks")
                            return self.run_dir
                        self.reporter.info(f"time limit: task {k + 1} would not finish in time; stopped before it "
                                           "(checkpointed), run the same command again to resume")
                        return self.run_dir
                    self.ctx.rng.manual_seed(derive_seed(cfg.seed, "task", k))
                    seed_globals(D.rank_seed(derive_seed(cfg.seed, "torch", k)))
                    self.method.begin_task(task)
                try:
                    self.method.train_task(task)
                except StopRun:
                    self.reporter.info(f"time limit reached inside task {k + 1}; checkpointed, run again to resume")
                    return self.run_dir
                self.method.end_task(task)
                # rank 0 evaluates, the others take its predictions (every rank is at this point)
                self.task_seconds.append(time.time() - t_task)
                pred = D.broadcast_object(self.evaluate(test_x) if D.is_main() else None)
                self.acc_rows.append(per_task_accuracy(pred, test_y, task_classes))
                self.seen_acc.append(seen_accuracy(pred, test_y, task.seen_classes))
                final = float(100.0 * (pred == test_y).mean())
                self.save_checkpoint(phase="task_done")
                done = k == len(tasks) - 1
                metrics = {"complete": done, "tasks_done": k + 1, "num_tasks": len(tasks),
                           "task_classes": task_classes, "acc_matrix": self.acc_rows, "seen_acc": self.seen_acc,
                           **summarise(self.acc_rows, self.seen_acc, final), "method_label": self.method.label()}
                if subset:
                    metrics["test_classes"] = covered
                if self.diagnostics:
                    metrics["diagnostics"] = self.diagnostics
                wall = self._elapsed()
                gpus = D.world_size() if self.device.type == "cuda" else 0
                if self.diagnostics_seconds:  # measuring, not training: said apart (the budget includes it)
                    manifest["diagnostics_seconds"] = round(self.diagnostics_seconds, 1)
                manifest.update({"wall_time_s": wall, "gpu_seconds": wall * gpus,
                                 "budget": {"preset": preset, "reduced": preset != "paper",
                                            **self.method.budget()},
                                 "finished_at": records.now() if done else None})
                if D.is_main():
                    records.write_json(self.run_dir / "manifest.json", manifest)
                    records.write_json(metrics_path, metrics)
                longest = max(longest, time.time() - t_task)
                self.reporter.info(f"task {k + 1}/{len(tasks)} ({time.time() - t_task:.0f}s): seen-class accuracy {self.seen_acc[-1]:.2f}%, "
                                   f"all-class accuracy {final:.2f}%")
        return self.run_dir

    @torch.no_grad()
    def evaluate(self, test_x: torch.Tensor) -> np.ndarray:
        preds = []
        for i in range(0, len(test_x), self.cfg.eval_batch_size):
            xb = test_x[i:i + self.cfg.eval_batch_size].to(self.device, non_blocking=True)
            preds.append(self.method.predict(xb).argmax(1).cpu())
        return torch.cat(preds).numpy()


def run(cfg: RunConfig, reporter: Reporter | None = None, dataset=None) -> Path:
    return Runner(cfg, reporter, dataset).run()
