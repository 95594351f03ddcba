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
cannot be repaired locally and we know no sort-based shortcut. Measured (bench/greedy_merge.py,
lognormal, n = 100,000, 90% kept): consecutive new picks come from the same group 1.31 / 1.04 /
1.00 times in a row on average for G = 2 / 4 / 8, and a merge of per-group curves that ignores
the other groups' picks predicts a median of 3 / 2 / 2 next picks correctly from an exact state,
so a blockwise "merge, verify, fix up" scheme would accept about that many picks per round.
:func:`greedy_select` therefore runs the exact step rule in a compiled ``lax.while_loop``
(:func:`_greedy_chunk`) and makes each step cheap:

- The streams come from one int64 sort per group of packed (value, index) keys
  (:func:`_stream_order`), 2-2.5x faster than an argsort; the groups are sorted in parallel
  threads.
- The loop reads only memory laid out in stream order: for each stream entry, its position in
  every stream ("already kept" = "another stream is past it") and its step vector
  ``T * I(w) - T_g * I_tot(w)``. These records are gathered from a per-weight table in chunks,
  by a worker thread while the loop runs, instead of the loop's own random reads (each a cache
  miss on the loop's critical path: ~0.25 us a step before).
- Nothing changes while a group meets already-kept entries (it picks again), so one iteration
  looks at ``_WINDOW`` entries and skips such a run at once: iterations ~ ``keep``, not the
  ``sum_g a_g`` stream steps (about twice ``keep`` for G = 4 at 90% kept).

The deficit is a running float64 sum of step vectors (``jax.enable_x64`` for that call only),
as in the previous version of this loop: exact for integer-valued importance; otherwise it can
differ from :func:`greedy_select_reference`'s recomputation of ``T * K_g - T_g * S`` in the last
bits, which matters only at near-ties. Measured costs: bench/greedy.py.

Not reproduced from the official code (design.md section 4): its scoring never zeroes gradients,
so they accumulate across groups and batches (and an optimizer step runs inside scoring), and
only the last group's importance is divided by the batch count. Here each group's gradient comes
from its own loss on each batch, and batches are summed the same way for every group.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fairjax import masks, nnx_adapter
from fairjax.pruning import _scoring

PyTree = Any


@functools.partial(jax.jit, static_argnames=("model", "num_groups", "apply_kwargs", "loss"))
def _group_importance(
  model, variables, images, labels, groups, mask, *, num_groups, apply_kwargs, loss=_scoring.SOFTMAX
):
  params, others = _scoring.split_variables(variables)
  params = masks.apply_mask(params, mask)
  # Mean over each group (id -1, unknown: a zero row; a group absent from the batch: 0).
  weights, _ = _scoring.group_weights(groups, num_groups, _scoring.params_dtype(params))
  _, vjp_fn = jax.vjp(
    lambda p: _scoring.per_sample_loss(model, p, others, images, labels, apply_kwargs, loss=loss),
    params,
  )
  # One forward, G pullbacks of the same VJP. A Python loop rather than a vmap: vmapping conv
  # weight gradients lowers to slow grouped convolutions on XLA:CPU (design.md section 1).
  grads = [vjp_fn(weights[:, g])[0] for g in range(num_groups)]
  return jax.tree.map(lambda w, *gs: jnp.stack([(w * g) ** 2 for g in gs]), params, *grads)


