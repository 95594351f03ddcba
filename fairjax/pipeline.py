"""The main job: train dense -> score -> prune steps -> evaluate -> report (design.md section 0).

This module only orchestrates; the parts live beside it:

- :mod:`fairjax.batches`: the data-parallel mesh, train / scoring batches, the train optimizer;
- :mod:`fairjax.fit_loop`: the resumable epoch loop of dense training and the final fine-tune;
- :mod:`fairjax.pruning` (:mod:`fairjax.pruning.api`): the pruning methods and their registry,
  driven by :func:`prune_iterative` through a :class:`fairjax.pruning.api.RunContext`
  (:func:`context`); :mod:`fairjax.schedules` and :mod:`fairjax.stopping` hold the schedules,
  the stopping rule and the choice of the reported step;
- :mod:`fairjax.evaluation`: predictions, metrics, the paired bootstrap;
- :mod:`fairjax.run_report`: the closing log lines and the figures; :mod:`fairjax.report`: the
  results schema.

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
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from fairjax import (
  checkpoint,
  masks,
  models,
  parallel,
  references,
  report,
  run_report,
  schedules,
  stopping,
  train,
)
from fairjax.batches import (
  data_parallel,
  epoch_batches,
  host_chunks,
  scoring_batches,
  train_step_fn,
  train_tx,
  uniform_train_batches,
)
from fairjax.config import ConfigError, validate_config, validate_data
from fairjax.data import DatasetSplits, load_dataset
from fairjax.evaluation import (
  TEST_PREDICTIONS,
  evaluate_split,
  paired_bootstrap,
  predict_split,
  sparsity,
  split_metrics,
  warn_incomplete_metrics,
  write_predictions,
)
from fairjax.fit_loop import FINETUNE_STORE, PRETRAINED_JSON, finetune_final, train_dense
from fairjax.models import pretrained
from fairjax.pruning import api as methods_api
from fairjax.pruning import builtin, fairprune, snnl_channels
from fairjax.run_report import story

PyTree = Any

__all__ = [
  "FINETUNE_STORE",
  "PRETRAINED_JSON",
  "REFERENCE_JSON",
  "TEST_PREDICTIONS",
  "WALL_TIME_JSON",
  "WallClock",
  "context",
  "data_parallel",
  "dense_model",
  "dense_provenance",
  "dense_stage",
  "epoch_batches",
  "evaluate_split",
  "finetune_final",
  "load",
  "make_model",
  "paired_bootstrap",
  "predict_split",
  "prune_iterative",
  "prune_run",
  "resolve_roles",
  "run",
  "snnl_layers",
  "split_metrics",
  "stop_reason",
  "story",
  "target_ratio",
  "train_dense",
]


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


def _num(x: Any) -> float:
  return float("nan") if x is None else float(x)


def resolve_roles(config, data: DatasetSplits, dense_val: Mapping[str, Any]):
  """(unprivileged id, privileged ids) from the config or the dense validation accuracies."""
  acc = [_num(dense_val["group_accuracy"].get(n)) for n in data.group_names]
  privileged = None
  if config.prune.privileged_group:
    if config.prune.privileged_group not in data.group_names:
      raise ValueError(
        f"config.prune.privileged_group={config.prune.privileged_group!r} is not a "
        f"group of {data.name}: {data.group_names}"
      )
    privileged = data.group_names.index(config.prune.privileged_group)
  return fairprune.group_roles(acc, privileged=privileged)


def _group_diag(config, model, state: train.TrainState, data: DatasetSplits, step: int):
  """Per-group curvature of ``state`` on the scoring batches of ``step``
  (:func:`fairjax.pruning.builtin.group_diag`)."""
  return builtin.group_diag(context(config, model, data), state, step)


def _prunable(config):
  """Conv/dense kernels (design.md section 2 scope) minus ``config.prune.exclude_layers``."""
  return methods_api.prunable(config.prune.exclude_layers)


# The names this module had before its parts moved (fairjax.batches, fairjax.evaluation,
# fairjax.fit_loop, fairjax.run_report, fairjax.pruning.snnl_channels, fairjax.schedules); tests,
# notebooks and older scripts import them from here.
_make_model = make_model
_epoch_batches = epoch_batches
_train_tx = train_tx
_train_step_fn = train_step_fn
_scoring_batches = scoring_batches
_host_chunks = host_chunks
_uniform_train_batches = uniform_train_batches
_sparsity = sparsity
_warn_incomplete_metrics = warn_incomplete_metrics
_write_predictions = write_predictions
_variables = methods_api.variables_of
snnl_layers = snnl_channels.snnl_layers
_snnl_plan = snnl_channels.snnl_plan
_snnl_target_plan = snnl_channels.snnl_target_plan
_kernel_channels = snnl_channels.kernel_channels
_channel_counts = snnl_channels.channel_counts
_slimming_summary = snnl_channels.slimming_summary
target_ratio = schedules.target_ratio


def context(
  config,
  model,
  data: DatasetSplits,
  workdir: str = "",
  roles: tuple[int, tuple[int, ...]] | None = None,
) -> methods_api.RunContext:
  """The :class:`fairjax.pruning.api.RunContext` of a run: the config, model, data, workdir,
  data-parallel mesh, group roles and the batch providers the pruning methods use."""
  steps_per_epoch = max(1, len(data.labels["train"]) // config.train.batch_size)
  return methods_api.RunContext(
    config=config,
    model=model,
    data=data,
    workdir=workdir,
    dp=data_parallel(config),
    roles=roles,
    scoring_batches=functools.partial(scoring_batches, config, data),
    uniform_batches=functools.partial(uniform_train_batches, config, data),
    train_tx=lambda epochs: train_tx(config, steps_per_epoch, max(1, epochs)),
    steps_per_epoch=steps_per_epoch,
  )


def prune_iterative(
  config, model, dense: train.TrainState, data: DatasetSplits, workdir: str, dense_val: dict, roles
) -> tuple[train.TrainState, list[dict], int]:
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
  state = train.set_mask(
    state,
    dp.replicate(
      method.prepare_mask(ctx, state.params, masks.init_mask(state.params, ctx.prunable))
    ),
  )
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
      raise ConfigError(
        f"config.prune.method={name!r}: {workdir} already holds pruning steps of "
        f"method {meta.get('method', 'fairprune')!r}; use another --workdir"
      )
    items = store.restore(
      latest, {"params": state.params, "batch_stats": state.batch_stats, "mask": state.mask}
    )
    state = state.replace(
      params=items["params"], batch_stats=items["batch_stats"], mask=items["mask"]
    )
    steps, stop = meta["steps"], meta["stop"]
    logging.info("%s: resuming after step %d (sparsity %.3f)", name, latest, steps[-1]["sparsity"])

  step = len(steps) - 1
  while not stop["stopped"] and step < p.max_steps:
    step += 1
    t0 = time.perf_counter()
    new_mask = dp.replicate(method.next_mask(ctx, state, step))
    # A fresh optimizer state per step: the fine-tuning schedule (e.g. cosine to 0) restarts,
    # instead of having already decayed to zero after the first step's fine-tuning.
    state = dp.replicate(train.set_mask(state, new_mask, reset_opt_state=bool(retrain_epochs)))
    if retrain_epochs:
      state, _ = train.fit(
        state,
        epoch_batches(config, data, config.seed * 31 + step),
        epochs=retrain_epochs,
        rng=dp.replicate(jax.random.key(step)),
        log_every=0,
        donate=False,
        step_fn=train_step_fn(config),
      )
    val = evaluate_split(state, data, "validation", config)
    steps.append(
      {"step": step, "sparsity": val["sparsity"], "validation": val, **method.step_info(ctx, state)}
    )
    stop = stopping.update_stop(stop, val, dense_val, p, end=method.schedule_end(ctx, state, step))
    eodd, drop = _num(val["eodd"]), dense_val["accuracy"] - val["accuracy"]
    logging.info(
      "%s step %d: sparsity %.3f | val acc %.4f (drop %+.4f) eodd %.4f [%.1fs]%s",
      name,
      step,
      val["sparsity"],
      val["accuracy"],
      drop,
      eodd,
      time.perf_counter() - t0,
      f" -> stop: {stop['reason']}" if stop["stopped"] else "",
    )
    # "method" lets a resumed run refuse another method's steps (the step history would mix).
    store.save(
      step,
      {"params": state.params, "batch_stats": state.batch_stats, "mask": state.mask},
      metadata={"steps": steps, "stop": stop, "method": name},
    )
  if not stop["stopped"]:
    stop.update(stopped=True, reason=f"max_steps={p.max_steps} reached")

  chosen = stopping.choose_step(steps, dense_val, p)
  if chosen == 0:
    logging.warning(
      "%s: no pruning step stayed within max_accuracy_drop=%s; reporting the dense model",
      name,
      p.max_accuracy_drop,
    )
    store.close()
    return dense.replace(mask=None), steps, 0
  items = store.restore(
    chosen, {"params": state.params, "batch_stats": state.batch_stats, "mask": state.mask}
  )
  store.close()
  final = state.replace(
    params=items["params"], batch_stats=items["batch_stats"], mask=items["mask"]
  )
  logging.info(
    "%s: %s; chose step %d (%s)",
    name,
    stop["reason"],
    chosen,
    "the last step, on the target sparsity"
    if p.target_sparsity is not None
    else "the last step, prune.report_step='last'"
    if p.get("report_step") == "last"
    else "lowest validation Eodd within the accuracy limit",
  )
  return final, steps, chosen


# -- the whole run -----------------------------------------------------------------------------


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the whole job; returns the results dict also written to results.json."""
  validate_config(config)
  dp = data_parallel(config)  # fails fast (one-line ConfigError): batch sizes the mesh can't split
  if dp.active:
    logging.info(
      "data parallel: %d devices (%s) in %d process(es)",
      dp.num_devices,
      jax.default_backend(),
      jax.process_count(),
    )
  os.makedirs(workdir, exist_ok=True)
  clock = WallClock(workdir)
  data, model = load(config, workdir)
  dense, dense_val, dense_test, roles, dense_predictions = dense_stage(config, model, data, workdir)
  return prune_run(
    config,
    model,
    data,
    dense,
    dense_val,
    dense_test,
    roles,
    workdir,
    clock=clock,
    extra=dense_provenance(workdir),
    dense_predictions=dense_predictions,
  )


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
      sessions[-1] = {
        **last,
        "seconds": max(0.0, _newest_mtime(workdir, self.path) - last["started"]),
        "killed": True,
      }
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


