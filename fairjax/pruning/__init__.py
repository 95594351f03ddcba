"""Pruning methods: criteria that turn (params, data) into scores, and selections into masks.

- :mod:`fairjax.pruning.fairprune`: FairPrune saliency (design.md section 2).
- :mod:`fairjax.pruning.fairgrape`: FairGRAPE per-group importance, the group-proportional greedy
  selection and its cumulative schedule (design.md section 4).
- :mod:`fairjax.pruning.baselines`: group-unaware reference scores (magnitude, random, SNIP, OBD;
  design.md section 4).
- ``fairjax.pruning._scoring`` (private): the plumbing all scorers share, also used by the
  kernels :mod:`fairjax.curvature` and :mod:`fairjax.snnl` (design.md section 0).

Scores follow one convention across methods: higher = more important = kept; selection is the
shared :func:`fairjax.masks.prune_lowest` unless a method needs its own (FairGRAPE's greedy).

The CLI method names (``config.prune.method``, :data:`fairjax.config.PRUNE_METHODS`; run by
:func:`fairjax.pipeline.prune_iterative`): ``"fairprune"``, ``"magnitude"``, ``"random"``,
``"snip"``, ``"obd"`` (score, then prune ``prune.step_fraction`` of the kept weights per step),
``"fairgrape"`` (greedy to the cumulative ratio, retraining after every iteration) and
``"snnl_channels"`` (design.md section 3: prune the lowest-SNNL channels of ``prune.snnl_layers``,
default the last conv, masking kernel slice, bias and BN scale/shift, then fine-tune; its
kernel is :mod:`fairjax.snnl`, not this package).
"""
