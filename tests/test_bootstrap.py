"""Tests for fairjax.bootstrap: exactness per resample, coverage, scaling, pairing, labels.

Coverage is checked on a simulated population whose rates are set by hand, so the true values of
the metrics are known in closed form (and cross-checked on one huge sample).
"""

import json
import math

import numpy as np
import pytest

from fairjax import bootstrap as B
from fairjax import metrics as M

# ---------------------------------------------------------------------------------------------
# A simulated population with known rates: 3 classes, 2 groups (+ unknown-group samples).
# Per group g: class priors PRIOR[g]; the dense model predicts k for true class y with
# probability DENSE[g][y, k]; the pruned model copies the dense prediction with probability
# 1 - FLIP and otherwise predicts from OTHER[g][y] (so the two are highly correlated).
# Unknown-group samples are drawn from group 1's population.
# ---------------------------------------------------------------------------------------------
PRIOR = np.array([[0.5, 0.3, 0.2], [0.3, 0.4, 0.3]])
DENSE = np.array(
  [
    [[0.90, 0.06, 0.04], [0.08, 0.85, 0.07], [0.05, 0.10, 0.85]],
    [[0.95, 0.03, 0.02], [0.30, 0.60, 0.10], [0.35, 0.05, 0.60]],
  ]
)
OTHER = np.array(
  [
    [[0.50, 0.30, 0.20], [0.30, 0.40, 0.30], [0.30, 0.30, 0.40]],
    [[0.80, 0.10, 0.10], [0.10, 0.80, 0.10], [0.10, 0.10, 0.80]],
  ]
)
FLIP = 0.08
SIZES = (1500, 1000, 200)  # group 0, group 1, unknown


def _pruned_matrix(g):
  return (1 - FLIP) * DENSE[g] + FLIP * OTHER[g]


def _true_values():
  """Population values of the metrics the coverage test checks (sum convention)."""

  def group_acc(mat, g):
    return float(PRIOR[g] @ np.diag(mat))

  def eodd(mats):
    tpr = np.array([np.diag(mats[g]) for g in range(2)])
    # FPR_c = P(pred c | y != c) = sum_{y != c} prior_y P(c | y) / (1 - prior_c).
    fpr = np.array(
      [(PRIOR[g] @ mats[g] - PRIOR[g] * np.diag(mats[g])) / (1 - PRIOR[g]) for g in range(2)]
    )
    terms = (tpr[0] - tpr[1]) + (fpr[0] - fpr[1])
    return float(np.abs(terms).sum()), terms

  dense = [DENSE[0], DENSE[1]]
  pruned = [_pruned_matrix(0), _pruned_matrix(1)]
  n = sum(SIZES)

  def overall(mats):  # the unknown group follows group 1's population
    total = SIZES[0] * group_acc(mats[0], 0) + (SIZES[1] + SIZES[2]) * group_acc(mats[1], 1)
    return total / n

  eodd_dense, terms = eodd(dense)
  return {
    "accuracy": overall(dense),
    "group1_accuracy": group_acc(dense[1], 1),
    "eodd": eodd_dense,
    "eodd_terms": terms,
    "accuracy_difference": overall(pruned) - overall(dense),
  }


def _draw(rng, sizes=SIZES):
  """One simulated test set: labels, groups, dense and pruned predictions."""

  def categorical(probs):  # probs [n, K] -> one draw per row
    return (rng.random((probs.shape[0], 1)) > np.cumsum(probs, axis=1)).sum(axis=1)

  ys, gs, ds, ps = [], [], [], []
  for stratum, n in enumerate(sizes):
    pop = min(stratum, 1)  # unknown -> group 1's population
    y = categorical(np.broadcast_to(PRIOR[pop], (n, 3)))
    d = categorical(DENSE[pop][y])
    other = categorical(OTHER[pop][y])
    ys.append(y)
    gs.append(np.full(n, stratum if stratum < 2 else -1))
    ds.append(d)
    ps.append(np.where(rng.random(n) < FLIP, other, d))
  return np.concatenate(ys), np.concatenate(gs), np.concatenate(ds), np.concatenate(ps)


