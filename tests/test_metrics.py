"""Tests for fairjax.metrics (design.md section 5).

Hand-worked cases spell out the confusion tables; oracles are scikit-learn (macro P/R/F1),
fairlearn (binary equalized-odds / equal-opportunity differences) and brute-force loops.
"""

import itertools
import json
import math

import numpy as np
import pytest
from fairlearn.metrics import equal_opportunity_difference, equalized_odds_difference
from sklearn.metrics import precision_recall_fscore_support

from fairjax import metrics as M

# ---------------------------------------------------------------------------------------------
# Hand-worked case A: 3 classes, 2 groups, 10 samples, every class present in every group.
#
# Group 0: y_true 0 0 1 2 2 / y_pred 0 1 1 2 0      Group 1: y_true 0 1 1 1 2 / y_pred 0 1 2 1 2
#   confusion (rows true, cols pred)                  confusion
#     t0: [1 1 0]                                       t0: [1 0 0]
#     t1: [0 1 0]                                       t1: [0 2 1]
#     t2: [1 0 1]                                       t2: [0 0 1]
#
# one-vs-rest, group 0:                               group 1:
#   c0: P=2 TP=1 FP=1 Neg=3 TN=2 -> TPR 1/2 FPR 1/3 TNR 2/3   c0: P=1 TP=1 FP=0 Neg=4 TN=4 -> 1, 0, 1
#   c1: P=1 TP=1 FP=1 Neg=4 TN=3 -> TPR 1   FPR 1/4 TNR 3/4   c1: P=3 TP=2 FP=0 Neg=2 TN=2 -> 2/3, 0, 1
#   c2: P=2 TP=1 FP=0 Neg=3 TN=3 -> TPR 1/2 FPR 0   TNR 1     c2: P=1 TP=1 FP=1 Neg=4 TN=3 -> 1, 1/4, 3/4
#
# Δ = group0 − group1:
#   c0: ΔTPR −1/2, ΔFPR  1/3, ΔTNR −1/3, ΔTPR+ΔFPR −1/6
#   c1: ΔTPR  1/3, ΔFPR  1/4, ΔTNR −1/4, ΔTPR+ΔFPR  7/12
#   c2: ΔTPR −1/2, ΔFPR −1/4, ΔTNR  1/4, ΔTPR+ΔFPR −3/4
# sum:  Eopp0 = 1/3+1/4+1/4 = 5/6, Eopp1 = 1/2+1/3+1/2 = 4/3, Eodd = 1/6+7/12+3/4 = 3/2
# mean: Eopp0 = 5/18, Eopp1 = 4/9, Eodd = (3/2)/3/2 = 1/4
# accuracy: group 0 3/5, group 1 4/5, overall 7/10, gap 1/5.
# ---------------------------------------------------------------------------------------------
A_TRUE = np.array([0, 0, 1, 2, 2, 0, 1, 1, 1, 2])
A_PRED = np.array([0, 1, 1, 2, 0, 0, 1, 2, 1, 2])
A_GROUP = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])

