"""PyTorch mirrors of fairjax's ``small_cnn`` and ``vgg11`` (no BN), for BackPACK comparisons.

The mirrors are ``nn.Sequential`` stacks of stock layers (Conv2d, ReLU, MaxPool2d, Flatten,
Linear), which is what BackPACK's second-order extensions need. Child names match the flax
submodule names (``conv0``, ``fc0``, ...), so ``torch_model.conv0.weight`` pairs with
``params["conv0"]["kernel"]``.

Layout differences, all handled in :func:`load_flax_params` / :func:`to_flax_layout`:

* conv kernels: flax HWIO, torch OIHW;
* dense kernels: flax ``[in, out]``, torch ``weight [out, in]``;
* the flatten before the first dense layer: fairjax flattens NHWC feature maps, torch NCHW. The
  forward is NOT changed; instead the input-feature axis of the first dense weight is permuted,
  so the two networks compute the same function on the same (layout-converted) images.

Only torch and numpy are imported here; flax parameters may be any nested mapping of arrays.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

# Same as fairjax.models.vgg.VGG11_CONFIG (kept here so this module does not import jax).
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


def _scaled_channels(channels: int, multiplier: float) -> int:
  return max(1, int(round(channels * multiplier)))


def _finish(
  layers: list[tuple[str, nn.Module]], flatten_chw: tuple[int, int, int], first_dense: str
) -> nn.Sequential:
  model = nn.Sequential(OrderedDict(layers))
  # Pre-flatten feature-map shape (C, H, W) and the dense layer that consumes the flatten:
  # load_flax_params / to_flax_layout need them to permute that layer's input features.
  model.flatten_chw = flatten_chw
  model.first_dense = first_dense
  return model


def small_cnn(
  num_classes: int, image_hw: tuple[int, int], width: int = 16, hidden: int = 64
) -> nn.Sequential:
  """Mirror of ``fairjax.models.SmallCNN(use_bn=False)`` for ``image_hw = (H, W)`` inputs."""
  h, w = image_hw
  layers: list[tuple[str, nn.Module]] = []
  in_ch = 3
  for i, features in enumerate((width, 2 * width)):
    layers += [
      (f"conv{i}", nn.Conv2d(in_ch, features, 3, padding=1)),
      (f"relu{i}", nn.ReLU()),
      (f"pool{i}", nn.MaxPool2d(2)),
    ]
    in_ch = features
    h, w = h // 2, w // 2
  layers += [
    ("flatten", nn.Flatten()),
    ("fc0", nn.Linear(in_ch * h * w, hidden)),
    ("relu_fc0", nn.ReLU()),
    ("fc1", nn.Linear(hidden, num_classes)),
  ]
  return _finish(layers, (in_ch, h, w), "fc0")


def vgg11(
  num_classes: int,
  image_hw: tuple[int, int],
  width_multiplier: float = 1.0,
  classifier_width: int = 512,
) -> nn.Sequential:
  """Mirror of ``fairjax.models.VGG11(use_bn=False)`` (dropout omitted: inference / rate 0)."""
  h, w = image_hw
  layers: list[tuple[str, nn.Module]] = []
  in_ch, conv_index, pool_index = 3, 0, 0
  for item in VGG11_CONFIG:
    if item == "M":
      layers.append((f"pool{pool_index}", nn.MaxPool2d(2)))
      pool_index += 1
      h, w = h // 2, w // 2
      continue
    out_ch = _scaled_channels(item, width_multiplier)
    layers += [
      (f"conv{conv_index}", nn.Conv2d(in_ch, out_ch, 3, padding=1)),
      (f"relu{conv_index}", nn.ReLU()),
    ]
    in_ch = out_ch
    conv_index += 1
  layers += [
    ("flatten", nn.Flatten()),
    ("fc0", nn.Linear(in_ch * h * w, classifier_width)),
    ("relu_fc0", nn.ReLU()),
    ("fc1", nn.Linear(classifier_width, classifier_width)),
    ("relu_fc1", nn.ReLU()),
    ("fc2", nn.Linear(classifier_width, num_classes)),
  ]
  return _finish(layers, (in_ch, h, w), "fc0")


def build(name: str, num_classes: int, image_hw: tuple[int, int], **kwargs: Any) -> nn.Sequential:
  """``build("small_cnn" | "vgg11", ...)``: same keyword names as the fairjax constructors."""
  builders = {"small_cnn": small_cnn, "vgg11": vgg11}
  if name not in builders:
    raise ValueError(f"no torch mirror for {name!r}; have {sorted(builders)}")
  return builders[name](num_classes, image_hw, **kwargs)


def _nchw_to_nhwc_feature_perm(c: int, h: int, w: int) -> np.ndarray:
  """``perm[i_torch] = i_flax``: where NCHW-flatten feature ``i_torch`` sits in the NHWC flatten."""
  return np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)


def _to_torch_array(module_name: str, leaf: str, value: np.ndarray, model: nn.Module) -> np.ndarray:
  """One flax-layout array (no group axis) -> the torch layout of the same parameter."""
  if leaf == "bias":
    return value
  if value.ndim == 4:  # conv HWIO -> OIHW
    return value.transpose(3, 2, 0, 1)
  if value.ndim == 2:  # dense [in, out] -> [out, in]
    if module_name == getattr(model, "first_dense", None):
      value = value[_nchw_to_nhwc_feature_perm(*model.flatten_chw)]
    return value.T
  raise ValueError(f"unexpected {module_name}/{leaf} shape {value.shape}")


def _to_flax_array(module_name: str, leaf: str, value: np.ndarray, model: nn.Module) -> np.ndarray:
  """Inverse of :func:`_to_torch_array`."""
  if leaf == "bias":
    return value
  if value.ndim == 4:  # OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:
    value = value.T  # [in_torch, out]
    if module_name == getattr(model, "first_dense", None):
      out = np.empty_like(value)
      out[_nchw_to_nhwc_feature_perm(*model.flatten_chw)] = value
      value = out
    return value
  raise ValueError(f"unexpected {module_name}/{leaf} shape {value.shape}")


_LEAF_NAMES = {"weight": "kernel", "bias": "bias"}


@torch.no_grad()
def load_flax_params(torch_model: nn.Module, flax_params: Mapping[str, Mapping[str, Any]]) -> None:
  """Copies fairjax parameters (``variables["params"]``) into a mirror built by this module.

  Every torch parameter must have a flax counterpart of the matching (converted) shape.
  """
  for name, param in torch_model.named_parameters():
    module_name, torch_leaf = name.rsplit(".", 1)
    value = np.asarray(flax_params[module_name][_LEAF_NAMES[torch_leaf]], dtype=np.float32)
    value = _to_torch_array(module_name, torch_leaf, value, torch_model)
    if tuple(value.shape) != tuple(param.shape):
      raise ValueError(f"{name}: flax gives {value.shape}, torch expects {tuple(param.shape)}")
    param.copy_(torch.from_numpy(np.array(value, dtype=np.float32, order="C")))


def to_flax_layout(
  torch_model: nn.Module, tensors: Mapping[str, Any], group_axis: bool = False
) -> dict[str, dict[str, np.ndarray]]:
  """Maps per-parameter torch tensors (params, grads, diagonals) to a flax-layout ``params`` dict.

  Args:
    torch_model: the mirror the tensors belong to.
    tensors: ``{torch parameter name: tensor/array}``, e.g. ``{"conv0.weight": ...}``.
    group_axis: the tensors carry a leading group axis ``G`` (kept in front).

  Returns:
    ``{"conv0": {"kernel": ..., "bias": ...}, ...}`` as numpy arrays.
  """
  out: dict[str, dict[str, np.ndarray]] = {}
  for name, value in tensors.items():
    module_name, torch_leaf = name.rsplit(".", 1)
    value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if group_axis:
      value = np.stack([_to_flax_array(module_name, torch_leaf, v, torch_model) for v in value])
    else:
      value = _to_flax_array(module_name, torch_leaf, value, torch_model)
    out.setdefault(module_name, {})[_LEAF_NAMES[torch_leaf]] = value
  return out


def to_nchw(images: Any) -> torch.Tensor:
  """NHWC images (numpy / jax array) -> a contiguous float32 NCHW torch tensor."""
  array = np.asarray(images, dtype=np.float32).transpose(0, 3, 1, 2)
  return torch.from_numpy(np.array(array, order="C"))  # a writable copy
