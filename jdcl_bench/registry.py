"""One registry type for everything that can be plugged in (methods, protocols).

Entries are discovered through Python entry points, built-ins included: the suite's own
methods are declared in pyproject.toml under ``jdcl_bench.methods`` exactly as a third-party
package would declare its own. Loading is lazy, so a plugin that fails to import only breaks
itself: ``list`` still shows it (with the error), and other methods still run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable


class RegistryError(LookupError):
    pass


BUILTIN_DIST = "jdcl-bench"


class PluginNameCollision(UserWarning):
    """A plugin registers a name that is already taken; its entry is ignored."""


def _dist_name(ep) -> str:
    return ep.dist.name if getattr(ep, "dist", None) is not None else "unknown"


def warn_name_collision(kind: str, name: str, ignored: str, kept: str) -> None:
    import warnings

    whose = "a built-in" if kept == BUILTIN_DIST else f"already registered by {kept}"
    warnings.warn(f"{kind} {name!r} from {ignored} is ignored: {name!r} is {whose} {kind}; rename it in "
                  f"{ignored}'s entry points (group jdcl_bench.{kind}s) to use it", PluginNameCollision,
                  stacklevel=3)


@dataclass
class Entry:
    name: str
    source: str  # distribution name ("jdcl-bench", a plugin's name) or "local"
    _load: Callable[[], Any] = field(repr=False)
    _obj: Any = field(default=None, repr=False)
    error: str | None = None
    _value: str = field(default="", repr=False)  # the entry point's "module:attr", to tell duplicates apart

    def load(self) -> Any:
        if self._obj is None:
            try:
                self._obj = self._load()
            except Exception as exc:  # a broken plugin must not take the suite down with it
                self.error = f"{type(exc).__name__}: {exc}"
                raise RegistryError(f"{self.name!r} (from {self.source}) failed to load: {self.error}") from exc
        return self._obj


class Registry:
    """Name -> lazily loaded object, filled from an entry-point group plus explicit registrations."""

    def __init__(self, kind: str, group: str):
        self.kind = kind
        self.group = group
        self._entries: dict[str, Entry] | None = None
        self._local: dict[str, Entry] = {}

    def _discover(self) -> dict[str, Entry]:
        if self._entries is None:
            found: dict[str, Entry] = {}
            # the suite's own entries first: a plugin cannot replace a built-in by reusing its name
            eps = sorted(entry_points(group=self.group), key=lambda ep: _dist_name(ep) != BUILTIN_DIST)
            for ep in eps:
                dist = _dist_name(ep)
                if ep.name in found:
                    if found[ep.name].source != dist or ep.value != found[ep.name]._value:
                        warn_name_collision(self.kind, ep.name, dist, found[ep.name].source)
                    continue
                entry = Entry(ep.name, dist, ep.load)
                entry._value = ep.value
                found[ep.name] = entry
            self._entries = found
        return {**self._entries, **self._local}

    def register(self, name: str, obj: Any, source: str = "local") -> None:
        """Register an object directly (tests, notebooks)."""
        self._local[name] = Entry(name, source, lambda: obj, obj)

    def unregister(self, name: str) -> None:
        self._local.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._discover())

    def entries(self) -> list[Entry]:
        entries = self._discover()
        return [entries[n] for n in sorted(entries)]

    def entry(self, name: str) -> Entry:
        entries = self._discover()
        if name not in entries:
            known = ", ".join(sorted(entries)) or "(none)"
            raise RegistryError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}")
        return entries[name]

    def get(self, name: str) -> Any:
        return self.entry(name).load()


METHODS = Registry("method", "jdcl_bench.methods")
# A protocol plugin's entry point names a folder of TOML files (or one file, or a function returning
# either); jdcl_bench.protocol reads the files, so one entry can register many protocols.
PROTOCOL_SOURCES = Registry("protocol", "jdcl_bench.protocols")
