"""Data sets as tf.data streams of images in [-1, 1], split into per-replica batches.

The order of examples is a pure function of (seed, step): epoch e is a stateless
permutation seeded by (seed, e), and step s reads positions [s * n, (s + 1) * n) of the
concatenated epochs, n = global batch * d_steps. Resuming at step s therefore continues
the same stream, with nothing about the input kept in the checkpoint, and every replica
count sees the same global batches (replica r takes the r-th slice of each).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf

from ganfm.config import SUPPORTED_IMAGE_SIZES, ConfigError, DataConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
FOLDER_DEFAULT_SIZE = 64
SYNTHETIC_POOL = 1024
SYNTHETIC_DEFAULT_SIZE = 32
_PERMUTATION_SALT = 0x5EED
_MAX_EPOCHS = 2**40
SPLITS = ("train", "test")
DIGITS_HOLDOUT_EVERY = 5
_IDX_PREFIXES = {"train": "train", "test": "t10k"}


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSource:
    """Images at their final size: an in-memory uint8 NHWC array, or image files."""

    name: str
    image_size: int
    channels: int
    images: np.ndarray | None = None
    files: tuple[str, ...] = ()
    labels: np.ndarray | None = None

    @property
    def num_examples(self) -> int:
        return len(self.images) if self.images is not None else len(self.files)


def load_source(data: DataConfig, split: str = "train") -> ImageSource:
    """Loads or lists the data set named by --dataset, at the requested size.

    split="test" is the held-out split evaluation compares against (never trained on);
    data sets without one raise ConfigError.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    name = data.dataset
    if name == "digits":
        images, labels = load_digits(split)
    elif name in ("mnist", "fashion_mnist"):
        if data.data_dir:
            images, labels = load_idx_dir(data.data_dir, split)
        else:
            images, labels = load_tfds(name, "", data.image_size, split)
    elif name.startswith("tfds:"):
        images, labels = load_tfds(name.split(":", 1)[1], data.data_dir, data.image_size, split)
    elif split != "train":
        raise ConfigError(f"--dataset={name} has no held-out split to evaluate against")
    elif name.startswith("folder:"):
        return _folder_source(name.split(":", 1)[1], data)
    elif name == "synthetic":
        size = data.image_size or SYNTHETIC_DEFAULT_SIZE
        channels = data.channels or 3
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (SYNTHETIC_POOL, size, size, channels), np.uint8)
        return ImageSource(name, size, channels, images=images)
    else:
        raise ConfigError(
            f"--dataset={name!r} is unknown; use digits, mnist, fashion_mnist, synthetic, "
            "tfds:<name> or folder:<path>"
        )
    return _in_memory_source(name, images, labels, data)


def load_digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits, 8x8, shipped with the package.

    The set has no test split; every DIGITS_HOLDOUT_EVERY-th image of each class is
    held out as one (364 images), so training never sees what evaluation compares to.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    # Pixel values are 0..16; spread them over 0..255.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    rank_in_class = np.zeros(len(labels), np.int64)
    for label in np.unique(labels):
        members = labels == label
        rank_in_class[members] = np.arange(members.sum())
    keep = (rank_in_class % DIGITS_HOLDOUT_EVERY == 0) == (split == "test")
    return images[keep], labels[keep]


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ConfigError(f"cannot read {path} ({e}); re-download or reinstall it") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or len(raw) < 4 + 4 * raw[3]:
        raise ConfigError(f"{path} is not an IDX file of unsigned bytes; check --data_dir")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(np.int64)
    expected, actual = int(np.prod(dims)), len(raw) - 4 - 4 * ndim
    if actual != expected:
        raise ConfigError(
            f"{path} holds {actual} values but its header says {expected}; the file is "
            "damaged: re-download or reinstall it"
        )
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(data_dir: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path
    return None


def load_idx_dir(data_dir: str, split: str = "train") -> tuple[np.ndarray, np.ndarray | None]:
    """A split of an MNIST-format directory: train-* or t10k-images-idx3-ubyte[.gz]."""
    prefix = _IDX_PREFIXES[split]
    images_path = _find(data_dir, f"{prefix}-images-idx3-ubyte")
    if images_path is None:
        raise ConfigError(
            f"--data_dir={data_dir!r} has no {prefix}-images-idx3-ubyte[.gz]; point it at "
            "MNIST-format files (Debian: /usr/share/datasets/fashion-mnist)"
        )
    labels_path = _find(data_dir, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path)
    labels = read_idx(labels_path).astype(np.int64) if labels_path else None
    if labels is not None and len(labels) != len(images):
        raise ConfigError(
            f"{labels_path} has {len(labels)} labels for {len(images)} images in "
            f"{images_path}; the files are from different sets"
        )
    if images.ndim == 3:
        images = images[..., None]
    return images, labels


def load_tfds(
    name: str, data_dir: str, image_size: int = 0, split: str = "train"
) -> tuple[np.ndarray, np.ndarray | None]:
    """A split of a TFDS image data set, read into memory.

    With image_size, images are center-cropped and resized as they are read, so data
    sets of varying image sizes load too.
    """
    import tensorflow_datasets as tfds

    try:
        ds, info = tfds.load(name, split=split, data_dir=data_dir or None, with_info=True)
    except Exception as e:  # TFDS raises many types; all mean "cannot get this data".
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"cannot load TFDS data set {name!r}: {first_line}; prepare it in --data_dir "
            "or, for mnist/fashion_mnist, pass --data_dir with IDX files"
        ) from None
    if "image" not in info.features:
        raise ConfigError(f"TFDS data set {name!r} has no 'image' feature; pick an image data set")
    has_label = "label" in info.features
    if image_size:
        ds = ds.map(lambda ex: {**ex, "image": _crop_and_resize(ex["image"], image_size)})
    images, labels = [], []
    try:
        for example in tfds.as_numpy(ds.batch(1024)):
            images.append(example["image"])
            if has_label:
                labels.append(example["label"])
    except tf.errors.InvalidArgumentError:
        raise ConfigError(
            f"TFDS data set {name!r} has images of different sizes; pass --image_size "
            f"(one of {', '.join(map(str, SUPPORTED_IMAGE_SIZES))}) to crop and resize them"
        ) from None
    return np.concatenate(images), (np.concatenate(labels) if has_label else None)


