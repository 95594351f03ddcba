"""Tests for fairjax.report: results schema, summaries, seed aggregation, tables and figures.

The results dicts are built from metrics.evaluate on small hand-written predictions so that the
validator sees exactly what the pipeline will give it (design.md section 5).
"""

import copy
import csv
import json
import math
import os
import re

import numpy as np
import pytest

from fairjax import checkpoint, metrics, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GROUPS = ["female", "male"]

# 3 classes, 2 groups (+ one unknown-group sample, id -1), 11 samples.
Y_TRUE = np.array([0, 0, 1, 2, 2, 0, 1, 1, 1, 2, 0])
GROUP_IDS = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, -1])
PRED_DENSE = np.array([0, 1, 1, 2, 0, 0, 1, 2, 1, 2, 0])
PRED_PRUNED = np.array([0, 0, 1, 2, 0, 0, 1, 2, 0, 2, 1])


def _split(pred, sparsity, y_true=Y_TRUE, groups=GROUP_IDS):
  m = metrics.evaluate(y_true, pred, groups, num_classes=3, num_groups=2, group_names=GROUPS)
  m["sparsity"] = sparsity
  return m


def _results(pred_dense=PRED_DENSE, pred_pruned=PRED_PRUNED):
  dense = _split(pred_dense, 0.0)
  pruned = _split(pred_pruned, 0.3)
  return {
    "schema_version": 1,
    "config": {"method": "fairprune", "beta": 0.5, "seed": 0},
    "dataset": {
      "name": "synthetic",
      "num_classes": 3,
      "group_names": list(GROUPS),
      "class_names": ["MEL", "NV", "BCC"],
      "split_sizes": {"train": 40, "validation": 11, "test": 11},
      "num_unknown_group": {"train": 2, "validation": 1, "test": 1},
    },
    "fairness_convention": "sum",
    "privileged_group": "male",
    "method": "fairprune",
    "dense": dense,
    "pruned": pruned,
    "steps": [
      {"step": 0, "sparsity": 0.0, "validation": _split(pred_dense, 0.0)},
      {"step": 1, "sparsity": 0.1, "validation": _split(pred_pruned, 0.1)},
      {"step": 2, "sparsity": 0.3, "validation": _split(pred_pruned, 0.3)},
    ],
    "summary": report.summarize(dense, pruned),
  }


# --------------------------------------------------------------------------------------------
# validate_results
# --------------------------------------------------------------------------------------------


def test_valid_results_pass_and_survive_json():
  r = _results()
  report.validate_results(r)
  # What is read back from disk must validate too (tuples -> lists, numpy -> Python).
  report.validate_results(json.loads(json.dumps(r)))


REQUIRED_PATHS = (
  [
    ("schema_version",),
    ("config",),
    ("dataset",),
    ("fairness_convention",),
    ("privileged_group",),
    ("method",),
    ("dense",),
    ("pruned",),
    ("steps",),
    ("summary",),
    ("dataset", "name"),
    ("dataset", "num_classes"),
    ("dataset", "group_names"),
    ("dataset", "class_names"),
    ("dataset", "split_sizes"),
    ("dataset", "num_unknown_group"),
    ("dataset", "split_sizes", "validation"),
    ("dataset", "num_unknown_group", "test"),
    ("summary", "eodd_reduction"),
    ("summary", "accuracy_drop"),
    ("summary", "fate"),
    ("summary", "disparity_of_degradation"),
  ]
  + [
    (split, key)
    for split in ("dense", "pruned")
    for key in ("accuracy", "macro_f1", "eopp0", "eopp1", "eodd", "group_accuracy", "sparsity")
  ]
  + [
    ("dense", "group_accuracy", "male"),
  ]
)


@pytest.mark.parametrize("path", REQUIRED_PATHS, ids=".".join)
def test_each_required_key_missing_is_named(path):
  r = _results()
  parent = r
  for key in path[:-1]:
    parent = parent[key]
  del parent[path[-1]]
  name = "results." + ".".join(path)
  if path == ("dense", "group_accuracy", "male"):
    # A group dropped from group_accuracy is a group-name mismatch, reported as such.
    with pytest.raises(ValueError, match=r"results\.dense\.group_accuracy has groups"):
      report.validate_results(r)
    return
  with pytest.raises(ValueError, match=f"^{name.replace('.', '[.]')} missing$"):
    report.validate_results(r)


