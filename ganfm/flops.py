"""FLOP counts of traced TensorFlow functions, and the machine's measured matmul peak.

Counting: TensorFlow's graph profiler (`tf.compat.v1.profiler`, float_operation) over
one traced step. It counts 2 FLOPs per multiply-add of every Conv2D, Conv2DBackpropInput
(transposed convolutions and input gradients), Conv2DBackpropFilter and MatMul, plus
one per element of the elementwise ops that register a count; forward and backward
passes and optimizer updates are all in the step's graph.
"""

from __future__ import annotations

import time

import tensorflow as tf


def graph_flops(concrete_function) -> int:
    """FLOPs of one call of a concrete tf.function (static shapes required)."""
    from tensorflow.python.profiler import model_analyzer, option_builder

    options = option_builder.ProfileOptionBuilder(
        option_builder.ProfileOptionBuilder.float_operation()
    ).with_empty_output()
    graph = concrete_function.graph
    flops = model_analyzer.profile(graph, options=options.build()).total_float_ops
    # Ops inside nested functions (a jit-compiled or otherwise nested tf.function)
    # live in the graph's function library, not the top-level graph.
    for function in graph._functions.values():
        inner = getattr(function, "graph", None)
        if inner is not None:
            flops += model_analyzer.profile(inner, options=options.build()).total_float_ops
    return int(flops)


def matmul_peak(sizes=(512, 1024, 2048), seconds: float = 1.0) -> float:
    """The best float32 FLOP/s of square matmuls on the default device."""

    @tf.function
    def chain(a, b, n):
        for _ in tf.range(n):
            a = tf.matmul(a, b) * 1e-3  # Scaled: stays finite, costs one pass.
        return tf.reduce_sum(a)

    best = 0.0
    for size in sizes:
        a = tf.random.normal([size, size])
        b = tf.random.normal([size, size])
        chain(a, b, tf.constant(1)).numpy()  # Trace and warm up.
        n = 1
        while True:
            started = time.perf_counter()
            chain(a, b, tf.constant(n)).numpy()
            elapsed = time.perf_counter() - started
            if elapsed >= seconds / len(sizes) or n >= 1 << 14:
                break
            n *= 2
        best = max(best, 2.0 * size**3 * n / elapsed)
    return best
