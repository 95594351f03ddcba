"""Paired, group-stratified bootstrap intervals for the metrics of :mod:`fairjax.metrics`.

Fairness gaps on real test sets are small (ISIC 2019's published Eodd is 0.0209 in the mean
convention), so a "reduction" means little without an interval. This kernel takes stored
predictions, never models, and returns percentile intervals for every metric of every model and
for paired differences between models (e.g. pruned − dense).

Resampling (what the intervals describe):

- *Stratified by group.* Each group id in ``[0, G)`` and the unknown group ``-1`` is a stratum;
  a resample draws, with replacement, as many samples from each stratum as it holds. Group sizes
  are therefore the same in every resample (no group is ever empty, so no per-group value is
  ever NaN), and unknown-group samples are resampled as their own stratum: they move the overall
  metrics (accuracy, macro-F1) and nothing else, exactly as in :func:`fairjax.metrics.evaluate`.
- *Paired.* One resample is one multiset of sample indices, used for every model, so a
  difference between two models is computed on the same resampled test set each time.
- *Counts, not indices.* Every metric is a function of per-stratum confusion counts, so a sample
  matters only through its joint cell (stratum, label, prediction of every model). Drawing
  ``n_s`` indices uniformly with replacement from a stratum gives joint-cell counts distributed
  ``Multinomial(n_s, n_j / n_s)`` (``n_j`` = samples of the stratum in cell j); drawing those
  counts directly is therefore exactly index resampling in distribution, at a cost that grows
  with the number of occupied cells instead of with N.

Metrics of a resample are those of :func:`fairjax.metrics.evaluate` (design.md section 5) on the
resampled test set, with the same conventions, computed for all resamples at once from the counts
(the tests check them against ``metrics.evaluate`` resample by resample). In particular, a class
whose rate is undefined *in a resample* (no positives or no negatives of a group in that
resample) is handled in that resample exactly as metrics handles it: skipped under
``undefined="skip"`` (the mean convention divides by the classes kept in that resample), counted
as 0 under ``undefined="zero"``. A gap with no class kept is NaN in that resample; NaN
replicates are left out of the percentiles and counted in ``undefined_replicates``.

Intervals are plain percentile intervals: the ``(1 − confidence)/2`` and ``(1 + confidence)/2``
quantiles of the replicates (numpy's default linear interpolation). They undercover slightly on
small test sets, as every percentile bootstrap does.

Everything is host-side numpy (float64), like :mod:`fairjax.metrics`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from fairjax import metrics
from fairjax.metrics import Convention, Undefined

SCALAR_METRICS = ("accuracy", "macro_f1", "eopp0", "eopp1", "eodd", "accuracy_gap")
GROUP_METRICS = ("group_accuracy", "group_macro_f1")
_GAPS = ("eopp0", "eopp1", "eodd")

LEVELLED_UP = "levelled_up"
LEVELLED_DOWN = "levelled_down"
BOTH_GAINED = "both_gained"
BOTH_LOST = "both_lost"
CONVERGED = "converged"
DIVERGED = "diverged"
NO_SIGNIFICANT_CHANGE = "no_significant_change"
MECHANISM_LABELS = (
  LEVELLED_UP,
  LEVELLED_DOWN,
  BOTH_GAINED,
  BOTH_LOST,
  CONVERGED,
  DIVERGED,
  NO_SIGNIFICANT_CHANGE,
)

__all__ = [
  "GROUP_METRICS",
  "MECHANISM_LABELS",
  "SCALAR_METRICS",
  "bootstrap",
  "bootstrap_multilabel",
  "bootstrap_replicates",
  "multilabel_bootstrap_replicates",
  "mechanism",
  "percentile_interval",
]


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------


def _check_confidence(confidence: float) -> float:
  try:
    c = float(confidence)
  except (TypeError, ValueError):
    raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}.") from None
  if isinstance(confidence, bool) or not 0.0 < c < 1.0:  # also rejects NaN
    raise ValueError(f"confidence must be in (0, 1) (exclusive), got {confidence!r}.")
  return c


def _check_num_samples(num_samples: int) -> int:
  if (
    isinstance(num_samples, bool)
    or not isinstance(num_samples, (int, np.integer))
    or num_samples < 1
  ):
    raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}.")
  return int(num_samples)


def _inputs(labels, groups, predictions, num_classes, num_groups):
  """Validated int64 labels [N], groups [N] and {name: int64 [N]}, in the mapping's order."""
  yt = metrics._as_int_array(labels, "labels")
  g = metrics._as_int_array(groups, "groups")
  if g.size != yt.size:
    raise ValueError(f"groups has {g.size} samples but labels has {yt.size}.")
  if not isinstance(predictions, Mapping) or not predictions:
    raise ValueError("predictions must be a non-empty mapping {model name: int[N]}.")
  preds = {}
  for name, p in predictions.items():
    if not isinstance(name, str):
      raise ValueError(f"predictions keys must be model names (str), got {name!r}.")
    arr = metrics._as_int_array(p, f"predictions[{name!r}]")
    if arr.size != yt.size:
      raise ValueError(f"predictions[{name!r}] has {arr.size} samples but labels has {yt.size}.")
    metrics._check_range(arr, f"predictions[{name!r}]", 0, num_classes, "class ids")
    preds[name] = arr
  metrics._check_range(yt, "labels", 0, num_classes, "class ids")
  metrics._check_range(g, "groups", metrics.UNKNOWN_GROUP, num_groups, "group ids (-1 = unknown)")
  return yt, g, preds