@nnx_adapter.accepts_nnx
def group_importance(
  model: nn.Module,
  variables: PyTree,
  images: jax.Array,
  labels: jax.Array,
  groups: jax.Array,
  mask: masks.Mask,
  *,
  num_groups: int,
  apply_kwargs: Mapping[str, Any] | None = None,
  loss: str = _scoring.SOFTMAX,
) -> PyTree:
  """Per-group importance ``(w * dL_g/dw)**2`` of one mini-batch (design.md section 4).

  Args:
    model: Flax module mapping ``images`` to logits ``[N, C]`` (static under jit). An
      ``nnx.Module`` (``model.eval()`` mode) with ``variables=None`` works too: ``mask`` and the
      result then have the layout of ``fairjax.nnx_adapter.param_dict(model)`` (design.md
      section 1.11); :func:`accumulate_importance` passes it on.
    variables: model variables; only ``variables["params"]`` is differentiated.
    images: ``float[N, ...]``; labels: ``int[N]`` class ids.
    groups: ``int[N]`` ids in ``[0, num_groups)``; other ids (``-1`` = unknown) are ignored.
    mask: mask pytree (:mod:`fairjax.masks`); params are masked BEFORE the forward, so pruned
      weights have zero importance and gradients are those of the pruned network.
    num_groups: ``G`` (static).
    apply_kwargs: keyword arguments of ``model.apply`` (e.g. ``{"train": False}``; BatchNorm must
      be in inference mode, mutable collections are not supported).
    loss: ``"softmax_cross_entropy"`` (default) or ``"sigmoid_binary_cross_entropy"``: then
      ``labels`` are ``[N, A]`` in ``{0, 1}`` for logits ``[N, A]`` and a sample's loss is the
      BCE summed over its attributes (``_scoring.per_sample_bce``, design.md section 1.10).

  Returns:
    Pytree like ``variables["params"]``, leaves ``[G, *leaf.shape]`` in the params dtype. ``L_g``
    is the mean loss of group ``g``'s samples in this batch; a group absent from the batch gets
    zeros. One forward pass and ``G`` pullbacks of a single ``jax.vjp``.
  """
  if num_groups < 1:
    raise ValueError(f"num_groups must be >= 1, got {num_groups}")
  return _group_importance(
    model,
    variables,
    jnp.asarray(images),
    jnp.asarray(labels, jnp.int32),
    jnp.asarray(groups, jnp.int32),
    mask,
    num_groups=num_groups,
    apply_kwargs=_scoring.freeze(apply_kwargs),
    loss=_scoring.check_loss(loss),
  )


def accumulate_importance(
  model: nn.Module,
  variables: PyTree,
  batches: Iterable[Mapping[str, Any]],
  mask: masks.Mask,
  *,
  num_groups: int,
  apply_kwargs: Mapping[str, Any] | None = None,
  loss: str = _scoring.SOFTMAX,
) -> PyTree:
  """``I_g(w)`` summed over mini-batches (design.md section 4).

  ``batches`` yield dicts with ``image``, ``label`` and ``group`` (the fairjax batch format);
  rows with ``valid == False`` (padding of a last eval batch) are treated as group ``-1``.
  Returns the pytree ``[G, ...]`` of :func:`group_importance`, summed (params dtype); the loop
  is ``_scoring.accumulate``'s plain sum. ``loss`` as in :func:`group_importance`.
  """

  def step(_, batch):
    return group_importance(
      model,
      variables,
      batch["image"],
      batch["label"],
      _scoring.unknown_padding(batch),
      mask,
      num_groups=num_groups,
      apply_kwargs=apply_kwargs,
      loss=loss,
    ), None

  return _scoring.accumulate(step, batches, caller="accumulate_importance")[0]


_WINDOW = 8  # stream entries one loop iteration looks at (a run of already-kept ones is skipped)
_CHUNK = 1 << 15  # stream entries per group handed to one call of the compiled loop (at most)


