"""Evaluation of a run's models: predictions, split metrics, the reported sparsity, the paired
bootstrap of the test predictions (design.md section 5) and ``test_predictions.npz``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from fairjax import bootstrap, checkpoint, masks, metrics, train
from fairjax.batches import data_parallel
from fairjax.config import imagenet_normalization
from fairjax.data import DatasetSplits
from fairjax.data import pipeline as input_pipeline

PyTree = Any


def predict_split(
  state: train.TrainState, data: DatasetSplits, split: str, config
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Predicted classes of ``state`` on one split: ``(labels, predictions, groups)``, int [N]
  each, in the split's order (padding rows dropped). Multi-label (``data.multilabel``): labels
  and predictions are ``{0, 1}[N, A]``, a prediction is ``logit > 0`` (sigmoid > 1/2)."""
  dp = data_parallel(config)
  batches = input_pipeline.eval_batches(
    data.sources[split],
    batch_size=config.train.eval_batch_size,
    image_size=config.data.image_size,
    imagenet_normalization=imagenet_normalization(config),
  )
  # Only the images go to the devices; labels, groups and the padding flags stay on the host.
  batches = dp.shard_batches(batches, "train.eval_batch_size", keys=("image",))
  logits, labels, groups = train.predict(dp.replicate(state), batches)
  if not np.all(np.isfinite(logits)):
    raise FloatingPointError(f"non-finite logits on the {split} split; the model diverged")
  if data.multilabel:
    return labels, (logits > 0).astype(np.int32), groups
  return labels, np.argmax(logits, axis=-1), groups


def split_metrics(
  config,
  data: DatasetSplits,
  labels: np.ndarray,
  predictions: np.ndarray,
  groups: np.ndarray,
  *,
  convention: str | None = None,
) -> dict:
  """:func:`fairjax.metrics.evaluate` of stored predictions with the run's settings
  (``convention`` overrides ``config.fairness_convention``); for a multi-label task
  :func:`fairjax.metrics.multilabel_evaluate` (every attribute a binary task, averaged over
  attributes: design.md section 5.7), which carries the same keys plus per-attribute ones."""
  if data.multilabel:
    return metrics.multilabel_evaluate(
      labels,
      predictions,
      groups,
      num_groups=data.num_groups,
      group_names=list(data.group_names),
      attribute_names=list(data.class_names),
      convention=convention or config.fairness_convention,
      undefined=config.undefined_rates,
    )
  return metrics.evaluate(
    labels,
    predictions,
    groups,
    num_classes=data.num_classes,
    num_groups=data.num_groups,
    group_names=list(data.group_names),
    convention=convention or config.fairness_convention,
    undefined=config.undefined_rates,
  )


def evaluate_split(state: train.TrainState, data: DatasetSplits, split: str, config) -> dict:
  """Metrics of ``state`` on one split (metrics.evaluate + the mask's sparsity)."""
  out = split_metrics(config, data, *predict_split(state, data, split, config))
  out["sparsity"] = sparsity(state.mask)
  if split == "test":  # once per reported model
    warn_incomplete_metrics(data, out)
  return out


def warn_incomplete_metrics(data: DatasetSplits, test_metrics: Mapping[str, Any]) -> None:
  """Warns when the test metrics skip classes or hold samples of unknown group, with counts."""
  if max(test_metrics["skipped_classes"].values(), default=0) or test_metrics["num_unknown_group"]:
    # Multi-label: the counts are summed over attributes, each a two-class task.
    of = 2 * data.num_classes if data.multilabel else data.num_classes
    logging.warning(
      "%s test metrics: fairness gaps skip classes absent from a group %s (of %d); "
      "%d samples of unknown group count in the overall metrics only",
      data.name,
      test_metrics["skipped_classes"],
      of,
      test_metrics["num_unknown_group"],
    )


def sparsity(mask: PyTree | None) -> float:
  """Reported ``"sparsity"``: the fraction of the prunable conv/dense KERNEL weights (the
  method's scope minus ``prune.exclude_layers``) that the mask removes. Bias and BatchNorm
  entries that ``snnl_channels`` masks with a channel are not counted, so the figure means the
  same for every method (channels are reported separately, ``channels_kept`` / ``"slimming"``)."""
  if mask is None:
    return 0.0
  return float(masks.sparsity_report(mask, kernels_only=True)["global"]["sparsity"])


TEST_PREDICTIONS = "test_predictions.npz"


def write_predictions(
  workdir: str, labels: np.ndarray, groups: np.ndarray, predictions: Mapping[str, np.ndarray]
) -> str:
  """``<workdir>/test_predictions.npz`` (labels, groups and one int array per model, in test
  order; multi-label: ``[N, A]`` arrays): what the bootstrap resampled, so its intervals can be
  recomputed without a model."""
  arrays = {
    "labels": np.asarray(labels),
    "groups": np.asarray(groups),
    **{name: np.asarray(p) for name, p in predictions.items()},
  }
  return checkpoint.write_atomic(
    os.path.join(workdir, TEST_PREDICTIONS), lambda f: np.savez(f, **arrays), binary=True
  )


def paired_bootstrap(
  config,
  data: DatasetSplits,
  labels: np.ndarray,
  groups: np.ndarray,
  predictions: Mapping[str, np.ndarray],
  pairs: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
  """:func:`fairjax.bootstrap.bootstrap` of test predictions with the run's settings
  (``report.bootstrap_samples`` / ``bootstrap_seed`` / ``confidence``, the fairness convention
  and undefined-rate rule of design.md section 5); default pairs ``("pruned", "dense")``.
  Seeded, so a rerun or resumed run with the same predictions gets the same intervals."""
  r = config.report
  if data.multilabel:  # every attribute scored on the same resamples (design.md section 5.7)
    return bootstrap.bootstrap_multilabel(
      labels,
      groups,
      predictions,
      num_groups=data.num_groups,
      group_names=list(data.group_names),
      attribute_names=list(data.class_names),
      convention=config.fairness_convention,
      undefined=config.undefined_rates,
      num_samples=int(r.bootstrap_samples),
      seed=int(r.bootstrap_seed),
      confidence=float(r.confidence),
      pairs=pairs or [("pruned", "dense")],
    )
  return bootstrap.bootstrap(
    labels,
    groups,
    predictions,
    num_classes=data.num_classes,
    num_groups=data.num_groups,
    group_names=list(data.group_names),
    convention=config.fairness_convention,
    undefined=config.undefined_rates,
    num_samples=int(r.bootstrap_samples),
    seed=int(r.bootstrap_seed),
    confidence=float(r.confidence),
    pairs=pairs or [("pruned", "dense")],
  )
