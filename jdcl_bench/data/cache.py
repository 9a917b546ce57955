"""Decoded datasets cached as uncompressed ``.npz`` files, keyed by their sources."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .core import CACHE_FORMAT_VERSION, ArrayDataset, content_hash

# ---- cache ------------------------------------------------------------------------------------

def _cache_path(cache_dir: Path, name: str, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps({"format": CACHE_FORMAT_VERSION, **key}, sort_keys=True).encode())
    return cache_dir / f"{name}-{key['loader']}-{digest.hexdigest()[:24]}.npz"


def _cache_get(cache_dir: Path, name: str, key: dict) -> ArrayDataset | None:
    path = _cache_path(cache_dir, name, key)
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in ("train_x", "train_y", "test_x", "test_y")}
            classes = [str(c) for c in z["classes"]]
            identity = json.loads(str(z["identity"]))
    except Exception as exc:  # a truncated or foreign file: rebuild rather than fail
        warnings.warn(f"ignoring unreadable cache file {path}: {exc}")
        return None
    # The stored hash doubles as an integrity check of the cache file itself.
    if content_hash(arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"]) != \
            identity.get("content_hash"):
        warnings.warn(f"ignoring cache file {path}: its arrays do not match their recorded hash")
        return None
    return ArrayDataset(name, arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"],
                        classes, identity)


def _cache_put(cache_dir: Path, name: str, key: dict, ds: ArrayDataset) -> None:
    path = _cache_path(cache_dir, name, key)
    tmp = None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # tmp file in the same folder + os.replace: readers never see a half-written cache file
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=path.stem + ".", suffix=".tmp")
        from ..records import default_file_mode

        os.fchmod(fd, default_file_mode())  # the user's umask, not mkstemp's 0600: caches may be shared
        with os.fdopen(fd, "wb") as f:
            np.savez(f, train_x=ds.train_x, train_y=ds.train_y, test_x=ds.test_x, test_y=ds.test_y,
                     classes=np.array(ds.classes, dtype=str), identity=np.array(json.dumps(ds.identity)))
        os.replace(tmp, path)
    except OSError as exc:  # a read-only or full cache disk must not stop the run
        warnings.warn(f"could not write dataset cache {path}: {exc}")
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)

def _stat_key(paths: list[Path]) -> list:
    """Path, size and mtime of each file: any change to the inputs changes the cache key."""
    key = []
    for p in paths:
        st = p.stat()
        key.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return key
