"""Where the time of VGG-11's exact per-group curvature pass and of its plain gradient goes.

Usage (from the repository root; see bench/README.md, "Profile of the exact pass")::

    python -m bench.profile_curvature [--image-sizes 64,32] [--methods jax_grad,fairjax_exact]
        [--variants xla,im2col_tiny] [--repeats 3] [--out bench/results/profile_curvature_cpu.json]

Setting: bench/curvature.py's ``vgg11`` config (VGG-11 without BN, classifier width 512, batch
32, 8 classes, 2 groups), its ``jax_grad`` (jitted gradient of the mean cross-entropy, the floor)
and ``fairjax_exact`` (``per_group_diag(method="exact")``) at each image size.

Every (variant, image size, method) runs in a fresh worker subprocess (so XLA flags can differ
per variant), which compiles the function ahead of time, times ``--repeats`` calls after a warm-up
(median), then records ``--trace-calls`` more calls with ``jax.profiler`` and reads the trace back
with ``jax.profiler.ProfileData`` (no TensorFlow needed). Each XLA:CPU thunk event carries the
name of the entry-level HLO instruction it ran (``hlo_op``); the script maps that instruction,
through the ``metadata={op_name=...}`` of ``compiled.as_text()``, to

* the Flax module (``conv0 .. conv7``, ``fc0 .. fc2``; ``other`` = pooling, ReLU outside the
  modules, loss, layout copies) and its layer kind (a conv by the size of its feature map, dense);
* the part of the algorithm. Gradient: ``forward`` / ``backward``. Exact pass: ``forward`` (the
  vmapped per-sample forward), ``column backprop`` (the vmapped VJP of the C-1 loss-Hessian
  columns), ``squares`` (per-sample weight-gradient squares and their group sums, i.e.
  ``curvature._conv_diag`` / ``_dense_general_diag``, found by a ``jax.named_scope`` that this
  script wraps around them: metadata only, the computation is unchanged), ``other``.

It also counts the conv and dot FLOPs of every instruction from its shapes (elementwise work is
not counted), so each part and each layer gets an achieved GFLOP/s, and flags convolutions whose
operands XLA's ``ConvOperandSwapper`` (part of algsimp) swapped: a 3x3 conv on a map with fewer
than 9 positions (2x2, 1x1) becomes a conv with dimension labels ``01fb_o01i->f01b`` that XLA:CPU
runs far slower than the original layout.

Variants (all keep the model and its weights):

* ``xla``: the program as is.
* ``im2col_tiny``: while tracing, ``jax.lax.conv_general_dilated`` (which ``flax.linen.Conv``
  calls) is replaced for convs whose input map has fewer positions than the kernel has taps by an
  explicit im2col (pad + one slice per kernel tap, concatenated) and one matmul; taps that only
  see padding are dropped (exact zeros). Every other conv is left alone. Results differ from
  ``xla`` only by float32 rounding; the JSON records the distance.
* ``no_algsimp``: ``XLA_FLAGS=--xla_disable_hlo_passes=algsimp`` (disables the whole algebraic
  simplifier, including the operand swap; XLA:CPU has no flag for the swap alone).
* ``conv_tiny_maps``: ``curvature._IM2COL_TINY_MAPS = False``, i.e. the exact pass before its
  own patches path for such convs (design.md section 1.7): since that path, ``xla`` already runs
  them as patches inside ``per_group_diag`` (not in the plain gradient).

A worker that dies (e.g. a crash inside XLA) is recorded with its exit code and the run goes on.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from bench import common
from bench import curvature as bc
from fairjax.checkpoint import write_json_atomic

CONFIG = "vgg11"
VARIANTS = {
  "xla": {},
  "im2col_tiny": {},
  "no_algsimp": {"XLA_FLAGS": "--xla_disable_hlo_passes=algsimp"},
  "conv_tiny_maps": {},
}
SQUARES_SCOPE = "fjsq"  # named scope wrapped around the per-layer squares (metadata only)
PARTS = {
  "jax_grad": ("forward", "backward", "other"),
  "fairjax_exact": ("forward", "column backprop", "squares", "other"),
}


def log(msg: str) -> None:
  print(f"[bench.profile_curvature {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# The im2col variant: convs on maps with fewer positions than kernel taps as one matmul.


def _im2col_conv_factory(original):
  import jax.numpy as jnp
  from jax import lax

  def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, **kw):
    dnums = kw.get("dimension_numbers")
    rank = lhs.ndim - 2
    canonical = lax.conv_dimension_numbers(
      lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC") if rank == 2 else dnums
    )
    given = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dnums) if dnums else None
    spatial = lhs.shape[1:-1]
    kernel = rhs.shape[:rank]
    eligible = (
      rank == 2
      and given == canonical
      and kw.get("feature_group_count", 1) == 1
      and kw.get("batch_group_count", 1) == 1
      and all(s == 1 for s in window_strides)
      and all(d == 1 for d in (lhs_dilation or (1,) * rank))
      and all(d == 1 for d in (rhs_dilation or (1,) * rank))
      and math.prod(spatial) < math.prod(kernel)
    )
    if not eligible:
      return original(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, **kw)
    pads = (
      lax.padtype_to_pads(spatial, kernel, window_strides, padding)
      if isinstance(padding, str)
      else [tuple(p) for p in padding]
    )
    out = [s + lo + hi - k + 1 for s, (lo, hi), k in zip(spatial, pads, kernel)]
    x = jnp.pad(lhs, ((0, 0),) + tuple(pads) + ((0, 0),))
    windows, taps = [], []
    for i in range(kernel[0]):
      for j in range(kernel[1]):
        # A tap whose window lies entirely in the padding contributes exact zeros: drop it.
        rows = range(i, i + out[0])
        cols = range(j, j + out[1])
        lo0, lo1 = pads[0][0], pads[1][0]
        if not any(lo0 <= r < lo0 + spatial[0] for r in rows) or not any(
          lo1 <= c < lo1 + spatial[1] for c in cols
        ):
          continue
        windows.append(x[:, i : i + out[0], j : j + out[1], :])
        taps.append(rhs[i, j])  # [C_in, C_out]
    if not windows or min(out) < 1:  # degenerate: leave it to XLA
      return original(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, **kw)
    patches = jnp.concatenate(windows, axis=-1)  # [N, *out, taps * C_in]
    weights = jnp.concatenate(taps, axis=0)  # [taps * C_in, C_out]
    y = lax.dot_general(
      patches,
      weights,
      (((3,), (0,)), ((), ())),
      precision=kw.get("precision"),
      preferred_element_type=kw.get("preferred_element_type"),
    )
    return y

  return conv


# ----------------------------------------------------------------------------------------------
# HLO text: instructions, their metadata and their conv/dot FLOPs.

_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_SHAPE = re.compile(r"^[a-z0-9]+\[([0-9,]*)\]")


def _split_shape(rest: str) -> tuple[str, str]:
  """``'f32[2,3]{1,0} op(...)...'`` -> (shape text, remainder); tuples are balanced."""
  if rest.startswith("("):
    depth = 0
    for i, ch in enumerate(rest):
      depth += ch == "("
      depth -= ch == ")"
      if depth == 0:
        return rest[: i + 1], rest[i + 1 :].lstrip()
  shape, _, tail = rest.partition(" ")
  return shape, tail


def _dims(shape: str) -> tuple[int, ...] | None:
  m = _SHAPE.match(shape)
  if not m:
    return None
  return tuple(int(d) for d in m.group(1).split(",") if d)


def parse_hlo(text: str) -> tuple[dict[str, dict], str]:
  """``{computation: {instr: info}}`` and the entry computation's name."""
  comps: dict[str, dict] = {}
  entry = ""
  current = None
  for line in text.splitlines():
    header = _HEADER.match(line)
    if header and not line.startswith(" "):
      current = header.group(1)
      comps[current] = {}
      if line.startswith("ENTRY"):
        entry = current
      continue
    if current is None:
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    is_root = line.lstrip().startswith("ROOT ")
    name, rest = m.group(1), m.group(2)
    shape, tail = _split_shape(rest)
    opcode = tail.split("(", 1)[0].strip()
    args = tail.split("(", 1)[1] if "(" in tail else ""
    # Operands are the %names before the closing paren of the call.
    depth, end = 1, len(args)
    for i, ch in enumerate(args):
      depth += ch == "("
      depth -= ch == ")"
      if depth == 0:
        end = i
        break
    operands = re.findall(r"%([\w.\-]+)", args[:end])
    attrs = args[end + 1 :]
    op_name = re.search(r'op_name="([^"]*)"', attrs)
    comps[current][name] = {
      "shape": shape,
      "dims": _dims(shape),
      "opcode": opcode,
      "operands": operands,
      "attrs": attrs,
      "op_name": op_name.group(1) if op_name else "",
      "calls": re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", attrs),
      "is_root": is_root,
    }
  return comps, entry