def dense_model(
  config: ml_collections.ConfigDict, model, data: DatasetSplits, workdir: str
) -> tuple[train.TrainState, dict, dict, tuple[int, tuple[int, ...]]]:
  """Trains or restores the dense model of ``workdir``; returns it, its validation and test
  metrics and the group roles ``(unprivileged id, privileged ids)`` (:func:`resolve_roles`)."""
  return dense_stage(config, model, data, workdir)[:4]


def dense_stage(
  config: ml_collections.ConfigDict, model, data: DatasetSplits, workdir: str
) -> tuple[
  train.TrainState,
  dict,
  dict,
  tuple[int, tuple[int, ...]],
  tuple[np.ndarray, np.ndarray, np.ndarray],
]:
  """:func:`dense_model` plus the dense model's test ``(labels, predictions, groups)``, which
  :func:`prune_run` pairs with the pruned model's in the bootstrap (no second test pass)."""
  dense = train_dense(config, model, data, workdir)
  dense_val = evaluate_split(dense, data, "validation", config)
  test_predictions = predict_split(dense, data, "test", config)
  dense_test = {**split_metrics(config, data, *test_predictions), "sparsity": sparsity(dense.mask)}
  warn_incomplete_metrics(data, dense_test)
  unpriv, priv = resolve_roles(config, data, dense_val)
  logging.info(
    "dense test: acc %.4f macro-F1 %.4f eodd %.4f; unprivileged group: %s",
    dense_test["accuracy"],
    dense_test["macro_f1"],
    _num(dense_test["eodd"]),
    data.group_names[unpriv],
  )
  _compare_with_published(config, data, test_predictions, dense_test, workdir)
  return dense, dense_val, dense_test, (unpriv, priv), test_predictions