def _check_pairs(pairs, names: list[str]) -> list[tuple[str, str]]:
  if pairs is None:
    # Default: every later model against the first one (e.g. pruned − dense).
    return [(m, names[0]) for m in names[1:]]
  out = []
  for pair in pairs:
    if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
      raise ValueError(f"pairs must hold (model, reference) name pairs, got {pair!r}.")
    a, b = pair
    for m in (a, b):
      if m not in names:
        raise ValueError(f"pairs names unknown model {m!r}; models are {names}.")
    if a == b:
      raise ValueError(f"pairs compares model {a!r} with itself.")
    out.append((a, b))
  return out


# --------------------------------------------------------------------------------------------
# Resampling as joint-cell counts
# --------------------------------------------------------------------------------------------


def _joint_cells(strata: np.ndarray, yt: np.ndarray, preds: list[np.ndarray]):
  """(cell of each sample int64[N], cell table int64[J, 2 + M]: stratum, label, predictions)."""
  table, cell = np.unique(np.stack([strata, yt, *preds], axis=1), axis=0, return_inverse=True)
  return cell.reshape(-1), table


def _multinomial_counts(
  cell_strata: np.ndarray, cell_sizes: np.ndarray, num_samples: int, rng: np.random.Generator
) -> np.ndarray:
  """int64[R, J] joint-cell counts of R stratified resamples (see the module docstring)."""
  counts = np.zeros((num_samples, cell_sizes.size), dtype=np.int64)
  for s in np.unique(cell_strata):
    cols = np.flatnonzero(cell_strata == s)
    n_s = int(cell_sizes[cols].sum())
    counts[:, cols] = rng.multinomial(n_s, cell_sizes[cols] / n_s, size=num_samples)
  return counts


def _index_counts(indices: np.ndarray, cell: np.ndarray, num_cells: int) -> np.ndarray:
  """int64[R, J] joint-cell counts of explicit resamples ``indices`` int[R, N]."""
  r = indices.shape[0]
  flat = (np.arange(r)[:, None] * num_cells + cell[indices]).ravel()
  return np.bincount(flat, minlength=r * num_cells).reshape(r, num_cells)


def _check_indices(indices: ArrayLike, strata: np.ndarray) -> np.ndarray:
  idx = np.asarray(indices)
  n = strata.size
  if idx.ndim != 2 or idx.shape[1] != n or idx.shape[0] < 1:
    raise ValueError(f"indices must be int[R, N] with N = {n} and R >= 1, got shape {idx.shape}.")
  if not np.issubdtype(idx.dtype, np.integer):
    raise ValueError(f"indices must be integers, got dtype {idx.dtype}.")
  if idx.min() < 0 or idx.max() >= n:
    raise ValueError(f"indices must lie in [0, {n}).")
  # The intervals assume stratified resamples: every row keeps each stratum's size.
  sizes = np.bincount(strata, minlength=strata.max() + 1)
  num_strata = sizes.size
  flat = (np.arange(idx.shape[0])[:, None] * num_strata + strata[idx]).ravel()
  per_row = np.bincount(flat, minlength=idx.shape[0] * num_strata).reshape(-1, num_strata)
  if np.any(per_row != sizes):
    raise ValueError(
      "indices must be stratified: each row must draw, from every group "
      "(and from the unknown group), as many samples as it holds."
    )
  return idx.astype(np.int64)


def _confusions(counts: np.ndarray, key: np.ndarray, size: int) -> np.ndarray:
  """int64[R, size]: ``counts`` int64[R, J] summed over cells with equal ``key`` int64[J]."""
  # reduceat over cells sorted by key costs R * J additions, far less than a one-hot matmul.
  order = np.argsort(key, kind="stable")
  sorted_key = key[order]
  starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
  out = np.zeros((counts.shape[0], size), dtype=np.int64)
  out[:, sorted_key[starts]] = np.add.reduceat(counts[:, order], starts, axis=1)
  return out


