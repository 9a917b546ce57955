"""Image folders ``{train,test}/<class>/*.{jpg,jpeg,png}``, as a directory or a ``.tar.gz`` read
without extracting, and the canonical CIFAR order rebuilt from a labels file."""
from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath

import numpy as np

from .cache import _cache_get, _cache_put, _stat_key
from .core import (_PRETTY, _SPLIT_ALIASES, _TORCHVISION_NAMES, CANONICAL_LABELS_FILE, CIFAR10_CLASSES, IMAGE_EXTENSIONS,
                   ArrayDataset, DatasetError, content_hash)
from .decode import _Decoder

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


