"""Convs on maps smaller than their kernel: the curvature pass's explicit-patches path.

design.md section 1.7: inside ``per_group_diag`` a conv whose input map has fewer positions than
its kernel has taps is evaluated as patches @ kernel instead of XLA's conv. The result must equal
the conv path (``curvature._IM2COL_TINY_MAPS = False``) in float64, for a 2x2 map (every tap sees
data) and a 1x1 map (8 of 9 taps see only padding), with and without bias.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import curvature

pytestmark = pytest.mark.usefixtures("float64")


class TinyMaps(nn.Module):
  """3x3 -> 2x2 VALID conv (4 positions = 4 taps: XLA's conv) -> 2x2 conv -> pool -> 1x1 conv."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(3, (2, 2), padding="VALID", name="conv0")(x))
    x = nn.relu(nn.Conv(4, (3, 3), padding="SAME", name="conv1")(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(5, (3, 3), padding="SAME", use_bias=False, name="conv2")(x))
    return nn.Dense(3, name="fc")(x.reshape(x.shape[0], -1))


def _diag(model, variables, images, labels, groups, tiny_maps, monkeypatch):
  """The exact diagonal and the number of convolutions in its lowered program."""
  with monkeypatch.context() as m:
    m.setattr(curvature, "_IM2COL_TINY_MAPS", tiny_maps)
    lowered = jax.jit(
      lambda v: curvature.per_group_diag(
        model, v, images, labels, groups, num_groups=2, method="exact"
      )
    ).lower(variables)
  return lowered.compile()(variables), lowered.as_text().count("stablehlo.convolution")


def test_tiny_map_convs_match_the_conv_path(monkeypatch):
  model = TinyMaps()
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(5, 3, 3, 2)))
  labels = jnp.asarray([0, 1, 2, 1, 0])
  groups = jnp.asarray([0, 1, 1, 0, 1])
  variables = jax.jit(model.init)(jax.random.key(0), images[:1])  # eager init is slow
  variables = jax.tree.map(lambda a: a.astype(jnp.float64), variables)  # param_dtype is float32
  assert variables["params"]["conv0"]["kernel"].dtype == jnp.float64
  specs = curvature.discover_layers(model, variables, images.shape[1:], {})
  tiny = {s.key for s in specs if curvature._is_tiny_map(s)}
  assert tiny == {"conv1", "conv2"}

  got, convs_got = _diag(model, variables, images, labels, groups, True, monkeypatch)
  want, convs_want = _diag(model, variables, images, labels, groups, False, monkeypatch)
  assert convs_got < convs_want  # the tiny-map convs (forward and column backprop) are gone
  flat_got = jax.tree_util.tree_leaves_with_path(got)
  flat_want = dict(jax.tree_util.tree_leaves_with_path(want))
  assert len(flat_got) == len(flat_want) == 7
  for path, value in flat_got:
    assert np.abs(np.asarray(flat_want[path])).max() > 0, path
    np.testing.assert_allclose(value, flat_want[path], rtol=1e-10, atol=1e-14, err_msg=str(path))