@pytest.mark.parametrize("key", ["step", "sparsity", "validation"])
def test_step_keys_missing_are_named(key):
  r = _results()
  del r["steps"][1][key]
  with pytest.raises(ValueError, match=rf"^results\.steps\[1\]\.{key} missing$"):
    report.validate_results(r)
  r = _results()
  del r["steps"][2]["validation"]["eodd"]
  with pytest.raises(ValueError, match=r"^results\.steps\[2\]\.validation\.eodd missing$"):
    report.validate_results(r)


@pytest.mark.parametrize(
  "mutate, message",
  [
    (lambda r: r.update(schema_version=2), r"results\.schema_version must be 1"),
    (lambda r: r.update(config=[1]), r"results\.config must be a dict"),
    (lambda r: r.update(fairness_convention="max"), r"results\.fairness_convention must"),
    (lambda r: r.update(privileged_group="other"), r"privileged_group 'other' is not one"),
    (lambda r: r["pruned"].update(accuracy="0.8"), r"results\.pruned\.accuracy must be a"),
    (lambda r: r["pruned"].update(accuracy=True), r"results\.pruned\.accuracy must be a"),
    (lambda r: r["pruned"].update(accuracy=float("nan")), r"pruned\.accuracy must be a"),
    (lambda r: r["pruned"].update(sparsity=1.5), r"results\.pruned\.sparsity must lie in"),
    (lambda r: r["dense"].update(accuracy=None), r"results\.dense\.accuracy must be a"),
    (
      lambda r: r["dense"]["group_accuracy"].update(male="x"),
      r"results\.dense\.group_accuracy\.male must be",
    ),
    (
      lambda r: r["dense"].update(fairness_convention="mean"),
      r"results\.dense\.fairness_convention is 'mean'",
    ),
    (lambda r: r["dataset"].update(num_classes=2.0), r"dataset\.num_classes must be an int"),
    (lambda r: r["dataset"].update(group_names=["a"]), r"dataset\.group_names must be"),
    (lambda r: r["dataset"].update(class_names=["MEL"]), r"dataset\.class_names must be"),
    (
      lambda r: r["dataset"]["split_sizes"].update(test=-1),
      r"dataset\.split_sizes\.test must be an integer >= 0",
    ),
    (lambda r: r["steps"][0].update(step=1), r"results\.steps\[0\]\.step must be 0"),
    (lambda r: r["steps"][2].update(step=1), r"results\.steps\[2\]\.step must exceed"),
    (lambda r: r.update(steps=[]), r"results\.steps must be a non-empty list"),
    (
      lambda r: r["summary"].update(accuracy_drop=None),
      r"results\.summary\.accuracy_drop must be a finite number,",
    ),
    (lambda r: r["summary"].update(fate="high"), r"results\.summary\.fate must be a finite"),
  ],
)
def test_ill_typed_values_are_named(mutate, message):
  r = _results()
  mutate(r)
  with pytest.raises(ValueError, match=message):
    report.validate_results(r)


def test_nullable_fields_accept_none():
  r = _results()
  r["dataset"]["class_names"] = None
  r["pruned"]["eodd"] = None
  r["summary"].update(eodd_reduction=None, fate=None, disparity_of_degradation=None)
  report.validate_results(r)
  with pytest.raises(ValueError, match=r"^results must be a dict"):
    report.validate_results([r])


# --------------------------------------------------------------------------------------------
# summarize
# --------------------------------------------------------------------------------------------


