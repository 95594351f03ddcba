"""Input pipeline: random-access record sources -> fixed-shape numpy batches (grain).

Record format shared by every fairjax dataset (the demo generator in ``synthetic.py`` and the
TFDS builders of design.md section 6): a dict with

- ``image``: uint8 [H, W, 3] (any H, W; resized here),
- ``label``: int, the class id in [0, C); or, for a multi-label task (CelebA's 39 attributes,
  design.md section 1.10), ints ``{0, 1}[A]``, one per attribute,
- ``group``: int, the sensitive-attribute id in [0, G), or -1 when unknown / missing.

A *source* is any random-access object with ``__len__`` and ``__getitem__(i) -> record``
(grain's ``RandomAccessDataSource`` protocol; ``tfds.data_source(...)`` objects qualify).

Every iterator yields numpy dicts with static shapes, ready for a jitted step:

- ``image``: float32 [B, S, S, 3], ``(pixel - IMAGE_MEAN) / IMAGE_STD`` per channel;
- ``label``: int32 [B] (multi-label: int32 [B, A]); ``group``: int32 [B];
- ``valid``: bool [B] (``eval_batches`` only) marks real rows of the zero-padded last batch.

Normalisation uses FIXED constants, the ImageNet RGB statistics (mean 0.485/0.456/0.406, std
0.229/0.224/0.225 of the [0, 1] range; ``IMAGE_MEAN`` / ``IMAGE_STD`` hold them in 0-255 units).
They are not recomputed per dataset so a checkpoint means the same thing on every split and on
the demo data; inputs are therefore only approximately zero-mean / unit-variance.

Samplings for training (``train_batches``), all of length ``len(source)`` per epoch:

- ``"uniform"``: a permutation, every example once;
- ``"group_balanced"`` / ``"class_balanced"``: indices drawn with replacement, weight
  1 / (size of the example's group / class), so every group / class is drawn equally often in
  expectation (the class-balanced sampling of Kong et al., design.md section 3). Examples whose
  group is unknown (-1) take no part in the balancing: they get the mean weight of the known
  examples, i.e. they are drawn about as often as under uniform sampling relative to the rest.

The index order depends only on (seed, epoch, sampling), never on worker count or on earlier
epochs, so a run resumed at epoch e sees exactly the batches the uninterrupted run saw.

Training-time augmentation (``train_batches(augment=...)`` only; evaluation, scoring and the
group-balanced saliency batches are never augmented), applied to the uint8 image before
normalisation:

- ``"none"``: the record image resized to S x S (the batches are exactly those of earlier
  versions);
- ``"flip"``: then mirrored left-right with probability 1/2;
- ``"flip_crop"``: a random crop of the record image, covering a share in ``CROP_SCALE`` of its
  area with width / height in ``CROP_RATIO`` (log-uniform), resized to S x S (PIL bilinear,
  antialiased), then the flip. This is the random-resized-crop recipe with a larger minimum
  area than the ImageNet default (0.08), so that a lesion is rarely cropped away.

The random numbers of the example at position p of epoch e are row p of
``augment_draws(n, seed=seed, epoch=e)``, a pure function of (seed, epoch, p): like the index
order they do not depend on the worker count or on earlier epochs.
"""

from __future__ import annotations

import functools
import itertools
import math
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import grain
import numpy as np
from absl import flags
from PIL import Image

__all__ = [
  "AUGMENTS",
  "CROP_RATIO",
  "CROP_SCALE",
  "IMAGE_MEAN",
  "IMAGE_STD",
  "SAMPLINGS",
  "ArraySource",
  "Source",
  "augment_crop_box",
  "augment_draws",
  "epoch_indices",
  "eval_batches",
  "group_balanced_batches",
  "normalize_images",
  "scan_labels",
  "train_batches",
]

