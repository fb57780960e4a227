"""What TensorBoard shows about the networks, computed on summary steps only.

On a fixed real batch and fixed noise, one compiled call gives, over the global batch:
per-layer activation statistics and histograms for real and generated images, the
per-feature gap between them (what feature matching sees), discriminator accuracy,
gradient norms per network and per layer, and weight norms. Training state is left
exactly as it was (batch-norm statistics and layer counters are restored), so a run
logs the same weights whatever --summary_every is.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from ganfm import stats
from ganfm.models.tap import LOGITS, build_feature_tap, resolve_layers
from ganfm.trainer import Trainer

_STATS_SALT = 4 << 40


def _layer_of_each_variable(model: keras.Model) -> dict[int, str]:
    owners = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for variable in layer.trainable_weights:
            owners.setdefault(id(variable), layer.name)
    return owners


class StatisticsStep:
    """`run(batch)` -> {tag: value}: 0-d scalars and [bins, 3] histograms."""

    def __init__(self, trainer: Trainer, layers: tuple[str, ...]):
        self.trainer = trainer
        spec = layers or tuple(trainer.fm_layers)
        discriminator = trainer.discriminator
        self.layers = resolve_layers(discriminator, spec) if spec else []
        with trainer.strategy.scope():
            self.tap = build_feature_tap(discriminator, self.layers)
        self._owners = {
            "generator": _layer_of_each_variable(trainer.generator),
            "discriminator": _layer_of_each_variable(discriminator),
        }
        self._run = tf.function(self._run_fn)

    def run(self, batch) -> dict:
        values = self._run(batch)
        return {tag: value.numpy() for tag, value in values.items()}

    def _run_fn(self, batch):
        strategy = self.trainer.strategy
        per_replica = strategy.run(self._replica_fn, args=(batch,))
        # Every value was all-reduced inside: any replica's copy is the global figure.
        first = {k: strategy.experimental_local_results(v)[0] for k, v in per_replica.items()}
        t = self.trainer
        first["weights/generator"] = stats.norm(t.generator.trainable_variables)
        first["weights/discriminator"] = stats.norm(t.discriminator.trainable_variables)
        return first

    def _replica_fn(self, batches):
        t = self.trainer
        ctx = tf.distribute.get_replica_context()
        state = t.generator.non_trainable_variables + t.discriminator.non_trainable_variables
        saved = [tf.identity(v) for v in state]
        real = batches[0]
        z = t._noise(
            tf.constant(0, tf.int64), 0, _STATS_SALT, [t.z_dim], tf.random.stateless_normal
        )
        fake = t.generator(z, training=False)
        real_out = self.tap(real, training=False)
        fake_out = self.tap(fake, training=False)
        out = {}
        for name in self.layers:
            real_stats = stats.layer_statistics(ctx, real_out[name])
            fake_stats = stats.layer_statistics(ctx, fake_out[name])
            for kind, values in (("real", real_stats), ("generated", fake_stats)):
                for key in stats.SCALARS:
                    out[f"activations/{kind}/{name}/{key}"] = values[key]
                out[f"activations/{kind}/{name}/histogram"] = values["histogram"]
            gap = real_stats["feature_mean"] - fake_stats["feature_mean"]
            out[f"activations/gap/{name}/mean_abs"] = tf.reduce_mean(tf.abs(gap))
            out[f"activations/gap/{name}/mean_square"] = tf.reduce_mean(tf.square(gap))
            out[f"activations/gap/{name}/histogram"] = stats.local_histogram(gap)
        correct = tf.concat(
            [
                tf.cast(tf.reshape(real_out[LOGITS], [-1]) > 0, tf.float32),
                tf.cast(tf.reshape(fake_out[LOGITS], [-1]) < 0, tf.float32),
            ],
            axis=0,
        )
        hits = ctx.all_reduce(
            tf.distribute.ReduceOp.SUM,
            [tf.reduce_sum(correct), tf.size(correct, out_type=tf.float32)],
        )
        out["d_out/accuracy"] = hits[0] / hits[1]
        out.update(self._gradient_norms(ctx, real, z))
        for variable, value in zip(state, saved, strict=True):
            variable.assign(value)  # Leave training exactly as it was.
        return out

    def _gradient_norms(self, ctx, real, z) -> dict:
        """Norms of the global-batch gradients the next update would apply."""
        t = self.trainer
        alpha = None
        if t.config.loss.gp_weight:
            alpha = tf.random.stateless_uniform(tf.stack([tf.shape(real)[0], 1, 1, 1]), seed=[0, 1])
        fake = t._generator_pass(z, real.dtype)
        d_grads, _, _ = t._d_loss_and_grads(real, fake, alpha)
        targets = {}
        if t.fm_layers:
            targets = t._feature_means(t.tap(real, training=True))
        g_grads, _ = t.generator_gradients(targets, z)
        out = {}
        for network, grads, variables in (
            ("discriminator", d_grads, t.discriminator.trainable_variables),
            ("generator", g_grads, t.generator.trainable_variables),
        ):
            # Each replica holds its share of the global gradient: their sum is it.
            grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, list(grads))
            out[f"gradients/{network}/total"] = stats.norm(grads)
            per_layer: dict[str, list] = {}
            for grad, variable in zip(grads, variables, strict=True):
                layer = self._owners[network].get(id(variable), variable.name)
                per_layer.setdefault(layer, []).append(grad)
            for layer, layer_grads in per_layer.items():
                out[f"gradients/{network}/{layer}"] = stats.norm(layer_grads)
        return out


def constants(trainer: Trainer) -> dict[str, float]:
    """Settings worth a curve: they change when a run is resumed with other flags."""
    return {
        "optimizer/g_lr": float(trainer.g_optimizer.learning_rate.numpy()),
        "optimizer/d_lr": float(trainer.d_optimizer.learning_rate.numpy()),
        "optimizer/ema_decay": trainer.config.optimizer.ema_decay,
    }
