"""Pruning methods: criteria that turn (params, data) into scores, and selections into masks.

- :mod:`fairjax.pruning.api`: the method interface (:class:`PruneMethod`, :class:`ScoreMethod`,
  :class:`RunContext`) and the registry (:func:`register_method`, :func:`get_method`,
  :func:`method_names`); docs/api.md, "Your own pruning method".
- :mod:`fairjax.pruning.fairprune`: FairPrune saliency (design.md section 2).
- :mod:`fairjax.pruning.fairgrape`: FairGRAPE per-group importance, the group-proportional greedy
  selection and its cumulative schedule (design.md section 4).
- :mod:`fairjax.pruning.baselines`: group-unaware reference scores (magnitude, random, SNIP, OBD;
  design.md section 4).
- ``fairjax.pruning._scoring`` (private): the plumbing all scorers share, also used by the
  kernels :mod:`fairjax.curvature` and :mod:`fairjax.snnl` (design.md section 0).
- :mod:`fairjax.pruning.builtin` and :mod:`fairjax.pruning.snnl_channels`: the built-in methods
  as registered :class:`PruneMethod` objects (the kernels above, and :mod:`fairjax.snnl` for
  sensitive channel pruning, design.md section 3, wired to a run).

Scores follow one convention across methods: higher = more important = kept; selection is the
shared :func:`fairjax.masks.prune_lowest` / :func:`fairjax.masks.prune_to_sparsity` unless a
method needs its own (FairGRAPE's greedy, SNNL's channels).

The method names (``config.prune.method``, :func:`method_names`; run by
:func:`fairjax.pipeline.prune_iterative`): ``"fairprune"``, ``"magnitude"``, ``"random"``,
``"snip"``, ``"obd"`` (score, then prune ``prune.step_fraction`` of the kept weights per step),
``"fairgrape"`` (greedy to the cumulative ratio, retraining after every iteration),
``"snnl_channels"`` (prune the lowest-SNNL channels of ``prune.snnl.layers``, default the last
conv, masking kernel slice, bias and BN scale/shift, then fine-tune), and any registered one.
"""

from fairjax.pruning.api import (
  PruneMethod,
  RunContext,
  ScoreMethod,
  get_method,
  method_names,
  register_method,
)

__all__ = [
  "PruneMethod",
  "RunContext",
  "ScoreMethod",
  "get_method",
  "method_names",
  "register_method",
]
