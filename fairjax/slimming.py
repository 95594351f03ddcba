"""Physical slimming: turn structured channel masks into a smaller network.

A channel pruned with ``fairjax.masks.channel_mask`` (kernel slice, bias and BN scale/shift
zeroed) emits exactly zero, so deleting it, together with the matching input slice of the layer
that consumes it, leaves the network's function unchanged while cutting parameters and FLOPs
(design.md section 3, last point). fairjax's models take one width multiplier, not per-layer
widths, so the slim network is a :class:`SlimSequentialCNN`: the same computation as
``VGG11`` / ``SmallCNN`` (same submodule names, BN constants, pools, NHWC flatten, dropout)
with an explicit channel count per conv.

- :func:`slim_sequential_cnn`: ``(model, variables, keep) -> (slim_model, slim_variables)``.
- :func:`count_params`, :func:`conv_flops`: size and multiply-adds from shapes.
- :func:`measure_speedup`: median jitted inference time, dense vs slim.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from fairjax.models.layers import (
  BN_EPSILON,
  BN_MOMENTUM,
  conv_kernel_init,
  max_pool_2x2,
  scaled_channels,
)
from fairjax.models.small_cnn import SmallCNN
from fairjax.models.vgg import VGG11, VGG11_CONFIG

PyTree = Any


class SlimSequentialCNN(nn.Module):
  """``conv{i}`` (3x3 SAME) -> [``bn{i}``] -> ReLU -> [2x2 pool] ..., flatten (NHWC), then
  ``fc{j}`` -> ReLU -> [Dropout] ... -> ``fc{last}`` (logits).

  Reproduces ``VGG11`` (``use_dropout=True``) and ``SmallCNN`` (``use_dropout=False``) exactly,
  parameter names included, but with an explicit width per layer so pruned channels can be
  physically absent. Built by :func:`slim_sequential_cnn`; rarely constructed by hand.

  Attributes:
    conv_channels: output channels of ``conv0, conv1, ...``.
    pool_after: per conv, whether a 2x2 max-pool follows its ReLU.
    dense_features: units of ``fc0, fc1, ...``; the last entry is the number of logits.
    use_bn: BatchNorm ``bn{i}`` after each conv (PyTorch constants, as the fairjax models).
    use_dropout: a ``Dropout`` after each hidden dense ReLU (VGG); auto-named ``Dropout_{j}``
      like VGG's, so the same ``'dropout'`` rng gives the same masks.
    dropout_rate: its rate (active only with ``train=True``).
    dtype: computation dtype; logits are float32.
  """

  conv_channels: tuple[int, ...]
  pool_after: tuple[bool, ...]
  dense_features: tuple[int, ...]
  use_bn: bool = False
  use_dropout: bool = False
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps images ``x [B, H, W, 3]`` to float32 logits ``[B, dense_features[-1]]``."""
    x = jnp.asarray(x, self.dtype)
    for i, (features, pool) in enumerate(zip(self.conv_channels, self.pool_after)):
      x = nn.Conv(
        features,
        (3, 3),
        padding="SAME",
        kernel_init=conv_kernel_init,
        dtype=self.dtype,
        name=f"conv{i}",
      )(x)
      if self.use_bn:
        x = nn.BatchNorm(
          use_running_average=not train,
          momentum=BN_MOMENTUM,
          epsilon=BN_EPSILON,
          dtype=self.dtype,
          name=f"bn{i}",
        )(x)
      x = nn.relu(x)
      if pool:
        x = max_pool_2x2(x)
    x = x.reshape(x.shape[0], -1)
    last = len(self.dense_features) - 1
    for j, features in enumerate(self.dense_features):
      x = nn.Dense(features, dtype=self.dtype, name=f"fc{j}")(x)
      if j < last:
        x = nn.relu(x)
        if self.use_dropout:
          x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return x.astype(jnp.float32)


