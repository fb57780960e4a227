import gzip
import os
import struct

import numpy as np
import pytest
import tensorflow as tf

from ganfm import data
from ganfm.config import ConfigError, DataConfig

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def take(input_fn, n, pipelines=1, pipeline_id=0, replicas=1):
    ctx = tf.distribute.InputContext(pipelines, pipeline_id, replicas)
    return [x.numpy() for x in input_fn(ctx).take(n)]


def write_idx(path, array):
    array = np.asarray(array, np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def test_digits_ship_with_scikit_learn_and_land_in_minus_one_one():
    source = data.load_source(DataConfig("digits"))
    assert (source.image_size, source.channels, source.num_examples) == (8, 1, 1433)
    assert source.images.dtype == np.uint8 and source.images.max() == 255
    (batch,) = take(data.make_input_fn(source, 16, 2, seed=0, start_step=0), 1)
    assert batch.shape == (2, 16, 8, 8, 1) and batch.dtype == np.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0


def test_digits_hold_out_a_fifth_of_every_class_that_training_never_sees():
    train = data.load_source(DataConfig("digits"))
    test = data.load_source(DataConfig("digits"), split="test")
    assert train.num_examples + test.num_examples == 1797
    assert np.bincount(test.labels).min() >= 35 and test.num_examples == 364
    seen = {image.tobytes() for image in train.images}
    assert sum(image.tobytes() not in seen for image in test.images) >= 359  # a few repeat


def test_every_example_once_per_epoch_and_order_depends_on_seed():
    idx = list(data.step_indices(100, 10, 1, seed=5, start_step=0).take(10))
    epoch = np.concatenate([i.numpy().ravel() for i in idx])
    assert sorted(epoch.tolist()) == list(range(100))
    other = np.concatenate(
        [i.numpy().ravel() for i in data.step_indices(100, 10, 1, seed=6, start_step=0).take(10)]
    )
    assert not np.array_equal(epoch, other)


def test_resuming_at_step_k_continues_the_same_stream():
    full = [i.numpy() for i in data.step_indices(37, 8, 3, seed=1, start_step=0).take(12)]
    resumed = [i.numpy() for i in data.step_indices(37, 8, 3, seed=1, start_step=7).take(5)]
    for a, b in zip(full[7:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    assert full[0].shape == (3, 8)


@pytest.mark.parametrize("replicas, pipelines", [(2, 1), (4, 1), (4, 2), (2, 2)])
def test_replicas_see_slices_of_the_same_global_batch(replicas, pipelines):
    source = data.load_source(DataConfig("digits"))
    fn = data.make_input_fn(source, 16, 2, seed=0, start_step=3)
    (whole,) = take(fn, 1)
    per_pipeline = replicas // pipelines
    parts = []
    for p in range(pipelines):
        parts += take(fn, per_pipeline, pipelines, p, replicas)
    assert all(part.shape == (2, 16 // replicas, 8, 8, 1) for part in parts)
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)


def test_idx_files_made_here_are_read(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 28, 28), np.uint8)
    write_idx(str(tmp_path / "train-images-idx3-ubyte.gz"), images)
    write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.arange(20) % 10)
    source = data.load_source(DataConfig("mnist", str(tmp_path)))
    assert (source.image_size, source.channels, source.num_examples) == (28, 1, 20)
    np.testing.assert_array_equal(source.images[..., 0], images)
    np.testing.assert_array_equal(source.labels, np.arange(20) % 10)
    small = data.load_source(DataConfig("mnist", str(tmp_path), image_size=16, channels=3))
    assert small.images.shape == (20, 16, 16, 3)
    with pytest.raises(ConfigError, match="has no t10k-images-idx3-ubyte"):
        data.load_source(DataConfig("mnist", str(tmp_path)), split="test")
    write_idx(str(tmp_path / "t10k-images-idx3-ubyte"), images[:5])
    assert data.load_source(DataConfig("mnist", str(tmp_path)), split="test").num_examples == 5


def test_sets_without_a_held_out_split_say_so():
    with pytest.raises(ConfigError, match="no held-out split"):
        data.load_source(DataConfig("synthetic", image_size=8), split="test")


def test_truncated_or_missing_idx_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="has no train-images-idx3-ubyte"):
        data.load_source(DataConfig("fashion_mnist", str(tmp_path)))
    write_idx(str(tmp_path / "train-images-idx3-ubyte"), np.zeros((4, 5, 5)))
    with open(tmp_path / "train-images-idx3-ubyte", "r+b") as f:
        f.truncate(40)
    with pytest.raises(ConfigError, match="damaged"):
        data.load_source(DataConfig("mnist", str(tmp_path)))


@pytest.mark.skipif(
    not os.path.isdir(FASHION_DIR), reason="apt-get install dataset-fashion-mnist (.ci/run does)"
)
def test_debian_fashion_mnist_files():
    source = data.load_source(DataConfig("fashion_mnist", FASHION_DIR))
    assert source.images.shape == (60000, 28, 28, 1)
    assert sorted(np.unique(source.labels).tolist()) == list(range(10))
    (batch,) = take(data.make_input_fn(source, 8, 1, seed=0, start_step=0), 1)
    assert batch.shape == (1, 8, 28, 28, 1)


def test_folder_of_png_and_jpeg_files(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "a" / "b").mkdir(parents=True)
    shapes = [(30, 40, 3), (64, 64, 1), (20, 10, 3)]
    for i, shape in enumerate(shapes):
        image = rng.integers(0, 256, shape, np.uint8)
        path = tmp_path / ("a" if i else "a/b") / f"img{i}.{'jpg' if i == 2 else 'png'}"
        encode = tf.io.encode_jpeg if i == 2 else tf.io.encode_png
        path.write_bytes(encode(image).numpy())
    (tmp_path / "notes.txt").write_text("not an image")
    source = data.load_source(DataConfig(f"folder:{tmp_path}", image_size=16))
    assert source.num_examples == 3 and (source.image_size, source.channels) == (16, 3)
    assert list(source.files) == sorted(source.files)
    fn = data.make_input_fn(source, 4, 1, seed=0, start_step=0)
    (batch,) = take(fn, 1)
    assert batch.shape == (1, 4, 16, 16, 3)
    ctx = tf.distribute.InputContext(1, 0, 1)
    assert fn(ctx).element_spec.shape.as_list() == [1, 4, 16, 16, 3]  # Static, for TPUs.
    assert batch.min() >= -1.0 and batch.max() <= 1.0
    gray = data.load_source(DataConfig(f"folder:{tmp_path}", image_size=8, channels=1))
    (batch,) = take(data.make_input_fn(gray, 2, 1, seed=0, start_step=0), 1)
    assert batch.shape == (1, 2, 8, 8, 1)


def test_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ConfigError, match="holds no"):
        data.load_source(DataConfig(f"folder:{tmp_path}"))


