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


# What one device call returns: 8 files of 16 MiB, 64 MiB in all (the device tool's limits). Checkpoint
# parts are 15 MiB; the records' archive and a margin come off the 64 MiB.
RETURN_FILES, RETURN_BYTES, PART_BYTES = 8, 64 * 2**20, 15 * 2**20
# the largest checkpoint sent over several calls (a few calls' worth): DGR's between-task state (two
# generator copies and a ResNet-18, about 100 MB) and NNCSL's (ResNet, momentum, buffer: 91-105 MB) fit;
# JDCL's in-task state (a few hundred MB) does not, and its 30 MB between-task one goes instead
MAX_STAGED_BYTES = 256 * 2**20
OUTBOX = ".outbox"  # under --out, on the device: each checkpoint being returned, as parts, and which went


def bring_checkpoints(out: Path, dest: Path, part_bytes: int = PART_BYTES, max_bytes: int | None = None,
                      max_files: int | None = None, resend: bool = False) -> None:
    """Return each unfinished run's checkpoint as parts the device machine can return, over as many
    calls as it takes. A call returns at most ``max_bytes`` in ``max_files`` files (default: the
    device's limits less ``dest/runs.tar.gz``). The run's ``checkpoint.pt`` goes when one call can
    return it whole; a larger one, taken inside a task (JDCL: models, optimiser, teachers and replay,
    a few hundred MB), stays, and the state after the run's last finished task (``checkpoint-task.pt``)
    goes instead: a run resumed from it repeats the interrupted task from its start, exactly.

    The checkpoint is copied into parts once (``out/.outbox/<run>/``) and each call sends the parts
    the earlier calls did not, with ``ckpt-<run>.pt.sha256`` (the whole file's hash, size and part
    count), so parts of two versions are never mixed and ``join_checkpoints`` refuses an incomplete or
    damaged set. A newer checkpoint is taken once the last one has gone whole. ``resend``: every part
    of the checkpoints being returned counts as not sent yet (a call whose files never arrived)."""
    archive_size = (dest / "runs.tar.gz").stat().st_size if (dest / "runs.tar.gz").is_file() else 0
    budget = RETURN_BYTES - 2**20 - archive_size if max_bytes is None else max_bytes
    files = RETURN_FILES - (1 if archive_size else 0) if max_files is None else max_files
    one_call = budget  # a checkpoint.pt larger than this stays (see above)
    for ckpt in sorted(out.rglob("checkpoint.pt")):
        metrics = ckpt.parent / "metrics.json"
        if metrics.is_file():
            d = json.loads(metrics.read_text())
            if d.get("tasks_done") == d.get("num_tasks"):
                continue
        src, what = ckpt, "checkpoint"
        if ckpt.stat().st_size > one_call:
            big = ckpt.stat().st_size / 2**20
            task_ckpt = ckpt.parent / "checkpoint-task.pt"
            if not task_ckpt.is_file() or task_ckpt.stat().st_size > MAX_STAGED_BYTES:
                print(f"checkpoint {ckpt} ({big:.0f} MB) is too large to return and the run has no between-task "
                      "checkpoint small enough: it stays on this machine only")
                continue
            src, what = task_ckpt, (f"between-task checkpoint (the in-task one, {big:.0f} MB, stays on this "
                                    "machine; resuming from this one repeats the interrupted task)")
        name = part_name(ckpt.parent, out)  # the device returns only names of letters, digits, '.', '_', '-'
        box = _staged(out / OUTBOX / name, src, part_bytes)
        meta = json.loads((box / "meta.json").read_text())
        if resend:
            meta["sent"] = []
        sent_now = []
        for i in range(meta["parts"]):
            if i in meta["sent"]:
                continue
            size = (box / f"part{i:02d}").stat().st_size
            needed = 1 if sent_now else 2  # the part, and with this call's first part the sidecar
            if files < needed or size > budget:
                break
            (dest / f"ckpt-{name}.pt.part{i:02d}").write_bytes((box / f"part{i:02d}").read_bytes())
            budget, files = budget - size, files - needed
            sent_now.append(i)
        if sent_now:
            (dest / f"ckpt-{name}.pt.sha256").write_text(f"{meta['sha256']} {meta['bytes']} {meta['parts']}\n")
            meta["sent"] = sorted(meta["sent"] + sent_now)
            _write_meta(box, meta)
        left = meta["parts"] - len(meta["sent"])
        where = (f"part(s) {sent_now[0]:02d}-{sent_now[-1]:02d} of {meta['parts']} returned as ckpt-{name}.pt.part*"
                 if sent_now else "nothing returned by this call")
        more = (f"; {left} part(s) still here: the next --attach call on this machine brings them" if left
                else "" if sent_now else " (all of it went with an earlier call)")
        print(f"{what} {src} ({meta['bytes'] / 2**20:.1f} MB, sha256 {meta['sha256'][:12]}): {where}{more}")


