"""Image grids and PNG files, written atomically (where the file system renames
atomically) so a reader never sees half a file."""

from __future__ import annotations

import math
import os

import numpy as np
import tensorflow as tf


def make_grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """uint8 [N, H, W, C] -> one uint8 [rows*H, cols*W, C] image, row-major, 1px gaps."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    columns = columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / columns))
    grid = np.zeros((rows * (h + 1) - 1, columns * (w + 1) - 1, c), np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * (h + 1) : r * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = image
    return grid


def upscale(image: np.ndarray, min_side: int = 256) -> np.ndarray:
    """Nearest-neighbour enlargement so tiny images are visible in a viewer."""
    factor = max(1, min_side // max(image.shape[:2]))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes then renames; tf.io.gfile, so gs:// and other TensorFlow file systems work."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(tmp):  # A full disk leaves no half file behind.
            tf.io.gfile.remove(tmp)
        raise


def write_png(path: str, image: np.ndarray) -> None:
    """Writes a uint8 [H, W, C] image as PNG."""
    atomic_write_bytes(path, tf.io.encode_png(np.asarray(image, np.uint8)).numpy())