def _instr_flops(comp: dict, info: dict) -> float:
  dims = info["dims"]
  if dims is None:
    return 0.0
  if info["opcode"] == "convolution":
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", info["attrs"])
    window = re.search(r"window=\{size=([0-9x]+)", info["attrs"])
    rhs = comp.get(info["operands"][1], {}).get("dims") if len(info["operands"]) > 1 else None
    if not (labels and rhs):
      return 0.0
    in_features = rhs[labels.group(2).index("i")]
    taps = math.prod(int(s) for s in window.group(1).split("x")) if window else 1
    return 2.0 * math.prod(dims) * taps * in_features
  if info["opcode"] == "dot":
    lhs = comp.get(info["operands"][0], {}).get("dims")
    contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", info["attrs"])
    if lhs is None or contracting is None:
      return 0.0
    depth = math.prod(lhs[int(d)] for d in contracting.group(1).split(",") if d)
    return 2.0 * math.prod(dims) * depth
  return 0.0


def _swapped(info: dict) -> bool:
  return info["opcode"] == "convolution" and "->f01b" in info["attrs"]


def _walk(comps: dict, comp_name: str, seen: set[str]) -> tuple[float, set[str], bool, str]:
  """(flops, opcodes, has operand-swapped conv, op_name of a conv/dot) of a called computation."""
  flops, opcodes, swapped, heavy = 0.0, set(), False, ""
  if comp_name in seen or comp_name not in comps:
    return flops, opcodes, swapped, heavy
  seen.add(comp_name)
  comp = comps[comp_name]
  for info in comp.values():
    flops += _instr_flops(comp, info)
    opcodes.add(info["opcode"])
    swapped |= _swapped(info)
    if info["opcode"] in ("convolution", "dot") and info["op_name"] and not heavy:
      heavy = info["op_name"]
    for callee in info["calls"]:
      f, o, s, h = _walk(comps, callee, seen)
      flops, opcodes, swapped, heavy = flops + f, opcodes | o, swapped or s, heavy or h
  return flops, opcodes, swapped, heavy


