"""The pruning loop's stopping rule and step choice (fairjax.stopping) on hand-made records."""

import math

import pytest

from fairjax.stopping import choose_step, initial_stop, update_stop

CFG = {"patience": 2, "max_sparsity": 0.5, "max_accuracy_drop": 0.05, "target_sparsity": None}
DENSE = {"accuracy": 0.80, "eodd": 0.30, "sparsity": 0.0}


def _val(acc, eodd, sparsity=0.1):
  return {"accuracy": acc, "eodd": eodd, "sparsity": sparsity}


def test_initial_record_and_no_mutation():
  stop = initial_stop(DENSE)
  assert stop == {"best": 0.30, "bad_steps": 0, "stopped": False, "reason": ""}
  assert math.isnan(initial_stop({"eodd": None})["best"])
  after = update_stop(stop, _val(0.8, 0.2), DENSE, CFG)
  assert stop["best"] == 0.30 and after["best"] == 0.2 and not after["stopped"]


def test_patience_counts_steps_without_a_lower_eodd():
  stop = update_stop(initial_stop(DENSE), _val(0.8, 0.31), DENSE, CFG)
  assert stop["bad_steps"] == 1 and not stop["stopped"]
  stop = update_stop(stop, _val(0.8, 0.30), DENSE, CFG)  # equal is not an improvement
  assert stop["stopped"] and stop["reason"] == "validation Eodd did not improve for 2 steps"
  # An undefined Eodd (NaN) never improves.
  stop = update_stop(initial_stop(DENSE), _val(0.8, None), DENSE, CFG)
  assert stop["bad_steps"] == 1


def test_rules_in_order_and_the_schedule_end_last():
  stop = initial_stop(DENSE)
  assert update_stop(stop, _val(0.8, 0.1, 0.5), DENSE, CFG)["reason"] == "sparsity reached 0.5"
  dropped = update_stop(stop, _val(0.70, 0.1), DENSE, CFG)
  assert dropped["reason"] == "validation accuracy dropped by 0.100 > 0.05"
  both = update_stop(stop, _val(0.70, 0.1, 0.6), DENSE, CFG)
  assert both["reason"] == "sparsity reached 0.5"  # sparsity is checked before accuracy
  ended = update_stop(stop, _val(0.8, 0.1), DENSE, CFG, end="schedule over")
  assert ended["stopped"] and ended["reason"] == "schedule over"
  assert not update_stop(stop, _val(0.8, 0.1), DENSE, CFG)["stopped"]


def test_target_mode_only_the_schedule_stops():
  cfg = {**CFG, "target_sparsity": 0.9}
  stop = initial_stop(DENSE)
  for _ in range(3):  # patience, sparsity and accuracy rules would all fire
    stop = update_stop(stop, _val(0.1, 0.9, 0.95), DENSE, cfg)
  assert not stop["stopped"] and stop["bad_steps"] == 3
  stop = update_stop(stop, _val(0.1, 0.9, 0.95), DENSE, cfg, end="target reached")
  assert stop["stopped"] and stop["reason"] == "target reached"


def _steps(*vals):
  return [{"step": 0, "validation": DENSE}] + [
    {"step": i, "validation": v} for i, v in enumerate(vals, start=1)
  ]


def test_choose_step():
  steps = _steps(_val(0.79, 0.25), _val(0.78, 0.20), _val(0.70, 0.05), _val(0.80, 0.20))
  assert choose_step(steps, DENSE, CFG) == 2  # step 3 drops too much; tie 2/4 -> earlier
  assert choose_step(_steps(_val(0.70, 0.1), _val(0.79, None)), DENSE, CFG) == 0
  assert choose_step(_steps(), DENSE, CFG) == 0
  target = {**CFG, "target_sparsity": 0.5}
  assert choose_step(steps, DENSE, target) == 4  # the last step, whatever its metrics
  assert choose_step(_steps(_val(0.1, None)), DENSE, target) == 1
  assert choose_step(_steps(), DENSE, target) == 0


@pytest.mark.parametrize("x,expected", [(2.5, 3), (2.4999, 2), (0.49, 0), (0.5, 1), (0.0, 0)])
def test_round_half_up(x, expected):
  from fairjax import schedules

  assert schedules.round_half_up(x) == expected
