"""fairjax: fairness-aware pruning of image classifiers in JAX/Flax.

The kernels a researcher imports live in submodules and are imported lazily so that
``import fairjax`` stays cheap:

- :mod:`fairjax.curvature`: per-group diagonal GGN / Hessian in one pass (design.md section 1).
- :mod:`fairjax.masks`: boolean mask pytrees, structured channel masks, masked optax updates.
- :mod:`fairjax.models`: Flax Linen models and a name -> constructor registry.
- :mod:`fairjax.metrics`: accuracy and group-fairness metrics (design.md section 5).
"""

__version__ = "0.1.0"
