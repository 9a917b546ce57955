"""The method contract: a handful of hooks the runner calls, in this order::

    m = MethodClass(cfg, ctx)         # cfg: the method's Config dataclass, ctx: RunContext
    m.setup(info)                     # once per run (also after a resume, before load_state_dict)
    for each task:
        m.begin_task(task)            # once per task (NOT called again after a mid-task resume)
        m.train_task(task)            # the method's own step loop (calls ctx.tick / ctx.log_step)
        m.end_task(task)
        m.predict(x) -> logits        # evaluation on the test set of all classes
    m.state_dict() / m.load_state_dict(state)   # everything needed to continue

Images reach a method as uint8 tensors (N, C, H, W) already on ``ctx.device``; the method
converts and augments them (``jdcl_bench.data.augment``). Unlabelled images come without labels:
``TaskData`` simply has no field that could hold them.

Capability flags tell the runner and the leaderboard what a method does: ``uses_unlabelled``
(learns from the unlabelled stream), ``has_generator`` (generative replay) and ``stores_buffer``
(keeps real past samples). ``supports_distributed`` says the method trains data-parallel under
``torchrun`` (docs/distributed.md); the runner refuses to start a multi-process run of any other.

``ctx`` is the run's :class:`RunContext` (at the end of this module): all a method may use of the
runner (device, seeded generator, ticks, loss checks, progress and training curves, artefacts,
replay diagnostics).

Randomness: use ``ctx.rng`` (a CPU ``torch.Generator`` the runner seeds and checkpoints) for
every random choice; never seed or read global state. Dropout and parameter initialisation use
torch's global generators, which the runner seeds per task and saves in checkpoints.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable

import torch

from .. import distributed as D
from ..fastpath import to_device
from ..seeds import derive_seed  # noqa: F401 (methods and plugins import it from here)

if TYPE_CHECKING:
    from ..progress import Reporter


@dataclass
class ProtocolInfo:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    task_classes: list[list[int]]
    semi_supervised: bool
    hflip: bool = True  # the protocol's [augment].hflip: may augmentations mirror images?

    @property
    def flip_p(self) -> float:
        """Probability of a horizontal flip in augmentations: the usual 0.5, or 0 where mirroring
        changes the class (digits). The random draws stay the same either way."""
        return 0.5 if self.hflip else 0.0


@dataclass
class TaskData:
    index: int                 # 0-based task index
    classes: list[int]         # classes introduced by this task
    seen_classes: list[int]    # classes of this and all earlier tasks
    x: torch.Tensor            # labelled images, uint8 (N, C, H, W)
    y: torch.Tensor            # their labels, int64 (N,)
    unlabelled_x: torch.Tensor  # unlabelled images, uint8 (M, C, H, W); M = 0 when fully supervised


class Method:
    """Base class. Subclasses set ``Config`` (a dataclass) and ``presets``, and override hooks."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    display_name: ClassVar[str] = ""      # how tables name it ("JDCL"); the registry name otherwise
    # "lower" / "upper" for reference bounds (fine-tuning, joint training): tables list them apart
    # and never mark them best, since they are not continual learners competing for the column
    bound: ClassVar[str | None] = None
    Config: ClassVar[type] = None  # type: ignore[assignment]
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    default_preset: ClassVar[str] = "paper"
    uses_unlabelled: ClassVar[bool] = False
    has_generator: ClassVar[bool] = False
    stores_buffer: ClassVar[bool] = False
    supports_resume_in_task: ClassVar[bool] = False
    supports_distributed: ClassVar[bool] = False

    @classmethod
    def time_loops(cls, preset: str, device: torch.device, steps: int, warmup: int, semi: bool, log) -> dict:
        """Optional, for ``jdcl-bench bench --loop --method NAME``: the method's training loops timed
        next to the bare step of the same model in one process (jdcl_bench/loop_bench.py's record)."""
        raise NotImplementedError(f"method {cls.name!r} has no loop bench (jdcl-bench bench --loop): it defines "
                                  f"no time_loops")

    def __init__(self, cfg: Any, ctx: "RunContext"):
        self.cfg = cfg
        self.ctx = ctx
        self.device = ctx.device

    # --- hooks -------------------------------------------------------------------------
    def setup(self, info: ProtocolInfo) -> None:
        self.info = info

    def begin_task(self, task: TaskData) -> None:
        pass

    def train_task(self, task: TaskData) -> None:
        raise NotImplementedError

    def end_task(self, task: TaskData) -> None:
        pass

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # --- reporting -------------------------------------------------------------------
    def label(self) -> str:
        """Row label on the leaderboard; override to include defining settings (e.g. buffer size)."""
        return self.display_name or self.name

    @classmethod
    def label_for_config(cls, method_config: dict) -> str | None:
        """The label a run of this method config gets, read back from a record's ``config.json``
        (``method_config``), or None to keep the label the record carries. Override it together
        with :meth:`label` when a default changes what a label means, so that records written
        before the change are labelled by what they ran (their config), not by today's default."""
        return None

    @classmethod
    def differences_from_paper(cls, method_config: dict) -> list[str]:
        """What a record of this method config does differently from the published setting, beyond
        budget and data (which every record states): e.g. NNCSL's BatchNorm mode. Read from a record's
        ``config.json`` by ``jdcl-bench compare``; an empty list says nothing more differs that the
        method knows of."""
        return []

    def budget(self) -> dict:
        """What the run cost in the method's own units (steps, images seen, ...)."""
        return {}

    @classmethod
    def global_batch(cls, cfg: Any) -> int | None:
        """The training batch ``cfg`` asks for, summed over all processes (distributed runs record it)."""
        return None

    @classmethod
    def config_for(cls, preset: str | None, overrides: dict[str, Any]) -> Any:
        from ..config import ConfigError, apply_overrides, validate

        preset = preset or cls.default_preset
        if preset != "paper" and preset not in cls.presets:
            raise ConfigError(f"method {cls.name!r} has no preset {preset!r}; "
                              f"presets: {', '.join(['paper', *sorted(cls.presets)])}")
        cfg = apply_overrides(cls.Config(), cls.presets.get(preset, {}))
        cfg = apply_overrides(cfg, overrides)
        validate(cfg)  # values out of range (batch_size=0, width=0, layers=[]) named before any work
        return cfg

    @classmethod
    def same_presets(cls, preset: str | None, overrides: dict[str, Any]) -> list[str]:
        """The method's other presets that give the very config ``preset`` gives (with the same
        overrides): a method whose paper recipe fits the budget-matched budget has a ``standard``
        preset equal to ``paper``, and one run of either is a record of both (the tables show it in
        each, runner.py writes them down as ``same_as``)."""
        preset = preset or cls.default_preset
        mine = cls.config_for(preset, overrides)
        others = [p for p in ("paper", *cls.presets) if p != preset]
        return sorted(p for p in others if cls.config_for(p, overrides) == mine)


