"""Tests for the grain input pipeline (fairjax/data/pipeline.py)."""

import numpy as np
import pytest

from fairjax.data.pipeline import (
  IMAGE_MEAN,
  IMAGE_STD,
  ArraySource,
  epoch_indices,
  eval_batches,
  group_balanced_batches,
  normalize_images,
  scan_labels,
  train_batches,
)
from fairjax.data.synthetic import make_demo_split


def _indexed_arrays(n, size=8, groups=None, labels=None):
  """Records whose image is the constant (i % 251) and whose label is i, to track identity."""
  idx = np.arange(n)
  image = np.broadcast_to((idx % 251).astype(np.uint8)[:, None, None, None], (n, size, size, 3))
  return {
    "image": np.ascontiguousarray(image),
    "label": (idx if labels is None else labels).astype(np.int32),
    "group": (idx % 2 if groups is None else groups).astype(np.int32),
    "index": idx,
  }


def _pixel_of(batch):
  """Undo normalisation; returns the (constant) uint8 pixel value of every row."""
  raw = batch["image"] * IMAGE_STD + IMAGE_MEAN
  return np.rint(raw[:, 0, 0, 0]).astype(int)


class _CountingSource:
  """A tfds-like source without labels/groups attributes that counts record reads."""

  def __init__(self, arrays):
    self.arrays = arrays
    self.reads = 0

  def __len__(self):
    return len(self.arrays["label"])

  def __getitem__(self, i):
    self.reads += 1
    return {
      "image": self.arrays["image"][i],
      "label": np.int64(self.arrays["label"][i]),
      "group": np.int64(self.arrays["group"][i]),
      "file_name": f"img_{i}.jpg",
    }


def test_array_source():
  arrays = _indexed_arrays(5)
  src = ArraySource(arrays)
  assert len(src) == 5
  assert src[3]["label"] == 3 and src[3]["index"] == 3 and src[-1]["label"] == 4
  with pytest.raises(IndexError):
    src[5]
  with pytest.raises(ValueError, match="length"):
    ArraySource({**arrays, "label": arrays["label"][:4]})
  with pytest.raises(ValueError, match="group"):
    ArraySource({"image": arrays["image"], "label": arrays["label"]})


def test_normalisation_constants():
  np.testing.assert_allclose(IMAGE_MEAN / 255, [0.485, 0.456, 0.406], rtol=1e-6)
  np.testing.assert_allclose(IMAGE_STD / 255, [0.229, 0.224, 0.225], rtol=1e-6)
  x = np.full((1, 1, 1, 3), 255, np.uint8)
  expected = (1 - IMAGE_MEAN / 255) / (IMAGE_STD / 255)
  np.testing.assert_allclose(normalize_images(x)[0, 0, 0], expected, rtol=1e-6)


def test_train_batches_shapes_and_content():
  src = ArraySource(_indexed_arrays(100))
  batches = list(train_batches(src, batch_size=16, image_size=8, seed=0))
  assert len(batches) == 100 // 16
  for b in batches:
    assert set(b) == {"image", "label", "group"}
    assert b["image"].shape == (16, 8, 8, 3) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and b["group"].dtype == np.int32
    # Image, label and group of a row come from the same record.
    np.testing.assert_array_equal(_pixel_of(b), b["label"] % 251)
    np.testing.assert_array_equal(b["group"], b["label"] % 2)


def test_train_uniform_covers_epoch_without_drop():
  src = ArraySource(_indexed_arrays(50))
  batches = list(train_batches(src, batch_size=16, image_size=8, seed=1, drop_remainder=False))
  assert [len(b["label"]) for b in batches] == [16, 16, 16, 2]
  labels = np.concatenate([b["label"] for b in batches])
  assert sorted(labels.tolist()) == list(range(50))
  assert labels.tolist() != list(range(50))  # shuffled