def test_summarize_hand_checked():
  dense = {
    "accuracy": 0.80,
    "macro_f1": 0.60,
    "eodd": 0.40,
    "group_accuracy": {"female": 0.70, "male": 0.90},
  }
  pruned = {
    "accuracy": 0.75,
    "macro_f1": 0.54,
    "eodd": 0.10,
    "group_accuracy": {"male": 0.80, "female": 0.72},
  }  # other key order on purpose
  s = report.summarize(dense, pruned)
  assert s["eodd_reduction"] == pytest.approx(0.75)  # (0.40 - 0.10) / 0.40
  assert s["accuracy_drop"] == pytest.approx(0.05)  # 0.80 - 0.75, not points
  # FATE = (0.54 - 0.60)/0.60 - (0.10 - 0.40)/0.40 = -0.1 + 0.75
  assert s["fate"] == pytest.approx(0.65)
  # deltas: female +0.02, male -0.10 -> population std = |0.02 - (-0.10)| / 2
  assert s["disparity_of_degradation"] == pytest.approx(0.06)


def test_summarize_zero_dense_eodd_gives_none():
  dense = {"accuracy": 0.8, "macro_f1": 0.6, "eodd": 0.0, "group_accuracy": {"a": 0.8, "b": 0.8}}
  pruned = {"accuracy": 0.7, "macro_f1": 0.5, "eodd": 0.2, "group_accuracy": {"a": 0.7, "b": 0.7}}
  s = report.summarize(dense, pruned)
  assert s["eodd_reduction"] is None and s["fate"] is None
  assert s["accuracy_drop"] == pytest.approx(0.1)
  assert s["disparity_of_degradation"] == pytest.approx(0.0)
  # A null Eodd (no class with defined rates) is also "not computable", never a crash.
  s = report.summarize({**dense, "eodd": None}, pruned)
  assert s["eodd_reduction"] is None and s["fate"] is None
  with pytest.raises(ValueError, match="different groups"):
    report.summarize(dense, {**pruned, "group_accuracy": {"a": 0.7, "c": 0.7}})


def test_summarize_matches_metrics_on_evaluate_output():
  r = _results()
  d, p = r["dense"], r["pruned"]
  s = r["summary"]
  assert s["accuracy_drop"] == pytest.approx(d["accuracy"] - p["accuracy"])
  assert s["eodd_reduction"] == pytest.approx((d["eodd"] - p["eodd"]) / d["eodd"])
  assert s["fate"] == pytest.approx(
    metrics.fate(p["macro_f1"], d["macro_f1"], p["eodd"], d["eodd"])
  )
  # Dense group accuracies 3/5, 4/5; pruned 4/5, 3/5 -> deltas +0.2, -0.2 -> std 0.2.
  assert d["group_accuracy"] == pytest.approx({"female": 0.6, "male": 0.8})
  assert p["group_accuracy"] == pytest.approx({"female": 0.8, "male": 0.6})
  assert s["disparity_of_degradation"] == pytest.approx(0.2)


# --------------------------------------------------------------------------------------------
# write_results
# --------------------------------------------------------------------------------------------


def test_write_results_round_trip_no_temp_files(tmp_path):
  r = _results()
  path = report.write_results(str(tmp_path), r)
  assert path == os.path.join(str(tmp_path), "results.json")
  back = checkpoint.read_json(path)
  report.validate_results(back)
  assert back == json.loads(json.dumps(r))
  assert sorted(os.listdir(tmp_path)) == ["results.json"]
  # Overwrite in place: still one file, the new content.
  r["method"] = "snnl"
  report.write_results(str(tmp_path), r)
  assert checkpoint.read_json(path)["method"] == "snnl"
  assert sorted(os.listdir(tmp_path)) == ["results.json"]


def test_write_results_refuses_invalid_and_writes_nothing(tmp_path):
  r = _results()
  del r["pruned"]["group_accuracy"]
  with pytest.raises(ValueError, match=r"results\.pruned\.group_accuracy missing"):
    report.write_results(str(tmp_path), r)
  assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _assert_png(path, min_bytes=2000):
  with open(path, "rb") as f:
    data = f.read()
  assert data[:8] == PNG_MAGIC
  assert len(data) > min_bytes
  leftovers = [n for n in os.listdir(os.path.dirname(path)) if ".tmp" in n]
  assert leftovers == []


