"""FLOP counts of traced TensorFlow functions, and the machine's measured matmul peak.

Counting: TensorFlow's registered per-op FLOP statistics (those `tf.compat.v1.profiler`
reads: 2 FLOPs per multiply-add of every Conv2D, Conv2DBackpropInput, Conv2DBackpropFilter
and MatMul, plus one per element of the elementwise ops that register a count) over the
ops of one traced step that run: those the outputs or a stateful op (a variable update)
depend on. A gradient's graph also holds ops nobody uses (the discriminator's filter
gradients in the generator's backward pass, say), which TensorFlow prunes before running;
counting every op in the graph would overstate the tutorial step by 28%.
"""

from __future__ import annotations

import time

import tensorflow as tf


def _op_flops(graph, op) -> int:
    from tensorflow.python.framework import ops

    try:
        return int(ops.get_stats_for_node_def(graph, op.node_def, "flops").value or 0)
    except ValueError:  # Incomplete shapes: this op cannot be counted.
        return 0


def _live_ops(graph, outputs) -> list:
    """The ops that outputs or stateful ops depend on: what TensorFlow runs."""
    stack = [t.op for t in outputs if t is not None]
    stack += [op for op in graph.get_operations() if op._is_stateful]
    live = {}
    while stack:
        op = stack.pop()
        if op.name not in live:
            live[op.name] = op
            stack.extend(t.op for t in op.inputs)
            stack.extend(op.control_inputs)
    return list(live.values())


def _graph_flops(graph, outputs) -> int:
    total = sum(_op_flops(graph, op) for op in _live_ops(graph, outputs))
    # Ops inside nested functions (a cond's branches, a jit-compiled tf.function) live
    # in the graph's function library.
    for function in graph._functions.values():
        inner = getattr(function, "graph", None)
        if inner is not None:
            total += _graph_flops(inner, inner.outputs)
    return total


def graph_flops(concrete_function) -> int:
    """FLOPs of one call of a concrete tf.function (static shapes required)."""
    return _graph_flops(concrete_function.graph, concrete_function.outputs)


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
