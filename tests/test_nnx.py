"""Flax NNX models in the scorers (design.md section 1.11): an NNX CNN and the same network in
Linen, with the same weights, give the same per-group diagonals and the same scores."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from fairjax import curvature, masks, nnx_adapter
from fairjax.pruning import baselines, fairgrape, fairprune

pytestmark = pytest.mark.usefixtures("float64")  # scoped float64 (tests/conftest.py)

NUM_CLASSES = 4


def pool2(x):
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class NNXNet(nnx.Module):
  """conv -> BN -> relu -> pool -> strided conv -> relu -> Linear -> relu -> Linear."""

  def __init__(self, rngs: nnx.Rngs):
    f64 = dict(param_dtype=jnp.float64, rngs=rngs)
    self.conv0 = nnx.Conv(2, 3, (3, 3), padding="SAME", **f64)
    self.bn = nnx.BatchNorm(3, **f64)
    self.conv1 = nnx.Conv(3, 4, (2, 2), strides=2, padding="VALID", use_bias=False, **f64)
    self.head = nnx.List([nnx.Linear(16, 5, **f64), nnx.Linear(5, NUM_CLASSES, **f64)])

  def __call__(self, x):
    x = pool2(jax.nn.relu(self.bn(self.conv0(x))))
    x = jax.nn.relu(self.conv1(x)).reshape(x.shape[0], -1)
    return self.head[1](jax.nn.relu(self.head[0](x)))


class LinenNet(nn.Module):
  """The same network in Linen."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(3, (3, 3), padding="SAME", name="conv0")(x)
    x = pool2(jax.nn.relu(nn.BatchNorm(use_running_average=True, name="bn")(x)))
    x = nn.Conv(4, (2, 2), strides=2, padding="VALID", use_bias=False, name="conv1")(x)
    x = jax.nn.relu(x).reshape(x.shape[0], -1)
    x = jax.nn.relu(nn.Dense(5, name="fc0")(x))
    return nn.Dense(NUM_CLASSES, name="fc1")(x)


class TiedNet(nnx.Module):
  """The head's kernel is also read directly (weight tying): that layer must not be routed."""

  def __init__(self, rngs: nnx.Rngs):
    f64 = dict(param_dtype=jnp.float64, rngs=rngs)
    self.conv = nnx.Conv(2, 3, (3, 3), strides=2, **f64)
    self.head = nnx.Linear(48, NUM_CLASSES, **f64)

  def __call__(self, x):
    x = jnp.tanh(self.conv(x)).reshape(x.shape[0], -1)
    return self.head(x) + 0.5 * x @ self.head.kernel[...]


def to_linen_layout(tree):
  """NNX pure-dict layout -> LinenNet params layout (``head/i`` is ``fc{i}``)."""
  flat = traverse_util.flatten_dict(tree, keep_empty_nodes=True)
  return traverse_util.unflatten_dict(
    {(f"fc{p[1]}",) + p[2:] if p[0] == "head" else p: v for p, v in flat.items()}
  )


@pytest.fixture(scope="module")
def setup():
  model = NNXNet(nnx.Rngs(3))
  stats = jax.random.uniform(jax.random.key(7), (2, 3), jnp.float64)
  model.bn.mean.set_value(stats[0] - 0.5)  # non-trivial running statistics, float64
  model.bn.var.set_value(stats[1] + 0.5)
  model.eval()
  params = nnx_adapter.param_dict(model)
  variables = {
    "params": to_linen_layout(params),
    "batch_stats": {"bn": {"mean": model.bn.mean[...], "var": model.bn.var[...]}},
  }
  k1, k2 = jax.random.split(jax.random.key(0))
  x = jax.random.normal(k1, (7, 8, 8, 2), jnp.float64)
  y = jax.random.randint(k2, (7,), 0, NUM_CLASSES)
  g = jnp.array([0, 1, 0, 2, 1, 0, -1])
  return model, params, variables, x, y, g


def assert_same(nnx_tree, linen_tree, rtol=1e-10):
  got = traverse_util.flatten_dict(to_linen_layout(nnx_tree))
  want = traverse_util.flatten_dict(linen_tree)
  assert got.keys() == want.keys()
  for k in want:
    if want[k] is None:
      assert got[k] is None, k
    else:
      np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=1e-14, err_msg=str(k))


