"""Owns the models, optimizers and global step; runs the distributed train step.

A step is --d_steps discriminator updates followed by one generator update (DESIGN.md,
decision 1), or with --update=simultaneous one update of each from the same forward
pass. The generator update reuses the last discriminator update's generated batch (its
forward pass stays on a tape, as in PyTorch's DCGAN example) and, with the moving-average
target, its real features: only the updated discriminator's pass over the fakes is run
again. `train(iterator, n)` runs n steps inside one tf.function (a tf.range loop,
n passed as a tensor so changing it does not retrace) and returns the measurements
averaged over those steps and over the global batch.

Loss scaling, the one place it happens: per-example losses are reduced with
tf.nn.compute_average_loss over the GLOBAL batch, because Keras 3 optimizers sum
gradients across replicas. Feature-matching statistics are all-reduced to global means
by default; that term then exists on every replica and its gradient comes back from
the all-reduce and the optimizer's sum N times too large, so it is divided by N.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ganfm import losses
from ganfm.config import Config, ConfigError
from ganfm.models.layers import same_noise_layers
from ganfm.models.tap import LOGITS, build_feature_tap, resolve_layers

# Salts keep the stateless random streams of different purposes apart.
_NOISE_SALT = 1 << 40
_GP_SALT = 2 << 40
_SAMPLE_SALT = 3 << 40


def stateless_seed(seed: int, salt: int, counter) -> tf.Tensor:
    """A [2] int64 seed for tf.random.stateless_* ops from (seed, purpose, counter)."""
    counter = tf.cast(counter, tf.int64)
    return tf.stack([tf.cast(seed, tf.int64), tf.constant(salt, tf.int64) + counter])


def sample_noise(seed: int, num: int, z_dim: int) -> tf.Tensor:
    """The noise `python -m ganfm.sample --seed` and the summary grid use."""
    return tf.random.stateless_normal([num, z_dim], seed=stateless_seed(seed, _SAMPLE_SALT, 0))


def _nonfinite_count(value) -> tf.Tensor:
    if value is None:
        return tf.constant(0.0)
    if isinstance(value, tf.IndexedSlices):
        value = value.values
    return tf.reduce_sum(tf.cast(~tf.math.is_finite(value), tf.float32))


def _apply_unless(skip: tf.Tensor, optimizer, grads, variables) -> None:
    """optimizer.apply_gradients unless `skip` (the same on every replica): a true skip,
    with no moment or iteration update.

    apply_gradients calls merge_call, which cannot sit in control flow in a replica
    context: the condition goes in the cross-replica context, as in Keras's
    LossScaleOptimizer.
    """

    def apply(g):
        optimizer.apply_gradients(zip(g, variables, strict=True))

    if tf.__internal__.distribute.strategy_supports_no_merge_call():  # TPUStrategy.
        tf.cond(skip, lambda: None, lambda: apply(grads))
        return

    def in_cross_replica(distribution, skip, grads):
        first = distribution.experimental_local_results(skip)[0]

        def apply_everywhere():
            distribution.extended.call_for_each_replica(apply, args=(grads,))

        tf.cond(first, lambda: None, apply_everywhere)

    tf.distribute.get_replica_context().merge_call(in_cross_replica, args=(skip, grads))


def _variables_in_scope(strategy: tf.distribute.Strategy, model: keras.Model) -> bool:
    return all(strategy.extended.variable_created_in_scope(v.value) for v in model.weights)


class Trainer:
    """Build inside `strategy.scope()` from models built in that same scope.

    Example (any functional or Sequential Keras models)::

        strategy = tf.distribute.MirroredStrategy()
        with strategy.scope():
            g, d, g_ema = my_generator(), my_discriminator(), my_generator()
            trainer = ganfm.trainer.Trainer(config, g, d, g_ema, strategy=strategy)
        iterator = iter(strategy.distribute_datasets_from_function(input_fn))
        measurements = trainer.train(iterator, 100)
    """

    def __init__(
        self,
        config: Config,
        generator: keras.Model,
        discriminator: keras.Model,
        ema_generator: keras.Model,
        strategy: tf.distribute.Strategy | None = None,
    ):
        self.config = config
        self.strategy = strategy or tf.distribute.get_strategy()
        self.generator = generator
        self.discriminator = discriminator
        self.ema_generator = ema_generator
        self.global_batch = config.loop.batch_size
        self.z_dim = config.model.z_dim
        self._check_models()
        loss = config.loss
        use_fm = loss.fm_weight > 0 and bool(loss.fm_layers)
        self.fm_layers = resolve_layers(discriminator, loss.fm_layers) if use_fm else []
        weights = (loss.fm_layer_weights if use_fm else ()) or (1.0,) * len(self.fm_layers)
        if len(weights) != len(self.fm_layers):
            raise ConfigError(
                f"--fm_layer_weights has {len(weights)} values for {len(self.fm_layers)} "
                f"tapped layers ({', '.join(self.fm_layers)}); give one per layer"
            )
        self.fm_layer_weights = tuple(float(w) for w in weights)
        self.d_loss_fn, self.g_loss_fn = losses.ADVERSARIAL[loss.adv_loss]
        self.metric_names = self._metric_names()
        self.nonfinite: dict[str, int] = {}  # Of the last train() call; see train().
        self.skipped: tuple[int, int] = (0, 0)
        with self.strategy.scope():
            self.tap = build_feature_tap(discriminator, self.fm_layers)
            opt = config.optimizer
            self.loss_scaled = config.runtime.precision == "mixed_float16"
            self.g_optimizer = self._optimizer(opt.g_lr)
            self.d_optimizer = self._optimizer(opt.d_lr)
            # Built eagerly: a lazy build inside tf.function + strategy.run fails.
            self.g_optimizer.build(generator.trainable_variables)
            self.d_optimizer.build(discriminator.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            # D and G updates skipped for a NaN/Inf loss or gradient, over the whole run.
            self.skipped_updates = tf.Variable(
                [0, 0], dtype=tf.int64, trainable=False, name="skipped_updates"
            )
            self.fm_target = self._make_fm_target()
        for e, v in zip(ema_generator.weights, generator.weights, strict=True):
            e.assign(v)
        self._generator_pass = self._generator_forward
        self._d_loss_and_grads = self._discriminator_loss_and_grads
        self._g_loss = self._generator_loss_on
        self._both_loss_and_grads = self._simultaneous_loss_and_grads
        if config.runtime.jit_compile and not isinstance(self.strategy, tf.distribute.TPUStrategy):
            # XLA around the loss and gradients only: around strategy.run it fails on
            # logical CPU devices, and optimizer updates gain little from it. (TPUStrategy
            # compiles the whole step itself.)
            if self.strategy.num_replicas_in_sync > 1:
                raise ConfigError(
                    "--jit_compile works with one replica in total: under "
                    f"{type(self.strategy).__name__} the all-reduces of synchronized batch "
                    "norm and global feature statistics cannot sit in a compiled function; "
                    "drop --jit_compile or train on one device"
                )
            self._generator_pass = tf.function(self._generator_pass, jit_compile=True)
            self._d_loss_and_grads = tf.function(self._d_loss_and_grads, jit_compile=True)
            self._g_loss = tf.function(self._g_loss, jit_compile=True)
            self._both_loss_and_grads = tf.function(self._both_loss_and_grads, jit_compile=True)
        self._loop = tf.function(self._loop_fn)

    # -- construction checks -------------------------------------------------------

    def _check_models(self) -> None:
        g, d, e = self.generator, self.discriminator, self.ema_generator
        if e is g:
            raise ConfigError("ema_generator must be a second generator instance, not the same")
        for name, model in (("generator", g), ("discriminator", d), ("ema_generator", e)):
            if not model.built or not model.weights:
                raise ConfigError(f"the {name} has no weights yet; build it before training")
            if not _variables_in_scope(self.strategy, model):
                raise ConfigError(
                    f"the {name}'s variables were not created under this strategy; "
                    "build the models inside strategy.scope()"
                )
        if [w.shape for w in e.weights] != [w.shape for w in g.weights]:
            raise ConfigError("ema_generator's weights differ in shape from the generator's")
        if self.strategy.num_replicas_in_sync > 1:
            for name, model in (("generator", g), ("discriminator", d)):
                repeated = same_noise_layers(model)
                if repeated:
                    raise ConfigError(
                        f"the {name}'s layers {', '.join(repeated)} draw the same random "
                        "numbers on every replica (keras-team/keras#20611); use "
                        "ganfm.models.layers.ReplicaDropout, or train on one replica"
                    )
        g_ids = {id(v.value) for v in g.weights}
        if any(id(v.value) in g_ids for v in d.weights):
            raise ConfigError("generator and discriminator share variables; give each its own")

    def _metric_names(self) -> list[str]:
        names = ["loss/d", "loss/d_adv"]
        if self.config.loss.r1_weight:
            names.append("loss/d_r1")
        if self.config.loss.gp_weight:
            names.append("loss/d_gp")
        names += ["loss/g", "loss/g_adv"]
        if self.fm_layers:
            names.append("loss/g_fm")
            names += [f"loss/g_fm/{n}" for n in self.fm_layers]
        names += ["d_out/real_logit", "d_out/fake_logit", "d_out/real_prob", "d_out/fake_prob"]
        return names

    def _optimizer(self, learning_rate: float) -> keras.optimizers.Optimizer:
        opt = self.config.optimizer
        adam = keras.optimizers.Adam(learning_rate, opt.beta1, opt.beta2)
        if not self.loss_scaled:
            return adam
        # Dynamic loss scaling: float16 gradients underflow without it. Its finite check
        # reads one replica's gradients only; _apply makes the verdict global first.
        return keras.optimizers.LossScaleOptimizer(adam)

    def _apply(self, optimizer, loss, grads, variables) -> tf.Tensor:
        """Applies the update unless the loss or a gradient is NaN/Inf on some replica;
        returns 1.0 where it was skipped. The verdict is all-reduced, so every replica
        skips the same updates and mirrored weights stay equal."""
        local = tf.add_n([_nonfinite_count(loss)] + [_nonfinite_count(g) for g in grads])
        ctx = tf.distribute.get_replica_context()
        bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local) > 0
        if self.loss_scaled:
            # LossScaleOptimizer checks only the first replica's gradients for inf/NaN
            # (DESIGN.md): poison every replica's gradients when any replica's are
            # non-finite, so the step is skipped (and the scale halved) everywhere.
            poison = tf.where(bad, np.nan, 0.0)
            grads = [None if g is None else g + tf.cast(poison, g.dtype) for g in grads]
            optimizer.apply_gradients(zip(grads, variables, strict=True))
        else:
            _apply_unless(bad, optimizer, grads, variables)
        return tf.cast(bad, tf.float32)

    def _make_fm_target(self) -> tf.Module | None:
        if self.config.loss.fm_target != "ema" or not self.fm_layers:
            return None
        module = tf.Module(name="fm_target")
        sizes = {
            n: self.config.loss.fm_moments * int(np.prod(self.tap.output[n].shape[1:]))
            for n in self.fm_layers
        }
        # On-read variables: each replica updates its own copy with no communication.
        # With --fm_stats=global every copy holds the same global average; with local,
        # each replica tracks its own slice's statistics. Saving stores the mean.
        on_read = dict(
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.MEAN,
        )
        module.means = [
            tf.Variable(tf.zeros([sizes[n]]), name=f"fm_target_{i}", **on_read)
            for i, n in enumerate(self.fm_layers)
        ]
        module.updates = tf.Variable(0.0, name="updates", **on_read)
        return module

    # -- the replica step -----------------------------------------------------------

    def _noise(self, step, k: int, salt: int, shape_tail, sampler) -> tf.Tensor:
        """Replica r's slice of a global-batch draw: noise differs on every replica yet
        does not depend on the replica count."""
        ctx = tf.distribute.get_replica_context()
        local = self.global_batch // ctx.num_replicas_in_sync
        counter = step * (self.config.optimizer.d_steps + 1) + k
        seed = stateless_seed(self.config.runtime.seed, salt, counter)
        draw = sampler([self.global_batch, *shape_tail], seed=seed)
        start = ctx.replica_id_in_sync_group * local
        return draw[start : start + local]

    def _feature_sums(self, activations: dict) -> dict:
        moments = self.config.loss.fm_moments
        return {n: losses.batch_sum(activations[n], moments) for n in self.fm_layers}

    def _feature_means(self, activations: dict) -> dict:
        return self._means_of_sums(self._feature_sums(activations))

    def _means_of_sums(self, sums: dict) -> dict:
        ctx = tf.distribute.get_replica_context()
        if self.config.loss.fm_stats == "global":
            sums = ctx.all_reduce(tf.distribute.ReduceOp.SUM, sums)
            count = self.global_batch
        else:
            count = self.global_batch // ctx.num_replicas_in_sync
        return {n: s / count for n, s in sums.items()}

    def _fm_targets(self, real_means: dict) -> dict:
        """Batch means, or their bias-corrected moving average (--fm_target=ema).

        A batch with NaN/Inf statistics leaves the average as it was: folded in, it
        would poison every later target (and, with --nan_policy=skip_step, skip every
        later generator update)."""
        if self.fm_target is None:
            return real_means
        decay = self.config.loss.fm_target_decay
        finite = tf.reduce_all(
            [tf.reduce_all(tf.math.is_finite(real_means[n])) for n in self.fm_layers]
        )
        self.fm_target.updates.assign_add(tf.where(finite, 1.0, 0.0))
        correction = 1.0 - tf.pow(decay, self.fm_target.updates)
        targets = {}
        for var, name in zip(self.fm_target.means, self.fm_layers, strict=True):
            var.assign(tf.where(finite, decay * var + (1.0 - decay) * real_means[name], var))
            targets[name] = var / correction
        return targets

    def _discriminator_update(self, real, step, k: int, g_tape=None):
        """(metrics, skipped, generated batch, real feature sums). With `g_tape`, the
        generator's forward pass is recorded there for the generator update to reuse."""
        z = self._noise(step, k, _NOISE_SALT, [self.z_dim], tf.random.stateless_normal)
        alpha = None
        if self.config.loss.gp_weight:
            alpha = self._noise(step, k, _GP_SALT, [1, 1, 1], tf.random.stateless_uniform)
        if g_tape is None:
            fake = self._generator_pass(z, real.dtype)
        else:
            with g_tape:
                fake = self._generator_pass(z, real.dtype)
        grads, metrics, real_sums = self._d_loss_and_grads(real, tf.stop_gradient(fake), alpha)
        skipped = self._apply(
            self.d_optimizer, metrics["loss/d"], grads, self.discriminator.trainable_variables
        )
        return metrics, skipped, fake, real_sums

    def _generator_forward(self, z, dtype):
        """Generated images; a user generator may compute in bfloat16, the images meet
        real ones in `dtype` (float32). The part --jit_compile compiles, with:"""
        return tf.cast(self.generator(z, training=True), dtype)

    def _discriminator_loss_and_grads(self, real, fake, alpha):
        """Discriminator gradients, metrics and the real batch's tapped-feature sums."""
        with tf.GradientTape() as tape:
            loss, metrics, real_out, _ = self._discriminator_loss(real, fake, alpha)
        grads = tape.gradient(loss, self.discriminator.trainable_variables)
        real_out = {n: tf.stop_gradient(real_out[n]) for n in self.fm_layers}
        return grads, metrics, self._feature_sums(real_out)

    def _discriminator_loss(self, real, fake, alpha):
        """(scaled loss, metrics, real tap outputs, fake tap outputs); one tap call per
        image set gives the logits and every tapped activation."""
        cfg = self.config.loss
        with tf.GradientTape(watch_accessed_variables=False) as r1_tape:
            r1_tape.watch(real)
            real_out = self.tap(real, training=True)
            real_logits = real_out[LOGITS]
            real_logit_sum = tf.reduce_sum(real_logits)  # Recorded: R1 needs its gradient.
        fake_out = self.tap(fake, training=True)
        fake_logits = fake_out[LOGITS]
        d_adv = self.d_loss_fn(real_logits, fake_logits)
        per_example = d_adv
        terms = {"loss/d_adv": d_adv}
        if cfg.r1_weight:
            grads = r1_tape.gradient(real_logit_sum, real)
            r1 = losses.r1_penalty(grads)
            per_example += cfg.r1_weight * r1
            terms["loss/d_r1"] = r1
        if cfg.gp_weight:
            interp = real + alpha * (tf.stop_gradient(fake) - real)
            with tf.GradientTape(watch_accessed_variables=False) as gp_tape:
                gp_tape.watch(interp)
                interp_logits = self.tap(interp, training=True)[LOGITS]
            gp = losses.gradient_penalty(gp_tape.gradient(interp_logits, interp))
            per_example += cfg.gp_weight * gp
            terms["loss/d_gp"] = gp
        loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch)
        metrics = {name: tf.reduce_mean(v) for name, v in terms.items()}
        metrics["loss/d"] = tf.reduce_mean(per_example)
        metrics["d_out/real_logit"] = tf.reduce_mean(real_logits)
        metrics["d_out/fake_logit"] = tf.reduce_mean(fake_logits)
        metrics["d_out/real_prob"] = tf.reduce_mean(tf.sigmoid(real_logits))
        metrics["d_out/fake_prob"] = tf.reduce_mean(tf.sigmoid(fake_logits))
        return self._scaled(self.d_optimizer, loss), metrics, real_out, fake_out

    def _scaled(self, optimizer, loss: tf.Tensor) -> tf.Tensor:
        """The loss times the dynamic loss scale (mixed_float16), else the loss."""
        return optimizer.scale_loss(loss) if self.loss_scaled else loss

    def _generator_update(self, real, fake, real_sums, g_tape) -> dict:
        """The generator update against the just-updated discriminator, on the batch
        `fake` whose forward pass `g_tape` holds."""
        targets = {}
        if self.fm_layers:  # Targets need no gradient: computed outside the tape.
            if self.fm_target is None:
                # A batch target must come from the same discriminator as the fakes'
                # statistics. A moving average mixes many past discriminators anyway:
                # the pre-update pass's features serve it as well, at no cost.
                real_sums = self._feature_sums(self.tap(real, training=True))
            targets = self._fm_targets(self._means_of_sums(real_sums))
        with g_tape:
            loss, metrics = self._g_loss(fake, targets)
        grads = g_tape.gradient(loss, self.generator.trainable_variables)
        skipped = self._apply(
            self.g_optimizer, metrics["loss/g"], grads, self.generator.trainable_variables
        )
        return metrics, skipped

    def _generator_loss_on(self, fake, targets):
        """The generator's loss on generated images (adversarial + feature matching):
        the part --jit_compile compiles, with the generator's forward pass."""
        return self._generator_loss(self.tap(fake, training=True), targets)

    def generator_gradients(self, targets, z):
        """(gradients, metrics) of the generator loss for noise `z`, no update."""
        with tf.GradientTape() as tape:
            loss, metrics = self._g_loss(self._generator_pass(z, tf.float32), targets)
        return tape.gradient(loss, self.generator.trainable_variables), metrics

    def _generator_loss(self, fake_out: dict, targets: dict):
        """(scaled loss, metrics) from the tap's outputs on generated images."""
        cfg = self.config.loss
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        g_adv = self.g_loss_fn(fake_out[LOGITS])
        loss = 0.0
        if not cfg.fm_only:
            loss = tf.nn.compute_average_loss(g_adv, global_batch_size=self.global_batch)
        metrics = {"loss/g_adv": tf.reduce_mean(g_adv)}
        if self.fm_layers:
            fm, per_layer = losses.feature_matching_loss(
                targets, self._feature_means(fake_out), self.fm_layer_weights, cfg.fm_distance
            )
            # Same value on every replica: see the module docstring for the 1/N.
            loss += cfg.fm_weight * fm / tf.cast(replicas, tf.float32)
            metrics["loss/g_fm"] = fm
            metrics.update({f"loss/g_fm/{n}": v for n, v in per_layer.items()})
        fm_total = cfg.fm_weight * metrics.get("loss/g_fm", 0.0)
        metrics["loss/g"] = fm_total + (0.0 if cfg.fm_only else metrics["loss/g_adv"])
        return self._scaled(self.g_optimizer, loss), metrics

    def _simultaneous_update(self, real, step) -> dict:
        """--update=simultaneous: D and G gradients from one forward pass (the
        TensorFlow DCGAN tutorial's step, plus feature matching)."""
        z = self._noise(step, 0, _NOISE_SALT, [self.z_dim], tf.random.stateless_normal)
        alpha = None
        if self.config.loss.gp_weight:
            alpha = self._noise(step, 0, _GP_SALT, [1, 1, 1], tf.random.stateless_uniform)
        d_grads, g_grads, metrics = self._both_loss_and_grads(real, z, alpha)
        d_skipped = self._apply(
            self.d_optimizer, metrics["loss/d"], d_grads, self.discriminator.trainable_variables
        )
        g_skipped = self._apply(
            self.g_optimizer, metrics["loss/g"], g_grads, self.generator.trainable_variables
        )
        return metrics, tf.stack([d_skipped, g_skipped])

    def _simultaneous_loss_and_grads(self, real, z, alpha):
        with tf.GradientTape() as d_tape, tf.GradientTape() as g_tape:
            fake = self._generator_forward(z, real.dtype)
            d_loss, metrics, real_out, fake_out = self._discriminator_loss(real, fake, alpha)
            targets = {}
            if self.fm_layers:  # The real side is a target: no gradient.
                real_features = {n: tf.stop_gradient(real_out[n]) for n in self.fm_layers}
                targets = self._fm_targets(self._feature_means(real_features))
            g_loss, g_metrics = self._generator_loss(fake_out, targets)
        d_grads = d_tape.gradient(d_loss, self.discriminator.trainable_variables)
        g_grads = g_tape.gradient(g_loss, self.generator.trainable_variables)
        return d_grads, g_grads, {**metrics, **g_metrics}

    def _replica_step(self, batches):
        """(measurements [len(metric_names)], skipped updates [D, G]) of one step."""
        step = self.step.read_value()
        if self.config.optimizer.update == "simultaneous":
            metrics, skipped = self._simultaneous_update(batches[0], step)
            return self._vector(metrics), skipped
        d_steps = self.config.optimizer.d_steps
        g_tape = tf.GradientTape()
        updates = [
            self._discriminator_update(batches[k], step, k, g_tape if k == d_steps - 1 else None)
            for k in range(d_steps)
        ]
        metrics = {
            name: tf.add_n([u[0][name] for u in updates]) / d_steps for name in updates[0][0]
        }
        _, _, fake, real_sums = updates[-1]
        g_metrics, g_skipped = self._generator_update(batches[-1], fake, real_sums, g_tape)
        metrics.update(g_metrics)
        return self._vector(metrics), tf.stack([tf.add_n([u[1] for u in updates]), g_skipped])

    def _vector(self, metrics: dict) -> tf.Tensor:
        return tf.stack([tf.cast(metrics[n], tf.float32) for n in self.metric_names])

    # -- the compiled inner loop ----------------------------------------------------

    def ema_decay_at(self, step: tf.Tensor) -> tf.Tensor:
        """min(--ema_decay, (1 + step) / (10 + step)): tf.train.ExponentialMovingAverage's
        num_updates rule. A fixed 0.999 keeps e^-3 = 5% of the random initial weights
        after 3,000 steps and lags ~1,000 steps behind; measured on Fashion-MNIST, that
        EMA generator was 20 FD worse than the raw one (66 vs 43) at 3,000 steps."""
        step = tf.cast(step, tf.float32)
        return tf.minimum(self.config.optimizer.ema_decay, (1.0 + step) / (10.0 + step))

    def _update_ema(self) -> None:
        decay = self.ema_decay_at(self.step)
        for e, v in zip(
            self.ema_generator.trainable_weights, self.generator.trainable_weights, strict=True
        ):
            e.assign(decay * e + (1.0 - decay) * v)
        for e, v in zip(
            self.ema_generator.non_trainable_weights,
            self.generator.non_trainable_weights,
            strict=True,
        ):
            e.assign(v)  # Batch-norm statistics are already moving averages.

    def _loop_fn(self, iterator, num_steps):
        n = len(self.metric_names)
        totals, finite_steps, skipped = tf.zeros([n]), tf.zeros([n]), tf.zeros([2])
        for _ in tf.range(num_steps):
            values, skips = self.strategy.run(self._replica_step, args=(next(iterator),))
            values = self.strategy.reduce(tf.distribute.ReduceOp.MEAN, values, axis=None)
            # Every replica holds the same (all-reduced) verdicts.
            skips = self.strategy.reduce(tf.distribute.ReduceOp.MEAN, skips, axis=None)
            finite = tf.math.is_finite(values)
            totals += tf.where(finite, values, 0.0)
            finite_steps += tf.cast(finite, tf.float32)
            skipped += skips
            self._update_ema()
            self.step.assign_add(1)
        self.skipped_updates.assign_add(tf.cast(tf.round(skipped), tf.int64))
        means = tf.where(finite_steps > 0, totals / tf.maximum(finite_steps, 1.0), np.nan)
        return means, tf.cast(num_steps, tf.float32) - finite_steps, skipped

    def train(self, iterator, num_steps: int) -> dict[str, float]:
        """Runs num_steps steps; returns each measurement averaged over its finite values
        (NaN if it had none). `nonfinite` then maps each measurement that was NaN/Inf to
        its number of steps, and `skipped` gives the D and G updates not applied because
        a loss or gradient was NaN/Inf on some replica."""
        means, nonfinite, skipped = self._loop(iterator, tf.constant(num_steps, tf.int32))
        counts = nonfinite.numpy().tolist()
        self.nonfinite = {k: int(c) for k, c in zip(self.metric_names, counts, strict=True) if c}
        self.skipped = tuple(int(round(x)) for x in skipped.numpy().tolist())
        return dict(zip(self.metric_names, means.numpy().tolist(), strict=True))

    def nonfinite_variables(self) -> list[str]:
        """Names of model and optimizer variables holding NaN/Inf: never checkpoint those."""
        flags = self._finite_flags().numpy().tolist()
        return [v.path for v, ok in zip(self._watched_variables(), flags, strict=True) if not ok]

    def _watched_variables(self) -> list:
        models = (self.generator, self.discriminator, self.ema_generator)
        variables = [v for m in models for v in m.weights]
        variables += list(self.g_optimizer.variables) + list(self.d_optimizer.variables)
        return [v for v in variables if tf.as_dtype(v.dtype).is_floating]

    @tf.function
    def _finite_flags(self):
        return tf.stack(
            [tf.reduce_all(tf.math.is_finite(v.value)) for v in self._watched_variables()]
        )

    def generate(self, noise: tf.Tensor, ema: bool = True) -> tf.Tensor:
        """Images in [-1, 1] from the EMA generator (or the raw one), inference mode."""
        return self._generate(noise, ema)

    @tf.function
    def _generate(self, noise, ema: bool):
        model = self.ema_generator if ema else self.generator
        return model(noise, training=False)

    def checkpoint_items(self) -> dict:
        """Everything resume needs; the input order is a function of (seed, step)."""
        items = {
            "generator": self.generator,
            "discriminator": self.discriminator,
            "ema_generator": self.ema_generator,
            "g_optimizer": self.g_optimizer,
            "d_optimizer": self.d_optimizer,
            "step": self.step,
            "skipped_updates": self.skipped_updates,
        }
        if self.fm_target is not None:
            items["fm_target"] = self.fm_target
        return items
