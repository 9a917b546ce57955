"""What every dataset source shares: the array container, its errors, content hash, the
folders data and cache live in, and the names of the known datasets."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

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