def _binomial_band(n, p, two_sided=0.001):
  """Smallest [lo, hi] with P(X < lo) <= a/2 and P(X > hi) <= a/2 for X ~ Bin(n, p)."""
  pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
  cdf = np.cumsum(pmf)
  lo = int(np.searchsorted(cdf, two_sided / 2, side="right"))  # P(X <= lo - 1) <= a/2
  hi = int(np.searchsorted(cdf, 1 - two_sided / 2, side="left"))
  return lo, hi


def test_population_truth_matches_a_huge_sample():
  truth = _true_values()
  # The |.| in Eodd makes the plug-in biased when a term is near 0; the design keeps every
  # class's term far from 0 relative to its standard error at these sizes (about 0.04).
  assert np.all(np.abs(truth["eodd_terms"]) > 0.2)
  y, g, d, p = _draw(np.random.default_rng(123), sizes=(300_000, 200_000, 40_000))
  dense = M.evaluate(y, d, g, num_classes=3, num_groups=2)
  pruned = M.evaluate(y, p, g, num_classes=3, num_groups=2)
  assert dense["accuracy"] == pytest.approx(truth["accuracy"], abs=3e-3)
  assert dense["group_accuracy"]["group1"] == pytest.approx(truth["group1_accuracy"], abs=3e-3)
  assert dense["eodd"] == pytest.approx(truth["eodd"], abs=1e-2)
  assert pruned["accuracy"] - dense["accuracy"] == pytest.approx(
    truth["accuracy_difference"], abs=1e-3
  )


def _coverage(num_sets, seed=2024, num_samples=1000):
  truth = _true_values()
  rng = np.random.default_rng(seed)
  hits = {"accuracy": 0, "group1_accuracy": 0, "eodd": 0, "accuracy_difference": 0}
  for i in range(num_sets):
    y, g, d, p = _draw(rng)
    out = B.bootstrap(
      y, g, {"dense": d, "pruned": p}, num_classes=3, num_groups=2, num_samples=num_samples, seed=i
    )
    leaves = {
      "accuracy": out["models"]["dense"]["accuracy"],
      "group1_accuracy": out["models"]["dense"]["group_accuracy"]["group1"],
      "eodd": out["models"]["dense"]["eodd"],
      "accuracy_difference": out["differences"]["pruned - dense"]["accuracy"],
    }
    for key, leaf in leaves.items():
      hits[key] += leaf["low"] <= truth[key] <= leaf["high"]
  return hits


def test_coverage_of_95_percent_intervals():
  # 500 simulated test sets of 2700 samples (1000 in group 1). At this size the percentile
  # bootstrap's small-sample undercoverage is well inside the band. A 99.9% binomial band
  # around 0.95 for 500 sets accepts 458..489 hits: 90% intervals (e.g. a wrong percentile,
  # about 450 hits) and the over-wide intervals of unpaired resampling (about 500 hits for the
  # paired difference) both fail. 200 sets would accept 179..198, which a 90% interval passes.
  num_sets = 500
  lo, hi = _binomial_band(num_sets, 0.95)
  assert (lo, hi) == (458, 489)
  hits = _coverage(num_sets)
  for key, k in hits.items():
    assert lo <= k <= hi, f"{key}: {k}/{num_sets} cover the truth, not in [{lo}, {hi}]"


def test_widths_shrink_as_one_over_sqrt_n():
  rng = np.random.default_rng(7)
  widths = {}
  for scale in (1, 4):
    sizes = tuple(scale * s for s in SIZES)
    w = []
    for i in range(6):
      y, g, d, p = _draw(rng, sizes)
      out = B.bootstrap(y, g, {"dense": d, "pruned": p}, num_classes=3, num_groups=2, seed=i)
      leaves = (
        out["models"]["dense"]["accuracy"],
        out["models"]["dense"]["eodd"],
        out["differences"]["pruned - dense"]["accuracy"],
      )
      w.append([leaf["high"] - leaf["low"] for leaf in leaves])
    widths[scale] = np.mean(w, axis=0)
  ratio = widths[1] / widths[4]
  np.testing.assert_allclose(ratio, 2.0, rtol=0.1)


