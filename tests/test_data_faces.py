"""Tests of the FairFace / UTKFace / CelebA TFDS builders (design.md section 6.5).

Each dataset is synthesised in its real layout (file names, CSV / text formats) with a few dozen
8x8 JPEGs, one corrupt image and one malformed entry, then built once per module at 8 px through
:func:`fairjax.data.load_dataset`, the path the CLI takes.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import pathlib

import numpy as np
import pytest
from PIL import Image

from fairjax import config as fj_config
from fairjax.data import DatasetSplits, celeba, faces, fairface, load_dataset, tfds_common, utkface
from fairjax.data.tfds_common import BadImageError, CsvFormatError, DatasetNotFoundError
from tests.csv_helpers import write_csv

SPLITS = tfds_common.SPLITS


def _colour(key: str) -> tuple[int, int, int]:
  d = hashlib.md5(key.encode()).digest()
  return (30 + d[0] % 200, 30 + d[1] % 200, 30 + d[2] % 200)


def _jpeg(path: pathlib.Path, key: str, size=(8, 8)) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", size, _colour(key)).save(path, format="JPEG", quality=95)


def _corrupt(path: pathlib.Path) -> None:
  path.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")


# ---------------------------------------------------------------------------------------------
# Synthesised trees.


def _fairface_tree(root: pathlib.Path) -> dict:
  header = list(fairface.COLUMNS)
  rows = {"train": [], "val": []}
  for split, n in (("train", 42), ("val", 14)):
    for i in range(n):
      rows[split].append(
        {
          "file": f"{split}/{i + 1}.jpg",
          "age": faces.FAIRFACE_AGES[(i * 5) % 9],
          "gender": faces.GENDER_NAMES[(i // 7) % 2],
          "race": faces.FAIRFACE_RACES[i % 7],
          "service_test": "True" if i % 3 else "False",
        }
      )
  write_csv(root / fairface.TRAIN_CSV, header, rows["train"])
  write_csv(root / fairface.VAL_CSV, header, rows["val"])
  for r in rows["train"] + rows["val"]:
    _jpeg(root / r["file"], r["file"], size=(9, 11))
  corrupt, missing = rows["train"][3]["file"], rows["val"][2]["file"]
  _corrupt(root / corrupt)
  (root / missing).unlink()
  return {
    "rows": {r["file"]: r for r in rows["train"] + rows["val"]},
    "train_files": [r["file"] for r in rows["train"]],
    "bad": {corrupt, missing},
  }


def _utk_name(age, gender, race, i) -> str:
  return f"{age}_{gender}_{race}_2017011{i:010d}.jpg.chip.jpg"


def _utkface_tree(root: pathlib.Path) -> dict:
  folder = root / utkface.IMAGE_DIR
  good = [_utk_name(20 + i, i % 2, i % 5, i) for i in range(40)]
  for name in good:
    _jpeg(folder / name, name)
  bad_names = [
    "61_1_20170109142408075.jpg.chip.jpg",  # no race field (a real UTKFace name)
    "30_2_1_20170109150557335.jpg.chip.jpg",
  ]  # gender 2
  for name in bad_names:
    _jpeg(folder / name, name)
  corrupt = good[6]  # race 1, gender 0
  _corrupt(folder / corrupt)
  return {"good": good, "bad_names": bad_names, "corrupt": corrupt}


def _celeba_tree(root: pathlib.Path) -> dict:
  rng = np.random.default_rng(0)
  n = 24
  images = [f"{i + 1:06d}.jpg" for i in range(n)]
  values = rng.choice(np.array([-1, 1], np.int8), size=(n, 40))
  lines = [f"{n}", " ".join(faces.CELEBA_ATTRIBUTES) + " "]
  for image, v in zip(images, values):
    lines.append(image + "".join(("  " if x == 1 else " ") + str(x) for x in v))
  (root / celeba.IMAGE_DIR).mkdir()
  (root / celeba.ATTR_FILE).write_text("\n".join(lines) + "\n")
  partition = {image: SPLITS[0 if i < 14 else 1 if i < 19 else 2] for i, image in enumerate(images)}
  (root / celeba.PARTITION_FILE).write_text(
    "".join(f"{image} {SPLITS.index(s)}\n" for image, s in partition.items())
  )
  for image in images:
    _jpeg(root / celeba.IMAGE_DIR / image, image, size=(8, 10))
  corrupt, missing = images[1], images[20]
  _corrupt(root / celeba.IMAGE_DIR / corrupt)
  (root / celeba.IMAGE_DIR / missing).unlink()
  return {"values": dict(zip(images, values)), "partition": partition, "bad": {corrupt, missing}}


class _Messages(logging.Handler):
  def __init__(self):
    super().__init__(logging.WARNING)
    self.lines: list[str] = []

  def emit(self, record):
    self.lines.append(record.getMessage())


def _data_cfg(name: str, manual: pathlib.Path, data_dir: pathlib.Path, **overrides):
  cfg = fj_config.base_config()
  cfg.data.name = name
  cfg.data.manual_dir = str(manual)
  cfg.data.data_dir = str(data_dir)
  cfg.data.stored_image_size = 8
  cfg.data.image_size = 8
  for key, value in overrides.items():
    cfg.data[key] = value
  fj_config.validate_config(cfg)
  return cfg.data


def _records(data: DatasetSplits) -> dict[str, list[dict]]:
  return {s: [data.sources[s][i] for i in range(len(data.sources[s]))] for s in SPLITS}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """Every synthesised tree built once (8 px): FairFace for the race and gender tasks, UTKFace
  with 4 and 5 races, CelebA; plus the warnings logged while building."""
  root = tmp_path_factory.mktemp("faces")
  for name in ("fairface", "utkface", "celeba"):
    (root / name).mkdir()
  trees = {
    "fairface": _fairface_tree(root / "fairface"),
    "utkface": _utkface_tree(root / "utkface"),
    "celeba": _celeba_tree(root / "celeba"),
  }
  handler = _Messages()
  logging.getLogger("absl").addHandler(handler)
  try:
    out = {}
    for key, name, overrides in (
      ("fairface_race", "fairface", {}),
      ("fairface_gender", "fairface", {"task": "gender"}),
      ("utkface_race4", "utkface", {}),
      ("utkface_gender5", "utkface", {"task": "gender", "utkface_races": 5}),
      ("celeba", "celeba", {}),
      ("celeba_multilabel", "celeba", {"task": "multilabel"}),
    ):
      data = load_dataset(
        _data_cfg(name, root / name, root / "tfds", **overrides), workdir=str(root)
      )
      out[key] = (data, _records(data))
  finally:
    logging.getLogger("absl").removeHandler(handler)
  return {"trees": trees, "data": out, "log": handler.lines, "root": root}


def _check_common(data: DatasetSplits, records, expect_image_ids: set[str]) -> None:
  seen = set()
  for split in SPLITS:
    assert len(records[split]) == len(data.labels[split]) > 0
    for rec in records[split]:
      assert rec["image"].dtype == np.uint8 and rec["image"].shape == (8, 8, 3)
      image_id = rec["image_id"].decode()
      assert image_id not in seen
      seen.add(image_id)
      np.testing.assert_allclose(rec["image"].reshape(-1, 3).mean(0), _colour(image_id), atol=8)
    np.testing.assert_array_equal(data.labels[split], [r["label"] for r in records[split]])
    np.testing.assert_array_equal(data.groups[split], [r["group"] for r in records[split]])
  assert seen == expect_image_ids


def _group_counts(records, names) -> dict[str, dict[str, int]]:
  return {
    s: {n: sum(int(r["group"]) == g for r in records[s]) for g, n in enumerate(names)}
    for s in SPLITS
  }


# ---------------------------------------------------------------------------------------------
# FairFace.


def test_fairface_race_task(built):
  tree = built["trees"]["fairface"]
  data, records = built["data"]["fairface_race"]
  assert isinstance(data, DatasetSplits) and data.name == "fairface"
  assert data.class_names == faces.FAIRFACE_RACES and data.num_classes == 7
  assert data.group_names == ("Male", "Female") and data.num_groups == 2
  _check_common(data, records, set(tree["rows"]) - tree["bad"])
  for split in SPLITS:
    for rec in records[split]:
      row = tree["rows"][rec["image_id"].decode()]
      assert faces.FAIRFACE_RACES[rec["label"]] == row["race"]
      assert faces.GENDER_NAMES[rec["group"]] == row["gender"]
      assert faces.FAIRFACE_AGES[rec["age"]] == row["age"]
      assert bool(rec["service_test"]) == (row["service_test"] == "True")
      # The official val CSV is the test split; validation is held out of train.
      assert row["file"].startswith("val/" if split == "test" else "train/")
  # 10 % of the 41 readable train rows (stratified, so about 4) form the validation split.
  assert 2 <= len(records["validation"]) <= 7
  assert len(records["train"]) + len(records["validation"]) == 41
  assert len(records["test"]) == 13
  stats = tfds_common.build_stats(data.sources["train"])
  assert stats.total("corrupt_image") == 1 and stats.total("missing_image") == 1
  # describe() counts what the tree holds.
  described = data.describe()
  assert described["group_counts"] == _group_counts(records, data.group_names)
  expected = collections.Counter(
    tree["rows"][f]["gender"] for f in tree["rows"] if f.startswith("val/") and f not in tree["bad"]
  )
  assert described["group_counts"]["test"] == dict(expected)
  both = collections.Counter(
    tree["rows"][f]["gender"] for f in tree["train_files"] if f not in tree["bad"]
  )
  assert {
    g: described["group_counts"]["train"][g] + described["group_counts"]["validation"][g]
    for g in faces.GENDER_NAMES
  } == dict(both)


def test_fairface_gender_task_has_seven_race_groups(built):
  tree = built["trees"]["fairface"]
  race_data, race_records = built["data"]["fairface_race"]
  data, records = built["data"]["fairface_gender"]
  assert data.class_names == ("Male", "Female") and data.num_classes == 2
  assert data.group_names == faces.FAIRFACE_RACES and data.num_groups == 7
  for split in SPLITS:  # The same images in the same splits whatever the task.
    assert {r["image_id"] for r in records[split]} == {r["image_id"] for r in race_records[split]}
    for rec in records[split]:
      row = tree["rows"][rec["image_id"].decode()]
      assert (data.class_names[rec["label"]], data.group_names[rec["group"]]) == (
        row["gender"],
        row["race"],
      )
  counts = data.describe()["group_counts"]["test"]
  expected = collections.Counter(
    tree["rows"][f]["race"] for f in tree["rows"] if f.startswith("val/") and f not in tree["bad"]
  )
  assert counts == {race: expected.get(race, 0) for race in faces.FAIRFACE_RACES}


def test_fairface_split_assignment_is_seeded():
  rows = [
    fairface.FairFaceRow(
      file=f"train/{i}.jpg", race=i % 7, gender=i % 2, age=i % 9, service_test=False, line=i + 2
    )
    for i in range(2000)
  ]
  split = fairface.fairface_split_assignment(rows, 0.1, seed=0)
  assert set(split.values()) == {"train", "validation"}
  assert abs(collections.Counter(split.values())["validation"] / 2000 - 0.1) < 0.01
  assert fairface.fairface_split_assignment(rows, 0.1, seed=0) == split
  assert fairface.fairface_split_assignment(rows, 0.1, seed=1) != split
  assert fairface.make_config(image_size=64, task="gender").name == "gender_race_64"
  assert fairface.make_config(task="age", group="race", validation_fraction=0.2, seed=3).name == (
    "age_race_128_val20_seed3"
  )


@pytest.mark.parametrize(
  "line, field, problem",
  [
    ("train/9.jpg,20-29,Male,Martian,False", "race", "unknown race"),
    ("train/9.jpg,20-29,male,White,False", "gender", "unknown gender"),
    ("train/9.jpg,20-29,Male,White", "service_test", "expected 5 fields, found 4"),
    ("train/1.jpg,20-29,Male,White,False", "file", "duplicate"),
    ("../secret.jpg,20-29,Male,White,False", "file", "not a path inside the image root"),
  ],
)
def test_fairface_bad_row_names_file_line_field(tmp_path, line, field, problem):
  path = tmp_path / fairface.TRAIN_CSV
  path.write_text(
    "file,age,gender,race,service_test\ntrain/1.jpg,3-9,Female,Indian,True\n" + line + "\n"
  )
  with pytest.raises(CsvFormatError) as err:
    fairface.read_fairface_csv(path)
  assert (err.value.line, err.value.field) == (3, field)
  assert problem in str(err.value) and fairface.TRAIN_CSV in str(err.value)
  assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# UTKFace.


def test_utkface_race_task_four_races(built):
  tree = built["trees"]["utkface"]
  data, records = built["data"]["utkface_race4"]
  assert data.class_names == ("White", "Black", "Asian", "Indian") and data.num_classes == 4
  assert data.group_names == ("Male", "Female")
  kept = {n for n in tree["good"] if utkface.parse_utkface_name(n).race < 4}
  _check_common(data, records, kept - {tree["corrupt"]})
  for split in SPLITS:
    for rec in records[split]:
      parsed = utkface.parse_utkface_name(rec["image_id"].decode())
      assert (rec["label"], rec["group"], rec["age"]) == (parsed.race, parsed.gender, parsed.age)
  stats = tfds_common.build_stats(data.sources["test"])  # Read back from the build's files.
  assert stats.total("skipped_row") == 2  # The two names that lack or misstate a field.
  assert stats.total("skipped_label") == 8  # The 8 files of race 4 ("Others").
  assert stats.total("corrupt_image") == 1
  assert stats.total("examples") == len(kept) - 1
  info = data.sources["test"].dataset_info
  assert sorted(name for name, _ in info.metadata["skipped"]) == sorted(tree["bad_names"])
  # The skipped names are in the build log too, with the reason.
  for name in tree["bad_names"]:
    assert any(name in line for line in built["log"]), built["log"]
  assert any("3 of the 4 fields" in line for line in built["log"])
  described = data.describe()["group_counts"]
  total = collections.Counter()
  for split in SPLITS:
    total.update(described[split])
  expected = collections.Counter(
    faces.GENDER_NAMES[utkface.parse_utkface_name(n).gender] for n in kept - {tree["corrupt"]}
  )
  assert dict(total) == dict(expected)


def test_utkface_gender_task_five_races(built):
  tree = built["trees"]["utkface"]
  data, records = built["data"]["utkface_gender5"]
  assert data.class_names == ("Male", "Female")
  assert data.group_names == faces.UTKFACE_RACES and data.num_groups == 5
  _check_common(data, records, set(tree["good"]) - {tree["corrupt"]})
  for split in SPLITS:
    for rec in records[split]:
      parsed = utkface.parse_utkface_name(rec["image_id"].decode())
      assert (rec["label"], rec["group"]) == (parsed.gender, parsed.race)
  total = collections.Counter()
  for split in SPLITS:
    total.update(data.describe()["group_counts"][split])
  assert total == {"White": 8, "Black": 7, "Asian": 8, "Indian": 8, "Others": 8}
  # Strata are (race, gender): leaving out "Others" moves no other file between splits.
  race4 = {r["image_id"]: s for s, recs in built["data"]["utkface_race4"][1].items() for r in recs}
  for split in SPLITS:
    for rec in records[split]:
      assert race4.get(rec["image_id"], split) == split


@pytest.mark.parametrize(
  "name, reason",
  [
    ("61_1_20170109142408075.jpg.chip.jpg", "3 of the 4 fields"),
    ("39_1_20170116174525125.jpg.chip.jpg", "3 of the 4 fields"),
    ("24_0_1_20170116220224657 .jpg.chip.jpg", "is not <age>"),
    ("30_1_7_20170116220224657.jpg.chip.jpg", "race 7"),
    ("notes.txt", "is not <age>"),
  ],
)
def test_utkface_bad_names_are_reasons_not_guesses(name, reason):
  result = utkface.parse_utkface_name(name)
  assert isinstance(result, str) and reason in result
  assert utkface.parse_utkface_name("1_0_4_20161219140623097.jpg") == utkface.UtkFaceFile(
    name="1_0_4_20161219140623097.jpg", age=1, gender=0, race=4
  )


# ---------------------------------------------------------------------------------------------
# CelebA.


def test_celeba_attribute_task(built):
  tree = built["trees"]["celeba"]
  data, records = built["data"]["celeba"]
  assert data.class_names == ("not_Smiling", "Smiling") and data.group_names == ("Male", "Female")
  _check_common(data, records, set(tree["values"]) - tree["bad"])
  smiling = faces.CELEBA_ATTRIBUTES.index("Smiling")
  male = faces.CELEBA_ATTRIBUTES.index("Male")
  for split in SPLITS:
    for rec in records[split]:
      image = rec["image_id"].decode()
      values = tree["values"][image]
      assert tree["partition"][image] == split
      assert rec["label"] == (values[smiling] == 1)
      assert rec["group"] == (0 if values[male] == 1 else 1)
      assert rec["attributes"].shape == (40,)
      np.testing.assert_array_equal(rec["attributes"], values)
  assert [len(records[s]) for s in SPLITS] == [13, 5, 4]
  stats = tfds_common.build_stats(data.sources["train"])
  assert stats.total("corrupt_image") == 1 and stats.total("missing_image") == 1
  expected = {s: collections.Counter() for s in SPLITS}
  for image, split in tree["partition"].items():
    if image not in tree["bad"]:
      expected[split]["Male" if tree["values"][image][male] == 1 else "Female"] += 1
  assert data.describe()["group_counts"] == {
    s: {g: expected[s].get(g, 0) for g in data.group_names} for s in SPLITS
  }


def test_celeba_multilabel_task(built):
  """task "multilabel": the label is the 39 attributes other than Male, 0/1 in file order."""
  tree = built["trees"]["celeba"]
  data, records = built["data"]["celeba_multilabel"]
  assert data.multilabel and data.num_classes == 39
  assert data.class_names == faces.CELEBA_LABEL_ATTRIBUTES and "Male" not in data.class_names
  assert data.describe()["task"] == "multilabel"
  cols = [faces.CELEBA_ATTRIBUTES.index(a) for a in faces.CELEBA_LABEL_ATTRIBUTES]
  for split in SPLITS:
    assert data.labels[split].shape == (len(records[split]), 39)
    for rec, row in zip(records[split], data.labels[split]):
      values = tree["values"][rec["image_id"].decode()]
      np.testing.assert_array_equal(rec["label"], (values[cols] == 1).astype(int))
      np.testing.assert_array_equal(row, rec["label"])
  single, _ = built["data"]["celeba"]
  assert data.describe()["group_counts"] == single.describe()["group_counts"]


def _celeba_files(root: pathlib.Path, rows: list[str], partition: str) -> pathlib.Path:
  names = " ".join(faces.CELEBA_ATTRIBUTES)
  (root / celeba.ATTR_FILE).write_text(f"{len(rows)}\n{names}\n" + "\n".join(rows) + "\n")
  (root / celeba.PARTITION_FILE).write_text(partition)
  (root / celeba.IMAGE_DIR).mkdir()
  return root


def test_celeba_malformed_files_name_file_and_line(tmp_path):
  good = "000001.jpg" + "  1 -1" * 20
  short = "000002.jpg" + "  1" * 39
  path = _celeba_files(tmp_path, [good, short], "000001.jpg 0\n000002.jpg 0\n") / celeba.ATTR_FILE
  with pytest.raises(CsvFormatError, match=r"list_attr_celeba\.txt, line 4.*found 40"):
    celeba.read_attribute_file(path)
  path.write_text(
    f"2\n{' '.join(faces.CELEBA_ATTRIBUTES)}\n{good}\n" + "000002.jpg" + "  1" * 39 + " 0\n"
  )
  with pytest.raises(CsvFormatError, match=r"line 4, field 'Young': expected 1 or -1"):
    celeba.read_attribute_file(path)
  path.write_text(f"3\n{' '.join(faces.CELEBA_ATTRIBUTES)}\n{good}\n")
  with pytest.raises(CsvFormatError, match=r"line 1, field 'count'.*says 3 images"):
    celeba.read_attribute_file(path)
  # A partition row for an image without attributes stops the build before any image is read.
  path.write_text(f"1\n{' '.join(faces.CELEBA_ATTRIBUTES)}\n{good}\n")
  (tmp_path / celeba.PARTITION_FILE).write_text("000001.jpg 0\n000009.jpg 2\n")
  with pytest.raises(CsvFormatError, match=r"list_eval_partition\.txt, line 2.*'000009\.jpg'"):
    tfds_common.load_source(
      "celeba", "train", manual_dir=tmp_path, data_dir=tmp_path / "d", image_size=8
    )
  (tmp_path / celeba.PARTITION_FILE).write_text("000001.jpg 3\n")
  with pytest.raises(CsvFormatError, match=r"line 1, field 'partition'"):
    celeba.read_partition_file(tmp_path / celeba.PARTITION_FILE)


# ---------------------------------------------------------------------------------------------
# Errors and config.


@pytest.mark.parametrize(
  "name, expected_file",
  [("fairface", fairface.TRAIN_CSV), ("utkface", utkface.IMAGE_DIR), ("celeba", celeba.ATTR_FILE)],
)
def test_missing_or_empty_manual_dir(name, expected_file, tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(DatasetNotFoundError) as err:
    tfds_common.load_source(
      name, "train", manual_dir=missing, data_dir=tmp_path / "d", image_size=8
    )
  first = str(err.value).splitlines()[0]
  assert str(missing) in first and "does not exist" in first
  assert expected_file in str(err.value)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(DatasetNotFoundError, match="is empty"):
    tfds_common.load_source(name, "train", manual_dir=empty, data_dir=tmp_path / "d", image_size=8)


def test_utkface_folder_without_jpegs(tmp_path):
  (tmp_path / "README.txt").write_text("no images here\n")
  with pytest.raises(DatasetNotFoundError, match="no UTKFace/ folder with"):
    tfds_common.load_source(
      "utkface", "train", manual_dir=tmp_path, data_dir=tmp_path / "d", image_size=8
    )


@pytest.mark.parametrize(
  "overrides, needles",
  [
    ({"name": "celeba", "task": "multi"}, ("config.data.task='multi'", "'multilabel'")),
    ({"name": "celeba", "celeba_attribute": "Male"}, ("config.data.celeba_attribute='Male'",)),
    ({"name": "celeba", "celeba_attribute": "smiling"}, ("39 CelebA attributes",)),
    ({"name": "fairface", "task": "ethnicity"}, ("config.data.task='ethnicity'", "'race'")),
    (
      {"name": "fairface", "task": "race", "face_group": "race"},
      ("config.data.face_group='race'", "('gender', 'age')"),
    ),
    ({"name": "utkface", "task": "age"}, ("config.data.task='age'",)),
    ({"name": "utkface", "utkface_races": 6}, ("config.data.utkface_races=6",)),
    (
      {"name": "fairface", "fairface_validation_fraction": 0.0},
      ("config.data.fairface_validation_fraction=0.0",),
    ),
  ],
)
def test_config_refuses_bad_face_options(overrides, needles):
  cfg = fj_config.base_config()
  cfg.data.manual_dir = "/somewhere"
  for key, value in overrides.items():
    cfg.data[key] = value
  with pytest.raises(fj_config.ConfigError) as err:
    fj_config.validate_config(cfg)
  message = str(err.value)
  assert "\n" not in message
  for needle in needles:
    assert needle in message


def test_config_accepts_face_datasets():
  for name in faces.FACE_DATASETS:
    cfg = fj_config.base_config()
    cfg.data.name = name
    cfg.data.manual_dir = "/somewhere"
    fj_config.validate_config(cfg)
  meanings = fj_config.key_meanings()
  for key in (
    "task",
    "face_group",
    "fairface_validation_fraction",
    "utkface_races",
    "celeba_attribute",
  ):
    assert len(meanings[f"data.{key}"]) > 20, key


def test_on_bad_image_error_names_the_file(built, tmp_path):
  corrupt = built["trees"]["utkface"]["corrupt"]
  with pytest.raises(BadImageError, match=f"cannot decode image file .*{corrupt}"):
    tfds_common.load_source(
      "utkface",
      "train",
      manual_dir=built["root"] / "utkface",
      data_dir=tmp_path,
      image_size=8,
      on_bad_image="error",
    )


def test_fairface_gender_protocol_batches_hold_every_race(built):
  """configs/fairface.py:gender scores on batches of 63 (9 per race): 64, FairGRAPE's size,
  cannot hold the 7 race groups equally and is refused before training, naming the field."""
  import importlib.util

  from tests.test_face_protocols import REPO

  spec = importlib.util.spec_from_file_location("faces_cfg", REPO / "configs" / "fairface.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("gender")
  data, _ = built["data"]["fairface_gender"]
  assert data.num_groups == 7 and config.prune.batch_size == 63
  config.train.batch_size = 4  # the synthesised split is small
  try:  # 63 passes the batch check (this tiny validation split lacks races: refused after it)
    fj_config.validate_data(config, data)
  except fj_config.ConfigError as err:
    assert "prune.batch_size" not in str(err) and "validation split" in str(err)
  config.prune.batch_size = 64
  with pytest.raises(fj_config.ConfigError) as err:
    fj_config.validate_data(config, data)
  message = str(err.value)
  assert "config.prune.batch_size=64" in message and "(7:" in message and "\n" not in message
