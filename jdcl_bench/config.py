"""Dataclass configs with typed ``key=value`` overrides.

A method declares ``Config`` (a dataclass, possibly nested) and ``presets`` (name -> dict of
overrides). ``--set lr=1e-3 --set model.channels=64`` is parsed against the dataclass field
types, so a typo or a wrong type fails before any work starts.

Values are then checked by :func:`validate`: a config dataclass may define ``validate(self)``
returning ``{field: problem}`` for values out of range (``{"width": "must be >= 1"}``), and the
ranges that follow from a field's name hold in every config (``_NAME_RULES``: batch sizes >= 1, step
counts and loss weights >= 0, decays and thresholds in [0, 1], ...), so ``--set
classifier.batch_size=0`` is a ConfigError naming the key, not a traceback.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    pass


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    if typ is Any:
        return value
    if origin is typing.Union or origin is getattr(types, "UnionType", None):
        args = typing.get_args(typ)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: cannot read {value!r} as {typ}")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ in (int, float, str):
        if isinstance(value, bool) and typ is not bool:
            raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}")
        try:
            out = typ(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}") from None
        if typ is int and isinstance(value, float) and value != out:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return out
    if origin in (tuple, list):
        if isinstance(value, str):
            try:
                value = json.loads(value if value.startswith("[") else f"[{value}]")
            except json.JSONDecodeError:
                raise ConfigError(f"{key}: expected a list like [1,2,3], got {value!r}") from None
        args = typing.get_args(typ)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or typ is dict:
        if isinstance(value, str):
            value = json.loads(value)
        return dict(value)
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy of dataclass ``cfg`` with dotted-key overrides applied and type-checked."""
    cfg = dataclasses.replace(cfg)
    for key, value in overrides.items():
        obj, parts = cfg, key.split(".")
        for i, part in enumerate(parts):
            names = {f.name for f in dataclasses.fields(obj)}
            if part not in names:
                where = ".".join(parts[:i]) or type(obj).__name__
                raise ConfigError(f"unknown config key {key!r} ({part!r} is not a field of {where}); "
                                  f"fields: {', '.join(sorted(names))}")
            if i == len(parts) - 1:
                setattr(obj, part, _coerce(value, _hints(type(obj))[part], key))
            else:
                child = dataclasses.replace(getattr(obj, part))  # copy so the default is never mutated
                setattr(obj, part, child)
                obj = child
    return cfg


def parse_set(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def settings_overrides(settings_file: str | Path | None, sets) -> dict[str, str]:
    """A settings file's values (``load_settings_file``), then ``--set`` items over them: the overrides
    of ``jdcl-bench run``, ``sweep`` and ``bench --loop``."""
    return {**(load_settings_file(settings_file) if settings_file else {}), **parse_set(sets)}


def read_toml(path: Path, error: type[Exception], what: str) -> dict:
    """A TOML file's table; a missing file or bad TOML raises ``error`` naming ``what``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{what}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what}: not valid TOML ({exc})") from None


def load_settings_file(path: str | Path) -> dict[str, str]:
    """A TOML file of method settings as ``--set`` overrides: top-level keys are config fields,
    tables are nested configs (``[classifier]`` + ``lr = 0.1`` is ``classifier.lr=0.1``).

    Values are turned into the text ``--set`` would pass (booleans as true/false, lists as JSON), so
    they go through the same typed checks and the same settings name the same run directory
    whichever way they were given."""
    path = Path(path)
    data = read_toml(path, ConfigError, f"--config {path}")
    out: dict[str, str] = {}

    def walk(table: dict, prefix: str) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, bool):
                out[prefix + key] = "true" if value else "false"
            elif isinstance(value, (list, tuple)):
                out[prefix + key] = json.dumps(value)
            elif isinstance(value, (int, float, str)):
                out[prefix + key] = str(value)
            else:
                raise ConfigError(f"--config {path}: {prefix + key} = {value!r} is not a number, string, "
                                  f"boolean or list")

    walk(data, "")
    return out


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_json_dict(cfg: Any) -> dict:
    """``cfg`` as a record's config.json holds it (tuples as lists): what a record is compared with."""
    return json.loads(json.dumps(to_dict(cfg)))


def _is_batch_field(name: str) -> bool:
    return name == "batch_size" or name.endswith("_batch_size") or name.endswith("_batch") or name == "batch"


# Ranges that follow from a field's name, checked in every method's config (a method adds its own with
# a ``validate`` hook): counts of steps, epochs, images and weights of loss terms cannot be negative,
# learning rates neither, a sampler needs at least one step, decays, thresholds and fractions are
# probabilities. (name test, value test, what is wrong)
_NAME_RULES = [
    (_is_batch_field, lambda v: v >= 1, "a batch size must be >= 1"),
    (lambda n: n.endswith("ddim_steps") or n == "timesteps", lambda v: v >= 1, "a sampler needs >= 1 step"),
    (lambda n: n == "steps" or n.endswith("_steps") or n.startswith("steps_") or n == "epochs"
     or n.endswith("_epochs") or n in ("buffer_size", "replay_per_class", "replay_per_task", "sup_per_class"),
     lambda v: v >= 0, "a count must be >= 0"),
    (lambda n: n.endswith("_weight") or n == "weight_decay", lambda v: v >= 0, "a loss weight must be >= 0"),
    (lambda n: n == "lr" or n.endswith("_lr") or n in ("lr_first", "lr_later"), lambda v: v >= 0,
     "a learning rate must be >= 0"),
    (lambda n: n.endswith("ema_decay") or n.endswith("_threshold") or n.endswith("_fraction") or n == "momentum",
     lambda v: 0 <= v <= 1, "must be within [0, 1]"),
    (lambda n: n.endswith("_crop_scale"), lambda v: 0 < v <= 1, "a crop scale must be within (0, 1]"),
]


def _name_rule_problem(name: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    for applies, ok, problem in _NAME_RULES:
        if applies(name) and not ok(value):
            return problem
    return None


def validate(cfg: Any, prefix: str = "") -> None:
    """Raise ConfigError naming every value of ``cfg`` (nested dataclasses included) out of range."""
    problems: list[str] = []

    def walk(obj: Any, path: str) -> None:
        hook = getattr(obj, "validate", None)
        own = (hook() or {}) if callable(hook) else {}  # the config's own words win over the name rules
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{path}{f.name}.")
            elif f.name not in own and (problem := _name_rule_problem(f.name, value)) is not None:
                problems.append(f"{path}{f.name} = {value!r}: {problem}")
        for key, problem in own.items():
            problems.append(f"{path}{key} = {getattr(obj, key, '?')!r}: {problem}")

    walk(cfg, prefix)
    if problems:
        raise ConfigError("config value(s) out of range: " + "; ".join(problems))
