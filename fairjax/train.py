"""Training: state, optimizers, one jit-able train / eval step, and the epoch loop.

Shaped like the flax examples' ``train.py`` (style.md): a ``TrainState``, pure
``train_step`` / ``eval_step`` functions the caller may jit, and a ``fit`` loop. Pruning enters
only through the mask carried in the state: the optimizer is wrapped with
:func:`fairjax.masks.masked_updates`, so pruned weights receive no gradient, no momentum and no
weight decay and stay exactly zero while the network is (re)trained or fine-tuned after pruning
(design.md sections 2-4). Nothing here knows which method produced the mask.

Batches are dicts ``{"image": float32[B, H, W, 3], "label": int32[B], "group": int32[B]}``;
evaluation batches add ``"valid": bool[B]`` that marks the padding rows of a last partial batch.
A multi-label task (CelebA's 39 attributes) has ``"label": int32[B, A]`` in ``{0, 1}``: the rank
of the labels selects the loss at trace time, the softmax cross-entropy for ``[B]`` and the
sigmoid binary cross-entropy, averaged over the ``A`` outputs, for ``[B, A]`` (design.md section
1.10; :func:`task_loss`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from fairjax import masks, parallel

PyTree = Any
Batch = Mapping[str, Any]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training, as one pytree.

  Attributes:
    step: int32 scalar, number of optimizer updates applied so far.
    params: the model's ``params`` collection.
    batch_stats: the ``batch_stats`` collection (BatchNorm running statistics), ``{}`` for
      models without BatchNorm.
    opt_state: state of ``tx``.
    mask: a mask pytree (``fairjax.masks``: ``bool`` arrays shaped like params, ``None`` for
      unprunable leaves) or ``None`` (dense). Pruned params are zero and stay zero.
    apply_fn: ``model.apply`` wrapped in :class:`ModuleApply` (static, not a pytree leaf).
    tx: the optimizer, normally from :func:`make_optimizer` (static).
  """

  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  mask: PyTree
  apply_fn: Callable[..., Any] = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  def variables(self) -> dict[str, PyTree]:
    """The ``variables`` dict for ``apply_fn`` (``batch_stats`` only when non-empty)."""
    if self.batch_stats:
      return {"params": self.params, "batch_stats": self.batch_stats}
    return {"params": self.params}


class ModuleApply:
  """``model.apply`` that compares equal for equal modules.

  Bound methods of two equal (same class and fields) Linen modules compare unequal, and
  ``apply_fn`` is part of the state's tree structure, so every new model instance would force
  a new jit compilation of the train step. This wrapper compares and hashes by the module.
  """

  def __init__(self, module: nn.Module):
    self.module = module

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    return self.module.apply(*args, **kwargs)

  def __eq__(self, other: object) -> bool:
    return isinstance(other, ModuleApply) and self.module == other.module

  def __hash__(self) -> int:
    return hash(self.module)

  def __repr__(self) -> str:
    return f"ModuleApply({type(self.module).__name__})"


def _accepts_mask(tx: optax.GradientTransformation) -> bool:
  # Only GradientTransformationExtraArgs.update takes keyword extras such as ``mask``.
  return isinstance(tx, optax.GradientTransformationExtraArgs)


def _is_masked(tx: optax.GradientTransformation) -> bool:
  # Plain optax optimizers are GradientTransformationExtraArgs too and silently drop an
  # unknown ``mask=`` keyword, so accepting the keyword proves nothing: recognise the wrapper
  # made by fairjax.masks.masked_updates by its update function.
  update = getattr(tx, "update", None)
  return (
    _accepts_mask(tx)
    and getattr(update, "__module__", None) == masks.__name__
    and getattr(update, "__qualname__", "").startswith("masked_updates.")
  )


