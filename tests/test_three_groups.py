"""A run with three sensitive groups end to end (the demo's data.third_group_fraction).

With more than two groups FairPrune averages the curvature of every group but the unprivileged
one (fairjax.pruning.fairprune.group_roles), so no single group is "the" privileged one:
results.json then holds ``privileged_group: null`` and ``privileged_groups`` (the README's
schema), and fairjax.report.validate_results accepts it.
"""

import numpy as np
import pytest


def test_three_group_run_writes_valid_results(tmp_path):
  from fairjax import pipeline, report
  from fairjax.config import base_config

  config = base_config()
  config.data.num_train, config.data.num_validation, config.data.num_test = 240, 90, 90
  config.data.image_size = 16
  config.data.third_group_fraction = 0.25
  config.model.kwargs.width, config.model.kwargs.hidden = 4, 8
  config.train.epochs, config.train.batch_size = 1, 30
  config.prune.method = "fairprune"
  config.prune.max_steps, config.prune.num_batches, config.prune.batch_size = 2, 1, 18
  config.prune.max_accuracy_drop = 1.0
  config.report.bootstrap_samples = 20
  results = pipeline.run(config, str(tmp_path))
  report.validate_results(results)
  names = results["dataset"]["group_names"]
  assert names == ["light", "dark", "other"]
  unpriv = results["unprivileged_group"]
  assert results["privileged_group"] is None
  assert sorted(results["privileged_groups"]) == sorted(n for n in names if n != unpriv)
  assert set(results["summary"]["group_accuracy_difference"]) == set(names)
  assert [s["step"] for s in results["steps"]] == [0, 1, 2]
  again = report.validate_results  # a privileged_groups naming no real group is rejected
  bad = dict(results, privileged_groups=["light", "nobody"])
  with pytest.raises(ValueError, match="privileged_groups"):
    again(bad)
  assert np.isfinite(results["pruned"]["accuracy"])


def test_demo_third_group_leaves_two_group_data_alone():
  from fairjax.config import base_config
  from fairjax.data import load_dataset

  config = base_config()
  config.data.num_train, config.data.num_validation, config.data.num_test = 64, 32, 32
  config.data.image_size = 16
  two = load_dataset(config.data, workdir="")
  config.data.third_group_fraction = 0.25
  three = load_dataset(config.data, workdir="")
  assert two.group_names == ("light", "dark") and three.group_names == ("light", "dark", "other")
  for split in ("train", "validation", "test"):
    moved = three.groups[split] != two.groups[split]
    assert moved.sum() == round(0.25 * len(moved))
    assert np.all(two.groups[split][moved] == 0) and np.all(three.groups[split][moved] == 2)
    np.testing.assert_array_equal(three.labels[split], two.labels[split])
