"""Multi-label metrics (design.md section 5.7) and evaluate's worst-group accuracy.

Hand-worked case M: 2 attributes, 2 groups, 6 samples (+1 of unknown group in one test).

  group:       0 0 0 | 1 1 1
  attr0 true:  1 1 0 | 1 0 0     pred: 1 0 0 | 1 1 0
  attr1 true:  0 0 0 | 1 1 0     pred: 0 1 0 | 1 1 0

attr0, class 1 positive:  g0 TPR 1/2 FPR 0 TNR 1 acc 2/3;  g1 TPR 1 FPR 1/2 TNR 1/2 acc 2/3
  two-class gaps (class 1: dTPR -1/2 dFPR -1/2 dTNR 1/2; class 0: dTPR 1/2 dFPR 1/2 dTNR 1/2)
  sum: Eopp0 1, Eopp1 1, Eodd 2;  mean: 1/2, 1/2, (2/2)/2 = 1/2
  fairlearn: TPR diff 1/2, FPR diff 1/2, EO diff 1/2, EOdds diff 1/2
attr1: g0 has no positive (TPR of class 1 / TNR of class 0 undefined), FPR 1/3 TNR 2/3 acc 2/3;
  g1 TPR 1 FPR 0 TNR 1 acc 1
  skip: Eopp0 = |dTNR_1| = 1/3 (class 0 skipped), Eopp1 = |dTPR_0| = 1/3 (class 1 skipped),
  Eodd undefined (every class skipped); sum = mean here.  fairlearn: TPR diff undefined, FPR 1/3
Averages over attributes: accuracy (4/6 + 5/6)/2 = 3/4; group accuracy g0 2/3, g1 5/6: worst
2/3, gap 1/6; Eopp0 (1 + 1/3)/2 = 2/3 (mean conv. (1/2 + 1/3)/2 = 5/12), Eopp1 the same, Eodd
= attr0's alone (2, mean conv. 1/2) with one undefined attribute; equal-opportunity difference
1/2 and equalized-odds difference 1/2 (attr1 undefined); macro-F1 (2/3 + 29/35)/2 = 157/210.
"""

import json

import numpy as np
import pytest

from fairjax import metrics as M

GROUPS = np.array([0, 0, 0, 1, 1, 1])
Y_TRUE = np.array([[1, 0], [1, 0], [0, 0], [1, 1], [0, 1], [0, 0]])
Y_PRED = np.array([[1, 0], [0, 1], [0, 0], [1, 1], [1, 1], [0, 0]])


def test_hand_worked_sum_convention():
  r = M.multilabel_evaluate(
    Y_TRUE,
    Y_PRED,
    GROUPS,
    num_groups=2,
    group_names=["f", "m"],
    attribute_names=["smiling", "young"],
  )
  approx = pytest.approx
  assert r["accuracy"] == approx(3 / 4)
  assert r["attribute_accuracy"] == {"smiling": approx(2 / 3), "young": approx(5 / 6)}
  assert r["group_accuracy"] == {"f": approx(2 / 3), "m": approx(5 / 6)}
  assert r["worst_group_accuracy"] == approx(2 / 3)
  assert r["accuracy_gap"] == approx(1 / 6)
  assert r["eopp0"] == approx(2 / 3) and r["eopp1"] == approx(2 / 3)
  assert r["eodd"] == approx(2.0)
  assert r["equal_opportunity_difference"] == approx(1 / 2)
  assert r["equalized_odds_difference"] == approx(1 / 2)
  assert r["undefined_attributes"] == {
    "eopp0": 0,
    "eopp1": 0,
    "eodd": 1,
    "equal_opportunity_difference": 1,
    "equalized_odds_difference": 1,
  }
  assert r["macro_f1"] == approx(157 / 210)
  young = r["attributes"]["young"]
  assert young["eodd"] is None and young["tpr_difference"] is None
  assert young["fpr_difference"] == approx(1 / 3)
  assert young["group_accuracy"] == {"f": approx(2 / 3), "m": approx(1.0)}
  smiling = r["attributes"]["smiling"]
  assert (smiling["eopp0"], smiling["eopp1"], smiling["eodd"]) == (approx(1), approx(1), approx(2))
  assert r["num_samples"] == 6 and r["num_attributes"] == 2 and r["num_unknown_group"] == 0
  assert r["group_counts"] == {"f": 3, "m": 3}
  assert r["fairness_convention"] == "sum"
  assert json.loads(json.dumps(r)) == r  # plain Python values only


