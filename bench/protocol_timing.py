"""Time per epoch and per pruning step of the protocol configs at their real sizes, from short runs.

Usage (from the repository root)::

    python -m bench.protocol_timing [--configs isic,fitzpatrick17k] [--train_batch 16]
        [--curvature_chunk 4] [--repeats 3] [--out bench/results/protocol_timing_cpu.json]

A full protocol run takes hours to days on a CPU, so this script times the pieces a run repeats
and multiplies them by the counts the config implies (medians of ``--repeats`` after a warm-up
call; compile time is reported apart):

- dense / fine-tuning epoch: the jitted train step (``fairjax.train.train_step``, the config's
  optimizer) at ``--train_batch`` images of the config's size, as images/s, times the training
  split's size (60% of the real metadata rows, the configs' split);
- FairPrune step (``configs/isic.py``): ``per_group_diag`` (exact) on a chunk of
  ``--curvature_chunk`` images, scaled to ``prune.num_batches * prune.batch_size`` samples, plus
  one pass over the validation split at the measured inference rate;
- SNNL step (``configs/fitzpatrick17k.py``): ``snnl.score_channels`` on one batch of
  ``prune.batch_size``, scaled to ``prune.num_batches``, plus ``prune.retrain_epochs`` (SNNL's default 1 when unset)
  fine-tuning epochs and one validation pass.

The model is the config's (VGG-11 with its 4096-wide classifier at 224x224) with random weights:
timing does not depend on the values. The extrapolation assumes time linear in the number of
images, which holds once a batch fills the machine; the JSON keeps every measured piece.
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
from fairjax.checkpoint import write_json_atomic

# Real metadata rows (../shared/data): ISIC 2019 training images, Fitzpatrick-17k rows.
DATASET_ROWS = {"isic2019": 25331, "fitzpatrick17k": 16577}
NUM_CLASSES = {"isic2019": 8, "fitzpatrick17k": 9}


def log(msg: str) -> None:
  print(f"[bench.protocol_timing {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _time(fn, repeats: int) -> tuple[float, float, list[float]]:
  """(first call s, median s, all repeat times) of ``fn()``, which blocks until done."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return first, statistics.median(times), times


