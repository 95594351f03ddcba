"""Every pruning method at several target sparsities from ONE dense model (issue 5).

    python -m fairjax.main --config=configs/compare.py --workdir=workdir/compare

A config with a ``compare`` section (:func:`fairjax.config.compare_section`) makes the CLI run
:func:`run` instead of the single-method pipeline. It trains (or restores) one dense model in
``<workdir>/checkpoints/dense``, then for every method in ``config.compare.methods`` and every
target weight sparsity in ``config.compare.sparsities`` prunes a copy of that same dense model
in its own run directory ``<workdir>/runs/<method>-s<sparsity>/`` with
``prune.method = method`` and ``prune.target_sparsity = sparsity``
(:func:`fairjax.pipeline.prune_iterative`): every method follows the cumulative schedule
``r_i = 1 - (1 - s)**(i / prune.max_steps)`` and stops exactly at step ``prune.max_steps`` on
the target; the Eodd-patience, ``max_sparsity`` and ``max_accuracy_drop`` rules that could end a
run before the target are off, and the last step is the one reported. Each method keeps its own
protocol otherwise (design.md sections 2-4): FairPrune and the baselines prune without
fine-tuning unless ``prune.retrain_epochs`` is set, FairGRAPE retrains after every iteration
and fine-tunes at the end, SNNL fine-tunes after every step.

``snnl_channels`` is structured and prunes only the chosen conv layers (``prune.snnl.layers``,
default the last conv): its target is the share of those layers' CHANNELS that is pruned
(``round_half_up(s * K)`` of ``K`` channels per layer, at least one kept). Its achieved sparsity
in the table is, as for every method, the share of pruned weights among ALL prunable weights, so
it is honestly much lower than the target; the ``channels`` column shows the kept channels.

Outputs (each written atomically; a killed comparison resumes: finished runs, those with a
``results.json``, are skipped, an unfinished one resumes from its checkpoints):

- ``<workdir>/runs/<name>/results.json`` (the schema of :mod:`fairjax.report`, plus
  ``dense_fingerprint``, a SHA-256 of the dense weights the run started from) and
  ``config.json`` (the run's config; a rerun with a different config is refused);
- ``<workdir>/compare.json`` (rows, dense metrics, fingerprint, bootstrap settings),
  ``compare.csv``, ``compare.md`` (test split: method, target and achieved sparsity, accuracy,
  macro-F1, Eodd, Eopp0/1, per-group accuracy; the paired pruned − dense differences of
  accuracy, Eodd and each group's accuracy with their bootstrap intervals, from each run's
  ``results["summary"]`` (design.md section 5); the levelling ``mechanism`` label; disparity of
  degradation) and ``pareto.png`` (accuracy against Eodd, one series per method, the dense model
  as a reference point). The CSV holds each interval as three numbers (estimate, low, high).

:func:`aggregate` turns the ``compare.json`` of several seeds into mean ± std rows
(``bench/compare_table.py``), with the number of seeds whose difference interval excludes 0
and the mechanism labels counted over seeds. This module sits above the pipeline; kernels never
import it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from fairjax import checkpoint, pipeline, report, train
from fairjax.config import ConfigError, validate_config
from fairjax.pruning import api as methods_api

RUNS_DIR = "runs"
COMPARE_JSON = "compare.json"
COMPARE_CSV = "compare.csv"
COMPARE_MD = "compare.md"
PARETO_PNG = "pareto.png"
RUN_CONFIG = "config.json"

# Metric columns shared by the table, the CSV and the seed aggregate (test split).
_METRICS = (
  "sparsity",
  "accuracy",
  "macro_f1",
  "eodd",
  "eopp0",
  "eopp1",
  "disparity_of_degradation",
)


def run_name(method: str, sparsity: float) -> str:
  """``<method>-s<sparsity>``: the run directory under ``<workdir>/runs``."""
  return f"{method}-s{float(sparsity)!r}"


def run_config(
  config: ml_collections.ConfigDict, method: str, sparsity: float
) -> ml_collections.ConfigDict:
  """The config of one run: ``config`` without its ``compare`` section, with
  ``prune.method = method`` and ``prune.target_sparsity = sparsity``."""
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    del cfg["compare"]
  cfg.prune.method = method
  cfg.prune.target_sparsity = float(sparsity)
  return cfg


def dense_fingerprint(state: train.TrainState) -> str:
  """SHA-256 (hex) of the dense model's params and BatchNorm statistics: paths, dtypes, shapes
  and bytes of every leaf. Equal fingerprints = the same starting weights, bit for bit."""
  h = hashlib.sha256()
  for name, tree in (("params", state.params), ("batch_stats", state.batch_stats)):
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      arr = np.ascontiguousarray(np.asarray(leaf))
      h.update(f"{name}{jax.tree_util.keystr(path)}|{arr.dtype.str}|{arr.shape}|".encode())
      h.update(arr.tobytes())
  return h.hexdigest()


def _plain(obj: Any) -> Any:
  """``obj`` as it reads back from JSON (tuples -> lists), for comparisons with files."""
  return json.loads(json.dumps(obj))


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
  if isinstance(a, Mapping) and isinstance(b, Mapping):
    for key in sorted(set(a) | set(b)):
      sub = f"{path}.{key}" if path else str(key)
      if key not in a or key not in b:
        return sub
      diff = _first_difference(a[key], b[key], sub)
      if diff is not None:
        return diff
    return None
  return None if a == b else (path or "<root>")


def _check_run_config(run_dir: str, expected: dict) -> None:
  """Writes ``<run_dir>/config.json``, or checks that the one there is ``expected``."""
  path = os.path.join(run_dir, RUN_CONFIG)
  if not os.path.exists(path):
    checkpoint.write_json_atomic(path, expected)
    return
  found = checkpoint.read_json(path)
  diff = _first_difference(found, expected)
  if diff is not None:
    raise ConfigError(
      f"{run_dir} was computed with another config (first difference: config.{diff}); use "
      "another --workdir, or delete that run directory to recompute it"
    )


def _channels(results: Mapping[str, Any]) -> str:
  """``"conv1 16/32"`` (kept/total channels of each SNNL layer at the reported step), or ``""``."""
  steps = results["steps"]
  kept = steps[results["chosen_step"]].get("channels_kept")
  if not kept:
    return ""
  total = steps[0]["channels_kept"]
  return ", ".join(f"{name} {kept[name]}/{total[name]}" for name in kept)


def _train_epochs(results: Mapping[str, Any]) -> int:
  """Epochs trained after pruning began: per-step training times steps, plus FairGRAPE's final
  fine-tune (so the table shows each method's training budget)."""
  p = results["config"]["prune"]
  if "retrain_epochs" in p:  # the one key (None: the method's default)
    per_step = p["retrain_epochs"]
    if per_step is None:
      per_step = methods_api.get_method(results["method"]).default_retrain_epochs
  else:  # results files written before it: the per-method names
    fairgrape = p.get("fairgrape", {}).get("retrain_epochs", p.get("fairgrape_retrain_epochs"))
    snnl = p.get("snnl", {}).get("finetune_epochs", p.get("snnl_finetune_epochs"))
    per_step = {"fairgrape": fairgrape, "snnl_channels": snnl}.get(
      results["method"], p["finetune_epochs"]
    )
  final = results.get("final_finetune", {}).get("epochs", 0)
  return int(per_step * (len(results["steps"]) - 1) + final)


def _difference_keys(group_names: Sequence[str]) -> list[tuple[str, str]]:
  """``(row key, header)`` of the paired pruned − dense differences with intervals (test
  split, ``results["summary"]``): accuracy, Eodd and each group's accuracy."""
  return [("accuracy_difference", "Δacc"), ("eodd_difference", "ΔEodd")] + [
    (f"accuracy_difference_{g}", f"Δacc {g}") for g in group_names
  ]


def _leaves(summary: Mapping[str, Any], group_names: Sequence[str]) -> dict[str, Any]:
  """The difference LEAFs of ``summary`` by :func:`_difference_keys` key (None if absent)."""
  if "accuracy_difference" not in summary:  # the dense row, or a run without a bootstrap
    return {k: None for k, _ in _difference_keys(group_names)}
  out = {
    "accuracy_difference": summary["accuracy_difference"],
    "eodd_difference": summary["eodd_difference"],
  }
  for g in group_names:
    out[f"accuracy_difference_{g}"] = summary["group_accuracy_difference"][g]
  return out


def _row(
  method: str,
  target: float,
  results: Mapping[str, Any],
  metrics: Mapping[str, Any],
  summary: Mapping[str, Any],
  group_names: Sequence[str],
) -> dict[str, Any]:
  row = {
    "method": method,
    "target_sparsity": float(target),
    **{k: metrics[k] for k in _METRICS if k in metrics},
    "disparity_of_degradation": summary["disparity_of_degradation"],
    "accuracy_drop": summary["accuracy_drop"],
    "eodd_reduction": summary["eodd_reduction"],
  }
  for g in group_names:
    row[f"accuracy_{g}"] = metrics["group_accuracy"][g]
  # Paired bootstrap intervals of pruned − dense: numbers for the CSV and the seed aggregate,
  # "estimate [low, high]" text for the markdown table.
  for key, leaf in _leaves(summary, group_names).items():
    for part in ("estimate", "low", "high"):
      row[key if part == "estimate" else f"{key}_{part}"] = None if leaf is None else leaf[part]
    row[f"{key}_ci"] = "" if leaf is None else report.format_interval(leaf)
  row["mechanism"] = summary.get("mechanism", "")
  row["mechanism_macro_f1"] = summary.get("mechanism_macro_f1", "")
  row["channels"] = _channels(results) if results else ""
  row["steps"] = (len(results["steps"]) - 1) if results else 0
  row["train_epochs"] = _train_epochs(results) if results else 0
  return row


def columns(group_names: Sequence[str], *, csv: bool = False) -> list[tuple[str, str]]:
  """``(key, header)`` of the table's columns (per-group accuracies in dataset order); with
  ``csv``, the CSV's: each interval as three numeric columns instead of one text cell."""
  cols = [
    ("method", "method"),
    ("target_sparsity", "target sparsity"),
    ("sparsity", "achieved sparsity"),
    ("accuracy", "accuracy"),
    ("macro_f1", "macro-F1"),
    ("eodd", "Eodd"),
    ("eopp0", "Eopp0"),
    ("eopp1", "Eopp1"),
  ]
  cols += [(f"accuracy_{g}", f"acc {g}") for g in group_names]
  for key, header in _difference_keys(group_names):
    if csv:
      cols += [(key, header), (f"{key}_low", f"{header} low"), (f"{key}_high", f"{header} high")]
    else:
      cols.append((f"{key}_ci", f"{header} [CI]"))
  cols += [("mechanism", "mechanism")]
  if csv:
    cols += [("mechanism_macro_f1", "mechanism macro-F1")]
  cols += [
    ("disparity_of_degradation", "disparity of degradation"),
    ("channels", "channels"),
    ("steps", "steps"),
    ("train_epochs", "epochs trained after pruning"),
  ]
  return cols


def write_outputs(workdir: str, comparison: Mapping[str, Any]) -> None:
  """``compare.json``, ``compare.csv``, ``compare.md`` and ``pareto.png`` of one comparison."""
  rows = comparison["rows"]
  groups = comparison["dataset"]["group_names"]
  cols = columns(groups)
  checkpoint.write_json_atomic(os.path.join(workdir, COMPARE_JSON), comparison)
  report.write_csv(os.path.join(workdir, COMPARE_CSV), rows, columns(groups, csv=True))
  convention = comparison["fairness_convention"]
  boot = comparison.get("bootstrap") or {}
  header = (
    f"# Pruning methods on {comparison['dataset']['name']}, seed {comparison['seed']}\n\n"
    f"Test split; Eodd/Eopp in the {convention} convention; every run starts from the "
    f"same dense model (SHA-256 {comparison['dense_fingerprint'][:16]}...). Target "
    "sparsity: share of prunable weights (snnl_channels: share of the chosen layers' "
    "channels); achieved sparsity: share of all prunable weights pruned. Δ columns: "
    "pruned − dense on the same test samples, with the paired, group-stratified "
    f"bootstrap percentile interval ({100 * boot.get('confidence', 0.95):g}%, "
    f"{boot.get('num_samples', 'n/a')} resamples); mechanism: how the dense model's "
    "worst and best groups moved (levelled_down: the better-off group lost "
    "significantly, the worse-off did not gain).\n\n"
  )
  text = header + report.markdown_table(rows, cols) + "\n"
  checkpoint.write_atomic(os.path.join(workdir, COMPARE_MD), lambda f: f.write(text))
  plot_rows = [
    {
      "method": r["method"],
      "accuracy": r["accuracy"],
      "eodd": r["eodd"],
      "label": None if r["method"] == "dense" else f"{r['target_sparsity']:g}",
    }
    for r in rows
  ]
  report.plot_pareto(
    plot_rows,
    os.path.join(workdir, PARETO_PNG),
    title=f"{comparison['dataset']['name']}: accuracy vs Eodd (test)",
    convention=convention,
  )


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the comparison of the module docstring; returns ``compare.json``'s dict.

  Raises:
    ConfigError: a bad config (:func:`fairjax.config.validate_config`), or a run directory
      that holds a run of another config or dense model.
  """
  validate_config(config)
  if "compare" not in config:
    raise ConfigError(
      "config.compare is missing: a comparison config needs a compare section "
      "(fairjax.config.compare_section; see configs/compare.py)"
    )
  os.makedirs(workdir, exist_ok=True)
  t_start = time.perf_counter()
  methods = tuple(config.compare.methods)
  sparsities = tuple(float(s) for s in config.compare.sparsities)
  # The dense model is trained with the comparison's own config (its prune section is unused).
  data, model = pipeline.load(config, workdir)
  dense, dense_val, dense_test, roles = pipeline.dense_model(config, model, data, workdir)
  fingerprint = dense_fingerprint(dense)
  groups = list(data.group_names)
  rows = [_row("dense", 0.0, {}, dense_test, report.summarize(dense_test, dense_test), groups)]
  runs = {}
  total = len(methods) * len(sparsities)
  for k, (method, sparsity) in enumerate([(m, s) for m in methods for s in sparsities], start=1):
    name = run_name(method, sparsity)
    run_dir = os.path.join(workdir, RUNS_DIR, name)
    cfg = run_config(config, method, sparsity)
    _check_run_config(run_dir, _plain(cfg.to_dict()))
    path = os.path.join(run_dir, report.RESULTS_FILENAME)
    if os.path.exists(path):
      results = checkpoint.read_json(path)
      if results.get("dense_fingerprint") != fingerprint:
        raise ConfigError(
          f"{run_dir} was pruned from another dense model (fingerprint "
          f"{results.get('dense_fingerprint')!r} != {fingerprint!r}); use "
          "another --workdir, or delete that run directory"
        )
      logging.info("compare %d/%d: %s finished earlier, skipped", k, total, name)
    else:
      logging.info(
        "compare %d/%d: %s (method %s, target sparsity %s)", k, total, name, method, sparsity
      )
      results = pipeline.prune_run(
        cfg,
        model,
        data,
        dense,
        dense_val,
        dense_test,
        roles,
        run_dir,
        plots=False,
        extra={"dense_fingerprint": fingerprint, **pipeline.dense_provenance(workdir)},
      )
    runs[name] = {
      "method": method,
      "target_sparsity": sparsity,
      "results": os.path.join(RUNS_DIR, name, report.RESULTS_FILENAME),
      "wall_seconds": results["wall_seconds"],
    }
    rows.append(_row(method, sparsity, results, results["pruned"], results["summary"], groups))
  comparison = {
    "schema_version": 1,
    "seed": config.seed,
    "bootstrap": {
      "num_samples": int(config.report.bootstrap_samples),
      "seed": int(config.report.bootstrap_seed),
      "confidence": float(config.report.confidence),
    },
    "config": _plain(config.to_dict()),
    "dataset": data.describe(),
    "fairness_convention": config.fairness_convention,
    "dense_fingerprint": fingerprint,
    "dense": dense_test,
    **pipeline.dense_provenance(workdir),
    "methods": list(methods),
    "sparsities": list(sparsities),
    "rows": rows,
    "runs": runs,
    "wall_seconds": time.perf_counter() - t_start,
  }
  write_outputs(workdir, comparison)
  logging.info("compare: %d runs -> %s", total, os.path.join(workdir, COMPARE_MD))
  return comparison


# -- several seeds ------------------------------------------------------------------------------


def _mean_std(values: Sequence[Any]) -> dict[str, Any]:
  kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
  if not kept:
    return {"mean": None, "std": None, "n": 0}
  arr = np.asarray(kept, np.float64)
  return {
    "mean": float(arr.mean()),
    "std": float(arr.std(ddof=report.SEED_STD_DDOF)),
    "n": len(kept),
  }


def aggregate(comparisons: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Mean ± std over seeds of every (method, target sparsity) row of several comparisons.

  Args:
    comparisons: ``compare.json`` dicts of the same methods, sparsities, groups and fairness
      convention (one per seed).

  Returns:
    One row per (method, target) in the first comparison's order, with ``method``,
    ``target_sparsity``, ``num_seeds`` and, for every metric column of :func:`columns`,
    ``{"mean", "std", "n"}`` (population std, ``report.SEED_STD_DDOF``; ``n`` = seeds where the
    value is defined). :func:`fairjax.report.markdown_table` prints these as "mean ± std".

  Raises:
    ValueError: no comparison, or comparisons that differ in methods, sparsities, groups or
      convention (averaging those would mean nothing).
  """
  if not comparisons:
    raise ValueError("aggregate needs at least one comparison")
  first = comparisons[0]
  for i, c in enumerate(comparisons[1:], start=1):
    for key in ("methods", "sparsities", "fairness_convention"):
      if c[key] != first[key]:
        raise ValueError(
          f"comparisons[{i}].{key} is {c[key]!r}, but comparisons[0].{key} is {first[key]!r}"
        )
    if c["dataset"]["group_names"] != first["dataset"]["group_names"]:
      raise ValueError(f"comparisons[{i}] has other groups than comparisons[0]")
  groups = first["dataset"]["group_names"]
  numeric = [
    k
    for k, _ in columns(groups, csv=True)
    if k
    not in (
      "method",
      "target_sparsity",
      "channels",
      "steps",
      "train_epochs",
      "mechanism",
      "mechanism_macro_f1",
    )
  ]
  out = []
  for j, row in enumerate(first["rows"]):
    rows = [c["rows"][j] for c in comparisons]
    if any(
      (r["method"], r["target_sparsity"]) != (row["method"], row["target_sparsity"]) for r in rows
    ):
      raise ValueError(f"row {j} names different runs across comparisons")
    agg = {
      "method": row["method"],
      "target_sparsity": row["target_sparsity"],
      "num_seeds": len(rows),
    }
    agg.update({k: _mean_std([r.get(k) for r in rows]) for k in numeric})
    for key, _ in _difference_keys(groups):
      agg[f"{key}_seeds"] = significance(rows, key)
      agg[f"{key}_text"] = difference_text(agg[key], agg[f"{key}_seeds"])
    for key in ("mechanism", "mechanism_macro_f1"):
      agg[key] = label_counts([r.get(key) for r in rows])
    out.append(agg)
  return out


def significance(rows: Sequence[Mapping[str, Any]], key: str) -> dict[str, int]:
  """Seeds whose interval of ``key`` lies wholly below 0, wholly above, covers 0, or is null."""
  out = {"below_zero": 0, "above_zero": 0, "covers_zero": 0, "no_interval": 0}
  for r in rows:
    low, high = r.get(f"{key}_low"), r.get(f"{key}_high")
    if low is None or high is None:
      out["no_interval"] += 1
    elif high < 0:
      out["below_zero"] += 1
    elif low > 0:
      out["above_zero"] += 1
    else:
      out["covers_zero"] += 1
  return out


def difference_text(stats: Mapping[str, Any], seeds: Mapping[str, int]) -> str:
  """``"-0.095 ± 0.049 (↓3 ↑0)"``: mean ± std over seeds, then how many seeds' intervals lie
  wholly below / above 0 (significant decreases / increases); "" without intervals."""
  if seeds["no_interval"] == sum(seeds.values()) or stats["mean"] is None:
    return ""
  return (
    f"{stats['mean']:+.3f} ± {stats['std']:.3f} (↓{seeds['below_zero']} ↑{seeds['above_zero']})"
  )


def label_counts(labels: Sequence[Any]) -> str:
  """``"levelled_down ×2, no_significant_change ×1"`` (most frequent first), "" if none."""
  counts: dict[str, int] = {}
  for label in labels:
    if label:
      counts[label] = counts.get(label, 0) + 1
  return ", ".join(f"{k} ×{n}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def aggregate_columns(group_names: Sequence[str]) -> list[tuple[str, str]]:
  """Columns of :func:`aggregate`'s markdown table: the test metrics (mean ± std), the paired
  differences (mean ± std, and the seeds whose interval excludes 0) and the labels."""
  cols = [
    c
    for c in columns(group_names)
    if c[0] not in ("channels", "steps", "train_epochs", "mechanism") and not c[0].endswith("_ci")
  ]
  cols[-1:-1] = [(f"{k}_text", f"{h} (sig. seeds)") for k, h in _difference_keys(group_names)]
  cols.insert(-1, ("mechanism", "mechanism (seeds)"))
  return cols


def pareto_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """:func:`fairjax.report.plot_pareto` rows (with error bars) of :func:`aggregate`'s rows."""
  return [
    {
      "method": r["method"],
      "accuracy": r["accuracy"]["mean"],
      "accuracy_std": r["accuracy"]["std"],
      "eodd": r["eodd"]["mean"],
      "eodd_std": r["eodd"]["std"],
      "label": None if r["method"] == "dense" else f"{r['target_sparsity']:g}",
    }
    for r in rows
  ]


__all__ = [
  "run",
  "run_config",
  "run_name",
  "dense_fingerprint",
  "columns",
  "write_outputs",
  "aggregate",
  "aggregate_columns",
  "pareto_rows",
  "significance",
  "difference_text",
  "label_counts",
]
