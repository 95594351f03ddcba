"""Speed of ``per_group_diag`` on a Flax NNX CNN: routed Linear/Conv vs the generic path vs Linen.

Usage (from the repository root)::

    python -m bench.nnx [--repeats 5] [--batch 32] [--size 32]

One NNX CNN (3 convs with max-pooling, 2 Linear layers, 8 classes) and the same network in
Linen with the same weights; 2 groups. Reports the median wall time of the eager call (the
bridge of :mod:`fairjax.nnx_adapter` is built on every call, as a user meets it; the compiled
scorer is reused) for ``exact`` on: the Linen model, the NNX model with its layers routed to the
closed forms (design.md section 1.11), and the NNX model with routing off (every parameter on the
generic per-sample path), each also as a multiple of a jitted gradient of the mean loss.
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from fairjax import curvature, nnx_adapter

WIDTHS = (32, 64, 64)
HIDDEN = 128
NUM_CLASSES = 8


def pool2(x):
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class NNXCNN(nnx.Module):
  def __init__(self, size: int, rngs: nnx.Rngs):
    chans = (3,) + WIDTHS
    self.convs = nnx.List([nnx.Conv(a, b, (3, 3), rngs=rngs) for a, b in zip(chans, chans[1:])])
    flat = (size // 2 ** len(WIDTHS)) ** 2 * WIDTHS[-1]
    self.fc0 = nnx.Linear(flat, HIDDEN, rngs=rngs)
    self.fc1 = nnx.Linear(HIDDEN, NUM_CLASSES, rngs=rngs)

  def __call__(self, x):
    for conv in self.convs:
      x = pool2(jax.nn.relu(conv(x)))
    return self.fc1(jax.nn.relu(self.fc0(x.reshape(x.shape[0], -1))))


class LinenCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    for i, w in enumerate(WIDTHS):
      x = pool2(jax.nn.relu(nn.Conv(w, (3, 3), name=f"conv{i}")(x)))
    x = jax.nn.relu(nn.Dense(HIDDEN, name="fc0")(x.reshape(x.shape[0], -1)))
    return nn.Dense(NUM_CLASSES, name="fc1")(x)


def median_time(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # warm-up (compiles)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--size", type=int, default=32)
  args = parser.parse_args(argv)
  model = NNXCNN(args.size, nnx.Rngs(0))
  flat = traverse_util.flatten_dict(nnx_adapter.param_dict(model))
  params = traverse_util.unflatten_dict(
    {(f"conv{p[1]}",) + p[2:] if p[0] == "convs" else p: v for p, v in flat.items()}
  )
  linen, variables = LinenCNN(), {"params": params}
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(args.batch, args.size, args.size, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, NUM_CLASSES, args.batch), jnp.int32)
  g = jnp.asarray(rng.random(args.batch) < 0.3, jnp.int32)

  @jax.jit
  def grad(p, x, y):
    def loss(p):
      logp = jax.nn.log_softmax(linen.apply({"params": p}, x))
      return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))

    return jax.grad(loss)(p)

  base = median_time(lambda: grad(params, x, y), args.repeats)
  print(
    f"NNX CNN {args.size}x{args.size}, batch {args.batch}, {NUM_CLASSES} classes, 2 groups, "
    f"exact; jitted gradient {base * 1e3:.1f} ms"
  )
  runs = {
    "linen": lambda: curvature.per_group_diag(linen, variables, x, y, g, num_groups=2),
    "nnx_routed": lambda: curvature.per_group_diag(model, None, x, y, g, num_groups=2),
  }
  for name, fn in runs.items():
    t = median_time(fn, args.repeats)
    print(f"  {name:12s} {t * 1e3:8.1f} ms  {t / base:5.1f}x gradient")
  nnx_adapter._ROUTE_LAYERS = False
  try:
    t = median_time(
      lambda: curvature.per_group_diag(model, None, x, y, g, num_groups=2), args.repeats
    )
  finally:
    nnx_adapter._ROUTE_LAYERS = True
  print(f"  {'nnx_generic':12s} {t * 1e3:8.1f} ms  {t / base:5.1f}x gradient")


if __name__ == "__main__":
  main()