# ---------------------------------------------------------------------------------------------
# Exactness: every resample's metrics are those of metrics.evaluate on that resample.
# ---------------------------------------------------------------------------------------------
def _sparse_data(seed, n=240, num_classes=5, num_groups=3):
  """Random data with rare classes (so classes drop out of groups in some resamples)."""
  rng = np.random.default_rng(seed)
  y = rng.choice(num_classes, n, p=[0.4, 0.3, 0.2, 0.07, 0.03])
  g = rng.choice(np.arange(-1, num_groups), n, p=[0.1] + [0.9 / num_groups] * num_groups)
  d = np.where(rng.random(n) < 0.7, y, rng.integers(0, num_classes, n))
  p = np.where(rng.random(n) < 0.8, d, rng.integers(0, num_classes, n))
  return y, g, d, p


def _stratified_indices(rng, groups, num_samples):
  strata = np.where(groups < 0, groups.max() + 1, groups)
  idx = np.empty((num_samples, groups.size), dtype=np.int64)
  for s in np.unique(strata):
    pos = np.flatnonzero(strata == s)
    idx[:, pos] = pos[rng.integers(0, pos.size, (num_samples, pos.size))]
  return idx


@pytest.mark.parametrize("convention", ["sum", "mean"])
@pytest.mark.parametrize("undefined", ["skip", "zero"])
@pytest.mark.parametrize("privileged", [None, 2])
def test_replicates_equal_metrics_evaluate_per_resample(convention, undefined, privileged):
  y, g, d, p = _sparse_data(0)
  idx = _stratified_indices(np.random.default_rng(1), g, 40)
  reps = B.bootstrap_replicates(
    y,
    g,
    {"d": d, "p": p},
    num_classes=5,
    num_groups=3,
    convention=convention,
    undefined=undefined,
    privileged=privileged,
    indices=idx,
  )
  skipped_somewhere = 0
  for r, rows in enumerate(idx):
    for name, pred in (("d", d), ("p", p)):
      e = M.evaluate(
        y[rows],
        pred[rows],
        g[rows],
        num_classes=5,
        num_groups=3,
        convention=convention,
        undefined=undefined,
      )
      eo = M.equalized_odds(
        y[rows],
        pred[rows],
        g[rows],
        num_classes=5,
        num_groups=3,
        convention=convention,
        undefined=undefined,
        privileged=privileged,
      )
      rep = reps[name]
      for key in ("accuracy", "macro_f1", "accuracy_gap"):
        assert rep[key][r] == pytest.approx(e[key], rel=1e-12, abs=1e-15)
      for key in ("eopp0", "eopp1", "eodd"):
        if math.isnan(eo[key]):
          assert math.isnan(rep[key][r])
        else:
          assert rep[key][r] == pytest.approx(eo[key], rel=1e-12, abs=1e-15)
        assert rep["skipped_classes"][key][r] == eo["skipped_classes"][key]
        skipped_somewhere += eo["skipped_classes"][key] > 0
      np.testing.assert_allclose(
        rep["group_accuracy"][r], list(e["group_accuracy"].values()), rtol=1e-12
      )
      np.testing.assert_allclose(
        rep["group_macro_f1"][r], list(e["group_macro_f1"].values()), rtol=1e-12
      )
  if undefined == "skip":
    assert skipped_somewhere > 0  # the data really exercise per-resample skipping


def test_all_classes_skipped_in_a_resample_gives_nan_and_is_counted():
  # Group 0 holds only class 0 and group 1 only class 1: no class has positives in both, so
  # Eopp1 and Eodd are NaN in every resample (as metrics reports NaN on the full set).
  y = np.array([0, 0, 0, 1, 1, 1])
  g = np.array([0, 0, 0, 1, 1, 1])
  p = np.array([0, 1, 0, 1, 1, 0])
  out = B.bootstrap(y, g, {"m": p}, num_classes=2, num_groups=2, num_samples=50)
  m = out["models"]["m"]
  # Eopp0 is undefined too: each group also lacks the negatives of its own class.
  for key in ("eopp0", "eopp1", "eodd"):
    assert m[key] == {"estimate": None, "low": None, "high": None}
  assert m["undefined_replicates"] == {"eopp0": 50, "eopp1": 50, "eodd": 50}
  assert m["accuracy"]["low"] is not None