def test_hand_worked_mean_convention_and_unknown_group():
  y_true = np.vstack([Y_TRUE, [[1, 1]]])
  y_pred = np.vstack([Y_PRED, [[0, 0]]])  # both wrong, group unknown
  groups = np.append(GROUPS, -1)
  r = M.multilabel_evaluate(y_true, y_pred, groups, num_groups=2, convention="mean")
  approx = pytest.approx
  assert r["eopp0"] == approx(5 / 12) and r["eopp1"] == approx(5 / 12)
  assert r["eodd"] == approx(1 / 2)
  # The unknown-group sample counts in the overall accuracy only.
  assert r["accuracy"] == approx((4 / 7 + 5 / 7) / 2)
  assert r["group_accuracy"] == {"group0": approx(2 / 3), "group1": approx(5 / 6)}
  assert r["num_unknown_group"] == 1 and r["num_samples"] == 7
  np.testing.assert_allclose(M.attribute_accuracy(y_true, y_pred), [4 / 7, 5 / 7])
  np.testing.assert_allclose(
    M.multilabel_group_accuracy(y_true, y_pred, groups, 3),
    [[2 / 3, 2 / 3, np.nan], [2 / 3, 1.0, np.nan]],
  )


def test_per_attribute_values_are_the_single_label_functions():
  rng = np.random.default_rng(0)
  y_true = rng.integers(0, 2, (40, 4))
  y_pred = np.where(rng.random((40, 4)) < 0.7, y_true, 1 - y_true)
  groups = rng.integers(-1, 3, 40)
  r = M.multilabel_evaluate(y_true, y_pred, groups, num_groups=3, undefined="zero")
  per_attr = [
    M.equalized_odds(
      y_true[:, a], y_pred[:, a], groups, num_classes=2, num_groups=3, undefined="zero"
    )
    for a in range(4)
  ]
  for m in ("eopp0", "eopp1", "eodd"):
    assert r[m] == pytest.approx(np.mean([e[m] for e in per_attr]))
  g_acc = np.stack([M.group_accuracy(y_true[:, a], y_pred[:, a], groups, 3) for a in range(4)])
  assert list(r["group_accuracy"].values()) == pytest.approx(list(g_acc.mean(0)))
  assert r["worst_group_accuracy"] == pytest.approx(g_acc.mean(0).min())
  f1 = [M.macro_precision_recall_f1(y_true[:, a], y_pred[:, a], 2)[2] for a in range(4)]
  assert r["macro_f1"] == pytest.approx(np.mean(f1))


def test_against_fairlearn_per_attribute():
  fl = pytest.importorskip("fairlearn.metrics")
  rng = np.random.default_rng(1)
  y_true = rng.integers(0, 2, (60, 3))
  y_pred = np.where(rng.random((60, 3)) < 0.75, y_true, 1 - y_true)
  groups = rng.integers(0, 3, 60)
  r = M.multilabel_evaluate(y_true, y_pred, groups, num_groups=3)
  eo, eodds = [], []
  for a in range(3):
    kw = dict(sensitive_features=groups)
    eo.append(fl.equal_opportunity_difference(y_true[:, a], y_pred[:, a], **kw))
    eodds.append(fl.equalized_odds_difference(y_true[:, a], y_pred[:, a], **kw))
    attr = r["attributes"][f"attr{a}"]
    assert attr["tpr_difference"] == pytest.approx(eo[-1], abs=1e-12)
    assert attr["equalized_odds_difference"] == pytest.approx(eodds[-1], abs=1e-12)
  assert r["equal_opportunity_difference"] == pytest.approx(np.mean(eo), abs=1e-12)
  assert r["equalized_odds_difference"] == pytest.approx(np.mean(eodds), abs=1e-12)
  assert r["undefined_attributes"]["equalized_odds_difference"] == 0


def test_bad_multilabel_inputs_are_rejected():
  with pytest.raises(ValueError, match="2-D"):
    M.multilabel_evaluate(Y_TRUE[:, 0], Y_PRED[:, 0], GROUPS, num_groups=2)
  with pytest.raises(ValueError, match="binary labels"):
    M.multilabel_evaluate(Y_TRUE + 1, Y_PRED, GROUPS, num_groups=2)
  with pytest.raises(ValueError, match="Shape mismatch"):
    M.attribute_accuracy(Y_TRUE, Y_PRED[:, :1])
  with pytest.raises(ValueError, match="group 1"):
    M.multilabel_evaluate(Y_TRUE, Y_PRED, np.zeros(6, int), num_groups=2)
  with pytest.raises(ValueError, match="attribute_names"):
    M.multilabel_evaluate(Y_TRUE, Y_PRED, GROUPS, num_groups=2, attribute_names=["a", "a"])


def test_evaluate_reports_worst_group_accuracy():
  # Case A of tests/test_metrics.py (group accuracies 3/5 and 4/5) and a third group at 1/2.
  y_true = np.array([0, 0, 1, 2, 2, 0, 1, 1, 1, 2, 0, 1])
  y_pred = np.array([0, 1, 1, 2, 0, 0, 1, 2, 1, 2, 0, 0])
  groups = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2])
  r = M.evaluate(y_true, y_pred, groups, num_classes=3, num_groups=3)
  assert r["worst_group_accuracy"] == pytest.approx(1 / 2)
  assert r["worst_group_accuracy"] == min(r["group_accuracy"].values())
  r2 = M.evaluate(y_true[:10], y_pred[:10], groups[:10], num_classes=3, num_groups=2)
  assert r2["worst_group_accuracy"] == pytest.approx(3 / 5)
