"""Command line: ``python -m fairjax.main --config=configs/isic.py [--workdir=DIR] [--config.a.b=v]``.

A config with a ``compare`` section (``configs/compare.py``) runs the comparison of every
method at several sparsities from one dense model (:mod:`fairjax.compare`) instead of one run.

Shaped like the flax examples' ``main.py``: absl flags, an ``ml_collections`` config file, a
work directory. Without ``--config`` the embedded demo (``configs/demo.py``) runs. Bad input
(an invalid config value, a missing dataset folder, a malformed metadata file) ends with a
one-line ``fairjax: error: ...`` message and exit code 2, never a traceback; a run that was
killed resumes when started again with the same command.

Multi-host (data parallel over every device of several machines, ``fairjax.parallel``): start
the same command on every host with ``--coordinator_address=HOST0:PORT --num_processes=N
--process_id=I``; under SLURM (``srun``), Open MPI (``mpirun``) or on a multi-host Cloud TPU
slice these are detected when none is given. Process 0 writes results.json and the plots.
"""

from __future__ import annotations

import logging as pylogging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEMO_CONFIG = os.path.join(_REPO_ROOT, "configs", "demo.py")

_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEMO_CONFIG if os.path.exists(_DEMO_CONFIG) else None,
    "Run configuration file (configs/*.py with get_config()); default: the demo.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, results.json and plots "
    "(default: ./workdir/<config file name>). Rerun with the same workdir to resume.")

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: host:port of process 0 (jax.distributed); "
    "default: auto-detected under SLURM / Open MPI / Cloud TPU, else one process.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-host: total number of processes (one per host).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-host: this process's id in [0, num_processes).")

EXIT_BAD_INPUT = 2


class _OnlyFairjaxInfo(pylogging.Filter):
  """Keeps INFO progress lines from fairjax; libraries (orbax logs every file) only >= WARNING."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or f"{os.sep}fairjax{os.sep}" in record.pathname


def _error(message: str) -> None:
  print(f"fairjax: error: {message}", file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _error(f"unexpected arguments {argv[1:]}; options are --config, --workdir, --config.a.b=v")
  config = _CONFIG.value
  if config is None:
    _error("no --config given and configs/demo.py was not found; pass --config=configs/demo.py")
  logging.set_verbosity(logging.INFO)
  logging.set_stderrthreshold(logging.INFO)
  logging.get_absl_handler().addFilter(_OnlyFairjaxInfo())

  # Imported here so `--help` and flag errors stay fast.
  from fairjax import parallel, pipeline
  from fairjax.config import ConfigError, validate_config
  from fairjax.data.errors import BadImageError, CsvFormatError, DatasetNotFoundError
  from fairjax.models.pretrained import PretrainedError

  try:
    validate_config(config)
  except ConfigError as e:
    _error(str(e))
  try:  # before anything touches a device
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  except ValueError as e:
    _error(str(e))
  config_path = flags.FLAGS["config"].config_filename
  workdir = _WORKDIR.value or os.path.join(
      "workdir", os.path.splitext(os.path.basename(config_path or "demo"))[0])
  logging.info("fairjax: config %s, workdir %s", config_path, os.path.abspath(workdir))
  try:
    if "compare" in config:  # configs/compare.py: every method from one dense model
      from fairjax import compare
      compare.run(config, workdir)
    else:
      pipeline.run(config, workdir)
  except (ConfigError, DatasetNotFoundError, CsvFormatError, BadImageError, PretrainedError) as e:
    _error(str(e))
  except FloatingPointError as e:
    _error(f"{e} (workdir {workdir}; checkpoints are kept, rerun to resume)")


if __name__ == "__main__":
  app.run(main)
