"""Datasets: the synthetic demo, ISIC 2019, Fitzpatrick-17k and the face datasets FairFace,
UTKFace and CelebA behind one loader (design.md 6).

:func:`load_dataset` turns the ``data`` part of a run config into three random-access sources
(``train`` / ``validation`` / ``test``) whose records are ``{"image": uint8[S, S, 3],
"label": int, "group": int}`` (``group == -1``: sensitive attribute unknown), plus the names the
reports need. The input pipeline (:mod:`fairjax.data.pipeline`) batches any such source.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from fairjax.data import pipeline, synthetic

DATASETS = ("demo", "isic2019", "fitzpatrick17k", "fairface", "utkface", "celeba")
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
  """Three sources and what is known about them.

  Attributes:
    name: dataset name (one of :data:`DATASETS`).
    sources: split name -> random-access source.
    num_classes: number of classes ``C`` (multi-label: the number of attributes ``A``, one
      model output each).
    class_names: class names (length ``C``; multi-label: the attribute names).
    group_names: names of the sensitive groups (length ``G``), e.g. ``("female", "male")``.
    labels: split -> ``int32[N]`` labels (read once, without decoding images); multi-label:
      ``int32[N, A]`` in ``{0, 1}``.
    groups: split -> ``int32[N]`` group ids (``-1`` unknown).
    multilabel: True for a multi-label task (CelebA ``data.task="multilabel"``): every output
      is a sigmoid, trained with the binary cross-entropy (design.md section 1.10).
  """

  name: str
  sources: Mapping[str, Any]
  num_classes: int
  class_names: tuple[str, ...]
  group_names: tuple[str, ...]
  labels: Mapping[str, np.ndarray]
  groups: Mapping[str, np.ndarray]
  multilabel: bool = False

  @property
  def loss(self) -> str:
    """The loss of this task, as the scorers' ``loss=`` (design.md section 1.10):
    ``"sigmoid_binary_cross_entropy"`` when multi-label, else ``"softmax_cross_entropy"``."""
    return "sigmoid_binary_cross_entropy" if self.multilabel else "softmax_cross_entropy"

  @property
  def num_groups(self) -> int:
    return len(self.group_names)

  def describe(self) -> dict[str, Any]:
    """JSON-able summary for ``results.json``."""
    return {
      "name": self.name,
      "task": "multilabel" if self.multilabel else "multiclass",
      "num_classes": self.num_classes,
      "class_names": list(self.class_names),
      "group_names": list(self.group_names),
      "split_sizes": {s: int(len(self.labels[s])) for s in SPLITS},
      "num_unknown_group": {s: int(np.sum(self.groups[s] < 0)) for s in SPLITS},
      "group_counts": {
        s: {n: int(np.sum(self.groups[s] == g)) for g, n in enumerate(self.group_names)}
        for s in SPLITS
      },
    }


# The demo's optional third group (config data.third_group_fraction).
THIRD_GROUP_NAME = "other"


def _demo(cfg: Mapping[str, Any]) -> DatasetSplits:
  sizes = {
    "train": int(cfg["num_train"]),
    "validation": int(cfg["num_validation"]),
    "test": int(cfg["num_test"]),
  }
  generator = dict(
    image_size=int(cfg["image_size"]),
    minority_contrast=float(cfg.get("minority_contrast", 0.35)),
    shortcut_strength=float(cfg.get("shortcut_strength", 0.0)),
    color_cue=float(cfg.get("color_cue", 0.0)),
    minority_color_noise=float(cfg.get("minority_color_noise", 0.0)),
  )
  train_fraction = float(cfg["minority_fraction"])
  eval_fraction = cfg.get("eval_minority_fraction", None)
  eval_fraction = train_fraction if eval_fraction is None else float(eval_fraction)
  # Each split has its own derived seed (synthetic._split_seed), so generating the evaluation
  # splits with another group share changes nothing in the training split.
  arrays = synthetic.make_demo_splits(
    int(cfg["seed"]), {"train": sizes["train"]}, minority_fraction=train_fraction, **generator
  )
  arrays.update(
    synthetic.make_demo_splits(
      int(cfg["seed"]),
      {s: sizes[s] for s in ("validation", "test")},
      minority_fraction=eval_fraction,
      **generator,
    )
  )
  group_names = tuple(synthetic.DEMO_GROUP_NAMES)
  third = float(cfg.get("third_group_fraction", 0.0))
  if third > 0:
    # A third group for runs with more than two groups: a seeded share of each split's light-skin
    # samples is relabelled "other" (images unchanged); the two-group data are untouched.
    for s in SPLITS:
      group = arrays[s]["group"].copy()
      light = np.flatnonzero(group == 0)
      count = min(int(round(len(group) * third)), len(light) - 1)
      rng = np.random.default_rng([int(cfg["seed"]), SPLITS.index(s), 3])
      group[rng.choice(light, count, replace=False)] = len(group_names)
      arrays[s] = {**arrays[s], "group": group}
    group_names += (THIRD_GROUP_NAME,)
  sources = {s: pipeline.ArraySource(arrays[s]) for s in SPLITS}
  return DatasetSplits(
    name="demo",
    sources=sources,
    num_classes=len(synthetic.DEMO_CLASS_NAMES),
    class_names=tuple(synthetic.DEMO_CLASS_NAMES),
    group_names=group_names,
    labels={s: arrays[s]["label"] for s in SPLITS},
    groups={s: arrays[s]["group"] for s in SPLITS},
  )


def _face_kwargs(name: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
  """Builder options of a face dataset from the ``data`` keys of design.md section 6.5."""
  from fairjax.data import faces

  task, group = cfg.get("task", ""), cfg.get("face_group", "")
  problem = faces.check_face_options(
    name, task, group, cfg.get("celeba_attribute", faces.CELEBA_DEFAULT_ATTRIBUTE)
  )
  if problem:
    raise ValueError(f"config.data.{problem[0]}: {problem[1]}")
  if name == "fairface":
    return {
      "task": faces.resolve_task(name, task),
      "group": group,
      "validation_fraction": float(
        cfg.get("fairface_validation_fraction", faces.FAIRFACE_VALIDATION_FRACTION)
      ),
      "seed": int(cfg["split_seed"]),
    }
  if name == "utkface":
    return {
      "task": faces.resolve_task(name, task),
      "num_races": int(cfg.get("utkface_races", 4)),
      "fractions": tuple(cfg["split_fractions"]),
      "seed": int(cfg["split_seed"]),
    }
  return {
    "attribute": cfg.get("celeba_attribute", faces.CELEBA_DEFAULT_ATTRIBUTE),
    "task": faces.resolve_task(name, task),
  }


def _tfds(name: str, cfg: Mapping[str, Any], workdir: str) -> DatasetSplits:
  from fairjax.data import tfds_common  # tfds is only imported for real datasets

  data_dir = cfg.get("data_dir") or os.path.join(workdir, "tfds")
  kwargs: dict[str, Any] = {
    "fractions": tuple(cfg["split_fractions"]),
    "seed": int(cfg["split_seed"]),
  }
  if name == "isic2019":
    kwargs["attribute"] = cfg["sensitive_attribute"]
  elif name == "fitzpatrick17k":
    kwargs["label_granularity"] = int(cfg["label_granularity"])
    kwargs["unknown_skin"] = cfg["unknown_skin"]
  else:
    kwargs = _face_kwargs(name, cfg)
  sources = {
    s: tfds_common.load_source(
      name,
      s,
      manual_dir=cfg.get("manual_dir") or None,
      data_dir=data_dir,
      image_size=int(cfg["stored_image_size"]),
      on_bad_image=cfg["on_bad_image"],
      **kwargs,
    )
    for s in SPLITS
  }
  info = sources["train"].dataset_info
  multilabel = info.metadata.get("task") == "multilabel"
  # A multi-label label is a Tensor feature without class names: the builder lists them.
  class_names = tuple(info.metadata["label_names"] if multilabel else info.features["label"].names)
  group_names = tuple(info.metadata["group_names"])
  labels, groups = {}, {}
  for s in SPLITS:
    labels[s], groups[s] = pipeline.scan_labels(sources[s])
  return DatasetSplits(
    name=name,
    sources=sources,
    num_classes=len(class_names),
    class_names=class_names,
    group_names=group_names,
    labels=labels,
    groups=groups,
    multilabel=multilabel,
  )


def load_dataset(cfg: Mapping[str, Any], *, workdir: str) -> DatasetSplits:
  """Loads the dataset described by a run config's ``data`` section.

  Args:
    cfg: ``config.data`` (see ``configs/*.py``); ``cfg["name"]`` selects the dataset.
    workdir: run directory; TFDS files go to ``<workdir>/tfds`` unless ``data_dir`` is set.

  Face datasets (``fairface``, ``utkface``, ``celeba``) read ``task``, ``face_group``,
  ``fairface_validation_fraction``, ``utkface_races`` and ``celeba_attribute`` (design.md
  section 6.5); :func:`fairjax.config.validate_config` checks them first.

  Raises:
    ValueError: unknown dataset name, or face options that cannot work (e.g. an unknown
      ``data.task``).
    fairjax.data.tfds_common.DatasetNotFoundError: a real dataset is not built and its
      ``manual_dir`` is missing or incomplete (the message says where to get the files).
  """
  name = cfg["name"]
  if name == "demo":
    return _demo(cfg)
  if name in DATASETS:
    return _tfds(name, cfg, workdir)
  raise ValueError(f"config.data.name={name!r} is not one of {DATASETS}")
