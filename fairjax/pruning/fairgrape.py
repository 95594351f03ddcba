"""FairGRAPE (Lin et al., ECCV 2022, arXiv 2207.10888): design.md section 4.

Per-group importance of a weight ``w`` is ``I_g(w) = sum_batches (w * dL_g/dw)**2`` with ``L_g``
the mean cross-entropy of group ``g``'s samples in the batch, taken through the masked model
(:func:`group_importance`, :func:`accumulate_importance`). Per layer, :func:`greedy_select` then
keeps a budget of weights so that every group keeps about the same fraction of its importance,
and :func:`fairgrape_mask` turns that into a mask; :func:`cumulative_ratio` is the schedule.

The greedy, precisely. For importance ``I [G, n]`` let ``T_g = sum_w I_g(w)``, ``T = sum_g T_g``
and ``t_g = T_g / T`` (the target shares; ``1/G`` when ``T = 0``). Stream ``g`` lists the weights
by decreasing ``I_g`` (ties: lower index first). With ``K_g`` the importance for group ``g`` of
the weights kept so far and ``S = sum_g K_g``, the kept shares are ``p_g = K_g / S`` (``1/G``
while ``S = 0``, as in the official code's start). Until ``keep`` weights are kept: pick
``g* = argmin_g (p_g - t_g)`` (lowest ``g`` on ties), advance stream ``g*`` past its next weight
and keep it unless it is already kept (then nothing changes and the same group picks again).
For ``S > 0`` the rule is evaluated as ``argmin_g (T * K_g - T_g * S)`` (the same comparison
multiplied by ``T * S > 0``), exactly for integer-valued importance.

Why a compiled sequential loop rather than sorts alone: the state after any number of steps is
the vector of stream positions ``a`` (kept set = union of the stream prefixes), and the deficit
vector is a sum over that set. For ``G = 2`` the rule compares one function of ``a_0`` with one
of ``a_1``, a merge. For ``G >= 3`` it is a piecewise translation of a ``(G-1)``-dimensional
deficit vector; such maps do not contract (nearby states never merge), so an approximate order
cannot be repaired locally and we know no sort-based shortcut.
:func:`greedy_select` therefore runs the exact step rule in a ``lax.while_loop`` whose body
only gathers from precomputed arrays (each weight's step vector ``T * I(w) - T_g * I_tot(w)`` and
its position in every stream; "already kept" = "some other stream is past it"), which XLA
compiles into a native loop (0.3-0.4 us a step measured on a busy 2-core CPU, dominated by
the random-access gathers). Cost: ``G`` sorts, ``O(G n log n)``, plus at most ``G * keep`` steps of ``O(G)`` work; float64 throughout (``jax.enable_x64`` is switched on
for that call only).

Not reproduced from the official code (design.md section 4): its scoring never zeroes gradients,
so they accumulate across groups and batches (and an optimizer step runs inside scoring), and
only the last group's importance is divided by the batch count. Here each group's gradient comes
from its own loss on each batch, and batches are summed the same way for every group.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fairjax import masks

PyTree = Any


@functools.partial(jax.jit, static_argnames=("model", "num_groups", "apply_kwargs"))
def _group_importance(model, variables, images, labels, groups, mask, *, num_groups,
                      apply_kwargs):
  params = masks.apply_mask(variables["params"], mask)
  others = {k: v for k, v in variables.items() if k != "params"}
  dtype = jax.tree.leaves(params)[0].dtype

  def per_sample_loss(p):
    logits = model.apply({"params": p, **others}, images, **dict(apply_kwargs))
    logp = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]

  onehot = jax.nn.one_hot(groups, num_groups, dtype=dtype)  # id -1 (unknown) -> zero row
  weights = onehot / jnp.maximum(jnp.sum(onehot, axis=0), 1.0)  # mean over the group; 0 if absent
  _, vjp_fn = jax.vjp(per_sample_loss, params)
  # One forward, G pullbacks of the same VJP. A Python loop rather than a vmap: vmapping conv
  # weight gradients lowers to slow grouped convolutions on XLA:CPU (design.md section 1).
  grads = [vjp_fn(weights[:, g])[0] for g in range(num_groups)]
  return jax.tree.map(lambda w, *gs: jnp.stack([(w * g) ** 2 for g in gs]), params, *grads)


def group_importance(model: nn.Module, variables: PyTree, images: jax.Array, labels: jax.Array,
                     groups: jax.Array, mask: masks.Mask, *, num_groups: int,
                     apply_kwargs: Mapping[str, Any] | None = None) -> PyTree:
  """Per-group importance ``(w * dL_g/dw)**2`` of one mini-batch (design.md section 4).

  Args:
    model: Flax module mapping ``images`` to logits ``[N, C]`` (static under jit).
    variables: model variables; only ``variables["params"]`` is differentiated.
    images: ``float[N, ...]``; labels: ``int[N]`` class ids.
    groups: ``int[N]`` ids in ``[0, num_groups)``; other ids (``-1`` = unknown) are ignored.
    mask: mask pytree (:mod:`fairjax.masks`); params are masked BEFORE the forward, so pruned
      weights have zero importance and gradients are those of the pruned network.
    num_groups: ``G`` (static).
    apply_kwargs: keyword arguments of ``model.apply`` (e.g. ``{"train": False}``; BatchNorm must
      be in inference mode, mutable collections are not supported).

  Returns:
    Pytree like ``variables["params"]``, leaves ``[G, *leaf.shape]`` in the params dtype. ``L_g``
    is the mean loss of group ``g``'s samples in this batch; a group absent from the batch gets
    zeros. One forward pass and ``G`` pullbacks of a single ``jax.vjp``.
  """
  if num_groups < 1:
    raise ValueError(f"num_groups must be >= 1, got {num_groups}")
  return _group_importance(model, variables, jnp.asarray(images), jnp.asarray(labels, jnp.int32),
                           jnp.asarray(groups, jnp.int32), mask, num_groups=num_groups,
                           apply_kwargs=tuple(sorted((apply_kwargs or {}).items())))


def accumulate_importance(model: nn.Module, variables: PyTree,
                          batches: Iterable[Mapping[str, Any]], mask: masks.Mask, *,
                          num_groups: int,
                          apply_kwargs: Mapping[str, Any] | None = None) -> PyTree:
  """``I_g(w)`` summed over mini-batches (design.md section 4).

  ``batches`` yield dicts with ``image``, ``label`` and ``group`` (the fairjax batch format);
  rows with ``valid == False`` (padding of a last eval batch) are treated as group ``-1``.
  Returns the pytree ``[G, ...]`` of :func:`group_importance`, summed.
  """
  total = None
  for batch in batches:
    groups = batch["group"]  # left as it is (e.g. sharded over devices) unless rows are padding
    if "valid" in batch:
      groups = np.where(np.asarray(batch["valid"], bool), np.asarray(groups, np.int32), -1)
    imp = group_importance(model, variables, batch["image"], batch["label"], groups, mask,
                           num_groups=num_groups, apply_kwargs=apply_kwargs)
    total = imp if total is None else jax.tree.map(jnp.add, total, imp)
  if total is None:
    raise ValueError("accumulate_importance got no batches")
  return total


def _stream_orders(imp: np.ndarray) -> np.ndarray:
  """``int32 [G, m]``: each row's indices by decreasing importance, ties by increasing index.

  An unstable SIMD argsort is ~3x faster than a stable one here; ties (zeros are common) are then
  put in index order by one int64 sort of ``tie_run_id * m + index``.
  """
  num_groups, m = imp.shape
  out = np.empty((num_groups, m), np.int32)
  for g in range(num_groups):
    order = np.argsort(-imp[g], kind="quicksort")
    values = imp[g][order]
    changed = values[1:] != values[:-1]
    if not changed.all():
      run = np.concatenate([[0], np.cumsum(changed)]).astype(np.int64)
      order = np.sort(run * m + order) % m
    out[g] = order
  return out


@jax.jit
def _greedy_loop(order: jax.Array, pos: jax.Array, step: jax.Array, first: jax.Array,
                 keep: jax.Array) -> jax.Array:
  """The step rule of the module docstring; returns ``bool [m]`` (run under ``enable_x64``).

  ``order [G, m]`` streams, ``pos [m, G]`` position of each weight in each stream, ``step
  [m, G]`` each weight's change of ``T * K - T_g * S``, ``first`` = the pick while ``S = 0``.
  """
  num_groups = order.shape[0]
  gid = jnp.arange(num_groups)

  def body(state):
    ptr, deficit, count = state
    g = jnp.where(count == 0, first, jnp.argmin(deficit))
    w = order[g, ptr[g]]
    new = jnp.all((ptr <= pos[w]) | (gid == g))  # no other stream has passed w yet
    deficit = deficit + jnp.where(new, step[w], 0.0)
    return ptr.at[g].add(1), deficit, count + new.astype(count.dtype)

  init = (jnp.zeros(num_groups, jnp.int32), jnp.zeros(num_groups, step.dtype), jnp.int32(0))
  ptr, _, _ = jax.lax.while_loop(lambda s: s[2] < keep, body, init)
  return jnp.any(pos < ptr[None, :], axis=1)  # kept = union of the consumed stream prefixes


def _bucket(n: int) -> int:
  """Rounds ``n`` up to one of 16 sizes per octave, so that layers share compiled loops."""
  if n <= 64:
    return 64
  unit = 1 << max(0, n.bit_length() - 5)
  return -(-n // unit) * unit


def _check_importance(importance: Any, keep: int) -> np.ndarray:
  imp = np.asarray(importance, np.float64)
  if imp.ndim != 2 or imp.shape[0] < 1:
    raise ValueError(f"importance must be [G, n] with G >= 1, got shape {imp.shape}")
  if not np.all(np.isfinite(imp)) or np.any(imp < 0):
    raise ValueError("importance must be finite and non-negative")
  if isinstance(keep, bool) or not 0 <= int(keep) <= imp.shape[1] or int(keep) != keep:
    raise ValueError(f"keep must be an int in [0, {imp.shape[1]}], got {keep!r}")
  return imp


def greedy_select(importance: Any, keep: int) -> np.ndarray:
  """FairGRAPE's greedy selection for one layer (design.md section 4; module docstring).

  Args:
    importance: ``float [G, n]`` non-negative per-group importance of the layer's candidate
      weights (flattened).
    keep: number of weights to keep, ``0 <= keep <= n``.

  Returns:
    ``bool [n]`` numpy array with exactly ``keep`` True entries: the set the step-by-step
    greedy (:func:`greedy_select_reference`) keeps. Runs on the host (concrete inputs only).
  """
  imp = _check_importance(importance, keep)
  num_groups, n = imp.shape
  keep = int(keep)
  if keep == 0 or keep == n:
    return np.full(n, keep == n)
  m = _bucket(n)
  # Zero padding is inert: padded weights sort after every real one (zeros, higher index), so a
  # stream reaches them only after all n real weights are kept, and they change no total.
  imp = np.pad(imp, ((0, 0), (0, m - n)))
  order = _stream_orders(imp)
  pos = np.empty((num_groups, m), np.int32)
  for g in range(num_groups):
    pos[g, order[g]] = np.arange(m, dtype=np.int32)
  pos = np.ascontiguousarray(pos.T)  # [m, G]: one cache line per weight in the loop
  totals = imp.sum(axis=1)
  step = totals.sum() * imp.T - imp.sum(axis=0)[:, None] * totals[None, :]
  with jax.enable_x64(True):
    kept = _greedy_loop(order, pos, step, np.int32(np.argmax(totals)), np.int32(keep))
    kept = np.asarray(kept)
  return kept[:n]


def greedy_select_reference(importance: Any, keep: int) -> np.ndarray:
  """The same greedy as a plain Python loop, one iteration per stream step (tests only)."""
  imp = _check_importance(importance, keep)
  num_groups, n = imp.shape
  rows = imp.tolist()
  totals = [sum(r) for r in rows]
  total = sum(totals)
  streams = [sorted(range(n), key=lambda i, r=r: (-r[i], i)) for r in rows]
  kept = [False] * n
  gained, s, ptr, count = [0.0] * num_groups, 0.0, [0] * num_groups, 0
  while count < int(keep):
    if s == 0:  # p = 1/G: argmin_g (1/G - t_g), times G * T
      deficits = [total - num_groups * t for t in totals]
    else:  # argmin_g (p_g - t_g), times T * S
      deficits = [total * k - t * s for k, t in zip(gained, totals)]
    g = min(range(num_groups), key=lambda h: (deficits[h], h))
    w = streams[g][ptr[g]]
    ptr[g] += 1
    if not kept[w]:
      kept[w] = True
      count += 1
      for h in range(num_groups):
        gained[h] += rows[h][w]
      s = sum(gained)
  return np.asarray(kept, bool)


def fairgrape_mask(importance: PyTree, mask: masks.Mask, ratio: float, *,
                   scope: str = "layer") -> masks.Mask:
  """Prunes to the cumulative ratio with the greedy (design.md section 4).

  Args:
    importance: pytree like params, leaves ``[G, *leaf.shape]`` where the mask leaf is not None
      (e.g. from :func:`accumulate_importance`; other leaves are ignored).
    mask: current mask. Pruned weights stay pruned: only currently kept weights are candidates.
    ratio: cumulative prune ratio ``r`` in [0, 1] over the layer's ALL weights.
    scope: ``"layer"``: each prunable layer keeps ``K = floor(n_l (1 - r))`` weights (or all its
      kept ones if fewer), targets and greedy per layer, as in the paper. ``"global"``: one greedy
      over all prunable weights together, ``K = floor(N (1 - r))``, targets over all of them
      (importance of different layers compared directly).

  Returns:
    The new mask (same structure; prunable leaves ``bool``).
  """
  if scope not in ("layer", "global"):
    raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f"ratio must be in [0, 1], got {ratio}")
  treedef, paths, mask_leaves, (imp_leaves,) = masks._aligned(mask, importance)
  idx = [i for i, m in enumerate(mask_leaves) if m is not None]
  flat_masks, cands = {}, {}
  for i in idx:
    m = np.asarray(mask_leaves[i], bool)
    imp = np.asarray(imp_leaves[i])
    if imp.shape[1:] != m.shape:
      raise ValueError(f"importance shape {imp.shape} does not match mask {m.shape} for "
                       f"{masks.path_str(paths[i])!r}")
    flat_masks[i] = m.ravel()
    cands[i] = (np.flatnonzero(flat_masks[i]), imp.reshape(imp.shape[0], -1))

  def budget(n: int) -> int:
    # floor with a tolerance: 100 * (1 - 0.9) is 9.999999999999998 in floating point.
    return math.floor(n * (1.0 - ratio) + 1e-6)

  new = list(mask_leaves)
  if scope == "layer":
    for i in idx:
      where, imp = cands[i]
      keep = min(budget(flat_masks[i].size), where.size)
      new[i] = _scatter(where[greedy_select(imp[:, where], keep)], mask_leaves[i])
  elif idx:
    sizes = [flat_masks[i].size for i in idx]
    offsets = np.cumsum([0] + sizes)
    where = np.concatenate([cands[i][0] + off for i, off in zip(idx, offsets)])
    imp = np.concatenate([cands[i][1] for i in idx], axis=1)
    keep = min(budget(int(offsets[-1])), where.size)
    chosen = where[greedy_select(imp[:, where], keep)]
    for k, i in enumerate(idx):
      part = chosen[(chosen >= offsets[k]) & (chosen < offsets[k + 1])] - offsets[k]
      new[i] = _scatter(part, mask_leaves[i])
  return jax.tree.unflatten(treedef, new)


def _scatter(flat_keep: np.ndarray, like: Any) -> jax.Array:
  out = np.zeros(np.size(like), bool)
  out[flat_keep] = True
  return jnp.asarray(out.reshape(np.shape(like)))


def cumulative_ratio(iteration: int, keep_per_iter: float, prune_rate: float) -> float:
  """``r_i = min(1 - keep_per_iter**i, prune_rate)`` (design.md section 4); ``r_0 = 0``."""
  if iteration < 0:
    raise ValueError(f"iteration must be >= 0, got {iteration}")
  if not 0.0 < keep_per_iter <= 1.0:
    raise ValueError(f"keep_per_iter must be in (0, 1], got {keep_per_iter}")
  if not 0.0 <= prune_rate <= 1.0:
    raise ValueError(f"prune_rate must be in [0, 1], got {prune_rate}")
  return min(1.0 - keep_per_iter ** iteration, prune_rate)