IMAGE_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
IMAGE_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255.0
SAMPLINGS = ("uniform", "group_balanced", "class_balanced")
AUGMENTS = ("none", "flip", "flip_crop")
# "flip_crop": crop area as a share of the record image, and crop width / height.
CROP_SCALE = (0.35, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)

# Distinct SeedSequence streams so that e.g. the training order and the saliency batches drawn
# with the same user seed are independent.
_STREAM_TRAIN = 0x7A1
_STREAM_GROUPS = 0x6B2
_STREAM_AUGMENT = 0x5C3
# Columns of an augment_draws row.
_U_SCALE, _U_RATIO, _U_LEFT, _U_TOP, _U_FLIP = range(5)


class Source(Protocol):
  """grain's random-access protocol; see the module docstring for the record format."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> Mapping[str, Any]: ...


class ArraySource:
  """In-memory source over equally long arrays, e.g. the output of ``make_demo_split``.

  Args:
    arrays: at least ``image`` uint8 [N, H, W, 3], ``label`` int [N], ``group`` int [N]; any
      further keys are passed through in the records.

  ``labels`` / ``groups`` (int32 [N]) are exposed so ``scan_labels`` never touches the images.
  """

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    missing = {"image", "label", "group"} - set(arrays)
    if missing:
      raise ValueError(f"ArraySource needs keys image/label/group; missing {sorted(missing)}")
    self._arrays = {k: np.asarray(v) for k, v in arrays.items()}
    lengths = {k: len(v) for k, v in self._arrays.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"ArraySource arrays differ in length: {lengths}")
    self._len = lengths["image"]
    self.labels = self._arrays["label"].astype(np.int32)
    self.groups = self._arrays["group"].astype(np.int32)

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not -self._len <= index < self._len:
      raise IndexError(f"index {index} out of range for ArraySource of length {self._len}")
    return {k: v[index] for k, v in self._arrays.items()}

  def __repr__(self) -> str:
    shapes = {k: v.shape for k, v in self._arrays.items()}
    return f"ArraySource({shapes})"


# Labels of sources without ``labels`` / ``groups`` attributes are read once per source object.
# Keyed by id() with a weakref check, because tfds data sources need not be hashable.
_SCAN_CACHE: dict[int, tuple[weakref.ref, np.ndarray, np.ndarray]] = {}


def scan_labels(source: Source) -> tuple[np.ndarray, np.ndarray]:
  """Returns (labels int32 [N] (multi-label: int32 [N, A]), groups int32 [N]) of a source.

  Uses the source's ``labels`` and ``groups`` attributes when it has both (``ArraySource``;
  any wrapper around a TFDS source can add them) so no image is decoded. Otherwise every
  record is read once (decoding its image) and the result is cached for the lifetime of the
  source object. A record without a ``group`` key counts as group -1 (unknown).
  """
  labels, groups = getattr(source, "labels", None), getattr(source, "groups", None)
  if labels is not None and groups is not None:
    labels, groups = np.asarray(labels, np.int32), np.asarray(groups, np.int32)
    if labels.shape[:1] != (len(source),) or labels.ndim > 2 or groups.shape != (len(source),):
      raise ValueError(
        f"source.labels / source.groups must have shape ({len(source)},) (labels may "
        f"be ({len(source)}, A) for a multi-label task), got "
        f"{labels.shape} / {groups.shape}"
      )
    return labels, groups
  cached = _SCAN_CACHE.get(id(source))
  if cached is not None and cached[0]() is source:
    return cached[1], cached[2]
  n = len(source)
  rows = []
  groups = np.empty(n, np.int32)
  for i in range(n):
    record = source[i]
    rows.append(np.asarray(record["label"], np.int32))  # 0-d, or [A] when multi-label
    groups[i] = int(record.get("group", -1))
  labels = np.stack(rows) if rows else np.empty(0, np.int32)
  try:
    ref = weakref.ref(source, lambda _, key=id(source): _SCAN_CACHE.pop(key, None))
  except TypeError:  # not weak-referenceable: do not cache (id() could be reused)
    return labels, groups
  _SCAN_CACHE[id(source)] = (ref, labels, groups)
  return labels, groups


def normalize_images(images: np.ndarray, imagenet_normalization: bool = True) -> np.ndarray:
  """uint8 [..., 3] -> float32 [..., 3]: ``(x - IMAGE_MEAN) / IMAGE_STD`` (module docstring),
  or ``x / 255`` in [0, 1] with ``imagenet_normalization=False``."""
  if not imagenet_normalization:
    return images.astype(np.float32) / np.float32(255.0)
  return (images.astype(np.float32) - IMAGE_MEAN) / IMAGE_STD


def _to_rgb(image: Any) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise TypeError(f"record images must be uint8, got {image.dtype}")
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"record image must be [H, W, 1|3|4], got shape {image.shape}")
  if image.shape[-1] == 1:  # grayscale scans: replicate so every model sees 3 channels
    image = np.repeat(image, 3, axis=-1)
  return image[..., :3]  # drop alpha


def _resize(image: np.ndarray, image_size: int) -> np.ndarray:
  if image.shape[:2] == (image_size, image_size):
    return image
  # PIL's bilinear filter widens its support when shrinking, i.e. it antialiases, which a
  # plain numpy bilinear gather would not (aliasing matters for fine lesion texture).
  resized = Image.fromarray(image).resize((image_size, image_size), Image.Resampling.BILINEAR)
  return np.asarray(resized, np.uint8)


def _label(record: Mapping[str, Any]) -> np.ndarray:
  """int32 [] class id, or int32 [A] for a multi-label record."""
  return np.asarray(record["label"], np.int32)


def _prepare(record: Mapping[str, Any], image_size: int) -> dict[str, Any]:
  """One record -> {image uint8 [S, S, 3], label int32 [] (or [A]), group int32 []} (no
  normalising: uint8 keeps the per-element work and the batch stacking 4x cheaper)."""
  return {
    "image": _resize(_to_rgb(record["image"]), image_size),
    "label": _label(record),
    "group": np.int32(record.get("group", -1)),
  }


def _prepare_index(source: Source, image_size: int, index: int) -> dict[str, Any]:
  return _prepare(source[int(index)], image_size)


def _prepare_padded(
  source: Source, image_size: int, num_real: int, label_shape: tuple[int, ...], index: int
) -> dict[str, Any]:
  """Eval element: a real record while index < num_real, else a cheap all-zero filler row
  (its label zeros of ``label_shape``: ``()``, or ``(A,)`` for a multi-label task)."""
  if index < num_real:
    element = _prepare(source[int(index)], image_size)
    element["valid"] = np.bool_(True)
    return element
  return {
    "image": np.zeros((image_size, image_size, 3), np.uint8),
    "label": np.zeros(label_shape, np.int32),
    "group": np.int32(-1),
    "valid": np.bool_(False),
  }


def augment_draws(n: int, *, seed: int, epoch: int) -> np.ndarray:
  """The augmentation random numbers of one epoch, float64 [n, 5] in [0, 1).

  Row p belongs to the example at position p of the epoch (columns: crop area, crop aspect
  ratio, crop left, crop top, flip). The rows are filled in order from one stream
  ``SeedSequence([seed, epoch, _STREAM_AUGMENT])``, so row p depends only on (seed, epoch, p),
  not on ``n``, the worker count or earlier epochs.
  """
  rng = np.random.default_rng([seed, epoch, _STREAM_AUGMENT])
  return rng.random((n, 5))


def augment_crop_box(u: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
  """The ``"flip_crop"`` crop of an image of ``height`` x ``width`` for one draws row ``u``.

  Area share ``CROP_SCALE[0] + u[0] * (CROP_SCALE[1] - CROP_SCALE[0])``, aspect ratio
  (width / height) log-uniform in ``CROP_RATIO`` by ``u[1]``; a side longer than the image is
  clipped to it, so the share is a maximum for very elongated crops. The position is uniform
  over the valid ones (``u[2]``, ``u[3]``).

  Returns:
    ``(left, top, crop_width, crop_height)`` in pixels, inside the image.
  """
  area = height * width * (CROP_SCALE[0] + u[_U_SCALE] * (CROP_SCALE[1] - CROP_SCALE[0]))
  log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
  ratio = math.exp(log_lo + u[_U_RATIO] * (log_hi - log_lo))
  crop_w = min(width, max(1, round(math.sqrt(area * ratio))))
  crop_h = min(height, max(1, round(math.sqrt(area / ratio))))
  # floor(u * (number of positions)) with u < 1 is a uniform valid offset.
  left = int(u[_U_LEFT] * (width - crop_w + 1))
  top = int(u[_U_TOP] * (height - crop_h + 1))
  return left, top, crop_w, crop_h


def _augment(image: np.ndarray, image_size: int, augment: str, u: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] record image -> uint8 [S, S, 3], augmented with the draws row ``u``."""
  if augment == "flip_crop":
    left, top, crop_w, crop_h = augment_crop_box(u, image.shape[0], image.shape[1])
    # One PIL call crops and resizes (antialiased like _resize), without copying the crop.
    out = np.asarray(
      Image.fromarray(image).resize(
        (image_size, image_size),
        Image.Resampling.BILINEAR,
        box=(left, top, left + crop_w, top + crop_h),
      ),
      np.uint8,
    )
  else:
    out = _resize(image, image_size)
  if u[_U_FLIP] < 0.5:
    out = np.ascontiguousarray(out[:, ::-1])
  return out


