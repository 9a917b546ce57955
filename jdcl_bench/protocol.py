"""Protocols: declarative TOML files describing a continual-learning benchmark.

A protocol file says which dataset, how its classes are grouped into tasks, which training
labels the learner may see, and which metrics to report. Built-in protocols live in the
repository's ``protocols/`` folder (installed as ``jdcl_bench.protocols``); a user's own file
is accepted by path; other packages add theirs through the ``jdcl_bench.protocols``
entry-point group (the entry point loads to a path of a TOML file or of a folder of them).

Schema (every table but [dataset] and [tasks] is optional)::

    description = "one line"
    [dataset]   name = "cifar10"            # cifar10 | cifar100 | imagenet100 | digits | synthetic
                image_size = 32             # optional resize
                classes = ["airplane", ...] # optional class names (image-folder layouts)
                [dataset.synthetic] ...     # parameters of the synthetic generator
    [tasks]     num_tasks = 5               # equal consecutive split of class_order, or
                classes = [[0, 1], [2, 3]]  # explicit class lists; covering some of the dataset's
                                            # classes makes a benchmark of those: the run is tested
                                            # on their test images only
                class_order = [...]         # optional; natural order when absent
    [labels]    regime = "full" | "per_class" | "fraction" | "index_file"
                per_class = 40 | fraction = 0.1 | index_file = "subsets/..."
    [eval]      metrics = ["final_acc", ...]
    [augment]   hflip = true                # may augmentation mirror images left-right? Default:
                                            # true, but false for digits (a mirrored digit is
                                            # another symbol, so the flip would corrupt labels)

Every table is strict: an unknown key or a value of the wrong type is a ProtocolError naming it.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from .config import read_toml
from .data.datasets import KNOWN_DATASETS  # one list: the loader's
from .registry import RegistryError

KNOWN_METRICS = ("final_acc", "avg_acc", "avg_inc_acc", "forgetting", "seen_acc")
# datasets whose images change class (or stop being one) when mirrored: no horizontal flips by default
NO_HFLIP_DATASETS = ("digits",)
REGIMES = ("full", "per_class", "fraction", "index_file")


class ProtocolError(ValueError):
    pass


@dataclass
class Protocol:
    name: str
    description: str
    dataset: str
    image_size: int | None = None
    class_names: list[str] | None = None
    synthetic: dict | None = None
    num_tasks: int | None = None
    task_classes: list[list[int]] | None = None
    class_order: list[int] | None = None
    label_regime: str = "full"
    per_class: int | None = None
    fraction: float | None = None
    index_file: str | None = None
    metrics: list[str] = field(default_factory=lambda: ["final_acc", "avg_acc", "avg_inc_acc", "forgetting"])
    hflip: bool = True  # whether augmentations may mirror images left-right
    source: str = ""  # where the file came from (path or "jdcl-bench")
    path: str = ""

    @property
    def semi_supervised(self) -> bool:
        return self.label_regime != "full"

    def tasks(self, num_classes: int) -> list[list[int]]:
        """Class ids of each task, once the dataset's class count is known."""
        if self.task_classes is not None:
            flat = [c for t in self.task_classes for c in t]
            if max(flat) >= num_classes:
                raise ProtocolError(f"protocol {self.name!r}: [tasks].classes uses class {max(flat)} "
                                    f"but dataset {self.dataset!r} has {num_classes} classes")
            return [list(t) for t in self.task_classes]
        order = self.class_order or list(range(num_classes))
        if sorted(order) != list(range(num_classes)):
            raise ProtocolError(f"protocol {self.name!r}: [tasks].class_order must be a permutation of "
                                f"0..{num_classes - 1} for dataset {self.dataset!r}")
        if num_classes % self.num_tasks:
            raise ProtocolError(f"protocol {self.name!r}: {num_classes} classes do not split into "
                                f"{self.num_tasks} equal tasks; give [tasks].classes explicitly")
        k = num_classes // self.num_tasks
        return [order[i * k:(i + 1) * k] for i in range(self.num_tasks)]

    def resolve_index_file(self) -> Path:
        p = Path(self.index_file)
        if p.is_absolute():
            return p
        base = Path(self.path).parent if self.path else Path(str(resources.files("jdcl_bench.protocols")))
        return base / p

    def to_dict(self) -> dict:
        return asdict(self)

    def spec(self) -> dict:
        """What the protocol says, without where its file was found (``source``, ``path``)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("source", "path")}

    def content_hash(self) -> str:
        """sha256 over the parsed protocol (not its spelling in the file, not its path) and the bytes
        of its index file, which a relative ``index_file`` finds next to the protocol file."""
        h = hashlib.sha256(json.dumps(self.spec(), sort_keys=True).encode())
        if self.index_file is not None:
            f = self.resolve_index_file()
            h.update(f.read_bytes() if f.is_file() else f"missing:{f.name}".encode())
        return h.hexdigest()

    @property
    def run_name(self) -> str:
        """The protocol's name in run directories and records. A registered protocol (built-in or a
        plugin's) is its name; a user's file is its name plus a short hash of its content, so two
        different files called my.toml never share a run, and my.toml, ./my.toml and /abs/my.toml
        (the same file) always do."""
        if self.source != "local":
            return self.name
        safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", self.name).lstrip(".") or "protocol"
        return f"{safe}-{self.content_hash()[:8]}"


def _require(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ProtocolError(f"{where}: {msg}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # TOML's true is not a count


def _table(data: dict, key: str, where: str, allowed: tuple[str, ...], required: bool = False,
           example: str = "") -> dict:
    """``data[key]`` as a table whose keys are all in ``allowed``; names the culprit otherwise."""
    if key not in data:
        _require(not required, where, f"missing table [{key}]{f' ({example})' if example else ''}")
        return {}
    table = data[key]
    _require(isinstance(table, dict), where,
             f"[{key}] must be a table (a [{key}] header with key = value lines{f', e.g. {example}' if example else ''}), "
             f"got {key} = {table!r}")
    unknown = sorted(set(table) - set(allowed))
    _require(not unknown, where, f"[{key}] has unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    return table


DATASET_KEYS = ("name", "image_size", "classes", "synthetic")
TASKS_KEYS = ("num_tasks", "classes", "class_order")
LABELS_KEYS = ("regime", "per_class", "fraction", "index_file")
EVAL_KEYS = ("metrics",)
AUGMENT_KEYS = ("hflip",)
SYNTHETIC_KEYS = ("num_classes", "train_per_class", "test_per_class", "image_size", "channels", "seed")


def parse_protocol(data: dict, name: str, where: str) -> Protocol:
    """Validate a parsed TOML document; every error names the field and the problem.

    Strict: an unknown key in any table, or a value of the wrong type, is an error naming it
    (with the valid keys), never silently ignored."""
    known_top = {"description", "dataset", "tasks", "labels", "eval", "augment", "name"}
    unknown = set(data) - known_top
    _require(not unknown, where, f"unknown top-level field(s) {sorted(unknown)}; allowed: {sorted(known_top)}")
    for key in ("description", "name"):
        _require(key not in data or isinstance(data[key], str), where, f"{key} must be a string, got {data.get(key)!r}")
    ds = _table(data, "dataset", where, DATASET_KEYS, required=True, example='with at least name = "cifar10" or similar')
    _require(isinstance(ds.get("name"), str), where, "[dataset].name must be a string")
    _require(ds["name"] in KNOWN_DATASETS, where,
             f"[dataset].name = {ds['name']!r} is not a known dataset; known: {', '.join(KNOWN_DATASETS)}")
    image_size = ds.get("image_size")
    _require(image_size is None or (_is_int(image_size) and image_size > 0), where,
             "[dataset].image_size must be a positive integer")
    classes = ds.get("classes")
    _require(classes is None or (isinstance(classes, list) and all(isinstance(c, str) for c in classes)), where,
             "[dataset].classes must be a list of class-name strings")
    _require(classes is None or len(set(classes)) == len(classes), where, "[dataset].classes names a class twice")
    synthetic = ds.get("synthetic")
    if synthetic is not None:
        _require(isinstance(synthetic, dict), where, "[dataset.synthetic] must be a table of generator parameters")
        unknown = sorted(set(synthetic) - set(SYNTHETIC_KEYS))
        _require(not unknown, where,
                 f"[dataset.synthetic] has unknown field(s) {unknown}; allowed: {sorted(SYNTHETIC_KEYS)}")
        bad = sorted(k for k, v in synthetic.items() if not _is_int(v))
        _require(not bad, where, f"[dataset.synthetic] {', '.join(bad)} must be integer(s)")
        _require(ds["name"] == "synthetic", where, "[dataset.synthetic] applies to name = \"synthetic\" only")

    tasks = _table(data, "tasks", where, TASKS_KEYS, required=True, example="num_tasks = N, or classes = [[...], ...]")
    num_tasks, task_classes = tasks.get("num_tasks"), tasks.get("classes")
    _require((num_tasks is None) != (task_classes is None), where,
             "[tasks] needs exactly one of num_tasks or classes")
    if num_tasks is not None:
        _require(_is_int(num_tasks) and num_tasks >= 1, where, "[tasks].num_tasks must be an integer >= 1")
    if task_classes is not None:
        ok = isinstance(task_classes, list) and task_classes and all(
            isinstance(t, list) and t and all(_is_int(c) and c >= 0 for c in t) for t in task_classes)
        _require(ok, where, "[tasks].classes must be a non-empty list of non-empty lists of class ids")
        flat = [c for t in task_classes for c in t]
        _require(len(flat) == len(set(flat)), where, "[tasks].classes lists a class in more than one task")
    order = tasks.get("class_order")
    _require(order is None or (isinstance(order, list) and all(_is_int(c) for c in order)), where,
             "[tasks].class_order must be a list of class ids")
    _require(order is None or task_classes is None, where,
             "[tasks].class_order goes with num_tasks; with explicit classes, list them in the order wanted")

    labels = _table(data, "labels", where, LABELS_KEYS, example='regime = "full"')
    regime = labels.get("regime", "full")
    _require(regime in REGIMES, where, f"[labels].regime = {regime!r}; must be one of {', '.join(REGIMES)}")
    per_class, fraction, index_file = labels.get("per_class"), labels.get("fraction"), labels.get("index_file")
    uses = {"full": (), "per_class": ("per_class",), "fraction": ("fraction",),
            "index_file": ("index_file", "per_class")}[regime]
    extra = sorted(k for k in ("per_class", "fraction", "index_file") if k in labels and k not in uses)
    _require(not extra, where, f"[labels] {', '.join(extra)} has no meaning with regime = {regime!r} "
                               f"(it uses {', '.join(uses) or 'no other field'})")
    if regime == "per_class" or (regime == "index_file" and per_class is not None):
        _require(_is_int(per_class) and per_class >= 1, where, "[labels].per_class must be an integer >= 1")
    if regime == "fraction":
        _require(isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 < fraction <= 1,
                 where, "[labels].fraction must be a number in (0, 1]")
    if regime == "index_file":
        _require(isinstance(index_file, str), where, "[labels].index_file must be a path string")

    ev = _table(data, "eval", where, EVAL_KEYS, example='metrics = ["final_acc"]')
    metrics = ev.get("metrics", ["final_acc", "avg_acc", "avg_inc_acc", "forgetting"])
    _require(isinstance(metrics, list) and all(isinstance(m, str) for m in metrics), where,
             f"[eval].metrics must be a list of metric names, e.g. metrics = [\"final_acc\"], got {metrics!r}")
    bad = [m for m in metrics if m not in KNOWN_METRICS]
    _require(not bad, where, f"[eval].metrics has unknown metric(s) {bad}; known: {', '.join(KNOWN_METRICS)}")

    aug = _table(data, "augment", where, AUGMENT_KEYS, example="hflip = true or false")
    hflip = aug.get("hflip", ds["name"] not in NO_HFLIP_DATASETS)
    _require(isinstance(hflip, bool), where, f"[augment].hflip must be true or false, got {hflip!r}")

    return Protocol(
        name=data.get("name", name), description=data.get("description", ""), dataset=ds["name"],
        image_size=image_size, class_names=classes, synthetic=ds.get("synthetic"),
        num_tasks=num_tasks if num_tasks is not None else len(task_classes), task_classes=task_classes,
        class_order=order, label_regime=regime, per_class=per_class,
        fraction=float(fraction) if fraction is not None else None, index_file=index_file, metrics=list(metrics),
        hflip=hflip,
    )


def load_protocol_file(path: str | Path, source: str = "local") -> Protocol:
    path = Path(path)
    data = read_toml(path, ProtocolError, f"protocol file {path}")
    proto = parse_protocol(data, path.stem, str(path))
    proto.source, proto.path = source, str(path)
    return proto


def _protocol_files() -> tuple[dict[str, tuple[Path, str]], list[tuple[str, str, str]]]:
    """name -> (file, source) for built-in and plugin protocols, and the plugin entries that failed
    to load as (entry name, source, error): listed, never hiding the others."""
    from .registry import PROTOCOL_SOURCES, RegistryError, warn_name_collision

    found: dict[str, tuple[Path, str]] = {}
    broken: list[tuple[str, str, str]] = []
    builtin = Path(str(resources.files("jdcl_bench.protocols")))
    for f in sorted(builtin.glob("*.toml")):
        found[f.stem] = (f, "jdcl-bench")
    for entry in PROTOCOL_SOURCES.entries():
        try:
            obj = entry.load()
            target = Path(obj() if callable(obj) else obj)
        except RegistryError:
            broken.append((entry.name, entry.source, entry.error or "failed to load"))
            continue
        except Exception as exc:  # the function it names raised
            broken.append((entry.name, entry.source, f"{type(exc).__name__}: {exc}"))
            continue
        for f in ([target] if target.is_file() else sorted(target.glob("*.toml"))):
            if f.stem in found:
                if found[f.stem][0].resolve() != f.resolve():
                    warn_name_collision("protocol", f.stem, entry.source, found[f.stem][1])
                continue
            found[f.stem] = (f, entry.source)
    return found, broken


def list_protocols() -> list[Protocol]:
    """Every registered protocol; a broken file or plugin is listed with its error."""
    files, broken = _protocol_files()
    out = []
    for name, (f, source) in sorted(files.items()):
        try:
            out.append(load_protocol_file(f, source))
        except ProtocolError as exc:
            out.append(Protocol(name=name, description=f"BROKEN: {exc}", dataset="?", num_tasks=0, source=source))
    for name, source, error in broken:
        out.append(Protocol(name=f"{name} (plugin entry)", description=f"BROKEN: failed to load: {error}",
                            dataset="?", num_tasks=0, source=source))
    return out


def _is_file(name_or_path: str) -> bool:
    return name_or_path.endswith(".toml") or Path(name_or_path).is_file()


def protocol_stem(name_or_path: str) -> str:
    """A protocol as file names show it: a registered name whole (``cifar10-semi-0.8pct``, whose dot
    is not a suffix), a protocol file by its stem."""
    return Path(name_or_path).stem if _is_file(name_or_path) else name_or_path


def get_protocol(name_or_path: str) -> Protocol:
    """A registered protocol by name, or a user's TOML file by path."""
    if _is_file(name_or_path):
        return load_protocol_file(name_or_path, "local")
    files, broken = _protocol_files()
    if name_or_path not in files:
        hint = "".join(f"; plugin entry {n!r} ({src}) failed to load: {err}" for n, src, err in broken)
        raise RegistryError(f"unknown protocol {name_or_path!r}; known protocols: {', '.join(sorted(files))} "
                            f"(or pass a path to a .toml protocol file){hint}")
    f, source = files[name_or_path]
    return load_protocol_file(f, source)
