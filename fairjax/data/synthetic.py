"""Synthetic dermoscopy-like demo dataset with a built-in, measurable group bias.

THIS IS NOT REAL DATA. Nothing here is derived from clinical images. The module draws toy
"lesions" on toy "skin" so that the default fairjax configuration runs end to end on a laptop CPU
in minutes with no download, and so that the fairness methods of design.md sections 2-4 have a
real disparity to act on.

What an image contains (all coordinates are in [-1, 1], so the cues scale with ``image_size``):

- **Skin**: a per-image skin tone drawn from one of two palettes (group 0 "light", group 1
  "dark"), shaded by a few random low-frequency sinusoids (uneven illumination / texture) plus
  per-pixel Gaussian noise of the SAME absolute strength for both groups.
- **Lesion**: a blob at a random position, size, aspect ratio and rotation, whose class is
  carried only by shape and texture cues (``DEMO_CUE_NAMES``; the default 4 classes are
  ``DEMO_CLASS_NAMES``):

  0. ``round_uniform``    - near-elliptic border, uniform pigment;
  1. ``irregular_border`` - strongly wobbling border (angular harmonics 4-7), uniform pigment;
  2. ``reticular``        - pigment network: dark lines on a lighter lesion body;
  3. ``two_tone``         - one half of the lesion dark, the other half light;
  4. ``dotted``           - (only when ``num_classes=5``) dark globules on a lighter body.

  The cue strengths are drawn from overlapping ranges (some "round" lesions wobble, some networks
  are faint), so even in the easy group the task is not perfectly separable.
- **The bias**: a lesion darkens the skin under it by a relative factor ``contrast * t(x)``
  (t = the class texture). For the light group ``contrast`` ~ U(0.45, 0.70); for the dark group it
  is ``minority_contrast`` (x U(0.8, 1.2)): a dark lesion on dark skin. Three things make group 1
  harder, as with real dermoscopy: (a) that lower relative contrast, (b) darker skin, so the same
  relative contrast is a smaller change in gray levels while the pixel noise is the same, and
  (c) under-representation (``minority_fraction``, default 20 %).
  Measured with a small CNN (conv16-pool-conv32-pool-dense64-dense, Adam 1e-3, 8 epochs of 3000
  training images at 32x32, batch 64; 2000 test images; 3 seeds): overall test accuracy 83-86 %,
  light group 87-91 %, dark group 62-66 %, gap 21-28 points. ``minority_contrast`` is the knob:
  0.20 gives ~50 % on the dark group, 0.35 (default) ~65 %, 0.45 ~67 %; the part of the gap it
  cannot remove comes from (b) and (c).
- **Optional extra bias terms** (off by default): ``shortcut_strength`` tans the light skin of one
  class (a class/skin-tone shortcut the model can learn), and ``color_cue`` gives light-skin
  lesions a class-specific pigment hue that dark-skin lesions lack (colour as a diagnostic cue
  that melanin masks), so part of the light group's advantage sits in features only it uses;
  ``minority_color_noise`` gives dark-skin lesions the hue of a RANDOMLY drawn class instead
  (an apparent colour that says nothing about the lesion type), so a model that learned colour
  from the light group is misled on dark skin.

Group and class assignment is stratified: exactly ``round(N * minority_fraction)`` samples belong
to group 1, and classes are dealt round-robin inside each group before a global shuffle, so every
class appears in both groups as soon as each group has ``num_classes`` samples.

Everything is vectorised numpy over the whole batch of N images (4000 images at 32x32 take about
0.5 s) and deterministic from the seed: the same arguments give byte-identical arrays with the
same numpy build (other builds may differ in the last float bit of cos/sqrt before rounding).

The record format matches the real datasets (design.md section 6): ``image`` uint8 [H, W, 3],
``label`` int, ``group`` int (0 = privileged majority here, 1 = under-represented).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

__all__ = [
  "DEFAULT_NUM_CLASSES",
  "DEFAULT_SPLIT_SIZES",
  "DEMO_CLASS_NAMES",
  "DEMO_CUE_NAMES",
  "SHORTCUT_CLASS",
  "DEMO_GROUP_NAMES",
  "make_demo_split",
  "make_demo_splits",
]

DEMO_GROUP_NAMES: tuple[str, ...] = ("light", "dark")
# Class c of a split generated with num_classes=k is DEMO_CUE_NAMES[c] (c < k).
DEMO_CUE_NAMES: tuple[str, ...] = (
  "round_uniform",
  "irregular_border",
  "reticular",
  "two_tone",
  "dotted",
)
DEFAULT_NUM_CLASSES = 4
# The class whose light-skin images are tanned when ``shortcut_strength > 0`` ("irregular_border").
SHORTCUT_CLASS = 1
DEMO_CLASS_NAMES: tuple[str, ...] = DEMO_CUE_NAMES[:DEFAULT_NUM_CLASSES]
DEFAULT_SPLIT_SIZES: dict[str, int] = {"train": 3000, "validation": 600, "test": 1000}

# Skin palettes (RGB, 0-255): mean tone and per-image jitter. Loosely "Fitzpatrick I-III" versus
# "IV-VI"; only the relative brightness matters for the bias.
_SKIN_MEAN = np.array([[226.0, 186.0, 162.0], [165.0, 116.0, 90.0]], np.float32)
_SKIN_BRIGHTNESS_STD = 0.06
_SKIN_HUE_STD = 5.0
# Pigment tints the darkened area towards brown (red falls least), so a lesion changes hue too.
_PIGMENT_TINT = np.array([0.80, 1.0, 1.10], np.float32)
_NOISE_STD = 9.0  # gray levels, identical for both groups: this is what makes low contrast hard
_MAJORITY_CONTRAST = (0.45, 0.70)


def _coords(image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates in [-1, 1]; y, x each [1, S, S] float32."""
  t = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size * 2.0 - 1.0
  y, x = np.meshgrid(t, t, indexing="ij")
  return y[None], x[None]