# ---------------------------------------------------------------------------------------------
# Hand-worked case B: class 2 has NO positives in group 1.
#
# Group 0: y_true 0 1 2 2 / y_pred 0 1 2 1          Group 1: y_true 0 0 1 1 / y_pred 0 1 1 2
#     t0: [1 0 0]                                       t0: [1 1 0]
#     t1: [0 1 0]                                       t1: [0 1 1]
#     t2: [0 1 1]                                       t2: [0 0 0]
#   c0: P=1 TP=1 FP=0 Neg=3 TN=3 -> TPR 1   FPR 0   TNR 1     c0: P=2 TP=1 FP=0 Neg=2 TN=2 -> 1/2, 0, 1
#   c1: P=1 TP=1 FP=1 Neg=3 TN=2 -> TPR 1   FPR 1/3 TNR 2/3   c1: P=2 TP=1 FP=1 Neg=2 TN=1 -> 1/2, 1/2, 1/2
#   c2: P=2 TP=1 FP=0 Neg=2 TN=2 -> TPR 1/2 FPR 0   TNR 1     c2: P=0 (TPR undefined) FP=1 Neg=4 TN=3
#                                                                 -> TPR ?, FPR 1/4, TNR 3/4
# Δ: c0: ΔTPR 1/2, ΔFPR 0,    ΔTNR 0,    sum 1/2
#    c1: ΔTPR 1/2, ΔFPR −1/6, ΔTNR 1/6,  sum 1/3
#    c2: ΔTPR undefined ("zero": 1/2 − 0 = 1/2), ΔFPR −1/4, ΔTNR 1/4, sum ("zero") 1/4
# skip, sum : Eopp0 = 0+1/6+1/4 = 5/12 (TNR defined: nothing skipped), Eopp1 = 1 (c2 skipped),
#             Eodd = 1/2+1/3 = 5/6 (c2 skipped)
# zero, sum : Eopp0 = 5/12, Eopp1 = 3/2, Eodd = 13/12
# skip, mean: Eopp0 = 5/36, Eopp1 = 1/2, Eodd = (5/6)/2/2 = 5/24
# zero, mean: Eopp0 = 5/36, Eopp1 = (3/2)/3 = 1/2, Eodd = (13/12)/3/2 = 13/72
# ---------------------------------------------------------------------------------------------
B_TRUE = np.array([0, 1, 2, 2, 0, 0, 1, 1])
B_PRED = np.array([0, 1, 2, 1, 0, 1, 1, 2])
B_GROUP = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def _eo(y, p, g, **kw):
  kw.setdefault("num_classes", 3)
  return M.equalized_odds(y, p, g, **kw)


def test_confusion_matrix_layout():
  cm = M.confusion_matrix(A_TRUE[:5], A_PRED[:5], 3)
  np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 1]])
  assert cm.dtype.kind == "i"


def test_group_rates_hand_worked():
  r = M.group_rates(A_TRUE, A_PRED, A_GROUP, 3, 2)
  np.testing.assert_allclose(r["tpr"], [[1 / 2, 1, 1 / 2], [1, 2 / 3, 1]])
  np.testing.assert_allclose(r["fpr"], [[1 / 3, 1 / 4, 0], [0, 0, 1 / 4]])
  np.testing.assert_allclose(r["tnr"], [[2 / 3, 3 / 4, 1], [1, 1, 3 / 4]])
  assert r["defined"].all()
  np.testing.assert_array_equal(r["counts"], [5, 5])


@pytest.mark.parametrize(
  "convention, expected",
  [("sum", (5 / 6, 4 / 3, 3 / 2)), ("mean", (5 / 18, 4 / 9, 1 / 4))],
)
def test_equalized_odds_hand_worked(convention, expected):
  for undefined in ("skip", "zero"):  # nothing undefined here: both policies agree
    out = _eo(A_TRUE, A_PRED, A_GROUP, convention=convention, undefined=undefined)
    assert out["convention"] == convention
    np.testing.assert_allclose([out["eopp0"], out["eopp1"], out["eodd"]], expected)
    assert out["skipped_classes"] == {"eopp0": 0, "eopp1": 0, "eodd": 0}
    assert out["pair"]["eodd"] == (0, 1)


def test_equalized_odds_symmetric_in_groups_and_privileged():
  base = _eo(A_TRUE, A_PRED, A_GROUP)
  swapped = _eo(A_TRUE, A_PRED, 1 - A_GROUP)
  priv = _eo(A_TRUE, A_PRED, A_GROUP, privileged=1)
  for k in ("eopp0", "eopp1", "eodd"):
    assert swapped[k] == pytest.approx(base[k])
    assert priv[k] == pytest.approx(base[k])
  assert priv["pair"]["eodd"] == (1, 0)


