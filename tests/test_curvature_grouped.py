"""Grouped and depthwise convs on the curvature fast path, against brute force in float64."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import curvature
from tests.test_curvature import _brute_force_ggn as curvature_reference
from tests.test_curvature import _flat_groups

NUM_CLASSES = 4
NUM_GROUPS = 3


@pytest.fixture(autouse=True)
def x64():
  # Scoped float64: leaves the process-wide setting alone for other test modules.
  with jax.enable_x64(True):
    yield


class InvertedResidual(nn.Module):
  """MobileNetV2 block: 1x1 expand + BN + ReLU6, 3x3 depthwise + BN + ReLU6, 1x1 project + BN."""

  features: int
  expand: int
  stride: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = functools.partial(nn.BatchNorm, use_running_average=not train)
    hidden = x.shape[-1] * self.expand
    h = jax.nn.relu6(bn()(nn.Conv(hidden, (1, 1), use_bias=False)(x)))
    # Explicit padding as in MobileNetV2 ports: symmetric for stride 1, (0, 1) for stride 2.
    pad = ((1, 1), (1, 1)) if self.stride == 1 else ((0, 1), (0, 1))
    h = nn.Conv(
      hidden, (3, 3), strides=self.stride, padding=pad, feature_group_count=hidden, use_bias=False
    )(h)
    h = jax.nn.relu6(bn()(h))
    h = bn()(nn.Conv(self.features, (1, 1), use_bias=False)(h))
    if self.stride == 1 and self.features == x.shape[-1]:
      h = h + x
    return h


class TinyMobileNet(nn.Module):
  """Stride-1 residual block, stride-2 block, global average pool, Dense head."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = InvertedResidual(features=x.shape[-1], expand=3, stride=1)(x, train)
    x = InvertedResidual(features=5, expand=2, stride=2)(x, train)
    return nn.Dense(NUM_CLASSES)(jnp.mean(x, axis=(1, 2)))


