"""Shared pieces of the manual-download TFDS builders (design.md section 6).

The builders (ISIC 2019, Fitzpatrick-17k, FairFace, UTKFace, CelebA) write ``array_record``
files and read them back with ``tfds.data_source``, so neither building nor reading needs
TensorFlow: images are decoded and resized with PIL and handed
to ``tfds.features.Image`` as already-encoded JPEG bytes (encoding a NumPy array would call
``tf.image.encode_*``).

Record format shared by the project (every record is a dict):

- ``image``: uint8 ``(S, S, 3)``, S = the config's ``image_size`` (shorter side resized to S,
  then centre-cropped).
- ``label``: int class index (``tfds.features.ClassLabel``).
- ``group``: int64 sensitive-group id, ``-1`` = unknown (kept for training, excluded from group
  metrics).
- ``image_id``: bytes, plus dataset-specific metadata (see each builder).

The build statistics (per split: examples written, missing / corrupt images, skipped rows,
rows with an unknown group) are stored in ``info.metadata["build_stats"]`` and reachable from a
data source as ``source.dataset_info.metadata["build_stats"]``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib
import inspect
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image, ImageOps

SPLITS: tuple[str, str, str] = ("train", "validation", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)
DEFAULT_SEED: int = 0
# 128 px keeps a full ISIC build around 0.2 GB of JPEGs; 64 px suits CPU runs, 224 px the
# published GPU set-ups. Any size >= 8 works through a custom config.
DEFAULT_IMAGE_SIZE: int = 128
PREDEFINED_IMAGE_SIZES: tuple[int, ...] = (64, 128, 224)
ON_BAD_IMAGE_CHOICES: tuple[str, ...] = ("skip", "error")
JPEG_QUALITY: int = 95


# Defined without tfds so that the CLI can catch them without importing tfds (demo runs).
from fairjax.data.errors import (  # noqa: E402,F401
  BadImageError,
  CsvFormatError,
  DataDirError,
  DatasetNotFoundError,
  unwritable_directory,
)

# --------------------------------------------------------------------------------------------
# CSV parsing (stdlib csv only: the library must not depend on pandas).


def read_csv_rows(
  path: str | os.PathLike[str], required_columns: Sequence[str]
) -> list[tuple[int, dict[str, str]]]:
  """Reads a CSV with a header line into ``(line_number, row)`` pairs.

  Line numbers are 1-based physical lines of the file (the header is line 1), so an error
  message points at the line a user would open in an editor.

  Raises:
    CsvFormatError: a required column is absent from the header, or a row has more or fewer
      fields than the header.
  """
  path = os.fspath(path)
  rows: list[tuple[int, dict[str, str]]] = []
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.reader(f)
    try:
      header = next(reader)
    except StopIteration:
      raise CsvFormatError(path, 1, required_columns[0], "the file is empty") from None
    header = [h.strip() for h in header]
    for column in required_columns:
      if column not in header:
        raise CsvFormatError(path, 1, column, f"missing column (header is {header})")
    start_line = reader.line_num + 1
    for fields in reader:
      line = start_line
      start_line = reader.line_num + 1
      if not fields:  # Blank lines carry no record.
        continue
      if len(fields) != len(header):
        field = header[len(fields)] if len(fields) < len(header) else "<extra>"
        raise CsvFormatError(
          path, line, field, f"expected {len(header)} fields, found {len(fields)}"
        )
      rows.append((line, dict(zip(header, (v.strip() for v in fields)))))
  return rows


def parse_int(
  value: str,
  *,
  path: str | os.PathLike[str],
  line: int,
  field: str,
  missing: int | None = None,
) -> int:
  """Parses an integer field (``"55"`` or ``"55.0"``); ``missing`` is returned for ``""``."""
  if value == "" and missing is not None:
    return missing
  try:
    number = float(value)
  except ValueError:
    raise CsvFormatError(path, line, field, f"expected an integer, got {value!r}") from None
  if not math.isfinite(number) or number != int(number):
    raise CsvFormatError(path, line, field, f"expected an integer, got {value!r}")
  return int(number)


def parse_one_hot(value: str, *, path: str | os.PathLike[str], line: int, field: str) -> bool:
  """Parses a one-hot cell (``"0.0"`` / ``"1.0"``); anything else is a format error."""
  try:
    number = float(value)
  except ValueError:
    raise CsvFormatError(path, line, field, f"expected 0.0 or 1.0, got {value!r}") from None
  if number not in (0.0, 1.0):
    raise CsvFormatError(path, line, field, f"expected 0.0 or 1.0, got {value!r}")
  return number == 1.0


# --------------------------------------------------------------------------------------------
# Manual directory checks.


def check_manual_dir(
  manual_dir: str | os.PathLike[str] | None,
  *,
  dataset: str,
  expected: Sequence[str],
  instructions: str,
) -> str:
  """Returns ``manual_dir`` as a string after checking it exists, is non-empty and holds files.

  Args:
    manual_dir: the directory the user downloaded the data to.
    dataset: dataset name for the message.
    expected: relative paths that must exist (files or folders).
    instructions: the builder's ``MANUAL_DOWNLOAD_INSTRUCTIONS``, appended to the message.

  Raises:
    DatasetNotFoundError: naming the path, what is missing and where to get the data.
  """
  shown = "<manual_dir>" if manual_dir is None else os.fspath(manual_dir)
  expected_list = "\n".join(f"  {shown}/{e}" for e in expected)
  if manual_dir is None:
    problem = "it is not built yet and no manual_dir was given to build it from"
  elif not os.path.isdir(manual_dir):
    problem = f"manual_dir {os.fspath(manual_dir)!r} does not exist or is not a directory"
  elif not any(os.scandir(manual_dir)):
    problem = f"manual_dir {os.fspath(manual_dir)!r} is empty"
  else:
    missing = [e for e in expected if not os.path.exists(os.path.join(manual_dir, e))]
    if not missing:
      return os.fspath(manual_dir)
    problem = f"manual_dir {os.fspath(manual_dir)!r} lacks " + ", ".join(repr(m) for m in missing)
  raise DatasetNotFoundError(
    f"{dataset}: {problem}.\nExpected:\n{expected_list}\n{instructions.strip()}"
  )


# --------------------------------------------------------------------------------------------
# Deterministic splits.


def validate_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
  """Checks (train, validation, test) fractions: three numbers >= 0 summing to 1."""
  fr = tuple(float(f) for f in fractions)
  if len(fr) != 3 or any(f < 0 or not math.isfinite(f) for f in fr):
    raise ValueError(
      f"fractions must be three numbers >= 0 (train, validation, test), got {fractions}"
    )
  if abs(sum(fr) - 1.0) > 1e-6:
    raise ValueError(f"fractions must sum to 1, got {fractions} (sum {sum(fr)})")
  return fr  # type: ignore[return-value]


def assign_splits(
  unit_sizes: Mapping[str, int],
  fractions: Sequence[float] = DEFAULT_FRACTIONS,
  seed: int = DEFAULT_SEED,
  strata: Mapping[str, str] | None = None,
) -> dict[str, str]:
  """Assigns whole units (lesions, images) to train / validation / test.

  Within each stratum the units are ordered by ``sha256(f"{seed}:{unit}")``, a pure function
  of seed and unit (stable across NumPy versions and platforms, and independent of the other
  units), then cut so that each split receives about its fraction of the *samples*: a unit goes
  to the split where the midpoint of its cumulative sample range falls, after shifting the
  stratum's range by a seeded offset in [0, 1) (systematic sampling with a random start), so
  that tiny strata do not all land in train.

  Args:
    unit_sizes: unit id -> number of samples in it (>= 1).
    fractions: (train, validation, test), >= 0, summing to 1.
    seed: integer seed.
    strata: optional unit id -> stratum (e.g. its class), to keep class ratios per split.

  Returns:
    unit id -> one of ``SPLITS``.
  """
  f_train, f_val, _ = validate_fractions(fractions)
  by_stratum: dict[str, list[str]] = {}
  for unit in unit_sizes:
    by_stratum.setdefault("" if strata is None else str(strata[unit]), []).append(unit)
  assignment: dict[str, str] = {}
  for stratum in sorted(by_stratum):
    units = sorted(
      by_stratum[stratum],
      key=lambda u: (hashlib.sha256(f"{seed}:{u}".encode()).hexdigest(), u),
    )
    total = sum(unit_sizes[u] for u in units)
    offset = int(hashlib.sha256(f"{seed}:stratum:{stratum}".encode()).hexdigest(), 16) / 2**256
    cumulative = 0
    for unit in units:
      mid = ((cumulative + unit_sizes[unit] / 2) / total + offset) % 1.0
      cumulative += unit_sizes[unit]
      if mid < f_train:
        assignment[unit] = "train"
      elif mid < f_train + f_val:
        assignment[unit] = "validation"
      else:
        assignment[unit] = "test"
  return assignment


# --------------------------------------------------------------------------------------------
# Images.


def load_square_image(path: str | os.PathLike[str], image_size: int) -> np.ndarray:
  """Decodes an image file to uint8 ``(image_size, image_size, 3)`` RGB.

  The shorter side is resized to ``image_size`` (bicubic, antialiased) and the centre is cropped,
  so aspect ratios are not distorted.

  Raises:
    BadImageError: the file is missing or is not a decodable image.
  """
  path = os.fspath(path)
  try:
    with Image.open(path) as img:
      # draft() lets libjpeg decode large dermoscopy JPEGs at a reduced scale (still >= target).
      img.draft("RGB", (image_size, image_size))
      img = img.convert("RGB")  # Forces a full decode, so truncated files fail here.
      img = ImageOps.exif_transpose(img)  # Camera photos may be stored rotated.
  except FileNotFoundError:
    raise BadImageError(f"missing image file {path}") from None
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise BadImageError(f"cannot decode image file {path}: {e}") from None
  w, h = img.size
  scale = image_size / min(w, h)
  new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
  img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
  left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
  img = img.crop((left, top, left + image_size, top + image_size))
  return np.asarray(img, dtype=np.uint8)


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
  """Encodes uint8 ``(H, W, 3)`` as JPEG bytes with PIL (no TensorFlow needed)."""
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def image_feature(image_size: int) -> tfds.features.Image:
  """The ``image`` feature: uint8 ``(image_size, image_size, 3)``, stored as JPEG."""
  return tfds.features.Image(shape=(image_size, image_size, 3), encoding_format="jpeg")


@dataclasses.dataclass(eq=False)
class ImageBuilderConfig(tfds.core.BuilderConfig):
  """Options shared by both builders; each changes the stored data, so each names the config.

  Attributes:
    image_size: stored side S of the square uint8 ``(S, S, 3)`` images.
    fractions: (train, validation, test) fractions of the samples.
    seed: seed of the split assignment.
  """

  image_size: int = DEFAULT_IMAGE_SIZE
  fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
  seed: int = DEFAULT_SEED


def split_suffix(fractions: Sequence[float], seed: int) -> str:
  """Config-name suffix for non-default splits, e.g. ``"_split70-15-15_seed3"`` ("" if default)."""
  fr = validate_fractions(fractions)
  if fr == DEFAULT_FRACTIONS and seed == DEFAULT_SEED:
    return ""
  return "_split" + "-".join(f"{100 * f:g}" for f in fr) + f"_seed{int(seed)}"


def check_image_size(image_size: int) -> int:
  if (
    isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 8
  ):
    raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
  return int(image_size)


# --------------------------------------------------------------------------------------------
# Build statistics.

STAT_KEYS: tuple[str, ...] = (
  "rows",
  "examples",
  "missing_image",
  "corrupt_image",
  "skipped_label",
  "unknown_group",
  "skipped_row",
)


@dataclasses.dataclass
class BuildStats:
  """Counts per split of what happened while building (never silent about dropped rows).

  ``rows``: CSV rows assigned to the split; ``examples``: records written; ``missing_image`` /
  ``corrupt_image``: rows skipped for their image; ``unknown_group``: records written with
  ``group == -1``. ``skipped_label`` (rows without a usable label, e.g. ISIC UNK) is counted
  under the pseudo-split ``"unassigned"`` because such rows are dropped before splitting, and
  so is ``skipped_row``: entries whose metadata cannot be read without guessing (a UTKFace file
  name that lacks a field), whose names the builder logs and keeps in
  ``info.metadata["skipped"]``.
  """

  counts: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)

  def add(self, split: str, key: str, n: int = 1) -> None:
    if key not in STAT_KEYS:
      raise KeyError(f"unknown statistic {key!r}")
    self.counts.setdefault(split, dict.fromkeys(STAT_KEYS, 0))[key] += n

  def total(self, key: str) -> int:
    return sum(c.get(key, 0) for c in self.counts.values())

  def as_dict(self) -> dict[str, Any]:
    """JSON-serialisable form stored in ``info.metadata["build_stats"]``."""
    return {split: dict(c) for split, c in sorted(self.counts.items())}

  @classmethod
  def from_dict(cls, d: Mapping[str, Mapping[str, int]]) -> "BuildStats":
    return cls({split: {k: int(v) for k, v in c.items()} for split, c in d.items()})

  def summary(self) -> str:
    parts = [f"{k}={self.total(k)}" for k in STAT_KEYS]
    return ", ".join(parts)


def check_on_bad_image(on_bad_image: str) -> str:
  if on_bad_image not in ON_BAD_IMAGE_CHOICES:
    raise ValueError(f"on_bad_image must be one of {ON_BAD_IMAGE_CHOICES}, got {on_bad_image!r}")
  return on_bad_image


@dataclasses.dataclass(frozen=True)
class PendingExample:
  """One row ready to be written: its key, image file and every feature except ``image``."""

  key: str
  image_path: str
  features: dict[str, Any]


class ManualImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the manual-download image builders: checks, bad-image policy, statistics.

  Subclasses define ``_info``, ``_split_generators`` (parse the CSVs, then return
  :meth:`_splits_from_pending`), ``EXPECTED_FILES`` and ``MANUAL_DOWNLOAD_INSTRUCTIONS``.
  """

  EXPECTED_FILES: tuple[str, ...] = ()

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path | None:
    # TFDS's default probes an `importlib_resources` backport (not a TFDS dependency, absent
    # here) for any builder defined in an installed package; the source file is all it needs.
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, on_bad_image: str = "skip", **kwargs: Any):
    """``on_bad_image``: "skip" (count + log, default) or "error" (raise BadImageError)."""
    self._on_bad_image = check_on_bad_image(on_bad_image)
    self._stats = BuildStats()
    super().__init__(**kwargs)

  def check_manual_dir(self, manual_dir: str | os.PathLike[str] | None) -> str:
    """Raises :class:`DatasetNotFoundError` unless ``manual_dir`` holds the expected files."""
    return check_manual_dir(
      manual_dir,
      dataset=self.name,
      expected=self.EXPECTED_FILES,
      instructions=self.MANUAL_DOWNLOAD_INSTRUCTIONS or "",
    )

  def _manual_dir_from(self, dl_manager: tfds.download.DownloadManager) -> str:
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError:
      # TFDS asserts on a missing/empty manual dir; report it with our own exception instead.
      manual_dir = getattr(dl_manager, "_manual_dir", None)
    return self.check_manual_dir(manual_dir)

  def _bad_image(self, split: str, err: BadImageError, *, missing: bool) -> None:
    """Counts and logs a bad image, or raises when ``on_bad_image == "error"``."""
    if self._on_bad_image == "error":
      raise BadImageError(f"{err} (on_bad_image='error'; pass 'skip' to skip and count)")
    self._stats.add(split, "missing_image" if missing else "corrupt_image")
    # The first few are logged one by one; the per-split totals are always logged at the end.
    logging.log_first_n(
      logging.WARNING,
      "Skipping %s image (split %s): %s",
      20,
      "missing" if missing else "corrupt",
      split,
      err,
    )

  def _skip_row(self, name: str, reason: str) -> None:
    """Counts (``skipped_row``, split ``"unassigned"``) and logs an entry that is left out
    because its metadata cannot be read without guessing; ``name`` and ``reason`` are also kept
    in ``info.metadata["skipped"]`` (a list of ``[name, reason]``)."""
    self._stats.add("unassigned", "skipped_row")
    skipped = self.info.metadata.setdefault("skipped", [])
    skipped.append([name, reason])
    logging.warning("%s: skipping %s: %s", self.name, name, reason)

  def _splits_from_pending(
    self, pending: Mapping[str, Sequence[PendingExample]]
  ) -> dict[str, Iterable[tuple[str, dict[str, Any]]]]:
    """Drops rows whose image file is absent (counted), returns generators of non-empty splits.

    TFDS refuses to write a split without examples, so an empty split is left out (and logged).
    """
    self.info.metadata["build_stats"] = self._stats.counts  # Live dict: final counts are saved.
    generators = {}
    for split in SPLITS:
      present = []
      for ex in pending.get(split, ()):
        self._stats.add(split, "rows")
        if os.path.isfile(ex.image_path):
          present.append(ex)
        else:
          self._bad_image(split, BadImageError(f"missing image file {ex.image_path}"), missing=True)
      if present:
        generators[split] = self._generate_examples(split, present)
      else:
        logging.warning(
          "Split %s of %s has no row with an image file; it is not written.", split, self.name
        )
    return generators

  def _generate_examples(
    self, split: str, pending: Sequence[PendingExample]
  ) -> Iterable[tuple[str, dict[str, Any]]]:
    image_size = self.builder_config.image_size
    for ex in pending:
      try:
        image = load_square_image(ex.image_path, image_size)
      except BadImageError as err:
        self._bad_image(split, err, missing=not os.path.exists(ex.image_path))
        continue
      self._stats.add(split, "examples")
      if ex.features["group"] < 0:
        self._stats.add(split, "unknown_group")
      yield ex.key, {"image": encode_jpeg(image), **ex.features}
    counts = self._stats.counts[split]
    level = logging.WARNING if counts["missing_image"] + counts["corrupt_image"] else logging.INFO
    logging.log(level, "%s, split %s: %s", self.name, split, counts)


