"""The run configuration: defaults shared by ``configs/*.py`` and validation before any compute.

Configs are ``ml_collections.ConfigDict`` objects (flax examples / big_vision style): a
``configs/<name>.py`` file defines ``get_config()`` starting from :func:`base_config`, and any
field can be overridden on the command line as ``--config.a.b=value``. These keys are part of
the public contract: ``data.manual_dir``, ``data.image_size``, ``train.epochs``,
``prune.method``, ``fairness_convention``.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import io
import math
import os
import re
import textwrap
import tokenize
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections

# PRUNE_METHODS (read lazily, see __getattr__) is the registry's list of method names
# (fairjax.pruning.method_names): the built-in "fairprune" (design.md section 2), "magnitude",
# "random", "snip", "obd" (section 4.7), "fairgrape" (section 4), "snnl_channels" (section 3),
# then every method registered with fairjax.pruning.register_method.
# The value sets of some fields belong to the modules that implement them; these names are read
# from there on first access (module __getattr__ below), so importing this module stays cheap.
_OWNED = {
  "CURVATURE_METHODS": ("fairjax.curvature", "METHODS"),  # prune.curvature
  "CONVENTIONS": ("fairjax.report", "CONVENTIONS"),  # fairness_convention
  "SAMPLINGS": ("fairjax.data.pipeline", "SAMPLINGS"),  # data.sampling
  "AUGMENTS": ("fairjax.data.pipeline", "AUGMENTS"),  # data.augment
  "OPTIMIZERS": ("fairjax.train", "OPTIMIZERS"),  # train.optimizer
}


def _owned(name: str) -> tuple[str, ...]:
  module, attr = _OWNED[name]
  return tuple(getattr(importlib.import_module(module), attr))


def _prune_methods() -> tuple[str, ...]:
  from fairjax.pruning import api  # lazy: importing the methods pulls in jax

  return api.method_names()


def __getattr__(name: str) -> Any:
  if name == "PRUNE_METHODS":  # evaluated on access: methods registered later are included
    return _prune_methods()
  if name in _OWNED:
    return _owned(name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and how to fix it."""


