"""The pruning-method interface: one protocol, one registry (docs/api.md, "Your own method").

A pruning method turns the state of a run into the next mask. The iterative loop of
:func:`fairjax.pipeline.prune_iterative` does everything else (checkpoints, fine-tuning,
evaluation, the stopping rule, the reports), asking the method through the hooks of
:class:`PruneMethod`, each of which has a default:

- the common case is a plain scoring function ``score_fn(variables, batches) -> scores``
  (:class:`ScoreMethod`): ``scores`` is a pytree like ``variables["params"]`` (higher = kept),
  ``batches`` an iterable of ``(images, labels, groups)`` tuples; the framework selects with
  :func:`fairjax.masks.prune_lowest` (``prune.step_fraction`` of the kept weights per step) or
  :func:`fairjax.masks.prune_to_sparsity` (``prune.target_sparsity``, the comparison);
- a method with its own selection, schedule, retraining or report keys subclasses
  :class:`PruneMethod` and overrides those hooks (FairGRAPE, ``snnl_channels``).

Methods receive what they need through a :class:`RunContext` (config, model, batch providers,
group count and roles); they never import the CLI, the pipeline or the data modules (design.md
section 0). :func:`register_method` makes a method a value of ``config.prune.method`` and of
``config.compare.methods``; the built-in ones are the ``METHODS`` of
:mod:`fairjax.pruning.builtin` and :mod:`fairjax.pruning.snnl_channels`, registered on the
first registry call.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from fairjax import masks, schedules
from fairjax.config import ConfigError

PyTree = Any
# One scoring batch as a method sees it: images float32[B, H, W, C], labels int32[B], groups
# int32[B] (-1: padding or unknown group, to be ignored).
Batch = tuple[Any, Any, Any]


def prunable(exclude_layers: Iterable[str] = ()) -> masks.PathPredicate:
  """Path predicate of the prunable leaves: conv/dense kernels (design.md section 2, "Scope")
  minus the module paths in ``exclude_layers`` (``prune.exclude_layers``, e.g. ``("conv0",)``)."""
  excluded = tuple(tuple(e.split("/")) for e in exclude_layers)

  def predicate(path, leaf) -> bool:
    return masks.default_prunable(path, leaf) and not any(
      tuple(path[: len(e)]) == e for e in excluded
    )

  return predicate


def variables_of(state: Any) -> dict[str, PyTree]:
  """Model variables of a train state for scoring: ``{"params"}`` plus ``"batch_stats"`` when
  the model has BatchNorm (params are already zero where the mask prunes)."""
  if not state.batch_stats:
    return {"params": state.params}
  return {"params": state.params, "batch_stats": state.batch_stats}


def as_tuples(batches: Iterable[Mapping[str, Any]]) -> Iterator[Batch]:
  """``(images, labels, groups)`` tuples of input-pipeline batch dicts."""
  for b in batches:
    yield b["image"], b["label"], b["group"]


@dataclasses.dataclass(frozen=True)
class RunContext:
  """Everything a run's stages share, built once by the pipeline (``pipeline.context``).

  Attributes:
    config: the run's full config (``ml_collections.ConfigDict``); a method reads its settings
      from ``config.prune``.
    model: the ``flax.linen`` module (uninitialised).
    data: the :class:`fairjax.data.DatasetSplits` (methods use :attr:`num_groups` and
      :attr:`group_names`, and the batch providers below, not the data itself).
    workdir: the run directory.
    dp: the data-parallel mesh (:class:`fairjax.parallel.DataParallel`).
    roles: ``(unprivileged id, privileged ids)`` from the dense validation accuracies, or None
      before the dense model is evaluated.
    scoring_batches: ``(step, chunk_size=None) -> iterable of batch dicts`` (``image``
      float32[B, H, W, 3], ``label`` int32[B], ``group`` int32[B]): ``prune.num_batches``
      group-balanced train batches of ``prune.batch_size``, a pure function of (seed, step).
    uniform_batches: ``step -> iterable of batch dicts``: uniformly sampled train batches, as
      above (group-unaware gradient scores).
    train_tx: ``epochs -> optax transformation``: the dense-training optimizer settings with
      the schedule spanning ``epochs`` of training (one step's retraining).
    steps_per_epoch: optimizer steps per training epoch.
  """

  config: Any
  model: Any
  data: Any
  workdir: str
  dp: Any
  roles: tuple[int, tuple[int, ...]] | None
  scoring_batches: Callable[..., Iterable[Mapping[str, Any]]]
  uniform_batches: Callable[[int], Iterable[Mapping[str, Any]]]
  train_tx: Callable[[int], Any]
  steps_per_epoch: int

  @property
  def num_groups(self) -> int:
    return int(self.data.num_groups)

  @property
  def group_names(self) -> tuple[str, ...]:
    return tuple(self.data.group_names)

  @property
  def prunable(self) -> masks.PathPredicate:
    return prunable(self.config.prune.exclude_layers)

  @property
  def loss(self) -> str:
    """The task's loss as the scorers' ``loss=`` (design.md section 1.10), from the data:
    ``"sigmoid_binary_cross_entropy"`` for a multi-label task (labels ``int32[B, A]``), else
    ``"softmax_cross_entropy"``."""
    return getattr(self.data, "loss", "softmax_cross_entropy")


def target_end(config, step: int) -> str | None:
  """The end of the ``prune.target_sparsity`` schedule: a reason at step ``prune.max_steps``."""
  p = config.prune
  if step >= p.max_steps:
    return f"target sparsity {p.target_sparsity} reached at step {p.max_steps}"
  return None


class PruneMethod:
  """A pruning method: hooks the loop calls, each with a default (override what differs).

  A method object holds no per-run state: every hook gets the :class:`RunContext`, and what a
  hook needs to know about earlier steps it reads from the state (e.g. the mask), so a killed
  run resumes without any method state in its checkpoints.

  Hooks, in the order the loop calls them:

  - :meth:`validate` ``(config, data=None)``: raise :class:`fairjax.config.ConfigError` for a
    setting the method cannot use (once before loading data, again with the dataset before the
    dense model is trained).
  - :meth:`optimizer` / :meth:`retrain_epochs`: the training after every step.
  - :meth:`prepare_mask` ``(ctx, params, mask) -> mask``: before step 1 (the mask's tree
    structure must stay the same afterwards).
  - per step ``>= 1``: :meth:`next_mask` ``(ctx, state, step) -> mask`` (default: select with
    :meth:`scores` and :meth:`schedule`), then training, evaluation, :meth:`step_info` and
    :meth:`schedule_end`.
  - :meth:`final_finetune` (training of the chosen pruned model) and :meth:`report` (extra
    ``results.json`` keys).
  """

  #: Draw ``saliency_histograms.png`` (per-group curvature terms; only meaningful for methods
  #: built on the per-group curvature, fairprune and obd).
  curvature_plot: bool = False
  #: Whether the method works on a multi-label task (labels ``int32[B, A]``, the loss
  #: :attr:`RunContext.loss`); a run with one that does not is refused before training
  #: (:func:`fairjax.config.validate_data`).
  supports_multilabel: bool = True

  #: Epochs of training after every step when ``prune.retrain_epochs`` is None.
  default_retrain_epochs: int = 0

  def validate(self, config, data: Any = None) -> None:
    """Raise ConfigError for settings this method cannot use; ``data`` is the loaded
    :class:`fairjax.data.DatasetSplits` on the second call (None on the first)."""
    del config, data

  def scores(self, ctx: RunContext, state: Any, step: int) -> PyTree:
    """Scores of step ``step`` (pytree like params, higher = kept) for the default
    :meth:`next_mask`."""
    raise NotImplementedError(f"{type(self).__name__} defines neither scores nor next_mask")

  def schedule(self, ctx: RunContext) -> schedules.Schedule | None:
    """``step -> cumulative pruned share`` (:mod:`fairjax.schedules`), or None to prune
    ``prune.step_fraction`` of the kept weights per step. Default: :func:`schedules.to_target`
    in ``prune.target_sparsity`` mode, else None."""
    p = ctx.config.prune
    if p.target_sparsity is not None:
      return schedules.to_target(p.target_sparsity, p.max_steps)
    return None

  def next_mask(self, ctx: RunContext, state: Any, step: int) -> masks.Mask:
    """The mask of step ``step`` from the state after the previous step (already-pruned weights
    stay pruned). Default: :meth:`scores`, then :func:`fairjax.masks.prune_lowest` (no
    schedule) or :func:`fairjax.masks.prune_to_sparsity` at ``schedule(step)``, within
    ``prune.scope``."""
    p = ctx.config.prune
    scores = self.scores(ctx, state, step)
    schedule = self.schedule(ctx)
    if schedule is None:
      return masks.prune_lowest(scores, state.mask, p.step_fraction, scope=p.scope)
    # Cumulative: step i prunes the lowest-scored kept weights up to r_i of each layer (or of
    # all prunable weights), so the last step lands on the target, not one step_fraction past.
    return masks.prune_to_sparsity(scores, state.mask, schedule(step), scope=p.scope)

  def retrain_epochs(self, ctx: RunContext) -> int:
    """Epochs of training after every step (0: prune only): ``prune.retrain_epochs``, or
    :attr:`default_retrain_epochs` when that is None."""
    epochs = ctx.config.prune.retrain_epochs
    return self.default_retrain_epochs if epochs is None else int(epochs)

  def optimizer(self, ctx: RunContext, dense_tx: Any) -> Any:
    """The optimizer of that training: the dense-training settings over one step's epochs
    (:attr:`RunContext.train_tx`), or ``dense_tx`` when there is no retraining."""
    epochs = self.retrain_epochs(ctx)
    return ctx.train_tx(epochs) if epochs else dense_tx

  def prepare_mask(self, ctx: RunContext, params: PyTree, mask: masks.Mask) -> masks.Mask:
    """The mask before step 1 (default: ``mask``, all-True on the prunable leaves). A method
    that masks leaves outside it (SNNL: bias, BN) makes them all-True arrays here."""
    del ctx, params
    return mask

  def step_info(self, ctx: RunContext, state: Any) -> dict[str, Any]:
    """Extra keys of every step record (step 0 included); default none."""
    del ctx, state
    return {}

  def schedule_end(self, ctx: RunContext, state: Any, step: int) -> str | None:
    """A reason to end the loop after step ``step`` (the state holds that step's mask), or
    None. Checked after the shared stopping rule; in ``prune.target_sparsity`` mode it is the
    only rule. Default: the end of the target schedule."""
    del state
    if ctx.config.prune.target_sparsity is not None:
      return target_end(ctx.config, step)
    return None

  def final_finetune(self, config) -> dict[str, Any] | None:
    """Training of the chosen pruned model after the loop, from the run's config:
    ``{"epochs": int, "optimizer": str, "learning_rate": float}`` (fresh optimizer,
    ``train.schedule``; 0 epochs = none), optionally with ``"phases": [(epochs,
    learning_rate), ...]`` (then each phase runs at its constant rate with a fresh optimizer,
    and ``epochs`` is their sum), or None (default: none)."""
    del config
    return None

  def report(self, ctx: RunContext, final: Any) -> dict[str, Any]:
    """Extra ``results.json`` keys for the chosen state ``final``; default none."""
    del ctx, final
    return {}


class ScoreMethod(PruneMethod):
  """A plain scoring function as a method (:func:`register_method` wraps callables in it).

  Args:
    score_fn: ``(variables, batches) -> scores``: ``variables`` the model variables (``params``
      masked, plus ``batch_stats`` with BatchNorm; apply the model with ``train=False``),
      ``batches`` an iterable of ``(images float32[B, H, W, 3], labels int32[B], groups
      int32[B])``, ``scores`` a pytree like ``variables["params"]`` (higher = kept; only the
      prunable leaves are read). A ``score_fn`` with a parameter named ``model`` also gets the
      ``flax.linen`` module as ``model=``; one with a parameter named ``loss`` gets the task's
      loss name (:attr:`RunContext.loss`) as ``loss=`` and can then run on a multi-label task,
      whose labels are ``int32[B, A]`` (a ``score_fn`` without it is refused there).
    batches: ``"scoring"`` (group-balanced train batches, ``prune.num_batches`` of
      ``prune.batch_size``) or ``"uniform"`` (uniformly sampled train batches).
  """

  def __init__(
    self, score_fn: Callable[[PyTree, Iterable[Batch]], PyTree], *, batches: str = "scoring"
  ):
    if batches not in ("scoring", "uniform"):
      raise ValueError(f"batches must be 'scoring' or 'uniform', got {batches!r}")
    self.score_fn = score_fn
    self.batches = batches
    try:
      parameters = inspect.signature(score_fn).parameters
    except (TypeError, ValueError):  # no introspectable signature (some builtins)
      parameters = {}
    self.wants_model = "model" in parameters
    self.wants_loss = "loss" in parameters
    self.supports_multilabel = self.wants_loss

  def scores(self, ctx: RunContext, state: Any, step: int) -> PyTree:
    source = ctx.scoring_batches(step) if self.batches == "scoring" else ctx.uniform_batches(step)
    kwargs = {"model": ctx.model} if self.wants_model else {}
    if self.wants_loss:
      kwargs["loss"] = ctx.loss
    return self.score_fn(variables_of(state), as_tuples(source), **kwargs)


# -- the registry ---------------------------------------------------------------------------------

_METHODS: dict[str, PruneMethod] = {}
_BUILTIN_MODULES = ("fairjax.pruning.builtin", "fairjax.pruning.snnl_channels")
_builtins_loaded = False
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _load_builtins() -> None:
  global _builtins_loaded
  if not _builtins_loaded:
    _builtins_loaded = True
    for module in _BUILTIN_MODULES:  # in this order: the order of method_names()
      for name, method in importlib.import_module(module).METHODS.items():
        _METHODS.setdefault(name, method)


def register_method(
  name: str, method: PruneMethod | Callable[..., PyTree], *, replace: bool = False
) -> PruneMethod:
  """Makes ``method`` available as ``config.prune.method = name`` (and in
  ``config.compare.methods``).

  Args:
    name: letters, digits, ``_``, ``.`` and ``-`` (it names run directories).
    method: a :class:`PruneMethod` (instance or subclass) or a plain scoring function
      ``(variables, batches) -> scores`` (wrapped in :class:`ScoreMethod`).
    replace: allow replacing a method registered under ``name`` before.

  Returns:
    The registered :class:`PruneMethod`.

  Raises:
    ValueError: a bad name, a name already registered (without ``replace``), or a method that
      is neither a PruneMethod nor callable.
  """
  _load_builtins()
  if not isinstance(name, str) or not _NAME.match(name):
    raise ValueError(f"method name {name!r}: use letters, digits, '_', '.' and '-'")
  if name in _METHODS and not replace:
    raise ValueError(
      f"a pruning method named {name!r} is already registered; pick another "
      "name (or pass replace=True)"
    )
  if isinstance(method, type) and issubclass(method, PruneMethod):
    method = method()
  elif not isinstance(method, PruneMethod):
    if not callable(method):
      raise ValueError(
        f"method {name!r}: expected a PruneMethod or a scoring function "
        f"(variables, batches) -> scores, got {type(method).__name__}"
      )
    method = ScoreMethod(method)
  _METHODS[name] = method
  return method


def method_names() -> tuple[str, ...]:
  """Names of every registered method, the built-in ones first (registration order)."""
  _load_builtins()
  return tuple(_METHODS)


def get_method(name: str) -> PruneMethod:
  """The method registered under ``name``.

  Raises:
    ConfigError: ``name`` is not registered (one line naming ``prune.method`` and listing the
      registered names).
  """
  _load_builtins()
  if name not in _METHODS:
    raise ConfigError(
      f"config.prune.method={name!r}: must be one of {method_names()} (a "
      "method registered with fairjax.pruning.register_method; fix it in the "
      "config file or with --config.prune.method=...)"
    )
  return _METHODS[name]
