"""Continue a run's state after a finished task under other settings: a lever probe at full scale
that does not pay again for the tasks before it.

JDCL's `standard` on cifar10-t5 costs about 7 GPU-minutes a task. To ask "does X help from task 3
on?", fork the run's between-task checkpoint into a new run folder whose settings differ, then run
the fork as any run (`jdcl-bench run` with the same protocol, method, preset and seed, and the
printed --set values): it resumes at the next task. Its record says where it came from
(``manifest.json`` ``note``, from the first process's segment) and the GPU-seconds of the tasks it
inherited. Forks are probes, never seeds of a preset: the script puts ``.not-in-leaderboard`` in
``--out``, so tables read from above it skip them.

    python benchmarks/fork_run.py --from .gpu-runs/runs/cifar10-t5/jdcl/standard/seed0 \
        --out results/probes/fork-test --set replay_per_class=3000
    jdcl-bench run --protocol cifar10-t5 --method jdcl --preset standard --seed 0 \
        --set replay_per_class=3000 --out results/probes/fork-test --data-dir ...

The fork starts from ``checkpoint-task.pt`` (the state after the last finished task), or from
``checkpoint.pt`` when that one is itself between tasks.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from jdcl_bench import records
from jdcl_bench.config import ConfigError, parse_set, to_dict
from jdcl_bench.protocol import get_protocol
from jdcl_bench.registry import METHODS
from jdcl_bench.run_dir import run_dir_for
from jdcl_bench.runner import TASK_CHECKPOINT, RunConfig
from jdcl_bench.results.schema import IGNORE_MARKER


def between_task_checkpoint(src: Path) -> tuple[Path, dict]:
    """The source's state after its last finished task: (file, loaded state)."""
    for name in (TASK_CHECKPOINT, "checkpoint.pt"):
        path = src / name
        if path.is_file():
            state = records.load_checkpoint(path)
            if state["phase"] == "task_done":
                return path, state
    raise SystemExit(f"{src} holds no checkpoint taken between tasks ({TASK_CHECKPOINT} or checkpoint.pt "
                     "with phase task_done): nothing to fork")


def fork(src: Path, out: Path, sets: list[str], protocol: str | None = None) -> Path:
    """Write the fork's run folder under ``out``; returns it. ``protocol``: the name or file the fork
    will be run with (default: the source's registered name)."""
    config = records.read_json(src / "config.json")
    src_overrides = config.get("overrides", {})
    overrides = {**src_overrides, **parse_set(sets)}
    if overrides == src_overrides:
        raise SystemExit("--set changes nothing: a fork must differ from its source")
    proto = get_protocol(protocol or config["protocol"])
    if proto.run_name != config["protocol"]:
        raise SystemExit(f"{src} is a run of protocol {config['protocol']}, not {proto.run_name}")
    method_cls = METHODS.get(config["method"])
    try:
        mcfg = method_cls.config_for(config["preset"], overrides)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    cfg = RunConfig(protocol=protocol or config["protocol"], method=config["method"], seed=config["seed"],
                    preset=config["preset"], overrides=overrides, out=str(out))
    dest = run_dir_for(cfg, config["preset"], proto)
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"{dest} exists already; delete it or choose another --out")
    ckpt_path, state = between_task_checkpoint(src)
    task = int(state["task"]) + 1  # tasks the fork inherits
    metrics = records.read_json(src / "metrics.json")
    num_tasks = metrics["num_tasks"]
    if task >= num_tasks:
        raise SystemExit(f"{ckpt_path} is the state after the last task ({task}/{num_tasks}): nothing left to fork")
    changed = {k: v for k, v in overrides.items() if src_overrides.get(k) != v}
    fork_note = (f"the state after task {task} of {src} (benchmarks/fork_run.py), continued from task "
                 f"{task + 1} with {', '.join(f'{k}={v}' for k, v in changed.items())}")
    segments = list(state.get("segments") or [])
    if segments:
        last = segments[-1]
        segments[-1] = {**last, "note": "; ".join(n for n in (last.get("note"), fork_note) if n)}
    else:
        segments = [{"from_task": 1, "note": fork_note}]
    dest.mkdir(parents=True)
    records.write_json(dest / "config.json", {**config, "overrides": overrides, "method_config": to_dict(mcfg),
                                              "forked_from": {"run": str(src), "after_task": task,
                                                              "changed": changed}})
    shutil.copyfile(src / "manifest.json", dest / "manifest.json")  # the data it trained on, checked on resume
    if metrics.get("tasks_done") == task:  # the inherited tasks' results, until the fork's next task
        records.write_json(dest / "metrics.json", {**metrics, "complete": False})
    records.atomic_torch_save({**state, "segments": segments}, dest / "checkpoint.pt")
    (out / IGNORE_MARKER).touch()
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="src", required=True, type=Path, help="the run folder to fork")
    ap.add_argument("--out", required=True, type=Path, help="results folder of the fork (a probe folder)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="the settings that differ from the source run (repeatable)")
    ap.add_argument("--protocol", default=None, help="the protocol name or file the fork will run with "
                    "(default: the source's name)")
    args = ap.parse_args()
    dest = fork(args.src, args.out, args.sets, args.protocol)
    config = records.read_json(dest / "config.json")
    sets = " ".join(f"--set {k}={v}" for k, v in config["overrides"].items())
    print(f"forked into {dest}\nrun it with: jdcl-bench run --protocol {args.protocol or config['protocol']} "
          f"--method {config['method']} --preset {config['preset']} --seed {config['seed']} {sets} --out {args.out}")


if __name__ == "__main__":
    main()
