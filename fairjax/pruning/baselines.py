"""Fairness-unaware pruning scores, the references FairGRAPE is compared with (design.md section 4).

Every function returns a score pytree shaped like ``variables["params"]`` (``None`` where the mask
leaf is ``None``; for an ``nnx.Module``, like ``fairjax.nnx_adapter.param_dict(model)``, design.md
section 1.11); HIGHER = more important = kept, so :func:`fairjax.masks.prune_lowest` /
:func:`fairjax.masks.prune_to_sparsity` turn them into masks. Gradient-based scores are taken
through the masked model (params masked before the forward), like FairGRAPE's importance.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fairjax import curvature, masks, nnx_adapter
from fairjax.pruning import _scoring, fairprune

PyTree = Any


def _only_prunable(scores: PyTree, mask: masks.Mask) -> PyTree:
  return masks.map_with_mask(lambda m, s: None if m is None else s, mask, scores)


def magnitude_scores(params: PyTree, mask: masks.Mask) -> PyTree:
  """``|w|`` on prunable leaves, ``None`` elsewhere."""
  return masks.map_with_mask(lambda m, w: None if m is None else jnp.abs(w), mask, params)


def random_scores(params: PyTree, mask: masks.Mask, rng: jax.Array) -> PyTree:
  """Uniform ``[0, 1)`` scores (params dtype) on prunable leaves; the same ``rng`` gives the
  same scores. Each leaf draws from ``fold_in(rng, i)``, ``i`` its index among the mask's
  leaves in flattening order, so a layer's scores do not depend on the other layers' shapes."""
  treedef, _, mask_leaves, (param_leaves,) = masks._aligned(mask, params)
  out = [
    None
    if m is None
    else jax.random.uniform(jax.random.fold_in(rng, i), jnp.shape(w), jnp.result_type(w))
    for i, (m, w) in enumerate(zip(mask_leaves, param_leaves))
  ]
  return jax.tree.unflatten(treedef, out)


@functools.partial(jax.jit, static_argnames=("model", "apply_kwargs", "loss"))
def _snip(model, variables, images, labels, mask, *, apply_kwargs, loss=_scoring.SOFTMAX):
  params, others = _scoring.split_variables(variables)
  params = masks.apply_mask(params, mask)
  grads = jax.grad(
    lambda p: jnp.mean(
      _scoring.per_sample_loss(model, p, others, images, labels, apply_kwargs, loss=loss)
    )
  )(params)
  return _only_prunable(jax.tree.map(lambda w, g: jnp.abs(w * g), params, grads), mask)


@nnx_adapter.accepts_nnx
def snip_scores(
  model: nn.Module,
  variables: PyTree,
  images: jax.Array,
  labels: jax.Array,
  mask: masks.Mask,
  *,
  apply_kwargs: Mapping[str, Any] | None = None,
  loss: str = _scoring.SOFTMAX,
) -> PyTree:
  """SNIP connection sensitivity ``|w * dL/dw|`` of one batch.

  ``L`` is the mean cross-entropy over all samples of ``images float[N, ...]`` /
  ``labels int[N]`` (groups ignored), through the masked model. Sum batches with
  :func:`accumulate_scores`. ``loss="sigmoid_binary_cross_entropy"`` takes multi-label
  ``labels [N, A]`` in ``{0, 1}`` and the per-sample BCE summed over attributes
  (``_scoring.per_sample_bce``, design.md section 1.10).

  An ``nnx.Module`` (``variables=None``, ``mask`` in the layout of
  ``fairjax.nnx_adapter.param_dict(model)``) gets scores in that layout (design.md
  section 1.11).
  """
  return _snip(
    model,
    variables,
    jnp.asarray(images),
    jnp.asarray(labels, jnp.int32),
    mask,
    apply_kwargs=_scoring.freeze(apply_kwargs),
    loss=_scoring.check_loss(loss),
  )


@nnx_adapter.accepts_nnx
def obd_scores(
  model: nn.Module,
  variables: PyTree,
  images: jax.Array,
  labels: jax.Array,
  mask: masks.Mask,
  *,
  apply_kwargs: Mapping[str, Any] | None = None,
  chunk_size: int | None = None,
  loss: str = _scoring.SOFTMAX,
  memory_budget_bytes: int | None = None,
) -> PyTree:
  """Optimal Brain Damage saliency ``1/2 w**2 h`` of one batch, group-unaware.

  FairPrune's per-group term with one group (design.md section 4.7): every sample of
  ``images float[N, ...]`` / ``labels int[N]`` is put in group 0, ``h float[1, ...]`` is the
  exact diagonal GGN of the batch's mean cross-entropy from
  :func:`fairjax.curvature.per_group_diag` at the masked params (design.md section 1; equal to
  the Hessian diagonal for piecewise-linear networks), and the score is
  :func:`fairjax.pruning.fairprune.group_terms` of that group (params dtype, ``None`` on
  unprunable leaves). ``chunk_size`` (samples per compiled call, ``None`` = the whole batch)
  or ``memory_budget_bytes`` (bytes per call, :func:`fairjax.curvature.per_group_diag`)
  bounds its memory. Sum batches with :func:`accumulate_scores`. ``loss`` is that of
  :func:`fairjax.curvature.per_group_diag` (multi-label: ``labels [N, A]``, design.md
  section 1.10). An ``nnx.Module`` is scored as in :func:`snip_scores` (design.md
  section 1.11).
  """
  params = masks.apply_mask(variables["params"], mask)
  labels = jnp.asarray(labels, jnp.int32)
  diag = curvature.per_group_diag(
    model,
    {**variables, "params": params},
    jnp.asarray(images),
    labels,
    jnp.zeros(labels.shape[:1], jnp.int32),
    num_groups=1,
    apply_kwargs=apply_kwargs,
    chunk_size=chunk_size,
    loss=loss,
    memory_budget_bytes=memory_budget_bytes,
  )
  scores = jax.tree.map(lambda t: t[0], fairprune.group_terms(params, diag))
  return _only_prunable(scores, mask)


def accumulate_scores(
  fn: Callable[[jax.Array, jax.Array], PyTree], batches: Iterable[Mapping[str, Any]]
) -> PyTree:
  """Sums ``fn(images, labels)`` over batches (dicts ``image``, ``label``[, ``valid``]).

  Padding rows (``valid == False``) are dropped first and batches left empty are skipped (the
  scores are means over a batch's samples, so padding rows cannot stay in as group ``-1``).
  The loop is ``_scoring.accumulate``'s plain sum. Example::

    accumulate_scores(lambda x, y: snip_scores(model, variables, x, y, mask), batches)
  """

  def step(_, batch):
    images, labels = batch["image"], batch["label"]  # may be sharded over devices: kept so
    if "valid" in batch:
      valid = np.asarray(batch["valid"], bool)
      images, labels = np.asarray(images)[valid], np.asarray(labels, np.int32)[valid]
    if labels.shape[0] == 0:
      return None
    return fn(jnp.asarray(images), jnp.asarray(labels, jnp.int32)), None

  return _scoring.accumulate(step, batches, caller="accumulate_scores", what="(non-empty) batches")[
    0
  ]
