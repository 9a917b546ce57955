"""Dataset loading: every source ends up as uint8 NHWC numpy arrays in an ``ArrayDataset``.

Sources:

* ``cifar10`` / ``cifar100`` in torchvision's pickle layout (``cifar-10-batches-py/``,
  ``cifar-100-python/``), read directly with ``pickle`` in the canonical release order and checked
  against the md5 sums torchvision lists for the official files;
* an image-folder layout ``{train,test}/<class>/*.{jpg,jpeg,png}``, as a directory or as a
  ``.tar.gz`` read without extracting (the fallback for cifar10/cifar100, the only source for
  imagenet100 and for any other dataset name);
* ``digits``: scikit-learn's bundled 8x8 digits, split deterministically;
* ``synthetic``: tiny procedural patterns for tests.

Every dataset carries an ``identity`` record (variant, canonical or not, content hash) so results
can say exactly which data they were obtained on. Decoded image folders and pickle layouts are
cached as uncompressed ``.npz`` files so the second load is fast.
"""
from __future__ import annotations

import colorsys
import hashlib
import io
import json
import multiprocessing
import os
import pickle
import sys
import tarfile
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

# torchvision's class order for CIFAR-10 (batches.meta `label_names`), needed when the images come
# as an image folder, which carries names but no label numbers.
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# CIFAR-100's fine label names in label order (meta `fine_label_names`; alphabetical).
CIFAR100_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm"]

KNOWN_DATASETS = ("cifar10", "cifar100", "imagenet100", "digits", "synthetic")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
CANONICAL_LABELS_FILE = "canonical-labels.npz"
ALLOW_NONCANONICAL_ENV = "JDCL_BENCH_ALLOW_NONCANONICAL"
DATA_ENV = "JDCL_BENCH_DATA"
CACHE_ENV = "JDCL_BENCH_CACHE"
WORKERS_ENV = "JDCL_BENCH_DECODE_WORKERS"
DEFAULT_DATA_DIR = Path("~/.cache/jdcl-bench/data")
DEFAULT_CACHE_DIR = Path("~/.cache/jdcl-bench/decoded")

# Bump when the decoded arrays for the same inputs would change (decoder, resize, ordering rules),
# so stale cache files are never returned.
CACHE_FORMAT_VERSION = 1
# Images per decode job: large enough to amortise process hand-off, small enough to spread well.
DECODE_CHUNK = 1024

SYNTHETIC_DEFAULTS = {"num_classes": 4, "train_per_class": 32, "test_per_class": 16, "image_size": 8,
                      "channels": 3, "seed": 0}

# Folder and archive names of torchvision's layout, only to tell cheaply whether it is there at all
# (importing torchvision takes seconds); file lists and md5 sums come from torchvision itself.
_TORCHVISION_NAMES = {"cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz"),
                      "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz")}
_PRETTY = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet100": "ImageNet-100"}
_LABEL_KEY = {"cifar10": "labels", "cifar100": "fine_labels"}
_SPLIT_ALIASES = {"train": "train", "test": "test", "val": "test"}


@dataclass
class ArrayDataset:
    """A whole dataset in memory: uint8 images (N, H, W, C) and int64 labels."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    identity: dict

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])


class DatasetError(Exception):
    """The data could not be found or loaded; the message says what, where, and how to fix it."""


def content_hash(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> str:
    """sha256 over the four arrays in a fixed order; dtype and shape go in too, so a reshaped or
    re-typed copy of the same bytes does not collide."""
    h = hashlib.sha256()
    for arr in (train_x, train_y, test_x, test_y):
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def resolve_data_dir(data_dir: str | Path | None = None) -> tuple[Path, str]:
    """The data root and a phrase saying where it came from (for error messages)."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "the data_dir argument"
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser(), f"${DATA_ENV}"
    return DEFAULT_DATA_DIR.expanduser(), f"the default (${DATA_ENV} is not set)"


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE_DIR.expanduser()


