"""A sweep's cells: the grid, which cells are done, and one cell run in this process."""
from __future__ import annotations

import itertools
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..runner import RunConfig, run_dir_for


@dataclass(frozen=True)
class Cell:
    method: str
    protocol: str
    seed: int

    def __str__(self) -> str:
        return f"{self.method} on {self.protocol} (seed {self.seed})"


@dataclass
class CellResult:
    """What happened to one cell. status: done, skipped (already complete), failed, stopped (time
    limit, resumable), submitted (a job is queued), pending (dry run: would run; ``resume`` when it
    has a checkpoint to resume from)."""

    cell: Cell
    status: str
    run_dir: str | None = None
    final_acc: float | None = None
    tasks_done: int | None = None
    num_tasks: int | None = None
    error: str | None = None  # one line; the full traceback is in ``details``
    details: str | None = None
    job_id: str | None = None
    resume: bool = False
    log: str | None = None          # packed cells: the subprocess's output
    started_at: float | None = None  # packed cells: time.time() at start and end of the subprocess
    ended_at: float | None = None


@dataclass
class SweepSpec:
    """The grid and what every cell shares (the fields of :class:`RunConfig` besides the cell's own)."""

    methods: list[str]
    protocols: list[str]
    seeds: list[int]
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    out: str = "jdcl-runs"  # runner.DEFAULT_OUT
    device: str = "auto"
    time_limit_s: float | None = None
    download: bool = False

    def cells(self) -> list[Cell]:
        return expand_grid(self.methods, self.protocols, self.seeds)

    def run_config(self, cell: Cell) -> RunConfig:
        return RunConfig(protocol=cell.protocol, method=cell.method, seed=cell.seed, preset=self.preset,
                         overrides=dict(self.overrides), data_dir=self.data_dir, out=self.out, device=self.device,
                         time_limit_s=self.time_limit_s, download=self.download)


# ---- grid expansion ---------------------------------------------------------------------

def split_list(values: str | Iterable[str]) -> list[str]:
    """``"a,b"`` or ``["a,b", "c"]`` -> ``["a", "b", "c"]``, order kept, duplicates dropped."""
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for v in values:
        for item in str(v).split(","):
            item = item.strip()
            if item and item not in out:
                out.append(item)
    return out


def parse_seeds(values: str | Iterable[str]) -> list[int]:
    """``"0,1,2"``, ``"0-4"`` (inclusive range) or a mix of both."""
    seeds: list[int] = []
    for item in split_list(values):
        m = re.fullmatch(r"(\d+)-(\d+)", item)
        if m and int(m[1]) <= int(m[2]):
            rng = list(range(int(m[1]), int(m[2]) + 1))
        elif re.fullmatch(r"\d+", item):
            rng = [int(item)]
        else:
            raise ValueError(f"--seeds {item!r}: expected integers (0,1,2) or an inclusive range (0-4)")
        seeds += [s for s in rng if s not in seeds]
    return seeds


def expand_grid(methods: Iterable[str], protocols: Iterable[str], seeds: Iterable[int]) -> list[Cell]:
    """Every (method, protocol, seed), methods outermost, seeds innermost."""
    return [Cell(m, p, int(s)) for m, p, s in itertools.product(list(methods), list(protocols), list(seeds))]


# ---- validation and skip logic ----------------------------------------------------------

def validate(spec: SweepSpec) -> None:
    """Fail before anything runs: an unknown method or protocol raises the registry's error (which
    lists the known names), a bad preset or ``--set`` key the config's, exactly as ``run`` does."""
    from ..protocol import get_protocol
    from ..registry import METHODS

    if not (spec.methods and spec.protocols and spec.seeds):
        raise ValueError("a sweep needs at least one method, one protocol and one seed")
    for name in spec.methods:
        METHODS.get(name).config_for(spec.preset, spec.overrides)
    for name in spec.protocols:
        get_protocol(name)


def resolve_run_dir(cfg: RunConfig) -> Path:
    """The run directory the runner will use for ``cfg``."""
    from ..registry import METHODS

    return run_dir_for(cfg, cfg.preset or METHODS.get(cfg.method).default_preset)


def stale_config(cfg: RunConfig, run_dir: Path) -> str | None:
    """Why a complete record in ``run_dir`` is not what ``cfg`` would run today, or None. A run
    directory is named by preset and --set values, not by what the preset sets: after a preset or a
    default changed (JDCL's `fast` took lr 5e-4), the record there ran another config. The sweep keeps
    it (a record is never overwritten unasked) and says so."""
    from ..config import to_json_dict
    from ..records import read_json
    from ..registry import METHODS
    from ..run_dir import _config_diff

    try:
        old = read_json(Path(run_dir) / "config.json").get("method_config")
        now = to_json_dict(METHODS.get(cfg.method).config_for(cfg.preset, cfg.overrides))
    except Exception:  # unreadable or unloadable: nothing to compare; the runner checks again when it runs
        return None
    if not isinstance(old, dict) or old == now:
        return None
    return (f"record ran another config than this preset gives today ({_config_diff(old, now)}); "
            "--restart or another --out runs it again")


def read_metrics(run_dir: Path) -> dict | None:
    from ..records import read_json

    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return None
    try:
        return read_json(path)
    except (OSError, ValueError):  # unreadable: treat as not done, the runner will redo it
        return None


def from_metrics(result: CellResult, metrics: dict | None) -> CellResult:
    if metrics:
        result.final_acc = metrics.get("final_acc")
        result.tasks_done = metrics.get("tasks_done")
        result.num_tasks = metrics.get("num_tasks")
    return result


def plan(spec: SweepSpec) -> list[tuple[Cell, RunConfig, CellResult | None]]:
    """Each cell with its run config and, for a cell that is already complete, its ``skipped``
    result; ``None`` means run it. Call :func:`validate` first."""
    out = []
    for cell in spec.cells():
        cfg = spec.run_config(cell)
        run_dir = resolve_run_dir(cfg)
        metrics = read_metrics(run_dir)
        if metrics and metrics.get("complete"):
            result = from_metrics(CellResult(cell, "skipped", str(run_dir)), metrics)
            result.error = stale_config(cfg, run_dir)
            out.append((cell, cfg, result))
        else:
            out.append((cell, cfg, None))
    return out


# ---- one cell ---------------------------------------------------------------------------

def run_cell(cfg: RunConfig, quiet: bool = False) -> CellResult:
    """Run (or resume) one cell and say how it ended; never raises for a failing run. This is what
    every executor calls, submitit jobs included (so it must stay importable at module level)."""
    from ..progress import Reporter
    from ..runner import run

    cell = Cell(cfg.method, cfg.protocol, cfg.seed)
    try:
        run_dir = run(cfg, Reporter(quiet=quiet))
    except Exception as exc:  # a failing cell must not take the sweep down
        first = str(exc).strip().splitlines()
        res = CellResult(cell, "failed", error=f"{type(exc).__name__}: {first[0] if first else ''}".rstrip(": "),
                         details=traceback.format_exc())
        try:  # it may have got some tasks done before failing
            run_dir = resolve_run_dir(cfg)
            res.run_dir = str(run_dir)
            from_metrics(res, read_metrics(run_dir))
        except Exception:
            pass
        return res
    metrics = read_metrics(run_dir)
    status = "done" if metrics and metrics.get("complete") else "stopped"
    return from_metrics(CellResult(cell, status, str(run_dir)), metrics)
