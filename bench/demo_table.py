"""Runs the main job for several seeds and prints the dense-vs-pruned table of the README.

    python -m bench.demo_table [--config=configs/demo.py] [--seeds=0,1,2] [--root=workdir/demo_seeds]

Each seed is one ordinary run (``python -m fairjax.main --config.seed=k``) in its own workdir, so
finished seeds are reused and killed ones resume. Aggregates with ``fairjax.report`` and writes
``bench/results/demo_seeds.json`` atomically. All figures are on the TEST split.
"""

from __future__ import annotations

import os
import subprocess
import sys

from absl import app, flags

from fairjax import checkpoint, report

_CONFIG = flags.DEFINE_string("config", "configs/demo.py", "Config file.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_ROOT = flags.DEFINE_string("root", "workdir/demo_seeds", "Parent of the per-seed workdirs.")
_OUT = flags.DEFINE_string("out", "bench/results/demo_seeds.json", "Aggregate JSON.")


def main(argv):
  del argv
  results = []
  for seed in _SEEDS.value:
    workdir = os.path.join(_ROOT.value, f"seed{seed}")
    print(f"seed {seed}: {workdir}", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "fairjax.main", f"--config={_CONFIG.value}",
                    f"--workdir={workdir}", f"--config.seed={seed}"], check=True)
    results.append(checkpoint.read_json(os.path.join(workdir, "results.json")))
  agg = report.aggregate_seeds(results)
  rows = []
  for seed, r in zip(_SEEDS.value, results):
    rows.append({"seed": seed, "dense_acc": r["dense"]["accuracy"], "pruned_acc": r["pruned"]["accuracy"],
                 "dense_eodd": r["dense"]["eodd"], "pruned_eodd": r["pruned"]["eodd"],
                 "sparsity": r["pruned"]["sparsity"], "step": r["chosen_step"],
                 "eodd_reduction": r["summary"]["eodd_reduction"],
                 "accuracy_drop": r["summary"]["accuracy_drop"]})
  mean_row = {"seed": "mean ± std", "step": ""}
  for key, (part, metric) in {"dense_acc": ("dense", "accuracy"), "pruned_acc": ("pruned", "accuracy"),
                              "dense_eodd": ("dense", "eodd"), "pruned_eodd": ("pruned", "eodd"),
                              "sparsity": ("pruned", "sparsity"),
                              "eodd_reduction": ("summary", "eodd_reduction"),
                              "accuracy_drop": ("summary", "accuracy_drop")}.items():
    mean_row[key] = agg[part][metric]
  rows.append(mean_row)
  columns = [("seed", "seed"), ("dense_acc", "dense acc"), ("pruned_acc", "pruned acc"),
             ("accuracy_drop", "acc drop"), ("dense_eodd", "dense Eodd"),
             ("pruned_eodd", "pruned Eodd"), ("eodd_reduction", "Eodd reduction"),
             ("sparsity", "sparsity"), ("step", "chosen step")]
  table = report.markdown_table(rows, columns)
  print(f"{results[0]['method']} on {results[0]['dataset']['name']}, test split, "
        f"Eodd convention: {results[0]['fairness_convention']}")
  print(table)
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  checkpoint.write_json_atomic(_OUT.value, {"config": _CONFIG.value, "seeds": _SEEDS.value,
                                            "per_seed": rows[:-1], "aggregate": agg,
                                            "table": table})


if __name__ == "__main__":
  app.run(main)
