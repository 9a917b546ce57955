"""Conformance kit for method authors: ``check_method("my-method")`` inside your own tests.

It runs the method for two tasks on the tiny synthetic protocols (on CPU) and checks that
1. the run completes and reports sane metrics;
2. ``state_dict``/``load_state_dict`` round-trips: a fresh instance loaded from the final
   checkpoint predicts exactly what the trained one did;
3. resume is exact: a run that crashes part-way (after a task, and inside a task for methods
   that checkpoint there) and is started again ends with the same metrics as an uninterrupted run;
4. unlabelled images never leak their labels: permuting the hidden labels of the unlabelled
   training images (keeping the labelled set and the task split) changes nothing the method does.
"""
from __future__ import annotations

import contextlib
import copy
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .records import load_checkpoint, read_json
from .runner import RunConfig, Runner


class ConformanceError(AssertionError):
    pass


class _Crash(Exception):
    pass


class _CrashingRunner(Runner):
    """Simulates a kill: raises at the n-th tick without saving anything more."""

    def __init__(self, *a, crash_at_tick: int, **kw):
        super().__init__(*a, **kw)
        self.crash_at_tick, self.ticks = crash_at_tick, 0

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks == self.crash_at_tick:
            raise _Crash()
        super().tick()


def _metrics(run_dir: Path) -> dict:
    m = read_json(run_dir / "metrics.json")
    # a method's replay diagnostics (ctx.replay_diagnostics) must resume exactly too
    return {k: m[k] for k in ("acc_matrix", "seen_acc", "final_acc", "forgetting", "diagnostics") if k in m}


def _protocol_with_index_file(root: Path, semi: bool) -> tuple[str, object]:
    """The synthetic protocol, with its labelled subset frozen into an index file."""
    from .data.datasets import load_dataset
    from .protocol import get_protocol
    from .splits import labelled_indices

    proto = get_protocol("synthetic-semi-t2" if semi else "synthetic-t2")
    ds = load_dataset("synthetic", synthetic=proto.synthetic)
    idx, _ = labelled_indices(proto, ds.train_y)
    np.savetxt(root / "labelled.txt", idx, fmt="%d")
    np.savetxt(root / "labelled_cls.txt", ds.train_y[idx], fmt="%d")
    syn = ", ".join(f"{k} = {v}" for k, v in proto.synthetic.items())
    regime = 'regime = "index_file"\nindex_file = "labelled.txt"' if semi else 'regime = "full"'
    path = root / ("conformance-semi.toml" if semi else "conformance.toml")
    path.write_text(f'description = "conformance"\n[dataset]\nname = "synthetic"\nsynthetic = {{ {syn} }}\n'
                    f"[tasks]\nnum_tasks = 2\n[labels]\n{regime}\n")
    return str(path), ds


def _permute_unlabelled_labels(ds, labelled: np.ndarray, task_classes: list[list[int]], seed: int = 1):
    ds = copy.copy(ds)
    y = ds.train_y.copy()
    rng = np.random.default_rng(seed)
    hidden = np.setdiff1d(np.arange(len(y)), labelled)
    for classes in task_classes:
        sel = hidden[np.isin(y[hidden], classes)]
        y[sel] = rng.permutation(y[sel])
    if np.array_equal(y, ds.train_y):
        raise ConformanceError("label permutation was a no-op; the leak check would prove nothing")
    ds.train_y = y
    return ds


