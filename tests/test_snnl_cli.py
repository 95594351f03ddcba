"""``prune.method="snnl_channels"`` through the CLI on the tiny demo config (design.md section 3).

Subprocesses, as in test_main (absl flags are global); two dense epochs and two pruning steps.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.test_main import REPO, TINY

FAST = ["--config.train.epochs=2", "--config.prune.max_steps=2",
        "--config.prune.method=snnl_channels"]


def _run(workdir, *extra, timeout=600):
  cmd = [sys.executable, "-m", "fairjax.main", "--config=configs/demo.py",
         f"--workdir={workdir}", *TINY, *FAST, *extra]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def snnl_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("snnl"))
  res = _run(workdir)
  assert res.returncode == 0, res.stderr[-4000:]
  with open(os.path.join(workdir, "results.json")) as f:
    return workdir, res, json.load(f)


def test_snnl_run_reports_and_prunes_channels(snnl_run):
  from fairjax import report

  _, res, results = snnl_run
  report.validate_results(results)
  assert results["method"] == "snnl_channels"
  assert "snnl_channels step 2" in res.stderr
  steps = results["steps"]
  assert [s["step"] for s in steps] == [0, 1, 2]
  # SmallCNN with width 4: conv1 (the last conv, the default layer) has 8 channels; a fraction
  # of 0.1 prunes round_half_up(0.8) = 1 channel per step.
  kept = [s["channels_kept"] for s in steps]
  assert kept == [{"conv1": 8}, {"conv1": 7}, {"conv1": 6}], kept
  sparsities = [s["sparsity"] for s in steps]
  assert all(a < b for a, b in zip(sparsities, sparsities[1:])), sparsities
  assert results["pruned"]["sparsity"] == steps[results["chosen_step"]]["sparsity"]
  slim = results["slimming"]
  assert slim["params_slim"] < slim["params_dense"]
  assert slim["flops_slim"] <= slim["flops_dense"]
  if results["chosen_step"] == 0:
    assert slim["params_slim"] == slim["params_dense"]


def test_pruned_channels_output_exactly_zero_in_checkpoint(snnl_run):
  from fairjax import checkpoint, masks

  workdir, _, results = snnl_run
  store = checkpoint.CheckpointStore(checkpoint.store_directory(workdir, "prune"))
  assert store.latest_step() == 2
  step = max(results["chosen_step"], 1)
  items = store.restore(step, {"params": None, "batch_stats": None, "mask": None})
  store.close()
  params, mask = items["params"], items["mask"]
  keep = np.asarray(masks.channel_keep_from_mask(mask, "conv1"))
  assert int(keep.sum()) == results["steps"][step]["channels_kept"]["conv1"]
  dropped = np.flatnonzero(~keep)
  assert dropped.size == 8 - keep.sum() > 0
  kernel = np.asarray(params["conv1"]["kernel"])
  assert np.all(kernel[..., dropped] == 0.0)
  assert np.all(kernel[..., keep] != 0.0)  # kept channels are untouched (no stray masking)
  # The bias is masked too, so a pruned channel cannot emit ReLU(b) (design.md section 3).
  assert np.all(np.asarray(params["conv1"]["bias"])[dropped] == 0.0)
  assert np.all(~np.asarray(mask["conv1"]["bias"])[dropped])
  for norm in ("bn1",):
    if norm in params:
      for leaf in ("scale", "bias"):
        assert np.all(np.asarray(params[norm][leaf])[dropped] == 0.0)
  # Other layers were not touched by channel masking (fc0 consumes conv1 but is not masked).
  assert np.all(np.asarray(mask["fc0"]["kernel"]))


def test_snnl_layers_default_pairs_batchnorm_and_rejects_bad_layers():
  import jax

  from fairjax import models
  from fairjax.config import ConfigError, base_config
  from fairjax.pipeline import snnl_layers

  model = models.get_model("small_cnn", num_classes=4, width=4, hidden=8, use_bn=True)
  params = model.init(jax.random.key(0), np.zeros((1, 16, 16, 3)), train=False)["params"]
  config = base_config()
  assert snnl_layers(config, params) == (("conv1",), {"conv1": "bn1"})  # last conv + its BN
  config.prune.snnl_layers = ("fc0",)
  with pytest.raises(ConfigError, match="not a 2-D conv layer"):
    snnl_layers(config, params)
  config.prune.snnl_layers = ("conv0",)
  config.prune.exclude_layers = ("conv0",)
  with pytest.raises(ConfigError, match="excluded from pruning"):
    snnl_layers(config, params)
