"""Strategies beyond one process: real worker processes on 127.0.0.1, cluster
configuration errors, synchronized batch norm and the XLA-compiled step."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from conftest import (
    REPO,
    SMOKE_FLAGS,
    checkpoint_values,
    free_ports,
    max_difference,
    run_python,
)
from ganfm import data, distribute, models, train_lib
from ganfm.config import Config, ConfigError, DataConfig, RuntimeConfig
from ganfm.trainer import Trainer


def run_workers(tmp_path, flags, count=2, timeout=600):
    """count train.py worker processes of one job on 127.0.0.1; worker i uses
    --model_dir=tmp_path/w<i> and TMPDIR=tmp_path/tmp<i>. Returns (exit codes, outputs)."""
    hosts = ",".join(f"127.0.0.1:{p}" for p in free_ports(count))
    procs = []
    for i in range(count):
        scratch = tmp_path / f"tmp{i}"
        scratch.mkdir(exist_ok=True)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(scratch)}
        command = [
            sys.executable,
            "train.py",
            *flags,
            "--strategy=multi_worker",
            f"--worker_hosts={hosts}",
            f"--task_index={i}",
            f"--model_dir={tmp_path / f'w{i}'}",
        ]
        procs.append(
            subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    return [p.returncode for p in procs], outputs


@pytest.mark.slow
def test_two_worker_processes_train_like_two_replicas_in_one(tmp_path):
    flags = [
        f"--flagfile={SMOKE_FLAGS}",
        "--train_steps=20",
        "--steps_per_loop=5",
        "--summary_every=10",
        "--checkpoint_every=10",
    ]
    codes, outputs = run_workers(tmp_path, flags)
    assert codes == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    sums = [
        line.rsplit("weights checksum", 1)[1]
        for o in outputs
        for line in o.splitlines()
        if "weights checksum" in line
    ]
    assert len(sums) == 2 and sums[0] == sums[1]
    # Only the chief writes: checkpoints, events, samples, config.json.
    chief = set(os.listdir(tmp_path / "w0"))
    assert {"checkpoints", "config.json", "samples.png"} <= chief
    assert any(f.startswith("events.out.tfevents") for f in chief)
    acc = event_accumulator.EventAccumulator(str(tmp_path / "w0"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    assert {"activations/real/features/mean", "gradients/generator/total", "loss/g_fm"} <= tags
    assert not os.path.exists(tmp_path / "w1")
    assert os.listdir(tmp_path / "tmp1") == [] and os.listdir(tmp_path / "tmp0") == []

    single = run_python(
        "train.py",
        *flags,
        "--strategy=mirrored",
        "--cpu_replicas=2",
        f"--model_dir={tmp_path / 'single'}",
    )
    assert single.returncode == 0, single.stderr[-2000:]
    a = checkpoint_values(str(tmp_path / "w0" / "checkpoints" / "ckpt-20"))
    b = checkpoint_values(str(tmp_path / "single" / "checkpoints" / "ckpt-20"))
    assert max_difference(a, b) <= 1e-5


@pytest.mark.parametrize(
    "tf_config, fragment",
    [
        ("{not json", "TF_CONFIG does not parse"),
        ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "TF_CONFIG does not parse"),
        (
            '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
            "is not in its cluster",
        ),
    ],
)
def test_bad_tf_config_is_a_clear_error(monkeypatch, tf_config, fragment):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError, match=fragment):
        distribute.cluster_resolver(RuntimeConfig(strategy="multi_worker"))


def test_multi_worker_without_a_cluster_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    with pytest.raises(ConfigError, match="needs a cluster"):
        distribute.cluster_resolver(RuntimeConfig(strategy="multi_worker"))


def test_worker_hosts_become_tf_config(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "")  # Restored (removed) after the test.
    runtime = RuntimeConfig(
        strategy="multi_worker", worker_hosts="127.0.0.1:5000,127.0.0.1:5001", task_index=1
    )
    resolver = distribute.cluster_resolver(runtime)
    assert json.loads(os.environ["TF_CONFIG"])["task"] == {"type": "worker", "index": 1}
    assert resolver.cluster_spec().as_dict() == {"worker": ["127.0.0.1:5000", "127.0.0.1:5001"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)


@pytest.mark.parametrize(
    "runtime, fragment",
    [
        (dict(worker_hosts="a:1"), "only applies to --strategy=multi_worker"),
        (dict(strategy="multi_worker", worker_hosts="a:1,b"), "is not host:port"),
        (dict(strategy="multi_worker", worker_hosts="a:1,b:2", task_index=2), "--task_index=2"),
        (dict(tpu="local"), "only applies to --strategy=tpu"),
        (dict(collective="mpi"), "--collective='mpi'"),
    ],
)
def test_cluster_flags_are_validated(runtime, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Config().replace(runtime=runtime).validate()


def test_chief_is_worker_zero_or_the_chief_task(monkeypatch):
    class Resolver:
        def __init__(self, jobs, task_type, task_id):
            self._jobs, self.task_type, self.task_id = jobs, task_type, task_id

        def cluster_spec(self):
            return tf.train.ClusterSpec(self._jobs)

    class Strategy:
        def __init__(self, resolver):
            self.cluster_resolver = resolver

    workers = {"worker": ["a:1", "b:1"]}
    assert distribute.is_chief(Strategy(Resolver(workers, "worker", 0)))
    assert not distribute.is_chief(Strategy(Resolver(workers, "worker", 1)))
    with_chief = {"chief": ["c:1"], **workers}
    assert distribute.is_chief(Strategy(Resolver(with_chief, "chief", 0)))
    assert not distribute.is_chief(Strategy(Resolver(with_chief, "worker", 0)))
    assert distribute.is_chief(tf.distribute.get_strategy())


def bn_discriminator_models(config):
    g, d, ema = models.build_models(config)
    x = keras.layers.BatchNormalization(name="d_bn")(d.get_layer("block0_act").output)
    x = keras.layers.Flatten(name="flat")(x)
    return g, keras.Model(d.inputs, keras.layers.Dense(1, name="out")(x)), ema


@pytest.mark.slow
@pytest.mark.parametrize("sync_bn", [True, False])
def test_sync_bn_sets_every_batch_norm_and_keeps_replicas_equivalent(tiny, sync_bn):
    loop = dict(train_steps=3, steps_per_loop=3, summary_every=3, checkpoint_every=3)
    common = dict(loop=loop, model=dict(sync_bn=sync_bn), loss=dict(fm_layers=("flat",)))
    one, two = tiny(**common), tiny(**common, runtime=dict(strategy="mirrored", cpu_replicas=2))
    resolved = train_lib.resolve(one, data.load_source(one.data))
    g, d, _ = models.prepare(resolved, *bn_discriminator_models(resolved))
    assert d.get_layer("d_bn").synchronized is sync_bn
    assert g.get_layer("up1_bn").synchronized is sync_bn
    for config in (one, two):
        train_lib.run(config, build_models=bn_discriminator_models)
    a = checkpoint_values(one.loop.model_dir)
    b = checkpoint_values(two.loop.model_dir)
    difference = max_difference(a, b)
    if sync_bn:
        assert difference <= 1e-5
    else:
        assert difference > 1e-4  # Per-replica batch statistics: another training run.


@pytest.mark.slow
def test_loss_and_gradients_compile_under_xla(tiny):
    """The TPU-readiness check available without a TPU: the compiled pieces (the
    generator's pass, D's loss and gradients, G's loss) compile to HLO (static shapes,
    XLA-supported ops), and a jit-compiled run takes the same steps as an uncompiled one."""
    config = tiny(
        loss=dict(fm_layers=("block0_act", "features"), r1_weight=1.0, gp_weight=1.0),
        runtime=dict(jit_compile=True),
    )
    config = train_lib.resolve(config, data.load_source(config.data))
    strategy = train_lib.setup_runtime(config)
    with strategy.scope():
        trainer = Trainer(config, *models.build_models(config), strategy=strategy)
    real = tf.random.uniform([16, 8, 8, 1], -1.0, 1.0)
    z = tf.random.normal([16, config.model.z_dim])
    alpha = tf.random.uniform([16, 1, 1, 1])
    fake = trainer._generator_pass(z, tf.float32)
    d_hlo = trainer._d_loss_and_grads.experimental_get_compiler_ir(real, fake, alpha)(stage="hlo")
    targets = {
        n: tf.zeros([int(np.prod(trainer.tap.output[n].shape[1:]))]) for n in trainer.fm_layers
    }
    g_hlo = trainer._g_loss.experimental_get_compiler_ir(fake, targets)(stage="hlo")
    z_hlo = trainer._generator_pass.experimental_get_compiler_ir(z, tf.float32)(stage="hlo")
    assert all("HloModule" in hlo for hlo in (d_hlo, g_hlo, z_hlo))

    compiled, plain = tiny(runtime=dict(jit_compile=True)), tiny()
    train_lib.run(compiled)
    train_lib.run(plain)
    a = checkpoint_values(compiled.loop.model_dir)
    b = checkpoint_values(plain.loop.model_dir)
    assert max_difference(a, b) <= 1e-4


def test_jit_compile_with_several_replicas_is_refused(tiny):
    with pytest.raises(ConfigError, match="--jit_compile works with one replica"):
        train_lib.run(tiny(runtime=dict(jit_compile=True, strategy="mirrored", cpu_replicas=2)))


def test_every_input_batch_has_a_static_shape():
    """TPUs need static shapes: no partial batches, from memory or from files."""
    source = data.load_source(DataConfig("digits"))
    ctx = tf.distribute.InputContext(1, 0, 2)
    spec = data.make_input_fn(source, 16, 2, 0, 0)(ctx).element_spec
    assert spec.shape.as_list() == [2, 8, 8, 8, 1]


def test_replica_dropout_differs_across_replicas_and_repeats():
    from ganfm.models.layers import ReplicaDropout

    strategy = distribute.make_strategy(RuntimeConfig(strategy="mirrored", cpu_replicas=2))

    def masks():
        with strategy.scope():
            layer = ReplicaDropout(0.5, seed=7, name="drop")
            layer.build((4, 32))

        @tf.function
        def step():
            return strategy.run(lambda: layer(tf.ones([4, 32]), training=True))

        first = [t.numpy() for t in strategy.experimental_local_results(step())]
        second = [t.numpy() for t in strategy.experimental_local_results(step())]
        return first, second

    (a0, a1), (b0, _) = masks()
    assert set(np.unique(a0)) <= {0.0, 2.0}
    assert not np.array_equal(a0, a1)  # Replicas differ.
    assert not np.array_equal(a0, b0)  # Calls differ.
    (c0, c1), _ = masks()
    np.testing.assert_array_equal(a0, c0)  # Runs repeat.
    np.testing.assert_array_equal(a1, c1)


def test_two_replica_dropout_layers_draw_different_masks():
    from ganfm.models.layers import ReplicaDropout

    first, second = ReplicaDropout(0.5, name="drop_a"), ReplicaDropout(0.5, name="drop_b")
    x = tf.ones([4, 64])
    assert not np.array_equal(first(x, training=True), second(x, training=True))


@pytest.mark.slow
def test_a_non_local_file_system_holds_the_whole_run():
    """gs:// stands for every TensorFlow file system; ram:// is one CI can use."""
    from conftest import tiny_config
    from ganfm.sample import generate

    config = tiny_config("ram://ganfm-test/run")
    train_lib.run(config)
    train_lib.run(config.replace(loop=dict(train_steps=6)))
    files = tf.io.gfile.listdir("ram://ganfm-test/run")
    assert {"config.json", "samples.png"} <= set(files)
    assert any(f.startswith("checkpoints") for f in files)
    assert tf.train.latest_checkpoint("ram://ganfm-test/run/checkpoints").endswith("ckpt-6")
    assert generate("ram://ganfm-test/run", 4, seed=0).shape == (4, 8, 8, 1)