def entry_ops(text: str, output_modules: list[str] | None = None) -> dict[str, dict[str, Any]]:
  """Entry-level instruction -> op_name, op category, conv/dot FLOPs, output dims.

  XLA drops the metadata of some instructions (e.g. weight-gradient convs). When
  ``output_modules`` names the module of each element of the entry's ROOT tuple, instructions
  without a module in their op_name inherit it from the output they feed (walking operands
  back from each ROOT element until an instruction that has a module): ``inherited_module``.
  """
  comps, entry = parse_hlo(text)
  out = {}
  comp = comps[entry]
  for name, info in comp.items():
    flops = _instr_flops(comp, info)
    opcodes, swapped = {info["opcode"]}, _swapped(info)
    op_name = info["op_name"]
    for callee in info["calls"]:
      f, o, s, h = _walk(comps, callee, set())
      flops, opcodes, swapped = flops + f, opcodes | o, swapped or s
      if h and not _MODULE.search(op_name):
        op_name = h
    info["op_name_used"] = op_name
    category = (
      "conv (operand-swapped)"
      if swapped
      else "conv"
      if "convolution" in opcodes
      else "dot"
      if "dot" in opcodes
      else "other"
    )
    out[name] = {
      "op_name": op_name,
      "category": category,
      "flops": flops,
      "dims": info["dims"],
      "inherited_module": None,
      "operands": info["operands"],
    }
  root = next((n for n, i in comp.items() if i.get("is_root")), None)
  if output_modules and root and len(comp[root]["operands"]) == len(output_modules):
    for operand, module in zip(comp[root]["operands"], output_modules):
      stack, seen = [operand], set()
      while stack:
        n = stack.pop()
        if n not in out or n in seen:
          continue
        seen.add(n)
        own = _MODULE.search(out[n]["op_name"])
        if own and own.group(1) != module:
          continue
        # Through the module's own instructions, instructions without metadata, and convs/dots
        # whose metadata names no module (XLA keeps the op_name of what it fused them with).
        if not own and out[n]["op_name"] and out[n]["category"] == "other":
          continue
        if not own:
          out[n]["inherited_module"] = module
        stack += comp[n]["operands"]
  return out


