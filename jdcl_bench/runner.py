"""The task loop: data per task, method hooks, evaluation, checkpoints, resume.

A run is identified by (protocol, method, preset, config overrides, seed) and lives in
``<out>/runs/<protocol>/<method>/<preset>[+<overrides hash>]/seed<N>``. After every task the
runner writes ``checkpoint.pt`` atomically, and keeps that between-task state as
``checkpoint-task.pt``; a method that sets ``supports_resume_in_task`` also gets checkpoints inside
a task in ``checkpoint.pt`` (every ``checkpoint_every_s`` seconds and when ``time_limit_s`` runs
out, after which the run stops cleanly). Starting the same run again resumes from the last
checkpoint. Global torch generators (dropout, init) and ``ctx.rng`` are re-seeded from
(seed, task) at every task start and saved inside a task, so a resumed run computes exactly
what an uninterrupted one does on CPU.

Under ``torchrun`` with more than one process (docs/distributed.md) every rank runs this same loop
in lockstep: rank 0 alone writes files and evaluates, and every decision that depends on a clock
or a file (stop, checkpoint, resume) is rank 0's, broadcast to the others.

``Runner._run`` tells the story; its parts live beside it: the run directory's checks in
``run_dir.py``, the generators a checkpoint keeps in ``checkpoint.py``, the tasks and test set in
``tasks.py``, atomic files in ``records.py``.
"""
from __future__ import annotations

import contextlib
import gc
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed as D
from . import records
from .checkpoint import checkpoint_note, nonfinite_hint, nonfinite_tensors, restore_rng, rng_state
from .config import ConfigError, to_dict
from .fastpath import tune_backends
from .metrics import per_task_accuracy, seen_accuracy, summarise, task_confusion
from .methods.base import Method, NonFiniteLoss, ProtocolInfo, RunContext, TaskData, derive_seed  # noqa: F401 (NonFiniteLoss, RunContext: importable from here too)
from .progress import Reporter
from .protocol import Protocol, get_protocol
from .registry import METHODS
from .run_dir import RunMismatch, check_same_data, prepare, run_dir_for  # noqa: F401 (RunMismatch: importable from here too)
from .tasks import build_tasks, test_set

TASK_CHECKPOINT = "checkpoint-task.pt"  # the state after the last finished task (see save_checkpoint)


# Users' runs go to a folder of their own, not into the repository's committed results/
# (which holds the records behind the published tables; `table --results results` reads them).
DEFAULT_OUT = "jdcl-runs"


def _segment(manifest: dict, from_task: int) -> dict:
    """What a manifest says of the process that wrote it, as one entry of ``manifest["segments"]``."""
    code, hw = manifest.get("code_version") or {}, manifest.get("hardware") or {}
    return {"from_task": from_task, "started_at": manifest.get("started_at"),
            "source_hash": code.get("source_hash"), "commit": code.get("commit"), "gpu_name": hw.get("gpu_name"),
            "gpu_shared_by": manifest.get("gpu_shared_by", 1), "note": manifest.get("note")}


def next_task_seconds(task_seconds: list[float], tasks_done: int, process_starts: set[int], k: int,
                      start: int, every_process: bool) -> float:
    """Seconds task ``k`` (0-based) should take, from the tasks timed so far: the last
    ``len(task_seconds)`` of the ``tasks_done`` finished tasks, those of this process only (from task
    ``start`` on) unless ``every_process``. ``process_starts``: the tasks that opened a process, which
    compiled the models (on 2026-12-07 the first task of a process on a fresh H100 took 684 s, the
    next one in the same process 380 s): a task after the first of its process is estimated by the
    longest task that did not open one, where there is one, else by the longest task."""
    offset = tasks_done - len(task_seconds)  # records from before task_seconds was kept have fewer
    timed = [(offset + i, sec) for i, sec in enumerate(task_seconds) if every_process or offset + i >= start]
    warm = [sec for j, sec in timed if j not in process_starts]
    if k > start and warm:
        return max(warm)
    return max((sec for _, sec in timed), default=0.0)


class StopRun(Exception):
    """Raised inside a task when the time limit is reached; the run was checkpointed."""


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
    # tasks so far (this process's or an earlier one's: next_task_seconds) say would not finish. The
    # checkpoint left then holds the method's between-task state only (JDCL: the global model), small
    # enough to carry from one GPU command to the next (docs/jdcl.md, "Runs longer than one command").
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


