"""SIGTERM means "save and leave": every worker saves at the same step, then exits 42.

Cluster managers (Kubernetes, Slurm, preemptible VMs) send SIGTERM and wait a grace
period before SIGKILL. The handler only sets a flag; the outer loop looks at it after
each compiled loop of --steps_per_loop steps. On a multi-worker job the signal may reach
one worker only, so the flags are all-reduced at every loop boundary (one scalar): all
workers see the same verdict at the same step, save together (saving is collective) and
exit. 42 is the code of TensorFlow's PreemptionCheckpointHandler, which platforms with
automatic restarts already know.
"""

from __future__ import annotations

import signal
import threading

import tensorflow as tf

from ganfm import distribute


class PreemptionWatch:
    """`requested()` is True on every worker once any worker got SIGTERM."""

    def __init__(self, strategy: tf.distribute.Strategy):
        self._strategy = strategy
        self._signalled = False
        self._previous = None
        self._installed = False
        self._multi_worker = distribute.num_workers(strategy) > 1
        if self._multi_worker:
            self._any = tf.function(self._any_fn)

    def __enter__(self) -> PreemptionWatch:
        # Python lets only the main thread install handlers; elsewhere (a notebook's
        # worker thread) SIGTERM keeps its default meaning.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_signal(self, signum, frame) -> None:
        del signum, frame
        self._signalled = True

    def _any_fn(self, flag):
        values = self._strategy.run(lambda: tf.identity(flag))
        return self._strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None) > 0

    def requested(self) -> bool:
        """Call at the same point on every worker (it is collective on clusters)."""
        if not self._multi_worker:
            return self._signalled
        return bool(self._any(tf.constant(float(self._signalled))).numpy())
