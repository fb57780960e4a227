"""SIGTERM at a random moment: exit 42 with a checkpoint at the reported step, and a
relaunch ends with the weights of an uninterrupted run, on one process and on two
worker processes (the signal reaching only one of them)."""

import os
import random
import re
import subprocess
import sys
import time

import pytest

from conftest import (
    REPO,
    SMOKE_FLAGS,
    checkpoint_values,
    free_ports,
    max_difference,
    run_python,
)
from ganfm.errors import EXIT_PREEMPTED, EXIT_WORKER_LOST

STEPS = 600
FLAGS = [
    f"--flagfile={SMOKE_FLAGS}",
    f"--train_steps={STEPS}",
    "--steps_per_loop=2",
    "--summary_every=200",
    "--checkpoint_every=200",
]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def start(args, tmpdir=None):
    env = {**ENV, "TMPDIR": str(tmpdir)} if tmpdir else ENV
    return subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_training(proc):
    """Reads stdout until the 'Training ...' line: the loop is about to start."""
    for line in proc.stdout:
        if line.startswith("Training "):
            return
    raise AssertionError(proc.stderr.read()[-3000:])


def stopped_step(stderr: str) -> int:
    match = re.search(r"SIGTERM: stopped at step (\d+) with a checkpoint", stderr)
    assert match, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("train.py: error: SIGTERM")
    return int(match.group(1))


@pytest.mark.slow
def test_sigterm_saves_the_step_and_a_relaunch_matches_an_uninterrupted_run(tmp_path):
    delay = random.uniform(0.0, 2.0)
    run = [*FLAGS, f"--model_dir={tmp_path / 'run'}"]
    proc = start(run)
    wait_for_training(proc)
    time.sleep(delay)
    proc.terminate()  # SIGTERM
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, (delay, stderr[-3000:])
    step = stopped_step(stderr)
    assert 0 < step < STEPS, (delay, step)
    assert os.path.exists(tmp_path / "run" / "checkpoints" / f"ckpt-{step}.index")
    resumed = run_python("train.py", *run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from {tmp_path / 'run' / 'checkpoints' / f'ckpt-{step}'}" in resumed.stdout
    whole = run_python("train.py", *FLAGS, f"--model_dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert (
        max_difference(checkpoint_values(tmp_path / "run"), checkpoint_values(tmp_path / "whole"))
        <= 1e-6
    )


@pytest.mark.slow
def test_sigterm_to_one_of_two_workers_stops_both_at_the_same_step(tmp_path):
    model_dir = tmp_path / "shared"  # One --model_dir, as on a shared file system.

    def launch():
        hosts = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
        procs = []
        for i in range(2):
            scratch = tmp_path / f"tmp{i}"
            scratch.mkdir(exist_ok=True)
            args = [
                *FLAGS,
                "--strategy=multi_worker",
                f"--worker_hosts={hosts}",
                f"--task_index={i}",
                f"--model_dir={model_dir}",
            ]
            procs.append(start(args, scratch))
        return procs

    procs = launch()
    for proc in procs:
        wait_for_training(proc)
    time.sleep(random.uniform(0.0, 2.0))
    procs[1].terminate()  # The non-chief only: the chief learns of it by all-reduce.
    results = [p.communicate(timeout=120) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes == [EXIT_PREEMPTED] * 2, [r[1][-2000:] for r in results]
    steps = {stopped_step(stderr) for _, stderr in results}
    assert len(steps) == 1
    step = steps.pop()
    assert os.path.exists(model_dir / "checkpoints" / f"ckpt-{step}.index")
    procs = launch()
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-2000:] for r in results]
    assert all(f"ckpt-{step}" in out for out, _ in results)
    single = run_python(
        "train.py",
        *FLAGS,
        "--strategy=mirrored",
        "--cpu_replicas=2",
        f"--model_dir={tmp_path / 'single'}",
    )
    assert single.returncode == 0, single.stderr[-2000:]
    assert (
        max_difference(checkpoint_values(model_dir), checkpoint_values(tmp_path / "single")) <= 1e-5
    )


@pytest.mark.slow
def test_a_lost_worker_stops_the_other_within_a_minute(tmp_path):
    hosts = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    procs = []
    for i in range(2):
        scratch = tmp_path / f"tmp{i}"
        scratch.mkdir()
        args = [
            *FLAGS,
            "--train_steps=100000",
            "--strategy=multi_worker",
            f"--worker_hosts={hosts}",
            f"--task_index={i}",
            f"--model_dir={tmp_path / 'run'}",
        ]
        procs.append(start(args, scratch))
    for proc in procs:
        wait_for_training(proc)
    time.sleep(random.uniform(0.5, 2.0))
    procs[1].kill()  # SIGKILL: no goodbye.
    killed = time.monotonic()
    _, stderr = procs[0].communicate(timeout=120)
    waited = time.monotonic() - killed
    procs[1].communicate()
    assert procs[0].returncode == EXIT_WORKER_LOST, stderr[-3000:]
    assert waited < 60, waited
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error: another worker of this job stopped responding")
    assert "relaunch every worker with the same command to resume from" in last
    assert "unhealthy: /job:worker/replica:0/task:1" in last, last


@pytest.mark.slow
def test_kill_9_during_checkpoint_writes_never_leaves_an_unreadable_checkpoint(tmp_path):
    """A checkpoint every 2 steps, killed at random moments: every restart resumes
    from a complete checkpoint, and the last one finishes the run."""
    import tensorflow as tf

    run = [*FLAGS, "--checkpoint_every=2", "--keep_checkpoints=2", f"--model_dir={tmp_path}"]
    rng = random.Random()
    resumed_at = []
    state = tmp_path / "checkpoints" / "checkpoint"
    for _ in range(4):
        before = state.stat().st_mtime_ns if state.exists() else 0
        proc = start(run)
        wait_for_training(proc)
        # Past tracing: wait for this process's first save, then kill at a random
        # moment of the saves that follow (one every 2 steps).
        deadline = time.monotonic() + 120
        while not (state.exists() and state.stat().st_mtime_ns != before):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.kill()
        proc.communicate()
        latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
        if latest:
            reader = tf.train.load_checkpoint(latest)  # Every tensor readable.
            for key in reader.get_variable_to_shape_map():
                reader.get_tensor(key)
            resumed_at.append(int(latest.rsplit("-", 1)[1]))
    assert resumed_at and resumed_at == sorted(resumed_at), resumed_at
    final = run_python("train.py", *run)
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"ckpt-{resumed_at[-1]} at step {resumed_at[-1]}" in final.stdout
