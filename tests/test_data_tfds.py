"""Tests of the ISIC 2019 / Fitzpatrick-17k TFDS builders (design.md section 6).

The real public metadata CSVs (../shared/data, or $FAIRJAX_SHARED_DATA) are parsed in full; the
builds use a subset of their rows with synthesised JPEGs, because the real images are not
redistributable. TensorFlow is blocked during the builds, so they prove no TF is needed.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.abc
import importlib.machinery
import os
import pathlib
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from fairjax.data import fitzpatrick17k as fitz
from fairjax.data import isic2019 as isic
from fairjax.data import tfds_common
from fairjax.data.tfds_common import BadImageError, CsvFormatError, DatasetNotFoundError
from tests.csv_helpers import read_csv, write_csv

_SHARED = pathlib.Path(
  os.environ.get(
    "FAIRJAX_SHARED_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
  )
)
ISIC_DIR = _SHARED / "isic2019"
FITZ_CSV = _SHARED / "fitzpatrick17k" / "fitzpatrick17k.csv"

needs_real_csvs = pytest.mark.skipif(
  not (ISIC_DIR / isic.GROUND_TRUTH_CSV).exists() or not FITZ_CSV.exists(),
  reason="real metadata CSVs not found (set FAIRJAX_SHARED_DATA)",
)
pytestmark = needs_real_csvs


# ---------------------------------------------------------------------------------------------
# Helpers.


def _colour(key: str) -> tuple[int, int, int]:
  """A per-image colour, so a decoded record can be matched to the file it came from."""
  d = hashlib.md5(key.encode()).digest()
  return (30 + d[0] % 200, 30 + d[1] % 200, 30 + d[2] % 200)


def _write_jpeg(path: pathlib.Path, key: str, size=(48, 36)) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", size, _colour(key)).save(path, format="JPEG", quality=95)


class _BlockTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Inside this context every ``import tensorflow`` fails (even where TF is installed) and is
  recorded in ``attempts``. ``find_spec`` probes (etils asks whether TF is installed) still see a
  module, so only real imports are caught."""

  def __init__(self):
    self.attempts: list[str] = []

  def find_spec(self, name, path=None, target=None):
    if name == "tensorflow" or name.startswith("tensorflow."):
      return importlib.machinery.ModuleSpec(name, self)
    return None

  def create_module(self, spec):
    return None

  def exec_module(self, module):
    self.attempts.append(module.__name__)
    raise ModuleNotFoundError(f"No module named {module.__name__!r} (blocked by the test)")

  def __enter__(self):
    assert "tensorflow" not in sys.modules, "TensorFlow was imported before the build"
    sys.meta_path.insert(0, self)
    return self

  def __exit__(self, *exc):
    sys.meta_path.remove(self)


def _all_records(name_and_config: str, data_dir, splits) -> dict[str, list[dict]]:
  out = {}
  for split in splits:
    source = tfds.data_source(
      name_and_config, split=split, data_dir=os.fspath(data_dir), download=False
    )
    out[split] = [source[i] for i in range(len(source))]
  return out


# ---------------------------------------------------------------------------------------------
# Real CSVs: parsing and splits.


@pytest.fixture(scope="module")
def isic_rows():
  return isic.read_isic_csvs(ISIC_DIR / isic.GROUND_TRUTH_CSV, ISIC_DIR / isic.METADATA_CSV)


@pytest.fixture(scope="module")
def fitz_rows():
  return fitz.read_fitzpatrick_csv(FITZ_CSV)


def test_isic_real_csv_counts(isic_rows):
  assert len(isic_rows) == 25_331
  assert all(r.label is not None for r in isic_rows)  # UNK is never positive in training.
  counts = collections.Counter(isic.CLASS_NAMES[r.label] for r in isic_rows)
  assert counts == {
    "NV": 12875,
    "MEL": 4522,
    "BCC": 3323,
    "BKL": 2624,
    "AK": 867,
    "SCC": 628,
    "VASC": 253,
    "DF": 239,
  }
  sex = collections.Counter(isic.group_of(r, "sex") for r in isic_rows)
  assert sex == {0: 11661, 1: 13286, -1: 384}  # design.md section 6: 384 rows without sex.
  age = collections.Counter(isic.group_of(r, "age") for r in isic_rows)
  assert age[-1] == sum(r.age_approx < 0 for r in isic_rows) == 437
  assert age[0] + age[1] + age[-1] == 25_331
  assert isic.age_group(55) == 0 and isic.age_group(60) == 1 and isic.age_group(57) == -1
  assert sum(1 for r in isic_rows if r.lesion_id) == 23_247


