"""Tests for the synthetic demo dataset (fairjax/data/synthetic.py)."""

import time

import numpy as np
import pytest

from fairjax.data.synthetic import (
  DEFAULT_SPLIT_SIZES,
  DEMO_CLASS_NAMES,
  DEMO_CUE_NAMES,
  DEMO_GROUP_NAMES,
  SHORTCUT_CLASS,
  make_demo_split,
  make_demo_splits,
)


def test_names():
  assert DEMO_GROUP_NAMES == ("light", "dark")
  assert len(DEMO_CLASS_NAMES) == 4
  assert DEMO_CLASS_NAMES == DEMO_CUE_NAMES[:4]


def test_shapes_and_dtypes():
  d = make_demo_split(50, image_size=24, seed=0)
  assert set(d) == {"image", "label", "group"}
  assert d["image"].shape == (50, 24, 24, 3) and d["image"].dtype == np.uint8
  assert d["label"].shape == (50,) and d["label"].dtype == np.int32
  assert d["group"].shape == (50,) and d["group"].dtype == np.int32
  assert set(np.unique(d["group"])) <= {0, 1}
  assert d["label"].min() >= 0 and d["label"].max() < 4


def test_deterministic_and_seed_dependent():
  a = make_demo_split(64, seed=7)
  b = make_demo_split(64, seed=7)
  c = make_demo_split(64, seed=8)
  for k in a:
    assert a[k].tobytes() == b[k].tobytes(), k
  assert a["image"].tobytes() != c["image"].tobytes()


