"""The benchmark's quick mode runs end to end (so it cannot rot), and its reference
loops and FLOP counter are right."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import run_python
from ganfm import bench_reference, flops
from ganfm.models import dcgan


@pytest.mark.slow
def test_quick_benchmark_prints_every_section(tmp_path):
    out = tmp_path / "bench.json"
    result = run_python("-m", "ganfm.bench", "--quick", f"--json={out}", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for text in (
        "c/a",
        "c/b",
        "GFLOP/s",
        "20/1",
        "mirrored (1 replica)",
        "per summary",
        "mixed_float16",
        "--jit_compile",
        "input (",
        "scaling:",
        "peak memory",
    ):
        assert text in result.stdout, (text, result.stdout)
    figures = json.loads(out.read_text())
    assert set(figures) == {
        "core",
        "loop",
        "strategy",
        "statistics",
        "precision",
        "jit",
        "input",
        "scaling",
    }
    core = figures["core"]
    assert set(core["images_per_second"]) == {
        "a_tutorial",
        "b_separate_models",
        "c_ganfm",
        "c_simultaneous",
    }
    assert all(v > 0 for v in core["images_per_second"].values())
    assert 0 < core["fraction_of_peak"] < 1.5
    assert [(r["image_size"], r["batch_size"]) for r in figures["scaling"]] == [(8, 8), (16, 8)]
    assert all(r["peak_memory_mib"] > 100 for r in figures["scaling"])


@pytest.mark.slow
def test_replica_scaling_runs_on_logical_cpus():
    """The GPU scaling section, exercised on two logical CPUs."""
    result = run_python(
        "-m", "ganfm.bench", "--quick", "--sections=replicas", "--cpu_replicas=2", timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("replicas:")]
    assert len(lines) == 2 and "2 x logical CPU" in lines[1] and "scaling efficiency" in lines[1]


def test_bad_sections_are_one_line_errors():
    result = run_python("-m", "ganfm.bench", "--sections=core,nope")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "--sections: unknown nope; use any of core, loop, strategy, statistics, precision, "
            "jit, input, scaling, replicas"
        )
    )


def test_graph_flops_count_a_dense_layer_and_its_gradients():
    layer = keras.layers.Dense(32, use_bias=False)
    layer.build((None, 64))

    @tf.function
    def forward(x):
        return layer(x)

    @tf.function
    def forward_backward(x):
        with tf.GradientTape() as tape:
            y = tf.reduce_sum(tf.square(layer(x)))  # Its gradient needs the forward pass.
        return tape.gradient(y, layer.kernel)

    spec = tf.TensorSpec([8, 64], tf.float32)
    matmul = 2 * 8 * 64 * 32
    assert flops.graph_flops(forward.get_concrete_function(spec)) == matmul
    # Backward: the kernel's gradient is one more matmul of the same size; the input's
    # gradient is in the graph too, but nothing uses it, so it does not run or count.
    count = flops.graph_flops(forward_backward.get_concrete_function(spec))
    assert 2 * matmul <= count < 2 * matmul + 8 * 32 * 4  # Matmuls + a few elementwise ops.


def test_matmul_peak_is_a_plausible_rate():
    assert 1e8 < flops.matmul_peak(sizes=(256,), seconds=0.2) < 1e14


def test_reference_loops_train_both_networks():
    g = dcgan.build_generator(8, 1, 8, 8)
    d = dcgan.build_discriminator(8, 1, 8)
    images = tf.random.uniform([4, 8, 8, 1], -1, 1)
    for step in (
        bench_reference.tutorial_step(g, d, 8),
        bench_reference.separate_models_step(g, d, 8, ["block0_act", "features"]),
    ):
        before = [w.numpy().copy() for w in g.trainable_weights + d.trainable_weights]
        losses = step(images)
        assert all(np.isfinite(float(x)) for x in losses)
        after = [w.numpy() for w in g.trainable_weights + d.trainable_weights]
        assert all(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
