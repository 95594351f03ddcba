"""Shared by the benchmarks: a record of the machine and software a figure was measured on."""

from __future__ import annotations

import datetime
import os
import platform
from typing import Any

import numpy as np


def environment(extra_env_vars: tuple[str, ...] = ()) -> dict[str, Any]:
  """Versions, CPU model, cores, load average and the environment variables that change speed."""
  import flax
  import jax
  import jaxlib

  env: dict[str, Any] = {
    "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "python": platform.python_version(),
    "platform": platform.platform(),
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "flax": flax.__version__,
    "numpy": np.__version__,
    "jax_devices": [str(d) for d in jax.devices()],
    "cpu_count": os.cpu_count(),
    "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    "loadavg_at_start": list(os.getloadavg()),
    "env_vars": {
      k: os.environ.get(k)
      for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "JAX_PLATFORMS") + tuple(extra_env_vars)
    },
  }
  try:
    with open("/proc/cpuinfo") as f:
      models = {line.split(":", 1)[1].strip() for line in f if line.startswith("model name")}
    env["cpu_model"] = sorted(models)
  except OSError:
    env["cpu_model"] = platform.processor() or None
  return env