# ----------------------------------------------------------------------------------------------
# Classification.

_MODULE = re.compile(r"(?:^|/)((?:conv|fc)\d+)(?:/|$)")


def classify(op_name: str, method: str) -> tuple[str, str]:
  """(module or 'other', part) of an instruction from its op_name."""
  m = _MODULE.search(op_name)
  module = m.group(1) if m else "other"
  if method == "fairjax_exact":
    if f"/{SQUARES_SCOPE}/" in op_name or op_name.endswith(f"/{SQUARES_SCOPE}"):
      part = "squares"
    elif "transpose(" in op_name:
      part = "column backprop"
    elif "jvp(" in op_name and m:
      part = "forward"
    elif "jvp(" in op_name and "VGG11" in op_name:
      part = "forward"
    else:
      part = "other"
  else:
    if "transpose(" in op_name:
      part = "backward"
    elif "jvp(" in op_name:
      part = "forward"
    else:
      part = "other"
  return module, part


def _map_positions(kind: str) -> int:
  h, w = kind.split()[1].split("x")
  return int(h) * int(w)


def label_ops(ops: dict[str, dict], method: str) -> dict[str, tuple[str, str]]:
  """(module, part) of every entry instruction.

  From its op_name; else (metadata dropped by XLA) from the module output it feeds
  (``inherited_module``: part ``backward`` / ``squares``); else, for an instruction without
  metadata, from its users when all users that have a module agree (e.g. the reversed kernel a
  backward-input conv reads). Pooling, ReLU and the loss stay ``other``.
  """
  labels = {n: classify(i["op_name"], method) for n, i in ops.items()}
  for n, i in ops.items():
    if labels[n][0] == "other" and i.get("inherited_module"):
      labels[n] = (i["inherited_module"], "backward" if method == "jax_grad" else "squares")
  users: dict[str, list[str]] = collections.defaultdict(list)
  for n, i in ops.items():
    for o in i.get("operands", ()):
      users[o].append(n)
  changed = True
  while changed:
    changed = False
    for n in ops:
      if labels[n][0] != "other" or ops[n]["op_name"]:
        continue
      found = {labels[u] for u in users[n] if labels[u][0] != "other"}
      if len(found) == 1:
        labels[n] = found.pop()
        changed = True
  return labels