def load_dataset(name: str, *, data_dir: str | Path | None = None, image_size: int | None = None,
                 class_names: list[str] | None = None, download: bool = False,
                 cache_dir: str | Path | None = None, synthetic: dict | None = None,
                 verify: bool = True) -> ArrayDataset:
    """Load ``name`` as uint8 arrays.

    ``image_size`` resizes (shorter side, bicubic, then centre crop) when it differs from the
    stored size. ``class_names`` fixes the label order of image folders (the protocol's class
    list). ``verify=False`` skips the md5 check of the CIFAR pickles; the result is then recorded
    as non-canonical. Raises ``DatasetError`` with a fix when the data is missing or broken.
    """
    name = name.lower()
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise DatasetError(f"image_size must be a positive integer, got {image_size!r}")
    if name == "synthetic":
        return make_synthetic(**_synthetic_params(synthetic, image_size))
    if download and name not in ("cifar10", "cifar100"):
        raise DatasetError(f"download is only supported for cifar10 and cifar100, not {name!r}; "
                           "put the data in place by hand (see the error for a missing dataset for the layout)")
    if name == "digits":
        return load_digits(image_size=image_size)

    root, root_origin = resolve_data_dir(data_dir)
    cache = resolve_cache_dir(cache_dir)
    if name in ("cifar10", "cifar100"):
        folder = _find_torchvision_layout(name, root, verify=verify, download=download)
        if folder is not None:
            return _load_torchvision_layout(name, folder, image_size=image_size, class_names=class_names,
                                            verify=verify, cache_dir=cache)
    source = _find_imagefolder(name, root)
    if source is None:
        raise DatasetError(_missing_message(name, root, root_origin, data_dir))
    return _load_imagefolder(name, source, image_size=image_size, class_names=class_names, cache_dir=cache)


# ---- is it the protocol's dataset? -------------------------------------------------------------

def expected_layout(name: str, *, image_size: int | None = None, class_names: list[str] | None = None,
                    synthetic: dict | None = None) -> dict:
    """What dataset ``name`` must look like once loaded for a protocol: ``num_classes``, ``classes``
    (names in label order, or None where any names will do) and ``image_shape`` (H, W, C; an entry
    is None where any size will do)."""
    name = name.lower()
    size = image_size
    if name == "cifar10":
        count, names, shape = 10, CIFAR10_CLASSES, (size or 32, size or 32, 3)
    elif name == "cifar100":
        count, names, shape = 100, CIFAR100_CLASSES, (size or 32, size or 32, 3)
    elif name == "imagenet100":
        count, names, shape = 100, None, (size, size, 3)
    elif name == "digits":
        count, names, shape = 10, [str(d) for d in range(10)], (size or 8, size or 8, 1)
    elif name == "synthetic":
        p = _synthetic_params(synthetic, image_size)
        count, names = p["num_classes"], [f"class{c}" for c in range(p["num_classes"])]
        shape = (p["image_size"], p["image_size"], p["channels"])
    else:
        count, names, shape = None, None, (size, size, None)
    if class_names is not None:  # the protocol's own class list fixes names and count
        count, names = len(class_names), list(class_names)
    return {"num_classes": count, "classes": list(names) if names is not None else None, "image_shape": shape}


def check_dataset(ds: ArrayDataset, name: str, *, image_size: int | None = None,
                  class_names: list[str] | None = None, synthetic: dict | None = None,
                  protocol: str = "", data_dir: str | Path | None = None) -> None:
    """Raise DatasetError unless ``ds`` has the class count, class names and image shape that
    dataset ``name`` has for the protocol: a folder of another dataset (CIFAR-10 images where the
    protocol asks for CIFAR-100) must not train and be recorded under the wrong protocol."""
    want = expected_layout(name, image_size=image_size, class_names=class_names, synthetic=synthetic)
    problems = []
    if want["num_classes"] is not None and len(ds.classes) != want["num_classes"]:
        problems.append(f"{len(ds.classes)} classes instead of {want['num_classes']}")
    elif want["classes"] is not None and list(ds.classes) != want["classes"]:
        diff = [(i, g, w) for i, (g, w) in enumerate(zip(ds.classes, want["classes"])) if g != w]
        shown = "; ".join(f"label {i}: {g!r} instead of {w!r}" for i, g, w in diff[:5])
        problems.append(f"other class names ({shown}{'; ...' if len(diff) > 5 else ''})")
    got_shape = tuple(ds.train_x.shape[1:])
    if ds.test_x.shape[1:] != ds.train_x.shape[1:]:
        problems.append(f"test images of shape {tuple(ds.test_x.shape[1:])} but training images of {got_shape}")
    if any(w is not None and g != w for g, w in zip(got_shape, want["image_shape"])):
        want_s = "x".join("?" if w is None else str(w) for w in want["image_shape"])
        problems.append(f"images of shape {'x'.join(map(str, got_shape))} (HxWxC) instead of {want_s}")
    if not problems:
        return
    pretty = _PRETTY.get(name, name)
    names = ", ".join(ds.classes[:6]) + (", ..." if len(ds.classes) > 6 else "")
    source = ds.identity.get("source") or "the given dataset"
    want_desc = f"{want['num_classes']} classes" if want["num_classes"] is not None else "its classes"
    root, origin = resolve_data_dir(data_dir)
    raise DatasetError(
        f"protocol {protocol or name!r} needs {pretty} ({want_desc}), but the data loaded from {source} has "
        f"{'; '.join(problems)} (its classes: {names}); it is not {pretty}. The data root is {root} "
        f"(from {origin}). To fix: point --data-dir (or ${DATA_ENV}) at {pretty}, or choose a protocol "
        f"for the dataset that is there (`jdcl-bench list protocols`), or write one with its own "
        f"[dataset] classes.")