def _staged(box: Path, src: Path, part_bytes: int) -> Path:
    """``box`` holding ``src`` as parts of ``part_bytes`` and a meta.json (its hash, size, part count,
    the parts sent so far). Kept while parts of it are still to go; replaced by ``src``'s current bytes
    once all went and ``src`` has changed since (a run writes a newer checkpoint)."""
    import hashlib
    import shutil

    st = src.stat()
    key = {"source": str(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if (box / "meta.json").is_file():
        meta = json.loads((box / "meta.json").read_text())
        if len(meta["sent"]) < meta["parts"] or meta["key"] == key:
            return box
    shutil.rmtree(box, ignore_errors=True)
    box.mkdir(parents=True)
    with open(src, "rb") as fh:  # one read: detached chains may replace the file meanwhile
        data = fh.read()
    for i in range(0, max(len(data), 1), part_bytes):
        (box / f"part{i // part_bytes:02d}").write_bytes(data[i:i + part_bytes])
    meta = {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "parts": max(-(-len(data) // part_bytes), 1), "sent": []}
    _write_meta(box, meta)
    return box


def _write_meta(box: Path, meta: dict) -> None:
    from jdcl_bench.records import atomic_write_bytes  # the runs this script starts import it too

    atomic_write_bytes(box / "meta.json", json.dumps(meta).encode())


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


def _sidecar(path: Path) -> tuple[str, int, int]:
    """A ``ckpt-<run>.pt.sha256`` file's (sha256, bytes, parts) of the whole checkpoint."""
    sha, size, parts = path.read_text().split()
    return sha, int(size), int(parts)


def join_checkpoints(out: Path, part_dirs: list[Path]) -> list[Path]:
    """Put returned checkpoint parts back together in their run folders under ``out`` (the records
    must be there: ``home`` puts the returned runs.tar.gz under ``out``). The parts may lie in several
    folders (calls that carried them separately). Where the parts came with their ``.sha256`` file
    (bring_checkpoints sends one), all of them must be there and the joined bytes must have its hash;
    older parts without one must be part00..partNN without a gap. Nothing is written otherwise: a
    truncated or mixed checkpoint would resume a run from a state it never had."""
    import hashlib

    parts: dict[str, dict[int, Path]] = {}
    sums: dict[str, Path] = {}
    for d in part_dirs:
        for f in Path(d).glob("ckpt-*.pt.part[0-9][0-9]"):
            stem, num = f.name[len("ckpt-"):].rsplit(".pt.part", 1)
            parts.setdefault(stem, {})[int(num)] = f
        for f in Path(d).glob("ckpt-*.pt.sha256"):
            sums[f.name[len("ckpt-"):-len(".pt.sha256")]] = f
    runs = {part_name(m.parent, out): m.parent for m in Path(out).rglob("config.json")}  # run folders
    joined = []
    for stem, numbered in sorted(parts.items()):
        if stem not in runs:
            raise SystemExit(f"checkpoint parts ckpt-{stem}.pt.part*: no run folder under {out} matches; "
                             f"put the runs.tar.gz that came back with them under {out} first (--home FILES_AT)")
        expected = _sidecar(sums[stem]) if stem in sums else None
        need = list(range(expected[2] if expected else max(numbered) + 1))
        if sorted(numbered) != need:
            missing = sorted(set(need) - set(numbered))
            raise SystemExit(f"checkpoint parts ckpt-{stem}.pt.part*: have {sorted(numbered)}, need 0..{need[-1]} "
                             f"(without a gap; missing {missing}): bring the missing part(s) (another ATTACH=1 call "
                             "on the machine that returned them; RESEND=1 if a call's files never arrived) or carry "
                             "them too")
        dest = runs[stem] / "checkpoint.pt"
        tmp = dest.with_suffix(".pt.joining")
        digest, size = hashlib.sha256(), 0
        with open(tmp, "wb") as fh:
            for i in need:
                chunk = numbered[i].read_bytes()
                digest.update(chunk)
                size += len(chunk)
                fh.write(chunk)
        if expected and (digest.hexdigest(), size) != expected[:2]:
            tmp.unlink()
            raise SystemExit(f"checkpoint parts ckpt-{stem}.pt.part*: joined they are {size} bytes with sha256 "
                             f"{digest.hexdigest()[:12]}, not the checkpoint's {expected[1]} bytes and "
                             f"{expected[0][:12]} ({sums[stem]}): parts of two versions or a damaged one; "
                             "bring them again")
        tmp.replace(dest)  # whole or not at all
        if _between_tasks(dest):
            # kept as the runner keeps it: if the resumed run stops inside its first task, its in-task
            # checkpoint replaces checkpoint.pt, and this copy is still there to bring home
            from jdcl_bench.records import keep_copy  # the runs this script starts import it too
            from jdcl_bench.runner import TASK_CHECKPOINT

            keep_copy(dest, dest.with_name(TASK_CHECKPOINT))
        for f in [*numbered.values(), *([sums[stem]] if stem in sums else [])]:
            f.unlink()  # joined once: a later command on this machine must not join them again over the
                        # newer checkpoint the run has written since
        print(f"joined {len(numbered)} part(s) into {dest}" + (f" (sha256 {expected[0][:12]} checked)" if expected else ""))
        joined.append(dest)
    return joined


def _not_record(path: Path, below: Path) -> bool:
    """Whether a file under a results folder ``below`` stays out of a record that travels: checkpoints
    (they come back as parts of their own), locks, files being written, hidden ones (the outbox of
    checkpoint parts), shared generator caches."""
    rel = path.relative_to(below).parts
    return (path.name.endswith((".pt", ".lock", ".tmp", ".joining")) or any(p.startswith(".") for p in rel)
            or "shared" in rel)


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
    sums = {f.name[:-len(".sha256")]: f for f in files_at.glob("ckpt-*.pt.sha256")}
    if parts:
        stage.mkdir(parents=True, exist_ok=True)
        for stem in {f.name.rsplit(".part", 1)[0] for f in parts}:
            staged_sum = stage / f"{stem}.sha256"
            if stem in sums and staged_sum.is_file() and staged_sum.read_text() == sums[stem].read_text():
                continue  # more parts of the checkpoint whose first parts an earlier call brought: keep those
            # another checkpoint of the run (or parts without a hash, sent whole each time): replace, never
            # mix with a stale last part of an older, longer one
            for old in [*stage.glob(f"{stem}.part[0-9][0-9]"), staged_sum]:
                old.unlink(missing_ok=True)
        for f in [*parts, *sums.values()]:
            shutil.copyfile(f, stage / f.name)
        for stem in sorted({f.name.rsplit(".part", 1)[0] for f in parts}):
            have = len(list(stage.glob(f"{stem}.part[0-9][0-9]")))
            total = _sidecar(stage / f"{stem}.sha256")[2] if (stage / f"{stem}.sha256").is_file() else have
            state = ("complete" if have == total else
                     f"{total - have} part(s) still on the device: ATTACH again while it is warm to bring them")
            print(f"{stem}: {have} of {total} part(s) in {stage}, {state}")
        print(carry_plan(stage))


def carry_plan(stage: Path, data: tuple[str, ...] = (".data/cifar10-jpeg/cifar10-jpeg.tar.gz",
                                                      ".data/cifar10-jpeg/canonical-labels.npz"),
               runs: str = ".gpu-runs", limit: int = 62 * 2**20, max_paths: int = 8) -> str:
    """How the next calls carry the staged parts with the data and the records: one call if all fits
    the 64 MiB a call carries (with the working tree), else the parts first, a few per call, each
    call a short command (``true``) on the machine that stays warm between them (ignored files a call
    carried stay there; a call that names ``.gpu-stage`` whole would replace them, so every call names
    files), and the run's call last."""
    files = sorted(stage.glob("ckpt-*"))
    tree = _tree_bytes()
    fixed = [p for p in (*data, runs) if Path(p).exists()]
    fixed_bytes = tree + sum(_bytes(Path(p)) for p in fixed)
    if fixed_bytes + sum(f.stat().st_size for f in files) <= limit:
        return f"the next call carries {[*fixed, str(stage)]} ({(fixed_bytes + sum(_bytes(f) for f in files)) / 2**20:.1f} MiB with the tree)"
    last, early = [], [[]]  # the run's call: the fixed paths, the sidecars, what parts fit; the calls before it
    room, paths = limit - fixed_bytes, max_paths - len(fixed)
    for f in sorted(files, key=lambda f: (not f.name.endswith(".sha256"), f.name)):  # sidecars first
        size = f.stat().st_size
        if size <= room and paths > 0:
            last.append(f)
            room, paths = room - size, paths - 1
            continue
        if early[-1] and (sum(g.stat().st_size for g in early[-1]) + size > limit - tree or len(early[-1]) == max_paths):
            early.append([])
        early[-1].append(f)
    early = [c for c in early if c]
    lines = [f"the staged parts need {len(early) + 1} calls, back to back on one warm machine"
             + (f" (the tree is {tree / 2**20:.0f} MiB: `bash scripts/slim_tree.sh drop` first)" if tree > 16 * 2**20 else "")
             + ":"]
    lines += [f"  call {i}: command `true`, carry {[str(f) for f in c]}" for i, c in enumerate(early, 1)]
    lines.append(f"  call {len(early) + 1}: the run's command with JOIN=1, carry {[*fixed, *(str(f) for f in last)]}")
    return "\n".join(lines)


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _tree_bytes() -> int:
    """What the working tree sends with every call: tracked files and untracked ones git does not
    ignore (scripts/slim_tree.sh size counts the same); 8 MiB where git cannot say."""
    try:
        names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                               capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return 8 * 2**20
    return sum(os.path.getsize(n) for n in names if n and os.path.isfile(n))


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


def report(out: Path, bring: bool, resend: bool = False) -> None:
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
            bring_checkpoints(out, Path(os.environ["OUT"]), resend=resend)


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
                         "16 MB ($OUT/ckpt-<protocol>__<method>__<preset>__<seed>.pt.partNN and .pt.sha256; "
                         "--join-checkpoints puts them back), in case the machine goes cold; one larger than a call "
                         "returns comes over several calls (each --attach call sends the parts not yet sent)")
    ap.add_argument("--resend-checkpoints", action="store_true",
                    help="with --bring-checkpoints: send every part again, also those an earlier call sent (its files "
                         "never arrived)")
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
        report(out, args.bring_checkpoints, args.resend_checkpoints)
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
        report(out, args.bring_checkpoints, args.resend_checkpoints)
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
    report(out, args.bring_checkpoints, args.resend_checkpoints)
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
