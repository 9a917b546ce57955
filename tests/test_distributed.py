"""Data-parallel runs (docs/distributed.md) on CPU: 2 processes, gloo backend.

The step-equality test spawns its workers with torch.multiprocessing; the run tests launch the
real command under torchrun (``python -m torch.distributed.run``), as a user would.
"""
import gc
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.multiprocessing as mp

from jdcl_bench import distributed as D

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- (a) one DDP step on 2 x B equals one single-process step on 2B ------------------------------

def _jdcl_steps(rank: int, world: int, port: int, out: str, compiled: bool = False, both: bool = False) -> None:
    """One step of JDCL's local stage through the method's own code (``both``: then a two-step global
    stage whose first step leaves the classifier head out of the loss); rank 0 saves weights and grads.
    ``compiled``: the forward under torch.compile (aot_eager: CPU has no inductor toolchain here)."""
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
        D.init("cpu")
    from jdcl_bench import fastpath
    from jdcl_bench.jdcl import unet
    from jdcl_bench.methods import jdcl
    from jdcl_bench.methods.base import ProtocolInfo, TaskData
    from jdcl_bench.progress import Reporter
    from jdcl_bench.runner import RunContext

    wrapped = []  # the modules handed to torch.compile: DDP's wrapper among them when distributed

    def compiler(f, mode=None, dynamic=None):
        wrapped.append(type(f).__name__)
        return torch.compile(f, backend="aot_eager", dynamic=dynamic)
    if compiled:  # maybe_compile compiles on CUDA only unless handed a compiler
        jdcl.maybe_compile = lambda fn, **kw: fastpath.maybe_compile(fn, **kw, compiler=compiler)
    # dropout draws per-rank masks, which no single process can reproduce: off for this comparison
    smoke = unet.UNetConfig.smoke
    unet.UNetConfig.smoke = lambda *a: smoke(*a).replace(dropout=0.0, head_dropout=0.0)
    torch.manual_seed(D.rank_seed(123))  # ranks initialise differently, as in a run: begin_task syncs them
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 2, (64,), generator=g)
    none = torch.empty((0, 3, 8, 8), dtype=torch.uint8)
    task = TaskData(0, [0, 1], [0, 1], x, y, none)
    ctx = RunContext(SimpleNamespace(tick=lambda: None), torch.device("cpu"), 0, Path(out), Reporter(quiet=True))
    m = jdcl.JDCL(jdcl.JDCL.config_for("smoke", {"local_steps": 1, "global_steps": 2, "batch_size": 16,
                                                "cls_start_fraction": 0.5}), ctx)
    m.setup(ProtocolInfo("t", 4, (3, 8, 8), [[0, 1], [2, 3]], False))
    m.begin_task(task)
    m._train_local(task)
    saved = {"grads": {k: v.grad.clone() for k, v in m.net.named_parameters()}}
    if both:
        m.L = m.G = m.snapshot()
        second = TaskData(1, [2, 3], [0, 1, 2, 3], x, y + 2, none)
        ctx.task_index = 1
        m.begin_task(second)
        m.L = m.snapshot()
        m.replay = {"x": x, "y": torch.cat([y[:32], y[32:] + 2]), "old": torch.tensor([0, 1])}
        m._begin_global()
        m._train_global(second)
        saved["global_grads"] = {k: v.grad.clone() for k, v in m.net.named_parameters()}
        saved["adam_steps"] = {k: float(m.opt.state[v]["step"]) for k, v in m.net.named_parameters()}
    if D.is_main():
        torch.save({**saved, "compiled": wrapped, "params": {k: v.detach().clone() for k, v in m.net.named_parameters()},
                    "ema": m.ema.module.state_dict()}, Path(out) / f"world{world}{'-compiled' * compiled}{'-both' * both}.pt")
    del m  # its DDP wrapper holds the process group: free it first, as the runner does
    gc.collect()
    D.shutdown(wait_for_all=True)


def assert_same_step(one: dict, two: dict, grads: str = "grads") -> None:
    for k in one[grads]:  # the averaged gradient of 2 x 8 samples is the gradient of the 16
        torch.testing.assert_close(two[grads][k], one[grads][k], rtol=1e-4, atol=1e-7, msg=k)
    for part in ("params", "ema"):
        for k in one[part]:
            torch.testing.assert_close(two[part][k], one[part][k], rtol=1e-5, atol=1e-6, msg=f"{part} {k}")


