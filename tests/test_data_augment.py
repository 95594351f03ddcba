"""Training-time augmentation (``train_batches(augment=...)``, ``config.data.augment``)."""

import inspect
import itertools

import numpy as np
import pytest

from fairjax import config as fj_config
from fairjax.data import pipeline
from fairjax.data.pipeline import (
  AUGMENTS,
  CROP_RATIO,
  CROP_SCALE,
  IMAGE_MEAN,
  IMAGE_STD,
  ArraySource,
  augment_crop_box,
  augment_draws,
  eval_batches,
  group_balanced_batches,
  train_batches,
)


def _uint8(batch):
  """Undo normalisation of a batch: uint8-valued int array [B, S, S, 3]."""
  return np.rint(np.asarray(batch["image"]) * IMAGE_STD + IMAGE_MEAN).astype(int)


def _random_source(n, size, seed=0):
  """Records with random (left-right asymmetric) images; label = record index."""
  rng = np.random.default_rng(seed)
  return ArraySource(
    {
      "image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
      "label": np.arange(n, dtype=np.int32),
      "group": (np.arange(n) % 2).astype(np.int32),
    }
  )


def _epoch(src, **kw):
  """All batches of one epoch as uint8 images [N, S, S, 3] and labels [N]."""
  batches = list(train_batches(src, **kw))
  return (
    np.concatenate([_uint8(b) for b in batches]),
    np.concatenate([b["label"] for b in batches]),
  )


def test_augment_draws_depend_only_on_seed_epoch_position():
  a = augment_draws(100, seed=3, epoch=2)
  assert a.shape == (100, 5) and a.dtype == np.float64
  assert ((a >= 0) & (a < 1)).all()
  # Row p does not depend on the epoch length (the rows are a prefix of one stream).
  np.testing.assert_array_equal(augment_draws(10, seed=3, epoch=2), a[:10])
  assert not np.array_equal(augment_draws(100, seed=3, epoch=1), a)
  assert not np.array_equal(augment_draws(100, seed=4, epoch=2), a)


def test_flip_mirrors_exactly_the_drawn_rows_and_keeps_the_order():
  src = _random_source(64, 8)
  kw = dict(batch_size=16, image_size=8, seed=5, epoch=1)
  plain, labels = _epoch(src, **kw)
  flipped, labels_flip = _epoch(src, augment="flip", **kw)
  # Augmentation has its own random stream: the example order is unchanged.
  np.testing.assert_array_equal(labels_flip, labels)
  should_flip = augment_draws(64, seed=5, epoch=1)[:, 4] < 0.5
  assert 0 < should_flip.sum() < 64
  np.testing.assert_array_equal(flipped[should_flip], plain[should_flip][:, :, ::-1])
  np.testing.assert_array_equal(flipped[~should_flip], plain[~should_flip])


def test_crop_box_is_inside_the_image_with_the_documented_shape():
  rng = np.random.default_rng(0)
  for h, w in ((60, 60), (48, 96), (7, 5)):
    for u in rng.random((500, 5)):
      left, top, cw, ch = augment_crop_box(u, h, w)
      assert 0 <= left and left + cw <= w and 0 <= top and top + ch <= h
      assert cw >= 1 and ch >= 1
      if h == w == 60 and cw < w and ch < h:  # not clipped: area and ratio as drawn
        share = CROP_SCALE[0] + u[0] * (CROP_SCALE[1] - CROP_SCALE[0])
        assert abs(cw * ch / (h * w) - share) < 0.05
        assert CROP_RATIO[0] - 0.05 < cw / ch < CROP_RATIO[1] + 0.05
  # u = 0 / just below 1 put the crop at the first / last valid offset.
  assert augment_crop_box(np.array([0.0, 0.5, 0.0, 0.0, 0.0]), 100, 100)[:2] == (0, 0)
  left, top, cw, ch = augment_crop_box(np.array([0.0, 0.5, 0.999999, 0.999999, 0.0]), 100, 100)
  assert (left + cw, top + ch) == (100, 100)


