"""FairGRAPE: importance against brute force (float64), greedy against the plain loop
(design.md section 4)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import masks
from fairjax.pruning import fairgrape as fg

pytestmark = pytest.mark.usefixtures("float64")  # scoped float64 (tests/conftest.py)

NUM_CLASSES = 3


class TinyNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jax.nn.relu(nn.Conv(3, (3, 3), padding="SAME")(x))
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(nn.Dense(6)(x))
    return nn.Dense(NUM_CLASSES)(x)


@pytest.fixture(scope="module")
def setup():
  model = TinyNet()
  key = jax.random.key(0, impl="rbg")
  k_init, k_x, k_y, k_m = jax.random.split(key, 4)
  images = jax.random.normal(k_x, (10, 4, 4, 2), jnp.float64)
  variables = model.init(k_init, images)
  variables = jax.tree.map(lambda x: x.astype(jnp.float64), variables)
  labels = jax.random.randint(k_y, (10,), 0, NUM_CLASSES)
  groups = jnp.array([0, 1, 0, 1, 1, 0, -1, 0, 1, 0])  # group 2 absent, one unknown
  mask = masks.init_mask(variables["params"])
  kernel = mask["Dense_0"]["kernel"]
  mask["Dense_0"]["kernel"] = kernel & (jax.random.uniform(k_m, kernel.shape) > 0.3)
  return model, variables, images, labels, groups, mask


def brute_importance(model, variables, images, labels, groups, mask, num_groups):
  params = masks.apply_mask(variables["params"], mask)
  out = []
  for g in range(num_groups):
    idx = np.flatnonzero(np.asarray(groups) == g)
    if idx.size == 0:
      out.append(jax.tree.map(jnp.zeros_like, params))
      continue

    def loss(p):
      logits = model.apply({"params": p}, images[idx])
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(idx.size), labels[idx]])

    grads = jax.grad(loss)(params)
    out.append(jax.tree.map(lambda w, gr: (w * gr) ** 2, params, grads))
  return jax.tree.map(lambda *xs: jnp.stack(xs), *out)


def test_group_importance_matches_per_group_grad(setup):
  model, variables, images, labels, groups, mask = setup
  got = fg.group_importance(model, variables, images, labels, groups, mask, num_groups=3)
  want = brute_importance(model, variables, images, labels, groups, mask, 3)
  for (path, a), (_, b) in zip(masks.flatten_with_paths(got), masks.flatten_with_paths(want)):
    assert a.shape == b.shape and a.dtype == jnp.float64, path
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-300, err_msg=str(path))
  assert float(jnp.max(jnp.abs(got["Dense_0"]["kernel"][2]))) == 0.0  # absent group
  assert float(jnp.max(jnp.abs(got["Conv_0"]["kernel"][0]))) > 0.0
  pruned = ~mask["Dense_0"]["kernel"]
  assert bool(jnp.all(got["Dense_0"]["kernel"][:, pruned] == 0.0))
  assert float(jnp.mean(got["Dense_0"]["kernel"][:2, ~pruned] > 0.0)) > 0.3  # not vacuous


def test_accumulate_importance_sums_batches_and_drops_padding(setup):
  model, variables, images, labels, groups, mask = setup
  batches = [
    {"image": images[:6], "label": labels[:6], "group": groups[:6]},
    {
      "image": images[6:],
      "label": labels[6:],
      "group": groups[6:],
      "valid": np.array([True, True, False, True]),
    },
  ]
  got = fg.accumulate_importance(model, variables, batches, mask, num_groups=2)
  g2 = np.asarray(groups[6:]).copy()
  g2[2] = -1
  want = jax.tree.map(
    jnp.add,
    brute_importance(model, variables, images[:6], labels[:6], groups[:6], mask, 2),
    brute_importance(model, variables, images[6:], labels[6:], g2, mask, 2),
  )
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10), got, want)
  with pytest.raises(ValueError):
    fg.accumulate_importance(model, variables, [], mask, num_groups=2)


def check_same(imp, keep, threads=None):
  got = fg.greedy_select(imp, keep, threads=threads)
  want = fg.greedy_select_reference(imp, keep)
  assert got.dtype == bool and got.shape == (imp.shape[1],)
  assert int(got.sum()) == keep
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("num_groups", [2, 3, 4])
def test_greedy_matches_reference_random(num_groups):
  rng = np.random.default_rng(num_groups)
  for n in (1, 5, 60, 300, 2000):
    keeps = {0, n, n // 2, int(rng.integers(0, n + 1)), int(0.9 * n)}
    for keep in sorted(keeps):
      scale = rng.lognormal(size=(num_groups, 1))  # unequal group totals
      check_same(rng.lognormal(sigma=1.5, size=(num_groups, n)) * scale, keep)


@pytest.mark.parametrize("num_groups", [2, 3, 4])
def test_greedy_matches_reference_ties_and_zeros(num_groups):
  rng = np.random.default_rng(10 + num_groups)
  for n in (40, 300):
    for _ in range(4):
      imp = rng.integers(0, 3, size=(num_groups, n)).astype(float)
      imp[:, rng.random(n) < 0.4] = 0.0  # weights useless to every group
      for keep in (1, n // 3, n - 1, n):
        check_same(imp, keep)
  check_same(np.ones((num_groups, 50)), 17)  # all tied: lowest indices, alternating groups


def test_greedy_one_group_dominates_and_all_zero():
  rng = np.random.default_rng(7)
  imp = rng.exponential(size=(3, 300))
  imp[1] *= 1e6
  for keep in (1, 50, 299):
    check_same(imp, keep)
  imp[2] = 0.0  # a group with no importance at all (t_g = 0)
  check_same(imp, 120)
  zeros = np.zeros((2, 30))
  np.testing.assert_array_equal(fg.greedy_select(zeros, 7), np.arange(30) < 7)


def test_greedy_balances_shares():
  rng = np.random.default_rng(3)
  imp = rng.lognormal(size=(2, 5000)) * np.array([[1.0], [5.0]])
  kept = fg.greedy_select(imp, 2500)
  frac = imp[:, kept].sum(1) / imp.sum(1)
  assert abs(frac[0] - frac[1]) < 0.01  # each group keeps the same fraction of its importance
  top = np.zeros(5000, bool)
  top[np.argsort(-imp.sum(0))[:2500]] = True
  frac_top = imp[:, top].sum(1) / imp.sum(1)
  assert abs(frac_top[0] - frac_top[1]) > abs(frac[0] - frac[1])


def test_greedy_rejects_bad_input():
  with pytest.raises(ValueError):
    fg.greedy_select(np.ones((2, 5)), 6)
  with pytest.raises(ValueError):
    fg.greedy_select(-np.ones((2, 5)), 1)
  with pytest.raises(ValueError):
    fg.greedy_select(np.full((2, 5), np.nan), 1)


def test_fairgrape_mask_layer_and_global():
  rng = np.random.default_rng(0)
  params = {
    "a": {"kernel": np.zeros((10, 10))},
    "b": {"kernel": np.zeros((4, 5)), "bias": np.zeros(5)},
  }
  mask = masks.init_mask(params)
  mask["a"]["kernel"] = jnp.asarray(rng.random((10, 10)) > 0.2)
  imp = {
    "a": {"kernel": rng.random((2, 10, 10))},
    "b": {"kernel": rng.random((2, 4, 5)), "bias": None},
  }
  new = fg.fairgrape_mask(imp, mask, 0.5)
  assert new["b"]["bias"] is None
  assert int(new["a"]["kernel"].sum()) == 50 and int(new["b"]["kernel"].sum()) == 10
  assert not bool(jnp.any(new["a"]["kernel"] & ~mask["a"]["kernel"]))  # never un-prunes
  cand = np.flatnonzero(np.asarray(mask["a"]["kernel"]).ravel())
  want = np.zeros(100, bool)
  want[cand[fg.greedy_select(imp["a"]["kernel"].reshape(2, -1)[:, cand], 50)]] = True
  np.testing.assert_array_equal(np.asarray(new["a"]["kernel"]).ravel(), want)
  # 0.9 of 100 weights: 10 kept although 100 * (1 - 0.9) = 9.999999999999998
  assert int(fg.fairgrape_mask(imp, mask, 0.9)["a"]["kernel"].sum()) == 10
  # budget above the kept count: keeps every kept weight, nothing revived
  sparse = {**mask, "a": {"kernel": mask["a"]["kernel"] & jnp.asarray(rng.random((10, 10)) > 0.7)}}
  again = fg.fairgrape_mask(imp, sparse, 0.5)
  np.testing.assert_array_equal(again["a"]["kernel"], sparse["a"]["kernel"])
  glob = fg.fairgrape_mask(imp, mask, 0.5, scope="global")
  assert int(glob["a"]["kernel"].sum()) + int(glob["b"]["kernel"].sum()) == 60
  assert not bool(jnp.any(glob["a"]["kernel"] & ~mask["a"]["kernel"]))
  with pytest.raises(ValueError):
    fg.fairgrape_mask(imp, mask, 0.5, scope="channel")


def test_cumulative_ratio():
  assert fg.cumulative_ratio(0, 0.975, 0.9) == 0.0
  assert fg.cumulative_ratio(1, 0.975, 0.9) == pytest.approx(0.025)
  assert fg.cumulative_ratio(2, 0.5, 0.9) == pytest.approx(0.75)
  assert fg.cumulative_ratio(10, 0.5, 0.9) == 0.9  # capped at prune_rate
  with pytest.raises(ValueError):
    fg.cumulative_ratio(-1, 0.5, 0.9)
  with pytest.raises(ValueError):
    fg.cumulative_ratio(1, 0.0, 0.9)


def test_stream_order_is_decreasing_value_then_index():
  # The packed-key sort drops the low bits of each value; values that differ only there (and
  # -0.0, ties, zeros, float32-valued importance) must still come out in exact lexsort order.
  rng = np.random.default_rng(5)
  for trial in range(60):
    n = int(rng.integers(1, 3000))
    kind = trial % 5
    if kind == 0:
      x = rng.lognormal(size=n)
    elif kind == 1:
      x = rng.integers(0, 4, n).astype(float)
    elif kind == 2:  # differ in the last mantissa bits only: equal truncated keys
      x = (1.0 + rng.integers(0, 5, n) * 2.0**-50) * rng.choice([0.5, 1.0, 2.0], n)
    elif kind == 3:
      x = np.where(rng.random(n) < 0.5, 0.0, 1.0 + rng.integers(0, 1 << 12, n) * 2.0**-52)
    else:
      x = rng.lognormal(size=n).astype(np.float32).astype(np.float64)
      x[rng.random(n) < 0.3] = -0.0
    want = np.lexsort((np.arange(n), -x))
    np.testing.assert_array_equal(fg._stream_order(x), want, err_msg=f"trial {trial}")


@pytest.mark.parametrize("chunk,threads", [(8, 1), (16, 2), (64, 2)])
def test_greedy_matches_reference_across_chunks(monkeypatch, chunk, threads):
  # Small chunks and blocks: streams swap in prefetched chunks many times, runs of already-kept
  # entries cross chunk boundaries, and stream tails are padded with the sentinel.
  monkeypatch.setattr(fg, "_CHUNK", chunk)
  monkeypatch.setattr(fg, "_BLOCK", 32)
  rng = np.random.default_rng(chunk)
  for num_groups in (2, 3, 5, 8):
    for n in (7, 100, 333):
      base = rng.lognormal(sigma=1.5, size=(1, n))
      correlated = base * rng.lognormal(sigma=0.3, size=(num_groups, n))  # many repeats
      ties = rng.integers(0, 3, size=(num_groups, n)).astype(float)
      for imp in (
        rng.lognormal(size=(num_groups, n)) * rng.lognormal(size=(num_groups, 1)),
        correlated,
        ties,
      ):
        for keep in sorted({1, n // 2, int(0.9 * n), n - 1}):
          check_same(imp, keep, threads=threads)


def test_greedy_edge_cases():
  rng = np.random.default_rng(11)
  imp = rng.integers(0, 4, size=(1, 50)).astype(float)  # G = 1: top-k, ties by lower index
  for keep in (0, 1, 23, 49, 50):
    check_same(imp, keep)
  np.testing.assert_array_equal(fg.greedy_select(np.zeros((1, 5)), 2), np.arange(5) < 2)
  check_same(np.ones((2, 1)), 1)
  check_same(np.ones((2, 1)), 0)
  check_same(np.ones((3, 2)), 1)
  check_same(np.zeros((4, 20)), 9)  # T = 0: group 0 picks all the time, lowest indices
  imp = rng.lognormal(size=(4, 200))
  imp[[1, 3]] = 0.0  # two groups without importance
  imp[:, rng.random(200) < 0.5] = 0.0  # and half the weights useless to all
  for keep in (1, 60, 100, 150, 199):
    check_same(imp, keep)
  same_rows = np.repeat(rng.lognormal(size=(1, 300)), 8, axis=0)  # every other pick repeats
  for keep in (1, 100, 299):
    check_same(same_rows, keep)
