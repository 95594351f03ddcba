"""``prune.method="snnl_channels"`` through the CLI on the tiny demo config (design.md section 3).

The reference runs are in-process (tests/cli_helpers.run_in_process: the CLI's command line
through ``fairjax.main.run_command``); the killed run is a real ``python -m fairjax.main``
subprocess (SIGKILL), resumed in-process. Two dense epochs and two pruning steps.

Hand-computed sizes used below (TINY: SmallCNN width 4, hidden 8, 16x16 images; the demo config
excludes conv0 and fc1 from pruning): conv1/kernel is 3*3*4*8 = 288 weights, 36 per output
channel; fc0/kernel is (4*4*8) x 8 = 1024 weights. The prunable kernels are conv1 + fc0 = 1312
weights, so every pruned conv1 channel adds exactly 36/1312 to the reported sparsity.
"""

import numpy as np
import pytest

from tests.cli_helpers import (
  TINY,
  assert_same_results,
  assert_trees_equal,
  kill_then_resume,
  latest_step,
  load_json,
  restore_step,
  run_in_process_ok,
)

FAST = [
  "--config.train.epochs=2",
  "--config.prune.max_steps=2",
  "--config.prune.method=snnl_channels",
  "--config.prune.speedup_batch_size=8",
  "--config.prune.speedup_repeats=3",
]
CONV1_CHANNELS, WEIGHTS_PER_CHANNEL, PRUNABLE_WEIGHTS = 8, 36, 288 + 1024
# results["slimming"] keys that are wall-clock measurements (differ between identical runs).
TIMING_KEYS = (
  "speedup",
  "masked_median_s",
  "slim_median_s",
  "masked_compile_s",
  "slim_compile_s",
  "masked_times_s",
  "slim_times_s",
)


@pytest.fixture(scope="module")
def snnl_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("snnl"))
  res = run_in_process_ok(workdir, *TINY, *FAST)
  return workdir, res, load_json(workdir)


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
  assert [s["channels_removed"] for s in steps] == [{"conv1": 0}, {"conv1": 1}, {"conv1": 2}]
  # Sparsity = pruned share of the prunable conv/dense KERNEL weights (the definition of every
  # method); the masked conv1 bias entries are not counted.
  for s in steps:
    assert s["sparsity"] == pytest.approx(
      WEIGHTS_PER_CHANNEL * s["channels_removed"]["conv1"] / PRUNABLE_WEIGHTS, abs=1e-12
    )
    assert s["validation"]["sparsity"] == s["sparsity"]
  assert results["pruned"]["sparsity"] == steps[results["chosen_step"]]["sparsity"]
  slim = results["slimming"]
  assert slim["params_slim"] < slim["params_dense"]
  assert slim["flops_slim"] <= slim["flops_dense"]
  if results["chosen_step"] == 0:
    assert slim["params_slim"] == slim["params_dense"]
  chosen = steps[results["chosen_step"]]
  channels = slim["channels"]["conv1"]
  assert channels["total"] == CONV1_CHANNELS
  assert channels["kept"] == chosen["channels_kept"]["conv1"]
  assert (
    channels["removed"] == chosen["channels_removed"]["conv1"] == len(channels["removed_indices"])
  )
  # Removing one conv1 channel deletes its kernel slice (36) and bias (1) and its 4*4 = 16 fc0
  # input rows of 8 weights each (NHWC flatten): 165 parameters.
  assert slim["params_dense"] - slim["params_slim"] == channels["removed"] * (36 + 1 + 16 * 8)
  # The measured inference speedup of the slimmed over the masked network.
  assert slim["speedup_batch_size"] == 8 and slim["speedup_repeats"] == 3
  assert slim["device"].startswith("cpu")
  assert len(slim["masked_times_s"]) == len(slim["slim_times_s"]) == 3
  assert slim["masked_median_s"] == pytest.approx(float(np.median(slim["masked_times_s"])))
  assert slim["slim_median_s"] == pytest.approx(float(np.median(slim["slim_times_s"])))
  assert slim["masked_median_s"] > 0 and slim["slim_median_s"] > 0
  assert slim["speedup"] == pytest.approx(slim["masked_median_s"] / slim["slim_median_s"])


def test_pruned_channels_output_exactly_zero_in_checkpoint(snnl_run):
  from fairjax import masks

  workdir, _, results = snnl_run
  assert latest_step(workdir, "prune") == 2
  step = max(results["chosen_step"], 1)
  items = restore_step(workdir, "prune", step)
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
  if step == results["chosen_step"]:
    assert dropped.tolist() == results["slimming"]["channels"]["conv1"]["removed_indices"]


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


