"""VGG-11 (configuration "A" of Simonyan & Zisserman, 2015), with and without BatchNorm.

The official SNNL channel-pruning code prunes the last conv layer of a VGG-11 (design.md
section 3); FairPrune experiments also use VGG-11. The submodule names are part of the API:

- ``conv0 .. conv7``: 3x3 convs, SAME padding (= PyTorch ``padding=1``), with bias, in order,
  so ``conv7`` is the last conv layer.
- ``bn0 .. bn7`` (``use_bn`` only): the BatchNorm right after ``conv{i}``, before its ReLU.
  Structured channel masks rely on this ``conv{i}`` <-> ``bn{i}`` pairing.
- ``fc0, fc1, fc2``: the classifier dense layers; ``fc2`` gives the logits.

References:
  Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
  Recognition", ICLR 2015, arXiv 1409.1556.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from fairjax.models import register_model
from fairjax.models.layers import conv_bn_relu, max_pool_2x2, scaled_channels

# Conv channel counts, "M" = 2x2 max-pool.
VGG11_CONFIG: tuple[int | str, ...] = (
  64,
  "M",
  128,
  "M",
  256,
  256,
  "M",
  512,
  512,
  "M",
  512,
  512,
  "M",
)


class VGG11(nn.Module):
  """VGG-11 features, then flatten -> (Dense -> ReLU -> Dropout) x 2 -> Dense.

  torchvision adapts the last feature map to 7x7 and uses 4096-unit dense layers. fairjax
  flattens the last feature map (NHWC order) instead, so any input size works for which the
  five pools leave at least one pixel (H, W >= 32). The classifier width defaults to 512. With
  ``classifier_width=4096`` and 224x224 inputs the parameter count equals torchvision's.

  Attributes:
    num_classes: number of output logits.
    width_multiplier: scales every conv's channel count (rounded, at least 1).
    classifier_width: units of ``fc0`` and ``fc1``.
    dropout_rate: dropout after ``fc0`` and ``fc1``. Only active when ``train=True``, and then
      it needs the ``'dropout'`` rng.
    use_bn: add BatchNorm after every conv (VGG-11-BN).
    dtype: computation dtype; parameters and logits stay float32.
  """

  num_classes: int
  width_multiplier: float = 1.0
  classifier_width: int = 512
  dropout_rate: float = 0.0
  use_bn: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps images ``x [B, H, W, 3]`` (H, W >= 32) to float32 logits ``[B, num_classes]``."""
    x = jnp.asarray(x, self.dtype)
    conv_index = 0
    for item in VGG11_CONFIG:
      if item == "M":
        x = max_pool_2x2(x)
        continue
      x = conv_bn_relu(
        x,
        scaled_channels(item, self.width_multiplier),
        conv_index,
        use_bn=self.use_bn,
        train=train,
        dtype=self.dtype,
      )
      conv_index += 1

    x = x.reshape(x.shape[0], -1)
    for i in range(2):
      x = nn.Dense(self.classifier_width, dtype=self.dtype, name=f"fc{i}")(x)
      x = nn.relu(x)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc2")(x)
    return x.astype(jnp.float32)


@register_model("vgg11")
def vgg11(**kwargs: Any) -> VGG11:
  """VGG-11 without BatchNorm. Takes the fields of :class:`VGG11`."""
  return VGG11(**kwargs)


@register_model("vgg11_bn")
def vgg11_bn(**kwargs: Any) -> VGG11:
  """VGG-11-BN: BatchNorm after every conv. Takes the fields of :class:`VGG11` but ``use_bn``."""
  return VGG11(use_bn=True, **kwargs)
