"""The training loop: one function for every rank of a Horovod job, and for a single process without Horovod.

Data parallelism with exact global batches. ``world`` shards (one per Horovod rank, or several emulated in one
process) each contribute ``b`` rows per step; the global batch has ``world * b`` rows. Each replica's loss is
the sum of its rows' weighted losses divided by the GLOBAL batch size, and ``hvd.DistributedGradientTape``
SUMS the replicas' gradients: the applied gradient is exactly the gradient of the mean loss over the global
batch, the same as one process training on that global batch (the test of this module proves it to 1e-6).
The learning rate is ``learning_rate * world`` (linear scaling with the global batch). Every rank starts from
rank 0's variables (broadcast, optimizer slots included), runs the same number of steps per epoch (the
smallest shard decides), and stops early on the same epoch, since the validation loss it looks at is an
allreduced sum. Only rank 0 writes checkpoints.

The weights validated, kept and published are an exponential moving average of the iterates (Polyak
averaging, ``train.average_epochs``): Adam at a constant learning rate ends each epoch at a point that jitters
around the optimum, and a model's uplift is a small difference of two logits, so that jitter alone moved the
published ranking from run to run (two runs of the same data in other row orders: 23.8% and 35.3% of the
oracle). The average is the same on every rank (it is computed from the same synchronous weights).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
import tensorflow as tf
import tf_keras

from coupon_spark.config import TrainConfig
from coupon_spark.errors import InputError
from coupon_spark.model.data import Examples, ipw_weights
from coupon_spark.model.metrics import binary_summary, summary_metrics
from coupon_spark.model.network import (
    EnsembleUpliftModel,
    TwoTowerUpliftModel,
    build_model,
    export_weights,
    import_weights,
)
from coupon_spark.model.spec import NONE_INDEX, ModelSpec

log = logging.getLogger(__name__)

EVAL_BATCH = 8192


class EmptyShardError(InputError, ValueError):
    """A rank has no training rows (after the validation split)."""


class Comm(Protocol):
    """What the loop needs from the collective layer."""

    rank: int
    size: int

    def allreduce_sum(self, x: np.ndarray) -> np.ndarray: ...

    def allreduce_min(self, x: np.ndarray) -> np.ndarray: ...

    def broadcast_variables(self, variables: list[tf.Variable]) -> None: ...

    def gradient_tape(self, tape: tf.GradientTape) -> tf.GradientTape: ...


class LocalComm:
    """A world of one process: collectives are identities."""

    rank = 0
    size = 1
    local_rank = 0

    def allreduce_sum(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)

    def allreduce_min(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)

    def broadcast_variables(self, variables: list[tf.Variable]) -> None:
        return None

    def gradient_tape(self, tape: tf.GradientTape) -> tf.GradientTape:
        return tape


class HorovodComm:
    """Horovod collectives (``horovod.tensorflow``); call after ``hvd.init()``."""

    def __init__(self) -> None:
        import horovod.tensorflow as hvd

        self.hvd = hvd
        self.rank = hvd.rank()
        self.size = hvd.size()
        self.local_rank = hvd.local_rank()
        self._count = 0

    def _name(self, what: str) -> str:
        self._count += 1  # every rank issues the same collectives in the same order
        return f"coupon_spark.{what}.{self._count}"

    def allreduce_sum(self, x: np.ndarray) -> np.ndarray:
        t = tf.constant(np.asarray(x, np.float64))
        return self.hvd.allreduce(t, op=self.hvd.Sum, name=self._name("sum")).numpy()

    def allreduce_min(self, x: np.ndarray) -> np.ndarray:
        t = tf.constant(np.asarray(x, np.float64))
        return self.hvd.allreduce(t, op=self.hvd.Min, name=self._name("min")).numpy()

    def broadcast_variables(self, variables: list[tf.Variable]) -> None:
        self.hvd.broadcast_variables(variables, root_rank=0)

    def gradient_tape(self, tape: tf.GradientTape) -> tf.GradientTape:
        # Sum, not Average: each replica's loss is already divided by the GLOBAL batch size.
        return self.hvd.DistributedGradientTape(tape, op=self.hvd.Sum, sparse_as_dense=True)


@dataclass
class FitResult:
    """What training produced (identical on every rank)."""

    weights: dict[str, np.ndarray]
    history: list[dict[str, float]]
    best_epoch: int
    metrics: dict[str, Any]
    world: int
    local_batch: int
    steps_per_epoch: int
    learning_rate: float
    n_train: int
    n_validation: int
    train_seconds: float
    examples_per_second: float
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        weights: dict[str, np.ndarray],
        history: list[dict[str, float]],
        best_epoch: int,
        metrics: dict[str, Any],
        plan: BatchPlan,
        n_train: int,
        n_validation: int,
    ) -> FitResult:
        """The result of a training run of ``plan``'s shape, its time and throughput summed over ``history``."""
        seconds = sum(h["seconds"] for h in history)
        examples = sum(h["examples_per_second"] * h["seconds"] for h in history)
        return cls(
            weights=weights,
            history=history,
            best_epoch=best_epoch,
            metrics=metrics,
            world=plan.world,
            local_batch=plan.local_batch,
            steps_per_epoch=plan.steps,
            learning_rate=plan.learning_rate,
            n_train=n_train,
            n_validation=n_validation,
            train_seconds=seconds,
            examples_per_second=examples / seconds if seconds else 0.0,
        )