def make_demo_split(
  num_samples: int,
  *,
  image_size: int = 32,
  seed: int,
  minority_fraction: float = 0.2,
  num_classes: int = DEFAULT_NUM_CLASSES,
  minority_contrast: float = 0.35,
  noise_std: float = _NOISE_STD,
  shortcut_strength: float = 0.0,
  color_cue: float = 0.0,
  minority_color_noise: float = 0.0,
) -> dict[str, np.ndarray]:
  """Generates one split of the synthetic demo dataset (NOT real data; see module docstring).

  Args:
    num_samples: N, the number of images.
    image_size: S, images are S x S (cues are defined in relative coordinates; S >= 16 advised).
    seed: Any non-negative int; the output is a pure function of all arguments.
    minority_fraction: fraction of samples in group 1 ("dark"), rounded to an exact count.
    num_classes: 2..5, class c is the cue ``DEMO_CUE_NAMES[c]``.
    minority_contrast: mean relative darkening of a lesion on dark skin (group 0 uses
      U(0.45, 0.70)). Lower values widen the accuracy gap; ~0.57 removes the relative-contrast
      handicap (the darker skin and the smaller share still leave a gap).
    noise_std: per-pixel Gaussian noise in gray levels, the same for both groups.
    shortcut_strength: the learned-shortcut part of the bias (module docstring): light-skin
      images of class ``SHORTCUT_CLASS`` get skin darker by a relative ``shortcut_strength *
      U(0.6, 1.4)``; dark-skin images get no class-dependent tone. 0 disables it. In [0, 0.5].
    color_cue: the visible-colour part of the bias (module docstring): on light skin a lesion's
      pigment hue also depends on its class, by ``color_cue * U(0.3, 1.0)`` along a class
      direction in the chroma plane; on dark skin every lesion keeps the neutral pigment tint
      (melanin masks lesion colour). 0 disables it. In [0, 1].
    minority_color_noise: on dark skin, a lesion's pigment hue moves by
      ``minority_color_noise * U(0.3, 1.0)`` along the chroma direction of a class drawn
      uniformly at random, independently of its true class (the colour misleads); light skin is
      unchanged. Its own random stream: 0 reproduces the images without it byte for byte. In
      [0, 1].

  Returns:
    ``{"image": uint8 [N, S, S, 3], "label": int32 [N], "group": int32 [N]}`` with groups in
    {0, 1} (0 = light / privileged majority, 1 = dark / under-represented).
  """
  if num_samples < 0:
    raise ValueError(f"num_samples must be >= 0, got {num_samples}")
  if not 2 <= num_classes <= len(DEMO_CUE_NAMES):
    raise ValueError(f"num_classes must be in [2, {len(DEMO_CUE_NAMES)}], got {num_classes}")
  if not 0.0 <= minority_fraction <= 1.0:
    raise ValueError(f"minority_fraction must be in [0, 1], got {minority_fraction}")
  if image_size < 4:
    raise ValueError(f"image_size must be >= 4, got {image_size}")
  if not 0.0 <= shortcut_strength <= 0.5:
    raise ValueError(f"shortcut_strength must be in [0, 0.5], got {shortcut_strength}")
  if not 0.0 <= color_cue <= 1.0:
    raise ValueError(f"color_cue must be in [0, 1], got {color_cue}")
  if not 0.0 <= minority_color_noise <= 1.0:
    raise ValueError(f"minority_color_noise must be in [0, 1], got {minority_color_noise}")

  n, s = num_samples, image_size
  rng = np.random.default_rng(seed)

  # Stratified assignment (see module docstring): exact group counts, round-robin classes.
  n_dark = int(round(n * minority_fraction))
  group = np.zeros(n, np.int32)
  group[n - n_dark :] = 1
  label = np.empty(n, np.int32)
  label[: n - n_dark] = np.arange(n - n_dark) % num_classes
  label[n - n_dark :] = np.arange(n_dark) % num_classes
  order = rng.permutation(n)
  group, label = group[order], label[order]

  def u(lo: float, hi: float, shape: tuple[int, ...] = ()) -> np.ndarray:
    return rng.uniform(lo, hi, (n, *shape)).astype(np.float32)

  # Per-sample geometry, broadcast to [N, 1, 1] against the [1, S, S] pixel grid.
  col = (slice(None), None, None)
  cy, cx = u(-0.3, 0.3)[col], u(-0.3, 0.3)[col]
  radius = u(0.32, 0.58)[col]
  aspect = u(0.75, 1.0)[col]
  theta = u(0.0, 2 * np.pi)[col]
  yy, xx = _coords(s)
  dy, dx = yy - cy, xx - cx
  cos_t, sin_t = np.cos(theta), np.sin(theta)
  along = cos_t * dx + sin_t * dy  # lesion-aligned axes: the texture rotates with the lesion
  across = -sin_t * dx + cos_t * dy
  rho = np.sqrt(along**2 + (across / aspect) ** 2)
  phi = np.arctan2(across, along)

  # Border: r(phi) = radius * (1 + sum_k a_k cos(k phi + p_k)). Irregular lesions use high
  # harmonics with large amplitude; the others a small low-harmonic wobble. The ranges touch
  # (0.10) so the border cue alone is not always decisive.
  irregular = label == 1
  harm = np.where(
    irregular[:, None], rng.integers(4, 8, (n, 2)), rng.integers(2, 4, (n, 2))
  ).astype(np.float32)  # float32: an int64 factor would silently promote the images to float64
  amp = np.where(irregular, u(0.14, 0.34), u(0.0, 0.12))
  phase = u(0.0, 2 * np.pi, (2,))
  wobble = sum(np.cos(harm[:, k, None, None] * phi + phase[:, k, None, None]) for k in range(2))
  border = radius * (1.0 + amp[col] * 0.5 * wobble)
  # Linear ramp one pixel wide (2/S in these units) so the border is anti-aliased, not jagged.
  edge = 2.0 / s
  mask = np.clip(0.5 + (border - rho) / edge, 0.0, 1.0)

  # Texture t(x) in [0, 1]: how strongly each lesion pixel is pigmented.
  strength = u(0.45, 0.85)[col]  # texture depth; faint textures drift towards "uniform"
  freq = (u(1.2, 1.8) * np.pi / radius[:, 0, 0])[col]  # ~3 cells across the lesion
  net = np.maximum(np.cos(freq * along) ** 2, np.cos(freq * across) ** 2)
  reticular = 1.0 - strength * (1.0 - net**4)  # dark lines, lighter holes
  half = np.clip(0.5 + across / edge, 0.0, 1.0)  # lesion split along its long axis
  two_tone = 1.0 - strength * half
  dots = (np.cos(freq * along) * np.cos(freq * across)) ** 2
  dotted = 1.0 - strength * (1.0 - (dots > 0.55).astype(np.float32))
  texture = np.ones((n, s, s), np.float32)
  for cls, tex in ((2, reticular), (3, two_tone), (4, dotted)):
    sel = label == cls
    texture[sel] = tex[sel]

  # Contrast: THE bias mechanism (module docstring).
  contrast = np.where(group == 0, u(*_MAJORITY_CONTRAST), minority_contrast * u(0.8, 1.2)).astype(
    np.float32
  )
  darkening = mask * texture * contrast[col]  # [N, S, S], relative

  # Skin: palette + low-frequency shading (two random plane waves) + white noise.
  # Tone jitter is mostly a shared brightness factor (real skin varies along a light-dark axis,
  # not by independent channel shifts) plus a small per-channel hue jitter.
  brightness = 1.0 + _SKIN_BRIGHTNESS_STD * rng.standard_normal((n, 1)).astype(np.float32)
  hue = _SKIN_HUE_STD * rng.standard_normal((n, 3)).astype(np.float32)
  # The shortcut draws from its own stream so that shortcut_strength=0 reproduces the images
  # generated before the option existed, byte for byte.
  tan = np.random.default_rng([seed, 1]).uniform(0.6, 1.4, (n, 1)).astype(np.float32)
  shortcut = (group == 0) & (label == SHORTCUT_CLASS)
  brightness = brightness * np.where(shortcut[:, None], 1.0 - shortcut_strength * tan, 1.0)
  tone = _SKIN_MEAN[group] * brightness + hue
  wave_dir = u(0.0, 2 * np.pi, (2,))
  wave_freq = u(0.5, 2.0, (2,))
  wave_phase = u(0.0, 2 * np.pi, (2,))
  shading = 1.0 + 0.06 * sum(
    np.sin(
      wave_freq[:, k, None, None]
      * np.pi
      * (np.cos(wave_dir[:, k, None, None]) * xx + np.sin(wave_dir[:, k, None, None]) * yy)
      + wave_phase[:, k, None, None]
    )
    for k in range(2)
  )
  skin = tone[:, None, None, :] * shading[..., None]  # [N, S, S, 3]
  tint = _pigment_tint(label, group, color_cue, minority_color_noise, num_classes, seed)
  image = skin * (1.0 - darkening[..., None] * tint)
  image += noise_std * rng.standard_normal(image.shape, dtype=np.float32)
  image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
  return {"image": image, "label": label, "group": group}