def test_isic_split_assignment_real(isic_rows):
  split = isic.isic_split_assignment(isic_rows, (0.6, 0.2, 0.2), seed=0)
  assert set(split) == {r.image for r in isic_rows}
  splits_of_lesion = collections.defaultdict(set)
  for r in isic_rows:
    if r.lesion_id:
      splits_of_lesion[r.lesion_id].add(split[r.image])
  assert splits_of_lesion and all(len(s) == 1 for s in splits_of_lesion.values())
  frac = collections.Counter(split.values())
  for name, target in zip(tfds_common.SPLITS, (0.6, 0.2, 0.2)):
    assert abs(frac[name] / len(isic_rows) - target) < 0.01, frac
  # Stratified: every class keeps about 60 % of its images in train.
  for c in range(len(isic.CLASS_NAMES)):
    members = [r.image for r in isic_rows if r.label == c]
    share = sum(split[i] == "train" for i in members) / len(members)
    assert abs(share - 0.6) < 0.06, (isic.CLASS_NAMES[c], share)
  # Deterministic for a seed, different for another, and usable on raw CSV rows (no labels).
  assert isic.isic_split_assignment(isic_rows, seed=0) == split
  assert isic.isic_split_assignment(isic_rows, seed=1) != split
  _, raw = read_csv(ISIC_DIR / isic.METADATA_CSV)
  raw_split = isic.isic_split_assignment(raw, (0.7, 0.1, 0.2), seed=3)
  assert abs(collections.Counter(raw_split.values())["validation"] / len(raw) - 0.1) < 0.01


def test_fitzpatrick_real_csv(fitz_rows):
  assert len(fitz_rows) == 16_577
  assert sum(r.fitzpatrick_scale == -1 for r in fitz_rows) == 565
  _, raw = read_csv(FITZ_CSV)
  for granularity, (column, names) in fitz.GRANULARITIES.items():
    assert len(names) == granularity
    assert list(names) == sorted({row[column] for row in raw})
  groups = collections.Counter(fitz.skin_group(r.fitzpatrick_scale) for r in fitz_rows)
  assert groups == {0: 2947 + 4808 + 3308, 1: 2781 + 1533 + 635, -1: 565}
  dark = collections.Counter(fitz.skin_group(r.fitzpatrick_scale, "dark") for r in fitz_rows)
  assert dark == {0: groups[0], 1: groups[1] + 565}
  split = fitz.fitzpatrick_split_assignment(fitz_rows)
  frac = collections.Counter(split.values())
  for name, target in zip(tfds_common.SPLITS, (0.6, 0.2, 0.2)):
    assert abs(frac[name] / len(fitz_rows) - target) < 0.01, frac
  assert fitz.fitzpatrick_split_assignment(raw) == split  # Same from CSV dicts.
  assert fitz.fitzpatrick_split_assignment(fitz_rows, seed=5) != split


def test_assign_splits_weights_units_and_validates():
  # Fractions are of samples, not of units: units of 1..9 samples still give ~60/20/20.
  sizes = {f"u{i}": 1 + i % 9 for i in range(600)}
  split = tfds_common.assign_splits(sizes, (0.6, 0.2, 0.2), seed=0)
  per_split = collections.Counter()
  for unit, s in split.items():
    per_split[s] += sizes[unit]
  total = sum(sizes.values())
  for name, target in zip(tfds_common.SPLITS, (0.6, 0.2, 0.2)):
    assert abs(per_split[name] / total - target) < 0.01, per_split
  # Many one-unit strata are spread over the splits instead of all landing in train.
  single = tfds_common.assign_splits(
    {f"s{i}": 1 for i in range(300)}, seed=0, strata={f"s{i}": f"class{i}" for i in range(300)}
  )
  assert 0.5 < collections.Counter(single.values())["train"] / 300 < 0.7
  with pytest.raises(ValueError, match="sum to 1"):
    tfds_common.assign_splits(sizes, (0.5, 0.2, 0.2))
  with pytest.raises(ValueError, match="three numbers"):
    tfds_common.assign_splits(sizes, (0.8, 0.2))