def test_class_absent_from_group_rates_flags():
  skip = M.group_rates(B_TRUE, B_PRED, B_GROUP, 3, 2, undefined="skip")
  zero = M.group_rates(B_TRUE, B_PRED, B_GROUP, 3, 2, undefined="zero")
  assert not skip["has_positives"][1, 2] and skip["has_negatives"][1, 2]
  assert not skip["defined"][1, 2] and skip["defined"].sum() == 5
  np.testing.assert_array_equal(skip["defined"], zero["defined"])
  assert math.isnan(skip["tpr"][1, 2]) and zero["tpr"][1, 2] == 0.0
  assert skip["fpr"][1, 2] == pytest.approx(1 / 4) == zero["fpr"][1, 2]


@pytest.mark.parametrize(
  "convention, undefined, expected, skipped",
  [
    ("sum", "skip", (5 / 12, 1.0, 5 / 6), (0, 1, 1)),
    ("sum", "zero", (5 / 12, 3 / 2, 13 / 12), (0, 0, 0)),
    ("mean", "skip", (5 / 36, 1 / 2, 5 / 24), (0, 1, 1)),
    ("mean", "zero", (5 / 36, 1 / 2, 13 / 72), (0, 0, 0)),
  ],
)
def test_class_absent_skip_vs_zero(convention, undefined, expected, skipped):
  out = _eo(B_TRUE, B_PRED, B_GROUP, convention=convention, undefined=undefined)
  np.testing.assert_allclose([out["eopp0"], out["eopp1"], out["eodd"]], expected)
  assert tuple(out["skipped_classes"][k] for k in ("eopp0", "eopp1", "eodd")) == skipped


def test_all_classes_skipped_gives_nan_not_zero():
  # Each group holds a single class: every TPR pair has one side undefined.
  out = M.equalized_odds([0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1], num_classes=2)
  assert math.isnan(out["eopp1"]) and math.isnan(out["eodd"])
  assert out["skipped_classes"]["eopp1"] == 2


# ---------------------------------------------------------------------------------------------
# Binary oracle: fairlearn. Its equal_opportunity_difference is max_g TPR − min_g TPR, and its
# equalized_odds_difference (agg="worst_case", method="between_groups") is
# max(ΔTPR, ΔFPR) with Δ = max − min over groups, positive label = 1.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("num_groups", [2, 3])
def test_binary_matches_fairlearn(seed, num_groups):
  rng = np.random.default_rng(seed)
  n = 200
  y = rng.integers(0, 2, n)
  p = np.where(rng.random(n) < 0.7, y, 1 - y)
  g = rng.integers(0, num_groups, n)
  ours = M.binary_rate_differences(y, p, g, num_groups)
  fl_eopp = equal_opportunity_difference(y, p, sensitive_features=g)
  fl_eodd = equalized_odds_difference(y, p, sensitive_features=g)
  assert ours["equal_opportunity_difference"] == pytest.approx(fl_eopp, abs=1e-12)
  assert ours["equalized_odds_difference"] == pytest.approx(fl_eodd, abs=1e-12)
  # The per-class rates of the multi-class path give the same differences for class 1.
  r = M.group_rates(y, p, g, 2, num_groups)
  assert np.ptp(r["tpr"][:, 1]) == pytest.approx(fl_eopp, abs=1e-12)
  assert max(np.ptp(r["tpr"][:, 1]), np.ptp(r["fpr"][:, 1])) == pytest.approx(fl_eodd, abs=1e-12)
  if num_groups == 2:
    # Two groups: the sum-convention Eopp1 over both one-vs-rest classes is twice the
    # fairlearn TPR gap, because TPR of class 0 is the TNR of class 1 (= 1 − FPR_1) ...
    eo = M.equalized_odds(y, p, g, num_classes=2)
    assert eo["eopp1"] == pytest.approx(ours["tpr_difference"] + ours["fpr_difference"])
    # ... and Eopp0 = Σ_y |ΔTNR_y| = |ΔFPR_1| + |ΔTPR_1| likewise.
    assert eo["eopp0"] == pytest.approx(ours["tpr_difference"] + ours["fpr_difference"])


def test_binary_rate_differences_rejects_undefined():
  with pytest.raises(ValueError, match="group 1 has no positives"):
    M.binary_rate_differences([0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1])


