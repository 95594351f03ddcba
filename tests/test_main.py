"""The command line end to end on a tiny demo config (subprocesses: absl flags are global)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = [
    "--config.data.num_train=256", "--config.data.num_validation=96", "--config.data.num_test=96",
    "--config.data.image_size=16", "--config.model.kwargs.width=4", "--config.model.kwargs.hidden=8",
    "--config.train.epochs=3", "--config.train.batch_size=32", "--config.train.patience=10",
    "--config.prune.num_batches=1", "--config.prune.batch_size=16", "--config.prune.max_steps=3",
    "--config.prune.patience=10", "--config.prune.step_fraction=0.05",
    "--config.prune.max_accuracy_drop=1.0", "--config.prune.scope=layer",
]


def _cmd(workdir, *extra):
  return [sys.executable, "-m", "fairjax.main", "--config=configs/demo.py",
          f"--workdir={workdir}", *TINY, *extra]


def _run(workdir, *extra, timeout=600):
  return subprocess.run(_cmd(workdir, *extra), cwd=REPO, capture_output=True, text=True,
                        timeout=timeout)


def _load(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  res = _run(workdir)
  assert res.returncode == 0, res.stderr[-4000:]
  return workdir, res


def test_demo_runs_end_to_end(finished_run):
  from fairjax import report

  workdir, res = finished_run
  results = _load(workdir)
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


def _kill_when(proc, path, timeout=300):
  start = time.time()
  while not os.path.exists(path):
    if proc.poll() is not None:
      raise AssertionError(f"run ended before {path} appeared:\n{proc.stderr.read()[-3000:]}")
    if time.time() - start > timeout:
      proc.kill()
      raise AssertionError(f"{path} never appeared")
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def test_killed_run_resumes_to_identical_results(finished_run, tmp_path):
  from fairjax import checkpoint

  reference, _ = finished_run
  workdir = str(tmp_path / "killed")
  # Kill during dense training (after epoch 0 is saved), then during pruning (after step 1).
  for marker in ("checkpoints/dense/0", "checkpoints/prune/1"):
    proc = subprocess.Popen(_cmd(workdir), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _kill_when(proc, os.path.join(workdir, marker))
    assert not os.path.exists(os.path.join(workdir, "results.json"))
  res = _run(workdir)
  assert res.returncode == 0, res.stderr[-4000:]
  assert "resuming after step 1" in res.stderr

  a, b = _load(reference), _load(workdir)
  for key in ("dense", "pruned", "steps", "summary", "chosen_step"):
    assert a[key] == b[key], key
  for wd in (reference, workdir):
    assert os.path.isdir(checkpoint.store_directory(wd, "prune"))
  masks = []
  for wd in (reference, workdir):
    store = checkpoint.CheckpointStore(checkpoint.store_directory(wd, "prune"))
    items = store.restore(a["chosen_step"], {"params": None, "batch_stats": None, "mask": None})
    masks.append(items)
    store.close()
  import jax
  for x, y in zip(jax.tree.leaves(masks[0]), jax.tree.leaves(masks[1])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("override,needle", [
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
    ("--config.prune.snnl_temperature=0", "config.prune.snnl_temperature=0"),
    ("--config.prune.speedup_repeats=-1", "config.prune.speedup_repeats=-1"),
    ("--config.prune.speedup_batch_size=0", "config.prune.speedup_batch_size=0"),
    ("--config.prune.fairgrape_finetune_epochs=-1", "config.prune.fairgrape_finetune_epochs=-1"),
    ("--config.prune.fairgrape_finetune_optimizer=lamb",
     "config.prune.fairgrape_finetune_optimizer='lamb'"),
    ("--config.prune.fairgrape_finetune_learning_rate=0",
     "config.prune.fairgrape_finetune_learning_rate=0"),
    ("--config.prune.target_sparsity=1.0", "config.prune.target_sparsity=1.0"),
    ("--config.parallel.num_devices=-1", "config.parallel.num_devices=-1"),
    ("--config.prune.curvature_chunk_size=-4", "config.prune.curvature_chunk_size=-4"),
])
def test_bad_config_values_fail_fast_with_one_line(override, needle, tmp_path):
  start = time.time()
  res = _run(str(tmp_path), override, timeout=120)
  assert res.returncode == 2
  assert needle in res.stderr and "Traceback" not in res.stderr
  assert res.stderr.strip().splitlines()[-1].startswith("fairjax: error:")
  assert not os.path.exists(tmp_path / "checkpoints")  # nothing was computed


def test_missing_dataset_directory_names_the_path(tmp_path):
  missing = tmp_path / "no_such_isic"
  res = subprocess.run(
      [sys.executable, "-m", "fairjax.main", "--config=configs/isic.py",
       f"--workdir={tmp_path / 'wd'}", f"--config.data.manual_dir={missing}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert res.returncode == 2
  assert str(missing) in res.stderr and "Traceback" not in res.stderr
  assert "ISIC" in res.stderr  # says what is expected / where to get it


@pytest.mark.parametrize("key,value", [("minority_contrast", 0.0), ("minority_contrast", 1.5),
                                       ("shortcut_strength", -0.1), ("shortcut_strength", 0.6)])
def test_demo_generator_knobs_are_validated(key, value):
  from fairjax.config import ConfigError, base_config, validate_config

  config = base_config()
  config.data[key] = value
  with pytest.raises(ConfigError, match=f"config.data.{key}={value}"):
    validate_config(config)
