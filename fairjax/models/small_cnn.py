"""A small two-conv CNN: fast enough for unit tests, exact-curvature references and demos."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from fairjax.models import register_model
from fairjax.models.layers import conv_bn_relu, max_pool_2x2


@register_model("small_cnn")
class SmallCNN(nn.Module):
  """conv3x3(w) -> ReLU -> pool -> conv3x3(2w) -> ReLU -> pool -> Dense(hidden) -> ReLU -> Dense.

  Submodule names follow the VGG convention (``conv{i}``, ``bn{i}``, ``fc{i}``) so that code
  which pairs a conv with its BatchNorm works on both:
  ``conv0, conv1`` (3x3, SAME, bias), ``bn0, bn1`` (only when ``use_bn``; after the conv,
  before the ReLU), ``fc0`` (hidden), ``fc1`` (logits).

  Attributes:
    num_classes: number of output logits.
    width: channels of the first conv; the second has ``2 * width``.
    hidden: units of the hidden dense layer.
    use_bn: add BatchNorm after each conv.
    dtype: computation dtype; parameters and logits stay float32.
  """

  num_classes: int
  width: int = 16
  hidden: int = 64
  use_bn: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps images ``x [B, H, W, 3]`` (H, W >= 4) to float32 logits ``[B, num_classes]``."""
    x = jnp.asarray(x, self.dtype)
    for i, features in enumerate((self.width, 2 * self.width)):
      x = conv_bn_relu(x, features, i, use_bn=self.use_bn, train=train, dtype=self.dtype)
      x = max_pool_2x2(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc0")(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc1")(x)
    return x.astype(jnp.float32)
