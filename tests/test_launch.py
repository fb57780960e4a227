"""Launchers: the local multi-worker one is run; the others are parsed and their flags
checked against train.py's."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import REPO, SMOKE_FLAGS, run_python

LAUNCH = os.path.join(REPO, "launch")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def train_flags():
    code = "import train; from absl import flags; print(' '.join(flags.FLAGS))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


@pytest.fixture(scope="module")
def defined_flags():
    return train_flags()


SCRIPTS = ["local_gpus.sh", "multi_worker_local.sh", "slurm.sbatch", "tpu_vm.sh"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_shell_launchers_parse_and_pass_real_flags(name, defined_flags):
    path = os.path.join(LAUNCH, name)
    subprocess.run(["bash", "-n", path], check=True)
    with open(path) as f:
        text = f.read()
    assert "train.py" in text
    passed = set(re.findall(r"--([a-z_]+)=", text.split("train.py", 1)[1]))
    gcloud_and_sbatch = {"zone", "worker", "accelerator_type", "version", "format", "command"}
    unknown = passed - defined_flags - gcloud_and_sbatch
    assert not unknown, unknown


def test_kubernetes_tfjob_runs_train_py_with_real_flags(defined_flags):
    with open(os.path.join(LAUNCH, "tfjob.yaml")) as f:
        job = yaml.safe_load(f)
    assert job["kind"] == "TFJob"
    worker = job["spec"]["tfReplicaSpecs"]["Worker"]
    container = worker["template"]["spec"]["containers"][0]
    assert container["name"] == "tensorflow"
    assert container["command"] == ["python", "train.py"]
    names = {arg.split("=", 1)[0].lstrip("-") for arg in container["args"]}
    assert names <= defined_flags
    assert "--strategy=multi_worker" in container["args"]


def sample(model_dir, out):
    result = run_python(
        "-m", "ganfm.sample", f"--model_dir={model_dir}", "--num=16", f"--output={out}", "--seed=5"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return np.load(out)


def launch_local_workers(count, *flags):
    return subprocess.run(
        ["bash", os.path.join(LAUNCH, "multi_worker_local.sh"), str(count), *flags],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_multi_worker_launcher_matches_two_mirrored_replicas(tmp_path):
    """The issue's 'done when', at smoke size: two workers on 127.0.0.1 (stopped at
    step 12 and relaunched to 16) and two logical CPU replicas in one process (16 steps
    at once) give the same samples from the same seed."""
    flags = [
        f"--flagfile={SMOKE_FLAGS}",
        "--train_steps=12",
        "--steps_per_loop=4",
        "--summary_every=4",
        "--checkpoint_every=4",
    ]
    workers = launch_local_workers(2, *flags, f"--model_dir={tmp_path / 'mw'}")
    assert workers.returncode == 0, workers.stdout[-3000:]
    assert "[worker 0] Done: step 12" in workers.stdout
    assert "[worker 1] Done: step 12" in workers.stdout
    # Relaunched on the same (shared) --model_dir, both workers resume from the chief's
    # checkpoint.
    again = launch_local_workers(2, *flags, "--train_steps=16", f"--model_dir={tmp_path / 'mw'}")
    assert again.returncode == 0, again.stdout[-3000:]
    for worker in (0, 1):
        assert f"[worker {worker}] Resumed from" in again.stdout
        assert f"[worker {worker}] Done: step 16" in again.stdout
    mirrored = run_python(
        "train.py",
        *flags,
        "--train_steps=16",
        "--strategy=mirrored",
        "--cpu_replicas=2",
        f"--model_dir={tmp_path / 'mr'}",
    )
    assert mirrored.returncode == 0, mirrored.stderr[-3000:]
    a = sample(tmp_path / "mw", tmp_path / "a.npy")
    b = sample(tmp_path / "mr", tmp_path / "b.npy")
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def module_flags(module):
    code = (
        f"import {module} as m; m._define_flags(); from absl import flags; "
        "print(' '.join(flags.FLAGS))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


@pytest.mark.slow
def test_experiment_script_trains_evaluates_and_compares_with_real_flags(tmp_path, defined_flags):
    """Runs the README experiment's script with a `python` that records its arguments."""
    log = tmp_path / "calls"
    stub = tmp_path / "bin" / "python"
    stub.parent.mkdir()
    stub.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    stub.chmod(0o755)
    script = os.path.join(LAUNCH, "experiments", "fashion_mnist_fm_vs_adv.sh")
    env = {**ENV, "PATH": f"{stub.parent}:{os.environ['PATH']}", "STEPS": "7"}
    subprocess.run(["bash", script, str(tmp_path / "out")], cwd=tmp_path, env=env, check=True)
    calls = [line.split() for line in log.read_text().splitlines()]
    known = {
        "train.py": defined_flags,
        "ganfm.evaluate": module_flags("ganfm.evaluate"),
        "ganfm.sample": module_flags("ganfm.sample"),
        "ganfm.compare": module_flags("ganfm.compare"),
    }
    counts = {}
    for call in calls:
        program = call[1] if call[0] == "-m" else call[0]
        counts[program] = counts.get(program, 0) + 1
        names = {arg.split("=", 1)[0][2:] for arg in call if arg.startswith("--")}
        assert names <= known[program], (program, names - known[program])
    assert counts == {"train.py": 6, "ganfm.evaluate": 6, "ganfm.sample": 6, "ganfm.compare": 1}
    trains = [" ".join(c) for c in calls if c[0] == "train.py"]
    assert sum("--fm_weight=0" in t for t in trains) == 3
    assert all("--train_steps=7" in t for t in trains)
    assert {t.split("--seed=")[1].split()[0] for t in trains} == {"1", "2", "3"}
    assert len(calls[-1]) == 2 + 6  # compare: -m ganfm.compare and the six runs.
