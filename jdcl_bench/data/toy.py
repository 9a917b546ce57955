"""The datasets that need no download: scikit-learn's digits and tiny synthetic patterns."""
from __future__ import annotations

import colorsys

import numpy as np

from .core import SYNTHETIC_DEFAULTS, ArrayDataset, DatasetError, content_hash
from .decode import _resize_array

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
