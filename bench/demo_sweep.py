"""FairPrune demo sweep: the main job for several override sets x seeds 0-2, in parallel.

    python -m bench.demo_sweep [NAME,NAME,...]     (default: every entry of GRID)

Environment: OUT (folder for sweep.json, default /tmp/sweep_out), SWEEP_CORES (CPU cores to
use, default 2), SWEEP_PER (cores per run, 1 or 2), SWEEP_GPU=1 (VGG runs on the GPU, the others
pinned to single cores 8-15). Every run is an ordinary ``python -m fairjax.main`` in its own
workdir under /tmp/sweep. bench/results/demo_sweep.json holds the runs of README "Demo
results" (measured on the device machine: H100 host with 16 cores). Figures are test-split.
"""

import concurrent.futures as cf
import json
import os
import subprocess
import sys
import threading
import time

from fairjax.checkpoint import write_json_atomic

OUT = os.environ.get("OUT", "/tmp/sweep_out")
ROOT = "/tmp/sweep"
BASE = [
  "--config.train.epochs=10",  # the demo's dense training when this sweep was measured
  "--config.data.num_validation=2000",
  "--config.data.num_test=4000",
  "--config.prune.max_steps=40",
  "--config.prune.patience=40",
]
V = ["--config=configs/demo_vgg.py"]
A = ["--config.data.minority_fraction=0.3", "--config.prune.step_fraction=0.001"]
FC0 = "--config.prune.exclude_layers=('conv0','conv1','fc1')"


def g(f, c, sf, *extra):
  return [
    f"--config.data.minority_fraction={f}",
    f"--config.data.minority_contrast={c}",
    f"--config.prune.step_fraction={sf}",
    FC0,
    "--config.prune.max_steps=60",
    "--config.prune.patience=60",
    *extra,
  ]


GRID = {
  # first round: gap size, shortcut, width, beta, VGG backbone
  "c45_vgg": V + A + ["--config.data.minority_contrast=0.45"],
  "c45_vgg_sf005": V
  + [
    "--config.data.minority_fraction=0.3",
    "--config.prune.step_fraction=0.005",
    "--config.data.minority_contrast=0.45",
  ],
  "c45_vgg_sc10": V
  + A
  + ["--config.data.minority_contrast=0.45", "--config.data.shortcut_strength=0.1"],
  "c35_vgg": V + ["--config.prune.step_fraction=0.002"],
  "c45_fc0": A + ["--config.data.minority_contrast=0.45", FC0],
  "c45_sc10": A + ["--config.data.minority_contrast=0.45", "--config.data.shortcut_strength=0.1"],
  "c45_wide": A
  + [
    "--config.data.minority_contrast=0.45",
    "--config.model.kwargs.width=32",
    "--config.model.kwargs.hidden=128",
  ],
  "c50": A + ["--config.data.minority_contrast=0.50"],
  # second round: fc0 only, finer steps, larger dark share
  "f30_c45_sf0005": g(0.3, 0.45, 0.0005),
  "f40_c45_sf001": g(0.4, 0.45, 0.001),
  "f40_c45_sf0005": g(0.4, 0.45, 0.0005),
  "f40_c50_sf0005": g(0.4, 0.50, 0.0005),
  "f30_c50_sf0005": g(0.3, 0.50, 0.0005),
  "f40_c45_wide": g(
    0.4, 0.45, 0.0005, "--config.model.kwargs.width=32", "--config.model.kwargs.hidden=128"
  ),
}
names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(GRID)
seeds = [0, 1, 2]
jobs = [(n, s) for n in names for s in seeds]
GPU = os.environ.get("SWEEP_GPU", "") == "1"
PER = int(os.environ.get("SWEEP_PER", "2"))
cpu_slots = (
  list(range(8, 16)) if GPU else list(range(0, int(os.environ.get("SWEEP_CORES", "2")), PER))
)
lock = threading.Lock()


def run(job, slot):
  n, s = job
  wd = f"{ROOT}/{n}_s{s}"
  if slot == "gpu":
    cores = "0-7"
    env = dict(
      os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", XLA_PYTHON_CLIENT_MEM_FRACTION="0.05"
    )
  else:
    cores = str(slot) if (GPU or PER == 1) else f"{slot},{slot + 1}"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if GPU or PER == 1:
      env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  t = time.time()
  args = (
    GRID[n]
    if any(a.startswith("--config=") for a in GRID[n])
    else ["--config=configs/demo.py", *GRID[n]]
  )
  p = subprocess.run(
    [
      "taskset",
      "-c",
      cores,
      sys.executable,
      "-m",
      "fairjax.main",
      *args[:1],
      *BASE,
      *args[1:],
      f"--config.seed={s}",
      f"--workdir={wd}",
    ],
    env=env,
    capture_output=True,
    text=True,
  )
  rec = {"name": n, "seed": s, "rc": p.returncode, "wall": time.time() - t, "slot": slot}
  if p.returncode:
    rec["err"] = p.stderr[-1500:]
    return rec
  r = json.load(open(f"{wd}/results.json"))
  rec.update(
    dense=r["dense"],
    pruned=r["pruned"],
    chosen=r["chosen_step"],
    summary=r["summary"],
    steps=[
      {
        "step": x["step"],
        "sparsity": x["sparsity"],
        "acc": x["validation"]["accuracy"],
        "eodd": x["validation"]["eodd"],
        "ga": x["validation"]["group_accuracy"],
      }
      for x in r["steps"]
    ],
  )
  return rec


results = []
gpu_jobs = [j for j in jobs if GPU and "vgg" in j[0]]
cpu_jobs = [j for j in jobs if j not in gpu_jobs]
free = list(cpu_slots)
with cf.ThreadPoolExecutor(len(cpu_slots) + len(gpu_jobs)) as ex:
  futs = {ex.submit(run, j, "gpu"): "gpu" for j in gpu_jobs}
  it = iter(cpu_jobs)

  def submit():
    while free:
      job = next(it, None)
      if job is None:
        return
      slot = free.pop()
      futs[ex.submit(run, job, slot)] = slot

  submit()
  while futs:
    done, _ = cf.wait(futs, return_when=cf.FIRST_COMPLETED)
    for f in done:
      slot = futs.pop(f)
      if slot != "gpu":
        free.append(slot)
      rec = f.result()
      results.append(rec)
      os.makedirs(OUT, exist_ok=True)
      write_json_atomic(f"{OUT}/sweep.json", results)
      if rec["rc"]:
        print(rec["name"], rec["seed"], "FAILED", rec["err"][-300:], flush=True)
      else:
        d, p, sm = rec["dense"], rec["pruned"], rec["summary"]
        print(
          f"{rec['name']:12s} s{rec['seed']} {rec['wall']:.0f}s dense acc {d['accuracy']:.3f} eodd {d['eodd']:.3f} ga {d['group_accuracy']} | pruned acc {p['accuracy']:.3f} eodd {p['eodd']:.3f} ga {p['group_accuracy']} sp {p['sparsity']:.4f} step {rec['chosen']} | red {sm['eodd_reduction']:.3f} drop {sm['accuracy_drop']:.3f}",
          flush=True,
        )
    submit()