# ---------------------------------------------------------------------------------------------
# Brute-force oracle for rates (loops over samples) on random data.
# ---------------------------------------------------------------------------------------------
def _brute_rates(y, p, g, c, ng):
  tpr = np.full((ng, c), np.nan)
  fpr = np.full((ng, c), np.nan)
  tnr = np.full((ng, c), np.nan)
  for gi in range(ng):
    for ci in range(c):
      tp = fp = tn = fn = 0
      for yi, pi, gg in zip(y, p, g):
        if gg != gi:
          continue
        if yi == ci:
          tp += pi == ci
          fn += pi != ci
        else:
          fp += pi == ci
          tn += pi != ci
      if tp + fn:
        tpr[gi, ci] = tp / (tp + fn)
      if fp + tn:
        fpr[gi, ci] = fp / (fp + tn)
        tnr[gi, ci] = tn / (fp + tn)
  return tpr, fpr, tnr


@pytest.mark.parametrize("seed", range(3))
def test_group_rates_vs_brute_force(seed):
  rng = np.random.default_rng(seed)
  c, ng, n = 5, 3, 60
  y = rng.integers(0, c, n)
  p = rng.integers(0, c, n)
  g = rng.integers(-1, ng, n)  # includes unknown-group samples
  r = M.group_rates(y, p, g, c, ng)
  tpr, fpr, tnr = _brute_rates(y, p, g, c, ng)
  np.testing.assert_allclose(r["tpr"], tpr, equal_nan=True)
  np.testing.assert_allclose(r["fpr"], fpr, equal_nan=True)
  np.testing.assert_allclose(r["tnr"], tnr, equal_nan=True)
  np.testing.assert_array_equal(r["defined"], ~np.isnan(tpr) & ~np.isnan(fpr))


# ---------------------------------------------------------------------------------------------
# More than two groups: max over pairs, checked by restricting the data to each pair.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("convention", ["sum", "mean"])
def test_multi_group_max_over_pairs(seed, convention):
  rng = np.random.default_rng(seed)
  c, ng, n = 4, 4, 120
  y = rng.integers(0, c, n)
  p = np.where(rng.random(n) < 0.5, y, rng.integers(0, c, n))
  g = rng.integers(0, ng, n)
  out = M.equalized_odds(y, p, g, num_classes=c, num_groups=ng, convention=convention)
  brute = {}
  for a, b in itertools.combinations(range(ng), 2):
    sel = (g == a) | (g == b)
    sub = M.equalized_odds(
      y[sel], p[sel], (g[sel] == b).astype(int), num_classes=c, convention=convention
    )
    brute[(a, b)] = sub
  for k in ("eopp0", "eopp1", "eodd"):
    best = max(brute, key=lambda pr: brute[pr][k])
    assert out[k] == pytest.approx(brute[best][k])
    assert out["pair"][k] == best
    assert out["pairwise"][best][k] == pytest.approx(brute[best][k])
  # privileged=0 compares only (0, g) pairs.
  priv = M.equalized_odds(
    y, p, g, num_classes=c, num_groups=ng, convention=convention, privileged=0
  )
  assert priv["eodd"] == pytest.approx(max(brute[(0, b)]["eodd"] for b in range(1, ng)))
  assert priv["eodd"] <= out["eodd"] + 1e-12


# ---------------------------------------------------------------------------------------------
# Overall metrics vs scikit-learn.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_macro_prf_vs_sklearn(seed):
  rng = np.random.default_rng(seed)
  c, n = 7, 50
  # Restrict to a subset of classes so some classes have no support / no predictions,
  # and some are absent from both arrays (left out of the macro mean).
  y = rng.choice([0, 1, 2, 4], n)
  p = rng.choice([0, 2, 3, 4], n)
  ours = M.macro_precision_recall_f1(y, p, c)
  ref = precision_recall_fscore_support(y, p, average="macro", zero_division=0)[:3]
  np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_accuracy_and_group_accuracy():
  assert M.accuracy(A_TRUE, A_PRED) == pytest.approx(0.7)
  np.testing.assert_allclose(M.group_accuracy(A_TRUE, A_PRED, A_GROUP, 2), [0.6, 0.8])
  assert M.accuracy_gap(A_TRUE, A_PRED, A_GROUP, 2) == pytest.approx(0.2)


