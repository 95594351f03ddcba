"""FairGRAPE's final full fine-tune (design.md section 4) through the CLI: recorded in
results.json, keeps the mask, and a run killed during it resumes to identical results.

The reference run is in-process (tests/cli_helpers.run_in_process: the CLI's command line
through ``fairjax.main.run_command``); the killed run is a real ``python -m fairjax.main``
subprocess (SIGKILL), resumed in-process, and its results must equal the reference's.
"""

import numpy as np
import pytest

from tests.cli_helpers import (
  TINY,
  assert_same_results,
  kill_then_resume,
  latest_step,
  load_json,
  restore_step,
  run_in_process_ok,
)

# Two iterations (r = 0.1, 0.15; see test_methods_cli), then two fine-tune epochs. With
# max_accuracy_drop=1.0 (TINY) every step is eligible, so a pruned step (>= 1) is chosen.
GRAPE = [
  "--config.train.epochs=2",
  "--config.prune.method=fairgrape",
  "--config.prune.max_steps=3",
  "--config.prune.fairgrape_prune_rate=0.15",
  "--config.prune.fairgrape_keep_per_iter=0.9",
  "--config.prune.fairgrape_finetune_epochs=2",
  "--config.prune.fairgrape_finetune_learning_rate=0.01",
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("grape"))
  return workdir, run_in_process_ok(workdir, *TINY, *GRAPE)


def _leaves(tree):
  import jax

  return dict(jax.tree_util.tree_flatten_with_path(tree)[0])


def test_final_finetune_is_recorded_and_keeps_the_mask(finished):
  from fairjax import report

  workdir, res = finished
  results = load_json(workdir)
  report.validate_results(results)
  chosen = results["chosen_step"]
  assert chosen >= 1
  ft = results["final_finetune"]
  assert ft["step"] == chosen and ft["epochs"] == 2 and ft["optimizer"] == "adam"
  assert ft["learning_rate"] == 0.01
  assert [h["epoch"] for h in ft["history"]] == [0, 1]
  assert ft["validation_before"] == results["steps"][chosen]["validation"]
  assert ft["validation_after"] == ft["history"][-1]["validation"]
  report.validate_results({**results, "pruned": ft["test_before"]})  # full split metrics
  # The mask is kept: same sparsity before and after, on validation and test.
  assert (
    results["pruned"]["sparsity"]
    == ft["test_before"]["sparsity"]
    == results["steps"][chosen]["sparsity"]
    > 0
  )
  assert "fairgrape final fine-tune epoch 2/2" in res.stderr

  before = restore_step(workdir, "prune", chosen)
  assert latest_step(workdir, "finetune") == 1
  after = restore_step(workdir, "finetune", 1)
  masks_before, masks_after = _leaves(before["mask"]), _leaves(after["mask"])
  assert masks_before.keys() == masks_after.keys()
  changed = 0
  for path, w in _leaves(after["params"]).items():
    w0 = np.asarray(_leaves(before["params"])[path])
    w = np.asarray(w)
    m = masks_after.get(path)
    if m is not None:
      np.testing.assert_array_equal(np.asarray(m), np.asarray(masks_before[path]))
      m = np.asarray(m)
      assert np.all(w[~m] == 0.0), path  # pruned weights stay exactly zero
      changed += int(np.sum(w[m] != w0[m]))
  assert changed > 0  # the fine-tune trained the kept weights


def test_killed_during_final_finetune_resumes_identically(finished, tmp_path):
  reference, _ = finished
  workdir = str(tmp_path / "killed")
  res = kill_then_resume(
    workdir, ("checkpoints/finetune/0",), *TINY, *GRAPE, resume_in_process=True
  )
  assert "fairgrape final fine-tune: resuming after epoch 1" in res.stderr  # 1-based in logs
  assert_same_results(
    load_json(reference),
    load_json(workdir),
    ("dense", "pruned", "steps", "summary", "chosen_step", "final_finetune"),
  )


def test_finetune_skipped_for_other_methods_and_zero_epochs():
  from fairjax import pipeline
  from fairjax.config import base_config

  c = base_config()
  c.prune.method = "fairgrape"
  c.prune.fairgrape_finetune_epochs = 0
  sentinel = object()
  # Returns before touching state, data or workdir.
  assert pipeline.finetune_final(c, None, sentinel, None, "/nonexistent", [], 3) == (sentinel, None)
  c.prune.fairgrape_finetune_epochs = 2
  assert pipeline.finetune_final(c, None, sentinel, None, "/nonexistent", [], 0)[1] is None
  c.prune.method = "magnitude"
  assert pipeline.finetune_final(c, None, sentinel, None, "/nonexistent", [], 3)[1] is None
