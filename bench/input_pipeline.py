"""Input-pipeline throughput: grain reading the ISIC array_record build, against the train step.

Usage (from the repository root)::

    python -m bench.input_pipeline [--stored-sizes 128,224,256,448] [--image-sizes 128,224]
        [--workers 0,1,2] [--augment flip_crop] [--repeats 3] [--batches 12] [--batch 64]
        [--step-batch 16] [--no-step] [--workdir /tmp/fairjax_bench_input]
        [--out bench/results/input_pipeline_cpu.json] [--quick]

1. Data. A manual_dir is synthesised from the first ``--num-rows`` rows of the REAL ISIC 2019
   CSVs (``--csv-dir``: $FAIRJAX_SHARED_DATA/isic2019, else ../shared/data/isic2019) with
   synthetic dermoscopy-like JPEGs of ISIC's common size (``--source-size``, 1024x768, quality
   ``--source-quality``): skin-toned shading, multi-octave texture, a mottled lesion and a few
   hairs, so the files carry a realistic amount of detail. The real ``isic2019`` TFDS builder
   (``fairjax.data.tfds_common.load_source``) then writes one array_record build per
   ``data.stored_image_size`` (JPEG quality 95, as in every build). Builds are cached under
   ``--workdir``; the build time is reported but is a one-off, not part of training.
2. Input pipeline. ``fairjax.data.pipeline.train_batches`` over the build's train split (cycled
   to ``--batches`` x ``--batch`` positions; the few MB of records stay in the page cache, as a
   full build of ~0.5-3 GB would on a training machine), i.e. array_record read + JPEG decode +
   resize / augmentation to ``data.image_size`` + batching + normalisation, for every
   (stored size >= image size) pair and every ``--workers`` value: 0 = in-process (grain's two
   reader threads, what ``fairjax.main`` uses), k > 0 = k grain worker processes (one reader
   thread each, as ``pipeline._iterate`` starts them), -1 = in-process with the process pinned
   to one core (the per-core rate; optional). The first two batches (start-up, reported
   separately, and ramp-up) are not timed; the consumer only drops batches. Repeats
   are interleaved over all settings so each sees the same machine load; tables give medians.
3. Train step. ``bench.throughput.jax_images_per_s`` (the jitted ``fairjax.train.train_step``,
   SGD + momentum, one resident batch) for ``ISIC_MODEL`` (VGG-11 with BatchNorm, classifier
   width 512, dropout 0.5, 8 classes: FairPrune's ISIC model) at every image size, in this
   process. Workers needed to feed it = ceil(step images/s / images/s of ONE worker process)
   (and cores needed, from the pinned rate, when ``--workers`` has -1).
   The same is computed for ``--step-images-per-s`` (a rate measured elsewhere, e.g. on a GPU)
   and for the stored GPU figure in ``bench/results/throughput_gpu.json`` (another run and
   machine; labelled as such).

The JSON (written atomically) has every repeat, the environment, the load average and ``uptime``
before and after, and the synthetic-data description (mean source and stored JPEG bytes).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

from bench import common
from fairjax.checkpoint import write_json_atomic

ISIC_MODEL = ("vgg11_bn", {"classifier_width": 512, "dropout_rate": 0.5})
GPU_THROUGHPUT_JSON = os.path.join("bench", "results", "throughput_gpu.json")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# As in tests/test_data_tfds.py: $FAIRJAX_SHARED_DATA, else ../shared/data next to the checkout.
DEFAULT_CSV_DIR = os.path.join(
  os.environ.get("FAIRJAX_SHARED_DATA", os.path.join(os.path.dirname(_REPO), "shared", "data")),
  "isic2019",
)


def log(msg: str) -> None:
  print(f"[bench.input_pipeline {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _uptime() -> str:
  try:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError) as e:
    return f"uptime failed: {e}"


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x]


# ----------------------------------------------------------------------------------------------
# Synthetic manual_dir.


def _octave_noise(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
  """float32 [H, W] texture in about [-1, 1]: sum of bicubically upsampled random grids."""
  from PIL import Image

  out = np.zeros((height, width), np.float32)
  for cells, weight in ((6, 1.0), (24, 0.5), (96, 0.3), (384, 0.2)):
    grid = rng.standard_normal((max(2, cells * height // width), cells)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((width, height), Image.Resampling.BICUBIC)
    out += weight * np.asarray(img)
  return out / 1.2


def synth_dermoscopy_jpeg(rng: np.random.Generator, width: int, height: int, quality: int) -> bytes:
  """A dermoscopy-like RGB JPEG of ``width`` x ``height``: shaded skin, a lesion, hairs."""
  from PIL import Image, ImageDraw

  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  cx, cy = width * rng.uniform(0.35, 0.65), height * rng.uniform(0.35, 0.65)
  r = np.hypot((xx - width / 2) / width, (yy - height / 2) / height)
  skin = np.array(rng.uniform([170, 110, 90], [235, 180, 160]), np.float32)
  image = skin * (1.0 - 0.6 * r[..., None] ** 2)  # dermatoscope vignetting
  image += 12.0 * _octave_noise(rng, width, height)[..., None]
  # Lesion: an irregular ellipse with mottled pigment.
  ax, ay = width * rng.uniform(0.12, 0.3), height * rng.uniform(0.12, 0.3)
  rim = 1.0 + 0.25 * _octave_noise(rng, width, height)
  inside = np.clip(1.5 * (rim - np.hypot((xx - cx) / ax, (yy - cy) / ay)), 0.0, 1.0)
  pigment = np.array(rng.uniform([60, 30, 20], [140, 90, 70]), np.float32)
  mottle = 25.0 * _octave_noise(rng, width, height)[..., None]
  image = image * (1 - inside[..., None]) + (pigment + mottle) * inside[..., None]
  image += rng.normal(0.0, 3.0, image.shape).astype(np.float32)  # sensor noise
  pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(pil)
  for _ in range(int(rng.integers(0, 8))):  # hairs
    points = [(float(rng.uniform(0, width)), float(rng.uniform(0, height)))]
    for _ in range(4):
      x, y = points[-1]
      points.append((x + float(rng.normal(0, width / 8)), y + float(rng.normal(0, height / 8))))
    draw.line(points, fill=(40, 30, 25), width=int(rng.integers(2, 5)))
  buf = io.BytesIO()
  pil.save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def make_manual_dir(
  root: str, csv_dir: str, num_rows: int, size: tuple[int, int], quality: int, seed: int
) -> dict[str, Any]:
  """Writes ``root`` as an ISIC manual_dir (first ``num_rows`` real CSV rows, synthetic JPEGs);
  returns a description. Reuses it when it is complete."""
  from fairjax.data import isic2019 as isic

  image_dir = os.path.join(root, isic.IMAGE_DIR)
  with open(os.path.join(csv_dir, isic.GROUND_TRUTH_CSV), newline="") as f:
    gt = list(csv.DictReader(f))
  with open(os.path.join(csv_dir, isic.METADATA_CSV), newline="") as f:
    meta = list(csv.DictReader(f))
  gt, names = gt[:num_rows], {r["image"] for r in gt[:num_rows]}
  meta = [m for m in meta if m["image"] in names]
  os.makedirs(image_dir, exist_ok=True)
  for name, rows in ((isic.GROUND_TRUTH_CSV, gt), (isic.METADATA_CSV, meta)):
    with open(os.path.join(root, name), "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)
  rng = np.random.default_rng(seed)
  t0 = time.perf_counter()
  sizes = []
  for row in gt:
    path = os.path.join(image_dir, row["image"] + ".jpg")
    if not os.path.exists(path):
      data = synth_dermoscopy_jpeg(rng, size[0], size[1], quality)
      with open(path + ".tmp", "wb") as f:
        f.write(data)
      os.replace(path + ".tmp", path)
    sizes.append(os.path.getsize(path))
  return {
    "rows": len(gt),
    "source_image_wh": list(size),
    "source_jpeg_quality": quality,
    "source_mean_bytes": float(np.mean(sizes)),
    "synth_s": time.perf_counter() - t0,
    "csv_dir": csv_dir,
  }


# ----------------------------------------------------------------------------------------------
# Timing.


class CycledSource:
  """``length`` positions cycling over ``base`` (random access); labels/groups cached so the
  pipeline never decodes an image to learn them."""

  def __init__(self, base: Any, length: int, labels: np.ndarray, groups: np.ndarray):
    self._base, self._n = base, len(base)
    self._length = length
    self.labels = labels[np.arange(length) % self._n]
    self.groups = groups[np.arange(length) % self._n]

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> Any:
    return self._base[int(index) % self._n]


def time_epoch(
  source: Any,
  *,
  image_size: int,
  augment: str,
  worker_count: int,
  batch: int,
  seed: int,
  skip: int = 2,
) -> dict[str, float]:
  """One pass of ``train_batches``: images/s from batch ``skip`` to the last one.

  ``worker_count`` -1 = in-process with this process pinned to ONE core (grain's reader
  threads inherit the pin): the per-core rate. The first ``skip`` batches (worker start-up and
  ramp-up) are not timed.
  """
  from fairjax.data.pipeline import train_batches

  affinity = os.sched_getaffinity(0)
  if worker_count == -1:
    os.sched_setaffinity(0, {min(affinity)})
  try:
    t0 = time.perf_counter()
    it = train_batches(
      source,
      batch_size=batch,
      image_size=image_size,
      seed=seed,
      augment=augment,
      worker_count=max(0, worker_count),
    )
    for _ in range(skip):
      first = next(it)
      assert first["image"].shape == (batch, image_size, image_size, 3)
    t_first = time.perf_counter()
    n = 0
    for b in it:
      n += len(b["label"])
    t_end = time.perf_counter()
    del it
  finally:
    os.sched_setaffinity(0, affinity)
  return {"images_per_s": n / (t_end - t_first), "startup_s": t_first - t0, "images_timed": n}


def stored_bytes(source: Any, split: str = "train") -> float:
  """Mean bytes per record of the split's array_record files (the stored JPEG dominates)."""
  import glob

  files = glob.glob(os.path.join(source.dataset_info.data_dir, f"*-{split}.array_record*"))
  return sum(os.path.getsize(f) for f in files) / max(1, len(source))


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--stored-sizes", default="128,224,256,448")
  p.add_argument("--image-sizes", default="128,224")
  p.add_argument(
    "--workers",
    default="0,1,2",
    help="-1 = in-process pinned to one core, 0 = in-process, k = k workers",
  )
  p.add_argument("--augment", default="flip_crop", choices=("none", "flip", "flip_crop"))
  p.add_argument("--batch", type=int, default=64, help="train.batch_size of configs/isic.py")
  p.add_argument(
    "--batches", type=int, default=12, help="batches per pass (the first 2 are not timed)"
  )
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--num-rows", type=int, default=160, help="CSV rows of the synthetic build")
  p.add_argument("--source-size", default="1024,768", help="synthetic JPEG width,height")
  p.add_argument("--source-quality", type=int, default=90)
  p.add_argument("--csv-dir", default=DEFAULT_CSV_DIR)
  p.add_argument("--workdir", default=os.path.join("/tmp", "fairjax_bench_input"))
  p.add_argument("--step-batch", type=int, default=16, help="batch of the timed train step")
  p.add_argument("--step-steps", type=int, default=2)
  p.add_argument("--step-repeats", type=int, default=2)
  p.add_argument("--no-step", action="store_true", help="do not time the train step")
  p.add_argument(
    "--step-images-per-s",
    type=float,
    default=None,
    help="also size the workers for this train-step rate (measured elsewhere)",
  )
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--quick",
    action="store_true",
    help="smoke test: stored 128,256, image 128, workers 0,1, 2 repeats",
  )
  p.add_argument("--out", default=os.path.join("bench", "results", "input_pipeline_cpu.json"))
  args = p.parse_args(argv)
  if args.quick:
    args.stored_sizes, args.image_sizes, args.workers = "128,256", "128", "0,1"
    args.repeats, args.batches, args.num_rows = 2, 6, 64
    args.step_batch, args.step_steps, args.step_repeats = 8, 1, 1
  stored_sizes, image_sizes, workers = (
    _ints(args.stored_sizes),
    _ints(args.image_sizes),
    _ints(args.workers),
  )
  pairs = [(s, i) for s in stored_sizes for i in image_sizes if s >= i]
  if not pairs:
    p.error("no stored size >= an image size")
  source_wh = tuple(_ints(args.source_size))
  load_before, uptime_before = list(os.getloadavg()), _uptime()
  env = common.environment()

  from fairjax.data import pipeline, tfds_common

  manual = os.path.join(
    args.workdir, f"manual_{args.num_rows}_{source_wh[0]}x{source_wh[1]}_q{args.source_quality}"
  )
  log(f"synthesising {args.num_rows} JPEGs {source_wh} in {manual}")
  data_info = make_manual_dir(
    manual, args.csv_dir, args.num_rows, source_wh, args.source_quality, args.seed
  )
  sources, builds = {}, {}
  for size in stored_sizes:
    t0 = time.perf_counter()
    base = tfds_common.load_source(
      "isic2019", "train", manual_dir=manual, data_dir=os.path.join(manual, "tfds"), image_size=size
    )
    labels, groups = pipeline.scan_labels(base)
    sources[size] = CycledSource(base, args.batch * args.batches, labels, groups)
    builds[size] = {
      "records": len(base),
      "build_or_open_s": time.perf_counter() - t0,
      "stored_mean_record_bytes": stored_bytes(base),
    }
    log(f"stored {size}: {builds[size]}")

  results: dict[str, Any] = {
    "benchmark": "grain input pipeline (array_record, decode, resize/augment, normalise) vs "
    "train step",
    "settings": vars(args) | {"pairs": pairs, "workers": workers},
    "environment": env | {"uptime_before": uptime_before, "loadavg_before": load_before},
    "data": data_info | {"builds": builds},
    "runs": [],
  }
  # One warm-up pass (lazy imports, first decodes), not recorded.
  size, image_size = pairs[0]
  time_epoch(
    sources[size],
    image_size=image_size,
    augment=args.augment,
    worker_count=0,
    batch=args.batch,
    seed=args.seed,
  )
  for rep in range(args.repeats):
    for size, image_size in pairs:
      for wc in workers:
        r = time_epoch(
          sources[size],
          image_size=image_size,
          augment=args.augment,
          worker_count=wc,
          batch=args.batch,
          seed=args.seed + rep,
        )
        r |= {"stored": size, "image_size": image_size, "workers": wc, "repeat": rep}
        results["runs"].append(r)
        log(
          f"rep {rep} stored {size} -> {image_size}, workers {wc}: "
          f"{r['images_per_s']:.0f} images/s (start-up {r['startup_s']:.1f} s)"
        )
    write_json_atomic(args.out, results)

  steps: dict[int, dict[str, Any]] = {}
  if not args.no_step:
    from bench.throughput import jax_images_per_s

    for image_size in sorted({i for _, i in pairs}):
      log(f"train step {ISIC_MODEL[0]} {image_size}x{image_size} batch {args.step_batch}")
      rates, compile_s, _ = jax_images_per_s(
        "isic_protocol",
        args.step_batch,
        args.step_steps,
        args.step_repeats,
        args.seed,
        spec=(ISIC_MODEL[0], ISIC_MODEL[1], (image_size, image_size)),
      )
      steps[image_size] = {
        "model": ISIC_MODEL[0],
        "model_kwargs": ISIC_MODEL[1],
        "batch": args.step_batch,
        "steps": args.step_steps,
        "images_per_s": rates,
        "median": statistics.median(rates),
        "compile_s": compile_s,
      }
  external: dict[str, tuple[int, float]] = {}
  if args.step_images_per_s:
    external["--step-images-per-s"] = (0, args.step_images_per_s)
  if os.path.exists(GPU_THROUGHPUT_JSON):
    gpu = common_read_json(GPU_THROUGHPUT_JSON)
    for name, m in gpu.get("models", {}).items():
      if m["image_hw"][0] in image_sizes and m["image_hw"][0] == m["image_hw"][1]:
        external[
          f"{GPU_THROUGHPUT_JSON}: {name} batch {m['batch']} "
          f"({gpu['environment'].get('date_utc', '?')}, other machine)"
        ] = (m["image_hw"][0], m["fairjax_median"])

  summary = []
  for size, image_size in pairs:
    row: dict[str, Any] = {"stored": size, "image_size": image_size}
    for wc in workers:
      rates = [
        r["images_per_s"]
        for r in results["runs"]
        if (r["stored"], r["image_size"], r["workers"]) == (size, image_size, wc)
      ]
      row[f"{_key(wc)}_median"] = statistics.median(rates)
    # The unit each "needed" count is in: one worker process (as fairjax starts them, grain's
    # default reader threads inside) and one core (the pinned in-process pass).
    units = {"workers": row.get("w1_median"), "cores": row.get("core1_median")}
    for unit, per_unit in units.items():
      if not per_unit:
        continue
      if image_size in steps:
        row[f"{unit}_needed_cpu_step"] = math.ceil(steps[image_size]["median"] / per_unit)
      row[f"{unit}_needed_external"] = {
        label: math.ceil(rate / per_unit)
        for label, (hw, rate) in external.items()
        if hw in (0, image_size)
      }
    if image_size in steps:
      row["step_images_per_s"] = steps[image_size]["median"]
    summary.append(row)
  # Ratios within this run: each stored size against storing at the training size itself.
  for row in summary:
    same = next((r for r in summary if r["stored"] == r["image_size"] == row["image_size"]), None)
    if same is not None and same is not row:
      row["ratio_vs_stored_eq_image"] = {
        k.removesuffix("_median"): row[k] / same[k] for k in row if k.endswith("_median")
      }

  results |= {
    "train_step": steps,
    "external_step_rates": {
      k: {"image_size": hw or None, "images_per_s": r} for k, (hw, r) in external.items()
    },
    "summary": summary,
  }
  results["environment"] |= {"uptime_after": _uptime(), "loadavg_after": list(os.getloadavg())}
  table = markdown(results, workers, args)
  results["markdown"] = table
  write_json_atomic(args.out, results)
  print(table)
  log(f"wrote {args.out}")