def test_group_accuracy_empty_group_is_nan_and_gap_raises():
  acc = M.group_accuracy(A_TRUE, A_PRED, A_GROUP, 3)
  assert math.isnan(acc[2]) and acc[0] == pytest.approx(0.6)
  with pytest.raises(ValueError, match="group 2 has no samples"):
    M.accuracy_gap(A_TRUE, A_PRED, A_GROUP, 3)
  with pytest.raises(ValueError, match="group 2 has no samples"):
    _eo(A_TRUE, A_PRED, A_GROUP, num_groups=3)


# ---------------------------------------------------------------------------------------------
# Unknown group (-1): counted overall, excluded from group metrics.
# ---------------------------------------------------------------------------------------------
def test_unknown_group_excluded_but_counted():
  # Append three unknown-group samples, all wrong: group metrics must not move.
  y = np.concatenate([A_TRUE, [0, 1, 2]])
  p = np.concatenate([A_PRED, [1, 2, 0]])
  g = np.concatenate([A_GROUP, [-1, -1, -1]])
  rep = M.evaluate(y, p, g, num_classes=3, num_groups=2, group_names=["female", "male"])
  base = M.evaluate(
    A_TRUE, A_PRED, A_GROUP, num_classes=3, num_groups=2, group_names=["female", "male"]
  )
  assert rep["num_samples"] == 13 and rep["num_unknown_group"] == 3
  assert rep["group_counts"] == {"female": 5, "male": 5}
  assert rep["accuracy"] == pytest.approx(7 / 13)  # overall includes unknown samples
  for k in ("eopp0", "eopp1", "eodd", "group_accuracy", "group_macro_f1", "accuracy_gap"):
    assert rep[k] == base[k], k
  assert rep["macro_f1"] != base["macro_f1"]


def test_evaluate_report_json_and_values():
  rep = M.evaluate(
    A_TRUE,
    A_PRED,
    A_GROUP,
    num_classes=3,
    num_groups=2,
    group_names=["female", "male"],
    convention="mean",
  )
  json.loads(json.dumps(rep, allow_nan=False))  # plain, NaN-free JSON
  assert rep["fairness_convention"] == "mean"
  assert rep["eodd"] == pytest.approx(1 / 4)
  assert rep["group_accuracy"] == pytest.approx({"female": 0.6, "male": 0.8})
  assert rep["accuracy_gap"] == pytest.approx(0.2)
  p, r, f1 = precision_recall_fscore_support(A_TRUE, A_PRED, average="macro", zero_division=0)[:3]
  assert (rep["macro_precision"], rep["macro_recall"], rep["macro_f1"]) == pytest.approx((p, r, f1))
  f1_male = precision_recall_fscore_support(
    A_TRUE[5:], A_PRED[5:], average="macro", zero_division=0
  )[2]
  assert rep["group_macro_f1"]["male"] == pytest.approx(f1_male)
  default = M.evaluate(A_TRUE, A_PRED, A_GROUP, num_classes=3, num_groups=2)
  assert set(default["group_accuracy"]) == {"group0", "group1"}


