"""What a run feeds its devices: the data-parallel mesh, train / scoring batch iterators and
the training optimizer of ``config.train`` (used by dense training, every fine-tune and the
pruning methods' batch providers, :class:`fairjax.pruning.api.RunContext`).

Every iterator is a pure function of ``(config.seed, epoch or step)``, so a killed and resumed
run sees exactly the batches of an uninterrupted one. Batches are dicts of numpy arrays
(``image`` float32[B, H, W, 3], ``label`` int32[B], ``group`` int32[B]) split over the devices
of :func:`data_parallel` (identity on one device).
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from fairjax import parallel, train
from fairjax.config import ConfigError, imagenet_normalization
from fairjax.data import DatasetSplits
from fairjax.data import pipeline as input_pipeline


def train_tx(config, steps_per_epoch: int, epochs: int):
  """The optimizer of ``config.train`` (masked updates) with its schedule spanning ``epochs``
  epochs of ``steps_per_epoch`` steps (warm-up ``train.warmup_epochs``)."""
  t = config.train
  total = max(1, steps_per_epoch * epochs)
  schedule = train.make_schedule(
    t.schedule, t.learning_rate, total, warmup_steps=t.warmup_epochs * steps_per_epoch
  )
  return train.make_optimizer(
    t.optimizer, schedule, momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay
  )


def data_parallel(config) -> parallel.DataParallel:
  """The data-parallel mesh of ``config.parallel`` (cached), after checking that every batch
  size of the run splits evenly over its devices (ConfigError naming the field otherwise)."""
  try:
    dp = parallel.data_parallel(int(config.parallel.num_devices))
    for field in (
      "train.batch_size",
      "train.eval_batch_size",
      "prune.batch_size",
      "prune.curvature_chunk_size",
    ):
      section, key = field.split(".")
      dp.check_batch_size(int(config[section][key]), field)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return dp


def train_step_fn(config):
  """The train step for ``train.fit``: None (fit's own jit) on one device, else a jit that
  keeps the state replicated and the batch split over the mesh."""
  dp = data_parallel(config)
  if not dp.active:
    return None
  return _sharded_train_step(dp)


@functools.lru_cache(maxsize=4)
def _sharded_train_step(dp: parallel.DataParallel):
  return dp.jit(train.train_step, batch_argnums=(1,), num_args=3, out_batch=(False, False))


def epoch_batches(config, data: DatasetSplits, seed: int):
  """``epoch -> train batches`` of one training epoch (``train.batch_size``, ``data.sampling``,
  ``data.augment``; split over the devices), a pure function of ``(seed, epoch)`` so that a
  resumed run trains exactly as an uninterrupted one."""
  dp = data_parallel(config)

  # .get: configs read back from results.json of runs that predate data.augment trained without.
  augment = config.data.get("augment", "none")

  def batches(epoch: int):
    return dp.shard_batches(
      input_pipeline.train_batches(
        data.sources["train"],
        batch_size=config.train.batch_size,
        image_size=config.data.image_size,
        seed=seed,
        sampling=config.data.sampling,
        epoch=epoch,
        augment=augment,
        imagenet_normalization=imagenet_normalization(config),
      ),
      "train.batch_size",
    )

  return batches


def scoring_batches(config, data: DatasetSplits, step: int, chunk_size: int | None = None):
  """Group-balanced train batches, split over the devices. With ``chunk_size``, each host
  batch is first cut into chunks of that many rows (the last one padded with group -1 rows, which
  count nowhere): one device call per chunk, each chunk split evenly over all devices."""
  p = config.prune
  batches = input_pipeline.group_balanced_batches(
    data.sources["train"],
    batch_size=p.batch_size,
    image_size=config.data.image_size,
    seed=config.seed * 1000 + step,
    num_groups=data.num_groups,
    num_batches=p.num_batches,
    imagenet_normalization=imagenet_normalization(config),
  )
  field = "prune.batch_size"
  if chunk_size and chunk_size < p.batch_size:
    batches, field = host_chunks(batches, chunk_size), "prune.curvature_chunk_size"
  return data_parallel(config).shard_batches(batches, field)


def host_chunks(batches, chunk_size: int):
  for batch in batches:
    n = len(batch["group"])
    for start in range(0, n, chunk_size):
      chunk = {k: np.asarray(v[start : start + chunk_size]) for k, v in batch.items()}
      pad = chunk_size - len(chunk["group"])
      if pad:
        chunk = {
          k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in chunk.items()
        }
        chunk["group"][-pad:] = -1
      yield chunk


def uniform_train_batches(config, data: DatasetSplits, step: int):
  """``num_batches`` uniformly sampled TRAIN batches of ``prune.batch_size`` for the
  group-unaware gradient scores (SNIP, OBD); a pure function of (seed, step), so a resumed run
  scores exactly as an uninterrupted one."""
  p = config.prune
  batches = input_pipeline.train_batches(
    data.sources["train"],
    batch_size=p.batch_size,
    image_size=config.data.image_size,
    seed=config.seed * 1000 + step,
    sampling="uniform",
    epoch=0,
    drop_remainder=False,
    imagenet_normalization=imagenet_normalization(config),
  )
  # A last partial batch (fewer train images than num_batches * batch_size) need not split
  # evenly over the devices: it is replicated instead (same scores, just not data-parallel).
  return data_parallel(config).shard_batches(
    itertools.islice(batches, p.num_batches), "prune.batch_size", uneven="replicate"
  )