def _key(worker_count: int) -> str:
  return "core1" if worker_count == -1 else f"w{worker_count}"


def _label(worker_count: int) -> str:
  if worker_count == -1:
    return "in-process, 1 core"
  if worker_count == 0:
    return "in-process (2 threads)"
  return f"{worker_count} worker{'s' if worker_count > 1 else ''}"


def common_read_json(path: str) -> dict[str, Any]:
  import json

  with open(path) as f:
    return json.load(f)


def markdown(results: dict[str, Any], workers: list[int], args: argparse.Namespace) -> str:
  env, data = results["environment"], results["data"]
  head = ["stored → image", "stored kB/img"] + [f"{_label(wc)} img/s" for wc in workers]
  head += ["train step img/s (CPU)", "workers / cores needed (CPU step)"]
  lines = [
    f"## Input pipeline ({env['date_utc']}, {env['cpu_affinity']} cores, load average "
    f"{env['loadavg_before'][0]:.2f} before / {env['loadavg_after'][0]:.2f} after; "
    f"augment {args.augment}, batch {args.batch}, medians of {args.repeats} repeats of "
    f"{args.batches - 2} timed batches{'; QUICK, indicative only' if args.quick else ''})",
    "",
    f"Source: {data['rows']} real ISIC CSV rows, synthetic {data['source_image_wh'][0]}×"
    f"{data['source_image_wh'][1]} JPEGs (quality {data['source_jpeg_quality']}, mean "
    f"{data['source_mean_bytes'] / 1e3:.0f} kB), isic2019 builder, array_record.",
    "",
    "| " + " | ".join(head) + " |",
    "|" + "---|" * len(head),
  ]
  builds = data["builds"]
  for row in results["summary"]:
    cells = [
      f"{row['stored']} → {row['image_size']}",
      f"{builds[row['stored']]['stored_mean_record_bytes'] / 1e3:.1f}",
    ]
    for wc in workers:
      med = row[f"{_key(wc)}_median"]
      cells.append(f"{med:.0f}" if wc <= 1 else f"{med:.0f} ({med / wc:.0f} per worker)")
    cells.append(f"{row['step_images_per_s']:.1f}" if "step_images_per_s" in row else "—")
    cells.append(
      f"{row.get('workers_needed_cpu_step', '—')} / {row.get('cores_needed_cpu_step', '—')}"
    )
    lines.append("| " + " | ".join(cells) + " |")
  steps = results["train_step"]
  if steps:
    s = next(iter(steps.values()))
    lines.append(
      f"\nTrain step: {s['model']} {s['model_kwargs']}, batch {s['batch']}, "
      f"bench.throughput.jax_images_per_s in this process (JAX CPU), medians of "
      f"{len(s['images_per_s'])} repeats of {s['steps']} steps."
    )
  ext = [
    (
      row,
      label,
      row["workers_needed_external"][label],
      row.get("cores_needed_external", {}).get(label, "—"),
    )
    for row in results["summary"]
    for label in row.get("workers_needed_external", {})
  ]
  if ext:
    lines.append(
      "\nWorkers / cores (at the 1-worker / 1-core rates above) for step rates measured elsewhere:"
    )
    for row, label, n_workers, n_cores in ext:
      rate = results["external_step_rates"][label]["images_per_s"]
      lines.append(
        f"- stored {row['stored']} → {row['image_size']}: {n_workers} / {n_cores} "
        f"for {rate:.0f} img/s ({label})"
      )
  ratios = [row for row in results["summary"] if "ratio_vs_stored_eq_image" in row]
  if ratios:
    lines.append("\nSame run, throughput relative to storing at the image size itself:")
    for row in ratios:
      parts = ", ".join(
        f"{_label(wc)} {row['ratio_vs_stored_eq_image'][_key(wc)]:.2f}" for wc in workers
      )
      lines.append(f"- stored {row['stored']} → {row['image_size']}: {parts}")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