def base_config() -> ml_collections.ConfigDict:
  """Defaults for every field (the demo's values where a dataset matters)."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # model init, data order, pruning batches
  c.fairness_convention = "sum"  # "sum" (FairPrune re-implementations) or "mean" (Kong et al.)
  c.undefined_rates = "skip"  # class absent from a group: "skip" it or count the rate as "zero"

  c.data = ml_collections.ConfigDict()
  # dataset: "demo" (synthetic, no download), "isic2019", "fitzpatrick17k", "fairface",
  # "utkface" or "celeba"
  c.data.name = "demo"
  c.data.image_size = 32  # side of the images fed to the model
  c.data.manual_dir = ""  # real datasets: folder with the files you downloaded (README)
  c.data.data_dir = ""  # TFDS build directory ("" = <workdir>/tfds)
  c.data.stored_image_size = 128  # side at which the TFDS build stores images
  c.data.split_fractions = (0.6, 0.2, 0.2)  # real datasets: (train, validation, test) shares
  c.data.split_seed = 0  # real datasets: seed of the train/validation/test assignment
  c.data.sensitive_attribute = "sex"  # ISIC 2019: "sex" or "age"
  c.data.label_granularity = 114  # Fitzpatrick-17k: 114, 9 or 3 classes
  c.data.unknown_skin = "exclude"  # Fitzpatrick-17k skin type -1: "exclude" or "dark"
  # Face datasets (design.md section 6.5), the label: FairFace "race", "gender" or "age";
  # UTKFace "race" or "gender"; CelebA "attribute" or "multilabel" (the 39 attributes other
  # than Male at once, sigmoid outputs) ("" = the first of these)
  c.data.task = ""
  # Face datasets, the sensitive attribute: "" = the task's default (FairFace: gender for race
  # and age, race for gender; UTKFace: the attribute that is not the task; CelebA: Male)
  c.data.face_group = ""
  c.data.fairface_validation_fraction = 0.1  # FairFace: share of train held out (test = val)
  c.data.utkface_races = 4  # UTKFace races: 4 (files of "Others" left out) or 5
  c.data.celeba_attribute = "Smiling"  # CelebA task "attribute": the attribute learnt (binary)
  c.data.on_bad_image = "skip"  # corrupt / missing image: "skip" (counted) or "error"
  c.data.sampling = "uniform"  # training sampler: uniform, group_balanced, class_balanced
  # Training-time augmentation (train batches only): "none", "flip" (random left-right) or
  # "flip_crop" (random resized crop, then flip); see fairjax.data.pipeline.
  c.data.augment = "none"
  # Input normalisation: True = ImageNet mean/std per channel (what torchvision's pretrained
  # weights expect), False = pixels / 255 in [0, 1]. None = True: fairjax has always used the
  # ImageNet statistics, and with model.pretrained they are required to reuse the weights.
  c.data.imagenet_normalization = ml_collections.config_dict.placeholder(bool)
  c.data.seed = 0  # demo (the synthetic data of fairjax.data.synthetic): generator seed
  c.data.num_train = 3000  # demo: training images
  c.data.num_validation = 800  # demo: validation images
  c.data.num_test = 1500  # demo: test images
  c.data.minority_fraction = 0.2  # demo: share of dark skin in the training split
  # Share of dark skin in the demo's validation and test splits (None = minority_fraction).
  c.data.eval_minority_fraction = ml_collections.config_dict.placeholder(float)
  c.data.minority_contrast = 0.35  # mean lesion contrast on dark skin (light: U(0.45, 0.70))
  c.data.shortcut_strength = 0.0  # tanned light skin for one class: a learnable shortcut
  c.data.color_cue = 0.0  # class-specific lesion hue, visible on light skin only, in [0, 1]
  c.data.minority_color_noise = 0.0  # dark skin: lesion hue of a random class, in [0, 1]
  # demo: share of each split relabelled from "light" to a third group "other" (same images), for
  # runs with more than two groups; 0 = the two groups light and dark
  c.data.third_group_fraction = 0.0
  # demo: share of each split relabelled from "light" to a third group "other" (same images), for
  # runs with more than two groups; 0 = the two groups light and dark
  c.data.third_group_fraction = 0.0

  c.model = ml_collections.ConfigDict()
  c.model.name = "small_cnn"  # a name of the fairjax.models registry
  # Keyword arguments of the model's constructor; use_bn: BatchNorm after each conv
  # (--config.model.kwargs.use_bn=True). Configs for other models replace the whole dict.
  c.model.kwargs = ml_collections.ConfigDict({"width": 16, "hidden": 64, "use_bn": False})
  # ImageNet-pretrained weights read from your disk (fairjax.models.pretrained): a torchvision
  # state_dict (.pth, needs torch), the same state_dict as .safetensors, or a file written by
  # `python -m fairjax.convert_weights`. "" = random initialisation. The dense model then starts
  # from these weights (the classifier head is re-initialised when the class count differs).
  c.model.pretrained = ""
  # Protocol configs that start from ImageNet weights set this, so that forgetting
  # model.pretrained stops the run at once instead of training from scratch for hours.
  c.model.require_pretrained = False

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 10  # dense training epochs (at most; see patience)
  c.train.batch_size = 64  # training batch size (at most the training split size)
  c.train.eval_batch_size = 256  # batch size of evaluation (no effect on the metrics)
  c.train.optimizer = "adam"  # "sgd", "adam" or "adamw"
  c.train.learning_rate = 1e-3  # peak learning rate of the schedule
  c.train.momentum = 0.9  # SGD momentum
  c.train.nesterov = False  # SGD: Nesterov momentum
  c.train.weight_decay = 0.0  # L2 (sgd, adam) or decoupled (adamw) weight decay
  c.train.schedule = "cosine"  # learning-rate schedule: "constant", "cosine" or "step"
  c.train.warmup_epochs = 0  # linear warm-up epochs before the schedule
  c.train.patience = 3  # early stopping on validation accuracy (epochs)

  c.prune = ml_collections.ConfigDict()
  c.prune.method = "fairprune"  # a registered pruning method (fairjax.pruning.method_names())
  c.prune.beta = 0.5  # weight of the privileged group's curvature, (0, 1]
  c.prune.privileged_group = ""  # group name; "" = the group with higher dense val. accuracy
  c.prune.curvature = "exact"  # per_group_diag method
  c.prune.curvature_samples = 1  # samples / probes for "mc" / "hutchinson"
  # Bounded memory for the per-sample part of the curvature (FairPrune, OBD): samples per
  # compiled per_group_diag call (over all devices), 0 = the whole scoring batch at once. Peak
  # memory grows about linearly with it (README, "Memory"); exact results do not depend on it
  # (MC / Hutchinson draw per chunk).
  c.prune.curvature_chunk_size = 0
  # Memory budget in bytes for one curvature call (2 GiB, per_group_diag's default), 0 = off:
  # when the scoring batch's compiled plan exceeds it, per_group_diag picks the chunk size from
  # XLA's memory plans so the pass stays under it (design.md section 1.12); with
  # curvature_chunk_size as well, the smaller chunk wins. Exact results do not depend on it.
  c.prune.curvature_memory_budget_bytes = 2 * 1024**3
  c.prune.num_batches = 4  # group-balanced mini-batches the saliency is averaged over
  c.prune.batch_size = 128  # their size (half per group with two groups)
  c.prune.step_fraction = 0.05  # share of the still-kept weights pruned per step
  c.prune.scope = "global"  # rank weights over all layers ("global") or within each ("layer")
  c.prune.max_steps = 30  # at most this many pruning steps
  c.prune.patience = 5  # stop when validation Eodd has not improved for this many steps
  c.prune.max_sparsity = 0.9  # stop at this share of pruned prunable weights
  c.prune.max_accuracy_drop = 0.03  # stop when validation accuracy fell by more than this
  # The reported step: "best" = the lowest validation Eodd among the steps within
  # max_accuracy_drop; "last" = the last step, whatever its metrics (FairGRAPE's protocol
  # reports its model at the prune rate). prune.target_sparsity always reports the last.
  c.prune.report_step = "best"
  c.prune.exclude_layers = ()  # module paths never pruned, e.g. ("conv0", "fc1")
  # Epochs of training after every pruning step (FairGRAPE: after every iteration), with a fresh
  # optimizer state and the dense-training settings: the one retraining key of every method.
  # None = the method's default (PruneMethod.default_retrain_epochs): 0 for FairPrune and the
  # baselines (FairPrune's paper does not fine-tune), 1 for FairGRAPE and snnl_channels.
  c.prune.retrain_epochs = ml_collections.config_dict.placeholder(int)
  # FairGRAPE (design.md section 4), method "fairgrape"; validated by fairjax.pruning.builtin.
  c.prune.fairgrape = ml_collections.ConfigDict()
  # Schedule: cumulative ratio r_i = min(1 - keep**i, rate), retraining (fresh optimizer,
  # dense-training settings) after every iteration.
  c.prune.fairgrape.keep_per_iter = 0.9
  # None = prune.max_sparsity. A typed placeholder, so --config.prune.fairgrape.prune_rate=0.5
  # can still override it from the command line.
  c.prune.fairgrape.prune_rate = ml_collections.config_dict.placeholder(float)
  # Learning rate of that retraining: None = train.learning_rate on train.schedule over the
  # retraining epochs; a number = that constant rate with train.optimizer, a fresh optimizer
  # every iteration (FairGRAPE's code: Adam at 1e-5).
  c.prune.fairgrape.retrain_learning_rate = ml_collections.config_dict.placeholder(float)
  # FairGRAPE's full fine-tune of the reported pruned model after the last schedule iteration
  # (design.md section 4). The official code retrains with the dense recipe (Adam, lr 1e-4 ->
  # 1e-5 -> 1e-6 over 13 + 3 + 3 epochs on FairFace/UTKFace); scaled down here for the demo:
  # a fresh optimizer, train.schedule over these epochs, train.momentum/nesterov/weight_decay.
  c.prune.fairgrape.finetune_epochs = 2  # 0 = no final fine-tune
  c.prune.fairgrape.finetune_optimizer = "adam"  # optimizer of that final fine-tune
  c.prune.fairgrape.finetune_learning_rate = 1e-4  # its learning rate
  # A piecewise-constant final fine-tune instead: ((epochs, learning_rate), ...) phases run in
  # order, each with a fresh finetune_optimizer at that constant rate, as FairGRAPE's code
  # does, e.g. ((13, 1e-4), (3, 1e-5), (3, 1e-6)); () = finetune_epochs at
  # finetune_learning_rate on train.schedule.
  c.prune.fairgrape.finetune_schedule = ()
  # Prune to exactly this sparsity (None = the ordinary stopping rule). Used by the comparison
  # (fairjax.compare): every method follows the cumulative schedule
  # r_i = 1 - (1 - target)**(i / max_steps) and ends at step max_steps on the target; the Eodd
  # patience, max_sparsity and max_accuracy_drop rules are off and the last step is reported.
  # snnl_channels: the target is the fraction of the chosen layers' CHANNELS that is pruned.
  c.prune.target_sparsity = ml_collections.config_dict.placeholder(float)
  # Sensitive channel pruning (design.md section 3, method "snnl_channels"; validated by
  # fairjax.pruning.snnl_channels): per step, the channels of these conv layers with the LOWEST
  # SNNL w.r.t. the sensitive attribute are pruned (kernel slice, bias and BN scale/shift), then
  # the model is fine-tuned.
  c.prune.snnl = ml_collections.ConfigDict()
  c.prune.snnl.layers = ()  # conv module paths; () = the last conv{i} of the model (VGG: conv7)
  c.prune.snnl.temperature = 1.0  # T of the SNNL (paper: 1)
  c.prune.snnl.include_self = False  # count j = i in the numerator, as the official code does
  # Channels pruned per step: a value in (0, 1) is a fraction of the still-kept channels (per
  # layer, or of all chosen layers for scope "global"); an integer >= 1 is a channel count. (A
  # float field because ml_collections turns a command-line "2" into 2.0 for a float default.)
  c.prune.snnl.channels_per_step = 0.1
  c.prune.snnl.scope = "layer"  # rank channels within each layer ("layer") or together ("global")
  # Its fine-tuning after each step is prune.retrain_epochs (default 1; the official recipe uses
  # SGD lr 0.01, momentum 0.9, Nesterov, wd 1e-5, class-balanced sampling).
  # Measured inference speedup of the physically slimmed network over the masked one, reported
  # in results["slimming"] for "snnl_channels": batch size of the timed forward pass, and timed
  # repeats of each network after one warm-up call (0 = do not time).
  c.prune.speedup_batch_size = 64  # images per timed forward pass
  c.prune.speedup_repeats = 10  # timed calls per network (0 = no timing)

  # The names these keys had before the per-method sections, kept for one release: each is the
  # same field as its new key (setting either sets both); the command line warns when one is used.

  # FairGRAPE keep_per_iter (deprecated name of prune.fairgrape.keep_per_iter)
  c.prune.fairgrape_keep_per_iter = c.prune.fairgrape.get_ref("keep_per_iter")
  # FairGRAPE prune_rate (deprecated name of prune.fairgrape.prune_rate)
  c.prune.fairgrape_prune_rate = c.prune.fairgrape.get_ref("prune_rate")
  # The per-step retraining epochs had five names, each now a deprecated name of
  # prune.retrain_epochs (one field):
  c.prune.finetune_epochs = c.prune.get_ref("retrain_epochs")  # score methods' fine-tuning
  # FairGRAPE's retraining per iteration
  c.prune.fairgrape.retrain_epochs = c.prune.get_ref("retrain_epochs")
  c.prune.snnl.finetune_epochs = c.prune.get_ref("retrain_epochs")  # SNNL's fine-tuning per step
  # FairGRAPE's retraining per iteration (flat name)
  c.prune.fairgrape_retrain_epochs = c.prune.get_ref("retrain_epochs")
  c.prune.snnl_finetune_epochs = c.prune.get_ref("retrain_epochs")  # SNNL's (flat name)
  # FairGRAPE's full fine-tune epochs (deprecated name of prune.fairgrape.finetune_epochs)
  c.prune.fairgrape_finetune_epochs = c.prune.fairgrape.get_ref(
    "finetune_epochs"
  )  # 0 = no final fine-tune
  # FairGRAPE's final fine-tune optimizer (deprecated name of prune.fairgrape.finetune_optimizer)
  c.prune.fairgrape_finetune_optimizer = c.prune.fairgrape.get_ref("finetune_optimizer")
  # its learning rate (deprecated name of prune.fairgrape.finetune_learning_rate)
  c.prune.fairgrape_finetune_learning_rate = c.prune.fairgrape.get_ref("finetune_learning_rate")
  c.prune.snnl_layers = c.prune.snnl.get_ref("layers")  # deprecated name of prune.snnl.layers
  # deprecated name of prune.snnl.temperature
  c.prune.snnl_temperature = c.prune.snnl.get_ref("temperature")
  # deprecated name of prune.snnl.include_self
  c.prune.snnl_include_self = c.prune.snnl.get_ref("include_self")
  # deprecated name of prune.snnl.channels_per_step
  c.prune.snnl_channels_per_step = c.prune.snnl.get_ref("channels_per_step")
  c.prune.snnl_scope = c.prune.snnl.get_ref("scope")  # deprecated name of prune.snnl.scope

  # Data parallelism (fairjax.parallel): one mesh axis "data" over this many local devices per
  # process, 0 = all of them. Batches are split over the devices, params/optimizer state
  # replicated; train.batch_size, train.eval_batch_size, prune.batch_size and
  # prune.curvature_chunk_size must be divisible by the total device count.
  c.parallel = ml_collections.ConfigDict()
  c.parallel.num_devices = 0  # local devices per process (0 = all)

  # Paired bootstrap of the test split (fairjax.bootstrap, design.md section 5): intervals of
  # every metric of the dense and pruned models and of their differences in results.json.
  c.report = ml_collections.ConfigDict()
  c.report.bootstrap_samples = 1000  # resamples (group-stratified, the same for both models)
  c.report.bootstrap_seed = 0  # resampling seed: a rerun or resumed run gives the same intervals
  c.report.confidence = 0.95  # percentile interval level
  # Draw tradeoff.png and (fairprune, obd) saliency_histograms.png; False skips both, and the
  # histograms' extra curvature pass, for quick headless runs.
  c.report.plots = True
  return c


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """The ``get_config()`` of a config file such as ``configs/demo.py`` (what ``--config=path``
  loads), for notebooks, benchmarks and configs that extend another config.

  Raises:
    ConfigError: the file does not exist or defines no ``get_config()``.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ConfigError(
      f"config file {path!r} does not exist (configs are in the repository's "
      "configs/ folder, e.g. configs/demo.py)"
    )
  name = "fairjax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"config file {path!r} defines no get_config() returning the config")
  return module.get_config()


