"""FairPrune (Wu et al., MICCAI 2022, arXiv 2203.02110): design.md section 2.

The saliency of parameter ``i`` is the Optimal-Brain-Damage term of the unprivileged group minus
``beta`` times that of the privileged group::

    S_i = 1/2 * theta_i**2 * (h_ii^(unpriv) - beta * h_ii^(priv))

with ``h^(g)`` the diagonal GGN of group ``g``'s mean loss (:func:`fairjax.curvature.per_group_diag`).
The parameters with the SMALLEST ``S`` are pruned: they matter little to the unprivileged group
and much to the privileged one. Scores here follow the project convention "higher = keep", so
``S`` itself is the score and :func:`fairjax.masks.prune_lowest` does the selection.

More than two groups (documented generalisation): the unprivileged side is ONE group (by
default the one with the lowest dense validation accuracy) and the privileged side is the MEAN
curvature of all the other groups. With two groups this is exactly the paper's formula.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fairjax import curvature, parallel
from fairjax.pruning import _scoring

PyTree = Any


def group_roles(
  group_accuracy: Sequence[float], *, privileged: int | None = None, unprivileged: int | None = None
) -> tuple[int, tuple[int, ...]]:
  """Chooses the unprivileged group and the privileged group(s).

  Args:
    group_accuracy: dense-model validation accuracy per group, ``[G]`` (NaN for a group with no
      validation sample; such a group can never be chosen automatically).
    privileged: a configured privileged group id, or None.
    unprivileged: a configured unprivileged group id, or None.

  Returns:
    ``(unprivileged, privileged_groups)``: with two groups the other group is privileged; with
    more, every group except the unprivileged one (their curvatures are averaged), unless
    ``privileged`` names one.
  """
  acc = np.asarray(group_accuracy, dtype=np.float64)
  num_groups = acc.shape[0]
  if num_groups < 2:
    raise ValueError(f"FairPrune needs at least two groups, got {num_groups}")
  for name, value in (("privileged", privileged), ("unprivileged", unprivileged)):
    if value is not None and not 0 <= value < num_groups:
      raise ValueError(f"{name} group id {value} is outside [0, {num_groups})")
  if unprivileged is None:
    candidates = [g for g in range(num_groups) if g != privileged and np.isfinite(acc[g])]
    if not candidates:
      raise ValueError("no group with a finite validation accuracy can be unprivileged")
    unprivileged = min(candidates, key=lambda g: (acc[g], g))
  if privileged is not None:
    if privileged == unprivileged:
      raise ValueError(f"group {privileged} cannot be both privileged and unprivileged")
    return unprivileged, (privileged,)
  return unprivileged, tuple(g for g in range(num_groups) if g != unprivileged)


def saliency(
  params: PyTree, group_diag: PyTree, *, unprivileged: int, privileged: Sequence[int], beta: float
) -> PyTree:
  """FairPrune saliency ``1/2 theta^2 (h_unpriv - beta * mean_{g in priv} h_g)``.

  Args:
    params: parameter pytree (float leaves).
    group_diag: same structure, leaves ``[G, *leaf.shape]`` (per-group diagonal curvature).
    unprivileged: group id of the unprivileged group.
    privileged: group ids averaged into the privileged term.
    beta: weight of the privileged group, ``0 < beta <= 1`` in the paper.

  Returns:
    Pytree like ``params`` with float saliencies (lower = pruned first).
  """
  return _saliency(
    params,
    group_diag,
    unprivileged=int(unprivileged),
    privileged=tuple(int(g) for g in privileged),
    beta=beta,
  )


# One compiled program for the whole tree (op by op it is a few dispatches per leaf, each
# compiled on first use: seconds per run on CPU for nothing).
@functools.partial(jax.jit, static_argnames=("unprivileged", "privileged"))
def _saliency(
  params: PyTree, group_diag: PyTree, *, unprivileged: int, privileged: tuple[int, ...], beta: float
) -> PyTree:
  priv = jnp.asarray(privileged)

  def one(theta, h):
    h_priv = jnp.mean(h[priv], axis=0)
    return _obd(theta, h[unprivileged] - beta * h_priv)

  return jax.tree.map(one, params, group_diag)


def _obd(theta: jax.Array, h: jax.Array) -> jax.Array:
  """``1/2 theta^2 h`` (design.md section 2.1), broadcast: the one copy of the formula, used by
  :func:`saliency`, :func:`group_terms` and OBD (``baselines.obd_scores``, one group)."""
  return 0.5 * theta * theta * h


def group_terms(params: PyTree, group_diag: PyTree) -> PyTree:
  """Per-group OBD terms ``1/2 theta^2 h_g``, leaves ``[G, *leaf.shape]`` (for the histograms).

  ``params`` leaves ``float[*shape]``, ``group_diag`` leaves ``float[G, *shape]`` (e.g. from
  :func:`average_group_diag`); with ``G = 1`` and every sample in group 0 this is OBD
  (``fairjax.pruning.baselines.obd_scores``, design.md section 4.7).
  """
  return jax.tree.map(lambda theta, h: _obd(theta[None], h), params, group_diag)


def average_group_diag(
  model: nn.Module,
  variables: PyTree,
  batches: Iterable[Mapping[str, Any]],
  *,
  num_groups: int,
  method: str = "exact",
  rng: jax.Array | None = None,
  num_samples: int = 1,
  chunk_size: int | None = None,
  apply_kwargs: Mapping[str, Any] | None = None,
  loss: str = _scoring.SOFTMAX,
  memory_budget_bytes: int | None = None,
) -> tuple[PyTree, np.ndarray]:
  """Per-group diagonal curvature averaged over mini-batches (design.md section 2).

  Each batch's result is weighted by its per-group sample count, so the average is the
  per-group curvature of the union of the batches. ``batches`` yield dicts with ``image``
  ``float32[B, H, W, C]``, ``label`` and ``group`` ``int32[B]`` (``valid`` rows, if present,
  are respected by giving padded rows group ``-1``). Batches may be jax arrays sharded over
  devices (``fairjax.parallel``); the result is the same as for the host batch. ``chunk_size``
  bounds the memory of the per-sample part, ``memory_budget_bytes`` bounds each call's memory
  (both: see :func:`fairjax.curvature.per_group_diag`).
  ``loss="sigmoid_binary_cross_entropy"`` is the multi-label loss (``label [B, A]`` in
  ``{0, 1}``, design.md section 1.10), passed on to ``per_group_diag``. An ``nnx.Module``
  (``variables=None``) gives ``diag`` in the layout of ``fairjax.nnx_adapter.param_dict(model)``
  (design.md section 1.11); :func:`saliency` then takes that dict as ``params``.

  Returns:
    ``(diag, counts)``: the pytree ``[G, ...]`` and ``int[G]`` total samples per group.

  Raises:
    ValueError: if a group received no sample at all (its curvature would be meaningless).
  """

  # Folded in batch by batch (_scoring.accumulate, count-weighted): one [G, params] result alive
  # at a time beside the running sum.
  def step(i, batch):
    key = None if rng is None else jax.random.fold_in(rng, i)
    return curvature.per_group_diag(
      model,
      variables,
      jnp.asarray(batch["image"]),
      jnp.asarray(batch["label"], jnp.int32),
      jnp.asarray(_scoring.unknown_padding(batch), jnp.int32),
      num_groups=num_groups,
      method=method,
      rng=key,
      num_samples=num_samples,
      chunk_size=chunk_size,
      apply_kwargs=apply_kwargs,
      return_counts=True,
      loss=loss,
      memory_budget_bytes=memory_budget_bytes,
    )

  diag, counts = _scoring.accumulate(
    step, batches, caller="average_group_diag", weighted=True, mean=True
  )
  total = np.sum(np.stack([parallel.to_host(c) for c in counts]), axis=0)
  empty = [g for g in range(num_groups) if total[g] == 0]
  if empty:
    raise ValueError(
      f"group(s) {empty} had no samples in the scoring batches; FairPrune needs "
      "every group (check the sensitive attribute and the split)"
    )
  return diag, total
