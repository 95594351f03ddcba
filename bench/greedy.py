"""Speed of FairGRAPE's greedy selection: new vs old implementation, and the Python loop
(design.md section 4).

Usage (from the repository root)::

    python -m bench.greedy [--impl both|new|old] [--repeats 5] [--groups 2,4,8]
        [--threads N] [--ref-n 20000] [--quick] [--out bench/results/greedy_cpu.json]

For each group count ``G``: random lognormal importance ``[G, n]`` with ``n = 3*3*512*512 =
2,359,296`` (ResNet-34's largest conv), 90% kept.

- ``new`` is ``fairjax.pruning.fairgrape.greedy_select``; ``old`` is the previous version
  (commit 2c7820a), frozen in ``bench/greedy_old.py``. After one warm-up call each, they are
  timed INTERLEAVED (old, new, old, new, ...) so that both see the same machine load; the table
  gives medians of ``--repeats`` calls, wall and process CPU time (all threads), and the ratio
  new/old of the wall medians. With ``--impl both`` the two kept sets are also compared.
- The sort floor, on one thread, in the same interleaved loop: ``G`` rows sorted by
  ``np.argsort`` (what the old version did, before its tie fix-up), by the packed-key sort the
  new version uses (``_stream_order``, ties included), and ``np.sort`` of the values alone.
- The reference Python loop (``greedy_select_reference``, one iteration per stream step, like the
  official code) is far too slow for the full layer: it is timed on ``--ref-n`` weights and its
  cost PER KEPT WEIGHT is multiplied by the full layer's kept count. That figure is an
  EXTRAPOLATION, not a measurement. The new version is checked against it on that input.

``--threads`` sets the new version's worker threads (default: the CPU cores this process may
use). The machine is shared: the JSON records the load average at start and end; compare the
ratio, not the absolute times, across runs. JSON written atomically, markdown table on stdout.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from bench import greedy_old
from bench.common import environment
from fairjax.checkpoint import write_json_atomic
from fairjax.pruning import fairgrape

FULL_N = 3 * 3 * 512 * 512
KEEP_FRACTION = 0.9


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
  """Wall and process CPU seconds (all threads) of one call."""
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


def compile_seconds(impl: str, num_groups: int, n: int) -> float:
  """Time to compile the implementation's loop for this layer size, outside any call."""
  with jax.enable_x64(True):
    if impl == "old":
      m = greedy_old._bucket(n)
      fn = greedy_old._greedy_loop
      shapes = (
        jax.ShapeDtypeStruct((num_groups, m), np.int32),
        jax.ShapeDtypeStruct((m, num_groups), np.int32),
        jax.ShapeDtypeStruct((m, num_groups), np.float64),
        jax.ShapeDtypeStruct((), np.int32),
        jax.ShapeDtypeStruct((), np.int32),
      )
    else:
      chunk = min(fairgrape._CHUNK, 1 << (n - 1).bit_length())
      width = num_groups + num_groups % 2 + 2 * num_groups
      fn = fairgrape._greedy_chunk
      vec = jax.ShapeDtypeStruct((num_groups,), np.int32)
      scalar = jax.ShapeDtypeStruct((), np.int32)
      shapes = (
        jax.ShapeDtypeStruct((num_groups, chunk + fairgrape._WINDOW, width), np.int32),
        vec,
        vec,
        jax.ShapeDtypeStruct((num_groups,), np.float64),
        scalar,
        scalar,
        scalar,
      )
    start = time.perf_counter()
    fn.lower(*shapes).compile()
    return time.perf_counter() - start


def summary(pairs: list[tuple[float, float]]) -> dict[str, Any]:
  walls, cpus = [p[0] for p in pairs], [p[1] for p in pairs]
  return {
    "median": statistics.median(walls),
    "cpu_median": statistics.median(cpus),
    "all": walls,
    "cpu_all": cpus,
  }


