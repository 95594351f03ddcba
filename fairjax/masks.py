"""Boolean mask pytrees: scores -> masks, structured channel masks, masked optax updates.

A *mask* is a pytree shaped like the params tree (``variables["params"]``) whose leaves are
``bool`` arrays with the shape of the matching param (``True`` = keep, ``False`` = pruned), or
``None`` for leaves that are not prunable (design.md section 2, "Scope"). Every pruning method
computes a score pytree and hands it to the shared selection code here (``prune_lowest``,
``prune_to_sparsity``, ``channel_mask``), following jaxpruner's split between
``calculate_scores`` and its mask calculator. Helpers below handle the ``None`` leaves so callers
never hand-roll ``is_leaf``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fairjax import schedules

PyTree = Any
Mask = PyTree
PathPredicate = Callable[[tuple[str, ...], jax.Array], bool]


def _is_none(x: Any) -> bool:
  return x is None


def _key_str(key: Any) -> str:
  for attr in ("key", "name", "idx"):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_str(path: tuple[Any, ...]) -> str:
  """``("conv3", "kernel")`` (or a JAX key path) -> ``"conv3/kernel"``."""
  return "/".join(_key_str(k) for k in path)


def flatten_with_paths(tree: PyTree) -> list[tuple[tuple[str, ...], Any]]:
  """``[(("conv0", "kernel"), leaf), ...]`` in JAX's flattening order; ``None`` leaves dropped."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(tuple(_key_str(k) for k in kp), leaf) for kp, leaf in leaves]


def _aligned(mask: Mask, *trees: PyTree) -> tuple[Any, list[tuple[str, ...]], list, list[list]]:
  """Flattens ``mask`` keeping ``None`` leaves, and each tree up to the mask's structure."""
  kp_leaves, treedef = jax.tree_util.tree_flatten_with_path(mask, is_leaf=_is_none)
  paths = [tuple(_key_str(k) for k in kp) for kp, _ in kp_leaves]
  return treedef, paths, [m for _, m in kp_leaves], [treedef.flatten_up_to(t) for t in trees]


def map_with_mask(fn: Callable[..., Any], mask: Mask, *trees: PyTree) -> PyTree:
  """``fn(mask_leaf_or_None, *leaves)`` over every position of ``mask`` (``None`` included)."""
  return jax.tree.map(fn, mask, *trees, is_leaf=_is_none)


def default_prunable(path: tuple[str, ...], leaf: jax.Array) -> bool:
  """Conv and dense kernels only (name ``kernel``, ndim > 1); biases and norm params are kept
  (design.md section 2, "Scope")."""
  return bool(path) and path[-1] == "kernel" and jnp.ndim(leaf) > 1


def init_mask(params: PyTree, prunable: PathPredicate = default_prunable) -> Mask:
  """All-``True`` ``bool`` arrays (param shape) where ``prunable(path, leaf)``, ``None`` elsewhere."""
  return jax.tree_util.tree_map_with_path(
    lambda kp, x: (
      jnp.ones(jnp.shape(x), jnp.bool_) if prunable(tuple(_key_str(k) for k in kp), x) else None
    ),
    params,
  )


def apply_mask(tree: PyTree, mask: Mask) -> PyTree:
  """Zeroes ``tree`` (params, gradients, updates) where ``mask`` is False; dtype preserved.

  ``jnp.where`` rather than multiplication so that a NaN/inf gradient at a pruned position
  still becomes exactly zero.
  """
  return map_with_mask(
    lambda m, x: x if m is None or x is None else jnp.where(m, x, jnp.zeros_like(x)), mask, tree
  )


def combine(mask_a: Mask, mask_b: Mask) -> Mask:
  """Logical AND of two masks; ``None`` (not prunable) acts as all-True."""

  def both(a, b):
    if a is None:
      return b
    return a if b is None else jnp.logical_and(a, b)

  return map_with_mask(both, mask_a, mask_b)


def _counts(total: int, pruned: int) -> dict[str, float | int]:
  return {
    "total": total,
    "kept": total - pruned,
    "pruned": pruned,
    "sparsity": pruned / total if total else 0.0,
  }