# --------------------------------------------------------------------------------------------
# Metrics of many resamples at once (the definitions of fairjax.metrics, batched)
# --------------------------------------------------------------------------------------------


def _macro_f1(cm: np.ndarray) -> np.ndarray:
  """float64[...] macro-F1 of confusion matrices int[..., C, C] (metrics' definition)."""
  tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
  denom = cm.sum(axis=-1) + cm.sum(axis=-2)  # support + predicted
  present = denom > 0  # classes neither true nor predicted are left out, as in metrics
  f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=present)
  kept = present.sum(axis=-1)
  return np.divide(f1.sum(axis=-1), kept, out=np.full(kept.shape, np.nan), where=kept > 0)


def _gaps(cms: np.ndarray, pairs: list[tuple[int, int]], convention: str, undefined: str):
  """Eopp0/Eopp1/Eodd of group confusions int[R, G, C, C]: ({metric: float64[R]},
  {metric: int[R] classes skipped for the pair attaining the max})."""
  tp = np.diagonal(cms, axis1=2, axis2=3).astype(np.float64)  # [R, G, C]
  positives = cms.sum(axis=3)
  predicted = cms.sum(axis=2)
  negatives = cms.sum(axis=(2, 3))[..., None] - positives
  fp = predicted - tp
  tn = negatives - fp
  has_pos, has_neg = positives > 0, negatives > 0
  fill = np.nan if undefined == "skip" else 0.0
  tpr = np.divide(tp, positives, out=np.full_like(tp, fill), where=has_pos)
  tnr = np.divide(tn, negatives, out=np.full_like(tp, fill), where=has_neg)
  fpr = np.divide(fp, negatives, out=np.full_like(tp, fill), where=has_neg)
  num_classes = tp.shape[-1]
  values = {name: [] for name in _GAPS}
  skipped = {name: [] for name in _GAPS}
  for a, b in pairs:
    pos = has_pos[:, a] & has_pos[:, b]
    neg = has_neg[:, a] & has_neg[:, b]
    if undefined == "zero":
      pos = neg = np.ones_like(pos)
    d_tpr = tpr[:, a] - tpr[:, b]
    terms = {
      "eopp0": (np.abs(tnr[:, a] - tnr[:, b]), neg),
      "eopp1": (np.abs(d_tpr), pos),
      "eodd": (np.abs(d_tpr + fpr[:, a] - fpr[:, b]), pos & neg),
    }
    for name, (term, keep) in terms.items():
      n = keep.sum(axis=1)
      total = np.where(keep, term, 0.0).sum(axis=1)  # skipped terms may be NaN
      if convention == "mean":
        total = np.divide(
          total, n * (2.0 if name == "eodd" else 1.0), out=np.zeros_like(total), where=n > 0
        )
      values[name].append(np.where(n > 0, total, np.nan))
      skipped[name].append(num_classes - n)
  out_values, out_skipped = {}, {}
  for name in _GAPS:
    v = np.stack(values[name])  # [P, R]
    # metrics: the max over pairs ignoring NaN, the first pair on ties, pair 0 if all NaN.
    best = np.argmax(np.where(np.isnan(v), -np.inf, v), axis=0)
    cols = np.arange(v.shape[1])
    out_values[name] = v[best, cols]
    out_skipped[name] = np.stack(skipped[name])[best, cols]
  return out_values, out_skipped


def _metrics_from_confusions(conf: np.ndarray, pairs, convention: str, undefined: str):
  """Replicate metrics of confusions int64[R, G + 1, C, C] (last stratum: unknown group)."""
  overall = conf.sum(axis=1)
  n = overall.sum(axis=(1, 2))
  cms = conf[:, :-1]
  group_n = cms.sum(axis=(2, 3))
  group_acc = np.trace(cms, axis1=2, axis2=3) / group_n
  gaps, skipped = _gaps(cms, pairs, convention, undefined)
  return {
    "accuracy": np.trace(overall, axis1=1, axis2=2) / n,
    "macro_f1": _macro_f1(overall),
    **gaps,
    "accuracy_gap": group_acc.max(axis=1) - group_acc.min(axis=1),
    "group_accuracy": group_acc,
    "group_macro_f1": _macro_f1(cms),
    "skipped_classes": skipped,
  }


def _group_pairs(num_groups: int, privileged: int | None) -> list[tuple[int, int]]:
  if privileged is None:
    return list(itertools.combinations(range(num_groups), 2))
  if (
    isinstance(privileged, bool)
    or not isinstance(privileged, (int, np.integer))
    or not (0 <= privileged < num_groups)
  ):
    raise ValueError(f"privileged must be a group id in [0, {num_groups}), got {privileged!r}.")
  return [(int(privileged), o) for o in range(num_groups) if o != privileged]