# ---------------------------------------------------------------------------------------------
# End-to-end builds from a tmp manual_dir with synthesised images.


def _isic_subset_manual_dir(root: pathlib.Path) -> tuple[pathlib.Path, dict]:
  gt_header, gt = read_csv(ISIC_DIR / isic.GROUND_TRUTH_CSV)
  meta_header, meta = read_csv(ISIC_DIR / isic.METADATA_CSV)
  pick = set(range(12))
  pick |= set([i for i, m in enumerate(meta) if not m["sex"]][:4])
  by_lesion = collections.defaultdict(list)
  for i, m in enumerate(meta):
    if m["lesion_id"]:
      by_lesion[m["lesion_id"]].append(i)
  for lesion in sorted(l for l, idx in by_lesion.items() if len(idx) >= 2)[:3]:
    pick |= set(by_lesion[lesion])
  for c in ("MEL", "BCC", "AK", "BKL", "DF", "VASC", "SCC"):
    pick.add(next(i for i, r in enumerate(gt) if r[c] == "1.0"))
  pick = sorted(pick)
  manual = root / "isic_manual"
  manual.mkdir()
  write_csv(manual / isic.GROUND_TRUTH_CSV, gt_header, [gt[i] for i in pick])
  write_csv(manual / isic.METADATA_CSV, meta_header, [meta[i] for i in pick])
  images = [meta[i]["image"] for i in pick]
  corrupt, missing = images[0], images[1]
  for image in images[2:]:
    _write_jpeg(manual / isic.IMAGE_DIR / f"{image}.jpg", image)
  (manual / isic.IMAGE_DIR / f"{corrupt}.jpg").write_bytes(np.random.default_rng(0).bytes(500))
  return manual, {
    "meta": {meta[i]["image"]: meta[i] for i in pick},
    "corrupt": corrupt,
    "missing": missing,
  }


@pytest.fixture(scope="module")
def isic_build(tmp_path_factory):
  root = tmp_path_factory.mktemp("isic")
  manual, info = _isic_subset_manual_dir(root)
  data_dir = root / "tfds"
  with _BlockTensorFlow() as blocker:
    source = tfds_common.load_source(
      "isic2019", "train", manual_dir=manual, data_dir=data_dir, image_size=64
    )
    records = _all_records("isic2019/sex_64", data_dir, tfds_common.SPLITS)
  return {
    "manual": manual,
    "data_dir": data_dir,
    "source": source,
    "records": records,
    "tf_attempts": blocker.attempts,
    **info,
  }


def test_isic_build_end_to_end(isic_build):
  # Built and read with TF unimportable, and nothing even tried to import it.
  assert "tensorflow" not in sys.modules and isic_build["tf_attempts"] == []
  records = isic_build["records"]
  meta = isic_build["meta"]
  stats = tfds_common.build_stats(isic_build["source"])
  assert stats.total("missing_image") == 1 and stats.total("corrupt_image") == 1
  assert stats.total("rows") == len(meta)
  n_written = sum(len(r) for r in records.values())
  assert n_written == stats.total("examples") == len(meta) - 2
  assert len(isic_build["source"]) == len(records["train"]) > 0
  info = isic_build["source"].dataset_info
  assert info.features["label"].names == list(isic.CLASS_NAMES)
  assert info.metadata["group_names"] == ["female", "male"]
  assert info.metadata["build_stats"] == stats.as_dict()

  seen_ids = set()
  lesion_splits = collections.defaultdict(set)
  n_unknown = 0
  for split, recs in records.items():
    for rec in recs:
      assert set(rec) == {
        "image",
        "label",
        "group",
        "image_id",
        "sex",
        "age_approx",
        "lesion_id",
        "anatom_site_general",
      }
      assert rec["image"].dtype == np.uint8 and rec["image"].shape == (64, 64, 3)
      image_id = rec["image_id"].decode()
      row = meta[image_id]
      seen_ids.add(image_id)
      assert rec["group"] == {"female": 0, "male": 1, "": -1}[row["sex"]]
      n_unknown += rec["group"] == -1
      assert rec["sex"].decode() == row["sex"]
      assert rec["age_approx"] == (int(float(row["age_approx"])) if row["age_approx"] else -1)
      assert isic.CLASS_NAMES[rec["label"]] == next(
        c for c in isic.CLASS_NAMES if _gt_value(isic_build["manual"], image_id, c)
      )
      # The stored pixels are the synthesised colour of this very image.
      np.testing.assert_allclose(rec["image"].reshape(-1, 3).mean(0), _colour(image_id), atol=6)
      if row["lesion_id"]:
        lesion_splits[row["lesion_id"]].add(split)
  assert n_unknown == stats.total("unknown_group") == 4  # The 4 rows without sex are kept.
  assert isic_build["corrupt"] not in seen_ids and isic_build["missing"] not in seen_ids
  assert seen_ids == set(meta) - {isic_build["corrupt"], isic_build["missing"]}
  assert lesion_splits and all(len(s) == 1 for s in lesion_splits.values())