def test_multinomial_counts_match_index_resampling_in_distribution():
  # Joint-cell multinomial counts are index resampling in distribution: compare the mean and
  # spread of the replicates with explicit stratified index draws (4000 each).
  y, g, d, p = _sparse_data(3, n=400)
  kw = dict(num_classes=5, num_groups=3)
  multi = B.bootstrap_replicates(y, g, {"d": d, "p": p}, num_samples=4000, seed=5, **kw)
  idx = _stratified_indices(np.random.default_rng(6), g, 4000)
  index = B.bootstrap_replicates(y, g, {"d": d, "p": p}, indices=idx, **kw)
  for key in ("accuracy", "eopp0", "accuracy_gap"):
    a, b = multi["d"][key], index["d"][key]
    se = math.sqrt(a.var() / a.size + b.var() / b.size)
    assert abs(a.mean() - b.mean()) < 4 * se
    assert a.std() == pytest.approx(b.std(), rel=0.1)
  diff_m = multi["p"]["accuracy"] - multi["d"]["accuracy"]
  diff_i = index["p"]["accuracy"] - index["d"]["accuracy"]
  assert diff_m.std() == pytest.approx(diff_i.std(), rel=0.1)


# ---------------------------------------------------------------------------------------------
# Degenerate resampling, pairing, unknown group, determinism, JSON
# ---------------------------------------------------------------------------------------------
def test_identity_resamples_collapse_to_the_point_estimate():
  y, g, d, p = _sparse_data(1)
  identity = np.tile(np.arange(y.size), (3, 1))
  out = B.bootstrap(
    y,
    g,
    {"dense": d, "pruned": p},
    num_classes=5,
    num_groups=3,
    indices=identity,
    group_names=("a", "b", "c"),
  )
  assert out["num_samples"] == 3 and out["seed"] is None
  for name, pred in (("dense", d), ("pruned", p)):
    e = M.evaluate(y, pred, g, num_classes=5, num_groups=3, group_names=("a", "b", "c"))
    model = out["models"][name]
    for key in B.SCALAR_METRICS:
      leaf = model[key]
      assert leaf["estimate"] == e[key]  # the point estimate IS metrics.evaluate
      assert leaf["low"] == leaf["high"] == pytest.approx(e[key], rel=1e-12)
    for key in B.GROUP_METRICS:
      for gname, leaf in model[key].items():
        assert leaf["estimate"] == e[key][gname]
        assert leaf["low"] == leaf["high"] == pytest.approx(e[key][gname], rel=1e-12)
  diff = out["differences"]["pruned - dense"]
  e_d = M.evaluate(y, d, g, num_classes=5, num_groups=3)
  e_p = M.evaluate(y, p, g, num_classes=5, num_groups=3)
  assert diff["eodd"]["estimate"] == pytest.approx(e_p["eodd"] - e_d["eodd"], rel=1e-12)
  assert (
    diff["eodd"]["low"]
    == diff["eodd"]["high"]
    == pytest.approx(e_p["eodd"] - e_d["eodd"], rel=1e-9)
  )


def test_identity_resamples_with_a_privileged_group():
  y, g, d, _ = _sparse_data(6)
  identity = np.tile(np.arange(y.size), (2, 1))
  out = B.bootstrap(y, g, {"m": d}, num_classes=5, num_groups=3, privileged=2, indices=identity)
  eo = M.equalized_odds(y, d, g, num_classes=5, num_groups=3, privileged=2)
  for key in ("eopp0", "eopp1", "eodd"):
    leaf = out["models"]["m"][key]
    assert leaf["estimate"] == eo[key]
    assert leaf["low"] == leaf["high"] == pytest.approx(eo[key], rel=1e-12)