def layer_maps(model, params, image_hw) -> dict[str, str]:
  """Module name -> layer kind: ``conv HxW`` (input feature map) or ``dense``."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  kinds: dict[str, str] = {}

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and context.module.name in params:
      x = args[0]
      if isinstance(context.module, nn.Conv):
        kinds[context.module.name] = f"conv {x.shape[1]}x{x.shape[2]}"
      elif isinstance(context.module, nn.Dense):
        kinds[context.module.name] = "dense"
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(
      lambda p: model.apply({"params": p}, jnp.zeros((1, *image_hw, 3), jnp.float32)), params
    )
  return kinds


# ----------------------------------------------------------------------------------------------
# Profile reading.


def trace_op_times(compiled, args, calls: int, module_name: str) -> dict[str, float]:
  """Mean wall time per call (s) of every entry instruction, from a jax.profiler trace."""
  import jax

  tmp = tempfile.mkdtemp(prefix="fairjax_profile_")
  jax.profiler.start_trace(tmp)
  try:
    for _ in range(calls):
      jax.block_until_ready(compiled(*args))
  finally:
    jax.profiler.stop_trace()
  files = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)
  if not files:
    raise RuntimeError(f"jax.profiler wrote no xplane.pb under {tmp}")
  data = jax.profiler.ProfileData.from_file(files[0])
  times: dict[str, float] = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if stats.get("hlo_module") == module_name and "hlo_op" in stats:
          times[stats["hlo_op"]] += event.duration_ns * 1e-9 / calls
  return dict(times)


# ----------------------------------------------------------------------------------------------
# One worker: one (variant, image size, method).


def _with_squares_scope():
  """Wraps fairjax's per-layer squares in a named scope (op_name metadata only)."""
  import functools

  import jax

  from fairjax import curvature

  def scoped(fn):
    @functools.wraps(fn)
    def wrapper(spec, *a, **k):
      with jax.named_scope(SQUARES_SCOPE):
        with jax.named_scope("/".join(spec.path)):
          return fn(spec, *a, **k)

    return wrapper

  for name in ("_conv_diag", "_dense_general_diag", "_norm_diag"):
    setattr(curvature, name, scoped(getattr(curvature, name)))


def worker(variant: str, size: int, method: str, repeats: int, warmup: int, calls: int, out_npz):
  import jax
  from jax import lax

  _with_squares_scope()
  hw = (size, size)
  model, params, state = bc.make_flax(CONFIG, hw, 0)
  batch = bc.make_batch(hw, 0)
  fn, args = bc.jax_methods(model, batch, params, 0, state)[method]
  kinds = layer_maps(model, params, hw)

  tiny = [m for m, k in kinds.items() if k.startswith("conv ") and _map_positions(k) < 9]
  if variant == "im2col_tiny" and not tiny:
    return {
      "variant": variant,
      "image_size": size,
      "method": method,
      "skipped": "no conv map "
      "has fewer positions than its 3x3 kernel has taps: the program equals `xla`",
    }

  if variant == "conv_tiny_maps":
    from fairjax import curvature

    curvature._IM2COL_TINY_MAPS = False
  original = lax.conv_general_dilated
  if variant == "im2col_tiny":
    lax.conv_general_dilated = _im2col_conv_factory(original)
  try:
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
  finally:
    lax.conv_general_dilated = original
  text = compiled.as_text()
  module_name = re.match(r"HloModule\s+([\w.\-]+)", text).group(1)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get("flops", float("nan")))

  out = None
  for _ in range(warmup):
    out = jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    s = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - s)
  median = statistics.median(times)
  log(f"{variant} {size} {method}: median {median:.3f} s, {xla_flops / median / 1e9:.1f} GFLOP/s")
  np.savez(out_npz, *[np.asarray(x) for x in jax.tree.leaves(out)])

  op_times = trace_op_times(compiled, args, calls, module_name) if calls else {}
  leaf_paths = [
    "/".join(str(getattr(k, "key", k)) for k in path)
    for path, _ in jax.tree_util.tree_flatten_with_path(out)[0]
  ]
  output_modules = [
    (_MODULE.search(p) or re.match("()", "")).group(1) or "other" for p in leaf_paths
  ]
  ops = entry_ops(text, output_modules)
  labels = label_ops(ops, method)
  rows = []
  for name, secs in op_times.items():
    info = ops.get(name, {"op_name": "", "category": "other", "flops": 0.0, "dims": None})
    module, part = labels.get(name, ("other", "other"))
    rows.append(
      {
        "op": name,
        "s": secs,
        "module": module,
        "kind": kinds.get(module, "other"),
        "part": part,
        "category": info["category"],
        "flops": info["flops"],
        "dims": info["dims"],
        "op_name": info["op_name"],
        "inherited_module": info.get("inherited_module"),
      }
    )
  return {
    "variant": variant,
    "image_size": size,
    "method": method,
    "compile_s": compile_s,
    "times_s": times,
    "median_s": median,
    "xla_flops": xla_flops,
    "gflops_per_s": xla_flops / median / 1e9,
    "swapped_convs_in_hlo": sum(
      1 for i in ops.values() if i["category"] == "conv (operand-swapped)"
    ),
    "trace_calls": calls,
    "ops": sorted(rows, key=lambda r: -r["s"]),
    "layer_kinds": kinds,
    "loadavg_end": list(os.getloadavg()),
  }


