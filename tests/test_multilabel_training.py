"""Multi-label tasks end to end below the pipeline (design.md sections 1.10 and 5.7): the
training loss and step, batching of ``[N, A]`` labels, evaluation (thresholded logits, metrics
macro-averaged over attributes), the paired bootstrap, and the config checks that refuse what
cannot work. Hand-worked cases and float64 brute force."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import bootstrap, metrics, train
from fairjax.data import DatasetSplits
from fairjax.data import pipeline as input_pipeline

BUILTIN = ("fairprune", "magnitude", "random", "snip", "obd", "fairgrape", "snnl_channels")


def _softplus(x):
  return math.log1p(math.exp(x))


def test_task_loss_hand_worked():
  logits = jnp.array([[0.0, 2.0, -1.0], [3.0, -2.0, 0.5]])
  labels = jnp.array([[1, 0, 0], [1, 1, 1]], jnp.int32)
  loss, correct = train.task_loss(logits, labels)
  # BCE(z, 1) = softplus(-z), BCE(z, 0) = softplus(z); the mean over the 3 outputs.
  want0 = (_softplus(0.0) + _softplus(2.0) + _softplus(-1.0)) / 3
  want1 = (_softplus(-3.0) + _softplus(2.0) + _softplus(-0.5)) / 3
  np.testing.assert_allclose(loss, [want0, want1], rtol=1e-6)
  # logit > 0 predicts 1: row 0 gets (0, 1, 0) against (1, 0, 0), row 1 (1, 0, 1) against 1s.
  np.testing.assert_allclose(correct, [1 / 3, 2 / 3], rtol=1e-6)
  # int [B] labels keep the softmax cross-entropy.
  loss, correct = train.task_loss(logits, jnp.array([1, 2], jnp.int32))
  lse = [math.log(sum(math.exp(v) for v in row)) for row in np.asarray(logits)]
  np.testing.assert_allclose(loss, [lse[0] - 2.0, lse[1] - 0.5], rtol=1e-6)
  np.testing.assert_allclose(correct, [1.0, 0.0])


class _Linear(nn.Module):
  outputs: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return nn.Dense(self.outputs, use_bias=False, name="fc")(x.reshape(x.shape[0], -1))


def test_train_step_is_the_mean_bce_gradient():
  """One plain-SGD step of a linear model, against the closed-form gradient of the mean BCE:
  d/dW mean_{n,a} BCE(x_n W, y_n) = X^T (sigmoid(XW) - Y) / (B A), computed in float64 (the
  step computes its loss in float32 by design, hence the float32 tolerance)."""
  rng = np.random.default_rng(0)
  images = rng.standard_normal((6, 2, 2, 1)).astype(np.float32)
  labels = rng.integers(0, 2, (6, 3)).astype(np.int32)
  tx = train.make_optimizer("sgd", 0.5, momentum=0.0)
  state = train.create_train_state(_Linear(), jax.random.key(0), (2, 2, 1), tx)
  w = np.asarray(state.params["fc"]["kernel"], np.float64)
  x = images.reshape(6, -1).astype(np.float64)
  p = 1 / (1 + np.exp(-(x @ w)))
  grad = x.T @ (p - labels) / labels.size
  bce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean()
  new, out = train.train_step(
    state, {"image": jnp.asarray(images), "label": labels}, jax.random.key(1)
  )
  np.testing.assert_allclose(out["loss"], bce, rtol=1e-6)
  np.testing.assert_allclose(out["accuracy"], np.mean((x @ w > 0) == labels), rtol=1e-6)
  np.testing.assert_allclose(new.params["fc"]["kernel"], w - 0.5 * grad, rtol=1e-5, atol=1e-7)


def _multilabel_data(n_per_split=(12, 9, 7), attrs=3, size=4) -> DatasetSplits:
  rng = np.random.default_rng(1)
  sources, labels, groups = {}, {}, {}
  for split, n in zip(("train", "validation", "test"), n_per_split):
    arrays = {
      "image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
      "label": rng.integers(0, 2, (n, attrs)).astype(np.int32),
      "group": np.arange(n) % 2,
    }
    sources[split] = input_pipeline.ArraySource(arrays)
    labels[split], groups[split] = input_pipeline.scan_labels(sources[split])
  return DatasetSplits(
    name="toy",
    sources=sources,
    num_classes=attrs,
    class_names=tuple(f"a{i}" for i in range(attrs)),
    group_names=("g0", "g1"),
    labels=labels,
    groups=groups,
    multilabel=True,
  )


def test_batches_carry_label_rows():
  data = _multilabel_data()
  assert data.labels["test"].shape == (7, 3) and data.loss == "sigmoid_binary_cross_entropy"
  batches = list(input_pipeline.eval_batches(data.sources["test"], batch_size=4, image_size=4))
  assert [b["label"].shape for b in batches] == [(4, 3), (4, 3)]
  np.testing.assert_array_equal(
    np.concatenate([b["label"] for b in batches])[:7], data.labels["test"]
  )
  np.testing.assert_array_equal(batches[1]["label"][3], [0, 0, 0])  # the padding row
  train_b = next(
    input_pipeline.train_batches(
      data.sources["train"], batch_size=5, image_size=4, seed=0, sampling="group_balanced"
    )
  )
  assert train_b["label"].shape == (5, 3) and train_b["label"].dtype == np.int32
  with pytest.raises(ValueError, match="multi-label"):
    input_pipeline.epoch_indices(data.sources["train"], seed=0, sampling="class_balanced")


def test_evaluation_thresholds_logits_and_averages_attributes():
  from fairjax import config as fj_config
  from fairjax import evaluation

  data = _multilabel_data()
  config = fj_config.base_config()
  config.data.image_size, config.train.eval_batch_size = 4, 4
  tx = train.make_optimizer("adam", 1e-3)
  state = train.create_train_state(_Linear(), jax.random.key(3), (4, 4, 3), tx)
  labels, predictions, groups = evaluation.predict_split(state, data, "test", config)
  # Brute force: the model's logits on the normalised images, thresholded at 0.
  images = input_pipeline.normalize_images(
    np.stack([data.sources["test"][i]["image"] for i in range(7)])
  )
  logits = np.asarray(state.apply_fn(state.variables(), jnp.asarray(images)))
  np.testing.assert_array_equal(predictions, (logits > 0).astype(int))
  np.testing.assert_array_equal(labels, data.labels["test"])
  out = evaluation.split_metrics(config, data, labels, predictions, groups)
  per_attr = [np.mean(labels[:, a] == predictions[:, a]) for a in range(3)]
  assert out["accuracy"] == pytest.approx(np.mean(per_attr))
  for g, name in enumerate(("g0", "g1")):
    rows = groups == g
    assert out["group_accuracy"][name] == pytest.approx(np.mean(labels[rows] == predictions[rows]))
  assert set(out["attribute_accuracy"]) == {"a0", "a1", "a2"}
  # The single-label keys are all there (results.json's schema only grows).
  single = metrics.evaluate(labels[:, 0], predictions[:, 0], groups, num_classes=2, num_groups=2)
  assert set(single) - {"fairness_pair"} <= set(out)


def test_multilabel_bootstrap_equals_metrics_on_every_resample():
  rng = np.random.default_rng(4)
  n, attrs = 30, 4
  groups = np.r_[np.zeros(12, int), np.ones(14, int), -np.ones(4, int)]
  labels = rng.integers(0, 2, (n, attrs))
  preds = {"dense": rng.integers(0, 2, (n, attrs)), "pruned": rng.integers(0, 2, (n, attrs))}
  # Explicit stratified resamples: the identity and five random ones.
  rows = [np.arange(n)]
  for _ in range(5):
    row = np.empty(n, int)
    for s in (0, 1, -1):
      members = np.flatnonzero(groups == s)
      row[members] = rng.choice(members, members.size)
    rows.append(row)
  indices = np.stack(rows)
  reps = bootstrap.multilabel_bootstrap_replicates(
    labels, groups, preds, num_groups=2, convention="mean", indices=indices
  )
  for r, row in enumerate(indices):
    for name, p in preds.items():
      want = metrics.multilabel_evaluate(
        labels[row], p[row], groups[row], num_groups=2, convention="mean"
      )
      for key in bootstrap.SCALAR_METRICS:
        got, ref = reps[name][key][r], want[key]
        assert (ref is None and np.isnan(got)) or got == pytest.approx(ref, abs=1e-12), key
      for key in bootstrap.GROUP_METRICS:
        np.testing.assert_allclose(reps[name][key][r], list(want[key].values()), atol=1e-12)
  out = bootstrap.bootstrap_multilabel(
    labels, groups, preds, num_groups=2, num_samples=50, seed=0, pairs=[("pruned", "dense")]
  )
  assert out["task"] == "multilabel" and out["num_attributes"] == attrs
  point = metrics.multilabel_evaluate(labels, preds["pruned"], groups, num_groups=2)
  assert out["models"]["pruned"]["accuracy"]["estimate"] == pytest.approx(point["accuracy"])
  assert out["group_counts"] == {"group0": 12, "group1": 14} and out["num_unknown_group"] == 4
  leaf = out["differences"]["pruned - dense"]["accuracy"]
  assert leaf["low"] <= leaf["estimate"] <= leaf["high"] or leaf["low"] <= leaf["high"]
  # Seeded: the same intervals again.
  again = bootstrap.bootstrap_multilabel(
    labels, groups, preds, num_groups=2, num_samples=50, seed=0, pairs=[("pruned", "dense")]
  )
  assert again == out


def test_config_refuses_what_a_multilabel_task_cannot_use():
  from fairjax import config as fj_config
  from fairjax.pruning import api

  cfg = fj_config.base_config()
  cfg.data.name, cfg.data.task, cfg.data.manual_dir = "celeba", "multilabel", "/somewhere"
  fj_config.validate_config(cfg)  # every built-in method scores the sigmoid loss
  for method in BUILTIN:
    assert api.get_method(method).supports_multilabel, method
  cfg.data.sampling = "class_balanced"
  with pytest.raises(fj_config.ConfigError, match="config.data.sampling='class_balanced'"):
    fj_config.validate_config(cfg)
  cfg.data.sampling = "uniform"
  api.register_method(
    "_ml_test_label_free", lambda variables, batches: variables["params"], replace=True
  )
  api.register_method(
    "_ml_test_with_loss", lambda variables, batches, loss: variables["params"], replace=True
  )
  try:
    cfg.prune.method = "_ml_test_label_free"
    with pytest.raises(fj_config.ConfigError) as err:
      fj_config.validate_config(cfg)
    assert "config.prune.method='_ml_test_label_free'" in str(err.value)
    assert "\n" not in str(err.value)
    cfg.prune.method = "_ml_test_with_loss"
    fj_config.validate_config(cfg)
  finally:
    api._METHODS.pop("_ml_test_label_free", None)
    api._METHODS.pop("_ml_test_with_loss", None)


@pytest.mark.parametrize("method", BUILTIN)
def test_every_builtin_method_scores_a_multilabel_task(method):
  """Each built-in method's next mask on [B, A] labels, through the run context (its loss from
  the data): it prunes something and keeps the mask's structure."""
  from fairjax import config as fj_config
  from fairjax import masks, pipeline
  from fairjax.pruning import api

  data = _multilabel_data(n_per_split=(16, 8, 8), size=8)
  config = fj_config.base_config()
  config.data.image_size, config.train.batch_size = 8, 4
  config.model.kwargs.width, config.model.kwargs.hidden = 4, 8
  config.prune.method, config.prune.num_batches, config.prune.batch_size = method, 1, 4
  model = pipeline.make_model(config, data)
  ctx = pipeline.context(config, model, data, roles=(1, (0,)))
  assert ctx.loss == "sigmoid_binary_cross_entropy"
  impl = api.get_method(method)
  tx = train.make_optimizer("adam", 1e-3)
  state = train.create_train_state(model, jax.random.key(0), (8, 8, 3), tx)
  state = train.set_mask(
    state, impl.prepare_mask(ctx, state.params, masks.init_mask(state.params, ctx.prunable))
  )
  new = impl.next_mask(ctx, state, 1)
  assert jax.tree.structure(new) == jax.tree.structure(state.mask)
  kept = sum(int(np.sum(m)) for m in jax.tree.leaves(new))
  assert kept < sum(int(np.sum(m)) for m in jax.tree.leaves(state.mask))
