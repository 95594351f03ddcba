"""Per-group curvature against brute force in float64 (design.md section 1)."""

import functools
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import curvature

pytestmark = pytest.mark.usefixtures("float64")  # scoped float64 (tests/conftest.py)

NUM_CLASSES = 4


def pool2(x):
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class TinyNet(nn.Module):
  """conv -> (BN) -> act -> pool -> strided conv -> act -> dense -> act -> dense."""

  act: str = "relu"
  bn: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    f = jax.nn.relu if self.act == "relu" else jnp.tanh
    x = nn.Conv(3, (3, 3), padding="SAME")(x)
    if self.bn:
      x = nn.BatchNorm(use_running_average=not train)(x)
    x = pool2(f(x))
    x = nn.Conv(4, (2, 2), strides=2, padding="VALID", use_bias=False)(x)
    x = f(x).reshape(x.shape[0], -1)
    x = f(nn.Dense(5)(x))
    return nn.Dense(NUM_CLASSES)(x)


class OddNet(nn.Module):
  """Everything the fast path does NOT recognise (shared Dense, custom param, circular conv,
  a Dense over an extra axis) next to layers it does (a grouped conv, a dilated conv with
  explicit padding). All must still be exact."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), padding="CIRCULAR")(x)
    x = jax.nn.relu(nn.Conv(4, (3, 3), feature_group_count=2, padding=1)(x))
    x = nn.Conv(3, (3, 3), kernel_dilation=2, strides=(1, 2), padding=((2, 1), (0, 1)))(x)
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    x = x * scale
    x = nn.Dense(2)(x)  # acts on [B, H, W, C]: per-position, not the a^2 x d^2 identity
    x = x.reshape(x.shape[0], -1)
    shared = nn.Dense(x.shape[-1], name="shared")
    x = shared(jnp.tanh(shared(x)))
    return nn.Dense(NUM_CLASSES)(x)


def _batch(n=7, size=8, seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(k1, (n, size, size, 2), jnp.float64)
  y = jax.random.randint(k2, (n,), 0, NUM_CLASSES)
  g = jnp.array(([0, 1, 0, 2, 1, 0, 1] * 4)[:n])
  return x, y, g


def _init(model, x, seed=2):
  v = model.init(jax.random.key(seed), x)
  v = jax.tree.map(lambda a: a.astype(jnp.float64), v)
  if "batch_stats" in v:  # non-trivial running statistics
    v["batch_stats"] = jax.tree.map(
      lambda a: a + 0.3 * jax.random.uniform(jax.random.key(7), a.shape, a.dtype), v["batch_stats"]
    )
  return v


def _flat_groups(tree, num_groups):
  """Leaves ``[G, ...]`` -> ``float[G, P]`` in ravel_pytree's order (the leaves in tree order,
  each raveled row-major), in numpy: no per-group slice programs."""
  return np.concatenate([np.asarray(a).reshape(num_groups, -1) for a in jax.tree.leaves(tree)], 1)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _brute_force_ggn(model, v, x, y, g, num_groups):
  """diag(J^T H J) per sample from an explicit Jacobian, averaged per group."""
  flat, unravel = jax.flatten_util.ravel_pytree(v["params"])

  def logits(theta, xi):
    return model.apply({**v, "params": unravel(theta)}, xi[None])[0]

  jac = jax.vmap(jax.jacobian(logits), in_axes=(None, 0))(flat, x)  # [N, C, P]
  p = jax.nn.softmax(jax.vmap(logits, in_axes=(None, 0))(flat, x))
  hess = jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]
  per_sample = jnp.einsum("nci,ncd,ndi->ni", jac, hess, jac)
  onehot = jax.nn.one_hot(g, num_groups, dtype=per_sample.dtype)
  return (onehot / jnp.maximum(onehot.sum(0), 1)).T @ per_sample


@functools.partial(jax.jit, static_argnums=(0, 5))
def _hessian_diag(model, v, x, y, g, num_groups):
  flat, unravel = jax.flatten_util.ravel_pytree(v["params"])

  def group_loss(theta, gg):
    lg = model.apply({**v, "params": unravel(theta)}, x)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(lg), y[:, None], 1)[:, 0]
    w = (g == gg) / jnp.maximum((g == gg).sum(), 1)
    return jnp.sum(w * nll)

  return jnp.stack([jnp.diag(jax.hessian(group_loss)(flat, gg)) for gg in range(num_groups)])


@pytest.mark.parametrize("bn", [False, True])
def test_exact_matches_explicit_jacobian(bn):
  x, y, g = _batch()
  model = TinyNet(bn=bn)
  v = _init(model, x)
  specs = curvature.discover_layers(model, v, x.shape[1:])
  assert [s.kind for s in specs] == ["conv", "conv", "dense", "dense"]
  diag, counts = curvature.per_group_diag(model, v, x, y, g, num_groups=3, return_counts=True)
  np.testing.assert_array_equal(counts, [3, 3, 1])
  ref = _brute_force_ggn(model, v, x, y, g, 3)
  got = _flat_groups(diag, 3)
  assert np.abs(ref).max() > 1e-3
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10)


def test_generic_path_is_exact_for_unrecognised_layers():
  x, y, g = _batch(size=6)
  model = OddNet()
  v = _init(model, x)
  specs = curvature.discover_layers(model, v, x.shape[1:])
  fast = {s.path for s in specs}
  # circular padding, shared weights and the per-position Dense are not fast; the grouped
  # conv, the dilated conv with explicit padding and the head are.
  assert ("Conv_0",) not in fast and ("shared",) not in fast
  assert ("Conv_1",) in fast and ("Conv_2",) in fast and ("Dense_1",) in fast
  ref = _brute_force_ggn(model, v, x, y, g, 3)
  got = _flat_groups(curvature.per_group_diag(model, v, x, y, g, num_groups=3), 3)
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10)


def test_dense_over_extra_axis_uses_chunked_per_sample_path():
  x, y, g = _batch(size=6)

  class PerPosition(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = jax.nn.relu(nn.Dense(3)(x))  # [B, H, W, 3]: sums over positions inside the square
      return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))

  model = PerPosition()
  v = _init(model, x)
  assert len(curvature.discover_layers(model, v, x.shape[1:])) == 2
  ref = _brute_force_ggn(model, v, x, y, g, 3)
  got = _flat_groups(
    curvature.per_group_diag(model, v, x, y, g, num_groups=3, max_block_elements=64), 3
  )
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10)


def test_ggn_equals_hessian_diag_for_relu_maxpool_but_not_tanh():
  x, y, g = _batch()
  relu = TinyNet(act="relu")
  v = _init(relu, x)
  ggn = _flat_groups(curvature.per_group_diag(relu, v, x, y, g, num_groups=3), 3)
  np.testing.assert_allclose(ggn, _hessian_diag(relu, v, x, y, g, 3), rtol=0, atol=1e-10)

  tanh = TinyNet(act="tanh")
  v = _init(tanh, x)
  ggn = _flat_groups(curvature.per_group_diag(tanh, v, x, y, g, num_groups=3), 3)
  hess = _hessian_diag(tanh, v, x, y, g, 3)
  # For tanh the residual term sum_c dl/dz_c d2z_c/dtheta2 does not vanish.
  assert np.linalg.norm(ggn - hess) / np.linalg.norm(hess) > 0.05


@pytest.mark.parametrize("num_classes", [2, 3, 6])
def test_loss_hessian_factor(num_classes):
  logits = jax.random.normal(jax.random.key(0), (9, num_classes), jnp.float64) * 3
  logits = logits.at[0].set(jnp.array([40.0] + [0.0] * (num_classes - 1)))  # near one-hot
  f = curvature.loss_hessian_factor(logits)
  assert f.shape == (9, num_classes, num_classes - 1)
  p = jax.nn.softmax(logits)
  h = jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]
  np.testing.assert_allclose(f @ jnp.swapaxes(f, 1, 2), h, atol=1e-14)
  assert np.all(np.isfinite(f))


def test_groups_are_separated_and_empty_groups_are_zero():
  x, y, g = _batch(n=9)
  model = TinyNet()
  v = _init(model, x)
  full = curvature.per_group_diag(model, v, x, y, g, num_groups=4)  # group 3 is empty
  assert all(np.all(np.asarray(leaf[3]) == 0) for leaf in jax.tree.leaves(full))
  assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(full))

  # Permute and drop samples of the other groups: group 1 is unchanged.
  keep = np.array([i for i in range(9) if g[i] == 1] + [i for i in range(9) if g[i] == 0][:1])
  perm = np.random.default_rng(0).permutation(keep)
  sub = curvature.per_group_diag(model, v, x[perm], y[perm], g[perm], num_groups=4)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(sub)):
    np.testing.assert_allclose(a[1], b[1], rtol=1e-12, atol=1e-15)

  # Unknown group ids (-1) contribute nowhere.
  g_unknown = g.at[0].set(-1)
  with_unknown, counts = curvature.per_group_diag(
    model, v, x, y, g_unknown, num_groups=4, return_counts=True
  )
  assert int(counts.sum()) == 8


def test_chunking_and_jit_do_not_change_the_result():
  x, y, g = _batch(n=7)
  model = TinyNet(bn=True)
  v = _init(model, x)
  ref = curvature.per_group_diag(model, v, x, y, g, num_groups=3)
  chunked = curvature.per_group_diag(
    model, v, x, y, g, num_groups=3, chunk_size=3, max_block_elements=100
  )
  jitted = jax.jit(curvature.per_group_diag, static_argnames=("model", "num_groups", "method"))(
    model, v, x, y, g, num_groups=3, method="exact"
  )
  # Under jit the chunks are traced into one program (in-graph chunking path).
  jitted_chunked = jax.jit(
    functools.partial(curvature.per_group_diag, chunk_size=3),
    static_argnames=("model", "num_groups"),
  )(model, v, x, y, g, num_groups=3)
  for a, b, c, d in zip(
    jax.tree.leaves(ref),
    jax.tree.leaves(chunked),
    jax.tree.leaves(jitted),
    jax.tree.leaves(jitted_chunked),
  ):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(a, d, rtol=1e-12, atol=1e-16)


def test_empirical_fisher_is_squared_gradient_at_true_labels():
  x, y, g = _batch()
  model = TinyNet()
  v = _init(model, x)
  flat, unravel = jax.flatten_util.ravel_pytree(v["params"])

  def nll(theta, xi, yi):
    lg = model.apply({"params": unravel(theta)}, xi[None])[0]
    return -jax.nn.log_softmax(lg)[yi]

  per_sample = np.asarray(jax.vmap(jax.grad(nll), in_axes=(None, 0, 0))(flat, x, y)) ** 2
  ref = np.stack([per_sample[np.asarray(g) == gg].mean(0) for gg in range(3)])
  got = _flat_groups(
    curvature.per_group_diag(model, v, x, y, g, num_groups=3, method="empirical_fisher"), 3
  )
  np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-14)


def _draws(model, v, x, y, g, method, num, num_samples=1):
  """``num`` independent estimates: ``float[num, G, P]``.

  A loop of eager calls, not a vmap over keys: every count of draws then runs the one compiled
  program of (method, num_samples), which the unbiasedness and the error-shrinking tests share
  (a program vmapped over keys also compiles 2x slower). The results are flattened in numpy:
  indexing the device arrays draw by draw compiles a slice per draw and leaf (so would iterating
  over the key array; its raw numpy data is wrapped back one key at a time instead)."""
  key_data = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(123), num)))
  draws = []
  for data in key_data:
    est = curvature.per_group_diag(
      model,
      v,
      x,
      y,
      g,
      num_groups=3,
      method=method,
      rng=jax.random.wrap_key_data(data),
      num_samples=num_samples,
    )
    draws.append(_flat_groups(est, 3))
  return np.stack(draws)


@pytest.mark.parametrize("method,target", [("mc", "ggn"), ("hutchinson", "hessian")])
def test_estimators_are_unbiased(method, target):
  x, y, g = _batch(n=7, size=4)
  model = TinyNet()
  v = _init(model, x)
  exact = (
    _brute_force_ggn(model, v, x, y, g, 3)
    if target == "ggn"
    else _hessian_diag(model, v, x, y, g, 3)
  )
  draws = _draws(model, v, x, y, g, method, num=300)
  mean = draws.mean(0)
  stderr = draws.std(0, ddof=1) / np.sqrt(draws.shape[0])
  z = (mean - exact) / np.maximum(stderr, 1e-12)
  varying = stderr > 1e-10
  # Unbiased: standardised errors look like N(0, 1) (a biased estimator fails this).
  assert np.mean(np.abs(z[varying]) < 3) > 0.97
  assert abs(np.mean(z[varying])) < 0.3
  # Exact where the estimator has no variance at all.
  np.testing.assert_allclose(mean[~varying], exact[~varying], atol=1e-10)


def test_estimator_error_shrinks_with_samples(monkeypatch):
  # 16 Hutchinson probes in blocks of 3 compiled probes (3, 3, 3, 3, 3, 1) instead of the
  # default blocks of 8: the same estimator (the mean of 16 probes), but the program unrolls 3
  # probes, not 8 (compiling it was most of this test), the last block re-uses the one-probe
  # program, and the unequal blocks' weighting is exercised as well.
  monkeypatch.setattr(curvature, "_PROBES_PER_CALL", 3)
  x, y, g = _batch(n=7, size=4)
  model = TinyNet()
  v = _init(model, x)
  exact = _brute_force_ggn(model, v, x, y, g, 3)

  def rel_err(method, k):
    d = _draws(model, v, x, y, g, method, num=6, num_samples=k)
    return np.mean([np.linalg.norm(di - exact) / np.linalg.norm(exact) for di in d])

  mc1, mc16 = rel_err("mc", 1), rel_err("mc", 16)
  assert mc16 < 0.5 * mc1  # ~1/sqrt(16) = 0.25 in expectation
  h1, h16 = rel_err("hutchinson", 1), rel_err("hutchinson", 16)
  assert h16 < 0.5 * h1
  assert h1 > mc1  # Hutchinson is far noisier than MC at equal sample counts


def test_bad_arguments_are_rejected():
  x, y, g = _batch()
  model = TinyNet()
  v = _init(model, x)
  with pytest.raises(ValueError, match="method"):
    curvature.per_group_diag(model, v, x, y, g, num_groups=3, method="diag_hessian")
  with pytest.raises(ValueError, match="rng"):
    curvature.per_group_diag(model, v, x, y, g, num_groups=3, method="mc")
  with pytest.raises(ValueError, match="leading batch"):
    curvature.per_group_diag(model, v, x, y[:3], g, num_groups=3)


def test_weighted_group_mean_equals_union_of_batches():
  x, y, _ = _batch(n=14)
  # Two parts of 7, the batch shape the other tests compile, with unequal group counts (3, 3, 1)
  # and (1, 2, 4), so that an unweighted mean of the parts would differ.
  g = jnp.array([0, 1, 0, 2, 1, 0, 1, 2, 1, 2, 0, 2, 1, 2])
  model = TinyNet()
  v = _init(model, x)
  whole = curvature.per_group_diag(model, v, x, y, g, num_groups=3)
  parts = [
    curvature.per_group_diag(model, v, x[s], y[s], g[s], num_groups=3, return_counts=True)
    for s in (slice(0, 7), slice(7, 14))
  ]
  np.testing.assert_array_equal(parts[1][1], [1, 2, 4])
  combined = curvature.weighted_group_mean([p[0] for p in parts], [p[1] for p in parts])
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(combined)):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-15)


def test_sharded_batch_gives_the_same_result():
  """8 host devices in a subprocess (the flag must be set before jax starts)."""
  code = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from fairjax import curvature
      jax.config.update("jax_enable_x64", True)
      assert jax.device_count() == 8
      class Net(nn.Module):
          @nn.compact
          def __call__(self, x, train=False):
              x = jax.nn.relu(nn.Conv(4, (3, 3))(x)).reshape(x.shape[0], -1)
              return nn.Dense(3)(x)
      m = Net()
      x = jax.random.normal(jax.random.key(0), (16, 6, 6, 2), jnp.float64)
      y = jnp.arange(16) % 3
      g = (jnp.arange(16) % 5 == 0).astype(jnp.int32)
      v = jax.tree.map(lambda a: a.astype(jnp.float64), m.init(jax.random.key(1), x))
      ref = curvature.per_group_diag(m, v, x, y, g, num_groups=2)
      mesh = Mesh(np.array(jax.devices()), ("data",))
      shard = NamedSharding(mesh, P("data"))
      xs, ys, gs = (jax.device_put(a, shard) for a in (x, y, g))
      vs = jax.device_put(v, NamedSharding(mesh, P()))
      out = curvature.per_group_diag(m, vs, xs, ys, gs, num_groups=2)
      for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(out)):
          np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
      print("SHARDED_OK")
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  res = subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
  )
  assert "SHARDED_OK" in res.stdout, res.stderr[-3000:]
