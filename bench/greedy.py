"""Speed of FairGRAPE's greedy selection against the plain Python loop (design.md section 4).

Usage (from the repository root)::

    python -m bench.greedy [--repeats 5] [--groups 2,4] [--ref-n 20000] [--quick]
        [--out bench/results/greedy_cpu.json]

For each group count ``G``: random lognormal importance ``[G, n]`` with ``n = 3*3*512*512 =
2,359,296`` (ResNet-34's largest conv), 90% kept. ``fairjax.pruning.fairgrape.greedy_select`` is
timed as the median of ``--repeats`` calls after one warm-up call; the XLA compilation of its loop
for this size is measured separately (``lower().compile()``). The reference Python loop
(``greedy_select_reference``, one iteration per stream step, like the official code) is far too
slow for the full layer: it is timed on ``--ref-n`` weights (same G, same keep fraction) and its
cost PER KEPT WEIGHT is multiplied by the full layer's kept count. That figure is an
EXTRAPOLATION, not a measurement (the loop is linear in the steps; its O(n log n) sort is a
small part at these sizes). Both implementations are also checked to keep the same set on the
small input. JSON (written atomically) and a markdown table with the ratio.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np

from fairjax.pruning import fairgrape

FULL_N = 3 * 3 * 512 * 512
KEEP_FRACTION = 0.9


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def write_json_atomic(path: str, payload: dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(payload, f, indent=2)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def compile_seconds(num_groups: int, n: int) -> float:
  """Time to compile the greedy loop for this layer size (its bucket), outside any call."""
  m = fairgrape._bucket(n)
  with jax.enable_x64(True):
    shapes = (jax.ShapeDtypeStruct((num_groups, m), np.int32),
              jax.ShapeDtypeStruct((m, num_groups), np.int32),
              jax.ShapeDtypeStruct((m, num_groups), np.float64),
              jax.ShapeDtypeStruct((), np.int32), jax.ShapeDtypeStruct((), np.int32))
    start = time.perf_counter()
    fairgrape._greedy_loop.lower(*shapes).compile()
    return time.perf_counter() - start


def bench_groups(num_groups: int, repeats: int, ref_n: int, seed: int) -> dict[str, Any]:
  rng = np.random.default_rng(seed)
  imp = rng.lognormal(size=(num_groups, FULL_N))
  keep = int(KEEP_FRACTION * FULL_N)
  compile_s = compile_seconds(num_groups, FULL_N)
  start = time.perf_counter()
  kept = fairgrape.greedy_select(imp, keep)  # warm-up (hits the cache compiled above)
  first_s = time.perf_counter() - start
  assert int(kept.sum()) == keep
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fairgrape.greedy_select(imp, keep)
    times.append(time.perf_counter() - start)
  log(f"G={num_groups}: greedy_select median {statistics.median(times):.3f}s {times}")

  small = imp[:, :ref_n]
  small_keep = int(KEEP_FRACTION * ref_n)
  start = time.perf_counter()
  ref = fairgrape.greedy_select_reference(small, small_keep)
  ref_s = time.perf_counter() - start
  same = bool(np.array_equal(ref, fairgrape.greedy_select(small, small_keep)))
  per_kept = ref_s / small_keep
  log(f"G={num_groups}: reference {ref_s:.2f}s on n={ref_n}, same set: {same}")
  return {
      "num_groups": num_groups, "n": FULL_N, "keep": keep,
      "greedy_select_s": {"median": statistics.median(times), "all": times,
                          "first_call": first_s, "compile_loop": compile_s},
      "reference_small": {"n": ref_n, "keep": small_keep, "seconds": ref_s,
                          "seconds_per_kept_weight": per_kept,
                          "same_kept_set_as_greedy_select": same},
      "reference_extrapolated_full_s": per_kept * keep,
      "speedup_vs_extrapolated_reference": per_kept * keep / statistics.median(times),
  }


def markdown(results: dict[str, Any]) -> str:
  rows = ["| G | n | keep | greedy_select median (s) | loop compile (s) | reference, "
          "EXTRAPOLATED from n=%d (s) | ratio |" % results["ref_n"],
          "|---|---|---|---|---|---|---|"]
  for r in results["results"]:
    rows.append(f"| {r['num_groups']} | {r['n']:,} | {r['keep']:,} | "
                f"{r['greedy_select_s']['median']:.3f} | {r['greedy_select_s']['compile_loop']:.3f}"
                f" | {r['reference_extrapolated_full_s']:.1f} | "
                f"{r['speedup_vs_extrapolated_reference']:.0f}x |")
  return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--groups", default="2,4")
  parser.add_argument("--ref-n", type=int, default=20_000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true", help="2 repeats, reference on 5,000")
  parser.add_argument("--out", default="bench/results/greedy_cpu.json")
  args = parser.parse_args(argv)
  if args.quick:
    args.repeats, args.ref_n = 2, 5_000
  results: dict[str, Any] = {
      "benchmark": "FairGRAPE greedy selection (fairjax) vs the plain Python loop",
      "ref_n": args.ref_n, "keep_fraction": KEEP_FRACTION,
      "importance": "lognormal(0, 1), independent per group and weight",
      "note": "reference_extrapolated_full_s is an extrapolation (per-kept-weight cost on "
              "ref_n weights times the full keep), not a measurement",
      "environment": {
          "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "python": platform.python_version(), "jax": jax.__version__,
          "numpy": np.__version__, "cpu_count": os.cpu_count(),
          "machine": platform.machine(), "loadavg_at_start": list(os.getloadavg())},
      "results": [],
  }
  for num_groups in (int(g) for g in args.groups.split(",")):
    results["results"].append(bench_groups(num_groups, args.repeats, args.ref_n, args.seed))
    results["environment"]["loadavg_at_end"] = list(os.getloadavg())
    write_json_atomic(args.out, results)
  results["markdown"] = markdown(results)
  write_json_atomic(args.out, results)
  load = results["environment"]["loadavg_at_start"]
  print(f"## FairGRAPE greedy ({results['environment']['date_utc']}, load average at start "
        f"{load[0]:.2f} on {os.cpu_count()} cores)\n")
  print(results["markdown"])


if __name__ == "__main__":
  main()