def test_reported_sparsity_counts_kernel_weights_only_by_hand():
  """SmallCNN(width=2, hidden=4, BN), 8x8 images, the demo's exclusions (conv0, fc1): the
  prunable kernels are conv1 (3*3*2*4 = 72, 18 per channel) and fc0 ((2*2*4) x 4 = 64), 136
  weights. Dropping conv1 channels 1 and 3 removes 36 of them: sparsity 36/136. Counting the
  masked bias and BN scale/shift too would give (36 + 2 + 4) / (136 + 4 + 8) = 42/148."""
  import jax
  import jax.numpy as jnp

  from fairjax import masks, models
  from fairjax.config import base_config
  from fairjax.pipeline import _prunable, _sparsity

  model = models.get_model("small_cnn", num_classes=3, width=2, hidden=4, use_bn=True)
  params = model.init(jax.random.key(0, impl="rbg"), np.zeros((1, 8, 8, 3)))["params"]
  config = base_config()
  config.prune.exclude_layers = ("conv0", "fc1")
  mask = masks.init_mask(params, _prunable(config))
  assert _sparsity(mask) == 0.0
  # As snnl_channels does: all-True bias/BN leaves first, then the step's channel mask.
  mask = masks.channel_mask(params, mask, "conv1", jnp.ones(4, bool), norm_layer="bn1")
  mask = masks.channel_mask(
    params, mask, "conv1", jnp.array([True, False, True, False]), norm_layer="bn1"
  )
  assert _sparsity(mask) == 36 / 136
  report = masks.sparsity_report(mask, kernels_only=True)
  assert report["layers"] == {
    "conv1/kernel": {"total": 72, "kept": 36, "pruned": 36, "sparsity": 0.5},
    "fc0/kernel": {"total": 64, "kept": 64, "pruned": 0, "sparsity": 0.0},
  }
  # The unfiltered report still counts every masked leaf (what "sparsity" used to be).
  assert masks.sparsity_report(mask)["global"]["sparsity"] == 42 / 148
  # For an unstructured kernel-only mask (every other method) both definitions agree.
  plain = masks.prune_lowest(
    jax.tree.map(jnp.abs, params), masks.init_mask(params, _prunable(config)), 0.25, scope="layer"
  )
  assert _sparsity(plain) == masks.sparsity_report(plain)["global"]["sparsity"] == 34 / 136


# -- BatchNorm -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def snnl_bn_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("snnl_bn"))
  run_in_process_ok(workdir, *TINY, *FAST, "--config.model.kwargs.use_bn=True")
  return workdir, load_json(workdir)


def _test_images(workdir, results, n=64):
  """The first ``n`` test images of the run's own (synthetic) data, as in evaluation."""
  from fairjax.data import load_dataset
  from fairjax.data import pipeline as input_pipeline

  cfg = results["config"]["data"]
  data = load_dataset(cfg, workdir=workdir)
  batch = next(
    input_pipeline.eval_batches(data.sources["test"], batch_size=n, image_size=cfg["image_size"])
  )
  assert batch["valid"].all()
  return batch["image"]