def as_slim_model(model: nn.Module) -> SlimSequentialCNN:
  """The :class:`SlimSequentialCNN` computing exactly what ``model`` computes.

  Args:
    model: a ``VGG11`` (with or without BN), a ``SmallCNN`` or a ``SlimSequentialCNN``.

  Raises:
    TypeError: any other model (its layer graph is not a plain conv stack).
  """
  if isinstance(model, SlimSequentialCNN):
    return model
  if type(model) is VGG11:
    channels, pools = [], []
    for item in VGG11_CONFIG:
      if item == "M":
        pools[-1] = True
      else:
        channels.append(scaled_channels(item, model.width_multiplier))
        pools.append(False)
    return SlimSequentialCNN(
      tuple(channels),
      tuple(pools),
      (model.classifier_width, model.classifier_width, model.num_classes),
      use_bn=model.use_bn,
      use_dropout=True,
      dropout_rate=model.dropout_rate,
      dtype=model.dtype,
    )
  if type(model) is SmallCNN:
    return SlimSequentialCNN(
      (model.width, 2 * model.width),
      (True, True),
      (model.hidden, model.num_classes),
      use_bn=model.use_bn,
      use_dropout=False,
      dtype=model.dtype,
    )
  raise TypeError(
    f"slimming supports VGG11, SmallCNN and SlimSequentialCNN, not {type(model).__name__}"
  )


def _to_dict(tree: PyTree) -> dict:
  return flax.core.unfreeze(tree) if isinstance(tree, flax.core.FrozenDict) else tree


