"""Per-channel Soft Nearest Neighbour Loss (SNNL) against a sensitive attribute.

The kernel of sensitive channel pruning (design.md section 3; Kong et al., MICCAI 2024, arXiv
2405.08681): every channel of a conv layer is scored by how well its feature maps separate the
sensitive groups. A LOW SNNL means samples sit closest to samples of their own group, i.e. the
channel encodes the sensitive attribute, so it is pruned first.

Pieces, lowest first:

- :func:`channel_snnl` / :func:`channel_snnl_with_count`: activations ``[B, H, W, K]`` and groups
  ``[B]`` in, ``[K]`` SNNL out, every channel at once (per-channel normalised Gram matrices
  ``[K, B, B]``, no Python loop over channels).
- :func:`capture_activations`: the outputs of named submodules of any Linen model, taken with
  ``flax.linen.intercept_methods`` so models need no changes (the same idea as
  ``fairjax.curvature.discover_layers``).
- :func:`score_channels`: SNNL per channel averaged over batches (weighted by anchor counts).
- :func:`select_channels`: scores -> per-layer ``bool[K]`` keep vectors (lowest SNNL pruned).

This module is a kernel: it takes models, arrays and iterables of batch dicts, never datasets,
configs or the CLI (design.md section 0).
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from fairjax import schedules
from fairjax.pruning import _scoring

PyTree = Any

# Norm floor for the cosine: x / max(||x||, eps). A channel that is exactly zero for a sample (a
# pruned channel, a dead ReLU input) becomes the zero vector, whose cosine with everything is 0
# (distance 1) instead of NaN. Same convention as torch.nn.functional.normalize (eps 1e-12),
# which the official code uses, so include_self=True matches it even for zero maps.
NORM_EPS: float = 1e-12

# Module types listed in the "unknown layer" error of capture_activations.
_LISTED_TYPES = (nn.Conv, nn.ConvTranspose, nn.Dense, nn.BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _compute_dtype(dtype: Any) -> Any:
  # bf16/f16 cosines of 196-long vectors lose ~3 digits; float64 is honoured for references.
  return jnp.float64 if dtype == jnp.float64 else jnp.float32


def _snnl_sums(
  activations: jax.Array,
  sensitive: jax.Array,
  valid: jax.Array,
  temperature: jax.Array,
  include_self: bool,
) -> tuple[jax.Array, jax.Array]:
  """``(sum over counted anchors of -log ratio [K], number of counted anchors int32 [])``.

  Traceable core shared by the public functions and :func:`score_channels`.
  """
  dtype = _compute_dtype(activations.dtype)
  b, k = activations.shape[0], activations.shape[-1]
  # [B, ..., K] -> [K, B, P]: channels become the batch dimension of one batched matmul.
  x = jnp.moveaxis(activations.astype(dtype).reshape(b, -1, k), -1, 0)
  sq_norm = jnp.sum(x * x, axis=-1, keepdims=True)
  x = x * jax.lax.rsqrt(jnp.maximum(sq_norm, jnp.asarray(NORM_EPS**2, dtype)))
  # HIGHEST: on GPUs the default f32 matmul may run in TF32, whose 10-bit mantissa would blur
  # cosines near 1. No cost on CPU.
  cos = jnp.einsum("kip,kjp->kij", x, x, precision=jax.lax.Precision.HIGHEST)  # [K, B, B]
  logits = (cos - 1.0) / temperature.astype(dtype)  # = -d_ij / T, in [-2/T, 0]

  eye = jnp.eye(b, dtype=jnp.bool_)
  same = (sensitive[:, None] == sensitive[None, :]) & valid[None, :]
  others = valid[None, :] & ~eye  # denominator: every valid j != i
  same_others = same & ~eye
  if include_self:
    # Official code: numerator sums over ALL j in the anchor's group, j = i included (the
    # diagonal mask is applied to the denominator only). Every anchor with a denominator
    # counts, singletons included (their numerator is the self term alone).
    numerator = same
    anchor = valid & jnp.any(others, axis=1)
  else:
    numerator = same_others
    anchor = valid & jnp.any(same_others, axis=1)

  # log-sum-exp over masked entries (-inf) rather than sums of exp: with a small temperature
  # e^{-d/T} underflows to 0 for every j and the ratio would become 0/0.
  neg_inf = jnp.asarray(-jnp.inf, dtype)
  log_num = jax.nn.logsumexp(jnp.where(numerator, logits, neg_inf), axis=-1)  # [K, B]
  log_den = jax.nn.logsumexp(jnp.where(others, logits, neg_inf), axis=-1)
  # Skipped anchors give -inf - -inf = NaN here; the where discards them.
  per_anchor = jnp.where(anchor[None, :], log_den - log_num, jnp.zeros((), dtype))
  return jnp.sum(per_anchor, axis=-1), jnp.sum(anchor, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames=("include_self",))
def _snnl_with_count_jit(activations, sensitive, valid, temperature, include_self):
  sums, count = _snnl_sums(activations, sensitive, valid, temperature, include_self)
  # 0/0 = NaN when no anchor was counted: a mean over nothing is undefined, not 0.
  return sums / count.astype(sums.dtype), count


def _checked_inputs(
  activations: jax.Array, sensitive: jax.Array, valid: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
  activations = jnp.asarray(activations)
  sensitive = jnp.asarray(sensitive)
  if activations.ndim < 2:
    raise ValueError(f"activations must be [B, ..., K], got shape {activations.shape}")
  b = activations.shape[0]
  if sensitive.shape != (b,) or not jnp.issubdtype(sensitive.dtype, jnp.integer):
    raise ValueError(
      f"sensitive must be an integer [{b}] array, got {sensitive.dtype}{list(sensitive.shape)}"
    )
  if valid is None:
    valid = jnp.ones((b,), jnp.bool_)
  else:
    valid = jnp.asarray(valid)
    if valid.shape != (b,) or valid.dtype != jnp.bool_:
      raise ValueError(f"valid must be bool[{b}], got {valid.dtype}{list(valid.shape)}")
  return activations, sensitive, valid


def channel_snnl_with_count(
  activations: jax.Array,
  sensitive: jax.Array,
  *,
  temperature: float = 1.0,
  include_self: bool = False,
  valid: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """:func:`channel_snnl` plus the number of anchors ``B'`` it averaged over.

  Averaging SNNL over the batches of a split must weight each batch by its ``B'`` (batches
  differ in how many anchors survive the skipping rule); :func:`score_channels` does this.

  Returns:
    ``(snnl [K], num_anchors int32 [])``; ``snnl`` is NaN everywhere when ``num_anchors == 0``.
  """
  activations, sensitive, valid = _checked_inputs(activations, sensitive, valid)
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  return _snnl_with_count_jit(
    activations,
    sensitive,
    valid,
    jnp.asarray(temperature, _compute_dtype(activations.dtype)),
    include_self=bool(include_self),
  )


def channel_snnl(
  activations: jax.Array,
  sensitive: jax.Array,
  *,
  temperature: float = 1.0,
  include_self: bool = False,
  valid: jax.Array | None = None,
) -> jax.Array:
  """Soft Nearest Neighbour Loss of every channel w.r.t. the sensitive groups (design.md s. 3).

  For channel ``k`` let ``x_i = flatten(A[i, ..., k])`` (length ``P = H*W``), the cosine distance
  ``d_ij = 1 - cos(x_i, x_j)`` and ``e_ij = exp(-d_ij / T)``. With ``include_self=False``
  (design.md, the paper's formula)::

      SNNL_k = -(1/B') sum_{i in anchors} log( sum_{j!=i, s_j=s_i} e_ij / sum_{j!=i} e_ij )

  where ``j`` runs over valid rows only and the anchors are the valid rows whose group has at
  least one OTHER valid member (others would give log 0); ``B'`` is their number.

  With ``include_self=True`` (the official code, for exact comparison) the numerator also
  counts ``j = i`` (term ``e_ii``: 1, or ``e^{-1/T}`` for an all-zero map), the denominator
  still excludes it, so the ratio may exceed 1 and SNNL may be negative; every valid row with
  at least one other valid row is an anchor (singleton groups included). The official code adds
  1e-9 to the numerator; that is omitted here since the numerator is then at least
  ``e^{-1/T}`` (only a relative difference below ``1e-9 * e^{1/T}``).

  Computed as per-channel normalised Gram matrices: ``x / max(||x||, NORM_EPS)`` over the ``P``
  positions (zero maps -> zero vectors, cosine 0), then ``cos = einsum -> [K, B, B]`` in one
  batched matmul, and masked log-sum-exps for the two sums (stable for any ``T > 0``). Memory
  ``~ K * B^2`` floats (512 channels x batch 128: 32 MiB per buffer). Jitted; recompiles per
  input shape and ``include_self``, not per ``temperature``.

  Args:
    activations: float ``[B, H, W, K]`` (any ``[B, ..., K]``; middle axes are flattened), e.g.
      a conv's pre-activation output from :func:`capture_activations`.
    sensitive: integer ``[B]`` sensitive-attribute labels (NOT the class). All values,
      negative ones included, are ordinary groups here; mask unknown rows with ``valid``.
    temperature: ``T > 0`` (default 1, as the paper).
    include_self: count ``j = i`` in the numerator as the official code does (see above).
    valid: optional bool ``[B]``; False rows (padding, unknown group) are neither anchors nor
      neighbours, exactly as if they were dropped from the batch.

  Returns:
    ``[K]`` SNNL per channel: float32 (float64 for float64 activations; bf16/f16 are
    computed in float32). NaN where no row qualifies as an anchor (``B' = 0``).
  """
  return channel_snnl_with_count(
    activations, sensitive, temperature=temperature, include_self=include_self, valid=valid
  )[0]


def _module_path(module: nn.Module) -> str:
  return "/".join(str(p) for p in module.scope.path)


def capture_activations(
  model: nn.Module,
  variables: PyTree,
  images: jax.Array,
  layers: Sequence[str],
  *,
  apply_kwargs: Mapping[str, Any] | None = None,
  pre_activation: bool = True,
) -> dict[str, jax.Array]:
  """Outputs of the named submodules of ``model`` during ``model.apply(variables, images)``.

  Every submodule ``__call__`` is intercepted with ``flax.linen.intercept_methods`` (as
  ``fairjax.curvature`` does), so any Linen model works unchanged. Traceable: call it inside
  ``jax.jit`` with ``model`` closed over (static); XLA then drops the layers after the last
  captured one, since their results are unused.

  Args:
    model: any Linen module.
    variables: its variables (``{"params": ..., "batch_stats": ...}``).
    images: the model input, e.g. float ``[B, H, W, 3]``.
    layers: module paths as in the params tree, joined by ``/``: ``"conv7"``,
      ``"layer4_block1/conv2"``, ``"bn7"``. A single string is taken as one layer.
    apply_kwargs: extra keyword arguments for ``model.apply`` (default none, i.e.
      ``train=False`` for fairjax models).
    pre_activation: True (default, as the paper): the module's raw output, which for a conv is
      the pre-BN, pre-ReLU map. False: ``relu`` of that output; to get the post-BN activation
      of a BN model, name the norm module (``"bn7"``) with ``pre_activation=False``.

  Returns:
    ``{path: output}`` with the module's output shape and dtype (``[B, H', W', K]`` for a
    conv), in the order of ``layers``.

  Raises:
    ValueError: a name that is not a called submodule (the message lists the conv / dense /
      norm module paths), or a module called more than once (shared weights: ambiguous).
  """
  wanted = (layers,) if isinstance(layers, str) else tuple(layers)
  captured: dict[str, Any] = {}
  listed: list[str] = []
  repeated: set[str] = set()

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__":
      path = _module_path(context.module)
      if isinstance(context.module, _LISTED_TYPES) and path not in listed:
        listed.append(path)
      if path in wanted:
        if path in captured:
          repeated.add(path)
        captured[path] = out
    return out

  with nn.intercept_methods(interceptor):
    model.apply(variables, images, **dict(apply_kwargs or {}))

  missing = [name for name in wanted if name not in captured]
  if missing:
    raise ValueError(
      f"unknown layer(s) {missing}; available conv/dense/norm module paths: "
      f"{', '.join(listed) or '(none)'}"
    )
  if repeated:
    raise ValueError(
      f"layer(s) {sorted(repeated)} are called more than once per forward "
      "pass; their activations are ambiguous"
    )
  out = {}
  for name in wanted:
    value = captured[name]
    if not isinstance(value, jax.Array):
      raise ValueError(f"{name!r} returns {type(value).__name__}, not an array")
    out[name] = value if pre_activation else jax.nn.relu(value)
  return out


@functools.lru_cache(maxsize=16)
def _batch_scorer(
  model: nn.Module,
  layers: tuple[str, ...],
  include_self: bool,
  apply_items: tuple[tuple[str, Any], ...],
):
  """One jitted ``(variables, images, groups, valid, T) -> ({layer: sums [K]}, count)``.

  Cached on the (hashable) model and options so repeated scoring in a prune loop reuses the
  compiled executables (jit itself keeps one per batch shape).
  """

  @jax.jit
  def scorer(variables, images, groups, valid, temperature):
    acts = capture_activations(model, variables, images, layers, apply_kwargs=dict(apply_items))
    valid = valid & (groups >= 0)  # group -1 = unknown attribute: never an anchor/neighbour
    sums, count = {}, None
    for name in layers:
      sums[name], count = _snnl_sums(acts[name], groups, valid, temperature, include_self)
    return sums, count

  return scorer


def score_channels(
  model: nn.Module,
  variables: PyTree,
  batches: Iterable[Mapping[str, Any]],
  layers: Sequence[str],
  *,
  temperature: float = 1.0,
  include_self: bool = False,
  apply_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
  """SNNL of every channel of ``layers``, averaged over ``batches`` (design.md section 3).

  Each batch is scored with :func:`channel_snnl` on the captured activations; the batch means
  are combined weighted by their anchor counts ``B'``, i.e. the result is the mean of the
  per-anchor terms over all anchors of all batches (anchors are formed within a batch, as in
  the official code). Only ``[K]`` float64 accumulators live across batches. One jitted
  forward + SNNL function per batch shape (cached per model and options across calls).

  Args:
    model: any Linen module; ``variables``: its variables.
    batches: iterable of dicts with ``"image"`` ``[B, H, W, 3]``, ``"group"`` int ``[B]``
      (``-1`` = unknown, excluded) and optionally ``"valid"`` bool ``[B]`` (padding).
    layers: module paths, see :func:`capture_activations`.
    temperature, include_self: see :func:`channel_snnl`.
    apply_kwargs: extra keyword arguments for ``model.apply``. The compiled scorer is reused
      across calls when the model and these values are hashable.

  Returns:
    ``{layer: float64 np.ndarray [K]}`` (lower = more group-separating).

  Raises:
    ValueError: no batch, or no anchor in any batch (e.g. only one group present).
  """
  layers = (layers,) if isinstance(layers, str) else tuple(layers)
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  key = (model, layers, bool(include_self), _scoring.freeze(apply_kwargs))
  try:
    hash(key)
  except TypeError:  # e.g. mutable=[...] or a model with list fields: no reuse across calls
    scorer = _batch_scorer.__wrapped__(*key)
  else:
    scorer = _batch_scorer(*key)
  temp = jnp.asarray(temperature, jnp.float32)

  def step(_, batch):
    # Padding rows (valid False) become group -1, which the scorer excludes.
    groups = jnp.asarray(_scoring.unknown_padding(batch), jnp.int32)
    return scorer(
      variables, jnp.asarray(batch["image"]), groups, jnp.ones(groups.shape, jnp.bool_), temp
    )

  # Float64 sums on the host; each batch is read back after the next one is dispatched, so the
  # transfer overlaps the device computation (_scoring.accumulate with on_host).
  means, counts = _scoring.accumulate(
    step, batches, caller="score_channels", mean=True, on_host=True
  )
  if int(np.sum(counts)) == 0:
    raise ValueError(
      "no anchors in any batch: every group had a single valid member "
      "(or no valid rows); SNNL is undefined"
    )
  return {name: means[name] for name in layers}


# The one share-to-count rounding (fairjax.schedules), as masks.prune_lowest uses it.
_round_half_up = schedules.round_half_up


def select_channels(
  scores: Mapping[str, np.ndarray],
  *,
  amount: int | float,
  scope: str = "layer",
  already_pruned: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
  """Prunes the channels with the LOWEST SNNL (most group-separating; design.md section 3).

  Args:
    scores: ``{layer: [K]}`` SNNL per channel, e.g. from :func:`score_channels`.
    amount: an ``int`` is a channel count (per layer for ``scope="layer"``, in total for
      ``"global"``); a ``float`` in [0, 1] is a fraction of the currently kept channels (per
      layer, or of all kept channels), rounded half up as ``fairjax.masks.prune_lowest`` does.
    scope: ``"layer"`` ranks within each layer; ``"global"`` ranks all layers together (raw
      SNNL values compared directly; they share one scale, a log-probability ratio).
    already_pruned: optional ``{layer: bool[K]}``, True = pruned earlier (e.g.
      ``~fairjax.masks.channel_keep_from_mask(mask, layer)``). These are never picked again and
      stay pruned; missing layers count as fully kept.

  Returns:
    ``{layer: bool np.ndarray [K]}`` keep vectors (True = keep) for every layer of ``scores``,
    ready for ``fairjax.masks.channel_mask``. Ties go to the lower channel index (and, global,
    to the earlier layer in ``scores`` order).

  Raises:
    ValueError: the request would remove a layer's last remaining channel (never done: a
      layer with no channel disconnects the network) — ``scope="layer"``: more than
      ``kept - 1`` in some layer; ``"global"``: more than ``sum(kept - 1)``; layers are then
      protected individually, a layer's best-scored channel surviving when the ranking
      would take them all. Also NaN scores at kept channels, shape mismatches, bad
      ``amount`` or ``scope``.
  """
  if scope not in ("layer", "global"):
    raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
  if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
    raise ValueError(f"amount must be an int count or a float fraction, got {amount!r}")
  if not isinstance(amount, numbers.Integral) and not 0.0 <= float(amount) <= 1.0:
    raise ValueError(f"a fractional amount must be in [0, 1], got {amount}")
  if isinstance(amount, numbers.Integral) and amount < 0:
    raise ValueError(f"amount must be >= 0, got {amount}")
  already_pruned = dict(already_pruned or {})
  unknown = set(already_pruned) - set(scores)
  if unknown:
    raise ValueError(f"already_pruned names layers without scores: {sorted(unknown)}")

  names = list(scores)
  layer_scores, keeps = [], []
  for name in names:
    s = np.asarray(scores[name], np.float64)
    if s.ndim != 1 or s.size == 0:
      raise ValueError(f"scores[{name!r}] must be a non-empty [K] vector, got {s.shape}")
    keep = np.ones(s.shape, bool)
    if name in already_pruned:
      pruned = np.asarray(already_pruned[name])
      if pruned.shape != s.shape or pruned.dtype != bool:
        raise ValueError(
          f"already_pruned[{name!r}] must be bool{list(s.shape)}, got "
          f"{pruned.dtype}{list(pruned.shape)}"
        )
      keep = ~pruned
    if not keep.any():
      raise ValueError(f"layer {name!r} has no kept channel left")
    if np.isnan(s[keep]).any():
      raise ValueError(f"NaN SNNL at kept channels of layer {name!r}")
    layer_scores.append(s)
    keeps.append(keep.copy())

  def count(kept: int) -> int:
    if isinstance(amount, numbers.Integral):
      return int(amount)
    return _round_half_up(float(amount) * kept)

  if scope == "layer":
    for name, s, keep in zip(names, layer_scores, keeps):
      kept = int(keep.sum())
      n = count(kept)
      if n > kept - 1:
        raise ValueError(
          f"cannot prune {n} of the {kept} kept channels of {name!r}: "
          "a layer keeps at least one channel"
        )
      candidates = np.flatnonzero(keep)
      # Stable sort on the score: ties keep index order, so the lower index goes first.
      order = candidates[np.argsort(s[candidates], kind="stable")]
      keep[order[:n]] = False
    return dict(zip(names, keeps))

  kept_per_layer = [int(k.sum()) for k in keeps]
  n = count(sum(kept_per_layer))
  if n > sum(kept_per_layer) - len(names):
    raise ValueError(
      f"cannot prune {n} of {sum(kept_per_layer)} kept channels over "
      f"{len(names)} layers: every layer keeps at least one channel"
    )
  layer_ids = np.concatenate([np.full(k.size, i) for i, k in enumerate(keeps)])
  channel_ids = np.concatenate([np.arange(k.size) for k in keeps])
  flat_scores = np.concatenate(layer_scores)
  flat_keep = np.concatenate(keeps)
  cand = np.flatnonzero(flat_keep)
  # lexsort: last key is primary -> (score, layer order, channel index).
  order = cand[np.lexsort((channel_ids[cand], layer_ids[cand], flat_scores[cand]))]
  remaining = list(kept_per_layer)
  picked = 0
  for pos in order:
    if picked == n:
      break
    layer = int(layer_ids[pos])
    if remaining[layer] == 1:  # this layer's last channel: skip, take the next candidate
      continue
    keeps[layer][channel_ids[pos]] = False
    remaining[layer] -= 1
    picked += 1
  return dict(zip(names, keeps))