def _resize(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Resizes uint8 NHWC images (square or center-cropped) and converts channels."""
    if images.shape[-1] in (2, 4):  # Gray or RGB plus alpha: drop the alpha.
        images = images[..., :-1]
    if images.shape[-1] != channels:
        if channels == 3:
            images = np.repeat(images, 3, axis=-1)
        else:
            gray = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            images = np.round(gray)[..., None].astype(np.uint8)
    if images.shape[1:3] == (size, size):
        return images
    out = []
    for start in range(0, len(images), 4096):
        chunk = tf.constant(images[start : start + 4096])
        out.append(_crop_and_resize(chunk, size).numpy())
    return np.concatenate(out)


def _crop_and_resize(images: tf.Tensor, size: int) -> tf.Tensor:
    """Center-crops to a square, then resizes (area when shrinking keeps thin strokes)."""
    height, width = tf.shape(images)[-3], tf.shape(images)[-2]
    side = tf.minimum(height, width)
    images = tf.image.crop_to_bounding_box(
        images, (height - side) // 2, (width - side) // 2, side, side
    )
    resized = tf.image.resize(tf.cast(images, tf.float32), [size, size], antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _in_memory_source(
    name: str, images: np.ndarray, labels: np.ndarray | None, data: DataConfig
) -> ImageSource:
    native = images.shape[1]
    size = data.image_size or native
    if images.shape[1] != images.shape[2] and not data.image_size:
        raise ConfigError(
            f"{name} images are {images.shape[1]}x{images.shape[2]}; pass --image_size "
            f"(one of {', '.join(map(str, SUPPORTED_IMAGE_SIZES))}) to crop and resize them"
        )
    if size not in SUPPORTED_IMAGE_SIZES:
        raise ConfigError(
            f"{name} images are {native}x{native}, which the models do not support; pass "
            f"--image_size (one of {', '.join(map(str, SUPPORTED_IMAGE_SIZES))})"
        )
    channels = data.channels or images.shape[-1]
    if channels not in (1, 3):
        raise ConfigError(f"{name} images have {channels} channels; pass --channels=1 or 3")
    return ImageSource(name, size, channels, images=_resize(images, size, channels), labels=labels)


def list_image_files(root: str) -> tuple[str, ...]:
    """Every PNG/JPEG file under root, sorted so the order is the same on every host."""
    if not os.path.isdir(root):
        raise ConfigError(f"--dataset=folder:{root} is not a directory; give a folder of images")
    files = []
    for dirpath, _, names in os.walk(root, followlinks=True):
        files.extend(
            os.path.join(dirpath, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)
        )
    if not files:
        raise ConfigError(
            f"--dataset=folder:{root} holds no {'/'.join(IMAGE_EXTENSIONS)} files; "
            "point it at a folder of images"
        )
    return tuple(sorted(files))


_PNG_START = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"  # The IEND chunk's type and CRC close every PNG.
_JPEG_START = b"\xff\xd8\xff"
_JPEG_END = b"\xff\xd9"
_JPEG_TAIL = 1 << 16  # Cameras may append data after the end marker: look this far back.


def image_file_problem(path: str) -> str | None:
    """Why `path` cannot be a whole PNG/JPEG (empty, not one, cut short), or None.

    Reads a few bytes at each end, not the whole file: cheap enough for every file of a
    large folder, and it catches the usual damage (interrupted copies, renamed files).
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            f.seek(max(0, size - _JPEG_TAIL))
            tail = f.read()
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if size == 0:
        return "is empty"
    if head.startswith(_PNG_START):
        return None if tail.endswith(_PNG_END) else "is cut short (a PNG without its end)"
    if head.startswith(_JPEG_START):
        return None if _JPEG_END in tail else "is cut short (a JPEG without its end marker)"
    return "is not a PNG or JPEG file"


def check_image_files(root: str, files: tuple[str, ...]) -> None:
    """Refuses a folder with damaged files before training, naming them: mid-run, a
    file TensorFlow cannot decode stops the input pipeline without saying which."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        problems = [
            (f, p) for f, p in zip(files, pool.map(image_file_problem, files), strict=True) if p
        ]
    if problems:
        shown = "; ".join(f"{f} {p}" for f, p in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConfigError(
            f"--dataset=folder:{root}: {len(problems)} of {len(files)} image files are "
            f"damaged: {shown}{more}; delete or re-encode them"
        )


def _folder_source(root: str, data: DataConfig) -> ImageSource:
    files = list_image_files(root)
    check_image_files(root, files)
    size = data.image_size or FOLDER_DEFAULT_SIZE
    return ImageSource(f"folder:{root}", size, data.channels or 3, files=files)


def decode_image_file(path: tf.Tensor, size: int, channels: int) -> tf.Tensor:
    """Reads, decodes, center-crops and resizes one PNG/JPEG file to uint8."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
    image.set_shape([None, None, channels])
    return _crop_and_resize(image, size)


def to_float(images: tf.Tensor) -> tf.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0


def to_uint8(images: tf.Tensor) -> tf.Tensor:
    """float [-1, 1] -> uint8 [0, 255], clipping what the generator overshoots."""
    scaled = tf.round((tf.cast(images, tf.float32) + 1.0) * 127.5)
    return tf.cast(tf.clip_by_value(scaled, 0.0, 255.0), tf.uint8)


def _epoch_permutation(epoch: tf.Tensor, num_examples: int, seed: int) -> tf.Tensor:
    epoch_seed = tf.stack([tf.constant(seed + _PERMUTATION_SALT, tf.int64), epoch])
    return tf.random.experimental.stateless_shuffle(
        tf.range(num_examples, dtype=tf.int64), seed=epoch_seed
    )


def step_indices(
    num_examples: int, global_batch: int, d_steps: int, seed: int, start_step: int
) -> tf.data.Dataset:
    """Example indices of each step from start_step on, shaped [d_steps, global_batch]."""
    per_step = global_batch * d_steps
    start_epoch, offset = divmod(start_step * per_step, num_examples)
    epochs = tf.data.Dataset.range(start_epoch, _MAX_EPOCHS)
    stream = epochs.map(lambda e: _epoch_permutation(e, num_examples, seed)).unbatch()
    stream = stream.skip(offset).batch(per_step, drop_remainder=True)
    return stream.map(lambda idx: tf.reshape(idx, [d_steps, global_batch]))


def make_input_fn(source: ImageSource, global_batch: int, d_steps: int, seed: int, start_step: int):
    """Returns an input function for strategy.distribute_datasets_from_function.

    Each element it yields is one replica's share of one step: [d_steps, local_batch,
    H, W, C] float32 in [-1, 1]. Pipeline p yields the slices of its own replicas in
    replica order, which is the order the strategy hands elements to them.
    """

    def input_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        replicas = ctx.num_replicas_in_sync
        if global_batch % replicas:
            raise ConfigError(
                f"--batch_size={global_batch} does not split over {replicas} replicas"
            )
        local_batch = global_batch // replicas
        local_replicas = replicas // ctx.num_input_pipelines
        first = ctx.input_pipeline_id * local_replicas * local_batch
        width = local_replicas * local_batch

        def own_slices(idx):
            mine = idx[:, first : first + width]
            mine = tf.reshape(mine, [d_steps, local_replicas, local_batch])
            return tf.data.Dataset.from_tensor_slices(tf.transpose(mine, [1, 0, 2]))

        indices = step_indices(source.num_examples, global_batch, d_steps, seed, start_step)
        indices = indices.flat_map(own_slices)
        if source.images is not None:
            images = tf.constant(source.images)
            ds = indices.map(lambda i: to_float(tf.gather(images, i)))
        else:
            files = tf.constant(source.files)
            size, channels = source.image_size, source.channels
            ds = indices.unbatch().unbatch()
            ds = ds.map(
                lambda i: decode_image_file(files[i], size, channels),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
            batch = dict(drop_remainder=True)  # Static shapes (TPU, XLA).
            ds = ds.batch(local_batch, **batch).batch(d_steps, **batch).map(to_float)
        options = tf.data.Options()
        options.deterministic = True
        return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

    return input_fn
