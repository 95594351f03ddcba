"""Torch-free reference forward passes on torchvision ``state_dict`` arrays (PyTorch layouts).

Each function follows torchvision's definition directly: NCHW activations, OIHW conv weights,
``[out, in]`` linear weights, BatchNorm with running statistics (inference), and VGG's adaptive
average pooling to 7x7 computed bin by bin. It shares no code with ``fairjax.models`` or
``fairjax.models.pretrained``, so agreement checks the loader's layout conversion and the VGG
fold without torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_HI = lax.Precision.HIGHEST
_VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
_MOBILENET_TABLE = (
  (1, 16, 1, 1),
  (6, 24, 2, 2),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)


def _conv(x, w, stride=1, groups=1, bias=None):
  pad = (w.shape[-1] - 1) // 2
  y = lax.conv_general_dilated(
    x,
    w,
    (stride, stride),
    [(pad, pad), (pad, pad)],
    dimension_numbers=("NCHW", "OIHW", "NCHW"),
    feature_group_count=groups,
    precision=_HI,
  )
  return y if bias is None else y + bias[None, :, None, None]


def _bn(x, sd, prefix):
  scale = sd[f"{prefix}.weight"] / jnp.sqrt(sd[f"{prefix}.running_var"] + 1e-5)
  shift = sd[f"{prefix}.bias"] - sd[f"{prefix}.running_mean"] * scale
  return x * scale[None, :, None, None] + shift[None, :, None, None]


def _linear(x, sd, prefix):
  return jnp.dot(x, sd[f"{prefix}.weight"].T, precision=_HI) + sd[f"{prefix}.bias"]


def _max_pool(x, window, stride, pad):
  return lax.reduce_window(
    x,
    -jnp.inf,
    lax.max,
    (1, 1, window, window),
    (1, 1, stride, stride),
    [(0, 0), (0, 0), (pad, pad), (pad, pad)],
  )


def _adaptive_avg_pool_7(x):
  """PyTorch's AdaptiveAvgPool2d((7, 7)): bin i spans floor(i*n/7) .. ceil((i+1)*n/7)."""
  n_h, n_w = x.shape[2], x.shape[3]
  rows = []
  for i in range(7):
    h0, h1 = (i * n_h) // 7, math.ceil((i + 1) * n_h / 7)
    cols = []
    for j in range(7):
      w0, w1 = (j * n_w) // 7, math.ceil((j + 1) * n_w / 7)
      cols.append(jnp.mean(x[:, :, h0:h1, w0:w1], axis=(2, 3)))
    rows.append(jnp.stack(cols, axis=-1))
  return jnp.stack(rows, axis=-2)  # [N, C, 7, 7]


def _vgg(sd, x, use_bn):
  index = 0
  for item in _VGG11_CFG:
    if item == "M":
      x = _max_pool(x, 2, 2, 0)
      index += 1
      continue
    x = _conv(x, sd[f"features.{index}.weight"], bias=sd[f"features.{index}.bias"])
    if use_bn:
      x = _bn(x, sd, f"features.{index + 1}")
    x = jax.nn.relu(x)
    index += 3 if use_bn else 2
  x = _adaptive_avg_pool_7(x).reshape(x.shape[0], -1)  # flattens (c, i, j)
  x = jax.nn.relu(_linear(x, sd, "classifier.0"))
  x = jax.nn.relu(_linear(x, sd, "classifier.3"))
  return _linear(x, sd, "classifier.6")


def _resnet(sd, x, stage_sizes):
  x = jax.nn.relu(_bn(_conv(x, sd["conv1.weight"], 2), sd, "bn1"))
  x = _max_pool(x, 3, 2, 1)
  for s, blocks in enumerate(stage_sizes, start=1):
    for b in range(blocks):
      p = f"layer{s}.{b}"
      stride = 2 if s > 1 and b == 0 else 1
      y = jax.nn.relu(_bn(_conv(x, sd[f"{p}.conv1.weight"], stride), sd, f"{p}.bn1"))
      y = _bn(_conv(y, sd[f"{p}.conv2.weight"]), sd, f"{p}.bn2")
      if f"{p}.downsample.0.weight" in sd:
        x = _bn(_conv(x, sd[f"{p}.downsample.0.weight"], stride), sd, f"{p}.downsample.1")
      x = jax.nn.relu(y + x)
  return _linear(jnp.mean(x, axis=(2, 3)), sd, "fc")


def _mobilenet_v2(sd, x):
  relu6 = lambda v: jnp.clip(v, 0.0, 6.0)  # noqa: E731
  x = relu6(_bn(_conv(x, sd["features.0.0.weight"], 2), sd, "features.0.1"))
  index, channels = 1, 32
  for t, c, n, s in _MOBILENET_TABLE:
    for i in range(n):
      p = f"features.{index}.conv"
      stride = s if i == 0 else 1
      y, k = x, 0
      if t != 1:
        y = relu6(_bn(_conv(y, sd[f"{p}.0.0.weight"]), sd, f"{p}.0.1"))
        k = 1
      hidden = y.shape[1]
      y = relu6(_bn(_conv(y, sd[f"{p}.{k}.0.weight"], stride, groups=hidden), sd, f"{p}.{k}.1"))
      y = _bn(_conv(y, sd[f"{p}.{k + 1}.weight"]), sd, f"{p}.{k + 2}")
      x = x + y if stride == 1 and channels == c else y
      index, channels = index + 1, c
  x = relu6(_bn(_conv(x, sd["features.18.0.weight"]), sd, "features.18.1"))
  return _linear(jnp.mean(x, axis=(2, 3)), sd, "classifier.1")


_FORWARD = {
  "vgg11": lambda sd, x: _vgg(sd, x, False),
  "vgg11_bn": lambda sd, x: _vgg(sd, x, True),
  "resnet18": lambda sd, x: _resnet(sd, x, (2, 2, 2, 2)),
  "resnet34": lambda sd, x: _resnet(sd, x, (3, 4, 6, 3)),
  "mobilenet_v2": _mobilenet_v2,
}


def logits(name: str, state_dict: Mapping[str, np.ndarray], images_nchw: np.ndarray) -> np.ndarray:
  """float32 logits ``[N, classes]`` of torchvision's ``name`` in eval mode on NCHW images."""
  sd = {
    k: jnp.asarray(v, jnp.float32)
    for k, v in state_dict.items()
    if not k.endswith("num_batches_tracked")
  }
  return np.asarray(jax.jit(_FORWARD[name])(sd, jnp.asarray(images_nchw, jnp.float32)))