def sparsity_report(
  mask: Mask, params: PyTree | None = None, *, kernels_only: bool = False
) -> dict[str, Any]:
  """Plain-Python (JSON-serialisable) sparsity numbers.

  Returns ``{"layers": {"conv0/kernel": {total, kept, pruned, sparsity}, ...},
  "global": {...}}`` over the mask's non-``None`` leaves and, when ``params`` is given,
  ``"all_params": {...}`` whose ``total`` counts every param entry (biases, norms included).

  ``kernels_only=True`` counts only the conv/dense kernel leaves of the mask
  (:func:`default_prunable`: named ``kernel``, ndim > 1). This is the weight sparsity every
  pruning method reports: for an unstructured mask over kernels it changes nothing, and for a
  structured channel mask (:func:`channel_mask`, which also masks the bias and BN scale/shift
  of a dropped channel) it leaves those 1-D entries out of both the numerator and the
  denominator.
  """
  layers, total, pruned = {}, 0, 0
  for path, m in flatten_with_paths(mask):
    if kernels_only and not default_prunable(path, m):
      continue
    m = np.asarray(m)
    n, p = int(m.size), int(m.size - np.count_nonzero(m))
    layers[path_str(path)] = _counts(n, p)
    total, pruned = total + n, pruned + p
  report: dict[str, Any] = {"layers": layers, "global": _counts(total, pruned)}
  if params is not None:
    n_all = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    report["all_params"] = _counts(n_all, pruned)
  return report


def _order_keys(values: np.ndarray) -> np.ndarray:
  """Integer keys whose order is ``jax.lax.sort``'s order of ``values`` (a 1-D numpy array).

  Floats map to the signed integers of their bits, with the magnitude bits of negative numbers
  flipped, which orders them as numbers (``-inf`` first, ``+inf`` last). ``-0.0`` becomes
  ``+0.0`` first because ``lax.sort`` treats the two as equal. Floats narrower than 32 bits
  (``float16``, ``bfloat16``) widen to ``float32`` exactly; integers and booleans are their own
  keys.
  """
  if jnp.issubdtype(values.dtype, jnp.floating):
    if values.dtype.itemsize < 4:
      values = values.astype(np.float32)
    values = np.where(values == 0, np.zeros((), values.dtype), values)
    bits = values.view(np.int32 if values.dtype.itemsize == 4 else np.int64)
    return bits ^ ((bits >> (8 * bits.itemsize - 1)) & np.iinfo(bits.dtype).max)
  if values.dtype == np.bool_:
    return values.astype(np.uint8)
  return values


def _on_host(x: Any) -> np.ndarray:
  """``x`` as a numpy array of the dtype JAX would give it (float64 -> float32 without x64)."""
  x = np.asarray(x)
  dtype = jax.dtypes.canonicalize_dtype(x.dtype)
  return x if x.dtype == dtype else x.astype(dtype)


def _drop_lowest(scores: Any, keep: Any, n: int) -> np.ndarray:
  """Flat ``keep`` (bool[N]) with its ``n`` lowest-scored kept entries set False (numpy).

  The entries dropped are the first ``n`` kept ones in the order (score, flat index): ties
  resolve to the lowest flat index, deterministically, and pruned entries are never chosen.
  A selection on the host, by the ``n``-th smallest key (``np.partition``, linear time), not a
  sort (design.md section 2.2 has the measurement). The result is the one of a full sort
  (tested against ``jax.lax.sort``). Requires ``0 <= n <= keep.sum()``.
  """
  out = np.array(keep, dtype=bool).reshape(-1)
  if n == 0:
    return out
  kept = np.flatnonzero(out)
  keys = _order_keys(_on_host(scores).reshape(-1)[kept])
  threshold = np.partition(keys, n - 1)[n - 1]
  below = keys < threshold
  ties = np.flatnonzero(keys == threshold)[: n - int(np.count_nonzero(below))]
  out[kept[below]] = False
  out[kept[ties]] = False
  return out


# The one share-to-count rounding of pruning (fairjax.schedules): floor(x + 0.5).
_round_half_up = schedules.round_half_up


def _layers_for_selection(scores: PyTree, mask: Mask):
  """Validated ``(treedef, paths, masks, scores)`` leaf lists aligned on the mask."""
  treedef, paths, masks, (score_leaves,) = _aligned(mask, scores)
  for path, m, s in zip(paths, masks, score_leaves):
    if m is None:
      continue
    name = path_str(path)
    if s is None:
      raise ValueError(f"scores are None for prunable layer {name!r}")
    if jnp.shape(s) != jnp.shape(m):
      raise ValueError(f"scores shape {jnp.shape(s)} != mask shape {jnp.shape(m)} for {name!r}")
    if jnp.issubdtype(jnp.result_type(s), jnp.inexact) and bool(jnp.any(jnp.isnan(s) & m)):
      raise ValueError(f"NaN scores at kept positions of layer {name!r}")
  return treedef, paths, masks, score_leaves


