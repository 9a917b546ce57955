"""The method contract: a handful of hooks the runner calls, in this order::

    m = MethodClass(cfg, ctx)         # cfg: the method's Config dataclass, ctx: RunContext
    m.setup(info)                     # once per run (also after a resume, before load_state_dict)
    for each task:
        m.begin_task(task)            # once per task (NOT called again after a mid-task resume)
        m.train_task(task)            # default: a step loop calling m.observe(x, y)
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

Randomness: use ``ctx.rng`` (a CPU ``torch.Generator`` the runner seeds and checkpoints) for
every random choice; never seed or read global state. Dropout and parameter initialisation use
torch's global generators, which the runner seeds per task and saves in checkpoints.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch


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

    def __init__(self, cfg: Any, ctx: "RunContext"):  # noqa: F821 (RunContext lives in runner)
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

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> dict:
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


def batch_indices(n: int, batch_size: int, epoch_seed: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """A seeded permutation of range(n) cut into batches (the last, short batch is kept)."""
    g = torch.Generator().manual_seed(epoch_seed)
    perm = torch.randperm(n, generator=g)
    return [perm[i:i + batch_size].to(device) for i in range(0, n, batch_size)]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from a tuple (never Python's salted hash())."""
    import hashlib

    h = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def config_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
