"""Per-channel SNNL against a direct loop over the formula (design.md section 3), activation
capture, batch averaging and channel selection."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import snnl
from fairjax.models import SmallCNN


def loop_snnl(acts, groups, *, temperature=1.0, include_self=False, valid=None):
  """The formula of design.md section 3, one channel, one anchor, one neighbour at a time,
  in float64. Returns (snnl [K], num_anchors)."""
  acts = np.asarray(acts, np.float64)
  b, k = acts.shape[0], acts.shape[-1]
  valid = np.ones(b, bool) if valid is None else np.asarray(valid)
  out, anchors = [], 0
  for c in range(k):
    x = acts[..., c].reshape(b, -1)
    unit = [v / max(np.linalg.norm(v), 1e-12) for v in x]
    total, anchors = 0.0, 0
    for i in range(b):
      if not valid[i]:
        continue
      num = den = 0.0
      same_other = any_other = False
      for j in range(b):
        if not valid[j]:
          continue
        e = np.exp(-(1.0 - unit[i] @ unit[j]) / temperature)
        if j == i:
          if include_self:
            num += e
          continue
        any_other = True
        den += e
        if groups[j] == groups[i]:
          num += e
          same_other = True
      if same_other or (include_self and any_other):
        total -= np.log(num / den)
        anchors += 1
    out.append(total / anchors if anchors else np.nan)
  return np.array(out), anchors


@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_matches_loop_formula(include_self, temperature):
  rng = np.random.default_rng(0)
  acts = rng.normal(size=(9, 3, 2, 5)).astype(np.float32)
  acts[:, :, :, 4] = 0.0  # an all-zero channel (e.g. pruned): cosine 0 via the norm floor
  acts[2, :, :, 1] = 0.0  # one zero map inside an otherwise normal channel
  # group 7 is a singleton: skipped as an anchor unless include_self; still a neighbour.
  groups = np.array([0, 0, 1, 1, 1, 2, 0, 7, 2])
  got, count = snnl.channel_snnl_with_count(
    acts, groups, temperature=temperature, include_self=include_self
  )
  want, want_count = loop_snnl(acts, groups, temperature=temperature, include_self=include_self)
  assert got.shape == (5,)
  assert got.dtype == jnp.float32 or got.dtype == jnp.float64
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-6)
  assert int(count) == want_count == (9 if include_self else 8)
  np.testing.assert_allclose(
    np.asarray(snnl.channel_snnl(acts, groups, temperature=temperature, include_self=include_self)),
    want,
    rtol=2e-5,
    atol=2e-6,
  )


def test_include_self_differs_and_can_be_negative():
  rng = np.random.default_rng(1)
  groups = np.repeat([0, 1], 6)
  acts = rng.normal(size=(12, 4, 4, 3)).astype(np.float32)
  a = np.asarray(snnl.channel_snnl(acts, groups))
  b = np.asarray(snnl.channel_snnl(acts, groups, include_self=True))
  assert np.all(b < a)  # the self term only adds to the numerator
  # perfectly separated groups: exclusive SNNL ~ 0 (> 0), the official variant goes negative.
  sep = np.where(groups[:, None, None, None] == 0, 1.0, -1.0) * np.ones((12, 2, 2, 1))
  sep = sep.astype(np.float32)
  assert 0 <= float(snnl.channel_snnl(sep, groups, temperature=0.1)[0]) < 1e-6
  assert float(snnl.channel_snnl(sep, groups, temperature=0.1, include_self=True)[0]) < 0


def test_planted_group_channel_has_lowest_snnl():
  rng = np.random.default_rng(2)
  b, h, w, k = 32, 5, 5, 8
  groups = rng.integers(0, 2, size=b)
  acts = rng.normal(size=(b, h, w, k)).astype(np.float32)
  patterns = rng.normal(size=(2, h, w)).astype(np.float32)
  acts[..., 3] = patterns[groups] + 0.1 * rng.normal(size=(b, h, w))
  scores = np.asarray(snnl.channel_snnl(acts, groups))
  assert np.argmin(scores) == 3
  others = np.delete(scores, 3)
  assert scores[3] < others.min() - 0.2  # clearly, not by a hair
  # noise channels sit near the uninformative value -log(same-group share of neighbours)
  assert np.all(np.abs(others - np.log(2)) < 0.2)


def test_invariant_to_positive_channel_scaling():
  rng = np.random.default_rng(3)
  acts = rng.normal(size=(10, 3, 3, 4)).astype(np.float32)
  groups = rng.integers(0, 3, size=10)
  scale = np.array([1e-3, 1.0, 7.0, 1e3], np.float32)
  base = np.asarray(snnl.channel_snnl(acts, groups))
  scaled = np.asarray(snnl.channel_snnl(acts * scale, groups))
  np.testing.assert_allclose(scaled, base, rtol=1e-5, atol=1e-6)
  # A negative scale flips the sign of every map of the channel: cosines unchanged too, but
  # per-sample flips (not uniform) change the result, so the test above is not vacuous.
  flipped = acts.copy()
  flipped[::2, ..., 0] *= -1
  assert abs(float(snnl.channel_snnl(flipped, groups)[0]) - base[0]) > 1e-3


@pytest.mark.parametrize("include_self", [False, True])
def test_valid_mask_equals_dropping_rows(include_self):
  rng = np.random.default_rng(4)
  acts = rng.normal(size=(11, 2, 3, 6)).astype(np.float32)
  groups = rng.integers(0, 2, size=11)
  valid = np.ones(11, bool)
  valid[[1, 4, 10]] = False
  acts_padded = acts.copy()
  acts_padded[~valid] = 1e6  # garbage in padded rows must not leak
  masked, n_masked = snnl.channel_snnl_with_count(
    acts_padded, groups, valid=valid, include_self=include_self
  )
  dropped, n_dropped = snnl.channel_snnl_with_count(
    acts[valid], groups[valid], include_self=include_self
  )
  np.testing.assert_allclose(np.asarray(masked), np.asarray(dropped), rtol=1e-6, atol=1e-6)
  assert int(n_masked) == int(n_dropped)


def test_no_anchor_gives_nan_and_count_zero():
  acts = np.ones((3, 2, 2, 2), np.float32)
  got, count = snnl.channel_snnl_with_count(acts, np.array([0, 1, 2]))
  assert int(count) == 0 and np.all(np.isnan(np.asarray(got)))


def test_small_temperature_is_finite():
  rng = np.random.default_rng(5)
  acts = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)
  groups = np.array([0, 1] * 4)
  got = np.asarray(snnl.channel_snnl(acts, groups, temperature=1e-3))
  assert np.all(np.isfinite(got))  # naive sums of exp(-d/T) would underflow to 0/0


def test_input_validation():
  acts = np.zeros((4, 2, 2, 3), np.float32)
  with pytest.raises(ValueError, match="sensitive"):
    snnl.channel_snnl(acts, np.zeros(3, np.int32))
  with pytest.raises(ValueError, match="sensitive"):
    snnl.channel_snnl(acts, np.zeros(4, np.float32))
  with pytest.raises(ValueError, match="valid"):
    snnl.channel_snnl(acts, np.zeros(4, np.int32), valid=np.ones(4, np.int32))
  with pytest.raises(ValueError, match="temperature"):
    snnl.channel_snnl(acts, np.zeros(4, np.int32), temperature=0.0)


def init_key(seed=0):
  return jax.random.key(seed, impl="rbg")  # threefry init compiles slowly on XLA:CPU


class Tiny(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(3, (3, 3), padding="SAME", name="conv0")(x)
    x = nn.relu(x)
    x = Block(name="block")(x)
    return nn.Dense(2, name="fc0")(x.reshape(x.shape[0], -1))


class Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Conv(4, (1, 1), name="conv")(x)


def test_capture_activations_shapes_and_values():
  model = Tiny()
  x = jax.random.normal(jax.random.key(1), (2, 4, 4, 2), jnp.float32)
  variables = model.init(init_key(), x)
  acts = snnl.capture_activations(model, variables, x, ["block/conv", "conv0"])
  assert list(acts) == ["block/conv", "conv0"]
  p = variables["params"]
  conv0 = nn.Conv(3, (3, 3), padding="SAME").apply({"params": p["conv0"]}, x)
  conv1 = nn.Conv(4, (1, 1)).apply({"params": p["block"]["conv"]}, nn.relu(conv0))
  assert acts["conv0"].shape == (2, 4, 4, 3) and acts["block/conv"].shape == (2, 4, 4, 4)
  np.testing.assert_allclose(acts["conv0"], conv0, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(acts["block/conv"], conv1, rtol=1e-6, atol=1e-6)
  post = snnl.capture_activations(model, variables, x, "conv0", pre_activation=False)
  np.testing.assert_allclose(post["conv0"], nn.relu(conv0), rtol=1e-6, atol=1e-6)
  assert float(jnp.min(conv0)) < 0  # so pre vs post really differ
  # traceable: model static, arrays traced
  jitted = jax.jit(lambda v, im: snnl.capture_activations(model, v, im, ["conv0"]))
  np.testing.assert_allclose(jitted(variables, x)["conv0"], conv0, rtol=1e-6, atol=1e-6)


def test_capture_unknown_layer_lists_available():
  model = Tiny()
  x = jnp.zeros((1, 4, 4, 2), jnp.float32)
  variables = model.init(init_key(), x)
  with pytest.raises(ValueError, match=r"conv7.*conv0, block/conv, fc0"):
    snnl.capture_activations(model, variables, x, ["conv7"])


def test_capture_bn_model_pre_activation():
  model = SmallCNN(num_classes=3, width=2, hidden=4, use_bn=True)
  x = jax.random.normal(jax.random.key(2), (3, 8, 8, 3), jnp.float32)
  variables = model.init(init_key(), x)
  stats = variables["batch_stats"]["bn1"]
  stats = {"mean": stats["mean"] + 0.5, "var": stats["var"] * 3.0}  # BN no longer ~identity
  variables = {**variables, "batch_stats": {**variables["batch_stats"], "bn1": stats}}
  acts = snnl.capture_activations(model, variables, x, ["conv1", "bn1"])
  assert acts["conv1"].shape == acts["bn1"].shape == (3, 4, 4, 4)
  want_bn = (acts["conv1"] - 0.5) / jnp.sqrt(stats["var"] + 1e-5)  # scale 1, bias 0 at init
  np.testing.assert_allclose(acts["bn1"], want_bn, rtol=1e-5, atol=1e-5)
  assert not np.allclose(acts["conv1"], acts["bn1"])  # the conv output is before BN


def test_score_channels_weights_batches_by_anchor_count():
  model = Tiny()
  rng = np.random.default_rng(6)
  images = rng.normal(size=(14, 4, 4, 2)).astype(np.float32)
  groups = rng.integers(0, 2, size=14)
  groups[3] = -1  # unknown: excluded
  variables = model.init(init_key(), images[:1])
  batches = [  # uneven batches: a plain mean of batch means would be wrong
    {"image": images[:4], "group": groups[:4]},
    {
      "image": images[4:14],
      "group": groups[4:14],
      "valid": np.arange(10) < 9,
    },  # last row is padding
  ]
  got = snnl.score_channels(model, variables, batches, ["conv0", "block/conv"])
  acts = snnl.capture_activations(model, variables, images, ["conv0", "block/conv"])
  for name in ("conv0", "block/conv"):
    total, count = 0.0, 0
    for rows in (np.arange(4), np.arange(4, 13)):
      rows = rows[groups[rows] >= 0]
      s, n = loop_snnl(np.asarray(acts[name])[rows], groups[rows])
      total, count = total + s * n, count + n
    assert got[name].shape == (acts[name].shape[-1],)
    np.testing.assert_allclose(got[name], total / count, rtol=1e-5, atol=1e-6)
  # unhashable apply kwargs (a list) still work, without the cross-call cache
  again = snnl.score_channels(
    model, variables, batches, ["conv0"], apply_kwargs={"train": False, "mutable": ["batch_stats"]}
  )
  np.testing.assert_allclose(again["conv0"], got["conv0"], rtol=1e-6, atol=1e-7)
  with pytest.raises(ValueError, match="no anchors"):
    snnl.score_channels(
      model, variables, [{"image": images[:2], "group": np.array([0, 1])}], ["conv0"]
    )


def test_select_channels_layer_scope_counts_and_order():
  scores = {"a": np.array([0.5, 0.1, 0.9, 0.3]), "b": np.array([0.2, 0.8, 0.05])}
  keep = snnl.select_channels(scores, amount=2)
  np.testing.assert_array_equal(keep["a"], [True, False, True, False])
  np.testing.assert_array_equal(keep["b"], [False, True, False])
  assert all(k.dtype == bool for k in keep.values())
  # fraction of kept, half up: a: 0.5 * 4 = 2, b: 0.5 * 3 = 1.5 -> 2
  frac = snnl.select_channels(scores, amount=0.5)
  assert [int((~v).sum()) for v in frac.values()] == [2, 2]
  with pytest.raises(ValueError, match="at least one"):
    snnl.select_channels(scores, amount=3)  # would empty layer b
  with pytest.raises(ValueError, match="at least one"):
    snnl.select_channels(scores, amount=1.0)


def test_select_channels_never_repicks():
  scores = {"a": np.array([0.5, 0.1, 0.9, 0.3])}
  pruned = {"a": np.array([False, True, False, False])}
  keep = snnl.select_channels(scores, amount=1, already_pruned=pruned)
  np.testing.assert_array_equal(keep["a"], [True, False, True, False])  # 0.3 next, 0.1 stays
  # NaN at an already pruned channel is fine; at a kept one it is an error.
  nan_scores = {"a": np.array([0.5, np.nan, 0.9, 0.3])}
  keep = snnl.select_channels(nan_scores, amount=1, already_pruned=pruned)
  np.testing.assert_array_equal(keep["a"], [True, False, True, False])
  with pytest.raises(ValueError, match="NaN"):
    snnl.select_channels(nan_scores, amount=1)
  with pytest.raises(ValueError, match="bool"):
    snnl.select_channels(scores, amount=1, already_pruned={"a": np.array([0, 1, 0, 0])})


def test_select_channels_global_scope():
  scores = {"a": np.array([0.5, 0.1, 0.9, 0.3]), "b": np.array([0.2, 0.8, 0.05])}
  keep = snnl.select_channels(scores, amount=3, scope="global")
  np.testing.assert_array_equal(keep["a"], [True, False, True, True])
  np.testing.assert_array_equal(keep["b"], [False, True, False])
  keep = snnl.select_channels(scores, amount=4, scope="global")
  np.testing.assert_array_equal(keep["a"], [True, False, True, False])
  np.testing.assert_array_equal(keep["b"], [False, True, False])
  keep = snnl.select_channels(scores, amount=5, scope="global")
  np.testing.assert_array_equal(keep["a"], [False, False, True, False])
  np.testing.assert_array_equal(keep["b"], [False, True, False])  # 0.8 kept: last of b
  with pytest.raises(ValueError, match="at least one"):
    snnl.select_channels(scores, amount=6, scope="global")
  # the ranking would take both channels of "a"; its last one is protected and the next
  # candidate (from "b") goes instead.
  keep = snnl.select_channels(
    {"a": np.array([0.1, 0.2]), "b": np.array([0.3, 0.4, 0.5])}, amount=2, scope="global"
  )
  np.testing.assert_array_equal(keep["a"], [False, True])
  np.testing.assert_array_equal(keep["b"], [False, True, True])
  # fraction of all kept channels: 0.3 * 7 = 2.1 -> 2
  frac = snnl.select_channels(scores, amount=0.3, scope="global")
  assert sum(int((~v).sum()) for v in frac.values()) == 2
  with pytest.raises(ValueError, match="scope"):
    snnl.select_channels(scores, amount=1, scope="channel")