def _prepare_augmented(
  source: Source,
  image_size: int,
  augment: str,
  indices: np.ndarray,
  draws: np.ndarray,
  position: int,
) -> dict[str, Any]:
  """Training element at epoch ``position``: record ``indices[position]`` augmented with
  ``draws[position]`` (keyed by position, so an example drawn twice is augmented twice)."""
  record = source[int(indices[position])]
  return {
    "image": _augment(_to_rgb(record["image"]), image_size, augment, draws[position]),
    "label": _label(record),
    "group": np.int32(record.get("group", -1)),
  }


def _normalize_batch(
  batch: dict[str, np.ndarray], imagenet_normalization: bool = True
) -> dict[str, np.ndarray]:
  return {**batch, "image": normalize_images(batch["image"], imagenet_normalization)}


def _iterate(ds: grain.MapDataset, worker_count: int) -> Iterator[dict[str, np.ndarray]]:
  if worker_count < 0:
    raise ValueError(f"worker_count must be >= 0, got {worker_count}")
  if worker_count == 0:
    # In-process; two reader threads overlap decoding with the (GIL-free) jitted step
    # without oversubscribing a small CPU. Order is preserved by grain either way.
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
  else:
    # grain's worker processes read absl flags; outside an absl app (scripts, notebooks,
    # tests) they are unparsed and grain would raise, so fall back to the flag defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    # One reader thread per worker process, so worker_count is the number of cores the
    # input uses, and a short read-ahead: grain's defaults (16 threads, 500 elements, and
    # an element is a whole batch here: ~38 MB at 224 px) let each worker run hundreds of
    # batches ahead of a slow train step, and its threads starve the transfer to the
    # trainer on a small CPU (bench/input_pipeline.py).
    it_ds = ds.to_iter_dataset(
      grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)
    ).mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(it_ds)


