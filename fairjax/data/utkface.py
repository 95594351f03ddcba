"""UTKFace as a TFDS builder written to array_record (design.md section 6.5).

Layout of the manual download directory: the folder of the "Aligned & Cropped Faces" archive,
either as ``<manual_dir>/UTKFace/`` or with the files directly in ``<manual_dir>``::

    <manual_dir>/UTKFace/<age>_<gender>_<race>_<date&time>.jpg.chip.jpg

The labels live only in the file names: ``age`` an integer, ``gender`` 0 = male, 1 = female,
``race`` 0..4 = White, Black, Asian, Indian, Others. (Names ending in plain ``.jpg`` with the same
four fields, as in the in-the-wild archive, are read too.)

Records (``tfds.data_source(...)[i]``):

- ``image``: uint8 ``(S, S, 3)``, S = ``image_size`` (shorter side resized, centre crop).
- ``label``: int, the config's task: ``race`` (4 classes White, Black, Asian, Indian with
  ``num_races=4``, the default and FairGRAPE's set-up; 5 with "Others" when ``num_races=5``) or
  ``gender`` (0 = Male, 1 = Female).
- ``group``: int64, the other attribute: gender for the race task, race (4 or 5 groups) for the
  gender task. Every kept file has both, so no ``-1``.
- ``image_id`` (the file name), ``age``, ``gender``, ``race`` (int64, race in the 0..4 coding).

With ``num_races=4`` the files of race 4 ("Others") are left out of the build whatever the task
(counted as ``skipped_label``), so that the race and gender tasks see the same images.

A name that does not carry all four fields, or carries a gender outside 0/1 or a race outside
0..4, is never guessed: the file is skipped, counted as ``skipped_row`` and its name logged and
kept in ``info.metadata["skipped"]``. Splits train / validation / test (default 60/20/20,
seed 0) are by image, stratified by (race, gender).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from fairjax.data import faces, tfds_common
from fairjax.data.tfds_common import (
  DEFAULT_FRACTIONS,
  DEFAULT_IMAGE_SIZE,
  DEFAULT_SEED,
  DatasetNotFoundError,
  PendingExample,
)

IMAGE_DIR = "UTKFace"
_NAME = re.compile(
  r"^(?P<age>\d+)_(?P<gender>\d+)_(?P<race>\d+)_(?P<date>\d+)\.jpg(?:\.chip\.jpg)?$"
)

_INSTRUCTIONS = f"""\
Download UTKFace's "Aligned & Cropped Faces" archive (https://susanqq.github.io/UTKFace/) and
unzip it into the manual_dir, so that the images are
  {IMAGE_DIR}/<age>_<gender>_<race>_<date&time>.jpg.chip.jpg
