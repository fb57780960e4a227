"""TensorBoard statistics: equal to numpy on the layer outputs, the same for any
replica count, free of side effects on training, and served by a real TensorBoard."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from conftest import checkpoint_values, max_difference
from ganfm import data, models, stats, train_lib
from ganfm.statistics_step import _STATS_SALT, StatisticsStep
from ganfm.summaries import Summaries
from ganfm.trainer import Trainer

LAYERS = ("block0_act", "block1_conv", "features")


def build(config):
    config = train_lib.resolve(config, data.load_source(config.data))
    strategy = train_lib.setup_runtime(config)
    with strategy.scope():
        trainer = Trainer(config, *models.build_models(config), strategy=strategy)
    source = data.load_source(config.data)
    input_fn = data.make_input_fn(source, config.loop.batch_size, 1, 11, 0)
    batch = next(iter(strategy.distribute_datasets_from_function(input_fn)))
    return trainer, StatisticsStep(trainer, LAYERS), batch


def numpy_statistics(x):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return {
        "mean": x.mean(),
        "std": x.std(),
        "min": x.min(),
        "max": x.max(),
        "mean_abs": np.abs(x).mean(),
        "zero_fraction": (x == 0).mean(),
        "negative_fraction": (x < 0).mean(),
        "l2_norm_mean": np.linalg.norm(x, axis=1).mean(),
        "dead_fraction": (x.max(axis=0) <= 0).mean(),
    }


def test_every_statistic_equals_numpy_on_the_layer_outputs(tiny, tmp_path):
    trainer, step, batch = build(tiny())
    values = step.run(batch)
    real = batch[0].numpy()
    z = trainer.strategy.run(
        lambda: trainer._noise(
            tf.constant(0, tf.int64), 0, _STATS_SALT, [trainer.z_dim], tf.random.stateless_normal
        )
    )
    fake = trainer.generator(z, training=False)
    outputs = {"real": step.tap(real), "generated": step.tap(fake)}
    # Written and read back with TensorBoard's own reader.
    summaries = Summaries(str(tmp_path))
    summaries.values(7, values)
    summaries.close()
    acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    acc.Reload()
    logged = {
        tag: tf.make_ndarray(acc.Tensors(tag)[0].tensor_proto) for tag in acc.Tags()["tensors"]
    }
    checked = 0
    for kind, out in outputs.items():
        for layer in LAYERS:
            expected = numpy_statistics(out[layer].numpy())
            for key, value in expected.items():
                tag = f"activations/{kind}/{layer}/{key}"
                np.testing.assert_allclose(logged[tag], value, rtol=1e-4, atol=1e-5, err_msg=tag)
                checked += 1
            hist = logged[f"activations/{kind}/{layer}/histogram"]
            assert hist.shape == (stats.HISTOGRAM_BINS, 3)
            assert hist[:, 2].sum() == out[layer].numpy().size
            np.testing.assert_allclose(hist[0, 0], expected["min"], rtol=1e-5, atol=1e-6)
    for layer in LAYERS:
        gap = outputs["real"][layer].numpy().reshape(16, -1).mean(0) - outputs["generated"][
            layer
        ].numpy().reshape(16, -1).mean(0)
        np.testing.assert_allclose(
            logged[f"activations/gap/{layer}/mean_abs"], np.abs(gap).mean(), rtol=1e-4
        )
        np.testing.assert_allclose(
            logged[f"activations/gap/{layer}/mean_square"], (gap**2).mean(), rtol=1e-4
        )
    real_logits = outputs["real"]["logits"].numpy().ravel()
    fake_logits = outputs["generated"]["logits"].numpy().ravel()
    accuracy = np.concatenate([real_logits > 0, fake_logits < 0]).mean()
    np.testing.assert_allclose(logged["d_out/accuracy"], accuracy, rtol=1e-6)
    weights = np.sqrt(
        sum((w.numpy().astype(np.float64) ** 2).sum() for w in trainer.generator.trainable_weights)
    )
    np.testing.assert_allclose(logged["weights/generator"], weights, rtol=1e-5)
    assert (
        logged["gradients/generator/total"] > 0 and "gradients/discriminator/block0_conv" in logged
    )
    assert checked == 2 * len(LAYERS) * len(stats.SCALARS)


@pytest.mark.slow
def test_statistics_do_not_depend_on_the_replica_count(tiny):
    one = build(tiny())
    two = build(tiny(runtime=dict(strategy="mirrored", cpu_replicas=2)))
    a, b = one[1].run(one[2]), two[1].run(two[2])
    assert set(a) == set(b)
    for tag in a:
        np.testing.assert_allclose(a[tag], b[tag], rtol=1e-4, atol=1e-5, err_msg=tag)


@pytest.mark.slow
def test_logging_statistics_leaves_training_unchanged(tiny):
    often = tiny(loop=dict(summary_every=2, train_steps=4), loss=dict(fm_layers=("block0_act",)))
    once = tiny(loop=dict(summary_every=4, train_steps=4), loss=dict(fm_layers=("block0_act",)))
    train_lib.run(often)
    train_lib.run(once)
    a, b = checkpoint_values(often.loop.model_dir), checkpoint_values(once.loop.model_dir)
    assert max_difference(a, b) == 0.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_a_real_tensorboard_serves_the_run(tiny):
    config = tiny(loss=dict(fm_layers=("block0_act", "features")))
    train_lib.run(config)
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            f"--logdir={config.loop.model_dir}",
            "--host=127.0.0.1",
            f"--port={port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/data/plugin"
    try:
        deadline = time.time() + 90
        scalars = {}
        while time.time() < deadline:
            try:
                scalars = get_json(f"{base}/scalars/tags")
                if scalars.get(".", {}):
                    break
            except OSError:
                pass
            time.sleep(1)
        run = "."
        assert "loss/g_fm" in scalars[run] and "activations/real/features/mean" in scalars[run]
        assert (
            "activations/generated/block0_act/histogram" in get_json(f"{base}/histograms/tags")[run]
        )
        assert "samples/ema" in get_json(f"{base}/images/tags")[run]
        series = get_json(f"{base}/scalars/scalars?run={run}&tag=d_out/accuracy")
        assert [point[1] for point in series] == [2, 4]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_profile_steps_write_a_trace(tiny):
    config = tiny(loop=dict(profile_steps=(2, 4), train_steps=6))
    train_lib.run(config)
    profile_dir = os.path.join(config.loop.model_dir, "plugins", "profile")
    traces = [f for _, _, files in os.walk(profile_dir) for f in files if f.endswith(".xplane.pb")]
    assert traces, os.listdir(config.loop.model_dir)


@pytest.mark.slow
def test_statistics_benchmark_runs_in_quick_mode():
    """The benchmark itself (its figures are for BENCHMARKS/README, not asserted)."""
    from conftest import run_python

    result = run_python(
        "-m",
        "ganfm.bench_stats",
        "--steps=100",
        "--summary_every=50",
        "--rounds=1",
        "--batch_size=32",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ratio" in result.stdout and "img/s" in result.stdout