def test_paired_interval_is_narrower_than_unpaired():
  y, g, d, p = _draw(np.random.default_rng(11))
  kw = dict(num_classes=3, num_groups=2, num_samples=2000)
  out = B.bootstrap(y, g, {"dense": d, "pruned": p}, seed=0, **kw)
  paired = out["differences"]["pruned - dense"]["accuracy"]
  # Unpaired: each model resampled independently (different seeds), then differenced.
  rd = B.bootstrap_replicates(y, g, {"dense": d}, seed=1, **kw)["dense"]["accuracy"]
  rp = B.bootstrap_replicates(y, g, {"pruned": p}, seed=2, **kw)["pruned"]["accuracy"]
  lo, hi = B.percentile_interval(rp - rd, 0.95)
  assert paired["high"] - paired["low"] < 0.5 * (hi - lo)
  # Both are centred near the same point estimate.
  assert paired["low"] < paired["estimate"] < paired["high"] and lo < paired["estimate"] < hi


def test_unknown_group_counts_overall_only_and_is_its_own_stratum():
  # Known groups are always right; the 100 unknown-group samples are right half the time.
  n_known, n_unknown = 900, 100
  y = np.zeros(n_known + n_unknown, dtype=int)
  g = np.r_[np.arange(n_known) % 2, -np.ones(n_unknown, dtype=int)]
  pred = np.r_[np.zeros(n_known, dtype=int), np.arange(n_unknown) % 2]
  n = y.size
  reps = B.bootstrap_replicates(
    y, g, {"m": pred}, num_classes=2, num_groups=2, num_samples=4000, seed=0
  )["m"]
  # Group metrics never see the unknown samples.
  assert np.all(reps["group_accuracy"] == 1.0) and np.all(reps["accuracy_gap"] == 0.0)
  # Resampled as a stratum of fixed size 100: wrong ~ Bin(100, 1/2), so the accuracy's
  # variance is 100 / 4 / n^2. Pooled (unstratified) resampling would give q(1 - q)/n with
  # q = 0.05, about twice as large; not resampling them at all would give 0.
  assert reps["accuracy"].var() == pytest.approx(n_unknown / 4 / n**2, rel=0.1)
  out = B.bootstrap(y, g, {"m": pred}, num_classes=2, num_groups=2, num_samples=200)
  assert out["num_unknown_group"] == 100 and out["group_counts"] == {"group0": 450, "group1": 450}
  assert out["models"]["m"]["accuracy"]["estimate"] == 0.95
  assert out["models"]["m"]["accuracy"]["high"] > out["models"]["m"]["accuracy"]["low"]


def test_unknown_group_predictions_change_only_overall_metrics():
  y, g, d, _ = _sparse_data(2)
  d2 = d.copy()
  unknown = g == -1
  d2[unknown] = (d2[unknown] + 1) % 5  # only unknown-group predictions change
  idx = _stratified_indices(np.random.default_rng(0), g, 30)
  kw = dict(num_classes=5, num_groups=3, indices=idx)
  a = B.bootstrap_replicates(y, g, {"m": d}, **kw)["m"]
  b = B.bootstrap_replicates(y, g, {"m": d2}, **kw)["m"]
  for key in ("eopp0", "eopp1", "eodd", "accuracy_gap", "group_accuracy", "group_macro_f1"):
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a["accuracy"], b["accuracy"])


def test_seeded_and_json_serialisable():
  y, g, d, p = _sparse_data(4)
  kw = dict(num_classes=5, num_groups=3, num_samples=100)
  one = B.bootstrap(y, g, {"dense": d, "pruned": p}, seed=3, **kw)
  assert one == B.bootstrap(y, g, {"dense": d, "pruned": p}, seed=3, **kw)
  assert one != B.bootstrap(y, g, {"dense": d, "pruned": p}, seed=4, **kw)
  text = json.dumps(one, allow_nan=False)
  assert json.loads(text) == one
  assert one["stratified_by"] == "group" and one["interval"] == "percentile"
  assert set(one["models"]) == {"dense", "pruned"}
  assert set(one["differences"]) == {"pruned - dense"}


def test_pairs_option_names_the_differences():
  y, g, d, p = _sparse_data(5)
  q = (p + 1) % 5
  out = B.bootstrap(y, g, {"dense": d, "a": p, "b": q}, num_classes=5, num_groups=3, num_samples=50)
  assert set(out["differences"]) == {"a - dense", "b - dense"}
  out = B.bootstrap(
    y,
    g,
    {"dense": d, "a": p, "b": q},
    num_classes=5,
    num_groups=3,
    num_samples=50,
    pairs=[("b", "a")],
  )
  assert set(out["differences"]) == {"b - a"}
  est = out["differences"]["b - a"]["accuracy"]["estimate"]
  assert est == pytest.approx(np.mean(q == y) - np.mean(p == y))


