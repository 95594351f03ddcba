"""Fitzpatrick-17k as a TFDS builder written to array_record (design.md section 6).

Layout of the manual download directory::

    <manual_dir>/fitzpatrick17k.csv     md5hash, fitzpatrick_scale, fitzpatrick_centaur, label,
                                        nine_partition_label, three_partition_label, qc, url, ...
    <manual_dir>/images/<md5hash>.jpg   (fairjax's choice of folder name: the dataset ships no
                                        images, only URLs; images lying directly in
                                        <manual_dir>/<md5hash>.jpg are accepted too)

Records (``tfds.data_source(...)[i]``):

- ``image``: uint8 ``(S, S, 3)``, S = ``image_size`` (shorter side resized, centre crop).
- ``label``: int, index into the alphabetically sorted names of the config's granularity:
  114 (:data:`LABEL_NAMES`, column ``label``), 9 (:data:`NINE_PARTITION_NAMES`,
  ``nine_partition_label``) or 3 (:data:`THREE_PARTITION_NAMES`, ``three_partition_label``).
- ``group``: int64, skin type: 0 = "light" (Fitzpatrick 1-3), 1 = "dark" (4-6); the 565 rows
  with type -1 get -1 with ``unknown_skin="exclude"`` (default: kept for training, left out of
  group metrics) or 1 with ``unknown_skin="dark"`` (the choice of one public code base).
- ``image_id`` (md5hash), ``fitzpatrick_scale`` (int64, -1..6), ``fitzpatrick_centaur``
  (int64, -1 if absent).

Splits train / validation / test (default 60/20/20, seed 0) are by image, stratified by the
114-class label, so the same image sits in the same split whatever the label granularity.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from fairjax.data import tfds_common
from fairjax.data.tfds_common import (
  DEFAULT_FRACTIONS,
  DEFAULT_IMAGE_SIZE,
  DEFAULT_SEED,
  CsvFormatError,
  DatasetNotFoundError,
  PendingExample,
)

CSV_NAME = "fitzpatrick17k.csv"
IMAGE_DIR = "images"

# Class names, sorted alphabetically so class ids are deterministic; they are fixed here (taken
# from the public CSV) because TFDS needs them before any file is read. A CSV label outside these
# lists is reported as a format error.
LABEL_NAMES: tuple[str, ...] = (
  "acanthosis nigricans",
  "acne",
  "acne vulgaris",
  "acquired autoimmune bullous diseaseherpes gestationis",
  "acrodermatitis enteropathica",
  "actinic keratosis",
  "allergic contact dermatitis",
  "aplasia cutis",
  "basal cell carcinoma",
  "basal cell carcinoma morpheiform",
  "becker nevus",
  "behcets disease",
  "calcinosis cutis",
  "cheilitis",
  "congenital nevus",
  "dariers disease",
  "dermatofibroma",
  "dermatomyositis",
  "disseminated actinic porokeratosis",
  "drug eruption",
  "drug induced pigmentary changes",
  "dyshidrotic eczema",
  "eczema",
  "ehlers danlos syndrome",
  "epidermal nevus",
  "epidermolysis bullosa",
  "erythema annulare centrifigum",
  "erythema elevatum diutinum",
  "erythema multiforme",
  "erythema nodosum",
  "factitial dermatitis",
  "fixed eruptions",
  "folliculitis",
  "fordyce spots",
  "granuloma annulare",
  "granuloma pyogenic",
  "hailey hailey disease",
  "halo nevus",
  "hidradenitis",
  "ichthyosis vulgaris",
  "incontinentia pigmenti",
  "juvenile xanthogranuloma",
  "kaposi sarcoma",
  "keloid",
  "keratosis pilaris",
  "langerhans cell histiocytosis",
  "lentigo maligna",
  "lichen amyloidosis",
  "lichen planus",
  "lichen simplex",
  "livedo reticularis",
  "lupus erythematosus",
  "lupus subacute",
  "lyme disease",
  "lymphangioma",
  "malignant melanoma",
  "melanoma",
  "milia",
  "mucinosis",
  "mucous cyst",
  "mycosis fungoides",
  "myiasis",
  "naevus comedonicus",
  "necrobiosis lipoidica",
  "nematode infection",
  "neurodermatitis",
  "neurofibromatosis",
  "neurotic excoriations",
  "neutrophilic dermatoses",
  "nevocytic nevus",
  "nevus sebaceous of jadassohn",
  "papilomatosis confluentes and reticulate",
  "paronychia",
  "pediculosis lids",
  "perioral dermatitis",
  "photodermatoses",
  "pilar cyst",
  "pilomatricoma",
  "pityriasis lichenoides chronica",
  "pityriasis rosea",
  "pityriasis rubra pilaris",
  "porokeratosis actinic",
  "porokeratosis of mibelli",
  "porphyria",
  "port wine stain",
  "prurigo nodularis",
  "psoriasis",
  "pustular psoriasis",
  "pyogenic granuloma",
  "rhinophyma",
  "rosacea",
  "sarcoidosis",
  "scabies",
  "scleroderma",
  "scleromyxedema",
  "seborrheic dermatitis",
  "seborrheic keratosis",
  "solid cystic basal cell carcinoma",
  "squamous cell carcinoma",
  "stasis edema",
  "stevens johnson syndrome",
  "striae",
  "sun damaged skin",
  "superficial spreading melanoma ssm",
  "syringoma",
  "telangiectases",
  "tick bite",
  "tuberous sclerosis",
  "tungiasis",
  "urticaria",
  "urticaria pigmentosa",
  "vitiligo",
  "xanthomas",
  "xeroderma pigmentosum",
)
NINE_PARTITION_NAMES: tuple[str, ...] = (
  "benign dermal",
  "benign epidermal",
  "benign melanocyte",
  "genodermatoses",
  "inflammatory",
  "malignant cutaneous lymphoma",
  "malignant dermal",
  "malignant epidermal",
  "malignant melanoma",
)
THREE_PARTITION_NAMES: tuple[str, ...] = (
  "benign",
  "malignant",
  "non-neoplastic",
)

# Label granularity -> (CSV column, class names).
GRANULARITIES: dict[int, tuple[str, tuple[str, ...]]] = {
  114: ("label", LABEL_NAMES),
  9: ("nine_partition_label", NINE_PARTITION_NAMES),
  3: ("three_partition_label", THREE_PARTITION_NAMES),
}
GROUP_NAMES: tuple[str, str] = ("light", "dark")
UNKNOWN_SKIN_CHOICES: tuple[str, ...] = ("exclude", "dark")

_REQUIRED_COLUMNS = (
  "md5hash",
  "fitzpatrick_scale",
  "label",
  "nine_partition_label",
  "three_partition_label",
)

_INSTRUCTIONS = f"""\
Fitzpatrick-17k ships as a CSV of image URLs: download {CSV_NAME} from
https://github.com/mattgroh/fitzpatrick17k, then fetch every row's image from its 'url' column
(respecting the source sites' terms) and save it as <md5hash>.jpg. Expected layout:
  {CSV_NAME}
  {IMAGE_DIR}/<md5hash>.jpg   (or <md5hash>.jpg directly in the manual_dir)
Rows whose image could not be fetched are skipped and counted.
"""


@dataclasses.dataclass(frozen=True)
class FitzpatrickRow:
  """One CSV row; labels are the CSV strings, ``fitzpatrick_centaur`` is -1 when absent."""

  md5hash: str
  fitzpatrick_scale: int
  fitzpatrick_centaur: int
  label: str
  nine_partition_label: str
  three_partition_label: str
  line: int


def read_fitzpatrick_csv(path: str | os.PathLike[str]) -> list[FitzpatrickRow]:
  """Parses ``fitzpatrick17k.csv`` (stdlib csv), in file order.

  Raises:
    CsvFormatError: naming the file, line and field of a malformed row (missing column, empty or
      duplicate md5hash, a skin type outside -1, 1..6, a label outside the known names).
  """
  rows: list[FitzpatrickRow] = []
  seen: set[str] = set()
  for line, row in tfds_common.read_csv_rows(path, _REQUIRED_COLUMNS):
    md5 = row["md5hash"]
    if not md5:
      raise CsvFormatError(path, line, "md5hash", "empty md5hash")
    if md5 in seen:
      raise CsvFormatError(path, line, "md5hash", f"duplicate md5hash {md5!r}")
    seen.add(md5)
    scales = {}
    for field in ("fitzpatrick_scale", "fitzpatrick_centaur"):
      if field == "fitzpatrick_centaur" and row.get(field, "") == "":
        scales[field] = -1  # Optional column.
        continue
      scales[field] = tfds_common.parse_int(row[field], path=path, line=line, field=field)
      if scales[field] not in (-1, 1, 2, 3, 4, 5, 6):
        raise CsvFormatError(path, line, field, f"expected -1 or 1..6, got {row[field]!r}")
    for column, names in GRANULARITIES.values():
      if row[column] not in names:
        raise CsvFormatError(path, line, column, f"unknown class {row[column]!r}")
    rows.append(
      FitzpatrickRow(
        md5hash=md5,
        line=line,
        label=row["label"],
        nine_partition_label=row["nine_partition_label"],
        three_partition_label=row["three_partition_label"],
        **scales,
      )
    )
  return rows


def skin_group(fitzpatrick_scale: int, unknown_skin: str = "exclude") -> int:
  """0 = light (1-3), 1 = dark (4-6); type -1 -> -1 ("exclude") or 1 ("dark")."""
  if unknown_skin not in UNKNOWN_SKIN_CHOICES:
    raise ValueError(f"unknown_skin must be one of {UNKNOWN_SKIN_CHOICES}, got {unknown_skin!r}")
  if 1 <= fitzpatrick_scale <= 3:
    return 0
  if 4 <= fitzpatrick_scale <= 6:
    return 1
  return 1 if unknown_skin == "dark" else -1


def _field(row: Mapping[str, Any] | FitzpatrickRow, name: str) -> Any:
  return row.get(name) if isinstance(row, Mapping) else getattr(row, name)


def fitzpatrick_split_assignment(
  rows: Iterable[Mapping[str, Any] | FitzpatrickRow],
  fractions: Sequence[float] = DEFAULT_FRACTIONS,
  seed: int = DEFAULT_SEED,
) -> dict[str, str]:
  """md5hash -> "train" / "validation" / "test", by image, stratified by the 114-class label.

  Pure function of the rows' ``md5hash`` / ``label``, ``fractions`` and ``seed`` (see
  :func:`fairjax.data.tfds_common.assign_splits`); accepts CSV dict rows or
  :class:`FitzpatrickRow`.
  """
  sizes: dict[str, int] = {}
  strata: dict[str, str] = {}
  for row in rows:
    md5 = _field(row, "md5hash")
    if md5 in sizes:
      raise ValueError(f"fitzpatrick_split_assignment: duplicate md5hash {md5!r}")
    sizes[md5] = 1
    strata[md5] = _field(row, "label") or ""
  return tfds_common.assign_splits(sizes, fractions, seed, strata)


@dataclasses.dataclass(eq=False)
class Fitzpatrick17kConfig(tfds_common.ImageBuilderConfig):
  """Adds ``label_granularity`` (114 / 9 / 3) and ``unknown_skin`` ("exclude" / "dark")."""

  label_granularity: int = 114
  unknown_skin: str = "exclude"


def make_config(
  *,
  image_size: int = DEFAULT_IMAGE_SIZE,
  label_granularity: int = 114,
  unknown_skin: str = "exclude",
  fractions: Sequence[float] = DEFAULT_FRACTIONS,
  seed: int = DEFAULT_SEED,
) -> Fitzpatrick17kConfig:
  """Config named e.g. ``"114classes_exclude_128"`` (plus a suffix for non-default splits)."""
  if label_granularity not in GRANULARITIES:
    raise ValueError(
      f"label_granularity must be one of {sorted(GRANULARITIES)}, got {label_granularity!r}"
    )
  if unknown_skin not in UNKNOWN_SKIN_CHOICES:
    raise ValueError(f"unknown_skin must be one of {UNKNOWN_SKIN_CHOICES}, got {unknown_skin!r}")
  image_size = tfds_common.check_image_size(image_size)
  fr = tfds_common.validate_fractions(fractions)
  return Fitzpatrick17kConfig(
    name=f"{label_granularity}classes_{unknown_skin}_{image_size}"
    + tfds_common.split_suffix(fr, seed),
    description=(
      f"{image_size}x{image_size} images, {label_granularity} classes "
      f"({GRANULARITIES[label_granularity][0]}), skin type -1 -> {unknown_skin}, "
      f"splits {fr}, seed {seed}."
    ),
    image_size=image_size,
    label_granularity=label_granularity,
    unknown_skin=unknown_skin,
    fractions=fr,
    seed=int(seed),
  )


def image_path(manual_dir: str, md5hash: str) -> str:
  """``<manual_dir>/images/<md5hash>.jpg``, or ``<manual_dir>/<md5hash>.jpg`` if only that exists."""
  preferred = os.path.join(manual_dir, IMAGE_DIR, f"{md5hash}.jpg")
  fallback = os.path.join(manual_dir, f"{md5hash}.jpg")
  return fallback if not os.path.exists(preferred) and os.path.exists(fallback) else preferred


class Fitzpatrick17k(tfds_common.ManualImageBuilder):
  """Fitzpatrick-17k clinical images, 114 / 9 / 3 classes, light / dark skin groups."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: stratified 60/20/20 splits, array_record."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  EXPECTED_FILES = (CSV_NAME,)
  BUILDER_CONFIGS = [
    make_config(image_size=size, label_granularity=g, unknown_skin=u)
    for g in GRANULARITIES
    for u in UNKNOWN_SKIN_CHOICES
    for size in tfds_common.PREDEFINED_IMAGE_SIZES
  ]
  DEFAULT_BUILDER_CONFIG_NAME = f"114classes_exclude_{DEFAULT_IMAGE_SIZE}"

  def check_manual_dir(self, manual_dir: str | os.PathLike[str] | None) -> str:
    """Also requires an ``images/`` folder or some ``*.jpg`` directly in ``manual_dir``."""
    manual_dir = super().check_manual_dir(manual_dir)
    if not os.path.isdir(os.path.join(manual_dir, IMAGE_DIR)) and not any(
      e.name.endswith(".jpg") for e in os.scandir(manual_dir)
    ):
      raise DatasetNotFoundError(
        f"{self.name}: manual_dir {manual_dir!r} has no {IMAGE_DIR}/ folder and no *.jpg.\n"
        + self.MANUAL_DOWNLOAD_INSTRUCTIONS
      )
    return manual_dir

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    column, names = GRANULARITIES[config.label_granularity]
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        "Fitzpatrick-17k clinical dermatology images with Fitzpatrick skin types. "
        + (config.description or "")
      ),
      features=tfds.features.FeaturesDict(
        {
          "image": tfds_common.image_feature(config.image_size),
          "label": tfds.features.ClassLabel(names=list(names)),
          "group": np.int64,
          "image_id": tfds.features.Text(),
          "fitzpatrick_scale": np.int64,
          "fitzpatrick_centaur": np.int64,
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://github.com/mattgroh/fitzpatrick17k",
      citation=(
        "Groh et al., Evaluating Deep Neural Networks Trained on Clinical Images in "
        "Dermatology with the Fitzpatrick 17k Dataset, CVPR Workshops 2021."
      ),
      metadata=tfds.core.MetadataDict(
        sensitive_attribute="skin_type",
        group_names=list(GROUP_NAMES),
        unknown_skin=config.unknown_skin,
        label_column=column,
        fractions=list(config.fractions),
        seed=config.seed,
      ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = self._manual_dir_from(dl_manager)
    config = self.builder_config
    column, names = GRANULARITIES[config.label_granularity]
    rows = read_fitzpatrick_csv(os.path.join(manual_dir, CSV_NAME))
    split_of = fitzpatrick_split_assignment(rows, config.fractions, config.seed)
    pending: dict[str, list[PendingExample]] = {}
    for r in rows:
      pending.setdefault(split_of[r.md5hash], []).append(
        PendingExample(
          key=r.md5hash,
          image_path=image_path(manual_dir, r.md5hash),
          features={
            "label": names.index(getattr(r, column)),
            "group": skin_group(r.fitzpatrick_scale, config.unknown_skin),
            "image_id": r.md5hash,
            "fitzpatrick_scale": r.fitzpatrick_scale,
            "fitzpatrick_centaur": r.fitzpatrick_centaur,
          },
        )
      )
    return self._splits_from_pending(pending)


BUILDER = Fitzpatrick17k
