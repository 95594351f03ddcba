"""The main job: train dense -> score -> prune steps -> evaluate -> report (design.md section 0).

Every stage is checkpointed in the workdir, so a run killed at any point and started again with
the same command resumes where it stopped and ends with the same masks and metrics:

- ``<workdir>/checkpoints/dense``: one checkpoint per epoch (current and best-so-far weights,
  optimizer state, early-stopping counters); the last one is marked ``done``.
- ``<workdir>/checkpoints/prune``: one checkpoint per pruning step (params, BatchNorm
  statistics, mask, and the history of validation metrics and the stopping rule).
- ``<workdir>/results.json`` (written atomically at the end; schema in the README) and plots,
  ``<workdir>/test_predictions.npz`` (the test-split predictions the paired bootstrap of
  ``results["bootstrap"]`` resampled) and ``<workdir>/wall_time.json`` (the wall time of every
  session of the run, so ``wall_seconds`` covers a killed and resumed run as a whole).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from fairjax import (bootstrap, checkpoint, masks, metrics, models, parallel, references, report,
                     schedules, stopping, train)
from fairjax.config import ConfigError, imagenet_normalization, validate_config, validate_data
from fairjax.data import DatasetSplits, load_dataset
from fairjax.data import pipeline as input_pipeline
from fairjax.models import pretrained
from fairjax.pruning import api as methods_api
from fairjax.pruning import builtin, fairprune, snnl_channels

PyTree = Any


def _to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def make_model(config, data: DatasetSplits):
  """The (uninitialised) ``flax.linen`` model of ``config.model`` for ``data``'s classes (with
  the fields ``model.pretrained``'s checkpoint needs)."""
  kwargs = dict(config.model.kwargs) if config.model.kwargs else {}
  if config.model.pretrained:
    # The fields the checkpoint's shapes need (VGG: classifier_width=4096); a contradicting
    # model.kwargs entry is reported by pretrained.load with the field's name.
    kwargs = {**pretrained.model_fields(config.model.name), **kwargs}
  return models.get_model(config.model.name, num_classes=data.num_classes, **kwargs)


_make_model = make_model


def _load_pretrained(config, state: train.TrainState, data: DatasetSplits,
                     workdir: str) -> train.TrainState:
  """``state`` with the weights of ``model.pretrained`` (fresh optimizer state). Records which
  leaves were loaded and which initialised in the log and in ``<workdir>/pretrained.json``."""
  m = config.model
  loaded = pretrained.load(m.name, m.pretrained, num_classes=data.num_classes,
                           rng=jax.random.key(config.seed + 2), image_size=config.data.image_size,
                           model_kwargs=dict(m.kwargs or {}))
  variables = loaded.variables
  ours = {"params": state.params, "batch_stats": state.batch_stats}
  theirs = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  # The loader checks every key and shape against the architecture; this guards the handover.
  if jax.tree.structure(ours) != jax.tree.structure(theirs):
    raise pretrained.PretrainedError(
        f"{m.pretrained}: the loaded variables do not have the model's tree structure "
        f"(model.kwargs {dict(m.kwargs or {})} may not match the checkpoint)")
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ours)[0], jax.tree.leaves(theirs)):
    if np.shape(a) != np.shape(b):
      raise pretrained.PretrainedError(
          f"{m.pretrained}: {jax.tree_util.keystr(path)} has shape {np.shape(b)}, the model "
          f"expects {np.shape(a)}")
  params = jax.tree.map(lambda a, b: jnp.asarray(b, a.dtype), ours["params"], theirs["params"])
  batch_stats = jax.tree.map(lambda a, b: jnp.asarray(b, a.dtype), ours["batch_stats"],
                             theirs["batch_stats"])
  summary = {"path": os.path.abspath(m.pretrained), "format": loaded.file_format,
             "model": m.name, "loaded": list(loaded.loaded), "initialised": list(loaded.initialised)}
  logging.info("pretrained: %d leaves loaded from %s (%s); initialised: %s", len(loaded.loaded),
               m.pretrained, loaded.file_format, ", ".join(loaded.initialised) or "none")
  if parallel.is_main_process():
    checkpoint.write_json_atomic(os.path.join(workdir, PRETRAINED_JSON), summary)
  return state.replace(params=params, batch_stats=batch_stats, opt_state=state.tx.init(params))


def _train_tx(config, steps_per_epoch: int, epochs: int):
  t = config.train
  total = max(1, steps_per_epoch * epochs)
  schedule = train.make_schedule(t.schedule, t.learning_rate, total,
                                 warmup_steps=t.warmup_epochs * steps_per_epoch)
  return train.make_optimizer(t.optimizer, schedule, momentum=t.momentum, nesterov=t.nesterov,
                              weight_decay=t.weight_decay)


def data_parallel(config) -> parallel.DataParallel:
  """The data-parallel mesh of ``config.parallel`` (cached), after checking that every batch
  size of the run splits evenly over its devices (ConfigError naming the field otherwise)."""
  try:
    dp = parallel.data_parallel(int(config.parallel.num_devices))
    for field in ("train.batch_size", "train.eval_batch_size", "prune.batch_size",
                  "prune.curvature_chunk_size"):
      section, key = field.split(".")
      dp.check_batch_size(int(config[section][key]), field)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return dp


def _train_step_fn(config):
  """The train step for ``train.fit``: None (fit's own jit) on one device, else a jit that
  keeps the state replicated and the batch split over the mesh."""
  dp = data_parallel(config)
  if not dp.active:
    return None
  return _sharded_train_step(dp)


@functools.lru_cache(maxsize=4)
def _sharded_train_step(dp: parallel.DataParallel):
  return dp.jit(train.train_step, batch_argnums=(1,), num_args=3, out_batch=(False, False))


