"""Speed of ``fairjax.snnl.channel_snnl`` against a per-channel Python loop.

Usage (from the repository root)::

    python -m bench.snnl [--repeats 7] [--batch 128] [--channels 512] [--size 14]
        [--out bench/results/snnl_cpu.json] [--quick]

Scores every channel of one layer's activations ``[B, size, size, K]`` (random normal, two
sensitive groups, 30% in group 1), the workload of one batch of sensitive channel pruning
(design.md section 3; default: VGG-11's last conv at 224x224 input, batch 128 as in the official
code). Methods, all in one process on the same data:

* ``vectorised``: ``channel_snnl`` (every channel in one batched Gram matmul + masked
  log-sum-exp). Compiled ahead of time, compile time reported separately, then timed.
* ``vectorised_include_self``: the same with ``include_self=True`` (official-code variant).
* ``loop``: what the official code does, per channel in a Python loop: slice channel k of a
  ``[K, B, P]`` device array and call a jitted single-channel SNNL (normalise, ``B x B`` cosine
  matmul, masked exp-sums). Compiled once before timing (all channels share a shape).

Timings are medians over ``--repeats`` calls after a warm-up, each ended with
``block_until_ready``. The JSON (written atomically: temp file + ``os.replace``) holds the
timings, the ratio loop / vectorised, the agreement of the two, the target check (vectorised
under 1 s for 512 channels, batch 128, 14x14 on 2 CPU cores) and the environment, including the
load average: on a shared machine the numbers are noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench import common
from fairjax.checkpoint import write_json_atomic

TARGET_S = 1.0  # vectorised, 512 channels, batch 128, 14x14, 2 CPU cores


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
  import jax

  jax.block_until_ready(fn())  # warm-up: caches, page faults, thread pools
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def summarize(times: list[float]) -> dict[str, Any]:
  return {
    "median_s": statistics.median(times),
    "min_s": min(times),
    "max_s": max(times),
    "times_s": times,
  }


def environment() -> dict[str, Any]:
  return common.environment(("JAX_ENABLE_X64",))


def make_single_channel_snnl():
  """Jitted SNNL of ONE channel, ``x [B, P]``, written the direct way (sums of exp)."""
  import jax
  import jax.numpy as jnp

  @jax.jit
  def single(x, groups):
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    e = jnp.exp(-(1.0 - x @ x.T))
    off_diag = ~jnp.eye(x.shape[0], dtype=bool)
    same = (groups[:, None] == groups[None, :]) & off_diag
    num = jnp.sum(jnp.where(same, e, 0.0), axis=1)
    den = jnp.sum(jnp.where(off_diag, e, 0.0), axis=1)
    anchor = jnp.any(same, axis=1)
    return jnp.sum(jnp.where(anchor, jnp.log(den / num), 0.0)) / jnp.sum(anchor)

  return single


def run(args) -> dict[str, Any]:
  import jax
  import jax.numpy as jnp

  from fairjax import snnl

  rng = np.random.default_rng(args.seed)
  b, s, k = args.batch, args.size, args.channels
  acts = jnp.asarray(rng.normal(size=(b, s, s, k)).astype(np.float32))
  groups = jnp.asarray((rng.random(b) < 0.3).astype(np.int32))
  results: dict[str, Any] = {
    "config": {
      "batch": b,
      "height": s,
      "width": s,
      "channels": k,
      "repeats": args.repeats,
      "seed": args.seed,
      "group1_fraction": 0.3,
      "temperature": 1.0,
    }
  }
  methods: dict[str, Any] = {}

  for name, include_self in (("vectorised", False), ("vectorised_include_self", True)):
    fn = jax.jit(lambda a, g, inc=include_self: snnl.channel_snnl(a, g, include_self=inc))
    start = time.perf_counter()
    compiled = fn.lower(acts, groups).compile()
    compile_s = time.perf_counter() - start
    log(f"{name}: compiled in {compile_s:.2f} s, timing {args.repeats} calls")
    methods[name] = {
      "compile_s": compile_s,
      **summarize(timed(lambda: compiled(acts, groups), args.repeats)),
    }
  # The public entry point (argument checks + dispatch) on top of the compiled kernel.
  methods["vectorised_public_call"] = summarize(
    timed(lambda: snnl.channel_snnl(acts, groups), args.repeats)
  )

  single = make_single_channel_snnl()
  per_channel = jnp.moveaxis(acts.reshape(b, s * s, k), -1, 0)  # [K, B, P], sliced per channel
  start = time.perf_counter()
  jax.block_until_ready(single(per_channel[0], groups))
  loop_compile_s = time.perf_counter() - start

  def loop():
    return jnp.stack([single(per_channel[c], groups) for c in range(k)])

  loop_repeats = max(1, min(args.repeats, args.loop_repeats))
  log(f"loop: timing {loop_repeats} passes over {k} channels")
  methods["loop"] = {"compile_s": loop_compile_s, **summarize(timed(loop, loop_repeats))}

  vec = np.asarray(snnl.channel_snnl(acts, groups), np.float64)
  ref = np.asarray(loop(), np.float64)
  results["methods"] = methods
  results["agreement"] = {
    "max_abs_diff_vectorised_vs_loop": float(np.max(np.abs(vec - ref))),
    "snnl_mean": float(vec.mean()),
    "snnl_min": float(vec.min()),
    "snnl_max": float(vec.max()),
  }
  ratio = methods["loop"]["median_s"] / methods["vectorised"]["median_s"]
  results["ratios"] = {"loop/vectorised": ratio}
  stated = (b, s, k) == (128, 14, 512)
  results["target"] = {
    "target": f"vectorised channel_snnl < {TARGET_S} s for 512 channels, batch 128, 14x14, "
    "2 CPU cores",
    "value_s": methods["vectorised"]["median_s"],
    "holds": methods["vectorised"]["median_s"] < TARGET_S,
    "stated_for_this_config": stated,
  }
  return results


def table(results: dict[str, Any]) -> str:
  cfg = results["config"]
  lines = [
    f"channel_snnl: B={cfg['batch']}, {cfg['height']}x{cfg['width']}, "
    f"K={cfg['channels']} (load avg at start "
    f"{results['environment']['loadavg_at_start'][0]:.2f})",
    "",
    "| method | median s | min s | compile s |",
    "|---|---|---|---|",
  ]
  for name, m in results["methods"].items():
    compile_s = m.get("compile_s")
    lines.append(
      f"| {name} | {m['median_s']:.4f} | {m['min_s']:.4f} | "
      f"{'-' if compile_s is None else f'{compile_s:.2f}'} |"
    )
  t = results["target"]
  lines += [
    "",
    f"loop / vectorised: {results['ratios']['loop/vectorised']:.1f}x; "
    f"max |diff| {results['agreement']['max_abs_diff_vectorised_vs_loop']:.2e}",
    f"target {t['target']}: {t['value_s']:.3f} s -> "
    f"{'HOLDS' if t['holds'] else 'MISSED'}"
    f"{'' if t['stated_for_this_config'] else ' (other config: informational)'}",
  ]
  return "\n".join(lines)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument(
    "--loop-repeats",
    type=int,
    default=3,
    help="timed passes of the (slow) per-channel loop, at most --repeats",
  )
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--channels", type=int, default=512)
  p.add_argument("--size", type=int, default=14, help="height = width of the feature map")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="bench/results/snnl_cpu.json")
  p.add_argument("--quick", action="store_true", help="2 repeats, 1 loop pass: smoke test")
  args = p.parse_args(argv)
  if args.quick:
    args.repeats, args.loop_repeats = 2, 1
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  env = environment()
  results = run(args)
  env["loadavg_at_end"] = list(os.getloadavg())
  results = {"environment": env, **results}
  write_json_atomic(args.out, results)
  print(table(results))
  log(f"wrote {args.out}")


if __name__ == "__main__":
  main()