(or lie directly in the manual_dir). The labels are read from the file names.
"""


@dataclasses.dataclass(frozen=True)
class UtkFaceFile:
  """One image file and the labels of its name (``race`` in the 0..4 coding)."""

  name: str
  age: int
  gender: int
  race: int


def parse_utkface_name(name: str) -> UtkFaceFile | str:
  """The labels of a UTKFace file name, or the reason (a sentence) why they cannot be read.

  >>> parse_utkface_name("26_1_3_20170119180000000.jpg.chip.jpg")
  UtkFaceFile(name='26_1_3_20170119180000000.jpg.chip.jpg', age=26, gender=1, race=3)
  """
  m = _NAME.match(name)
  if m is None:
    fields = name.split(".jpg")[0].split("_")
    if name.endswith(".jpg") and len(fields) < 4:
      return f"the name has {len(fields)} of the 4 fields age_gender_race_date"
    return "the name is not <age>_<gender>_<race>_<date&time>.jpg[.chip.jpg]"
  gender, race = int(m["gender"]), int(m["race"])
  if gender not in (0, 1):
    return f"gender {gender} is neither 0 (male) nor 1 (female)"
  if not 0 <= race < len(faces.UTKFACE_RACES):
    return f"race {race} is outside 0..{len(faces.UTKFACE_RACES) - 1}"
  return UtkFaceFile(name=name, age=int(m["age"]), gender=gender, race=race)


def image_folder(manual_dir: str) -> str:
  """``<manual_dir>/UTKFace`` if that folder exists, else ``manual_dir`` itself."""
  nested = os.path.join(manual_dir, IMAGE_DIR)
  return nested if os.path.isdir(nested) else manual_dir


def list_utkface_files(folder: str) -> tuple[list[UtkFaceFile], list[tuple[str, str]]]:
  """Parses every file name in ``folder`` (sorted; hidden files ignored).

  Returns:
    ``(files, skipped)``: the parsed files, and ``(name, reason)`` of the names that cannot be
    read without guessing.
  """
  parsed: list[UtkFaceFile] = []
  skipped: list[tuple[str, str]] = []
  for entry in sorted(os.scandir(folder), key=lambda e: e.name):
    if entry.name.startswith(".") or not entry.is_file():
      continue
    result = parse_utkface_name(entry.name)
    if isinstance(result, str):
      skipped.append((entry.name, result))
    else:
      parsed.append(result)
  return parsed, skipped


def utkface_split_assignment(
  files: Iterable[UtkFaceFile],
  fractions: Sequence[float] = DEFAULT_FRACTIONS,
  seed: int = DEFAULT_SEED,
) -> dict[str, str]:
  """file name -> "train" / "validation" / "test", by image, stratified by (race, gender).

  A pure function of the names, fractions and seed (see
  :func:`fairjax.data.tfds_common.assign_splits`); strata are per (race, gender), so leaving out
  the "Others" files does not move any other file.
  """
  files = list(files)
  return tfds_common.assign_splits(
    {f.name: 1 for f in files}, fractions, seed, {f.name: f"{f.race}/{f.gender}" for f in files}
  )


@dataclasses.dataclass(eq=False)
class UtkFaceConfig(tfds_common.ImageBuilderConfig):
  """Adds ``task`` ("race" / "gender") and ``num_races`` (4: without "Others", or 5)."""

  task: str = "race"
  num_races: int = 4


def class_and_group_names(task: str, num_races: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """``(class names, group names)`` of a task: race with gender groups, or the reverse."""
  races = faces.UTKFACE_RACES[:num_races]
  return (races, faces.GENDER_NAMES) if task == "race" else (faces.GENDER_NAMES, races)


def make_config(
  *,
  image_size: int = DEFAULT_IMAGE_SIZE,
  task: str = "race",
  num_races: int = 4,
  fractions: Sequence[float] = DEFAULT_FRACTIONS,
  seed: int = DEFAULT_SEED,
) -> UtkFaceConfig:
  """Config ``f"{task}_{num_races}races_{image_size}"``, e.g. ``"race_4races_128"`` (plus a
  suffix unless splits are 60/20/20, seed 0)."""
  problem = faces.check_face_options("utkface", task, "")
  if problem:
    raise ValueError(problem[1])
  task = faces.resolve_task("utkface", task)
  if num_races not in faces.UTKFACE_RACE_COUNTS:
    raise ValueError(f"num_races must be one of {faces.UTKFACE_RACE_COUNTS}, got {num_races!r}")
  image_size = tfds_common.check_image_size(image_size)
  fr = tfds_common.validate_fractions(fractions)
  return UtkFaceConfig(
    name=f"{task}_{num_races}races_{image_size}" + tfds_common.split_suffix(fr, seed),
    description=(
      f"{image_size}x{image_size} images, label = {task}, "
      f"{num_races} races, splits {fr}, seed {seed}."
    ),
    image_size=image_size,
    task=task,
    num_races=int(num_races),
    fractions=fr,
    seed=int(seed),
  )


class UtkFace(tfds_common.ManualImageBuilder):
  """UTKFace aligned and cropped faces: race / gender tasks and groups (design.md section 6.5)."""

  name = "utkface"  # the data.name spelling, not TFDS's derived "utk_face"

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: stratified 60/20/20 splits, array_record."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  EXPECTED_FILES = ()
  BUILDER_CONFIGS = [
    make_config(image_size=size, task=task, num_races=n)
    for task in faces.UTKFACE_ATTRIBUTES
    for n in faces.UTKFACE_RACE_COUNTS
    for size in tfds_common.PREDEFINED_IMAGE_SIZES
  ]
  DEFAULT_BUILDER_CONFIG_NAME = f"race_4races_{DEFAULT_IMAGE_SIZE}"

  def check_manual_dir(self, manual_dir: str | os.PathLike[str] | None) -> str:
    """Also requires some ``*.jpg`` in ``<manual_dir>/UTKFace/`` or in ``manual_dir``."""
    manual_dir = super().check_manual_dir(manual_dir)
    folder = image_folder(manual_dir)
    if not any(e.name.endswith(".jpg") for e in os.scandir(folder)):
      raise DatasetNotFoundError(
        f"{self.name}: manual_dir {manual_dir!r} has no {IMAGE_DIR}/ folder with *.jpg and "
        f"no *.jpg of its own.\n" + self.MANUAL_DOWNLOAD_INSTRUCTIONS
      )
    return manual_dir

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    classes, groups = class_and_group_names(config.task, config.num_races)
    return tfds.core.DatasetInfo(
      builder=self,
      description="UTKFace aligned and cropped faces. " + (config.description or ""),
      features=tfds.features.FeaturesDict(
        {
          "image": tfds_common.image_feature(config.image_size),
          "label": tfds.features.ClassLabel(names=list(classes)),
          "group": np.int64,
          "image_id": tfds.features.Text(),
          "age": np.int64,
          "gender": np.int64,
          "race": np.int64,
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://susanqq.github.io/UTKFace/",
      citation=(
        "Zhang, Song and Qi, Age Progression/Regression by Conditional Adversarial "
        "Autoencoder, CVPR 2017."
      ),
      metadata=tfds.core.MetadataDict(
        task=config.task,
        sensitive_attribute="gender" if config.task == "race" else "race",
        group_names=list(groups),
        num_races=config.num_races,
        fractions=list(config.fractions),
        seed=config.seed,
      ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = self._manual_dir_from(dl_manager)
    config = self.builder_config
    folder = image_folder(manual_dir)
    files, skipped = list_utkface_files(folder)
    for name, reason in skipped:
      self._skip_row(name, reason)
    kept = [f for f in files if f.race < config.num_races]
    if len(kept) < len(files):
      self._stats.add("unassigned", "skipped_label", len(files) - len(kept))
      logging.warning(
        "UTKFace: left out %d files of race 'Others' (num_races=4).", len(files) - len(kept)
      )
    split_of = utkface_split_assignment(kept, config.fractions, config.seed)
    pending: dict[str, list[PendingExample]] = {}
    for f in kept:
      ids = {"race": f.race, "gender": f.gender}
      group = "gender" if config.task == "race" else "race"
      pending.setdefault(split_of[f.name], []).append(
        PendingExample(
          key=f.name,
          image_path=os.path.join(folder, f.name),
          features={
            "label": ids[config.task],
            "group": ids[group],
            "image_id": f.name,
            "age": f.age,
            **ids,
          },
        )
      )
    return self._splits_from_pending(pending)


BUILDER = UtkFace