def test_evaluate_nan_becomes_none():
  rep = M.evaluate([0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1], num_classes=2, num_groups=2)
  assert rep["eodd"] is None and rep["skipped_classes"]["eodd"] == 2
  json.dumps(rep, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# Input validation.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
  "y, p, g, match",
  [
    ([0, 1, 2], [0, 1], [0, 1, 0], "Length mismatch.*y_pred"),
    ([0, 1, 2], [0, 1, 2], [0, 1], "Length mismatch.*groups"),
    ([0, 1, 3], [0, 1, 2], [0, 1, 0], r"y_true.*outside class ids \[0, 3\).*3 at index 2"),
    ([0, 1, 2], [0, -1, 2], [0, 1, 0], "y_pred.*outside class ids"),
    ([0, 1, 2], [0, 1, 2], [0, -2, 1], r"groups.*\(-1 = unknown\).*-2 at index 1"),
    ([0, 1, 2], [0, 1, 2], [0, 2, 1], "groups.*2 at index 1"),
    ([0.0, np.nan, 2.0], [0, 1, 2], [0, 1, 0], "y_true contains NaN"),
    ([0, 1, 2], [0, 1, 2], [0.0, 1.0, np.nan], "groups contains NaN"),
    ([0, 1.5, 2], [0, 1, 2], [0, 1, 0], "y_true must hold integer"),
    ([], [], [], "at least one sample"),
  ],
)
def test_input_validation(y, p, g, match):
  with pytest.raises(ValueError, match=match):
    M.evaluate(y, p, g, num_classes=3, num_groups=2)


def test_option_validation():
  with pytest.raises(ValueError, match="convention"):
    _eo(A_TRUE, A_PRED, A_GROUP, convention="median")
  with pytest.raises(ValueError, match="undefined"):
    _eo(A_TRUE, A_PRED, A_GROUP, undefined="ignore")
  with pytest.raises(ValueError, match="privileged"):
    _eo(A_TRUE, A_PRED, A_GROUP, privileged=2)
  with pytest.raises(ValueError, match="group_names"):
    M.evaluate(A_TRUE, A_PRED, A_GROUP, num_classes=3, num_groups=2, group_names=["a"])
  with pytest.raises(ValueError, match=r"group 1 \('male'\) has no samples"):
    M.evaluate(
      A_TRUE[:5],
      A_PRED[:5],
      A_GROUP[:5],
      num_classes=3,
      num_groups=2,
      group_names=["female", "male"],
    )


# ---------------------------------------------------------------------------------------------
# FATE and disparity of degradation.
# ---------------------------------------------------------------------------------------------
def test_fate_hand_worked():
  # F1 0.80 -> 0.76 is −5%; Eodd 0.20 -> 0.15 is −25%; FATE = −0.05 − (−0.25) = 0.20.
  assert M.fate(0.76, 0.80, 0.15, 0.20) == pytest.approx(0.20)
  # λ = 2: −0.05 + 0.5 = 0.45.
  assert M.fate(0.76, 0.80, 0.15, 0.20, lam=2.0) == pytest.approx(0.45)
  # Fairness worse: Eodd 0.20 -> 0.30 (+50%), F1 unchanged -> −0.5.
  assert M.fate(0.8, 0.8, 0.3, 0.2) == pytest.approx(-0.5)
  with pytest.raises(ValueError, match="FC_b"):
    M.fate(0.7, 0.8, 0.1, 0.0)
  with pytest.raises(ValueError, match="fc_pruned"):
    M.fate(0.7, 0.8, float("nan"), 0.1)


def test_disparity_of_degradation_hand_worked():
  # Deltas: −0.10 and −0.02 -> mean −0.06, population std = 0.04.
  assert M.disparity_of_degradation([0.80, 0.88], [0.90, 0.90]) == pytest.approx(0.04)
  # Three groups, deltas 0, −0.3, −0.3 -> mean −0.2, var = (0.04+0.01+0.01)/3 = 0.02.
  assert M.disparity_of_degradation([0.9, 0.5, 0.6], [0.9, 0.8, 0.9]) == pytest.approx(
    math.sqrt(0.02)
  )
  # Equal degradation in every group -> 0.
  assert M.disparity_of_degradation([0.5, 0.6], [0.7, 0.8]) == pytest.approx(0.0, abs=1e-12)
  with pytest.raises(ValueError, match="group 1"):
    M.disparity_of_degradation([0.5, np.nan], [0.7, 0.8])
  with pytest.raises(ValueError, match="equal length"):
    M.disparity_of_degradation([0.5, 0.6, 0.7], [0.7, 0.8])