def bootstrap_replicates(
  labels: ArrayLike,
  groups: ArrayLike,
  predictions: Mapping[str, ArrayLike],
  *,
  num_classes: int,
  num_groups: int,
  convention: Convention = "sum",
  undefined: Undefined = "skip",
  privileged: int | None = None,
  num_samples: int = 1000,
  seed: int = 0,
  indices: ArrayLike | None = None,
) -> dict[str, dict[str, Any]]:
  """Metrics of every model on R paired, group-stratified resamples (module docstring).

  Args:
    labels: int[N] class ids in [0, C).
    groups: int[N] group ids in [0, G), -1 = unknown group (its own stratum).
    predictions: {model name: int[N] predicted class ids} on the same N samples.
    num_classes: C.
    num_groups: G (>= 2).
    convention, undefined, privileged: as in :func:`fairjax.metrics.equalized_odds`.
    num_samples: R, the number of resamples (ignored when ``indices`` is given).
    seed: seed of ``numpy.random.default_rng`` (same seed, same inputs -> same replicates).
    indices: optional int[R, N] explicit resamples (row r lists the sample indices of resample
      r); each row must keep every stratum's size. For tests and for reproducing an external
      resampling; the identity row gives the full test set.

  Returns:
    {model name: {"accuracy", "macro_f1", "eopp0", "eopp1", "eodd", "accuracy_gap":
    float64[R]; "group_accuracy", "group_macro_f1": float64[R, G]; "skipped_classes":
    {"eopp0" | "eopp1" | "eodd": int64[R]}}}: row r holds what
    :func:`fairjax.metrics.evaluate` reports on resample r (the gaps and skipped classes are
    those of :func:`fairjax.metrics.equalized_odds` with ``privileged``; gaps may be NaN, see
    the module docstring). Row r of every model comes from the same resample.

  Raises:
    ValueError: bad inputs, each message naming the argument.
  """
  if convention not in ("sum", "mean"):
    raise ValueError(f"convention must be 'sum' or 'mean', got {convention!r}.")
  metrics._check_undefined(undefined)
  c = metrics._check_count(num_classes, "num_classes")
  ng = metrics._check_count(num_groups, "num_groups")
  if ng < 2:
    raise ValueError(f"num_groups must be >= 2 for fairness gaps, got {ng}.")
  pairs = _group_pairs(ng, privileged)
  yt, g, preds = _inputs(labels, groups, predictions, c, ng)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
  empty = np.flatnonzero(np.bincount(g[g >= 0], minlength=ng) == 0)
  if empty.size:
    raise ValueError(
      f"groups has no samples of group {int(empty[0])}; every group needs "
      "samples for the fairness gaps."
    )

  strata = np.where(g < 0, ng, g)  # the unknown group is stratum G
  cell, table = _joint_cells(strata, yt, list(preds.values()))
  if indices is None:
    r = _check_num_samples(num_samples)
    sizes = np.bincount(cell, minlength=table.shape[0])
    counts = _multinomial_counts(table[:, 0], sizes, r, np.random.default_rng(seed))
  else:
    counts = _index_counts(_check_indices(indices, strata), cell, table.shape[0])

  out = {}
  base = table[:, 0] * c + table[:, 1]  # stratum * C + label, per cell
  size = (ng + 1) * c * c
  for m, name in enumerate(preds):
    conf = _confusions(counts, base * c + table[:, 2 + m], size)
    out[name] = _metrics_from_confusions(
      conf.reshape(-1, ng + 1, c, c), pairs, convention, undefined
    )
  return out


# --------------------------------------------------------------------------------------------
# Intervals, the levelling label, and the JSON summary
# --------------------------------------------------------------------------------------------


def percentile_interval(replicates: ArrayLike, confidence: float = 0.95) -> tuple[float, float]:
  """Percentile interval of bootstrap replicates.

  Args:
    replicates: float[R]; NaN entries (undefined in that resample) are left out.
    confidence: in (0, 1).

  Returns:
    (low, high): the ``(1 − confidence)/2`` and ``(1 + confidence)/2`` quantiles (linear
    interpolation) as Python floats; (nan, nan) when every replicate is NaN.
  """
  c = _check_confidence(confidence)
  v = np.asarray(replicates, dtype=np.float64)
  if v.ndim != 1 or v.size == 0:
    raise ValueError(f"replicates must be 1-D and non-empty, got shape {v.shape}.")
  v = v[~np.isnan(v)]
  if v.size == 0:
    return math.nan, math.nan
  low, high = np.percentile(v, [50.0 * (1.0 - c), 50.0 * (1.0 + c)])
  return float(low), float(high)


def _extremes(reference: np.ndarray) -> tuple[int, int]:
  """(worse-off, better-off) group: first minimum, last maximum (distinct when tied)."""
  worst = int(np.argmin(reference))
  best = reference.size - 1 - int(np.argmax(reference[::-1]))
  return worst, best


