"""The built-in weight-pruning methods as :class:`fairjax.pruning.api.PruneMethod` objects.

Registered by :mod:`fairjax.pruning.api` (:data:`METHODS`, on the first registry call):
``"fairprune"`` (design.md section 2), the group-unaware baselines ``"magnitude"``,
``"random"``, ``"snip"``, ``"obd"`` (section 4.7), which score and let the framework prune the
lowest, and ``"fairgrape"`` (section 4), which has its own greedy selection, schedule,
retraining and final fine-tune. ``"snnl_channels"`` is :mod:`fairjax.pruning.snnl_channels`.
The kernels stay in :mod:`fairjax.pruning.fairprune`, :mod:`fairjax.pruning.baselines` and
:mod:`fairjax.pruning.fairgrape`; this module only wires them to a run.
"""

from __future__ import annotations

import functools
from typing import Any

import jax

from fairjax import curvature, schedules, train
from fairjax.config import fail
from fairjax.pruning import baselines, fairgrape, fairprune
from fairjax.pruning.api import PruneMethod, RunContext, target_end, variables_of
from fairjax.train import OPTIMIZERS

PyTree = Any


def chunk_size(config) -> int | None:
  """``prune.curvature_chunk_size`` as ``per_group_diag``'s ``chunk_size`` (0 -> None)."""
  return config.prune.curvature_chunk_size or None


def memory_budget(config) -> int | None:
  """``prune.curvature_memory_budget_bytes`` as ``per_group_diag``'s ``memory_budget_bytes``:
  0 = no budget; the default value (or no key) is None, ``per_group_diag``'s own default, which
  also leaves batches sharded over devices alone (design.md section 1.12)."""
  budget = config.prune.get("curvature_memory_budget_bytes", curvature.DEFAULT_MEMORY_BUDGET_BYTES)
  return None if budget == curvature.DEFAULT_MEMORY_BUDGET_BYTES else budget


def group_diag(ctx: RunContext, state: Any, step: int) -> PyTree:
  """Per-group curvature diagonal of ``state`` (leaves ``[G, *param.shape]``) averaged over the
  group-balanced scoring batches of ``step`` (design.md section 1), BatchNorm in inference mode.

  ``prune.curvature_chunk_size`` bounds memory: the batches are cut into chunks on the host
  (every chunk split evenly over the devices); averaging by group counts makes the result that
  of the whole batches.
  """
  config = ctx.config
  rng = jax.random.key(config.seed * 7919 + step)
  diag, _ = fairprune.average_group_diag(
    ctx.model,
    variables_of(state),
    ctx.scoring_batches(step, chunk_size(config)),
    num_groups=ctx.num_groups,
    method=config.prune.curvature,
    rng=rng,
    num_samples=config.prune.curvature_samples,
    apply_kwargs={"train": False},
    loss=ctx.loss,
    memory_budget_bytes=memory_budget(config),
  )
  return diag


class FairPrune(PruneMethod):
  """FairPrune saliency (design.md section 2) with the run's group roles and ``prune.beta``."""

  curvature_plot = True

  def validate(self, config, data: Any = None) -> None:
    p = config.prune
    if not 0.0 < p.beta <= 1.0:
      fail("prune.beta", p.beta, "must be in (0, 1] (FairPrune's privileged-group weight)")

  def scores(self, ctx: RunContext, state: Any, step: int) -> PyTree:
    unpriv, priv = ctx.roles
    diag = group_diag(ctx, state, step)
    return fairprune.saliency(
      state.params, diag, unprivileged=unpriv, privileged=priv, beta=ctx.config.prune.beta
    )


class Magnitude(PruneMethod):
  """``|w|`` (design.md section 4.7)."""

  def scores(self, ctx: RunContext, state: Any, step: int) -> PyTree:
    return baselines.magnitude_scores(state.params, state.mask)


class Random(PruneMethod):
  """Uniform random scores; the key is a function of (seed, step), so a resumed run draws the
  same scores as an uninterrupted one."""

  def scores(self, ctx: RunContext, state: Any, step: int) -> PyTree:
    return baselines.random_scores(
      state.params, state.mask, jax.random.fold_in(jax.random.key(ctx.config.seed), step)
    )


class GradientScores(PruneMethod):
  """SNIP or OBD scores accumulated over uniformly sampled train batches (group-unaware)."""

  def __init__(self, kind: str):
    self.kind = kind
    self.curvature_plot = kind == "obd"

  def scores(self, ctx: RunContext, state: Any, step: int) -> PyTree:
    fn = (
      baselines.snip_scores
      if self.kind == "snip"
      else functools.partial(
        baselines.obd_scores,
        chunk_size=chunk_size(ctx.config),
        memory_budget_bytes=memory_budget(ctx.config),
      )
    )
    variables = variables_of(state)
    # BatchNorm in inference mode: scoring must not depend on (or update) batch statistics.
    return baselines.accumulate_scores(
      lambda x, y: fn(
        ctx.model, variables, x, y, state.mask, apply_kwargs={"train": False}, loss=ctx.loss
      ),
      ctx.uniform_batches(step),
    )