def test_bn_pruned_channels_output_exactly_zero_and_slim_matches(snnl_bn_run):
  """With BatchNorm, a pruned channel's conv output is exactly 0, but BN would map it to
  ``(0 - running_mean) * scale / sqrt(running_var + eps) + shift``: nonzero unless BN's scale
  and shift are masked too. Checks the actual post-BN activations of every pruning checkpoint
  (inference and training mode), and that the slimmed network computes the masked one."""
  from fairjax import checkpoint, masks, models, slimming, snnl

  workdir, results = snnl_bn_run
  assert results["config"]["model"]["kwargs"]["use_bn"] is True
  model = models.get_model(
    "small_cnn",
    num_classes=results["dataset"]["num_classes"],
    **results["config"]["model"]["kwargs"],
  )
  images = _test_images(workdir, results)
  store = checkpoint.CheckpointStore(checkpoint.store_directory(workdir, "prune"))
  assert store.all_steps() == [1, 2]
  for step in store.all_steps():
    items = store.restore(step, {"params": None, "batch_stats": None, "mask": None})
    params, stats, mask = items["params"], items["batch_stats"], items["mask"]
    assert "bn1" in params and "bn1" in stats
    keep = np.asarray(masks.channel_keep_from_mask(mask, "conv1"))
    dropped = np.flatnonzero(~keep)
    assert dropped.size == step == results["steps"][step]["channels_removed"]["conv1"]
    variables = {"params": params, "batch_stats": stats}
    for train_mode in (False, True):
      kwargs = {"train": train_mode}
      if train_mode:
        kwargs["mutable"] = ["batch_stats"]  # batch statistics; the update is discarded
      acts = snnl.capture_activations(
        model, variables, images, ("conv1", "bn1"), apply_kwargs=kwargs
      )
      conv, bn = np.asarray(acts["conv1"]), np.asarray(acts["bn1"])
      assert np.all(conv[..., dropped] == 0.0), (step, train_mode)
      assert np.all(bn[..., dropped] == 0.0), (step, train_mode)  # exactly, before the ReLU
      assert np.all(np.abs(bn[..., keep]).max(axis=(0, 1, 2)) > 0)  # kept channels are alive

    for leaf in ("scale", "bias"):
      assert np.all(np.asarray(params["bn1"][leaf])[dropped] == 0.0)
      assert np.all(~np.asarray(mask["bn1"][leaf])[dropped])
      assert np.all(np.asarray(mask["bn1"][leaf])[keep])
    # Fine-tuning decays a pruned channel's running mean towards 0 but never reaches it, so the
    # hazard is real: only the masked scale/shift keep the channel at zero in inference.
    assert np.all(np.asarray(stats["bn1"]["mean"])[dropped] != 0.0)

    slim_model, slim_vars = slimming.slim_sequential_cnn(model, variables, {"conv1": keep})
    assert slim_model.conv_channels == (4, int(keep.sum()))
    np.testing.assert_allclose(
      np.asarray(slim_model.apply(slim_vars, images)),
      np.asarray(model.apply(variables, images)),
      rtol=1e-5,
      atol=1e-5,
    )
    if step == results["chosen_step"]:
      # BN running stats are buffers: not counted; BN scale + shift are 2 params per channel.
      assert results["slimming"]["params_slim"] == slimming.count_params(slim_vars)
      assert results["slimming"]["params_dense"] - results["slimming"][
        "params_slim"
      ] == dropped.size * (36 + 1 + 2 + 16 * 8)
  store.close()
  # Sparsity counts kernel weights only (BN scale/shift and conv bias are not weights here).
  for s in results["steps"]:
    assert s["sparsity"] == pytest.approx(
      WEIGHTS_PER_CHANNEL * s["channels_removed"]["conv1"] / PRUNABLE_WEIGHTS, abs=1e-12
    )


# -- kill and resume ---------------------------------------------------------------------------


def test_killed_snnl_run_resumes_to_identical_results(snnl_run, tmp_path):
  """Killed (SIGKILL) right after pruning step 1 is saved, then rerun with the same command: the
  same masks, params and metrics as the uninterrupted run of ``snnl_run``."""
  reference, _, ref_results = snnl_run
  workdir = str(tmp_path / "killed")
  res = kill_then_resume(workdir, ("checkpoints/prune/1",), *TINY, *FAST, resume_in_process=True)
  assert "snnl_channels: resuming after step 1" in res.stderr
  assert "dense model: restored the finished run" in res.stderr

  results = load_json(workdir)
  assert_same_results(results, ref_results, ("dense", "pruned", "steps", "summary", "chosen_step"))
  untimed = [
    {k: v for k, v in r["slimming"].items() if k not in TIMING_KEYS} for r in (ref_results, results)
  ]
  assert untimed[0] == untimed[1]
  for step in (1, 2):
    assert_trees_equal(*(restore_step(wd, "prune", step) for wd in (reference, workdir)))


def test_slimming_summary_without_timing_and_for_the_dense_model():
  """``prune.speedup_repeats=0`` leaves the measured fields null; a chosen dense model (no
  mask) keeps every channel and slims to itself."""
  import jax

  from fairjax import models, train
  from fairjax.config import base_config
  from fairjax.pipeline import _slimming_summary

  config = base_config()
  config.data.image_size = 8
  config.prune.speedup_repeats = 0
  model = models.get_model("small_cnn", num_classes=3, width=2, hidden=4)
  tx = train.make_optimizer("sgd", 0.1)
  state = train.create_train_state(model, jax.random.key(0, impl="rbg"), (8, 8, 3), tx)
  out = _slimming_summary(config, model, state)
  assert out["channels"] == {"conv1": {"total": 4, "kept": 4, "removed": 0, "removed_indices": []}}
  assert out["params_slim"] == out["params_dense"] == (54 + 2) + (72 + 4) + (64 + 4) + (12 + 3)
  assert out["flops_slim"] == out["flops_dense"]
  for key in TIMING_KEYS:
    assert out[key] is None, key
  assert out["speedup_repeats"] == 0 and out["speedup_batch_size"] == 64
