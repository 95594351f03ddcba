"""FairFace as a TFDS builder written to array_record (design.md section 6.5).

Layout of the manual download directory (the dataset's own file names)::

    <manual_dir>/fairface_label_train.csv   file, age, gender, race, service_test
    <manual_dir>/fairface_label_val.csv     (same columns)
    <manual_dir>/train/<n>.jpg              the image archive unzipped: ``file`` is relative to
    <manual_dir>/val/<n>.jpg                <manual_dir>, e.g. "train/1.jpg"

Records (``tfds.data_source(...)[i]``):

- ``image``: uint8 ``(S, S, 3)``, S = ``image_size`` (shorter side resized, centre crop).
- ``label``: int, the config's task: ``race`` (7 classes,
  :data:`~fairjax.data.faces.FAIRFACE_RACES`), ``gender`` (2,
  :data:`~fairjax.data.faces.GENDER_NAMES`) or ``age`` (9 bins,
  :data:`~fairjax.data.faces.FAIRFACE_AGES`).
- ``group``: int64, the config's sensitive attribute (one of the other two; by default gender
  for race and age, race for gender), ids as above. Every row has all three, so no ``-1``.
- ``image_id`` (the ``file`` column), ``race``, ``gender``, ``age`` (int64 ids of all three),
  ``service_test`` (bool: the dataset's balanced subset flag).

Splits: ``test`` is the official ``fairface_label_val.csv``; ``validation`` is a seeded share
(default 10 %, seed 0) of ``fairface_label_train.csv``, stratified by (race, gender, age), so it
does not depend on the task; ``train`` is the rest.

Malformed rows (a wrong field count, an unknown race / gender / age value, an empty or duplicate
``file``) raise :class:`~fairjax.data.errors.CsvFormatError` naming the file, line and field, as
ISIC 2019's builder does: FairFace's CSVs are regular, so a bad row means a damaged download.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from fairjax.data import faces, tfds_common
from fairjax.data.tfds_common import (
  DEFAULT_IMAGE_SIZE,
  DEFAULT_SEED,
  CsvFormatError,
  PendingExample,
)

TRAIN_CSV = "fairface_label_train.csv"
VAL_CSV = "fairface_label_val.csv"
COLUMNS = ("file", "age", "gender", "race", "service_test")

# Attribute -> names indexed by id.
NAMES: dict[str, tuple[str, ...]] = {
  "race": faces.FAIRFACE_RACES,
  "gender": faces.GENDER_NAMES,
  "age": faces.FAIRFACE_AGES,
}

_INSTRUCTIONS = f"""\
Download FairFace (https://github.com/joojs/fairface): the image archive (either padding) and the
two label CSVs. Unzip the images so that the CSVs' 'file' paths resolve inside one folder (the
manual_dir):
  {TRAIN_CSV}
  {VAL_CSV}
  train/<n>.jpg
  val/<n>.jpg
