"""Decoding and resizing images in worker processes."""
from __future__ import annotations

import io
import multiprocessing
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from .core import DECODE_CHUNK, WORKERS_ENV, DatasetError

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