def _select(
  scores: PyTree, mask: Mask, counts: Callable[[list[int]], list[int] | int], scope: str
) -> Mask:
  """Prunes ``counts(kept_per_layer)`` lowest-scored kept weights (one int: global scope)."""
  if scope not in ("global", "layer"):
    raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
  treedef, paths, masks, score_leaves = _layers_for_selection(scores, mask)
  idx = [i for i, m in enumerate(masks) if m is not None]
  kept = [int(jnp.sum(masks[i])) for i in idx]
  new = list(masks)
  if scope == "layer":
    for i, k, n in zip(idx, kept, counts(kept)):
      if not 0 <= n <= k:
        raise ValueError(f"cannot prune {n} of {k} kept weights in {path_str(paths[i])!r}")
      flat = _drop_lowest(score_leaves[i], masks[i], n)
      new[i] = jnp.asarray(flat.reshape(jnp.shape(masks[i])))
  elif idx:
    n = counts(kept)
    if not 0 <= n <= sum(kept):
      raise ValueError(f"cannot prune {n} of {sum(kept)} kept weights")
    # Scores of different layers are compared directly: scale them first if that is unfair.
    dtype = jnp.result_type(*[score_leaves[i] for i in idx])
    flat = _drop_lowest(
      np.concatenate([_on_host(score_leaves[i]).astype(dtype).reshape(-1) for i in idx]),
      np.concatenate([np.asarray(masks[i]).reshape(-1) for i in idx]),
      n,
    )
    sizes = [int(np.size(masks[i])) for i in idx]
    for i, part in zip(idx, np.split(flat, np.cumsum(sizes)[:-1])):
      new[i] = jnp.asarray(part.reshape(jnp.shape(masks[i])))
  return jax.tree.unflatten(treedef, new)


def prune_lowest(scores: PyTree, mask: Mask, amount: float | int, *, scope: str = "global") -> Mask:
  """Prunes the lowest-scored *currently kept* weights (design.md sections 2 and 4).

  Args:
    scores: pytree like params; float/int arrays shaped like the matching mask leaf. Only
      positions with a non-``None`` mask leaf are read (``None`` or any value elsewhere).
    mask: current mask. Already-pruned weights are never selected again (as if scored +inf).
    amount: a ``float`` in [0, 1] is a fraction of the kept weights (global: of all kept
      prunable weights; ``scope="layer"``: of each layer's kept weights) and prunes exactly
      ``floor(fraction * kept + 0.5)`` (round half up); an ``int`` is an exact count (per layer
      for ``scope="layer"``). ``1.0`` prunes everything kept, ``1`` prunes one weight.
    scope: ``"global"`` ranks all prunable weights together, ``"layer"`` ranks within layers.

  Returns:
    A new mask; ties broken by flat index (lower index pruned first; for global scope the
    flat order is the layers' flattening order, then row-major within a layer).

  Raises:
    ValueError: NaN among kept scores (naming the layer), shape mismatch, bad amount.
  """
  if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
    raise ValueError(f"amount must be a float fraction or an int count, got {amount!r}")
  if isinstance(amount, numbers.Integral):
    count = int(amount)
    return _select(
      scores, mask, lambda kept: [count] * len(kept) if scope == "layer" else count, scope
    )
  if not 0.0 <= amount <= 1.0:
    raise ValueError(f"fraction must be in [0, 1], got {amount}")
  frac = float(amount)
  return _select(
    scores,
    mask,
    lambda kept: (
      [_round_half_up(frac * k) for k in kept]
      if scope == "layer"
      else _round_half_up(frac * sum(kept))
    ),
    scope,
  )


def prune_to_sparsity(
  scores: PyTree, mask: Mask, target_sparsity: float, *, scope: str = "global"
) -> Mask:
  """Prunes the lowest-scored kept weights until the prunable-weight sparsity hits the target.

  Cumulative (design.md section 4, ``r_i``): the target counts weights already pruned. The
  pruned count becomes ``floor(target * total + 0.5)`` over all prunable weights (global) or
  per layer (``scope="layer"``). If the mask is already sparser, nothing changes: pruned
  weights are never revived. Same scores, ties and NaN rules as ``prune_lowest``.
  """
  if not 0.0 <= target_sparsity <= 1.0:
    raise ValueError(f"target_sparsity must be in [0, 1], got {target_sparsity}")
  totals = [int(np.size(m)) for _, m in flatten_with_paths(mask)]

  def counts(kept: list[int]):
    if scope == "layer":
      return [max(0, _round_half_up(target_sparsity * t) - (t - k)) for t, k in zip(totals, kept)]
    total = sum(totals)
    return max(0, _round_half_up(target_sparsity * total) - (total - sum(kept)))

  return _select(scores, mask, counts, scope)


def _get(tree: PyTree, parts: tuple[str, ...]) -> Any:
  node = tree
  for i, part in enumerate(parts):
    if not isinstance(node, Mapping) or part not in node:
      raise KeyError(f"no {'/'.join(parts[: i + 1])!r} in the tree")
    node = node[part]
  return node