@pytest.mark.slow
def test_workers_that_see_different_checkpoints_all_stop(tmp_path):
    flags = [f"--flagfile={SMOKE_FLAGS}"]
    first = run_python("train.py", *flags, f"--model_dir={tmp_path / 'w0'}")
    assert first.returncode == 0, first.stderr[-2000:]
    codes, outputs = run_workers(tmp_path, [*flags, "--train_steps=8"], timeout=300)
    for code, out in zip(codes, outputs, strict=True):
        assert code == 2, out[-2000:]
        assert "the workers found different checkpoints" in out


@pytest.mark.slow
def test_keras_dropout_on_several_replicas_is_refused(tiny):
    def with_dropout(config):
        g, d, ema = models.build_models(config)
        x = keras.layers.Dropout(0.3, name="drop")(d.get_layer("features").output)
        return g, keras.Model(d.inputs, keras.layers.Dense(1, name="out")(x)), ema

    config = tiny(runtime=dict(strategy="mirrored", cpu_replicas=2))
    with pytest.raises(ConfigError, match="layers drop draw the same random numbers"):
        train_lib.run(config, build_models=with_dropout)
    train_lib.run(tiny(), build_models=with_dropout)  # One replica: fine.


@pytest.mark.slow
def test_replica_dropout_trains_on_several_replicas(tiny):
    from ganfm.models.layers import ReplicaDropout

    def with_replica_dropout(config):
        g, d, ema = models.build_models(config)
        x = ReplicaDropout(0.3, seed=1, name="drop")(d.get_layer("features").output)
        return g, keras.Model(d.inputs, keras.layers.Dense(1, name="out")(x)), ema

    config = tiny(runtime=dict(strategy="mirrored", cpu_replicas=2))
    metrics = train_lib.run(config, build_models=with_replica_dropout)
    assert all(np.isfinite(v) for v in metrics.values())