def make_optimizer(cfg: TrainConfig, learning_rate: float) -> tf_keras.optimizers.Optimizer:
    if cfg.optimizer == "sgd":
        return tf_keras.optimizers.SGD(learning_rate=learning_rate)
    return tf_keras.optimizers.Adam(learning_rate=learning_rate)


def epoch_batches(n: int, batch: int, steps: int, seed: int, epoch: int, shard: int) -> Iterator[np.ndarray]:
    """Row indices of each step's local batch: a fresh permutation of ``range(n)`` per (seed, epoch, shard)."""
    perm = np.random.default_rng([seed, epoch, shard]).permutation(n)
    for s in range(steps):
        yield perm[s * batch : (s + 1) * batch]


def batch_tensors(parts: list[Examples], weights: list[np.ndarray]) -> dict[str, tf.Tensor]:
    """Concatenate shard slices into one batch of tensors (inputs, labels and IPW ``weight``)."""
    cat = {
        k: np.concatenate([getattr(p, k) for p in parts])
        for k in ("user_x", "user_bucket", "coupon_x", "coupon_index", "pair_x", "boot", "purchased", "redeemed")
    }
    cat["weight"] = np.concatenate(weights).astype(np.float32)
    return {k: tf.convert_to_tensor(v) for k, v in cat.items()}


