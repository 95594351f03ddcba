"""Plumbing shared by every scorer: loss, apply kwargs, padding rows, the loop over batches.

Used by :mod:`fairjax.curvature`, :mod:`fairjax.snnl` and the methods of
:mod:`fairjax.pruning` (SNIP/OBD, FairPrune, FairGRAPE), so each of these is written once:

- :func:`per_sample_ce`: the softmax cross-entropy of every sample, logits cast to the params
  dtype (design.md section 1.1 for the loss; section 4.1 for the per-group means built on it);
  :func:`per_sample_bce`, its multi-label (sigmoid) counterpart (design.md section 1.10), and
  :func:`per_sample_loss`, which picks one of the two by name (:data:`LOSSES`).
- :func:`freeze` / :func:`split_variables`: ``model.apply`` keyword arguments as a hashable
  tuple (a static argument of ``jax.jit``), and params vs the constant collections.
- :func:`group_weights`: ``1/N_g`` one-hot weights, the per-group mean of section 1.2.
- :func:`unknown_padding`, :func:`pad_batch`, :func:`split_batch`: padding rows are group ``-1``
  ("unknown group": it counts nowhere, design.md section 5.4), so padded batches give the same
  per-group results as the unpadded rows.
- :func:`accumulate`: the one loop over batches (plain sum, or count-weighted mean, optionally
  in float64 on the host), with :func:`add_weighted` / :func:`divide_by_counts`.

A kernel-level private module (design.md section 0): it imports jax, numpy and flax only, never
another fairjax module, so :mod:`fairjax.curvature` and :mod:`fairjax.snnl` can use it without an
import cycle. Nothing here holds state between calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Frozen = tuple[tuple[str, Any], ...]  # hashable model.apply kwargs, sorted by name

SOFTMAX = "softmax_cross_entropy"
SIGMOID = "sigmoid_binary_cross_entropy"
# Losses every scorer accepts as ``loss=`` (design.md section 1.10); softmax is the default.
LOSSES = (SOFTMAX, SIGMOID)


def check_loss(loss: str) -> str:
  """``loss`` if it is one of :data:`LOSSES`, else ``ValueError`` naming the choices."""
  if loss not in LOSSES:
    raise ValueError(f"loss={loss!r} is not one of {LOSSES}")
  return loss


def freeze(apply_kwargs: Mapping[str, Any] | Frozen | None) -> Frozen:
  """``model.apply`` keyword arguments as a sorted tuple of ``(name, value)`` pairs.

  Hashable when the values are (e.g. ``{"train": False}``), so it can be a static argument of
  ``jax.jit``; ``dict(freeze(kw)) == dict(kw)``. ``None`` gives ``()``; an already frozen tuple
  is returned sorted.
  """
  if apply_kwargs is None:
    return ()
  items = apply_kwargs.items() if isinstance(apply_kwargs, Mapping) else apply_kwargs
  return tuple(sorted(items))


def split_variables(variables: Mapping[str, PyTree]) -> tuple[PyTree, dict[str, PyTree]]:
  """``(variables["params"], {other collections})``: what is differentiated vs the constants
  (``batch_stats``...), which scorers pass back unchanged to ``model.apply``."""
  return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def params_dtype(params: PyTree) -> Any:
  """The dtype of the first params leaf: the dtype scores and losses are computed in."""
  return jax.tree.leaves(params)[0].dtype


def per_sample_ce(
  model: nn.Module,
  params: PyTree,
  others: Mapping[str, PyTree],
  images: jax.Array,
  labels: jax.Array,
  apply_kwargs: Mapping[str, Any] | Frozen | None = None,
) -> jax.Array:
  """Softmax cross-entropy ``-log p_n[y_n]`` of every sample (traceable, differentiable).

  Args:
    model: a Linen module mapping ``images`` to logits ``[N, C]``.
    params: the parameters (the argument to differentiate); ``others``: the other variable
      collections (``{}`` or ``{"batch_stats": ...}``), constants.
    images: ``float[N, ...]``; labels: ``int[N]`` class ids in ``[0, C)``.
    apply_kwargs: keyword arguments of ``model.apply`` (a mapping or :func:`freeze`'s tuple).

  Returns:
    ``[N]`` losses in the params dtype: the logits are cast to it before the log-softmax, so a
    bf16 model with float32 params gets float32 losses and a float64 reference float64 ones.
  """
  logits = model.apply({"params": params, **others}, images, **dict(freeze(apply_kwargs)))
  logp = jax.nn.log_softmax(logits.astype(params_dtype(params)), axis=-1)
  return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def per_sample_bce(
  model: nn.Module,
  params: PyTree,
  others: Mapping[str, PyTree],
  images: jax.Array,
  labels: jax.Array,
  apply_kwargs: Mapping[str, Any] | Frozen | None = None,
) -> jax.Array:
  """Sigmoid binary cross-entropy of every sample, SUMMED over its attributes (multi-label).

  ``l_n = sum_a [softplus(z_na) - y_na z_na]``, computed stably as ``-(y log sigmoid(z) + (1 - y)
  log sigmoid(-z))``: a sum (not a mean) over the ``A`` attributes, so its Hessian w.r.t. the
  logits is exactly ``diag(p (1 - p))``, the loss the sigmoid GGN of
  :func:`fairjax.curvature.per_group_diag` is built on (design.md section 1.10). The mean over
  attributes is this divided by ``A``: one uniform factor, which changes no ranking or mask.

  Args:
    model: a Linen module mapping ``images`` to logits ``[N, A]``, one per binary attribute.
    params, others, apply_kwargs: as for :func:`per_sample_ce`.
    images: ``float[N, ...]``; labels: ``[N, A]`` in ``{0, 1}`` (any int or float dtype).

  Returns:
    ``[N]`` losses in the params dtype (logits and labels are cast to it first, as in
    :func:`per_sample_ce`).
  """
  logits = model.apply({"params": params, **others}, images, **dict(freeze(apply_kwargs)))
  z = logits.astype(params_dtype(params))
  if labels.shape != z.shape:
    raise ValueError(
      f"labels {labels.shape} must have the shape of the logits {z.shape} for loss={SIGMOID!r}"
    )
  y = labels.astype(z.dtype)
  return -jnp.sum(y * jax.nn.log_sigmoid(z) + (1 - y) * jax.nn.log_sigmoid(-z), axis=-1)


def per_sample_loss(
  model: nn.Module,
  params: PyTree,
  others: Mapping[str, PyTree],
  images: jax.Array,
  labels: jax.Array,
  apply_kwargs: Mapping[str, Any] | Frozen | None = None,
  *,
  loss: str = SOFTMAX,
) -> jax.Array:
  """:func:`per_sample_ce` (``loss="softmax_cross_entropy"``, labels ``int[N]``) or
  :func:`per_sample_bce` (``loss="sigmoid_binary_cross_entropy"``, labels ``[N, A]``): ``[N]``
  per-sample losses in the params dtype (design.md section 1.10)."""
  if check_loss(loss) == SOFTMAX:
    return per_sample_ce(model, params, others, images, labels, apply_kwargs)
  return per_sample_bce(model, params, others, images, labels, apply_kwargs)


def group_weights(groups: jax.Array, num_groups: int, dtype: Any) -> tuple[jax.Array, jax.Array]:
  """One-hot weights ``1/N_g`` ``float[N, G]`` and the counts ``int32[G]`` (traceable).

  ``weights[:, g] @ losses`` is group ``g``'s mean loss (design.md section 1.2); ids outside
  ``[0, G)`` (``-1`` = unknown or padding) get a zero row and are not counted, and a group
  without samples gets a zero column (its mean is 0, not NaN).
  """
  onehot = jax.nn.one_hot(groups, num_groups, dtype=dtype)  # out-of-range ids -> zero row
  counts = jnp.sum(onehot, axis=0)
  weights = onehot / jnp.maximum(counts, 1.0)[None, :]
  return weights, counts.astype(jnp.int32)


def unknown_padding(batch: Mapping[str, Any]) -> Any:
  """``batch["group"]`` with the padding rows (``batch["valid"] == False``) set to ``-1``.

  Without a ``valid`` entry the group array is returned as it is (e.g. still sharded over
  devices). With one: an ``int32[B]`` jax array laid out like ``group`` when both are jax
  arrays (sharded batches stay on their devices), else a host numpy array.
  """
  groups = batch["group"]
  if "valid" not in batch:
    return groups
  valid = batch["valid"]
  if isinstance(groups, jax.Array) and isinstance(valid, jax.Array):
    return jnp.where(valid.astype(bool), groups.astype(jnp.int32), -1)
  return np.where(np.asarray(valid, bool), np.asarray(groups, np.int32), -1)


def pad_batch(batch: Mapping[str, Any], size: int) -> dict[str, Any]:
  """Pads every array of ``batch`` (leading axis ``B <= size``) to ``size`` rows.

  Padding rows are zeros, except ``group`` which is ``-1`` (counts nowhere) and ``valid`` which
  is ``False`` (zeros). numpy arrays stay numpy; anything else becomes a jax array. A batch that
  already has ``size`` rows is returned as a new dict of the same arrays.
  """
  out = {}
  for key, value in batch.items():
    xp = np if isinstance(value, np.ndarray) else jnp
    pad = size - value.shape[0]
    if pad < 0:
      raise ValueError(f"batch[{key!r}] has {value.shape[0]} rows, more than size={size}")
    if pad:
      fill = -1 if key == "group" else 0
      value = xp.concatenate([value, xp.full((pad,) + value.shape[1:], fill, value.dtype)])
    out[key] = value
  return out


def split_batch(batch: Mapping[str, Any], size: int) -> Iterator[dict[str, Any]]:
  """Consecutive chunks of ``size`` rows of ``batch``, the last one padded (:func:`pad_batch`),
  so every chunk has the same shape (one compilation) and the padding counts nowhere."""
  n = next(iter(batch.values())).shape[0]
  for start in range(0, n, size):
    yield pad_batch({k: v[start : start + size] for k, v in batch.items()}, size)


@jax.jit
def add_weighted(acc: PyTree | None, diag: PyTree, counts: jax.Array) -> PyTree:
  """``acc + counts[g] * diag[g]``: the running numerator of a count-weighted per-group mean.

  ``diag`` leaves are ``[G, ...]`` (per-group means of one batch), ``counts`` ``int[G]``;
  ``acc=None`` starts the sum. Finish with :func:`divide_by_counts`.
  """
  counts = jnp.asarray(counts)
  weighted = jax.tree.map(
    lambda leaf: counts.reshape((-1,) + (1,) * (leaf.ndim - 1)).astype(leaf.dtype) * leaf, diag
  )
  return weighted if acc is None else jax.tree.map(jnp.add, acc, weighted)


def divide_by_counts(acc: PyTree, counts: Sequence[jax.Array]) -> PyTree:
  """``acc[g] / sum_b counts_b[g]`` (zero where a group never appeared): the per-group mean."""
  return _divide(acc, jnp.stack([jnp.asarray(c) for c in counts]))


@jax.jit
def _divide(acc: PyTree, counts: jax.Array) -> PyTree:
  denom = jnp.maximum(jnp.sum(counts, axis=0).astype(jnp.float32), 1.0)
  return jax.tree.map(lambda a: a / denom.reshape((-1,) + (1,) * (a.ndim - 1)).astype(a.dtype), acc)


def accumulate(
  step: Callable[[int, Mapping[str, Any]], tuple[PyTree, Any] | None],
  batches: Iterable[Mapping[str, Any]],
  *,
  caller: str,
  weighted: bool = False,
  mean: bool = False,
  on_host: bool = False,
  what: str = "batches",
) -> tuple[PyTree, list[Any]]:
  """The loop over batches shared by every scorer.

  ``step(i, batch)`` scores batch ``i`` and returns ``(value, counts)`` (``counts`` may be
  ``None`` when neither ``weighted`` nor ``mean`` is set), or ``None`` to skip the batch.

  - ``weighted=False, mean=False``: ``sum_b value_b`` (SNIP, OBD, FairGRAPE's importance).
  - ``weighted=True, mean=True``: ``value_b`` are per-group means ``[G, ...]`` of batch ``b``
    with ``counts_b`` ``int[G]`` samples; the result is ``sum_b counts_b value_b / sum_b
    counts_b`` per group, i.e. the per-group mean of the union of the batches (FairPrune's
    curvature, design.md section 2; curvature chunks, section 1.5).
  - ``weighted=False, mean=True``: ``value_b`` are sums already, ``counts_b`` their counts
    (SNNL's anchors, design.md section 3.2): ``sum_b value_b / sum_b counts_b``.
  - ``on_host=True``: values and counts are read back to the host and summed in float64 numpy;
    batch ``b`` is read back after batch ``b + 1`` is dispatched, so the transfer overlaps the
    device work. Otherwise the sums stay jax arrays and only one batch result is alive beside
    the accumulator.

  Returns:
    ``(result, counts)``: the sum or mean pytree, and the list of per-batch counts (device
    arrays, possibly sharded, or host arrays with ``on_host``) of the batches not skipped.

  Raises:
    ValueError: ``"{caller} got no {what}"`` when no batch was scored.
  """
  if on_host and weighted:
    raise ValueError("accumulate(on_host=True) sums values as they are; weighted is not supported")
  total, counts, pending = None, [], None

  def absorb(result):
    nonlocal total
    value, count = result
    if on_host:
      value, count = jax.device_get((value, count))
      value = jax.tree.map(lambda x: np.asarray(x, np.float64), value)
      count = None if count is None else np.asarray(count)
    elif weighted:
      value = add_weighted(None, value, count)
    total = value if total is None else jax.tree.map(np.add if on_host else jnp.add, total, value)
    counts.append(count)

  for i, batch in enumerate(batches):
    result = step(i, batch)
    if result is None:
      continue
    if on_host:
      if pending is not None:
        absorb(pending)
      pending = result
    else:
      absorb(result)
    del result
  if pending is not None:
    absorb(pending)
  if total is None:
    raise ValueError(f"{caller} got no {what}")
  if not mean:
    return total, counts
  if on_host:
    denom = max(int(np.sum(counts)), 1)
    return jax.tree.map(lambda a: a / denom, total), counts
  return divide_by_counts(total, counts), counts