# ---- errors ----------------------------------------------------------------------------------

def _missing_message(name: str, root: Path, root_origin: str, data_dir) -> str:
    pretty = _PRETTY.get(name, name)
    env = os.environ.get(DATA_ENV)
    env_note = ""
    if data_dir is not None and env:
        env_note = f" (${DATA_ENV}={env} was not searched because data_dir was given)"
    lines = [f"{pretty} not found. Searched {root} (from {root_origin}){env_note}:"]
    if name in ("cifar10", "cifar100"):
        spec = _torchvision_class(name)
        lines += [f"  - {root / spec.base_folder}/ (torchvision layout)",
                  f"  - {root / spec.filename} (official archive; extracted automatically)"]
    lines += [f"  - {root}/{{train,test}}/<class>/*.jpg|png and {root / name}/{{train,test}}/... (image-folder layout)",
              f"  - a single *.tar.gz of that layout in {root} or {root / name}"]
    if name in ("cifar10", "cifar100"):
        spec = _torchvision_class(name)
        lines.append(f"To fix: get {spec.filename} from https://www.cs.toronto.edu/~kriz/cifar.html "
                     f"({spec.url}, md5 {spec.tgz_md5}) and put it in {root}, or pass --download "
                     "(download=True) to fetch it there; or point data_dir / "
                     f"${DATA_ENV} at the directory that holds it.")
    elif name == "imagenet100":
        lines.append("To fix: ImageNet-100 cannot be downloaded automatically. Build it from ImageNet-1k "
                     "(train and val images of the protocol's 100 classes) as "
                     f"{root}/{{train,test}}/<wnid>/*.JPEG (or a .tar.gz of that), or point data_dir / "
                     f"${DATA_ENV} at it.")
    else:
        lines.append(f"To fix: put the images in the image-folder layout there, or point data_dir / "
                     f"${DATA_ENV} at them. Built-in datasets: {', '.join(KNOWN_DATASETS)}.")
    return "\n".join(lines)


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


def _stat_key(paths: list[Path]) -> list:
    """Path, size and mtime of each file: any change to the inputs changes the cache key."""
    key = []
    for p in paths:
        st = p.stat()
        key.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return key


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


# ---- image-folder layout ---------------------------------------------------------------------

def _find_imagefolder(name: str, root: Path) -> tuple[str, Path] | None:
    """("dir", folder holding train/ and test/) or ("tar", archive), or None."""
    if root.is_file():
        return ("tar", root) if _is_tar(root) else None
    torchvision_archives = {archive for _, archive in _TORCHVISION_NAMES.values()}
    for base in (root, root / name):
        if not base.is_dir():
            continue
        if (base / "train").is_dir() and ((base / "test").is_dir() or (base / "val").is_dir()):
            return "dir", base
        tars = sorted(p for p in base.iterdir() if p.is_file() and _is_tar(p) and p.name not in torchvision_archives)
        if len(tars) == 1:
            return "tar", tars[0]
        if len(tars) > 1:
            raise DatasetError(f"{base} holds several archives ({', '.join(p.name for p in tars)}); pass the "
                               "one to use as data_dir")
    return None


