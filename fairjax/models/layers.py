"""Building blocks shared by the fairjax models.

The pooling layers here avoid ``lax.reduce_window`` on purpose. Its vmapped and
forward-over-reverse derivatives are very slow on XLA:CPU (design.md section 1, "XLA:CPU
pitfalls"). The curvature kernels differentiate the models in exactly those ways. Reshapes,
strided slices and elementwise maxima have cheap derivatives under every transformation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

# PyTorch's BatchNorm defaults, written in Flax's convention. Flax keeps
# `momentum * running + (1 - momentum) * batch`, so PyTorch's momentum 0.1 becomes 0.9.
# Using them makes fairjax models agree with their torchvision counterparts.
BN_MOMENTUM: float = 0.9
BN_EPSILON: float = 1e-5

# He-normal (fan_out) initialisation of conv kernels, as torchvision does for VGG and ResNet.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool with stride 2, written as a reshape plus a max.

  Args:
    x: ``[B, H, W, C]`` (NHWC), any dtype.

  Returns:
    ``[B, H // 2, W // 2, C]``, same dtype as ``x``. An odd last row or column is dropped,
    like PyTorch's ``MaxPool2d(2)``. Values and gradients equal
    ``nn.max_pool(x, (2, 2), (2, 2))`` when there are no ties.

  A reshape has cheap derivatives under ``vmap`` and forward-over-reverse, which
  ``reduce_window`` does not (design.md section 1).
  """
  b, h, w, c = x.shape
  ho, wo = h // 2, w // 2
  x = x[:, : 2 * ho, : 2 * wo, :]
  x = x.reshape(b, ho, 2, wo, 2, c)
  return jnp.max(x, axis=(2, 4))


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """3x3 max-pool with stride 2 and padding 1, as in the ResNet stem.

  Args:
    x: ``[B, H, W, C]`` (NHWC), floating dtype.

  Returns:
    ``[B, (H - 1) // 2 + 1, (W - 1) // 2 + 1, C]``, same dtype as ``x``. Values and gradients
    equal ``nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))`` (and PyTorch's
    ``MaxPool2d(3, 2, 1)``) when there are no ties.

  This is the elementwise maximum of the 9 strided slices of the input padded with -inf. The
  padding never wins, because every window holds at least one real pixel. Slices and
  ``maximum`` keep the derivatives cheap, where ``reduce_window`` does not (design.md
  section 1).
  """
  _, h, w, _ = x.shape
  ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  out = None
  for di in range(3):
    for dj in range(3):
      window = xp[:, di : di + 2 * ho - 1 : 2, dj : dj + 2 * wo - 1 : 2, :]
      out = window if out is None else jnp.maximum(out, window)
  return out


def scaled_channels(channels: int, multiplier: float) -> int:
  """Channel count ``channels * multiplier``, rounded to the nearest integer, at least 1."""
  return max(1, int(round(channels * multiplier)))


def conv_bn_relu(
  x: jax.Array, features: int, index: int, *, use_bn: bool, train: bool, dtype: Any
) -> jax.Array:
  """3×3 SAME conv ``conv{index}`` (+ BatchNorm ``bn{index}``) + ReLU, NHWC in and out.

  The block of SmallCNN and VGG. Call it inside a ``@nn.compact`` method: the submodules
  attach to the calling module, so the ``conv{i}`` / ``bn{i}`` names that structured masks and
  slimming rely on are the caller's.
  """
  x = nn.Conv(
    features, (3, 3), padding="SAME", kernel_init=conv_kernel_init, dtype=dtype, name=f"conv{index}"
  )(x)
  if use_bn:
    x = nn.BatchNorm(
      use_running_average=not train,
      momentum=BN_MOMENTUM,
      epsilon=BN_EPSILON,
      dtype=dtype,
      name=f"bn{index}",
    )(x)
  return nn.relu(x)


def torch_conv(
  features: int, kernel: int, stride: int, dtype: Any, name: str, groups: int = 1
) -> nn.Conv:
  """Bias-free ``kernel x kernel`` conv (odd ``kernel``) with PyTorch's symmetric padding
  ``kernel // 2``, so that stride-2 convs sample the same pixels as their torchvision
  counterparts (Flax's ``"SAME"`` pads them asymmetrically). ``groups`` > 1 gives a grouped
  (``groups`` = input channels: depthwise) conv."""
  pad = kernel // 2
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    feature_group_count=groups,
    use_bias=False,
    kernel_init=conv_kernel_init,
    dtype=dtype,
    name=name,
  )


def batch_norm(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  """BatchNorm with torchvision's momentum and epsilon; batch statistics when ``train``."""
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=BN_MOMENTUM,
    epsilon=BN_EPSILON,
    dtype=dtype,
    name=name,
  )
