"""Peak memory of exact per-group curvature vs. chunk size and memory budget, and BackPACK's.

    python -m bench.memory                                  # ResNet-18 224, chunk sizes 1..64
    python -m bench.memory --chunk-sizes 4,16 --repeats 1 --out /tmp/mem.json
    python -m bench.memory --compile-only                   # XLA plans only, nothing is run
    # VGG-11 64x64, batch 32, 8 classes: memory budgets against BackPACK DiagGGNExact
    python -m bench.memory --model vgg11 --image-size 64 --batch 32 --num-classes 8 \
        --chunk-sizes "" --budgets-mib 0,2000,1500,1000 --backpack --out /tmp/mem_vgg.json

What is measured, for ``fairjax.curvature.per_group_diag(method="exact")`` on one batch of
``--batch`` images, ``--num-groups`` groups (group 1 = 30% of the batch), ``--num-classes``
classes (exact: C-1 backward columns), BatchNorm in inference mode, float32:

* **XLA plan, per chunk call**: ``jax.jit(per_group_diag).lower(chunk).compile()
  .memory_analysis()`` for ONE chunk of ``c`` samples, i.e. what one compiled call of the eager
  chunk loop allocates: arguments (params + chunk) + outputs + temporaries - aliased. This is
  the number the chunk size bounds. For a budget (``--budgets-mib``, 0 = no budget: the whole
  batch in one call) it is the plan of the chunk ``per_group_diag(memory_budget_bytes=...)``
  picked (design.md section 1.12), and the chosen chunk is recorded.
* **Time**: the whole batch through ``per_group_diag(..., chunk_size=c)`` or
  ``per_group_diag(..., memory_budget_bytes=b)`` called eagerly (one compiled call per chunk,
  the bounded-memory path), median of ``--repeats`` runs after a warm-up, divided by the median
  of a jitted plain ``jax.grad`` of the mean cross-entropy over the same batch (same process
  kind, same weights) measured in the same invocation.
* **Process peak RSS** (``VmHWM``, or ``resource.getrusage`` where ``/proc`` is missing) at the
  end of the worker, and the peak-RSS increase of the measured runs over the RSS before them
  (``/proc/self/clear_refs``), in MiB. With ``--rss-repeats r`` every worker runs ``r`` times
  and the medians are reported.
* **Device peak**: ``device.memory_stats()["peak_bytes_in_use"]`` where the backend provides it
  (GPU/TPU; XLA:CPU has no allocator statistics).
* **BackPACK** (``--backpack``, VGG-11 / small CNN only: bench/torch_mirror.py): DiagGGNExact
  run once per group on that group's samples (as in bench/curvature.py), same weights and
  batch, torch threads = visible cores; same time and RSS figures.

Every setting (and the gradient) runs in a FRESH worker subprocess, because both peak
counters only grow within a process. Progress goes to stderr, a markdown table to stdout and
everything (plus the environment) to the ``--out`` JSON (written atomically, after every worker).
Device-agnostic: run it unchanged on a GPU machine (``XLA_PYTHON_CLIENT_PREALLOCATE=false`` is
set for the workers so the allocator's peak reflects what the program uses).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20


def log(msg: str) -> None:
  print(f"[bench.memory {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- measurement helpers (run inside a worker) ---------------------------------------------------


def _proc_status_kib(field: str) -> int | None:
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    return None
  return None


def _reset_peak_rss() -> bool:
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")  # VmHWM := VmRSS (Linux >= 4.0)
    return True
  except OSError:
    return False


def _memory_analysis(compiled) -> dict[str, Any]:
  from bench.curvature import jax_memory_analysis  # one definition of the XLA plan total

  return jax_memory_analysis(compiled)


def _device_peak() -> int | None:
  import jax

  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # noqa: BLE001 - not every backend implements it
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return int(stats["peak_bytes_in_use"])


def _peak_rss_kib() -> int | None:
  """Process peak RSS: ``VmHWM``, else ``getrusage`` (KiB on Linux)."""
  hwm = _proc_status_kib("VmHWM")
  return hwm if hwm is not None else int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _setup(args):
  import jax
  import jax.numpy as jnp

  from fairjax import models

  kwargs = {"width": args.width} if args.model == "resnet18" else {}
  model = models.get_model(args.model, num_classes=args.num_classes, **kwargs)
  shape = (args.image_size, args.image_size, 3)
  variables = model.init(
    jax.random.key(args.seed, impl="rbg"), jnp.zeros((1,) + shape), train=False
  )
  rng = np.random.default_rng(args.seed)
  batch = args.batch
  images = jnp.asarray(rng.normal(size=(batch,) + shape).astype(np.float32))
  labels = jnp.asarray(rng.integers(0, args.num_classes, batch).astype(np.int32))
  groups = np.zeros(batch, np.int32)
  groups[rng.permutation(batch)[: max(1, int(round(0.3 * batch)))]] = 1 % args.num_groups
  groups = jnp.asarray(groups)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
  return model, variables, images, labels, groups, n_params


def _timed(fn, repeats: int) -> tuple[list[float], dict[str, Any]]:
  import jax

  gc.collect()
  reset = _reset_peak_rss()
  before = _proc_status_kib("VmRSS")
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  peak = _peak_rss_kib()
  rss = {"rss_peak_delta_mib": ((peak - before) / 1024 if reset and peak and before else None)}
  if not reset:
    rss["rss_note"] = "cannot reset VmHWM (/proc/self/clear_refs not writable)"
  return times, rss


def _backpack_worker(args, model, variables, images, labels, groups) -> tuple[Any, dict]:
  """BackPACK DiagGGNExact once per group (bench/curvature.py's protocol) on this batch."""
  import copy
  import warnings

  import torch
  from backpack import backpack, extend
  from backpack.extensions import DiagGGNExact

  from bench import torch_mirror

  threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  torch.set_num_threads(threads)
  hw = (args.image_size, args.image_size)
  net = torch_mirror.build(args.model, args.num_classes, hw)
  torch_mirror.load_flax_params(net, jax_to_numpy(variables["params"]))
  net = extend(copy.deepcopy(net))
  ce = extend(torch.nn.CrossEntropyLoss(reduction="mean"))
  x = torch_mirror.to_nchw(np.asarray(images))
  y = torch.from_numpy(np.asarray(labels).astype(np.int64))
  g = np.asarray(groups)
  per_group = [
    (x[idx].contiguous(), y[idx].contiguous())
    for idx in (torch.from_numpy(np.flatnonzero(g == k)) for k in range(args.num_groups))
  ]

  def run():
    out = []
    for xg, yg in per_group:
      for p in net.parameters():
        p.grad = None
      loss = ce(net(xg), yg)
      with backpack(DiagGGNExact()), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loss.backward()
      out.append([p.diag_ggn_exact.clone() for p in net.parameters()])
    return out

  return run, {"torch_num_threads": torch.get_num_threads()}


def jax_to_numpy(tree):
  import jax

  return jax.tree.map(np.asarray, tree)


def worker(args) -> dict[str, Any]:
  """One measurement (``--worker grad``, ``<chunk size>``, ``budget:<MiB>`` or ``backpack``) in
  this fresh process."""
  import jax
  import jax.numpy as jnp

  from fairjax import curvature

  model, variables, images, labels, groups, n_params = _setup(args)
  out: dict[str, Any] = {
    "worker": args.worker,
    "params": n_params,
    "device": str(jax.local_devices()[0]),
    "backend": jax.default_backend(),
  }
  kw = {"train": False}

  if args.worker == "backpack":
    run, info = _backpack_worker(args, model, variables, images, labels, groups)
    out.update(info)
    out["xla"] = {"xla_total_bytes": None, "xla_note": "not an XLA executable"}
    out["backend"] = "torch-cpu"
  elif args.worker.startswith("budget:"):
    budget = int(float(args.worker.split(":", 1)[1]) * MIB)
    run = lambda: curvature.per_group_diag(  # noqa: E731
      model,
      variables,
      images,
      labels,
      groups,
      num_groups=args.num_groups,
      method="exact",
      apply_kwargs=kw,
      memory_budget_bytes=budget,  # 0 = no budget (None would be the library's default)
    )
    t0 = time.perf_counter()
    if budget:
      static = dict(
        num_groups=args.num_groups,
        method="exact",
        num_samples=1,
        apply_kwargs=curvature._scoring.freeze(kw),
        max_block=curvature.DEFAULT_MAX_BLOCK_ELEMENTS,
        grouped_convs=True,
        families=frozenset(curvature._FAST_FAMILIES),
        loss="softmax_cross_entropy",
      )
      chunk, compiled = curvature.budget_chunk_size(
        variables, images, labels, groups, None, budget, static, model
      )
      out["budget_bytes"] = budget
      out["chunk"] = chunk
      out["xla"] = (
        _memory_analysis(compiled[1])
        if compiled is not None
        else {"xla_total_bytes": None, "xla_note": "chosen chunk not compiled by the plan"}
      )
      # With several chunks the eager loop keeps one more G x params accumulator.
      if compiled is not None and chunk < args.batch:
        out["xla"]["plus_accumulator_bytes"] = out["xla"]["xla_total_bytes"] + out["xla"].get(
          "output_size_in_bytes", 0
        )
    else:
      compiled = (
        jax.jit(
          lambda v, x, y, g: curvature.per_group_diag(
            model, v, x, y, g, num_groups=args.num_groups, method="exact", apply_kwargs=kw
          )
        )
        .lower(variables, images, labels, groups)
        .compile()
      )
      out["chunk"] = args.batch
      out["xla"] = _memory_analysis(compiled)
      del compiled
    out["compile_s"] = time.perf_counter() - t0
  elif args.worker == "grad":

    def mean_ce(params, x, y):
      logits = model.apply({**variables, "params": params}, x, **kw)
      logp = jax.nn.log_softmax(logits, axis=-1)
      return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))

    grad = jax.jit(jax.grad(mean_ce))
    t0 = time.perf_counter()
    compiled = grad.lower(variables["params"], images, labels).compile()
    out["compile_s"] = time.perf_counter() - t0
    out["xla"] = _memory_analysis(compiled)
    run = lambda: compiled(variables["params"], images, labels)  # noqa: E731
  else:
    chunk = int(args.worker)

    def one_chunk(v, x, y, g):
      return curvature.per_group_diag(
        model, v, x, y, g, num_groups=args.num_groups, method="exact", apply_kwargs=kw
      )

    t0 = time.perf_counter()
    compiled = (
      jax.jit(one_chunk).lower(variables, images[:chunk], labels[:chunk], groups[:chunk]).compile()
    )
    out["compile_s"] = time.perf_counter() - t0
    out["xla"] = _memory_analysis(compiled)
    del compiled  # the eager loop below compiles its own (same) program
    run = lambda: curvature.per_group_diag(  # noqa: E731
      model,
      variables,
      images,
      labels,
      groups,
      num_groups=args.num_groups,
      method="exact",
      chunk_size=chunk,
      apply_kwargs=kw,
    )

  if not args.compile_only:
    t0 = time.perf_counter()
    jax.block_until_ready(run())  # warm-up (and, for chunks, their compilation)
    out["first_call_s"] = time.perf_counter() - t0
    times, rss = _timed(run, args.repeats)
    out["times_s"] = times
    out["median_s"] = statistics.median(times)
    out.update(rss)
  out["device_peak_bytes_in_use"] = _device_peak()
  hwm = _peak_rss_kib()
  out["process_peak_rss_mib"] = None if hwm is None else hwm / 1024
  return out