def predict_split(state: train.TrainState, data: DatasetSplits, split: str, config
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Predicted classes of ``state`` on one split: ``(labels, predictions, groups)``, int [N]
  each, in the split's order (padding rows dropped)."""
  dp = data_parallel(config)
  batches = input_pipeline.eval_batches(
      data.sources[split], batch_size=config.train.eval_batch_size,
      image_size=config.data.image_size, imagenet_normalization=imagenet_normalization(config))
  # Only the images go to the devices; labels, groups and the padding flags stay on the host.
  batches = dp.shard_batches(batches, "train.eval_batch_size", keys=("image",))
  logits, labels, groups = train.predict(dp.replicate(state), batches)
  if not np.all(np.isfinite(logits)):
    raise FloatingPointError(f"non-finite logits on the {split} split; the model diverged")
  return labels, np.argmax(logits, axis=-1), groups


def split_metrics(config, data: DatasetSplits, labels: np.ndarray, predictions: np.ndarray,
                  groups: np.ndarray, *, convention: str | None = None) -> dict:
  """:func:`fairjax.metrics.evaluate` of stored predictions with the run's settings
  (``convention`` overrides ``config.fairness_convention``)."""
  return metrics.evaluate(labels, predictions, groups,
                          num_classes=data.num_classes, num_groups=data.num_groups,
                          group_names=list(data.group_names),
                          convention=convention or config.fairness_convention,
                          undefined=config.undefined_rates)


def evaluate_split(state: train.TrainState, data: DatasetSplits, split: str, config) -> dict:
  """Metrics of ``state`` on one split (metrics.evaluate + the mask's sparsity)."""
  out = split_metrics(config, data, *predict_split(state, data, split, config))
  out["sparsity"] = _sparsity(state.mask)
  if split == "test":  # once per reported model
    _warn_incomplete_metrics(data, out)
  return out


def _warn_incomplete_metrics(data: DatasetSplits, test_metrics: Mapping[str, Any]) -> None:
  """Warns when the test metrics skip classes or hold samples of unknown group, with counts."""
  if max(test_metrics["skipped_classes"].values(), default=0) or test_metrics["num_unknown_group"]:
    logging.warning("%s test metrics: fairness gaps skip classes absent from a group %s (of %d); "
                    "%d samples of unknown group count in the overall metrics only", data.name,
                    test_metrics["skipped_classes"], data.num_classes,
                    test_metrics["num_unknown_group"])


def _sparsity(mask: PyTree | None) -> float:
  """Reported ``"sparsity"``: the fraction of the prunable conv/dense KERNEL weights (the
  method's scope minus ``prune.exclude_layers``) that the mask removes. Bias and BatchNorm
  entries that ``snnl_channels`` masks with a channel are not counted, so the figure means the
  same for every method (channels are reported separately, ``channels_kept`` / ``"slimming"``)."""
  if mask is None:
    return 0.0
  return float(masks.sparsity_report(mask, kernels_only=True)["global"]["sparsity"])


def epoch_batches(config, data: DatasetSplits, seed: int):
  """``epoch -> train batches`` of one training epoch (``train.batch_size``, ``data.sampling``,
  ``data.augment``; split over the devices), a pure function of ``(seed, epoch)`` so that a
  resumed run trains exactly as an uninterrupted one."""
  dp = data_parallel(config)

  # .get: configs read back from results.json of runs that predate data.augment trained without.
  augment = config.data.get("augment", "none")

  def batches(epoch: int):
    return dp.shard_batches(input_pipeline.train_batches(
        data.sources["train"], batch_size=config.train.batch_size,
        image_size=config.data.image_size, seed=seed, sampling=config.data.sampling, epoch=epoch,
        augment=augment, imagenet_normalization=imagenet_normalization(config)),
        "train.batch_size")
  return batches


_epoch_batches = epoch_batches


def _state_items(state: train.TrainState) -> dict[str, PyTree]:
  return {"params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state}


# -- dense training ----------------------------------------------------------------------------


def train_dense(config, model, data: DatasetSplits, workdir: str) -> train.TrainState:
  """Trains (or resumes training of) the dense model; returns the best state by val accuracy."""
  t = config.train
  n_train = len(data.labels["train"])
  steps_per_epoch = max(1, n_train // t.batch_size)
  tx = _train_tx(config, steps_per_epoch, t.epochs)
  init_key = jax.random.key(config.seed, impl="rbg")  # rbg: much faster init compile on CPU
  state = train.create_train_state(model, init_key, (config.data.image_size,) * 2 + (3,), tx)
  store = checkpoint.CheckpointStore(checkpoint.store_directory(workdir, checkpoint.DENSE_STORE),
                                     max_to_keep=2)
  latest = store.latest_step()
  if config.model.pretrained and latest is None:  # a resumed run restores its own weights
    try:
      state = _load_pretrained(config, state, data, workdir)
    except BaseException:
      store.close()  # a bad weights file ends the run; leave no orbax work behind
      raise
  state = data_parallel(config).replicate(state)  # identity on one device
  like = {**_state_items(state), "best_params": state.params, "best_batch_stats": state.batch_stats}
  best_score, bad_epochs, start = -math.inf, 0, 0
  best = {"params": state.params, "batch_stats": state.batch_stats}
  if latest is not None:
    meta = store.restore_metadata(latest)
    items = store.restore(latest, like)
    best = {"params": items["best_params"], "batch_stats": items["best_batch_stats"]}
    if meta.get("done"):
      logging.info("dense model: restored the finished run (epoch %d)", meta["epoch"] + 1)
      store.close()
      return state.replace(**best)
    state = state.replace(params=items["params"], batch_stats=items["batch_stats"],
                          opt_state=items["opt_state"], step=jnp.asarray(meta["step"], jnp.int32))
    best_score, bad_epochs, start = meta["best_score"], meta["bad_epochs"], meta["epoch"] + 1
    logging.info("dense model: resuming after epoch %d", meta["epoch"] + 1)  # 1-based, as logs

  batches = _epoch_batches(config, data, config.seed)
  rng = jax.random.key(config.seed + 1, impl="rbg")
  done = False
  for epoch in range(start, t.epochs):
    state, history = train.fit(state, batches, epochs=epoch + 1, start_epoch=epoch,
                               rng=data_parallel(config).replicate(rng),
                               log_every=0, donate=False, step_fn=_train_step_fn(config))
    val = evaluate_split(state, data, "validation", config)
    improved = val["accuracy"] > best_score
    if improved:
      best_score, bad_epochs = val["accuracy"], 0
      best = {"params": state.params, "batch_stats": state.batch_stats}
    else:
      bad_epochs += 1
    done = epoch == t.epochs - 1 or (t.patience is not None and bad_epochs >= t.patience)
    logging.info("dense epoch %d/%d: loss %.4f train acc %.4f | val acc %.4f macro-F1 %.4f "
                 "eodd %.4f%s", epoch + 1, t.epochs, history[-1]["loss"],
                 history[-1]["accuracy"], val["accuracy"], val["macro_f1"], _num(val["eodd"]),
                 " (best)" if improved else "")
    if done and epoch < t.epochs - 1:
      logging.info("dense training: early stopping after epoch %d/%d (validation accuracy not "
                   "improved for %d epochs, train.patience)", epoch + 1, t.epochs, bad_epochs)
    store.save(epoch, {**_state_items(state), "best_params": best["params"],
                       "best_batch_stats": best["batch_stats"]},
               metadata={"epoch": epoch, "step": int(state.step), "best_score": best_score,
                         "bad_epochs": bad_epochs, "done": done})
    if done:
      break
  if not done:  # epochs were already complete when resuming (cannot happen unless edited)
    raise RuntimeError("dense training ended without a final checkpoint")
  store.close()
  return state.replace(**best)


def _num(x: Any) -> float:
  return float("nan") if x is None else float(x)


# -- pruning ------------------------------------------------------------------------------------


def _scoring_batches(config, data: DatasetSplits, step: int, chunk_size: int | None = None):
  """Group-balanced train batches, split over the devices. With ``chunk_size``, each host
  batch is first cut into chunks of that many rows (the last one padded with group -1 rows, which
  count nowhere): one device call per chunk, each chunk split evenly over all devices."""
  p = config.prune
  batches = input_pipeline.group_balanced_batches(
      data.sources["train"], batch_size=p.batch_size, image_size=config.data.image_size,
      seed=config.seed * 1000 + step, num_groups=data.num_groups, num_batches=p.num_batches,
      imagenet_normalization=imagenet_normalization(config))
  field = "prune.batch_size"
  if chunk_size and chunk_size < p.batch_size:
    batches, field = _host_chunks(batches, chunk_size), "prune.curvature_chunk_size"
  return data_parallel(config).shard_batches(batches, field)


def _host_chunks(batches, chunk_size: int):
  for batch in batches:
    n = len(batch["group"])
    for start in range(0, n, chunk_size):
      chunk = {k: np.asarray(v[start:start + chunk_size]) for k, v in batch.items()}
      pad = chunk_size - len(chunk["group"])
      if pad:
        chunk = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
                 for k, v in chunk.items()}
        chunk["group"][-pad:] = -1
      yield chunk


def _group_diag(config, model, state: train.TrainState, data: DatasetSplits, step: int):
  """Per-group curvature of ``state`` on the scoring batches of ``step``
  (:func:`fairjax.pruning.builtin.group_diag`)."""
  return builtin.group_diag(context(config, model, data), state, step)


def _prunable(config):
  """Conv/dense kernels (design.md section 2 scope) minus ``config.prune.exclude_layers``."""
  return methods_api.prunable(config.prune.exclude_layers)


def resolve_roles(config, data: DatasetSplits, dense_val: Mapping[str, Any]):
  """(unprivileged id, privileged ids) from the config or the dense validation accuracies."""
  acc = [_num(dense_val["group_accuracy"].get(n)) for n in data.group_names]
  privileged = None
  if config.prune.privileged_group:
    if config.prune.privileged_group not in data.group_names:
      raise ValueError(f"config.prune.privileged_group={config.prune.privileged_group!r} is not a "
                       f"group of {data.name}: {data.group_names}")
    privileged = data.group_names.index(config.prune.privileged_group)
  return fairprune.group_roles(acc, privileged=privileged)


_variables = methods_api.variables_of


def _uniform_train_batches(config, data: DatasetSplits, step: int):
  """``num_batches`` uniformly sampled TRAIN batches of ``prune.batch_size`` for the
  group-unaware gradient scores (SNIP, OBD); a pure function of (seed, step), so a resumed run
  scores exactly as an uninterrupted one."""
  p = config.prune
  batches = input_pipeline.train_batches(
      data.sources["train"], batch_size=p.batch_size, image_size=config.data.image_size,
      seed=config.seed * 1000 + step, sampling="uniform", epoch=0, drop_remainder=False,
      imagenet_normalization=imagenet_normalization(config))
  # A last partial batch (fewer train images than num_batches * batch_size) need not split
  # evenly over the devices: it is replicated instead (same scores, just not data-parallel).
  return data_parallel(config).shard_batches(itertools.islice(batches, p.num_batches),
                                             "prune.batch_size", uneven="replicate")


# Moved to fairjax.pruning.snnl_channels / fairjax.schedules; the old names stay importable.
snnl_layers = snnl_channels.snnl_layers
_snnl_plan = snnl_channels.snnl_plan
_snnl_target_plan = snnl_channels.snnl_target_plan
_kernel_channels = snnl_channels.kernel_channels
_channel_counts = snnl_channels.channel_counts
target_ratio = schedules.target_ratio


def context(config, model, data: DatasetSplits, workdir: str = "",
            roles: tuple[int, tuple[int, ...]] | None = None) -> methods_api.RunContext:
  """The :class:`fairjax.pruning.api.RunContext` of a run: the config, model, data, workdir,
  data-parallel mesh, group roles and the batch providers the pruning methods use."""
  steps_per_epoch = max(1, len(data.labels["train"]) // config.train.batch_size)
  return methods_api.RunContext(
      config=config, model=model, data=data, workdir=workdir, dp=data_parallel(config),
      roles=roles,
      scoring_batches=functools.partial(_scoring_batches, config, data),
      uniform_batches=functools.partial(_uniform_train_batches, config, data),
      train_tx=lambda epochs: _train_tx(config, steps_per_epoch, max(1, epochs)),
      steps_per_epoch=steps_per_epoch)


def prune_iterative(config, model, dense: train.TrainState, data: DatasetSplits, workdir: str,
                    dense_val: dict, roles) -> tuple[train.TrainState, list[dict], int]:
  """Iterative pruning with ``config.prune.method`` and a checkpoint after every step.

  FairPrune (design.md section 2) and the baselines (section 4) score the weights and prune
  ``step_fraction`` of the kept ones per step; FairGRAPE (section 4) prunes to its cumulative
  ratio with the group-proportional greedy and retrains after every iteration; SNNL channel
  pruning (section 3) prunes the lowest-SNNL channels of chosen conv layers and fine-tunes
  (step records also hold ``channels_kept``). All share the
  stopping rule (validation Eodd patience, ``max_sparsity``, ``max_accuracy_drop``, ``max_steps``),
  the checkpoints (one per step: params, BatchNorm statistics, mask, history) and resumption.

  With ``prune.target_sparsity`` set (the comparison, :mod:`fairjax.compare`), every method
  prunes on the cumulative schedule :func:`target_ratio` instead (SNNL: that share of the chosen
  layers' channels), only the end of that schedule at step ``max_steps`` stops the run, and the
  last step is the chosen one.

  Returns:
    ``(final_state, steps, chosen_step)``: the state of the chosen step (lowest validation Eodd
    among the steps within ``max_accuracy_drop`` of the dense validation accuracy; step 0, the
    dense model, if none qualifies; the last step in target mode), the per-step records and that
    step's index.
  """
  p = config.prune
  name = p.method
  method = methods_api.get_method(name)
  ctx = context(config, model, data, workdir, roles)
  dp = ctx.dp
  tx = method.optimizer(ctx, dense.tx)
  retrain_epochs = method.retrain_epochs(ctx)
  store = checkpoint.CheckpointStore(checkpoint.store_directory(workdir, checkpoint.PRUNE_STORE))
  state = dense.replace(tx=tx, opt_state=tx.init(dense.params))
  state = train.set_mask(state, dp.replicate(method.prepare_mask(
      ctx, state.params, masks.init_mask(state.params, ctx.prunable))))
  # Replicated on the mesh (identity on one device): checkpoints restore onto this sharding.
  state = dp.replicate(state)
  steps = [{"step": 0, "sparsity": 0.0, "validation": dense_val, **method.step_info(ctx, state)}]
  stop = stopping.initial_stop(dense_val)
  latest = store.latest_step()
  if latest is not None:
    meta = store.restore_metadata(latest)
    # Checkpoints written before methods were recorded are FairPrune's (the only method then).
    if meta.get("method", "fairprune") != name:
      store.close()
      # A config problem (one-line CLI error), caught before any step mixes the two methods.
      raise ConfigError(f"config.prune.method={name!r}: {workdir} already holds pruning steps of "
                        f"method {meta.get('method', 'fairprune')!r}; use another --workdir")
    items = store.restore(latest, {"params": state.params, "batch_stats": state.batch_stats,
                                   "mask": state.mask})
    state = state.replace(params=items["params"], batch_stats=items["batch_stats"],
                          mask=items["mask"])
    steps, stop = meta["steps"], meta["stop"]
    logging.info("%s: resuming after step %d (sparsity %.3f)", name, latest,
                 steps[-1]["sparsity"])

  step = len(steps) - 1
  while not stop["stopped"] and step < p.max_steps:
    step += 1
    t0 = time.perf_counter()
    new_mask = dp.replicate(method.next_mask(ctx, state, step))
    # A fresh optimizer state per step: the fine-tuning schedule (e.g. cosine to 0) restarts,
    # instead of having already decayed to zero after the first step's fine-tuning.
    state = dp.replicate(train.set_mask(state, new_mask, reset_opt_state=bool(retrain_epochs)))
    if retrain_epochs:
      state, _ = train.fit(state, _epoch_batches(config, data, config.seed * 31 + step),
                           epochs=retrain_epochs, rng=dp.replicate(jax.random.key(step)),
                           log_every=0, donate=False, step_fn=_train_step_fn(config))
    val = evaluate_split(state, data, "validation", config)
    steps.append({"step": step, "sparsity": val["sparsity"], "validation": val,
                  **method.step_info(ctx, state)})
    stop = stopping.update_stop(stop, val, dense_val, p,
                                end=method.schedule_end(ctx, state, step))
    eodd, drop = _num(val["eodd"]), dense_val["accuracy"] - val["accuracy"]
    logging.info("%s step %d: sparsity %.3f | val acc %.4f (drop %+.4f) eodd %.4f "
                 "[%.1fs]%s", name, step, val["sparsity"], val["accuracy"], drop, eodd,
                 time.perf_counter() - t0, f" -> stop: {stop['reason']}" if stop["stopped"] else "")
    # "method" lets a resumed run refuse another method's steps (the step history would mix).
    store.save(step, {"params": state.params, "batch_stats": state.batch_stats,
                      "mask": state.mask}, metadata={"steps": steps, "stop": stop,
                                                     "method": name})
  if not stop["stopped"]:
    stop.update(stopped=True, reason=f"max_steps={p.max_steps} reached")

  chosen = stopping.choose_step(steps, dense_val, p)
  if chosen == 0:
    logging.warning("%s: no pruning step stayed within max_accuracy_drop=%s; reporting "
                    "the dense model", name, p.max_accuracy_drop)
    store.close()
    return dense.replace(mask=None), steps, 0
  items = store.restore(chosen, {"params": state.params, "batch_stats": state.batch_stats,
                                 "mask": state.mask})
  store.close()
  final = state.replace(params=items["params"], batch_stats=items["batch_stats"],
                        mask=items["mask"])
  logging.info("%s: %s; chose step %d (%s)", name, stop["reason"], chosen,
               "the last step, on the target sparsity" if p.target_sparsity is not None else
               "lowest validation Eodd within the accuracy limit")
  return final, steps, chosen


# -- the whole run -----------------------------------------------------------------------------


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the whole job; returns the results dict also written to results.json."""
  validate_config(config)
  dp = data_parallel(config)  # fails fast (one-line ConfigError): batch sizes the mesh can't split
  if dp.active:
    logging.info("data parallel: %d devices (%s) in %d process(es)", dp.num_devices,
                 jax.default_backend(), jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  clock = WallClock(workdir)
  data, model = load(config, workdir)
  dense, dense_val, dense_test, roles, dense_predictions = dense_stage(config, model, data,
                                                                       workdir)
  return prune_run(config, model, data, dense, dense_val, dense_test, roles, workdir,
                   clock=clock, extra=dense_provenance(workdir),
                   dense_predictions=dense_predictions)


WALL_TIME_JSON = "wall_time.json"


class WallClock:
  """Wall time of a run across kills and resumes, kept in ``<workdir>/wall_time.json``.

  Each session (one start of the command) records its start there atomically; :meth:`total`
  closes it. A session that was killed never closed: the next one counts it up to the newest
  file it left in the workdir (its last checkpoint), so work lost after that checkpoint and
  redone by the resumed session is counted once, by the session that redid it.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, WALL_TIME_JSON)
    self.start = time.time()
    state = checkpoint.read_json(self.path) if os.path.exists(self.path) else {"sessions": []}
    sessions = state["sessions"]
    if sessions and sessions[-1]["seconds"] is None:  # killed before it could close
      last = sessions[-1]
      sessions[-1] = {**last, "seconds": max(0.0, _newest_mtime(workdir, self.path)
                                             - last["started"]), "killed": True}
    self.sessions = sessions + [{"started": self.start, "seconds": None}]
    if parallel.is_main_process():
      checkpoint.write_json_atomic(self.path, {"sessions": self.sessions})

  def total(self) -> float:
    """Seconds of every session so far, this one up to now; closes this session on disk."""
    self.sessions[-1]["seconds"] = time.time() - self.start
    if parallel.is_main_process():
      checkpoint.write_json_atomic(self.path, {"sessions": self.sessions})
    return float(sum(s["seconds"] for s in self.sessions))


def _newest_mtime(workdir: str, exclude: str) -> float:
  newest = 0.0
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      if path != exclude:
        try:
          newest = max(newest, os.path.getmtime(path))
        except OSError:  # removed while walking (a checkpoint manager's temporary file)
          pass
  return newest


def load(config: ml_collections.ConfigDict, workdir: str) -> tuple[DatasetSplits, Any]:
  """The dataset splits (built or read under ``workdir``) and the (uninitialised) model."""
  logging.info("loading data: %s", config.data.name)
  data = load_dataset(config.data, workdir=workdir)
  logging.info("data: %s", data.describe()["split_sizes"])
  validate_data(config, data)  # before any training: batch size, groups per split, roles
  return data, make_model(config, data)


def dense_model(config: ml_collections.ConfigDict, model, data: DatasetSplits, workdir: str
                ) -> tuple[train.TrainState, dict, dict, tuple[int, tuple[int, ...]]]:
  """Trains or restores the dense model of ``workdir``; returns it, its validation and test
  metrics and the group roles ``(unprivileged id, privileged ids)`` (:func:`resolve_roles`)."""
  return dense_stage(config, model, data, workdir)[:4]


def dense_stage(config: ml_collections.ConfigDict, model, data: DatasetSplits, workdir: str
                ) -> tuple[train.TrainState, dict, dict, tuple[int, tuple[int, ...]],
                           tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """:func:`dense_model` plus the dense model's test ``(labels, predictions, groups)``, which
  :func:`prune_run` pairs with the pruned model's in the bootstrap (no second test pass)."""
  dense = train_dense(config, model, data, workdir)
  dense_val = evaluate_split(dense, data, "validation", config)
  test_predictions = predict_split(dense, data, "test", config)
  dense_test = {**split_metrics(config, data, *test_predictions), "sparsity": _sparsity(dense.mask)}
  _warn_incomplete_metrics(data, dense_test)
  unpriv, priv = resolve_roles(config, data, dense_val)
  logging.info("dense test: acc %.4f macro-F1 %.4f eodd %.4f; unprivileged group: %s",
               dense_test["accuracy"], dense_test["macro_f1"], _num(dense_test["eodd"]),
               data.group_names[unpriv])
  _compare_with_published(config, data, test_predictions, dense_test, workdir)
  return dense, dense_val, dense_test, (unpriv, priv), test_predictions


PRETRAINED_JSON = "pretrained.json"
REFERENCE_JSON = "dense_reference.json"


def _compare_with_published(config, data: DatasetSplits, test_predictions, dense_test: dict,
                            workdir: str) -> None:
  """Logs the dense test figures beside the published unpruned ones of the dataset (if any)
  and stores them in ``<workdir>/dense_reference.json``, beside the dense checkpoints."""
  reference = references.reference_for(config.data.name)
  if reference is None:
    return
  same = reference.convention == config.fairness_convention
  in_convention = dense_test if same else split_metrics(
      config, data, *test_predictions, convention=reference.convention)
  comparison = references.compare_dense(reference, in_convention)
  logging.info("%s", references.describe(comparison))
  if parallel.is_main_process():
    checkpoint.write_json_atomic(os.path.join(workdir, REFERENCE_JSON), comparison)


def dense_provenance(workdir: str) -> dict[str, Any]:
  """What the dense model of ``workdir`` started from and how it compares with published
  figures: ``{"pretrained": ..., "published_reference": ...}`` for results.json, each key only
  when its file exists (:data:`PRETRAINED_JSON`, :data:`REFERENCE_JSON`)."""
  out = {}
  for key, name in (("pretrained", PRETRAINED_JSON), ("published_reference", REFERENCE_JSON)):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      out[key] = checkpoint.read_json(path)
  return out


def prune_run(config: ml_collections.ConfigDict, model, data: DatasetSplits,
              dense: train.TrainState, dense_val: dict, dense_test: dict, roles, workdir: str, *,
              plots: bool = True, extra: Mapping[str, Any] | None = None,
              clock: WallClock | None = None,
              dense_predictions: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
              ) -> dict[str, Any]:
  """Prunes ``dense`` with ``config.prune.method`` in ``workdir`` (resuming its checkpoints),
  fine-tunes FairGRAPE's result (:func:`finetune_final`), evaluates on the test split, draws the
  paired bootstrap of pruned against dense (:func:`paired_bootstrap`) and writes
  ``<workdir>/results.json`` (plus ``extra`` keys), ``test_predictions.npz`` and, with
  ``plots``, the run's figures; the last log lines tell what happened (:func:`story`).

  Args:
    clock: the run's :class:`WallClock` (None: one starting now, in ``workdir``).
    dense_predictions: the dense model's test ``(labels, predictions, groups)`` from
      :func:`dense_stage`; None computes them here (one more test-split pass).

  Returns the results dict (schema: :mod:`fairjax.report`, README).
  """
  clock = WallClock(workdir) if clock is None else clock
  unpriv, priv = roles
  final, steps, chosen = prune_iterative(config, model, dense, data, workdir, dense_val, roles)
  final, finetune = finetune_final(config, model, final, data, workdir, steps, chosen)
  if dense_predictions is None:
    dense_predictions = predict_split(dense, data, "test", config)
  labels, pruned_pred, groups = predict_split(final, data, "test", config)
  if not (np.array_equal(labels, dense_predictions[0])
          and np.array_equal(groups, dense_predictions[2])):
    raise RuntimeError("the dense and pruned test predictions are not of the same samples")
  pruned_test = {**split_metrics(config, data, labels, pruned_pred, groups),
                 "sparsity": _sparsity(final.mask)}
  _warn_incomplete_metrics(data, pruned_test)  # as evaluate_split does for a test split
  predictions = {"dense": dense_predictions[1], "pruned": pruned_pred}
  boot = paired_bootstrap(config, data, labels, groups, predictions)
  privileged_name = (data.group_names[priv[0]] if len(priv) == 1 else
                     "mean of " + ", ".join(data.group_names[g] for g in priv))
  results = {
      "schema_version": 1,
      "config": _to_dict(config),
      "dataset": data.describe(),
      "fairness_convention": config.fairness_convention,
      "privileged_group": privileged_name,
      "unprivileged_group": data.group_names[unpriv],
      "method": config.prune.method,
      "dense": dense_test,
      "pruned": pruned_test,
      "chosen_step": chosen,
      "steps": steps,
      "summary": {**report.summarize(dense_test, pruned_test),
                  **report.summarize_bootstrap(boot)},
      "bootstrap": boot,
      # The README promises the key for every method: null unless snnl_channels slims.
      "slimming": None,
  }
  results.update(methods_api.get_method(config.prune.method).report(
      context(config, model, data, workdir, roles), final))
  if finetune is not None:
    results["final_finetune"] = finetune
  results.update(extra or {})
  written = []
  if parallel.is_main_process():
    written.append(_write_predictions(workdir, labels, groups, predictions))
  # Every process computes (the plots' curvature pass is collective); only process 0 writes.
  if plots:
    written += _plots(config, model, dense, data, steps, chosen, unpriv, priv, workdir)
  results["wall_seconds"] = clock.total()
  path = report.write_results(workdir, results) if parallel.is_main_process() else workdir
  logging.info("pruned test (step %d%s): acc %.4f macro-F1 %.4f eodd %.4f sparsity %.3f -> %s",
               chosen, ", fine-tuned" if finetune is not None else "", pruned_test["accuracy"],
               pruned_test["macro_f1"], _num(pruned_test["eodd"]), pruned_test["sparsity"], path)
  files = [os.path.abspath(f) for f in (path, *written, clock.path)] + [
      os.path.abspath(os.path.join(workdir, n)) for n in (PRETRAINED_JSON, REFERENCE_JSON)
      if os.path.exists(os.path.join(workdir, n))]
  checkpoints = os.path.abspath(os.path.join(workdir, "checkpoints"))
  for line in story(results, stop_reason(workdir, config), files, checkpoints):
    logging.info("%s", line)
  return results


TEST_PREDICTIONS = "test_predictions.npz"


def _write_predictions(workdir: str, labels: np.ndarray, groups: np.ndarray,
                       predictions: Mapping[str, np.ndarray]) -> str:
  """``<workdir>/test_predictions.npz`` (labels, groups and one int array per model, in test
  order): what the bootstrap resampled, so its intervals can be recomputed without a model."""
  arrays = {"labels": np.asarray(labels), "groups": np.asarray(groups),
            **{name: np.asarray(p) for name, p in predictions.items()}}
  return checkpoint.write_atomic(os.path.join(workdir, TEST_PREDICTIONS),
                                 lambda f: np.savez(f, **arrays), binary=True)


def paired_bootstrap(config, data: DatasetSplits, labels: np.ndarray, groups: np.ndarray,
                     predictions: Mapping[str, np.ndarray],
                     pairs: list[tuple[str, str]] | None = None) -> dict[str, Any]:
  """:func:`fairjax.bootstrap.bootstrap` of test predictions with the run's settings
  (``report.bootstrap_samples`` / ``bootstrap_seed`` / ``confidence``, the fairness convention
  and undefined-rate rule of design.md section 5); default pairs ``("pruned", "dense")``.
  Seeded, so a rerun or resumed run with the same predictions gets the same intervals."""
  r = config.report
  return bootstrap.bootstrap(
      labels, groups, predictions, num_classes=data.num_classes, num_groups=data.num_groups,
      group_names=list(data.group_names), convention=config.fairness_convention,
      undefined=config.undefined_rates, num_samples=int(r.bootstrap_samples),
      seed=int(r.bootstrap_seed), confidence=float(r.confidence),
      pairs=pairs or [("pruned", "dense")])


def stop_reason(workdir: str, config) -> str | None:
  """Why the pruning loop of ``workdir`` ended, from its last checkpoint (None: no step)."""
  store = checkpoint.CheckpointStore(checkpoint.store_directory(workdir, checkpoint.PRUNE_STORE))
  try:
    latest = store.latest_step()
    if latest is None:
      return None
    stop = store.restore_metadata(latest)["stop"]
  finally:
    store.close()
  # prune_iterative sets the max_steps reason after its loop, without saving it.
  return stop["reason"] if stop["stopped"] else f"max_steps={config.prune.max_steps} reached"


def _points(leaf: Mapping[str, Any]) -> str:
  """A difference LEAF in accuracy points: ``-2.4 points [-3.9, -1.0]``."""
  if leaf["estimate"] is None:
    return "n/a"
  text = f"{100 * leaf['estimate']:+.1f} points"
  if leaf["low"] is not None and leaf["high"] is not None:
    text += f" [{100 * leaf['low']:+.1f}, {100 * leaf['high']:+.1f}]"
  return text


def story(results: Mapping[str, Any], reason: str | None, files: list[str],
          checkpoints: str) -> list[str]:
  """The run's last log lines, in words: what was pruned, whether any step lowered validation
  Eodd within ``max_accuracy_drop``, which model is reported, the levelling label with the
  paired intervals (design.md section 8.1), and every file written."""
  cfg = results["config"]["prune"]
  steps, chosen = results["steps"], results["chosen_step"]
  method, pruned = results["method"], results["pruned"]
  dense_val = steps[0]["validation"]
  limit = cfg["max_accuracy_drop"]
  lines = [f"what was pruned: {method}, {len(steps) - 1} step(s) up to sparsity "
           f"{steps[-1]['sparsity']:.4f} of the prunable weights"
           + (f"; the loop stopped because {reason}" if reason else "") + "."]
  better = [s["step"] for s in steps[1:]
            if dense_val["accuracy"] - s["validation"]["accuracy"] <= limit
            and s["validation"]["eodd"] is not None and dense_val["eodd"] is not None
            and s["validation"]["eodd"] < dense_val["eodd"]]
  if cfg.get("target_sparsity") is not None:
    lines.append(f"target-sparsity mode: the last step is reported whatever its metrics; "
                 f"{len(better)} step(s) had a lower validation Eodd than dense within "
                 f"max_accuracy_drop={limit}.")
  elif not better:
    lines.append(f"No pruning step lowered validation Eodd below the dense model's "
                 f"({_num(dense_val['eodd']):.4f}) while staying within max_accuracy_drop="
                 f"{limit} of its validation accuracy.")
  else:
    lines.append(f"{len(better)} of {len(steps) - 1} step(s) lowered validation Eodd below the "
                 f"dense model's ({_num(dense_val['eodd']):.4f}) within max_accuracy_drop={limit}"
                 f": step(s) {', '.join(map(str, better))}.")
  if chosen == 0:
    lines.append("reported model: the dense model (step 0, nothing pruned); no step stayed "
                 f"within max_accuracy_drop={limit}.")
  else:
    worse = (cfg.get("target_sparsity") is None and chosen not in better
             and steps[chosen]["validation"]["eodd"] is not None)
    lines.append(f"reported model: step {chosen}, sparsity {pruned['sparsity']:.4f}"
                 + (", then fine-tuned" if "final_finetune" in results else "")
                 + (" (the last step, on the target)" if cfg.get("target_sparsity") is not None
                    else " (lowest validation Eodd within the accuracy limit)")
                 + (f"; its validation Eodd ({steps[chosen]['validation']['eodd']:.4f}) is not "
                    "below the dense model's" if worse else "") + ".")
  s, boot = results["summary"], results["bootstrap"]
  groups = s["group_accuracy_difference"]
  lines.append(
      f"mechanism (test split, pruned − dense, {100 * boot['confidence']:g}% paired bootstrap "
      f"intervals, {boot['num_samples']} resamples): {s['mechanism']} by group accuracy "
      f"(macro-F1: {s['mechanism_macro_f1']}); worse-off {s['worse_off_group']} "
      f"{_points(groups[s['worse_off_group']])}, better-off {s['better_off_group']} "
      f"{_points(groups[s['better_off_group']])}; accuracy {_points(s['accuracy_difference'])}; "
      f"Eodd {report.format_interval(s['eodd_difference'])} ({results['fairness_convention']} "
      "convention). An interval that excludes 0 is a significant change"
      + ("; the reported model is the dense one, so every difference is 0." if chosen == 0
         else "."))
  lines.append("files written: " + ", ".join(files) + f"; checkpoints under {checkpoints}")
  return lines


# -- FairGRAPE's final fine-tune -----------------------------------------------------------------

FINETUNE_STORE = "finetune"


def _finetune_tx(config, steps_per_epoch: int, spec: Mapping[str, Any]
                 ) -> optax.GradientTransformation:
  """The final fine-tune's optimizer: ``spec["optimizer"]`` at ``spec["learning_rate"]`` on
  ``train.schedule`` spanning ``spec["epochs"]``, with the dense run's momentum / Nesterov /
  weight decay (masked updates, train.make_optimizer); FairGRAPE's spec is
  ``prune.fairgrape_finetune_*``."""
  t = config.train
  total = max(1, steps_per_epoch * spec["epochs"])
  schedule = train.make_schedule(t.schedule, spec["learning_rate"], total)
  return train.make_optimizer(spec["optimizer"], schedule, momentum=t.momentum,
                              nesterov=t.nesterov, weight_decay=t.weight_decay)


def finetune_final(config, model, state: train.TrainState, data: DatasetSplits, workdir: str,
                   steps: list[dict], chosen: int) -> tuple[train.TrainState, dict | None]:
  """FairGRAPE's full fine-tune after the last schedule iteration (design.md section 4).

  Trains the chosen pruned state (the last iteration in ``prune.target_sparsity`` mode, as in
  the official code, which retrains its final model) for ``prune.fairgrape_finetune_epochs``
  with a fresh optimizer (:func:`_finetune_tx`), keeping the mask: pruned weights stay exactly
  zero (masked updates). A checkpoint per epoch in ``<workdir>/checkpoints/finetune`` (params,
  BatchNorm statistics, optimizer state, mask, history) lets a killed run resume with the same
  result. Skipped (returns ``(state, None)``) for other methods, for 0 epochs, and when the
  chosen step is 0 (the dense model is reported; nothing was pruned).

  Returns:
    ``(state, record)``: the fine-tuned state and ``results["final_finetune"]``: ``step`` (the
    fine-tuned pruning step), ``epochs``, ``optimizer``, ``learning_rate``, ``schedule``,
    ``validation_before`` / ``validation_after`` and ``test_before`` (split metrics; the test
    metrics after are ``results["pruned"]``), and ``history`` (per epoch: ``epoch``, ``loss``,
    ``train_accuracy``, ``validation``).
  """
  spec = methods_api.get_method(config.prune.method).final_finetune(config)
  if spec is None or spec["epochs"] == 0 or chosen == 0 or state.mask is None:
    return state, None
  epochs = spec["epochs"]
  steps_per_epoch = max(1, len(data.labels["train"]) // config.train.batch_size)
  tx = _finetune_tx(config, steps_per_epoch, spec)
  test_before = evaluate_split(state, data, "test", config)
  state = state.replace(tx=tx, opt_state=tx.init(state.params), step=jnp.zeros((), jnp.int32))
  store = checkpoint.CheckpointStore(checkpoint.store_directory(workdir, FINETUNE_STORE),
                                     max_to_keep=2)
  history: list[dict] = []
  start = 0
  latest = store.latest_step()
  if latest is not None:
    meta = store.restore_metadata(latest)
    if meta["chosen_step"] != chosen:
      store.close()
      raise ConfigError(f"{workdir} holds a final fine-tune of pruning step {meta['chosen_step']}"
                        f", but this run chose step {chosen} (the pruning config changed); use "
                        "another --workdir")
    items = store.restore(latest, {**_state_items(state), "mask": state.mask})
    state = state.replace(params=items["params"], batch_stats=items["batch_stats"],
                          opt_state=items["opt_state"], mask=items["mask"],
                          step=jnp.asarray(meta["step"], jnp.int32))
    history, start = meta["history"], meta["epoch"] + 1
    logging.info("fairgrape final fine-tune: resuming after epoch %d", meta["epoch"] + 1)
  # Data order and dropout keys are functions of (seed, epoch): a resumed run trains exactly as
  # an uninterrupted one.
  batches = _epoch_batches(config, data, config.seed * 53 + 17)
  rng = jax.random.key(config.seed + 3, impl="rbg")
  for epoch in range(start, epochs):
    state, fit_history = train.fit(state, batches, epochs=epoch + 1, start_epoch=epoch, rng=rng,
                                   log_every=0, donate=False)
    val = evaluate_split(state, data, "validation", config)
    history.append({"epoch": epoch, "loss": fit_history[-1]["loss"],
                    "train_accuracy": fit_history[-1]["accuracy"], "validation": val})
    logging.info("fairgrape final fine-tune epoch %d/%d: loss %.4f | val acc %.4f eodd %.4f "
                 "sparsity %.3f", epoch + 1, epochs, fit_history[-1]["loss"], val["accuracy"],
                 _num(val["eodd"]), val["sparsity"])
    store.save(epoch, {**_state_items(state), "mask": state.mask},
               metadata={"epoch": epoch, "step": int(state.step), "chosen_step": chosen,
                         "history": history})
  store.close()
  record = {"step": chosen, "epochs": epochs, "optimizer": spec["optimizer"],
            "learning_rate": float(spec["learning_rate"]),
            "schedule": config.train.schedule,
            "validation_before": steps[chosen]["validation"],
            "validation_after": history[-1]["validation"], "test_before": test_before,
            "history": history}
  return state, record


def _slimming_summary(config, model, final: train.TrainState) -> dict[str, Any] | None:
  """``results["slimming"]`` of ``snnl_channels``
  (:func:`fairjax.pruning.snnl_channels.slimming_summary`, :func:`fairjax.slimming.summary`)."""
  return snnl_channels.slimming_summary(config, model, final)


def _plots(config, model, dense, data: DatasetSplits, steps, chosen: int, unpriv, priv,
           workdir) -> list[str]:
  """``tradeoff.png`` and, for curvature methods, ``saliency_histograms.png`` (paths written)."""
  curvature = methods_api.get_method(config.prune.method).curvature_plot
  diag = _group_diag(config, model, dense, data, 0) if curvature else None  # collective
  if not parallel.is_main_process():
    return []
  written = [report.plot_tradeoff(
      steps, os.path.join(workdir, "tradeoff.png"),
      title=f"{config.prune.method} on {data.name} (validation split)",
      convention=config.fairness_convention, chosen_step=chosen,
      max_accuracy_drop=(None if config.prune.target_sparsity is not None
                         else config.prune.max_accuracy_drop))]
  if not curvature:
    logging.info("%s: no saliency_histograms.png (it shows FairPrune's per-group curvature, "
                 "which only fairprune and obd compute)", config.prune.method)
    return written
  terms = fairprune.group_terms(dense.params, diag)
  per_layer: dict[str, dict[str, np.ndarray]] = {}
  shown = (unpriv, priv[0])
  prunable = _prunable(config)
  for path, leaf in masks.flatten_with_paths(terms):
    if path[-1] != "kernel":
      continue
    name = "/".join(path)
    if not prunable(tuple(path), np.asarray(leaf[0])):  # shown, but say that it is never pruned
      name += " (not pruned)"
    per_layer[name] = {data.group_names[g]: np.asarray(leaf[g]).ravel() for g in shown}
  written.append(report.plot_saliency_histograms(
      per_layer, os.path.join(workdir, "saliency_histograms.png"),
      group_names=(data.group_names[shown[0]], data.group_names[shown[1]])))
  return written