# --------------------------------------------------------------------------------------------
# Entry point.

_BUILDER_MODULES = {
  "isic2019": "fairjax.data.isic2019",
  "fitzpatrick17k": "fairjax.data.fitzpatrick17k",
  "fairface": "fairjax.data.fairface",
  "utkface": "fairjax.data.utkface",
  "celeba": "fairjax.data.celeba",
}


def make_builder(
  name: str,
  *,
  data_dir: str | os.PathLike[str],
  image_size: int = DEFAULT_IMAGE_SIZE,
  on_bad_image: str = "skip",
  **config_kwargs: Any,
) -> tfds.core.GeneratorBasedBuilder:
  """Instantiates the builder of ``name`` (a key of ``_BUILDER_MODULES``) for these options.

  ``config_kwargs`` are the builder's config options (ISIC: ``attribute``; Fitzpatrick:
  ``label_granularity``, ``unknown_skin``; both and UTKFace: ``fractions``, ``seed``; FairFace:
  ``task``, ``group``, ``validation_fraction``, ``seed``; UTKFace: ``task``, ``num_races``;
  CelebA: ``attribute``). A predefined config is
  used when the options match one, otherwise a custom config with a descriptive name.
  """
  if name not in _BUILDER_MODULES:
    raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(_BUILDER_MODULES)}")
  module = importlib.import_module(_BUILDER_MODULES[name])
  config = module.make_config(image_size=image_size, **config_kwargs)
  builder_cls = module.BUILDER
  # TFDS refuses a custom config object that reuses a predefined config's name.
  config_arg = config.name if config.name in builder_cls.builder_configs else config
  return builder_cls(
    data_dir=os.fspath(data_dir),
    config=config_arg,
    file_format="array_record",
    on_bad_image=check_on_bad_image(on_bad_image),
  )