def epoch_indices(
  source: Source, *, seed: int, epoch: int = 0, sampling: str = "uniform"
) -> np.ndarray:
  """The example indices of one training epoch, int64 [len(source)] (module docstring).

  A pure function of (labels/groups of the source, seed, epoch, sampling): the random stream
  is ``SeedSequence([seed, epoch, ...])``, so epochs differ and can be regenerated in any order.
  """
  if sampling not in SAMPLINGS:
    raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
  n = len(source)
  rng = np.random.default_rng([seed, epoch, _STREAM_TRAIN, SAMPLINGS.index(sampling)])
  if sampling == "uniform" or n == 0:
    return rng.permutation(n)
  labels, groups = scan_labels(source)
  if sampling == "class_balanced":
    if labels.ndim != 1:
      raise ValueError(
        "class_balanced sampling needs one class per example; a "
        "multi-label task has no class to balance (use uniform)"
      )
    if labels.min() < 0:
      raise ValueError("class_balanced sampling needs labels >= 0")
    weights = 1.0 / np.bincount(labels)[labels]
  else:
    known = groups >= 0
    weights = np.ones(n)
    if known.any():
      weights[known] = 1.0 / np.bincount(groups[known])[groups[known]]
      # Unknown groups are excluded from balancing: the mean weight of the known examples.
      weights[~known] = weights[known].mean()
  return rng.choice(n, size=n, replace=True, p=weights / weights.sum())