"""


@dataclasses.dataclass(frozen=True)
class FairFaceRow:
  """One CSV row with attribute ids (indices into :data:`NAMES`)."""

  file: str
  race: int
  gender: int
  age: int
  service_test: bool
  line: int


def read_fairface_csv(path: str | os.PathLike[str]) -> list[FairFaceRow]:
  """Parses one FairFace label CSV (stdlib csv), in file order.

  Raises:
    CsvFormatError: naming the file, line and field of a malformed row (missing column, wrong
      field count, empty, duplicate or absolute ``file`` or one with ``..``, unknown race / gender / age, ``service_test``
      other than True / False).
  """
  rows: list[FairFaceRow] = []
  seen: set[str] = set()
  for line, row in tfds_common.read_csv_rows(path, COLUMNS):
    file = row["file"]
    if not file:
      raise CsvFormatError(path, line, "file", "empty file name")
    if file in seen:
      raise CsvFormatError(path, line, "file", f"duplicate file {file!r}")
    parts = file.split("/")
    if file.startswith("/") or "\\" in file or ".." in parts:
      raise CsvFormatError(
        path, line, "file", f"{file!r} is not a path inside the image root such as 'train/1.jpg'"
      )
    seen.add(file)
    ids = {}
    for attribute, names in NAMES.items():
      if row[attribute] not in names:
        raise CsvFormatError(
          path, line, attribute, f"unknown {attribute} {row[attribute]!r}; expected one of {names}"
        )
      ids[attribute] = names.index(row[attribute])
    service = row["service_test"].lower()
    if service not in ("true", "false"):
      raise CsvFormatError(
        path, line, "service_test", f"expected True or False, got {row['service_test']!r}"
      )
    rows.append(FairFaceRow(file=file, service_test=service == "true", line=line, **ids))
  return rows


def fairface_split_assignment(
  train_rows: Sequence[FairFaceRow],
  validation_fraction: float = faces.FAIRFACE_VALIDATION_FRACTION,
  seed: int = DEFAULT_SEED,
) -> dict[str, str]:
  """file -> "train" or "validation" for the rows of the official training CSV.

  Stratified by (race, gender, age) with :func:`fairjax.data.tfds_common.assign_splits`, so the
  assignment is a pure function of the rows' files and attributes, the fraction and the seed.
  """
  f = float(validation_fraction)
  if not 0.0 < f < 1.0:
    raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
  sizes = {r.file: 1 for r in train_rows}
  strata = {r.file: f"{r.race}/{r.gender}/{r.age}" for r in train_rows}
  split = tfds_common.assign_splits(sizes, (1.0 - f, f, 0.0), seed, strata)
  # A zero test fraction can still yield "test" where (1 - f) + f rounds below 1.
  return {k: "train" if s == "train" else "validation" for k, s in split.items()}


@dataclasses.dataclass(eq=False)
class FairFaceConfig(tfds_common.ImageBuilderConfig):
  """Adds ``task`` (the label), ``group`` (the sensitive attribute), ``validation_fraction``."""

  task: str = "race"
  group: str = "gender"
  validation_fraction: float = faces.FAIRFACE_VALIDATION_FRACTION


def make_config(
  *,
  image_size: int = DEFAULT_IMAGE_SIZE,
  task: str = "race",
  group: str = "",
  validation_fraction: float = faces.FAIRFACE_VALIDATION_FRACTION,
  seed: int = DEFAULT_SEED,
) -> FairFaceConfig:
  """Config ``f"{task}_{group}_{image_size}"``, e.g. ``"race_gender_128"`` (plus
  ``"_val<percent>_seed<seed>"`` unless the validation share is 10 % and the seed 0).

  ``group=""`` picks the task's default (:func:`fairjax.data.faces.resolve_group`).
  """
  problem = faces.check_face_options("fairface", task, group)
  if problem:
    raise ValueError(problem[1])
  task = faces.resolve_task("fairface", task)
  group = faces.resolve_group("fairface", task, group)
  image_size = tfds_common.check_image_size(image_size)
  f = float(validation_fraction)
  if not 0.0 < f < 1.0:
    raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
  suffix = (
    ""
    if (f, int(seed)) == (faces.FAIRFACE_VALIDATION_FRACTION, DEFAULT_SEED)
    else f"_val{100 * f:g}_seed{int(seed)}"
  )
  return FairFaceConfig(
    name=f"{task}_{group}_{image_size}" + suffix,
    description=(
      f"{image_size}x{image_size} images, label = {task}, group = {group}; "
      f"validation = {f:g} of train (seed {seed}), test = official val."
    ),
    image_size=image_size,
    task=task,
    group=group,
    validation_fraction=f,
    seed=int(seed),
    fractions=(1.0 - f, f, 0.0),
  )


class FairFace(tfds_common.ManualImageBuilder):
  """FairFace face images: race / gender / age tasks and groups (design.md section 6.5)."""

  name = "fairface"  # the data.name spelling, not TFDS's derived "fair_face"

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: official val as test, seeded validation split."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  EXPECTED_FILES = (TRAIN_CSV, VAL_CSV, "train", "val")
  BUILDER_CONFIGS = [
    make_config(image_size=size, task=task)
    for task in faces.FAIRFACE_ATTRIBUTES
    for size in tfds_common.PREDEFINED_IMAGE_SIZES
  ]
  DEFAULT_BUILDER_CONFIG_NAME = f"race_gender_{DEFAULT_IMAGE_SIZE}"

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
      builder=self,
      description="FairFace: faces balanced over 7 race groups. " + (config.description or ""),
      features=tfds.features.FeaturesDict(
        {
          "image": tfds_common.image_feature(config.image_size),
          "label": tfds.features.ClassLabel(names=list(NAMES[config.task])),
          "group": np.int64,
          "image_id": tfds.features.Text(),
          "race": np.int64,
          "gender": np.int64,
          "age": np.int64,
          "service_test": np.bool_,
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://github.com/joojs/fairface",
      citation=(
        "Karkkainen and Joo, FairFace: Face Attribute Dataset for Balanced Race, "
        "Gender, and Age, WACV 2021."
      ),
      metadata=tfds.core.MetadataDict(
        task=config.task,
        sensitive_attribute=config.group,
        group_names=list(NAMES[config.group]),
        validation_fraction=config.validation_fraction,
        seed=config.seed,
      ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = self._manual_dir_from(dl_manager)
    config = self.builder_config
    train_rows = read_fairface_csv(os.path.join(manual_dir, TRAIN_CSV))
    test_rows = read_fairface_csv(os.path.join(manual_dir, VAL_CSV))
    in_train = {r.file for r in train_rows}
    for r in test_rows:
      if r.file in in_train:
        raise CsvFormatError(
          os.path.join(manual_dir, VAL_CSV),
          r.line,
          "file",
          f"{r.file!r} is also a row of {TRAIN_CSV}",
        )
    split_of = fairface_split_assignment(train_rows, config.validation_fraction, config.seed)
    split_of.update({r.file: "test" for r in test_rows})
    pending: dict[str, list[PendingExample]] = {}
    for r in (*train_rows, *test_rows):
      ids: dict[str, Any] = {"race": r.race, "gender": r.gender, "age": r.age}
      pending.setdefault(split_of[r.file], []).append(
        PendingExample(
          key=r.file,
          image_path=os.path.join(manual_dir, *r.file.split("/")),
          features={
            "label": ids[config.task],
            "group": ids[config.group],
            "image_id": r.file,
            "service_test": r.service_test,
            **ids,
          },
        )
      )
    return self._splits_from_pending(pending)


BUILDER = FairFace