_GT_CACHE: dict = {}


def _gt_value(manual, image_id, column) -> bool:
  if manual not in _GT_CACHE:
    _, rows = read_csv(manual / isic.GROUND_TRUTH_CSV)
    _GT_CACHE[manual] = {r["image"]: r for r in rows}
  return _GT_CACHE[manual][image_id][column] == "1.0"


def test_isic_prepared_dataset_is_reused_without_manual_dir(isic_build):
  source = tfds_common.load_source(
    "isic2019", "validation", manual_dir=None, data_dir=isic_build["data_dir"], image_size=64
  )
  assert len(source) == len(isic_build["records"]["validation"])
  with pytest.raises(BadImageError, match="skipped 2"):
    tfds_common.load_source(
      "isic2019",
      "test",
      manual_dir=None,
      data_dir=isic_build["data_dir"],
      image_size=64,
      on_bad_image="error",
    )


def test_isic_on_bad_image_error(isic_build, tmp_path):
  with pytest.raises(BadImageError) as err:
    tfds_common.load_source(
      "isic2019",
      "train",
      manual_dir=isic_build["manual"],
      data_dir=tmp_path,
      image_size=32,
      attribute="age",
      on_bad_image="error",
    )
  assert isic_build["missing"] in str(err.value) or isic_build["corrupt"] in str(err.value)


