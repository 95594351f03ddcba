"""Runs the main job for several seeds and prints the dense-vs-pruned table of the README.

    python -m bench.demo_table [--config=configs/demo.py] [--seeds=0,1,2] [--method=NAME]
        [--finetune_control]
        [--override=--config.prune.x=y ...] [--root=DIR] [--out=FILE]

Each seed is one ordinary run (``python -m fairjax.main --config.seed=k``) in its own workdir, so
finished seeds are reused and killed ones resume. ``--method`` sets ``config.prune.method`` (e.g.
``snnl_channels``); by default the root is ``workdir/demo_seeds`` and the output
``bench/results/demo_seeds.json`` for the config's own method, ``workdir/demo_seeds_<method>`` and
``bench/results/demo_seeds_<method>.json`` otherwise (``--root`` / ``--out`` override them).
Aggregates with ``fairjax.report`` (mean ± population std over seeds, ``report.SEED_STD_DDOF``)
and writes the JSON atomically. All figures are on the TEST split; per-group accuracies are listed
per group; each seed's row adds the paired pruned − dense differences with the run's bootstrap
intervals (``results["summary"]``) and the levelling mechanism label, and the mean row adds how
many seeds' intervals exclude 0. For ``snnl_channels`` the table adds the channels removed in the
chosen step and the measured inference speedup of the slimmed over the masked network
(``results["slimming"]``). ``--finetune_control`` (snnl_channels, or a score method such as
fairprune with ``prune.retrain_epochs > 0``) adds the fine-tune-only control
(:func:`finetune_control`) and the paired intervals of pruned − control.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from fairjax import checkpoint, compare, report

_CONFIG = flags.DEFINE_string("config", "configs/demo.py", "Config file.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_METHOD = flags.DEFINE_string("method", "", "config.prune.method ('' = the config's).")
_OVERRIDE = flags.DEFINE_multi_string("override", [], "Extra --config.* flags for every run.")
_ROOT = flags.DEFINE_string("root", "", "Parent of the per-seed workdirs ('' = see docstring).")
_OUT = flags.DEFINE_string("out", "", "Aggregate JSON ('' = see docstring).")
_CONTROL = flags.DEFINE_bool(
  "finetune_control",
  False,
  "Also run the fine-tune-only control of a method that fine-tunes after every step "
  "(snnl_channels, or fairprune & co. with prune.retrain_epochs > 0): same steps, same "
  "fine-tuning, nothing removed.",
)


def _mean_std(values) -> dict:
  kept = np.asarray([float(v) for v in values if v is not None], np.float64)
  if kept.size == 0:
    return {"mean": None, "std": None, "n": 0}
  return {
    "mean": float(kept.mean()),
    "std": float(kept.std(ddof=report.SEED_STD_DDOF)),
    "n": int(kept.size),
  }


def _channels_removed(r: dict) -> int | None:
  slim = r.get("slimming")
  if not slim:
    return None
  return int(sum(c["removed"] for c in slim["channels"].values()))


# Score-and-prune-lowest methods whose steps fine-tune when prune.retrain_epochs > 0.
_FINETUNING_SCORE_METHODS = ("fairprune", "magnitude", "random", "snip", "obd")


def finetune_control(results: dict, workdir: str) -> dict:
  """The fine-tune-only control of one finished run that fine-tunes after every step
  (``snnl_channels``, or a score method such as fairprune with ``prune.retrain_epochs > 0``),
  cached in ``<workdir>/finetune_control.json``.

  Pruning with fine-tuning also trains the model for more epochs, which by itself can change
  accuracy and Eodd. The control repeats the run's pruning loop from the same dense checkpoint
  with exactly the same fine-tuning (optimizer, fresh state per step, batches and rng of every
  step, as ``fairjax.pipeline.prune_iterative``) for as many steps as the run took, but removes
  nothing (the initial mask); it then picks its step with the run's rule (lowest validation Eodd
  within ``prune.max_accuracy_drop``) and reports that step's TEST metrics. Its test predictions
  join the run's stored ones (``test_predictions.npz``) in one paired bootstrap with the run's
  ``report`` settings: pruned − dense, control − dense and pruned − control (``"bootstrap"``).
  """
  path = os.path.join(workdir, "finetune_control.json")
  if os.path.exists(path):
    cached = checkpoint.read_json(path)
    if "bootstrap" in cached:  # older caches lack the intervals: recompute them
      return cached
  import jax
  import ml_collections

  from fairjax import masks, pipeline, train
  from fairjax.data import load_dataset
  from fairjax.pruning import get_method

  config = ml_collections.ConfigDict(results["config"])
  p = config.prune
  if not (
    p.method == "snnl_channels"
    or (
      p.method in _FINETUNING_SCORE_METHODS
      and (p.get("retrain_epochs", p.get("finetune_epochs")) or 0) > 0
    )
  ):
    raise SystemExit(
      "--finetune_control needs runs that fine-tune after every step: "
      "snnl_channels, or one of "
      + ", ".join(_FINETUNING_SCORE_METHODS)
      + " with --config.prune.retrain_epochs > 0"
    )
  data = load_dataset(config.data, workdir=workdir)
  model = pipeline.make_model(config, data)
  dense = pipeline.train_dense(config, model, data, workdir)  # restores the finished run
  dense_val = pipeline.evaluate_split(dense, data, "validation", config)
  roles = pipeline.resolve_roles(config, data, dense_val)
  ctx = pipeline.context(config, model, data, workdir, roles)
  method = get_method(p.method)  # only its training is used
  tx = method.optimizer(ctx, dense.tx)
  state = dense.replace(tx=tx, opt_state=tx.init(dense.params))
  mask = method.prepare_mask(ctx, state.params, masks.init_mask(state.params, ctx.prunable))
  steps = []
  for step in range(1, len(results["steps"])):
    state = train.set_mask(state, mask, reset_opt_state=True)
    state, _ = train.fit(
      state,
      pipeline.epoch_batches(config, data, config.seed * 31 + step),
      epochs=method.retrain_epochs(ctx),
      rng=jax.random.key(step),
      log_every=0,
      donate=False,
    )
    labels, pred, groups = pipeline.predict_split(state, data, "test", config)
    steps.append(
      {
        "step": step,
        "validation": pipeline.evaluate_split(state, data, "validation", config),
        "test": {**pipeline.split_metrics(config, data, labels, pred, groups), "sparsity": 0.0},
        "predictions": pred,
      }
    )
  eligible = [
    s
    for s in steps
    if dense_val["accuracy"] - s["validation"]["accuracy"] <= p.max_accuracy_drop
    and s["validation"]["eodd"] is not None
  ]
  chosen = min(eligible, key=lambda s: (s["validation"]["eodd"], s["step"])) if eligible else None
  stored = np.load(os.path.join(workdir, pipeline.TEST_PREDICTIONS))
  if not np.array_equal(stored["labels"], labels):
    raise SystemExit(f"{workdir}: test_predictions.npz is not of this run's test split")
  control_pred = stored["dense"] if chosen is None else chosen["predictions"]
  boot = pipeline.paired_bootstrap(
    config,
    data,
    stored["labels"],
    stored["groups"],
    {"dense": stored["dense"], "pruned": stored["pruned"], "control": control_pred},
    pairs=[("pruned", "dense"), ("control", "dense"), ("pruned", "control")],
  )
  out = {
    "chosen_step": 0 if chosen is None else chosen["step"],
    "test": results["dense"] if chosen is None else chosen["test"],
    "steps": [
      {
        "step": s["step"],
        "val_accuracy": s["validation"]["accuracy"],
        "val_eodd": s["validation"]["eodd"],
      }
      for s in steps
    ],
    "bootstrap": boot,
  }
  checkpoint.write_json_atomic(path, out)
  return out


def _difference_cells(row: dict, prefix: str, summary: dict, groups: list[str]) -> None:
  """``<prefix>acc``, ``<prefix>eodd`` and ``<prefix>acc_<g>`` LEAFs (for the mean row) and
  ``..._ci`` text cells of a :func:`fairjax.report.summarize_bootstrap` dict, plus the labels."""
  leaves = {
    f"{prefix}acc": summary["accuracy_difference"],
    f"{prefix}eodd": summary["eodd_difference"],
    **{f"{prefix}acc_{g}": summary["group_accuracy_difference"][g] for g in groups},
  }
  for key, leaf in leaves.items():
    row[key] = leaf["estimate"]
    row[f"{key}_low"], row[f"{key}_high"] = leaf["low"], leaf["high"]
    row[f"{key}_ci"] = report.format_interval(leaf)
  row[f"{prefix}mechanism"] = summary["mechanism"]
  row[f"{prefix}mechanism_macro_f1"] = summary["mechanism_macro_f1"]


def _difference_mean(mean_row: dict, rows: list[dict], prefix: str, groups: list[str]) -> None:
  """Mean-row cells of :func:`_difference_cells`: mean ± std (seeds significant ↓ ↑), labels."""
  for key in [f"{prefix}acc", f"{prefix}eodd"] + [f"{prefix}acc_{g}" for g in groups]:
    stats = _mean_std([r[key] for r in rows])
    mean_row[key] = stats
    mean_row[f"{key}_ci"] = compare.difference_text(stats, compare.significance(rows, key))
  for key in (f"{prefix}mechanism", f"{prefix}mechanism_macro_f1"):
    mean_row[key] = compare.label_counts([r[key] for r in rows])


def _difference_columns(prefix: str, groups: list[str], what: str) -> list[tuple[str, str]]:
  return (
    [(f"{prefix}acc_ci", f"Δacc {what} [CI]")]
    + [(f"{prefix}acc_{g}_ci", f"Δacc {g} [CI]") for g in groups]
    + [
      (f"{prefix}eodd_ci", "ΔEodd [CI]"),
      (f"{prefix}mechanism", "mechanism (acc)"),
      (f"{prefix}mechanism_macro_f1", "mechanism (macro-F1)"),
    ]
  )


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
    subprocess.run(
      [
        sys.executable,
        "-m",
        "fairjax.main",
        f"--config={_CONFIG.value}",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        *extra,
      ],
      check=True,
    )
    seconds.append(time.perf_counter() - start)  # near 0 for a seed that was already finished
    results.append(checkpoint.read_json(os.path.join(workdir, "results.json")))
  agg = report.aggregate_seeds(results)
  groups = list(results[0]["dataset"]["group_names"])
  snnl = all(r.get("slimming") for r in results)
  rows = []
  for seed, r in zip(_SEEDS.value, results):
    row = {
      "seed": seed,
      "dense_acc": r["dense"]["accuracy"],
      "pruned_acc": r["pruned"]["accuracy"],
      "dense_eodd": r["dense"]["eodd"],
      "pruned_eodd": r["pruned"]["eodd"],
      "sparsity": r["pruned"]["sparsity"],
      "step": r["chosen_step"],
      "eodd_reduction": r["summary"]["eodd_reduction"],
      "accuracy_drop": r["summary"]["accuracy_drop"],
      "run_wall_s": r["wall_seconds"],
    }
    for g in groups:
      row[f"dense_acc_{g}"] = r["dense"]["group_accuracy"][g]
      row[f"pruned_acc_{g}"] = r["pruned"]["group_accuracy"][g]
    if snnl:
      row["channels_removed"] = _channels_removed(r)
      row["speedup"] = r["slimming"]["speedup"]
    _difference_cells(row, "d_", r["summary"], groups)
    if _CONTROL.value:
      control = finetune_control(r, os.path.join(root, f"seed{seed}"))
      row["control_acc"] = control["test"]["accuracy"]
      row["control_eodd"] = control["test"]["eodd"]
      for g in groups:
        row[f"control_acc_{g}"] = control["test"]["group_accuracy"][g]
      row["control_step"] = control["chosen_step"]
      for prefix, pair in (("cd_", "control - dense"), ("pc_", "pruned - control")):
        _difference_cells(
          row, prefix, report.summarize_bootstrap(control["bootstrap"], pair), groups
        )
    rows.append(row)
  mean_row = {"seed": "mean ± std", "step": ""}
  for key, (part, metric) in {
    "dense_acc": ("dense", "accuracy"),
    "pruned_acc": ("pruned", "accuracy"),
    "dense_eodd": ("dense", "eodd"),
    "pruned_eodd": ("pruned", "eodd"),
    "sparsity": ("pruned", "sparsity"),
    "eodd_reduction": ("summary", "eodd_reduction"),
    "accuracy_drop": ("summary", "accuracy_drop"),
  }.items():
    mean_row[key] = agg[part][metric]
  for g in groups:
    mean_row[f"dense_acc_{g}"] = agg["dense"]["group_accuracy"][g]
    mean_row[f"pruned_acc_{g}"] = agg["pruned"]["group_accuracy"][g]
  mean_row["run_wall_s"] = _mean_std([r["run_wall_s"] for r in rows])
  if snnl:
    mean_row["channels_removed"] = _mean_std([r["channels_removed"] for r in rows])
    mean_row["speedup"] = _mean_std([r["speedup"] for r in rows])
  _difference_mean(mean_row, rows, "d_", groups)
  control_keys = ["control_acc", "control_eodd"] + [f"control_acc_{g}" for g in groups]
  if _CONTROL.value:
    for key in control_keys:
      mean_row[key] = _mean_std([r[key] for r in rows])
    mean_row["control_step"] = ""
    _difference_mean(mean_row, rows, "cd_", groups)
    _difference_mean(mean_row, rows, "pc_", groups)
  rows.append(mean_row)
  columns = [
    ("seed", "seed"),
    ("dense_acc", "dense acc"),
    ("pruned_acc", "pruned acc"),
    ("accuracy_drop", "acc drop"),
  ]
  for g in groups:
    columns += [(f"dense_acc_{g}", f"dense acc {g}"), (f"pruned_acc_{g}", f"pruned acc {g}")]
  columns += [
    ("dense_eodd", "dense Eodd"),
    ("pruned_eodd", "pruned Eodd"),
    ("eodd_reduction", "Eodd reduction"),
    ("sparsity", "sparsity"),
  ]
  if snnl:
    layers = ", ".join(results[0]["slimming"]["channels"])
    total = sum(c["total"] for c in results[0]["slimming"]["channels"].values())
    columns += [
      ("channels_removed", f"channels removed ({layers}, of {total})"),
      ("speedup", "speedup slim/masked"),
    ]
  columns += [("step", "chosen step")]
  table = report.markdown_table(rows, columns)
  differences_table = report.markdown_table(
    rows, [("seed", "seed")] + _difference_columns("d_", groups, "pruned − dense")
  )
  control_table = control_differences = None
  if _CONTROL.value:
    control_table = report.markdown_table(
      rows,
      [("seed", "seed"), ("control_acc", "fine-tune-only acc")]
      + [(f"control_acc_{g}", f"fine-tune-only acc {g}") for g in groups]
      + [("control_eodd", "fine-tune-only Eodd"), ("control_step", "chosen step")],
    )
    control_differences = report.markdown_table(
      rows,
      [("seed", "seed")]
      + _difference_columns("cd_", groups, "control − dense")
      + _difference_columns("pc_", groups, "pruned − control"),
    )
  boot = results[0]["bootstrap"]
  interval_note = (
    f"Δ: paired differences on the same test samples with "
    f"{100 * boot['confidence']:g}% group-stratified bootstrap percentile "
    f"intervals ({boot['num_samples']} resamples, seed {boot['seed']}); mean row: "
    "mean ± population std of the estimates over seeds, (↓a ↑b) = seeds whose "
    "interval lies wholly below / above 0; mechanism: labels counted over seeds"
  )
  header = (
    f"{results[0]['method']} on {results[0]['dataset']['name']}, test split, "
    f"Eodd convention: {results[0]['fairness_convention']}"
  )
  if snnl:
    s = results[0]["slimming"]
    header += (
      f"; speedup: median of {s['speedup_repeats']} jitted forwards, batch "
      f"{s['speedup_batch_size']}, {s['device']}"
    )
  print(header)
  print(table)
  print(f"\nPaired differences, test split. {interval_note}:")
  print(differences_table)
  if control_table:
    print("\nFine-tune-only control (same fine-tuning, nothing removed), test split:")
    print(control_table)
    print("\nFine-tune-only control: paired differences (control − dense; pruned − control):")
    print(control_differences)
  print(
    f"run wall time per seed (s): {[round(r['run_wall_s'], 1) for r in rows[:-1]]}; "
    f"this invocation: {sum(seconds):.0f} s"
  )
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  checkpoint.write_json_atomic(
    out,
    {
      "config": _CONFIG.value,
      "method": results[0]["method"],
      "overrides": extra,
      "seeds": _SEEDS.value,
      "per_seed": rows[:-1],
      "aggregate": agg,
      "mean_row": rows[-1],
      "header": header,
      "table": table,
      "differences_table": differences_table,
      "interval_note": interval_note,
      "control_table": control_table,
      "control_differences_table": control_differences,
      "invocation_seconds": seconds,
    },
  )


if __name__ == "__main__":
  app.run(main)