def train_batches(
  source: Source,
  *,
  batch_size: int,
  image_size: int,
  seed: int,
  sampling: str = "uniform",
  epoch: int = 0,
  drop_remainder: bool = True,
  worker_count: int = 0,
  imagenet_normalization: bool = True,
  augment: str = "none",
) -> Iterator[dict[str, np.ndarray]]:
  """One epoch of shuffled training batches.

  Args:
    source: random-access source of records (module docstring).
    batch_size: B.
    image_size: S; records of another size are resized (PIL bilinear).
    seed, epoch: the order is a pure function of (seed, epoch, sampling), see ``epoch_indices``.
    sampling: ``"uniform"``, ``"group_balanced"`` or ``"class_balanced"`` (module docstring).
    drop_remainder: drop the last partial batch (keeps shapes static for jit).
    worker_count: 0 = in-process (threads); > 0 = that many grain worker processes.
    imagenet_normalization: ImageNet mean/std (default), else pixels / 255.
    augment: ``"none"``, ``"flip"`` or ``"flip_crop"`` (module docstring); a pure function
      of (seed, epoch, position in the epoch), like the order.

  Returns:
    An iterator of ``{"image": float32 [B, S, S, 3] normalised, "label": int32 [B],
    "group": int32 [B]}``; ``len(source) // B`` batches (+1 smaller one if not dropping).
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be > 0, got {batch_size}")
  if augment not in AUGMENTS:
    raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
  indices = epoch_indices(source, seed=seed, epoch=epoch, sampling=sampling)
  if augment == "none":
    ds = grain.MapDataset.source(indices).map(functools.partial(_prepare_index, source, image_size))
  else:
    # The draws are made here, in the main process, and travel with the map function, so
    # workers only look them up: results cannot depend on worker count or scheduling.
    draws = augment_draws(len(indices), seed=seed, epoch=epoch)
    ds = grain.MapDataset.range(len(indices)).map(
      functools.partial(_prepare_augmented, source, image_size, augment, indices, draws)
    )
  ds = ds.batch(batch_size, drop_remainder=drop_remainder).map(
    functools.partial(_normalize_batch, imagenet_normalization=imagenet_normalization)
  )
  return _iterate(ds, worker_count)


def eval_batches(
  source: Source,
  *,
  batch_size: int,
  image_size: int,
  worker_count: int = 0,
  imagenet_normalization: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
  """Every example exactly once, in index order, in fixed-shape batches (normalised as in
  :func:`train_batches`).

  Returns:
    An iterator of ``ceil(N / B)`` dicts ``{"image": float32 [B, S, S, 3], "label": int32 [B],
    "group": int32 [B], "valid": bool [B]}``. The last batch is padded to B with zero images
    (label 0, group -1, ``valid`` False); metrics must drop rows where ``valid`` is False.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be > 0, got {batch_size}")
  n = len(source)
  padded = math.ceil(n / batch_size) * batch_size
  # Filler rows need the label shape; scan_labels is cached (and reads no image for sources
  # that expose labels), so this costs nothing after the first call per source.
  label_shape = scan_labels(source)[0].shape[1:] if padded > n else ()
  ds = (
    grain.MapDataset.range(padded)
    .map(functools.partial(_prepare_padded, source, image_size, n, label_shape))
    .batch(batch_size)
    .map(functools.partial(_normalize_batch, imagenet_normalization=imagenet_normalization))
  )
  return _iterate(ds, worker_count)