class Runner:
    def __init__(self, cfg: RunConfig, reporter: Reporter | None = None, dataset=None):
        self.cfg = cfg
        self.reporter = reporter or Reporter()
        self._dataset = dataset  # tests and the conformance kit may inject a dataset
        self._diag = None
        self.task_seconds: list[float] = []  # wall seconds of each task trained in this process or before
        # one entry per process that trained this run (code, GPU, sharing): a resumed run's record keeps
        # what its earlier processes ran on, not only the last one's
        self.segments: list[dict] = []
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
        return f"{checkpoint_note(self.run_dir)} {nonfinite_hint(self)}"

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
        bad = nonfinite_tensors(method_state, "method")
        if D.broadcast_flags(bool(bad))[0]:  # rank 0's verdict: every rank stops together
            where = ", ".join(bad[:5]) + (f", ... ({len(bad)} tensors)" if len(bad) > 5 else "")
            raise NonFiniteLoss(f"the state of task {self.task_index + 1} holds NaN or inf ({where}); it was not "
                                f"checkpointed. {checkpoint_note(self.run_dir)} {nonfinite_hint(self)}")
        rng = rng_state(self.ctx.rng, self.device)  # every rank: a distributed run gathers each rank's
        if D.is_main():
            records.atomic_torch_save({
                "phase": phase, "task": self.task_index, "method": method_state, "rng": rng,
                "acc_rows": self.acc_rows, "seen_acc": self.seen_acc, "task_confusion": self.task_confusion,
                "wall_s": self._elapsed(),
                "diagnostics": self.diagnostics, "task_seconds": self.task_seconds, "segments": self.segments,
            }, self.run_dir / "checkpoint.pt")
            if phase == "task_done":
                # the last between-task state outlives the in-task checkpoints that replace
                # checkpoint.pt: small enough to carry to another machine, and a run resumed from it
                # repeats the interrupted task exactly (each task is seeded from the seed and its index)
                records.keep_copy(self.run_dir / "checkpoint.pt", self.run_dir / TASK_CHECKPOINT)
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
        """The protocol's story: check the directory, load the data, build the method, resume, then
        for each task: begin, train, end, evaluate, record."""
        cfg = self.cfg
        tune_backends(self.device)  # TF32 for whatever fp32 work is left outside bf16 autocast
        # rank 0 alone holds the lock and writes files; if it fails, torchrun stops the other ranks
        with records.run_lock(self.run_dir) if D.is_main() else contextlib.nullcontext():
            config_doc = self._config_doc(protocol, method_cls, mcfg, preset)
            complete, resume = prepare(self.run_dir, config_doc, protocol, cfg.restart, self.reporter)
            if complete:
                return self.run_dir
            ds, tasks, split_info, task_classes = self._load_data(protocol, resume)
            test_x, test_y, covered = test_set(ds, task_classes)
            if covered:
                self.reporter.info(f"{protocol.name}: its tasks cover {len(covered)} of the dataset's "
                                   f"{len(ds.classes)} classes; evaluated on those classes' {len(test_y)} test images")
            self.ctx = RunContext(self, self.device, cfg.seed, self.run_dir, self.reporter)
            self.method = method_cls(mcfg, self.ctx)
            # global generators (init, dropout) get a seed per rank; rank 0's is the one-process seed
            seed_globals(D.rank_seed(derive_seed(cfg.seed, "setup")))
            self.method.setup(ProtocolInfo(protocol.name, len(ds.classes), tuple(test_x.shape[1:]), task_classes,
                                           protocol.semi_supervised, protocol.hflip))
            self.acc_rows, self.seen_acc, self.task_confusion, self.prev_wall = [], [], [], 0.0
            start, in_task = self._resume() if resume else (0, False)
            self.t_start = self.last_save = time.time()
            manifest = self._manifest(ds, split_info, config_doc, start)
            # reduced: not the paper's budget (a preset other than paper and not equal to it)
            budget = {"preset": preset, "reduced": preset != "paper" and "paper" not in config_doc["same_as"]}
            for k in range(start, len(tasks)):
                task = tasks[k]
                self.task_index = self.ctx.task_index = k
                t_task = time.time()
                if not (in_task and k == start):
                    if self._no_time_for(k, start):
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
                self.task_seconds.append(time.time() - t_task)
                self._record_task(k, tasks, task_classes, test_x, test_y, covered, manifest, budget)
                self.reporter.info(f"task {k + 1}/{len(tasks)} ({time.time() - t_task:.0f}s): seen-class accuracy "
                                   f"{self.seen_acc[-1]:.2f}%, all-class accuracy {self._final:.2f}%")
        return self.run_dir

    # ---- the steps of a run ------------------------------------------------------------------
    def _config_doc(self, protocol: Protocol, method_cls: type[Method], mcfg, preset: str) -> dict:
        cfg = self.cfg
        doc = {"protocol": protocol.run_name, "method": cfg.method, "preset": preset, "seed": cfg.seed,
               "overrides": cfg.overrides, "method_config": to_dict(mcfg),
               # presets that are this very config (NNCSL's standard is its paper recipe): the tables
               # count the run under each
               "same_as": method_cls.same_presets(preset, cfg.overrides),
               "run": {k: v for k, v in asdict(cfg).items() if k not in ("overrides",)},
               "protocol_spec": protocol.to_dict()}
        if D.is_distributed():
            # the config's batch is the global one; it must split evenly over the processes
            global_batch = method_cls.global_batch(mcfg)
            if global_batch is not None:
                D.local_batch(global_batch)
            doc["distributed"] = D.describe(global_batch)
        return doc

    def _load_data(self, protocol: Protocol, resume: bool):
        """The protocol's dataset, checked against the protocol (and, on resume, against the data the
        run trained on), and its tasks."""
        cfg, t_load = self.cfg, time.time()
        from .data.datasets import check_dataset, load_dataset

        ds = self._dataset
        if ds is None:
            if not D.is_main():
                D.barrier()  # rank 0 loads (and downloads) first, the others then read its files
            ds = load_dataset(protocol.dataset, data_dir=cfg.data_dir, image_size=protocol.image_size,
                              class_names=protocol.class_names, download=cfg.download, synthetic=protocol.synthetic)
            if D.is_main():
                D.barrier()
        self._ds, self._protocol = ds, protocol  # for the replay diagnostics, built on first use
        # the data must be the protocol's dataset (class count, names, image shape) before anything trains
        check_dataset(ds, protocol.dataset, image_size=protocol.image_size, class_names=protocol.class_names,
                      synthetic=protocol.synthetic, protocol=protocol.name, data_dir=cfg.data_dir)
        if resume:
            check_same_data(self.run_dir, ds.identity)
        tasks, split_info, task_classes = build_tasks(protocol, ds, self.device)
        self.reporter.info(f"{protocol.name}: {len(ds.classes)} classes, {len(tasks)} tasks, "
                           f"{split_info['labelled_total']} labelled training images "
                           f"({ds.identity.get('variant', '')}) loaded in {time.time() - t_load:.1f}s")
        return ds, tasks, split_info, task_classes

    def _resume(self) -> tuple[int, bool]:
        """Load the checkpoint (every rank loads rank 0's); (first task to run, inside it?)."""
        state = records.load_checkpoint(self.run_dir / "checkpoint.pt")  # weights_only: a crafted file cannot run code
        self.method.load_state_dict(state["method"])
        self.acc_rows, self.seen_acc, self.prev_wall = state["acc_rows"], state["seen_acc"], state["wall_s"]
        # a checkpoint from before task_confusion existed: its tasks have none (None in metrics.json)
        self.task_confusion = list(state.get("task_confusion", [None] * len(self.acc_rows)))
        self.diagnostics = list(state.get("diagnostics", []))
        self.task_seconds = list(state.get("task_seconds", []))
        self.segments = list(state.get("segments", [])) or self._segment_from_manifest()
        in_task = state["phase"] == "in_task"
        start = state["task"] if in_task else state["task"] + 1
        if in_task:
            restore_rng(state["rng"], self.ctx.rng, self.device)
        self.reporter.info(f"resuming {self.run_dir} at task {start + 1}" + (" (inside the task)" if in_task else ""))
        return start, in_task

    def _manifest(self, ds, split_info: dict, config_doc: dict, start: int) -> dict:
        manifest = {"code_version": records.code_version(), "packages": records.package_versions(),
                    "hardware": records.hardware(str(self.device)),
                    "dataset": {**ds.identity, "labels": split_info}, "started_at": records.now()}
        if os.environ.get("JDCL_BENCH_RUN_NOTE"):
            # what the launcher knows and the run cannot see, e.g. "shared the GPU with 3 other runs"
            manifest["note"] = os.environ["JDCL_BENCH_RUN_NOTE"]
        shared_by = records.gpu_shared_by()
        if shared_by is not None:
            # runs sharing one GPU: their GPU-seconds are wall time on a shared device (tables mark them)
            manifest["gpu_shared_by"] = shared_by
        if D.is_distributed():
            manifest["distributed"] = config_doc["distributed"]
        return self._with_segments(manifest, start)

    def _with_segments(self, manifest: dict, start: int) -> dict:
        """Adds this process to ``self.segments`` and folds all of them into the manifest: a run that
        shared its GPU in any process says so (the most processes it shared with), every process's
        note is kept, and a run whose processes ran different code says which."""
        this = _segment(manifest, start + 1)
        earlier = self.segments
        if earlier and earlier[-1].get("source_hash") != this["source_hash"]:
            self.reporter.info(f"warning: this run's earlier tasks ran source hash {earlier[-1].get('source_hash')}, "
                               f"this process runs {this['source_hash']}: the record mixes code versions "
                               "(manifest 'segments' says which tasks ran which)")
        self.segments = earlier + [this]
        if len(self.segments) > 1:
            manifest["started_at"] = self.segments[0]["started_at"]
            shared = max(int(sg.get("gpu_shared_by") or 1) for sg in self.segments)
            if shared > 1:
                manifest["gpu_shared_by"] = shared
            notes = list(dict.fromkeys(f"from task {sg['from_task']}: {sg['note']}"
                                       for sg in self.segments if sg.get("note")))
            if notes:
                manifest["note"] = "; ".join(notes)
            hashes = list(dict.fromkeys(sg.get("source_hash") for sg in self.segments))
            if len(hashes) > 1:
                manifest["mixed_source_hashes"] = hashes
        manifest["segments"] = self.segments
        return manifest

    def _segment_from_manifest(self) -> list[dict]:
        """A checkpoint from before segments were kept: its manifest.json (if any) stands for the
        earlier processes, so a resume does not forget that they shared a GPU or ran other code."""
        path = self.run_dir / "manifest.json"
        if not path.is_file():
            return []
        try:
            old = records.read_json(path)
        except (OSError, ValueError):
            return []
        return [{**_segment(old, 1), "from_manifest": True}]

    def _no_time_for(self, k: int, start: int) -> bool:
        """Whether task k would not finish within --time-limit (rank 0's clock decides); says so. Its
        estimate: this process's tasks so far, with --stop-between-tasks every process's tasks (each
        process compiles again), a task that opened a process counted only where no other is known
        (``next_task_seconds``)."""
        cfg = self.cfg
        starts = {int(sg.get("from_task") or 1) - 1 for sg in self.segments}
        longest = next_task_seconds(self.task_seconds, len(self.acc_rows), starts, k, start, cfg.stop_between_tasks)
        no_time = (k > start or longest > 0) and cfg.time_limit_s is not None and \
            time.time() - self.t_start + longest >= cfg.time_limit_s
        if not D.broadcast_flags(no_time)[0]:
            return False
        if k == start:  # nothing done in this process: the limit is too short for any task
            self.reporter.info(f"time limit: the longest task so far took {longest:.0f} s, more than "
                               f"--time-limit {cfg.time_limit_s:.0f} s allows; nothing was run. Raise "
                               "the limit, or drop --stop-between-tasks to stop inside tasks")
        else:
            self.reporter.info(f"time limit: task {k + 1} would not finish in time; stopped before it "
                               "(checkpointed), run the same command again to resume")
        return True

    def _record_task(self, k: int, tasks: list[TaskData], task_classes, test_x, test_y, covered, manifest: dict,
                     budget: dict) -> None:
        """Evaluate after task k, checkpoint, and write metrics.json and manifest.json."""
        # rank 0 evaluates, the others take its predictions (every rank is at this point)
        pred = D.broadcast_object(self.evaluate(test_x) if D.is_main() else None)
        self.acc_rows.append(per_task_accuracy(pred, test_y, task_classes))
        self.seen_acc.append(seen_accuracy(pred, test_y, tasks[k].seen_classes))
        self.task_confusion.append(task_confusion(pred, test_y, task_classes, k + 1))
        self._final = float(100.0 * (pred == test_y).mean())
        self.save_checkpoint(phase="task_done")
        done = k == len(tasks) - 1
        metrics = {"complete": done, "tasks_done": k + 1, "num_tasks": len(tasks),
                   "task_classes": task_classes, "acc_matrix": self.acc_rows, "seen_acc": self.seen_acc,
                   "task_confusion": self.task_confusion,
                   **summarise(self.acc_rows, self.seen_acc, self._final), "method_label": self.method.label()}
        if covered:
            metrics["test_classes"] = covered
        if self.diagnostics:
            metrics["diagnostics"] = self.diagnostics
        wall = self._elapsed()
        gpus = D.world_size() if self.device.type == "cuda" else 0
        if self.diagnostics_seconds:  # measuring, not training: said apart (the budget includes it)
            manifest["diagnostics_seconds"] = round(self.diagnostics_seconds, 1)
        manifest.update({"wall_time_s": wall, "gpu_seconds": wall * gpus,
                         "budget": {**budget, **self.method.budget()},
                         "finished_at": records.now() if done else None})
        if D.is_main():
            records.write_json(self.run_dir / "manifest.json", manifest)
            records.write_json(self.run_dir / "metrics.json", metrics)

    @torch.no_grad()
    def evaluate(self, test_x: torch.Tensor) -> np.ndarray:
        preds = []
        for i in range(0, len(test_x), self.cfg.eval_batch_size):
            xb = test_x[i:i + self.cfg.eval_batch_size].to(self.device, non_blocking=True)
            preds.append(self.method.predict(xb).argmax(1).cpu())
        return torch.cat(preds).numpy()


def run(cfg: RunConfig, reporter: Reporter | None = None, dataset=None) -> Path:
    return Runner(cfg, reporter, dataset).run()
