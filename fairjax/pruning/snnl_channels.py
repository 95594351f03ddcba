"""``"snnl_channels"``: sensitive channel pruning with the Soft Nearest Neighbour Loss
(design.md section 3) as a :class:`fairjax.pruning.api.PruneMethod`.

Each step scores every kept channel of the chosen conv layers (:func:`snnl_layers`) by its SNNL
w.r.t. the sensitive attribute (:func:`fairjax.snnl.score_channels`, averaged over
``prune.num_batches`` group-balanced train batches, BatchNorm in inference mode, through the
MASKED model), prunes the lowest-SNNL (most group-separating) kept channels
(:func:`fairjax.snnl.select_channels`, counts from :func:`snnl_plan` / :func:`snnl_target_plan`),
masks their kernel slice, bias and BN scale/shift so they output exactly zero (unlike the
official code, which leaves ``ReLU(b)``), then fine-tunes for ``prune.retrain_epochs`` with
the dense-training optimizer settings and a fresh optimizer state. Step records hold
``channels_kept`` / ``channels_removed``; ``results["slimming"]`` what physically removing the
channels buys (:func:`fairjax.slimming.summary`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fairjax import masks, models, schedules, slimming, snnl
from fairjax.config import ConfigError, fail
from fairjax.models import pretrained
from fairjax.pruning.api import PruneMethod, RunContext, prunable, target_end, variables_of

PyTree = Any

_CONV_NAME = re.compile(r"^conv(\d+)$")


def snnl_layers(config, params: PyTree) -> tuple[tuple[str, ...], dict[str, str | None]]:
  """The conv layers scored by ``"snnl_channels"`` and the BatchNorm paired with each.

  ``config.prune.snnl.layers`` when given; ``()`` means the last conv layer of the model, i.e.
  the top-level ``conv{i}`` with the highest ``i`` (fairjax's VGG-11: ``conv7``, the layer the
  official code prunes, design.md section 3; SmallCNN: ``conv1``). The BatchNorm of
  ``.../conv{i}`` is ``.../bn{i}`` when the params hold it (fairjax's naming convention).

  Raises:
    ConfigError: no conv layer to default to, an unknown path, a non-conv module, or a layer
      excluded from pruning by ``prune.exclude_layers``.
  """
  names = tuple(config.prune.snnl.layers)
  if not names:
    convs = [
      (int(m.group(1)), key)
      for key in params
      if (m := _CONV_NAME.match(str(key))) and isinstance(params[key], Mapping)
    ]
    if not convs:
      raise ConfigError(
        f"config.prune.snnl.layers=(): the model {config.model.name!r} has no "
        "top-level conv{i} layer to default to; name the conv layers to prune "
        "(fix it with --config.prune.snnl.layers=...)"
      )
    names = (max(convs)[1],)
  is_prunable = prunable(config.prune.exclude_layers)
  norms: dict[str, str | None] = {}
  for name in names:
    parts = tuple(name.split("/"))
    node = params
    for part in parts:
      node = node.get(part) if isinstance(node, Mapping) else None
    kernel = node.get("kernel") if isinstance(node, Mapping) else None
    if kernel is None or np.ndim(kernel) != 4:
      raise ConfigError(
        f"config.prune.snnl.layers={tuple(config.prune.snnl.layers)!r}: {name!r} "
        f"is not a 2-D conv layer of {config.model.name!r} (fix it with "
        "--config.prune.snnl.layers=...)"
      )
    if not is_prunable(parts + ("kernel",), kernel):
      raise ConfigError(
        f"config.prune.snnl.layers: {name!r} is excluded from pruning by "
        f"config.prune.exclude_layers={tuple(config.prune.exclude_layers)!r}"
      )
    m = _CONV_NAME.match(parts[-1])
    bn = "/".join(parts[:-1] + (f"bn{m.group(1)}",)) if m else None
    bn_node = params
    for part in bn.split("/") if bn else ():
      bn_node = bn_node.get(part) if isinstance(bn_node, Mapping) else None
    norms[name] = bn if bn and isinstance(bn_node, Mapping) and "scale" in bn_node else None
  return names, norms


def _param_shapes(config, num_classes: int) -> PyTree:
  """The model's params as ``jax.ShapeDtypeStruct`` leaves (no compute, no weights read)."""
  kwargs = dict(config.model.kwargs) if config.model.kwargs else {}
  if config.model.pretrained:
    kwargs = {**pretrained.model_fields(config.model.name), **kwargs}
  model = models.get_model(config.model.name, num_classes=num_classes, **kwargs)
  shape = (1,) + (config.data.image_size,) * 2 + (3,)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
  return variables["params"]


def snnl_plan(amount: float, kept: Mapping[str, int], scope: str) -> dict[str, int] | int:
  """Per-layer counts (``scope="layer"``) or one total (``"global"``) for the next step
  (``amount``: :func:`fairjax.schedules.count_of`), capped so that every layer keeps at least
  one channel (an empty layer disconnects the network)."""
  if scope == "layer":
    return {name: min(schedules.count_of(amount, k), k - 1) for name, k in kept.items()}
  total = sum(kept.values())
  return min(schedules.count_of(amount, total), total - len(kept))


def snnl_target_plan(
  ratio: float, kept: Mapping[str, int], totals: Mapping[str, int], scope: str
) -> dict[str, int] | int:
  """Channels to prune now so that ``round_half_up(ratio * K)`` channels are pruned in total
  (per layer of ``K`` channels, or over all chosen layers for ``"global"``), never below one
  kept channel per layer (``prune.target_sparsity`` mode of ``snnl_channels``)."""
  count = schedules.round_half_up
  if scope == "layer":
    return {
      name: max(0, min(count(ratio * totals[name]), totals[name] - 1) - (totals[name] - k))
      for name, k in kept.items()
    }
  total = sum(totals.values())
  want = min(count(ratio * total), total - len(totals))
  return max(0, want - (total - sum(kept.values())))


def kernel_channels(params: PyTree, layer: str) -> int:
  """Output channels ``K`` of ``layer``'s kernel ``[..., K]``."""
  node = params
  for part in layer.split("/"):
    node = node[part]
  return int(np.shape(node["kernel"])[-1])


def channel_counts(kept: Mapping[str, int], totals: Mapping[str, int]) -> dict[str, Any]:
  """Step-record keys of ``snnl_channels``: ``channels_kept`` and ``channels_removed``, each
  ``{layer: int}`` (removed = the layer's output channels minus the kept ones)."""
  return {
    "channels_kept": dict(kept),
    "channels_removed": {name: int(totals[name]) - int(k) for name, k in kept.items()},
  }


def channel_keep(mask: masks.Mask | None, params: PyTree, layers) -> dict[str, np.ndarray]:
  """``{layer: bool[K]}``: the kept output channels of each layer (all of them without mask)."""
  return {
    name: (
      np.ones(kernel_channels(params, name), bool)
      if mask is None
      else np.asarray(masks.channel_keep_from_mask(mask, name))
    )
    for name in layers
  }


def slimming_summary(config, model, final: Any) -> dict[str, Any] | None:
  """:func:`fairjax.slimming.summary` of the chosen state's SNNL channels
  (``prune.speedup_batch_size`` / ``speedup_repeats``)."""
  layers, _ = snnl_layers(config, final.params)
  p = config.prune
  return slimming.summary(
    model,
    variables_of(final),
    channel_keep(final.mask, final.params, layers),
    image_size=config.data.image_size,
    speedup_batch_size=p.speedup_batch_size,
    speedup_repeats=p.speedup_repeats,
  )


class SNNLChannels(PruneMethod):
  """Sensitive channel pruning (module docstring; design.md section 3)."""

  default_retrain_epochs = 1  # the paper fine-tunes after every step

  def validate(self, config, data: Any = None) -> None:
    """``prune.snnl_*`` and ``prune.speedup_*`` (checked for every run: a config file is
    validated whole)."""
    p = config.prune
    layers = p.snnl.layers
    if isinstance(layers, str) or not all(isinstance(x, str) and x for x in layers):
      fail(
        "prune.snnl.layers",
        layers,
        "must be a tuple of conv module paths such as ('conv7',), or () for the last conv",
      )
    if len(set(layers)) != len(layers):
      fail("prune.snnl.layers", tuple(layers), "must not name a layer twice")
    if not isinstance(p.snnl.temperature, (int, float)) or not p.snnl.temperature > 0:
      fail("prune.snnl.temperature", p.snnl.temperature, "must be > 0")
    if not isinstance(p.snnl.include_self, bool):
      fail("prune.snnl.include_self", p.snnl.include_self, "must be True or False")
    amount = p.snnl.channels_per_step
    if (
      isinstance(amount, bool)
      or not isinstance(amount, (int, float))
      or not amount > 0
      or (amount >= 1 and float(amount) != int(amount))
    ):
      fail(
        "prune.snnl.channels_per_step",
        amount,
        "must be a fraction in (0, 1) of the kept channels or an integer count >= 1",
      )
    if p.snnl.scope not in ("layer", "global"):
      fail("prune.snnl.scope", p.snnl.scope, "must be 'layer' or 'global'")
    if not isinstance(p.speedup_batch_size, int) or p.speedup_batch_size < 1:
      fail("prune.speedup_batch_size", p.speedup_batch_size, "must be an integer >= 1")
    if not isinstance(p.speedup_repeats, int) or p.speedup_repeats < 0:
      fail(
        "prune.speedup_repeats",
        p.speedup_repeats,
        "must be an integer >= 0 (0 = do not time the slimmed network)",
      )
    if data is not None:  # the layers against the model, before the dense model is trained
      snnl_layers(config, _param_shapes(config, data.num_classes))

  def _layers(self, ctx: RunContext, params: PyTree):
    return snnl_layers(ctx.config, params)

  def prepare_mask(self, ctx: RunContext, params: PyTree, mask: masks.Mask) -> masks.Mask:
    layers, norms = self._layers(ctx, params)
    for name in layers:
      k = kernel_channels(params, name)
      mask = masks.channel_mask(
        params, mask, name, jnp.ones((k,), jnp.bool_), norm_layer=norms[name]
      )
    return mask

  def next_mask(self, ctx: RunContext, state: Any, step: int) -> masks.Mask:
    p = ctx.config.prune
    layers, norms = self._layers(ctx, state.params)
    totals = {name: kernel_channels(state.params, name) for name in layers}
    scores = snnl.score_channels(
      ctx.model,
      variables_of(state),
      ctx.scoring_batches(step),
      layers,
      temperature=float(p.snnl.temperature),
      include_self=bool(p.snnl.include_self),
      apply_kwargs={"train": False},
    )
    pruned = {name: ~keep for name, keep in channel_keep(state.mask, state.params, layers).items()}
    kept = {name: int((~pruned[name]).sum()) for name in layers}
    if p.target_sparsity is not None:
      plan = snnl_target_plan(
        schedules.target_ratio(step, p.target_sparsity, p.max_steps), kept, totals, p.snnl.scope
      )
    else:
      plan = snnl_plan(float(p.snnl.channels_per_step), kept, p.snnl.scope)
    if p.snnl.scope == "layer":
      keeps = {}
      for name in layers:
        keeps.update(
          snnl.select_channels(
            {name: scores[name]},
            amount=plan[name],
            scope="layer",
            already_pruned={name: pruned[name]},
          )
        )
    else:
      keeps = snnl.select_channels(scores, amount=plan, scope="global", already_pruned=pruned)
    mask = state.mask
    for name in layers:
      mask = masks.channel_mask(
        state.params, mask, name, jnp.asarray(keeps[name]), norm_layer=norms[name]
      )
    return mask

  def schedule_end(self, ctx: RunContext, state: Any, step: int) -> str | None:
    p = ctx.config.prune
    if p.target_sparsity is not None:
      return target_end(ctx.config, step)
    # Nothing left: the next step's plan (from the mask this step left) prunes no channel.
    layers, _ = self._layers(ctx, state.params)
    kept = {
      name: int(k.sum()) for name, k in channel_keep(state.mask, state.params, layers).items()
    }
    nxt = snnl_plan(float(p.snnl.channels_per_step), kept, p.snnl.scope)
    if (sum(nxt.values()) if isinstance(nxt, dict) else nxt) == 0:
      return (
        "no SNNL channel left to prune (every layer keeps at least one channel, or "
        "prune.snnl.channels_per_step rounds to 0)"
      )
    return None

  def step_info(self, ctx: RunContext, state: Any) -> dict[str, Any]:
    layers, _ = self._layers(ctx, state.params)
    keep = channel_keep(state.mask, state.params, layers)
    return channel_counts(
      {name: int(k.sum()) for name, k in keep.items()},
      {name: int(k.size) for name, k in keep.items()},
    )

  def report(self, ctx: RunContext, final: Any) -> dict[str, Any]:
    return {"slimming": slimming_summary(ctx.config, ctx.model, final)}


METHODS: dict[str, PruneMethod] = {"snnl_channels": SNNLChannels()}
