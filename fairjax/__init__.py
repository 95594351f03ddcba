"""fairjax: fairness-aware pruning of image classifiers in JAX/Flax.

The kernels a researcher imports live in submodules and are imported on demand, so
``import fairjax`` stays cheap:

- :mod:`fairjax.curvature`: per-group diagonal GGN / Hessian in one pass (design.md section 1).
- :mod:`fairjax.masks`: boolean mask pytrees, score -> mask selection, channel masks, masked optax.
- :mod:`fairjax.models`: Flax Linen models and a name -> constructor registry.
- :mod:`fairjax.metrics`: accuracy and group-fairness metrics (design.md section 5).
- :mod:`fairjax.snnl`: per-channel Soft Nearest Neighbour Loss (design.md section 3).
- :mod:`fairjax.slimming`: physically smaller VGG/SmallCNN from channel masks.
- :mod:`fairjax.pruning`: FairPrune, FairGRAPE and fairness-unaware baselines (scores -> masks).
- :mod:`fairjax.data`, :mod:`fairjax.train`, :mod:`fairjax.checkpoint`, :mod:`fairjax.report`,
  :mod:`fairjax.pipeline`, :mod:`fairjax.main`: the main job (``python -m fairjax.main``).
"""

__version__ = "0.1.0"
