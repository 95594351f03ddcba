"""A pytest plugin: how much of each test is JAX tracing and XLA compilation.

    python -m pytest -q -n 2 --dist loadfile -p bench.suite_compile_profile
    python -m bench.suite_compile_profile        # summarise the last run

Every test process (each xdist worker) adds up JAX's own ``jax.monitoring`` durations per test
(backend compilation, jaxpr tracing, lowering to MLIR) and persistent-cache hits, and writes
``bench/results/suite_compile_profile/<pid>.json`` at the end. Work done in a test's subprocesses
(the CLI, multi-device scripts, the notebook kernel) is not seen. The summary prints the totals
and the files that spend the most time, with their compile share (design.md section 9).
"""

from __future__ import annotations

import collections
import glob
import json
import os
import time
from collections.abc import Generator
from typing import Any

import pytest

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "suite_compile_profile")
COMPILE = "/jax/core/compile/backend_compile_duration"
TRACE = "/jax/core/compile/jaxpr_trace_duration"
LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
HITS = "/jax/compilation_cache/cache_hits"

_totals: collections.defaultdict[str, float] = collections.defaultdict(float)
_rows: list[dict[str, Any]] = []


def _on_duration(event: str, duration: float, **_: Any) -> None:
  _totals[event] += duration
  _totals[event + "#n"] += 1


def _on_event(event: str, **_: Any) -> None:
  _totals[event + "#n"] += 1


def pytest_configure(config: Any) -> None:
  import jax.monitoring

  if not hasattr(config, "workerinput"):  # the main process: this run's files replace the last's
    for path in glob.glob(os.path.join(OUT, "*.json")):
      os.remove(path)

  jax.monitoring.register_event_duration_secs_listener(_on_duration)
  jax.monitoring.register_event_listener(_on_event)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: Any, nextitem: Any) -> Generator[None, None, None]:
  before, start = dict(_totals), time.perf_counter()
  yield
  row = {"test": item.nodeid, "wall": time.perf_counter() - start}
  for key in (COMPILE, COMPILE + "#n", TRACE, LOWER, HITS + "#n"):
    row[key] = _totals[key] - before.get(key, 0.0)
  _rows.append(row)


def pytest_sessionfinish(session: Any) -> None:
  if not _rows:
    return
  os.makedirs(OUT, exist_ok=True)
  with open(os.path.join(OUT, f"{os.getpid()}.json"), "w") as f:
    json.dump(_rows, f)


def summarise(out: str = OUT, top: int = 20) -> None:
  """Prints the totals and the ``top`` files by summed test time."""
  rows = []
  for path in glob.glob(os.path.join(out, "*.json")):
    with open(path) as f:
      rows += json.load(f)
  if not rows:
    raise SystemExit(f"no profile in {out}: run pytest with -p bench.suite_compile_profile first")
  wall = sum(r["wall"] for r in rows)
  compile_s = sum(r[COMPILE] for r in rows)
  trace_s = sum(r[TRACE] + r[LOWER] for r in rows)
  print(
    f"{len(rows)} tests: {wall:.0f} s in all, XLA compilation {compile_s:.0f} s "
    f"({compile_s / wall:.0%}), tracing and lowering {trace_s:.0f} s ({trace_s / wall:.0%}), "
    f"{sum(r[COMPILE + '#n'] for r in rows):.0f} compilations, "
    f"{sum(r[HITS + '#n'] for r in rows):.0f} persistent-cache hits"
  )
  files: collections.defaultdict[str, list[float]] = collections.defaultdict(lambda: [0.0] * 3)
  for r in rows:
    f = files[r["test"].split("::")[0]]
    f[0] += r["wall"]
    f[1] += r[COMPILE]
    f[2] += r[TRACE] + r[LOWER]
  print(f"{'s':>7} {'compile':>8} {'trace':>6}  file")
  for name, (w, c, t) in sorted(files.items(), key=lambda kv: -kv[1][0])[:top]:
    print(f"{w:7.1f} {c:8.1f} {t:6.1f}  {name}")


if __name__ == "__main__":
  summarise()
