"""Writers of small test datasets in the real on-disk formats.

``write_cifar_fixture`` writes pickled batches exactly as torchvision's CIFAR layout has them
(file names, dict keys, channel-major rows); ``write_imagefolder_fixture`` writes
``{train,test}/<class>/NNNN.<fmt>`` as a folder or a ``.tar.gz``. Both return the pixels they wrote
so tests can compare what the loader gives back. The content is random, so the files never match
the official md5 sums: load CIFAR fixtures with ``verify=False``.
"""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from .datasets import CANONICAL_LABELS_FILE, CIFAR10_CLASSES, CIFAR100_CLASSES


def _random_images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Smooth-ish random colour images: a random gradient plus noise, so JPEG keeps them close."""
    yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1)
    base = rng.uniform(0, 255, (n, 1, 1, 3))
    gx, gy = rng.uniform(-80, 80, (2, n, 1, 1, 3))
    img = base + gx * xx[None, :, :, None] + gy * yy[None, :, :, None] + rng.normal(0, 20, (n, size, size, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the protocol of the official (Python 2 era) files


def _rows(x: np.ndarray) -> np.ndarray:
    """NHWC uint8 -> (N, 3072) rows: the 1024 red values, then green, then blue."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), -1))


def write_cifar_fixture(root: str | Path, kind: str = "cifar10", n_train_per_class: int = 2,
                        n_test_per_class: int = 1, seed: int = 0) -> dict:
    """Write a tiny CIFAR-10 or CIFAR-100 in torchvision's layout under ``root``.

    Returns ``{"path", "train_x", "train_y", "test_x", "test_y", "classes"}`` with the arrays in
    the order they were written (the canonical order of the fixture). Images are shuffled across
    classes, as in the real release, so class-blocked reading would be caught.
    """
    if kind not in ("cifar10", "cifar100"):
        raise ValueError(f"kind must be cifar10 or cifar100, got {kind!r}")
    rng = np.random.default_rng(seed)
    root = Path(root)
    if kind == "cifar10":
        classes = list(CIFAR10_CLASSES)
        folder = root / "cifar-10-batches-py"
    else:
        classes = list(CIFAR100_CLASSES)
        folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    k = len(classes)

    def make(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.repeat(np.arange(k), per_class)).astype(np.int64)
        return _random_images(rng, len(y), 32), y

    train_x, train_y = make(n_train_per_class)
    test_x, test_y = make(n_test_per_class)
    names = lambda split, n: [f"{split}_{i:05d}.png".encode() for i in range(n)]  # noqa: E731

    if kind == "cifar10":
        train_names = names("train", len(train_y))
        parts = np.array_split(np.arange(len(train_y)), 5)
        for i, idx in enumerate(parts, start=1):
            _dump(folder / f"data_batch_{i}", {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"labels": train_y[idx].tolist(),
                b"data": _rows(train_x[idx]),
                b"filenames": [train_names[j] for j in idx],
            })
        _dump(folder / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": test_y.tolist(),
                                      b"data": _rows(test_x), b"filenames": names("test", len(test_y))})
        _dump(folder / "batches.meta", {b"num_cases_per_batch": int(np.ceil(len(train_y) / 5)),
                                        b"label_names": [c.encode() for c in classes], b"num_vis": 3072})
    else:
        coarse = [f"coarse{i:02d}" for i in range(20)]
        for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            _dump(folder / split, {b"filenames": names(split, len(y)),
                                   b"batch_label": f"{split}ing batch 1 of 1".encode(),
                                   b"fine_labels": y.tolist(), b"coarse_labels": (y // 5).tolist(),
                                   b"data": _rows(x)})
        _dump(folder / "meta", {b"fine_label_names": [c.encode() for c in classes],
                                b"coarse_label_names": [c.encode() for c in coarse]})
    return {"path": folder, "train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
            "classes": classes}


def write_imagefolder_fixture(root: str | Path, classes: list[str], n_per_class: int, size: int | tuple[int, int],
                              fmt: str = "jpg", as_tar: bool = False, *, n_test_per_class: int | None = None,
                              top_level: str | None = None, seed: int = 0) -> dict:
    """Write ``{train,test}/<class>/NNNN.<fmt>`` under ``root`` (or as ``root/images.tar.gz``).

    ``size`` is the side of square images or (width, height). ``top_level`` puts everything in
    one folder inside the tar. Returns ``{"path", "images"}`` with ``images[split][class]`` the
    (n, H, W, 3) pixels written, in file-name order (PNG is lossless, JPEG is not).
    """
    if fmt not in ("jpg", "jpeg", "png"):
        raise ValueError(f"fmt must be jpg, jpeg or png, got {fmt!r}")
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = (size, size) if isinstance(size, int) else size
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    counts = {"train": n_per_class, "test": n_per_class if n_test_per_class is None else n_test_per_class}
    images: dict[str, dict[str, np.ndarray]] = {}
    files: list[tuple[str, bytes]] = []
    for split, n in counts.items():
        images[split] = {}
        for cls in classes:
            side = max(width, height)
            x = _random_images(rng, n, side)[:, :height, :width]
            images[split][cls] = x
            for i, a in enumerate(x):
                buf = io.BytesIO()
                Image.fromarray(a).save(buf, format="PNG" if fmt == "png" else "JPEG", quality=95)
                files.append((f"{split}/{cls}/{i:04d}.{fmt}", buf.getvalue()))

    if as_tar:
        path = root / "images.tar.gz"
        with tarfile.open(path, "w:gz") as tf:
            # the tar is written in reverse order so the loader cannot rely on member order
            for name, data in reversed(files):
                info = tarfile.TarInfo(f"{top_level}/{name}" if top_level else name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    else:
        path = root
        for name, data in files:
            p = root / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    return {"path": path, "images": images}


def write_canonical_labels(folder: str | Path, train: np.ndarray, test: np.ndarray) -> Path:
    """Write ``canonical-labels.npz`` (labels in canonical order) next to an image folder or tar."""
    path = Path(folder) / CANONICAL_LABELS_FILE
    np.savez(path, train=np.asarray(train, dtype=np.uint8), test=np.asarray(test, dtype=np.uint8))
    return path