def _stream_order(values: np.ndarray) -> np.ndarray:
  """``int32 [n]``: indices of ``values`` (float64, >= 0) by decreasing value, ties by index.

  One int64 sort of packed keys (the value's top ``63 - b`` bits, then the index in the low ``b =
  bit_length(n - 1)`` bits) instead of an argsort, which is 2-2.5x slower (bench/greedy.py
  measures both). Non-negative float64s order like their bit patterns. The dropped low ``b``
  bits can only merge values that differ in the last ~``b`` of 52 mantissa bits; those runs are
  re-sorted exactly by a lexsort of just those entries (none for importance computed in float32,
  whose values have 24 significant bits).
  """
  n = values.size
  index_bits = max(1, (n - 1).bit_length())
  low = (1 << index_bits) - 1
  # In-place steps, no full-size temporaries: each fresh 88 MB array (11M weights) costs page
  # faults, most where numpy's huge pages make the kernel compact memory first (bench figures in
  # design.md section 9).
  bits = (values + 0.0).view(np.int64)  # + 0.0 turns -0.0 into +0.0; the sign bit is 0
  key = bits >> index_bits
  np.subtract((1 << (63 - index_bits)) - 1, key, out=key)  # decreasing value
  key <<= index_bits
  key |= np.arange(n)
  key.sort()
  order = key.astype(np.int32)  # the low 32 bits, which hold the index (n < 2**31)
  order &= low
  bits &= low  # the bits each key dropped (bits is a copy of values; not used below)
  if not bits.any():
    return order  # no value lost bits (e.g. float32 importance): the keys are exact
  # Neighbours with equal truncated values are in index order, right only if the values are equal.
  same = np.flatnonzero((key[1:] ^ key[:-1]) < (1 << index_bits))
  if same.size:
    bad = values[order[same]] != values[order[same + 1]]
    if bad.any():
      run = np.cumsum(np.diff(same, prepend=-2) != 1) - 1  # runs of consecutive equal pairs
      bad_runs = np.unique(run[bad])
      starts = same[np.searchsorted(run, bad_runs)]
      ends = same[np.searchsorted(run, bad_runs, side="right") - 1] + 2
      lengths = ends - starts
      where = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
      run_of = np.repeat(np.arange(bad_runs.size), lengths)
      sub = order[where]
      order[where] = sub[np.lexsort((sub, -values[sub], run_of))]
  return order