def test_flip_crop_takes_the_drawn_crop():
  # Channel 0 = 4 * column, channel 1 = 4 * row: an output's mean value tells the crop centre.
  n, size, out = 24, 60, 12
  cols = np.broadcast_to(4 * np.arange(size)[None, :], (size, size))
  image = np.stack([cols, cols.T, np.zeros_like(cols)], -1).astype(np.uint8)
  src = ArraySource(
    {
      "image": np.broadcast_to(image, (n, size, size, 3)).copy(),
      "label": np.arange(n, dtype=np.int32),
      "group": np.zeros(n, np.int32),
    }
  )
  images, labels = _epoch(src, batch_size=8, image_size=out, seed=1, augment="flip_crop")
  assert images.shape == (n, out, out, 3)
  draws = augment_draws(n, seed=1, epoch=0)
  for img, u in zip(images, draws):
    left, top, cw, ch = augment_crop_box(u, size, size)
    # Bilinear resizing of a linear ramp keeps its mean at the centre of the crop.
    assert abs(img[..., 0].mean() / 4 - (left + (cw - 1) / 2)) < 1.0
    assert abs(img[..., 1].mean() / 4 - (top + (ch - 1) / 2)) < 1.0
    # Mirrored exactly when the flip was drawn: columns then decrease.
    step = np.diff(img[0, :, 0])
    assert (step <= 0).all() if u[4] < 0.5 else (step >= 0).all()


@pytest.mark.parametrize("augment", ["flip", "flip_crop"])
def test_augmented_batches_reproducible_across_workers_and_resume(augment):
  src = _random_source(48, 12)
  kw = dict(batch_size=8, image_size=8, seed=2, augment=augment, sampling="class_balanced")
  ref, ref_labels = _epoch(src, epoch=3, **kw)
  # Resumed at epoch 3 after iterating epochs 0-2 in the same process: the same batches.
  for e in range(3):
    _epoch(src, epoch=e, **kw)
  again, again_labels = _epoch(src, epoch=3, **kw)
  np.testing.assert_array_equal(again, ref)
  np.testing.assert_array_equal(again_labels, ref_labels)
  # One grain worker process instead of in-process threads: the same batches.
  workers, workers_labels = _epoch(src, epoch=3, worker_count=1, **kw)
  np.testing.assert_array_equal(workers, ref)
  np.testing.assert_array_equal(workers_labels, ref_labels)
  # Another epoch augments differently.
  other, _ = _epoch(src, epoch=4, **kw)
  assert not np.array_equal(other, ref)


def test_unknown_augment_rejected():
  with pytest.raises(ValueError, match="augment must be one of"):
    train_batches(_random_source(8, 8), batch_size=4, image_size=8, seed=0, augment="mirror")


def test_eval_and_scoring_batches_are_never_augmented(tmp_path):
  from fairjax import pipeline as run_pipeline
  from fairjax.data import load_dataset

  # Evaluation and the saliency batches have no augmentation switch at all.
  assert "augment" not in inspect.signature(eval_batches).parameters
  assert "augment" not in inspect.signature(group_balanced_batches).parameters
  config = fj_config.base_config()
  config.data.num_train = config.data.num_validation = config.data.num_test = 32
  config.train.batch_size = 8
  config.prune.batch_size = 8
  config.prune.num_batches = 2
  data = load_dataset(config.data, workdir=str(tmp_path))

  def images(batches):
    return [np.asarray(b["image"]) for b in itertools.islice(batches, 2)]

  plain_train = images(run_pipeline._epoch_batches(config, data, 0)(0))
  plain_score = images(run_pipeline._uniform_train_batches(config, data, 1))
  config.data.augment = "flip_crop"
  aug_train = images(run_pipeline._epoch_batches(config, data, 0)(0))
  aug_score = images(run_pipeline._uniform_train_batches(config, data, 1))
  # Training epochs follow config.data.augment; the SNIP / OBD scoring batches do not.
  assert any(not np.array_equal(a, b) for a, b in zip(aug_train, plain_train))
  for a, b in zip(aug_score, plain_score):
    np.testing.assert_array_equal(a, b)


def test_config_augment_validated():
  assert fj_config.AUGMENTS == AUGMENTS == pipeline.AUGMENTS
  config = fj_config.base_config()
  assert config.data.augment == "none"
  for augment in AUGMENTS:
    config.data.augment = augment
    fj_config.validate_config(config)
  config.data.augment = "mirror"
  with pytest.raises(fj_config.ConfigError, match=r"config\.data\.augment='mirror'"):
    fj_config.validate_config(config)
