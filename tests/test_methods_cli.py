"""Every ``prune.method`` through the CLI on the tiny demo config of test_main (design.md s. 2, 4).

In-process (tests/cli_helpers.run_in_process: the CLI's command line through
``fairjax.main.run_command``, its log lines captured), so the five runs share one interpreter
and its compiled programs; test_main, test_snnl_cli and test_fairgrape_finetune keep real
``python -m fairjax.main`` subprocesses for the CLI's own side (stderr, exit codes, kill and
resume). Two dense epochs and two pruning steps per method.
"""

import os

import numpy as np
import pytest

from tests.cli_helpers import (
  PLOTS,
  TINY,
  assert_cli_error,
  latest_step,
  load_json,
  restore_step,
  run_in_process,
)

FAST = ["--config.train.epochs=2", "--config.prune.max_steps=2"]
# FairGRAPE: keep 0.9 per iteration, rate 0.15 -> r_1 = 0.1, r_2 = min(0.19, 0.15) = 0.15, so the
# schedule ends at step 2 (before max_steps=3 would), exercising its own stopping reason.
GRAPE = [
  "--config.prune.max_steps=3",
  "--config.prune.fairgrape_prune_rate=0.15",
  "--config.prune.fairgrape_keep_per_iter=0.9",
]
METHODS = ("magnitude", "random", "snip", "obd", "fairgrape")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Runs every method once (lazily, cached): method -> (workdir, completed process)."""
  cache = {}

  def get(method):
    if method not in cache:
      workdir = str(tmp_path_factory.mktemp(method))
      extra = GRAPE if method == "fairgrape" else []
      cache[method] = (
        workdir,
        run_in_process(workdir, *TINY, *FAST, f"--config.prune.method={method}", *extra, PLOTS),
      )
    return cache[method]

  return get


def _prunable_sizes(mask):
  import jax

  return [np.size(m) for m in jax.tree.leaves(mask)]


@pytest.mark.parametrize("method", METHODS)
def test_method_runs_and_reports(method, runs):
  import jax

  from fairjax import report

  workdir, res = runs(method)
  assert res.returncode == 0, res.stderr[-4000:]
  results = load_json(workdir)
  report.validate_results(results)
  assert results["method"] == method
  assert results["privileged_group"] in ("light", "dark")  # from dense validation accuracies
  assert f"{method} step 2" in res.stderr
  steps = results["steps"]
  assert [s["step"] for s in steps] == [0, 1, 2]
  sparsities = [s["sparsity"] for s in steps]
  assert all(a < b for a, b in zip(sparsities, sparsities[1:])), sparsities
  chosen = results["chosen_step"]
  assert results["pruned"]["sparsity"] == steps[chosen]["sparsity"]
  if chosen > 0:
    assert steps[chosen]["sparsity"] > 0

  # Figures: the trade-off always; the curvature histograms only for a curvature method (no
  # curvature pass is run for the others); intervals and no slimming key value.
  assert os.path.exists(os.path.join(workdir, "tradeoff.png"))
  assert os.path.exists(os.path.join(workdir, "saliency_histograms.png")) == (method == "obd")
  assert results["slimming"] is None
  assert "pruned - dense" in results["bootstrap"]["differences"]

  assert latest_step(workdir, "prune") == 2
  items = restore_step(workdir, "prune", max(chosen, 1))
  mask = items["mask"]
  pruned = 0
  for path, m in jax.tree_util.tree_leaves_with_path(mask):
    w = items["params"]
    for k in path:
      w = w[k.key]
    m, w = np.asarray(m), np.asarray(w)
    assert m.shape == w.shape and m.dtype == bool
    assert np.all(w[~m] == 0.0), path  # pruned weights are exactly zero in the checkpoint
    pruned += int((~m).sum())
  assert pruned > 0

  if method == "fairgrape":
    # Per layer, K = floor(n (1 - r)) weights are kept, so the prunable sparsity lies in
    # [r, r + layers / N): checks that the cumulative schedule, not step_fraction, was applied.
    sizes = _prunable_sizes(mask)
    slack = len(sizes) / sum(sizes)
    for s, r in zip(sparsities[1:], (0.1, 0.15)):
      assert r - 1e-9 <= s < r + slack, (s, r)
    assert "cumulative ratio reached prune rate 0.15" in res.stderr


def test_resuming_with_another_method_fails_with_one_line(runs):
  workdir, res = runs("magnitude")
  assert res.returncode == 0, res.stderr[-4000:]
  other = run_in_process(workdir, *TINY, *FAST, "--config.prune.method=random")
  assert_cli_error(other, "'magnitude'")
