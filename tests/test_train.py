"""Tests for fairjax.train: optimizers, steps, masks staying zero, BN, early stopping, NaN."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fairjax import masks, train

IMAGE_SHAPE = (4, 4, 3)


class TinyNet(nn.Module):
  """Conv -> (BN) -> ReLU -> Dropout -> Dense: every kind of variable train.py must handle."""

  num_classes: int = 2
  use_bn: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.Conv(4, (3, 3))(x)
    if self.use_bn:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x)
    x = nn.Dropout(0.1, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes)(x)


def make_data(n: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
  """Linearly separable: class 1 images are brighter (+1) than class 0 images (-1)."""
  rs = np.random.RandomState(seed)
  labels = rs.randint(0, 2, size=n).astype(np.int32)
  images = rs.normal(0.0, 0.5, size=(n, *IMAGE_SHAPE)).astype(np.float32)
  images += (2.0 * labels - 1.0)[:, None, None, None]
  groups = rs.randint(0, 2, size=n).astype(np.int32)
  return {"image": images, "label": labels, "group": groups}


def batches(data: dict[str, np.ndarray], batch_size: int = 32) -> list[dict[str, np.ndarray]]:
  n = data["label"].shape[0]
  return [{k: v[i : i + batch_size] for k, v in data.items()} for i in range(0, n, batch_size)]


@functools.lru_cache(maxsize=None)
def _tx(opt: str, lr, kwargs: tuple) -> optax.GradientTransformation:
  # One optimizer object per configuration: tx is a static field of the state, so reusing it
  # lets tests share jit compilations (CPU time is scarce).
  return train.make_optimizer(opt, lr, **dict(kwargs))


def new_state(
  opt: str = "sgd", lr: float = 0.05, *, use_bn: bool = False, mask_fn=None, **opt_kwargs
) -> train.TrainState:
  model = TinyNet(use_bn=use_bn)
  tx = _tx(opt, lr, tuple(sorted(opt_kwargs.items())))
  state = train.create_train_state(model, jax.random.key(0), IMAGE_SHAPE, tx)
  if mask_fn is not None:
    state = train.set_mask(state, mask_fn(state.params))
  return state


def eval_loss_acc(state: train.TrainState, data: dict[str, np.ndarray]) -> tuple[float, float]:
  logits = train.eval_step(state, data)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, data["label"]).mean()
  acc = (jnp.argmax(logits, -1) == data["label"]).mean()
  return float(loss), float(acc)


@pytest.mark.parametrize("opt,lr", [("sgd", 0.05), ("adam", 0.01)])
def test_loss_decreases_and_accuracy_rises(opt: str, lr: float) -> None:
  data = make_data()
  state = new_state(opt, lr)
  loss0, acc0 = eval_loss_acc(state, data)
  for _ in range(15):
    for b in batches(data):
      state, metrics = train.jit_train_step(state, b, jax.random.key(1))
  loss1, acc1 = eval_loss_acc(state, data)
  assert int(state.step) == 30
  assert loss1 < 0.5 * loss0
  assert acc1 >= 0.95 and acc1 > acc0
  assert set(metrics) == {"loss", "accuracy", "grad_norm"}


def _half_mask(params):
  """Prunes a random half of each kernel's entries (biases stay unprunable).

  Random rather than a regular pattern: pruning whole output channels would leave them dead
  behind the ReLU, with zero gradient, so they would stay zero even without masking.
  """
  mask = masks.init_mask(params)
  rs = np.random.RandomState(0)
  return jax.tree.map(
    lambda m: m if m is None else jnp.asarray(rs.rand(*m.shape) < 0.5),
    mask,
    is_leaf=lambda x: x is None,
  )


@pytest.mark.parametrize(
  "opt,kwargs",
  [
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-2}),
    ("adamw", {"weight_decay": 1e-2}),
  ],
)
def test_masked_weights_stay_exactly_zero_and_bn_updates(opt: str, kwargs: dict) -> None:
  data = make_data()
  state = new_state(opt, 0.05, use_bn=True, mask_fn=_half_mask, **kwargs)
  kernel0 = np.asarray(state.params["Conv_0"]["kernel"])
  m = np.asarray(state.mask["Conv_0"]["kernel"])
  assert np.all(kernel0[~m] == 0.0) and np.all(kernel0[m] != 0.0)
  stats0 = jax.device_get(state.batch_stats)
  assert jax.tree.leaves(stats0), "BN model must have batch_stats"
  for _ in range(20):
    for b in batches(data):
      state, _ = train.jit_train_step(state, b, jax.random.key(1))
  for layer in ("Conv_0", "Dense_0"):
    kernel = np.asarray(state.params[layer]["kernel"])
    m = np.asarray(state.mask[layer]["kernel"])
    assert np.all(kernel[~m] == 0.0), f"{layer}: pruned weights moved"
    assert np.all(np.signbit(kernel[~m]) == False)  # noqa: E712  (no -0.0 either)
  # The kept weights did train, so the zeros above are not an untrained artefact.
  kernel = np.asarray(state.params["Conv_0"]["kernel"])
  m = np.asarray(state.mask["Conv_0"]["kernel"])
  assert not np.allclose(kernel[m], kernel0[m])
  # BatchNorm running statistics are updated by training steps.
  stats1 = jax.device_get(state.batch_stats)
  assert not np.allclose(stats0["BatchNorm_0"]["mean"], stats1["BatchNorm_0"]["mean"])
  assert not np.allclose(stats0["BatchNorm_0"]["var"], stats1["BatchNorm_0"]["var"])
  assert train.jit_eval_step(state, data).shape == (64, 2)  # BN inference: nothing mutable
  # The mask must stay a bool pytree with None leaves for the biases.
  assert state.mask["Conv_0"]["bias"] is None
  assert state.mask["Conv_0"]["kernel"].dtype == jnp.bool_


def test_mask_requires_masked_optimizer() -> None:
  model = TinyNet()
  state = train.create_train_state(model, jax.random.key(0), IMAGE_SHAPE, optax.sgd(0.1))
  with pytest.raises(ValueError, match="masked_updates"):
    train.set_mask(state, masks.init_mask(state.params))
  bad = state.replace(mask=masks.init_mask(state.params))
  with pytest.raises(ValueError, match="masked_updates"):
    train.train_step(bad, batches(make_data())[0], jax.random.key(0))
  # A plain optax optimizer is fine for dense training.
  assert train.set_mask(state, None).mask is None  # dense training with plain optax is fine


def test_no_bn_model_has_empty_batch_stats() -> None:
  state = new_state("sgd")
  assert state.batch_stats == {}
  state, _ = train.jit_train_step(state, batches(make_data())[0], jax.random.key(1))
  assert state.batch_stats == {}


def test_early_stopping_returns_best_state() -> None:
  data = make_data()
  state = new_state("sgd", 0.05)
  scores = iter([0.1, 0.5, 0.4, 0.3, 0.9, 0.95])
  seen = {}

  def on_epoch_end(epoch, s, record):
    seen[epoch] = jax.device_get(s.params)

  best, history = train.fit(
    state,
    lambda epoch: batches(data),
    epochs=6,
    eval_fn=lambda s: next(scores),
    patience=2,
    rng=jax.random.key(3),
    log_every=1,
    on_epoch_end=on_epoch_end,
  )
  # Epochs 2 and 3 do not beat 0.5: stop after epoch 3, never see the later 0.9.
  assert [h["epoch"] for h in history] == [0, 1, 2, 3]
  assert [h["best"] for h in history] == [True, True, False, False]
  assert history[1]["val_score"] == 0.5
  assert int(best.step) == 2 * 2  # best after epoch 1, two batches per epoch
  chex_equal = jax.tree.map(np.array_equal, jax.device_get(best.params), seen[1])
  assert all(jax.tree.leaves(chex_equal))
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, seen[3], seen[1])))
  assert all(h["images_per_sec"] > 0 and h["steps"] == 2 for h in history)


def test_fit_without_eval_returns_last_state_and_resumes_by_epoch() -> None:
  data = make_data()
  asked = []

  def fn(epoch):
    asked.append(epoch)
    return batches(data)

  state, history = train.fit(new_state(), fn, epochs=3, start_epoch=1)
  assert asked == [1, 2]
  assert int(state.step) == 4 and len(history) == 2 and history[0]["val_score"] is None


def test_a_partly_committed_state_compiles_one_train_step() -> None:
  # As after a checkpoint restore: params committed to the device, a fresh optimizer state and
  # step not. The first step's outputs are all committed; fit commits the rest first, so the
  # whole fit lowers one program, and the result equals that of the all-uncommitted state.
  # (Lowerings are counted: jit's C++ dispatch cache may hold two entries for one program.)
  data = make_data()
  fresh = new_state("sgd", 0.031)
  device = jax.devices()[0]
  mixed = fresh.replace(params=jax.device_put(fresh.params, device))
  assert {x.committed for x in jax.tree.leaves(mixed) if isinstance(x, jax.Array)} == {
    True,
    False,
  }
  lowered = []

  def count(event: str, seconds: float, **kwargs) -> None:
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
      lowered.append(event)

  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    state, _ = train.fit(
      mixed, lambda epoch: batches(data), epochs=2, donate=False, step_fn=jax.jit(train.train_step)
    )
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
  assert len(lowered) == 1 and int(state.step) == 4
  assert all(x.committed for x in jax.tree.leaves(state.params))
  reference, _ = train.fit(fresh, lambda epoch: batches(data), epochs=2, donate=False)
  for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(reference.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_nan_image_raises_with_step() -> None:
  data = make_data()
  bs = batches(data)  # 2 batches per epoch
  bad = dict(bs[1])
  bad["image"] = bad["image"].copy()
  bad["image"][0, 0, 0, 0] = np.nan
  bs[1] = bad
  # Global steps 0, 1 in epoch 0; the NaN batch is step 3, the last of epoch 1 (logged and
  # reported 1-based: "epoch 2").
  with pytest.raises(FloatingPointError, match=r"step 3 .*epoch 2\).*[Ll]ower the learning rate"):
    train.fit(new_state(), lambda epoch: bs if epoch == 1 else batches(data), epochs=3)


def test_unknown_optimizer_and_schedule() -> None:
  with pytest.raises(ValueError, match="sgd, adam, adamw"):
    train.make_optimizer("rmsprop", 0.1)
  with pytest.raises(ValueError, match="constant, cosine, step"):
    train.make_schedule("linear", 0.1, 10)


def test_schedules() -> None:
  s = train.make_schedule("step", 1.0, 100, warmup_steps=10, decay_boundaries=(0.5, 0.75))
  np.testing.assert_allclose(
    [s(0), s(5), s(10), s(49), s(50), s(74), s(75), s(99)],
    [0.0, 0.5, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01],
    rtol=1e-6,
  )
  c = train.make_schedule("cosine", 2.0, 100)
  np.testing.assert_allclose([c(0), c(50), c(100)], [2.0, 1.0, 0.0], atol=1e-6)
  k = train.make_schedule("constant", 0.3, 10, warmup_steps=2)
  np.testing.assert_allclose([k(1), k(2), k(9)], [0.15, 0.3, 0.3], rtol=1e-6)


def test_predict_drops_padding() -> None:
  data = make_data(n=40)
  state = new_state()
  bs = batches(data, batch_size=16)  # 16, 16, 8 -> pad the last to 16
  last = {k: np.concatenate([v, v[:8]]) for k, v in bs[-1].items()}
  bs[-1] = last
  for i, b in enumerate(bs):
    b["valid"] = np.arange(16) < (8 if i == 2 else 16)
  logits, labels, groups = train.predict(state, bs)
  assert logits.shape == (40, 2) and logits.dtype == np.float32
  np.testing.assert_array_equal(labels, data["label"])
  np.testing.assert_array_equal(groups, data["group"])
  np.testing.assert_allclose(logits, np.asarray(train.eval_step(state, data)), rtol=1e-5, atol=1e-6)
