"""The end of a run in words and figures: :func:`story` (the last log lines) and :func:`plots`
(``tradeoff.png``, ``saliency_histograms.png``); the drawing itself is :mod:`fairjax.report`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from fairjax import masks, parallel, report
from fairjax.pruning import api as methods_api
from fairjax.pruning import builtin, fairprune


def _num(x: Any) -> float:
  return float("nan") if x is None else float(x)


def _points(leaf: Mapping[str, Any]) -> str:
  """A difference LEAF in accuracy points: ``-2.4 points [-3.9, -1.0]``."""
  if leaf["estimate"] is None:
    return "n/a"
  text = f"{100 * leaf['estimate']:+.1f} points"
  if leaf["low"] is not None and leaf["high"] is not None:
    text += f" [{100 * leaf['low']:+.1f}, {100 * leaf['high']:+.1f}]"
  return text


def story(
  results: Mapping[str, Any], reason: str | None, files: list[str], checkpoints: str
) -> list[str]:
  """The run's last log lines, in words: what was pruned, whether any step lowered validation
  Eodd within ``max_accuracy_drop``, which model is reported, the levelling label with the
  paired intervals (design.md section 8.1), and every file written."""
  cfg = results["config"]["prune"]
  steps, chosen = results["steps"], results["chosen_step"]
  method, pruned = results["method"], results["pruned"]
  dense_val = steps[0]["validation"]
  limit = cfg["max_accuracy_drop"]
  lines = [
    f"what was pruned: {method}, {len(steps) - 1} step(s) up to sparsity "
    f"{steps[-1]['sparsity']:.4f} of the prunable weights"
    + (f"; the loop stopped because {reason}" if reason else "")
    + "."
  ]
  better = [
    s["step"]
    for s in steps[1:]
    if dense_val["accuracy"] - s["validation"]["accuracy"] <= limit
    and s["validation"]["eodd"] is not None
    and dense_val["eodd"] is not None
    and s["validation"]["eodd"] < dense_val["eodd"]
  ]
  if cfg.get("target_sparsity") is not None:
    lines.append(
      f"target-sparsity mode: the last step is reported whatever its metrics; "
      f"{len(better)} step(s) had a lower validation Eodd than dense within "
      f"max_accuracy_drop={limit}."
    )
  elif not better:
    lines.append(
      f"No pruning step lowered validation Eodd below the dense model's "
      f"({_num(dense_val['eodd']):.4f}) while staying within max_accuracy_drop="
      f"{limit} of its validation accuracy."
    )
  else:
    lines.append(
      f"{len(better)} of {len(steps) - 1} step(s) lowered validation Eodd below the "
      f"dense model's ({_num(dense_val['eodd']):.4f}) within max_accuracy_drop={limit}"
      f": step(s) {', '.join(map(str, better))}."
    )
  if chosen == 0:
    lines.append(
      "reported model: the dense model (step 0, nothing pruned); no step stayed "
      f"within max_accuracy_drop={limit}."
    )
  else:
    worse = (
      cfg.get("target_sparsity") is None
      and chosen not in better
      and steps[chosen]["validation"]["eodd"] is not None
    )
    lines.append(
      f"reported model: step {chosen}, sparsity {pruned['sparsity']:.4f}"
      + (", then fine-tuned" if "final_finetune" in results else "")
      + (
        " (the last step, on the target)"
        if cfg.get("target_sparsity") is not None
        else " (the last step, prune.report_step='last')"
        if cfg.get("report_step") == "last"
        else " (lowest validation Eodd within the accuracy limit)"
      )
      + (
        f"; its validation Eodd ({steps[chosen]['validation']['eodd']:.4f}) is not "
        "below the dense model's"
        if worse
        else ""
      )
      + "."
    )
  s, boot = results["summary"], results["bootstrap"]
  groups = s["group_accuracy_difference"]
  lines.append(
    f"mechanism (test split, pruned − dense, {100 * boot['confidence']:g}% paired bootstrap "
    f"intervals, {boot['num_samples']} resamples): {s['mechanism']} by group accuracy "
    f"(macro-F1: {s['mechanism_macro_f1']}); worse-off {s['worse_off_group']} "
    f"{_points(groups[s['worse_off_group']])}, better-off {s['better_off_group']} "
    f"{_points(groups[s['better_off_group']])}; accuracy {_points(s['accuracy_difference'])}; "
    f"Eodd {report.format_interval(s['eodd_difference'])} ({results['fairness_convention']} "
    "convention). An interval that excludes 0 is a significant change"
    + ("; the reported model is the dense one, so every difference is 0." if chosen == 0 else ".")
  )
  lines.append("files written: " + ", ".join(files) + f"; checkpoints under {checkpoints}")
  return lines


def plots(ctx: methods_api.RunContext, dense, steps: list[dict], chosen: int) -> list[str]:
  """``<ctx.workdir>/tradeoff.png`` and, for methods with ``curvature_plot`` (fairprune, obd),
  ``saliency_histograms.png`` of the dense model's per-group curvature terms, the
  unprivileged group against the first privileged one (``ctx.roles``). Returns the paths
  written (none on processes other than the main one; the curvature pass is collective)."""
  config, data, workdir = ctx.config, ctx.data, ctx.workdir
  unpriv, priv = ctx.roles
  curvature = methods_api.get_method(config.prune.method).curvature_plot
  diag = builtin.group_diag(ctx, dense, 0) if curvature else None  # collective
  if not parallel.is_main_process():
    return []
  written = [
    report.plot_tradeoff(
      steps,
      os.path.join(workdir, "tradeoff.png"),
      title=f"{config.prune.method} on {data.name} (validation split)",
      convention=config.fairness_convention,
      chosen_step=chosen,
      max_accuracy_drop=(
        None if config.prune.target_sparsity is not None else config.prune.max_accuracy_drop
      ),
    )
  ]
  if not curvature:
    logging.info(
      "%s: no saliency_histograms.png (it shows FairPrune's per-group curvature, "
      "which only fairprune and obd compute)",
      config.prune.method,
    )
    return written
  terms = fairprune.group_terms(dense.params, diag)
  per_layer: dict[str, dict[str, np.ndarray]] = {}
  shown = (unpriv, priv[0])
  prunable = ctx.prunable
  for path, leaf in masks.flatten_with_paths(terms):
    if path[-1] != "kernel":
      continue
    name = "/".join(path)
    if not prunable(tuple(path), np.asarray(leaf[0])):  # shown, but say that it is never pruned
      name += " (not pruned)"
    per_layer[name] = {data.group_names[g]: np.asarray(leaf[g]).ravel() for g in shown}
  written.append(
    report.plot_saliency_histograms(
      per_layer,
      os.path.join(workdir, "saliency_histograms.png"),
      group_names=(data.group_names[shown[0]], data.group_names[shown[1]]),
    )
  )
  return written
