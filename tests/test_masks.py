"""Tests for fairjax.masks: mask pytrees, scores -> masks selection, channel masks, optax wrapper."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fairjax import masks as M


def make_params(seed: int = 0) -> dict:
  k = jax.random.split(jax.random.PRNGKey(seed), 6)
  return {
    "conv0": {
      "kernel": jax.random.normal(k[0], (3, 3, 2, 4)),
      "bias": jax.random.normal(k[1], (4,)),
    },
    "bn0": {"scale": jax.random.normal(k[2], (4,)), "bias": jax.random.normal(k[3], (4,))},
    "fc0": {"kernel": jax.random.normal(k[4], (16, 5)), "bias": jax.random.normal(k[5], (5,))},
  }


def test_paths_and_init_mask():
  params = make_params()
  assert M.path_str(("conv0", "kernel")) == "conv0/kernel"
  paths = [p for p, _ in M.flatten_with_paths(params)]
  assert ("conv0", "kernel") in paths and all(isinstance(s, str) for p in paths for s in p)
  mask = M.init_mask(params)
  assert mask["conv0"]["bias"] is None and mask["bn0"] == {"scale": None, "bias": None}
  assert mask["fc0"]["bias"] is None
  for name in ("conv0", "fc0"):
    assert mask[name]["kernel"].dtype == jnp.bool_
    assert mask[name]["kernel"].shape == params[name]["kernel"].shape
    assert bool(mask[name]["kernel"].all())
  assert [p for p, _ in M.flatten_with_paths(mask)] == [("conv0", "kernel"), ("fc0", "kernel")]


def test_apply_mask_combine_and_report():
  params = make_params()
  params["fc0"]["kernel"] = params["fc0"]["kernel"].astype(jnp.bfloat16)
  mask = M.init_mask(params)
  a = dict(mask, conv0={"kernel": mask["conv0"]["kernel"].at[0, 0, 0, :].set(False), "bias": None})
  b = dict(mask, fc0={"kernel": mask["fc0"]["kernel"].at[:3, 0].set(False), "bias": None})
  both = M.combine(a, b)
  out = M.apply_mask(params, both)
  assert out["fc0"]["kernel"].dtype == jnp.bfloat16
  for name in ("conv0", "fc0"):
    m, x, y = both[name]["kernel"], params[name]["kernel"], out[name]["kernel"]
    np.testing.assert_array_equal(np.asarray(y[~m], np.float32), 0.0)
    np.testing.assert_array_equal(np.asarray(y[m]), np.asarray(x[m]))
    np.testing.assert_array_equal(out[name]["bias"], params[name]["bias"])
  np.testing.assert_array_equal(out["bn0"]["scale"], params["bn0"]["scale"])
  # None-aware AND: None on one side keeps the other side's array.
  half = {
    "conv0": {"kernel": None, "bias": jnp.array([True, False, True, True])},
    "bn0": {"scale": None, "bias": None},
    "fc0": {"kernel": None, "bias": None},
  }
  c = M.combine(a, half)
  assert c["conv0"]["kernel"] is a["conv0"]["kernel"] and c["fc0"]["kernel"] is a["fc0"]["kernel"]
  assert c["bn0"]["scale"] is None
  np.testing.assert_array_equal(c["conv0"]["bias"], half["conv0"]["bias"])

  rep = M.sparsity_report(both, params)
  json.dumps(rep)
  assert rep["layers"]["conv0/kernel"] == {"total": 72, "kept": 68, "pruned": 4, "sparsity": 4 / 72}
  assert rep["layers"]["fc0/kernel"] == {"total": 80, "kept": 77, "pruned": 3, "sparsity": 3 / 80}
  assert rep["global"] == {"total": 152, "kept": 145, "pruned": 7, "sparsity": 7 / 152}
  n_all = 72 + 4 + 4 + 4 + 80 + 5
  assert rep["all_params"] == {
    "total": n_all,
    "kept": n_all - 7,
    "pruned": 7,
    "sparsity": 7 / n_all,
  }
  assert "all_params" not in M.sparsity_report(both)


def test_prune_lowest_global_exact():
  params = make_params()
  scores = jax.tree.map(jnp.abs, params)
  mask = M.prune_lowest(scores, M.init_mask(params), 0.25)
  assert M.sparsity_report(mask)["global"]["pruned"] == 38  # floor(0.25 * 152 + 0.5)
  # Exactly the 38 smallest |w| over both kernels are pruned.
  flat = np.concatenate([np.abs(np.ravel(params[n]["kernel"])) for n in ("conv0", "fc0")])
  keep = np.concatenate([np.ravel(mask[n]["kernel"]) for n in ("conv0", "fc0")])
  assert set(np.flatnonzero(~keep)) == set(np.argsort(flat, kind="stable")[:38])
  assert M.sparsity_report(M.prune_lowest(scores, mask, 5))["global"]["pruned"] == 43
  with pytest.raises(ValueError):
    M.prune_lowest(scores, mask, 200)


def test_prune_lowest_layer_exact():
  params = make_params()
  scores = jax.tree.map(jnp.abs, params)
  mask = M.prune_lowest(scores, M.init_mask(params), 0.1, scope="layer")
  rep = M.sparsity_report(mask)["layers"]
  assert rep["conv0/kernel"]["pruned"] == 7 and rep["fc0/kernel"]["pruned"] == 8
  for n in ("conv0", "fc0"):
    s, m = np.abs(np.ravel(params[n]["kernel"])), np.ravel(mask[n]["kernel"])
    assert s[~m].max() <= s[m].min()
  mask2 = M.prune_lowest(scores, mask, 3, scope="layer")
  rep2 = M.sparsity_report(mask2)["layers"]
  assert rep2["conv0/kernel"]["pruned"] == 10 and rep2["fc0/kernel"]["pruned"] == 11


def test_repeated_pruning_never_repicks():
  params = make_params()
  # Pruned weights get the *lowest* scores afterwards: a naive selector would re-pick them.
  scores = jax.tree.map(jnp.abs, params)
  mask = M.init_mask(params)
  prev = np.zeros(152, bool)
  for _ in range(3):
    scores = jax.tree.map(
      lambda s, m: s if m is None else jnp.where(m, s, -1.0),
      scores,
      mask,
      is_leaf=lambda x: x is None,
    )
    mask = M.prune_lowest(scores, mask, 0.1)
    pruned = ~np.concatenate([np.ravel(mask[n]["kernel"]) for n in ("conv0", "fc0")])
    assert (pruned >= prev).all()  # the pruned set only grows
    assert pruned.sum() > prev.sum()
    prev = pruned
  # 152 -> 15 -> 14 -> 12 pruned per step: 41 total, vs 152 * (1 - 0.9**3) = 41.2.
  assert prev.sum() == 41
  assert abs(prev.sum() / 152 - (1 - 0.9**3)) < 1 / 152


def test_ties_deterministic_and_inf_scores():
  params = make_params()
  scores = jax.tree.map(jnp.zeros_like, params)
  mask = M.prune_lowest(scores, M.init_mask(params), 10)
  flat = np.ravel(mask["conv0"]["kernel"])
  np.testing.assert_array_equal(np.flatnonzero(~flat), np.arange(10))  # lowest flat index first
  assert bool(mask["fc0"]["kernel"].all())
  again = M.prune_lowest(scores, M.init_mask(params), 10)
  np.testing.assert_array_equal(again["conv0"]["kernel"], mask["conv0"]["kernel"])
  # All kept scores +inf: a kept +inf weight is still chosen before any pruned weight.
  inf = jax.tree.map(lambda x: jnp.full_like(x, jnp.inf), params)
  nxt = M.prune_lowest(inf, mask, 2)
  np.testing.assert_array_equal(np.flatnonzero(~np.ravel(nxt["conv0"]["kernel"])), np.arange(12))


@jax.jit
def _drop_lowest_by_sort(scores, keep, n):
  """The selection as one full ``jax.lax.sort`` by (pruned?, score, flat index): the reference
  for the host-side selection (and what fairjax ran before it)."""
  iota = jnp.arange(scores.shape[0], dtype=jnp.int32)
  safe = jnp.where(keep, scores, jnp.zeros_like(scores))
  *_, order = jax.lax.sort((~keep, safe, iota), num_keys=3)
  rank = jnp.zeros_like(iota).at[order].set(iota)
  return keep & (rank >= n)


_SPECIAL = np.array([-0.0, 0.0, 1.0, -1.0, np.inf, -np.inf, 2.5, 3.0, 1e-30, -1e-30])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16", "int32", "bool"])
def test_selection_equals_a_full_sort(dtype):
  # Many ties, signed zeros, infinities, pruned entries and every n from 0 to all kept.
  rng = np.random.default_rng(dtype.__len__())
  size = 150  # one compiled reference per dtype
  for trial in range(40):
    values = rng.choice(_SPECIAL, size) if trial % 2 else rng.standard_normal(size)
    if dtype == "int32":
      values = rng.integers(-3, 4, size)
    elif dtype == "bool":
      values = rng.random(size) < 0.5
    scores = jnp.asarray(values, dtype)
    keep = jnp.asarray(rng.random(size) < 0.7)
    for n in sorted({0, 1, int(keep.sum()) // 2, int(keep.sum())}):
      if n > int(keep.sum()):
        continue
      np.testing.assert_array_equal(
        M._drop_lowest(scores, keep, n), _drop_lowest_by_sort(scores, keep, n), err_msg=str(n)
      )


def test_float64_scores_rank_in_float32_without_x64():
  # Without x64, JAX computes in float32, so two scores equal in float32 tie (lowest index
  # first) even when numpy float64 inputs tell them apart.
  params = {"fc": {"kernel": jnp.zeros((1, 4))}}
  scores = {"fc": {"kernel": np.array([[1.0 + 1e-12, 1.0, 2.0, 3.0]])}}
  mask = M.prune_lowest(scores, M.init_mask(params), 1)
  np.testing.assert_array_equal(mask["fc"]["kernel"], [[False, True, True, True]])


def test_nan_scores_raise_with_layer_name():
  params = make_params()
  scores = jax.tree.map(jnp.abs, params)
  scores["fc0"]["kernel"] = scores["fc0"]["kernel"].at[2, 3].set(jnp.nan)
  with pytest.raises(ValueError, match="fc0/kernel"):
    M.prune_lowest(scores, M.init_mask(params), 0.1)
  # NaN at an already-pruned position is irrelevant.
  mask = M.init_mask(params)
  mask["fc0"]["kernel"] = mask["fc0"]["kernel"].at[2, 3].set(False)
  M.prune_lowest(scores, mask, 0.1, scope="layer")
  # Non-prunable leaves may hold anything (even None) in the scores tree.
  scores["fc0"]["bias"] = None
  scores["fc0"]["kernel"] = jnp.abs(params["fc0"]["kernel"])
  M.prune_lowest(scores, M.init_mask(params), 0.1)


def test_prune_to_sparsity():
  params = make_params()
  scores = jax.tree.map(jnp.abs, params)
  mask = M.init_mask(params)
  for target in (0.3, 0.5, 0.77):
    mask = M.prune_to_sparsity(scores, mask, target)
    assert M.sparsity_report(mask)["global"]["pruned"] == int(np.floor(target * 152 + 0.5))
  lower = M.prune_to_sparsity(scores, mask, 0.1)  # never revives
  np.testing.assert_array_equal(lower["fc0"]["kernel"], mask["fc0"]["kernel"])
  per = M.prune_to_sparsity(scores, M.init_mask(params), 0.5, scope="layer")
  rep = M.sparsity_report(per)["layers"]
  assert rep["conv0/kernel"]["pruned"] == 36 and rep["fc0/kernel"]["pruned"] == 40


class ConvBN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), name="conv0")(x)
    x = nn.BatchNorm(use_running_average=True, name="bn0")(x)
    return nn.relu(x)


def test_channel_mask_zeroes_channel_output():
  model = ConvBN()
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 5, 2))
  variables = model.init(jax.random.PRNGKey(0), x)
  k = jax.random.split(jax.random.PRNGKey(2), 5)
  params = {
    "conv0": {
      "kernel": variables["params"]["conv0"]["kernel"],
      "bias": jax.random.normal(k[0], (4,)),
    },
    "bn0": {
      "scale": 1.0 + jax.random.uniform(k[1], (4,)),
      "bias": jnp.abs(jax.random.normal(k[2], (4,))) + 0.5,
    },
  }
  # Negative running mean: without masking BN, a zero conv output would give ReLU(> 0) != 0.
  stats = {
    "bn0": {
      "mean": -jnp.abs(jax.random.normal(k[3], (4,))) - 0.5,
      "var": 0.5 + jax.random.uniform(k[4], (4,)),
    }
  }
  keep = jnp.array([True, False, True, True])
  mask = M.channel_mask(params, M.init_mask(params), "conv0", keep, norm_layer="bn0")
  assert mask["bn0"]["scale"].dtype == jnp.bool_ and mask["conv0"]["bias"] is not None
  dense = model.apply({"params": params, "batch_stats": stats}, x)
  pruned = model.apply({"params": M.apply_mask(params, mask), "batch_stats": stats}, x)
  assert bool((dense[..., 1] > 0).any())
  np.testing.assert_array_equal(pruned[..., 1], 0.0)
  np.testing.assert_array_equal(pruned[..., keep], dense[..., keep])
  np.testing.assert_array_equal(M.channel_keep_from_mask(mask, "conv0"), keep)
  # Kernel-only masking (the official code's behaviour) leaves the channel alive.
  kernel_only = M.apply_mask(params, M.init_mask(params))
  kernel_only["conv0"]["kernel"] = kernel_only["conv0"]["kernel"] * keep
  leak = model.apply({"params": kernel_only, "batch_stats": stats}, x)
  assert bool((leak[..., 1] != 0).any())


def test_channel_mask_nested_and_validation():
  params = {
    "layer1_block0": {"conv1": {"kernel": jnp.ones((3, 3, 4, 6))}},
    "fc0": {"kernel": jnp.ones((24, 3)), "bias": jnp.ones((3,))},
  }
  mask = M.init_mask(params)
  mask["layer1_block0"]["conv1"]["kernel"] = (
    mask["layer1_block0"]["conv1"]["kernel"].at[0, 0, 0, 0].set(False)
  )
  keep = jnp.array([True, True, False, True, False, True])
  new = M.channel_mask(params, mask, "layer1_block0/conv1", keep, next_layer="fc0")
  km = new["layer1_block0"]["conv1"]["kernel"]
  assert int((~km).sum()) == 2 * 36 + 1  # ANDed with the existing mask
  np.testing.assert_array_equal(new["fc0"]["kernel"], mask["fc0"]["kernel"])  # inputs untouched
  assert bool(mask["layer1_block0"]["conv1"]["kernel"][..., 2].all())  # input not mutated
  np.testing.assert_array_equal(M.channel_keep_from_mask(new, "layer1_block0/conv1"), keep)
  with pytest.raises(ValueError):
    M.channel_mask(params, mask, "layer1_block0/conv1", keep[:5])
  with pytest.raises(ValueError):
    M.channel_mask(params, mask, "layer1_block0/conv1", keep.astype(jnp.int32))
  with pytest.raises(ValueError):
    M.channel_mask(
      {"c": {"kernel": jnp.ones((3, 3, 2, 5))}, "fc": {"kernel": jnp.ones((7, 2))}},
      {"c": {"kernel": None}, "fc": {"kernel": None}},
      "c",
      jnp.ones(5, bool),
      next_layer="fc",
    )
  with pytest.raises(KeyError):
    M.channel_mask(params, mask, "conv9", keep)


def _quadratic_setup():
  params = make_params()
  target = jax.tree.map(lambda x: x + 1.0, params)
  mask = M.prune_lowest(jax.tree.map(jnp.abs, params), M.init_mask(params), 0.5)
  return M.apply_mask(params, mask), target, mask


@pytest.mark.parametrize(
  "inner",
  [
    optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.05, momentum=0.9)),
    optax.adam(0.05),
  ],
  ids=["sgd_momentum_wd", "adam"],
)
def test_masked_updates_keep_pruned_zero(inner):
  params, target, mask = _quadratic_setup()
  tx = M.masked_updates(inner)
  traces = []

  @jax.jit
  def step(params, state, mask):
    traces.append(1)
    loss = lambda p: sum(
      jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target))
    )
    updates, state = tx.update(jax.grad(loss)(params), state, params, mask=mask)
    return optax.apply_updates(params, updates), state

  p, state = params, tx.init(params)
  for _ in range(50):
    p, state = step(p, state, mask)
  for n in ("conv0", "fc0"):
    m = mask[n]["kernel"]
    np.testing.assert_array_equal(p[n]["kernel"][~m], 0.0)
    assert bool((p[n]["kernel"][m] != params[n]["kernel"][m]).all())
  assert bool((p["bn0"]["scale"] != params["bn0"]["scale"]).all())  # non-prunable trains
  # Momentum / Adam moments of pruned weights never became nonzero.
  moments = [x for x in jax.tree.leaves(state) if jnp.shape(x) in {(3, 3, 2, 4), (16, 5)}]
  assert len(moments) >= 2
  for x in moments:
    m = mask["conv0" if x.ndim == 4 else "fc0"]["kernel"]
    np.testing.assert_array_equal(x[~m], 0.0)
    assert bool((x[m] != 0).any())
  # A different mask (same structure) reuses the compiled step.
  mask2 = M.prune_lowest(jax.tree.map(jnp.abs, p), mask, 0.2)
  step(p, state, mask2)
  assert len(traces) == 1

  # mask=None is exactly the inner optimizer.
  def run(tx):
    q, s = params, tx.init(params)
    for _ in range(5):
      g = jax.tree.map(lambda a, b: 2 * (a - b), q, target)
      u, s = tx.update(g, s, q)
      q = optax.apply_updates(q, u)
    return q

  jax.tree.map(np.testing.assert_array_equal, run(M.masked_updates(inner)), run(inner))


def test_masked_updates_forwards_extra_args():
  seen = {}

  def init(params):
    return optax.EmptyState()

  def update(updates, state, params=None, **extra):
    seen.update(extra)
    return updates, state

  inner = optax.GradientTransformationExtraArgs(init, update)
  tx = M.masked_updates(inner)
  g = {"w": {"kernel": jnp.ones((2, 2))}}
  mask = {"w": {"kernel": jnp.array([[True, False], [True, True]])}}
  u, _ = tx.update(g, tx.init(g), mask=mask, value=3.0)
  assert seen == {"value": 3.0}
  np.testing.assert_array_equal(u["w"]["kernel"], [[1.0, 0.0], [1.0, 1.0]])
  # A plain GradientTransformation silently ignores extra args.
  u, _ = M.masked_updates(optax.sgd(1.0)).update(g, optax.sgd(1.0).init(g), mask=mask, value=3.0)
  np.testing.assert_array_equal(u["w"]["kernel"], [[-1.0, 0.0], [-1.0, -1.0]])


# Last in the module: the float64 fixture is module-scoped and stays on once requested.
def test_selection_equals_a_full_sort_in_float64(float64):
  rng = np.random.default_rng(7)
  # Values that tie in float32 but not in float64 are told apart by value, as lax.sort does.
  values = np.concatenate([rng.choice(_SPECIAL, 100), 1.0 + rng.integers(0, 3, 100) * 1e-12])
  scores, keep = jnp.asarray(values), jnp.asarray(rng.random(200) < 0.8)
  assert scores.dtype == jnp.float64
  for n in (1, 37, int(keep.sum())):
    np.testing.assert_array_equal(
      M._drop_lowest(scores, keep, n), _drop_lowest_by_sort(scores, keep, n)
    )
