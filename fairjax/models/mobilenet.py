"""MobileNetV2, equivalent to torchvision's ``mobilenet_v2`` (same layers, padding, channel
rounding and parameter count: 3,504,872 at 1000 classes and ``width_multiplier=1``).

Submodule names are part of the API (the torchvision ``state_dict`` prefix in brackets):

- stem: ``stem_conv`` (3x3 stride 2, no bias) [``features.0.0``], ``stem_bn`` [``features.0.1``];
- inverted residual blocks ``block1 .. block17`` [``features.1 .. features.17``], each with
  ``expand_conv`` (1x1, no bias) and ``expand_bn`` (absent in ``block1``, whose expansion is 1),
  ``dw_conv`` (3x3 depthwise: a plain ``nn.Conv`` with ``feature_group_count`` = its channels,
  no bias), ``dw_bn``, ``project_conv`` (1x1, no bias, no activation after) and ``project_bn``;
- ``last_conv`` (1x1 to 1280 channels, no bias) [``features.18.0``], ``last_bn``
  [``features.18.1``];
- head: global average pool, dropout, ``fc`` [``classifier.1``].

Every BatchNorm except ``project_bn`` is followed by ReLU6. A block adds its input to its output
when its stride is 1 and its input and output channels agree. Padding is explicit,
``(k - 1) // 2`` on every side like PyTorch's, because Flax's ``"SAME"`` pads stride-2 convs
asymmetrically (see resnet.py); weights can then be ported one to one.

References:
  Sandler, Howard, Zhu, Zhmoginov & Chen, "MobileNetV2: Inverted Residuals and Linear
  Bottlenecks", CVPR 2018, arXiv 1801.04381.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from fairjax.models import register_model
from fairjax.models.layers import batch_norm, torch_conv

# Inverted residual stages: (expansion t, output channels c, blocks n, stride of the first s).
MOBILENET_V2_STAGES: tuple[tuple[int, int, int, int], ...] = (
  (1, 16, 1, 1),
  (6, 24, 2, 2),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)
STEM_CHANNELS: int = 32
LAST_CHANNELS: int = 1280

# torchvision initialises the classifier with N(0, 0.01) weights and zero bias.
_fc_kernel_init = nn.initializers.normal(stddev=0.01)


def round_channels(channels: float, divisor: int) -> int:
  """``channels`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), as
  torchvision's MobileNetV2 does, rounding up once more when that would lose over 10%."""
  rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * channels:
    rounded += divisor
  return rounded


class InvertedResidual(nn.Module):
  """1x1 expansion (skipped when ``expansion == 1``), 3x3 depthwise, 1x1 linear projection.

  Attributes:
    features: output channels.
    stride: stride of the depthwise conv.
    expansion: hidden channels = ``round(input channels * expansion)``.
    dtype: computation dtype.
  """

  features: int
  stride: int
  expansion: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps ``x [B, H, W, C_in]`` to ``[B, ceil(H / stride), ceil(W / stride), features]``."""
    in_channels = x.shape[-1]
    hidden = int(round(in_channels * self.expansion))
    y = x
    if self.expansion != 1:
      y = torch_conv(hidden, 1, 1, self.dtype, "expand_conv")(y)
      y = nn.relu6(batch_norm(train, self.dtype, "expand_bn")(y))
    y = torch_conv(hidden, 3, self.stride, self.dtype, "dw_conv", groups=hidden)(y)
    y = nn.relu6(batch_norm(train, self.dtype, "dw_bn")(y))
    y = torch_conv(self.features, 1, 1, self.dtype, "project_conv")(y)
    y = batch_norm(train, self.dtype, "project_bn")(y)
    if self.stride == 1 and in_channels == self.features:
      y = y + x
    return y


@register_model("mobilenet_v2")
class MobileNetV2(nn.Module):
  """MobileNetV2: stem, 17 inverted residual blocks, 1x1 conv to 1280, pool, dropout, Dense.

  Attributes:
    num_classes: number of output logits.
    width_multiplier: scales the stem and block channels (torchvision's ``width_mult``); the
      last conv keeps ``1280 * max(1, width_multiplier)`` channels, as in torchvision.
    round_nearest: channel counts are rounded to multiples of this (torchvision's default 8).
    dropout_rate: dropout before ``fc``. Only active when ``train=True``, and then it needs
      the ``'dropout'`` rng.
    dtype: computation dtype; parameters and logits stay float32.
  """

  num_classes: int
  width_multiplier: float = 1.0
  round_nearest: int = 8
  dropout_rate: float = 0.2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps images ``x [B, H, W, 3]`` (any H, W >= 1) to float32 logits ``[B, num_classes]``."""
    x = jnp.asarray(x, self.dtype)
    stem = round_channels(STEM_CHANNELS * self.width_multiplier, self.round_nearest)
    x = torch_conv(stem, 3, 2, self.dtype, "stem_conv")(x)
    x = nn.relu6(batch_norm(train, self.dtype, "stem_bn")(x))

    index = 1
    for expansion, channels, num_blocks, first_stride in MOBILENET_V2_STAGES:
      features = round_channels(channels * self.width_multiplier, self.round_nearest)
      for block in range(num_blocks):
        stride = first_stride if block == 0 else 1
        x = InvertedResidual(features, stride, expansion, dtype=self.dtype, name=f"block{index}")(
          x, train
        )
        index += 1

    last = round_channels(LAST_CHANNELS * max(1.0, self.width_multiplier), self.round_nearest)
    x = torch_conv(last, 1, 1, self.dtype, "last_conv")(x)
    x = nn.relu6(batch_norm(train, self.dtype, "last_bn")(x))

    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, kernel_init=_fc_kernel_init, dtype=self.dtype, name="fc")(x)
    return x.astype(jnp.float32)