def test_ddp_step_on_two_ranks_equals_one_process_step_on_the_global_batch(tmp_path):
    mp.spawn(_jdcl_steps, args=(1, 0, str(tmp_path)), nprocs=1)
    mp.spawn(_jdcl_steps, args=(2, free_port(), str(tmp_path)), nprocs=2)
    assert_same_step(torch.load(tmp_path / "world1.pt"), torch.load(tmp_path / "world2.pt"))


def test_compiled_ddp_steps_equal_eager_single_process_steps(tmp_path):
    """torch.compile around DDP (dynamo splits the graph at DDP's buckets) gives the eager single-process
    steps, local and global; the head, out of the first global step's loss, is not stepped by AdamW
    there (a compiled backward hands it zero gradients: optimiser_step clears them)."""
    mp.spawn(_jdcl_steps, args=(1, 0, str(tmp_path), False, True), nprocs=1)
    mp.spawn(_jdcl_steps, args=(2, free_port(), str(tmp_path), True, True), nprocs=2)
    one, two = torch.load(tmp_path / "world1-both.pt"), torch.load(tmp_path / "world2-compiled-both.pt")
    for k in one["grads"]:
        torch.testing.assert_close(two["grads"][k], one["grads"][k], rtol=1e-4, atol=1e-7, msg=k)
    assert_same_step(one, two, grads="global_grads")
    assert not one["compiled"] and two["compiled"].count("DistributedDataParallel") == 2  # the two stages
    assert two["adam_steps"] == one["adam_steps"]
    assert {k: v for k, v in two["adam_steps"].items() if k.startswith("head.")} == dict.fromkeys(
        [k for k in two["adam_steps"] if k.startswith("head.")], 1.0)
    assert two["adam_steps"]["out.2.weight"] == 2.0


# ---- (b), (c) runs launched by torchrun ---------------------------------------------------------

def torchrun(*args: str, out: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "jdcl_bench.cli", "run", *args, "--device", "cpu",
           "--out", str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


JDCL_SMOKE = ("--protocol", "synthetic-t2", "--method", "jdcl", "--preset", "smoke")


def test_two_process_jdcl_run_writes_one_complete_record(tmp_path):
    r = torchrun(*JDCL_SMOKE, out=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("JDCL on synthetic-t2 (seed 0): complete") == 1  # rank 0 reports, alone
    d = tmp_path / "runs/synthetic-t2/jdcl/smoke/seed0"
    m = json.loads((d / "metrics.json").read_text())
    assert m["complete"] and m["tasks_done"] == 2 and len(m["acc_matrix"]) == 2
    dist = {"world_size": 2, "backend": "gloo", "global_batch": 16, "per_rank_batch": 8}
    assert json.loads((d / "manifest.json").read_text())["distributed"] == dist
    assert json.loads((d / "config.json").read_text())["distributed"] == dist
    assert json.loads((d / "config.json").read_text())["method_config"]["batch_size"] == 16
    # replay was sampled in two halves and gathered: both ranks' images are in the counts
    counts = json.loads((d / "artefacts/replay_counts_task2.json").read_text())
    assert counts["sampled_old"] % 16 == 0 and counts["sampled_old"] > 0
    assert sorted(p.name for p in (d / "artefacts").iterdir()) == [
        "replay_counts_task2.json", "replay_task2.png", "samples_task1.png", "samples_task2.png"]

    # stopped inside the first task (time limit 0: at the first step) and resumed: the same result
    out = tmp_path / "resumed"
    r = torchrun(*JDCL_SMOKE, "--time-limit", "0", out=out)
    assert r.returncode == 0 and "time limit reached inside task 1" in r.stdout, r.stdout + r.stderr
    assert not (out / "runs/synthetic-t2/jdcl/smoke/seed0/metrics.json").exists()
    r = torchrun(*JDCL_SMOKE, out=out)
    assert r.returncode == 0 and "resuming" in r.stdout, r.stdout + r.stderr
    again = json.loads((out / "runs/synthetic-t2/jdcl/smoke/seed0/metrics.json").read_text())
    for k in ("acc_matrix", "seen_acc", "final_acc"):
        assert again[k] == m[k], k


def test_baseline_refuses_a_two_process_run(tmp_path):
    r = torchrun("--protocol", "synthetic-t2", "--method", "dgr", "--preset", "smoke", out=tmp_path, timeout=120)
    assert r.returncode != 0
    assert "method 'dgr' does not support distributed (DDP) runs yet" in r.stdout + r.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was written