def compare_section(
  methods: tuple[str, ...] | None = None, sparsities: tuple[float, ...] = (0.5, 0.8, 0.9)
) -> ml_collections.ConfigDict:
  """The ``config.compare`` section of a comparison config (``configs/compare.py``).

  Its presence makes ``python -m fairjax.main`` run :func:`fairjax.compare.run` (every method in
  ``methods`` at every target weight sparsity in ``sparsities``, from ONE dense model) instead
  of the single-method pipeline.
  """
  if methods is None:  # every registered method
    methods = _prune_methods()
  c = ml_collections.ConfigDict()
  c.methods = tuple(methods)  # pruning methods compared (each from the same dense model)
  c.sparsities = tuple(float(s) for s in sparsities)  # target weight sparsities in (0, 1)
  return c


def _meanings_of(fn, prefix: str) -> dict[str, str]:
  """``{key: meaning}`` from the comments of ``fn``'s ``c.a.b = value`` lines: the comment block
  right above an assignment, then the comment on its own line(s). Bare ``ConfigDict()``
  sections get none (their keys are described one by one)."""
  source = textwrap.dedent(inspect.getsource(fn))
  comments: dict[int, str] = {}
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      comments[tok.start[0]] = tok.string.lstrip("#").strip()
  lines = source.splitlines()
  out: dict[str, str] = {}
  # Sorted: ast.walk is breadth-first, the keys should read in the source's order.
  for node in sorted(ast.walk(ast.parse(source)), key=lambda n: getattr(n, "lineno", 0)):
    if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
      continue
    parts, target = [], node.targets[0]
    while isinstance(target, ast.Attribute):
      parts.insert(0, target.attr)
      target = target.value
    if not (isinstance(target, ast.Name) and target.id == "c" and parts):
      continue
    value = node.value
    if (
      isinstance(value, ast.Call)
      and not value.args
      and getattr(value.func, "attr", None) == "ConfigDict"
    ):
      continue
    above, line = [], node.lineno - 1
    while line >= 1 and lines[line - 1].strip().startswith("#"):
      above.insert(0, comments[line])
      line -= 1
    own = [comments[i] for i in range(node.lineno, node.end_lineno + 1) if i in comments]
    out[prefix + ".".join(parts)] = " ".join(above + own)
  return out