def test_train_order_reproducible_per_seed_and_epoch():
  src = ArraySource(_indexed_arrays(64))

  def order(**kw):
    batches = train_batches(src, batch_size=8, image_size=8, **kw)
    return np.concatenate([b["label"] for b in batches])

  a = order(seed=3, epoch=2)
  np.testing.assert_array_equal(a, order(seed=3, epoch=2))
  assert not np.array_equal(a, order(seed=3, epoch=1))
  assert not np.array_equal(a, order(seed=4, epoch=2))
  # Resuming at epoch 2 does not depend on having iterated epochs 0 and 1.
  np.testing.assert_array_equal(epoch_indices(src, seed=3, epoch=2), a)


def _imbalanced_source(n=3000, n_dark=300, n_unknown=150):
  groups = np.zeros(n, np.int32)
  groups[:n_dark] = 1
  groups[n_dark : n_dark + n_unknown] = -1
  labels = np.arange(n) % 4
  labels[: n // 2] = 0  # class 0 dominates
  return ArraySource(_indexed_arrays(n, size=4, groups=groups, labels=labels))


def test_group_balanced_sampling_equalises_groups():
  src = _imbalanced_source()
  idx = epoch_indices(src, seed=0, sampling="group_balanced")
  assert len(idx) == len(src)
  g = src.groups[idx]
  n0, n1, nu = (g == 0).sum(), (g == 1).sum(), (g == -1).sum()
  # Unknowns carry the mean known weight: expected share 150/3000 = 5 % of the draws.
  assert abs(nu / len(idx) - 0.05) < 0.02
  # Known groups equal in expectation; binomial sd of n0/(n0+n1) ~ 0.009.
  assert abs(n0 / (n0 + n1) - 0.5) < 0.04
  # Deterministic and epoch-dependent.
  np.testing.assert_array_equal(idx, epoch_indices(src, seed=0, sampling="group_balanced"))
  assert not np.array_equal(idx, epoch_indices(src, seed=0, epoch=1, sampling="group_balanced"))


def test_class_balanced_sampling_equalises_classes():
  src = _imbalanced_source()
  idx = epoch_indices(src, seed=0, sampling="class_balanced")
  freq = np.bincount(src.labels[idx], minlength=4) / len(idx)
  np.testing.assert_allclose(freq, 0.25, atol=0.04)  # uniform would give [0.625, .125, ...]


def test_balanced_sampling_through_train_batches():
  src = _imbalanced_source(n=800, n_dark=80, n_unknown=0)
  batches = train_batches(src, batch_size=32, image_size=4, seed=5, sampling="group_balanced")
  groups = np.concatenate([b["group"] for b in batches])
  assert abs((groups == 1).mean() - 0.5) < 0.08
  with pytest.raises(ValueError, match="sampling"):
    train_batches(src, batch_size=32, image_size=4, seed=5, sampling="balanced")


def test_eval_covers_each_example_once_with_valid_mask():
  src = ArraySource(_indexed_arrays(10))
  batches = list(eval_batches(src, batch_size=4, image_size=8))
  assert len(batches) == 3
  for b in batches:
    assert b["image"].shape == (4, 8, 8, 3) and b["valid"].dtype == np.bool_
  valid = np.concatenate([b["valid"] for b in batches])
  np.testing.assert_array_equal(valid, [True] * 10 + [False] * 2)
  labels = np.concatenate([b["label"] for b in batches])
  np.testing.assert_array_equal(labels[valid], np.arange(10))  # in order, each once
  last = batches[-1]
  np.testing.assert_array_equal(last["group"][~last["valid"]], -1)
  np.testing.assert_array_equal(_pixel_of(last)[~last["valid"]], 0)
  np.testing.assert_array_equal(_pixel_of(last)[last["valid"]], [8, 9])
  # Exact multiple: no padding at all.
  batches = list(eval_batches(src, batch_size=5, image_size=8))
  assert len(batches) == 2 and all(b["valid"].all() for b in batches)


def test_group_balanced_batches_exact_counts():
  src = _imbalanced_source(n=250, n_dark=20, n_unknown=30)  # n < 251: pixel == index
  kw = dict(batch_size=8, image_size=4, seed=0, num_groups=2)
  batches = list(group_balanced_batches(src, **kw, num_batches=10))
  assert len(batches) == 10
  for b in batches:
    assert b["image"].shape == (8, 4, 4, 3)
    assert (b["group"] == 0).sum() == 4 and (b["group"] == 1).sum() == 4
    # Rows match their records: group ids of the source at the recovered indices.
    np.testing.assert_array_equal(src.groups[_pixel_of(b)], b["group"])
  # The 20 dark examples are all used once in the first 5 batches before any repeats.
  dark_pixels = np.concatenate([_pixel_of(b)[b["group"] == 1] for b in batches[:5]])
  assert sorted(dark_pixels.tolist()) == list(range(20))
  # Deterministic for a seed; endless when num_batches is None.
  again = list(group_balanced_batches(src, **kw, num_batches=10))
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  endless = group_balanced_batches(src, **kw)
  assert sum(1 for _, _ in zip(range(50), endless)) == 50


def test_group_balanced_batches_errors():
  src = ArraySource(_indexed_arrays(20, groups=np.zeros(20)))
  with pytest.raises(ValueError, match="group 1"):
    group_balanced_batches(src, batch_size=8, image_size=8, seed=0, num_groups=2)
  with pytest.raises(ValueError, match="multiple"):
    group_balanced_batches(src, batch_size=7, image_size=8, seed=0, num_groups=2)


def test_resizing_and_grayscale_records():
  arrays = _indexed_arrays(6, size=40)
  batch = next(eval_batches(ArraySource(arrays), batch_size=6, image_size=32))
  assert batch["image"].shape == (6, 32, 32, 3)
  # A constant image stays constant under bilinear resizing.
  np.testing.assert_array_equal(_pixel_of(batch), np.arange(6))
  raw = batch["image"] * IMAGE_STD + IMAGE_MEAN
  np.testing.assert_allclose(raw, np.broadcast_to(raw[:, :1, :1, :], raw.shape), atol=1e-3)

  gray = [{"image": np.full((20, 24), 100, np.uint8), "label": 1, "group": 0}] * 3
  batch = next(train_batches(gray, batch_size=3, image_size=16, seed=0))
  assert batch["image"].shape == (3, 16, 16, 3)
  np.testing.assert_allclose(batch["image"] * IMAGE_STD + IMAGE_MEAN, 100.0, atol=1e-3)


def test_resizing_real_demo_images():
  d = make_demo_split(8, image_size=40, seed=0)
  batch = next(eval_batches(ArraySource(d), batch_size=8, image_size=32))
  assert batch["image"].shape == (8, 32, 32, 3)
  # Downscaling preserves the per-image mean colour.
  np.testing.assert_allclose(
    (batch["image"] * IMAGE_STD + IMAGE_MEAN).mean((1, 2)), d["image"].mean((1, 2)), atol=2.0
  )


def test_scan_labels_paths():
  arrays = _indexed_arrays(30, groups=np.arange(30) % 3 - 1)
  labels, groups = scan_labels(ArraySource(arrays))
  np.testing.assert_array_equal(labels, arrays["label"])
  np.testing.assert_array_equal(groups, arrays["group"])
  assert labels.dtype == np.int32 and groups.dtype == np.int32

  src = _CountingSource(arrays)
  labels2, groups2 = scan_labels(src)
  np.testing.assert_array_equal(labels2, labels)
  np.testing.assert_array_equal(groups2, groups)
  assert src.reads == 30
  scan_labels(src)  # cached per source object
  assert src.reads == 30
  # tfds-like records (int64 scalars, extra keys) go through the whole pipeline too.
  b = next(train_batches(src, batch_size=10, image_size=8, seed=0, sampling="group_balanced"))
  assert b["label"].dtype == np.int32 and set(b) == {"image", "label", "group"}
