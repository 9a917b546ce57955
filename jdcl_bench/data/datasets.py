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

Modules by source: ``cifar_pickle`` (torchvision's layout), ``imagefolder`` (folders and archives),
``toy`` (digits, synthetic), with ``decode`` (worker processes), ``cache`` and ``core`` (the
container, errors, hash, folders) behind them; this module chooses the source (``load_dataset``) and
checks that the data is the protocol's (``check_dataset``).

Every dataset carries an ``identity`` record (variant, canonical or not, content hash) so results
can say exactly which data they were obtained on. Decoded image folders and pickle layouts are
cached as uncompressed ``.npz`` files so the second load is fast.
"""
from __future__ import annotations

import os
from pathlib import Path


from .cifar_pickle import _find_torchvision_layout, _load_torchvision_layout, _torchvision_class
from .core import *  # noqa: F401,F403  (the names a caller of this module used before it was split)
from .core import (_PRETTY, CIFAR10_CLASSES, CIFAR100_CLASSES, DATA_ENV, KNOWN_DATASETS, ArrayDataset, DatasetError,
                   resolve_cache_dir, resolve_data_dir)
from .imagefolder import _find_imagefolder, _load_imagefolder
from .toy import _synthetic_params, load_digits, make_synthetic

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