def mechanism(reference: ArrayLike, low: ArrayLike, high: ArrayLike) -> str:
  """Levelled up or levelled down: how a model's per-group values moved against a reference.

  The worse-off group is the reference (dense) model's lowest group, the better-off group its
  highest (first minimum and last maximum, so they differ even when all groups tie); with more
  than two groups only these two are used. A group's change is *significant* when the interval
  of its paired difference (model − reference) excludes 0 (``low > 0``: gained, ``high < 0``:
  lost; an interval touching 0 is not significant). Every combination gets exactly one label:

  ==========================  ===========  =====================  =============
  worse-off \\ better-off      gained       no significant change  lost
  ==========================  ===========  =====================  =============
  gained                      both_gained  levelled_up            converged
  no significant change       diverged     no_significant_change  levelled_down
  lost                        diverged     diverged               both_lost
  ==========================  ===========  =====================  =============

  ``converged``: the worse-off gained *and* the better-off lost, both significantly (the two
  moved toward each other). ``diverged``: the gap widened because the worse-off lost or the
  better-off gained while the other did not move toward it.

  Args:
    reference: float[G] per-group values (e.g. accuracy) of the reference model, G >= 2.
    low, high: float[G] interval of each group's paired difference, model − reference.

  Returns:
    One of :data:`MECHANISM_LABELS`.

  Raises:
    ValueError: shapes differ, fewer than two groups, NaN, or ``low > high``.
  """
  ref = np.asarray(reference, dtype=np.float64)
  lo = np.asarray(low, dtype=np.float64)
  hi = np.asarray(high, dtype=np.float64)
  if ref.ndim != 1 or ref.size < 2 or lo.shape != ref.shape or hi.shape != ref.shape:
    raise ValueError(
      f"reference, low and high must be float[G] with G >= 2, got shapes "
      f"{ref.shape}, {lo.shape}, {hi.shape}."
    )
  for name, arr in (("reference", ref), ("low", lo), ("high", hi)):
    if np.isnan(arr).any():
      raise ValueError(f"{name} contains NaN; mechanism needs defined values.")
  if np.any(lo > hi):
    raise ValueError("low must not exceed high.")
  worst, best = _extremes(ref)

  def move(gr: int) -> int:
    return 1 if lo[gr] > 0 else (-1 if hi[gr] < 0 else 0)

  w, b = move(worst), move(best)
  table = {
    (1, 1): BOTH_GAINED,
    (1, 0): LEVELLED_UP,
    (1, -1): CONVERGED,
    (0, 1): DIVERGED,
    (0, 0): NO_SIGNIFICANT_CHANGE,
    (0, -1): LEVELLED_DOWN,
    (-1, 1): DIVERGED,
    (-1, 0): DIVERGED,
    (-1, -1): BOTH_LOST,
  }
  return table[(w, b)]


def _json_float(x: Any) -> float | None:
  if x is None:
    return None
  x = float(x)
  return None if math.isnan(x) else x


def _leaf(estimate, replicates: np.ndarray, confidence: float) -> dict[str, float | None]:
  low, high = percentile_interval(replicates, confidence)
  return {"estimate": _json_float(estimate), "low": _json_float(low), "high": _json_float(high)}


def _summary(point: dict, reps: dict, names: list[str], confidence: float) -> dict[str, Any]:
  out: dict[str, Any] = {m: _leaf(point[m], reps[m], confidence) for m in SCALAR_METRICS}
  for m in GROUP_METRICS:
    out[m] = {n: _leaf(point[m][n], reps[m][:, i], confidence) for i, n in enumerate(names)}
  out["undefined_replicates"] = {m: int(np.isnan(reps[m]).sum()) for m in _GAPS}
  return out


