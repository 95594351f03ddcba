"""Shared helpers for the tests that drive ``python -m fairjax.main``.

Two ways to run the CLI. :func:`run_cli` starts ``python -m fairjax.main`` as a subprocess (in
the repo root, with the current interpreter): for the CLI's own contract (exit codes, the stderr
it prints, kill and resume). :func:`run_in_process` runs the same command line through
``fairjax.main.run_command`` in the test process, with a fresh ``absl.flags.FlagValues`` (absl's
global flags are never touched), and captures fairjax's log lines: for tests that check what a
run computes and writes, at no interpreter/JAX start-up cost and reusing the process's compiled
programs. Each test file keeps its own config overrides (``TINY`` plus its method's flags) and
passes them explicitly: ``run_cli(workdir, *TINY, *FAST)``.

Bad-config checks do not need a subprocess: :func:`parse_config` applies ``--config.a.b=v``
overrides through the same ``ml_collections`` config flag the CLI defines, and the tests then call
:func:`fairjax.config.validate_config`, which ``fairjax.main.main`` runs before anything is
computed (test_main keeps one subprocess test of the CLI's side of that contract).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from typing import Any, Sequence

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = "configs/demo.py"

# A tiny demo run: 16x16 images, a 4-channel SmallCNN, 3 epochs, 3 pruning steps, no stopping
# rule that can fire early, no figures (tests of the figures turn them on again with PLOTS).
# Seconds of compute; most of a run is JAX start-up and compilation.
TINY = [
  "--config.data.num_train=256",
  "--config.data.num_validation=96",
  "--config.data.num_test=96",
  "--config.data.image_size=16",
  "--config.model.kwargs.width=4",
  "--config.model.kwargs.hidden=8",
  "--config.train.epochs=3",
  "--config.train.batch_size=32",
  "--config.train.patience=10",
  "--config.prune.num_batches=1",
  "--config.prune.batch_size=16",
  "--config.prune.max_steps=3",
  "--config.prune.patience=10",
  "--config.prune.step_fraction=0.05",
  "--config.prune.max_accuracy_drop=1.0",
  "--config.prune.scope=layer",
  "--config.report.plots=False",
]
PLOTS = "--config.report.plots=True"  # after TINY: the last override of a key wins

# What the checkpoint stores of a pruning / fine-tuning step hold.
STEP_ITEMS = ("params", "batch_stats", "mask")


def cli_cmd(workdir: str, *overrides: str, config: str = DEMO) -> list[str]:
  """The command line of ``python -m fairjax.main --config=CONFIG --workdir=WORKDIR *overrides``."""
  return [
    sys.executable,
    "-m",
    "fairjax.main",
    f"--config={config}",
    f"--workdir={workdir}",
    *overrides,
  ]


def run_cli(
  workdir: str, *overrides: str, config: str = DEMO, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
  """Runs the CLI to its end; stdout/stderr captured as text."""
  return subprocess.run(
    cli_cmd(workdir, *overrides, config=config),
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def run_cli_ok(
  workdir: str, *overrides: str, config: str = DEMO, timeout: float = 600
) -> subprocess.CompletedProcess:
  """:func:`run_cli`, asserting exit code 0 (the failure shows the end of stderr)."""
  res = run_cli(workdir, *overrides, config=config, timeout=timeout)
  assert res.returncode == 0, res.stderr[-4000:]
  return res


def run_in_process(
  workdir: str, *overrides: str, config: str = DEMO
) -> subprocess.CompletedProcess:
  """The command line of :func:`run_cli`, run in this process by ``fairjax.main.run_command``.

  Returns what :func:`run_cli` returns: ``stderr`` holds the log lines the CLI would print
  (fairjax's INFO lines, every library's warnings; messages only, without absl's prefix), then,
  for bad input, the CLI's ``fairjax: error: ...`` lines with ``returncode`` 2. Any other
  exception propagates with its traceback.
  """
  import logging as pylogging

  from absl import flags
  from absl import logging as absl_logging

  from fairjax import main

  lines: list[str] = []

  class _Lines(pylogging.Handler):
    def emit(self, record: pylogging.LogRecord) -> None:
      lines.append(record.getMessage())

  handler = _Lines(pylogging.INFO)
  handler.addFilter(main._OnlyFairjaxInfo())  # as main() filters the CLI's log: no orbax INFO
  logger = absl_logging.get_absl_logger()
  level, propagate = logger.level, logger.propagate
  logger.setLevel(pylogging.INFO)
  logger.propagate = False  # the lines go to the result, not to the root logger's handlers
  logger.addHandler(handler)
  argv = ["fairjax.main", f"--config={os.path.join(REPO, config)}", f"--workdir={workdir}"]
  returncode = 0
  try:
    main.run_command([*argv, *overrides], flags.FlagValues())
  except main.CliError as e:
    lines += [*e.details, e.line]
    returncode = main.EXIT_BAD_INPUT
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate
  return subprocess.CompletedProcess(argv, returncode, "", "\n".join(lines) + "\n")


def run_in_process_ok(
  workdir: str, *overrides: str, config: str = DEMO
) -> subprocess.CompletedProcess:
  """:func:`run_in_process`, asserting that it ended without a CLI error."""
  res = run_in_process(workdir, *overrides, config=config)
  assert res.returncode == 0, res.stderr[-4000:]
  return res


def load_json(workdir: str, name: str = "results.json") -> Any:
  with open(os.path.join(workdir, name)) as f:
    return json.load(f)


def kill_when(proc: subprocess.Popen, path: str, timeout: float = 300) -> None:
  """SIGKILLs ``proc`` as soon as ``path`` exists (fails if the run ends or times out first)."""
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


def kill_then_resume(
  workdir: str,
  markers: Sequence[str],
  *overrides: str,
  config: str = DEMO,
  timeout: float = 600,
  resume_in_process: bool = False,
) -> subprocess.CompletedProcess:
  """Starts the run once per marker and SIGKILLs it when ``workdir/marker`` appears (a
  checkpoint), checking that no results.json was written; then reruns the same command to its
  end (exit code 0) and returns that last, resumed run: a subprocess too, or with
  ``resume_in_process`` :func:`run_in_process` (test_main keeps the all-subprocess contract)."""
  for marker in markers:
    proc = subprocess.Popen(
      cli_cmd(workdir, *overrides, config=config),
      cwd=REPO,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    kill_when(proc, os.path.join(workdir, marker))
    assert not os.path.exists(os.path.join(workdir, "results.json")), marker
  if resume_in_process:
    return run_in_process_ok(workdir, *overrides, config=config)
  return run_cli_ok(workdir, *overrides, config=config, timeout=timeout)


def assert_same_results(a: dict, b: dict, keys: Sequence[str]) -> None:
  for key in keys:
    assert a[key] == b[key], key


def restore_step(workdir: str, store: str, step: int, items: Sequence[str] = STEP_ITEMS) -> dict:
  """``items`` of checkpoint ``step`` of the run's ``store`` ("prune", "finetune", "dense")."""
  from fairjax import checkpoint

  ckpt = checkpoint.CheckpointStore(checkpoint.store_directory(workdir, store))
  try:
    return ckpt.restore(step, {k: None for k in items})
  finally:
    ckpt.close()


def latest_step(workdir: str, store: str) -> int | None:
  """The newest checkpoint step of the run's ``store``."""
  from fairjax import checkpoint

  ckpt = checkpoint.CheckpointStore(checkpoint.store_directory(workdir, store))
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


def assert_trees_equal(a: Any, b: Any) -> None:
  """Same pytree structure and bit-identical leaves."""
  import jax

  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_cli_error(res: subprocess.CompletedProcess, *needles: str) -> str:
  """The CLI's bad-input contract: exit code 2, no traceback, and the last stderr line is the
  one-line ``fairjax: error: ...`` message (returned), containing every needle."""
  assert res.returncode == 2, res.stderr[-4000:]
  assert "Traceback" not in res.stderr, res.stderr[-4000:]
  last = res.stderr.strip().splitlines()[-1]
  assert last.startswith("fairjax: error:"), res.stderr[-2000:]
  for needle in needles:
    assert needle in last, (needle, last)
  return last


def parse_config(*overrides: str, config: str = DEMO):
  """The ``ConfigDict`` the CLI would run for ``--config=CONFIG *overrides``, parsed in-process
  by the same ``ml_collections`` config flag as ``fairjax.main`` (locked, as there), without
  touching the global absl flags."""
  from absl import flags
  from ml_collections import config_flags

  argv = ["fairjax.main", f"--config={os.path.join(REPO, config)}", *overrides]
  flag_values = flags.FlagValues()
  # sys_argv: the overrides are looked up in this argv instead of the test runner's sys.argv.
  holder = config_flags.DEFINE_config_file(
    "config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv
  )
  with warnings.catch_warnings():  # ml_collections loads the config file with load_module()
    warnings.filterwarnings("ignore", "the load_module", DeprecationWarning)
    flag_values(argv)
  return holder.value


def config_error(*overrides: str, config: str = DEMO) -> str:
  """The message of the ``ConfigError`` that ``validate_config`` raises for the config the CLI
  would run with these overrides (the line main prints after ``fairjax: error: ``); fails the
  test if the config is valid or the message is not one line."""
  from fairjax.config import ConfigError, validate_config

  parsed = parse_config(*overrides, config=config)
  with pytest.raises(ConfigError) as e:
    validate_config(parsed)
  message = str(e.value)
  assert "\n" not in message, message
  return message