def sample_indices(n: int, k: int, gen: torch.Generator, device) -> torch.Tensor:
    """``k`` indices into range(n) from the run's CPU generator: without replacement when the pool
    is large enough, with replacement otherwise (a minibatch from a small labelled set)."""
    if n <= 0:
        raise ValueError("cannot sample from an empty pool")
    if n >= k:
        return to_device(torch.randperm(n, generator=gen)[:k], device)
    return to_device(torch.randint(n, (k,), generator=gen), device)


# --------------------------------------------------------------------------------------------
# What a method may use of the runner
# --------------------------------------------------------------------------------------------

class NonFiniteLoss(FloatingPointError):
    """A loss became NaN or inf (``RunContext.check_loss``); the message says what the run has left."""


class RunContext:
    """What a method may use from the runner: device, generator, progress, artefacts, ticks."""

    def __init__(self, runner: Any, device: torch.device, seed: int, run_dir: Path, reporter: Reporter):
        self._runner = runner
        self.device = device
        self.seed = seed
        self.run_dir = run_dir
        self.reporter = reporter
        self.rng = torch.Generator().manual_seed(seed)
        self.task_index = 0
        self._bar: dict | None = None  # the innermost open progress bar (see log_step)
        self._tb: Any = None  # TensorBoard writer: None until first used, False when not installed or off

    def tick(self) -> None:
        """Call once per training step: checkpoints inside the task and enforces the time limit."""
        self._runner.tick()

    def check_loss(self, loss: torch.Tensor | float, what: str = "loss") -> None:
        value = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        # every rank checks at the same step; the mean is NaN if any rank's loss is, so all stop together
        value = D.all_reduce_mean(value)
        if not math.isfinite(value):
            raise NonFiniteLoss(f"{what} became {value} in task {self.task_index + 1}. "
                                f"{self._runner.nonfinite_advice()}")

    def shared_dir(self, name: str) -> Path:
        """A folder shared by all runs writing into the same results folder (e.g. a generator cache
        that two methods reuse). Write into it atomically (``jdcl_bench.records``)."""
        p = Path(self._runner.cfg.out) / "shared" / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def artefact_path(self, name: str) -> Path:
        """Where to write an artefact; in a distributed run only rank 0 writes."""
        p = self.run_dir / "artefacts" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    # ---- replay diagnostics (jdcl_bench.replay_quality): measurements only, never training input ----
    def replay_diagnostics(self, x: torch.Tensor, y: torch.Tensor, classes: list[int], tag: str) -> dict | None:
        """Measure a replay set (uint8 images ``x``, labels ``y``, drawn for ``classes``) against the
        dataset's reference classifier and real images; stored in the run's metrics under
        ``diagnostics`` and logged. Returns the report (None on ranks other than 0)."""
        diag = self._runner.diagnostics_instrument()
        if diag is None:
            return None
        report = diag.measure(x, y, classes)
        seconds = report.pop("seconds")  # a timing is not a result: kept out of metrics (exact resume compares them)
        self._runner.diagnostics_seconds += seconds
        self._runner.add_diagnostic({"task": self.task_index + 1, "tag": tag, "kind": "replay", **report})
        from ..replay_quality import near_chance, summary_line

        self.info(f"task {self.task_index + 1}: " + summary_line(tag, report))
        if near_chance(report):
            self.info(f"warning: task {self.task_index + 1} {tag}: replay fidelity "
                      f"{100 * report['overall']['fidelity']:.1f} % is near chance ({100 * report['chance']:.1f} %): "
                      "the replay does not look like its classes to the reference classifier")
        return report

    def model_accuracy(self, predict, classes: list[int], tag: str) -> float | None:
        """Accuracy of ``predict`` (uint8 images -> logits) on the real test images of ``classes``,
        stored under ``diagnostics`` (e.g. JDCL's local model on its own task)."""
        diag = self._runner.diagnostics_instrument()
        if diag is None:
            return None
        t0 = time.time()
        acc = diag.accuracy_on(predict, classes)
        self._runner.diagnostics_seconds += time.time() - t0
        self._runner.add_diagnostic({"task": self.task_index + 1, "tag": tag, "kind": "accuracy",
                                     "classes": sorted(int(k) for k in classes), "acc": acc})
        self.info(f"task {self.task_index + 1}: {tag}: {100 * acc:.2f} % on the test images of classes {sorted(classes)}")
        return acc

    def log_curve(self, stage: str, step: int, **scalars: float) -> None:
        """One point of a training curve, appended to ``<run_dir>/curves.jsonl`` (rank 0 only) as
        ``{"task", "stage", "step", **scalars}``. After a resume the steps since the last checkpoint are
        trained again and written again: a reader keeps the last line of each (task, stage, step)."""
        if not D.is_main():
            return
        import json as _json

        line = {"task": self.task_index + 1, "stage": stage, "step": int(step),
                **{k: float(v) for k, v in scalars.items()}}
        with open(self.run_dir / "curves.jsonl", "a") as f:
            f.write(_json.dumps(line) + "\n")
        tb = self._tensorboard()
        if tb is not None:
            for k, v in scalars.items():
                tb.add_scalar(f"task{line['task']}/{stage}/{k}", float(v), int(step))
            tb.flush()  # a run may stop (time limit) at any step: nothing waits in a buffer

    def _tensorboard(self):
        """The same curves for TensorBoard in ``<run_dir>/tensorboard/`` when it is installed (the
        ``tensorboard`` extra) and ``JDCL_BENCH_TENSORBOARD`` is not 0; None otherwise."""
        if self._tb is None:
            self._tb = False
            if os.environ.get("JDCL_BENCH_TENSORBOARD", "1") != "0":
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:  # tensorboard is not installed: curves.jsonl alone
                    return None
                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._tb or None

    @contextlib.contextmanager
    def progress(self, description: str, total: int):
        """A progress bar for ``total`` steps (or items); yields ``advance(n=1, **fields)``. A training
        loop inside it reports each step with :meth:`log_step` instead."""
        with self.reporter.task(f"task {self.task_index + 1}: {description}", total) as advance:
            outer, self._bar = self._bar, {"advance": advance, "stage": description, "left": total}
            try:
                yield advance
            finally:
                self._bar = outer

    def log_step(self, step: int, loss: torch.Tensor, every: int = 50, **parts: Any) -> None:
        """Report one training step inside :meth:`progress`: advance the bar; every ``every`` steps and at
        the bar's last one also check the loss is finite, show it and ``parts`` (tensors or numbers)
        next to the bar, and append them to the run's ``curves.jsonl`` under the bar's description.
        Reading a loss syncs the GPU, hence not every step."""
        bar = self._bar
        if bar is None:
            raise RuntimeError("ctx.log_step is called inside `with ctx.progress(...)`")
        bar["left"] -= 1
        if step % every and bar["left"] > 0:
            bar["advance"](1)
            return
        # one device read for the loss and the tensor parts together
        tensors = {k: v for k, v in parts.items() if isinstance(v, torch.Tensor)}
        read = torch.stack([loss.detach().float().reshape(()), *(v.detach().float().reshape(()) for v in tensors.values())])
        loss_value, *tensor_values = read.tolist()
        self.check_loss(loss_value)
        read_parts = dict(zip(tensors, tensor_values))
        values = {"loss": loss_value, **{k: read_parts[k] if k in read_parts else float(v) for k, v in parts.items()}}
        bar["advance"](1, **values)
        self.log_curve(bar["stage"], step, **values)

    def info(self, msg: str) -> None:
        self.reporter.info(msg)


def optimiser_step(opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float | None = None,
                   idle: Iterable[torch.Tensor] = ()) -> None:
    """One step on ``loss``: ``lr`` (where given) into every parameter group, scaled by the group's
    ``lr_scale`` where it has one; gradients cleared, computed and applied.

    ``idle``: parameters that ``loss`` leaves out this step. Eager autograd leaves their gradients
    None and the optimiser skips them; a torch.compile'd forward hands them zeros instead, on which
    AdamW would decay them and advance their step count (its bias correction then inflates their
    first real updates several-fold). Their gradients are cleared, so compiled and eager agree."""
    if lr is not None:
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"] if "lr_scale" in g else lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    for p in idle:
        p.grad = None
    opt.step()
