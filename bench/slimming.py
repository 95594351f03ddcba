"""Inference speed of a physically slimmed VGG-11 against the channel-masked one.

Usage (from the repository root)::

    python -m bench.slimming [--repeats 10] [--batch 32] [--size 64] [--bn]
        [--scenarios conv7:7 conv6,conv7:0.25 conv6,conv7:0.5 conv4,conv5,conv6,conv7:0.5]
        [--out bench/results/slimming_cpu.json] [--quick]

Sensitive channel pruning (design.md section 3) removes output channels of the last conv layers.
With structured masks the pruned network keeps its shapes and only zeroes those channels
("masked"); ``fairjax.slimming.slim_sequential_cnn`` deletes them and the matching inputs of the
next layer ("slim"), which computes the same function with fewer FLOPs. This script measures
what that buys in wall-clock time for VGG-11 (no BN unless ``--bn``; default widths, classifier
width 512, 8 classes) at ``--size``x``--size``.

Each scenario ``LAYERS:AMOUNT`` removes, in every named conv layer, ``AMOUNT`` channels (an
integer count) or that fraction of them (a float < 1), chosen at random with a fixed seed (which
channels go does not change the cost). ``conv7:7`` is the official code's setting (7 of the 512
channels of the last conv); the others are shares a pruning run reaches after several steps.

Per scenario, ``fairjax.slimming.measure_speedup`` compiles both networks ahead of time (compile
times reported separately), runs each once to warm up, then times ``--repeats`` calls of each,
interleaved, with ``block_until_ready``; it reports the medians and their ratio (masked / slim).
The "ideal" speedup is the multiply-add ratio (``conv_flops``), an upper bound for
compute-bound convolutions. Before timing, the slim network's logits are checked against the
masked network's. The JSON is written atomically; on a shared machine the numbers are noisy:
compare the ratio, which is measured under the same load for both networks.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np

from bench import common
from fairjax import checkpoint

DEFAULT_SCENARIOS = (
  "conv7:7",
  "conv6,conv7:0.25",
  "conv6,conv7:0.5",
  "conv4,conv5,conv6,conv7:0.5",
)


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def parse_scenario(text: str) -> tuple[tuple[str, ...], float | int]:
  """``"conv6,conv7:0.5"`` -> ``(("conv6", "conv7"), 0.5)``; ``"conv7:7"`` -> count 7."""
  try:
    layers, amount = text.rsplit(":", 1)
    value: float | int = float(amount) if "." in amount else int(amount)
  except ValueError:
    raise SystemExit(f"--scenarios: {text!r} is not LAYERS:AMOUNT, e.g. conv6,conv7:0.5")
  names = tuple(x for x in layers.split(",") if x)
  if not names or value <= 0 or (isinstance(value, float) and value >= 1):
    raise SystemExit(
      f"--scenarios: {text!r}: name conv layers and a count >= 1 or a fraction in (0, 1)"
    )
  return names, value


def run(args) -> dict[str, Any]:
  import jax
  import jax.numpy as jnp

  from fairjax import masks, models, slimming

  model = models.get_model("vgg11_bn" if args.bn else "vgg11", num_classes=8, classifier_width=512)
  shape = (args.size, args.size, 3)
  images = jax.random.normal(jax.random.key(1), (args.batch, *shape), jnp.float32)
  variables = model.init(jax.random.key(args.seed, impl="rbg"), images[:1], train=False)
  params = variables["params"]
  dense_flops = slimming.conv_flops(model, variables, shape)
  dense_params = slimming.count_params(variables)
  rng = np.random.default_rng(args.seed)
  rows = []
  for text in args.scenarios:
    layers, amount = parse_scenario(text)
    keep, mask = {}, masks.init_mask(params)
    for name in layers:
      if name not in params or np.ndim(params[name]["kernel"]) != 4:
        raise SystemExit(f"--scenarios: {name!r} is not a conv layer of VGG-11 (conv0..conv7)")
      k = params[name]["kernel"].shape[-1]
      n = amount if isinstance(amount, int) else int(np.floor(amount * k + 0.5))
      if not 0 < n < k:
        raise SystemExit(f"--scenarios: {text!r} removes {n} of {k} channels of {name}")
      k_keep = np.ones(k, bool)
      k_keep[rng.choice(k, size=n, replace=False)] = False
      keep[name] = k_keep
      bn = "bn" + name[4:] if args.bn else None
      mask = masks.channel_mask(params, mask, name, jnp.asarray(k_keep), norm_layer=bn)
    masked = {**variables, "params": masks.apply_mask(params, mask)}
    slim_model, slim_vars = slimming.slim_sequential_cnn(model, masked, keep)
    want = np.asarray(model.apply(masked, images[:4]))
    got = np.asarray(slim_model.apply(slim_vars, images[:4]))
    max_diff = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    if max_diff > 1e-4 * max(1.0, scale):
      raise AssertionError(f"{text}: slim logits differ from masked by {max_diff}")
    slim_flops = slimming.conv_flops(slim_model, slim_vars, shape)
    log(f"{text}: timing {args.repeats} interleaved calls of each network")
    timed = slimming.measure_speedup(
      model, masked, slim_model, slim_vars, images, repeats=args.repeats
    )
    rows.append(
      {
        "scenario": text,
        "channels_removed": {name: int((~k).sum()) for name, k in keep.items()},
        "channels_total": {name: int(k.size) for name, k in keep.items()},
        "params_dense": dense_params,
        "params_slim": slimming.count_params(slim_vars),
        "flops_dense": dense_flops,
        "flops_slim": slim_flops,
        "ideal_speedup": dense_flops / slim_flops,
        "masked_median_s": timed["dense_s"],
        "slim_median_s": timed["slim_s"],
        "speedup": timed["speedup"],
        "masked_compile_s": timed["dense_compile_s"],
        "slim_compile_s": timed["slim_compile_s"],
        "masked_times_s": timed["dense_times_s"],
        "slim_times_s": timed["slim_times_s"],
        "max_abs_logit_diff": max_diff,
      }
    )
    log(
      f"  masked {timed['dense_s']:.4f} s, slim {timed['slim_s']:.4f} s: "
      f"{timed['speedup']:.3f}x (ideal {dense_flops / slim_flops:.3f}x)"
    )
  device = jax.devices()[0]
  return {
    "config": {
      "model": "vgg11_bn" if args.bn else "vgg11",
      "classifier_width": 512,
      "num_classes": 8,
      "image_size": args.size,
      "batch": args.batch,
      "repeats": args.repeats,
      "seed": args.seed,
      "device": f"{device.platform}: {getattr(device, 'device_kind', device)}",
    },
    "scenarios": rows,
  }


def table(results: dict[str, Any]) -> str:
  cfg = results["config"]
  lines = [
    f"{cfg['model']} {cfg['image_size']}x{cfg['image_size']}, batch {cfg['batch']}, "
    f"{cfg['device']}, medians of {cfg['repeats']} (load avg at start "
    f"{results['environment']['loadavg_at_start'][0]:.2f})",
    "",
    "| channels removed | params slim/dense | MACs slim/dense | masked s | slim s | "
    "speedup | ideal (MACs) |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in results["scenarios"]:
    removed = ", ".join(
      f"{n} {r['channels_removed'][n]}/{r['channels_total'][n]}" for n in r["channels_removed"]
    )
    lines.append(
      f"| {removed} | {r['params_slim'] / r['params_dense']:.3f} | "
      f"{r['flops_slim'] / r['flops_dense']:.3f} | {r['masked_median_s']:.4f} | "
      f"{r['slim_median_s']:.4f} | {r['speedup']:.3f} | "
      f"{r['ideal_speedup']:.3f} |"
    )
  return "\n".join(lines)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--size", type=int, default=64, help="image height = width")
  p.add_argument("--bn", action="store_true", help="VGG-11 with BatchNorm")
  p.add_argument("--scenarios", nargs="+", default=list(DEFAULT_SCENARIOS))
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="bench/results/slimming_cpu.json")
  p.add_argument("--quick", action="store_true", help="2 repeats: smoke test")
  args = p.parse_args(argv)
  if args.quick:
    args.repeats = 2
  if args.repeats < 1:
    p.error("--repeats must be >= 1")
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  env = common.environment()
  results = run(args)
  env["loadavg_at_end"] = list(os.getloadavg())
  results = {"environment": env, **results}
  checkpoint.write_json_atomic(args.out, results)
  print(table(results))
  log(f"wrote {args.out}")


if __name__ == "__main__":
  main()