class GroupedNet(nn.Module):
  """Feature groups with several input channels each, depthwise with a channel multiplier and
  a depthwise conv with input dilation (im2col-patches branch)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    # 4 -> 8 channels, G = 2: 2 input channels per group, channel multiplier 2.
    x = jax.nn.relu(nn.Conv(8, (3, 3), feature_group_count=2, padding=1)(x))
    # Depthwise with multiplier 2 (8 -> 16), stride 2, asymmetric padding.
    x = jnp.tanh(nn.Conv(16, (3, 3), strides=2, feature_group_count=8, padding=((1, 0), (0, 1)))(x))
    x = jnp.tanh(
      nn.Conv(16, (2, 2), feature_group_count=16, input_dilation=2, padding=1, use_bias=False)(x)
    )
    return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))


MODELS = {"mobilenet_block": (TinyMobileNet, 4), "grouped": (GroupedNet, 4)}


@functools.lru_cache(maxsize=None)  # one model and batch per configuration for the module
def _setup(name, n=7, size=6):
  cls, channels = MODELS[name]
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k1, (n, size, size, channels), jnp.float64)
  y = jax.random.randint(k2, (n,), 0, NUM_CLASSES)
  g = jnp.array(([0, 1, 0, 2, 1, 0, 1] * 4)[:n])
  model = cls()
  v = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.key(2), x))
  if "batch_stats" in v:  # non-trivial running statistics, so BN is not the identity
    v["batch_stats"] = jax.tree.map(
      lambda a: a + 0.3 * jax.random.uniform(k3, a.shape, a.dtype), v["batch_stats"]
    )
  return model, v, x, y, g


def _flat(tree):
  """Leaves ``[G, ...]`` -> ``float[G, P]`` (tests/test_curvature.py's flattening)."""
  return _flat_groups(tree, NUM_GROUPS)


def _brute_force_ggn(model, v, x, g):
  """diag(J^T H J) per sample from an explicit Jacobian, averaged per group: ``[G, P]``
  (tests/test_curvature.py's reference; labels do not enter the GGN)."""
  return np.asarray(curvature_reference(model, v, x, None, g, NUM_GROUPS))


def _grouped_conv_paths(model, v, x):
  return {
    s.path: s.feature_group_count
    for s in curvature.discover_layers(model, v, x.shape[1:])
    if s.kind == "conv" and s.feature_group_count > 1
  }


def _generic(monkeypatch, fn):
  """Runs ``fn`` with grouped convs forced onto the generic path (and proves they are)."""

  def refuse(*args, **kwargs):
    raise AssertionError("grouped conv took the fast path with the switch off")

  with monkeypatch.context() as m:
    m.setattr(curvature, "_FAST_GROUPED_CONVS", False)
    m.setattr(curvature, "_grouped_conv_kernel_diag", refuse)
    return fn()


def test_discover_layers_reports_grouped_convs_as_fast():
  model, v, x, _, _ = _setup("mobilenet_block")
  specs = curvature.discover_layers(model, v, x.shape[1:])
  # Every conv and the head: 3 convs per block, none left to the generic path.
  assert [s.kind for s in specs] == ["conv"] * 6 + ["dense"]
  assert _grouped_conv_paths(model, v, x) == {
    ("InvertedResidual_0", "Conv_1"): 12,
    ("InvertedResidual_1", "Conv_1"): 8,
  }
  depthwise = [s for s in specs if s.feature_group_count > 1]
  assert [s.strides for s in depthwise] == [(1, 1), (2, 2)]
  assert [s.padding for s in depthwise] == [((1, 1), (1, 1)), ((0, 1), (0, 1))]

  model, v, x, _, _ = _setup("grouped")
  assert _grouped_conv_paths(model, v, x) == {("Conv_0",): 2, ("Conv_1",): 8, ("Conv_2",): 16}
  # The private switch leaves exactly the grouped convs to the generic path.
  plain = curvature.discover_layers(model, v, x.shape[1:], grouped_convs=False)
  assert [s.key for s in plain] == ["Dense_0"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exact_matches_explicit_jacobian_and_generic_path(name, monkeypatch):
  model, v, x, y, g = _setup(name)
  ref = _brute_force_ggn(model, v, x, g)
  assert np.abs(ref).max() > 1e-3
  fast = _flat(curvature.per_group_diag(model, v, x, y, g, num_groups=NUM_GROUPS))
  np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-10)
  generic = _flat(
    _generic(
      monkeypatch, lambda: curvature.per_group_diag(model, v, x, y, g, num_groups=NUM_GROUPS)
    )
  )
  np.testing.assert_allclose(fast, generic, rtol=1e-12, atol=1e-15)
  # Chunked per-sample blocks (max_block_elements forces one sample per block) change nothing.
  chunked = _flat(
    curvature.per_group_diag(model, v, x, y, g, num_groups=NUM_GROUPS, max_block_elements=16)
  )
  np.testing.assert_allclose(chunked, fast, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("method", ["mc", "empirical_fisher"])
def test_sampled_methods_match_generic_path(name, method, monkeypatch):
  model, v, x, y, g = _setup(name)
  kwargs = dict(num_groups=NUM_GROUPS, method=method, rng=jax.random.key(5), num_samples=3)
  fast = _flat(curvature.per_group_diag(model, v, x, y, g, **kwargs))
  generic = _flat(
    _generic(monkeypatch, lambda: curvature.per_group_diag(model, v, x, y, g, **kwargs))
  )
  assert np.abs(fast).max() > 1e-4
  np.testing.assert_allclose(fast, generic, rtol=1e-12, atol=1e-15)


def test_mc_is_unbiased_on_depthwise_block():
  model, v, x, y, g = _setup("mobilenet_block", size=4)
  exact = _brute_force_ggn(model, v, x, g)
  # A loop of eager calls of one compiled program, flattened in numpy: a vmap over keys compiles
  # a 2x slower program, and indexing its device output draw by draw compiles a slice per draw.
  key_data = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(123), 200)))
  draws = []
  for data in key_data:
    est = curvature.per_group_diag(
      model, v, x, y, g, num_groups=NUM_GROUPS, method="mc", rng=jax.random.wrap_key_data(data)
    )
    draws.append(_flat(est))
  draws = np.stack(draws)
  mean = draws.mean(0)
  stderr = draws.std(0, ddof=1) / np.sqrt(len(draws))
  varying = stderr > 1e-10
  z = (mean[varying] - exact[varying]) / stderr[varying]
  assert np.mean(np.abs(z) < 3) > 0.97
  assert abs(np.mean(z)) < 0.3
  np.testing.assert_allclose(mean[~varying], exact[~varying], atol=1e-10)