def key_meanings() -> dict[str, str]:
  """What each config key means, in the words of the comments on its line in
  :func:`base_config` / :func:`compare_section` (one source of truth: ``--show_config`` prints
  these, and a test checks that every key has one)."""
  try:
    return {**_meanings_of(base_config, ""), **_meanings_of(compare_section, "compare.")}
  except (OSError, TypeError):  # no source to read (e.g. a .pyc-only install)
    return {}


def config_items(
  config, meanings: Mapping[str, str] | None = None, prefix: str = ""
) -> Iterator[tuple[str, Any]]:
  """``(dotted key, value)`` of every leaf of ``config``, in :func:`base_config`'s order; a
  sub-dict with a meaning of its own (``model.kwargs``) is one leaf."""
  meanings = key_meanings() if meanings is None else meanings
  order = list(meanings)

  def rank(key: str) -> int:
    # base_config's order (a ConfigDict iterates sorted): a section ranks as its first key;
    # keys that base_config does not know come last.
    path = prefix + key
    return next(
      (i for i, m in enumerate(order) if m == path or m.startswith(path + ".")), len(order)
    )

  for key in sorted(config.keys(), key=lambda k: (rank(k), k)):
    value = config[key]
    path = prefix + key
    if isinstance(value, (Mapping, ml_collections.ConfigDict)) and path not in meanings:
      yield from config_items(value, meanings, path + ".")
    else:
      yield path, value