def slim_sequential_cnn(
  model: nn.Module, variables: PyTree, keep: Mapping[str, np.ndarray]
) -> tuple[SlimSequentialCNN, dict]:
  """Physically removes the channels that ``keep`` drops (design.md section 3).

  For every ``conv{i}`` in ``keep``, its kernel ``[3, 3, C_in, K]`` loses output slices
  ``[..., k]``, its bias ``[K]`` and ``bn{i}``'s ``scale``/``bias`` (params) and
  ``mean``/``var`` (``batch_stats``) lose entry ``k``, and the consumer loses the matching
  inputs: ``conv{i+1}``'s ``kernel[:, :, k, :]``, or for the last conv the rows of
  ``fc0/kernel`` holding channel ``k`` in the NHWC flatten (rows ``h*W*C + w*C + k``). A hidden
  dense layer ``fc{j}`` may be slimmed likewise (columns of its kernel, bias, rows of
  ``fc{j+1}``); the logits layer may not.

  The slim model computes the same function as ``model`` with the dropped channels' kernel,
  bias and BN scale/shift zeroed (``fairjax.masks.channel_mask`` + ``apply_mask``). Channels
  that are dropped without having been zeroed change the function; this is not checked.

  Args:
    model: ``VGG11``, ``SmallCNN`` or an earlier result of this function (slimming composes).
    variables: ``{"params": ..., ["batch_stats": ...]}`` of ``model``; other collections are
      copied unchanged.
    keep: ``{"conv3": bool[K], "fc0": bool[N], ...}``, True = keep. Layers not named keep
      everything. Typically ``masks.channel_keep_from_mask(mask, "conv3")`` per layer.

  Returns:
    ``(slim_model, slim_variables)``: a :class:`SlimSequentialCNN` and a new plain-dict
    variables tree (inputs are not modified).

  Raises:
    TypeError: unsupported model. ValueError: an unknown or unslimmable layer name, a keep
    vector of the wrong shape/dtype or with no True entry, or variables that do not match
    the model's widths.
  """
  base = as_slim_model(model)
  variables = _to_dict(variables)
  params = _to_dict(variables["params"])
  stats = _to_dict(variables.get("batch_stats", {}))
  n_conv, n_dense = len(base.conv_channels), len(base.dense_features)
  conv_names = [f"conv{i}" for i in range(n_conv)]
  dense_names = [f"fc{j}" for j in range(n_dense)]

  widths = {}
  for name, width in zip(conv_names + dense_names, base.conv_channels + base.dense_features):
    actual = params[name]["kernel"].shape[-1]
    if actual != width:
      raise ValueError(f"{name}/kernel has {actual} outputs, the model says {width}")
    widths[name] = width

  slimmable = conv_names + dense_names[:-1]
  out_idx: dict[str, np.ndarray] = {}
  for name, mask in keep.items():
    if name not in slimmable:
      raise ValueError(f"cannot slim {name!r}; slimmable layers: {', '.join(slimmable)}")
    mask = np.asarray(mask)
    if mask.shape != (widths[name],) or mask.dtype != bool:
      raise ValueError(
        f"keep[{name!r}] must be bool[{widths[name]}], got {mask.dtype}{list(mask.shape)}"
      )
    if not mask.any():
      raise ValueError(f"keep[{name!r}] drops every channel")
    out_idx[name] = np.flatnonzero(mask)

  def outputs(name: str) -> np.ndarray:
    return out_idx.get(name, np.arange(widths[name]))

  new_params = dict(params)
  new_stats = dict(stats)
  names = conv_names + dense_names
  for pos, name in enumerate(names):
    layer = dict(params[name])
    kernel = jnp.asarray(layer["kernel"])
    if pos == 0:
      in_idx = None  # the image channels
    elif name == "fc0":
      # NHWC flatten: row h*W*C + w*C + c belongs to channel c, so the per-channel keep
      # pattern repeats once per spatial position.
      c = widths[conv_names[-1]]
      if kernel.shape[0] % c:
        raise ValueError(f"fc0/kernel has {kernel.shape[0]} rows, not a multiple of {c}")
      positions = kernel.shape[0] // c
      in_idx = (np.arange(positions)[:, None] * c + outputs(conv_names[-1])[None, :]).ravel()
    else:
      in_idx = outputs(names[pos - 1])
    if in_idx is not None:
      kernel = jnp.take(kernel, jnp.asarray(in_idx), axis=-2)
    idx = jnp.asarray(outputs(name))
    layer["kernel"] = jnp.take(kernel, idx, axis=-1)
    if "bias" in layer:
      layer["bias"] = jnp.take(jnp.asarray(layer["bias"]), idx, axis=0)
    new_params[name] = layer
    bn = f"bn{pos}"
    if name in conv_names and base.use_bn:
      new_params[bn] = {k: jnp.take(jnp.asarray(v), idx, axis=0) for k, v in params[bn].items()}
      if bn in stats:
        new_stats[bn] = {
          k: jnp.take(jnp.asarray(v), idx, axis=0) for k, v in _to_dict(stats[bn]).items()
        }

  slim = SlimSequentialCNN(
    tuple(len(outputs(n)) for n in conv_names),
    base.pool_after,
    tuple(len(outputs(n)) for n in dense_names),
    use_bn=base.use_bn,
    use_dropout=base.use_dropout,
    dropout_rate=base.dropout_rate,
    dtype=base.dtype,
  )
  new_vars = dict(variables)
  new_vars["params"] = new_params
  if "batch_stats" in variables:
    new_vars["batch_stats"] = new_stats
  return slim, new_vars


def count_params(variables: PyTree) -> int:
  """Number of scalars in ``variables["params"]`` (or in the whole tree if it has no
  ``"params"`` key). BatchNorm running statistics are buffers, not parameters: not counted."""
  if isinstance(variables, Mapping) and "params" in variables:
    variables = variables["params"]
  return int(sum(np.size(leaf) for leaf in jax.tree.leaves(variables)))


