"""Physical slimming: the slim network equals the channel-masked one (design.md section 3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import masks as M
from fairjax import slimming
from fairjax.models import VGG11, SmallCNN


def init_key(seed=0):
  return jax.random.key(seed, impl="rbg")  # threefry init compiles slowly on XLA:CPU


def randomize_bn(variables, seed):
  """Nonzero, non-identity BN affine params and running stats, so a channel whose BN shift
  were not masked would visibly survive."""
  rng = np.random.default_rng(seed)
  params, stats = dict(variables["params"]), dict(variables["batch_stats"])
  for name in stats:
    k = stats[name]["mean"].shape[0]
    stats[name] = {
      "mean": jnp.asarray(rng.normal(size=k), jnp.float32),
      "var": jnp.asarray(rng.uniform(0.5, 2.0, size=k), jnp.float32),
    }
    params[name] = {
      "scale": jnp.asarray(rng.uniform(0.5, 1.5, size=k), jnp.float32),
      "bias": jnp.asarray(rng.normal(size=k), jnp.float32),
    }
  return {"params": params, "batch_stats": stats}


def masked_variables(variables, keep):
  """Zero the dropped channels with fairjax.masks.channel_mask (kernel + bias + BN)."""
  params = variables["params"]
  mask = M.init_mask(params)
  for layer, k in keep.items():
    mask = M.channel_mask(params, mask, layer, jnp.asarray(k), norm_layer="bn" + layer[4:])
  return {**variables, "params": M.apply_mask(params, mask)}, mask


def random_keep(rng, k, drop):
  keep = np.ones(k, bool)
  keep[rng.choice(k, size=drop, replace=False)] = False
  return keep


def expected_removed(params, keep, conv_names, fc0_rows_per_channel):
  """Parameters that slimming must delete, counted by hand from the layer shapes."""
  removed = 0
  for pos, name in enumerate(conv_names):
    kh, kw, cin, cout = params[name]["kernel"].shape
    dropped = int((~keep[name]).sum()) if name in keep else 0
    removed += dropped * (kh * kw * cin + 1 + 2)  # kernel slice, bias, BN scale + bias
    if pos + 1 < len(conv_names):  # input slices of the next conv, not double counted
      nxt = params[conv_names[pos + 1]]["kernel"].shape
      nxt_keep = keep.get(conv_names[pos + 1])
      out_dropped = 0 if nxt_keep is None else int((~nxt_keep).sum())
      removed += dropped * nxt[0] * nxt[1] * (nxt[3] - out_dropped)
    else:
      removed += dropped * fc0_rows_per_channel * params["fc0"]["kernel"].shape[1]
  return removed


def check_slim(model, variables, keep, images, fc0_rows_per_channel):
  masked, mask = masked_variables(variables, keep)
  slim_model, slim_vars = slimming.slim_sequential_cnn(model, masked, keep)
  # One compiled forward per network (the dense one runs twice): op-by-op dispatch compiles
  # every conv of VGG-11 separately and is 4x slower here.
  apply = jax.jit(model.apply)
  want = apply(masked, images)
  got = jax.jit(slim_model.apply)(slim_vars, images)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  # the masking must matter, or the comparison proves nothing
  assert not np.allclose(np.asarray(apply(variables, images)), np.asarray(want), atol=1e-3)
  conv_names = [n for n in variables["params"] if n.startswith("conv")]
  removed = slimming.count_params(masked) - slimming.count_params(slim_vars)
  assert removed == expected_removed(variables["params"], keep, conv_names, fc0_rows_per_channel)
  for name, k in keep.items():
    assert slim_vars["params"][name]["kernel"].shape[-1] == int(k.sum())
    assert slim_vars["batch_stats"]["bn" + name[4:]]["mean"].shape == (int(k.sum()),)
    np.testing.assert_array_equal(np.asarray(M.channel_keep_from_mask(mask, name)), k)
  return slim_model, slim_vars, masked


def test_slim_vgg11_bn_matches_masked():
  model = VGG11(num_classes=3, width_multiplier=0.0625, classifier_width=16, use_bn=True)
  images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3), jnp.float32)
  # One compiled initialiser, not op-by-op dispatch of VGG-11's (2x faster here).
  variables = randomize_bn(jax.jit(model.init)(init_key(), images[:1]), seed=0)
  rng = np.random.default_rng(0)
  # conv6 -> conv7 both slimmed (next-layer inputs of a slimmed layer), conv7 -> fc0 with a
  # 2x2 final map (NHWC flatten indices), conv0 (first layer) and conv3 (after a pool).
  keep = {
    "conv0": random_keep(rng, 4, 1),
    "conv3": random_keep(rng, 16, 5),
    "conv6": random_keep(rng, 32, 7),
    "conv7": random_keep(rng, 32, 10),
  }
  slim_model, slim_vars, masked = check_slim(model, variables, keep, images, fc0_rows_per_channel=4)
  assert slim_model.conv_channels == (3, 8, 16, 11, 32, 32, 25, 22)
  flops = slimming.conv_flops(model, masked, (64, 64, 3))
  slim_flops = slimming.conv_flops(slim_model, slim_vars, (64, 64, 3))
  assert slim_flops < flops
  # conv0 by hand: 64*64 positions x 4 out x 3*3*3 in
  assert flops - slim_flops >= 64 * 64 * 1 * 27


def test_slim_small_cnn_and_composition():
  model = SmallCNN(num_classes=3, width=4, hidden=8, use_bn=True)
  images = jax.random.normal(jax.random.key(2), (3, 8, 8, 3), jnp.float32)
  variables = randomize_bn(model.init(init_key(), images[:1]), seed=1)
  keep = {
    "conv0": np.array([True, False, True, True]),
    "conv1": np.array([False, True, True, False, True, True, False, True]),
  }
  slim_model, slim_vars, masked = check_slim(
    model, variables, keep, images, fc0_rows_per_channel=4
  )  # 2x2 final map
  assert slim_model.conv_channels == (3, 5) and slim_model.dense_features == (8, 3)
  # slimming the slim model again (the next prune step) also preserves the function
  keep2 = {"conv1": np.array([True, True, False, True, True]), "fc0": np.arange(8) % 3 != 0}
  mask2 = M.init_mask(slim_vars["params"])
  mask2 = M.channel_mask(
    slim_vars["params"], mask2, "conv1", jnp.asarray(keep2["conv1"]), norm_layer="bn1"
  )
  mask2 = M.channel_mask(slim_vars["params"], mask2, "fc0", jnp.asarray(keep2["fc0"]))
  masked2 = {**slim_vars, "params": M.apply_mask(slim_vars["params"], mask2)}
  slim2, slim2_vars = slimming.slim_sequential_cnn(slim_model, masked2, keep2)
  assert slim2.conv_channels == (3, 4) and slim2.dense_features == (5, 3)
  np.testing.assert_allclose(
    np.asarray(slim2.apply(slim2_vars, images)),
    np.asarray(slim_model.apply(masked2, images)),
    rtol=1e-5,
    atol=1e-5,
  )


def test_as_slim_model_reproduces_dense_vgg_without_bn():
  model = VGG11(num_classes=2, width_multiplier=0.0625, classifier_width=8)
  images = jax.random.normal(jax.random.key(3), (1, 32, 32, 3), jnp.float32)
  variables = jax.jit(model.init)(init_key(), images)  # one program, as above
  slim_model, slim_vars = slimming.slim_sequential_cnn(model, variables, {})
  np.testing.assert_allclose(
    np.asarray(jax.jit(slim_model.apply)(slim_vars, images)),
    np.asarray(jax.jit(model.apply)(variables, images)),
    rtol=1e-6,
    atol=1e-6,
  )
  assert slimming.count_params(slim_vars) == slimming.count_params(variables)


def test_slim_rejects_bad_keep():
  model = SmallCNN(num_classes=3, width=2, hidden=4)
  variables = model.init(init_key(), jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="cannot slim 'fc1'"):
    slimming.slim_sequential_cnn(model, variables, {"fc1": np.ones(3, bool)})
  with pytest.raises(ValueError, match="bool\\[2\\]"):
    slimming.slim_sequential_cnn(model, variables, {"conv0": np.ones(3, bool)})
  with pytest.raises(ValueError, match="every channel"):
    slimming.slim_sequential_cnn(model, variables, {"conv0": np.zeros(2, bool)})
  with pytest.raises(TypeError):
    slimming.slim_sequential_cnn(object(), variables, {})


def test_conv_flops_and_count_params_by_hand():
  model = SmallCNN(num_classes=3, width=2, hidden=4)
  variables = model.init(init_key(), jnp.zeros((1, 8, 8, 3)))
  # conv0: 8*8*2 outputs x 3*3*3; conv1: 4*4*4 x 3*3*2; fc0: (2*2*4) x 4; fc1: 4 x 3
  assert slimming.conv_flops(model, variables, (8, 8, 3)) == (
    64 * 2 * 27 + 16 * 4 * 18 + 16 * 4 + 4 * 3
  )
  assert slimming.count_params(variables) == (
    (27 * 2 + 2) + (18 * 4 + 4) + (16 * 4 + 4) + (4 * 3 + 3)
  )


def test_measure_speedup_reports_medians():
  model = SmallCNN(num_classes=3, width=4, hidden=8)
  images = jnp.zeros((2, 8, 8, 3), jnp.float32)
  variables = model.init(init_key(), images[:1])
  keep = {"conv1": np.arange(8) < 2}
  slim_model, slim_vars = slimming.slim_sequential_cnn(model, variables, keep)
  out = slimming.measure_speedup(model, variables, slim_model, slim_vars, images, repeats=3)
  assert len(out["dense_times_s"]) == len(out["slim_times_s"]) == 3
  assert out["dense_s"] > 0 and out["slim_s"] > 0
  assert out["speedup"] == pytest.approx(out["dense_s"] / out["slim_s"])