def _validate_compare(config) -> None:
  cmp = config.compare
  methods = cmp.methods
  PRUNE_METHODS = _prune_methods()
  if isinstance(methods, str) or not methods:
    _fail("compare.methods", methods, f"must be a non-empty tuple of methods from {PRUNE_METHODS}")
  for m in methods:
    if m not in PRUNE_METHODS:
      _fail(
        "compare.methods",
        tuple(methods),
        f"{m!r} is not a pruning method; each must be one of {PRUNE_METHODS}",
      )
  if len(set(methods)) != len(methods):
    _fail("compare.methods", tuple(methods), "must not name a method twice")
  sparsities = cmp.sparsities
  if isinstance(sparsities, (str, int, float)) or not sparsities:
    _fail(
      "compare.sparsities",
      sparsities,
      "must be a non-empty tuple of target weight sparsities in (0, 1), e.g. (0.5, 0.9)",
    )
  for s in sparsities:
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 < s < 1.0:
      _fail(
        "compare.sparsities",
        tuple(sparsities),
        f"{s!r} is outside (0, 1): a target sparsity is a fraction of pruned weights below "
        "1 (the dense model, sparsity 0, is always in the table)",
      )
  if len(set(float(s) for s in sparsities)) != len(sparsities):
    _fail("compare.sparsities", tuple(sparsities), "must not name a sparsity twice")
  if config.prune.target_sparsity is not None:
    _fail(
      "prune.target_sparsity",
      config.prune.target_sparsity,
      "is set by the comparison from config.compare.sparsities; leave it unset (None)",
    )


def _validate_pretrained(config) -> None:
  """``model.pretrained``: a readable file for an architecture that has a torchvision layout."""
  from fairjax.models import pretrained

  m = config.model
  if not isinstance(m.pretrained, str):
    _fail("model.pretrained", m.pretrained, "must be a file path, or '' for random init")
  if not m.pretrained:
    if m.require_pretrained:
      _fail(
        "model.pretrained",
        m.pretrained,
        f"this protocol starts from ImageNet weights; download the torchvision file for "
        f"{m.name} (README, 'Reproduce a paper') and pass its path, or set "
        "--config.model.require_pretrained=False to train from random init",
      )
    return
  if m.name not in pretrained.PRETRAINED_MODELS:
    _fail(
      "model.name",
      m.name,
      f"has no pretrained layout; with model.pretrained use one of {pretrained.PRETRAINED_MODELS}",
    )
  if not os.path.isfile(m.pretrained):
    _fail("model.pretrained", m.pretrained, "is not a file (give the path of the weights file)")
  if not os.access(m.pretrained, os.R_OK):
    _fail("model.pretrained", m.pretrained, "is not readable (check its permissions)")
  if config.data.imagenet_normalization is False:
    _fail(
      "data.imagenet_normalization",
      False,
      "ImageNet-pretrained weights expect ImageNet-normalised inputs; leave it None or True",
    )


def _validate_faces(d) -> None:
  """``data.task`` / ``face_group`` / the per-dataset keys of a face dataset (design.md 6.5)."""
  from fairjax.data import faces

  problem = faces.check_face_options(d.name, d.task, d.face_group, d.celeba_attribute)
  if problem:
    key, why = problem
    _fail(f"data.{key}", d[key], why)
  if d.name == "fairface" and not 0.0 < d.fairface_validation_fraction < 1.0:
    _fail("data.fairface_validation_fraction", d.fairface_validation_fraction, "must be in (0, 1)")
  if d.name == "utkface" and d.utkface_races not in faces.UTKFACE_RACE_COUNTS:
    _fail("data.utkface_races", d.utkface_races, "must be 4 (without 'Others') or 5")
  if faces.is_multilabel(d.name, faces.resolve_task(d.name, d.task)) and (
    d.sampling == "class_balanced"
  ):
    _fail(
      "data.sampling",
      d.sampling,
      "a multi-label task has no single class per image to "
      "balance; use 'uniform' or 'group_balanced'",
    )


def _check_multilabel_method(method_name: str, where: str) -> None:
  """ConfigError when the pruning method ``method_name`` cannot score a multi-label task."""
  from fairjax.pruning import api as methods_api

  if not methods_api.get_method(method_name).supports_multilabel:
    raise ConfigError(
      f"config.{where}={method_name!r}: this method cannot score a multi-label task (a "
      "scoring function registered without a 'loss' parameter assumes one class per "
      "image); pick another method, or give its score_fn a loss= parameter"
    )