def test_plot_tradeoff_png(tmp_path):
  r = _results()
  r["steps"][2]["validation"]["eodd"] = None  # a gap, not a crash
  out = str(tmp_path / "tradeoff.png")
  assert report.plot_tradeoff(r["steps"], out, title="synthetic", convention="mean") == out
  _assert_png(out)
  # The reported step and the accuracy floor (here below 0: drawn at the axis' bottom).
  assert report.plot_tradeoff(r["steps"], out, chosen_step=1, max_accuracy_drop=0.9) == out
  _assert_png(out)
  with pytest.raises(ValueError, match="convention"):
    report.plot_tradeoff(r["steps"], out, convention="max")


def test_plot_saliency_histograms_png(tmp_path):
  rng = np.random.default_rng(0)
  per_layer = {}
  for i in range(3):
    terms = {g: 0.5 * rng.normal(size=200) ** 2 * rng.lognormal(i, 2, size=200) for g in GROUPS}
    terms["female"][:10] = 0.0  # pruned weights: counted, not plotted
    per_layer[f"conv{i}/kernel"] = terms
  per_layer["empty"] = {"female": np.zeros(5), "male": np.zeros(5)}
  out = str(tmp_path / "sal.png")
  report.plot_saliency_histograms(per_layer, out, group_names=("female", "male"), max_layers=3)
  _assert_png(out)
  with pytest.raises(ValueError, match="no group 'old'"):
    report.plot_saliency_histograms(per_layer, out, group_names=("female", "old"))


def test_plot_pareto_png(tmp_path):
  rows = [
    {
      "method": "fairprune",
      "accuracy": 0.80,
      "eodd": 0.30,
      "accuracy_std": 0.01,
      "eodd_std": 0.02,
      "label": "10%",
    },
    {"method": "fairprune", "accuracy": 0.78, "eodd": 0.20, "label": "30%"},
    {"method": "magnitude", "accuracy": 0.81, "eodd": 0.35},
    {"method": "snnl", "accuracy": None, "eodd": 0.1},
  ]
  out = str(tmp_path / "pareto.png")
  report.plot_pareto(rows, out, convention="sum")
  _assert_png(out)
  with pytest.raises(ValueError, match="no row"):
    report.plot_pareto([{"method": "x", "accuracy": None, "eodd": 0.1}], out)


# --------------------------------------------------------------------------------------------
# aggregate_seeds
# --------------------------------------------------------------------------------------------


def test_aggregate_seeds_hand_checked():
  r0 = _results()
  r1 = copy.deepcopy(r0)
  r1["pruned"]["accuracy"] = 0.9
  r1["pruned"]["group_accuracy"]["female"] = 1.0
  r1["summary"] = report.summarize(r1["dense"], r1["pruned"])
  r1["summary"]["eodd_reduction"] = None  # as if seed 1's dense Eodd had been 0
  agg = report.aggregate_seeds([r0, r1])
  assert agg["num_seeds"] == 2 and agg["ddof"] == 0 and agg["method"] == "fairprune"
  a0 = r0["pruned"]["accuracy"]  # 7/11
  assert agg["pruned"]["accuracy"]["mean"] == pytest.approx((a0 + 0.9) / 2)
  assert agg["pruned"]["accuracy"]["std"] == pytest.approx(abs(a0 - 0.9) / 2)  # ddof=0
  # female: 0.8 and 1.0 -> mean 0.9, std 0.1
  assert agg["pruned"]["group_accuracy"]["female"]["mean"] == pytest.approx(0.9)
  assert agg["pruned"]["group_accuracy"]["female"]["std"] == pytest.approx(0.1)
  assert agg["dense"]["eodd"] == {"mean": r0["dense"]["eodd"], "std": 0.0, "n": 2}
  assert set(agg["dense"]) == {
    "accuracy",
    "macro_f1",
    "eodd",
    "eopp0",
    "eopp1",
    "sparsity",
    "group_accuracy",
  }
  assert agg["pruned"]["sparsity"]["mean"] == pytest.approx(0.3)
  red = agg["summary"]["eodd_reduction"]
  assert red["n"] == 1 and red["mean"] == pytest.approx(r0["summary"]["eodd_reduction"])
  assert red["std"] == 0.0
  assert agg["summary"]["accuracy_drop"]["mean"] == pytest.approx(
    r0["dense"]["accuracy"] - (a0 + 0.9) / 2
  )
  json.dumps(agg)  # plain Python values only