def test_synthetic_source():
    source = data.load_source(DataConfig("synthetic", image_size=32, channels=3))
    (batch,) = take(data.make_input_fn(source, 8, 1, seed=0, start_step=0), 1)
    assert batch.shape == (1, 8, 32, 32, 3)


def test_tfds_source_reads_a_prepared_data_set(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        source = data.load_source(DataConfig("tfds:mnist", image_size=16))
    assert source.images.shape == (12, 16, 16, 1) and source.labels.shape == (12,)


def test_tfds_images_of_varying_sizes_need_an_image_size():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        with pytest.raises(ConfigError, match="different sizes; pass --image_size"):
            data.load_source(DataConfig("tfds:tf_flowers"))
        source = data.load_source(DataConfig("tfds:tf_flowers", image_size=32))
    assert source.images.shape == (6, 32, 32, 3)


@pytest.mark.parametrize("channels_in, channels_out", [(4, 3), (4, 1), (2, 1), (2, 3), (3, 1)])
def test_alpha_is_dropped_and_channels_converted(channels_in, channels_out):
    images = np.full((2, 8, 8, channels_in), 200, np.uint8)
    out = data._resize(images, 8, channels_out)
    assert out.shape == (2, 8, 8, channels_out)
    assert abs(int(out.max()) - 200) <= 1


def test_tfds_failure_is_one_clear_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        data.load_source(DataConfig("tfds:no_such_dataset_xyz", str(tmp_path)))
    assert "cannot load TFDS data set" in str(info.value) and "\n" not in str(info.value)


def test_uint8_round_trip():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    np.testing.assert_array_equal(data.to_uint8(data.to_float(x)).numpy(), x)


def test_damaged_image_files_are_named_before_training(tmp_path):
    rng = np.random.default_rng(0)
    png = tf.io.encode_png(rng.integers(0, 256, (12, 12, 3), np.uint8)).numpy()
    jpeg = tf.io.encode_jpeg(rng.integers(0, 256, (12, 12, 3), np.uint8)).numpy()
    (tmp_path / "good.png").write_bytes(png)
    (tmp_path / "good.jpg").write_bytes(jpeg + b"camera trailer")
    assert data.load_source(DataConfig(f"folder:{tmp_path}", image_size=8)).num_examples == 2
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_bytes(b"<html>not found</html>")
    with pytest.raises(ConfigError) as caught:
        data.load_source(DataConfig(f"folder:{tmp_path}", image_size=8))
    message = str(caught.value)
    assert "4 of 6 image files are damaged" in message, message
    assert f"{tmp_path / 'cut.jpg'} is cut short (a JPEG without its end marker)" in message
    assert f"{tmp_path / 'cut.png'} is cut short (a PNG without its end)" in message
    assert f"{tmp_path / 'empty.png'} is empty" in message
    assert "(and 1 more); delete or re-encode them" in message
    # What the check saves users from: such files stop training mid-run, unnamed.
    with pytest.raises(tf.errors.InvalidArgumentError):
        data.decode_image_file(tf.constant(str(tmp_path / "cut.png")), 8, 3)
