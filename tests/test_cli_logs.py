"""What the run's log tells a user: 1-based epochs, early stopping, metrics that skip classes.

In-process on the tiny demo (dense training and one test evaluation, no pruning): the same
``fairjax.pipeline`` functions the CLI runs, their absl log lines captured through Python logging.
"""

from __future__ import annotations

import logging
import re

from tests.cli_helpers import TINY, parse_config


def test_dense_log_is_one_based_and_says_early_stopping(tmp_path, caplog):
  from fairjax import pipeline

  # A learning rate too small to change any prediction: validation accuracy cannot improve
  # after epoch 1, so patience 1 stops training after epoch 2 of 5.
  config = parse_config(
    *TINY,
    "--config.data.num_test=16",
    "--config.train.epochs=5",
    "--config.train.patience=1",
    "--config.train.learning_rate=1e-9",
  )
  data, model = pipeline.load(config, str(tmp_path))
  with caplog.at_level(logging.INFO):
    dense = pipeline.train_dense(config, model, data, str(tmp_path))
    test = pipeline.evaluate_split(dense, data, "test", config)
  text = caplog.text
  assert "dense epoch 1/5" in text and "dense epoch 2/5" in text and "dense epoch 3/5" not in text
  # train.fit's own per-epoch line counts from 1 too (it ran epoch index 1 = the second epoch).
  assert re.search(r"\bepoch 2: loss", text) and not re.search(r"\bepoch 0\b", text)
  assert "early stopping after epoch 2/5" in text and "train.patience" in text

  # 16 test images, about 3 of them dark: some class has no dark sample, so Eodd skips it.
  assert test["skipped_classes"]["eodd"] > 0
  warnings = [
    r.getMessage()
    for r in caplog.records
    if r.levelno == logging.WARNING and "test metrics" in r.getMessage()
  ]
  assert len(warnings) == 1, warnings
  assert f"'eodd': {test['skipped_classes']['eodd']}" in warnings[0]
  assert f"(of {data.num_classes})" in warnings[0]


def test_no_skip_warning_when_every_class_is_in_every_group(tmp_path, caplog):
  import jax

  from fairjax import pipeline, train

  config = parse_config(*TINY, "--config.train.epochs=1")
  data, model = pipeline.load(config, str(tmp_path))
  state = train.create_train_state(
    model, jax.random.key(0), (16, 16, 3), pipeline._train_tx(config, 1, 1)
  )
  with caplog.at_level(logging.INFO):
    test = pipeline.evaluate_split(state, data, "test", config)
  assert max(test["skipped_classes"].values()) == 0 and test["num_unknown_group"] == 0
  assert "test metrics" not in caplog.text