def _is_tar(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz", ".tar"))


def _split_member(parts: tuple[str, ...]) -> tuple[str, str, str] | None:
    """(split, class, file name) for a path ending in <split>/<class>/<file>, else None."""
    parts = tuple(p for p in parts if p not in ("", "."))
    if len(parts) < 3 or parts[-3] not in _SPLIT_ALIASES:
        return None
    fname = parts[-1]
    if fname.startswith(".") or not fname.lower().endswith(IMAGE_EXTENSIONS):
        return None  # hidden files (e.g. macOS "._x.jpg" companions) and non-images
    return parts[-3], parts[-2], fname


def _load_imagefolder(name: str, source: tuple[str, Path], *, image_size: int | None, class_names,
                      cache_dir: Path) -> ArrayDataset:
    kind, path = source
    labels_path = (path if kind == "dir" else path.parent) / CANONICAL_LABELS_FILE
    if class_names is None and name == "cifar10":
        class_names = CIFAR10_CLASSES
    class_names = list(class_names) if class_names is not None else None

    if kind == "dir":
        listing = []  # (split, class, file name, path)
        for split_dir in sorted(path.iterdir()):
            if not split_dir.is_dir() or split_dir.name not in _SPLIT_ALIASES:
                continue
            for class_dir in sorted(split_dir.iterdir()):
                if not class_dir.is_dir():
                    continue
                for f in sorted(class_dir.iterdir()):
                    rec = _split_member((split_dir.name, class_dir.name, f.name))
                    if rec is not None:
                        listing.append((*rec, f))
        stat_paths = [p for *_, p in listing]
    else:
        listing, stat_paths = None, [path]
    if labels_path.is_file():
        stat_paths = stat_paths + [labels_path]
    key = {"loader": "imagefolder", "name": name, "files": _stat_key(stat_paths), "image_size": image_size,
           "classes": list(class_names) if class_names is not None else None}
    cached = _cache_get(cache_dir, name, key)
    if cached is not None:
        return cached

    where = str(path)

    def check_classes(found: set[str]) -> None:
        unknown = sorted(c for c in found if c not in index)
        if unknown:
            raise DatasetError(f"{where} has class folders that are not in the class list: "
                               f"{', '.join(unknown[:20])}{' ...' if len(unknown) > 20 else ''}; expected folder "
                               f"names {class_names[:10]}{'...' if len(class_names) > 10 else ''}. Rename the "
                               "folders or fix the protocol's class list.")

    index = {c: i for i, c in enumerate(class_names)} if class_names is not None else None
    if index is not None and listing is not None:
        check_classes({cls for _, cls, _, _ in listing})  # before spending time on decoding

    decoder = _Decoder(image_size)
    records = []  # (split, class, file name), in the order handed to the decoder
    try:
        if kind == "dir":
            for split, cls, fname, p in listing:
                records.append((split, cls, fname))
                decoder.add(str(p), None)
        else:
            unknown = set()
            try:
                with tarfile.open(path, "r|*") as tf:  # streaming: one pass, no extraction, no seeking
                    for member in tf:
                        if not member.isfile():
                            continue
                        rec = _split_member(PurePosixPath(member.name).parts)
                        if rec is None:
                            continue
                        if index is not None and rec[1] not in index:
                            unknown.add(rec[1])
                        if unknown:
                            continue  # the load will fail: only collect the names for the message
                        records.append(rec)
                        decoder.add(f"{path}:{member.name}", tf.extractfile(member).read())
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise DatasetError(f"cannot read {path}: {exc}; the archive is damaged or not a tar file — "
                                   "re-create or re-download it") from exc
            check_classes(unknown)
        images = decoder.finish()
    finally:
        decoder.close()  # no stray worker processes when reading fails half way

    # Prefer "test" over "val" when both are there.
    test_name = "test" if any(r[0] == "test" for r in records) else "val"
    if not any(r[0] == "train" for r in records) or not any(r[0] == test_name for r in records):
        raise DatasetError(f"{where} has no train/<class>/ or test/<class>/ images "
                           f"(found {len(records)} images); expected {{train,test}}/<class>/*.jpg|jpeg|png")
    if class_names is None:
        # Sorted folder names: the usual ImageNet convention, and for CIFAR-100 exactly the canonical
        # label order (its fine label names are alphabetical).
        class_names = sorted({r[1] for r in records})
        index = {c: i for i, c in enumerate(class_names)}

    canonical_labels = None
    if labels_path.is_file():
        with np.load(labels_path) as z:
            canonical_labels = {"train": z["train"].astype(np.int64), "test": z["test"].astype(np.int64)}

    arrays = {}
    for split, stored in (("train", "train"), ("test", test_name)):
        # class by class in class-list order, by file name within a class
        rows = sorted(((index[r[1]], r[2], i) for i, r in enumerate(records) if r[0] == stored))
        y = np.array([c for c, _, _ in rows], dtype=np.int64)
        order = np.array([i for _, _, i in rows], dtype=np.int64)
        missing = [class_names[c] for c in range(len(class_names)) if not np.any(y == c)]
        if missing:
            raise DatasetError(f"{where}: {stored}/ has no images for classes {', '.join(missing[:20])}; every "
                               "class of the class list needs images in train/ and test/")
        if canonical_labels is not None:
            perm = _canonical_permutation(y, canonical_labels[split], class_names, labels_path, split)
            order, y = order[perm], y[perm]
        arrays[split] = (images[order], y)
    del images

    is_jpeg = any(r[2].lower().endswith((".jpg", ".jpeg")) for r in records)
    variant = "imagefolder-jpeg" if is_jpeg else "imagefolder"
    pretty = _PRETTY.get(name, name)
    note = f"{pretty} re-encoded as JPEG (lossy); not canonical" if is_jpeg else \
        f"{pretty} from an image folder; not canonical"
    if canonical_labels is not None:
        note += f"; canonical release order rebuilt from {CANONICAL_LABELS_FILE}"
    else:
        note += "; order: class by class, file name within class (not the release order)"
    if image_size is not None:
        note += f"; resized to {image_size}x{image_size} (shorter side, bicubic, centre crop) where needed"
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
    identity = {"name": name, "variant": variant, "canonical": False,
                "content_hash": content_hash(train_x, train_y, test_x, test_y), "source": str(path), "note": note}
    ds = ArrayDataset(name, train_x, train_y, test_x, test_y, class_names, identity)
    _cache_put(cache_dir, name, key, ds)
    return ds


def _canonical_permutation(y: np.ndarray, labels: np.ndarray, class_names: list[str], labels_path: Path,
                           split: str) -> np.ndarray:
    """Positions into the class-blocked order ``y`` that give the canonical order ``labels``.

    Image i of the canonical set is the k-th image (by file name) of class labels[i], where k counts
    the earlier occurrences of that class in ``labels``.
    """
    num_classes = len(class_names)
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= num_classes:
        raise DatasetError(f"{labels_path}: {split} labels outside 0..{num_classes - 1}")
    have = np.bincount(y, minlength=num_classes)
    want = np.bincount(labels, minlength=num_classes)
    if not np.array_equal(have, want):
        diffs = [f"{class_names[c]}: {want[c]} in labels, {have[c]} images" for c in range(num_classes)
                 if have[c] != want[c]]
        raise DatasetError(f"{labels_path} does not fit the image folder ({split}): {'; '.join(diffs[:10])}. "
                           f"Remove {labels_path.name} or restore the missing images.")
    starts = np.concatenate([[0], np.cumsum(have)[:-1]])  # y is sorted by class
    perm = np.empty(len(labels), dtype=np.int64)
    for c in range(num_classes):
        where = np.flatnonzero(labels == c)
        perm[where] = starts[c] + np.arange(len(where))
    return perm


# ---- decoding ---------------------------------------------------------------------------------

def _resize_image(img, size: int):
    """Shorter side to ``size`` (bicubic), then a centre crop to size x size (ImageNet style)."""
    from PIL import Image

    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def _resize_array(x: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 NHWC arrays image by image with PIL (same rule as for decoded files)."""
    from PIL import Image

    grey = x.shape[-1] == 1
    out = np.empty((len(x), size, size, x.shape[-1]), dtype=np.uint8)
    for i, a in enumerate(x):
        img = Image.fromarray(a[..., 0] if grey else a)
        r = np.asarray(_resize_image(img, size))
        out[i] = r[..., None] if grey else r
    return out


def _decode_chunk(items: list[tuple[str, bytes | None]], image_size: int | None) -> np.ndarray:
    """Decode (name, bytes) pairs — bytes None means read the file ``name`` — to (n, H, W, 3) uint8.

    Runs in worker processes, so it only uses PIL and numpy and raises DatasetError (picklable).
    """
    from PIL import Image, UnidentifiedImageError

    out = None
    for i, (name, data) in enumerate(items):
        try:
            with Image.open(io.BytesIO(data) if data is not None else name) as img:
                img = img.convert("RGB")
                if image_size is not None:
                    img = _resize_image(img, image_size)
                arr = np.asarray(img)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise DatasetError(f"cannot decode {name}: {exc}; the file is damaged or not an image — "
                               "replace or delete it") from None
        if out is None:
            out = np.empty((len(items), *arr.shape), dtype=np.uint8)
            first = name
        elif arr.shape != out.shape[1:]:
            raise DatasetError(f"images differ in size: {first} is {out.shape[2]}x{out.shape[1]}, {name} is "
                               f"{arr.shape[1]}x{arr.shape[0]}; pass image_size to resize them to one size")
        out[i] = arr
    return out


def _decode_workers() -> int:
    """Worker processes for decoding; 0 means decode in this process.

    Default: one per CPU but one, since this process keeps reading the archive meanwhile.
    """
    env = os.environ.get(WORKERS_ENV)
    if env:
        return max(0, int(env))
    if multiprocessing.current_process().daemon:
        return 0  # daemonic processes (e.g. data-loader workers) may not start children
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS / Windows
        cpus = os.cpu_count() or 1
    return cpus - 1 if cpus > 1 else 0


def _pool_context():
    # fork starts workers in milliseconds and does not re-run the user's __main__ (spawn would,
    # breaking scripts without a main guard). The workers only run PIL/numpy code, so the usual
    # fork hazards (CUDA or OpenMP state inherited from the parent) do not apply. macOS and
    # Windows get spawn, their safe default.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


class _Decoder:
    """Collects images and decodes them, in worker processes once there is more than one chunk.

    Chunks go to the pool as soon as they are full, so decoding overlaps with reading a tar
    stream. Small inputs (tests) are decoded in this process by ``_decode_chunk``.
    """

    def __init__(self, image_size: int | None):
        self.image_size = image_size
        self.workers = _decode_workers()
        self.pending: list[tuple[str, bytes | None]] = []
        self.parts: list = []  # decoded arrays or futures, in input order
        self.pool = None

    def add(self, name: str, data: bytes | None) -> None:
        self.pending.append((name, data))
        if len(self.pending) >= DECODE_CHUNK:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        chunk, self.pending = self.pending, []
        if not chunk:
            return
        # A pool only pays off beyond one chunk; a lone final chunk is decoded right here.
        if self.workers > 0 and self.pool is None and not final:
            self.pool = ProcessPoolExecutor(self.workers, mp_context=_pool_context())
        if self.pool is not None:
            with warnings.catch_warnings():
                # Python 3.12+ warns when forking a multi-threaded process (torch starts threads).
                # The risk is a child taking a lock some other thread held at fork time; our
                # children only decode images with PIL/numpy and take no such locks.
                warnings.filterwarnings("ignore", message=r".*multi-threaded, use of fork\(\)",
                                        category=DeprecationWarning)
                self.parts.append(self.pool.submit(_decode_chunk, chunk, self.image_size))
        else:
            self.parts.append((chunk, None))  # decoded in finish()

    def finish(self) -> np.ndarray:
        self._flush(final=True)
        try:
            arrays = []
            for part in self.parts:
                if isinstance(part, tuple):
                    arrays.append(_decode_chunk(part[0], self.image_size))
                else:
                    arrays.append(part.result())
        except BrokenProcessPool as exc:
            raise DatasetError(f"a decoding worker process died ({exc}); set {WORKERS_ENV}=0 to decode in "
                               "this process") from exc
        finally:
            self.close()
        if not arrays:
            return np.empty((0, 1, 1, 3), dtype=np.uint8)
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) > 1:
            sizes = ", ".join(f"{s[1]}x{s[0]}" for s in sorted(shapes))
            raise DatasetError(f"images differ in size ({sizes}); pass image_size to resize them to one size")
        return np.concatenate(arrays) if len(arrays) > 1 else arrays[0]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


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


# ---- digits -----------------------------------------------------------------------------------

def load_digits(image_size: int | None = None) -> ArrayDataset:
    """scikit-learn's 8x8 digits as uint8 (N, 8, 8, 1), stratified 75/25 split with a fixed seed."""
    import sklearn
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # values 0..16 -> 0..255
    y = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=0.25, stratify=y, random_state=0)
    # keep the release order inside each split; the split itself is what random_state fixes
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    train_x, test_x = x[train_idx], x[test_idx]
    variant = "sklearn"
    note = f"scikit-learn {sklearn.__version__} load_digits(); stratified 75/25 split, random_state=0"
    if image_size is not None and image_size != 8:
        train_x, test_x = _resize_array(train_x, image_size), _resize_array(test_x, image_size)
        variant += f"-resized{image_size}"
        note += f"; resized to {image_size}x{image_size} (bicubic)"
    train_y, test_y = y[train_idx], y[test_idx]
    identity = {"name": "digits", "variant": variant, "canonical": True,
                "content_hash": content_hash(train_x, train_y, test_x, test_y),
                "source": "sklearn.datasets.load_digits", "note": note}
    return ArrayDataset("digits", train_x, train_y, test_x, test_y, [str(d) for d in range(10)], identity)


# ---- synthetic --------------------------------------------------------------------------------

def _synthetic_params(synthetic: dict | None, image_size: int | None) -> dict:
    params = dict(SYNTHETIC_DEFAULTS)
    given = dict(synthetic or {})
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise DatasetError(f"unknown synthetic dataset parameters {unknown}; known: {sorted(params)}")
    if image_size is not None:
        if "image_size" in given and given["image_size"] != image_size:
            raise DatasetError(f"image_size={image_size} conflicts with synthetic image_size={given['image_size']}")
        given["image_size"] = image_size
    params.update(given)
    for k, v in params.items():
        if int(v) != v or (k != "seed" and v < 1):
            raise DatasetError(f"synthetic parameter {k} must be a positive integer, got {v!r}")
        params[k] = int(v)
    if params["channels"] not in (1, 3):
        raise DatasetError(f"synthetic channels must be 1 or 3, got {params['channels']}")
    return params


def make_synthetic(num_classes: int = 4, train_per_class: int = 32, test_per_class: int = 16, image_size: int = 8,
                   channels: int = 3, seed: int = 0) -> ArrayDataset:
    """Tiny learnable dataset: each class is a colour (or grey level) with stripes at its own angle.

    Samples vary in stripe phase, contrast and brightness and carry pixel noise. Everything comes
    from one numpy Generator seeded with ``seed``, so the arrays depend on the parameters only.
    """
    rng = np.random.default_rng(seed)
    s = image_size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64) / s
    cycles = max(1.0, s / 4)  # stripe period of about 4 pixels, at least one cycle per image

    def render(c: int, n: int) -> np.ndarray:
        angle = np.pi * c / num_classes
        if channels == 3:
            colour = np.array(colorsys.hsv_to_rgb(c / num_classes, 0.75, 0.9))
        else:
            colour = np.array([0.35 + 0.5 * c / max(1, num_classes - 1)])
        phase = rng.uniform(0, 2 * np.pi, (n, 1, 1))
        contrast = rng.uniform(0.25, 0.4, (n, 1, 1))
        brightness = rng.uniform(-0.03, 0.03, (n, 1, 1, 1))
        stripes = np.sin(2 * np.pi * cycles * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
        img = colour * (0.6 + contrast * stripes)[..., None] + brightness
        img = img + rng.normal(0, 0.04, img.shape)
        return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([render(c, per_class) for c in range(num_classes)])
        y = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
        order = rng.permutation(len(y))  # interleave classes, like a real release
        return x[order], y[order]

    train_x, train_y = split(train_per_class)
    test_x, test_y = split(test_per_class)
    params = {"num_classes": num_classes, "train_per_class": train_per_class, "test_per_class": test_per_class,
              "image_size": image_size, "channels": channels, "seed": seed}
    identity = {"name": "synthetic", "variant": "synthetic", "canonical": True,
                "content_hash": content_hash(train_x, train_y, test_x, test_y),
                "source": "jdcl_bench.data.datasets.make_synthetic",
                "note": "procedural stripes, " + ", ".join(f"{k}={v}" for k, v in params.items())}
    return ArrayDataset("synthetic", train_x, train_y, test_x, test_y, [f"class{c}" for c in range(num_classes)],
                        identity)
