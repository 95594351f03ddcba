"""The pruning loop's stopping rule and its choice of the reported step, as pure functions.

The loop of :func:`fairjax.pipeline.prune_iterative` (design.md section 2.5) keeps a small
``stop`` record in every step checkpoint: ``{"best": float, "bad_steps": int, "stopped": bool,
"reason": str}``. After each step, :func:`update_stop` returns the next record from that step's
validation metrics; after the loop, :func:`choose_step` picks the step to report. Both read the
``prune`` section of the config (a ``ConfigDict`` or the plain dict of ``results["config"]``)
and nothing else, so they are tested on hand-made step records (tests/test_stopping.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def _num(x: Any) -> float:
  return math.nan if x is None else float(x)


def initial_stop(dense_val: Mapping[str, Any]) -> dict[str, Any]:
  """The record before step 1: the dense validation Eodd is the best so far."""
  return {"best": _num(dense_val["eodd"]), "bad_steps": 0, "stopped": False, "reason": ""}


def update_stop(
  stop: Mapping[str, Any],
  val: Mapping[str, Any],
  dense_val: Mapping[str, Any],
  cfg: Mapping[str, Any],
  end: str | None = None,
) -> dict[str, Any]:
  """The stop record after a step with validation metrics ``val`` (``eodd``, ``accuracy``,
  ``sparsity``).

  Args:
    stop: the record before the step (not modified).
    val, dense_val: the step's and the dense model's validation metrics.
    cfg: ``config.prune`` (``patience``, ``max_sparsity``, ``max_accuracy_drop``,
      ``target_sparsity``).
    end: the method's ``schedule_end`` reason for this step, or None.

  Returns:
    A new record. The Eodd counter always updates (``bad_steps`` resets when Eodd improves on
    ``best``). With ``cfg["target_sparsity"]`` set, only ``end`` stops the loop (no rule may stop
    it before the target); otherwise the first that holds of: Eodd not improved for
    ``patience`` steps, sparsity ``>= max_sparsity``, accuracy drop ``> max_accuracy_drop``,
    ``end``.
  """
  out = dict(stop)
  eodd = _num(val["eodd"])
  if eodd < out["best"]:
    out["best"], out["bad_steps"] = eodd, 0
  else:
    out["bad_steps"] += 1
  drop = dense_val["accuracy"] - val["accuracy"]
  reason = None
  if cfg["target_sparsity"] is not None:
    reason = end
  elif out["bad_steps"] >= cfg["patience"]:
    reason = f"validation Eodd did not improve for {cfg['patience']} steps"
  elif val["sparsity"] >= cfg["max_sparsity"]:
    reason = f"sparsity reached {cfg['max_sparsity']}"
  elif drop > cfg["max_accuracy_drop"]:
    reason = f"validation accuracy dropped by {drop:.3f} > {cfg['max_accuracy_drop']}"
  else:
    reason = end
  if reason is not None:
    out.update(stopped=True, reason=reason)
  return out


def choose_step(
  steps: Sequence[Mapping[str, Any]], dense_val: Mapping[str, Any], cfg: Mapping[str, Any]
) -> int:
  """The reported step: the lowest validation Eodd among the steps within
  ``max_accuracy_drop`` of the dense validation accuracy (ties: the earlier step); the last
  step in ``target_sparsity`` mode or with ``report_step="last"`` (FairGRAPE's protocol
  reports its model at the prune rate), whatever its metrics; 0 (the dense model) when no
  step qualifies.

  Args:
    steps: step records (``steps[0]`` is the dense model), each with ``step`` and
      ``validation`` (``accuracy``, ``eodd``).
  """
  eligible = [
    s
    for s in steps[1:]
    if dense_val["accuracy"] - s["validation"]["accuracy"] <= cfg["max_accuracy_drop"]
    and s["validation"]["eodd"] is not None
  ]
  if cfg["target_sparsity"] is not None or cfg.get("report_step", "best") == "last":
    eligible = list(steps[-1:]) if len(steps) > 1 else []
  if not eligible:
    return 0
  return int(min(eligible, key=lambda s: (s["validation"]["eodd"], s["step"]))["step"])