def bench_groups(
  num_groups: int, impls: list[str], repeats: int, ref_n: int, seed: int, threads: int | None = None
) -> dict[str, Any]:
  rng = np.random.default_rng(seed)
  imp = rng.lognormal(size=(num_groups, FULL_N))
  keep = int(KEEP_FRACTION * FULL_N)
  selects = {
    "new": functools.partial(fairgrape.greedy_select, threads=threads),
    "old": greedy_old.greedy_select,
  }
  out: dict[str, Any] = {
    "num_groups": num_groups,
    "n": FULL_N,
    "keep": keep,
    "threads_new": fairgrape._workers(threads),
  }
  kept = {}
  for impl in impls:
    out[f"compile_loop_{impl}_s"] = compile_seconds(impl, num_groups, FULL_N)
    start = time.perf_counter()
    kept[impl] = selects[impl](imp, keep)  # warm-up
    out[f"first_call_{impl}_s"] = time.perf_counter() - start
    assert int(kept[impl].sum()) == keep
  if len(kept) == 2:
    out["same_kept_set_new_old"] = bool(np.array_equal(kept["new"], kept["old"]))
    log(f"G={num_groups}: same kept set new/old: {out['same_kept_set_new_old']}")

  floor = {
    "argsort": lambda: [np.argsort(-row, kind="quicksort") for row in imp],
    "packed_sort": lambda: [fairgrape._stream_order(row) for row in imp],
    "sort_values_only": lambda: [np.sort(row) for row in imp],
  }
  times: dict[str, list[tuple[float, float]]] = {k: [] for k in [*impls, *floor]}
  for r in range(repeats):
    for impl in impls:
      times[impl].append(timed(lambda: selects[impl](imp, keep)))
    for name, fn in floor.items():
      times[name].append(timed(fn))
    log(
      f"G={num_groups} repeat {r}: " + ", ".join(f"{k} {v[-1][0]:.3f}s" for k, v in times.items())
    )
  for impl in impls:
    out[impl] = summary(times[impl])
  out["sort_floor_1_thread"] = {name: summary(times[name]) for name in floor}
  if len(impls) == 2:
    out["ratio_new_over_old"] = out["new"]["median"] / out["old"]["median"]
    out["ratio_new_over_old_cpu"] = out["new"]["cpu_median"] / out["old"]["cpu_median"]
    out["ratio_new_over_old_paired_median"] = statistics.median(
      n / o for (n, _), (o, _) in zip(times["new"], times["old"])
    )

  small = imp[:, :ref_n]
  small_keep = int(KEEP_FRACTION * ref_n)
  ref_s, _ = timed(
    lambda: kept.__setitem__("ref", fairgrape.greedy_select_reference(small, small_keep))
  )
  per_kept = ref_s / small_keep
  out["reference_small"] = {
    "n": ref_n,
    "keep": small_keep,
    "seconds": ref_s,
    "seconds_per_kept_weight": per_kept,
    "same_kept_set_as_new": bool(np.array_equal(kept["ref"], selects["new"](small, small_keep))),
  }
  out["reference_extrapolated_full_s"] = per_kept * keep
  log(
    f"G={num_groups}: reference {ref_s:.2f}s on n={ref_n}, same set as new: "
    f"{out['reference_small']['same_kept_set_as_new']}"
  )
  return out


def markdown(results: dict[str, Any]) -> str:
  impls = results["impls"]
  head = ["G"] + [f"{i} median s (cpu s)" for i in impls]
  if len(impls) == 2:
    head.append("new/old")
  head += [
    "1-thread sort floor s: argsort / packed / values only",
    f"reference, EXTRAPOLATED from n={results['ref_n']} (s)",
  ]
  rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in results["results"]:
    cells = [str(r["num_groups"])]
    cells += [f"{r[i]['median']:.3f} ({r[i]['cpu_median']:.3f})" for i in impls]
    if len(impls) == 2:
      cells.append(f"{r['ratio_new_over_old']:.2f}")
    f = r["sort_floor_1_thread"]
    cells.append(
      f"{f['argsort']['median']:.3f} / {f['packed_sort']['median']:.3f} / "
      f"{f['sort_values_only']['median']:.3f}"
    )
    cells.append(f"{r['reference_extrapolated_full_s']:.1f}")
    rows.append("| " + " | ".join(cells) + " |")
  return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--impl", choices=("both", "new", "old"), default="both")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--groups", default="2,4,8")
  parser.add_argument(
    "--threads",
    type=int,
    default=None,
    help="worker threads of the new version (default: usable CPU cores)",
  )
  parser.add_argument("--ref-n", type=int, default=20_000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--quick", action="store_true", help="2 repeats, reference on 5,000")
  parser.add_argument("--out", default="bench/results/greedy_cpu.json")
  args = parser.parse_args(argv)
  if args.quick:
    args.repeats, args.ref_n = 2, 5_000
  if args.threads is not None:
    if args.threads < 1:
      parser.error(f"--threads must be >= 1, got {args.threads}")
  impls = ["old", "new"] if args.impl == "both" else [args.impl]
  results: dict[str, Any] = {
    "benchmark": "FairGRAPE greedy selection: fairjax new vs old vs the plain Python loop",
    "impls": impls,
    "ref_n": args.ref_n,
    "keep_fraction": KEEP_FRACTION,
    "repeats": args.repeats,
    "importance": "lognormal(0, 1), independent per group and weight",
    "timing": "old and new interleaved in one process, medians; cpu = process CPU time "
    "summed over threads",
    "note": "reference_extrapolated_full_s is an extrapolation (per-kept-weight cost on "
    "ref_n weights times the full keep), not a measurement",
    "environment": environment(),
    "results": [],
  }
  for num_groups in (int(g) for g in args.groups.split(",")):
    results["results"].append(
      bench_groups(num_groups, impls, args.repeats, args.ref_n, args.seed, args.threads)
    )
    results["environment"]["loadavg_at_end"] = list(os.getloadavg())
    write_json_atomic(args.out, results)
  results["markdown"] = markdown(results)
  write_json_atomic(args.out, results)
  load = results["environment"]["loadavg_at_start"]
  end = results["environment"]["loadavg_at_end"]
  print(
    f"## FairGRAPE greedy ({results['environment']['date_utc']}, load average "
    f"{load[0]:.2f} at start, {end[0]:.2f} at end, on {os.cpu_count()} cores)\n"
  )
  print(results["markdown"])


if __name__ == "__main__":
  main()