def bootstrap(
  labels: ArrayLike,
  groups: ArrayLike,
  predictions: Mapping[str, ArrayLike],
  *,
  num_classes: int,
  num_groups: int,
  group_names: Sequence[str] | None = None,
  convention: Convention = "sum",
  undefined: Undefined = "skip",
  privileged: int | None = None,
  num_samples: int = 1000,
  seed: int = 0,
  confidence: float = 0.95,
  pairs: Sequence[tuple[str, str]] | None = None,
  indices: ArrayLike | None = None,
) -> dict[str, Any]:
  """Percentile intervals for every metric of every model and for paired differences.

  Point estimates are :func:`fairjax.metrics.evaluate` on the full test set; intervals come
  from :func:`bootstrap_replicates` (paired, stratified by group, the unknown group ``-1`` its
  own stratum) via :func:`percentile_interval`.

  Args:
    labels: int[N] class ids in [0, C).
    groups: int[N] group ids in [0, G), -1 = unknown (overall metrics only; resampled).
    predictions: {model name: int[N]} on the same samples, e.g. {"dense": ..., "pruned": ...}.
    num_classes: C.
    num_groups: G (>= 2).
    group_names: G unique names, default ``"group0" .. "group{G-1}"`` (as in evaluate).
    convention, undefined, privileged: as in :func:`fairjax.metrics.equalized_odds`.
    num_samples: R >= 1 resamples.
    seed: non-negative int seed of the resampling.
    confidence: interval level in (0, 1).
    pairs: (model, reference) name pairs to difference as model − reference; default: every
      model after the first against the first (mapping order), e.g. ("pruned", "dense").
    indices: optional int[R, N] explicit stratified resamples (see bootstrap_replicates).

  Returns:
    A JSON-serialisable dict (NaN -> None)::

      {
        "models": {name: {
            "accuracy" | "macro_f1" | "eopp0" | "eopp1" | "eodd" | "accuracy_gap": LEAF,
            "group_accuracy": {group name: LEAF}, "group_macro_f1": {group name: LEAF},
            "undefined_replicates": {"eopp0" | "eopp1" | "eodd": int}}},
        "differences": {"<model> - <reference>": {
            same metric keys as a model (LEAFs of model − reference, per resample),
            "undefined_replicates": {...},
            "mechanism": {"group_accuracy" | "group_macro_f1":
                {"label": str, "worse_off": group name, "better_off": group name}}}},
        "num_samples": R, "confidence": float, "seed": int | None (None with indices),
        "interval": "percentile", "stratified_by": "group",
        "group_counts": {group name: int}, "num_unknown_group": int  (stratum sizes),
        "fairness_convention": str, "fairness_undefined": str, "group_names": [str, ...]
      }

    LEAF is ``{"estimate": float | None, "low": float | None, "high": float | None}``:
    the full-set value and the percentile interval. ``mechanism`` labels come from
    :func:`mechanism` with the reference model's full-set per-group values and the paired
    per-group difference intervals. Models live under ``"models"`` (not at the top level) so
    that no model name can collide with the metadata keys.

  Raises:
    ValueError: bad inputs (mismatched lengths, unknown model in ``pairs``, ``num_samples``
      < 1, ``confidence`` outside (0, 1), an empty group, ...), naming the argument.
  """
  conf = _check_confidence(confidence)
  if indices is None:
    _check_num_samples(num_samples)
  ng = metrics._check_count(num_groups, "num_groups")
  c = metrics._check_count(num_classes, "num_classes")
  yt, g, preds = _inputs(labels, groups, predictions, c, ng)
  names = list(preds)
  diff_pairs = _check_pairs(pairs, names)
  point = {
    m: metrics.evaluate(
      yt,
      p,
      g,
      num_classes=num_classes,
      num_groups=ng,
      group_names=group_names,
      convention=convention,
      undefined=undefined,
    )
    for m, p in preds.items()
  }
  gnames = list(point[names[0]]["group_accuracy"])
  reps = bootstrap_replicates(
    yt,
    g,
    preds,
    num_classes=num_classes,
    num_groups=ng,
    convention=convention,
    undefined=undefined,
    privileged=privileged,
    num_samples=num_samples,
    seed=seed,
    indices=indices,
  )
  if privileged is not None:
    # evaluate compares every pair; with a privileged group the point gaps must match.
    for m, p in preds.items():
      eo = metrics.equalized_odds(
        yt,
        p,
        g,
        num_classes=num_classes,
        num_groups=ng,
        convention=convention,
        undefined=undefined,
        privileged=privileged,
      )
      point[m].update({k: _json_float(eo[k]) for k in _GAPS})

  return _report(
    point,
    reps,
    names,
    gnames,
    diff_pairs,
    conf,
    g,
    ng,
    indices,
    num_samples,
    seed,
    convention,
    undefined,
  )