@jax.jit
def _greedy_chunk(
  records: jax.Array,
  base: jax.Array,
  ptr: jax.Array,
  deficit: jax.Array,
  count: jax.Array,
  first: jax.Array,
  keep: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Runs the step rule of the module docstring on stream chunks (under ``enable_x64``).

  ``records int32 [G, C + W, P + 2G]``: for stream ``g``'s entries ``base[g] .. base[g] + C + W
  - 1``, the entry's position in every stream (columns ``:G``) and the bits of its float64 step
  vector ``T * I(w) - T_g * I_tot(w)`` (columns ``P:``), in stream order so that the loop reads
  memory sequentially. State ``ptr [G]`` (stream positions), ``deficit [G]`` (``T * K - T_g *
  S``), ``count`` (kept so far). Stops at ``count == keep`` or once a stream has used its ``C``
  entries, and returns the state.
  """
  num_groups, length, width = records.shape
  chunk = length - _WINDOW
  step_col = width - 2 * num_groups
  gid = jnp.arange(num_groups, dtype=jnp.int32)
  zero = jnp.int32(0)

  def cond(state):
    ptr, _, count = state
    return (count < keep) & jnp.all(ptr - base < chunk)

  def body(state):
    ptr, deficit, count = state
    g = jnp.where(count == 0, first, jnp.argmin(deficit).astype(jnp.int32))
    j = ptr[g] - base[g]
    window = jax.lax.dynamic_slice(records, (g, j, zero), (1, _WINDOW, num_groups))[0]
    # An entry is new unless another stream is already past it. Nothing changes while group g
    # skips kept entries (the same group would pick again), so a run of them is one iteration.
    fresh = jnp.all((window >= ptr[None, :]) | (gid == g)[None, :], axis=1)
    k = jnp.argmax(fresh).astype(jnp.int32)
    new = fresh[k]
    bits = jax.lax.dynamic_slice(records, (g, j + k, jnp.int32(step_col)), (1, 1, 2 * num_groups))
    step = jax.lax.bitcast_convert_type(bits.reshape(num_groups, 2), jnp.float64)
    deficit = deficit + jnp.where(new, step, 0.0)
    ptr = ptr.at[g].add(jnp.where(new, k + 1, _WINDOW))
    return ptr, deficit, count + new.astype(count.dtype)

  return jax.lax.while_loop(cond, body, (ptr, deficit, count))


def _aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
  """``np.empty`` on a 64-byte boundary: jax then reads it in place instead of copying it."""
  dtype = np.dtype(dtype)
  nbytes = math.prod(shape) * dtype.itemsize
  raw = np.empty(nbytes + 64, np.uint8)
  offset = -raw.ctypes.data % 64
  return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def _check_importance(importance: Any, keep: int) -> np.ndarray:
  imp = np.asarray(importance, np.float64)
  if imp.ndim != 2 or imp.shape[0] < 1:
    raise ValueError(f"importance must be [G, n] with G >= 1, got shape {imp.shape}")
  if not np.all(np.isfinite(imp)) or np.any(imp < 0):
    raise ValueError("importance must be finite and non-negative")
  if isinstance(keep, bool) or not 0 <= int(keep) <= imp.shape[1] or int(keep) != keep:
    raise ValueError(f"keep must be an int in [0, {imp.shape[1]}], got {keep!r}")
  return imp


def _workers(threads: int | None = None) -> int:
  """Threads for the sorts and gathers: ``threads``, else the CPU cores this process may use."""
  if threads is not None:
    if isinstance(threads, bool) or int(threads) != threads or threads < 1:
      raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")
    return int(threads)
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # not on Linux
    return max(1, os.cpu_count() or 1)


def _stream_orders(
  imp: np.ndarray, pool: concurrent.futures.Executor
) -> tuple[np.ndarray, np.ndarray]:
  """``int32 [G, n]`` twice: :func:`_stream_order` of every row, and each weight's position in
  every stream (the inverse permutations). One task per row; numpy releases the GIL."""
  num_groups, n = imp.shape
  order = np.empty((num_groups, n), np.int32)
  positions = np.empty((num_groups, n), np.int32)

  def one(g: int) -> None:
    order[g] = _stream_order(imp[g])
    positions[g, order[g]] = np.arange(n, dtype=np.int32)

  list(pool.map(one, range(num_groups)))
  return order, positions


_BLOCK = 1 << 15  # weights per block when filling the table (temporaries stay in cache)


def _weight_table(
  imp: np.ndarray, positions: np.ndarray, pool: concurrent.futures.Executor
) -> np.ndarray:
  """``int32 [n + 1, P + 2G]``: per weight, its position in every stream, then the bits of its
  float64 step vector ``T * I(w) - T_g * I_tot(w)`` (from column ``P = G + G % 2``, so that the
  float64 view is aligned). Row ``n`` is the sentinel that pads stream tails: position -1 in
  every stream (every stream is past it, so it is never new) and a zero step.
  """
  num_groups, n = imp.shape
  step_col = num_groups + num_groups % 2
  table = np.empty((n + 1, step_col + 2 * num_groups), np.int32)
  table[n] = -1
  steps = table[:, step_col:].view(np.float64)
  steps[n] = 0.0
  totals = imp.sum(axis=1)
  grand = totals.sum()

  def fill(start: int) -> None:  # blockwise: one pass over the table, no [n, G] temporaries
    block = slice(start, min(start + _BLOCK, n))
    table[block, :num_groups] = positions[:, block].T
    part = imp[:, block]
    steps[block] = (grand * part - totals[:, None] * part.sum(axis=0)[None, :]).T

  list(pool.map(fill, range(0, n, _BLOCK)))
  return table


def _run_greedy(
  order: np.ndarray, table: np.ndarray, first: int, keep: int, pool: concurrent.futures.Executor
) -> np.ndarray:
  """Stream positions ``int32 [G]`` once ``keep`` weights are kept (:func:`_greedy_chunk`).

  Stream ``g``'s records are cut at fixed boundaries ``k * C`` (``C`` a power of two up to
  ``_CHUNK``, so layers with the same ``G`` and ``C`` share one compiled loop). While the loop
  runs, ``pool`` gathers every stream's next chunk (random reads into ``table``, the largest
  cost after the sorts); a stream that has used its ``C`` entries swaps it in.
  """
  num_groups, n = order.shape
  chunk = min(_CHUNK, 1 << (n - 1).bit_length())
  length = chunk + _WINDOW

  records = _aligned_empty((num_groups, length, table.shape[1]), np.int32)
  staging = np.empty_like(records)  # allocated once: fresh pages for every chunk cost more

  def gather(g: int, start: int) -> None:  # stream g's entries start .. start + length - 1
    part = order[g, start : start + length]
    np.take(table, part, axis=0, out=staging[g, : part.size], mode="clip")
    staging[g, part.size :] = table[n]

  list(pool.map(gather, range(num_groups), [0] * num_groups))
  records[...] = staging
  base = np.zeros(num_groups, np.int32)
  # A stream never passes position n (all weights would be kept), so no chunk starts there.
  ahead = {g: pool.submit(gather, g, chunk) for g in range(num_groups) if chunk < n}
  ptr = np.zeros(num_groups, np.int32)
  count = 0
  try:  # a sequential loop: on the host even where the default device is an accelerator
    host = jax.devices("cpu")[0]
  except RuntimeError:  # no CPU backend (JAX_PLATFORMS leaves it out)
    host = None
  with jax.enable_x64(True), jax.default_device(host):
    deficit = jnp.zeros(num_groups, jnp.float64)
    while True:
      ptr, deficit, count = _greedy_chunk(
        records, base, ptr, deficit, np.int32(count), np.int32(first), np.int32(keep)
      )
      ptr, count = np.array(ptr), int(count)  # waits: `records` is rewritten after this
      if count >= keep:
        break
      for g in np.flatnonzero(ptr - base >= chunk):
        base[g] += chunk  # ptr[g] < base[g] + C + W: still inside the new chunk
        ahead.pop(g).result()
        records[g] = staging[g]
        if base[g] + chunk < n:
          ahead[g] = pool.submit(gather, g, int(base[g]) + chunk)
  for future in ahead.values():
    future.cancel()
  return ptr


def greedy_select(importance: Any, keep: int, *, threads: int | None = None) -> np.ndarray:
  """FairGRAPE's greedy selection for one layer (design.md section 4; module docstring).

  Args:
    importance: ``float [G, n]`` non-negative per-group importance of the layer's candidate
      weights (flattened).
    keep: number of weights to keep, ``0 <= keep <= n``.
    threads: worker threads for the per-group sorts and the record gathers (at most ``G`` are
      used); ``None``: the CPU cores this process may use. The result does not depend on it.

  Returns:
    ``bool [n]`` numpy array with exactly ``keep`` True entries: the set the step-by-step
    greedy (:func:`greedy_select_reference`) keeps. Runs on the host (concrete inputs only).
  """
  imp = _check_importance(importance, keep)
  num_groups, n = imp.shape
  if n >= 2**31:  # stream positions are int32
    raise ValueError(
      f"greedy_select handles fewer than 2**31 weights per call, got {n}; "
      "select per layer (fairgrape_mask scope='layer')"
    )
  keep = int(keep)
  if keep == 0 or keep == n:
    return np.full(n, keep == n)
  kept = np.zeros(n, bool)
  with concurrent.futures.ThreadPoolExecutor(min(num_groups, _workers(threads))) as pool:
    order, positions = _stream_orders(imp, pool)
    if num_groups == 1:  # no other stream: the top `keep` (the deficit is always 0)
      kept[order[0, :keep]] = True
      return kept
    table = _weight_table(imp, positions, pool)
    del positions
    first = int(np.argmax(imp.sum(axis=1)))  # the pick while S = 0 (p = 1/G)
    ptr = _run_greedy(order, table, first, keep, pool)
  for g in range(num_groups):  # kept = union of the consumed stream prefixes
    kept[order[g, : ptr[g]]] = True
  return kept


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


def fairgrape_mask(
  importance: PyTree,
  mask: masks.Mask,
  ratio: float,
  *,
  scope: str = "layer",
  threads: int | None = None,
) -> masks.Mask:
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
    threads: worker threads of :func:`greedy_select` (``None``: the usable CPU cores).

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
      raise ValueError(
        f"importance shape {imp.shape} does not match mask {m.shape} for "
        f"{masks.path_str(paths[i])!r}"
      )
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
      new[i] = _scatter(where[greedy_select(imp[:, where], keep, threads=threads)], mask_leaves[i])
  elif idx:
    sizes = [flat_masks[i].size for i in idx]
    offsets = np.cumsum([0] + sizes)
    where = np.concatenate([cands[i][0] + off for i, off in zip(idx, offsets)])
    imp = np.concatenate([cands[i][1] for i in idx], axis=1)
    keep = min(budget(int(offsets[-1])), where.size)
    chosen = where[greedy_select(imp[:, where], keep, threads=threads)]
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
  return min(1.0 - keep_per_iter**iteration, prune_rate)
