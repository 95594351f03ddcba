"""Pruning schedules: ``step -> cumulative pruned share``, and the one ratio-to-count rounding.

A schedule is a plain function of the pruning step (``step >= 0``, step 0 = the dense model)
returning the cumulative share ``r`` in ``[0, 1]`` of the prunable weights (or channels) that are
pruned once that step is done, in the style of optax's learning-rate schedules: the factories
below return such functions, and a method evaluates its schedule at the step it is asked for, so
a resumed run needs no schedule state.

- :func:`step_fraction`: ``1 - (1 - f)**step``, the share reached by pruning a fraction ``f`` of
  the still-kept weights at every step (``prune.step_fraction``; FairPrune and the baselines,
  design.md section 2.5). Those methods prune ``f`` of the kept weights per step with
  :func:`fairjax.masks.prune_lowest`, so their counts are rounded per step; the function states
  the share they approach.
- :func:`to_target`: ``1 - (1 - target)**(step / steps)``, ending exactly on ``target`` at step
  ``steps`` (``prune.target_sparsity``, the comparison of :mod:`fairjax.compare`).
- :func:`fairgrape`: ``min(1 - keep**step, rate)`` (design.md section 4.3).

Rounding a share to a count is :func:`round_half_up` (``floor(x + 0.5)``) everywhere a count of
weights or channels to PRUNE is derived from a share: :func:`fairjax.masks.prune_lowest` /
:func:`fairjax.masks.prune_to_sparsity`, the channel plans of ``snnl_channels`` and
:func:`fairjax.snnl.select_channels`. FairGRAPE's greedy (:func:`fairjax.pruning.fairgrape.
fairgrape_mask`) instead derives the count of weights to KEEP with :func:`fairgrape_keep_count`
(``floor(n (1 - r) + 1e-6)``), kept as it is because it is what the greedy was validated with:
for some layer sizes the two rules differ by one weight (see that function).

This module is a kernel (design.md section 0): no imports from the rest of fairjax.
"""

from __future__ import annotations

import math
from collections.abc import Callable

Schedule = Callable[[int], float]


def round_half_up(x: float) -> int:
  """``floor(x + 0.5)``: the count of weights or channels to prune for ``x = share * n``.

  Python's ``round`` is half-to-even; half-up is easier to state and check by hand
  (``round_half_up(2.5) == 3``, ``round_half_up(0.49) == 0``).
  """
  return int(math.floor(x + 0.5))


def fairgrape_keep_count(n: int, ratio: float) -> int:
  """Weights FairGRAPE's greedy KEEPS out of ``n`` at cumulative ratio ``ratio``:
  ``floor(n (1 - ratio) + 1e-6)`` (the tolerance absorbs ``100 * (1 - 0.9) =
  9.999999999999998``).

  This is not ``n - round_half_up(ratio * n)``: when ``ratio * n`` has a fractional part in
  ``(1e-6, 0.5)`` FairGRAPE prunes one weight more than the half-up rule would (e.g. ``n = 10``,
  ``ratio = 0.23``: keeps 7, half-up would keep 8). It stays as it is so that FairGRAPE's masks
  do not change; the official code floors the kept count too.
  """
  return math.floor(n * (1.0 - ratio) + 1e-6)


def step_fraction(fraction: float) -> Schedule:
  """``step -> 1 - (1 - fraction)**step``: pruning ``fraction`` of the kept weights per step."""
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"fraction must be in [0, 1], got {fraction}")

  def schedule(step: int) -> float:
    return 1.0 - (1.0 - fraction) ** max(0, step)

  return schedule


def target_ratio(step: int, target: float, steps: int) -> float:
  """Cumulative pruned share after ``step`` of ``steps`` when pruning to ``target`` exactly.

  ``r_i = 1 - (1 - target)**(i / steps)``: every step prunes the same fraction of the weights
  still kept (FairGRAPE's geometric schedule, design.md section 4, with ``keep_per_iter =
  (1 - target)**(1 / steps)``), and ``r_steps`` is exactly ``target`` (no floating-point
  shortfall that would need one more step). ``prune.target_sparsity`` mode.
  """
  if step >= steps:
    return float(target)
  return 1.0 - (1.0 - float(target)) ** (step / steps)


def to_target(target: float, steps: int) -> Schedule:
  """``step -> target_ratio(step, target, steps)`` (:func:`target_ratio`)."""
  if not 0.0 <= target <= 1.0:
    raise ValueError(f"target must be in [0, 1], got {target}")
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  return lambda step: target_ratio(step, target, steps)


def fairgrape(keep_per_iter: float, prune_rate: float) -> Schedule:
  """``step -> min(1 - keep_per_iter**step, prune_rate)`` (design.md section 4.3)."""
  if not 0.0 < keep_per_iter <= 1.0:
    raise ValueError(f"keep_per_iter must be in (0, 1], got {keep_per_iter}")
  if not 0.0 <= prune_rate <= 1.0:
    raise ValueError(f"prune_rate must be in [0, 1], got {prune_rate}")

  def schedule(step: int) -> float:
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    return min(1.0 - keep_per_iter**step, prune_rate)

  return schedule


def count_of(amount: float, kept: int) -> int:
  """Items to prune out of ``kept``: ``amount >= 1`` is a count, else a share of ``kept``
  rounded half up (``snnl_channels``' ``channels_per_step``)."""
  if amount >= 1:
    return int(amount)
  return round_half_up(amount * kept)