def create_train_state(
  model: nn.Module,
  rng: jax.Array,
  image_shape: Sequence[int],
  tx: optax.GradientTransformation,
  *,
  mask: PyTree | None = None,
) -> TrainState:
  """Initialises ``model`` on a dummy batch (``train=False``) and the optimizer state.

  Args:
    model: a Flax Linen classifier called as ``model.apply(variables, images, train=...)``.
    rng: PRNG key for parameter initialisation (split for ``params`` and ``dropout``).
    image_shape: ``(H, W, C)`` of one image, or ``(B, H, W, C)`` of a dummy batch.
    tx: optimizer; must come from :func:`make_optimizer` (or
      :func:`fairjax.masks.masked_updates`) when ``mask`` is given or will be set later.
    mask: optional mask; the initial params are zeroed where it is False.

  Returns:
    A :class:`TrainState` at step 0.

  Raises:
    ValueError: if ``mask`` is given but ``tx`` cannot take a ``mask`` argument.
  """
  shape = tuple(int(d) for d in image_shape)
  if len(shape) == 3:
    shape = (1, *shape)
  if len(shape) != 4:
    raise ValueError(f"image_shape must be (H, W, C) or (B, H, W, C), got {image_shape}.")
  if mask is not None and not _is_masked(tx):
    raise ValueError(
      "A mask needs an optimizer wrapped with fairjax.masks.masked_updates "
      "(make_optimizer does this)."
    )
  params_rng, dropout_rng = jax.random.split(rng)
  # Op by op, not jitted: a compiled initialiser can round differently in the last bit (XLA
  # fuses the scaling of the random draws), and that would change every published figure.
  variables = model.init(
    {"params": params_rng, "dropout": dropout_rng}, jnp.zeros(shape, jnp.float32), train=False
  )
  params = variables["params"]
  if mask is not None:
    params = masks.apply_mask(params, mask)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=jax.jit(tx.init)(params),
    mask=mask,
    apply_fn=ModuleApply(model),
    tx=tx,
  )


def set_mask(
  state: TrainState, mask: PyTree | None, *, reset_opt_state: bool = False
) -> TrainState:
  """Installs a new mask after a pruning step: zeroes the newly pruned params.

  Args:
    state: current state.
    mask: the new mask (``None``: back to dense, params unchanged).
    reset_opt_state: re-initialise the optimizer state (fresh momentum / Adam moments), e.g.
      before fine-tuning with a new optimizer configuration. Without it, stale moments of
      pruned weights are harmless: ``masked_updates`` zeroes their updates.

  Returns:
    The updated state.
  """
  if mask is not None and not _is_masked(state.tx):
    raise ValueError("A mask needs an optimizer wrapped with fairjax.masks.masked_updates.")
  params = state.params if mask is None else masks.apply_mask(state.params, mask)
  opt_state = state.tx.init(params) if reset_opt_state else state.opt_state
  return state.replace(params=params, mask=mask, opt_state=opt_state)


# -- optimizers and schedules ------------------------------------------------------------------