def _fitz_manual_dir(root: pathlib.Path) -> tuple[pathlib.Path, dict]:
  header, rows = read_csv(FITZ_CSV)
  pick = [r for r in rows[:30] if r["fitzpatrick_scale"] != "-1"][:14]
  pick += [r for r in rows if r["fitzpatrick_scale"] == "-1"][:4]
  manual = root / "fitz_manual"
  manual.mkdir()
  write_csv(manual / fitz.CSV_NAME, header, pick)
  hashes = [r["md5hash"] for r in pick]
  corrupt, missing, in_root = hashes[0], hashes[1], hashes[2:4]
  for h in hashes[2:]:
    folder = manual if h in in_root else manual / fitz.IMAGE_DIR
    _write_jpeg(folder / f"{h}.jpg", h, size=(30, 40))
  (manual / fitz.IMAGE_DIR / f"{corrupt}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
  return manual, {"rows": {r["md5hash"]: r for r in pick}, "corrupt": corrupt, "missing": missing}


@pytest.fixture(scope="module")
def fitz_build(tmp_path_factory):
  root = tmp_path_factory.mktemp("fitz")
  manual, info = _fitz_manual_dir(root)
  data_dir = root / "tfds"
  out = {}
  with _BlockTensorFlow() as blocker:
    for unknown in fitz.UNKNOWN_SKIN_CHOICES:
      source = tfds_common.load_source(
        "fitzpatrick17k",
        "train",
        manual_dir=manual,
        data_dir=data_dir,
        image_size=16,
        label_granularity=9,
        unknown_skin=unknown,
      )
      name = source.dataset_info.full_name.split("/")[0] + "/" + source.dataset_info.config_name
      out[unknown] = (source, _all_records(name, data_dir, source.dataset_info.splits.keys()))
  return {"manual": manual, "builds": out, "tf_attempts": blocker.attempts, **info}


def test_fitzpatrick_build_end_to_end(fitz_build):
  assert "tensorflow" not in sys.modules and fitz_build["tf_attempts"] == []
  rows = fitz_build["rows"]
  for unknown, (source, records) in fitz_build["builds"].items():
    assert source.dataset_info.config_name == f"9classes_{unknown}_16"
    stats = tfds_common.build_stats(source)
    assert stats.total("missing_image") == 1 and stats.total("corrupt_image") == 1
    assert source.dataset_info.features["label"].names == list(fitz.NINE_PARTITION_NAMES)
    assert source.dataset_info.metadata["group_names"] == ["light", "dark"]
    seen = set()
    for recs in records.values():
      for rec in recs:
        assert set(rec) == {
          "image",
          "label",
          "group",
          "image_id",
          "fitzpatrick_scale",
          "fitzpatrick_centaur",
        }
        assert rec["image"].dtype == np.uint8 and rec["image"].shape == (16, 16, 3)
        md5 = rec["image_id"].decode()
        seen.add(md5)
        row = rows[md5]
        scale = int(row["fitzpatrick_scale"])
        assert rec["fitzpatrick_scale"] == scale
        if scale == -1:
          expected = -1 if unknown == "exclude" else 1
        else:
          expected = 0 if scale <= 3 else 1
        assert rec["group"] == expected
        assert fitz.NINE_PARTITION_NAMES[rec["label"]] == row["nine_partition_label"]
        np.testing.assert_allclose(rec["image"].reshape(-1, 3).mean(0), _colour(md5), atol=6)
    assert seen == set(rows) - {fitz_build["corrupt"], fitz_build["missing"]}
    n_minus1 = sum(rows[m]["fitzpatrick_scale"] == "-1" for m in seen)
    assert n_minus1 == 4
    assert stats.total("unknown_group") == (n_minus1 if unknown == "exclude" else 0)


# ---------------------------------------------------------------------------------------------
# Errors a CLI user can act on.


@pytest.mark.parametrize("name", ["isic2019", "fitzpatrick17k"])
def test_missing_or_empty_manual_dir(name, tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(DatasetNotFoundError) as err:
    tfds_common.load_source(
      name, "train", manual_dir=missing, data_dir=tmp_path / "d", image_size=16
    )
  assert str(missing) in str(err.value) and "does not exist" in str(err.value)
  expected_file = isic.GROUND_TRUTH_CSV if name == "isic2019" else fitz.CSV_NAME
  assert expected_file in str(err.value)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(DatasetNotFoundError, match="is empty") as err:
    tfds_common.load_source(name, "train", manual_dir=empty, data_dir=tmp_path / "d", image_size=16)
  assert str(empty) in str(err.value)
  assert isinstance(err.value, ValueError)


def test_manual_dir_missing_file_is_named(tmp_path):
  (tmp_path / isic.GROUND_TRUTH_CSV).write_text("image\n")
  with pytest.raises(DatasetNotFoundError, match=isic.METADATA_CSV):
    tfds_common.load_source(
      "isic2019", "train", manual_dir=tmp_path, data_dir=tmp_path / "d", image_size=16
    )


def test_fitzpatrick_manual_dir_without_images(tmp_path):
  (tmp_path / fitz.CSV_NAME).write_bytes(FITZ_CSV.read_bytes()[:2000])
  with pytest.raises(DatasetNotFoundError, match="no images/ folder and no"):
    tfds_common.load_source(
      "fitzpatrick17k", "train", manual_dir=tmp_path, data_dir=tmp_path / "d", image_size=16
    )


def test_builder_reports_missing_manual_dir_through_tfds(tmp_path):
  """The check also runs inside download_and_prepare (e.g. via tfds.data_source)."""
  builder = tfds_common.make_builder("isic2019", data_dir=tmp_path, image_size=16)
  with pytest.raises(DatasetNotFoundError, match="nowhere"):
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(tmp_path / "nowhere"))
    )