def conv_flops(
  model: nn.Module,
  variables: PyTree,
  image_shape: Sequence[int],
  *,
  apply_kwargs: Mapping[str, Any] | None = None,
) -> int:
  """Multiply-adds of all ``nn.Conv`` and ``nn.Dense`` calls for ONE example.

  Every conv/dense call of an abstract forward pass (``jax.eval_shape``, shapes only) is
  intercepted with ``flax.linen.intercept_methods`` (as ``fairjax.curvature`` does); each
  contributes ``prod(output.shape[:-1]) * prod(kernel.shape)``, i.e. for a conv
  ``H_out * W_out * K * kh * kw * C_in / groups`` and for a dense ``in * out``. Biases, norms,
  activations and pools are not counted; a shared module counts once per call. FLOPs are
  about twice this number.

  Args:
    model: any Linen module; ``variables``: its variables.
    image_shape: the shape of one example, e.g. ``(224, 224, 3)``.
    apply_kwargs: extra keyword arguments for ``model.apply``.

  Returns:
    The multiply-add count (Python int).
  """
  total = 0

  def interceptor(next_fun, args, kwargs, context):
    nonlocal total
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__" and isinstance(module, (nn.Conv, nn.Dense)):
      kernel = module.variables["params"]["kernel"]
      total += math.prod(out.shape[:-1]) * math.prod(kernel.shape)
    return out

  def forward(v, x):
    with nn.intercept_methods(interceptor):
      return model.apply(v, x, **dict(apply_kwargs or {}))

  jax.eval_shape(forward, variables, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  return int(total)


def _compile_timed(model: nn.Module, variables: PyTree, images: jax.Array):
  start = time.perf_counter()
  compiled = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, images).compile()
  return compiled, time.perf_counter() - start


def measure_speedup(
  dense_model: nn.Module,
  dense_vars: PyTree,
  slim_model: nn.Module,
  slim_vars: PyTree,
  images: jax.Array,
  repeats: int = 10,
) -> dict[str, Any]:
  """Median jitted inference time (``train=False``) of the dense and the slim network.

  Both are compiled ahead of time (compile times reported separately), run once to warm
  up, then timed ``repeats`` times each with ``block_until_ready``, dense and slim
  interleaved so that load drift on a shared machine hits both alike.

  Args:
    dense_model, dense_vars: the original (masked) network.
    slim_model, slim_vars: its slimmed counterpart (:func:`slim_sequential_cnn`).
    images: float ``[B, H, W, 3]`` batch fed to both.
    repeats: timed calls per network (>= 1).

  Returns:
    ``{"dense_s", "slim_s"}`` (medians, seconds), ``"speedup"`` (dense_s / slim_s),
    ``"dense_compile_s"``, ``"slim_compile_s"``, ``"dense_times_s"``, ``"slim_times_s"``
    (all samples), ``"repeats"``, ``"batch"``.
  """
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  images = jnp.asarray(images)
  dense_fn, dense_compile = _compile_timed(dense_model, dense_vars, images)
  slim_fn, slim_compile = _compile_timed(slim_model, slim_vars, images)
  jax.block_until_ready(dense_fn(dense_vars, images))
  jax.block_until_ready(slim_fn(slim_vars, images))
  dense_times, slim_times = [], []
  for _ in range(repeats):
    for fn, v, times in ((dense_fn, dense_vars, dense_times), (slim_fn, slim_vars, slim_times)):
      start = time.perf_counter()
      jax.block_until_ready(fn(v, images))
      times.append(time.perf_counter() - start)
  dense_s, slim_s = statistics.median(dense_times), statistics.median(slim_times)
  return {
    "dense_s": dense_s,
    "slim_s": slim_s,
    "speedup": dense_s / slim_s,
    "dense_compile_s": dense_compile,
    "slim_compile_s": slim_compile,
    "dense_times_s": dense_times,
    "slim_times_s": slim_times,
    "repeats": repeats,
    "batch": int(images.shape[0]),
  }


