"""Runs the main job for several seeds and prints the dense-vs-pruned table of the README.

    python -m bench.demo_table [--config=configs/demo.py] [--seeds=0,1,2] [--method=NAME]
        [--finetune_control]
        [--override=--config.prune.x=y ...] [--root=DIR] [--out=FILE]

Each seed is one ordinary run (``python -m fairjax.main --config.seed=k``) in its own workdir, so
finished seeds are reused and killed ones resume. ``--method`` sets ``config.prune.method`` (e.g.
``snnl_channels``); by default the root is ``workdir/demo_seeds`` and the output
``bench/results/demo_seeds.json`` for the config's own method, ``workdir/demo_seeds_<method>`` and
``bench/results/demo_seeds_<method>.json`` otherwise. Aggregates with ``fairjax.report`` (mean ±
population std over seeds, ``report.SEED_STD_DDOF``) and writes the JSON atomically. All figures
are on the TEST split; per-group accuracies are listed per group; for ``snnl_channels`` the table
adds the channels removed in the chosen step and the measured inference speedup of the slimmed
over the masked network (``results["slimming"]``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from fairjax import checkpoint, report

_CONFIG = flags.DEFINE_string("config", "configs/demo.py", "Config file.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_METHOD = flags.DEFINE_string("method", "", "config.prune.method ('' = the config's).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "Extra --config.* flags for every run.")
_ROOT = flags.DEFINE_string("root", "", "Parent of the per-seed workdirs ('' = see docstring).")
_OUT = flags.DEFINE_string("out", "", "Aggregate JSON ('' = see docstring).")
_CONTROL = flags.DEFINE_bool(
    "finetune_control", False,
    "Also run the fine-tune-only control of a method that fine-tunes after every step "
    "(snnl_channels): same steps, same fine-tuning, no channel removed.")


def _mean_std(values) -> dict:
  kept = np.asarray([float(v) for v in values if v is not None], np.float64)
  if kept.size == 0:
    return {"mean": None, "std": None, "n": 0}
  return {"mean": float(kept.mean()), "std": float(kept.std(ddof=report.SEED_STD_DDOF)),
          "n": int(kept.size)}


def _channels_removed(r: dict) -> int | None:
  slim = r.get("slimming")
  if not slim:
    return None
  return int(sum(c["removed"] for c in slim["channels"].values()))


def finetune_control(results: dict, workdir: str) -> dict:
  """The fine-tune-only control of one finished ``snnl_channels`` run (cached in
  ``<workdir>/finetune_control.json``).

  Pruning with fine-tuning also trains the model for more epochs, which by itself can change
  accuracy and Eodd. The control repeats the run's pruning loop from the same dense checkpoint
  with exactly the same fine-tuning (optimizer, fresh state per step, batches and rng of every
  step, as ``fairjax.pipeline.prune_iterative``) for as many steps as the run took, but removes no
  channel; it then picks its step with the run's rule (lowest validation Eodd within
  ``prune.max_accuracy_drop``) and reports that step's TEST metrics.
  """
  path = os.path.join(workdir, "finetune_control.json")
  if os.path.exists(path):
    return checkpoint.read_json(path)
  import jax
  import ml_collections

  from fairjax import masks, pipeline, train
  from fairjax.data import load_dataset

  config = ml_collections.ConfigDict(results["config"])
  if config.prune.method != "snnl_channels":
    raise SystemExit("--finetune_control needs snnl_channels runs (fine-tuning after each step)")
  data = load_dataset(config.data, workdir=workdir)
  model = pipeline._make_model(config, data)
  dense = pipeline.train_dense(config, model, data, workdir)  # restores the finished run
  dense_val = pipeline.evaluate_split(dense, data, "validation", config)
  ft_steps = max(1, len(data.labels["train"]) // config.train.batch_size)
  method = pipeline._snnl_method(config, model, dense, data, ft_steps)
  state = dense.replace(tx=method.tx, opt_state=method.tx.init(dense.params))
  mask = method.prepare_mask(state.params,
                             masks.init_mask(state.params, pipeline._prunable(config)))
  steps = []
  for step in range(1, len(results["steps"])):
    state = train.set_mask(state, mask, reset_opt_state=True)
    state, _ = train.fit(state, pipeline._epoch_batches(config, data, config.seed * 31 + step),
                         epochs=method.retrain_epochs, rng=jax.random.key(step), log_every=0,
                         donate=False)
    steps.append({"step": step,
                  "validation": pipeline.evaluate_split(state, data, "validation", config),
                  "test": pipeline.evaluate_split(state, data, "test", config)})
  eligible = [s for s in steps
              if dense_val["accuracy"] - s["validation"]["accuracy"] <= config.prune.max_accuracy_drop
              and s["validation"]["eodd"] is not None]
  chosen = (min(eligible, key=lambda s: (s["validation"]["eodd"], s["step"])) if eligible
            else None)
  out = {"chosen_step": 0 if chosen is None else chosen["step"],
         "test": results["dense"] if chosen is None else chosen["test"],
         "steps": [{"step": s["step"], "val_accuracy": s["validation"]["accuracy"],
                    "val_eodd": s["validation"]["eodd"]} for s in steps]}
  checkpoint.write_json_atomic(path, out)
  return out


def main(argv):
  del argv
  suffix = f"_{_METHOD.value}" if _METHOD.value else ""
  root = _ROOT.value or f"workdir/demo_seeds{suffix}"
  out = _OUT.value or f"bench/results/demo_seeds{suffix}.json"
  extra = ([f"--config.prune.method={_METHOD.value}"] if _METHOD.value else []) + _OVERRIDE.value
  results, seconds = [], []
  for seed in _SEEDS.value:
    workdir = os.path.join(root, f"seed{seed}")
    print(f"seed {seed}: {workdir}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fairjax.main", f"--config={_CONFIG.value}",
                    f"--workdir={workdir}", f"--config.seed={seed}", *extra], check=True)
    seconds.append(time.perf_counter() - start)  # near 0 for a seed that was already finished
    results.append(checkpoint.read_json(os.path.join(workdir, "results.json")))
  agg = report.aggregate_seeds(results)
  groups = list(results[0]["dataset"]["group_names"])
  snnl = all(r.get("slimming") for r in results)
  rows = []
  for seed, r in zip(_SEEDS.value, results):
    row = {"seed": seed, "dense_acc": r["dense"]["accuracy"], "pruned_acc": r["pruned"]["accuracy"],
           "dense_eodd": r["dense"]["eodd"], "pruned_eodd": r["pruned"]["eodd"],
           "sparsity": r["pruned"]["sparsity"], "step": r["chosen_step"],
           "eodd_reduction": r["summary"]["eodd_reduction"],
           "accuracy_drop": r["summary"]["accuracy_drop"], "run_wall_s": r["wall_seconds"]}
    for g in groups:
      row[f"dense_acc_{g}"] = r["dense"]["group_accuracy"][g]
      row[f"pruned_acc_{g}"] = r["pruned"]["group_accuracy"][g]
    if snnl:
      row["channels_removed"] = _channels_removed(r)
      row["speedup"] = r["slimming"]["speedup"]
    if _CONTROL.value:
      control = finetune_control(r, os.path.join(root, f"seed{seed}"))
      row["control_acc"] = control["test"]["accuracy"]
      row["control_eodd"] = control["test"]["eodd"]
      for g in groups:
        row[f"control_acc_{g}"] = control["test"]["group_accuracy"][g]
      row["control_step"] = control["chosen_step"]
    rows.append(row)
  mean_row = {"seed": "mean ± std", "step": ""}
  for key, (part, metric) in {"dense_acc": ("dense", "accuracy"), "pruned_acc": ("pruned", "accuracy"),
                              "dense_eodd": ("dense", "eodd"), "pruned_eodd": ("pruned", "eodd"),
                              "sparsity": ("pruned", "sparsity"),
                              "eodd_reduction": ("summary", "eodd_reduction"),
                              "accuracy_drop": ("summary", "accuracy_drop")}.items():
    mean_row[key] = agg[part][metric]
  for g in groups:
    mean_row[f"dense_acc_{g}"] = agg["dense"]["group_accuracy"][g]
    mean_row[f"pruned_acc_{g}"] = agg["pruned"]["group_accuracy"][g]
  mean_row["run_wall_s"] = _mean_std([r["run_wall_s"] for r in rows])
  if snnl:
    mean_row["channels_removed"] = _mean_std([r["channels_removed"] for r in rows])
    mean_row["speedup"] = _mean_std([r["speedup"] for r in rows])
  control_keys = ["control_acc", "control_eodd"] + [f"control_acc_{g}" for g in groups]
  if _CONTROL.value:
    for key in control_keys:
      mean_row[key] = _mean_std([r[key] for r in rows])
    mean_row["control_step"] = ""
  rows.append(mean_row)
  columns = [("seed", "seed"), ("dense_acc", "dense acc"), ("pruned_acc", "pruned acc"),
             ("accuracy_drop", "acc drop")]
  for g in groups:
    columns += [(f"dense_acc_{g}", f"dense acc {g}"), (f"pruned_acc_{g}", f"pruned acc {g}")]
  columns += [("dense_eodd", "dense Eodd"), ("pruned_eodd", "pruned Eodd"),
              ("eodd_reduction", "Eodd reduction"), ("sparsity", "sparsity")]
  if snnl:
    layers = ", ".join(results[0]["slimming"]["channels"])
    total = sum(c["total"] for c in results[0]["slimming"]["channels"].values())
    columns += [("channels_removed", f"channels removed ({layers}, of {total})"),
                ("speedup", "speedup slim/masked")]
  columns += [("step", "chosen step")]
  table = report.markdown_table(rows, columns)
  control_table = None
  if _CONTROL.value:
    control_table = report.markdown_table(
        rows, [("seed", "seed"), ("control_acc", "fine-tune-only acc")]
        + [(f"control_acc_{g}", f"fine-tune-only acc {g}") for g in groups]
        + [("control_eodd", "fine-tune-only Eodd"), ("control_step", "chosen step")])
  header = (f"{results[0]['method']} on {results[0]['dataset']['name']}, test split, "
            f"Eodd convention: {results[0]['fairness_convention']}")
  if snnl:
    s = results[0]["slimming"]
    header += (f"; speedup: median of {s['speedup_repeats']} jitted forwards, batch "
               f"{s['speedup_batch_size']}, {s['device']}")
  print(header)
  print(table)
  if control_table:
    print("\nFine-tune-only control (same fine-tuning, no channel removed), test split:")
    print(control_table)
  print(f"run wall time per seed (s): {[round(r['run_wall_s'], 1) for r in rows[:-1]]}; "
        f"this invocation: {sum(seconds):.0f} s")
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  checkpoint.write_json_atomic(out, {"config": _CONFIG.value, "method": results[0]["method"],
                                     "overrides": extra, "seeds": _SEEDS.value,
                                     "per_seed": rows[:-1], "aggregate": agg,
                                     "mean_row": rows[-1], "header": header, "table": table,
                                     "control_table": control_table,
                                     "invocation_seconds": seconds})


if __name__ == "__main__":
  app.run(main)
