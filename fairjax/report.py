"""Results schema, summaries, tables and figures of a pruning run (design.md sections 0 and 5).

Reporting sits above the kernels and the methods (design.md section 0): it takes plain dicts and
arrays (the per-split dicts of :func:`fairjax.metrics.evaluate`, per-parameter saliency arrays),
never models, datasets or configs.

The results file ``<workdir>/results.json`` is a public contract::

    {
      "schema_version": 1,
      "config": {...},                      # the full run config as a plain dict
      "dataset": {"name": str, "num_classes": int, "group_names": [str, ...],
                  "class_names": [str, ...] | null,
                  "split_sizes": {"train": int, "validation": int, "test": int},
                  "num_unknown_group": {"train": int, "validation": int, "test": int}},
      "fairness_convention": "sum" | "mean",
      "privileged_group": str | null,       # one of dataset.group_names; null when several
      "privileged_groups": [str, ...],      # only then: the privileged groups (2 or more)
      "method": str,                        # "fairprune", ...
      "dense":  <split metrics>,            # test split, unpruned model
      "pruned": <split metrics>,            # test split, final pruned model
      "steps": [{"step": int, "sparsity": float, "validation": <split metrics>}, ...],
      "summary": {"eodd_reduction": float | null, "accuracy_drop": float,
                  "fate": float | null, "disparity_of_degradation": float | null,
                  # from "bootstrap" (summarize_bootstrap), pruned − dense on the test split:
                  "mechanism": LABEL, "mechanism_macro_f1": LABEL,
                  "worse_off_group": str, "better_off_group": str,
                  "accuracy_difference": LEAF, "eodd_difference": LEAF,
                  "group_accuracy_difference": {group name: LEAF}},
      "bootstrap": <fairjax.bootstrap.bootstrap output>   # models "dense" and "pruned",
                                            # differences "pruned - dense"
    }

``LEAF`` is ``{"estimate", "low", "high"}`` (a full-test-set value and its paired, group-stratified
percentile interval, each a number or null) and ``LABEL`` one of
:data:`fairjax.bootstrap.MECHANISM_LABELS` (levelled_up, levelled_down, ...; design.md section
8.1 for why the label matters). The bootstrap keys came after ``schema_version`` 1 was
published; they are additions (extra keys are allowed), so the version stays 1, and
:func:`validate_results` checks them whenever they are present (every run of the pipeline
writes them).

``<split metrics>`` is the dict of :func:`fairjax.metrics.evaluate` plus ``"sparsity"`` (global
sparsity of the prunable weights, a fraction in [0, 1]). :func:`validate_results` documents
exactly which keys are required and which may be ``null``; extra keys are allowed anywhere so
that the schema can grow without a version bump.

Figures use matplotlib's ``Figure`` with an explicit Agg canvas rather than ``pyplot``: that needs
no display, never touches the process-wide pyplot backend (a user's notebook keeps its own), and
leaves no figure registered in pyplot's global figure manager, so nothing has to be closed and
nothing leaks across a long sweep. Every file is written atomically (a temporary file in the same
directory, then ``os.replace``), so a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from fairjax import bootstrap, checkpoint, metrics

SCHEMA_VERSION = 1
RESULTS_FILENAME = "results.json"
SPLITS = ("train", "validation", "test")
CONVENTIONS = ("sum", "mean")
# ddof of every standard deviation over seeds (population std, like metrics'
# disparity_of_degradation); defined for a single seed, where ddof=1 would be NaN.
SEED_STD_DDOF = 0

# Split-metric keys every results file must carry: name -> (may be null, lies in [0, 1]).
# The fairness gaps may be null because metrics.evaluate reports NaN (-> null) when no class has
# the rates a gap needs in both groups (design.md section 5, "undefined" rates).
_SPLIT_NUMBERS: dict[str, tuple[bool, bool]] = {
  "accuracy": (False, True),
  "macro_f1": (False, True),
  "eopp0": (True, False),
  "eopp1": (True, False),
  "eodd": (True, False),
  "sparsity": (False, True),
}
# The scalar split metrics aggregate_seeds averages over seeds (group accuracies come on top).
_SEED_METRICS = ("accuracy", "macro_f1", "eodd", "eopp0", "eopp1", "sparsity")
_SUMMARY_SEED_METRICS = ("eodd_reduction", "accuracy_drop")

__all__ = [
  "CONVENTIONS",
  "RESULTS_FILENAME",
  "SCHEMA_VERSION",
  "SEED_STD_DDOF",
  "aggregate_seeds",
  "format_interval",
  "format_mean_std",
  "markdown_table",
  "plot_pareto",
  "plot_saliency_histograms",
  "plot_tradeoff",
  "summarize",
  "summarize_bootstrap",
  "validate_results",
  "write_csv",
  "write_results",
]


# --------------------------------------------------------------------------------------------
# Schema validation
# --------------------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
  # bool is an int subclass in Python; a True where a count belongs is a bug, not a 1.
  return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _is_number(x: Any) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _describe(x: Any) -> str:
  text = repr(x)
  if len(text) > 60:
    text = text[:57] + "..."
  return f"{text} ({type(x).__name__})"


def _get(obj: Mapping[str, Any], key: str, path: str) -> Any:
  if key not in obj:
    raise ValueError(f"{path}.{key} missing")
  return obj[key]


def _dict(obj: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
  value = _get(obj, key, path)
  if not isinstance(value, Mapping):
    raise ValueError(f"{path}.{key} must be a dict, got {_describe(value)}")
  return value


def _str(obj: Mapping[str, Any], key: str, path: str) -> str:
  value = _get(obj, key, path)
  if not isinstance(value, str) or not value:
    raise ValueError(f"{path}.{key} must be a non-empty string, got {_describe(value)}")
  return value


def _int(obj: Mapping[str, Any], key: str, path: str, minimum: int = 0) -> int:
  value = _get(obj, key, path)
  if not _is_int(value) or value < minimum:
    raise ValueError(f"{path}.{key} must be an integer >= {minimum}, got {_describe(value)}")
  return int(value)


def _number(
  obj: Mapping[str, Any], key: str, path: str, *, nullable: bool = False, unit: bool = False
) -> float | None:
  value = _get(obj, key, path)
  if value is None and nullable:
    return None
  # NaN is rejected: metrics.evaluate already maps NaN to null, and a NaN would make the file
  # invalid strict JSON.
  if not _is_number(value) or not math.isfinite(float(value)):
    what = "a finite number or null" if nullable else "a finite number"
    raise ValueError(f"{path}.{key} must be {what}, got {_describe(value)}")
  if unit and not 0.0 <= float(value) <= 1.0:
    raise ValueError(f"{path}.{key} must lie in [0, 1], got {value!r}")
  return float(value)


def _validate_split_metrics(m: Any, path: str, group_names: Sequence[str], convention: str):
  if not isinstance(m, Mapping):
    raise ValueError(f"{path} must be a dict, got {_describe(m)}")
  for key, (nullable, unit) in _SPLIT_NUMBERS.items():
    _number(m, key, path, nullable=nullable, unit=unit)
  g_acc = _dict(m, "group_accuracy", path)
  if sorted(g_acc) != sorted(group_names):
    raise ValueError(
      f"{path}.group_accuracy has groups {list(g_acc)!r}, expected "
      f"results.dataset.group_names {list(group_names)!r} (the same names)"
    )
  for name in group_names:
    _number(g_acc, name, f"{path}.group_accuracy", unit=True)
  # metrics.evaluate records the convention it used; a split computed under the other one would
  # silently mix incomparable numbers (design.md section 5).
  if "fairness_convention" in m and m["fairness_convention"] != convention:
    raise ValueError(
      f"{path}.fairness_convention is {m['fairness_convention']!r} but "
      f"results.fairness_convention is {convention!r}"
    )


_BOOTSTRAP_PAIR = "pruned - dense"
# summary keys derived from results["bootstrap"] (summarize_bootstrap); all or none.
_SUMMARY_BOOTSTRAP_KEYS = (
  "mechanism",
  "mechanism_macro_f1",
  "worse_off_group",
  "better_off_group",
  "accuracy_difference",
  "eodd_difference",
  "group_accuracy_difference",
)


def _validate_leaf(leaf: Any, path: str) -> None:
  if not isinstance(leaf, Mapping):
    raise ValueError(f"{path} must be a dict {{estimate, low, high}}, got {_describe(leaf)}")
  values = [_number(leaf, k, path, nullable=True) for k in ("estimate", "low", "high")]
  if values[1] is not None and values[2] is not None and values[1] > values[2]:
    raise ValueError(f"{path}.low {values[1]!r} exceeds {path}.high {values[2]!r}")


def _validate_leaves(obj: Mapping[str, Any], path: str, group_names: Sequence[str]) -> None:
  for key in bootstrap.SCALAR_METRICS:
    _validate_leaf(_get(obj, key, path), f"{path}.{key}")
  for key in bootstrap.GROUP_METRICS:
    groups = _dict(obj, key, path)
    if sorted(groups) != sorted(group_names):
      raise ValueError(f"{path}.{key} has groups {list(groups)!r}, expected {list(group_names)!r}")
    for g in group_names:
      _validate_leaf(groups[g], f"{path}.{key}.{g}")


def _validate_mechanism(entry: Any, path: str, group_names: Sequence[str]) -> None:
  if not isinstance(entry, Mapping):
    raise ValueError(f"{path} must be a dict, got {_describe(entry)}")
  label = _get(entry, "label", path)
  if label not in bootstrap.MECHANISM_LABELS:
    raise ValueError(
      f"{path}.label must be one of {bootstrap.MECHANISM_LABELS}, got {_describe(label)}"
    )
  for key in ("worse_off", "better_off"):
    if _str(entry, key, path) not in group_names:
      raise ValueError(f"{path}.{key} {entry[key]!r} is not one of {list(group_names)!r}")


def _validate_bootstrap(obj: Mapping[str, Any], group_names: Sequence[str]) -> None:
  """``results.bootstrap`` and the summary keys derived from it (module docstring)."""
  root = "results.bootstrap"
  boot = _dict(obj, "bootstrap", "results")
  _int(boot, "num_samples", root, minimum=1)
  confidence = _number(boot, "confidence", root)
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"{root}.confidence must lie in (0, 1), got {confidence!r}")
  models = _dict(boot, "models", root)
  for name in ("dense", "pruned"):
    _validate_leaves(_dict(models, name, f"{root}.models"), f"{root}.models.{name}", group_names)
  diffs = _dict(boot, "differences", root)
  diff = _dict(diffs, _BOOTSTRAP_PAIR, f"{root}.differences")
  d_path = f"{root}.differences[{_BOOTSTRAP_PAIR!r}]"
  _validate_leaves(diff, d_path, group_names)
  mech = _dict(diff, "mechanism", d_path)
  for m in bootstrap.GROUP_METRICS:
    _validate_mechanism(
      _get(mech, m, f"{d_path}.mechanism"), f"{d_path}.mechanism.{m}", group_names
    )

  s_path = "results.summary"
  summary = obj["summary"]
  missing = [k for k in _SUMMARY_BOOTSTRAP_KEYS if k not in summary]
  if missing:
    raise ValueError(f"{s_path}.{missing[0]} missing (results.bootstrap is present)")
  # The summary repeats the bootstrap's headline; a mismatch means one of them is stale.
  expected = summarize_bootstrap(boot)
  for key in _SUMMARY_BOOTSTRAP_KEYS:
    if summary[key] != expected[key]:
      raise ValueError(
        f"{s_path}.{key} is {_describe(summary[key])}, but {root} gives {_describe(expected[key])}"
      )


def validate_results(obj: dict) -> None:
  """Checks a results dict against the schema of this module's docstring.

  Required keys and types (``null`` is allowed only where marked):

  - ``schema_version`` == :data:`SCHEMA_VERSION`; ``config``: dict; ``method``: str;
    ``fairness_convention``: ``"sum"`` or ``"mean"``; ``privileged_group``: null with
    ``privileged_groups`` listing two or more group names, or one of the group
    names.
  - ``dataset``: ``name`` str, ``num_classes`` int >= 1, ``group_names`` list of >= 2 unique
    str, ``class_names`` list of ``num_classes`` str or null, ``split_sizes`` and
    ``num_unknown_group`` dicts with int >= 0 for ``train``, ``validation`` and ``test``.
  - ``dense``, ``pruned`` and every ``steps[i].validation`` (split metrics): ``accuracy``,
    ``macro_f1``, ``sparsity`` finite in [0, 1]; ``eopp0``, ``eopp1``, ``eodd`` finite or null;
    ``group_accuracy`` a dict {group name: finite in [0, 1]} with exactly the dataset's group
    names (any order: JSON files are written with sorted keys); ``fairness_convention``, when present, equal to the top-level one.
  - ``steps``: a non-empty list; ``step`` ints strictly increasing and starting at 0 (step 0 is
    the dense model); ``sparsity`` finite in [0, 1].
  - ``summary``: ``accuracy_drop`` finite; ``eodd_reduction``, ``fate`` and
    ``disparity_of_degradation`` finite or null (see :func:`summarize`).
  - ``bootstrap`` (checked when present; the pipeline always writes it): ``num_samples`` int
    >= 1, ``confidence`` in (0, 1); ``models.dense``, ``models.pruned`` and
    ``differences["pruned - dense"]`` each with a LEAF for every metric of
    :data:`fairjax.bootstrap.SCALAR_METRICS` and ``{group name: LEAF}`` for
    ``group_accuracy`` and ``group_macro_f1`` (exactly the dataset's groups); a LEAF is
    ``{"estimate", "low", "high"}``, each finite or null, ``low <= high``; the difference's
    ``mechanism.group_accuracy`` / ``.group_macro_f1`` hold a ``label`` from
    :data:`fairjax.bootstrap.MECHANISM_LABELS` and ``worse_off`` / ``better_off`` group names.
    Then ``summary`` must also hold every key of :func:`summarize_bootstrap`, equal to what
    it gives for ``bootstrap``.

  Numbers may be Python or numpy scalars, but never bool and never NaN / inf.

  Args:
    obj: the results dict, as written to or read from ``results.json``.

  Raises:
    ValueError: naming the first offending key path, e.g.
      ``"results.pruned.group_accuracy missing"``.
  """
  root = "results"
  if not isinstance(obj, Mapping):
    raise ValueError(f"{root} must be a dict, got {_describe(obj)}")
  version = _get(obj, "schema_version", root)
  if not _is_int(version) or version != SCHEMA_VERSION:
    raise ValueError(f"{root}.schema_version must be {SCHEMA_VERSION}, got {_describe(version)}")
  _dict(obj, "config", root)

  ds_path = f"{root}.dataset"
  ds = _dict(obj, "dataset", root)
  _str(ds, "name", ds_path)
  num_classes = _int(ds, "num_classes", ds_path, minimum=1)
  group_names = _get(ds, "group_names", ds_path)
  if (
    not isinstance(group_names, (list, tuple))
    or len(group_names) < 2
    or not all(isinstance(g, str) and g for g in group_names)
    or len(set(group_names)) != len(group_names)
  ):
    raise ValueError(
      f"{ds_path}.group_names must be a list of >= 2 unique non-empty strings, got "
      f"{_describe(group_names)}"
    )
  class_names = _get(ds, "class_names", ds_path)
  if class_names is not None and (
    not isinstance(class_names, (list, tuple))
    or len(class_names) != num_classes
    or not all(isinstance(c, str) for c in class_names)
  ):
    raise ValueError(
      f"{ds_path}.class_names must be null or a list of {num_classes} strings, got "
      f"{_describe(class_names)}"
    )
  for key in ("split_sizes", "num_unknown_group"):
    sizes = _dict(ds, key, ds_path)
    for split in SPLITS:
      _int(sizes, split, f"{ds_path}.{key}")

  convention = _get(obj, "fairness_convention", root)
  if convention not in CONVENTIONS:
    raise ValueError(
      f"{root}.fairness_convention must be one of {CONVENTIONS}, got {_describe(convention)}"
    )
  if _get(obj, "privileged_group", root) is None:
    # Several privileged groups (FairPrune with more than two groups averages them all).
    several = _get(obj, "privileged_groups", root)
    if (
      not isinstance(several, list)
      or len(several) < 2
      or len(set(map(str, several))) != len(several)
      or any(g not in group_names for g in several)
    ):
      raise ValueError(
        f"{root}.privileged_groups must list two or more distinct names of "
        f"{ds_path}.group_names {list(group_names)!r} when {root}.privileged_group is "
        f"null, got {_describe(several)}"
      )
  else:
    privileged = _str(obj, "privileged_group", root)
    if privileged not in group_names:
      raise ValueError(
        f"{root}.privileged_group {privileged!r} is not one of {ds_path}.group_names "
        f"{list(group_names)!r}"
      )
  _str(obj, "method", root)

  for split in ("dense", "pruned"):
    _validate_split_metrics(_get(obj, split, root), f"{root}.{split}", group_names, convention)

  steps = _get(obj, "steps", root)
  if not isinstance(steps, (list, tuple)) or not steps:
    raise ValueError(f"{root}.steps must be a non-empty list, got {_describe(steps)}")
  previous = None
  for i, step in enumerate(steps):
    path = f"{root}.steps[{i}]"
    if not isinstance(step, Mapping):
      raise ValueError(f"{path} must be a dict, got {_describe(step)}")
    number = _int(step, "step", path)
    if previous is None and number != 0:
      raise ValueError(f"{path}.step must be 0 (the dense model comes first), got {number}")
    if previous is not None and number <= previous:
      raise ValueError(f"{path}.step must exceed the previous step {previous}, got {number}")
    previous = number
    _number(step, "sparsity", path, unit=True)
    _validate_split_metrics(
      _get(step, "validation", path), f"{path}.validation", group_names, convention
    )

  s_path = f"{root}.summary"
  summary = _dict(obj, "summary", root)
  _number(summary, "eodd_reduction", s_path, nullable=True)
  _number(summary, "accuracy_drop", s_path)
  _number(summary, "fate", s_path, nullable=True)
  _number(summary, "disparity_of_degradation", s_path, nullable=True)
  if "bootstrap" in obj:
    _validate_bootstrap(obj, group_names)


# --------------------------------------------------------------------------------------------
# Summary of one run
# --------------------------------------------------------------------------------------------


def _finite_or_none(x: Any) -> float | None:
  if x is None:
    return None
  x = float(x)
  return x if math.isfinite(x) else None


def summarize(dense: dict, pruned: dict) -> dict:
  """The headline numbers of one run: dense vs pruned test-split metrics (design.md section 5).

  - ``eodd_reduction`` = (Eodd_dense − Eodd_pruned) / Eodd_dense, a fraction (0.25 = a quarter
    less unfair); null when the dense Eodd is 0 or either Eodd is null.
  - ``accuracy_drop`` = acc_dense − acc_pruned, in accuracy units (0.02 = two points).
  - ``fate``: :func:`fairjax.metrics.fate` with ACC = macro-F1 and FC = Eodd, λ = 1 (Kong et
    al.); null when not computable (dense Eodd or macro-F1 of 0, or a null input).
  - ``disparity_of_degradation``: :func:`fairjax.metrics.disparity_of_degradation` over the
    group accuracies, paired by group name in the dense dict's order; null when a group
    accuracy is null.

  Args:
    dense: split metrics of the dense model (:func:`fairjax.metrics.evaluate` output; needs
      ``accuracy``, ``macro_f1``, ``eodd``, ``group_accuracy``).
    pruned: the same for the pruned model.

  Returns:
    dict with the four keys above, Python floats or None.

  Raises:
    ValueError: the two dicts name different groups.
  """
  d_eodd = _finite_or_none(dense["eodd"])
  p_eodd = _finite_or_none(pruned["eodd"])
  eodd_reduction = None
  if d_eodd is not None and p_eodd is not None and d_eodd != 0:
    eodd_reduction = (d_eodd - p_eodd) / d_eodd

  accuracy_drop = float(dense["accuracy"]) - float(pruned["accuracy"])

  try:
    fate = metrics.fate(
      acc_pruned=pruned["macro_f1"],
      acc_dense=dense["macro_f1"],
      fc_pruned=pruned["eodd"],
      fc_dense=dense["eodd"],
    )
  except (ValueError, TypeError):
    # metrics.fate refuses a zero baseline or a missing value; the schema records that as
    # null rather than failing the whole run at its very end.
    fate = None

  names = list(dense["group_accuracy"])
  if set(names) != set(pruned["group_accuracy"]):
    raise ValueError(
      f"dense and pruned metrics name different groups: {names!r} vs "
      f"{list(pruned['group_accuracy'])!r}"
    )
  g_dense = [_finite_or_none(dense["group_accuracy"][n]) for n in names]
  g_pruned = [_finite_or_none(pruned["group_accuracy"][n]) for n in names]
  dod = None
  if None not in g_dense and None not in g_pruned:
    try:
      dod = metrics.disparity_of_degradation(g_pruned, g_dense)
    except ValueError:  # fewer than two groups: no disparity to speak of.
      dod = None

  return {
    "eodd_reduction": eodd_reduction,
    "accuracy_drop": accuracy_drop,
    "fate": fate,
    "disparity_of_degradation": dod,
  }


def summarize_bootstrap(boot: Mapping[str, Any], pair: str = _BOOTSTRAP_PAIR) -> dict:
  """The headline of a paired bootstrap (:func:`fairjax.bootstrap.bootstrap`) for ``summary``.

  Args:
    boot: the bootstrap dict, with the difference ``pair`` (default ``"pruned - dense"``).
    pair: the difference to summarise.

  Returns:
    ``{"mechanism": label from the group accuracies, "mechanism_macro_f1": label from the
    group macro-F1s, "worse_off_group" / "better_off_group": the reference (dense) model's
    lowest / highest group by accuracy, "accuracy_difference", "eodd_difference": LEAF,
    "group_accuracy_difference": {group name: LEAF}}`` (LEAF: module docstring; copies, so
    the result can be stored next to ``boot``).
  """
  diff = boot["differences"][pair]
  mech = diff["mechanism"]

  def leaf(x: Mapping[str, Any]) -> dict:
    return {k: x[k] for k in ("estimate", "low", "high")}

  return {
    "mechanism": mech["group_accuracy"]["label"],
    "mechanism_macro_f1": mech["group_macro_f1"]["label"],
    "worse_off_group": mech["group_accuracy"]["worse_off"],
    "better_off_group": mech["group_accuracy"]["better_off"],
    "accuracy_difference": leaf(diff["accuracy"]),
    "eodd_difference": leaf(diff["eodd"]),
    "group_accuracy_difference": {g: leaf(v) for g, v in diff["group_accuracy"].items()},
  }


# --------------------------------------------------------------------------------------------
# Atomic writers
# --------------------------------------------------------------------------------------------


def write_results(workdir: str, results: dict) -> str:
  """Validates ``results`` and writes it atomically to ``<workdir>/results.json``.

  Args:
    workdir: the run's work directory (created if missing).
    results: a dict following the schema of this module's docstring.

  Returns:
    The path written.

  Raises:
    ValueError: the dict does not follow the schema (nothing is written then).
  """
  validate_results(results)
  path = os.path.join(os.fspath(workdir), RESULTS_FILENAME)
  checkpoint.write_json_atomic(path, results)
  return path


def _save_figure(fig: Figure, path: str) -> str:
  fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
  FigureCanvasAgg(fig)  # attaches the Agg canvas: rendering without any display
  checkpoint.write_atomic(
    path, lambda f: fig.savefig(f, format=fmt, dpi=120, bbox_inches="tight"), binary=True
  )
  fig.clear()
  return os.fspath(path)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _check_convention(convention: str) -> None:
  if convention not in CONVENTIONS:
    raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


def _nan_if_none(x: Any) -> float:
  return math.nan if x is None else float(x)


def plot_tradeoff(
  steps: list[dict],
  path: str,
  *,
  title: str = "",
  convention: str = "sum",
  chosen_step: int | None = None,
  max_accuracy_drop: float | None = None,
) -> str:
  """Validation accuracy, overall and per group (top), and Eodd (bottom) against sparsity.

  The figure says what the run did: the per-group curves show which group a step costs
  (levelling down, design.md section 8.1), the dotted line is the accuracy floor of the
  stopping rule (dense validation accuracy minus ``max_accuracy_drop``), the dense Eodd is a
  dotted reference, and the reported step is ringed in both panels. Step 0 (the dense model)
  is a star. A null Eodd leaves a gap; the Eodd axis names the convention (design.md section
  5.2). Legends sit outside the axes, so no curve is hidden.

  Args:
    steps: ``results["steps"]``: dicts with ``step`` (int), ``sparsity`` (fraction in [0, 1])
      and ``validation`` (split metrics with ``accuracy``, ``eodd`` and, when present,
      ``group_accuracy``). Plotted in step order.
    path: output file; the format follows the extension (``.png`` if none).
    title: figure title.
    convention: ``"sum"`` or ``"mean"``, the convention the Eodd values were computed with.
    chosen_step: the reported step (``results["chosen_step"]``), ringed; None draws no ring.
    max_accuracy_drop: ``prune.max_accuracy_drop``; None draws no floor.

  Returns:
    ``path``.
  """
  _check_convention(convention)
  if not steps:
    raise ValueError("plot_tradeoff needs at least one step.")
  ordered = sorted(steps, key=lambda s: s["step"])
  sparsity = np.array([100.0 * float(s["sparsity"]) for s in ordered])
  acc = np.array([_nan_if_none(s["validation"]["accuracy"]) for s in ordered])
  eodd = np.array([_nan_if_none(s["validation"]["eodd"]) for s in ordered])
  is_dense = np.array([s["step"] == 0 for s in ordered])
  chosen = np.array([s["step"] == chosen_step for s in ordered])
  # Sorted: the same colour per group whether the steps come from the run or from JSON.
  groups = sorted(ordered[0]["validation"].get("group_accuracy") or {})

  fig = Figure(figsize=(8.0, 6.4), layout="constrained")
  ax_acc, ax_eodd = fig.subplots(2, 1, sharex=True)
  ax_acc.plot(sparsity, acc, marker="o", color="black", lw=2.0, ms=4, label="overall")
  for k, g in enumerate(groups):
    y = np.array([_nan_if_none(s["validation"]["group_accuracy"].get(g)) for s in ordered])
    ax_acc.plot(sparsity, y, marker="o", color=f"C{k % 10}", lw=1.3, ms=3, label=g)
  ax_eodd.plot(sparsity, eodd, marker="o", color="tab:red", lw=1.5, ms=4, label="Eodd")
  if is_dense.any():
    ax_eodd.axhline(float(eodd[is_dense][0]), color="tab:red", ls=":", lw=1, label="dense Eodd")
    if max_accuracy_drop is not None:
      floor = float(acc[is_dense][0]) - float(max_accuracy_drop)
      lo, hi = ax_acc.get_ylim()
      # An accuracy below 0 cannot happen: a floor there is drawn at the axis' bottom.
      ax_acc.set_ylim(max(min(lo, floor - 0.02 * (hi - lo)), -0.02), hi)
      ax_acc.axhline(
        max(floor, 0.0),
        color="black",
        ls=":",
        lw=1.2,
        label=f"dense − max_accuracy_drop ({max_accuracy_drop:g})" + (" < 0" if floor < 0 else ""),
      )
  for ax, y in ((ax_acc, acc), (ax_eodd, eodd)):
    if is_dense.any():
      ax.plot(
        sparsity[is_dense],
        y[is_dense],
        marker="*",
        ms=14,
        ls="none",
        color="black",
        label="dense (step 0)",
      )
    if chosen.any():
      ax.plot(
        sparsity[chosen],
        y[chosen],
        marker="o",
        ms=15,
        ls="none",
        mfc="none",
        mec="tab:green",
        mew=2.0,
        label=f"reported (step {chosen_step})",
      )
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize="medium")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="medium", frameon=False)
  ax_acc.set_ylabel("validation accuracy", fontsize="medium")
  ax_eodd.set_ylabel(f"validation Eodd\n({convention} convention)", fontsize="medium")
  ax_eodd.set_xlabel("sparsity of prunable weights (%)", fontsize="medium")
  fig.suptitle(title or "accuracy / fairness trade-off over pruning steps")
  return _save_figure(fig, path)


def plot_saliency_histograms(
  per_layer: dict[str, dict[str, np.ndarray]],
  path: str,
  *,
  group_names: tuple[str, str],
  max_layers: int = 16,
) -> str:
  """Overlaid per-group histograms of per-parameter curvature terms ½θ²h_g, one panel per layer.

  FairPrune's motivating picture (design.md section 2): the saliency of a parameter is the
  difference of its two groups' terms, so a parameter sitting far right for the privileged group
  and far left for the unprivileged one is what FairPrune removes first. The terms span many
  decades, so the x axis is log10 of the positive values; zeros (already pruned weights, dead
  units) and negatives cannot be shown on it and are counted under each panel's title instead.
  Both groups share the bins within a panel so their bars are comparable; dashed lines mark
  group medians. One legend below the panels names the groups and the dashed lines, so no
  legend covers a histogram. Every layer is drawn up to ``max_layers`` (classifier layers
  included; VGG-11 has 11).

  Args:
    per_layer: ``{layer name: {group name: float array of the layer's terms}}``; arrays of any
      shape are flattened (1-D is the usual case). Layers are drawn in the dict's order.
    path: output file; the format follows the extension (``.png`` if none).
    group_names: the two group names to overlay, drawn in this order.
    max_layers: at most this many layers (the first ones) are drawn; the title says how many
      were left out.

  Returns:
    ``path``.

  Raises:
    ValueError: no layers, ``max_layers < 1``, or a layer lacks one of ``group_names``.
  """
  if not per_layer:
    raise ValueError("plot_saliency_histograms needs at least one layer.")
  if max_layers < 1:
    raise ValueError(f"max_layers must be >= 1, got {max_layers}.")
  if len(group_names) != 2:
    raise ValueError(f"group_names must name two groups, got {group_names!r}.")
  layers = list(per_layer)[:max_layers]
  for layer in layers:
    for g in group_names:
      if g not in per_layer[layer]:
        raise ValueError(
          f"per_layer[{layer!r}] has no group {g!r} (has {list(per_layer[layer])!r})."
        )

  ncols = min(len(layers), 4)
  nrows = math.ceil(len(layers) / ncols)
  fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows + 0.8), layout="constrained")
  axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
  colors = ("tab:blue", "tab:orange")
  for ax, layer in zip(axes, layers):
    logs, n_nonpos = [], []
    for g in group_names:
      values = np.asarray(per_layer[layer][g], dtype=np.float64).ravel()
      values = values[np.isfinite(values)]
      positive = values > 0
      logs.append(np.log10(values[positive]))
      n_nonpos.append(int(values.size - positive.sum()))
    combined = np.concatenate(logs)
    if combined.size == 0:
      ax.text(0.5, 0.5, "no positive values", ha="center", va="center", transform=ax.transAxes)
    else:
      lo, hi = float(combined.min()), float(combined.max())
      if hi - lo < 1e-9:  # all equal: give the single bar a visible width
        lo, hi = lo - 0.5, hi + 0.5
      bins = np.linspace(lo, hi, 41)
      for lg, color in zip(logs, colors):
        ax.hist(lg, bins=bins, alpha=0.5, color=color)
        if lg.size:
          ax.axvline(float(np.median(lg)), color=color, ls="--", lw=1.5)
    counts = ", ".join(
      f"{g}: {lg.size}" + (f" (+{nz} ≤ 0)" if nz else "")
      for g, lg, nz in zip(group_names, logs, n_nonpos)
    )
    ax.set_title(f"{layer}\n{counts}", fontsize="medium")
    ax.set_xlabel("log10(½ θ² h_g)", fontsize="medium")
    ax.set_ylabel("parameters", fontsize="medium")
    ax.tick_params(labelsize="small")
  for ax in axes[len(layers) :]:
    ax.set_visible(False)
  handles = [
    Patch(color=c, alpha=0.5, label=f"{g}: histogram") for g, c in zip(group_names, colors)
  ]
  handles += [
    Line2D([], [], color=c, ls="--", lw=1.5, label=f"{g}: median")
    for g, c in zip(group_names, colors)
  ]
  fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize="medium", frameon=False)
  left_out = len(per_layer) - len(layers)
  title = (
    "per-group curvature terms ½θ²h_g per layer (positive values, log scale; "
    "counts: parameters shown, + those ≤ 0)"
  )
  if left_out:
    title += f"; first {len(layers)} of {len(per_layer)} layers"
  fig.suptitle(title)
  return _save_figure(fig, path)


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def plot_pareto(
  rows: list[dict], path: str, *, title: str = "", convention: str | None = None
) -> str:
  """Accuracy (y) against Eodd (x) scatter, one marker and colour per method.

  Up and to the left is better (accurate and fair). Used to compare several methods, each at
  several sparsities or seeds.

  Args:
    rows: dicts with ``method`` (str), ``accuracy`` and ``eodd`` (numbers; rows where either is
      None are skipped), optionally ``accuracy_std`` / ``eodd_std`` (drawn as error bars) and
      ``label`` (short text written beside the point, e.g. the sparsity).
    path: output file; the format follows the extension (``.png`` if none).
    title: figure title.
    convention: the Eodd convention, written in the x label when given.

  Returns:
    ``path``.

  Raises:
    ValueError: no row has both an accuracy and an Eodd.
  """
  if convention is not None:
    _check_convention(convention)
  methods: list[str] = []
  for r in rows:
    if r["method"] not in methods:  # first-appearance order keeps colours stable per call
      methods.append(r["method"])
  fig = Figure(figsize=(6.0, 4.5), layout="constrained")
  ax = fig.subplots()
  drawn = 0
  for k, method in enumerate(methods):
    pts = [
      r
      for r in rows
      if r["method"] == method and r.get("accuracy") is not None and r.get("eodd") is not None
    ]
    if not pts:
      continue
    x = np.array([float(r["eodd"]) for r in pts])
    y = np.array([float(r["accuracy"]) for r in pts])
    xerr = np.array([_nan_if_none(r.get("eodd_std")) for r in pts])
    yerr = np.array([_nan_if_none(r.get("accuracy_std")) for r in pts])
    color = f"C{k % 10}"
    ax.errorbar(
      x,
      y,
      xerr=None if np.isnan(xerr).all() else np.nan_to_num(xerr),
      yerr=None if np.isnan(yerr).all() else np.nan_to_num(yerr),
      fmt=_MARKERS[k % len(_MARKERS)],
      color=color,
      ms=7,
      capsize=3,
      label=method,
    )
    for r, xi, yi in zip(pts, x, y):
      if r.get("label") is not None:
        ax.annotate(
          str(r["label"]),
          (xi, yi),
          textcoords="offset points",
          xytext=(5, 4),
          fontsize="x-small",
          color=color,
        )
    drawn += len(pts)
  if drawn == 0:
    raise ValueError("plot_pareto: no row has both an accuracy and an eodd.")
  xlabel = "Eodd (lower is fairer)"
  if convention is not None:
    xlabel = f"Eodd, {convention} convention (lower is fairer)"
  ax.set_xlabel(xlabel)
  ax.set_ylabel("accuracy")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small", loc="best")
  if title:
    ax.set_title(title)
  return _save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# Aggregation over seeds
# --------------------------------------------------------------------------------------------


def _mean_std(values: list[Any]) -> dict[str, Any]:
  """{"mean", "std", "n"} over the non-null values (``n`` of them); null stats if none."""
  kept = np.array([float(v) for v in values if v is not None], dtype=np.float64)
  if kept.size == 0:
    return {"mean": None, "std": None, "n": 0}
  return {
    "mean": float(kept.mean()),
    "std": float(kept.std(ddof=SEED_STD_DDOF)),
    "n": int(kept.size),
  }


def aggregate_seeds(results: list[dict]) -> dict:
  """Mean and standard deviation over seeds of the headline metrics of one method.

  Each standard deviation is the population std (``ddof=0``, :data:`SEED_STD_DDOF`), the same
  convention as :func:`fairjax.metrics.disparity_of_degradation`; it is defined for one seed
  (0) and is smaller than the sample std by sqrt((n−1)/n) (0.82 for three seeds). A value that
  is null in some seeds (e.g. ``eodd_reduction`` when a dense Eodd is 0) is averaged over the
  seeds where it is defined; ``n`` says over how many.

  Args:
    results: results dicts of the same method, dataset groups and fairness convention, one per
      seed (each is validated with :func:`validate_results`).

  Returns:
    ``{"num_seeds": int, "ddof": 0, "method": str, "fairness_convention": str,
    "dense": S, "pruned": S, "summary": {"eodd_reduction": M, "accuracy_drop": M}}`` where
    ``M = {"mean": float | None, "std": float | None, "n": int}`` and ``S`` maps each of
    ``accuracy``, ``macro_f1``, ``eodd``, ``eopp0``, ``eopp1``, ``sparsity`` to an ``M`` and
    ``group_accuracy`` to ``{group name: M}``. :func:`markdown_table` renders an ``M`` as
    "mean ± std".

  Raises:
    ValueError: no results, an invalid one (its index is named), or results that differ in
      method, fairness convention or group names.
  """
  if not results:
    raise ValueError("aggregate_seeds needs at least one results dict.")
  for i, r in enumerate(results):
    try:
      validate_results(r)
    except ValueError as e:
      raise ValueError(f"aggregate_seeds: results[{i}] is invalid: {e}") from None
  first = results[0]
  groups = list(first["dataset"]["group_names"])
  for i, r in enumerate(results[1:], start=1):
    # Averaging across methods, conventions or group definitions would produce a number that
    # means nothing; refuse instead of guessing.
    for what, a, b in (
      ("method", first["method"], r["method"]),
      ("fairness_convention", first["fairness_convention"], r["fairness_convention"]),
      ("dataset.group_names", groups, list(r["dataset"]["group_names"])),
    ):
      if a != b:
        raise ValueError(
          f"aggregate_seeds: results[{i}].{what} is {b!r}, but results[0].{what} is {a!r}."
        )
  out: dict[str, Any] = {
    "num_seeds": len(results),
    "ddof": SEED_STD_DDOF,
    "method": first["method"],
    "fairness_convention": first["fairness_convention"],
  }
  for split in ("dense", "pruned"):
    stats: dict[str, Any] = {k: _mean_std([r[split][k] for r in results]) for k in _SEED_METRICS}
    stats["group_accuracy"] = {
      g: _mean_std([r[split]["group_accuracy"][g] for r in results]) for g in groups
    }
    out[split] = stats
  out["summary"] = {k: _mean_std([r["summary"][k] for r in results]) for k in _SUMMARY_SEED_METRICS}
  return out


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

_MISSING_TEXT = "n/a"


def format_mean_std(mean: float | None, std: float | None, fmt: str = ".3f") -> str:
  """``"0.812 ± 0.011"``; ``"n/a"`` for a null mean, the mean alone for a null std."""
  if mean is None:
    return _MISSING_TEXT
  if std is None:
    return format(float(mean), fmt)
  return f"{format(float(mean), fmt)} ± {format(float(std), fmt)}"


def format_interval(leaf: Mapping[str, Any] | None, fmt: str = "+.3f") -> str:
  """``"-0.021 [-0.035, -0.008]"``: a LEAF's estimate and interval (signed by default, for
  differences); ``"n/a"`` for a null leaf or estimate, the estimate alone without an interval.
  """
  if leaf is None or leaf.get("estimate") is None:
    return _MISSING_TEXT
  text = format(float(leaf["estimate"]), fmt)
  if leaf.get("low") is None or leaf.get("high") is None:
    return text
  return f"{text} [{format(float(leaf['low']), fmt)}, {format(float(leaf['high']), fmt)}]"


_ABSENT = object()


def _lookup(row: Mapping[str, Any], key: str) -> Any:
  """``row[key]``, or a dotted path into nested dicts (``"pruned.accuracy"``).

  A literal key wins over a path, so flat rows whose keys contain dots still work.
  """
  if key in row:
    return row[key]
  value: Any = row
  for part in key.split("."):
    if not isinstance(value, Mapping) or part not in value:
      return _ABSENT
    value = value[part]
  return value


def _is_mean_std(value: Any) -> bool:
  return isinstance(value, Mapping) and "mean" in value and "std" in value


def _cells(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]]):
  for i, row in enumerate(rows):
    values = []
    for key, _ in columns:
      value = _lookup(row, key)
      if value is _ABSENT:
        raise ValueError(f"rows[{i}] has no key {key!r}.")
      values.append(value)
    yield values


def markdown_table(
  rows: list[dict], columns: list[tuple[str, str]], *, floatfmt: str = ".3f"
) -> str:
  """A GitHub-flavoured markdown table.

  Cells: floats (Python or numpy) with ``floatfmt``; ints, strings and bools as ``str``;
  None as ``n/a``; a ``{"mean", "std"}`` dict (an :func:`aggregate_seeds` entry) as
  :func:`format_mean_std`. ``|`` inside text is escaped. Columns may name nested values with
  dotted paths, e.g. ``("pruned.accuracy", "Accuracy")`` on an :func:`aggregate_seeds` result.

  Args:
    rows: one dict per table row.
    columns: ``(key, header)`` pairs, in display order.
    floatfmt: format spec for floats.

  Returns:
    The table: header, separator and one line per row, joined by ``"\\n"``, with no trailing
    newline.

  Raises:
    ValueError: a row lacks a column's key (a typo must not become an empty column).
  """

  def fmt(value: Any) -> str:
    if value is None:
      return _MISSING_TEXT
    if _is_mean_std(value):
      return format_mean_std(value["mean"], value["std"], floatfmt)
    if isinstance(value, (float, np.floating)):
      return format(float(value), floatfmt)
    return str(value).replace("|", "\\|").replace("\n", " ")

  lines = [
    "| " + " | ".join(fmt(h) for _, h in columns) + " |",
    "|" + "|".join(" --- " for _ in columns) + "|",
  ]
  lines += ["| " + " | ".join(fmt(v) for v in values) + " |" for values in _cells(rows, columns)]
  return "\n".join(lines)


def write_csv(path: str, rows: list[dict], columns: list[tuple[str, str]]) -> str:
  """Writes ``rows`` as CSV atomically: one header line of the column headers, one line per row.

  Cells keep full precision (CSV is for programs; :func:`markdown_table` is for people): floats
  as ``repr`` (round-trips exactly), None as an empty cell. Columns use the same keys and dotted
  paths as :func:`markdown_table`; a ``{"mean", "std"}`` dict is refused — name
  ``"x.mean"`` and ``"x.std"`` as two columns instead.

  Args:
    path: output file (its directory is created if missing).
    rows: one dict per row.
    columns: ``(key, header)`` pairs, in order.

  Returns:
    ``path``.

  Raises:
    ValueError: a row lacks a key, or a cell is a dict or list.
  """

  def fmt(value: Any, key: str) -> str:
    if value is None:
      return ""
    if isinstance(value, (Mapping, list, tuple)):
      hint = f" (use columns {key + '.mean'!r} and {key + '.std'!r})" if _is_mean_std(value) else ""
      raise ValueError(
        f"write_csv: column {key!r} holds a {type(value).__name__}, not a scalar{hint}."
      )
    if isinstance(value, (float, np.floating)):
      return repr(float(value))
    return str(value)

  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow([h for _, h in columns])
  for values in _cells(rows, columns):
    writer.writerow([fmt(v, k) for v, (k, _) in zip(values, columns)])
  text = buf.getvalue()  # built in full first: a bad row must leave no file behind
  return checkpoint.write_atomic(os.fspath(path), lambda f: f.write(text), binary=False)
