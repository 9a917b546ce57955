"""CIFAR-10/100 in torchvision's pickle layout, read with ``pickle`` in the canonical release order
and checked against the md5 sums torchvision lists for the official files."""
from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np

from .cache import _cache_get, _cache_put, _stat_key
from .core import _LABEL_KEY, _PRETTY, _TORCHVISION_NAMES, ALLOW_NONCANONICAL_ENV, ArrayDataset, DatasetError, content_hash
from .decode import _resize_array

# ---- CIFAR in torchvision's pickle layout -------------------------------------------------------

def _torchvision_class(name: str):
    # Imported lazily: torchvision is heavy and only its file lists and md5 sums are needed here.
    from torchvision.datasets import CIFAR10, CIFAR100

    return CIFAR10 if name == "cifar10" else CIFAR100


def _pickle_files(spec) -> list[tuple[str, str]]:
    """(file name, md5) of every file of the layout: training batches, test batch(es), meta."""
    return [tuple(f) for f in spec.train_list] + [tuple(f) for f in spec.test_list] + \
        [(spec.meta["filename"], spec.meta["md5"])]


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _find_torchvision_layout(name: str, root: Path, *, verify: bool, download: bool) -> Path | None:
    """The ``cifar-*-batches-py`` folder, extracting or downloading the archive when needed."""
    base_folder, archive_name = _TORCHVISION_NAMES[name]
    if not download and not (root / base_folder).exists() and not (root / archive_name).is_file():
        return None
    spec = _torchvision_class(name)
    folder = root / spec.base_folder
    files = [folder / f for f, _ in _pickle_files(spec)]
    present = [p.is_file() for p in files]
    if all(present):
        return folder
    if any(present):
        missing = [str(p) for p, ok in zip(files, present) if not ok]
        raise DatasetError(f"{folder} is incomplete: missing {', '.join(missing)}. Delete {folder} and "
                           f"re-extract {spec.filename} (or pass --download / download=True).")
    archive = root / spec.filename
    if archive.is_file():
        if verify:
            got = _md5(archive)
            if got != spec.tgz_md5:
                raise DatasetError(f"corrupt: {archive} has md5 {got}, expected {spec.tgz_md5}; delete it and "
                                   f"re-download it from {spec.url} (or pass --download / download=True).")
        from torchvision.datasets.utils import extract_archive

        extract_archive(str(archive), str(root))
        return folder if folder.is_dir() else None
    if download:
        try:
            root.mkdir(parents=True, exist_ok=True)
            spec(root=str(root), train=True, download=True)
        except Exception as exc:  # network errors come in many types; all mean the same here
            raise DatasetError(f"downloading {spec.url} into {root} failed: {exc}. Fetch {spec.filename} "
                               f"(md5 {spec.tgz_md5}) by other means and put it in {root}.") from exc
        return folder
    return None


def _load_torchvision_layout(name: str, folder: Path, *, image_size: int | None, class_names,
                             verify: bool, cache_dir: Path) -> ArrayDataset:
    spec = _torchvision_class(name)
    files = _pickle_files(spec)
    allow = os.environ.get(ALLOW_NONCANONICAL_ENV) == "1"
    key = {"loader": "torchvision", "name": name, "files": _stat_key([folder / f for f, _ in files]),
           "image_size": image_size, "verify": verify, "allow_noncanonical": allow}
    cached = _cache_get(cache_dir, name, key)
    if cached is not None:
        ds = cached
    else:
        if verify:
            mismatches = []
            for fname, expected in files:
                got = _md5(folder / fname)
                if got != expected:
                    mismatches.append((folder / fname, got, expected))
            if mismatches and not allow:
                path, got, expected = mismatches[0]
                more = f" (and {len(mismatches) - 1} more files)" if len(mismatches) > 1 else ""
                raise DatasetError(
                    f"corrupt: file {path} has md5 {got}, expected {expected}{more} (torchvision's md5 for the "
                    f"official {_PRETTY[name]} release); delete {folder} and re-download {spec.filename} "
                    f"(--download / download=True). To load modified files anyway as a non-canonical variant, "
                    f"set {ALLOW_NONCANONICAL_ENV}=1 or pass verify=False.")
            if mismatches:
                variant, canonical = "torchvision-layout-modified", False
                note = (f"{_PRETTY[name]} in torchvision layout whose files differ from the official release "
                        f"(md5 mismatch: {', '.join(p.name for p, _, _ in mismatches)}); not canonical")
            else:
                variant, canonical = "torchvision", True
                note = f"official {_PRETTY[name]} python release; md5 of every file verified"
        else:
            variant, canonical = "torchvision-layout-unverified", False
            note = f"{_PRETTY[name]} in torchvision layout, md5 not checked (verify=False); not known to be canonical"

        def read(fnames):
            xs, ys = [], []
            for fname in fnames:
                entry = _read_pickle(folder / fname)
                xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(entry[_LABEL_KEY[name]], dtype=np.int64))
            # rows are channel-major (R plane, G plane, B plane) -> NHWC
            return np.concatenate(xs).transpose(0, 2, 3, 1).copy(), np.concatenate(ys)

        train_x, train_y = read([f for f, _ in spec.train_list])
        test_x, test_y = read([f for f, _ in spec.test_list])
        meta = _read_pickle(folder / spec.meta["filename"])
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[spec.meta["key"]]]
        if image_size is not None and image_size != 32:
            train_x, test_x = _resize_array(train_x, image_size), _resize_array(test_x, image_size)
            variant += f"-resized{image_size}"
            note += f"; resized to {image_size}x{image_size} (bicubic)"
        identity = {"name": name, "variant": variant, "canonical": canonical, "content_hash": "",
                    "source": str(folder), "note": note}
        ds = ArrayDataset(name, train_x, train_y, test_x, test_y, classes, identity)
        ds.identity["content_hash"] = content_hash(train_x, train_y, test_x, test_y)
        _cache_put(cache_dir, name, key, ds)
    if class_names is not None and list(class_names) != ds.classes:
        raise DatasetError(f"the protocol's class list does not match {folder}'s meta file: "
                           f"protocol {list(class_names)[:5]}..., meta {ds.classes[:5]}... "
                           "(the pickle layout fixes label numbers; fix the protocol's class list)")
    return ds


def _read_pickle(path: Path) -> dict:
    # The official files were written by Python 2, so their keys come back as bytes with
    # encoding="bytes"; normalise to str so fixtures written either way read the same.
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