# ----------------------------------------------------------------------------------------------
# Aggregation and the markdown report.


# Above any rate 2 CPU cores reach: such an event timed only the launch of a thunk that XLA:CPU
# ran asynchronously on its thread pool (plain Eigen dots/convs), not the work.
UNTIMED_GFLOPS = 500.0


def aggregate(run: dict) -> dict[str, Any]:
  ops = run["ops"]
  total = sum(r["s"] for r in ops) or float("nan")
  untimed = [
    r for r in ops if r["flops"] and r["flops"] / max(r["s"], 1e-12) / 1e9 > UNTIMED_GFLOPS
  ]

  def group(key):
    acc: dict[str, dict[str, float]] = {}
    for r in ops:
      k = key(r)
      a = acc.setdefault(k, {"s": 0.0, "flops": 0.0})
      a["s"] += r["s"]
      a["flops"] += r["flops"]
    return {
      k: {
        "fraction": v["s"] / total,
        "s": v["s"],
        "gflop": v["flops"] / 1e9,
        "gflops_per_s": v["flops"] / v["s"] / 1e9 if v["s"] else None,
      }
      for k, v in sorted(acc.items(), key=lambda kv: -kv[1]["s"])
    }

  return {
    "op_time_sum_s": total,
    "untimed_ops": [r["op"] for r in untimed],
    "untimed_gflop": sum(r["flops"] for r in untimed) / 1e9,
    "by_kind": group(lambda r: r["kind"]),
    "by_part": group(lambda r: r["part"]),
    "by_module_part": group(lambda r: f"{r['module']} | {r['part']}"),
    "by_module": group(lambda r: r["module"]),
    "by_category": group(lambda r: r["category"]),
  }


def _pct(x):
  return "—" if x is None else f"{100 * x:.1f}%"


def _g(x):
  return "—" if x is None else f"{x:.1f}"


def _kind_order(kind: str) -> tuple:
  m = re.match(r"conv (\d+)x", kind)
  return (0, -int(m.group(1))) if m else ((1, 0) if kind == "dense" else (2, 0))