def imagenet_normalization(config) -> bool:
  """The resolved ``data.imagenet_normalization`` (None means True)."""
  value = config.data.imagenet_normalization
  return True if value is None else bool(value)


# Deprecated key -> its new key (the per-method sections); both names are one field in
# base_config for one release, and the command line warns when an old name is used.
DEPRECATED_KEYS = {
  **{
    f"prune.fairgrape_{k}": f"prune.fairgrape.{k}"
    for k in (
      "keep_per_iter",
      "prune_rate",
      "finetune_epochs",
      "finetune_optimizer",
      "finetune_learning_rate",
    )
  },
  **{
    f"prune.snnl_{k}": f"prune.snnl.{k}"
    for k in ("layers", "temperature", "include_self", "channels_per_step", "scope")
  },
  **{
    old: "prune.retrain_epochs"
    for old in (
      "prune.finetune_epochs",
      "prune.fairgrape.retrain_epochs",
      "prune.snnl.finetune_epochs",
      "prune.fairgrape_retrain_epochs",
      "prune.snnl_finetune_epochs",
    )
  },
}
_OLD_NAMES: dict[str, list[str]] = {}
for _old, _new in DEPRECATED_KEYS.items():
  _OLD_NAMES.setdefault(_new, []).append(_old)


def deprecated_overrides(argv: Iterator[str] | list[str]) -> list[tuple[str, str]]:
  """``(old, new)`` key pairs of the deprecated keys that command-line arguments
  ``--config.<old>=...`` set, in argument order."""
  found = []
  for arg in argv:
    key = arg.split("=", 1)[0].removeprefix("--config.")
    if arg.startswith("--config.") and key in DEPRECATED_KEYS:
      found.append((key, DEPRECATED_KEYS[key]))
  return found


def deprecated_in_file(path: str) -> list[tuple[str, str]]:
  """``(old, new)`` key pairs of the deprecated keys that a config file assigns
  (``config.prune.<old> = ...``, found in its text); none for a missing file or ``""``."""
  if not path or not os.path.isfile(path):
    return []
  with open(path) as f:
    text = f.read()
  return [
    (old, new)
    for old, new in DEPRECATED_KEYS.items()
    if re.search(r"\." + re.escape(old) + r"\s*=[^=]", text)
  ]


def fail(field: str, value: Any, requirement: str) -> None:
  """Raises the one-line :class:`ConfigError` of a bad field: ``config.<field>=<value>:
  <requirement> (fix it in the config file or with --config.<field>=...)``; a field with a
  deprecated name also names that (``config.<old>=<value>``), which a user may have set."""
  olds = _OLD_NAMES.get(field, [])
  alias = (
    (
      f" (deprecated name{'s' if len(olds) > 1 else ''}: "
      + ", ".join(f"config.{old}={value!r}" for old in olds)
      + ")"
    )
    if olds
    else ""
  )
  raise ConfigError(
    f"config.{field}={value!r}{alias}: {requirement} "
    f"(fix it in the config file or with --config.{field}=...)"
  )


_fail = fail


