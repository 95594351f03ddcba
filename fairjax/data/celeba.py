"""CelebA as a TFDS builder written to array_record (design.md section 6.5).

Layout of the manual download directory (the dataset's own file names, from its ``Anno/``,
``Eval/`` and ``Img/`` folders, put side by side)::

    <manual_dir>/list_attr_celeba.txt       line 1: the image count; line 2: the 40 attribute
                                            names; then "<image>.jpg" and 40 values of +1 / -1,
                                            separated by runs of spaces
    <manual_dir>/list_eval_partition.txt    "<image>.jpg <0|1|2>" (0 train, 1 validation, 2 test)
    <manual_dir>/img_align_celeba/<image>.jpg   (or img_align_celeba/img_align_celeba/)

Records (``tfds.data_source(...)[i]``):

- ``image``: uint8 ``(S, S, 3)``, S = ``image_size`` (shorter side resized, centre crop: the
  178x218 aligned images lose 20 rows at the top and bottom).
- ``label``: task ``"attribute"``: int, the config's attribute as a binary task: 1 where the
  attribute is +1, 0 where it is -1; class names ``("not_<attribute>", "<attribute>")``.
  Task ``"multilabel"``: int64 ``[39]``, the 39 attributes other than ``Male`` in file order
  (:data:`fairjax.data.faces.CELEBA_LABEL_ATTRIBUTES`), 1 where +1, 0 where -1; their names are
  ``metadata["label_names"]`` (design.md section 1.10 for the sigmoid loss they are trained with).
- ``group``: int64 from ``Male``: 0 = "Male" (+1), 1 = "Female" (-1), the gender ids of FairFace
  and UTKFace (:data:`fairjax.data.faces.GENDER_NAMES`).
- ``image_id`` (the file name) and ``attributes``: int8 ``[40]``, all 40 values (+1 / -1) in
  the file's column order (:data:`fairjax.data.faces.CELEBA_ATTRIBUTES`).

Splits are the official partition (162,770 / 19,867 / 19,962 images). Malformed input raises
:class:`~fairjax.data.errors.CsvFormatError` naming the file, line and field: a row with a
wrong column count or a value other than 1 / -1, attribute names other than CelebA's 40, a count
line that disagrees with the rows, a partition other than 0/1/2, and an image listed in one file
but not the other. A listed image whose file is absent is skipped and counted
(``missing_image``), like every builder's.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from fairjax.data import faces, tfds_common
from fairjax.data.tfds_common import (
  DEFAULT_IMAGE_SIZE,
  CsvFormatError,
  PendingExample,
)

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_DIR = "img_align_celeba"
PARTITIONS: tuple[str, str, str] = ("train", "validation", "test")  # codes 0, 1, 2

_INSTRUCTIONS = f"""\
Download CelebA (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html): Anno/{ATTR_FILE},
Eval/{PARTITION_FILE} and Img/img_align_celeba.zip. Put them into one folder (the manual_dir) as
  {ATTR_FILE}
  {PARTITION_FILE}
  {IMAGE_DIR}/<image>.jpg   (the unzipped archive)