# -- orchestration ---------------------------------------------------------------------------------


def _run_worker(args, what: str) -> dict[str, Any]:
  """Runs ``what`` in ``--rss-repeats`` fresh workers; medians of their figures."""
  runs = [_run_worker_once(args, what) for _ in range(args.rss_repeats)]
  ok = [r for r in runs if "error" not in r]
  if not ok:
    return runs[0]
  out = dict(ok[0])
  for key in (
    "median_s",
    "process_peak_rss_mib",
    "rss_peak_delta_mib",
    "compile_s",
    "first_call_s",
    "worker_wall_s",
  ):
    values = [r[key] for r in ok if r.get(key) is not None]
    if values:
      out[key] = statistics.median(values)
      if len(ok) > 1:
        out[key + "_runs"] = values
  out["times_s"] = [t for r in ok for t in r.get("times_s", [])]
  return out


def _run_worker_once(args, what: str) -> dict[str, Any]:
  cmd = [
    sys.executable,
    "-m",
    "bench.memory",
    "--worker",
    what,
    "--model",
    args.model,
    "--batch",
    str(args.batch),
    "--image-size",
    str(args.image_size),
    "--num-classes",
    str(args.num_classes),
    "--num-groups",
    str(args.num_groups),
    "--width",
    str(args.width),
    "--repeats",
    str(args.repeats),
    "--seed",
    str(args.seed),
    "--chunk-sizes",
    args.chunk_sizes,
  ]
  if args.compile_only:
    cmd.append("--compile-only")
  env = dict(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)  # freed buffers go back to the OS
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  t0 = time.perf_counter()
  try:
    res = subprocess.run(
      cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout
    )
  except subprocess.TimeoutExpired:
    return {"worker": what, "error": f"timed out after {args.timeout} s"}
  wall = time.perf_counter() - t0
  lines = [l for l in res.stdout.splitlines() if l.startswith("{")]
  if res.returncode != 0 or not lines:
    tail = res.stderr.strip().splitlines()[-3:]
    return {
      "worker": what,
      "error": f"exit {res.returncode}: {' | '.join(tail)}",
      "worker_wall_s": wall,
    }
  out = json.loads(lines[-1])
  out["worker_wall_s"] = wall
  return out


