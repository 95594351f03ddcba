"""Pruning schedules (fairjax.schedules): step -> cumulative pruned share, and the roundings."""

import pytest

from fairjax import masks, schedules


def test_step_fraction_and_target():
  s = schedules.step_fraction(0.1)
  assert s(0) == 0.0 and s(1) == pytest.approx(0.1) and s(2) == pytest.approx(0.19)
  t = schedules.to_target(0.75, 2)
  assert t(0) == 0.0 and t(1) == pytest.approx(0.5) and t(2) == 0.75 and t(5) == 0.75
  assert schedules.target_ratio(2, 0.75, 2) == 0.75  # exactly the target at the last step
  with pytest.raises(ValueError):
    schedules.to_target(0.5, 0)


def test_fairgrape_schedule_matches_the_kernel():
  from fairjax.pruning import fairgrape

  s = schedules.fairgrape(0.9, 0.5)
  for step in range(12):
    assert s(step) == fairgrape.cumulative_ratio(step, 0.9, 0.5)
  assert s(30) == 0.5
  with pytest.raises(ValueError):
    s(-1)


def test_counts():
  assert schedules.count_of(2.0, 10) == 2 and schedules.count_of(0.25, 10) == 3  # 2.5 -> 3
  assert schedules.fairgrape_keep_count(100, 0.9) == 10  # 9.999999999999998 -> 10
  # The documented difference: FairGRAPE keeps floor(n (1 - r)), half-up would keep one more.
  assert schedules.fairgrape_keep_count(10, 0.23) == 7
  assert 10 - schedules.round_half_up(0.23 * 10) == 8


def test_masks_use_the_schedule_rounding():
  import jax.numpy as jnp

  scores = {"w": {"kernel": jnp.arange(10.0).reshape(2, 5)}}
  mask = {"w": {"kernel": jnp.ones((2, 5), bool)}}
  pruned = masks.prune_lowest(scores, mask, 0.25)  # 2.5 -> 3 pruned
  assert int(pruned["w"]["kernel"].sum()) == 7
  pruned = masks.prune_to_sparsity(scores, mask, 0.45)  # 4.5 -> 5 pruned
  assert int(pruned["w"]["kernel"].sum()) == 5
