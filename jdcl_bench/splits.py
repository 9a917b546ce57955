"""Which training images are labelled, and which task each image belongs to.

The labelled subset is chosen once on the whole training set, before the task split, as in
NNCSL and JDCL; every training image of a task (labelled ones included) is also in that
task's unlabelled stream. The subset is fixed per protocol (it does not change with the run
seed), so runs with different seeds differ only in the learner's randomness.
"""
from __future__ import annotations

import warnings

import numpy as np

from .protocol import Protocol, ProtocolError

SPLIT_SEED = 0  # the labelled subset is part of the protocol, not of the run


def class_balanced_subset(y: np.ndarray, per_class: int, seed: int = SPLIT_SEED) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < per_class:
            raise ProtocolError(f"class {c} has only {len(idx)} training images; cannot label {per_class} per class")
        picked.append(rng.choice(idx, size=per_class, replace=False))
    return np.sort(np.concatenate(picked))


def labelled_indices(protocol: Protocol, train_y: np.ndarray) -> tuple[np.ndarray, dict]:
    """Indices of labelled training images, and a record of how they were chosen."""
    n = len(train_y)
    if protocol.label_regime == "full":
        return np.arange(n), {"regime": "full"}
    if protocol.label_regime == "per_class":
        return class_balanced_subset(train_y, protocol.per_class), {
            "regime": "per_class", "per_class": protocol.per_class, "seed": SPLIT_SEED}
    if protocol.label_regime == "fraction":
        counts = np.bincount(train_y)
        per_class = max(1, int(round(protocol.fraction * counts.min())))
        return class_balanced_subset(train_y, per_class), {
            "regime": "fraction", "fraction": protocol.fraction, "per_class": per_class, "seed": SPLIT_SEED}
    # index_file: NNCSL's files index the canonical training set. They apply only when this
    # dataset is in canonical order, which we check against the file's own class list.
    path = protocol.resolve_index_file()
    if not path.exists():
        raise ProtocolError(f"protocol {protocol.name!r}: labelled-index file {path} does not exist")
    idx = np.loadtxt(path, dtype=np.int64).reshape(-1)
    cls_path = path.with_name(path.stem + "_cls.txt")
    cls = np.loadtxt(cls_path, dtype=np.int64).reshape(-1) if cls_path.exists() else None
    fits = idx.max() < n and (cls is None or np.array_equal(train_y[idx], cls))
    if fits:
        return np.sort(idx), {"regime": "index_file", "index_file": path.name, "count": int(len(idx))}
    if protocol.per_class is None:
        raise ProtocolError(f"protocol {protocol.name!r}: index file {path.name} does not match this dataset "
                            "(not in canonical order) and no [labels].per_class fallback is given")
    warnings.warn(f"{path.name} does not match this dataset's order (not the canonical release); "
                  f"drawing {protocol.per_class} labelled images per class with seed {SPLIT_SEED} instead")
    return class_balanced_subset(train_y, protocol.per_class), {
        "regime": "per_class_fallback", "per_class": protocol.per_class, "seed": SPLIT_SEED,
        "note": f"{path.name} did not match the dataset order"}