def test_aggregate_seeds_refuses_mixed_runs():
  r0 = _results()
  r1 = copy.deepcopy(r0)
  r1["method"] = "snnl"
  with pytest.raises(ValueError, match=r"results\[1\]\.method"):
    report.aggregate_seeds([r0, r1])
  r2 = copy.deepcopy(r0)
  del r2["dense"]["eodd"]
  with pytest.raises(ValueError, match=r"results\[1\] is invalid: results\.dense\.eodd missing"):
    report.aggregate_seeds([r0, r2])
  with pytest.raises(ValueError, match="at least one"):
    report.aggregate_seeds([])


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def test_format_mean_std():
  assert report.format_mean_std(0.8123, 0.0114) == "0.812 ± 0.011"
  assert report.format_mean_std(0.8123, 0.0114, fmt=".1%") == "81.2% ± 1.1%"
  assert report.format_mean_std(None, 0.1) == "n/a"
  assert report.format_mean_std(0.5, None) == "0.500"


def test_markdown_table_exact():
  rows = [
    {
      "method": "fairprune",
      "acc": 0.81234,
      "n": 3,
      "fate": None,
      "eodd": {"mean": 0.25, "std": 0.0125},
    },
    {
      "method": "a|b",
      "acc": np.float32(0.5),
      "n": 1,
      "fate": -0.1,
      "eodd": {"mean": None, "std": None},
    },
  ]
  cols = [("method", "Method"), ("acc", "Acc."), ("n", "Seeds"), ("fate", "FATE"), ("eodd", "Eodd")]
  expected = (
    "| Method | Acc. | Seeds | FATE | Eodd |\n"
    "| --- | --- | --- | --- | --- |\n"
    "| fairprune | 0.812 | 3 | n/a | 0.250 ± 0.013 |\n"
    "| a\\|b | 0.500 | 1 | -0.100 | n/a |"
  )
  assert report.markdown_table(rows, cols) == expected
  assert report.markdown_table(rows[:1], [("acc", "A")], floatfmt=".1f") == (
    "| A |\n| --- |\n| 0.8 |"
  )
  with pytest.raises(ValueError, match=r"rows\[0\] has no key 'accuracy'"):
    report.markdown_table(rows, [("accuracy", "A")])


def test_markdown_table_dotted_paths_on_aggregate():
  agg = report.aggregate_seeds([_results()])
  row = {"method": "fairprune", **agg}
  table = report.markdown_table(
    [row], [("method", "M"), ("pruned.accuracy", "Acc"), ("num_seeds", "n")]
  )
  acc = _results()["pruned"]["accuracy"]
  assert table.splitlines()[2] == f"| fairprune | {acc:.3f} ± 0.000 | 1 |"


def test_write_csv_round_trip(tmp_path):
  agg = report.aggregate_seeds([_results()])
  rows = [{"method": "fairprune", "x": 1 / 3, "none": None, **agg}]
  cols = [
    ("method", "method"),
    ("x", "x"),
    ("none", "none"),
    ("pruned.accuracy.mean", "acc_mean"),
    ("pruned.accuracy.std", "acc_std"),
  ]
  out = str(tmp_path / "sub" / "table.csv")
  assert report.write_csv(out, rows, cols) == out
  with open(out, newline="", encoding="utf-8") as f:
    got = list(csv.reader(f))
  assert got[0] == ["method", "x", "none", "acc_mean", "acc_std"]
  assert got[1][0] == "fairprune" and float(got[1][1]) == 1 / 3 and got[1][2] == ""
  assert float(got[1][3]) == agg["pruned"]["accuracy"]["mean"]
  assert os.listdir(tmp_path / "sub") == ["table.csv"]
  with pytest.raises(ValueError, match=r"pruned\.accuracy\.mean"):
    report.write_csv(str(tmp_path / "bad.csv"), rows, [("pruned.accuracy", "acc")])
  assert not os.path.exists(tmp_path / "bad.csv")
  assert math.isfinite(agg["pruned"]["accuracy"]["std"])