def _set(tree: PyTree, parts: tuple[str, ...], value: Any) -> PyTree:
  """Copy of a nested-mapping ``tree`` with ``tree[parts] = value`` (input left untouched)."""
  new = dict(tree)
  new[parts[0]] = value if len(parts) == 1 else _set(tree[parts[0]], parts[1:], value)
  return new if type(tree) is dict else type(tree)(new)


def channel_mask(
  params: PyTree,
  mask: Mask,
  layer: str,
  keep_channels: Any,
  *,
  norm_layer: str | None = None,
  next_layer: str | None = None,
) -> Mask:
  """Drops output channels of ``layer`` so that they emit exactly zero (design.md section 3).

  Args:
    params: the params tree, used for shapes.
    mask: current mask; the result is ANDed with it (dropped channels stay dropped).
    layer: module path such as ``"conv7"`` or ``"layer1_block0/conv1"`` holding ``kernel``
      ``[..., K]`` and optionally ``bias`` ``[K]``.
    keep_channels: ``bool[K]``, False = drop channel k.
    norm_layer: optional norm module (e.g. ``"bn7"``) whose ``scale``/``bias`` ``[K]`` entries of
      dropped channels are masked too, so BN's shift cannot resurrect the channel (the
      official code masks only the kernel). Those leaves become ``bool`` arrays if they were
      ``None``.
    next_layer: the consumer of these channels. Its inputs are NOT masked (zero outputs already
      remove the channel); it is only checked for shape compatibility here (input dim ``K``,
      or a multiple of ``K`` for a dense layer after an NHWC flatten) so that later physical
      slimming can rely on the (layer, norm_layer, next_layer) triple.

  Returns:
    The new mask (same structure as ``mask``).
  """
  keep = jnp.asarray(keep_channels)
  parts = tuple(layer.split("/"))
  module = _get(params, parts)
  kernel = module["kernel"]
  k = kernel.shape[-1]
  if keep.shape != (k,) or keep.dtype != jnp.bool_:
    raise ValueError(
      f"keep_channels must be bool[{k}] for {layer!r}, got {keep.dtype}{list(keep.shape)}"
    )

  def masked(mask: Mask, path: tuple[str, ...], shape: tuple[int, ...]) -> Mask:
    old = _get(mask, path)
    old = jnp.ones(shape, jnp.bool_) if old is None else old
    return _set(mask, path, jnp.logical_and(old, jnp.broadcast_to(keep, shape)))

  new = masked(mask, parts + ("kernel",), kernel.shape)
  if "bias" in module:
    new = masked(new, parts + ("bias",), module["bias"].shape)
  if norm_layer is not None:
    norm_parts = tuple(norm_layer.split("/"))
    for name, leaf in _get(params, norm_parts).items():
      if name in ("scale", "bias"):
        if leaf.shape != (k,):
          raise ValueError(f"{norm_layer}/{name} has shape {leaf.shape}, expected ({k},)")
        new = masked(new, norm_parts + (name,), leaf.shape)
  if next_layer is not None:
    fan_in = _get(params, tuple(next_layer.split("/")))["kernel"].shape[-2]
    if fan_in % k:
      raise ValueError(f"{next_layer!r} has input dim {fan_in}, not a multiple of {k}")
  return new


def channel_keep_from_mask(mask: Mask, layer: str) -> jax.Array:
  """``bool[K]``: channel k of ``layer`` counts as kept if any of its kernel entries is kept."""
  kernel_mask = _get(mask, tuple(layer.split("/")) + ("kernel",))
  if kernel_mask is None:
    raise ValueError(f"{layer}/kernel is not prunable (None in the mask)")
  return jnp.any(kernel_mask, axis=tuple(range(kernel_mask.ndim - 1)))


def masked_updates(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` so pruned weights stay exactly zero through training.

  ``update(updates, state, params=None, *, mask=None, **extra_args)`` zeroes the incoming
  gradients at pruned positions (so momentum / Adam moments of pruned weights stay zero), runs
  ``inner`` (extra args are forwarded only if ``inner`` accepts them), then zeroes the
  outgoing updates (so weight decay or any other term cannot move them). ``mask`` is an
  ordinary pytree argument: pass it through a jitted train step and changing the mask's
  values never recompiles. ``mask=None`` is exactly ``inner``.

  The params must already be zero at pruned positions: call ``apply_mask(params, mask)`` once
  after each pruning step, before training resumes.
  """
  inner = optax.with_extra_args_support(inner)

  def update(updates, state, params=None, *, mask=None, **extra_args):
    if mask is None:
      return inner.update(updates, state, params, **extra_args)
    updates, state = inner.update(apply_mask(updates, mask), state, params, **extra_args)
    return apply_mask(updates, mask), state

  return optax.GradientTransformationExtraArgs(inner.init, update)
