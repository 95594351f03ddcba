"""The comparison (fairjax.compare, configs/compare.py) through the CLI on tiny images.

The comparison and its resume run in-process (tests/cli_helpers.run_in_process: the CLI's
command line through ``fairjax.main.run_command``, its log lines captured); the refused rerun
is a real ``python -m fairjax.main`` subprocess (the CLI's exit code 2). Two cheap methods
(magnitude, random; fine-tuning switched off, so a run's kept weights must be the dense weights
bit for bit) at two target sparsities, two pruning steps each.
"""

import csv
import os
import shutil
import time

import numpy as np
import pytest

from tests.cli_helpers import (
  TINY,
  assert_cli_error,
  assert_same_results,
  config_error,
  load_json,
  parse_config,
  restore_step,
  run_cli,
  run_in_process_ok,
)

METHODS = ("magnitude", "random")
SPARSITIES = (0.5, 0.75)
CMP = [
  "--config.train.epochs=2",
  "--config.prune.max_steps=2",
  "--config.prune.finetune_epochs=0",  # configs/compare.py fine-tunes; not here (below)
  f"--config.compare.methods={METHODS!r}",
  f"--config.compare.sparsities={SPARSITIES!r}",
  # In the ordinary mode each of these rules would end a run after step 1 (sparsity 0.29 or
  # 0.5 > 0.2, patience 1, no accuracy drop allowed); target mode must ignore them.
  "--config.prune.max_sparsity=0.2",
  "--config.prune.patience=1",
  "--config.prune.max_accuracy_drop=0.0",
]
COMPARE = "configs/compare.py"


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("compare"))
  return workdir, run_in_process_ok(workdir, *TINY, *CMP, config=COMPARE)


def _names():
  from fairjax import compare

  return [compare.run_name(m, s) for m in METHODS for s in SPARSITIES]