def test_malformed_isic_row_names_file_line_field(isic_build, tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / isic.IMAGE_DIR).mkdir()
  (manual / isic.METADATA_CSV).write_bytes((isic_build["manual"] / isic.METADATA_CSV).read_bytes())
  header, rows = read_csv(isic_build["manual"] / isic.GROUND_TRUTH_CSV)
  rows[3]["NV"] = "yes"  # Data row 4 = line 5 of the file.
  write_csv(manual / isic.GROUND_TRUTH_CSV, header, rows)
  with pytest.raises(CsvFormatError) as err:
    tfds_common.load_source(
      "isic2019", "train", manual_dir=manual, data_dir=tmp_path / "d", image_size=16
    )
  message = str(err.value)
  assert isic.GROUND_TRUTH_CSV in message and "line 5" in message and "'NV'" in message
  assert (err.value.line, err.value.field) == (5, "NV")


def test_malformed_metadata_and_fitzpatrick_rows(tmp_path):
  meta = tmp_path / "meta.csv"
  meta.write_text("image,age_approx,lesion_id,sex\nA,40,,female\nB,forty,,male\n")
  gt = tmp_path / "gt.csv"
  gt.write_text(
    "image," + ",".join(isic.CLASS_NAMES) + ",UNK\nA,1.0,0,0,0,0,0,0,0,0\nB,0,1.0,0,0,0,0,0,0,0\n"
  )
  with pytest.raises(CsvFormatError, match=r"meta\.csv, line 3, field 'age_approx'"):
    isic.read_isic_csvs(gt, meta)
  # UNK rows are dropped by the builder (counted), not errors.
  gt.write_text("image," + ",".join(isic.CLASS_NAMES) + ",UNK\nA,0,0,0,0,0,0,0,0,1.0\n")
  meta.write_text("image,age_approx,lesion_id,sex\nA,40,,female\n")
  assert isic.read_isic_csvs(gt, meta)[0].label is None

  f = tmp_path / "fitzpatrick17k.csv"
  f.write_text("md5hash,fitzpatrick_scale,label,nine_partition_label\nabc,2,acne,inflammatory\n")
  with pytest.raises(CsvFormatError, match=r"line 1, field 'three_partition_label'"):
    fitz.read_fitzpatrick_csv(f)
  f.write_text(
    "md5hash,fitzpatrick_scale,label,nine_partition_label,three_partition_label\n"
    "abc,2,acne,inflammatory,non-neoplastic\n"
    "def,7,acne,inflammatory,non-neoplastic\n"
  )
  with pytest.raises(CsvFormatError, match=r"line 3, field 'fitzpatrick_scale'"):
    fitz.read_fitzpatrick_csv(f)
  f.write_text(
    "md5hash,fitzpatrick_scale,label,nine_partition_label,three_partition_label\n"
    "abc,2,acne,inflammatory\n"
  )
  with pytest.raises(CsvFormatError, match=r"line 2, field 'three_partition_label'"):
    fitz.read_fitzpatrick_csv(f)


def test_config_names_and_options():
  assert isic.make_config(image_size=64).name == "sex_64"
  config = isic.make_config(image_size=64, attribute="age", seed=2)
  assert config.name == "age_64_split60-20-20_seed2"
  assert fitz.make_config(label_granularity=3, unknown_skin="dark", image_size=224).name == (
    "3classes_dark_224"
  )
  assert isic.Isic2019.DEFAULT_BUILDER_CONFIG_NAME in isic.Isic2019.builder_configs
  assert fitz.Fitzpatrick17k.DEFAULT_BUILDER_CONFIG_NAME in fitz.Fitzpatrick17k.builder_configs
  with pytest.raises(ValueError, match="attribute"):
    isic.make_config(attribute="race")
  with pytest.raises(ValueError, match="unknown_skin"):
    fitz.make_config(unknown_skin="light")
  with pytest.raises(ValueError, match="label_granularity"):
    fitz.make_config(label_granularity=10)
  with pytest.raises(ValueError, match="on_bad_image"):
    tfds_common.make_builder("isic2019", data_dir="/tmp/x", on_bad_image="ignore")
  with pytest.raises(ValueError, match="unknown dataset"):
    tfds_common.make_builder("isic2018", data_dir="/tmp/x")