def check_method(method: str, preset: str = "smoke", overrides: dict | None = None, semi: bool | None = None,
                 workdir: str | Path | None = None) -> dict:
    """Run the conformance checks; raise ``ConformanceError`` naming the first that fails."""
    from .progress import Reporter
    from .registry import METHODS

    cls = METHODS.get(method)
    if preset != "paper" and preset not in (cls.presets or {}):
        raise ConformanceError(
            f"method {method!r} has no preset {preset!r} (presets: {', '.join(['paper', *sorted(cls.presets or {})])}). "
            f"check_method runs preset='smoke' unless told otherwise: declare presets = {{'smoke': {{...}}}} on the "
            "method with a configuration that trains two tiny tasks in seconds on a CPU, or pass preset=...")
    semi = cls.uses_unlabelled if semi is None else semi
    tmp = tempfile.TemporaryDirectory() if workdir is None else None
    root = Path(workdir or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    quiet = Reporter(quiet=True)
    try:
        proto_path, ds = _protocol_with_index_file(root, semi)
        base = dict(protocol=proto_path, method=method, preset=preset, overrides=dict(overrides or {}),
                    device="cpu", seed=0)

        # 1. uninterrupted reference run
        ref_runner = Runner(RunConfig(out=str(root / "ref"), **base), quiet, dataset=ds)
        ref_dir = ref_runner.run()
        ref = _metrics(ref_dir)
        acc = np.asarray(ref["acc_matrix"])
        if acc.shape != (2, 2) or not np.all((acc >= 0) & (acc <= 100)):
            raise ConformanceError(f"accuracy matrix has the wrong shape or range: {ref['acc_matrix']}")

        # 2. state round trip: fresh instance + checkpoint predicts the same
        state = load_checkpoint(ref_dir / "checkpoint.pt")  # weights_only=True, as the runner loads it
        fresh = Runner(RunConfig(out=str(root / "fresh"), **base), quiet, dataset=ds)
        from .data.augment import images_to_tensor
        test_x = images_to_tensor(ds.test_x)
        fresh_method = _build(fresh, cls, base, ds)
        fresh_method.load_state_dict(state["method"])
        with torch.no_grad():
            a, b = ref_runner.method.predict(test_x), fresh_method.predict(test_x)
        if not torch.allclose(a, b, atol=1e-5):
            raise ConformanceError("state_dict round trip changed predictions "
                                   f"(max diff {float((a - b).abs().max()):.3g})")

        # 3. resume equivalence: crash after some ticks (inside task 2 if possible), then resume
        total_ticks = _count_ticks(RunConfig(out=str(root / "count"), **base), ds)
        crash_points = sorted({max(1, total_ticks // 4), max(1, 3 * total_ticks // 4)})
        for n, crash in enumerate(crash_points):
            cfg = RunConfig(out=str(root / f"resume{n}"), checkpoint_every_s=0.0, **base)
            try:
                _CrashingRunner(cfg, quiet, dataset=ds, crash_at_tick=crash).run()
            except _Crash:
                pass
            else:
                raise ConformanceError(f"method never reached tick {crash} of {total_ticks}")
            got = _metrics(Runner(cfg, quiet, dataset=ds).run())
            if got != ref:
                raise ConformanceError(f"resumed run (crash at tick {crash}/{total_ticks}) differs from the "
                                       f"uninterrupted run: {got} vs {ref}")

        # 4. unlabelled labels must not leak
        if semi:
            from .protocol import get_protocol
            from .splits import labelled_indices

            proto = get_protocol(proto_path)
            lab, _ = labelled_indices(proto, ds.train_y)
            leaked = _permute_unlabelled_labels(ds, lab, proto.tasks(len(ds.classes)))
            got = _metrics(Runner(RunConfig(out=str(root / "leak"), **base), quiet, dataset=leaked).run())
            if got != ref:
                raise ConformanceError("changing the hidden labels of unlabelled images changed the results: "
                                       "the method (or something it calls) reads labels it must not see")
        return {"metrics": ref, "ticks": total_ticks, "crash_points": crash_points, "semi": semi}
    finally:
        if tmp is not None:
            tmp.cleanup()


def _build(runner: Runner, cls, base: dict, ds):
    from .methods.base import ProtocolInfo
    from .protocol import get_protocol
    from .runner import RunContext, resolve_device

    proto = get_protocol(base["protocol"])
    mcfg = cls.config_for(base["preset"], base["overrides"])
    runner.device = resolve_device("cpu")
    runner.run_dir = Path(runner.cfg.out)
    ctx = RunContext(runner, runner.device, 0, runner.run_dir, runner.reporter)
    m = cls(mcfg, ctx)
    shape = (ds.train_x.shape[3], ds.train_x.shape[1], ds.train_x.shape[2])
    m.setup(ProtocolInfo(proto.name, len(ds.classes), shape, proto.tasks(len(ds.classes)), proto.semi_supervised,
                         proto.hflip))
    runner.method = m
    return m


def _count_ticks(cfg: RunConfig, ds) -> int:
    class Counting(Runner):
        ticks = 0

        def tick(self):
            Counting.ticks += 1

    Counting(cfg, __import__("jdcl_bench.progress", fromlist=["Reporter"]).Reporter(quiet=True), dataset=ds).run()
    return Counting.ticks


@contextlib.contextmanager
def traced_compiles(monkeypatch, module) -> Iterator[list[tuple[bool, bool]]]:
    """Dynamo traces on CPU as it does on CUDA: inside the block, ``module.maybe_compile`` compiles
    (with the keywords the method passes: ``dynamic``) through an eager backend that stands in for
    inductor and appends, per graph it is handed, (gradients on while traced, a symbolic size among
    its inputs) to the list it yields. Dynamo's caches are reset before and after. For tests of which
    graphs a method makes: a symbolic batch size served every later step of JDCL's semi-supervised
    runs, 30 % slower (docs/jdcl.md)."""
    import torch._dynamo

    from . import fastpath

    graphs: list[tuple[bool, bool]] = []

    def backend(gm, example_inputs):
        graphs.append((torch.is_grad_enabled(), any(isinstance(s, torch.SymInt) for x in example_inputs
                                                    for s in (x.shape if isinstance(x, torch.Tensor) else [x]))))
        return gm.forward

    def compiler(f, mode=None, dynamic=None):
        return torch.compile(f, backend=backend, dynamic=dynamic)

    monkeypatch.setattr(module, "maybe_compile", lambda fn, **kw: fastpath.maybe_compile(fn, **kw, compiler=compiler))
    torch._dynamo.reset()
    try:
        yield graphs
    finally:
        torch._dynamo.reset()