def _pigment_tint(
  label: np.ndarray,
  group: np.ndarray,
  color_cue: float,
  minority_color_noise: float,
  num_classes: int,
  seed: int,
) -> np.ndarray:
  """Per-image relative darkening per RGB channel, [N, 1, 1, 3] float32.

  Light skin (group 0): the neutral tint plus ``color_cue * U(0.3, 1.0)`` times the unit
  chroma direction of the image's class (classes at equal angles in the plane orthogonal to
  gray, so no class looks "neutral"). Dark skin: the neutral tint plus
  ``minority_color_noise * U(0.3, 1.0)`` times the direction of a random class. Each term has
  its own random stream, so either set to 0 reproduces the images generated before it existed
  byte for byte.
  """
  n = label.shape[0]
  tint = np.broadcast_to(_PIGMENT_TINT, (n, 3)).astype(np.float32)
  u = np.array([1.0, -1.0, 0.0], np.float32) / np.sqrt(2.0)
  v = np.array([1.0, 1.0, -2.0], np.float32) / np.sqrt(6.0)

  def chroma(cls: np.ndarray) -> np.ndarray:  # unit chroma direction of each class, [N, 3]
    angle = 2.0 * np.pi * cls.astype(np.float32) / len(DEMO_CUE_NAMES)
    return np.cos(angle)[:, None] * u + np.sin(angle)[:, None] * v

  light = (group == 0)[:, None]
  if color_cue > 0:
    amount = np.random.default_rng([seed, 2]).uniform(0.3, 1.0, (n, 1)).astype(np.float32)
    tint = tint + np.where(light, color_cue * amount * chroma(label), 0.0).astype(np.float32)
  if minority_color_noise > 0:
    # The hue of a RANDOM class, drawn independently of the true one: on dark skin the
    # apparent lesion hue says nothing about the lesion type.
    rng = np.random.default_rng([seed, 3])
    decoy = rng.integers(0, num_classes, n)
    amount = rng.uniform(0.3, 1.0, (n, 1)).astype(np.float32)
    tint = tint + np.where(light, 0.0, minority_color_noise * amount * chroma(decoy)).astype(
      np.float32
    )
  return tint[:, None, None, :]


def _split_seed(seed: int, split: str) -> int:
  """Independent 32-bit seed per (seed, split name): splits never share a random stream."""
  return int(np.random.SeedSequence([seed, zlib.crc32(split.encode())]).generate_state(1)[0])


def make_demo_splits(
  seed: int,
  sizes: Mapping[str, int] | None = None,
  *,
  image_size: int = 32,
  **kwargs,
) -> dict[str, dict[str, np.ndarray]]:
  """Generates several splits of the demo dataset (NOT real data) with disjoint derived seeds.

  Args:
    seed: master seed; each split uses ``SeedSequence([seed, crc32(split)])``.
    sizes: split name -> number of samples; defaults to ``DEFAULT_SPLIT_SIZES``.
    image_size: S.
    **kwargs: forwarded to ``make_demo_split`` (minority_fraction, num_classes, ...).

  Returns:
    split name -> ``make_demo_split`` output (image uint8 [N, S, S, 3], label / group int32 [N]).
  """
  sizes = DEFAULT_SPLIT_SIZES if sizes is None else sizes
  return {
    name: make_demo_split(n, image_size=image_size, seed=_split_seed(seed, name), **kwargs)
    for name, n in sizes.items()
  }
