"""FairPrune saliency and group roles (design.md section 2)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import curvature, masks
from fairjax.pruning import fairprune


def test_saliency_matches_the_formula_and_prunes_privileged_weights_first():
  params = {"fc": {"kernel": jnp.array([[1.0, 2.0], [3.0, 0.5]]), "bias": jnp.zeros(2)}}
  # h[g] per weight: weight (0,0) matters only to the privileged group 0.
  diag = {
    "fc": {
      "kernel": jnp.array(
        [
          [[4.0, 1.0], [0.0, 2.0]],  # group 0 (privileged)
          [[0.0, 1.0], [1.0, 2.0]],
        ]
      ),  # group 1 (unprivileged)
      "bias": jnp.zeros((2, 2)),
    }
  }
  s = fairprune.saliency(params, diag, unprivileged=1, privileged=(0,), beta=0.5)
  theta = np.array([[1.0, 2.0], [3.0, 0.5]])
  h0 = np.array([[4.0, 1.0], [0.0, 2.0]])
  h1 = np.array([[0.0, 1.0], [1.0, 2.0]])
  np.testing.assert_allclose(s["fc"]["kernel"], 0.5 * theta**2 * (h1 - 0.5 * h0))
  mask = masks.prune_lowest(s, masks.init_mask(params), 1)
  assert not bool(mask["fc"]["kernel"][0, 0])  # the most negative saliency goes first
  assert int(np.sum(~np.asarray(mask["fc"]["kernel"]))) == 1


def test_group_roles_two_and_more_groups():
  assert fairprune.group_roles([0.9, 0.7]) == (1, (0,))
  assert fairprune.group_roles([0.6, 0.7]) == (0, (1,))
  assert fairprune.group_roles([0.9, 0.7], privileged=1) == (0, (1,))
  # Three groups: the worst group against the mean of all the others.
  assert fairprune.group_roles([0.8, 0.6, 0.9]) == (1, (0, 2))
  assert fairprune.group_roles([0.8, np.nan, 0.9]) == (0, (1, 2))  # NaN group never chosen
  with pytest.raises(ValueError, match="outside"):
    fairprune.group_roles([0.8, 0.9], privileged=2)
  with pytest.raises(ValueError, match="at least two"):
    fairprune.group_roles([0.8])


def test_saliency_with_three_groups_averages_the_privileged_side():
  params = {"w": jnp.array([2.0])}
  diag = {"w": jnp.array([[1.0], [3.0], [5.0]])}
  s = fairprune.saliency(params, diag, unprivileged=0, privileged=(1, 2), beta=1.0)
  np.testing.assert_allclose(s["w"], 0.5 * 4.0 * (1.0 - 4.0))


class _Tiny(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(3)(jax.nn.relu(nn.Dense(4)(x.reshape(x.shape[0], -1))))


def test_average_group_diag_weights_batches_by_counts_and_rejects_empty_groups():
  model = _Tiny()
  x = jax.random.normal(jax.random.key(0), (12, 2, 2, 1))
  y = jnp.arange(12) % 3
  g = jnp.array([0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1])
  v = model.init(jax.random.key(1), x)
  batches = [
    {"image": x[:5], "label": y[:5], "group": g[:5]},
    {"image": x[5:], "label": y[5:], "group": g[5:], "valid": jnp.array([True] * 6 + [False])},
  ]  # last row is padding
  avg, counts = fairprune.average_group_diag(model, v, batches, num_groups=2)
  keep = np.arange(11)
  ref = curvature.per_group_diag(model, v, x[keep], y[keep], g[keep], num_groups=2)
  np.testing.assert_array_equal(counts, [8, 3])  # the padded 12th row (group 1) is dropped
  for a, b in zip(jax.tree.leaves(avg), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
  with pytest.raises(ValueError, match=r"group\(s\) \[1\] had no samples"):
    fairprune.average_group_diag(
      model, v, [{"image": x, "label": y, "group": jnp.zeros(12, jnp.int32)}], num_groups=2
    )
