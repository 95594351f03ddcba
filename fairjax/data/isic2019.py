"""ISIC 2019 training set as a TFDS builder written to array_record (design.md section 6).

Layout of the manual download directory (the challenge's own file names)::

    <manual_dir>/ISIC_2019_Training_GroundTruth.csv  (image, MEL, NV, BCC, AK, BKL, DF, VASC,
                                                      SCC, UNK; one-hot floats)
    <manual_dir>/ISIC_2019_Training_Metadata.csv     (image, age_approx, anatom_site_general,
                                                      lesion_id, sex)
    <manual_dir>/ISIC_2019_Training_Input/<image>.jpg

Records (``tfds.data_source(...)[i]``):

- ``image``: uint8 ``(S, S, 3)``, S = ``image_size`` (shorter side resized, centre crop).
- ``label``: int in [0, 8), names :data:`CLASS_NAMES` in the ground-truth CSV's column order
  (so the id is the argmax of the one-hot row). UNK is never positive in the training set; a row
  with UNK = 1 or without a positive class is skipped and counted (``skipped_label``).
- ``group``: int64, the sensitive attribute of the config (:data:`GROUP_NAMES`):
  ``sex``: 0 = "female", 1 = "male", -1 = sex not recorded (384 rows; kept for training);
  ``age``: 0 = "young" (age_approx <= 55), 1 = "old" (>= 60), -1 = missing (the published
  ≤55 / ≥60 split; age_approx comes in steps of 5, so no age falls between the two).
- ``image_id`` (the ``image`` column), ``sex`` ("female" / "male" / ""), ``age_approx``
  (int64, -1 if missing), ``lesion_id`` ("" if missing), ``anatom_site_general`` (text).

Splits train / validation / test (default 60/20/20, seed 0) are made by
:func:`isic_split_assignment`: whole lesions, so no ``lesion_id`` is in two splits, stratified
by diagnosis.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from fairjax.data import tfds_common
from fairjax.data.tfds_common import (
  DEFAULT_FRACTIONS,
  DEFAULT_IMAGE_SIZE,
  DEFAULT_SEED,
  CsvFormatError,
  PendingExample,
)

GROUND_TRUTH_CSV = "ISIC_2019_Training_GroundTruth.csv"
METADATA_CSV = "ISIC_2019_Training_Metadata.csv"
IMAGE_DIR = "ISIC_2019_Training_Input"

CLASS_NAMES: tuple[str, ...] = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
UNKNOWN_CLASS = "UNK"
# Sensitive attribute -> group names, indexed by group id.
GROUP_NAMES: dict[str, tuple[str, ...]] = {"sex": ("female", "male"), "age": ("young", "old")}
YOUNG_MAX_AGE = 55
OLD_MIN_AGE = 60

_METADATA_COLUMNS = ("image", "age_approx", "lesion_id", "sex")

_INSTRUCTIONS = f"""\
Download the ISIC 2019 challenge training data (https://challenge.isic-archive.com/data/#2019):
the "Training Data" images, the "Training Metadata" CSV and the "Training Ground Truth" CSV.
Put them into one folder (the manual_dir) as
  {GROUND_TRUTH_CSV}
  {METADATA_CSV}
  {IMAGE_DIR}/<image>.jpg   (the unzipped image archive; <image> is the CSV 'image' column)
"""


@dataclasses.dataclass(frozen=True)
class IsicRow:
  """One ground-truth row joined with its metadata row.

  ``label`` is the index into :data:`CLASS_NAMES`, or ``None`` for UNK / no positive class.
  ``age_approx`` is -1 when missing; ``sex`` and ``lesion_id`` are "" when missing.
  """

  image: str
  label: int | None
  age_approx: int
  sex: str
  lesion_id: str
  anatom_site_general: str
  line: int  # Line in the ground-truth CSV, for messages.


def read_isic_csvs(
  ground_truth_csv: str | os.PathLike[str], metadata_csv: str | os.PathLike[str]
) -> list[IsicRow]:
  """Parses and joins the two ISIC 2019 CSVs (stdlib csv), in ground-truth order.

  Raises:
    CsvFormatError: naming the file, line and field of a malformed row (missing column, a
      one-hot cell that is not 0/1, two positive classes, a non-numeric age, an unknown sex, a
      duplicate image, or an image without a metadata row).
  """
  gt_columns = ("image",) + CLASS_NAMES + (UNKNOWN_CLASS,)
  meta_by_image: dict[str, tuple[int, dict[str, str]]] = {}
  for line, row in tfds_common.read_csv_rows(metadata_csv, _METADATA_COLUMNS):
    if row["image"] in meta_by_image:
      raise CsvFormatError(metadata_csv, line, "image", f"duplicate image {row['image']!r}")
    meta_by_image[row["image"]] = (line, row)

  rows: list[IsicRow] = []
  seen: set[str] = set()
  for line, row in tfds_common.read_csv_rows(ground_truth_csv, gt_columns):
    image = row["image"]
    if not image:
      raise CsvFormatError(ground_truth_csv, line, "image", "empty image name")
    if image in seen:
      raise CsvFormatError(ground_truth_csv, line, "image", f"duplicate image {image!r}")
    seen.add(image)
    positives = [
      c
      for c in CLASS_NAMES
      if tfds_common.parse_one_hot(row[c], path=ground_truth_csv, line=line, field=c)
    ]
    unknown = tfds_common.parse_one_hot(
      row[UNKNOWN_CLASS], path=ground_truth_csv, line=line, field=UNKNOWN_CLASS
    )
    if len(positives) > 1:
      raise CsvFormatError(
        ground_truth_csv, line, positives[1], f"several positive classes {positives}"
      )
    label = CLASS_NAMES.index(positives[0]) if positives and not unknown else None

    if image not in meta_by_image:
      raise CsvFormatError(
        ground_truth_csv, line, "image", f"no row for {image!r} in {metadata_csv}"
      )
    meta_line, meta = meta_by_image[image]
    age = tfds_common.parse_int(
      meta["age_approx"], path=metadata_csv, line=meta_line, field="age_approx", missing=-1
    )
    if age < -1:
      raise CsvFormatError(metadata_csv, meta_line, "age_approx", f"negative age {age}")
    sex = meta["sex"].lower()
    if sex not in ("", *GROUP_NAMES["sex"]):
      raise CsvFormatError(
        metadata_csv, meta_line, "sex", f"expected female, male or empty, got {meta['sex']!r}"
      )
    rows.append(
      IsicRow(
        image=image,
        label=label,
        age_approx=age,
        sex=sex,
        lesion_id=meta["lesion_id"],
        anatom_site_general=meta.get("anatom_site_general", ""),
        line=line,
      )
    )
  return rows


def sex_group(sex: str) -> int:
  """0 = female, 1 = male, -1 = not recorded."""
  return GROUP_NAMES["sex"].index(sex) if sex in GROUP_NAMES["sex"] else -1


def age_group(age_approx: int) -> int:
  """0 = young (<= 55), 1 = old (>= 60), -1 = missing or in between (published split)."""
  if age_approx < 0:
    return -1
  if age_approx <= YOUNG_MAX_AGE:
    return 0
  return 1 if age_approx >= OLD_MIN_AGE else -1


def group_of(row: IsicRow, attribute: str) -> int:
  """Group id of ``row`` for the sensitive ``attribute`` ("sex" or "age")."""
  if attribute == "sex":
    return sex_group(row.sex)
  if attribute == "age":
    return age_group(row.age_approx)
  raise ValueError(f"unknown ISIC attribute {attribute!r}; expected one of {sorted(GROUP_NAMES)}")


def _field(row: Mapping[str, Any] | IsicRow, name: str) -> Any:
  return row.get(name) if isinstance(row, Mapping) else getattr(row, name, None)


def isic_split_assignment(
  metadata_rows: Iterable[Mapping[str, Any] | IsicRow],
  fractions: Sequence[float] = DEFAULT_FRACTIONS,
  seed: int = DEFAULT_SEED,
) -> dict[str, str]:
  """Assigns every image to "train" / "validation" / "test", keeping lesions whole.

  A unit is a ``lesion_id`` (all its images together) or, without one, the image alone. When
  the rows carry a ``label`` (e.g. :class:`IsicRow`), units are stratified by it (a lesion's
  stratum is the smallest label among its images), so class ratios hold in every split. The
  result is a pure function of the rows' ids/labels, ``fractions`` and ``seed``
  (see :func:`fairjax.data.tfds_common.assign_splits`).

  Args:
    metadata_rows: mappings (e.g. ``csv.DictReader`` rows of the metadata CSV) or
      :class:`IsicRow`, with ``image`` and ``lesion_id`` ("" or None when absent).
    fractions: (train, validation, test), summing to 1.
    seed: split seed.

  Returns:
    image id -> split name.
  """
  unit_of_image: dict[str, str] = {}
  sizes: dict[str, int] = {}
  labels: dict[str, list[int]] = {}
  for row in metadata_rows:
    image, lesion = _field(row, "image"), _field(row, "lesion_id") or ""
    if image in unit_of_image:
      raise ValueError(f"isic_split_assignment: duplicate image {image!r}")
    # Prefixes keep a lesion id and an image id from ever colliding.
    unit = f"lesion:{lesion}" if lesion else f"image:{image}"
    unit_of_image[image] = unit
    sizes[unit] = sizes.get(unit, 0) + 1
    label = _field(row, "label")
    labels.setdefault(unit, [])
    if label is not None:
      labels[unit].append(int(label))
  strata = {u: (f"{min(ls):03d}" if ls else "") for u, ls in labels.items()}
  by_unit = tfds_common.assign_splits(sizes, fractions, seed, strata)
  return {image: by_unit[unit] for image, unit in unit_of_image.items()}


@dataclasses.dataclass(eq=False)
class Isic2019Config(tfds_common.ImageBuilderConfig):
  """Adds ``attribute``: the sensitive attribute stored in ``group`` ("sex" or "age")."""

  attribute: str = "sex"


def make_config(
  *,
  image_size: int = DEFAULT_IMAGE_SIZE,
  attribute: str = "sex",
  fractions: Sequence[float] = DEFAULT_FRACTIONS,
  seed: int = DEFAULT_SEED,
) -> Isic2019Config:
  """Config ``f"{attribute}_{image_size}"`` (+ a suffix unless splits are 60/20/20, seed 0)."""
  if attribute not in GROUP_NAMES:
    raise ValueError(f"attribute must be one of {sorted(GROUP_NAMES)}, got {attribute!r}")
  image_size = tfds_common.check_image_size(image_size)
  fr = tfds_common.validate_fractions(fractions)
  return Isic2019Config(
    name=f"{attribute}_{image_size}" + tfds_common.split_suffix(fr, seed),
    description=(
      f"{image_size}x{image_size} images, group = {attribute} {GROUP_NAMES[attribute]}, "
      f"splits {fr} by lesion, seed {seed}."
    ),
    image_size=image_size,
    attribute=attribute,
    fractions=fr,
    seed=int(seed),
  )


class Isic2019(tfds_common.ManualImageBuilder):
  """ISIC 2019 training images with 8 diagnoses and sex / age groups (design.md section 6)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: lesion-wise 60/20/20 splits, array_record."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  EXPECTED_FILES = (GROUND_TRUTH_CSV, METADATA_CSV, IMAGE_DIR)
  BUILDER_CONFIGS = [
    make_config(image_size=size, attribute=attribute)
    for attribute in ("sex", "age")
    for size in tfds_common.PREDEFINED_IMAGE_SIZES
  ]
  DEFAULT_BUILDER_CONFIG_NAME = f"sex_{DEFAULT_IMAGE_SIZE}"

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        "ISIC 2019 dermoscopy training set: 25,331 images, 8 diagnoses, sex / age "
        "sensitive groups. " + (config.description or "")
      ),
      features=tfds.features.FeaturesDict(
        {
          "image": tfds_common.image_feature(config.image_size),
          "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
          "group": np.int64,
          "image_id": tfds.features.Text(),
          "sex": tfds.features.Text(),
          "age_approx": np.int64,
          "lesion_id": tfds.features.Text(),
          "anatom_site_general": tfds.features.Text(),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://challenge.isic-archive.com/data/#2019",
      citation=(
        "Tschandl et al., The HAM10000 dataset, Sci. Data 5, 2018; Codella et al., ISIC 2017 "
        "challenge, ISBI 2018; Combalia et al., BCN20000, arXiv:1908.02288, 2019."
      ),
      metadata=tfds.core.MetadataDict(
        sensitive_attribute=config.attribute,
        group_names=list(GROUP_NAMES[config.attribute]),
        fractions=list(config.fractions),
        seed=config.seed,
      ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = self._manual_dir_from(dl_manager)
    config = self.builder_config
    rows = read_isic_csvs(
      os.path.join(manual_dir, GROUND_TRUTH_CSV), os.path.join(manual_dir, METADATA_CSV)
    )
    labelled = [r for r in rows if r.label is not None]
    if len(labelled) < len(rows):
      self._stats.add("unassigned", "skipped_label", len(rows) - len(labelled))
      logging.warning(
        "ISIC 2019: skipped %d rows with UNK or no positive class.", len(rows) - len(labelled)
      )
    split_of = isic_split_assignment(labelled, config.fractions, config.seed)
    pending: dict[str, list[PendingExample]] = {}
    for r in labelled:
      pending.setdefault(split_of[r.image], []).append(
        PendingExample(
          key=r.image,
          image_path=os.path.join(manual_dir, IMAGE_DIR, f"{r.image}.jpg"),
          features={
            "label": r.label,
            "group": group_of(r, config.attribute),
            "image_id": r.image,
            "sex": r.sex,
            "age_approx": r.age_approx,
            "lesion_id": r.lesion_id,
            "anatom_site_general": r.anatom_site_general,
          },
        )
      )
    return self._splits_from_pending(pending)


BUILDER = Isic2019