"""


def read_attribute_file(path: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, int]]:
  """Parses ``list_attr_celeba.txt``: image name -> (int8 ``[40]`` of +1 / -1, line number).

  Raises:
    CsvFormatError: naming the file, line and field (the count line, the names line, a row's
      column count, a value other than 1 / -1, a duplicate image, a count that disagrees).
  """
  rows: dict[str, tuple[np.ndarray, int]] = {}
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  if not lines:
    raise CsvFormatError(path, 1, "count", "the file is empty")
  try:
    count = int(lines[0].strip())
  except ValueError:
    raise CsvFormatError(
      path, 1, "count", f"expected the number of images, got {lines[0]!r}"
    ) from None
  names = tuple(lines[1].split()) if len(lines) > 1 else ()
  if names != faces.CELEBA_ATTRIBUTES:
    raise CsvFormatError(
      path,
      2,
      "names",
      f"expected CelebA's 40 attribute names, got {len(names)} names starting {names[:3]}",
    )
  width = len(names) + 1
  for line, text in enumerate(lines[2:], start=3):
    fields = text.split()
    if not fields:
      continue
    if len(fields) != width:
      raise CsvFormatError(
        path, line, "<row>", f"expected {width} columns (image and 40 values), found {len(fields)}"
      )
    image = fields[0]
    if image in rows:
      raise CsvFormatError(path, line, "image", f"duplicate image {image!r}")
    for name, value in zip(names, fields[1:]):
      if value not in ("1", "-1"):
        raise CsvFormatError(path, line, name, f"expected 1 or -1, got {value!r}")
    rows[image] = (np.array([int(v) for v in fields[1:]], np.int8), line)
  if count != len(rows):
    raise CsvFormatError(
      path, 1, "count", f"says {count} images but the file has {len(rows)} rows (truncated?)"
    )
  return rows


def read_partition_file(path: str | os.PathLike[str]) -> dict[str, tuple[str, int]]:
  """Parses ``list_eval_partition.txt``: image name -> (split name, line number).

  Raises:
    CsvFormatError: a row that is not ``<image> <0|1|2>``, or a duplicate image.
  """
  out: dict[str, tuple[str, int]] = {}
  with open(path, encoding="utf-8") as f:
    for line, text in enumerate(f, start=1):
      fields = text.split()
      if not fields:
        continue
      if len(fields) != 2:
        raise CsvFormatError(
          path, line, "<row>", f"expected 2 columns (image, partition), found {len(fields)}"
        )
      image, code = fields
      if code not in ("0", "1", "2"):
        raise CsvFormatError(path, line, "partition", f"expected 0, 1 or 2, got {code!r}")
      if image in out:
        raise CsvFormatError(path, line, "image", f"duplicate image {image!r}")
      out[image] = (PARTITIONS[int(code)], line)
  return out


def image_folder(manual_dir: str) -> str:
  """``<manual_dir>/img_align_celeba``, or the same name nested once more inside it (the zip
  unpacked into a folder of its own name) when only that holds the images."""
  folder = os.path.join(manual_dir, IMAGE_DIR)
  nested = os.path.join(folder, IMAGE_DIR)
  return nested if os.path.isdir(nested) else folder


@dataclasses.dataclass(eq=False)
class CelebAConfig(tfds_common.ImageBuilderConfig):
  """Adds ``attribute`` (the CelebA attribute that is the binary label) and ``task``
  (``"attribute"`` or ``"multilabel"``)."""

  attribute: str = faces.CELEBA_DEFAULT_ATTRIBUTE
  task: str = "attribute"


def make_config(
  *,
  image_size: int = DEFAULT_IMAGE_SIZE,
  attribute: str = faces.CELEBA_DEFAULT_ATTRIBUTE,
  task: str = "attribute",
) -> CelebAConfig:
  """Config ``f"{attribute}_{image_size}"``, e.g. ``"Smiling_128"``, or
  ``f"multilabel_{image_size}"`` for ``task="multilabel"`` (``attribute`` unused); official
  splits only.

  Raises:
    ValueError: an unknown task or attribute, or ``Male`` (the group).
  """
  problem = faces.check_face_options("celeba", task, "", attribute)
  if problem:
    raise ValueError(problem[1])
  image_size = tfds_common.check_image_size(image_size)
  if task == "multilabel":
    return CelebAConfig(
      name=f"multilabel_{image_size}",
      description=(
        f"{image_size}x{image_size} images, labels = the 39 attributes other than "
        "Male (multi-label), group = Male; official splits."
      ),
      image_size=image_size,
      task="multilabel",
    )
  return CelebAConfig(
    name=f"{attribute}_{image_size}",
    description=(
      f"{image_size}x{image_size} images, label = {attribute}, group = Male; official splits."
    ),
    image_size=image_size,
    attribute=attribute,
  )


class CelebA(tfds_common.ManualImageBuilder):
  """CelebA aligned faces: one binary attribute or the 39 non-sensitive attributes as a
  multi-label task, groups from ``Male`` (design.md section 6.5)."""

  name = "celeba"  # not TFDS's derived "celeb_a", the name of its own CelebA builder

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
    "1.0.0": "Initial release: official splits, all 40 attributes kept; "
    "multi-label configs (39 labels)."
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  EXPECTED_FILES = (ATTR_FILE, PARTITION_FILE, IMAGE_DIR)
  BUILDER_CONFIGS = [
    make_config(image_size=size, attribute=attribute)
    for attribute in ("Smiling", "Attractive")
    for size in tfds_common.PREDEFINED_IMAGE_SIZES
  ] + [
    make_config(image_size=size, task="multilabel") for size in tfds_common.PREDEFINED_IMAGE_SIZES
  ]
  DEFAULT_BUILDER_CONFIG_NAME = f"{faces.CELEBA_DEFAULT_ATTRIBUTE}_{DEFAULT_IMAGE_SIZE}"

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    multilabel = config.task == "multilabel"
    if multilabel:
      label = tfds.features.Tensor(shape=(len(faces.CELEBA_LABEL_ATTRIBUTES),), dtype=np.int64)
      label_names = list(faces.CELEBA_LABEL_ATTRIBUTES)
    else:
      label = tfds.features.ClassLabel(names=[f"not_{config.attribute}", config.attribute])
      label_names = [f"not_{config.attribute}", config.attribute]
    return tfds.core.DatasetInfo(
      builder=self,
      description="CelebA aligned and cropped faces. " + (config.description or ""),
      features=tfds.features.FeaturesDict(
        {
          "image": tfds_common.image_feature(config.image_size),
          "label": label,
          "group": np.int64,
          "image_id": tfds.features.Text(),
          "attributes": tfds.features.Tensor(shape=(len(faces.CELEBA_ATTRIBUTES),), dtype=np.int8),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
      citation="Liu, Luo, Wang and Tang, Deep Learning Face Attributes in the Wild, ICCV 2015.",
      metadata=tfds.core.MetadataDict(
        task=config.task,
        attribute="" if multilabel else config.attribute,
        label_names=label_names,
        sensitive_attribute=faces.CELEBA_SENSITIVE_ATTRIBUTE,
        group_names=list(faces.GENDER_NAMES),
        attribute_names=list(faces.CELEBA_ATTRIBUTES),
      ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = self._manual_dir_from(dl_manager)
    config = self.builder_config
    attr_path = os.path.join(manual_dir, ATTR_FILE)
    partition_path = os.path.join(manual_dir, PARTITION_FILE)
    attributes = read_attribute_file(attr_path)
    partition = read_partition_file(partition_path)
    for image, (_, line) in partition.items():
      if image not in attributes:
        raise CsvFormatError(
          partition_path,
          line,
          "image",
          f"{image!r} has no row in {ATTR_FILE}; download both files again",
        )
    for image, (_, line) in attributes.items():
      if image not in partition:
        raise CsvFormatError(
          attr_path,
          line,
          "image",
          f"{image!r} has no row in {PARTITION_FILE}; download both files again",
        )
    images = image_folder(manual_dir)
    male_col = faces.CELEBA_ATTRIBUTES.index(faces.CELEBA_SENSITIVE_ATTRIBUTE)
    if config.task == "multilabel":
      cols = [faces.CELEBA_ATTRIBUTES.index(a) for a in faces.CELEBA_LABEL_ATTRIBUTES]

      def label_of(values):
        return (values[cols] == 1).astype(np.int64)
    else:
      label_col = faces.CELEBA_ATTRIBUTES.index(config.attribute)

      def label_of(values):
        return int(values[label_col] == 1)

    pending: dict[str, list[PendingExample]] = {}
    for image, (split, _) in partition.items():
      values = attributes[image][0]
      pending.setdefault(split, []).append(
        PendingExample(
          key=image,
          image_path=os.path.join(images, image),
          features={
            "label": label_of(values),
            "group": 0 if values[male_col] == 1 else 1,
            "image_id": image,
            "attributes": values,
          },
        )
      )
    return self._splits_from_pending(pending)


BUILDER = CelebA
