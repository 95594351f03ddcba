"""ImageNet-pretrained weights for the torchvision-equivalent models (and ViT-Ti/16 in timm's
layout), read from the user's disk.

Nothing is ever downloaded: the user points :func:`load` at a file they already have. Three file
formats are read (the format is told from the file's bytes, not its name):

- ``"pth"``: a torchvision ``state_dict`` saved with ``torch.save`` (``model.state_dict()`` of
  ``torchvision.models.<name>``, e.g. the files torchvision caches). Read with
  ``torch.load(weights_only=True)``; torch is imported only then (the ``bench`` extra).
- ``"safetensors"``: the same ``state_dict`` (same keys, PyTorch layouts) as a ``.safetensors``
  file. Read with ``safetensors.numpy``; no torch needed.
- ``"fairjax"``: the native format written by ``python -m fairjax.convert_weights IN OUT``. A
  safetensors file whose keys are fairjax leaf paths (``params/conv0/kernel``,
  ``batch_stats/bn0/mean``, ...) holding float32 arrays already in Flax layout, with the
  metadata ``format="fairjax-pretrained"``, ``format_version="1"``, ``model=<name>`` and
  ``num_classes=<classifier outputs>``. VGG's ``fc0`` is stored for a 7x7 feature map (224x224
  inputs) and adapted to other sizes on load, like a torchvision file.

Layout conversion from PyTorch: conv weights OIHW -> HWIO (a depthwise ``[C, 1, kh, kw]`` becomes
``[kh, kw, 1, C]``), linear weights are transposed, BatchNorm ``weight``/``bias`` become
``params`` ``scale``/``bias`` and ``running_mean``/``running_var`` become ``batch_stats``
``mean``/``var``; ``num_batches_tracked`` is ignored. BatchNorm's epsilon (1e-5) and momentum
(PyTorch 0.1 = Flax 0.9) are the same in both (``layers.BN_EPSILON`` / ``BN_MOMENTUM``).

VGG's first classifier layer: torchvision adapts the last feature map (``h x w`` = ``H/32 x W/32``)
to 7x7 with ``AdaptiveAvgPool2d`` and flattens it as ``(c, i, j)``; fairjax's VGG flattens the
``h x w`` map directly as ``(y, x, c)`` into ``fc0``. Adaptive average pooling is linear, so it is
folded exactly into ``fc0``::

    W_eff[(y, x, c), :] = sum_{i, j} P_h[i, y] * P_w[j, x] * W[(c, i, j), :]

where ``P_n[i, y] = 1 / (e_i - s_i)`` for ``s_i <= y < e_i``, ``s_i = floor(i * n / 7)``,
``e_i = ceil((i + 1) * n / 7)`` (PyTorch's bins; 0 elsewhere). At 224x224 inputs ``P`` is the
identity and the fold is a pure row permutation; smaller maps are upsampled by replication and
larger ones averaged, exactly as torchvision does. Inputs under 32x32 leave no feature map and are
refused.

ViT-Ti/16 (``vit_ti16``) reads timm's ``vit_tiny_patch16_224`` ``state_dict`` instead (keys
``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.<i>.{norm1, attn.qkv, attn.proj,
norm2, mlp.fc1, mlp.fc2}.*``, ``norm.*``, ``head.*``; manifests/vit_ti16.json): the patch
embedding converts like a conv, Linear weights are transposed, LayerNorm ``weight`` becomes
``scale``, and ``cls_token`` / ``pos_embed`` are copied as they are. Its position embedding is
for 14x14 patches, so only ``image_size=224`` is accepted (no interpolation).

When ``num_classes`` differs from the file's classifier (1000 for ImageNet), the last classifier
layer (VGG ``fc2``, ResNet / MobileNetV2 ``fc``, ViT ``head``) is initialised from ``rng`` with
the model's own initialiser: its value equals ``model.init(rng, images)["params"][head]``.

Every problem raises :class:`PretrainedError` with a one-line message naming the file, the key and
the shapes involved. Nothing is ever loaded partially.

Example::

    model = get_model("resnet18", num_classes=8, **model_fields("resnet18"))
    variables = load_pretrained("resnet18", "resnet18.safetensors", num_classes=8,
                                rng=jax.random.key(0))
    logits = model.apply(variables, images, train=False)
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fairjax.models import get_model
from fairjax.models.vgg import VGG11_CONFIG

PRETRAINED_MODELS: tuple[str, ...] = (
  "vgg11",
  "vgg11_bn",
  "resnet18",
  "resnet34",
  "mobilenet_v2",
  "vit_ti16",
)

NATIVE_FORMAT: str = "fairjax-pretrained"
NATIVE_FORMAT_VERSION: str = "1"

# torchvision's VGG pools its features to 7x7; 224 / 32 = 7, so 224x224 needs no fold.
_VGG_POOL = 7
_CANONICAL_SIZE = 224
# Output units per block when VGG's fc0 kernel is transposed (see _torch_to_flax).
_TRANSPOSE_BLOCK = 64

# Fields that must keep these values for a torchvision checkpoint to fit (``use_bn`` of
# ``vgg11_bn`` is set by its constructor).
_FIXED_FIELDS: dict[str, dict[str, Any]] = {
  "vgg11": {"width_multiplier": 1.0, "classifier_width": 4096, "use_bn": False},
  "vgg11_bn": {"width_multiplier": 1.0, "classifier_width": 4096},
  "resnet18": {"width": 64, "small_input": False, "stage_sizes": (2, 2, 2, 2)},
  "resnet34": {"width": 64, "small_input": False, "stage_sizes": (3, 4, 6, 3)},
  "mobilenet_v2": {"width_multiplier": 1.0, "round_nearest": 8},
  "vit_ti16": {"patch_size": 16, "dim": 192, "depth": 12, "num_heads": 3, "mlp_dim": 768},
}
_HEAD: dict[str, str] = {
  "vgg11": "fc2",
  "vgg11_bn": "fc2",
  "resnet18": "fc",
  "resnet34": "fc",
  "mobilenet_v2": "fc",
  "vit_ti16": "head",
}


class PretrainedError(ValueError):
  """A pretrained-weights file cannot be used; the message is one line and says how to fix it."""


@dataclasses.dataclass(frozen=True)
class LoadedWeights:
  """Variables built from a weights file.

  Attributes:
    variables: ``{"params": ..., "batch_stats": ...}`` (``batch_stats`` only for models with
      BatchNorm), nested dicts of float32 numpy arrays shaped exactly like ``model.init``'s.
    loaded: fairjax leaf paths taken from the file, e.g. ``"params/conv0/kernel"``.
    initialised: leaf paths freshly initialised (the classifier head when ``num_classes``
      differs from the file's).
    source: the file path, as given.
    file_format: ``"pth"``, ``"safetensors"`` or ``"fairjax"``.
  """

  variables: dict
  loaded: tuple[str, ...]
  initialised: tuple[str, ...]
  source: str
  file_format: str


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One fairjax leaf and the torchvision ``state_dict`` entry it comes from."""

  path: str  # fairjax leaf path, "params/conv0/kernel"
  torch_key: str  # "features.0.weight"
  kind: str  # "conv" | "dense" | "vgg_fc0" | "vector"
  shape: tuple[int, ...]  # fairjax shape at 224x224 inputs
  torch_shape: tuple[int, ...]


def _source(name: str) -> str:
  """Whose ``state_dict`` layout the files of ``name`` follow."""
  return "timm" if name == "vit_ti16" else "torchvision"


def _one_line(text: str) -> str:
  return " ".join(str(text).split())


def _fail(path: str, message: str) -> PretrainedError:
  return PretrainedError(_one_line(f"{path}: {message}"))


def _check_name(name: str) -> None:
  if name not in PRETRAINED_MODELS:
    raise PretrainedError(
      f"no pretrained-weights support for model {name!r}; supported: {', '.join(PRETRAINED_MODELS)}"
    )


def model_fields(name: str) -> dict[str, Any]:
  """The ``get_model`` fields (beyond ``num_classes``) that a torchvision checkpoint needs.

  Args:
    name: one of :data:`PRETRAINED_MODELS`.

  Returns:
    ``{"classifier_width": 4096}`` for ``vgg11`` / ``vgg11_bn``, ``{}`` for the others (their
    defaults already match torchvision).

  Raises:
    PretrainedError: for an unsupported ``name``.
  """
  _check_name(name)
  return {"classifier_width": 4096} if name.startswith("vgg") else {}


# --- fairjax module path -> torchvision state_dict prefix ------------------------------------


def _vgg_prefixes(use_bn: bool) -> dict[str, str]:
  """conv{i} / bn{i} / fc{i} -> torchvision ``features.<k>`` / ``classifier.<k>``."""
  prefixes = {"fc0": "classifier.0", "fc1": "classifier.3", "fc2": "classifier.6"}
  index, conv = 0, 0
  for item in VGG11_CONFIG:
    if item == "M":
      index += 1  # MaxPool2d
      continue
    prefixes[f"conv{conv}"] = f"features.{index}"
    if use_bn:
      prefixes[f"bn{conv}"] = f"features.{index + 1}"
    index += 3 if use_bn else 2  # Conv2d (+ BatchNorm2d) + ReLU
    conv += 1
  return prefixes


_RESNET_SUB = {
  "conv1": "conv1",
  "bn1": "bn1",
  "conv2": "conv2",
  "bn2": "bn2",
  "proj_conv": "downsample.0",
  "proj_bn": "downsample.1",
}
_RESNET_TOP = {"conv_init": "conv1", "bn_init": "bn1", "fc": "fc"}
_MOBILENET_TOP = {
  "stem_conv": "features.0.0",
  "stem_bn": "features.0.1",
  "last_conv": "features.18.0",
  "last_bn": "features.18.1",
  "fc": "classifier.1",
}
# Inside features.<i>.conv: block1 has no expansion, so its indices shift by one.
_MOBILENET_BLOCK1 = {
  "dw_conv": "conv.0.0",
  "dw_bn": "conv.0.1",
  "project_conv": "conv.1",
  "project_bn": "conv.2",
}
_MOBILENET_BLOCK = {
  "expand_conv": "conv.0.0",
  "expand_bn": "conv.0.1",
  "dw_conv": "conv.1.0",
  "dw_bn": "conv.1.1",
  "project_conv": "conv.2",
  "project_bn": "conv.3",
}
# timm's VisionTransformer (vit_tiny_patch16_224); block<i> -> blocks.<i>.
_VIT_TOP = {"patch_embed": "patch_embed.proj", "norm": "norm", "head": "head"}
_VIT_BLOCK = {
  "norm1": "norm1",
  "qkv": "attn.qkv",
  "proj": "attn.proj",
  "norm2": "norm2",
  "fc1": "mlp.fc1",
  "fc2": "mlp.fc2",
}


def _torch_prefix(name: str, module: tuple[str, ...]) -> str:
  if name == "vit_ti16":
    if len(module) == 1:
      return _VIT_TOP[module[0]]
    index = int(re.fullmatch(r"block(\d+)", module[0]).group(1))
    return f"blocks.{index}.{_VIT_BLOCK[module[1]]}"
  if name.startswith("vgg"):
    return _vgg_prefixes(name == "vgg11_bn")[module[0]]
  if name.startswith("resnet"):
    if len(module) == 1:
      return _RESNET_TOP[module[0]]
    stage, block = re.fullmatch(r"layer(\d+)_block(\d+)", module[0]).groups()
    return f"layer{stage}.{block}.{_RESNET_SUB[module[1]]}"
  if len(module) == 1:
    return _MOBILENET_TOP[module[0]]
  index = int(re.fullmatch(r"block(\d+)", module[0]).group(1))
  table = _MOBILENET_BLOCK1 if index == 1 else _MOBILENET_BLOCK
  return f"features.{index}.{table[module[1]]}"


_TORCH_LEAF = {
  ("params", "kernel"): "weight",
  ("params", "bias"): "bias",
  ("params", "scale"): "weight",
  ("batch_stats", "mean"): "running_mean",
  ("batch_stats", "var"): "running_var",
}


def _model(name: str, num_classes: int, fields: Mapping[str, Any] | None = None):
  # Fields equal to the checkpoint's (e.g. classifier_width=4096 from a config) are allowed;
  # _check_fields has rejected contradicting ones.
  return get_model(name, num_classes=num_classes, **{**model_fields(name), **dict(fields or {})})


def _variable_shapes(model, image_size: int) -> dict[str, tuple[int, ...]]:
  """Flat ``{"params/conv0/kernel": shape}`` of ``model.init`` at ``image_size`` (abstract)."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  tree = jax.eval_shape(model.init, jax.random.key(0), images)
  return {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


@functools.lru_cache(maxsize=None)
def _layout(name: str, num_classes: int = 1000) -> tuple[_Entry, ...]:
  """Every fairjax leaf of ``name`` at 224x224 with its torchvision key, kind and shapes."""
  entries = []
  for path, shape in _variable_shapes(_model(name, num_classes), _CANONICAL_SIZE).items():
    collection, *module, leaf = path.split("/")
    if not module:  # a top-level parameter (ViT's cls_token, pos_embed): same name
      key = leaf
    else:
      key = f"{_torch_prefix(name, tuple(module))}.{_TORCH_LEAF[collection, leaf]}"
    if len(shape) == 4:
      kind, torch_shape = "conv", (shape[3], shape[2], shape[0], shape[1])
    elif len(shape) == 2:
      kind = "vgg_fc0" if name.startswith("vgg") and module == ["fc0"] else "dense"
      torch_shape = (shape[1], shape[0])
    else:
      kind, torch_shape = "vector", shape
    entries.append(_Entry(path, key, kind, shape, torch_shape))
  return tuple(entries)


def _optional_torch_keys(name: str) -> frozenset[str]:
  """``num_batches_tracked`` of every BatchNorm: allowed in a file, never needed."""
  return frozenset(
    e.torch_key.rsplit(".", 1)[0] + ".num_batches_tracked"
    for e in _layout(name)
    if e.path.endswith("/mean")
  )


def _torch_to_flax(kind: str, array: np.ndarray) -> np.ndarray:
  if kind == "conv":  # OIHW -> HWIO; depthwise [C, 1, kh, kw] -> [kh, kw, 1, C]
    return np.ascontiguousarray(np.transpose(array, (2, 3, 1, 0)))
  if kind == "dense":
    return np.ascontiguousarray(array.T)
  if kind == "vgg_fc0":  # [out, (c, i, j)] -> [(i, j, c), out]: fairjax flattens NHWC
    out, features = array.shape
    channels = features // (_VGG_POOL * _VGG_POOL)
    rows = array.reshape(out, channels, _VGG_POOL * _VGG_POOL)
    flax = np.empty((_VGG_POOL * _VGG_POOL, channels, out), array.dtype)
    # In blocks of output units: one strided copy of the whole 0.4 GB kernel ran about twice as
    # long (design.md section 9).
    for start in range(0, out, _TRANSPOSE_BLOCK):
      block = slice(start, start + _TRANSPOSE_BLOCK)
      flax[:, :, block] = rows[block].transpose(2, 1, 0)
    return flax.reshape(features, out)
  return array


# --- architecture detection ------------------------------------------------------------------

_RESNETS = {
  (False, (2, 2, 2, 2)): "resnet18",
  (False, (3, 4, 6, 3)): "resnet34",
  (True, (3, 4, 6, 3)): "resnet50",
  (True, (3, 4, 23, 3)): "resnet101",
  (True, (3, 8, 36, 3)): "resnet152",
}
_VGGS = {8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}


def _identify(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, str] | None:
  """``(architecture, a key that shows it)`` of a torchvision ``state_dict``, if recognisable."""
  if "layer1.0.conv1.weight" in shapes and "fc.weight" in shapes:
    blocks = [0, 0, 0, 0]
    for key in shapes:
      if m := re.fullmatch(r"layer([1-4])\.(\d+)\.conv1\.weight", key):
        s = int(m.group(1)) - 1
        blocks[s] = max(blocks[s], int(m.group(2)) + 1)
    bottleneck = "layer1.0.conv3.weight" in shapes
    return _RESNETS.get(
      (bottleneck, tuple(blocks)),
      f"a ResNet with {'Bottleneck' if bottleneck else 'Basic'}Blocks {tuple(blocks)}",
    ), "layer1.0.conv1.weight"
  if "blocks.0.attn.qkv.weight" in shapes and "pos_embed" in shapes:
    dim = shapes["pos_embed"][-1]
    depth = 1 + max(
      int(m.group(1)) for k in shapes if (m := re.fullmatch(r"blocks\.(\d+)\.attn\.qkv\.weight", k))
    )
    patch = shapes.get("patch_embed.proj.weight", (0, 0, 0))[2]
    arch = (
      "vit_ti16"
      if (dim, depth, patch) == (192, 12, 16)
      else f"a ViT with width {dim}, depth {depth} and patch {patch}"
    )
    return arch, "pos_embed"
  if "features.1.conv.0.0.weight" in shapes and "features.18.0.weight" in shapes:
    return "mobilenet_v2", "features.1.conv.0.0.weight"
  if "classifier.6.weight" in shapes and "features.0.weight" in shapes:
    convs = sum(
      1 for k, s in shapes.items() if re.fullmatch(r"features\.\d+\.weight", k) and len(s) == 4
    )
    base = _VGGS.get(convs, f"a VGG with {convs} convs")
    return (base + "_bn" if "features.1.running_mean" in shapes else base, "classifier.6.weight")
  return None


# --- reading files ---------------------------------------------------------------------------


def _is_safetensors(path: str) -> bool:
  # safetensors: little-endian u64 header length, then the JSON header.
  with open(path, "rb") as f:
    head = f.read(9)
  return len(head) == 9 and head[8:9] == b"{"


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # lazily: only .pth files need it
  except ImportError:
    raise _fail(
      path,
      "reading a PyTorch .pth file needs torch, which is not installed; "
      'install it with pip install -e ".[bench]", or convert the file once where '
      f"torch is installed (python -m fairjax.convert_weights {path} "
      "OUT.safetensors) or save the state_dict as .safetensors, and load that "
      "file instead",
    ) from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for corrupt or foreign files
    raise _fail(
      path,
      f"cannot read it as a PyTorch state_dict ({type(e).__name__}: "
      f"{_one_line(e)[:200]}); pass an uncorrupted model.state_dict() saved "
      "with torch.save",
    ) from None
  if not isinstance(obj, Mapping):
    raise _fail(
      path,
      f"holds a {type(obj).__name__}, not a state_dict; save model.state_dict() with torch.save",
    )
  arrays = {}
  for key, value in obj.items():
    if not isinstance(value, torch.Tensor):
      hint = (
        "; it looks like a training checkpoint: save its 'state_dict' entry alone"
        if isinstance(value, Mapping) or key in ("epoch", "optimizer")
        else ""
      )
      raise _fail(path, f"key {key!r} holds a {type(value).__name__}, not a tensor{hint}")
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.to(torch.float32)  # bfloat16 has no numpy dtype
    arrays[str(key)] = value.numpy()
  return arrays


def _read(path: str) -> tuple[dict[str, np.ndarray], str, dict[str, str]]:
  """``(arrays, file_format, safetensors metadata)`` of ``path``."""
  if not os.path.exists(path):
    raise _fail(
      path,
      "no such file; pass the path of a weights file on this machine "
      "(fairjax never downloads weights)",
    )
  if not os.path.isfile(path):
    raise _fail(path, "not a file; pass the path of a .pth or .safetensors weights file")
  if not (path.endswith(".safetensors") or _is_safetensors(path)):
    return _read_torch(path), "pth", {}
  try:
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(path, framework="numpy") as f:
      metadata = dict(f.metadata() or {})
    arrays = load_file(path)
  except Exception as e:
    raise _fail(
      path,
      f"cannot read it as a safetensors file ({type(e).__name__}: "
      f"{_one_line(e)[:200]}); the file is corrupt or truncated",
    ) from None
  file_format = "fairjax" if metadata.get("format") == NATIVE_FORMAT else "safetensors"
  return arrays, file_format, metadata


def _as_float32(path: str, key: str, array: np.ndarray) -> np.ndarray:
  if not np.issubdtype(array.dtype, np.floating):
    raise _fail(
      path,
      f"key {key!r} (shape {tuple(array.shape)}) has dtype {array.dtype}, "
      "expected a floating dtype; the file is not a weights file of this model",
    )
  array = np.asarray(array, np.float32)
  if not np.all(np.isfinite(array)):
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    raise _fail(
      path,
      f"key {key!r} (shape {tuple(array.shape)}) holds {bad} non-finite "
      "values (NaN/inf); use an intact checkpoint",
    )
  return array


def _check_keys(
  path: str,
  name: str,
  shapes: Mapping[str, tuple[int, ...]],
  expected: Mapping[str, tuple[int, ...]],
  optional: frozenset[str],
  what: str,
) -> None:
  """Exact key set and shapes, or a one-line error on the first difference."""
  missing = [k for k in expected if k not in shapes]
  if missing:
    hint = ""
    if shapes and all(k.startswith("module.") for k in shapes):
      hint = "; its keys start with 'module.' (saved from DataParallel): strip that prefix"
    raise _fail(
      path,
      f"missing key {missing[0]!r} (expected shape "
      f"{expected[missing[0]]}; {len(missing)} of {len(expected)} keys missing): "
      f"not a complete {what} for {name}{hint}",
    )
  extra = [k for k in shapes if k not in expected and k not in optional]
  if extra:
    raise _fail(
      path,
      f"unexpected key {extra[0]!r} with shape {tuple(shapes[extra[0]])} "
      f"({len(extra)} unexpected keys): not a {what} for {name}; remove them or "
      "pick the matching model name",
    )
  for key, shape in expected.items():
    if tuple(shapes[key]) != tuple(shape):
      raise _fail(
        path,
        f"key {key!r} has shape {tuple(shapes[key])}, expected {shape} "
        f"for {name}; the file belongs to a different variant of the model",
      )


def _head_classes(shapes: Mapping[str, tuple[int, ...]], key: str, out_axis: int) -> int:
  """Number of classes of the file's classifier head (1000 when absent or malformed)."""
  shape = shapes.get(key)
  return int(shape[out_axis]) if shape is not None and len(shape) == 2 else 1000


def _from_torch(path: str, name: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Canonical (224x224) fairjax leaves from a torchvision ``state_dict``."""
  shapes = {k: tuple(v.shape) for k, v in arrays.items()}
  found = _identify(shapes)
  if found is not None and found[0] != name:
    other, key = found
    raise _fail(
      path,
      f"looks like {other} weights, not {name} (it has key {key!r} with "
      f"shape {shapes[key]}); load it with the model name {other!r} or pass a "
      f"{name} file",
    )
  head_key = _torch_prefix(name, (_HEAD[name],)) + ".weight"
  layout = _layout(name, _head_classes(shapes, head_key, 0))
  _check_keys(
    path,
    name,
    shapes,
    {e.torch_key: e.torch_shape for e in layout},
    _optional_torch_keys(name),
    f"{_source(name)} state_dict",
  )
  return {
    e.path: _torch_to_flax(e.kind, _as_float32(path, e.torch_key, arrays[e.torch_key]))
    for e in layout
  }


def _from_native(
  path: str, name: str, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]
) -> dict[str, np.ndarray]:
  """Canonical fairjax leaves from a file written by ``fairjax.convert_weights``."""
  version = metadata.get("format_version")
  if version != NATIVE_FORMAT_VERSION:
    raise _fail(
      path,
      f"fairjax weights format version {version!r}, this fairjax reads "
      f"{NATIVE_FORMAT_VERSION!r}; convert the original file again with this "
      "fairjax (python -m fairjax.convert_weights)",
    )
  if metadata.get("model") != name:
    raise _fail(
      path,
      f"looks like {metadata.get('model')} weights (its metadata says "
      f"model={metadata.get('model')!r}), not {name}; load it with that model name "
      f"or pass a {name} file",
    )
  shapes = {k: tuple(v.shape) for k, v in arrays.items()}
  head = f"params/{_HEAD[name]}/kernel"
  layout = _layout(name, _head_classes(shapes, head, 1))
  _check_keys(
    path, name, shapes, {e.path: e.shape for e in layout}, frozenset(), "fairjax weights file"
  )
  return {e.path: _as_float32(path, e.path, arrays[e.path]) for e in layout}


def _detect(
  path: str, arrays: Mapping[str, np.ndarray], file_format: str, metadata: Mapping[str, str]
) -> str | None:
  """The architecture a file was read from: native metadata, or torchvision's key names."""
  if file_format == "fairjax":
    return metadata.get("model")
  found = _identify({k: tuple(v.shape) for k, v in arrays.items()})
  return None if found is None else found[0]


def _read_canonical(
  name: str, path: str, read: tuple | None = None
) -> tuple[dict[str, np.ndarray], str]:
  """Validated fairjax leaves of ``path`` at 224x224 geometry, and the file format.

  ``read`` is ``_read(path)``'s result when the caller already has it.
  """
  arrays, file_format, metadata = read if read is not None else _read(path)
  if file_format == "fairjax":
    return _from_native(path, name, arrays, metadata), file_format
  return _from_torch(path, name, arrays), file_format


# --- adapting to the requested model ---------------------------------------------------------


def adaptive_pool_matrix(in_size: int, out_size: int = _VGG_POOL) -> np.ndarray:
  """PyTorch's 1-D adaptive average pooling as a matrix.

  Args:
    in_size: input length ``n >= 1``.
    out_size: number of bins.

  Returns:
    float64 ``P [out_size, in_size]``; bin ``i`` averages inputs ``floor(i * n / out_size)``
    to ``ceil((i + 1) * n / out_size) - 1``, so ``pooled = P @ x``.
  """
  matrix = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)  # ceil
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


def _fold_vgg_fc0(kernel: np.ndarray, height: int, width: int) -> np.ndarray:
  """``fc0`` kernel for a 7x7 map ``[(7*7*C), out]`` -> for an ``height x width`` map.

  ``new[(y, x), (c, o)] = sum_{i, j} P_h[i, y] P_w[j, x] old[(i, j), (c, o)]``: one matmul of
  the ``[49, H*W]`` pooling weights with the kernel viewed as ``[49, C*out]`` (no copy), not two
  tensordots through transposed copies of the 0.4-0.5 GB kernel (design.md section 9 has the
  timings).
  """
  out = kernel.shape[1]
  channels = kernel.shape[0] // (_VGG_POOL * _VGG_POOL)
  if (height, width) == (_VGG_POOL, _VGG_POOL):
    return kernel
  pool = np.einsum("iy,jx->ijyx", adaptive_pool_matrix(height), adaptive_pool_matrix(width))
  pool = pool.reshape(_VGG_POOL * _VGG_POOL, height * width).astype(np.float32)
  folded = pool.T @ np.ascontiguousarray(kernel).reshape(_VGG_POOL * _VGG_POOL, channels * out)
  return folded.reshape(height * width * channels, out)


def _check_fields(name: str, path: str, model_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
  fields = dict(model_kwargs or {})
  probe = _model(name, 1)
  names = {f.name for f in dataclasses.fields(probe)} - {"parent", "name"}
  for field, value in fields.items():
    if field == "num_classes":
      raise _fail(path, "model_kwargs sets num_classes; pass num_classes= to load instead")
    if field not in names:
      raise _fail(
        path,
        f"model_kwargs field {field!r} is not a field of {name} "
        f"(fields: {', '.join(sorted(names))})",
      )
    fixed = _FIXED_FIELDS[name]
    if (
      field in fixed
      and (tuple(value) if isinstance(value, (list, tuple)) else value) != (fixed[field])
    ):
      raise _fail(
        path,
        f"model_kwargs {field}={value!r} contradicts the {_source(name)} "
        f"{name} checkpoint, which needs {field}={fixed[field]!r}; drop the "
        "field or train from scratch",
      )
  if name == "vgg11_bn" and "use_bn" in fields:
    raise _fail(path, "model_kwargs sets use_bn, which vgg11_bn fixes; drop the field")
  return fields


@functools.lru_cache(maxsize=8)
def _head_initialiser(model, head: str, image_size: int):
  """Jitted ``key -> model.init(key, zeros)["params"][head]``; XLA drops the other leaves' work.

  Cached so that repeated loads of the same model compile once.
  """
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return jax.jit(lambda key: model.init(key, jnp.zeros(images.shape, images.dtype))["params"][head])


def _init_head(model, head: str, rng: jax.Array, image_size: int) -> dict[str, np.ndarray]:
  """``model.init(rng, zeros)["params"][head]`` as float32 numpy arrays."""
  tree = _head_initialiser(model, head, image_size)(rng)
  return {k: np.asarray(v, np.float32) for k, v in tree.items()}


def load(
  name: str,
  path: str | os.PathLike,
  *,
  num_classes: int | None = None,
  rng: jax.Array | None = None,
  image_size: int = 224,
  model_kwargs: Mapping[str, Any] | None = None,
) -> LoadedWeights:
  """Reads pretrained weights of model ``name`` from ``path`` (never downloads).

  Args:
    name: one of :data:`PRETRAINED_MODELS`.
    path: a torchvision ``state_dict`` (``.pth`` or ``.safetensors``) or a fairjax-native file
      (see the module docstring).
    num_classes: logits of the model to build; ``None`` keeps the file's (1000 for ImageNet).
      When it differs, the head is freshly initialised from ``rng``.
    rng: a JAX PRNG key; required when the head is initialised.
    image_size: side of the square ``[B, S, S, 3]`` inputs the variables are built for. Only
      VGG depends on it (its ``fc0`` folds torchvision's adaptive pooling; ``S >= 32``).
    model_kwargs: extra model fields that leave parameter shapes alone (``dtype``,
      ``dropout_rate``); a field that contradicts the checkpoint is refused.

  Returns:
    :class:`LoadedWeights`; its ``variables`` fit
    ``get_model(name, num_classes=n, **model_fields(name), **model_kwargs)`` on ``S x S``
    images.

  Raises:
    PretrainedError: one line naming the file, key and shapes, for a missing, unreadable or
      corrupt file, weights of another architecture, missing, unexpected or misshapen keys,
      non-finite values, contradicting fields, a missing ``rng`` or too small an image size.
  """
  path = os.fspath(path)
  _check_name(name)
  fields = _check_fields(name, path, model_kwargs)
  if not isinstance(image_size, (int, np.integer)) or image_size < 1:
    raise _fail(path, f"image_size={image_size!r}; pass a positive integer")
  feature_map = image_size // 32  # five 2x2 max-pools, floor like PyTorch's
  if name == "vit_ti16" and image_size != _CANONICAL_SIZE:
    raise _fail(
      path,
      f"image_size={image_size}: vit_ti16's position embedding holds 197 "
      f"tokens (14x14 patches of a {_CANONICAL_SIZE}x{_CANONICAL_SIZE} image) and "
      "fairjax does not interpolate it; resize the images to 224x224",
    )
  if name.startswith("vgg") and feature_map == 0:
    raise _fail(
      path,
      f"image_size={image_size} leaves VGG no feature map (it needs >= 32 "
      "pixels) so torchvision's 7x7 adaptive pooling cannot be folded into fc0; "
      "use images of at least 32x32",
    )
  if num_classes is not None and (
    not isinstance(num_classes, (int, np.integer)) or num_classes < 1
  ):
    raise _fail(path, f"num_classes={num_classes!r}; pass a positive integer or None")

  flat, file_format = _read_canonical(name, path)
  head = _HEAD[name]
  file_classes = flat[f"params/{head}/kernel"].shape[1]
  classes = file_classes if num_classes is None else int(num_classes)
  if name.startswith("vgg"):
    flat["params/fc0/kernel"] = _fold_vgg_fc0(flat["params/fc0/kernel"], feature_map, feature_map)
  loaded = tuple(flat)
  model = _model(name, classes, fields)
  initialised: tuple[str, ...] = ()
  if classes != file_classes:
    if rng is None:
      raise _fail(
        path,
        f"num_classes={classes} differs from the file's {file_classes} "
        f"classes, so the new head '{head}' needs rng=jax.random.key(seed)",
      )
    fresh = _init_head(model, head, rng, image_size)
    initialised = tuple(f"params/{head}/{leaf}" for leaf in fresh)
    loaded = tuple(p for p in loaded if p not in initialised)
    flat.update({f"params/{head}/{leaf}": value for leaf, value in fresh.items()})

  target = _variable_shapes(model, image_size)
  for key, shape in target.items():
    have = flat[key].shape if key in flat else None
    if have != shape:
      raise _fail(
        path,
        f"leaf {key!r} would have shape {have}, but {name} with "
        f"model_kwargs={fields} needs {shape}; drop the fields that change "
        "parameter shapes",
      )
  if set(flat) != set(target):
    extra = sorted(set(flat) - set(target))[0]
    raise _fail(
      path,
      f"leaf {extra!r} is not a variable of {name} with "
      f"model_kwargs={fields}; drop the fields that change the architecture",
    )
  variables = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
  return LoadedWeights(variables, loaded, initialised, path, file_format)


def load_pretrained(
  name: str,
  path: str | os.PathLike,
  *,
  num_classes: int | None = None,
  rng: jax.Array | None = None,
  image_size: int = 224,
) -> dict:
  """``load(...).variables``: the variables dict for ``model.apply``; see :func:`load`."""
  return load(name, path, num_classes=num_classes, rng=rng, image_size=image_size).variables


def torchvision_shapes(name: str) -> dict[str, tuple[int, ...]]:
  """The ``state_dict`` keys and shapes (1000 classes) that :func:`load` expects for ``name``.

  ``num_batches_tracked`` keys are left out: a file may hold them (shape ``()``), they are
  ignored.
  """
  _check_name(name)
  return {e.torch_key: e.torch_shape for e in _layout(name)}
