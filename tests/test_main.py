"""The command line end to end on a tiny demo config.

The reference run is run in-process (tests/cli_helpers.run_in_process: the same command line
through ``fairjax.main.run_command``, its log lines captured); the killed-and-resumed run is a
real ``python -m fairjax.main`` subprocess (SIGKILL), so its results equal to the reference's
also show the in-process run computes what the CLI computes, and its stderr shows the progress.

Bad config values are checked in-process, through the config flag parsing and the
``validate_config`` call that ``fairjax.main`` runs before computing anything; one subprocess
test per kind of bad input checks the CLI's side (one line on stderr, exit code 2).
"""

import os

import pytest

from tests.cli_helpers import (
  PLOTS,
  TINY,
  assert_cli_error,
  assert_same_results,
  assert_trees_equal,
  config_error,
  kill_then_resume,
  load_json,
  parse_config,
  restore_step,
  run_cli,
  run_in_process,
  run_in_process_ok,
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  return workdir, run_in_process_ok(workdir, *TINY, PLOTS)


def test_demo_runs_end_to_end(finished_run):
  from fairjax import report

  workdir, res = finished_run
  results = load_json(workdir)
  report.validate_results(results)
  assert results["method"] == "fairprune"
  assert results["fairness_convention"] == "sum"
  assert set(results["dense"]["group_accuracy"]) == {"light", "dark"}
  assert [s["step"] for s in results["steps"]] == list(range(len(results["steps"])))
  assert len(results["steps"]) == 4  # dense + 3 pruning steps (no stopping rule can fire)
  sparsities = [s["sparsity"] for s in results["steps"]]
  assert sparsities == sorted(sparsities) and sparsities[-1] > 0.1
  for name in ("tradeoff.png", "saliency_histograms.png"):
    with open(os.path.join(workdir, name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert "fairprune step 3" in res.stderr  # progress is shown
  assert results["slimming"] is None  # the README's promise for every method but snnl_channels


def test_results_carry_paired_intervals_and_the_mechanism(finished_run):
  import numpy as np

  from fairjax import bootstrap, metrics

  workdir, res = finished_run
  results = load_json(workdir)
  boot, summary = results["bootstrap"], results["summary"]
  assert boot["num_samples"] == 1000 and boot["confidence"] == 0.95 and boot["seed"] == 0
  # The intervals are of the reported models: their estimates are results' own test metrics.
  for name in ("dense", "pruned"):
    for key in ("accuracy", "eodd"):
      assert boot["models"][name][key]["estimate"] == pytest.approx(results[name][key])
  diff = boot["differences"]["pruned - dense"]
  assert summary["accuracy_difference"]["estimate"] == pytest.approx(
    results["pruned"]["accuracy"] - results["dense"]["accuracy"]
  )
  assert summary["mechanism"] == diff["mechanism"]["group_accuracy"]["label"]
  assert summary["mechanism_macro_f1"] == diff["mechanism"]["group_macro_f1"]["label"]
  assert summary["mechanism"] in bootstrap.MECHANISM_LABELS
  # The dense model's worst group on the test split (the kernel's reference for the label).
  dense_acc = results["dense"]["group_accuracy"]
  assert dense_acc[summary["worse_off_group"]] == min(dense_acc.values())
  # test_predictions.npz holds exactly what was resampled: the same bootstrap, recomputed from
  # it without any model, gives the stored intervals.
  stored = np.load(os.path.join(workdir, "test_predictions.npz"))
  shape = {
    "num_classes": results["dataset"]["num_classes"],
    "num_groups": 2,
    "group_names": results["dataset"]["group_names"],
  }
  for name in ("dense", "pruned"):
    m = metrics.evaluate(stored["labels"], stored[name], stored["groups"], **shape)
    assert m["accuracy"] == results[name]["accuracy"] and m["eodd"] == results[name]["eodd"]
  again = bootstrap.bootstrap(
    stored["labels"],
    stored["groups"],
    {"dense": stored["dense"], "pruned": stored["pruned"]},
    **shape,
    num_samples=1000,
    seed=0,
    pairs=[("pruned", "dense")],
  )
  assert again["differences"] == json_roundtrip(boot["differences"])
  # The last lines say it in words, with the paths of the files written.
  tail = res.stderr[res.stderr.index("what was pruned: fairprune") :]
  assert "mechanism (test split, pruned − dense, 95% paired bootstrap" in tail
  assert summary["mechanism"] in tail and "reported model:" in tail
  for name in (
    "results.json",
    "test_predictions.npz",
    "tradeoff.png",
    "saliency_histograms.png",
    "wall_time.json",
  ):
    assert os.path.join(workdir, name) in tail, name


def json_roundtrip(obj):
  import json

  return json.loads(json.dumps(obj))


def test_killed_run_resumes_to_identical_results(finished_run, tmp_path):
  from fairjax import checkpoint

  reference, _ = finished_run
  workdir = str(tmp_path / "killed")
  # Kill during dense training (after epoch 0 is saved), then during pruning (after step 1).
  res = kill_then_resume(workdir, ("checkpoints/dense/0", "checkpoints/prune/1"), *TINY)
  assert "resuming after step 1" in res.stderr
  assert "fairprune step 3" in res.stderr  # the CLI shows progress on stderr

  a, b = load_json(reference), load_json(workdir)
  assert_same_results(a, b, ("dense", "pruned", "steps", "summary", "chosen_step", "bootstrap"))
  # wall_seconds covers the two killed sessions too (each counted up to its last file).
  sessions = load_json(workdir, "wall_time.json")["sessions"]
  assert [s.get("killed", False) for s in sessions] == [True, True, False]
  assert all(s["seconds"] > 0 for s in sessions)
  assert b["wall_seconds"] == pytest.approx(sum(s["seconds"] for s in sessions))
  assert b["wall_seconds"] > sessions[-1]["seconds"]
  for wd in (reference, workdir):
    assert os.path.isdir(checkpoint.store_directory(wd, "prune"))
  assert_trees_equal(*(restore_step(wd, "prune", a["chosen_step"]) for wd in (reference, workdir)))


@pytest.mark.parametrize(
  "override,needle",
  [
    ("--config.prune.max_sparsity=1.5", "config.prune.max_sparsity=1.5"),
    ("--config.prune.beta=0", "config.prune.beta=0"),
    ("--config.model.name=alexnet", "config.model.name='alexnet'"),
    ("--config.prune.method=magic", "config.prune.method='magic'"),
    ("--config.fairness_convention=median", "config.fairness_convention='median'"),
    ("--config.prune.method=magic", "fairgrape"),  # the message lists the valid methods
    ("--config.prune.fairgrape_keep_per_iter=1.5", "config.prune.fairgrape_keep_per_iter=1.5"),
    ("--config.prune.fairgrape_prune_rate=1.0", "config.prune.fairgrape_prune_rate=1.0"),
    ("--config.prune.fairgrape_retrain_epochs=-1", "config.prune.fairgrape_retrain_epochs=-1"),
    ("--config.prune.snnl_channels_per_step=2.5", "config.prune.snnl_channels_per_step=2.5"),
    ("--config.prune.snnl_scope=network", "config.prune.snnl_scope='network'"),
    ("--config.report.bootstrap_samples=0", "config.report.bootstrap_samples=0"),
    ("--config.report.bootstrap_seed=-1", "config.report.bootstrap_seed=-1"),
    ("--config.report.confidence=1.0", "config.report.confidence=1.0"),
    ("--config.prune.snnl_temperature=0", "config.prune.snnl_temperature=0"),
    ("--config.prune.speedup_repeats=-1", "config.prune.speedup_repeats=-1"),
    ("--config.prune.speedup_batch_size=0", "config.prune.speedup_batch_size=0"),
    ("--config.prune.fairgrape_finetune_epochs=-1", "config.prune.fairgrape_finetune_epochs=-1"),
    (
      "--config.prune.fairgrape_finetune_optimizer=lamb",
      "config.prune.fairgrape_finetune_optimizer='lamb'",
    ),
    (
      "--config.prune.fairgrape_finetune_learning_rate=0",
      "config.prune.fairgrape_finetune_learning_rate=0",
    ),
    ("--config.prune.target_sparsity=1.0", "config.prune.target_sparsity=1.0"),
    ("--config.parallel.num_devices=-1", "config.parallel.num_devices=-1"),
    ("--config.prune.curvature_chunk_size=-4", "config.prune.curvature_chunk_size=-4"),
    (
      "--config.prune.curvature_memory_budget_bytes=-1",
      "config.prune.curvature_memory_budget_bytes=-1",
    ),
  ],
)
def test_bad_config_values_fail_fast_with_one_line(override, needle):
  """In-process: the override parsed as the CLI parses it, then the ``validate_config`` call
  that ``fairjax.main`` makes before anything is computed."""
  message = config_error(*TINY, override)
  assert needle in message, message


def test_tiny_demo_config_is_valid():
  from fairjax.config import validate_config

  validate_config(parse_config(*TINY))  # so each failure above is its override's


def test_bad_config_value_cli_contract(tmp_path):
  """End to end through the CLI: the message is the last stderr line, exit code 2, no
  traceback, and nothing was computed."""
  res = run_cli(str(tmp_path), *TINY, "--config.prune.method=magic", timeout=120)
  assert_cli_error(res, "config.prune.method='magic'", "fairgrape")
  assert not os.path.exists(tmp_path / "checkpoints")  # nothing was computed


def test_missing_dataset_directory_names_the_path(tmp_path):
  """An error raised inside the run (the dataset loader), not by validate_config: in-process
  through the CLI's code path (test_cli_errors' manual_dir_missing case runs it as a real
  subprocess too)."""
  missing = tmp_path / "no_such_isic"
  res = run_in_process(
    str(tmp_path / "wd"),
    f"--config.data.manual_dir={missing}",
    "--config.model.require_pretrained=False",
    config="configs/isic.py",
  )
  # A multi-line message (the expected files and where to get them), so not assert_cli_error.
  assert res.returncode == 2
  assert str(missing) in res.stderr and "Traceback" not in res.stderr
  assert "ISIC" in res.stderr  # says what is expected / where to get it
  assert "fairjax: error:" in res.stderr


@pytest.mark.parametrize(
  "key,value",
  [
    ("minority_contrast", 0.0),
    ("minority_contrast", 1.5),
    ("shortcut_strength", -0.1),
    ("shortcut_strength", 0.6),
  ],
)
def test_demo_generator_knobs_are_validated(key, value):
  from fairjax.config import ConfigError, base_config, validate_config

  config = base_config()
  config.data[key] = value
  with pytest.raises(ConfigError, match=f"config.data.{key}={value}"):
    validate_config(config)


def test_story_says_when_no_step_lowered_eodd(finished_run):
  import copy

  from fairjax import pipeline

  workdir, _ = finished_run
  results = copy.deepcopy(load_json(workdir))
  dense_val = results["steps"][0]["validation"]
  for s in results["steps"][1:]:  # every step now worse than dense on validation Eodd
    s["validation"]["eodd"] = dense_val["eodd"] + 0.1
  results["chosen_step"] = 0
  lines = pipeline.story(
    results, "validation Eodd did not improve for 5 steps", ["x/results.json"], "x/checkpoints"
  )
  text = "\n".join(lines)
  assert (
    "No pruning step lowered validation Eodd below the dense model's "
    f"({dense_val['eodd']:.4f}) while staying within max_accuracy_drop=1.0"
  ) in text
  assert "reported model: the dense model (step 0, nothing pruned)" in text
  assert "the loop stopped because validation Eodd did not improve for 5 steps" in text
  assert lines[-1] == "files written: x/results.json; checkpoints under x/checkpoints"
  assert "No pruning step" not in "\n".join(pipeline.story(load_json(workdir), None, [], "c"))
