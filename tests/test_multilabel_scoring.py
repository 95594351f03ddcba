"""Multi-label (sigmoid binary cross-entropy) scorers against float64 brute force.

design.md section 1.10: a sample's loss is the BCE summed over its A attributes, whose Hessian
w.r.t. the logits is diag(p (1 - p)). Checked here: the per-sample loss, the exact per-group GGN
diagonal against an explicit Jacobian (and the Hessian diagonal of a ReLU net), MC unbiasedness,
the empirical Fisher, group -1 counting nowhere, and SNIP / OBD / FairGRAPE / FairPrune's
averaging with ``loss="sigmoid_binary_cross_entropy"``.
"""

import functools

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import curvature, masks
from fairjax.pruning import _scoring, baselines, fairgrape, fairprune

SIGMOID = "sigmoid_binary_cross_entropy"
NUM_ATTRS = 3
NUM_GROUPS = 3


@pytest.fixture(autouse=True)
def x64():
  # Scoped float64: leaves the process-wide setting alone for other test modules.
  with jax.enable_x64(True):
    yield


class TinyNet(nn.Module):
  """conv -> relu -> dense -> relu -> dense, A logits (piecewise linear: GGN == Hessian)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jax.nn.relu(nn.Conv(2, (2, 2), padding="VALID")(x))
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(nn.Dense(4)(x))
    return nn.Dense(NUM_ATTRS)(x)


def _setup(n=7, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(k1, (n, 4, 4, 2), jnp.float64)
  y = jax.random.bernoulli(k2, 0.5, (n, NUM_ATTRS)).astype(jnp.int32)
  g = jnp.array(([0, 1, 0, 2, 1, -1, 1] * 4)[:n])  # sample 5: unknown group, counts nowhere
  model = TinyNet()
  v = model.init(k3, x)
  v = jax.tree.map(lambda a: 2.0 * a.astype(jnp.float64), v)  # logits of order 1
  return model, v, x, y, g


def _bce(z, y):
  """Reference: softplus(z) - y z, summed over attributes (written independently of fairjax)."""
  return jnp.sum(jnp.logaddexp(0.0, z) - y * z, axis=-1)


def _flat(tree):
  return np.asarray(jax.flatten_util.ravel_pytree(tree)[0])


def _flat_groups(tree, num_groups=NUM_GROUPS):
  """Leaves [G, ...] -> float[G, P], parameters in ravel_pytree order."""
  return np.concatenate(
    [np.asarray(a).reshape(num_groups, -1) for a in jax.tree.leaves(tree)], axis=1
  )


def _group_weights(g, num_groups=NUM_GROUPS):
  onehot = np.asarray(jax.nn.one_hot(g, num_groups, dtype=jnp.float64))
  return onehot / np.maximum(onehot.sum(0), 1)  # [N, G], -1 rows are zero


@functools.partial(jax.jit, static_argnums=0)
def _per_sample_ggn(model, v, x):
  """diag(J_n^T diag(p(1-p)) J_n) of every sample from an explicit Jacobian: [N, P]."""
  flat, unravel = jax.flatten_util.ravel_pytree(v["params"])

  def logits(theta, xi):
    return model.apply({"params": unravel(theta)}, xi[None])[0]

  jac = jax.vmap(jax.jacobian(logits), in_axes=(None, 0))(flat, x)  # [N, A, P]
  p = jax.nn.sigmoid(jax.vmap(logits, in_axes=(None, 0))(flat, x))
  return jnp.einsum("nap,na->np", jac**2, p * (1 - p))


@functools.partial(jax.jit, static_argnums=0)
def _hessian_diag(model, v, x, y, w):
  flat, unravel = jax.flatten_util.ravel_pytree(v["params"])

  def group_loss(theta, wg):
    return jnp.sum(wg * _bce(model.apply({"params": unravel(theta)}, x), y))

  return jnp.stack([jnp.diag(jax.hessian(group_loss)(flat, w[:, k])) for k in range(w.shape[1])])


def test_per_sample_bce_is_summed_stable_and_in_the_params_dtype():
  model, v, x, y, _ = _setup()
  params, others = _scoring.split_variables(v)
  bce = jax.jit(_scoring.per_sample_bce, static_argnums=0)
  got = bce(model, params, others, x, y)
  np.testing.assert_allclose(got, _bce(model.apply(v, x), y), rtol=1e-13)
  np.testing.assert_array_equal(
    got, _scoring.per_sample_loss(model, params, others, x, y, loss=SIGMOID)
  )
  # float64 labels of {0, 1} give the same as int labels.
  np.testing.assert_array_equal(got, bce(model, params, others, x, y.astype(jnp.float64)))
  # The default loss is the softmax cross-entropy, bit for bit.
  np.testing.assert_array_equal(
    _scoring.per_sample_loss(model, params, others, x, y[:, 0]),
    _scoring.per_sample_ce(model, params, others, x, y[:, 0]),
  )

  class Const(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return jnp.array([[200.0, -200.0, 0.0]]) + 0.0 * self.param("b", nn.initializers.zeros, (1,))

  # Large logits: finite, and exactly the linear tail softplus(z) - y z.
  lab = jnp.array([[0, 1, 1]])
  loss = _scoring.per_sample_bce(Const(), {"b": jnp.zeros(1)}, {}, x[:1], lab)
  np.testing.assert_allclose(loss, [400.0 + np.log(2.0)], rtol=1e-14)
  # float32 params: the float64 logits are cast to float32, the params dtype.
  assert (
    _scoring.per_sample_bce(Const(), {"b": jnp.zeros(1, jnp.float32)}, {}, x[:1], lab).dtype
    == jnp.float32
  )
  with pytest.raises(ValueError, match="shape of the logits"):
    _scoring.per_sample_bce(model, params, others, x, y[:, :2])
  with pytest.raises(ValueError, match="loss="):
    _scoring.per_sample_loss(model, params, others, x, y, loss="mse")


def test_sigmoid_loss_hessian_factor():
  logits = jax.random.normal(jax.random.key(1), (5, 4), jnp.float64) * 3
  logits = logits.at[0].set(jnp.array([60.0, -60.0, 0.0, 1.0]))  # saturated attributes
  f = curvature.loss_hessian_factor(logits, SIGMOID)
  assert f.shape == (5, 4, 4)
  np.testing.assert_array_equal(f, curvature.sigmoid_loss_hessian_factor(logits))
  # p (1 - p) as sigmoid(z) sigmoid(-z): at z = 60, 1 - p would round to 0.
  var = jax.nn.sigmoid(logits) * jax.nn.sigmoid(-logits)
  np.testing.assert_allclose(f @ jnp.swapaxes(f, 1, 2), jax.vmap(jnp.diag)(var), rtol=1e-13, atol=0)
  assert np.all(np.isfinite(f)) and np.all(f[0].diagonal()[:2] > 0)  # never exactly 0 or NaN


def test_exact_matches_explicit_jacobian_and_relu_hessian():
  model, v, x, y, g = _setup()
  diag, counts = curvature.per_group_diag(
    model, v, x, y, g, num_groups=NUM_GROUPS, loss=SIGMOID, return_counts=True
  )
  np.testing.assert_array_equal(counts, [2, 3, 1])  # the -1 sample is counted nowhere
  w = _group_weights(g)
  ref = w.T @ np.asarray(_per_sample_ggn(model, v, x))
  got = _flat_groups(diag)
  assert np.abs(ref).max() > 1e-2
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
  # ReLU network: the GGN diagonal is the Hessian diagonal of the group's mean summed BCE.
  np.testing.assert_allclose(got, _hessian_diag(model, v, x, y, jnp.asarray(w)), rtol=0, atol=1e-12)
  # (ref gives the unknown-group sample a zero weight: it counts nowhere.)
  # Chunked (eager, padded with group -1 rows) gives the same result.
  chunked = curvature.per_group_diag(
    model, v, x, y, g, num_groups=NUM_GROUPS, loss=SIGMOID, chunk_size=3
  )
  np.testing.assert_allclose(_flat_groups(chunked), got, rtol=1e-12, atol=1e-16)


def test_empirical_fisher_is_squared_bce_gradient_at_true_labels():
  model, v, x, y, g = _setup()
  flat, unravel = jax.flatten_util.ravel_pytree(v["params"])

  def loss(theta, xi, yi):
    return _bce(model.apply({"params": unravel(theta)}, xi[None])[0], yi)

  sq = np.asarray(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(flat, x, y)) ** 2
  got = _flat_groups(
    curvature.per_group_diag(
      model, v, x, y, g, num_groups=NUM_GROUPS, loss=SIGMOID, method="empirical_fisher"
    )
  )
  np.testing.assert_allclose(got, _group_weights(g).T @ sq, rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("method", ["mc", "hutchinson"])
def test_estimators_are_unbiased(method):
  model, v, x, y, g = _setup()
  w = _group_weights(g)
  exact = (
    w.T @ np.asarray(_per_sample_ggn(model, v, x))
    if method == "mc"
    else np.asarray(_hessian_diag(model, v, x, y, jnp.asarray(w)))
  )
  # A loop of calls, not a vmap over keys: one small compiled program, 2-3x faster here.
  draws = np.stack(
    [
      _flat_groups(
        curvature.per_group_diag(
          model,
          v,
          x,
          y,
          g,
          num_groups=NUM_GROUPS,
          method=method,
          rng=jax.random.key(i),
          loss=SIGMOID,
        )
      )
      for i in range(300)
    ]
  )
  mean = draws.mean(0)
  stderr = draws.std(0, ddof=1) / np.sqrt(draws.shape[0])
  varying = stderr > 1e-10
  z = (mean - exact) / np.maximum(stderr, 1e-12)
  # Unbiased: standardised errors look like N(0, 1) (a biased estimator fails this). They are
  # strongly correlated across parameters (all share the same few draws), so their mean is not
  # tested; each group's total over the parameters is, with its own standard error.
  assert varying.sum() > 20
  assert np.mean(np.abs(z[varying]) < 3) > 0.97
  totals = draws.sum(axis=2)  # [draws, G]
  z_total = (totals.mean(0) - exact.sum(1)) / (totals.std(0, ddof=1) / np.sqrt(len(draws)))
  assert np.all(np.abs(z_total) < 3.5), z_total
  np.testing.assert_allclose(mean[~varying], exact[~varying], atol=1e-10)


def test_bad_labels_and_loss_are_rejected():
  model, v, x, y, g = _setup()
  with pytest.raises(ValueError, match="leading batch"):
    curvature.per_group_diag(model, v, x, y[:, 0], g, num_groups=NUM_GROUPS, loss=SIGMOID)
  with pytest.raises(ValueError, match="leading batch"):  # [N, A] labels need the sigmoid loss
    curvature.per_group_diag(model, v, x, y, g, num_groups=NUM_GROUPS)
  with pytest.raises(ValueError, match="loss="):
    curvature.per_group_diag(model, v, x, y, g, num_groups=NUM_GROUPS, loss="bce")
  mask = masks.init_mask(v["params"])
  with pytest.raises(ValueError, match="loss="):
    baselines.snip_scores(model, v, x, y, mask, loss="bce")


def test_snip_and_obd_match_brute_force():
  model, v, x, y, _ = _setup()
  mask = masks.init_mask(v["params"])
  flat, unravel = jax.flatten_util.ravel_pytree(v["params"])
  grad = jax.grad(lambda t: jnp.mean(_bce(model.apply({"params": unravel(t)}, x), y)))(flat)
  snip = baselines.snip_scores(model, v, x, y, mask, loss=SIGMOID)
  ref = unravel(jnp.abs(flat * grad))
  for a, b in zip(jax.tree.leaves(snip), jax.tree.leaves(_keep_masked(ref, mask))):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-16)
  obd = baselines.obd_scores(model, v, x, y, mask, loss=SIGMOID)
  h = np.asarray(_per_sample_ggn(model, v, x)).mean(0)
  ref = unravel(0.5 * flat**2 * h)
  for a, b in zip(jax.tree.leaves(obd), jax.tree.leaves(_keep_masked(ref, mask))):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-16)


def _keep_masked(tree, mask):
  return masks.map_with_mask(lambda m, s: None if m is None else s, mask, tree)


def test_fairgrape_importance_matches_brute_force():
  model, v, x, y, g = _setup()
  mask = masks.init_mask(v["params"])
  # Prune one kernel entry: importance is taken through the masked model and is 0 there.
  mask["Dense_0"]["kernel"] = mask["Dense_0"]["kernel"].at[0, 0].set(False)
  params = masks.apply_mask(v["params"], mask)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  w = jnp.asarray(_group_weights(g))

  def group_loss(t, wg):
    return jnp.sum(wg * _bce(model.apply({"params": unravel(t)}, x), y))

  ref = np.stack(
    [np.asarray(flat * jax.grad(group_loss)(flat, w[:, k])) ** 2 for k in range(NUM_GROUPS)]
  )
  got = fairgrape.group_importance(model, v, x, y, g, mask, num_groups=NUM_GROUPS, loss=SIGMOID)
  np.testing.assert_allclose(_flat_groups(got), ref, rtol=1e-12, atol=1e-20)
  assert float(got["Dense_0"]["kernel"][:, 0, 0].max()) == 0.0
  # Over batches (padding rows valid=False count nowhere): the sum of the batches' importance.
  batches = [
    {"image": x[:4], "label": y[:4], "group": g[:4]},
    {
      "image": jnp.concatenate([x[4:], x[:1]]),
      "label": jnp.concatenate([y[4:], y[:1]]),
      "group": jnp.concatenate([g[4:], g[:1]]),
      "valid": jnp.array([1, 1, 1, 0]),
    },
  ]
  total = fairgrape.accumulate_importance(
    model, v, batches, mask, num_groups=NUM_GROUPS, loss=SIGMOID
  )
  parts = [
    fairgrape.group_importance(
      model, v, x[s], y[s], g[s], mask, num_groups=NUM_GROUPS, loss=SIGMOID
    )
    for s in (slice(0, 4), slice(4, None))
  ]
  np.testing.assert_allclose(
    _flat_groups(total), _flat_groups(parts[0]) + _flat_groups(parts[1]), rtol=1e-12
  )


def test_average_group_diag_passes_the_loss_on():
  model, v, x, y, g = _setup()
  batches = [
    {"image": x[:4], "label": y[:4], "group": g[:4]},
    {"image": x[4:], "label": y[4:], "group": g[4:]},
  ]
  diag, counts = fairprune.average_group_diag(
    model, v, batches, num_groups=NUM_GROUPS, loss=SIGMOID
  )
  np.testing.assert_array_equal(counts, [2, 3, 1])
  ref = _group_weights(g).T @ np.asarray(_per_sample_ggn(model, v, x))
  np.testing.assert_allclose(_flat_groups(diag), ref, rtol=0, atol=1e-12)