class FairGRAPE(PruneMethod):
  """FairGRAPE (design.md section 4): importance recomputed at every iteration on
  group-balanced train batches through the masked model, the group-proportional greedy to the
  cumulative ratio :func:`fairjax.schedules.fairgrape` (or the target schedule), retraining
  after every iteration and a final fine-tune of the chosen model."""

  default_retrain_epochs = 1  # the official code retrains between iterations

  def validate(self, config, data: Any = None) -> None:
    """``prune.fairgrape_*`` (checked for every run: a config file is validated whole)."""
    p = config.prune
    if not 0.0 < p.fairgrape.keep_per_iter < 1.0:
      fail(
        "prune.fairgrape.keep_per_iter",
        p.fairgrape.keep_per_iter,
        "must be in (0, 1) (FairGRAPE keeps this share of the weights per iteration)",
      )
    if p.fairgrape.prune_rate is not None and not 0.0 < p.fairgrape.prune_rate < 1.0:
      fail(
        "prune.fairgrape.prune_rate",
        p.fairgrape.prune_rate,
        "must be in (0, 1), or None to use prune.max_sparsity",
      )
    if (
      isinstance(p.fairgrape.finetune_epochs, bool)
      or not isinstance(p.fairgrape.finetune_epochs, int)
      or p.fairgrape.finetune_epochs < 0
    ):
      fail(
        "prune.fairgrape.finetune_epochs",
        p.fairgrape.finetune_epochs,
        "must be an integer >= 0 (0 = no final fine-tune)",
      )
    if p.fairgrape.finetune_optimizer not in OPTIMIZERS:
      fail(
        "prune.fairgrape.finetune_optimizer",
        p.fairgrape.finetune_optimizer,
        f"must be one of {OPTIMIZERS}",
      )
    if (
      isinstance(p.fairgrape.finetune_learning_rate, bool)
      or not isinstance(p.fairgrape.finetune_learning_rate, (int, float))
      or not p.fairgrape.finetune_learning_rate > 0
    ):
      fail(
        "prune.fairgrape.finetune_learning_rate", p.fairgrape.finetune_learning_rate, "must be > 0"
      )
    lr = p.fairgrape.get("retrain_learning_rate")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
      fail(
        "prune.fairgrape.retrain_learning_rate",
        lr,
        "must be > 0, or None for the dense training's learning rate and schedule",
      )
    phases = p.fairgrape.get("finetune_schedule", ())
    if isinstance(phases, str) or not all(
      isinstance(ph, (tuple, list))
      and len(ph) == 2
      and isinstance(ph[0], int)
      and not isinstance(ph[0], bool)
      and ph[0] >= 1
      and isinstance(ph[1], (int, float))
      and not isinstance(ph[1], bool)
      and ph[1] > 0
      for ph in phases
    ):
      fail(
        "prune.fairgrape.finetune_schedule",
        phases,
        "must be a tuple of (epochs >= 1, learning_rate > 0) pairs, e.g. "
        "((13, 1e-4), (3, 1e-5), (3, 1e-6)), or () for finetune_epochs",
      )

  @staticmethod
  def prune_rate(config) -> float:
    p = config.prune
    return p.max_sparsity if p.fairgrape.prune_rate is None else p.fairgrape.prune_rate

  def schedule(self, ctx: RunContext) -> schedules.Schedule:
    p = ctx.config.prune
    if p.target_sparsity is not None:
      return schedules.to_target(p.target_sparsity, p.max_steps)
    return schedules.fairgrape(p.fairgrape.keep_per_iter, self.prune_rate(ctx.config))

  def next_mask(self, ctx: RunContext, state: Any, step: int):
    importance = fairgrape.accumulate_importance(
      ctx.model,
      variables_of(state),
      ctx.scoring_batches(step),
      state.mask,
      num_groups=ctx.num_groups,
      apply_kwargs={"train": False},
      loss=ctx.loss,
    )
    # The cumulative ratio is over each layer's (or all) prunable weights.
    return fairgrape.fairgrape_mask(
      importance, state.mask, self.schedule(ctx)(step), scope=ctx.config.prune.scope
    )

  def optimizer(self, ctx: RunContext, dense_tx: Any) -> Any:
    """The dense-training optimizer over one iteration's epochs, or, with
    ``prune.fairgrape.retrain_learning_rate``, ``train.optimizer`` at that constant rate (the
    pipeline re-initialises its state every iteration: a fresh optimizer, as in the code)."""
    epochs = self.retrain_epochs(ctx)
    lr = ctx.config.prune.fairgrape.get("retrain_learning_rate")
    if not epochs or lr is None:
      return super().optimizer(ctx, dense_tx)
    t = ctx.config.train
    return train.make_optimizer(
      t.optimizer, float(lr), momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay
    )

  def schedule_end(self, ctx: RunContext, state: Any, step: int) -> str | None:
    if ctx.config.prune.target_sparsity is not None:
      return target_end(ctx.config, step)
    rate = self.prune_rate(ctx.config)
    if self.schedule(ctx)(step) >= rate:
      return f"cumulative ratio reached prune rate {rate}"
    return None

  def final_finetune(self, config) -> dict[str, Any] | None:
    p = config.prune
    phases = [(int(e), float(lr)) for e, lr in p.fairgrape.get("finetune_schedule", ())]
    if phases:  # piecewise constant: FairGRAPE's code (a fresh optimizer per phase)
      return {
        "epochs": sum(e for e, _ in phases),
        "optimizer": p.fairgrape.finetune_optimizer,
        "learning_rate": phases[0][1],
        "phases": phases,
      }
    return {
      "epochs": int(p.fairgrape.finetune_epochs),
      "optimizer": p.fairgrape.finetune_optimizer,
      "learning_rate": float(p.fairgrape.finetune_learning_rate),
    }


# Registered by fairjax.pruning.api in this order (then snnl_channels), the order of
# fairjax.config.PRUNE_METHODS and of configs/compare.py's methods.
METHODS: dict[str, PruneMethod] = {
  "fairprune": FairPrune(),
  "magnitude": Magnitude(),
  "random": Random(),
  "snip": GradientScores("snip"),
  "obd": GradientScores("obd"),
  "fairgrape": FairGRAPE(),
}