def _report(
  point: dict,
  reps: dict,
  names: list[str],
  gnames: list[str],
  diff_pairs: list[tuple[str, str]],
  conf: float,
  g: np.ndarray,
  ng: int,
  indices,
  num_samples: int,
  seed: int,
  convention: str,
  undefined: str,
) -> dict[str, Any]:
  """The JSON dict of :func:`bootstrap` from point values and replicates of every model."""
  out: dict[str, Any] = {
    "models": {m: _summary(point[m], reps[m], gnames, conf) for m in names},
    "differences": {},
  }
  for a, b in diff_pairs:

    def sub(x, y):
      return None if x is None or y is None else x - y

    d_point = {m: sub(point[a][m], point[b][m]) for m in SCALAR_METRICS}
    d_reps = {m: reps[a][m] - reps[b][m] for m in SCALAR_METRICS + GROUP_METRICS}
    for m in GROUP_METRICS:
      d_point[m] = {n: sub(point[a][m][n], point[b][m][n]) for n in gnames}
    entry = _summary(d_point, d_reps, gnames, conf)
    entry["mechanism"] = {}
    for m in GROUP_METRICS:
      ref = np.array([point[b][m][n] for n in gnames], dtype=np.float64)
      leaves = entry[m]
      lo = [leaves[n]["low"] for n in gnames]
      hi = [leaves[n]["high"] for n in gnames]
      worst, best = _extremes(ref)
      entry["mechanism"][m] = {
        "label": mechanism(ref, lo, hi),
        "worse_off": gnames[worst],
        "better_off": gnames[best],
      }
    out["differences"][f"{a} - {b}"] = entry

  strata = np.bincount(np.where(g < 0, ng, g), minlength=ng + 1)
  out.update(
    {
      "num_samples": int(np.asarray(indices).shape[0]) if indices is not None else int(num_samples),
      "confidence": conf,
      "seed": None if indices is not None else int(seed),
      "interval": "percentile",
      "stratified_by": "group",
      "group_counts": {n: int(k) for n, k in zip(gnames, strata[:ng])},
      "num_unknown_group": int(strata[ng]),
      "fairness_convention": convention,
      "fairness_undefined": undefined,
      "group_names": gnames,
    }
  )
  return out


# --------------------------------------------------------------------------------------------
# Multi-label tasks (design.md section 5.7): every attribute scored on the SAME resamples
# --------------------------------------------------------------------------------------------


def _multilabel_inputs(labels, groups, predictions, num_groups):
  """Validated int64 labels [N, A], groups [N] and {name: int64 [N, A]}."""
  g = metrics._as_int_array(groups, "groups")
  if not isinstance(predictions, Mapping) or not predictions:
    raise ValueError("predictions must be a non-empty mapping {model name: {0,1}[N, A]}.")
  preds = {}
  for name, p in predictions.items():
    if not isinstance(name, str):
      raise ValueError(f"predictions keys must be model names (str), got {name!r}.")
    yt, preds[name] = metrics._multilabel_labels(labels, p)
  if g.shape != yt.shape[:1]:
    raise ValueError(f"groups has {g.size} samples but labels has {yt.shape[0]}.")
  metrics._check_range(g, "groups", metrics.UNKNOWN_GROUP, num_groups, "group ids (-1 = unknown)")
  return yt, g, preds


