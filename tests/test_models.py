"""Tests for fairjax.models: shapes, BatchNorm state, pooling equivalence, parameter counts."""

from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax.models import get_model, list_models, register_model
from fairjax.models.layers import max_pool_2x2, max_pool_3x3_s2

# Tiny configurations of every registered model, at 32x32 inputs.
TINY_KWARGS = {
  "small_cnn": dict(width=4, hidden=8),
  "vgg11": dict(width_multiplier=1 / 16, classifier_width=16),
  "vgg11_bn": dict(width_multiplier=1 / 16, classifier_width=16),
  "resnet18": dict(width=4),
  "resnet34": dict(width=4),
  # Dropout off so that train=True needs no 'dropout' rng here; see test_mobilenet_v2_dropout.
  "mobilenet_v2": dict(width_multiplier=0.25, dropout_rate=0.0),
  "vit_ti16": dict(dim=8, depth=2, num_heads=2, mlp_dim=16),
}
BN_MODELS = {"vgg11_bn", "resnet18", "resnet34", "mobilenet_v2"}


def _key(seed: int) -> jax.Array:
  # XLA:CPU compiles the default (partitionable threefry) key ops of a model init about 3x
  # slower than "rbg" ones (measured: 11.5 s vs 3.4 s for a tiny VGG-11 init on a busy
  # 2-core box), so the tests use rbg keys.
  return jax.random.key(seed, impl="rbg")


