"""Tests for fairjax.models.pretrained and fairjax.convert_weights.

Torch-free tests write torchvision-layout state dicts with numpy (keys and shapes from the checked-in
manifests) into .safetensors files and compare fairjax's logits with ``state_dict_reference``, a
jax transcription of torchvision's forward passes that shares no code with fairjax. Tests that
need torch (``.pth`` files, parity with the PyTorch reference models of ``torch_reference``)
skip without it; the safetensors tests never do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors import safe_open
from safetensors.numpy import save_file

from fairjax import convert_weights
from fairjax.models import get_model, pretrained
from fairjax.models.pretrained import PretrainedError
from tests import state_dict_reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFESTS = os.path.join(REPO, "fairjax", "models", "manifests")
# torchvision's parameter counts (BN running statistics excluded); timm's for vit_ti16.
TORCHVISION_PARAMS = {
  "vgg11": 132_863_336,
  "vgg11_bn": 132_868_840,
  "resnet18": 11_689_512,
  "resnet34": 21_797_672,
  "mobilenet_v2": 3_504_872,
  "vit_ti16": 5_717_416,
}


def _manifest(name: str) -> dict:
  with open(os.path.join(MANIFESTS, f"{name}.json"), encoding="utf-8") as f:
    return json.load(f)


def _random_state_dict(name: str, seed: int) -> dict[str, np.ndarray]:
  """A torchvision-layout state dict of ``name`` from numpy: fan-in-scaled weights, non-trivial
  BatchNorm statistics (kept moderate so that activations stay of order one)."""
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in _manifest(name)["state_dict"]:
    shape = tuple(shape)
    leaf = key.rsplit(".", 1)[-1]  # ViT's cls_token / pos_embed: the key itself
    if leaf == "num_batches_tracked":
      state[key] = np.array(7, np.int64)
    elif leaf == "weight" and len(shape) > 1:
      fan_in = int(np.prod(shape[1:]))
      state[key] = rng.standard_normal(shape, np.float32) * np.float32((1.0 / fan_in) ** 0.5)
    elif leaf == "weight":  # BatchNorm scale
      state[key] = rng.uniform(0.5, 1.0, shape).astype(np.float32)
    elif leaf == "running_var":
      state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:  # bias, running_mean
      state[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
  return state


def _images(seed: int, size: int, batch: int = 2) -> np.ndarray:
  """NCHW float32 images."""
  return np.random.default_rng(seed).standard_normal((batch, 3, size, size), np.float32)


def _fairjax_logits(
  name: str, variables: dict, images_nchw: np.ndarray, num_classes: int = 1000
) -> np.ndarray:
  model = get_model(name, num_classes=num_classes, **pretrained.model_fields(name))
  return np.asarray(jax.jit(model.apply)(variables, jnp.asarray(images_nchw.transpose(0, 2, 3, 1))))


def _assert_logits_close(out: np.ndarray, ref: np.ndarray) -> None:
  # 1e-4 relative to the logit scale (float32 through up to 36 layers).
  scale = max(1.0, float(np.abs(ref).max()))
  np.testing.assert_allclose(out / scale, ref / scale, rtol=0, atol=1e-4)


def _flat(variables: dict) -> dict[str, np.ndarray]:
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(variables).items()}


def _assert_same_variables(a: dict, b: dict) -> None:
  fa, fb = _flat(a), _flat(b)
  assert fa.keys() == fb.keys()
  for key in fa:
    np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)


@pytest.fixture(scope="module")
def state_files(tmp_path_factory):
  """name -> (numpy state dict, path of its .safetensors file), built once per name."""
  directory = tmp_path_factory.mktemp("safetensors")
  cache = {}

  def get(name: str):
    if name not in cache:
      state = _random_state_dict(name, seed=len(cache))
      path = str(directory / f"{name}.safetensors")
      save_file(state, path)
      cache[name] = (state, path)
    return cache[name]

  return get


def _error(name: str, path, **kwargs) -> str:
  with pytest.raises(PretrainedError) as excinfo:
    pretrained.load(name, path, **kwargs)
  message = str(excinfo.value)
  assert "\n" not in message
  return message


# --- manifests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", pretrained.PRETRAINED_MODELS)
def test_manifest_matches_loader(name):
  manifest = _manifest(name)
  assert manifest["model"] == name
  entries = {key: tuple(shape) for key, shape in manifest["state_dict"]}
  required = {k: s for k, s in entries.items() if not k.endswith(".num_batches_tracked")}
  assert pretrained.torchvision_shapes(name) == required
  optional = {k for k in entries if k.endswith(".num_batches_tracked")}
  assert optional == pretrained._optional_torch_keys(name)
  assert all(entries[k] == () for k in optional)
  params = sum(int(np.prod(s)) for k, s in required.items() if "running_" not in k)
  assert params == manifest["num_parameters"] == TORCHVISION_PARAMS[name]


def test_manifest_key_naming_spot_checks():
  # torchvision's published naming, one key of each structural kind.
  vgg = dict(map(tuple, _manifest("vgg11")["state_dict"]))
  assert vgg["features.0.weight"] == [64, 3, 3, 3] and vgg["features.18.weight"] == [512, 512, 3, 3]
  assert vgg["classifier.0.weight"] == [4096, 25088] and vgg["classifier.6.bias"] == [1000]
  bn = dict(map(tuple, _manifest("vgg11_bn")["state_dict"]))
  assert bn["features.25.weight"] == [512, 512, 3, 3] and bn["features.26.running_var"] == [512]
  r34 = dict(map(tuple, _manifest("resnet34")["state_dict"]))
  assert r34["layer2.0.downsample.0.weight"] == [128, 64, 1, 1]
  assert r34["layer3.5.conv2.weight"] == [256, 256, 3, 3] and "layer3.6.conv1.weight" not in r34
  mb = dict(map(tuple, _manifest("mobilenet_v2")["state_dict"]))
  assert mb["features.1.conv.0.0.weight"] == [32, 1, 3, 3]  # depthwise, no expansion
  assert mb["features.1.conv.1.weight"] == [16, 32, 1, 1]
  assert mb["features.2.conv.1.0.weight"] == [96, 1, 3, 3]
  assert mb["features.17.conv.2.weight"] == [320, 960, 1, 1]
  assert mb["features.18.0.weight"] == [1280, 320, 1, 1] and mb["classifier.1.weight"] == [
    1000,
    1280,
  ]
  # timm's vit_tiny_patch16_224: 152 entries, own parameters first, no BatchNorm.
  vit = _manifest("vit_ti16")["state_dict"]
  assert len(vit) == 4 + 12 * 12 + 4 and vit[0] == ["cls_token", [1, 1, 192]]
  vit = dict(map(tuple, vit))
  assert vit["pos_embed"] == [1, 197, 192] and vit["patch_embed.proj.weight"] == [192, 3, 16, 16]
  assert vit["blocks.0.attn.qkv.weight"] == [576, 192]
  assert vit["blocks.11.mlp.fc2.weight"] == [192, 768] and "blocks.12.norm1.weight" not in vit
  assert vit["norm.weight"] == [192] and vit["head.weight"] == [1000, 192]


# --- torch-free loading from .safetensors -------------------------------------------------------


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("mobilenet_v2", 64), ("vgg11_bn", 96)])
def test_safetensors_logits_match_reference(state_files, name, size):
  state, path = state_files(name)
  loaded = pretrained.load(name, path, image_size=size)
  assert loaded.file_format == "safetensors" and loaded.source == path
  assert loaded.initialised == ()
  assert set(loaded.loaded) == set(_flat(loaded.variables))
  images = _images(1, size)
  _assert_logits_close(
    _fairjax_logits(name, loaded.variables, images),
    state_dict_reference.logits(name, state, images),
  )


@pytest.mark.parametrize("name", ["resnet34", "mobilenet_v2"])
def test_safetensors_layouts(state_files, name):
  # Leaf by leaf, independent of any forward pass.
  state, path = state_files(name)
  flat = _flat(pretrained.load_pretrained(name, path))
  if name == "resnet34":
    np.testing.assert_array_equal(
      flat["params/layer2_block0/proj_conv/kernel"],
      state["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
      flat["batch_stats/layer4_block2/bn2/var"], state["layer4.2.bn2.running_var"]
    )
    np.testing.assert_array_equal(flat["params/fc/kernel"], state["fc.weight"].T)
  else:
    dw = flat["params/block5/dw_conv/kernel"]
    assert dw.shape == (3, 3, 1, 192)
    np.testing.assert_array_equal(dw[:, :, 0, 7], state["features.5.conv.1.0.weight"][7, 0])
    np.testing.assert_array_equal(
      flat["params/block1/project_bn/scale"], state["features.1.conv.2.weight"]
    )
    np.testing.assert_array_equal(
      flat["batch_stats/last_bn/mean"], state["features.18.1.running_mean"]
    )


def test_adaptive_pool_matrix_matches_pytorch_bins():
  np.testing.assert_array_equal(pretrained.adaptive_pool_matrix(7), np.eye(7))
  up = pretrained.adaptive_pool_matrix(2)  # bins 0-2 read row 0, bin 3 both, 4-6 row 1
  np.testing.assert_allclose(up, [[1, 0]] * 3 + [[0.5, 0.5]] + [[0, 1]] * 3)
  down = pretrained.adaptive_pool_matrix(9)
  np.testing.assert_allclose(down.sum(axis=1), 1.0)
  np.testing.assert_allclose(down[1], [0, 0.5, 0.5] + [0] * 6)  # floor(9/7)=1 .. ceil(18/7)=3


def test_new_head_is_the_models_own_init(state_files):
  state, path = state_files("resnet18")
  rng = jax.random.key(3)
  new = pretrained.load("resnet18", path, num_classes=7, rng=rng, image_size=32)
  assert new.initialised == ("params/fc/bias", "params/fc/kernel")
  assert "params/fc/kernel" not in new.loaded and "params/conv_init/kernel" in new.loaded
  model = get_model("resnet18", num_classes=7)
  # Only the head is kept, so XLA skips computing the other leaves (same values).
  init = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3)))["params"]["fc"])(rng)
  np.testing.assert_array_equal(new.variables["params"]["fc"]["kernel"], init["kernel"])
  np.testing.assert_array_equal(new.variables["params"]["fc"]["bias"], init["bias"])
  again = pretrained.load_pretrained("resnet18", path, num_classes=7, rng=rng, image_size=32)
  _assert_same_variables(new.variables, again)
  other = pretrained.load_pretrained(
    "resnet18", path, num_classes=7, rng=jax.random.key(4), image_size=32
  )
  assert not np.array_equal(other["params"]["fc"]["kernel"], init["kernel"])
  # Everything else is the file's.
  full = _flat(pretrained.load_pretrained("resnet18", path))
  for key, value in _flat(new.variables).items():
    if not key.startswith("params/fc/"):
      np.testing.assert_array_equal(value, full[key])
  message = _error("resnet18", path, num_classes=7)
  assert "rng" in message and "7" in message and "1000" in message and path in message


def test_model_fields_and_model_kwargs(state_files):
  assert pretrained.model_fields("vgg11") == {"classifier_width": 4096}
  assert pretrained.model_fields("vgg11_bn") == {"classifier_width": 4096}
  assert pretrained.model_fields("resnet34") == {} and pretrained.model_fields("mobilenet_v2") == {}
  _, path = state_files("mobilenet_v2")
  loaded = pretrained.load(
    "mobilenet_v2", path, model_kwargs={"dropout_rate": 0.5, "dtype": jnp.bfloat16}
  )
  assert loaded.initialised == ()
  for name, field, value in [
    ("vgg11", "classifier_width", 512),
    ("resnet18", "width", 32),
    ("resnet34", "small_input", True),
    ("mobilenet_v2", "width_multiplier", 0.5),
  ]:
    message = _error(name, path, model_kwargs={field: value})
    assert field in message and repr(value) in message and path in message
  assert "'colour'" in _error("resnet18", path, model_kwargs={"colour": 1})
  assert "num_classes=" in _error("resnet18", path, model_kwargs={"num_classes": 3})


def test_vit_head_layout_and_image_size(tmp_path, state_files):
  # timm layout, torch-free: leaf by leaf, a new head, and the refusal of other image sizes.
  state, path = state_files("vit_ti16")
  loaded = pretrained.load("vit_ti16", path, num_classes=5, rng=jax.random.key(0))
  assert loaded.file_format == "safetensors"
  assert loaded.initialised == ("params/head/bias", "params/head/kernel")
  assert len(loaded.loaded) == 152 - 2
  flat = _flat(loaded.variables)
  assert flat["params/head/kernel"].shape == (192, 5)
  np.testing.assert_array_equal(flat["params/pos_embed"], state["pos_embed"])
  np.testing.assert_array_equal(flat["params/cls_token"], state["cls_token"])
  np.testing.assert_array_equal(
    flat["params/patch_embed/kernel"], state["patch_embed.proj.weight"].transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(
    flat["params/block7/qkv/kernel"], state["blocks.7.attn.qkv.weight"].T
  )
  np.testing.assert_array_equal(flat["params/block3/norm2/scale"], state["blocks.3.norm2.weight"])
  model = get_model("vit_ti16", num_classes=5)
  x = jnp.zeros((1, 224, 224, 3))
  assert jax.eval_shape(model.apply, loaded.variables, x).shape == (1, 5)
  message = _error("vit_ti16", path, image_size=160)
  assert "image_size=160" in message and "224" in message and path in message
  assert "depth=6 contradicts the timm" in _error("vit_ti16", path, model_kwargs={"depth": 6})
  # A torchvision file is not taken for ViT weights, nor the reverse.
  _, resnet = state_files("resnet18")
  assert "looks like resnet18" in _error("vit_ti16", resnet)
  assert "looks like vit_ti16" in _error("resnet18", path)
  # Missing, unexpected and misshapen keys: one line each, naming the key and shapes.
  key = "blocks.4.attn.proj.bias"
  message = _error("vit_ti16", _write_variant(tmp_path, state, lambda s: s.pop(key)))
  assert f"missing key {key!r}" in message and "(192,)" in message and "timm" in message
  extra = _write_variant(tmp_path, state, lambda s: s.update(fc_norm=np.ones(192, np.float32)))
  assert "unexpected key 'fc_norm'" in _error("vit_ti16", extra)
  short = _write_variant(tmp_path, state, lambda s: s.update(pos_embed=state["pos_embed"][:, :50]))
  assert "'pos_embed' has shape (1, 50, 192), expected (1, 197, 192)" in _error("vit_ti16", short)


def test_vgg_refuses_images_too_small_to_fold(tmp_path):
  message = _error("vgg11", tmp_path / "vgg11.safetensors", image_size=31)
  assert "image_size=31" in message and "32" in message and "vgg11.safetensors" in message


def test_unknown_model_name(tmp_path):
  message = _error("resnet50", tmp_path / "w.pth")
  assert "resnet50" in message and "mobilenet_v2" in message


# --- bad files (torch-free) ---------------------------------------------------------------------


def _write_variant(tmp_path, base: dict, edit, filename="bad.safetensors") -> str:
  state = dict(base)
  edit(state)
  path = str(tmp_path / filename)
  save_file(state, path)
  return path


def test_missing_file(tmp_path):
  path = str(tmp_path / "nowhere.safetensors")
  message = _error("resnet18", path)
  assert path in message and "no such file" in message


def test_corrupt_files(tmp_path, state_files):
  _, good = state_files("mobilenet_v2")
  truncated = tmp_path / "truncated.safetensors"
  with open(good, "rb") as f:
    truncated.write_bytes(f.read(5000))
  message = _error("mobilenet_v2", truncated)
  assert str(truncated) in message and "corrupt" in message
  garbage = tmp_path / "garbage.safetensors"
  garbage.write_bytes(b"\x00" * 64)
  assert str(garbage) in _error("mobilenet_v2", garbage)


def test_weights_of_another_architecture(state_files):
  _, path = state_files("mobilenet_v2")
  message = _error("resnet18", path)
  assert "looks like mobilenet_v2" in message and "resnet18" in message and path in message
  assert "'features.1.conv.0.0.weight'" in message and "(32, 1, 3, 3)" in message


def test_missing_key(tmp_path, state_files):
  state, _ = state_files("mobilenet_v2")
  key = "features.5.conv.1.1.running_var"
  path = _write_variant(tmp_path, state, lambda s: s.pop(key))
  message = _error("mobilenet_v2", path)
  assert f"missing key {key!r}" in message and "(192,)" in message and path in message


def test_num_batches_tracked_is_optional(tmp_path, state_files):
  state, _ = state_files("mobilenet_v2")
  path = _write_variant(
    tmp_path, state, lambda s: [s.pop(k) for k in list(s) if k.endswith("num_batches_tracked")]
  )
  assert len(pretrained.load("mobilenet_v2", path).loaded) == 262


def test_unexpected_key(tmp_path, state_files):
  state, _ = state_files("mobilenet_v2")
  path = _write_variant(
    tmp_path, state, lambda s: s.update({"features.19.weight": np.zeros((4, 2), np.float32)})
  )
  message = _error("mobilenet_v2", path)
  assert "unexpected key 'features.19.weight'" in message and "(4, 2)" in message
  assert path in message


def test_shape_mismatch(tmp_path, state_files):
  state, _ = state_files("mobilenet_v2")
  key = "features.3.conv.2.weight"
  path = _write_variant(
    tmp_path, state, lambda s: s.update({key: np.zeros((24, 140, 1, 1), np.float32)})
  )
  message = _error("mobilenet_v2", path)
  assert repr(key) in message and "(24, 140, 1, 1)" in message and "(24, 144, 1, 1)" in message
  assert path in message


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values(tmp_path, state_files, bad):
  state, _ = state_files("mobilenet_v2")
  key = "features.7.conv.0.1.bias"

  def edit(s):
    s[key] = s[key].copy()
    s[key][3] = bad

  path = _write_variant(tmp_path, state, edit)
  message = _error("mobilenet_v2", path)
  assert repr(key) in message and "(192,)" in message and "non-finite" in message
  assert path in message


def test_integer_weights_are_refused(tmp_path, state_files):
  state, _ = state_files("mobilenet_v2")
  key = "classifier.1.bias"
  path = _write_variant(tmp_path, state, lambda s: s.update({key: np.zeros((1000,), np.int32)}))
  message = _error("mobilenet_v2", path)
  assert repr(key) in message and "int32" in message


def test_pth_without_torch_names_the_extra_and_converter(tmp_path, monkeypatch):
  path = tmp_path / "weights.pth"
  path.write_bytes(b"PK\x03\x04 not really a zip")
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
  message = _error("resnet18", path)
  assert 'pip install -e ".[bench]"' in message and "fairjax.convert_weights" in message
  assert ".safetensors" in message and str(path) in message


# --- native format and converter ----------------------------------------------------------------


def test_converter_round_trip(tmp_path, state_files):
  _, source = state_files("resnet18")
  out = str(tmp_path / "resnet18.fairjax.safetensors")
  assert convert_weights.main([source, out]) == 0  # architecture recognised from the keys
  with safe_open(out, framework="numpy") as f:
    metadata = f.metadata()
    keys = set(f.keys())
  assert metadata["format"] == pretrained.NATIVE_FORMAT
  assert metadata["format_version"] == "1" and metadata["model"] == "resnet18"
  assert metadata["num_classes"] == "1000" and metadata["source_format"] == "safetensors"
  assert "params/layer3_block0/proj_conv/kernel" in keys and "batch_stats/bn_init/mean" in keys
  native = pretrained.load("resnet18", out)
  assert native.file_format == "fairjax"
  direct = pretrained.load("resnet18", source)
  _assert_same_variables(native.variables, direct.variables)
  assert native.loaded == direct.loaded
  # A native file still checks the architecture.
  message = _error("resnet34", out)
  assert "looks like resnet18" in message and out in message


def test_native_file_checks(tmp_path, state_files):
  _, source = state_files("mobilenet_v2")
  out = str(tmp_path / "mb.safetensors")
  assert convert_weights.convert(source, out, model="mobilenet_v2") == "mobilenet_v2"
  with safe_open(out, framework="numpy") as f:
    metadata = f.metadata()
    arrays = {k: f.get_tensor(k) for k in f.keys()}
  bad = dict(arrays)
  bad["params/block3/dw_conv/kernel"] = np.zeros((3, 3, 1, 10), np.float32)
  path = str(tmp_path / "bad_native.safetensors")
  save_file(bad, path, metadata=metadata)
  message = _error("mobilenet_v2", path)
  assert "'params/block3/dw_conv/kernel'" in message and "(3, 3, 1, 10)" in message
  assert "(3, 3, 1, 144)" in message
  save_file(arrays, path, metadata={**metadata, "format_version": "99"})
  assert "'99'" in _error("mobilenet_v2", path)


def test_converter_cli_bad_input_exits_2_with_one_line(tmp_path):
  missing = str(tmp_path / "missing.pth")
  result = subprocess.run(
    [sys.executable, "-m", "fairjax.convert_weights", missing, str(tmp_path / "out")],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=120,
  )
  assert result.returncode == 2
  assert result.stderr.count("\n") == 1 and missing in result.stderr
  assert "Traceback" not in result.stderr and not os.path.exists(tmp_path / "out")


def test_converter_unrecognised_architecture(tmp_path, capsys):
  path = str(tmp_path / "odd.safetensors")
  save_file({"encoder.weight": np.zeros((2, 2), np.float32)}, path)
  assert convert_weights.main([path, str(tmp_path / "out.safetensors")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "--model" in err and path in err


# --- parity with PyTorch reference models ---------------------------------------------------------


@pytest.fixture(scope="module")
def torch_models(tmp_path_factory):
  """name -> (torch model in eval mode with random weights and BN statistics, .pth path)."""
  torch = pytest.importorskip("torch")
  from tests import torch_reference

  torch.set_num_threads(2)
  directory = tmp_path_factory.mktemp("pth")
  cache = {}

  def get(name: str):
    if name not in cache:
      model = torch_reference.randomize_(torch_reference.build(name), seed=10 + len(cache))
      path = str(directory / f"{name}.pth")
      torch.save(model.state_dict(), path)
      cache[name] = (model, path)
    return cache[name]

  return get


def _torch_logits(model, images_nchw: np.ndarray) -> np.ndarray:
  import torch

  with torch.no_grad():
    return model(torch.from_numpy(images_nchw)).numpy()


# Full-size VGG (133M parameters, 530 MB files) costs seconds per file, so one VGG model is
# built with torch: vgg11 here and in the fold test. vgg11_bn's BatchNorm mapping is checked
# torch-free (test_safetensors_logits_match_reference) and its keys against the manifest.
@pytest.mark.parametrize("name", ["resnet18", "resnet34", "mobilenet_v2", "vgg11", "vit_ti16"])
def test_pth_and_safetensors_logits_match_torch(torch_models, tmp_path, name):
  model, pth = torch_models(name)
  loaded = pretrained.load(name, pth)
  assert loaded.file_format == "pth" and loaded.initialised == ()
  images = _images(2, 224, batch=1 if name.startswith("vgg") else 2)
  _assert_logits_close(
    _fairjax_logits(name, loaded.variables, images), _torch_logits(model, images)
  )
  if name.startswith("vgg"):
    return
  # The same state_dict as .safetensors gives the same variables.
  st = str(tmp_path / f"{name}.safetensors")
  save_file({k: v.numpy() for k, v in model.state_dict().items()}, st)
  _assert_same_variables(pretrained.load_pretrained(name, st), loaded.variables)


@pytest.mark.parametrize("size", [64, 256])
def test_vgg_fold_matches_torch_adaptive_pool(torch_models, size):
  # 64 -> 2x2 map (each pixel replicated into 7x7 bins); 256 -> 8x8 (overlapping averaging
  # bins); the torch-free test covers 96 -> 3x3.
  model, pth = torch_models("vgg11")
  images = _images(3, size, batch=1)
  variables = pretrained.load_pretrained("vgg11", pth, image_size=size)
  _assert_logits_close(_fairjax_logits("vgg11", variables, images), _torch_logits(model, images))


@pytest.mark.parametrize("name", pretrained.PRETRAINED_MODELS)
def test_manifest_matches_torch_reference(name):
  pytest.importorskip("torch")
  from tests import torch_reference

  assert torch_reference.manifest(name) == _manifest(name)


def test_bad_pth_files(tmp_path):
  torch = pytest.importorskip("torch")
  checkpoint = tmp_path / "checkpoint.pth"
  torch.save({"epoch": 3, "state_dict": {"fc.weight": torch.zeros(2, 2)}}, checkpoint)
  message = _error("resnet18", checkpoint)
  assert "'epoch'" in message and "state_dict" in message and str(checkpoint) in message
  corrupt = tmp_path / "corrupt.pth"
  corrupt.write_bytes(b"\x80\x02garbage")
  message = _error("resnet18", corrupt)
  assert str(corrupt) in message and "cannot read" in message
  tensor = tmp_path / "tensor.pth"
  torch.save(torch.zeros(3), tensor)
  assert "Tensor" in _error("resnet18", tensor)


def test_converter_from_pth(torch_models, tmp_path):
  model, pth = torch_models("resnet18")
  out = str(tmp_path / "r18.safetensors")
  assert convert_weights.main([pth, out, "--model", "resnet18"]) == 0
  native = pretrained.load("resnet18", out)
  assert native.file_format == "fairjax"
  _assert_same_variables(native.variables, pretrained.load_pretrained("resnet18", pth))