def summary(
  model: nn.Module,
  variables: PyTree,
  keep: Mapping[str, Any],
  *,
  image_size: int,
  speedup_batch_size: int,
  speedup_repeats: int,
) -> dict[str, Any] | None:
  """What physically removing the pruned channels buys (design.md section 3: structured
  masks allow slimming): sizes, and a measured inference speedup (``results["slimming"]`` of
  ``snnl_channels``).

  Args:
    model, variables: the masked network (pruned channels emit zero).
    keep: ``{conv layer path: bool[K]}`` (True = channel kept).
    image_size: side of the square RGB input images.
    speedup_batch_size, speedup_repeats: the timed forward pass (0 repeats: no timing).

  Returns (``None`` for models :func:`slim_sequential_cnn` does not handle, i.e. other than
  fairjax's VGG-11 and SmallCNN, or for nested layer paths; a warning is logged)::

    {"params_dense", "params_slim",     # parameter counts (BN running stats not counted)
     "flops_dense", "flops_slim",       # conv/dense multiply-adds per image
     "channels": {layer: {"total", "kept", "removed", "removed_indices": [int, ...]}},
     "speedup", "masked_median_s", "slim_median_s",   # measured; null when not timed
     "speedup_batch_size", "speedup_repeats", "device",
     "masked_compile_s", "slim_compile_s", "masked_times_s", "slim_times_s"}

  The timing (measured fields null when ``speedup_repeats`` is 0) covers the jitted inference
  forward pass (``train=False``) of the masked model (the original architecture, pruned
  channels zeroed) and of the slimmed one on the same batch of ``speedup_batch_size`` images
  (normal noise from a fixed key: the cost of a dense conv net does not depend on pixel
  values), one warm-up call each, then ``speedup_repeats`` interleaved timed calls;
  ``speedup = masked_median_s / slim_median_s`` (:func:`measure_speedup`). The times are
  wall-clock seconds on ``device`` and vary between runs; everything else is a pure function
  of the variables and ``keep``.
  """
  from absl import logging

  keep = {name: np.asarray(k, bool) for name, k in keep.items()}
  try:
    slim_model, slim_vars = slim_sequential_cnn(model, variables, keep)
  except (TypeError, ValueError) as e:
    logging.warning("snnl_channels: no slimming summary (%s)", e)
    return None
  shape = (image_size,) * 2 + (3,)
  out: dict[str, Any] = {
    "params_dense": count_params(variables),
    "params_slim": count_params(slim_vars),
    "flops_dense": conv_flops(model, variables, shape),
    "flops_slim": conv_flops(slim_model, slim_vars, shape),
    "channels": {
      name: {
        "total": int(k.size),
        "kept": int(k.sum()),
        "removed": int(k.size - k.sum()),
        "removed_indices": [int(i) for i in np.flatnonzero(~k)],
      }
      for name, k in keep.items()
    },
  }
  device = jax.devices()[0]
  out.update(
    {
      "speedup": None,
      "masked_median_s": None,
      "slim_median_s": None,
      "speedup_batch_size": speedup_batch_size,
      "speedup_repeats": speedup_repeats,
      "device": f"{device.platform}: {getattr(device, 'device_kind', str(device))}",
      "masked_compile_s": None,
      "slim_compile_s": None,
      "masked_times_s": None,
      "slim_times_s": None,
    }
  )
  if speedup_repeats:
    images = jax.random.normal(jax.random.key(0), (speedup_batch_size, *shape), jnp.float32)
    timed = measure_speedup(
      model, variables, slim_model, slim_vars, images, repeats=speedup_repeats
    )
    out.update(
      {
        "speedup": timed["speedup"],
        "masked_median_s": timed["dense_s"],
        "slim_median_s": timed["slim_s"],
        "masked_compile_s": timed["dense_compile_s"],
        "slim_compile_s": timed["slim_compile_s"],
        "masked_times_s": timed["dense_times_s"],
        "slim_times_s": timed["slim_times_s"],
      }
    )
    logging.info(
      "snnl_channels: slimmed forward %.2fx faster than masked (median %.4fs vs "
      "%.4fs, batch %d, %s); %d -> %d params",
      timed["speedup"],
      timed["slim_s"],
      timed["dense_s"],
      timed["batch"],
      out["device"],
      out["params_dense"],
      out["params_slim"],
    )
  return out