def markdown(results: dict) -> str:
  runs = [r for r in results["runs"] if not (r.get("skipped") or r.get("failed"))]
  lines = [
    "| variant | image | method | median s | × grad (same variant, size) | XLA GFLOP | GFLOP/s "
    "| swapped convs | GFLOP in untimed async thunks | max rel. diff vs `xla` |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  by_key = {(r["variant"], r["image_size"], r["method"]): r for r in runs}
  for r in runs:
    grad = by_key.get((r["variant"], r["image_size"], "jax_grad"))
    ratio = r["median_s"] / grad["median_s"] if grad and r["method"] != "jax_grad" else None
    diff = r.get("max_rel_diff_vs_xla")
    untimed = f"{r['agg']['untimed_gflop']:.1f}" if r.get("agg") else "—"
    lines.append(
      f"| {r['variant']} | {r['image_size']} | `{r['method']}` | {r['median_s']:.3f} | "
      f"{'—' if ratio is None else f'{ratio:.2f}'} | {r['xla_flops'] / 1e9:.1f} | "
      f"{r['gflops_per_s']:.1f} | {r['swapped_convs_in_hlo']} | {untimed} | "
      f"{'—' if diff is None else f'{diff:.1e}'} |"
    )
  profiled = [r for r in runs if r.get("agg")]
  if profiled:
    kinds = sorted({k for r in profiled for k in r["agg"]["by_kind"]}, key=_kind_order)
    head = [f"{r['variant']} {r['image_size']} `{r['method']}`" for r in profiled]
    lines += ["", "Share of op time by layer kind (GFLOP/s of its convs/dots in brackets):", ""]
    lines.append("| layer kind | " + " | ".join(head) + " |")
    lines.append("|---|" + "---|" * len(head))

    def share_cells(table: str, key: str) -> str:
      # One row's cells: "share (GFLOP/s)" of `key` in each profiled run's `table`, "—" if absent.
      cells = []
      for r in profiled:
        a = r["agg"][table].get(key)
        cells.append("—" if a is None else f"{_pct(a['fraction'])} ({_g(a['gflops_per_s'])})")
      return " | ".join(cells)

    for k in kinds:
      lines.append(f"| {k} | " + share_cells("by_kind", k) + " |")
    lines += ["", "Share of op time by module (GFLOP/s of its convs/dots in brackets):", ""]
    lines.append("| module | layer kind (by image size) | " + " | ".join(head) + " |")
    lines.append("|---|---|" + "---|" * len(head))
    modules = sorted(
      {m for r in profiled for m in r["agg"]["by_module"]},
      key=lambda m: (m == "other", not m.startswith("conv"), int(re.sub(r"\D", "", m) or 0)),
    )
    for mod in modules:
      sizes = {r["layer_kinds"].get(mod) for r in profiled if mod in r["layer_kinds"]}
      kind = " / ".join(sorted(sizes, key=_kind_order)) if sizes else "—"
      lines.append(f"| {mod} | {kind} | " + share_cells("by_module", mod) + " |")
    lines += ["", "Share of op time by part of the algorithm (GFLOP/s in brackets):", ""]
    lines.append("| part | " + " | ".join(head) + " |")
    lines.append("|---|" + "---|" * len(head))
    parts = []
    for r in profiled:
      parts += [p for p in PARTS[r["method"]] if p not in parts]
    for p in parts:
      lines.append(f"| {p} | " + share_cells("by_part", p) + " |")
    lines += ["", "Share of op time by op category:", ""]
    cats = sorted({c for r in profiled for c in r["agg"]["by_category"]})
    lines.append("| category | " + " | ".join(head) + " |")
    lines.append("|---|" + "---|" * len(head))
    for c in cats:
      lines.append(f"| {c} | " + share_cells("by_category", c) + " |")
    lines += ["", "Slowest instructions:", ""]
    lines.append("| run | instruction | module | part | category | share | GFLOP/s |")
    lines.append("|---|---|---|---|---|---|---|")
    for r, h in zip(profiled, head):
      total = r["agg"]["op_time_sum_s"]
      for op in r["ops"][:4]:
        rate = op["flops"] / op["s"] / 1e9 if op["s"] and op["flops"] else None
        lines.append(
          f"| {h} | `{op['op']}` | {op['module']} ({op['kind']}) | {op['part']} | "
          f"{op['category']} | {_pct(op['s'] / total)} | {_g(rate)} |"
        )
  return "\n".join(lines)


def max_rel_diff(a_path: str, b_path: str) -> float:
  a, b = np.load(a_path), np.load(b_path)
  worst = 0.0
  for k in a.files:
    x, y = a[k].astype(np.float64), b[k].astype(np.float64)
    scale = np.max(np.abs(y)) or 1.0
    worst = max(worst, float(np.max(np.abs(x - y)) / scale))
  return worst


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--image-sizes", default="64,32")
  p.add_argument("--methods", default="jax_grad,fairjax_exact")
  p.add_argument("--pairs", default="", help="SIZE:METHOD,... instead of --image-sizes x --methods")
  p.add_argument("--variants", default="xla,im2col_tiny")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--trace-calls", type=int, default=1, help="profiled calls (0 = no profile)")
  p.add_argument(
    "--out", default=os.path.join(bc.REPO_ROOT, "bench/results/profile_curvature_cpu.json")
  )
  p.add_argument("--from-json", help="only print the tables of an earlier run's JSON")
  p.add_argument("--worker", nargs=3, metavar=("VARIANT", "SIZE", "METHOD"), help=argparse.SUPPRESS)
  p.add_argument("--worker-out", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  for v in args.variants.split(","):
    if v not in VARIANTS:
      p.error(f"--variants: unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
  pair_methods = [p.partition(":")[2] for p in args.pairs.split(",")] if args.pairs else []
  for p_ in args.pairs.split(",") if args.pairs else []:
    if not re.fullmatch(r"\d+:\w+", p_):
      p.error(f"--pairs: {p_!r} is not SIZE:METHOD (e.g. 32:jax_grad)")
  for m in args.methods.split(",") + pair_methods:
    if m not in PARTS:
      p.error(f"--methods / --pairs: unknown method {m!r}; choose from {', '.join(PARTS)}")
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.from_json:
    with open(args.from_json) as f:
      results = json.load(f)
    for run in results["runs"]:
      if run.get("ops"):
        run["agg"] = aggregate(run)  # as the current version aggregates
    print(markdown(results))
    return
  if args.worker:
    variant, size, method = args.worker
    res = worker(
      variant,
      int(size),
      method,
      args.repeats,
      args.warmup,
      args.trace_calls,
      args.worker_out + ".npz",
    )
    with open(args.worker_out, "w") as f:
      json.dump(res, f)
    return

  results: dict[str, Any] = {
    "config": CONFIG,
    "batch": bc.BATCH,
    "num_classes": bc.NUM_CLASSES,
    "num_groups": bc.NUM_GROUPS,
    "repeats": args.repeats,
    "warmup": args.warmup,
    "trace_calls": args.trace_calls,
    "environment": common.environment(),
    "runs": [],
  }
  tmp = tempfile.mkdtemp(prefix="fairjax_profile_runs_")
  outputs: dict[tuple, str] = {}
  if args.pairs:
    pairs = [(int(p.split(":")[0]), p.split(":")[1]) for p in args.pairs.split(",")]
  else:
    pairs = [(int(s), m) for s in args.image_sizes.split(",") for m in args.methods.split(",")]
  for variant in args.variants.split(","):
    for size, method in pairs:
      path = os.path.join(tmp, f"{variant}_{size}_{method}.json")
      env = {**os.environ, **VARIANTS[variant]}
      cmd = [sys.executable, "-m", "bench.profile_curvature", "--worker", variant, str(size)]
      cmd += [method, "--worker-out", path, "--repeats", str(args.repeats)]
      cmd += ["--warmup", str(args.warmup), "--trace-calls", str(args.trace_calls)]
      log(f"{variant} {size} {method} (load {os.getloadavg()[0]:.2f})")
      proc = subprocess.run(cmd, cwd=bc.REPO_ROOT, env=env)
      if proc.returncode != 0:
        why = f"worker exit code {proc.returncode} (negative = killed by that signal)"
        log(f"failed: {why}")
        results["runs"].append(
          {"variant": variant, "image_size": size, "method": method, "failed": why}
        )
        write_json_atomic(args.out, results)
        continue
      with open(path) as f:
        run = json.load(f)
      if run.get("skipped"):
        log(f"skipped: {run['skipped']}")
        results["runs"].append(run)
        continue
      outputs[(variant, size, method)] = path + ".npz"
      base = outputs.get(("xla", size, method))
      run["max_rel_diff_vs_xla"] = (
        None if variant == "xla" or base is None else max_rel_diff(path + ".npz", base)
      )
      if run["ops"]:
        run["agg"] = aggregate(run)
      results["runs"].append(run)
      results["environment"]["loadavg_at_end"] = list(os.getloadavg())
      write_json_atomic(args.out, results)
  print(markdown(results))
  log(f"wrote {args.out}")


if __name__ == "__main__":
  main()