def build_stats(builder_or_source: Any) -> BuildStats:
  """The :class:`BuildStats` of a prepared builder or of a data source from it."""
  info = getattr(builder_or_source, "dataset_info", None) or builder_or_source.info
  return BuildStats.from_dict(info.metadata.get("build_stats", {}))


def load_source(
  name: str,
  split: str,
  *,
  manual_dir: str | os.PathLike[str] | None,
  data_dir: str | os.PathLike[str],
  image_size: int = DEFAULT_IMAGE_SIZE,
  on_bad_image: str = "skip",
  **config_kwargs: Any,
) -> Sequence[dict[str, Any]]:
  """Builds ``name`` into ``data_dir`` if needed, then returns a random-access source of ``split``.

  Args:
    name: "isic2019", "fitzpatrick17k", "fairface", "utkface" or "celeba".
    split: "train", "validation" or "test" (TFDS slicing such as "train[:10%]" also works).
    manual_dir: folder with the manually downloaded files (design.md section 6); only read when
      the dataset is not built yet.
    data_dir: TFDS data directory the array_record files are written to / read from.
    image_size: stored image side S (records hold uint8 ``(S, S, 3)``).
    on_bad_image: "skip" (count and log missing / corrupt images) or "error" (raise
      :class:`BadImageError`; also raised if an existing build had skipped images).
    **config_kwargs: config options, see :func:`make_builder`.

  Returns:
    A ``tfds`` ArrayRecord data source: ``len(source)``, ``source[i]`` -> dict with ``image``
    (uint8 (S, S, 3)), ``label`` (int), ``group`` (int, -1 unknown), ``image_id`` (bytes) and
    the dataset's metadata; ``source.dataset_info`` holds class names (``features["label"]``),
    ``metadata["group_names"]`` and ``metadata["build_stats"]``.

  Raises:
    DatasetNotFoundError: the dataset is not built and ``manual_dir`` is missing / incomplete.
    DataDirError: the dataset is not built and ``data_dir`` cannot be written.
    CsvFormatError: a malformed metadata row (file, line, field).
    BadImageError: with ``on_bad_image="error"``.
  """
  builder = make_builder(
    name, data_dir=data_dir, image_size=image_size, on_bad_image=on_bad_image, **config_kwargs
  )
  if not builder.is_prepared():
    builder.check_manual_dir(manual_dir)
    # Before TFDS starts writing: it would fail deep inside the build with a bare OSError.
    problem = unwritable_directory(data_dir)
    if problem:
      raise DataDirError(
        f"{name}: data_dir {os.fspath(data_dir)!r} {problem}; the build "
        f"(array_record files) is written there"
      )
    try:
      builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
      )
    except AssertionError as e:
      # TFDS asserts when every image of a split was bad: turn it into an actionable error.
      if "No examples were yielded" in str(e):
        raise DatasetNotFoundError(
          f"{name}: no readable image in one split ({e}); check the images in {manual_dir}"
        ) from None
      raise
    logging.info(
      "Built %s/%s: %s", name, builder.builder_config.name, build_stats(builder).summary()
    )
  stats = build_stats(builder)
  bad = stats.total("missing_image") + stats.total("corrupt_image")
  if on_bad_image == "error" and bad:
    raise BadImageError(
      f"{name}: the build in {builder.data_dir} skipped {bad} missing/corrupt images "
      f"({stats.summary()}); delete it and rebuild to fail on them"
    )
  return builder.as_data_source(split=split)