# --------------------------------------------------------------------------------------------
# Bootstrap keys (results.bootstrap and the summary's headline of it)
# --------------------------------------------------------------------------------------------


def _with_bootstrap():
  from fairjax import bootstrap

  r = _results()
  boot = bootstrap.bootstrap(
    Y_TRUE,
    GROUP_IDS,
    {"dense": PRED_DENSE, "pruned": PRED_PRUNED},
    num_classes=3,
    num_groups=2,
    group_names=GROUPS,
    num_samples=200,
    seed=1,
  )
  r["bootstrap"] = boot
  r["summary"].update(report.summarize_bootstrap(boot))
  return json.loads(json.dumps(r))  # as read back from results.json


def test_bootstrap_keys_validate_and_summarize():
  r = _with_bootstrap()
  report.validate_results(r)
  s, diff = r["summary"], r["bootstrap"]["differences"]["pruned - dense"]
  assert s["mechanism"] == diff["mechanism"]["group_accuracy"]["label"]
  assert s["group_accuracy_difference"]["male"] == diff["group_accuracy"]["male"]
  dense_male = r["dense"]["group_accuracy"]["male"]
  pruned_male = r["pruned"]["group_accuracy"]["male"]
  assert s["group_accuracy_difference"]["male"]["estimate"] == pytest.approx(
    pruned_male - dense_male
  )
  assert s["worse_off_group"] == min(GROUPS, key=lambda g: r["dense"]["group_accuracy"][g])
  report.validate_results(_results())  # the keys are optional (schema_version 1 files)


@pytest.mark.parametrize(
  "mutate,message",
  [
    (
      lambda r: r["bootstrap"]["differences"]["pruned - dense"]["mechanism"][
        "group_accuracy"
      ].update(label="levelled_sideways"),
      "label must be one of",
    ),
    (
      lambda r: r["bootstrap"]["differences"]["pruned - dense"]["mechanism"].pop("group_macro_f1"),
      "mechanism.group_macro_f1 missing",
    ),
    (
      lambda r: r["bootstrap"]["models"]["pruned"]["eodd"].update(low=2.0, high=1.0),
      "models.pruned.eodd.low 2.0 exceeds",
    ),
    (
      lambda r: r["bootstrap"]["models"]["dense"]["group_accuracy"].pop("male"),
      "models.dense.group_accuracy has groups",
    ),
    (
      lambda r: r["bootstrap"]["differences"].pop("pruned - dense"),
      "differences.pruned - dense missing",
    ),
    (lambda r: r["bootstrap"].update(confidence=1.5), "confidence must lie in (0, 1)"),
    (lambda r: r["summary"].pop("mechanism_macro_f1"), "summary.mechanism_macro_f1 missing"),
    (
      lambda r: r["summary"].update(
        mechanism="levelled_up" if r["summary"]["mechanism"] != "levelled_up" else "levelled_down"
      ),
      "summary.mechanism is",
    ),
    (lambda r: r["summary"]["eodd_difference"].update(low=-9.0), "summary.eodd_difference is"),
  ],
)
def test_bootstrap_keys_are_checked(mutate, message):
  r = _with_bootstrap()
  mutate(r)
  with pytest.raises(ValueError, match=re.escape(message)):
    report.validate_results(r)


def test_format_interval():
  assert report.format_interval({"estimate": -0.0213, "low": -0.035, "high": -0.008}) == (
    "-0.021 [-0.035, -0.008]"
  )
  assert report.format_interval({"estimate": 0.5, "low": None, "high": None}) == "+0.500"
  assert report.format_interval(None) == "n/a"
  assert report.format_interval({"estimate": None, "low": 0.1, "high": 0.2}) == "n/a"
