"""Speed of fairjax.bootstrap: 1000 paired resamples of stored test predictions.

Usage (from the repository root)::

    python -m bench.bootstrap [--n 10000] [--classes 8] [--resamples 1000] [--repeats 7]
        [--naive-resamples 20] [--seed 0] [--out bench/results/bootstrap_cpu.json] [--quick]

Data: N test samples, C classes, 2 groups (group 1 = 30%), two models ("dense" about 80%
accurate, "pruned" agreeing with dense on about 90% of samples). Two scenarios:

- ``correlated``: the predictions above, the realistic case;
- ``random``: both models predict uniformly at random, independently, which occupies every
  joint cell (2 x C x C x C): the worst case for the joint-cell multinomial draw.

Timed, interleaved within each repeat so that all see the same machine load (medians of
``--repeats``):

- ``bootstrap``: ``fairjax.bootstrap.bootstrap`` end to end (point estimates, resampling,
  metrics of every resample for both models, intervals, labels, JSON dict);
- ``evaluate``: ONE plain ``fairjax.metrics.evaluate`` call on the full test set (one model):
  the floor. The ratio bootstrap / evaluate is what 2 x R resampled evaluations cost relative to
  one evaluation;
- ``naive``: ``metrics.evaluate`` on ``--naive-resamples`` explicit stratified index resamples
  for both models, in a Python loop, EXTRAPOLATED linearly to R resamples (not measured at R).

The machine is shared: the JSON records the load average at start and end; compare ratios from
the same run. JSON written atomically, a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

from bench import common
from fairjax import bootstrap, metrics
from fairjax.checkpoint import write_json_atomic

NUM_GROUPS = 2


def log(msg: str) -> None:
  print(f"[bench.bootstrap {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_data(scenario: str, n: int, num_classes: int, seed: int):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, num_classes, n)
  g = (rng.random(n) < 0.3).astype(np.int64)
  if scenario == "correlated":
    dense = np.where(rng.random(n) < 0.8, y, rng.integers(0, num_classes, n))
    pruned = np.where(rng.random(n) < 0.9, dense, rng.integers(0, num_classes, n))
  elif scenario == "random":
    dense = rng.integers(0, num_classes, n)
    pruned = rng.integers(0, num_classes, n)
  else:
    raise ValueError(f"unknown scenario {scenario!r}")
  return y, g, {"dense": dense, "pruned": pruned}


def stratified_indices(rng: np.random.Generator, groups: np.ndarray, r: int) -> np.ndarray:
  idx = np.empty((r, groups.size), dtype=np.int64)
  for s in np.unique(groups):
    pos = np.flatnonzero(groups == s)
    idx[:, pos] = pos[rng.integers(0, pos.size, (r, pos.size))]
  return idx


def timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def run_scenario(scenario: str, args) -> dict[str, Any]:
  c = args.classes
  y, g, preds = make_data(scenario, args.n, c, args.seed)
  cells = np.unique(np.stack([g, y, preds["dense"], preds["pruned"]], axis=1), axis=0).shape[0]
  idx = stratified_indices(np.random.default_rng(args.seed + 1), g, args.naive_resamples)

  def run_bootstrap():
    bootstrap.bootstrap(
      y, g, preds, num_classes=c, num_groups=NUM_GROUPS, num_samples=args.resamples, seed=args.seed
    )

  def run_evaluate():
    metrics.evaluate(y, preds["dense"], g, num_classes=c, num_groups=NUM_GROUPS)

  def run_naive():
    for rows in idx:
      for p in preds.values():
        metrics.evaluate(y[rows], p[rows], g[rows], num_classes=c, num_groups=NUM_GROUPS)

  for fn in (run_bootstrap, run_evaluate, run_naive):  # warm-up
    fn()
  times: dict[str, list[float]] = {"bootstrap": [], "evaluate": [], "naive_measured": []}
  for _ in range(args.repeats):
    times["bootstrap"].append(timed(run_bootstrap))
    times["evaluate"].append(timed(run_evaluate))
    times["naive_measured"].append(timed(run_naive))
  med = {k: statistics.median(v) for k, v in times.items()}
  naive = med["naive_measured"] * args.resamples / args.naive_resamples
  row = {
    "scenario": scenario,
    "joint_cells": int(cells),
    "bootstrap_median_s": med["bootstrap"],
    "evaluate_median_s": med["evaluate"],
    "ratio_bootstrap_over_evaluate": med["bootstrap"] / med["evaluate"],
    "naive_extrapolated_s": naive,
    "naive_measured_resamples": args.naive_resamples,
    "speedup_over_naive": naive / med["bootstrap"],
    "times_s": times,
  }
  log(
    f"{scenario}: bootstrap {med['bootstrap']:.4f} s, evaluate {med['evaluate'] * 1e3:.3f} ms, "
    f"ratio {row['ratio_bootstrap_over_evaluate']:.0f}x; naive (extrapolated) {naive:.2f} s"
  )
  return row


def table(results: dict[str, Any]) -> str:
  cfg = results["config"]
  lines = [
    f"N = {cfg['n']}, C = {cfg['classes']}, G = {NUM_GROUPS}, two models, "
    f"R = {cfg['resamples']} resamples, medians of {cfg['repeats']} (load avg at start "
    f"{results['environment']['loadavg_at_start'][0]:.2f})",
    "",
    "| scenario | joint cells | bootstrap s | one evaluate ms | ratio | "
    "naive loop s (extrapolated) |",
    "|---|---|---|---|---|---|",
  ]
  for r in results["scenarios"]:
    lines.append(
      f"| {r['scenario']} | {r['joint_cells']} | {r['bootstrap_median_s']:.4f} | "
      f"{r['evaluate_median_s'] * 1e3:.3f} | "
      f"{r['ratio_bootstrap_over_evaluate']:.0f}x | "
      f"{r['naive_extrapolated_s']:.2f} |"
    )
  return "\n".join(lines)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--n", type=int, default=10_000)
  p.add_argument("--classes", type=int, default=8)
  p.add_argument("--resamples", type=int, default=1000)
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--naive-resamples", type=int, default=20)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="bench/results/bootstrap_cpu.json")
  p.add_argument("--quick", action="store_true", help="2 repeats, 5 naive resamples")
  args = p.parse_args(argv)
  if args.quick:
    args.repeats, args.naive_resamples = 2, 5
  for name in ("n", "classes", "resamples", "repeats", "naive_resamples"):
    if getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1")
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  env = common.environment()
  rows = [run_scenario(s, args) for s in ("correlated", "random")]
  env["loadavg_at_end"] = list(os.getloadavg())
  results = {
    "environment": env,
    "config": {
      "n": args.n,
      "classes": args.classes,
      "groups": NUM_GROUPS,
      "resamples": args.resamples,
      "repeats": args.repeats,
      "naive_resamples": args.naive_resamples,
      "seed": args.seed,
    },
    "scenarios": rows,
  }
  write_json_atomic(args.out, results)
  print(table(results))
  log(f"wrote {args.out}")


if __name__ == "__main__":
  main()
