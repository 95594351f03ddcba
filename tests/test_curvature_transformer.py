"""Transformer layers on the curvature fast paths (design.md section 1.12), against a float64
explicit-Jacobian brute force and against the generic per-sample path."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import curvature
from tests.test_curvature import _brute_force_ggn as curvature_reference
from tests.test_curvature import _flat_groups

pytestmark = pytest.mark.usefixtures("float64")  # scoped float64 (tests/conftest.py)

NUM_CLASSES = 4
NUM_GROUPS = 3


class TinyViT(nn.Module):
  """Patch-embed conv, class token, learned position parameter, one pre-norm block
  (MultiHeadDotProductAttention + GELU MLP), final LayerNorm, Dense head on the class token."""

  dim: int = 8
  heads: int = 2

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.dim, (2, 2), strides=2, padding="VALID", name="patch")(x)
    n = x.shape[0]
    x = x.reshape(n, -1, self.dim)
    cls = self.param("cls", nn.initializers.normal(0.5), (1, 1, self.dim))
    x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, self.dim)), x], axis=1)
    x = x + self.param("pos", nn.initializers.normal(0.5), (1,) + x.shape[1:])
    h = nn.LayerNorm(name="ln1")(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, name="attn")(h, h)
    h = nn.LayerNorm(name="ln2")(x)
    x = x + nn.Dense(self.dim, name="fc2")(jax.nn.gelu(nn.Dense(2 * self.dim, name="fc1")(h)))
    x = nn.LayerNorm(name="norm")(x)
    return nn.Dense(NUM_CLASSES, name="head")(x[:, 0])


class OddAxes(nn.Module):
  """DenseGeneral over a non-trailing axis with multi-axis features, a Dense over two token
  axes, RMSNorm, a LayerNorm without bias, and a LayerNorm reducing two axes (generic)."""

  @nn.compact
  def __call__(self, x, train: bool = False):  # x [N, 4, 4, 2]
    x = nn.DenseGeneral((3, 2), axis=1, name="over_rows")(x)  # [N, 4, 2, 3, 2]
    x = jnp.tanh(x.reshape(x.shape[0], 4, 2, 6))
    x = nn.RMSNorm(name="rms")(x)
    x = nn.Dense(5, name="tokens2d")(x)  # tokens: 4 x 2 positions
    x = nn.LayerNorm(use_bias=False, name="ln_nobias")(jax.nn.gelu(x))
    x = nn.LayerNorm(reduction_axes=(-2, -1), name="ln_2axes")(x)  # scale over the last axis
    x = nn.DenseGeneral(NUM_CLASSES, axis=(1, 2, 3), name="head")(x)
    return x


MODELS = {"vit": TinyViT, "odd_axes": OddAxes}


@functools.lru_cache(maxsize=None)
def _setup(name, n=7):
  k1, k2 = jax.random.split(jax.random.key(0))
  shape = (n, 4, 4, 2)
  x = jax.random.normal(k1, shape, jnp.float64)
  y = jax.random.randint(k2, (n,), 0, NUM_CLASSES)
  g = jnp.array(([0, 1, 0, 2, 1, 0, 1] * 4)[:n])
  model = MODELS[name]()
  v = jax.jit(model.init)(jax.random.key(2), x)  # one program, not op-by-op dispatch
  # Non-trivial norm scales and biases (init is ones / zeros).
  rs = np.random.RandomState(3)
  v = jax.tree_util.tree_map_with_path(
    lambda p, a: (
      np.asarray(a) + 0.3 * rs.randn(*a.shape) if p[-1].key in ("scale", "bias") else np.asarray(a)
    ),
    v,
  )
  v = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), v)
  return model, v, x, y, g


def _flat(tree):
  """Leaves ``[G, ...]`` -> ``float[G, P]`` (tests/test_curvature.py's flattening)."""
  return _flat_groups(tree, NUM_GROUPS)


def _brute_force_ggn(model, v, x, g):
  """diag(J^T H J) per sample from an explicit Jacobian, averaged per group: ``[G, P]``
  (tests/test_curvature.py's reference; labels do not enter the GGN)."""
  return curvature_reference(model, v, x, None, g, NUM_GROUPS)


def _diag(name, monkeypatch=None, families=None, **kwargs):
  model, v, x, y, g = _setup(name)
  if families is None:
    return curvature.per_group_diag(model, v, x, y, g, num_groups=NUM_GROUPS, **kwargs)
  with monkeypatch.context() as m:
    m.setattr(curvature, "_FAST_FAMILIES", frozenset(families))
    return curvature.per_group_diag(model, v, x, y, g, num_groups=NUM_GROUPS, **kwargs)


def test_discover_layers_finds_attention_mlp_and_norms():
  model, v, x, _, _ = _setup("vit")
  specs = {s.key: s for s in curvature.discover_layers(model, v, x.shape[1:])}
  assert set(specs) == {
    "patch",
    "ln1",
    "attn/query",
    "attn/key",
    "attn/value",
    "attn/out",
    "ln2",
    "fc1",
    "fc2",
    "norm",
    "head",
  }
  assert specs["attn/query"].contract_axes == (2,)  # [1, T, D] -> [1, T, heads, head_dim]
  assert specs["attn/out"].contract_axes == (2, 3)  # [1, T, heads, head_dim] -> [1, T, D]
  assert specs["fc1"].in_shape == (1, 5, 8) and specs["ln1"].kind == "norm"
  # The class token and the position parameter stay on the generic path (section 1.12).
  families = curvature.discover_layers(model, v, x.shape[1:], families=("conv", "dense"))
  assert {s.key for s in families} == {"patch", "fc1", "fc2", "head"}

  model, v, x, _, _ = _setup("odd_axes")
  specs = {s.key: s for s in curvature.discover_layers(model, v, x.shape[1:])}
  assert set(specs) == {"over_rows", "rms", "tokens2d", "ln_nobias", "ln_2axes", "head"}
  assert specs["over_rows"].contract_axes == (1,) and specs["head"].contract_axes == (1, 2, 3)
  assert not specs["ln_nobias"].use_bias and not specs["rms"].use_bias


def test_shared_or_keyword_called_modules_stay_generic():
  class Shared(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      ln = nn.LayerNorm(name="ln")
      x = ln(jnp.tanh(ln(x)))
      x = nn.DenseGeneral(3, name="kw")(inputs=x)
      return nn.Dense(NUM_CLASSES, name="head")(x.reshape(x.shape[0], -1))

  model = Shared()
  x = jnp.ones((1, 3, 4))
  v = model.init(jax.random.key(0), x)
  assert [s.key for s in curvature.discover_layers(model, v, x.shape[1:])] == ["head"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_exact_matches_explicit_jacobian_and_generic_path(name, monkeypatch):
  model, v, x, y, g = _setup(name)
  ref = np.asarray(_brute_force_ggn(model, v, x, g))
  assert np.abs(ref).max() > 1e-3
  fast = _flat(_diag(name))
  np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
  generic = _flat(_diag(name, monkeypatch, families=()))
  np.testing.assert_allclose(fast, generic, rtol=1e-10, atol=1e-14)
  # Per-sample blocks forced down to one sample change nothing.
  chunked = _flat(_diag(name, max_block_elements=16))
  np.testing.assert_allclose(chunked, fast, rtol=1e-12, atol=1e-15)


def test_sampled_method_matches_generic_path(monkeypatch):
  kwargs = dict(method="mc", rng=jax.random.key(5), num_samples=3)
  fast = _flat(_diag("vit", **kwargs))
  generic = _flat(_diag("vit", monkeypatch, families=(), **kwargs))
  assert np.abs(fast).max() > 1e-4
  np.testing.assert_allclose(fast, generic, rtol=1e-10, atol=1e-14)
