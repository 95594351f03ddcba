"""ResNet-18 and ResNet-34, equivalent to torchvision's ``resnet18`` / ``resnet34`` (same layers,
padding and parameter count).

Both are :class:`ResNet` with BasicBlocks; they differ only in ``stage_sizes``, the number of
blocks per stage: (2, 2, 2, 2) and (3, 4, 6, 3). Submodule names are part of the API:

- stem: ``conv_init`` (no bias), ``bn_init``;
- blocks: ``layer{s}_block{b}`` for stage ``s`` in 1..4 and ``b`` in ``0 .. stage_sizes[s-1]-1``,
  each with ``conv1, bn1, conv2, bn2`` and, where the shape changes, the projection shortcut
  ``proj_conv`` (1x1, no bias), ``proj_bn``;
- head: ``fc`` (after global average pooling).

Padding is explicit so that every conv samples the same pixels as its PyTorch counterpart
(Flax's ``"SAME"`` pads stride-2 convs asymmetrically). Weights can then be ported one to one.

References:
  He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
  arXiv 1512.03385.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from fairjax.models import register_model
from fairjax.models.layers import batch_norm, max_pool_3x3_s2, torch_conv


class BasicBlock(nn.Module):
  """Two 3x3 convs with BN, plus the identity or a 1x1-conv + BN projection shortcut.

  Attributes:
    features: output channels.
    stride: stride of ``conv1`` and of the projection.
    dtype: computation dtype.
  """

  features: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps ``x [B, H, W, C_in]`` to ``[B, ceil(H / stride), ceil(W / stride), features]``."""
    y = torch_conv(self.features, 3, self.stride, self.dtype, "conv1")(x)
    y = nn.relu(batch_norm(train, self.dtype, "bn1")(y))
    y = torch_conv(self.features, 3, 1, self.dtype, "conv2")(y)
    y = batch_norm(train, self.dtype, "bn2")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = torch_conv(self.features, 1, self.stride, self.dtype, "proj_conv")(x)
      x = batch_norm(train, self.dtype, "proj_bn")(x)
    return nn.relu(y + x)


class ResNet(nn.Module):
  """ResNet with BasicBlocks: stem, four stages, global average pool, Dense head.

  Attributes:
    num_classes: number of output logits.
    stage_sizes: BasicBlocks per stage (four entries). The first block of stages 2-4 halves
      the resolution.
    width: channels of the stem and of stage 1; stages 2-4 use 2x, 4x, 8x.
    small_input: for 32-64 px images, use a 3x3 stride-1 stem without max-pool (the common
      CIFAR variant). False gives the ImageNet stem: 7x7 stride-2 conv, then
      :func:`max_pool_3x3_s2`.
    dtype: computation dtype; parameters and logits stay float32.
  """

  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64
  small_input: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps images ``x [B, H, W, 3]`` (any H, W >= 1) to float32 logits ``[B, num_classes]``."""
    if len(self.stage_sizes) != 4:
      raise ValueError(f"stage_sizes must have 4 entries, got {tuple(self.stage_sizes)}")
    x = jnp.asarray(x, self.dtype)
    if self.small_input:
      x = torch_conv(self.width, 3, 1, self.dtype, "conv_init")(x)
    else:
      x = torch_conv(self.width, 7, 2, self.dtype, "conv_init")(x)
    x = nn.relu(batch_norm(train, self.dtype, "bn_init")(x))
    if not self.small_input:
      x = max_pool_3x3_s2(x)

    for stage, num_blocks in enumerate(self.stage_sizes):
      features = self.width * 2**stage
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(features, stride, dtype=self.dtype, name=f"layer{stage + 1}_block{block}")(
          x, train
        )

    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
    return x.astype(jnp.float32)


@register_model("resnet18")
class ResNet18(ResNet):
  """ResNet-18: :class:`ResNet` with ``stage_sizes=(2, 2, 2, 2)`` (11,689,512 parameters at
  1000 classes and width 64, as torchvision's)."""

  stage_sizes: Sequence[int] = (2, 2, 2, 2)


@register_model("resnet34")
class ResNet34(ResNet):
  """ResNet-34: :class:`ResNet` with ``stage_sizes=(3, 4, 6, 3)`` (21,797,672 parameters at
  1000 classes and width 64, as torchvision's)."""

  stage_sizes: Sequence[int] = (3, 4, 6, 3)