def _draw_counts(strata: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
  """int64[R, N]: how often each sample is drawn by R stratified resamples (each stratum of
  size n_s draws n_s samples uniformly with replacement: Multinomial(n_s, 1/n_s))."""
  counts = np.zeros((num_samples, strata.size), dtype=np.int64)
  for s in np.unique(strata):
    members = np.flatnonzero(strata == s)
    counts[:, members] = rng.multinomial(
      members.size, np.full(members.size, 1 / members.size), size=num_samples
    )
  return counts


def multilabel_bootstrap_replicates(
  labels: ArrayLike,
  groups: ArrayLike,
  predictions: Mapping[str, ArrayLike],
  *,
  num_groups: int,
  convention: Convention = "sum",
  undefined: Undefined = "skip",
  num_samples: int = 1000,
  seed: int = 0,
  indices: ArrayLike | None = None,
) -> dict[str, dict[str, Any]]:
  """:func:`bootstrap_replicates` for a multi-label task (design.md section 5.7).

  One resample is one multiset of SAMPLES (stratified by group, paired over models) and every
  attribute is scored on it, so the attribute means are those of
  :func:`fairjax.metrics.multilabel_evaluate` on the resampled test set: per attribute, the
  two-class metrics of :func:`bootstrap_replicates` from that attribute's confusion counts;
  then ``accuracy`` and ``macro_f1`` are means over attributes, ``eopp0`` / ``eopp1`` /
  ``eodd`` means over the attributes where the gap is defined in that resample (NaN when none
  is), ``group_accuracy`` / ``group_macro_f1`` means over attributes per group, and
  ``accuracy_gap`` the max minus min of the averaged group accuracies.

  Args:
    labels: ``{0, 1}[N, A]``.
    groups: int[N] group ids in [0, G), -1 = unknown (its own stratum).
    predictions: {model name: ``{0, 1}[N, A]``}.
    num_groups, convention, undefined, num_samples, seed, indices: as in
      :func:`bootstrap_replicates` (every pair of groups is compared).

  Returns:
    {model name: {"accuracy", "macro_f1", "eopp0", "eopp1", "eodd", "accuracy_gap":
    float64[R]; "group_accuracy", "group_macro_f1": float64[R, G]}}.
  """
  if convention not in ("sum", "mean"):
    raise ValueError(f"convention must be 'sum' or 'mean', got {convention!r}.")
  metrics._check_undefined(undefined)
  ng = metrics._check_count(num_groups, "num_groups")
  if ng < 2:
    raise ValueError(f"num_groups must be >= 2 for fairness gaps, got {ng}.")
  yt, g, preds = _multilabel_inputs(labels, groups, predictions, ng)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
  empty = np.flatnonzero(np.bincount(g[g >= 0], minlength=ng) == 0)
  if empty.size:
    raise ValueError(
      f"groups has no samples of group {int(empty[0])}; every group needs "
      "samples for the fairness gaps."
    )
  strata = np.where(g < 0, ng, g)
  if indices is None:
    draws = _draw_counts(strata, _check_num_samples(num_samples), np.random.default_rng(seed))
  else:
    idx = _check_indices(indices, strata)
    draws = _index_counts(idx, np.arange(strata.size), strata.size)
  # Float counts for one BLAS product per attribute (exact: counts stay far below 2**53).
  weights = draws.astype(np.float64)
  pairs = _group_pairs(ng, None)
  per_model: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in preds}
  for a in range(yt.shape[1]):
    cell, table = _joint_cells(strata, yt[:, a], [p[:, a] for p in preds.values()])
    onehot = np.zeros((strata.size, table.shape[0]))
    onehot[np.arange(strata.size), cell] = 1.0
    counts = np.rint(weights @ onehot).astype(np.int64)  # [R, J] joint-cell counts
    base = table[:, 0] * 2 + table[:, 1]
    for m, name in enumerate(preds):
      conf = _confusions(counts, base * 2 + table[:, 2 + m], (ng + 1) * 4)
      per_model[name].append(
        _metrics_from_confusions(conf.reshape(-1, ng + 1, 2, 2), pairs, convention, undefined)
      )
  out = {}
  for name, attrs in per_model.items():

    def stack(key):
      return np.stack([r[key] for r in attrs])  # [A, R] or [A, R, G]

    gaps = {}
    for key in _GAPS:
      v = stack(key)
      kept = (~np.isnan(v)).sum(axis=0)
      total = np.where(np.isnan(v), 0.0, v).sum(axis=0)
      gaps[key] = np.divide(total, kept, out=np.full(total.shape, np.nan), where=kept > 0)
    group_acc = stack("group_accuracy").mean(axis=0)
    out[name] = {
      "accuracy": stack("accuracy").mean(axis=0),
      "macro_f1": stack("macro_f1").mean(axis=0),
      **gaps,
      "accuracy_gap": group_acc.max(axis=1) - group_acc.min(axis=1),
      "group_accuracy": group_acc,
      "group_macro_f1": stack("group_macro_f1").mean(axis=0),
    }
  return out


def bootstrap_multilabel(
  labels: ArrayLike,
  groups: ArrayLike,
  predictions: Mapping[str, ArrayLike],
  *,
  num_groups: int,
  group_names: Sequence[str] | None = None,
  attribute_names: Sequence[str] | None = None,
  convention: Convention = "sum",
  undefined: Undefined = "skip",
  num_samples: int = 1000,
  seed: int = 0,
  confidence: float = 0.95,
  pairs: Sequence[tuple[str, str]] | None = None,
  indices: ArrayLike | None = None,
) -> dict[str, Any]:
  """:func:`bootstrap` for a multi-label task: the same JSON dict, with point estimates from
  :func:`fairjax.metrics.multilabel_evaluate` and replicates from
  :func:`multilabel_bootstrap_replicates` (labels and predictions ``{0, 1}[N, A]``; every
  pair of groups is compared). ``"task": "multilabel"`` and ``"num_attributes"`` are added.
  """
  conf = _check_confidence(confidence)
  if indices is None:
    _check_num_samples(num_samples)
  ng = metrics._check_count(num_groups, "num_groups")
  yt, g, preds = _multilabel_inputs(labels, groups, predictions, ng)
  names = list(preds)
  diff_pairs = _check_pairs(pairs, names)
  point = {
    m: metrics.multilabel_evaluate(
      yt,
      p,
      g,
      num_groups=ng,
      group_names=group_names,
      attribute_names=attribute_names,
      convention=convention,
      undefined=undefined,
    )
    for m, p in preds.items()
  }
  gnames = list(point[names[0]]["group_accuracy"])
  reps = multilabel_bootstrap_replicates(
    yt,
    g,
    preds,
    num_groups=ng,
    convention=convention,
    undefined=undefined,
    num_samples=num_samples,
    seed=seed,
    indices=indices,
  )
  out = _report(
    point,
    reps,
    names,
    gnames,
    diff_pairs,
    conf,
    g,
    ng,
    indices,
    num_samples,
    seed,
    convention,
    undefined,
  )
  out.update({"task": "multilabel", "num_attributes": int(yt.shape[1])})
  return out
