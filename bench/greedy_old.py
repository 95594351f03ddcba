"""The previous ``greedy_select`` (commit 2c7820a), frozen for ``python -m bench.greedy --impl``.

Verbatim copy of ``_stream_orders``, ``_greedy_loop``, ``_bucket`` and ``greedy_select`` as they
were in ``fairjax/pruning/fairgrape.py`` before the chunked stream-ordered loop replaced them, so
that old and new can be timed in the same run on the same input. Not used by the library.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


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
def _greedy_loop(
  order: jax.Array, pos: jax.Array, step: jax.Array, first: jax.Array, keep: jax.Array
) -> jax.Array:
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