def time_config(name: str, args) -> dict[str, Any]:
  import jax
  import jax.numpy as jnp

  from fairjax import curvature, snnl, train
  from fairjax.config import load_config_file
  from fairjax.models import get_model

  config = load_config_file(os.path.join("configs", f"{name}.py"))
  dataset = config.data.name
  classes, size = NUM_CLASSES[dataset], config.data.image_size
  model = get_model(config.model.name, num_classes=classes, **dict(config.model.kwargs))
  t = config.train
  tx = train.make_optimizer(
    t.optimizer,
    t.learning_rate,
    momentum=t.momentum,
    nesterov=t.nesterov,
    weight_decay=t.weight_decay,
  )
  state = train.create_train_state(model, jax.random.key(0, impl="rbg"), (size, size, 3), tx)
  rs = np.random.RandomState(0)

  def batch(n: int) -> dict[str, Any]:
    return {
      "image": jnp.asarray(rs.randn(n, size, size, 3).astype(np.float32)),
      "label": jnp.asarray(rs.randint(0, classes, n).astype(np.int32)),
      "group": jnp.asarray(np.arange(n) % 2, jnp.int32),
    }

  out: dict[str, Any] = {
    "config": f"configs/{name}.py",
    "model": config.model.name,
    "image_size": size,
    "num_classes": classes,
    "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
  }
  n_train = int(round(DATASET_ROWS[dataset] * config.data.split_fractions[0]))
  n_val = int(round(DATASET_ROWS[dataset] * config.data.split_fractions[1]))

  log(f"{name}: train step, batch {args.train_batch}")
  step = jax.jit(train.train_step)
  data = batch(args.train_batch)
  rng = jax.random.key(1)
  first, med, times = _time(lambda: jax.block_until_ready(step(state, data, rng)), args.repeats)
  train_ips = args.train_batch / med
  out["train_step"] = {
    "batch": args.train_batch,
    "first_call_s": first,
    "median_s": med,
    "times_s": times,
    "images_per_s": train_ips,
  }

  log(f"{name}: inference, batch {args.train_batch}")
  predict = jax.jit(lambda v, x: model.apply(v, x, train=False))
  variables = state.variables()
  first, med, times = _time(
    lambda: jax.block_until_ready(predict(variables, data["image"])), args.repeats
  )
  eval_ips = args.train_batch / med
  out["inference"] = {
    "batch": args.train_batch,
    "first_call_s": first,
    "median_s": med,
    "times_s": times,
    "images_per_s": eval_ips,
  }
  epoch_s = n_train / train_ips
  val_s = n_val / eval_ips
  out["estimates"] = {
    "train_images": n_train,
    "validation_images": n_val,
    "epoch_s": epoch_s,
    "validation_pass_s": val_s,
  }

  p = config.prune
  if p.method == "fairprune":
    chunk = batch(args.curvature_chunk)
    log(f"{name}: per_group_diag exact, chunk {args.curvature_chunk}")
    diag = jax.jit(
      lambda v, x, y, g: curvature.per_group_diag(
        model, v, x, y, g, num_groups=2, method=p.curvature, apply_kwargs={"train": False}
      )
    )
    first, med, times = _time(
      lambda: jax.block_until_ready(
        diag(variables, chunk["image"], chunk["label"], chunk["group"])
      ),
      args.repeats,
    )
    samples = p.num_batches * p.batch_size
    out["curvature"] = {
      "chunk": args.curvature_chunk,
      "first_call_s": first,
      "median_s": med,
      "times_s": times,
      "samples_per_step": samples,
      "x_train_step_per_image": (med / args.curvature_chunk) / (1 / train_ips),
    }
    out["estimates"]["prune_step_s"] = med / args.curvature_chunk * samples + val_s
  elif p.method == "snnl_channels":
    scoring = batch(p.batch_size)
    log(f"{name}: SNNL scoring, batch {p.batch_size}")
    layers = tuple(p.snnl.layers)
    first, med, times = _time(
      lambda: snnl.score_channels(
        model,
        variables,
        [{"image": scoring["image"], "group": np.asarray(scoring["group"])}],
        layers,
        apply_kwargs={"train": False},
      ),
      args.repeats,
    )
    out["snnl"] = {
      "batch": p.batch_size,
      "first_call_s": first,
      "median_s": med,
      "times_s": times,
      "batches_per_step": p.num_batches,
    }
    from fairjax.pruning import get_method

    retrain = (
      p.retrain_epochs
      if p.retrain_epochs is not None
      else get_method("snnl_channels").default_retrain_epochs
    )
    out["estimates"]["prune_step_s"] = med * p.num_batches + retrain * epoch_s + val_s
  return out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--configs", default="isic,fitzpatrick17k")
  p.add_argument("--train_batch", type=int, default=16)
  p.add_argument("--curvature_chunk", type=int, default=4)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", default=os.path.join("bench", "results", "protocol_timing_cpu.json"))
  args = p.parse_args(argv)
  import jax

  results: dict[str, Any] = {
    "benchmark": "protocol configs: time per epoch and per pruning step, from short runs",
    "settings": vars(args),
    "environment": common.environment()
    | {"jax_backend": jax.default_backend(), "load_before": os.getloadavg()},
    "configs": {},
  }
  for name in [c for c in args.configs.split(",") if c]:
    results["configs"][name] = time_config(name, args)
    results["environment"]["load_after"] = os.getloadavg()
    write_json_atomic(args.out, results)
  print("| config | train img/s | epoch | pruning step | measured on |")
  print("|---|---|---|---|---|")
  for name, r in results["configs"].items():
    e = r["estimates"]
    print(
      f"| configs/{name}.py | {r['train_step']['images_per_s']:.2f} | "
      f"{e['epoch_s'] / 3600:.2f} h | {e['prune_step_s'] / 3600:.2f} h | "
      f"{jax.devices()[0].device_kind} |"
    )
  log(f"wrote {args.out}")


if __name__ == "__main__":
  main()