@dataclass(frozen=True)
class BatchPlan:
    """The shape of every epoch, the same on every rank: ``world`` shards of ``local_batch`` rows per step (the
    smallest shard decides ``steps``), and the learning rate scaled with the global batch."""

    world: int
    local_batch: int
    steps: int
    learning_rate: float

    @property
    def global_batch(self) -> int:
        return self.local_batch * self.world

    @classmethod
    def of(cls, train: list[Examples], cfg: TrainConfig, comm: Comm) -> BatchPlan:
        """Raises :class:`EmptyShardError` when some rank's shard has no training row."""
        world = comm.size * len(train)
        min_rows = int(comm.allreduce_min(np.array([min(len(t) for t in train)]))[0])
        if min_rows == 0:
            raise EmptyShardError("a rank has no training rows: fewer ranks (train.num_proc) or more data needed")
        b = min(cfg.batch_size, min_rows)
        return cls(world, b, min_rows // b, cfg.learning_rate * world)


def normalised_weights(
    train: list[Examples], val: list[Examples], cfg: TrainConfig, comm: Comm
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Inverse-propensity weights of the training and validation rows, normalised to mean 1 over the whole
    training set (all ranks)."""
    raw = [ipw_weights(t.propensity, cfg.propensity_clip) for t in train]
    tot = comm.allreduce_sum(np.array([sum(float(r.sum()) for r in raw), sum(len(r) for r in raw)]))
    mean_w = tot[0] / tot[1] if tot[1] else 1.0
    return [r / mean_w for r in raw], [ipw_weights(v.propensity, cfg.propensity_clip) / mean_w for v in val]


@dataclass
class EarlyStopping:
    """Keeps the best validation loss and its epoch; stops after ``patience`` epochs without an improvement of
    more than ``min_delta``."""

    patience: int
    min_delta: float
    best: float = float("inf")
    best_epoch: int = 0
    wait: int = 0

    def update(self, epoch: int, loss: float) -> bool:
        """Record ``epoch``'s loss; True when it improved on the best."""
        if loss < self.best - self.min_delta:
            self.best, self.best_epoch, self.wait = loss, epoch, 0
            return True
        self.wait += 1
        return False

    @property
    def stop(self) -> bool:
        return self.wait >= self.patience


def fit(
    shards: list[Examples],
    spec: ModelSpec,
    cfg: TrainConfig,
    comm: Comm | None = None,
    checkpoint: Callable[[dict[str, np.ndarray], dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train the two-tower model on this process's shards (one per Horovod rank, or several emulated here).

    Each epoch: the training pass (:func:`train_epoch`), the moving average swapped in, the validation loss
    (:func:`validation_loss`), the best weights kept and checkpointed (:class:`EarlyStopping`), the average
    swapped out; at the end the best weights are loaded and their validation metrics computed.

    Args:
        shards: This process's shards, in global shard order (process ``r`` of ``P`` owning ``k`` shards holds
            global shards ``r*k .. r*k+k-1``); validation rows are marked in each.
        spec: The architecture.
        cfg: Batch size (per shard), learning rate (per shard), epochs, patience, seed, clipping...
        comm: Collectives (:class:`HorovodComm`); :class:`LocalComm` when None.
        checkpoint: Called on rank 0 only with (weights, state) after each epoch that improved the
            validation loss.

    Returns:
        The best weights (by validation loss), the per-epoch history and the validation metrics.

    Raises:
        EmptyShardError: A shard has no training row.
    """
    comm = comm or LocalComm()
    pairs = [s.split() for s in shards]
    train, val = [p[0] for p in pairs], [p[1] for p in pairs]
    w_train, w_val = normalised_weights(train, val, cfg, comm)
    plan = BatchPlan.of(train, cfg, comm)

    tf_keras.utils.set_random_seed(cfg.seed)
    model = build_model(spec, l2=cfg.l2, seed=cfg.seed, id_l2=cfg.id_l2)
    opt = make_optimizer(cfg, plan.learning_rate)
    opt.build(model.trainable_variables)
    comm.broadcast_variables(list(model.variables) + list(opt.variables))
    l2_share = 1.0 / comm.size
    averager = WeightAverage(model.trainable_variables, cfg.average_epochs * plan.steps)

    @tf.function(reduce_retracing=True)
    def train_step(batch: dict[str, tf.Tensor]) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = model.compute_loss(batch, normalizer=plan.global_batch, l2_share=l2_share)
        grads = comm.gradient_tape(tape).gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        averager.update()
        return loss

    @tf.function(reduce_retracing=True)
    def weighted_loss_sum(batch: dict[str, tf.Tensor]) -> tf.Tensor:
        return model.compute_loss(batch, normalizer=1.0, l2_share=0.0, training=False)

    first_shard = comm.rank * len(shards)
    history: list[dict[str, float]] = []
    stopping = EarlyStopping(cfg.early_stopping_patience, cfg.min_delta)
    best_weights = export_weights(model)
    say = log.info if comm.rank == 0 else (lambda *a: None)
    say(
        "training: %d shard(s) x %d rows/step = global batch %d, %d steps/epoch, lr %.4g, %d epochs max",
        plan.world, plan.local_batch, plan.global_batch, plan.steps, plan.learning_rate, cfg.epochs,
    )  # fmt: skip
    for epoch in range(1, cfg.epochs + 1):
        seconds, train_loss = train_epoch(train_step, train, w_train, plan, cfg.seed, epoch, first_shard, comm)
        current = averager.swap_in()
        val_loss = validation_loss(weighted_loss_sum, val, w_val, comm, default=train_loss)
        improved = stopping.update(epoch, val_loss)
        history.append(epoch_record(epoch, train_loss, val_loss, seconds, plan))
        if improved:
            best_weights = export_weights(model)
            if checkpoint is not None and comm.rank == 0:
                checkpoint(best_weights, {"epoch": epoch, "validation_loss": val_loss})
        averager.swap_out(current)
        say(
            "epoch %d/%d: train loss %.5f, validation loss %.5f%s, %.0f examples/s",
            epoch, cfg.epochs, train_loss, val_loss,
            " (best)" if improved else f" (no better for {stopping.wait})", history[-1]["examples_per_second"],
        )  # fmt: skip
        if stopping.stop:
            say(
                "early stop after epoch %d: best validation loss %.5f at epoch %d",
                epoch,
                stopping.best,
                stopping.best_epoch,
            )
            break

    import_weights(model, best_weights)
    metrics = validation_metrics(model, val, comm)
    metrics["validation_loss"] = stopping.best
    n = comm.allreduce_sum(np.array([sum(len(t) for t in train), sum(len(v) for v in val)]))
    return FitResult.of(best_weights, history, stopping.best_epoch, metrics, plan, int(n[0]), int(n[1]))


def epoch_record(epoch: int, train_loss: float, val_loss: float, seconds: float, plan: BatchPlan) -> dict[str, float]:
    """One epoch's row of :attr:`FitResult.history`."""
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "validation_loss": val_loss,
        "seconds": seconds,
        "examples_per_second": plan.steps * plan.global_batch / seconds,
    }


def train_epoch(
    train_step: Callable[[dict[str, tf.Tensor]], tf.Tensor],
    train: list[Examples],
    weights: list[np.ndarray],
    plan: BatchPlan,
    seed: int,
    epoch: int,
    first_shard: int,
    comm: Comm,
) -> tuple[float, float]:
    """One pass over the shards in ``plan.steps`` steps, each shard's rows in a fresh permutation of
    ``(seed, epoch, shard)``; returns (seconds, the global training loss: the mean over steps of the summed
    replica losses)."""
    t0 = time.perf_counter()
    iters = [
        epoch_batches(len(t), plan.local_batch, plan.steps, seed, epoch, first_shard + j) for j, t in enumerate(train)
    ]
    loss_sum = 0.0
    for _ in range(plan.steps):
        idx = [next(it) for it in iters]
        batch = batch_tensors(
            [t.take(i) for t, i in zip(train, idx, strict=True)], [w[i] for w, i in zip(weights, idx, strict=True)]
        )
        loss_sum += float(train_step(batch))
    seconds = time.perf_counter() - t0
    # Each replica's loss is its share of the global mean: their sum is the global batch's loss.
    return seconds, float(comm.allreduce_sum(np.array([loss_sum / plan.steps]))[0])


def validation_loss(
    loss_sum: Callable[[dict[str, tf.Tensor]], tf.Tensor],
    val: list[Examples],
    weights: list[np.ndarray],
    comm: Comm,
    default: float,
) -> float:
    """The weighted mean loss over every rank's validation rows (``default`` when they weigh nothing)."""
    vs = np.zeros(2)
    for v, w in zip(val, weights, strict=True):
        for lo in range(0, len(v), EVAL_BATCH):
            sl = np.arange(lo, min(lo + EVAL_BATCH, len(v)))
            vs += [float(loss_sum(batch_tensors([v.take(sl)], [w[sl]]))), float(w[sl].sum())]
    vs = comm.allreduce_sum(vs)
    return float(vs[0] / vs[1]) if vs[1] > 0 else default


class WeightAverage:
    """An exponential moving average of a model's trainable variables over about ``horizon_steps`` steps.

    ``decay_t = min(1 - 1 / horizon_steps, (1 + t) / (10 + t))`` at update ``t`` (TensorFlow's
    ``ExponentialMovingAverage`` with ``num_updates``): the first updates follow the weights closely, so the
    average of a short run is not dragged toward the initial weights. ``horizon_steps <= 1`` turns it off (the
    average is the current weights).
    """

    def __init__(self, variables: list[tf.Variable], horizon_steps: float) -> None:
        self.variables = list(variables)
        self.enabled = horizon_steps > 1
        self.decay = 1.0 - 1.0 / horizon_steps if self.enabled else 0.0
        self.count = tf.Variable(0.0, trainable=False, dtype=tf.float32)
        self.shadow = [tf.Variable(v, trainable=False) for v in self.variables] if self.enabled else []

    def update(self) -> None:
        """Fold the current weights into the average (inside the training step's ``tf.function``)."""
        if not self.enabled:
            return
        self.count.assign_add(1.0)
        d = tf.minimum(self.decay, (1.0 + self.count) / (10.0 + self.count))
        for a, v in zip(self.shadow, self.variables, strict=True):
            a.assign(d * a + (1.0 - d) * tf.cast(v, a.dtype))

    def swap_in(self) -> list[np.ndarray]:
        """Put the average into the model; returns the current weights for :meth:`swap_out` (none when off)."""
        if not self.enabled:
            return []
        current = [v.numpy() for v in self.variables]
        for v, a in zip(self.variables, self.shadow, strict=True):
            v.assign(a)
        return current

    def swap_out(self, current: list[np.ndarray]) -> None:
        """Put back the weights :meth:`swap_in` returned, to go on training."""
        for v, c in zip(self.variables[: len(current)], current, strict=True):  # off: current is empty
            v.assign(c)


def validation_metrics(
    model: TwoTowerUpliftModel | EnsembleUpliftModel, val: list[Examples], comm: Comm
) -> dict[str, Any]:
    """Purchase metrics on every validation row (under its logged arm) and redemption metrics on the treated
    rows, aggregated over ranks (see :mod:`coupon_spark.model.metrics`)."""
    predict = tf.function(lambda batch: model(batch), reduce_retracing=True)
    purchase, redeem = [], []
    for v in val:
        for lo in range(0, len(v), EVAL_BATCH):
            part = v.take(np.arange(lo, min(lo + EVAL_BATCH, len(v))))
            out = predict(batch_tensors([part], [np.ones(len(part))]))
            purchase.append(binary_summary(part.purchased, out["p_purchase"].numpy()))
            t = part.coupon_index != NONE_INDEX
            redeem.append(binary_summary(part.redeemed[t], out["p_redeem"].numpy()[t]))
    empty = binary_summary(np.zeros(0), np.zeros(0))
    p = comm.allreduce_sum(np.sum(purchase, axis=0) if purchase else empty)
    r = comm.allreduce_sum(np.sum(redeem, axis=0) if redeem else empty)
    return {"purchase": summary_metrics(p), "redeem": summary_metrics(r)}