def _mib(x: Any) -> str:
  return "-" if x is None else f"{x / MIB:,.0f}"


def _table(result: dict[str, Any]) -> str:
  grad = result.get("grad", {})
  g_med = grad.get("median_s")
  rows = [
    "| setting | XLA plan per call MiB | x grad time | median s | device peak MiB | "
    "process peak RSS MiB | RSS delta MiB |",
    "|---|---|---|---|---|---|---|",
  ]

  def row(name, r):
    if "error" in r:
      return f"| {name} | {r['error']} | | | | | |"
    med = r.get("median_s")
    ratio = "-" if med is None or not g_med else f"{med / g_med:.2f}"
    fmt = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
    plan = r["xla"].get("plus_accumulator_bytes", r["xla"].get("xla_total_bytes"))
    return (
      f"| {name} | {_mib(plan)} | {ratio} | "
      f"{fmt(med, '.3f')} | {_mib(r.get('device_peak_bytes_in_use'))} | "
      f"{fmt(r.get('process_peak_rss_mib'), ',.0f')} | "
      f"{fmt(r.get('rss_peak_delta_mib'), ',.0f')} |"
    )

  if grad:
    rows.append(row("plain grad (whole batch)", grad))
  for c, r in result["chunks"].items():
    rows.append(row(f"chunk {c}", r))
  for b, r in result.get("budgets", {}).items():
    rows.append(
      row(
        f"budget {b} MiB -> chunk {r.get('chunk', '?')}" if b != "0" else "no budget (whole batch)",
        r,
      )
    )
  if "backpack" in result:
    rows.append(row("BackPACK DiagGGNExact (per group)", result["backpack"]))
  return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument(
    "--model", default="resnet18", choices=("resnet18", "vgg11", "small_cnn", "vit_ti16")
  )
  p.add_argument(
    "--chunk-sizes",
    default="1,2,4,8,16,32,64",
    help="comma-separated samples per compiled call ('' = none)",
  )
  p.add_argument(
    "--budgets-mib",
    default="",
    help="comma-separated per_group_diag memory budgets in MiB (0 = no budget)",
  )
  p.add_argument(
    "--backpack",
    action="store_true",
    help="also BackPACK DiagGGNExact's time and peak RSS (vgg11 / small_cnn)",
  )
  p.add_argument(
    "--rss-repeats",
    type=int,
    default=1,
    help="fresh workers per setting (medians of their figures)",
  )
  p.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median)")
  p.add_argument(
    "--out", default=None, help="JSON output (default bench/results/memory_<backend>.json)"
  )
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument(
    "--num-classes",
    type=int,
    default=9,
    help="exact uses C-1 columns; 9 = configs/fitzpatrick17k.py",
  )
  p.add_argument("--num-groups", type=int, default=2)
  p.add_argument("--width", type=int, default=64, help="ResNet-18 stem width (64 = standard)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--compile-only",
    action="store_true",
    help="only XLA's compiled memory plans; run nothing (fast on a small CPU)",
  )
  p.add_argument("--no-grad", action="store_true", help="skip the plain-gradient baseline")
  p.add_argument("--timeout", type=int, default=3600, help="seconds per worker")
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.repeats < 1:
    p.error("--repeats must be >= 1")
  try:
    chunks = [int(c) for c in args.chunk_sizes.split(",") if c.strip()]
  except ValueError:
    p.error(f"--chunk-sizes={args.chunk_sizes!r}: comma-separated integers, e.g. 1,4,16")
  if any(c < 1 or c > args.batch for c in chunks):
    p.error(f"--chunk-sizes={args.chunk_sizes!r}: each must be in [1, --batch={args.batch}]")
  try:
    budgets = [float(b) for b in args.budgets_mib.split(",") if b.strip()]
  except ValueError:
    p.error(f"--budgets-mib={args.budgets_mib!r}: comma-separated numbers, e.g. 0,1500,1000")
  if any(b < 0 for b in budgets):
    p.error(f"--budgets-mib={args.budgets_mib!r}: budgets must be >= 0")
  if args.backpack and args.model not in ("vgg11", "small_cnn"):
    p.error(f"--backpack needs a model with a torch mirror (vgg11, small_cnn), not {args.model}")
  if args.rss_repeats < 1:
    p.error("--rss-repeats must be >= 1")

  if args.worker is not None:
    print(json.dumps(worker(args)), flush=True)
    return

  sys.path.insert(0, REPO)
  from bench.common import environment
  from fairjax.checkpoint import write_json_atomic

  result: dict[str, Any] = {
    "setup": {
      "model": args.model,
      "width": args.width,
      "image_size": args.image_size,
      "batch": args.batch,
      "num_classes": args.num_classes,
      "num_groups": args.num_groups,
      "method": "exact",
      "columns": args.num_classes - 1,
      "dtype": "float32",
      "repeats": args.repeats,
      "compile_only": args.compile_only,
      "rss_repeats": args.rss_repeats,
    },
    "environment": environment(("XLA_PYTHON_CLIENT_PREALLOCATE",)),
    "chunks": {},
  }
  out_path = args.out
  if not args.no_grad:
    log("plain gradient of the whole batch ...")
    result["grad"] = _run_worker(args, "grad")
    log(f"  -> {json.dumps({k: v for k, v in result['grad'].items() if k != 'times_s'})}")
  for c in chunks:
    log(f"per_group_diag exact, chunk_size={c} ...")
    r = _run_worker(args, str(c))
    result["chunks"][str(c)] = r
    log(f"  -> {json.dumps({k: v for k, v in r.items() if k != 'times_s'})}")
    if out_path is None:
      backend = r.get("backend") or result.get("grad", {}).get("backend") or "unknown"
      out_path = os.path.join(REPO, "bench", "results", f"memory_{backend}.json")
    result["environment"]["loadavg_at_end"] = list(os.getloadavg())
    write_json_atomic(out_path, result)
  settings = [("budgets", f"budget:{b:g}", f"{b:g}") for b in budgets]
  if args.backpack and not args.compile_only:
    settings.append((None, "backpack", "backpack"))
  for section, what, name in settings:
    log(f"{what} ...")
    r = _run_worker(args, what)
    if section is None:
      result[name] = r
    else:
      result.setdefault(section, {})[name] = r
    log(f"  -> {json.dumps({k: v for k, v in r.items() if k != 'times_s'})}")
    if out_path is None:
      out_path = os.path.join(
        REPO, "bench", "results", f"memory_{args.model}_{r.get('backend', 'unknown')}.json"
      )
    result["environment"]["loadavg_at_end"] = list(os.getloadavg())
    write_json_atomic(out_path, result)
  result["ratios"] = _ratios(result)
  if out_path is not None:
    write_json_atomic(out_path, result)
  print(_table(result))
  for key, value in result["ratios"].items():
    print(f"- {key}: {value:.3f}" if value is not None else f"- {key}: -")
  log(f"wrote {out_path}")


def _ratios(result: dict[str, Any]) -> dict[str, float | None]:
  """Time / gradient time and peak RSS / BackPACK's, per budget."""
  out: dict[str, float | None] = {}
  g_med = result.get("grad", {}).get("median_s")
  bp = result.get("backpack", {})
  for b, r in result.get("budgets", {}).items():
    med = r.get("median_s")
    out[f"budget {b} MiB: time / grad"] = med / g_med if med and g_med else None
    for key in ("process_peak_rss_mib", "rss_peak_delta_mib"):
      mine, theirs = r.get(key), bp.get(key)
      out[f"budget {b} MiB: {key} / BackPACK"] = mine / theirs if mine and theirs else None
    base = result["budgets"].get("0", {}).get("median_s")
    out[f"budget {b} MiB: time / no budget"] = med / base if med and base else None
  if bp.get("median_s") and g_med:
    out["BackPACK time / JAX grad"] = bp["median_s"] / g_med
  return out


if __name__ == "__main__":
  main()