def test_comparison_writes_table_csv_and_plot(comparison):
  from fairjax import report

  workdir, res = comparison
  cmp = load_json(workdir, "compare.json")
  rows = cmp["rows"]
  assert [(r["method"], r["target_sparsity"]) for r in rows] == (
    [("dense", 0.0)] + [(m, s) for m in METHODS for s in SPARSITIES]
  )
  assert rows[0]["sparsity"] == 0.0 and rows[0]["accuracy"] == cmp["dense"]["accuracy"]
  for name, row in zip(_names(), rows[1:]):
    results = load_json(os.path.join(workdir, "runs", name))
    report.validate_results(results)
    assert results["config"]["prune"]["target_sparsity"] == row["target_sparsity"]
    assert "compare" not in results["config"]
    # Exactly max_steps steps, the last one reported, although every ordinary stopping rule
    # would have fired at step 1.
    assert [s["step"] for s in results["steps"]] == [0, 1, 2]
    assert results["chosen_step"] == 2 and "target sparsity" in res.stderr
    # Per-layer round-half-up of r * n on layers of even size: the target exactly.
    assert row["sparsity"] == pytest.approx(row["target_sparsity"], abs=1e-3)
    assert row["sparsity"] == results["pruned"]["sparsity"]
    for key in ("accuracy", "macro_f1", "eodd", "eopp0", "eopp1"):
      assert row[key] == results["pruned"][key], key
    assert row["disparity_of_degradation"] == results["summary"]["disparity_of_degradation"]
    assert row["train_epochs"] == 0 and row["steps"] == 2
    for g in ("light", "dark"):
      assert row[f"accuracy_{g}"] == results["pruned"]["group_accuracy"][g]

  with open(os.path.join(workdir, "compare.csv")) as f:
    table = list(csv.DictReader(f))
  assert [r["method"] for r in table] == [r["method"] for r in rows]
  assert {
    "achieved sparsity",
    "Eodd",
    "Eopp0",
    "Eopp1",
    "acc light",
    "acc dark",
    "disparity of degradation",
    "macro-F1",
  } <= set(table[0])
  assert float(table[2]["Eodd"]) == rows[2]["eodd"]  # full precision in the CSV
  with open(os.path.join(workdir, "compare.md")) as f:
    md = f.read()
  assert md.count("\n| magnitude |") == 2 and md.count("\n| dense |") == 1
  assert "sum convention" in md
  # Paired intervals and the levelling label of every run, from its results.json.
  header = next(line for line in md.splitlines() if line.startswith("| method |"))
  cells = [c.strip() for c in header.strip("|").split("|")]
  for col in ("Δacc [CI]", "ΔEodd [CI]", "Δacc light [CI]", "Δacc dark [CI]", "mechanism"):
    assert col in cells, col
  from fairjax import report as rep

  lines = md.strip().splitlines()[-len(_names()) :]
  for name, row, csv_row, line in zip(_names(), rows[1:], table[1:], lines):
    summary = load_json(os.path.join(workdir, "runs", name))["summary"]
    values = dict(zip(cells, (c.strip() for c in line.strip("|").split("|"))))
    assert values["mechanism"] == summary["mechanism"] == row["mechanism"]
    assert values["ΔEodd [CI]"] == rep.format_interval(summary["eodd_difference"])
    assert float(csv_row["ΔEodd high"]) == summary["eodd_difference"]["high"]
    assert csv_row["mechanism macro-F1"] == summary["mechanism_macro_f1"]
  assert table[0]["mechanism"] == "" and table[0]["Δacc"] == ""  # dense: nothing to pair with
  with open(os.path.join(workdir, "pareto.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  # No leftover temporary files of the atomic writers.
  assert not [n for n in os.listdir(workdir) if n.startswith(".")]


def test_every_run_started_from_the_same_dense_model(comparison):
  import jax

  from fairjax import checkpoint, compare

  workdir, _ = comparison
  cmp = load_json(workdir, "compare.json")
  store = checkpoint.CheckpointStore(checkpoint.store_directory(workdir, "dense"))
  dense = store.restore(store.latest_step(), {"best_params": None, "best_batch_stats": None})
  store.close()
  # One dense model, trained once, in the comparison's workdir; none in the runs.
  for name in _names():
    assert not os.path.exists(os.path.join(workdir, "runs", name, "checkpoints", "dense"))
    results = load_json(os.path.join(workdir, "runs", name))
    assert results["dense_fingerprint"] == cmp["dense_fingerprint"]
    assert results["dense"] == cmp["dense"]
    # magnitude and random do not fine-tune: the kept weights of the last step ARE the dense
    # model's, and the pruned ones are exactly zero.
    items = restore_step(os.path.join(workdir, "runs", name), "prune", 2)
    flat_dense = dict(jax.tree_util.tree_flatten_with_path(dense["best_params"])[0])
    flat_mask = dict(jax.tree_util.tree_flatten_with_path(items["mask"])[0])
    n_pruned = 0
    for path, w in jax.tree_util.tree_flatten_with_path(items["params"])[0]:
      w, d = np.asarray(w), np.asarray(flat_dense[path])
      m = np.asarray(flat_mask[path]) if flat_mask.get(path) is not None else np.ones_like(w, bool)
      np.testing.assert_array_equal(w[m], d[m], err_msg=f"{name} {path}")
      assert np.all(w[~m] == 0.0)
      n_pruned += int((~m).sum())
    assert n_pruned > 0
    jax.tree.map(np.testing.assert_array_equal, items["batch_stats"], dense["best_batch_stats"])

  class _State:  # what dense_fingerprint reads
    params, batch_stats = dense["best_params"], dense["best_batch_stats"]

  assert compare.dense_fingerprint(_State) == cmp["dense_fingerprint"]


def test_resume_recomputes_only_the_missing_run(comparison, tmp_path):
  reference, _ = comparison
  workdir = str(tmp_path / "resumed")
  shutil.copytree(reference, workdir)
  names = _names()
  gone = names[1]
  shutil.rmtree(os.path.join(workdir, "runs", gone))
  before = {
    n: os.stat(os.path.join(workdir, "runs", n, "results.json")).st_mtime_ns
    for n in names
    if n != gone
  }
  time.sleep(0.01)
  res = run_in_process_ok(workdir, *TINY, *CMP, config=COMPARE)
  assert "restored the finished run" in res.stderr  # the dense model is not retrained
  assert res.stderr.count("finished earlier, skipped") == len(names) - 1
  assert f"{gone} (method" in res.stderr
  for n, mtime in before.items():
    assert os.stat(os.path.join(workdir, "runs", n, "results.json")).st_mtime_ns == mtime, n
  old = load_json(os.path.join(reference, "runs", gone))
  new = load_json(os.path.join(workdir, "runs", gone))
  # Recomputed from scratch, identically.
  assert_same_results(
    old, new, ("dense", "pruned", "steps", "summary", "chosen_step", "dense_fingerprint")
  )
  for name in ("compare.md", "compare.csv"):
    with open(os.path.join(reference, name)) as a, open(os.path.join(workdir, name)) as b:
      assert a.read() == b.read(), name


def test_rerun_with_another_config_is_refused(comparison, tmp_path):
  workdir = str(tmp_path / "other")
  shutil.copytree(comparison[0], workdir)
  res = run_cli(workdir, *TINY, *CMP, "--config.prune.scope=global", config=COMPARE)
  assert_cli_error(res, "config.prune.scope")


@pytest.mark.parametrize(
  "override,needle",
  [
    ("--config.compare.methods=('magnitude','magic')", "'magic' is not a pruning method"),
    ("--config.compare.sparsities=(0.5,1.0)", "1.0 is outside (0, 1)"),
    ("--config.compare.sparsities=(-0.1,)", "-0.1 is outside (0, 1)"),
    ("--config.prune.target_sparsity=0.5", "config.prune.target_sparsity=0.5"),
  ],
)
def test_bad_compare_config_fails_fast_with_one_line(override, needle):
  """In-process: the CLI's config parsing, then the ``validate_config`` call ``fairjax.main``
  makes before anything is computed (test_main checks the CLI's side: stderr, exit code 2)."""
  from fairjax.config import validate_config

  validate_config(parse_config(*TINY, *CMP, config=COMPARE))  # valid without the override
  message = config_error(*TINY, *CMP, override, config=COMPARE)
  assert needle in message, message


def _config(**compare):
  from fairjax.config import base_config, compare_section

  c = base_config()
  c.compare = compare_section(**compare)
  return c


@pytest.mark.parametrize(
  "compare,needle",
  [
    ({"methods": ()}, "config.compare.methods=()"),
    ({"methods": ("fairprune", "fairprune")}, "twice"),
    ({"methods": ("fairprune", "FairGRAPE")}, "'FairGRAPE' is not a pruning method"),
    ({"sparsities": (0.0,)}, "0.0 is outside (0, 1)"),
    ({"sparsities": (0.9, 1.5)}, "1.5 is outside (0, 1)"),
    ({"sparsities": ()}, "config.compare.sparsities=()"),
    ({"sparsities": (0.5, 0.5)}, "twice"),
  ],
)
def test_validate_compare_section(compare, needle):
  from fairjax.config import ConfigError, validate_config

  with pytest.raises(ConfigError, match="config.compare") as e:
    validate_config(_config(**compare))
  assert needle in str(e.value)
  validate_config(_config())  # the defaults are valid


def test_aggregate_mean_std_over_seeds():
  from fairjax import compare

  def cmp(eodds, accs):
    rows = [
      {
        "method": m,
        "target_sparsity": s,
        "sparsity": s,
        "accuracy": a,
        "macro_f1": 0.5,
        "eodd": e,
        "eopp0": 0.1,
        "eopp1": None,
        "accuracy_a": a,
        "accuracy_b": a,
        "disparity_of_degradation": 0.0,
        "channels": "",
        "steps": 2,
      }
      for (m, s), e, a in zip([("dense", 0.0), ("magnitude", 0.5)], eodds, accs)
    ]
    return {
      "methods": ["magnitude"],
      "sparsities": [0.5],
      "fairness_convention": "sum",
      "dataset": {"group_names": ["a", "b"]},
      "rows": rows,
    }

  rows = compare.aggregate(
    [cmp([0.2, 0.4], [0.8, 0.6]), cmp([0.2, 0.1], [0.8, 0.7]), cmp([0.2, 0.1], [0.8, 0.8])]
  )
  assert [(r["method"], r["target_sparsity"], r["num_seeds"]) for r in rows] == [
    ("dense", 0.0, 3),
    ("magnitude", 0.5, 3),
  ]
  assert rows[1]["eodd"]["mean"] == pytest.approx(0.2)
  assert rows[1]["eodd"]["std"] == pytest.approx(np.std([0.4, 0.1, 0.1]))  # population std
  assert rows[1]["accuracy"] == pytest.approx({"mean": 0.7, "std": np.std([0.6, 0.7, 0.8]), "n": 3})
  assert rows[1]["eopp1"] == {"mean": None, "std": None, "n": 0}
  assert rows[0]["eodd"]["std"] == pytest.approx(0.0, abs=1e-15)
  from fairjax import report

  table = report.markdown_table(rows, compare.aggregate_columns(["a", "b"]))
  assert "0.200 ± 0.141" in table and "n/a" in table
  other = cmp([0.2, 0.4], [0.8, 0.6])
  other["sparsities"] = [0.9]
  with pytest.raises(ValueError, match="sparsities"):
    compare.aggregate([cmp([0.2, 0.4], [0.8, 0.6]), other])
  with pytest.raises(ValueError):
    compare.aggregate([])


def test_target_ratio_is_geometric_and_exact_at_the_end():
  from fairjax.pipeline import target_ratio

  for target, steps in ((0.9, 4), (0.5, 1), (0.99, 7), (0.3, 3)):
    r = [target_ratio(i, target, steps) for i in range(steps + 2)]
    assert r[0] == 0.0 and r[steps] == target and r[steps + 1] == target  # exact, no shortfall
    kept = [1 - x for x in r[: steps + 1]]
    # Every step keeps the same share of the still-kept weights: (1 - target)**(1 / steps).
    np.testing.assert_allclose(
      [b / a for a, b in zip(kept, kept[1:])], (1 - target) ** (1 / steps), rtol=1e-12
    )


def test_snnl_target_plan_counts_channels():
  from fairjax.pipeline import _snnl_target_plan

  totals = {"a": 8, "b": 5}
  # Per layer: round_half_up(0.5 * 8) = 4 and round_half_up(2.5) = 3 pruned in total; minus
  # those already pruned (a: 1, b: 0).
  assert _snnl_target_plan(0.5, {"a": 7, "b": 5}, totals, "layer") == {"a": 3, "b": 3}
  # Never the last channel of a layer: 0.99 * 8 -> 8, capped at 7.
  assert _snnl_target_plan(0.99, {"a": 8, "b": 5}, totals, "layer") == {"a": 7, "b": 4}
  # a already past its target (round(2.4) = 2 < 4 pruned): nothing, never revived; b: 2.
  assert _snnl_target_plan(0.3, {"a": 4, "b": 5}, totals, "layer") == {"a": 0, "b": 2}
  # Global: round_half_up(0.5 * 13) = 7 of 13 in total, 2 already pruned.
  assert _snnl_target_plan(0.5, {"a": 6, "b": 5}, totals, "global") == 5
  assert _snnl_target_plan(0.999, {"a": 8, "b": 5}, totals, "global") == 11  # 13 - 2 layers