# ---------------------------------------------------------------------------------------------
# The levelling label
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
  "worse, better, label",
  [
    (1, 1, "both_gained"),
    (1, 0, "levelled_up"),
    (1, -1, "converged"),
    (0, 1, "diverged"),
    (0, 0, "no_significant_change"),
    (0, -1, "levelled_down"),
    (-1, 1, "diverged"),
    (-1, 0, "diverged"),
    (-1, -1, "both_lost"),
  ],
)
def test_mechanism_table(worse, better, label):
  interval = {1: (0.01, 0.05), 0: (-0.02, 0.03), -1: (-0.05, -0.01)}
  reference = [0.6, 0.9]  # group 0 worse off
  lo = [interval[worse][0], interval[better][0]]
  hi = [interval[worse][1], interval[better][1]]
  assert B.mechanism(reference, lo, hi) == label
  # Swapping which group is worse off swaps the roles.
  assert B.mechanism(reference[::-1], lo[::-1], hi[::-1]) == label


def test_mechanism_boundary_and_more_groups():
  # An interval touching 0 is not significant.
  assert B.mechanism([0.6, 0.9], [0.0, -0.1], [0.1, 0.0]) == "no_significant_change"
  # Three groups: only the dense worst (group 2) and best (group 0) decide; group 1 is ignored.
  assert B.mechanism([0.9, 0.8, 0.5], [-0.01, -0.3, 0.02], [0.01, -0.2, 0.05]) == "levelled_up"
  # All tied: first minimum is worse off, last maximum better off.
  assert B.mechanism([0.7, 0.7, 0.7], [0.1, 0.0, -0.2], [0.2, 0.0, -0.1]) == "converged"
  assert set(B.MECHANISM_LABELS) == {
    "levelled_up",
    "levelled_down",
    "both_gained",
    "both_lost",
    "converged",
    "diverged",
    "no_significant_change",
  }


def _two_group_dense(n=200):
  """Binary labels; dense accuracy 0.6 in group 0 (worse off), 0.9 in group 1."""
  y = np.tile(np.arange(2), n)  # n per group, balanced classes
  g = np.repeat([0, 1], n)
  d = y.copy()
  wrong0 = np.arange(0, 80)  # 80 of group 0's 200 wrong
  wrong1 = np.arange(n, n + 20)  # 20 of group 1's 200 wrong
  d[wrong0] = 1 - d[wrong0]
  d[wrong1] = 1 - d[wrong1]
  return y, g, d, wrong0, wrong1


def _flip(pred, rows):
  out = pred.copy()
  out[rows] = 1 - out[rows]
  return out


@pytest.mark.parametrize(
  "change, label",
  [
    ("fix0", "levelled_up"),
    ("break1", "levelled_down"),
    ("fix0 fix1", "both_gained"),
    ("break0 break1", "both_lost"),
    ("fix0 break1", "converged"),
    ("break0", "diverged"),
    ("fix1", "diverged"),
    ("", "no_significant_change"),
    ("swap0", "no_significant_change"),
  ],
)
def test_mechanism_on_constructed_predictions(change, label):
  y, g, d, wrong0, wrong1 = _two_group_dense()
  right0 = np.arange(80, 200)
  right1 = np.arange(220, 400)
  rows = {
    "fix0": wrong0[:40],
    "break0": right0[:40],
    "fix1": wrong1[:10],
    "break1": right1[:40],
    # One fixed, one broken: the group's accuracy change is 0 on the full set, and its
    # interval straddles 0.
    "swap0": np.r_[wrong0[:1], right0[:1]],
  }
  p = d
  for part in change.split():
    p = _flip(p, rows[part])
  out = B.bootstrap(
    y,
    g,
    {"dense": d, "pruned": p},
    num_classes=2,
    num_groups=2,
    group_names=("light", "dark"),
    num_samples=500,
  )
  mech = out["differences"]["pruned - dense"]["mechanism"]
  assert mech["group_accuracy"] == {"label": label, "worse_off": "light", "better_off": "dark"}
  # Fixing errors raises both classes' F1 and breaking lowers them, so macro-F1 agrees.
  assert mech["group_macro_f1"]["label"] == label


