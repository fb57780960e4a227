"""A --model_dir that fills up or cannot be written: one line, a documented exit code, and
the previous checkpoint intact and resumable. The full disk is a real one: a 3 MiB tmpfs
(root can mount one here and in CI)."""

import contextlib
import os
import subprocess
import uuid

import pytest
import tensorflow as tf

from conftest import SMOKE_FLAGS, checkpoint_values, run_python
from ganfm.errors import EXIT_USER_ERROR, EXIT_WRITE_FAILED


@contextlib.contextmanager
def small_disk(tmp_path, size="3m", options=""):
    mount_point = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); run as root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk, leave_bytes: int) -> None:
    """Fills the disk, then frees leave_bytes of it."""
    filler = disk / "filler"
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)
    os.truncate(filler, max(0, os.path.getsize(filler) - leave_bytes))


def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_full_disk_during_training_keeps_the_previous_checkpoint(tmp_path):
    with small_disk(tmp_path) as disk:
        run = [f"--flagfile={SMOKE_FLAGS}", f"--model_dir={disk / 'run'}"]
        first = run_python("train.py", *run)  # Checkpoints 2 and 4.
        assert first.returncode == 0, first.stderr[-2000:]
        before = checkpoint_values(disk / "run")
        # Room for the config and a summary, not for another checkpoint (~75 KB).
        fill(disk, leave_bytes=40 * 1024)
        full = run_python("train.py", *run, "--train_steps=8")
        assert full.returncode == EXIT_WRITE_FAILED, full.stderr[-3000:]
        assert "Traceback" not in full.stderr
        line = last_line(full)
        assert line.startswith("train.py: error: could not write checkpoint "), line
        assert "(No space left on device)" in line and "ckpt-4) is intact" in line, line
        checkpoints = str(disk / "run" / "checkpoints")
        assert tf.train.latest_checkpoint(checkpoints).endswith("ckpt-4")
        assert not [n for n in os.listdir(checkpoints) if n.startswith("ckpt-6")]
        assert not [n for n in os.listdir(disk / "run") if ".tmp-" in n]
        after = checkpoint_values(disk / "run")
        assert all((before[k] == after[k]).all() for k in before)
        # Space again: the same command resumes from step 4 and finishes.
        os.remove(disk / "filler")
        resumed = run_python("train.py", *run, "--train_steps=8")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "Resumed from" in resumed.stdout and "at step 4." in resumed.stdout


@pytest.mark.slow
def test_a_full_disk_at_the_start_writes_nothing(tmp_path):
    with small_disk(tmp_path) as disk:
        fill(disk, leave_bytes=0)
        result = run_python("train.py", f"--flagfile={SMOKE_FLAGS}", f"--model_dir={disk / 'r'}")
        assert result.returncode == EXIT_USER_ERROR, result.stderr[-2000:]
        assert "(No space left on device); free space there" in last_line(result)
        assert not (disk / "r").exists()


def test_a_read_only_model_dir_is_refused_before_anything_is_built(tmp_path):
    with small_disk(tmp_path, options=",ro") as disk:
        result = run_python("train.py", f"--flagfile={SMOKE_FLAGS}", f"--model_dir={disk}/a/b")
        assert result.returncode == EXIT_USER_ERROR, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert last_line(result) == (
            f"train.py: error: --model_dir='{disk}/a/b' is not writable ({disk} is read-only "
            "or not yours); choose a writable --model_dir"
        )
        assert os.listdir(disk) == []
