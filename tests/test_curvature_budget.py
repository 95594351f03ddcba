"""``per_group_diag(memory_budget_bytes=...)``: the chunk size from XLA's memory plan
(design.md section 1.12); exact results do not depend on it."""

import warnings

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import curvature

pytestmark = pytest.mark.usefixtures("float64")  # scoped float64 (tests/conftest.py)

N = 9
KWARGS = dict(
  num_groups=2,
  method="exact",
  num_samples=1,
  apply_kwargs=(),
  max_block=curvature.DEFAULT_MAX_BLOCK_ELEMENTS,
  grouped_convs=True,
  families=frozenset(curvature.FAST_FAMILIES),
  loss="softmax_cross_entropy",
)


class Net(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jax.nn.relu(nn.Conv(6, (3, 3))(x))
    x = nn.LayerNorm()(nn.Conv(4, (3, 3), strides=2)(x))
    return nn.Dense(3)(jnp.tanh(x).reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def setup():
  k1, k2 = jax.random.split(jax.random.key(0))
  x = jax.random.normal(k1, (N, 8, 8, 2), jnp.float64)
  y = jax.random.randint(k2, (N,), 0, 3)
  g = jnp.array([0, 1, 1, 0, 1, 0, 0, 1, -1])
  model = Net()
  v = jax.tree.map(lambda a: a.astype(jnp.float64), jax.jit(model.init)(jax.random.key(1), x))
  return model, v, x, y, g


def _flat(tree):
  return np.asarray(jax.flatten_util.ravel_pytree(tree)[0])


def _chunk(setup, budget):
  model, v, x, y, g = setup
  return curvature.budget_chunk_size(v, x, y, g, None, budget, KWARGS, model)


def test_budget_picks_a_chunk_whose_plan_fits_and_results_do_not_change(setup):
  model, v, x, y, g = setup
  whole = _flat(curvature.per_group_diag(model, v, x, y, g, num_groups=2))
  one_chunk, (size, exe) = _chunk(setup, 1 << 40)
  assert one_chunk == size == N  # a huge budget: the whole batch, its own executable
  full_plan = curvature._plan_bytes(exe)
  out = exe.memory_analysis().output_size_in_bytes
  chunks = []
  for fraction in (0.3, 0.6):
    budget = int(fraction * full_plan)
    chunk, compiled = _chunk(setup, budget)
    assert 1 <= chunk < N
    if compiled is not None and chunk > 1:  # the checked plan of the chosen chunk fits
      assert compiled[0] == chunk
      assert curvature._plan_bytes(compiled[1]) + out <= budget
    got = _flat(
      curvature.per_group_diag(model, v, x, y, g, num_groups=2, memory_budget_bytes=budget)
    )
    np.testing.assert_allclose(got, whole, rtol=1e-12, atol=1e-15)
    chunks.append(chunk)
  assert chunks[0] <= chunks[1]
  # With chunk_size as well the smaller one wins; the result is still the same.
  got = _flat(
    curvature.per_group_diag(
      model, v, x, y, g, num_groups=2, chunk_size=2, memory_budget_bytes=1 << 40
    )
  )
  np.testing.assert_allclose(got, whole, rtol=1e-12, atol=1e-15)


def test_budget_below_one_sample_warns_and_uses_one_sample_chunks(setup):
  model, v, x, y, g = setup
  with pytest.warns(UserWarning, match="below the plan of a one-sample chunk"):
    assert _chunk(setup, 1000)[0] == 1


def test_no_memory_plan_falls_back_to_the_whole_batch(setup, monkeypatch):
  model, v, x, y, g = setup
  monkeypatch.setattr(curvature, "_plan_bytes", lambda compiled: None)
  with pytest.warns(UserWarning, match="no memory plan"):
    assert _chunk(setup, 12345) == (N, None)


def test_budget_rejects_bad_values_and_outer_jit(setup):
  model, v, x, y, g = setup
  with pytest.raises(ValueError, match="memory_budget_bytes must be an integer >= 0"):
    curvature.per_group_diag(model, v, x, y, g, num_groups=2, memory_budget_bytes=-5)
  with pytest.raises(ValueError, match="eager"):
    jax.jit(
      lambda xx: curvature.per_group_diag(
        model, v, xx, y, g, num_groups=2, memory_budget_bytes=1 << 30
      )
    )(x)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # 0 = off: no plan, no warning
    curvature.per_group_diag(model, v, x, y, g, num_groups=2, memory_budget_bytes=0)


def test_scorers_pass_the_budget_on(setup):
  """FairPrune's average and OBD (where prune.curvature_memory_budget_bytes goes) give the same
  result with a budget that forces several chunks."""
  from fairjax import masks
  from fairjax.pruning import baselines, builtin, fairprune

  model, v, x, y, g = setup
  # 0.3 of the whole batch's plan: the budget the first test already planned (a cached search).
  budget = int(0.3 * curvature._plan_bytes(_chunk(setup, 1 << 40)[1][1]))
  assert _chunk(setup, budget)[0] < N
  batches = [{"image": x, "label": y, "group": g}]
  want, _ = fairprune.average_group_diag(model, v, batches, num_groups=2)
  got, _ = fairprune.average_group_diag(model, v, batches, num_groups=2, memory_budget_bytes=budget)
  np.testing.assert_allclose(_flat(got), _flat(want), rtol=1e-12, atol=1e-15)
  mask = masks.init_mask(v["params"])
  want = baselines.obd_scores(model, v, x, y, mask)
  got = baselines.obd_scores(model, v, x, y, mask, memory_budget_bytes=budget)
  np.testing.assert_allclose(_flat(got), _flat(want), rtol=1e-12, atol=1e-15)

  class Config(dict):
    __getattr__ = dict.__getitem__

  prune = Config(curvature_memory_budget_bytes=0)
  assert builtin.memory_budget(Config(prune=prune)) == 0  # off
  prune["curvature_memory_budget_bytes"] = budget
  assert builtin.memory_budget(Config(prune=prune)) == budget
  # The config's default is per_group_diag's own default (None), as is a config without the key.
  from fairjax import config as config_lib

  default = config_lib.base_config().prune.curvature_memory_budget_bytes
  assert default == curvature.DEFAULT_MEMORY_BUDGET_BYTES
  prune["curvature_memory_budget_bytes"] = default
  assert builtin.memory_budget(Config(prune=prune)) is None
  assert builtin.memory_budget(Config(prune=Config())) is None


def test_default_budget_applies_to_eager_calls_without_a_chunk_size(setup, monkeypatch):
  """``memory_budget_bytes=None`` is DEFAULT_MEMORY_BUDGET_BYTES for an eager call on one
  device without chunk_size, and no budget under an outer jit or with a chunk_size."""
  model, v, x, y, g = setup
  whole = _flat(curvature.per_group_diag(model, v, x, y, g, num_groups=2, memory_budget_bytes=0))
  budget = int(0.4 * curvature._plan_bytes(_chunk(setup, 1 << 40)[1][1]))
  monkeypatch.setattr(curvature, "DEFAULT_MEMORY_BUDGET_BYTES", budget)
  seen = []
  real = curvature.budget_chunk_size
  monkeypatch.setattr(curvature, "budget_chunk_size", lambda *a: seen.append(a[5]) or real(*a))
  got = _flat(curvature.per_group_diag(model, v, x, y, g, num_groups=2))
  assert seen == [budget] and real(v, x, y, g, None, budget, KWARGS, model)[0] < N
  np.testing.assert_allclose(got, whole, rtol=1e-12, atol=1e-15)
  # A chunk size of the caller's own, or an outer jit: the default stays out of the way.
  got = _flat(curvature.per_group_diag(model, v, x, y, g, num_groups=2, chunk_size=4))
  np.testing.assert_allclose(got, whole, rtol=1e-12, atol=1e-15)
  got = jax.jit(lambda xx: curvature.per_group_diag(model, v, xx, y, g, num_groups=2))(x)
  np.testing.assert_allclose(_flat(got), whole, rtol=1e-12, atol=1e-15)
  # Traced variables with a concrete batch are under an outer jit too.
  got = jax.jit(lambda vv: curvature.per_group_diag(model, vv, x, y, g, num_groups=2))(v)
  np.testing.assert_allclose(_flat(got), whole, rtol=1e-12, atol=1e-15)
  assert seen == [budget]
  with pytest.raises(ValueError, match="eager"):
    jax.jit(
      lambda vv: curvature.per_group_diag(
        model, vv, x, y, g, num_groups=2, memory_budget_bytes=1 << 30
      )
    )(v)