REFERENCE_JSON = "dense_reference.json"


def _compare_with_published(
  config, data: DatasetSplits, test_predictions, dense_test: dict, workdir: str
) -> None:
  """Logs the dense test figures beside the published unpruned ones of the dataset (if any)
  and stores them in ``<workdir>/dense_reference.json``, beside the dense checkpoints."""
  reference = references.reference_for(config.data.name)
  if reference is None:
    return
  same = reference.convention == config.fairness_convention
  in_convention = (
    dense_test
    if same
    else split_metrics(config, data, *test_predictions, convention=reference.convention)
  )
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


def prune_run(
  config: ml_collections.ConfigDict,
  model,
  data: DatasetSplits,
  dense: train.TrainState,
  dense_val: dict,
  dense_test: dict,
  roles,
  workdir: str,
  *,
  plots: bool = True,
  extra: Mapping[str, Any] | None = None,
  clock: WallClock | None = None,
  dense_predictions: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
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
  ctx = context(config, model, data, workdir, roles)
  unpriv, priv = roles
  final, steps, chosen = prune_iterative(config, model, dense, data, workdir, dense_val, roles)
  final, finetune = finetune_final(config, model, final, data, workdir, steps, chosen)
  if dense_predictions is None:
    dense_predictions = predict_split(dense, data, "test", config)
  labels, pruned_pred, groups = predict_split(final, data, "test", config)
  if not (
    np.array_equal(labels, dense_predictions[0]) and np.array_equal(groups, dense_predictions[2])
  ):
    raise RuntimeError("the dense and pruned test predictions are not of the same samples")
  pruned_test = {
    **split_metrics(config, data, labels, pruned_pred, groups),
    "sparsity": sparsity(final.mask),
  }
  warn_incomplete_metrics(data, pruned_test)  # as evaluate_split does for a test split
  predictions = {"dense": dense_predictions[1], "pruned": pruned_pred}
  boot = paired_bootstrap(config, data, labels, groups, predictions)
  # One privileged group: its name. Several (FairPrune averages every group but the
  # unprivileged one when there are more than two): null, and their names in privileged_groups.
  privileged_name = data.group_names[priv[0]] if len(priv) == 1 else None
  results = {
    "schema_version": 1,
    "config": _to_dict(config),
    "dataset": data.describe(),
    "fairness_convention": config.fairness_convention,
    "privileged_group": privileged_name,
    **({} if len(priv) == 1 else {"privileged_groups": [data.group_names[g] for g in priv]}),
    "unprivileged_group": data.group_names[unpriv],
    "method": config.prune.method,
    "dense": dense_test,
    "pruned": pruned_test,
    "chosen_step": chosen,
    "steps": steps,
    "summary": {**report.summarize(dense_test, pruned_test), **report.summarize_bootstrap(boot)},
    "bootstrap": boot,
    # The README promises the key for every method: null unless snnl_channels slims.
    "slimming": None,
  }
  results.update(methods_api.get_method(config.prune.method).report(ctx, final))
  if finetune is not None:
    results["final_finetune"] = finetune
  results.update(extra or {})
  written = []
  if parallel.is_main_process():
    written.append(write_predictions(workdir, labels, groups, predictions))
  # Every process computes (the plots' curvature pass is collective); only process 0 writes.
  if plots and config.report.plots:
    written += run_report.plots(ctx, dense, steps, chosen)
  results["wall_seconds"] = clock.total()
  path = report.write_results(workdir, results) if parallel.is_main_process() else workdir
  logging.info(
    "pruned test (step %d%s): acc %.4f macro-F1 %.4f eodd %.4f sparsity %.3f -> %s",
    chosen,
    ", fine-tuned" if finetune is not None else "",
    pruned_test["accuracy"],
    pruned_test["macro_f1"],
    _num(pruned_test["eodd"]),
    pruned_test["sparsity"],
    path,
  )
  files = [os.path.abspath(f) for f in (path, *written, clock.path)] + [
    os.path.abspath(os.path.join(workdir, n))
    for n in (PRETRAINED_JSON, REFERENCE_JSON)
    if os.path.exists(os.path.join(workdir, n))
  ]
  checkpoints = os.path.abspath(os.path.join(workdir, "checkpoints"))
  for line in story(results, stop_reason(workdir, config), files, checkpoints):
    logging.info("%s", line)
  return results


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


# -- FairGRAPE's final fine-tune -----------------------------------------------------------------


def _slimming_summary(config, model, final: train.TrainState) -> dict[str, Any] | None:
  """``results["slimming"]`` of ``snnl_channels``
  (:func:`fairjax.pruning.snnl_channels.slimming_summary`, :func:`fairjax.slimming.summary`)."""
  return snnl_channels.slimming_summary(config, model, final)