def validate_config(config: Mapping[str, Any] | ml_collections.ConfigDict) -> None:
  """Checks every field a run depends on; raises :class:`ConfigError` on the first bad one."""
  from fairjax import models  # the registry is the source of truth for model names

  CONVENTIONS, SAMPLINGS, AUGMENTS, OPTIMIZERS, CURVATURE_METHODS = (
    _owned(n) for n in ("CONVENTIONS", "SAMPLINGS", "AUGMENTS", "OPTIMIZERS", "CURVATURE_METHODS")
  )

  # NaN / inf pass most range checks below (every comparison with NaN is False) and would only
  # surface as a diverged or nonsensical run.
  for key, value in config_items(config):
    numbers = value if isinstance(value, (tuple, list)) else (value,)
    if any(isinstance(x, float) and not math.isfinite(x) for x in numbers):
      _fail(key, value, "must be finite (no nan or inf)")
  if config.fairness_convention not in CONVENTIONS:
    _fail("fairness_convention", config.fairness_convention, f"must be one of {CONVENTIONS}")
  if config.undefined_rates not in ("skip", "zero"):
    _fail("undefined_rates", config.undefined_rates, "must be 'skip' or 'zero'")

  d = config.data
  datasets = ("demo", "isic2019", "fitzpatrick17k", "fairface", "utkface", "celeba")
  if d.name not in datasets:
    _fail("data.name", d.name, f"must be one of {datasets}")
  if not isinstance(d.image_size, int) or d.image_size < 8:
    _fail("data.image_size", d.image_size, "must be an integer >= 8")
  if d.sampling not in SAMPLINGS:
    _fail("data.sampling", d.sampling, f"must be one of {SAMPLINGS}")
  if d.augment not in AUGMENTS:
    _fail("data.augment", d.augment, f"must be one of {AUGMENTS}")
  if d.name != "demo" and not d.manual_dir and not d.data_dir:
    _fail(
      "data.manual_dir",
      d.manual_dir,
      f"must point to your {d.name} files (see README, 'Bring real data')",
    )
  if (
    isinstance(d.split_fractions, str)
    or len(d.split_fractions) != 3
    or not all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in d.split_fractions)
    or abs(sum(d.split_fractions) - 1.0) > 1e-6
    or min(d.split_fractions) <= 0
  ):
    _fail(
      "data.split_fractions",
      tuple(d.split_fractions),
      "must be three positive numbers (train, validation, test) summing to 1",
    )
  if d.name == "isic2019" and d.sensitive_attribute not in ("sex", "age"):
    _fail("data.sensitive_attribute", d.sensitive_attribute, "must be 'sex' or 'age'")
  if d.name == "fitzpatrick17k" and d.label_granularity not in (114, 9, 3):
    _fail("data.label_granularity", d.label_granularity, "must be 114, 9 or 3")
  if d.unknown_skin not in ("exclude", "dark"):
    _fail("data.unknown_skin", d.unknown_skin, "must be 'exclude' or 'dark'")
  if d.name in ("fairface", "utkface", "celeba"):
    _validate_faces(d)
    from fairjax.data import faces

    if faces.is_multilabel(d.name, faces.resolve_task(d.name, d.task)):
      _check_multilabel_method(config.prune.method, "prune.method")
      for m in config.compare.methods if "compare" in config else ():
        if m in _prune_methods():
          _check_multilabel_method(m, "compare.methods")
  if d.on_bad_image not in ("skip", "error"):
    _fail("data.on_bad_image", d.on_bad_image, "must be 'skip' or 'error'")
  if d.name == "demo":
    for key in ("num_train", "num_validation", "num_test"):
      if int(d[key]) < 16:
        _fail(f"data.{key}", d[key], "must be at least 16")
    if not 0.0 < d.minority_fraction < 1.0:
      _fail("data.minority_fraction", d.minority_fraction, "must be in (0, 1)")
    if d.eval_minority_fraction is not None and not 0.0 < d.eval_minority_fraction < 1.0:
      _fail(
        "data.eval_minority_fraction",
        d.eval_minority_fraction,
        "must be in (0, 1), or None for data.minority_fraction",
      )
    if not 0.0 < d.minority_contrast <= 1.0:
      _fail("data.minority_contrast", d.minority_contrast, "must be in (0, 1]")
    if not 0.0 <= d.shortcut_strength <= 0.5:
      _fail("data.shortcut_strength", d.shortcut_strength, "must be in [0, 0.5]")
    if not 0.0 <= d.color_cue <= 1.0:
      _fail("data.color_cue", d.color_cue, "must be in [0, 1]")
    if not 0.0 <= d.minority_color_noise <= 1.0:
      _fail("data.minority_color_noise", d.minority_color_noise, "must be in [0, 1]")
    third = d.get("third_group_fraction", 0.0)
    if isinstance(third, bool) or not isinstance(third, (int, float)) or not 0.0 <= third <= 0.5:
      _fail("data.third_group_fraction", third, "must be in [0, 0.5] (0 = two groups)")
    third = d.get("third_group_fraction", 0.0)
    if isinstance(third, bool) or not isinstance(third, (int, float)) or not 0.0 <= third <= 0.5:
      _fail("data.third_group_fraction", third, "must be in [0, 0.5] (0 = two groups)")

  if d.imagenet_normalization is not None and not isinstance(d.imagenet_normalization, bool):
    _fail(
      "data.imagenet_normalization",
      d.imagenet_normalization,
      "must be True, False, or None (= True)",
    )

  if config.model.name not in models.list_models():
    _fail("model.name", config.model.name, f"must be one of {tuple(models.list_models())}")
  _validate_pretrained(config)

  t = config.train
  if not isinstance(t.epochs, int) or t.epochs < 1:
    _fail("train.epochs", t.epochs, "must be an integer >= 1")
  for key in ("batch_size", "eval_batch_size"):
    if not isinstance(t[key], int) or t[key] < 1:
      _fail(f"train.{key}", t[key], "must be an integer >= 1")
  if t.optimizer not in OPTIMIZERS:
    _fail("train.optimizer", t.optimizer, "must be 'sgd', 'adam' or 'adamw'")
  if not t.learning_rate > 0:
    _fail("train.learning_rate", t.learning_rate, "must be > 0")
  if t.schedule not in ("constant", "cosine", "step"):
    _fail("train.schedule", t.schedule, "must be 'constant', 'cosine' or 'step'")
  if t.weight_decay < 0:
    _fail("train.weight_decay", t.weight_decay, "must be >= 0")
  if t.patience is not None and t.patience < 1:
    _fail("train.patience", t.patience, "must be >= 1 (or None to disable early stopping)")

  p = config.prune
  from fairjax.pruning import api as methods_api  # lazy: importing the methods pulls in jax

  methods_api.get_method(p.method)  # ConfigError naming prune.method if unknown
  if p.target_sparsity is not None and not 0.0 < p.target_sparsity < 1.0:
    _fail(
      "prune.target_sparsity",
      p.target_sparsity,
      "must be in (0, 1), or None for the ordinary stopping rule",
    )
  if p.curvature not in CURVATURE_METHODS:
    _fail("prune.curvature", p.curvature, f"must be one of {CURVATURE_METHODS}")
  if not 0.0 < p.step_fraction < 1.0:
    _fail("prune.step_fraction", p.step_fraction, "must be in (0, 1)")
  if not 0.0 <= p.max_sparsity < 1.0:
    _fail("prune.max_sparsity", p.max_sparsity, "must be in [0, 1)")
  if not 0.0 <= p.max_accuracy_drop <= 1.0:
    _fail(
      "prune.max_accuracy_drop",
      p.max_accuracy_drop,
      "must be in [0, 1] (accuracy units, 0.03 = 3 points)",
    )
  if p.scope not in ("global", "layer"):
    _fail("prune.scope", p.scope, "must be 'global' or 'layer'")
  if p.get("report_step", "best") not in ("best", "last"):
    _fail("prune.report_step", p.report_step, "must be 'best' or 'last'")
  for key in ("max_steps", "patience", "num_batches", "batch_size", "curvature_samples"):
    if not isinstance(p[key], int) or p[key] < 1:
      _fail(f"prune.{key}", p[key], "must be an integer >= 1")
  chunk = p.curvature_chunk_size
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
    _fail(
      "prune.curvature_chunk_size",
      chunk,
      "must be an integer >= 0 (samples per curvature call; 0 = the whole batch)",
    )
  budget = p.curvature_memory_budget_bytes
  if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
    _fail(
      "prune.curvature_memory_budget_bytes",
      budget,
      "must be an integer >= 0 (bytes per curvature call, e.g. 2000000000; 0 = no budget)",
    )
  excluded = p.exclude_layers
  if isinstance(excluded, str) or not all(isinstance(x, str) and x for x in excluded):
    _fail(
      "prune.exclude_layers",
      excluded,
      "must be a tuple of module paths such as ('conv0', 'fc1'), or () to prune every layer",
    )
  retrain = p.retrain_epochs
  if retrain is not None and (
    isinstance(retrain, bool) or not isinstance(retrain, int) or retrain < 0
  ):
    _fail(
      "prune.retrain_epochs",
      retrain,
      "must be an integer >= 0 (epochs after every step), or None for the method's default",
    )
  # Every registered method checks its own settings (fairjax.pruning.api.PruneMethod.validate),
  # whichever method runs: a config file is checked whole.
  for name in methods_api.method_names():
    methods_api.get_method(name).validate(config)
  if "compare" in config:
    _validate_compare(config)

  n = config.parallel.num_devices
  if isinstance(n, bool) or not isinstance(n, int) or n < 0:
    _fail("parallel.num_devices", n, "must be an integer >= 0 (devices per process; 0 = all)")

  r = config.report
  if (
    isinstance(r.bootstrap_samples, bool)
    or not isinstance(r.bootstrap_samples, int)
    or r.bootstrap_samples < 1
  ):
    _fail("report.bootstrap_samples", r.bootstrap_samples, "must be an integer >= 1")
  if (
    isinstance(r.bootstrap_seed, bool)
    or not isinstance(r.bootstrap_seed, int)
    or r.bootstrap_seed < 0
  ):
    _fail("report.bootstrap_seed", r.bootstrap_seed, "must be an integer >= 0")
  if (
    isinstance(r.confidence, bool)
    or not isinstance(r.confidence, (int, float))
    or not 0.0 < r.confidence < 1.0
  ):
    _fail("report.confidence", r.confidence, "must be in (0, 1), e.g. 0.95")
  if not isinstance(r.plots, bool):
    _fail("report.plots", r.plots, "must be True or False")


