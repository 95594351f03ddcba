"""Resumable training: one epoch loop (:func:`fit_epochs`) with a checkpoint per epoch, used by
dense training (:func:`train_dense`) and by the final fine-tune of a pruned model
(:func:`finetune_final`, FairGRAPE's, design.md section 4.4).

Data order and dropout keys are functions of (seed, epoch), so a run killed after any epoch and
started again ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from fairjax import checkpoint, parallel, train
from fairjax.batches import data_parallel, epoch_batches, train_step_fn, train_tx
from fairjax.config import ConfigError
from fairjax.data import DatasetSplits
from fairjax.evaluation import evaluate_split
from fairjax.models import pretrained
from fairjax.pruning import api as methods_api

PyTree = Any
PRETRAINED_JSON = "pretrained.json"


def _num(x: Any) -> float:
  return float("nan") if x is None else float(x)


def fit_epochs(
  state: train.TrainState,
  store: checkpoint.CheckpointStore,
  *,
  start: int,
  epochs: int,
  batches: Callable[[int], Any],
  rng: jax.Array,
  on_epoch: Callable[
    [int, train.TrainState, Mapping[str, Any]], tuple[dict[str, PyTree], dict[str, Any], bool]
  ],
  step_fn: Callable | None = None,
) -> tuple[train.TrainState, bool]:
  """Trains epochs ``start .. epochs - 1`` of ``state`` one at a time, saving a checkpoint in
  ``store`` after each.

  Args:
    batches: ``epoch -> train batches`` (:func:`fairjax.batches.epoch_batches`).
    rng: dropout key; epoch ``e`` uses the same keys whether or not the run was resumed.
    on_epoch: ``(epoch, state, last fit record {"loss", "accuracy"}) -> (items, metadata,
      done)``: what to checkpoint for this epoch and whether to stop after it (early stopping).
    step_fn: the train step (None: :func:`fairjax.train.fit`'s own jit).

  Returns:
    ``(state, done)``: the state after the last epoch trained, and whether ``on_epoch`` said
    done (False when no epoch was left to train).
  """
  done = False
  for epoch in range(start, epochs):
    state, history = train.fit(
      state,
      batches,
      epochs=epoch + 1,
      start_epoch=epoch,
      rng=rng,
      log_every=0,
      donate=False,
      step_fn=step_fn,
    )
    items, metadata, done = on_epoch(epoch, state, history[-1])
    store.save(epoch, items, metadata=metadata)
    if done:
      break
  return state, done


def load_pretrained(
  config, state: train.TrainState, data: DatasetSplits, workdir: str
) -> train.TrainState:
  """``state`` with the weights of ``model.pretrained`` (fresh optimizer state; only the shapes
  and dtypes of ``state``'s variables are read, so they may be ``jax.ShapeDtypeStruct``s, and its
  ``step`` is kept). Records which leaves were loaded and which initialised in the log and in
  ``<workdir>/pretrained.json``."""
  m = config.model
  loaded = pretrained.load(
    m.name,
    m.pretrained,
    num_classes=data.num_classes,
    rng=jax.random.key(config.seed + 2),
    image_size=config.data.image_size,
    model_kwargs=dict(m.kwargs or {}),
  )
  variables = loaded.variables
  ours = {"params": state.params, "batch_stats": state.batch_stats}
  theirs = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  # The loader checks every key and shape against the architecture; this guards the handover.
  if jax.tree.structure(ours) != jax.tree.structure(theirs):
    raise pretrained.PretrainedError(
      f"{m.pretrained}: the loaded variables do not have the model's tree structure "
      f"(model.kwargs {dict(m.kwargs or {})} may not match the checkpoint)"
    )
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ours)[0], jax.tree.leaves(theirs)):
    if np.shape(a) != np.shape(b):
      raise pretrained.PretrainedError(
        f"{m.pretrained}: {jax.tree_util.keystr(path)} has shape {np.shape(b)}, the model "
        f"expects {np.shape(a)}"
      )
  params = jax.tree.map(lambda a, b: jnp.asarray(b, a.dtype), ours["params"], theirs["params"])
  batch_stats = jax.tree.map(
    lambda a, b: jnp.asarray(b, a.dtype), ours["batch_stats"], theirs["batch_stats"]
  )
  summary = {
    "path": os.path.abspath(m.pretrained),
    "format": loaded.file_format,
    "model": m.name,
    "loaded": list(loaded.loaded),
    "initialised": list(loaded.initialised),
  }
  logging.info(
    "pretrained: %d leaves loaded from %s (%s); initialised: %s",
    len(loaded.loaded),
    m.pretrained,
    loaded.file_format,
    ", ".join(loaded.initialised) or "none",
  )
  if parallel.is_main_process():
    checkpoint.write_json_atomic(os.path.join(workdir, PRETRAINED_JSON), summary)
  return state.replace(params=params, batch_stats=batch_stats, opt_state=state.tx.init(params))


def state_items(state: train.TrainState) -> dict[str, PyTree]:
  return {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state}


def train_dense(config, model, data: DatasetSplits, workdir: str) -> train.TrainState:
  """Trains (or resumes training of) the dense model; returns the best state by val accuracy."""
  t = config.train
  n_train = len(data.labels["train"])
  steps_per_epoch = max(1, n_train // t.batch_size)
  tx = train_tx(config, steps_per_epoch, t.epochs)
  init_key = jax.random.key(config.seed, impl="rbg")  # rbg: much faster init compile on CPU
  image_shape = (config.data.image_size,) * 2 + (3,)
  store = checkpoint.CheckpointStore(
    checkpoint.store_directory(workdir, checkpoint.DENSE_STORE), max_to_keep=2
  )
  latest = store.latest_step()
  if config.model.pretrained and latest is None:  # a resumed run restores its own weights
    # load_pretrained replaces every variable (the file's, or the loader's own head init) and
    # the optimizer state, so the model's initialiser would only be thrown away: its shapes
    # are enough (no op-by-op init to run), and the step counter.
    state = jax.eval_shape(lambda: train.create_train_state(model, init_key, image_shape, tx))
    state = state.replace(step=jnp.zeros((), jnp.int32))
    try:
      state = load_pretrained(config, state, data, workdir)
    except BaseException:
      store.close()  # a bad weights file ends the run; leave no orbax work behind
      raise
  else:
    state = train.create_train_state(model, init_key, image_shape, tx)
  state = data_parallel(config).replicate(state)  # identity on one device
  like = {**state_items(state), "best_params": state.params, "best_batch_stats": state.batch_stats}
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
    state = state.replace(
      params=items["params"],
      batch_stats=items["batch_stats"],
      opt_state=items["opt_state"],
      step=jnp.asarray(meta["step"], jnp.int32),
    )
    best_score, bad_epochs, start = meta["best_score"], meta["bad_epochs"], meta["epoch"] + 1
    logging.info("dense model: resuming after epoch %d", meta["epoch"] + 1)  # 1-based, as logs

  track = {"best_score": best_score, "bad_epochs": bad_epochs, "best": best}

  def on_epoch(epoch, state, fit):
    val = evaluate_split(state, data, "validation", config)
    improved = val["accuracy"] > track["best_score"]
    if improved:
      track.update(
        best_score=val["accuracy"],
        bad_epochs=0,
        best={"params": state.params, "batch_stats": state.batch_stats},
      )
    else:
      track["bad_epochs"] += 1
    done = epoch == t.epochs - 1 or (t.patience is not None and track["bad_epochs"] >= t.patience)
    logging.info(
      "dense epoch %d/%d: loss %.4f train acc %.4f | val acc %.4f macro-F1 %.4f eodd %.4f%s",
      epoch + 1,
      t.epochs,
      fit["loss"],
      fit["accuracy"],
      val["accuracy"],
      val["macro_f1"],
      _num(val["eodd"]),
      " (best)" if improved else "",
    )
    if done and epoch < t.epochs - 1:
      logging.info(
        "dense training: early stopping after epoch %d/%d (validation accuracy not "
        "improved for %d epochs, train.patience)",
        epoch + 1,
        t.epochs,
        track["bad_epochs"],
      )
    best = track["best"]
    items = {
      **state_items(state),
      "best_params": best["params"],
      "best_batch_stats": best["batch_stats"],
    }
    metadata = {
      "epoch": epoch,
      "step": int(state.step),
      "best_score": track["best_score"],
      "bad_epochs": track["bad_epochs"],
      "done": done,
    }
    return items, metadata, done

  state, done = fit_epochs(
    state,
    store,
    start=start,
    epochs=t.epochs,
    batches=epoch_batches(config, data, config.seed),
    rng=data_parallel(config).replicate(jax.random.key(config.seed + 1, impl="rbg")),
    on_epoch=on_epoch,
    step_fn=train_step_fn(config),
  )
  best = track["best"]
  if not done:  # epochs were already complete when resuming (cannot happen unless edited)
    raise RuntimeError("dense training ended without a final checkpoint")
  store.close()
  return state.replace(**best)


FINETUNE_STORE = "finetune"


def finetune_tx(
  config, steps_per_epoch: int, spec: Mapping[str, Any]
) -> optax.GradientTransformation:
  """The final fine-tune's optimizer: ``spec["optimizer"]`` at ``spec["learning_rate"]`` on
  ``train.schedule`` spanning ``spec["epochs"]``, with the dense run's momentum / Nesterov /
  weight decay (masked updates, train.make_optimizer); FairGRAPE's spec is
  ``prune.fairgrape.finetune_*``."""
  t = config.train
  total = max(1, steps_per_epoch * spec["epochs"])
  schedule = train.make_schedule(t.schedule, spec["learning_rate"], total)
  return train.make_optimizer(
    spec["optimizer"],
    schedule,
    momentum=t.momentum,
    nesterov=t.nesterov,
    weight_decay=t.weight_decay,
  )


def phase_tx(config, spec: Mapping[str, Any], learning_rate: float) -> optax.GradientTransformation:
  """One phase of a piecewise final fine-tune (``spec["phases"]``): ``spec["optimizer"]`` at
  the constant ``learning_rate``, with the dense run's momentum / Nesterov / weight decay."""
  t = config.train
  return train.make_optimizer(
    spec["optimizer"],
    float(learning_rate),
    momentum=t.momentum,
    nesterov=t.nesterov,
    weight_decay=t.weight_decay,
  )


def finetune_final(
  config,
  model,
  state: train.TrainState,
  data: DatasetSplits,
  workdir: str,
  steps: list[dict],
  chosen: int,
) -> tuple[train.TrainState, dict | None]:
  """The final fine-tune of the chosen pruned model, for methods whose ``final_finetune`` hook
  asks for one: FairGRAPE's full fine-tune after the last schedule iteration (design.md section
  4), ``prune.fairgrape.finetune_*``.

  Trains the chosen pruned state (the last iteration in ``prune.target_sparsity`` mode, as in
  the official code, which retrains its final model) for the hook's ``epochs`` with a fresh
  optimizer (:func:`finetune_tx`), or, when the hook gives ``phases``
  (``prune.fairgrape.finetune_schedule``), phase by phase with a fresh optimizer at each
  phase's constant rate (:func:`phase_tx`), keeping the mask: pruned weights stay exactly
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
  phases = [(int(e), float(lr)) for e, lr in spec.get("phases") or ()]
  steps_per_epoch = max(1, len(data.labels["train"]) // config.train.batch_size)
  # Every phase's optimizer state has the same structure, so the first phase's is the restore
  # template of any checkpoint.
  tx = (
    phase_tx(config, spec, phases[0][1]) if phases else finetune_tx(config, steps_per_epoch, spec)
  )
  test_before = evaluate_split(state, data, "test", config)
  state = state.replace(tx=tx, opt_state=tx.init(state.params), step=jnp.zeros((), jnp.int32))
  store = checkpoint.CheckpointStore(
    checkpoint.store_directory(workdir, FINETUNE_STORE), max_to_keep=2
  )
  history: list[dict] = []
  start = 0
  latest = store.latest_step()
  if latest is not None:
    meta = store.restore_metadata(latest)
    if meta["chosen_step"] != chosen:
      store.close()
      raise ConfigError(
        f"{workdir} holds a final fine-tune of pruning step {meta['chosen_step']}"
        f", but this run chose step {chosen} (the pruning config changed); use "
        "another --workdir"
      )
    items = store.restore(latest, {**state_items(state), "mask": state.mask})
    state = state.replace(
      params=items["params"],
      batch_stats=items["batch_stats"],
      opt_state=items["opt_state"],
      mask=items["mask"],
      step=jnp.asarray(meta["step"], jnp.int32),
    )
    history, start = meta["history"], meta["epoch"] + 1
    logging.info(
      "%s final fine-tune: resuming after epoch %d", config.prune.method, meta["epoch"] + 1
    )

  def on_epoch(epoch, state, fit):
    val = evaluate_split(state, data, "validation", config)
    history.append(
      {"epoch": epoch, "loss": fit["loss"], "train_accuracy": fit["accuracy"], "validation": val}
    )
    logging.info(
      "%s final fine-tune epoch %d/%d: loss %.4f | val acc %.4f eodd %.4f sparsity %.3f",
      config.prune.method,
      epoch + 1,
      epochs,
      fit["loss"],
      val["accuracy"],
      _num(val["eodd"]),
      val["sparsity"],
    )
    return (
      {**state_items(state), "mask": state.mask},
      {"epoch": epoch, "step": int(state.step), "chosen_step": chosen, "history": history},
      False,
    )

  # Data order and dropout keys are functions of (seed, epoch): a resumed run trains exactly as
  # an uninterrupted one.
  batches = epoch_batches(config, data, config.seed * 53 + 17)
  rng = jax.random.key(config.seed + 3, impl="rbg")
  if not phases:
    state, _ = fit_epochs(
      state, store, start=start, epochs=epochs, batches=batches, rng=rng, on_epoch=on_epoch
    )
  begin = 0
  for length, lr in phases:
    end = begin + length
    if start < end:
      # A fresh optimizer at the phase's first epoch; a run resumed inside the phase keeps the
      # state it restored (saved by this phase's optimizer).
      tx = phase_tx(config, spec, lr)
      state = state.replace(
        tx=tx, opt_state=(tx.init(state.params) if start <= begin else state.opt_state)
      )
      logging.info(
        "%s final fine-tune: epochs %d-%d at learning rate %g",
        config.prune.method,
        max(start, begin) + 1,
        end,
        lr,
      )
      state, _ = fit_epochs(
        state,
        store,
        start=max(start, begin),
        epochs=end,
        batches=batches,
        rng=rng,
        on_epoch=on_epoch,
      )
    begin = end
  store.close()
  record = {
    "step": chosen,
    "epochs": epochs,
    "optimizer": spec["optimizer"],
    "learning_rate": float(spec["learning_rate"]),
    "schedule": "phases" if phases else config.train.schedule,
    **({"phases": [[e, lr] for e, lr in phases]} if phases else {}),
    "validation_before": steps[chosen]["validation"],
    "validation_after": history[-1]["validation"],
    "test_before": test_before,
    "history": history,
  }
  return state, record