def test_same_function_and_routed_layers(setup):
  model, _, variables, x, _, _ = setup
  np.testing.assert_allclose(model(x), LinenNet().apply(variables, x), rtol=1e-12)
  linen, linen_vars, bridge = nnx_adapter.to_linen(model, None, x)
  # Every Conv/Linear reaches curvature's closed forms through its Linen twin.
  assert [s.key for s in curvature.discover_layers(linen, linen_vars, x.shape[1:])] == [
    "conv0",
    "conv1",
    "head.0",
    "head.1",
  ]
  assert set(linen_vars["params"]) == {"conv0", "conv1", "head.0", "head.1", "rest"}
  assert bridge.to_nnx(linen_vars["params"]).keys() == {"conv0", "bn", "conv1", "head"}


@pytest.mark.parametrize("method", ["exact", "mc"])
def test_per_group_diag_equals_linen(setup, method):
  model, _, variables, x, y, g = setup
  kw = dict(num_groups=3, method=method, rng=jax.random.key(5), num_samples=2)
  got, counts = curvature.per_group_diag(model, None, x, y, g, return_counts=True, **kw)
  want = curvature.per_group_diag(LinenNet(), variables, x, y, g, **kw)
  assert_same(got, want)
  np.testing.assert_array_equal(counts, [3, 2, 1])
  # The graph was not changed by the call, and a second call reuses the bridge.
  assert nnx_adapter.param_dict(model).keys() == got.keys()
  again = curvature.per_group_diag(model, None, x, y, g, **kw)
  jax.tree.map(np.testing.assert_array_equal, again, got)


def test_generic_path_and_tied_weights(setup, monkeypatch):
  model, _, _, x, y, g = setup
  tied = TiedNet(nnx.Rngs(1))
  _, _, bridge = nnx_adapter.to_linen(tied, None, x)
  assert [layer for _, layer, _, _ in bridge.routed] == [("conv",)]  # head is read directly
  fast = {m: curvature.per_group_diag(m, None, x, y, g, num_groups=3) for m in (model, tied)}
  monkeypatch.setattr(nnx_adapter, "_ROUTE_LAYERS", False)
  for m in (model, tied):
    assert nnx_adapter.to_linen(m, None, x)[2].routed == ()
    slow = curvature.per_group_diag(m, None, x, y, g, num_groups=3)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14), fast[m], slow
    )


def test_scores_equal_linen(setup):
  model, params, variables, x, y, g = setup
  mask = masks.init_mask(params)
  linen_mask = masks.init_mask(variables["params"])
  assert_same(mask, linen_mask)
  lin = LinenNet()
  assert_same(
    baselines.magnitude_scores(params, mask),
    baselines.magnitude_scores(variables["params"], linen_mask),
  )
  assert_same(
    baselines.snip_scores(model, None, x, y, mask),
    baselines.snip_scores(lin, variables, x, y, linen_mask),
  )
  assert_same(
    baselines.obd_scores(model, None, x, y, mask),
    baselines.obd_scores(lin, variables, x, y, linen_mask),
  )
  assert_same(
    fairgrape.group_importance(model, None, x, y, g, mask, num_groups=3),
    fairgrape.group_importance(lin, variables, x, y, g, linen_mask, num_groups=3),
  )
  # Two batches of one shape (one compilation each way); sample 3 is in both.
  batches = [
    {"image": x[:4], "label": y[:4], "group": g[:4]},
    {"image": x[3:], "label": y[3:], "group": g[3:]},
  ]
  diag, counts = fairprune.average_group_diag(model, None, batches, num_groups=3)
  want_diag, want_counts = fairprune.average_group_diag(lin, variables, batches, num_groups=3)
  np.testing.assert_array_equal(counts, want_counts)
  roles = dict(unprivileged=1, privileged=(0, 2), beta=0.5)
  assert_same(
    fairprune.saliency(params, diag, **roles),
    fairprune.saliency(variables["params"], want_diag, **roles),
  )


def test_bad_nnx_input(setup):
  model, _, variables, x, y, g = setup
  with pytest.raises(ValueError, match="variables=None"):
    curvature.per_group_diag(model, variables, x, y, g, num_groups=3)
  train = NNXNet(nnx.Rngs(0))  # BatchNorm on batch statistics
  with pytest.raises(ValueError, match=r"bn .*model.eval\(\)"):
    curvature.per_group_diag(train, None, x, y, g, num_groups=3)
