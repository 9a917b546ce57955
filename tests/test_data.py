"""Dataset loaders (on small fixtures in the real formats) and batched augmentations, on CPU."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from jdcl_bench.data import augment as A
from jdcl_bench.data.colour import equalize, hue_shift, luma
from jdcl_bench.data import datasets as D
from jdcl_bench.data import decode as DEC
from jdcl_bench.data.datasets import DatasetError, content_hash, load_dataset
from jdcl_bench.data.fixtures import write_canonical_labels, write_cifar_fixture, write_imagefolder_fixture

IDENTITY_KEYS = {"name", "variant", "canonical", "content_hash", "source", "note"}


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    # never read the developer's data or write to their cache from tests
    for var in (D.DATA_ENV, D.CACHE_ENV, D.ALLOW_NONCANONICAL_ENV, D.WORKERS_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(D.CACHE_ENV, str(tmp_path / "default-cache"))


def _check_arrays(ds):
    assert ds.train_x.dtype == np.uint8 and ds.test_x.dtype == np.uint8
    assert ds.train_y.dtype == np.int64 and ds.test_y.dtype == np.int64
    assert ds.train_x.ndim == 4 and ds.train_x.shape[0] == ds.train_y.shape[0]
    assert ds.test_x.shape[0] == ds.test_y.shape[0]
    assert set(ds.identity) == IDENTITY_KEYS
    assert ds.identity["content_hash"] == content_hash(ds.train_x, ds.train_y, ds.test_x, ds.test_y)


# ---- CIFAR in torchvision's layout -------------------------------------------------------------

@pytest.mark.parametrize("kind, per_class", [("cifar10", 3), ("cifar100", 1)])
def test_cifar_fixture_loads_in_canonical_order(tmp_path, kind, per_class):
    fx = write_cifar_fixture(tmp_path / "data", kind=kind, n_train_per_class=per_class, n_test_per_class=1)
    ds = load_dataset(kind, data_dir=tmp_path / "data", verify=False, cache_dir=tmp_path / "cache")
    _check_arrays(ds)
    k = 10 if kind == "cifar10" else 100
    assert ds.train_x.shape == (k * per_class, 32, 32, 3) and ds.test_x.shape == (k, 32, 32, 3)
    np.testing.assert_array_equal(ds.train_x, fx["train_x"])  # write order = canonical order
    np.testing.assert_array_equal(ds.train_y, fx["train_y"])
    np.testing.assert_array_equal(ds.test_x, fx["test_x"])
    np.testing.assert_array_equal(ds.test_y, fx["test_y"])
    assert ds.classes == fx["classes"]
    assert ds.identity["canonical"] is False
    assert ds.identity["variant"] == "torchvision-layout-unverified"


def test_cifar_md5_mismatch_is_a_clear_error(tmp_path):
    write_cifar_fixture(tmp_path, n_train_per_class=1, n_test_per_class=1)
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert "corrupt" in msg and "md5" in msg and "expected" in msg
    assert "data_batch_1" in msg and "re-download" in msg


def test_cifar_md5_mismatch_allowed_by_env(tmp_path, monkeypatch):
    write_cifar_fixture(tmp_path, n_train_per_class=1, n_test_per_class=1)
    monkeypatch.setenv(D.ALLOW_NONCANONICAL_ENV, "1")
    ds = load_dataset("cifar10", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert ds.identity["canonical"] is False and ds.identity["variant"] == "torchvision-layout-modified"


def test_cifar_resize(tmp_path):
    write_cifar_fixture(tmp_path, n_train_per_class=1, n_test_per_class=1)
    ds = load_dataset("cifar10", data_dir=tmp_path, verify=False, image_size=16, cache_dir=tmp_path / "cache")
    assert ds.train_x.shape == (10, 16, 16, 3) and "resized16" in ds.identity["variant"]


def test_cifar_class_list_must_match_meta(tmp_path):
    write_cifar_fixture(tmp_path, n_train_per_class=1, n_test_per_class=1)
    with pytest.raises(DatasetError, match="class list"):
        load_dataset("cifar10", data_dir=tmp_path, verify=False, class_names=list("abcdefghij"),
                     cache_dir=tmp_path / "cache")


def test_torchvision_names_match_torchvision():
    from torchvision.datasets import CIFAR10, CIFAR100

    from jdcl_bench.data.core import _TORCHVISION_NAMES

    assert _TORCHVISION_NAMES["cifar10"] == (CIFAR10.base_folder, CIFAR10.filename)
    assert _TORCHVISION_NAMES["cifar100"] == (CIFAR100.base_folder, CIFAR100.filename)


def test_missing_data_message(tmp_path, monkeypatch):
    empty = tmp_path / "nothing-here"
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", data_dir=empty)
    msg = str(err.value)
    assert str(empty) in msg and "cifar-10-batches-py" in msg
    assert "cifar-10-python.tar.gz" in msg and "https://www.cs.toronto.edu/~kriz/cifar.html" in msg
    assert "c58f30108f718f92721af3b95e74349a" in msg and "--download" in msg

    monkeypatch.setenv(D.DATA_ENV, str(tmp_path / "from-env"))
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar100")
    msg = str(err.value)
    assert str(tmp_path / "from-env") in msg and "$JDCL_BENCH_DATA" in msg
    assert "eb9058c3a382ffc7106e4002c42a8d85" in msg

    with pytest.raises(DatasetError, match="ImageNet-100"):
        load_dataset("imagenet100", data_dir=empty)
    with pytest.raises(DatasetError, match="download"):
        load_dataset("imagenet100", data_dir=empty, download=True)


# ---- image folders ---------------------------------------------------------------------------

CLASSES = ["cat", "dog", "emu"]


def _class_blocked(images, split, classes):
    x = np.concatenate([images[split][c] for c in classes])
    y = np.repeat(np.arange(len(classes)), [len(images[split][c]) for c in classes])
    return x, y


def test_imagefolder_dir_png(tmp_path):
    fx = write_imagefolder_fixture(tmp_path / "folder", CLASSES, 4, 10, fmt="png", n_test_per_class=2)
    # class_names fixes the label order, whatever the folders' sort order
    order = ["emu", "cat", "dog"]
    ds = load_dataset("toy", data_dir=fx["path"], class_names=order, cache_dir=tmp_path / "cache")
    _check_arrays(ds)
    for split, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
        ex, ey = _class_blocked(fx["images"], split, order)
        np.testing.assert_array_equal(x, ex)  # PNG is lossless
        np.testing.assert_array_equal(y, ey)
    assert ds.classes == order
    assert ds.identity["variant"] == "imagefolder" and ds.identity["canonical"] is False


def test_imagefolder_tar_jpeg_with_top_level_folder(tmp_path):
    fx = write_imagefolder_fixture(tmp_path, CLASSES, 3, 12, fmt="jpg", as_tar=True, top_level="toy-v1")
    ds = load_dataset("toy", data_dir=tmp_path, cache_dir=tmp_path / "cache")  # finds the single tar
    _check_arrays(ds)
    assert ds.train_x.shape == (9, 12, 12, 3) and ds.classes == CLASSES  # sorted folder names
    ex, ey = _class_blocked(fx["images"], "train", CLASSES)
    np.testing.assert_array_equal(ds.train_y, ey)
    assert np.abs(ds.train_x.astype(int) - ex).mean() < 20  # JPEG is lossy but close (random: ~85)
    assert ds.identity["variant"] == "imagefolder-jpeg" and "JPEG" in ds.identity["note"]
    assert ds.identity["source"] == str(fx["path"])
    # the tar itself can be given as data_dir too
    again = load_dataset("toy", data_dir=fx["path"], cache_dir=tmp_path / "cache2")
    np.testing.assert_array_equal(again.train_x, ds.train_x)


def test_cifar10_falls_back_to_imagefolder_with_canonical_names(tmp_path):
    names = list(reversed(D.CIFAR10_CLASSES))  # folder creation order must not matter
    write_imagefolder_fixture(tmp_path, names, 1, 8, fmt="png")
    ds = load_dataset("cifar10", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert ds.classes == D.CIFAR10_CLASSES
    np.testing.assert_array_equal(ds.train_y, np.arange(10))


def test_canonical_reordering(tmp_path):
    fx = write_imagefolder_fixture(tmp_path, CLASSES, 4, 8, fmt="png", as_tar=True, n_test_per_class=2)
    rng = np.random.default_rng(1)
    train_labels = rng.permutation(np.repeat(np.arange(3), 4))
    test_labels = rng.permutation(np.repeat(np.arange(3), 2))
    write_canonical_labels(tmp_path, train_labels, test_labels)
    ds = load_dataset("toy", data_dir=tmp_path, class_names=CLASSES, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds.train_y, train_labels)
    np.testing.assert_array_equal(ds.test_y, test_labels)
    for split, x, labels in (("train", ds.train_x, train_labels), ("test", ds.test_x, test_labels)):
        seen = {c: 0 for c in range(3)}
        for i, c in enumerate(labels):  # image i = the k-th image (by file name) of class labels[i]
            np.testing.assert_array_equal(x[i], fx["images"][split][CLASSES[c]][seen[c]])
            seen[c] += 1
    assert "canonical-labels" in ds.identity["note"]

    # counts that do not fit the folder are an error
    write_canonical_labels(tmp_path, np.zeros(12, dtype=int), test_labels)
    with pytest.raises(DatasetError, match="does not fit"):
        load_dataset("toy", data_dir=tmp_path, class_names=CLASSES, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("as_tar", [False, True])
def test_unknown_class_folder(tmp_path, as_tar):
    write_imagefolder_fixture(tmp_path, ["cat", "dog", "yak", "zebra"], 1, 8, fmt="png", as_tar=as_tar)
    with pytest.raises(DatasetError) as err:
        load_dataset("toy", data_dir=tmp_path, class_names=["cat", "dog"], cache_dir=tmp_path / "cache")
    assert "yak, zebra" in str(err.value) and str(tmp_path) in str(err.value)


def test_imagefolder_resize_and_size_mismatch(tmp_path):
    write_imagefolder_fixture(tmp_path / "a", CLASSES, 2, (12, 8), fmt="png")
    ds = load_dataset("toy", data_dir=tmp_path / "a", image_size=6, cache_dir=tmp_path / "cache")
    assert ds.train_x.shape == (6, 6, 6, 3)

    write_imagefolder_fixture(tmp_path / "b", CLASSES, 1, 8, fmt="png")
    Image.new("RGB", (9, 9)).save(tmp_path / "b" / "train" / "cat" / "0001.png")
    with pytest.raises(DatasetError, match="image_size"):
        load_dataset("toy", data_dir=tmp_path / "b", cache_dir=tmp_path / "cache")


def test_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    fx = write_imagefolder_fixture(tmp_path / "folder", CLASSES, 3, 8, fmt="png")
    cache = tmp_path / "cache"
    first = load_dataset("toy", data_dir=fx["path"], cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1 and not list(cache.glob("*.tmp"))

    calls = []
    real = DEC._decode_chunk

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(DEC, "_decode_chunk", counting)
    second = load_dataset("toy", data_dir=fx["path"], cache_dir=cache)
    assert calls == []  # served from the cache, nothing decoded
    for a in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(first, a), getattr(second, a))
    assert second.identity == first.identity and second.classes == first.classes

    # a changed file changes the key: decoded again
    p = fx["path"] / "train" / "cat" / "0000.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(p)
    os.utime(p, ns=(1, 1))
    third = load_dataset("toy", data_dir=fx["path"], cache_dir=cache)
    assert calls and (third.train_x[0] == [1, 2, 3]).all()


def test_decode_in_worker_processes(tmp_path, monkeypatch):
    # more than one chunk with two workers: the process-pool path gives the same arrays
    monkeypatch.setattr(DEC, "DECODE_CHUNK", 4)
    fx = write_imagefolder_fixture(tmp_path, CLASSES, 5, 8, fmt="png", as_tar=True)
    monkeypatch.setenv(D.WORKERS_ENV, "2")
    ds = load_dataset("toy", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    ex, _ = _class_blocked(fx["images"], "train", CLASSES)
    np.testing.assert_array_equal(ds.train_x, ex)


# ---- digits and synthetic --------------------------------------------------------------------

def test_digits():
    ds = load_dataset("digits")
    _check_arrays(ds)
    assert ds.train_x.shape == (1347, 8, 8, 1) and ds.test_x.shape == (450, 8, 8, 1)
    assert ds.train_x.max() == 255 and ds.classes == [str(d) for d in range(10)]
    assert ds.identity["canonical"] is True and ds.identity["variant"] == "sklearn"
    counts = np.bincount(ds.test_y, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 47  # stratified
    again = load_dataset("digits")
    assert again.identity["content_hash"] == ds.identity["content_hash"]
    big = load_dataset("digits", image_size=16)
    assert big.train_x.shape == (1347, 16, 16, 1)
    np.testing.assert_array_equal(big.train_y, ds.train_y)


def test_synthetic_determinism_and_learnability():
    a = load_dataset("synthetic")
    _check_arrays(a)
    assert a.train_x.shape == (128, 8, 8, 3) and a.test_x.shape == (64, 8, 8, 3)
    assert a.identity["canonical"] is True and a.identity["variant"] == "synthetic"
    b = load_dataset("synthetic", synthetic={"seed": 0})
    assert a.identity["content_hash"] == b.identity["content_hash"]
    c = load_dataset("synthetic", synthetic={"seed": 1})
    assert c.identity["content_hash"] != a.identity["content_hash"]
    # generated from its own Generator: the global numpy state neither matters nor moves
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    d = load_dataset("synthetic")
    assert d.identity["content_hash"] == a.identity["content_hash"]
    assert (np.random.get_state()[1] == before).all()

    grey = load_dataset("synthetic", synthetic={"channels": 1, "num_classes": 6, "image_size": 12})
    assert grey.train_x.shape == (192, 12, 12, 1)

    # the class colours alone make the default set separable by nearest class mean on raw pixels
    xtr = a.train_x.reshape(len(a.train_x), -1).astype(float)
    xte = a.test_x.reshape(len(a.test_x), -1).astype(float)
    means = np.stack([xtr[a.train_y == k].mean(0) for k in range(len(a.classes))])
    pred = ((xte[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == a.test_y).mean() > 0.9

    with pytest.raises(DatasetError, match="unknown synthetic"):
        load_dataset("synthetic", synthetic={"clases": 3})


# ---- augmentations -----------------------------------------------------------------------------

def _images(b=6, c=3, h=16, w=16, seed=0):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


OPS = {
    "hflip": A.hflip,
    "random_crop": A.random_crop,
    "random_crop_constant": lambda x, g: A.random_crop(x, g, padding=3, mode="constant"),
    "random_resized_crop": A.random_resized_crop,
    "cutout": lambda x, g: A.cutout(x, g, size=6),
    "rand_augment": A.rand_augment,
    "weak_view": A.weak_view,
    "strong_view": A.strong_view,
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_augment_shape_range_determinism(name):
    op = OPS[name]
    x = _images(b=8)
    global_state = torch.get_rng_state()
    y = op(x, _gen(3))
    assert torch.equal(torch.get_rng_state(), global_state)  # the global RNG is never used
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.equal(op(x, _gen(3)), y)  # same generator state, same result
    # sample i's augmentation does not depend on the rest of the batch
    assert torch.equal(op(x[:3], _gen(3)), y[:3])
    other = torch.cat([x[:1], _images(b=7, seed=9)])
    assert torch.equal(op(other, _gen(3))[0], y[0])
    # and the generator really drives it (hflip/cutout are visible with many samples)
    big = _images(b=32)
    assert not torch.equal(op(big, _gen(1)), op(big, _gen(2)))


def test_one_channel_images():
    x = _images(b=8, c=1)
    for op in OPS.values():
        y = op(x, _gen())
        assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1


def test_hflip_known_image():
    x = torch.arange(12.0).view(1, 1, 3, 4).repeat(2, 1, 1, 1)
    flipped = A.hflip(x, _gen(), p=1.0)
    assert flipped[0, 0, 0].tolist() == [3.0, 2.0, 1.0, 0.0] and flipped[1, 0, 2].tolist() == [11.0, 10.0, 9.0, 8.0]
    assert torch.equal(A.hflip(x, _gen(), p=0.0), x)


def test_random_crop_padding_zero_is_identity_and_crops_are_windows():
    x = _images(b=5)
    assert torch.equal(A.random_crop(x, _gen(), padding=0), x)
    y = A.random_crop(x, _gen(4), padding=2, mode="constant")
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):  # every output is some 16x16 window of the zero-padded image
        windows = [padded[i, :, oy:oy + 16, ox:ox + 16] for oy in range(5) for ox in range(5)]
        assert any(torch.equal(y[i], wnd) for wnd in windows)


def test_cutout_square():
    x = torch.ones(64, 3, 32, 32)
    y = A.cutout(x, _gen(5), size=8)
    full = 0
    for img in y:
        mask = img[0] == A.CUTOUT_FILL
        assert torch.equal(mask, (img == A.CUTOUT_FILL).all(0))  # all channels painted
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        nr, nc = len(rows), len(cols)
        assert 0 < nr <= 8 and 0 < nc <= 8 and int(mask.sum()) == nr * nc  # one clipped square
        assert rows.max() - rows.min() + 1 == nr and cols.max() - cols.min() + 1 == nc
        touches = rows.min() == 0 or cols.min() == 0 or rows.max() == 31 or cols.max() == 31
        if not touches:
            assert nr == nc == 8
            full += 1
    assert full > 30


def test_random_resized_crop_full_scale_is_identity():
    x = _images(b=3)
    y = A.random_resized_crop(x, _gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(y, x, atol=1e-5)


def _pil_batch(x, fn):
    imgs = (x * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return A.to_float(np.stack([np.asarray(fn(Image.fromarray(a))) for a in imgs]))


def test_hue_shift_is_torchvision_adjust_hue_per_image():
    """ColorJitter's hue step (PAWS, GUIDE): one factor per image, greys, ties between channels and
    a saturated image included."""
    from torchvision.transforms.functional import adjust_hue

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 9, 9, generator=g)
    x[1] = x[1, :1]  # grey: no hue to shift
    x[2, 1] = x[2, 0]  # red and green tie for the maximum in many pixels
    x[3] = (x[3] > 0.5).float()  # saturated primaries and secondaries, black and white
    x[4] = (x[4] * 8).round() / 8  # many exact ties
    turns = torch.tensor([0.3, -0.2, 0.5, -0.45, 0.1, 0.0])
    ours = hue_shift(x, turns)
    ref = torch.stack([adjust_hue(x[i], float(turns[i])) for i in range(len(x))])
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=0)
    torch.testing.assert_close(ours[1], x[1], atol=1e-6, rtol=0)
    assert not torch.allclose(ours[0], x[0], atol=0.05)  # it does shift


def test_rand_augment_ops_match_pil():
    x = A.to_float(np.random.default_rng(0).integers(20, 230, (4, 16, 16, 3), dtype=np.uint8))
    x[0] = A.to_float(np.random.default_rng(1).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8))[0]
    b = len(x)
    full = lambda v: torch.full((b, 1, 1, 1), float(v))  # noqa: E731
    exact = [
        (equalize(x), ImageOps.equalize),
        (A._posterize(x, full(5)), lambda i: ImageOps.posterize(i, 5)),
        (A._solarize(x, full(128)), lambda i: ImageOps.solarize(i, 128)),
    ]
    for ours, fn in exact:
        assert torch.allclose(ours, _pil_batch(x, fn), atol=1e-6)
    f = 0.41
    near = [  # PIL rounds to 8 bits after each op; we stay in float
        (A._autocontrast(x), ImageOps.autocontrast),
        (A._blend(torch.zeros_like(x), x, f), lambda i: ImageEnhance.Brightness(i).enhance(f)),
        (A._blend(luma(x).expand_as(x), x, f), lambda i: ImageEnhance.Color(i).enhance(f)),
        (A._blend(luma(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), x, f),
         lambda i: ImageEnhance.Contrast(i).enhance(f)),
        (A._blend(A._smooth(x), x, f), lambda i: ImageEnhance.Sharpness(i).enhance(f)),
    ]
    for ours, fn in near:
        assert (ours - _pil_batch(x, fn)).abs().max() <= 1.5 / 255
    level = lambda v: torch.full((b,), float(v), dtype=torch.float64)  # noqa: E731
    geometric = [  # FixMatch's levels: rotate int(v*3) degrees, shear v*0.03, translate int(v*0.03*size)
        ("Rotate", 5, 1, lambda i: i.rotate(15)),
        ("Rotate", 7, -1, lambda i: i.rotate(-21)),
        ("ShearX", 5, 1, lambda i: i.transform(i.size, Image.AFFINE, (1, 0.15, 0, 0, 1, 0))),
        ("ShearY", 9, -1, lambda i: i.transform(i.size, Image.AFFINE, (1, 0, 0, -0.27, 1, 0))),
        ("TranslateX", 5, 1, lambda i: i.transform(i.size, Image.AFFINE, (1, 0, int(0.15 * 16), 0, 1, 0))),
        ("TranslateY", 9, -1, lambda i: i.transform(i.size, Image.AFFINE, (1, 0, 0, 0, 1, int(-0.27 * 16)))),
    ]
    for name, v, sign, fn in geometric:
        mats = A._geometric_matrix(name, level(v), level(sign), 16, 16)
        assert torch.allclose(A._affine(x, mats, A.GEOMETRIC_FILL), _pil_batch(x, fn), atol=1e-6), name


def test_rand_augment_changes_about_three_quarters():
    # two steps, each applied with probability 0.5 (and Identity is 1 of 14 ops)
    x = _images(b=400, h=8, w=8)
    y = A.rand_augment(x, _gen(), n=2, m=10)
    changed = (y - x).abs().flatten(1).amax(1) > 1e-6
    assert 0.6 < changed.float().mean() < 0.85
    with pytest.raises(ValueError):
        A.rand_augment(x, _gen(), m=1)


def test_generator_must_be_cpu_and_input_float():
    with pytest.raises(ValueError):
        A.hflip(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), _gen())
    with pytest.raises(ValueError):
        A.hflip(torch.zeros(2, 3, 4, 4), None)


def test_conversions():
    arr = np.random.default_rng(0).integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)
    t = A.images_to_tensor(arr)
    assert t.dtype == torch.uint8 and t.shape == (2, 3, 5, 4) and t.is_contiguous()
    assert int(t[1, 2, 3, 1]) == int(arr[1, 3, 1, 2])
    u = A.to_unit(t)
    assert u.dtype == torch.float32 and torch.allclose(u * 255, t.float())
    assert torch.equal(A.to_float(arr), u) and torch.equal(A.to_float(t), u)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_result_on_cpu_and_gpu():
    x = _images(b=64, h=32, w=32)
    for name, op in sorted(OPS.items()):
        cpu = op(x, _gen(7))
        gpu = op(x.cuda(), _gen(7))
        assert gpu.device.type == "cuda"
        assert torch.allclose(cpu, gpu.cpu(), atol=1e-5), name


@pytest.mark.parametrize("view", ["weak_view", "strong_view"])
def test_views_without_flips_draw_the_same_numbers(view):
    """flip_p=0 (protocols whose images must not be mirrored, like digits) turns the flip off and
    leaves every other random choice as it was: a left-right symmetric image gets the same view."""
    op = getattr(A, view)
    sym = _images(b=16)
    sym = torch.cat([sym[..., :8], sym[..., :8].flip(3)], dim=3)  # 16x16, symmetric about the middle
    g0, g5 = _gen(7), _gen(7)
    assert torch.equal(op(sym, g0, flip_p=0.0), op(sym, g5, flip_p=0.5))
    assert torch.equal(g0.get_state(), g5.get_state())
    asym = _images(b=16)
    assert not torch.equal(op(asym, _gen(7), flip_p=0.0), op(asym, _gen(7), flip_p=0.5))


def test_rand_augment_copies_its_parameters_to_the_device_in_a_few_transfers(monkeypatch):
    """Every copy of a step's random parameters to the GPU costs the host a pinned buffer and a
    launch: a RandAugment step sends its ops and magnitudes as one tensor each, not one per op (the
    JDCL loop bench's local stage made 60 copies a step, 40 of them here), however many ops there are."""
    calls = []
    real = A.to_device
    monkeypatch.setattr(A, "to_device", lambda t, *a, **k: calls.append(tuple(t.shape)) or real(t, *a, **k))
    x = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    A._apply_ops(x, torch.arange(64) % len(A.RAND_AUGMENT_OPS), torch.full((64,), 5.0, dtype=torch.float64),
                 torch.ones(64, dtype=torch.bool), torch.ones(64, dtype=torch.float64))
    # the op one-hot and the magnitudes, Sharpness' 3x3 kernel, the affine matrices and the mask of
    # the samples with a geometric op: a fixed handful, not one per op
    assert sorted(calls) == sorted([(64, len(A.RAND_AUGMENT_OPS)), (64, 3), (3, 3), (64, 2, 3), (64,)])
