"""Accuracy and group-fairness metrics computed from predictions (design.md section 5).

Metrics take predictions, never models (design.md section 0). Every function takes host arrays
(numpy or array-likes such as jax arrays):

- ``y_true``: int[N] class ids in [0, C),
- ``y_pred``: int[N] predicted class ids in [0, C),
- ``groups``: int[N] sensitive-group ids in [0, G), with ``-1`` meaning *unknown group*.

Samples of the unknown group count in every overall metric (accuracy, macro P/R/F1,
``num_samples``) and are excluded from every group metric (rates, group accuracy, fairness gaps);
:func:`evaluate` reports how many there were as ``num_unknown_group``.

Everything is pure, vectorised numpy (``bincount`` over flattened confusion-matrix indices): the
metrics run once per evaluation on the host, so there is nothing to gain from ``jit``.

Rules for degenerate cases, applied consistently:

- A rate whose denominator is zero (a class with no positives in a group: TPR undefined; a class
  with no negatives in a group: TNR and FPR undefined) is *undefined*. ``undefined="skip"`` (the
  default) leaves that class out of the sum / mean for that pair of groups and reports how many
  classes were skipped; ``undefined="zero"`` reproduces the public FairPrune / Kong et al. code,
  which silently counts such a rate as 0 (design.md section 5).
- A group with no samples: functions that report one value *per group*
  (:func:`group_rates`, :func:`group_accuracy`, per-group macro-F1) return NaN for it, never 0.
  Functions that reduce over groups to one number (:func:`equalized_odds`,
  :func:`accuracy_gap`, :func:`evaluate`, :func:`binary_rate_differences`) raise ``ValueError``
  naming the empty group: a gap to a group without data is meaningless, and silently dropping the
  group would turn a two-group metric into a vacuous 0.

Multi-label tasks (several binary attributes per sample, e.g. CelebA's 39): ``y_true`` and
``y_pred`` are ``{0, 1}[N, A]``. :func:`multilabel_evaluate` treats every attribute as a binary
(two-class) task, applies the functions above to it, and averages over the attributes with equal
weight (design.md section 5.7).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

Convention = Literal["sum", "mean"]
Undefined = Literal["skip", "zero"]

UNKNOWN_GROUP = -1
_METRICS = ("eopp0", "eopp1", "eodd")

__all__ = [
  "UNKNOWN_GROUP",
  "accuracy",
  "accuracy_gap",
  "binary_rate_differences",
  "confusion_matrix",
  "disparity_of_degradation",
  "attribute_accuracy",
  "equalized_odds",
  "evaluate",
  "fate",
  "group_accuracy",
  "group_rates",
  "macro_precision_recall_f1",
  "multilabel_evaluate",
  "multilabel_group_accuracy",
]


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------


def _check_count(value: int, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}.")
  return int(value)


def _as_int_array(x: ArrayLike, name: str) -> np.ndarray:
  """Converts ``x`` to a 1-D int64 array, rejecting NaN and non-integral values by name."""
  arr = np.asarray(x)
  if arr.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {arr.shape}.")
  if arr.dtype == bool:
    return arr.astype(np.int64)
  if np.issubdtype(arr.dtype, np.integer):
    return arr.astype(np.int64)
  if np.issubdtype(arr.dtype, np.floating):
    nan = np.isnan(arr)
    if nan.any():
      raise ValueError(
        f"{name} contains NaN ({int(nan.sum())} of {arr.size} entries, first at index "
        f"{int(np.argmax(nan))}); metrics need integer ids."
      )
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
      raise ValueError(f"{name} must hold integer ids, got non-integral values.")
    return arr.astype(np.int64)
  raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}.")


def _check_range(arr: np.ndarray, name: str, low: int, high: int, what: str) -> None:
  bad = (arr < low) | (arr >= high)
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(
      f"{name} has {int(bad.sum())} value(s) outside {what} [{low}, {high}); "
      f"first is {int(arr[i])} at index {i}."
    )


def _labels(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int | None):
  yt = _as_int_array(y_true, "y_true")
  yp = _as_int_array(y_pred, "y_pred")
  if yt.shape != yp.shape:
    raise ValueError(f"Length mismatch: y_true has {yt.size} samples, y_pred has {yp.size}.")
  if yt.size == 0:
    raise ValueError("Metrics need at least one sample; got empty y_true / y_pred.")
  if num_classes is not None:
    _check_range(yt, "y_true", 0, num_classes, "class ids")
    _check_range(yp, "y_pred", 0, num_classes, "class ids")
  return yt, yp


def _inputs(y_true, y_pred, groups, num_classes: int | None, num_groups: int):
  yt, yp = _labels(y_true, y_pred, num_classes)
  g = _as_int_array(groups, "groups")
  if g.shape != yt.shape:
    raise ValueError(f"Length mismatch: y_true has {yt.size} samples, groups has {g.size}.")
  _check_range(g, "groups", UNKNOWN_GROUP, num_groups, "group ids (-1 = unknown)")
  return yt, yp, g


def _group_label(g: int, group_names: Sequence[str] | None) -> str:
  return f"group {g} ({group_names[g]!r})" if group_names is not None else f"group {g}"


def _require_nonempty(counts: np.ndarray, what: str, group_names=None) -> None:
  empty = np.flatnonzero(counts == 0)
  if empty.size:
    names = ", ".join(_group_label(int(g), group_names) for g in empty)
    raise ValueError(
      f"{what} needs samples from every group, but {names} has no samples "
      "(after excluding unknown-group samples, id -1)."
    )


# --------------------------------------------------------------------------------------------
# Overall metrics
# --------------------------------------------------------------------------------------------


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> np.ndarray:
  """Confusion matrix of class ids (design.md section 5).

  Args:
    y_true: int[N] true class ids in [0, C).
    y_pred: int[N] predicted class ids in [0, C).
    num_classes: C.

  Returns:
    int64[C, C] counts, rows = true class, columns = predicted class (scikit-learn layout).
  """
  c = _check_count(num_classes, "num_classes")
  yt, yp = _labels(y_true, y_pred, c)
  return np.bincount(yt * c + yp, minlength=c * c).reshape(c, c)


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
  """Fraction of samples with ``y_pred == y_true`` over all N samples (unknown group included).

  Args:
    y_true: int[N] class ids; y_pred: int[N] class ids.

  Returns:
    Python float in [0, 1].
  """
  yt, yp = _labels(y_true, y_pred, None)
  return float(np.mean(yt == yp))


def _macro_prf_from_cm(cm: np.ndarray) -> tuple[float, float, float]:
  """Macro P/R/F1 of one confusion matrix, sklearn ``zero_division=0`` semantics."""
  tp = np.diag(cm).astype(np.float64)
  support = cm.sum(axis=1)
  predicted = cm.sum(axis=0)
  # scikit-learn's macro average runs over the labels seen in y_true or y_pred; a class that is
  # neither true nor predicted anywhere would contribute a meaningless 0 and is left out.
  present = (support + predicted) > 0
  if not present.any():
    return math.nan, math.nan, math.nan
  tp, support, predicted = tp[present], support[present], predicted[present]
  # zero_division=0: a class never predicted has precision 0; a class never true has recall 0.
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
  # F1 = 2TP / (2TP + FP + FN) = 2TP / (support + predicted); the denominator is > 0 for every
  # present class, and it equals 2PR/(P+R) (0 when TP = 0), as in scikit-learn.
  f1 = 2.0 * tp / (support + predicted)
  return float(precision.mean()), float(recall.mean()), float(f1.mean())


def macro_precision_recall_f1(
  y_true: ArrayLike, y_pred: ArrayLike, num_classes: int
) -> tuple[float, float, float]:
  """Macro-averaged precision, recall and F1 (design.md section 5).

  Matches ``sklearn.metrics.precision_recall_fscore_support(average="macro",
  zero_division=0)``: the unweighted mean over the classes present in ``y_true`` or ``y_pred``
  (classes with no support and no predictions are left out of the mean); a class that is never
  predicted has precision 0, a class that is never true has recall 0, and F1 is 0 when TP is 0.

  Args:
    y_true: int[N] class ids in [0, C).
    y_pred: int[N] class ids in [0, C).
    num_classes: C.

  Returns:
    (precision, recall, f1) as Python floats.
  """
  return _macro_prf_from_cm(confusion_matrix(y_true, y_pred, num_classes))


# --------------------------------------------------------------------------------------------
# Per-group rates and fairness gaps
# --------------------------------------------------------------------------------------------


def _group_confusions(yt, yp, g, num_classes: int, num_groups: int) -> np.ndarray:
  """int64[G, C, C] per-group confusion matrices; unknown-group samples are dropped."""
  known = g >= 0
  c = num_classes
  flat = (g[known] * c + yt[known]) * c + yp[known]
  return np.bincount(flat, minlength=num_groups * c * c).reshape(num_groups, c, c)


def _rates_from_confusions(cms: np.ndarray, undefined: Undefined) -> dict[str, np.ndarray]:
  tp = np.diagonal(cms, axis1=1, axis2=2).astype(np.float64)  # [G, C]
  positives = cms.sum(axis=2)  # true class == c
  predicted = cms.sum(axis=1)  # predicted class == c
  counts = cms.sum(axis=(1, 2))  # [G]
  negatives = counts[:, None] - positives
  fp = predicted - tp
  tn = negatives - fp
  has_pos = positives > 0
  has_neg = negatives > 0
  # Undefined rates are NaN under "skip" so that any accidental use propagates loudly; under
  # "zero" they are 0, which is what the public code silently did (design.md section 5).
  fill = np.nan if undefined == "skip" else 0.0
  tpr = np.divide(tp, positives, out=np.full_like(tp, fill), where=has_pos)
  tnr = np.divide(tn, negatives, out=np.full_like(tp, fill), where=has_neg)
  fpr = np.divide(fp, negatives, out=np.full_like(tp, fill), where=has_neg)
  return {
    "tpr": tpr,
    "tnr": tnr,
    "fpr": fpr,
    "defined": has_pos & has_neg,
    "has_positives": has_pos,
    "has_negatives": has_neg,
    "counts": counts,
    "confusion": cms,
  }


def _check_undefined(undefined: str) -> None:
  if undefined not in ("skip", "zero"):
    raise ValueError(f"undefined must be 'skip' or 'zero', got {undefined!r}.")


def group_rates(
  y_true: ArrayLike,
  y_pred: ArrayLike,
  groups: ArrayLike,
  num_classes: int,
  num_groups: int,
  *,
  undefined: Undefined = "skip",
) -> dict[str, Any]:
  """One-vs-rest TPR / TNR / FPR per group and class (design.md section 5).

  For group g and class c, positives are the group's samples with ``y_true == c``:
  TPR = TP/P, TNR = TN/Neg, FPR = FP/Neg. Unknown-group samples (id -1) are excluded.

  Args:
    y_true, y_pred: int[N] class ids in [0, C).
    groups: int[N] group ids in [0, G), -1 = unknown.
    num_classes: C.
    num_groups: G.
    undefined: ``"skip"`` -> undefined rates are NaN; ``"zero"`` -> they are 0 (public code).
      The ``defined`` masks are the same under both.

  Returns:
    dict with ``tpr``, ``tnr``, ``fpr``: float64[G, C]; ``defined``: bool[G, C] (the class has
    both positives and negatives in the group, so all three rates are defined);
    ``has_positives`` (TPR defined) and ``has_negatives`` (TNR/FPR defined): bool[G, C];
    ``counts``: int64[G] samples per group; ``confusion``: int64[G, C, C]. A group with no
    samples has all rates undefined.
  """
  _check_undefined(undefined)
  c = _check_count(num_classes, "num_classes")
  ng = _check_count(num_groups, "num_groups")
  yt, yp, g = _inputs(y_true, y_pred, groups, c, ng)
  return _rates_from_confusions(_group_confusions(yt, yp, g, c, ng), undefined)


def _pair_gaps(rates: dict[str, np.ndarray], a: int, b: int, convention: str, undefined: str):
  """(values, skipped) for Eopp0/Eopp1/Eodd between groups a and b."""
  d_tpr = rates["tpr"][a] - rates["tpr"][b]
  d_tnr = rates["tnr"][a] - rates["tnr"][b]
  d_fpr = rates["fpr"][a] - rates["fpr"][b]
  pos = rates["has_positives"][[a, b]].all(axis=0)
  neg = rates["has_negatives"][[a, b]].all(axis=0)
  num_classes = d_tpr.size
  if undefined == "zero":
    # Rates are already 0 where undefined: every class takes part, as in the public code.
    pos = neg = np.ones(num_classes, dtype=bool)
  # Each gap uses only the rates it needs: Eopp0 needs TNR (negatives in both groups), Eopp1
  # needs TPR (positives in both), Eodd needs both. A class without positives in one group
  # therefore still counts towards Eopp0.
  terms = {
    "eopp0": (np.abs(d_tnr), neg),
    "eopp1": (np.abs(d_tpr), pos),
    "eodd": (np.abs(d_tpr + d_fpr), pos & neg),
  }
  values, skipped = {}, {}
  for name, (term, keep) in terms.items():
    n = int(keep.sum())
    skipped[name] = num_classes - n
    if n == 0:
      values[name] = math.nan
      continue
    total = float(term[keep].sum())
    if convention == "sum":
      values[name] = total
    else:
      # Kong et al.: mean over the classes taking part; Eodd is additionally halved so
      # that it lies in [0, 1] like the two equal-opportunity gaps.
      values[name] = total / n / (2.0 if name == "eodd" else 1.0)
  return values, skipped


def equalized_odds(
  y_true: ArrayLike,
  y_pred: ArrayLike,
  groups: ArrayLike,
  *,
  num_classes: int,
  num_groups: int = 2,
  convention: Convention = "sum",
  undefined: Undefined = "skip",
  privileged: int | None = None,
) -> dict[str, Any]:
  """Multi-class equal opportunity (Eopp0, Eopp1) and equalized odds (Eodd) gaps.

  Formulas from design.md section 5, with Δ = rate(group a) − rate(group b), one-vs-rest per
  class y:

  - ``convention="sum"``: Eopp0 = Σ_y |ΔTNR_y|, Eopp1 = Σ_y |ΔTPR_y|,
    Eodd = Σ_y |ΔTPR_y + ΔFPR_y|  (FairPrune re-implementations).
  - ``convention="mean"``: Eopp0 = mean_y |ΔTNR_y|, Eopp1 = mean_y |ΔTPR_y|,
    Eodd = mean_y |ΔTPR_y + ΔFPR_y| / 2  (Kong et al.).

  Undefined rates (see :func:`group_rates`): with ``undefined="skip"`` a class is left out of a
  gap for a pair of groups when a rate that gap needs is undefined in either group (Eopp0 needs
  TNR, Eopp1 needs TPR, Eodd needs both), and the means divide by the number of classes kept;
  if no class is kept the gap is NaN. ``undefined="zero"`` counts undefined rates as 0 and
  keeps all C classes (the public code's behaviour, for exact comparison).

  More than two groups: each gap is computed for every pair of groups (a, b), a < b, and the
  maximum is reported together with the pair attaining it (the first pair in lexicographic
  order on ties; pairs whose gap is NaN are ignored unless all are NaN). With ``privileged=p``
  only the pairs (p, g), g != p, are compared. The sign of Δ never matters (absolute values,
  and Eodd is invariant to swapping the groups), so ``privileged`` does not change two-group
  results.

  Args:
    y_true, y_pred: int[N] class ids in [0, C).
    groups: int[N] group ids in [0, G), -1 = unknown (excluded).
    num_classes: C.
    num_groups: G (>= 2).
    convention: ``"sum"`` or ``"mean"``.
    undefined: ``"skip"`` or ``"zero"``.
    privileged: optional group id compared against every other group.

  Returns:
    dict with ``eopp0``, ``eopp1``, ``eodd`` (floats, the max over the compared pairs);
    ``convention``; ``undefined``; ``pair``: {metric: (a, b)} attaining each maximum;
    ``skipped_classes``: {metric: number of classes skipped for that pair};
    ``pairwise``: {(a, b): {metric: value}} for every compared pair.

  Raises:
    ValueError: bad inputs, fewer than two groups, or a group with no (known-group) samples.
  """
  if convention not in ("sum", "mean"):
    raise ValueError(f"convention must be 'sum' or 'mean', got {convention!r}.")
  _check_undefined(undefined)
  c = _check_count(num_classes, "num_classes")
  ng = _check_count(num_groups, "num_groups")
  if ng < 2:
    raise ValueError(f"Fairness gaps need at least two groups, got num_groups={ng}.")
  yt, yp, g = _inputs(y_true, y_pred, groups, c, ng)
  rates = _rates_from_confusions(_group_confusions(yt, yp, g, c, ng), undefined)
  _require_nonempty(rates["counts"], "equalized_odds")

  if privileged is None:
    pairs = list(itertools.combinations(range(ng), 2))
  else:
    if (
      isinstance(privileged, bool)
      or not isinstance(privileged, (int, np.integer))
      or not (0 <= privileged < ng)
    ):
      raise ValueError(f"privileged must be a group id in [0, {ng}), got {privileged!r}.")
    p = int(privileged)
    pairs = [(p, other) for other in range(ng) if other != p]

  pairwise, skipped_per_pair = {}, {}
  for a, b in pairs:  # G(G-1)/2 pairs of C-vectors: tiny, a loop is clearest here
    pairwise[(a, b)], skipped_per_pair[(a, b)] = _pair_gaps(rates, a, b, convention, undefined)

  out: dict[str, Any] = {"convention": convention, "undefined": undefined}
  best_pair, skipped = {}, {}
  for name in _METRICS:
    best = None
    for pair in pairs:
      v = pairwise[pair][name]
      if not math.isnan(v) and (best is None or v > pairwise[best][name]):
        best = pair
    best = pairs[0] if best is None else best
    out[name] = pairwise[best][name]
    best_pair[name] = best
    skipped[name] = skipped_per_pair[best][name]
  out["pair"] = best_pair
  out["skipped_classes"] = skipped
  out["pairwise"] = pairwise
  return out


def binary_rate_differences(
  y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike, num_groups: int = 2
) -> dict[str, float]:
  """Binary-task TPR / FPR differences in fairlearn's ``between_groups`` sense.

  For labels in {0, 1} with class 1 positive: ``tpr_difference`` = max_g TPR_g − min_g TPR_g
  and ``fpr_difference`` likewise (class-1 one-vs-rest rates of :func:`group_rates`);
  ``equal_opportunity_difference`` = ``tpr_difference``; ``equalized_odds_difference`` =
  max(tpr_difference, fpr_difference). These are what fairlearn's functions of the same names
  compute with default arguments, which is the binary oracle of design.md section 5.

  Args:
    y_true, y_pred: int[N] labels in {0, 1}.
    groups: int[N] group ids in [0, G), -1 = unknown (excluded).
    num_groups: G.

  Returns:
    dict of Python floats with the four keys above.

  Raises:
    ValueError: a group with no samples, or without positives / negatives (a rate undefined).
  """
  ng = _check_count(num_groups, "num_groups")
  yt, yp, g = _inputs(y_true, y_pred, groups, 2, ng)
  rates = _rates_from_confusions(_group_confusions(yt, yp, g, 2, ng), "skip")
  _require_nonempty(rates["counts"], "binary_rate_differences")
  for key, what in (("has_positives", "positives (TPR)"), ("has_negatives", "negatives (FPR)")):
    missing = np.flatnonzero(~rates[key][:, 1])
    if missing.size:
      raise ValueError(f"group {int(missing[0])} has no {what}: the rate is undefined.")
  tpr, fpr = rates["tpr"][:, 1], rates["fpr"][:, 1]
  d_tpr = float(tpr.max() - tpr.min())
  d_fpr = float(fpr.max() - fpr.min())
  return {
    "tpr_difference": d_tpr,
    "fpr_difference": d_fpr,
    "equal_opportunity_difference": d_tpr,
    "equalized_odds_difference": max(d_tpr, d_fpr),
  }


# --------------------------------------------------------------------------------------------
# Group accuracy and pruning-specific summaries
# --------------------------------------------------------------------------------------------


def group_accuracy(
  y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike, num_groups: int
) -> np.ndarray:
  """Accuracy within each group (design.md section 5).

  Args:
    y_true, y_pred: int[N] class ids.
    groups: int[N] group ids in [0, G), -1 = unknown (excluded).
    num_groups: G.

  Returns:
    float64[G]; a group with no samples gets NaN (never 0: "no data" is not "all wrong").
  """
  ng = _check_count(num_groups, "num_groups")
  yt, yp, g = _inputs(y_true, y_pred, groups, None, ng)
  known = g >= 0
  counts = np.bincount(g[known], minlength=ng)
  correct = np.bincount(g[known], weights=(yt == yp)[known].astype(np.float64), minlength=ng)
  return np.divide(correct, counts, out=np.full(ng, np.nan), where=counts > 0)


def accuracy_gap(y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike, num_groups: int) -> float:
  """max_g acc_g − min_g acc_g over the known groups (design.md section 5).

  Raises:
    ValueError: a group has no samples (the message names it).
  """
  acc = group_accuracy(y_true, y_pred, groups, num_groups)
  _require_nonempty(np.where(np.isnan(acc), 0, 1), "accuracy_gap")
  return float(acc.max() - acc.min())


def fate(
  acc_pruned: float, acc_dense: float, fc_pruned: float, fc_dense: float, lam: float = 1.0
) -> float:
  """FATE = (ACC_m − ACC_b)/ACC_b − λ (FC_m − FC_b)/FC_b (Kong et al.; design.md section 5).

  ``_m`` is the pruned model, ``_b`` the dense baseline. Kong et al. use ACC = macro-F1 and
  FC = Eodd (mean convention), λ = 1. Higher is better: accuracy kept, unfairness reduced.

  Raises:
    ValueError: ``fc_dense == 0`` or ``acc_dense == 0`` (relative change undefined), or a NaN.
  """
  vals = {
    "acc_pruned": acc_pruned,
    "acc_dense": acc_dense,
    "fc_pruned": fc_pruned,
    "fc_dense": fc_dense,
    "lam": lam,
  }
  for name, v in vals.items():
    if v is None or math.isnan(float(v)):
      raise ValueError(f"fate: {name} is {v!r}; all inputs must be finite numbers.")
  if fc_dense == 0:
    raise ValueError(
      "fate: the dense model's fairness criterion FC_b (fc_dense) is 0, so the relative "
      "change (FC_m - FC_b)/FC_b is undefined; FATE cannot be computed."
    )
  if acc_dense == 0:
    raise ValueError(
      "fate: the dense model's accuracy ACC_b (acc_dense) is 0; the relative "
      "change (ACC_m - ACC_b)/ACC_b is undefined."
    )
  return float((acc_pruned - acc_dense) / acc_dense - lam * (fc_pruned - fc_dense) / fc_dense)


def disparity_of_degradation(group_acc_pruned: ArrayLike, group_acc_dense: ArrayLike) -> float:
  """FairGRAPE's disparity of degradation (design.md section 5).

  std over groups of (acc_g(pruned) − acc_g(dense)), the population standard deviation
  (ddof=0), so two groups give |Δ_0 − Δ_1| / 2.

  Args:
    group_acc_pruned: float[G] per-group accuracy of the pruned model.
    group_acc_dense: float[G] per-group accuracy of the dense model.

  Raises:
    ValueError: shapes differ, fewer than two groups, or a NaN (an empty group).
  """
  p = np.asarray(group_acc_pruned, dtype=np.float64)
  d = np.asarray(group_acc_dense, dtype=np.float64)
  if p.ndim != 1 or p.shape != d.shape:
    raise ValueError(
      f"Per-group accuracies must be 1-D of equal length, got {p.shape} and {d.shape}."
    )
  if p.size < 2:
    raise ValueError(f"Disparity needs at least two groups, got {p.size}.")
  for name, arr in (("group_acc_pruned", p), ("group_acc_dense", d)):
    if np.isnan(arr).any():
      raise ValueError(
        f"{name} is NaN for group {int(np.flatnonzero(np.isnan(arr))[0])} "
        "(a group with no samples?)."
      )
  return float(np.std(p - d))


# --------------------------------------------------------------------------------------------
# One JSON-serialisable report
# --------------------------------------------------------------------------------------------


def _json_float(x: float) -> float | None:
  x = float(x)
  return None if math.isnan(x) else x


def evaluate(
  y_true: ArrayLike,
  y_pred: ArrayLike,
  groups: ArrayLike,
  *,
  num_classes: int,
  num_groups: int,
  group_names: Sequence[str] | None = None,
  convention: Convention = "sum",
  undefined: Undefined = "skip",
) -> dict[str, Any]:
  """All section-5 metrics of one set of predictions as a JSON-serialisable dict.

  Args:
    y_true, y_pred: int[N] class ids in [0, C).
    groups: int[N] group ids in [0, G), -1 = unknown (counted in overall metrics only).
    num_classes: C.
    num_groups: G (>= 2).
    group_names: G unique names, default ``"group0" .. "group{G-1}"``.
    convention, undefined: see :func:`equalized_odds`.

  Returns:
    dict of plain Python values (NaN -> None): ``accuracy``, ``macro_precision``,
    ``macro_recall``, ``macro_f1`` (all N samples); ``eopp0``, ``eopp1``, ``eodd``,
    ``fairness_convention``, ``fairness_undefined``, ``fairness_pair`` ({metric: [a, b]}),
    ``skipped_classes`` ({metric: int}); ``group_accuracy``, ``group_macro_f1``,
    ``group_counts`` ({name: value}); ``accuracy_gap``; ``worst_group_accuracy`` (min over
    groups of ``group_accuracy``, any number of groups); ``num_samples``;
    ``num_unknown_group``. Per-group macro-F1 uses the classes present in that group.

  Raises:
    ValueError: bad inputs or names, or a group with no samples (named in the message).
  """
  c = _check_count(num_classes, "num_classes")
  ng = _check_count(num_groups, "num_groups")
  if group_names is None:
    names = [f"group{i}" for i in range(ng)]
  else:
    names = [str(n) for n in group_names]
    if len(names) != ng or len(set(names)) != ng:
      raise ValueError(f"group_names must be {ng} unique names, got {list(group_names)!r}.")
  yt, yp, g = _inputs(y_true, y_pred, groups, c, ng)
  counts = np.bincount(g[g >= 0], minlength=ng)
  _require_nonempty(counts, "evaluate", names)

  p, r, f1 = _macro_prf_from_cm(confusion_matrix(yt, yp, c))
  eo = equalized_odds(
    yt, yp, g, num_classes=c, num_groups=ng, convention=convention, undefined=undefined
  )
  g_acc = group_accuracy(yt, yp, g, ng)
  cms = _group_confusions(yt, yp, g, c, ng)
  g_f1 = [_macro_prf_from_cm(cms[i])[2] for i in range(ng)]
  return {
    "accuracy": _json_float(np.mean(yt == yp)),
    "macro_precision": _json_float(p),
    "macro_recall": _json_float(r),
    "macro_f1": _json_float(f1),
    "eopp0": _json_float(eo["eopp0"]),
    "eopp1": _json_float(eo["eopp1"]),
    "eodd": _json_float(eo["eodd"]),
    "fairness_convention": convention,
    "fairness_undefined": undefined,
    "fairness_pair": {k: [int(a), int(b)] for k, (a, b) in eo["pair"].items()},
    "skipped_classes": {k: int(v) for k, v in eo["skipped_classes"].items()},
    "group_accuracy": {n: _json_float(a) for n, a in zip(names, g_acc)},
    "group_macro_f1": {n: _json_float(v) for n, v in zip(names, g_f1)},
    "accuracy_gap": _json_float(g_acc.max() - g_acc.min()),
    "worst_group_accuracy": _json_float(g_acc.min()),
    "num_samples": int(yt.size),
    "num_unknown_group": int(np.sum(g == UNKNOWN_GROUP)),
    "group_counts": {n: int(k) for n, k in zip(names, counts)},
  }


# --------------------------------------------------------------------------------------------
# Multi-label tasks: every attribute a binary task, averaged over attributes (design.md 5.7)
# --------------------------------------------------------------------------------------------


def _multilabel_labels(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  """int64[N, A] twice, each entry checked to be 0 or 1."""
  arrays = []
  for name, x in (("y_true", y_true), ("y_pred", y_pred)):
    arr = np.asarray(x)
    if arr.ndim != 2:
      raise ValueError(f"{name} must be 2-D [N, A] (samples x attributes), got shape {arr.shape}.")
    arrays.append(arr)
  if arrays[0].shape != arrays[1].shape:
    raise ValueError(f"Shape mismatch: y_true {arrays[0].shape}, y_pred {arrays[1].shape}.")
  n, num_attrs = arrays[0].shape
  if n == 0 or num_attrs == 0:
    raise ValueError(
      f"Metrics need at least one sample and one attribute, got shape {(n, num_attrs)}."
    )
  out = []
  for name, arr in zip(("y_true", "y_pred"), arrays):
    flat = _as_int_array(arr.reshape(-1), name)
    _check_range(flat, name, 0, 2, "binary labels")
    out.append(flat.reshape(n, num_attrs))
  return out[0], out[1]


def _multilabel_inputs(y_true, y_pred, groups, num_groups: int):
  yt, yp = _multilabel_labels(y_true, y_pred)
  g = _as_int_array(groups, "groups")
  if g.shape != yt.shape[:1]:
    raise ValueError(f"Length mismatch: y_true has {yt.shape[0]} samples, groups has {g.size}.")
  _check_range(g, "groups", UNKNOWN_GROUP, num_groups, "group ids (-1 = unknown)")
  return yt, yp, g


def attribute_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
  """Accuracy of every attribute of a multi-label task, over all N samples (design.md 5.7).

  Args:
    y_true, y_pred: ``{0, 1}[N, A]`` (int, bool or integral floats).

  Returns:
    float64[A]. Its mean is the macro-averaged multi-label accuracy, which equals the fraction
    of correct (sample, attribute) entries, since every attribute has the same N samples.
  """
  yt, yp = _multilabel_labels(y_true, y_pred)
  return np.mean(yt == yp, axis=0, dtype=np.float64)


def multilabel_group_accuracy(
  y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike, num_groups: int
) -> np.ndarray:
  """Accuracy of every attribute within every group: :func:`group_accuracy` per attribute.

  Args:
    y_true, y_pred: ``{0, 1}[N, A]``.
    groups: int[N] group ids in [0, G), -1 = unknown (excluded).
    num_groups: G.

  Returns:
    float64[A, G]; NaN for a group with no samples. ``mean(axis=0)`` is the per-group accuracy
    averaged over attributes (design.md section 5.7).
  """
  ng = _check_count(num_groups, "num_groups")
  yt, yp, g = _multilabel_inputs(y_true, y_pred, groups, ng)
  return np.stack([group_accuracy(yt[:, a], yp[:, a], g, ng) for a in range(yt.shape[1])])


def _nanmean(values: Sequence[float]) -> float:
  arr = np.asarray(values, np.float64)
  keep = ~np.isnan(arr)
  return float(arr[keep].mean()) if keep.any() else math.nan


def _binary_differences(rates: dict[str, np.ndarray]) -> tuple[float, float]:
  """fairlearn's between-groups TPR / FPR differences of class 1, NaN where a rate of some
  group is undefined (:func:`binary_rate_differences` raises there instead)."""
  tpr, fpr = rates["tpr"][:, 1], rates["fpr"][:, 1]
  d_tpr = float(tpr.max() - tpr.min()) if rates["has_positives"][:, 1].all() else math.nan
  d_fpr = float(fpr.max() - fpr.min()) if rates["has_negatives"][:, 1].all() else math.nan
  return d_tpr, d_fpr


def multilabel_evaluate(
  y_true: ArrayLike,
  y_pred: ArrayLike,
  groups: ArrayLike,
  *,
  num_groups: int,
  group_names: Sequence[str] | None = None,
  attribute_names: Sequence[str] | None = None,
  convention: Convention = "sum",
  undefined: Undefined = "skip",
) -> dict[str, Any]:
  """Multi-label metrics as a JSON-serialisable dict: each attribute a binary task, averaged.

  Conventions (design.md section 5.7): attribute ``a`` is the two-class task
  ``(y_true[:, a], y_pred[:, a])``, scored by the single-label functions of this module with
  ``num_classes=2``; every summary is the unweighted mean over attributes of the per-attribute
  values. So ``eopp0`` / ``eopp1`` / ``eodd`` are, per attribute, :func:`equalized_odds` of
  the two-class task (one-vs-rest over BOTH classes, in ``convention``; with more than two
  groups the max over pairs of groups, each attribute taking its own worst pair), then averaged
  over the attributes where the gap is defined (NaN ones are left out and counted in
  ``undefined_attributes``). ``equal_opportunity_difference`` / ``equalized_odds_difference``
  are fairlearn's binary ``between_groups`` differences of class 1 (as in
  :func:`binary_rate_differences`), per attribute, averaged the same way.

  Args:
    y_true, y_pred: ``{0, 1}[N, A]``; predictions are labels, thresholded by the caller (for
      logits trained with the sigmoid loss, ``logits > 0``).
    groups: int[N] group ids in [0, G), -1 = unknown (counted in overall metrics only).
    num_groups: G (>= 2).
    group_names: G unique names, default ``"group0" .. "group{G-1}"``.
    attribute_names: A unique names, default ``"attr0" .. "attr{A-1}"``.
    convention, undefined: see :func:`equalized_odds`.

  Returns:
    dict of plain Python values (NaN -> None): ``accuracy`` (mean over attributes of
    ``attribute_accuracy``), ``macro_precision``, ``macro_recall``, ``macro_f1`` (means over
    attributes of the two-class macro values); ``group_macro_f1`` ({group: mean over
    attributes of the group's two-class macro-F1}); ``skipped_classes`` ({metric: classes
    skipped by the gap, summed over attributes});
    ``eopp0``, ``eopp1``, ``eodd``, ``equal_opportunity_difference``,
    ``equalized_odds_difference`` (means over attributes), ``undefined_attributes``
    ({metric: number of attributes left out of that mean}); ``group_accuracy`` ({group: mean
    over attributes of the group's accuracy}), ``worst_group_accuracy`` and ``accuracy_gap``
    (min, and max − min, of that dict's values); ``attribute_accuracy`` ({attribute: value});
    ``attributes`` ({attribute: {"accuracy", "macro_f1", "eopp0", "eopp1", "eodd",
    "fairness_pair", "tpr_difference", "fpr_difference", "group_accuracy": {group: value}}});
    ``fairness_convention``, ``fairness_undefined``, ``num_samples``, ``num_attributes``,
    ``num_unknown_group``, ``group_counts``.

  Raises:
    ValueError: bad inputs or names, fewer than two groups, or a group with no samples.
  """
  if convention not in ("sum", "mean"):
    raise ValueError(f"convention must be 'sum' or 'mean', got {convention!r}.")
  _check_undefined(undefined)
  ng = _check_count(num_groups, "num_groups")
  if ng < 2:
    raise ValueError(f"Fairness gaps need at least two groups, got num_groups={ng}.")
  yt, yp, g = _multilabel_inputs(y_true, y_pred, groups, ng)
  num_attrs = yt.shape[1]
  names = {}
  for what, given, count, prefix in (
    ("group_names", group_names, ng, "group"),
    ("attribute_names", attribute_names, num_attrs, "attr"),
  ):
    if given is None:
      names[what] = [f"{prefix}{i}" for i in range(count)]
    else:
      names[what] = [str(n) for n in given]
      if len(names[what]) != count or len(set(names[what])) != count:
        raise ValueError(f"{what} must be {count} unique names, got {list(given)!r}.")
  gnames, anames = names["group_names"], names["attribute_names"]
  counts = np.bincount(g[g >= 0], minlength=ng)
  _require_nonempty(counts, "multilabel_evaluate", gnames)

  per_attr, g_acc, g_f1 = {}, np.empty((num_attrs, ng)), np.empty((num_attrs, ng))
  prec, rec, skipped = np.empty(num_attrs), np.empty(num_attrs), dict.fromkeys(_METRICS, 0)
  for a, name in enumerate(anames):
    t, p = yt[:, a], yp[:, a]
    eo = equalized_odds(
      t, p, g, num_classes=2, num_groups=ng, convention=convention, undefined=undefined
    )
    cms = _group_confusions(t, p, g, 2, ng)
    d_tpr, d_fpr = _binary_differences(_rates_from_confusions(cms, "skip"))
    g_acc[a] = group_accuracy(t, p, g, ng)
    g_f1[a] = [_macro_prf_from_cm(cms[i])[2] for i in range(ng)]
    prec[a], rec[a], f1 = _macro_prf_from_cm(confusion_matrix(t, p, 2))
    for m in _METRICS:
      skipped[m] += int(eo["skipped_classes"][m])
    per_attr[name] = {
      "accuracy": float(np.mean(t == p)),
      "macro_f1": f1,
      **{m: eo[m] for m in _METRICS},
      "fairness_pair": {k: [int(i), int(j)] for k, (i, j) in eo["pair"].items()},
      "tpr_difference": d_tpr,
      "fpr_difference": d_fpr,
      "equalized_odds_difference": (
        math.nan if math.isnan(d_tpr) or math.isnan(d_fpr) else max(d_tpr, d_fpr)
      ),
      "group_accuracy": g_acc[a],
    }

  def mean_of(key):
    return _nanmean([per_attr[n][key] for n in anames])

  group_mean = g_acc.mean(axis=0)  # every group is non-empty: no NaN
  averaged = {
    "eopp0": "eopp0",
    "eopp1": "eopp1",
    "eodd": "eodd",
    "equal_opportunity_difference": "tpr_difference",
    "equalized_odds_difference": "equalized_odds_difference",
  }
  out: dict[str, Any] = {
    "accuracy": _json_float(mean_of("accuracy")),
    "macro_precision": _json_float(prec.mean()),
    "macro_recall": _json_float(rec.mean()),
    "macro_f1": _json_float(mean_of("macro_f1")),
    **{k: _json_float(mean_of(v)) for k, v in averaged.items()},
    "undefined_attributes": {
      k: int(sum(math.isnan(per_attr[n][v]) for n in anames)) for k, v in averaged.items()
    },
    "fairness_convention": convention,
    "fairness_undefined": undefined,
    "skipped_classes": skipped,
    "group_accuracy": {n: _json_float(v) for n, v in zip(gnames, group_mean)},
    "group_macro_f1": {n: _json_float(v) for n, v in zip(gnames, g_f1.mean(axis=0))},
    "worst_group_accuracy": _json_float(group_mean.min()),
    "accuracy_gap": _json_float(group_mean.max() - group_mean.min()),
    "attribute_accuracy": {n: _json_float(per_attr[n]["accuracy"]) for n in anames},
    "attributes": {
      n: {
        k: (
          {gn: _json_float(v) for gn, v in zip(gnames, val)}
          if k == "group_accuracy"
          else val
          if k == "fairness_pair"
          else _json_float(val)
        )
        for k, val in per_attr[n].items()
      }
      for n in anames
    },
    "num_samples": int(yt.shape[0]),
    "num_attributes": int(num_attrs),
    "num_unknown_group": int(np.sum(g == UNKNOWN_GROUP)),
    "group_counts": {n: int(k) for n, k in zip(gnames, counts)},
  }
  return out
