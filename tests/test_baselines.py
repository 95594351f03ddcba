"""Fairness-unaware baseline scores against direct computations (design.md section 4)."""

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import masks
from fairjax.pruning import baselines

pytestmark = pytest.mark.usefixtures("float64")  # scoped float64 (tests/conftest.py)

NUM_CLASSES = 3


class TinyReluNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jax.nn.relu(nn.Conv(2, (2, 2), padding="VALID")(x))
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(nn.Dense(4)(x))
    return nn.Dense(NUM_CLASSES)(x)


@pytest.fixture(scope="module")
def setup():
  model = TinyReluNet()
  k_init, k_x, k_y, k_m = jax.random.split(jax.random.key(1, impl="rbg"), 4)
  images = jax.random.normal(k_x, (8, 3, 3, 2), jnp.float64)
  variables = jax.tree.map(lambda x: x.astype(jnp.float64), model.init(k_init, images))
  labels = jax.random.randint(k_y, (8,), 0, NUM_CLASSES)
  mask = masks.init_mask(variables["params"])
  kernel = mask["Dense_0"]["kernel"]
  mask["Dense_0"]["kernel"] = kernel & (jax.random.uniform(k_m, kernel.shape) > 0.3)
  return model, variables, images, labels, mask


def mean_ce(model, params, images, labels):
  logp = jax.nn.log_softmax(model.apply({"params": params}, images))
  return -jnp.mean(logp[jnp.arange(labels.shape[0]), labels])


def assert_prunable_close(got, want, mask, **kw):
  def check(m, g, w):
    if m is None:
      assert g is None
    else:
      np.testing.assert_allclose(g, w, **kw)

  masks.map_with_mask(check, mask, got, want)


def test_magnitude(setup):
  _, variables, _, _, mask = setup
  got = baselines.magnitude_scores(variables["params"], mask)
  assert got["Dense_0"]["bias"] is None
  np.testing.assert_array_equal(
    got["Dense_0"]["kernel"], jnp.abs(variables["params"]["Dense_0"]["kernel"])
  )


def test_random_reproducible(setup):
  _, variables, _, _, mask = setup
  a = baselines.random_scores(variables["params"], mask, jax.random.key(3))
  b = baselines.random_scores(variables["params"], mask, jax.random.key(3))
  c = baselines.random_scores(variables["params"], mask, jax.random.key(4))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.array_equal(a["Conv_0"]["kernel"], c["Conv_0"]["kernel"])
  assert not np.array_equal(a["Dense_0"]["kernel"].ravel()[:8], a["Dense_1"]["kernel"].ravel()[:8])
  for leaf in jax.tree.leaves(a):
    assert float(leaf.min()) >= 0.0 and float(leaf.max()) < 1.0
  assert a["Conv_0"]["bias"] is None


def test_snip_against_grad(setup):
  model, variables, images, labels, mask = setup
  params = masks.apply_mask(variables["params"], mask)
  grads = jax.grad(lambda p: mean_ce(model, p, images, labels))(params)
  want = jax.tree.map(lambda w, g: jnp.abs(w * g), params, grads)
  got = baselines.snip_scores(model, variables, images, labels, mask)
  assert_prunable_close(got, want, mask, rtol=1e-12)
  assert bool(jnp.all(got["Dense_0"]["kernel"][~mask["Dense_0"]["kernel"]] == 0.0))


def test_obd_against_hessian_diagonal(setup):
  model, variables, images, labels, mask = setup
  params = masks.apply_mask(variables["params"], mask)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  hess = jax.hessian(lambda f: mean_ce(model, unravel(f), images, labels))(flat)
  # ReLU net: Hessian diagonal == GGN diagonal (design.md section 1).
  want = jax.tree.map(lambda w, h: 0.5 * w * w * h, params, unravel(jnp.diag(hess)))
  got = baselines.obd_scores(model, variables, images, labels, mask)
  assert_prunable_close(got, want, mask, rtol=1e-8, atol=1e-14)
  assert float(jnp.max(got["Dense_1"]["kernel"])) > 0.0


def test_accumulate_scores_sums_and_drops_padding(setup):
  model, variables, images, labels, mask = setup
  fn = lambda x, y: baselines.snip_scores(model, variables, x, y, mask)
  batches = [
    {"image": images[:5], "label": labels[:5]},
    {"image": images[5:], "label": labels[5:], "valid": np.array([True, False, True])},
  ]
  got = baselines.accumulate_scores(fn, batches)
  keep = np.array([5, 7])
  want = jax.tree.map(jnp.add, fn(images[:5], labels[:5]), fn(images[keep], labels[keep]))
  assert_prunable_close(got, want, mask, rtol=1e-12)
  with pytest.raises(ValueError):
    baselines.accumulate_scores(fn, [])


def test_scores_feed_shared_selection(setup):
  _, variables, _, _, mask = setup
  scores = baselines.magnitude_scores(variables["params"], mask)
  new = masks.prune_to_sparsity(scores, mask, 0.5, scope="layer")
  kernel = np.abs(np.asarray(variables["params"]["Conv_0"]["kernel"])).ravel()
  kept = np.asarray(new["Conv_0"]["kernel"]).ravel()
  assert kernel[kept].min() >= kernel[~kept].max()