def test_mechanism_on_three_groups_from_bootstrap():
  y, g, d, wrong0, _ = _two_group_dense()
  # A third group, dense accuracy 0.75 (the middle): the pruned model breaks it badly.
  y3 = np.tile(np.arange(2), 100)
  d3 = y3.copy()
  d3[:50] = 1 - d3[:50]
  p3 = d3.copy()
  p3[50:120] = 1 - p3[50:120]
  labels = np.r_[y, y3]
  groups = np.r_[g, np.full(200, 2)]
  dense = np.r_[d, d3]
  pruned = np.r_[_flip(d, wrong0[:40]), p3]
  out = B.bootstrap(
    labels, groups, {"dense": dense, "pruned": pruned}, num_classes=2, num_groups=3, num_samples=500
  )
  mech = out["differences"]["pruned - dense"]["mechanism"]["group_accuracy"]
  assert mech == {"label": "levelled_up", "worse_off": "group0", "better_off": "group1"}
  assert out["differences"]["pruned - dense"]["group_accuracy"]["group2"]["high"] < 0


def test_mechanism_rejects_bad_input():
  with pytest.raises(ValueError, match="G >= 2"):
    B.mechanism([0.5], [0.0], [0.1])
  with pytest.raises(ValueError, match="shapes"):
    B.mechanism([0.5, 0.6], [0.0], [0.1, 0.2])
  with pytest.raises(ValueError, match="low contains NaN"):
    B.mechanism([0.5, 0.6], [np.nan, 0.0], [0.1, 0.2])
  with pytest.raises(ValueError, match="low must not exceed high"):
    B.mechanism([0.5, 0.6], [0.2, 0.0], [0.1, 0.2])


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
_Y = np.array([0, 1, 0, 1, 0, 1])
_G = np.array([0, 0, 1, 1, -1, 1])
_P = {"dense": np.array([0, 1, 1, 1, 0, 0]), "pruned": np.array([0, 0, 1, 1, 0, 0])}


@pytest.mark.parametrize(
  "kwargs, argument",
  [
    (
      dict(predictions={"dense": _P["dense"], "pruned": _P["pruned"][:5]}),
      r"predictions\['pruned'\]",
    ),
    (dict(groups=_G[:5]), "groups"),
    (dict(pairs=[("pruned", "densе")]), "pairs"),  # Cyrillic e: an unknown model name
    (dict(pairs=[("pruned", "dense", "x")]), "pairs"),
    (dict(pairs=[3]), "pairs"),
    (dict(num_samples=0), "num_samples"),
    (dict(num_samples=2.5), "num_samples"),
    (dict(confidence=0.0), "confidence"),
    (dict(confidence=1.0), "confidence"),
    (dict(confidence=95), "confidence"),
    (dict(confidence=float("nan")), "confidence"),
    (dict(predictions={}), "predictions"),
    (dict(indices=np.zeros((2, 5), dtype=int)), "indices"),
    (dict(indices=np.zeros((2, 6), dtype=int)), "indices must be stratified"),
    (dict(seed=-1), "seed"),
  ],
)
def test_bad_input_raises_one_line_naming_the_argument(kwargs, argument):
  args = dict(labels=_Y, groups=_G, predictions=_P, num_classes=2, num_groups=2)
  args.update(kwargs)
  with pytest.raises(ValueError, match=argument) as info:
    B.bootstrap(**args)
  assert "\n" not in str(info.value)


def test_percentile_interval():
  v = np.arange(101, dtype=float)
  assert B.percentile_interval(v, 0.9) == pytest.approx((5.0, 95.0))
  # NaN replicates are left out.
  assert B.percentile_interval(np.r_[v, np.nan], 0.9) == pytest.approx((5.0, 95.0))
  lo, hi = B.percentile_interval([np.nan, np.nan])
  assert math.isnan(lo) and math.isnan(hi)
  with pytest.raises(ValueError, match="confidence"):
    B.percentile_interval(v, 1.5)
