"""Training throughput (images/s) of fairjax's jitted train step against the same model in PyTorch.

Usage (from the repository root)::

    python -m bench.throughput [--models small_cnn,vgg11] [--batch 64] [--steps 20] [--repeats 5]
        [--device cpu|cuda] [--out bench/results/throughput_cpu.json] [--no-torch]

For every model: ``fairjax.train.train_step`` (SGD + momentum through ``train.make_optimizer``,
mean softmax cross-entropy, jitted with donated state) and, as the reference, one PyTorch step of
the mirror model (``bench.torch_mirror``, same weights) with ``torch.optim.SGD(momentum=0.9)``.
Each repeat times ``--steps`` consecutive steps on one resident batch (no input pipeline: this is
the device's training speed, the floor any data loader can only add to). The JSON holds every
repeat; the table gives medians of repeats and the fairjax / torch ratio from the same run.
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
from bench.curvature import MODEL_CONFIGS
from fairjax.checkpoint import write_json_atomic

NUM_CLASSES = 8


def log(msg: str) -> None:
  print(f"[bench.throughput {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def jax_images_per_s(
  config: str,
  batch: int,
  steps: int,
  repeats: int,
  seed: int,
  spec: tuple[str, dict[str, Any], tuple[int, int]] | None = None,
):
  """Images/s of repeats of ``steps`` jitted train steps; ``spec`` = (model name, kwargs,
  (H, W)) replaces ``MODEL_CONFIGS[config]`` (bench.input_pipeline times the protocol models)."""
  import jax
  import jax.numpy as jnp

  from fairjax import train
  from fairjax.models import get_model

  name, kwargs, hw = MODEL_CONFIGS[config] if spec is None else spec
  model = get_model(name, num_classes=NUM_CLASSES, **kwargs)
  tx = train.make_optimizer("sgd", 0.01, momentum=0.9)
  state = train.create_train_state(model, jax.random.key(seed, impl="rbg"), (*hw, 3), tx)
  rs = np.random.RandomState(seed)
  data = {
    "image": jnp.asarray(rs.randn(batch, *hw, 3).astype(np.float32)),
    "label": jnp.asarray(rs.randint(0, NUM_CLASSES, batch).astype(np.int32)),
  }
  step = jax.jit(train.train_step, donate_argnums=0)
  rng = jax.random.key(seed + 1)
  t0 = time.perf_counter()
  state, metrics = step(state, data, rng)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  for _ in range(2):
    state, metrics = step(state, data, rng)
  jax.block_until_ready(metrics)
  rates = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, data, rng)
    jax.block_until_ready((state.params, metrics))
    rates.append(batch * steps / (time.perf_counter() - t))
  params = jax.tree.map(np.asarray, state.params)
  return rates, compile_s, params


def torch_images_per_s(
  config: str, batch: int, steps: int, repeats: int, seed: int, device: str, params
):
  import torch

  from bench import torch_mirror

  name, kwargs, hw = MODEL_CONFIGS[config]
  model = torch_mirror.build(name, NUM_CLASSES, hw, **kwargs)
  torch_mirror.load_flax_params(model, params)
  model = model.to(device).train()
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  loss_fn = torch.nn.CrossEntropyLoss()
  rs = np.random.RandomState(seed)
  x = torch_mirror.to_nchw(rs.randn(batch, *hw, 3).astype(np.float32)).to(device)
  y = torch.from_numpy(rs.randint(0, NUM_CLASSES, batch).astype(np.int64)).to(device)

  def sync():
    if device != "cpu":
      torch.cuda.synchronize()

  def one():
    opt.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    opt.step()

  for _ in range(3):
    one()
  sync()
  rates = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(steps):
      one()
    sync()
    rates.append(batch * steps / (time.perf_counter() - t))
  return rates


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--models", default="small_cnn,vgg11")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=20, help="steps per timed repeat")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="torch device")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--out", default=os.path.join("bench", "results", "throughput_cpu.json"))
  args = p.parse_args(argv)
  models = [m for m in args.models.split(",") if m]
  for m in models:
    if m not in MODEL_CONFIGS:
      p.error(f"unknown model {m!r}; have {sorted(MODEL_CONFIGS)}")
  import jax

  results: dict[str, Any] = {
    "benchmark": "training throughput, fairjax train_step vs PyTorch (same model and weights)",
    "settings": vars(args) | {"models": models},
    "environment": common.environment() | {"jax_backend": jax.default_backend()},
    "models": {},
  }
  if not args.no_torch and args.device == "cuda":
    import torch

    results["environment"]["torch_cuda_device"] = torch.cuda.get_device_name()
  rows = []
  for config in models:
    log(f"{config}: fairjax")
    jr, compile_s, params = jax_images_per_s(
      config, args.batch, args.steps, args.repeats, args.seed
    )
    res = {
      "image_hw": list(MODEL_CONFIGS[config][2]),
      "batch": args.batch,
      "fairjax_images_per_s": jr,
      "fairjax_median": statistics.median(jr),
      "fairjax_compile_s": compile_s,
    }
    if not args.no_torch:
      log(f"{config}: torch ({args.device})")
      tr = torch_images_per_s(
        config, args.batch, args.steps, args.repeats, args.seed, args.device, params
      )
      res.update(
        torch_images_per_s=tr,
        torch_median=statistics.median(tr),
        fairjax_over_torch=statistics.median(jr) / statistics.median(tr),
      )
    results["models"][config] = res
    rows.append(
      f"| {config} {res['image_hw'][0]}x{res['image_hw'][1]} | {args.batch} "
      f"| {res['fairjax_median']:.0f} | "
      + (
        f"{res['torch_median']:.0f} | {res['fairjax_over_torch']:.2f} |"
        if "torch_median" in res
        else "— | — |"
      )
    )
    write_json_atomic(args.out, results)
  env = results["environment"]
  table = "\n".join(
    [
      f"## Training throughput ({env['date_utc']}, JAX backend {env['jax_backend']}, "
      f"devices {env['jax_devices']}, torch device {args.device}; medians of {args.repeats} "
      f"repeats of {args.steps} steps)",
      "| model | batch | fairjax images/s | torch images/s | fairjax / torch |",
      "|---|---|---|---|---|",
      *rows,
    ]
  )
  results["markdown"] = table
  write_json_atomic(args.out, results)
  print(table)
  log(f"wrote {args.out}")


if __name__ == "__main__":
  main()