def _normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
  """Random float32 inputs from numpy: no JAX RNG program to compile."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def _param_shapes(model: nn.Module, size: int = 32) -> dict:
  """Parameter shapes via eval_shape: no compilation, nothing allocated."""
  shapes = jax.eval_shape(
    model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  )
  return shapes["params"]


def _param_count(model: nn.Module, size: int) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(_param_shapes(model, size)))


def _apply(model: nn.Module, variables, x, **kwargs):
  # Jitted, because op-by-op dispatch of a whole ResNet is slow on a busy CPU.
  return jax.jit(model.apply, static_argnames=("train", "mutable"))(variables, x, **kwargs)


def test_registry_names():
  # Other test modules may register extra models, hence >= rather than ==.
  assert set(list_models()) >= set(TINY_KWARGS)
  assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", sorted(TINY_KWARGS))
def test_forward_shapes_and_batch_stats(name):
  num_classes = 3
  model = get_model(name, num_classes=num_classes, **TINY_KWARGS[name])
  x = _normal(1, (2, 32, 32, 3))
  variables = jax.jit(model.init)(_key(0), x)

  logits = _apply(model, variables, x)  # inference by default, no mutable collections
  assert logits.shape == (2, num_classes)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))

  if name in BN_MODELS:
    train_logits, updates = _apply(model, variables, x, train=True, mutable=("batch_stats",))
    assert train_logits.shape == (2, num_classes)
    changed = jax.tree.map(
      lambda old, new: not np.allclose(old, new),
      variables["batch_stats"],
      updates["batch_stats"],
    )
    unchanged = {
      jax.tree_util.keystr(path)
      for path, c in jax.tree_util.tree_flatten_with_path(changed)[0]
      if not c
    }
    if name == "mobilenet_v2":
      # In training mode a BN output has zero batch mean per channel. A block fed only by
      # sums of BN outputs (after a residual block) therefore has a bias-free expand conv
      # output of zero batch mean, and its running mean rightly stays 0.
      assert all("['expand_bn']['mean']" in path for path in unchanged), unchanged
    else:
      assert not unchanged
    # Training mode normalises with batch statistics, so it differs from inference.
    assert not np.allclose(train_logits, logits)
  else:
    assert "batch_stats" not in variables
    np.testing.assert_allclose(_apply(model, variables, x, train=True), logits, rtol=1e-6)


def test_vit_param_names_and_patch_check():
  shapes = _param_shapes(get_model("vit_ti16", num_classes=5, depth=2), 64)
  assert set(shapes) == {
    "patch_embed",
    "cls_token",
    "pos_embed",
    "block0",
    "block1",
    "norm",
    "head",
  }
  assert shapes["pos_embed"].shape == (1, 1 + 4 * 4, 192)  # class token + 4x4 patches
  assert shapes["block1"]["qkv"]["kernel"].shape == (192, 576)
  assert set(shapes["block0"]) == {"norm1", "qkv", "proj", "norm2", "fc1", "fc2"}
  with pytest.raises(ValueError, match="multiples of patch_size=16"):
    _param_shapes(get_model("vit_ti16", num_classes=5), 40)


def test_resnet_small_input_stem():
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  small = get_model("resnet18", num_classes=5, width=4, small_input=True)
  assert _param_shapes(small)["conv_init"]["kernel"].shape == (3, 3, 3, 4)
  variables = jax.eval_shape(small.init, jax.random.key(0), x)
  assert jax.eval_shape(small.apply, variables, x).shape == (1, 5)
  big = get_model("resnet18", num_classes=5, width=4)
  assert _param_shapes(big)["conv_init"]["kernel"].shape == (7, 7, 3, 4)


@pytest.mark.parametrize(
  "name,stage_sizes", [("resnet18", (2, 2, 2, 2)), ("resnet34", (3, 4, 6, 3))]
)
def test_resnet_param_names(name, stage_sizes):
  params = _param_shapes(get_model(name, num_classes=2, width=4))
  expected = {"conv_init", "bn_init", "fc"} | {
    f"layer{s + 1}_block{b}" for s, n in enumerate(stage_sizes) for b in range(n)
  }
  assert set(params) == expected
  assert set(params["layer1_block0"]) == {"conv1", "bn1", "conv2", "bn2"}
  for s in range(2, 5):
    assert set(params[f"layer{s}_block0"]) == {
      "conv1",
      "bn1",
      "conv2",
      "bn2",
      "proj_conv",
      "proj_bn",
    }
    for b in range(1, stage_sizes[s - 1]):
      assert set(params[f"layer{s}_block{b}"]) == {"conv1", "bn1", "conv2", "bn2"}
    # Stage s has width * 2**(s-1) channels.
    assert params[f"layer{s}_block0"]["conv2"]["kernel"].shape == (
      3,
      3,
      4 * 2 ** (s - 1),
      4 * 2 ** (s - 1),
    )
  assert "bias" not in params["conv_init"]


def test_resnet_rejects_wrong_number_of_stages():
  model = get_model("resnet18", num_classes=2, width=4, stage_sizes=(2, 2, 2))
  with pytest.raises(ValueError, match="4 entries"):
    jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))


def test_mobilenet_v2_param_names_and_channels():
  params = _param_shapes(get_model("mobilenet_v2", num_classes=1000), 224)
  assert set(params) == (
    {"stem_conv", "stem_bn", "last_conv", "last_bn", "fc"} | {f"block{i}" for i in range(1, 18)}
  )
  assert set(params["block1"]) == {"dw_conv", "dw_bn", "project_conv", "project_bn"}
  for i in range(2, 18):
    assert set(params[f"block{i}"]) == {
      "expand_conv",
      "expand_bn",
      "dw_conv",
      "dw_bn",
      "project_conv",
      "project_bn",
    }
  # Output channels of blocks 1..17 (the (t, c, n, s) table) and their depthwise kernels.
  outs = [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320]
  ins = [32] + outs[:-1]
  for i, (c_in, c_out) in enumerate(zip(ins, outs), start=1):
    block = params[f"block{i}"]
    hidden = c_in if i == 1 else 6 * c_in
    assert block["dw_conv"]["kernel"].shape == (3, 3, 1, hidden)
    assert block["project_conv"]["kernel"].shape == (1, 1, hidden, c_out)
    assert all("bias" not in block[k] for k in block if k.endswith("conv"))
  assert params["stem_conv"]["kernel"].shape == (3, 3, 3, 32)
  assert params["last_conv"]["kernel"].shape == (1, 1, 320, 1280)
  assert params["fc"]["kernel"].shape == (1280, 1000)


def test_mobilenet_v2_width_multiplier_rounds_to_multiples_of_8():
  params = _param_shapes(get_model("mobilenet_v2", num_classes=3, width_multiplier=0.35))
  # torchvision's rounding: 32*0.35=11.2 -> 16 (8 would lose >10%), 16*0.35=5.6 -> 8,
  # 320*0.35=112 -> 112; the last conv never shrinks below 1280.
  assert params["stem_conv"]["kernel"].shape[-1] == 16
  assert params["block1"]["project_conv"]["kernel"].shape[-1] == 8
  assert params["block17"]["project_conv"]["kernel"].shape[-1] == 112
  assert params["last_conv"]["kernel"].shape == (1, 1, 112, 1280)


def test_mobilenet_v2_depthwise_convs_are_plain_grouped_convs():
  # The curvature code recognises depthwise convs as plain nn.Conv with one group per channel.
  model = get_model("mobilenet_v2", num_classes=3, width_multiplier=0.25)
  seen = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if type(module) is nn.Conv and module.name == "dw_conv":
      seen[module.scope.path] = (
        module.feature_group_count,
        args[0].shape[-1],
        module.padding,
        module.strides,
      )
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0), x)
  assert len(seen) == 17
  for groups, channels, padding, strides in seen.values():
    assert groups == channels
    assert padding == ((1, 1), (1, 1)) and strides in ((1, 1), (2, 2))


def test_mobilenet_v2_dropout():
  model = get_model("mobilenet_v2", num_classes=3, width_multiplier=0.25)
  assert model.dropout_rate == 0.2  # torchvision's default
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  with pytest.raises(flax.errors.InvalidRngError):
    jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x
    )  # no 'dropout' rng
  # With the rng, training mode runs.
  out, _ = jax.eval_shape(
    lambda v, x: model.apply(
      v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}
    ),
    variables,
    x,
  )
  assert out.shape == (1, 3)


def test_vgg_param_names_and_widths():
  params = _param_shapes(get_model("vgg11", num_classes=3, width_multiplier=0.1))
  assert set(params) == {f"conv{i}" for i in range(8)} | {"fc0", "fc1", "fc2"}
  out_channels = [params[f"conv{i}"]["kernel"].shape[-1] for i in range(8)]
  assert out_channels == [6, 13, 26, 26, 51, 51, 51, 51]
  assert set(params["conv0"]) == {"kernel", "bias"}

  params_bn = _param_shapes(get_model("vgg11_bn", num_classes=3, width_multiplier=0.1))
  assert set(params_bn) == set(params) | {f"bn{i}" for i in range(8)}
  for i in range(8):
    # bn{i} normalises the output channels of conv{i}.
    assert params_bn[f"bn{i}"]["scale"].shape == (out_channels[i],)


def test_vgg_dropout_only_in_training():
  model = get_model(
    "vgg11", num_classes=3, width_multiplier=1 / 16, classifier_width=32, dropout_rate=0.5
  )
  x = _normal(1, (4, 32, 32, 3))
  variables = jax.jit(model.init)(_key(0), x)
  eval_logits = _apply(model, variables, x)
  train_logits = _apply(model, variables, x, train=True, rngs={"dropout": _key(2)})
  assert not np.allclose(train_logits, eval_logits)
  with pytest.raises(flax.errors.InvalidRngError):
    jax.eval_shape(lambda v: model.apply(v, x, train=True), variables)  # no 'dropout' rng


def test_computation_dtype():
  # Shapes only for VGG-11-BN: parameters and logits stay float32 under a bfloat16 dtype.
  vgg = get_model(
    "vgg11_bn", num_classes=3, width_multiplier=1 / 16, classifier_width=16, dtype=jnp.bfloat16
  )
  x_spec = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(vgg.init, jax.random.key(0), x_spec)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  assert jax.eval_shape(vgg.apply, variables, x_spec).dtype == jnp.float32

  # Real values on the small CNN: bfloat16 compute is used (results differ) but stays close.
  x = _normal(0, (2, 16, 16, 3))
  f32 = get_model("small_cnn", num_classes=3, width=4, hidden=8)
  bf16 = get_model("small_cnn", num_classes=3, width=4, hidden=8, dtype=jnp.bfloat16)
  variables = jax.jit(f32.init)(_key(0), x)
  logits_f32 = _apply(f32, variables, x)
  logits_bf16 = _apply(bf16, variables, x)
  assert logits_bf16.dtype == jnp.float32
  assert not np.array_equal(logits_f32, logits_bf16)
  np.testing.assert_allclose(logits_bf16, logits_f32, rtol=0.05, atol=0.05)


def _value_and_grad_of_linear_functional(pool, x, w):
  """pool(x) and the gradient of sum(w * pool(x)) w.r.t. x, jitted."""
  return jax.jit(lambda x: (pool(x), jax.grad(lambda x: jnp.sum(w * pool(x)))(x)))(x)


def _flax_pool_2x2(x):
  return nn.max_pool(x, (2, 2), (2, 2))


def _flax_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (1, 4, 4, 5)])
def test_max_pool_2x2_matches_flax_value_and_grad(shape):
  # Random inputs have no ties, so the max (and its gradient) is unique.
  x = _normal(0, shape)
  w = _normal(1, (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
  out, grad = _value_and_grad_of_linear_functional(max_pool_2x2, x, w)
  ref_out, ref_grad = _value_and_grad_of_linear_functional(_flax_pool_2x2, x, w)
  np.testing.assert_array_equal(out, ref_out)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-6)


def test_max_pool_2x2_crops_odd_sizes():
  x = _normal(0, (2, 7, 5, 3))
  w = jnp.ones((2, 3, 2, 3))
  out, grad = _value_and_grad_of_linear_functional(max_pool_2x2, x, w)
  assert out.shape == (2, 3, 2, 3)
  np.testing.assert_array_equal(out, _flax_pool_2x2(x[:, :6, :4, :]))
  # The cropped last row and column get no gradient; each window passes exactly one.
  assert np.all(grad[:, 6, :, :] == 0) and np.all(grad[:, :, 4, :] == 0)
  assert float(jnp.sum(grad)) == out.size


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 10, 2), (1, 1, 2, 1)])
def test_max_pool_3x3_s2_matches_flax_value_and_grad(shape):
  x = _normal(0, shape)
  out_shape = jax.eval_shape(_flax_pool_3x3_s2, x).shape
  w = _normal(1, out_shape)
  out, grad = _value_and_grad_of_linear_functional(max_pool_3x3_s2, x, w)
  ref_out, ref_grad = _value_and_grad_of_linear_functional(_flax_pool_3x3_s2, x, w)
  assert out.shape == out_shape
  np.testing.assert_array_equal(out, ref_out)
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-6)


def test_param_counts_match_torchvision():
  # torchvision counts; BN scale and bias are parameters, running statistics are not.
  assert _param_count(get_model("resnet18", num_classes=1000), 224) == 11_689_512
  assert _param_count(get_model("resnet34", num_classes=1000), 224) == 21_797_672
  assert _param_count(get_model("mobilenet_v2", num_classes=1000), 224) == 3_504_872
  assert _param_count(get_model("vgg11", num_classes=1000, classifier_width=4096), 224) == (
    132_863_336
  )
  assert _param_count(get_model("vgg11_bn", num_classes=1000, classifier_width=4096), 224) == (
    132_868_840
  )
  # timm's vit_tiny_patch16_224
  assert _param_count(get_model("vit_ti16", num_classes=1000), 224) == 5_717_416


def test_unknown_model_name_lists_available():
  with pytest.raises(ValueError) as excinfo:
    get_model("vgg12", num_classes=3)
  message = str(excinfo.value)
  assert "'vgg12'" in message
  for name in list_models():
    assert name in message


def test_get_model_kwargs_and_duplicate_registration():
  model = get_model("vgg11", num_classes=3)
  assert model.num_classes == 3 and not model.use_bn
  assert get_model("vgg11_bn", num_classes=3).use_bn
  with pytest.raises(ValueError, match="already registered"):
    register_model("vgg11")(lambda **kwargs: None)
