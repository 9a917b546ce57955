"""What a run record holds for tables: the metrics a table can show, one record's columns, a
cell, and the small value helpers the other modules of ``jdcl_bench.results`` share."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# Metrics a table can show. The first four come from metrics.json, the timings from manifest.json.
METRICS = ("final_acc", "avg_acc", "avg_inc_acc", "forgetting", "gpu_minutes", "wall_minutes")

# Which direction wins, per metric: decides the bold "best" cell of each column.
LOWER_IS_BETTER = {
    "final_acc": False,
    "avg_acc": False,
    "avg_inc_acc": False,
    "forgetting": True,
    "gpu_minutes": True,
    "wall_minutes": True,
}

# Captions must say what was measured, in words (definitions as in jdcl_bench.metrics).
METRIC_WORDS = {
    "final_acc": "final top-1 accuracy (%) on the whole test set after the last task",
    "avg_acc": "average accuracy (%) over the tasks' classes after the last task",
    "avg_inc_acc": "average incremental accuracy (%), i.e. accuracy on all classes seen so far "
                   "averaged over the tasks",
    "forgetting": "average forgetting (percentage points) of the earlier tasks after the last task",
    "gpu_minutes": "GPU time (minutes)",
    "wall_minutes": "wall-clock time (minutes)",
}

# Short column headers when a table shows several metrics.
METRIC_SHORT = {
    "final_acc": "Final acc. (%)",
    "avg_acc": "Avg. acc. (%)",
    "avg_inc_acc": "Avg. inc. acc. (%)",
    "forgetting": "Forgetting (pp)",
    "gpu_minutes": "GPU min",
    "wall_minutes": "Wall min",
}

RECORD_COLUMNS = [
    "protocol", "method", "method_label", "base_label", "overrides_text", "bound", "preset", "same_as", "seed",
    *METRICS,
    "tasks_done", "num_tasks",
    "dataset_name", "dataset_variant", "dataset_canonical", "dataset_note",
    "reduced", "gpu_shared_by", "processes", "gpu_minutes_own", "generator_minutes_loaded", "generators_loaded_shared_by", "gpu_name", "gpu_models", "device", "commit", "dirty", "finished_at",
    "seen_acc", "acc_matrix", "run_dir", "budget", "method_config", "overrides",
]


@dataclass(frozen=True)
class Cell:
    """One leaderboard cell: a metric aggregated over the seeds of one (method, protocol).

    ``std`` is the sample standard deviation (ddof=1) and is NaN when ``n == 1``: one seed says
    nothing about spread, so no std is shown for it. ``noncanonical`` holds the notes of the
    non-canonical datasets that went into the cell (dagger mark) and ``reduced_presets`` the
    presets with a reduced compute budget (double-dagger mark).
    """

    metric: str
    mean: float
    std: float
    n: int
    best: bool = False
    noncanonical: tuple[str, ...] = ()
    reduced_presets: tuple[str, ...] = ()
    shared_gpu: bool = False  # a time metric from runs that shared one GPU with others (section mark)


# A folder holding this file is kept out of tables read from any folder above it: superseded runs,
# or reruns of a seed on other hardware (results/distributed), which must not count as seeds.
IGNORE_MARKER = ".not-in-leaderboard"


def is_flag(value: Any, flag: bool) -> bool:
    """True when ``value`` is explicitly the boolean ``flag`` (None/NaN = unknown = neither).

    pandas may hand back numpy booleans from a bool column, so ``is False`` would not do.
    """
    return isinstance(value, (bool, np.bool_)) and bool(value) is flag



def _float(value: Any) -> float:
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan



def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}