def _group_stream(members: np.ndarray, seed: int, group: int) -> Iterator[int]:
  """Endless walk over one group's indices: a fresh permutation per pass, so a group's
  examples repeat only after all of them were used."""
  for rep in itertools.count():
    rng = np.random.default_rng([seed, group, rep, _STREAM_GROUPS])
    yield from rng.permutation(members).tolist()


def group_balanced_batches(
  source: Source,
  *,
  batch_size: int,
  image_size: int,
  seed: int,
  num_groups: int,
  num_batches: int | None = None,
  imagenet_normalization: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
  """Batches with exactly ``batch_size // num_groups`` examples of every group.

  Used to average per-group saliencies over mini-batches (FairPrune, design.md section 2) so
  that each group's curvature is estimated from the same number of samples. Examples of
  unknown group (-1) are never drawn. Within a batch the rows are ordered group 0 block, group
  1 block, ...; consumers must rely on the ``group`` key, not on positions.

  Args:
    source: random-access source of records.
    batch_size: B, a multiple of ``num_groups``.
    image_size: S.
    seed: the batches are a pure function of (seed, source labels).
    num_groups: G; groups are 0..G-1.
    num_batches: stop after this many batches; ``None`` = endless.
    imagenet_normalization: as in :func:`train_batches`.

  Returns:
    An iterator of ``{"image": float32 [B, S, S, 3], "label": int32 [B], "group": int32 [B]}``.

  Raises:
    ValueError: if a group in 0..G-1 has no examples, or B is not a positive multiple of G.
  """
  if num_groups <= 0:
    raise ValueError(f"num_groups must be > 0, got {num_groups}")
  if batch_size <= 0 or batch_size % num_groups:
    raise ValueError(
      f"batch_size ({batch_size}) must be a positive multiple of num_groups ({num_groups})"
    )
  _, groups = scan_labels(source)
  members = [np.flatnonzero(groups == g) for g in range(num_groups)]
  for g, m in enumerate(members):
    if m.size == 0:
      raise ValueError(
        f"group {g} has no examples in the source (groups present: "
        f"{sorted(set(np.unique(groups).tolist()))}); cannot build group-balanced batches"
      )
  return _group_balanced_iter(
    source, members, batch_size, image_size, seed, num_batches, imagenet_normalization
  )


def _group_balanced_iter(
  source: Source,
  members: list[np.ndarray],
  batch_size: int,
  image_size: int,
  seed: int,
  num_batches: int | None,
  imagenet_normalization: bool,
) -> Iterator[dict[str, np.ndarray]]:
  # A plain generator rather than a grain pipeline: the stream is endless and these batches
  # are few (tens per pruning step), so prefetching would buy nothing.
  per_group = batch_size // len(members)
  streams = [_group_stream(m, seed, g) for g, m in enumerate(members)]
  batches = itertools.count() if num_batches is None else range(num_batches)
  for _ in batches:
    idx = [i for s in streams for i in itertools.islice(s, per_group)]
    elements = [_prepare_index(source, image_size, i) for i in idx]
    batch = {k: np.stack([e[k] for e in elements]) for k in ("image", "label", "group")}
    yield _normalize_batch(batch, imagenet_normalization)