@pytest.mark.parametrize("fraction", [0.2, 0.35])
def test_group_proportion_is_exact(fraction):
  n = 1000
  d = make_demo_split(n, seed=1, minority_fraction=fraction)
  assert (d["group"] == 1).sum() == round(n * fraction)
  # Groups are shuffled, not stored as one block at the end.
  assert 0 < (d["group"][: n // 2] == 1).sum() < round(n * fraction)


@pytest.mark.parametrize("num_classes", [2, 4, 5])
def test_every_class_in_both_groups(num_classes):
  d = make_demo_split(60, seed=2, num_classes=num_classes)
  for g in (0, 1):
    labels = d["label"][d["group"] == g]
    assert set(labels.tolist()) == set(range(num_classes))
    counts = np.bincount(labels, minlength=num_classes)
    assert counts.max() - counts.min() <= 1  # round-robin dealing: balanced classes


def _contrast_stats(d):
  """Per image: median luminance (the skin) minus its 5th percentile (the lesion core)."""
  lum = d["image"].astype(np.float32).mean(-1).reshape(len(d["image"]), -1)
  median = np.median(lum, axis=1)
  core = np.percentile(lum, 5, axis=1)
  return median, median - core


def test_dark_group_has_darker_skin_and_lower_lesion_contrast():
  d = make_demo_split(600, seed=3)
  median, contrast = _contrast_stats(d)
  light, dark = d["group"] == 0, d["group"] == 1
  assert median[dark].mean() < 0.8 * median[light].mean()
  # Lower in gray levels AND relative to the skin (the documented handicap).
  assert contrast[dark].mean() < 0.6 * contrast[light].mean()
  assert (contrast / median)[dark].mean() < 0.8 * (contrast / median)[light].mean()


def test_minority_contrast_knob_changes_dark_contrast_only():
  low = make_demo_split(400, seed=4, minority_contrast=0.15)
  high = make_demo_split(400, seed=4, minority_contrast=0.6)
  _, c_low = _contrast_stats(low)
  _, c_high = _contrast_stats(high)
  dark = low["group"] == 1
  assert np.array_equal(low["group"], high["group"])
  assert c_low[dark].mean() < 0.5 * c_high[dark].mean()
  # Same seed and the light-group draws do not depend on minority_contrast.
  assert np.array_equal(low["image"][~dark], high["image"][~dark])


def _skin_brightness(d):
  """Per-image mean gray level of the outer 2-pixel ring (mostly skin)."""
  img = d["image"].astype(np.float64).mean(-1)
  ring = np.ones(img.shape[1:], bool)
  ring[2:-2, 2:-2] = False
  return img[:, ring].mean(-1)


def test_shortcut_tans_light_skin_of_one_class_only():
  base = make_demo_split(800, seed=5)
  tanned = make_demo_split(800, seed=5, shortcut_strength=0.2)
  assert np.array_equal(base["label"], tanned["label"])
  light, cls = base["group"] == 0, base["label"] == SHORTCUT_CLASS
  ratio = _skin_brightness(tanned) / _skin_brightness(base)
  # Light skin of the shortcut class is darker by 0.2 * U(0.6, 1.4) (mean 0.2, up to
  # clipping/rounding); every other image is byte-identical, so the shortcut is exactly a
  # class-skin-tone correlation inside the light group.
  assert abs(ratio[light & cls].mean() - 0.8) < 0.02
  assert ratio[light & cls].max() < 0.9
  assert np.array_equal(base["image"][~(light & cls)], tanned["image"][~(light & cls)])
  # The correlation is learnable: the shortcut class now has the darkest light skin.
  b = _skin_brightness(tanned)
  assert b[light & cls].mean() < b[light & ~cls].mean() - 3 * b[light & ~cls].std() / 2


def _lesion_chroma(d):
  """Per-image mean of the chroma-plane coordinates (u, v) of the lesion's relative darkening.

  Lesion pixels are those darkened by > 20 % relative to the image's median skin colour; the
  relative darkening per channel (skin - pixel) / skin is projected on u = (1, -1, 0)/sqrt(2)
  and v = (1, 1, -2)/sqrt(6), the plane orthogonal to gray.
  """
  img = d["image"].astype(np.float64).reshape(len(d["label"]), -1, 3)
  skin = np.median(img, axis=1, keepdims=True)
  rel = (skin - img) / skin
  lesion = rel.mean(-1) > 0.2
  u = np.array([1.0, -1.0, 0.0]) / np.sqrt(2.0)
  v = np.array([1.0, 1.0, -2.0]) / np.sqrt(6.0)
  out = np.zeros((len(img), 2))
  for i in range(len(img)):
    m = rel[i][lesion[i]].mean(0)
    out[i] = m @ u, m @ v
  return out


def _hue_shift(knob: str, n: int, seed: int, tinted_group: int):
  """Images without / with ``knob=0.3``: checks that 0 reproduces the images byte for byte and
  that only ``tinted_group`` changes; returns (base split, chroma shift [N, 2], group mask)."""
  base = make_demo_split(n, seed=seed, noise_std=0.0)
  tinted = make_demo_split(n, seed=seed, noise_std=0.0, **{knob: 0.3})
  assert np.array_equal(
    base["image"], make_demo_split(n, seed=seed, noise_std=0.0, **{knob: 0.0})["image"]
  )
  sel = base["group"] == tinted_group
  assert np.array_equal(base["image"][~sel], tinted["image"][~sel])
  assert not np.array_equal(base["image"][sel], tinted["image"][sel])
  return base, _lesion_chroma(tinted) - _lesion_chroma(base), sel


def test_color_cue_tints_light_lesions_by_class_only():
  # Dark skin keeps the neutral pigment (byte-identical); light skin changes.
  base, shift, light = _hue_shift("color_cue", 600, seed=3, tinted_group=0)
  # On light skin the lesion's chroma moves, per class, along that class's direction
  # (angle 2 pi c / 5 in the (u, v) plane) by 0.3 * U(0.3, 1.0) times the darkening.
  for c in range(4):
    sel = light & (base["label"] == c)
    mean = shift[sel].mean(0)
    angle = 2 * np.pi * c / 5
    direction = np.array([np.cos(angle), np.sin(angle)])
    assert mean @ direction > 0.02, (c, mean)
    # Nearly all of the shift is along the class direction.
    assert abs(mean @ np.array([-direction[1], direction[0]])) < 0.3 * (mean @ direction)


def test_minority_color_noise_tints_dark_lesions_independently_of_class():
  # Light skin is untouched (byte-identical); dark-skin lesions change hue.
  base, shift, dark = _hue_shift("minority_color_noise", 1000, seed=4, tinted_group=1)
  # Each dark lesion moves along ONE of the 4 class directions (angle 2 pi k / 5), chosen at
  # random: the direction says nothing about the true class.
  angles = 2 * np.pi * np.arange(4) / 5
  dirs = np.stack([np.cos(angles), np.sin(angles)], 1)
  decoy = np.argmax(shift[dark] @ dirs.T, axis=1)
  assert np.all(np.linalg.norm(shift[dark], axis=1) > 0.01)
  labels = base["label"][dark]
  table = np.zeros((4, 4))
  np.add.at(table, (labels, decoy), 1)
  # Independence: every (class, decoy hue) cell is populated near its expected count, and the
  # decoy matches the class about 1/4 of the time, not more.
  expected = np.outer(table.sum(1), table.sum(0)) / table.sum()
  assert np.all(table > 0.4 * expected), table
  assert abs(np.mean(decoy == labels) - 0.25) < 0.08


@pytest.mark.parametrize("knob", ["color_cue", "minority_color_noise"])
def test_hue_knobs_are_validated(knob):
  from fairjax.config import ConfigError, base_config, validate_config

  with pytest.raises(ValueError, match=knob):
    make_demo_split(10, seed=0, **{knob: 1.5})
  for value in (-0.1, 1.5):
    config = base_config()
    config.data[knob] = value
    with pytest.raises(ConfigError, match=f"config.data.{knob}={value}"):
      validate_config(config)


def test_eval_minority_fraction_sets_the_evaluation_splits_only():
  from fairjax.config import ConfigError, base_config, validate_config
  from fairjax.data import load_dataset

  config = base_config()
  config.data.num_train, config.data.num_validation, config.data.num_test = 100, 40, 60
  default = load_dataset(config.data, workdir="")
  config.data.eval_minority_fraction = 0.5
  balanced = load_dataset(config.data, workdir="")
  assert np.array_equal(default.groups["train"], balanced.groups["train"])
  assert np.mean(default.groups["train"] == 1) == pytest.approx(0.2)
  for split, n in (("validation", 40), ("test", 60)):
    assert np.sum(default.groups[split] == 1) == round(0.2 * n)
    assert np.sum(balanced.groups[split] == 1) == n // 2
  for value in (0.0, 1.0):
    config.data.eval_minority_fraction = value
    with pytest.raises(ConfigError, match=f"config.data.eval_minority_fraction={value}"):
      validate_config(config)


def test_classes_differ_in_texture():
  # Reticular / two-tone lesions vary inside, uniform ones do not. On noise-free light-group
  # images, take the pixels darkened by > 15 % relative to the skin (above the +-12 % skin
  # shading) and measure their interquartile-like spread relative to the lesion core.
  d = make_demo_split(400, seed=5, minority_fraction=0.0, noise_std=0.0, image_size=48)
  lum = d["image"].astype(np.float32).mean(-1).reshape(400, -1)
  median = np.median(lum, axis=1, keepdims=True)
  rel = (median - lum) / median  # relative darkening per pixel

  def spread(r):
    q25, q90 = np.percentile(r[r > 0.15], [25, 90])
    return (q90 - q25) / q90

  s = np.array([spread(r) for r in rel])
  mean_spread = [s[d["label"] == c].mean() for c in range(4)]
  assert mean_spread[2] > 3 * mean_spread[0]  # reticular vs round_uniform (~0.5 vs ~0.08)
  assert mean_spread[3] > 3 * mean_spread[0]  # two_tone vs round_uniform (~0.4 vs ~0.08)
  assert mean_spread[1] < 2 * mean_spread[0]  # irregular differs in shape, not texture


def test_splits_are_deterministic_disjoint_streams():
  sizes = {"train": 40, "validation": 20, "test": 30}
  a = make_demo_splits(0, sizes, image_size=16)
  b = make_demo_splits(0, sizes, image_size=16)
  assert set(a) == set(sizes)
  for name, n in sizes.items():
    assert a[name]["image"].shape == (n, 16, 16, 3)
    assert a[name]["image"].tobytes() == b[name]["image"].tobytes()
  # Different derived seeds: no image is shared between splits.
  train = {im.tobytes() for im in a["train"]["image"]}
  assert not train & {im.tobytes() for im in a["test"]["image"]}
  assert make_demo_splits(1, sizes, image_size=16)["train"]["image"].tobytes() != (
    a["train"]["image"].tobytes()
  )
  assert set(DEFAULT_SPLIT_SIZES) == {"train", "validation", "test"}


def test_invalid_arguments():
  with pytest.raises(ValueError, match="num_classes"):
    make_demo_split(10, seed=0, num_classes=6)
  with pytest.raises(ValueError, match="minority_fraction"):
    make_demo_split(10, seed=0, minority_fraction=1.5)
  with pytest.raises(ValueError, match="shortcut_strength"):
    make_demo_split(10, seed=0, shortcut_strength=0.6)
  assert make_demo_split(0, seed=0)["image"].shape == (0, 32, 32, 3)


def test_generation_speed():
  make_demo_split(16, seed=0)  # warm up allocations
  t0 = time.perf_counter()
  make_demo_split(4000, image_size=32, seed=0)
  # Typically ~0.5 s; the bound is generous because the CPU may be shared.
  assert time.perf_counter() - t0 < 15.0
