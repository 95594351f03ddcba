"""A user's own pruning method, registered with one call, runs through the whole job.

The method below lives in this test module (as it would in a user's script); no fairjax file
knows it. It runs through :func:`fairjax.pipeline.run` and inside a comparison
(:func:`fairjax.compare.run`, the configs/compare.py path), and the "Your own pruning method"
example of docs/api.md runs as written. Also: the registry's errors.
"""

import os
import re

import jax
import jax.numpy as jnp
import pytest

from fairjax.pruning import register_method

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "test_registry_square"
SEEN: list[tuple] = []  # (images shape, labels shape, groups shape) of every batch scored


def square_scores(variables, batches):
  """``w**2``: the magnitude ranking; records the batches it was given."""
  for images, labels, groups in batches:
    SEEN.append((tuple(images.shape), tuple(labels.shape), tuple(groups.shape)))
  return jax.tree.map(jnp.square, variables["params"])


register_method(NAME, square_scores)


def _tiny(config):
  config.data.num_train, config.data.num_validation, config.data.num_test = 128, 64, 64
  config.data.image_size = 16
  config.model.kwargs.width, config.model.kwargs.hidden = 4, 8
  config.train.epochs, config.train.batch_size = 1, 32
  config.prune.max_steps, config.prune.num_batches, config.prune.batch_size = 2, 1, 16
  config.prune.max_accuracy_drop = 1.0
  config.report.bootstrap_samples = 20
  return config


def test_own_method_runs_through_the_pipeline(tmp_path):
  from fairjax import pipeline, report
  from fairjax.config import PRUNE_METHODS, base_config, validate_config

  assert NAME in PRUNE_METHODS and PRUNE_METHODS[:7] == (
    "fairprune",
    "magnitude",
    "random",
    "snip",
    "obd",
    "fairgrape",
    "snnl_channels",
  )
  config = _tiny(base_config())
  config.prune.method = NAME
  validate_config(config)
  SEEN.clear()
  results = pipeline.run(config, str(tmp_path))
  report.validate_results(results)
  assert results["method"] == NAME
  assert [s["step"] for s in results["steps"]] == [0, 1, 2]
  assert 0 < results["steps"][1]["sparsity"] < results["steps"][2]["sparsity"]
  # One group-balanced scoring batch per step, as (images, labels, groups) tuples.
  assert SEEN == [((16, 16, 16, 3), (16,), (16,))] * 2
  assert os.path.exists(tmp_path / "results.json")


def test_own_method_in_a_comparison(tmp_path):
  from fairjax import checkpoint, compare, report
  from fairjax.config import load_config_file

  config = _tiny(load_config_file(os.path.join(REPO, "configs", "compare.py")))
  assert NAME in config.compare.methods  # configs/compare.py compares every registered method
  config.prune.finetune_epochs = 0
  config.compare.methods = (NAME, "magnitude")
  config.compare.sparsities = (0.5,)
  out = compare.run(config, str(tmp_path))
  rows = {r["method"]: r for r in out["rows"]}
  assert set(rows) == {"dense", NAME, "magnitude"}
  assert rows[NAME]["sparsity"] == pytest.approx(0.5, abs=1e-3)
  results = checkpoint.read_json(
    os.path.join(tmp_path, "runs", compare.run_name(NAME, 0.5), report.RESULTS_FILENAME)
  )
  assert results["method"] == NAME and results["chosen_step"] == 2
  # w**2 ranks as |w|: the same masks as the built-in magnitude method, so the same figures.
  for key in ("sparsity", "accuracy", "eodd"):
    assert rows[NAME][key] == rows["magnitude"][key], key


def test_registry_errors():
  from fairjax.config import ConfigError, base_config, validate_config
  from fairjax.pruning import PruneMethod, get_method, method_names

  with pytest.raises(ValueError, match="already registered"):
    register_method(NAME, square_scores)
  with pytest.raises(ValueError, match="already registered"):
    register_method("magnitude", square_scores)
  with pytest.raises(ValueError, match="letters, digits"):
    register_method("my method", square_scores)
  with pytest.raises(ValueError, match="PruneMethod or a scoring function"):
    register_method("not_callable", 3)
  assert isinstance(get_method(NAME), PruneMethod)
  config = base_config()
  config.prune.method = "nope"
  with pytest.raises(ConfigError) as e:
    validate_config(config)
  message = str(e.value)
  assert "\n" not in message and "config.prune.method='nope'" in message
  assert all(name in message for name in method_names()) and NAME in message
  with pytest.raises(ConfigError, match="config.prune.method='nope'"):
    get_method("nope")


def _doc_blocks() -> list[str]:
  with open(os.path.join(REPO, "docs", "api.md")) as f:
    text = f.read()
  start = text.index("## Your own pruning method")
  section = text[start : text.index("\n## ", start + 1)]
  return re.findall(r"```python\n(.*?)```", section, re.S)


def test_api_md_example_runs(tmp_path, monkeypatch):
  """docs/api.md, "Your own pruning method": both blocks, as written, in one namespace."""
  blocks = _doc_blocks()
  assert len(blocks) == 2 and "register_method(" in blocks[0]
  monkeypatch.chdir(tmp_path)  # the example writes its run directory under the cwd
  namespace: dict = {"__name__": "api_md_registry"}
  for block in blocks:
    exec(compile(block, "docs/api.md", "exec"), namespace)
  assert namespace["results"]["method"] == "taylor"