def make_optimizer(
  name: str,
  learning_rate: float | optax.Schedule,
  *,
  momentum: float = 0.9,
  nesterov: bool = False,
  weight_decay: float = 0.0,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  grad_clip_norm: float | None = None,
  decay_mask: PyTree | Callable[[PyTree], PyTree] | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Builds a mask-aware optimizer.

  - ``"sgd"``: SGD with (optionally Nesterov) momentum; ``weight_decay`` is coupled L2 added to
    the gradient before momentum, as in PyTorch's SGD (the official SNNL fine-tuning uses lr
    0.01, momentum 0.9, Nesterov, wd 1e-5: design.md section 3).
  - ``"adam"``: Adam; ``weight_decay`` is coupled L2 (PyTorch's ``Adam(weight_decay=...)``;
    FairGRAPE retrains with Adam lr 1e-5: design.md section 4).
  - ``"adamw"``: Adam with decoupled weight decay.

  The result is wrapped with :func:`fairjax.masks.masked_updates`: call
  ``tx.update(grads, opt_state, params, mask=mask)``.

  Args:
    name: one of :data:`OPTIMIZERS`.
    learning_rate: a float or an optax schedule (see :func:`make_schedule`).
    momentum: SGD momentum; ``0`` for plain SGD.
    nesterov: Nesterov momentum (SGD only; needs ``momentum > 0``).
    weight_decay: L2 / decoupled decay coefficient; ``0`` disables it.
    b1, b2, eps: Adam hyper-parameters.
    grad_clip_norm: clip gradients to this global norm first (``None``: no clipping). The norm
      is taken after pruned gradients are zeroed.
    decay_mask: optax-style pytree of bools (or a function of params returning one) choosing
      which params are decayed; ``None`` decays all.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose update takes ``mask=``.

  Raises:
    ValueError: unknown ``name`` (the message lists the valid ones) or bad hyper-parameters.
  """
  key = name.lower()
  if key not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}.")
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
  parts: list[optax.GradientTransformation] = []
  if grad_clip_norm is not None:
    parts.append(optax.clip_by_global_norm(grad_clip_norm))
  if key == "sgd":
    if momentum < 0:
      raise ValueError(f"momentum must be >= 0, got {momentum}.")
    if nesterov and momentum == 0:
      raise ValueError("nesterov=True needs momentum > 0.")
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
    parts.append(optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov))
  elif key == "adam":
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
    parts.append(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))
  else:  # adamw
    parts.append(
      optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
    )
  inner = parts[0] if len(parts) == 1 else optax.chain(*parts)
  return masks.masked_updates(inner)


def make_schedule(
  kind: str,
  base_lr: float,
  total_steps: int,
  warmup_steps: int = 0,
  *,
  decay_boundaries: Sequence[float] = (0.5, 0.75),
  decay_factor: float = 0.1,
  final_lr_fraction: float = 0.0,
) -> optax.Schedule:
  """Learning-rate schedule over ``total_steps`` optimizer steps, with linear warmup.

  - ``"constant"``: ``base_lr`` after warmup.
  - ``"cosine"``: cosine decay from ``base_lr`` to ``final_lr_fraction * base_lr`` at
    ``total_steps``.
  - ``"step"``: multiply by ``decay_factor`` at each of ``decay_boundaries`` (fractions of
    ``total_steps``, counted from step 0 including warmup).

  Warmup rises linearly from 0 to ``base_lr`` over ``warmup_steps``.

  Args:
    kind: one of :data:`SCHEDULES`.
    base_lr: peak learning rate.
    total_steps: total number of optimizer steps (>= 1).
    warmup_steps: linear warmup length, ``0 <= warmup_steps < total_steps``.
    decay_boundaries: for ``"step"``, increasing fractions in (0, 1).
    decay_factor: for ``"step"``, the multiplier at each boundary.
    final_lr_fraction: for ``"cosine"``, final lr as a fraction of ``base_lr``.

  Returns:
    An ``optax.Schedule`` (step -> learning rate).

  Raises:
    ValueError: unknown ``kind`` or inconsistent steps.
  """
  if kind not in SCHEDULES:
    raise ValueError(f"Unknown schedule {kind!r}; valid kinds: {', '.join(SCHEDULES)}.")
  if total_steps < 1:
    raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
  if not 0 <= warmup_steps < total_steps:
    raise ValueError(f"Need 0 <= warmup_steps < total_steps, got {warmup_steps}, {total_steps}.")
  main_steps = total_steps - warmup_steps
  if kind == "constant":
    main = optax.constant_schedule(base_lr)
  elif kind == "cosine":
    main = optax.cosine_decay_schedule(base_lr, main_steps, alpha=final_lr_fraction)
  else:
    bounds = [float(b) for b in decay_boundaries]
    if any(not 0.0 < b < 1.0 for b in bounds) or bounds != sorted(bounds):
      raise ValueError(f"decay_boundaries must be increasing fractions in (0, 1): {bounds}.")
    # Boundaries are absolute steps; the joined schedule sees steps counted from warmup's end.
    steps = [max(1, round(b * total_steps) - warmup_steps) for b in bounds]
    scales: dict[int, float] = {}
    for s in steps:
      scales[s] = scales.get(s, 1.0) * decay_factor
    main = optax.piecewise_constant_schedule(base_lr, scales)
  if warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(0.0, base_lr, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


# -- steps -------------------------------------------------------------------------------------


def _weighted_mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
  if weights is None:
    return jnp.mean(values)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def task_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-sample loss and correctness of one batch (design.md section 1.10).

  Args:
    logits: float32 ``[B, C]``.
    labels: int ``[B]`` class ids (softmax cross-entropy), or ``{0, 1}[B, C]`` for a
      multi-label task (sigmoid binary cross-entropy of every output).

  Returns:
    ``(loss, correct)``, float32 ``[B]`` each. Multi-label: the mean over the ``C`` outputs of
    the binary cross-entropy, and the share of outputs whose ``logit > 0`` equals the label
    (so the batch mean is the accuracy macro-averaged over attributes). Otherwise: the
    cross-entropy and ``argmax == label``.
  """
  if labels.ndim == 2:
    targets = labels.astype(logits.dtype)
    loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets), axis=-1)
    correct = jnp.mean(((logits > 0) == (labels > 0)).astype(jnp.float32), axis=-1)
    return loss, correct
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return loss, (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def train_step(
  state: TrainState, batch: Batch, rng: jax.Array
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on the mean loss of :func:`task_loss` (softmax cross-entropy, or the
  sigmoid binary cross-entropy for multi-label ``[B, A]`` labels). Pure, so it can be jitted.

  BatchNorm statistics are updated from the batch (``train=True``). The dropout key is
  ``fold_in(rng, state.step)``, so passing the same ``rng`` every step still gives every step
  its own dropout noise, reproducibly across a resumption. If the batch carries ``"valid"``,
  padded rows are left out of the loss (not out of the BatchNorm statistics).

  Args:
    state: current state.
    batch: ``image`` float32[B, H, W, C], ``label`` int32[B] (or int32[B, A], multi-label),
      optional ``valid`` bool[B].
    rng: PRNG key, typically the same for the whole run.

  Returns:
    ``(new_state, metrics)`` with float32 scalars ``loss`` (mean loss before the update; the
    caller checks it for NaN), ``accuracy`` (multi-label: macro-averaged over attributes) and
    ``grad_norm``.
  """
  if state.mask is not None and not _is_masked(state.tx):  # checked at trace time
    raise ValueError(
      "state.mask is set but state.tx is not wrapped with "
      "fairjax.masks.masked_updates: pruned weights would be updated."
    )
  images, labels = batch["image"], batch["label"]
  weights = batch["valid"].astype(jnp.float32) if "valid" in batch else None
  dropout_rng = jax.random.fold_in(rng, state.step)
  has_bn = bool(state.batch_stats)

  def loss_fn(params: PyTree) -> tuple[jax.Array, tuple[jax.Array, PyTree]]:
    variables = {"params": params}
    if has_bn:
      variables["batch_stats"] = state.batch_stats
      logits, updates = state.apply_fn(
        variables,
        images,
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": dropout_rng},
      )
      new_stats = updates["batch_stats"]
    else:
      logits = state.apply_fn(variables, images, train=True, rngs={"dropout": dropout_rng})
      new_stats = state.batch_stats
    logits = logits.astype(jnp.float32)  # the loss in float32 even for bf16 models
    losses, correct = task_loss(logits, labels)
    return _weighted_mean(losses, weights), (correct, new_stats)

  (loss, (correct, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if _accepts_mask(state.tx):
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params, mask=state.mask)
  else:
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
    "loss": loss,
    "accuracy": _weighted_mean(correct, weights),
    "grad_norm": optax.tree.norm(grads),
  }
  new_state = state.replace(
    step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state
  )
  return new_state, metrics


def eval_step(state: TrainState, batch: Batch) -> jax.Array:
  """Logits ``float32[B, num_classes]`` of ``batch["image"]`` in inference mode.

  Runs ``apply_fn(..., train=False)``: BatchNorm uses its running statistics, dropout is off
  and nothing is mutated.
  """
  return state.apply_fn(state.variables(), batch["image"], train=False).astype(jnp.float32)


# The state is donated: its buffers are reused for the new state, halving peak memory.
jit_train_step = jax.jit(train_step, donate_argnums=0)
jit_train_step_no_donate = jax.jit(train_step)
jit_eval_step = jax.jit(eval_step)


def predict(
  state: TrainState, batches: Iterable[Batch]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Runs :func:`eval_step` over ``batches`` and drops padded rows.

  Args:
    state: the model to evaluate.
    batches: dicts with ``image``, ``label``, ``group`` and optionally ``valid`` (bool[B];
      missing means every row is real).

  Returns:
    ``(logits float32[N, C], labels int32[N] (multi-label: int32[N, C]), groups int32[N])``
    as numpy, N = real rows.
  """
  outs: list[tuple[jax.Array, Any, Any, Any]] = []
  for batch in batches:
    # Dispatch every batch before fetching anything, so the device never waits on the host.
    # Only the images go to the device: labels / groups / valid stay on the host.
    logits = jit_eval_step(state, {"image": batch["image"]})
    outs.append((logits, batch["label"], batch["group"], batch.get("valid")))
  if not outs:
    raise ValueError("predict() got no batches.")
  logits, labels, groups = [], [], []
  for lg, lb, gr, valid in outs:
    keep = slice(None) if valid is None else np.asarray(valid, dtype=bool)
    logits.append(parallel.to_host(lg)[keep])  # gathers logits sharded over hosts
    labels.append(np.asarray(lb)[keep])
    groups.append(np.asarray(gr)[keep])
  return (
    np.concatenate(logits).astype(np.float32),
    np.concatenate(labels).astype(np.int32),
    np.concatenate(groups).astype(np.int32),
  )


# -- the loop ----------------------------------------------------------------------------------


def _commit_with_the_rest(state: TrainState) -> TrainState:
  """Puts the uncommitted arrays of ``state`` on the one device its committed arrays are on.

  A state restored from a checkpoint is committed to its device, but leaves made afresh (a new
  optimizer state, ``step=0``) are not. jit compiles a separate program for each placement,
  and the first step's outputs are all committed, so such a mixed state cost two compilations of
  the train step, one of them for a single step (5 s for a ResNet-18 on a 2-core CPU). The
  values do not change. A state with no committed array, or one on a mesh, is returned as is.
  """
  leaves = [x for x in jax.tree.leaves(state) if isinstance(x, jax.Array)]
  devices = {d for x in leaves if x.committed for d in x.devices()}
  if len(devices) != 1 or all(x.committed for x in leaves):
    return state
  (device,) = devices
  return jax.tree.map(
    lambda x: jax.device_put(x, device) if isinstance(x, jax.Array) and not x.committed else x,
    state,
  )


def fit(
  state: TrainState,
  train_batches_fn: Callable[[int], Iterable[Batch]],
  *,
  epochs: int,
  eval_fn: Callable[[TrainState], float] | None = None,
  patience: int | None = None,
  rng: jax.Array | None = None,
  log_every: int = 100,
  on_epoch_end: Callable[[int, TrainState, dict[str, Any]], None] | None = None,
  start_epoch: int = 0,
  min_delta: float = 0.0,
  donate: bool = True,
  step_fn: Callable[..., tuple[TrainState, dict[str, jax.Array]]] | None = None,
) -> tuple[TrainState, list[dict[str, Any]]]:
  """Trains for epochs ``start_epoch .. epochs - 1`` with early stopping on ``eval_fn``.

  After each epoch ``eval_fn(state)`` gives a validation score (higher is better). The state of
  the best epoch is kept (copied to host memory, since the live state's buffers are donated);
  training stops once ``patience`` epochs in a row fail to beat the best by more than
  ``min_delta``. Losses are fetched one step late, so checking every step for NaN costs no
  device idle time.

  Args:
    state: initial state. With ``donate=True`` its buffers are consumed: do not reuse it.
    train_batches_fn: ``epoch -> iterable of batches`` for that epoch, so a resumed run can ask
      for exactly the epochs it has left.
    epochs: total number of epochs (the loop stops before epoch ``epochs``).
    eval_fn: validation score of a state, higher is better; ``None``: no validation, the final
      state is returned.
    patience: early-stopping patience in epochs (``None``: never stop early).
    rng: key for dropout (folded with the step in :func:`train_step`); default key 0.
    log_every: log running loss/accuracy every this many steps (``0``: only per epoch).
    on_epoch_end: called as ``on_epoch_end(epoch, state, record)`` after each epoch's
      evaluation (e.g. to save a checkpoint); ``record`` is that epoch's history entry.
    start_epoch: first epoch to run (resumption). Early-stopping counters restart.
    min_delta: minimum score improvement that counts as better.
    donate: donate the state's buffers to each step (less memory).
    step_fn: a jitted :func:`train_step` to use instead of the module's (e.g. one with
      data-parallel shardings from ``fairjax.parallel.DataParallel.jit``); ``donate`` is then
      the caller's choice when building it.

  Returns:
    ``(best_state, history)``: the best state by validation score (the last one without
    ``eval_fn``), and one dict per epoch run with ``epoch``, ``steps``, ``loss``,
    ``accuracy``, ``val_score`` (or None), ``images_per_sec``, ``seconds``, ``best``.

  Raises:
    FloatingPointError: on a non-finite training loss, naming the step.
    ValueError: if an epoch yields no batches.
  """
  if patience is not None and patience < 1:
    raise ValueError(f"patience must be None or >= 1, got {patience}.")
  rng = jax.random.key(0) if rng is None else rng
  if step_fn is None:
    step_fn = jit_train_step if donate else jit_train_step_no_donate
  state = _commit_with_the_rest(state)
  global_step = int(state.step)
  history: list[dict[str, Any]] = []
  best_score = -math.inf
  best_host: TrainState | None = None
  bad_epochs = 0

  def check(step: int, epoch: int, metrics: dict[str, jax.Array]) -> tuple[float, float]:
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
      raise FloatingPointError(
        f"Non-finite training loss ({loss}) at step {step} (epoch {epoch + 1}); "
        f"gradient norm {float(metrics['grad_norm'])}. Lower the learning rate (or add "
        f"warmup / gradient clipping) and check the inputs for NaN/inf."
      )
    return loss, float(metrics["accuracy"])

  for epoch in range(start_epoch, epochs):
    t0 = time.perf_counter()
    loss_sum = acc_sum = 0.0
    n_images = n_steps = 0
    pending: tuple[int, dict[str, jax.Array], int] | None = None

    def consume(item: tuple[int, dict[str, jax.Array], int]) -> None:
      nonlocal loss_sum, acc_sum, n_images, n_steps
      step, metrics, size = item
      loss, acc = check(step, epoch, metrics)
      loss_sum += loss * size
      acc_sum += acc * size
      n_images += size
      n_steps += 1
      if log_every and n_steps % log_every == 0:
        logging.info(
          "epoch %d step %d: loss %.4f acc %.4f",
          epoch + 1,
          step,
          loss_sum / n_images,
          acc_sum / n_images,
        )

    for batch in train_batches_fn(epoch):
      state, metrics = step_fn(state, batch, rng)
      # Fetch the previous step's loss while this one runs.
      if pending is not None:
        consume(pending)
      pending = (global_step, metrics, int(np.shape(batch["label"])[0]))
      global_step += 1
    if pending is None:
      raise ValueError(f"train_batches_fn({epoch}) yielded no batches.")
    consume(pending)
    seconds = time.perf_counter() - t0

    val_score = None if eval_fn is None else float(eval_fn(state))
    improved = False
    if val_score is not None:
      if math.isnan(val_score):
        logging.warning("epoch %d: validation score is NaN; counted as no improvement.", epoch + 1)
      elif val_score > best_score + min_delta or best_host is None:
        improved = True
    if improved:
      best_score, bad_epochs = val_score, 0
      best_host = jax.device_get(state)
    elif val_score is not None:
      bad_epochs += 1
    record = {
      "epoch": epoch,
      "steps": n_steps,
      "loss": loss_sum / n_images,
      "accuracy": acc_sum / n_images,
      "val_score": val_score,
      "images_per_sec": n_images / seconds if seconds > 0 else float("nan"),
      "seconds": seconds,
      "best": improved,
    }
    history.append(record)
    logging.info(
      # 1-based for humans, as every log line (the history keeps 0-based epochs).
      "epoch %d: loss %.4f acc %.4f val %s%s, %.1f img/s",
      epoch + 1,
      record["loss"],
      record["accuracy"],
      "-" if val_score is None else f"{val_score:.4f}",
      " (best)" if improved else "",
      record["images_per_sec"],
    )
    if on_epoch_end is not None:
      on_epoch_end(epoch, state, record)
    if patience is not None and bad_epochs >= patience:
      logging.info(
        "Early stopping after epoch %d: no improvement for %d epochs (best %.4f).",
        epoch + 1,
        bad_epochs,
        best_score,
      )
      break

  if best_host is None:
    return state, history
  return jax.device_put(best_host), history