def validate_data(config, data) -> None:
  """Checks the config against the loaded dataset (a :class:`fairjax.data.DatasetSplits`)
  before any training: what would otherwise fail only after the dense model was trained.

  Raises:
    ConfigError: naming the field, the split sizes and how to fix it.
  """
  n_train = len(data.labels["train"])
  demo = data.name == "demo"
  batch = config.train.batch_size
  if batch > n_train:
    _fail(
      "train.batch_size",
      batch,
      f"must be at most the training split's size ({n_train} samples of {data.name}), or "
      "an epoch has no full batch" + (" (or raise config.data.num_train)" if demo else ""),
    )
  names = tuple(data.group_names)
  from fairjax.pruning import api as methods_api

  methods_api.get_method(config.prune.method).validate(config, data)
  if getattr(data, "multilabel", False):
    _check_multilabel_method(config.prune.method, "prune.method")
    if config.data.sampling == "class_balanced":
      _fail(
        "data.sampling",
        config.data.sampling,
        "a multi-label task has no single class per "
        "image to balance; use 'uniform' or 'group_balanced'",
      )
  if config.prune.privileged_group and config.prune.privileged_group not in names:
    _fail(
      "prune.privileged_group",
      config.prune.privileged_group,
      f"must be a group of {data.name}, one of {names}, or '' for the group with the "
      "higher dense validation accuracy",
    )
  if config.prune.batch_size % len(names):
    _fail(
      "prune.batch_size",
      config.prune.batch_size,
      f"must be a multiple of the number of groups ({len(names)}: {names}); the "
      "group-balanced scoring batches hold as many samples of each group",
    )
  # Group-balanced batches draw from every group of the training split, and the group metrics
  # of every evaluation need every group: an absent group would end the run after training.
  for split in ("train", "validation", "test"):
    counts = [int((data.groups[split] == g).sum()) for g in range(len(names))]
    for name, count in zip(names, counts):
      if count == 0:
        hint = (
          f"raise config.data.num_{split} or the group's share "
          "(config.data.minority_fraction, config.data.eval_minority_fraction)"
          if demo
          else "change config.data.split_fractions or config.data.split_seed, or add samples "
          "of that group to the data"
        )
        raise ConfigError(
          f"the {split} split of {data.name} has no sample of group {name!r} "
          f"(group counts {dict(zip(names, counts))}); every group needs "
          f"samples in every split: {hint}"
        )
