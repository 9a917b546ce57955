"""Run several jdcl-bench runs side by side on one GPU machine inside one time-limited command.

Small models leave most of an H100 idle, so chains of runs share the GPU as parallel processes.
Each run gets ``--time-limit`` = what is left of the deadline, so a run that cannot finish stops
cleanly with its checkpoint and the same command resumes it. Every run's manifest carries a note
saying how many runs shared the GPU: its GPU-seconds are wall-clock seconds on a shared device.

    python scripts/gpu_batch.py --deadline 520 --out .gpu-runs --data-dir .data/cifar10-jpeg \
        --chain cifar10-t5:dgr:fast,cifar10-t5:guide:fast --chain cifar10-t5:gfr:fast

At the end the records (everything but checkpoints and shared generator caches) are packed into
``$OUT/runs.tar.gz`` when ``$OUT`` is set, and a one-line status per run is printed. Back here,
``python scripts/gpu_batch.py --home FILES_AT`` puts the returned records under .gpu-runs and the
checkpoint parts in .gpu-stage, where the next call carries them from.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path


def chain_sets(text: str) -> list[str]:
    """A chain entry's --set overrides: ``KEY=VALUE`` items, and ``@FILE.toml`` for a settings file's
    values, turned into --set text as ``jdcl-bench run --config FILE`` turns them (the same run folder)."""
    sets = []
    for item in (kv for kv in text.split(";") if kv):
        if item.startswith("@"):
            from jdcl_bench.config import load_settings_file  # the runs this script starts import it too

            sets += [f"{k}={v}" for k, v in load_settings_file(item[1:]).items()]
        else:
            sets.append(item)
    return sets


def log_name(protocol: str, method: str, preset: str, seed: str, sets: list[str], started: int) -> str:
    """A run's log file name: protocol__method__preset__seedN[__settings]__start-time. A protocol file
    gives its stem; a registered name stays whole (cifar10-semi-0.8pct, not cifar10-semi-0)."""
    from jdcl_bench.protocol import protocol_stem  # the runs this script starts import it too
    from jdcl_bench.records import safe_name

    name = protocol_stem(protocol)
    tag = safe_name("+".join(sets))[:80]
    return f"{name}__{method}__{preset}__seed{seed}{'__' + tag if tag else ''}__{started}.log"


def run_chain(chain: list[str], args, t0: float, n_parallel: int, status: dict) -> None:
    for spec in chain:
        protocol, method, preset, *rest = spec.split(":")
        seed = rest[0] if rest else "0"
        sets = chain_sets(rest[1] if len(rest) > 1 else "")
        left = args.deadline - (time.time() - t0)
        if left < args.min_start:
            status[spec] = "not started (deadline)"
            continue
        # one chain: the run had the GPU to itself (records before 2026-12-06 said "one of 1 parallel chains")
        note = ("ran alone on the GPU (scripts/gpu_batch.py, one chain)" if n_parallel == 1 else
                f"ran as one of {n_parallel} parallel chains of runs sharing one GPU (scripts/gpu_batch.py); "
                f"GPU-seconds are shared wall time")
        env = {**os.environ, "JDCL_BENCH_RUN_NOTE": note, "JDCL_BENCH_GPU_SHARED_BY": str(n_parallel)}
        log_dir = Path(args.out) / "_logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / log_name(protocol, method, preset, seed, sets, int(time.time()))
        cmd = [sys.executable, "-m", "jdcl_bench.cli", "run", "--protocol", protocol, "--method", method,
               "--preset", preset, "--seed", seed, "--out", args.out, "--data-dir", args.data_dir,
               "--time-limit", f"{left:.0f}"] + [a for kv in sets for a in ("--set", kv)]
        if args.stop_between_tasks:
            cmd.append("--stop-between-tasks")
        with open(log, "w") as fh:
            rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        tail = log.read_text().strip().splitlines()[-1:] or [""]
        status[spec] = f"rc={rc} {tail[0][:160]}"
        if rc != 0:
            break  # a later run of the chain may depend on this one (GUIDE on DGR's generators)


def bring_checkpoints(out: Path, dest: Path, part_bytes: int = 15 * 2**20, max_bytes: int = 60 * 2**20) -> None:
    """Split each unfinished run's checkpoint into parts the device machine can return (16 MB a
    file, 64 MB in all). A checkpoint taken inside a task (JDCL: models, optimiser, teachers and
    replay, a few hundred MB) is too large: then the run's state after its last finished task
    (``checkpoint-task.pt``, about 30 MB for the `fast` UNet) comes back instead, and a run resumed
    from it repeats the interrupted task from its start, exactly."""
    for ckpt in sorted(out.rglob("checkpoint.pt")):
        metrics = ckpt.parent / "metrics.json"
        if metrics.is_file():
            d = json.loads(metrics.read_text())
            if d.get("tasks_done") == d.get("num_tasks"):
                continue
        src, what, data = ckpt, "checkpoint", _read_up_to(ckpt, max_bytes)
        if data is None:
            big = ckpt.stat().st_size / 2**20
            task_ckpt = ckpt.parent / "checkpoint-task.pt"
            data = _read_up_to(task_ckpt, max_bytes) if task_ckpt.is_file() else None
            if not data:
                print(f"checkpoint {ckpt} ({big:.0f} MB) is too large to return and the run "
                      "has no small between-task checkpoint: it stays on this machine only")
                continue
            src, what = task_ckpt, (f"between-task checkpoint (the in-task one, {big:.0f} MB, "
                                    "stays on this machine; resuming from this one repeats the interrupted task)")
        name = part_name(ckpt.parent, out)  # the device returns only names of letters, digits, '.', '_', '-'
        for i in range(0, len(data), part_bytes):
            (dest / f"ckpt-{name}.pt.part{i // part_bytes:02d}").write_bytes(data[i:i + part_bytes])
        print(f"{what} {src} ({len(data) / 2**20:.1f} MB) returned as ckpt-{name}.pt.part* "
              f"({-(-len(data) // part_bytes)} part(s))")


def _read_up_to(path: Path, max_bytes: int) -> bytes | None:
    """The file's bytes, or None when it holds more than ``max_bytes``. The size is the open file's:
    detached chains (--detach) may replace the path between a stat() and a read, and a large in-task
    checkpoint is not read only to learn its size."""
    with open(path, "rb") as fh:
        return fh.read() if os.fstat(fh.fileno()).st_size <= max_bytes else None


def part_name(run_dir: Path, out: Path) -> str:
    """The file-name stem of a run's checkpoint parts: protocol__method__preset__seed, with every
    character the device would not return (such as '+' of a preset with overrides) as '-'."""
    from jdcl_bench.records import safe_name

    return safe_name("__".join(run_dir.relative_to(out).parts[-4:]), "-")


def _between_tasks(path: Path) -> bool:
    """Whether a checkpoint holds a run's state between tasks (the runner's phase "task_done")."""
    from jdcl_bench.records import CheckpointError, load_checkpoint  # the runs this script starts import it too

    try:
        return load_checkpoint(path).get("phase") == "task_done"
    except CheckpointError:  # not a checkpoint of this suite: leave it as it is
        return False


def join_checkpoints(out: Path, part_dirs: list[Path]) -> list[Path]:
    """Put returned checkpoint parts back together in their run folders under ``out`` (the records
    must be there: ``home`` puts the returned runs.tar.gz under ``out``). The parts may lie in several
    folders (calls that carried them separately, before scripts/slim_tree.sh made room for all in
    one). Refuses a run whose
    parts are not all there (part00..partNN without a gap) rather than write a truncated checkpoint."""
    parts: dict[str, dict[int, Path]] = {}
    for d in part_dirs:
        for f in Path(d).glob("ckpt-*.pt.part[0-9][0-9]"):
            stem, num = f.name[len("ckpt-"):].rsplit(".pt.part", 1)
            parts.setdefault(stem, {})[int(num)] = f
    runs = {part_name(m.parent, out): m.parent for m in Path(out).rglob("config.json")}  # run folders
    joined = []
    for stem, numbered in sorted(parts.items()):
        if stem not in runs:
            raise SystemExit(f"checkpoint parts ckpt-{stem}.pt.part*: no run folder under {out} matches; "
                             f"put the runs.tar.gz that came back with them under {out} first (--home FILES_AT)")
        if sorted(numbered) != list(range(len(numbered))):
            raise SystemExit(f"checkpoint parts ckpt-{stem}.pt.part*: have {sorted(numbered)}, need 0..{max(numbered)} "
                             "without a gap; bring the missing part(s)")
        dest = runs[stem] / "checkpoint.pt"
        tmp = dest.with_suffix(".pt.joining")
        with open(tmp, "wb") as fh:
            for i in range(len(numbered)):
                fh.write(numbered[i].read_bytes())
        tmp.replace(dest)  # whole or not at all
        if _between_tasks(dest):
            # kept as the runner keeps it: if the resumed run stops inside its first task, its in-task
            # checkpoint replaces checkpoint.pt, and this copy is still there to bring home
            from jdcl_bench.records import keep_copy  # the runs this script starts import it too
            from jdcl_bench.runner import TASK_CHECKPOINT

            keep_copy(dest, dest.with_name(TASK_CHECKPOINT))
        for f in numbered.values():  # joined once: a later command on this machine must not join them again
            f.unlink()               # over the newer checkpoint the run has written since
        print(f"joined {len(numbered)} part(s) into {dest}")
        joined.append(dest)
    return joined


def _not_record(path: Path, below: Path) -> bool:
    """Whether a file under a results folder ``below`` stays out of a record that travels: checkpoints
    (they come back as parts of their own), locks, files being written, shared generator caches."""
    return (path.name.endswith((".pt", ".lock", ".tmp", ".joining")) or path.name.startswith(".")
            or "shared" in path.relative_to(below).parts)


def archive(out: Path, dest: Path) -> Path:
    """``dest/runs.tar.gz``: the records under ``out`` (checkpoints, locks and shared generator
    caches left out), which ``home`` puts back under another ``out``."""
    path = dest / "runs.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        tf.add(out, arcname="runs", recursive=False)
        for f in sorted(out.rglob("*")):
            if _not_record(f, out):
                continue
            try:
                tf.add(f, arcname=str(Path("runs") / f.relative_to(out)), recursive=False)
            except FileNotFoundError:  # replaced meanwhile by detached chains still running: next time
                continue
    return path


def home(files_at: Path, out: Path, stage: Path) -> None:
    """Here, after a device call: put what it returned where the next call carries it from. The
    records in ``files_at/runs.tar.gz`` go under ``out`` (as they were under the device's --out), the
    checkpoint parts into ``stage``, replacing older parts of the same run (a checkpoint of fewer parts
    must not be joined with a stale last part)."""
    import shutil

    archive_path = files_at / "runs.tar.gz"
    if not archive_path.is_file():
        raise SystemExit(f"{archive_path} is missing: pass the folder a device call's files came back to "
                         "(its files_at)")
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive_path) as tf:
        members = []
        for m in tf.getmembers():
            if m.name == "runs":
                continue
            if not m.name.startswith("runs/"):
                raise SystemExit(f"{archive_path}: {m.name} is not under runs/; not an archive of this script")
            m.name = m.name[len("runs/"):]
            members.append(m)
        tf.extractall(out, members=members, filter="data")  # "data": no absolute paths, links or ../ escapes
    print(f"records from {archive_path} in {out}")
    parts = sorted(files_at.glob("ckpt-*.pt.part[0-9][0-9]"))
    if parts:
        stage.mkdir(parents=True, exist_ok=True)
        for stem in {f.name.rsplit(".part", 1)[0] for f in parts}:
            for old in stage.glob(f"{stem}.part[0-9][0-9]"):
                old.unlink()
        for f in parts:
            shutil.copyfile(f, stage / f.name)
        print(f"{len(parts)} checkpoint part(s) in {stage}: the next call carries it and passes --join-checkpoints {stage}")


def run_logs(run_dir: Path, out: Path) -> list[Path]:
    """The logs under ``out/_logs`` of the processes that trained ``run_dir``, oldest first (a log's
    name ends in its start time)."""
    import re

    # each process prints its run directory as the device saw it (.gpu-runs/runs/...): match the part below out
    rel = re.escape(str(run_dir.resolve().relative_to(out.resolve())))
    def started(f: Path) -> tuple[int, str]:
        t = f.stem.rsplit("__", 1)[-1]
        return (int(t) if t.isdigit() else -1, f.name)

    return [f for f in sorted((out / "_logs").glob("*.log"), key=started)
            if re.search(rf"(^|[\s/]){rel}(\s|$)", f.read_text(errors="replace"), re.M)]


def stop_reason(run_dir: Path, out: Path) -> str | None:
    """Why an unfinished run's latest process stopped, as it said (its last `time limit:` line), or None."""
    logs = [f for f in run_logs(run_dir, out) if not f.name.startswith("background__")]  # the runs' own logs
    said = [ln.split("] ", 1)[-1].strip() for ln in (logs[-1].read_text(errors="replace").splitlines() if logs else [])
            if "time limit:" in ln or "time limit reached" in ln]
    return said[-1] if said else None


def land(run_dir: Path, dest: Path, out: Path, incomplete: bool = False) -> list[Path]:
    """Here, once a run is done: its record (no checkpoints or locks) into ``dest`` (a results folder's
    run directory), with the logs of every process that trained it (``out/_logs``, found by the run
    directory they name) in ``dest/logs``. Refuses an unfinished run (unless ``incomplete``) and an
    existing ``dest``. The logs copied."""
    import shutil

    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        raise SystemExit(f"{run_dir} has no metrics.json: not a run directory")
    m = json.loads(metrics.read_text())
    if not m.get("complete") and not incomplete:
        raise SystemExit(f"{run_dir} has {m.get('tasks_done')}/{m.get('num_tasks')} tasks done: finish it first "
                         "(or pass --incomplete for a record that says so)")
    if dest.exists():
        raise SystemExit(f"{dest} exists: move it away first (a record is never written over)")
    shutil.copytree(run_dir, dest, ignore=lambda d, names: [n for n in names if _not_record(Path(d) / n, run_dir)])
    logs = run_logs(run_dir, out)
    if logs:
        (dest / "logs").mkdir(exist_ok=True)
        for f in logs:
            shutil.copyfile(f, dest / "logs" / f.name)
    print(f"{run_dir} -> {dest} ({len(logs)} process log(s) in logs/)")
    return logs


BACKGROUND = "_background.json"  # under --out: the detached chains' process and, once done, their statuses


def start_background(args, seconds: float) -> subprocess.Popen:
    """Start the chains in a process of their own session, with ``seconds`` as their deadline: the
    device machine ends a command's processes when it returns, but not one in a session of its own,
    which trains on between commands (one process compiles once: each resume in a new process
    compiled the models again, about 50 s a `standard` task on an H100)."""
    out = Path(args.out)
    if (state := background_state(out)) and _alive(state.get("pid")) and "finished_at" not in state:
        raise SystemExit(f"chains started by --detach are still running here (pid {state['pid']}): "
                         "wait for them with --attach")
    (out / BACKGROUND).unlink(missing_ok=True)  # an earlier one's "finished_at" must not end the wait for this one
    (out / "_logs").mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--in-background", "--out", args.out,
           "--data-dir", args.data_dir, "--deadline", str(seconds), "--min-start", str(args.min_start)]
    cmd += [a for c in args.chain for a in ("--chain", c)]
    if args.stop_between_tasks:
        cmd.append("--stop-between-tasks")
    env = {k: v for k, v in os.environ.items() if k != "OUT"}  # this command returns the files, not it
    log = open(out / "_logs" / f"background__{int(time.time())}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def background_state(out: Path) -> dict | None:
    try:
        return json.loads((out / BACKGROUND).read_text())
    except (OSError, ValueError):
        return None


def _alive(pid) -> bool:
    """Whether process ``pid`` still runs (a zombie, exited but not yet reaped, does not)."""
    if not isinstance(pid, int):
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_background(out: Path, until: float, child: subprocess.Popen | None = None) -> bool:
    """Wait for the detached chains until they finish or the time ``until``; whether they finished."""
    def ended(state: dict) -> bool:  # this command's child, or (--attach) the process the state file names
        return "finished_at" in state or (child.poll() is not None if child is not None
                                          else not _alive(state.get("pid")))

    while time.time() < until and not ended(background_state(out) or {}):
        time.sleep(2)
    state = background_state(out)
    if state is None and child is None:
        print(f"no chains were detached here ({out / BACKGROUND} is missing): on a fresh machine, carry the "
              "returned checkpoint parts and resume the run (--join-checkpoints)")
        return True
    state = state or {}
    done = ended(state)
    if done:
        for spec, st in state.get("status", {}).items():
            print(f"{spec:40s} {st}")
        if "finished_at" not in state:
            print(f"the detached chains (pid {state.get('pid')}) ended without finishing: see {out}/_logs")
    else:
        print(f"the detached chains still run (pid {state.get('pid')}): the next command on this machine "
              "passes --attach (its records and checkpoints come back as now)")
    return done


def report(out: Path, bring: bool) -> None:
    """Every run's progress under ``out``; with $OUT set, the records (and checkpoints) to return."""
    for m in sorted(out.rglob("metrics.json")):
        d = json.loads(m.read_text())
        # an unfinished run's final_acc averages over every class, unseen ones included: show seen-class accuracy
        seen = (d.get("seen_acc") or [float("nan")])[-1]
        final = f"final {d['final_acc']:.2f}" if d.get("complete") else f"seen-class {seen:.2f}"
        print(f"{str(m.parent):60s} tasks {d['tasks_done']}/{d['num_tasks']} {final}")
        if not d.get("complete") and (why := stop_reason(m.parent, out)):
            # e.g. detached chains whose deadline left no room for the next task: say it here, not only in _logs
            print(f"{'':60s} stopped: {why}")
    if os.environ.get("OUT"):
        archive(out, Path(os.environ["OUT"]))
        if bring:
            bring_checkpoints(out, Path(os.environ["OUT"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--join-checkpoints", action="append", default=[], metavar="DIR",
                    help="first put the ckpt-*.pt.partNN files found in DIR (repeatable) back together in their run "
                         "folders under --out, then run the chains (which resume them)")
    ap.add_argument("--home", metavar="FILES_AT",
                    help="here, not on the device: put what a call returned (the folder its files came back to) in "
                         "place for the next call, the records under --out and the checkpoint parts in --stage; "
                         "runs nothing")
    ap.add_argument("--stage", default=".gpu-stage", help="with --home: where the checkpoint parts go")
    ap.add_argument("--land", nargs=2, metavar=("RUN_DIR", "DEST"),
                    help="here, once a run under --out is done: copy its record and its processes' logs to DEST "
                         "(e.g. results/runs/<protocol>/<method>/<preset>/seed<N>); runs nothing")
    ap.add_argument("--incomplete", action="store_true", help="with --land: also an unfinished run")
    ap.add_argument("--chain", action="append",
                    help="comma-separated protocol:method:preset[:seed[:key=value;key=value]] (the last part: --set overrides; "
                         "@FILE.toml among them: a settings file's values, as jdcl-bench run --config)")
    ap.add_argument("--deadline", type=float, default=520, help="seconds from now by which every run stops")
    ap.add_argument("--out", default=".gpu-runs")
    ap.add_argument("--data-dir", default=".data/cifar10-jpeg")
    ap.add_argument("--min-start", type=float, default=30,
                    help="seconds that must be left to start (or resume) a run; with --stop-between-tasks a run "
                         "always finishes the task it starts, so give it at least one task's length")
    ap.add_argument("--stop-between-tasks", action="store_true",
                    help="pass --stop-between-tasks to every run: a run stops only between tasks, leaving the small "
                         "between-task checkpoint")
    ap.add_argument("--bring-checkpoints", action="store_true",
                    help="with $OUT set: also return the checkpoint of every unfinished run, split into parts under "
                         "16 MB ($OUT/ckpt-<protocol>__<method>__<preset>__<seed>.pt.partNN; --join-checkpoints puts them back), in case the machine goes cold")
    ap.add_argument("--detach", type=float, metavar="SECONDS",
                    help="run the chains in a background process of their own, with SECONDS as their deadline, "
                         "which trains on after this command returns at --deadline (a warm device machine keeps "
                         "it); the next command passes --attach")
    ap.add_argument("--attach", action="store_true",
                    help="wait for the chains an earlier --detach started on this machine until they finish or "
                         "--deadline, then report and return records and checkpoints as after a run")
    ap.add_argument("--in-background", action="store_true", help=argparse.SUPPRESS)  # the --detach process
    args = ap.parse_args()
    t0 = time.time()
    out = Path(args.out)
    if args.home:
        home(Path(args.home), out, Path(args.stage))
        return
    if args.land:
        land(Path(args.land[0]), Path(args.land[1]), out, args.incomplete)
        return
    if args.attach:
        wait_background(out, t0 + args.deadline)
        report(out, args.bring_checkpoints)
        print(f"done in {time.time() - t0:.0f}s")
        return
    if not args.chain:
        ap.error("--chain is required (or --attach, --home or --land)")
    if args.join_checkpoints:
        join_checkpoints(out, [Path(d) for d in args.join_checkpoints])
    if args.detach:
        child = start_background(args, args.detach)
        print(f"chains detached (pid {child.pid}, deadline {args.detach:.0f} s; log in {out}/_logs)")
        wait_background(out, t0 + args.deadline, child)
        report(out, args.bring_checkpoints)
        print(f"done in {time.time() - t0:.0f}s")
        return
    if args.in_background:  # atomic writes: an --attach reading the file never sees half of it
        from jdcl_bench.records import now, write_json  # the runs this script starts import it too

        write_json(out / BACKGROUND, {"pid": os.getpid(), "sid": os.getsid(0), "chains": args.chain,
                                      "deadline_s": args.deadline, "started_at": now()})
    chains = [c.split(",") for c in args.chain]
    specs = [s for c in chains for s in c]
    if len(set(specs)) != len(specs):  # the run lock would stop the second copy mid-batch; say it up front
        dup = sorted({s for s in specs if specs.count(s) > 1})
        ap.error(f"run(s) listed twice: {', '.join(dup)}; name each run once")
    status: dict[str, str] = {}
    threads = [threading.Thread(target=run_chain, args=(c, args, t0, len(chains), status)) for c in chains]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for spec in specs:
        print(f"{spec:40s} {status.get(spec, '?')}")
    if args.in_background:
        state = background_state(out) or {}
        write_json(out / BACKGROUND, {**state, "status": {sp: status.get(sp, "?") for sp in specs},
                                      "finished_at": now()})
    report(out, args.bring_checkpoints)
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
