"""The shared scorer plumbing (fairjax/pruning/_scoring.py) against float64 brute force.

Per-sample cross-entropy and its dtype, frozen apply kwargs, group weights, padding rows of group
-1 (design.md section 5.4: they count nowhere), the one batch loop (count-weighted means equal one
big batch, design.md section 1.5), OBD as FairPrune's per-group term with one group (design.md
section 4.7) and FairGRAPE's thread count as an argument.
"""

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import curvature, masks
from fairjax.pruning import _scoring, baselines, fairgrape, fairprune

NUM_CLASSES = 3
NUM_GROUPS = 2


@pytest.fixture(autouse=True)
def x64():
  # Scoped float64: leaves the process-wide setting alone for other test modules.
  with jax.enable_x64(True):
    yield


class TinyNet(nn.Module):
  dtype: jnp.dtype | None = None  # computation dtype of the layers (None: the params')

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jax.nn.relu(nn.Conv(2, (2, 2), padding="VALID", dtype=self.dtype)(x))
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(nn.Dense(4, dtype=self.dtype)(x))
    return nn.Dense(NUM_CLASSES, dtype=self.dtype)(x)


@pytest.fixture
def setup(x64):
  model = TinyNet()
  k_init, k_x, k_y, k_g = jax.random.split(jax.random.key(5, impl="rbg"), 4)
  images = np.asarray(jax.random.normal(k_x, (9, 3, 3, 2), jnp.float64))
  variables = jax.tree.map(lambda x: x.astype(jnp.float64), model.init(k_init, images))
  labels = np.asarray(jax.random.randint(k_y, (9,), 0, NUM_CLASSES), np.int32)
  groups = np.asarray(jax.random.randint(k_g, (9,), -1, NUM_GROUPS), np.int32)  # some unknown
  groups[:2] = [0, 1]  # every group present
  return model, variables, images, labels, groups


def brute_ce(model, variables, images, labels):
  """``-log softmax(logits)[y]`` per sample, in numpy float64 (log-sum-exp by hand)."""
  logits = np.asarray(model.apply(variables, images), np.float64)
  top = logits.max(axis=1, keepdims=True)
  lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
  return lse - logits[np.arange(len(labels)), labels]


def brute_group_means(values, groups):
  """``[G]`` mean of ``values`` over each group's rows; rows outside ``[0, G)`` nowhere."""
  return np.array([values[groups == g].mean() for g in range(NUM_GROUPS)])


def test_per_sample_ce_matches_brute_force(setup):
  model, variables, images, labels, _ = setup
  params, others = _scoring.split_variables(variables)
  got = _scoring.per_sample_ce(model, params, others, jnp.asarray(images), jnp.asarray(labels))
  assert got.shape == (9,) and got.dtype == jnp.float64
  np.testing.assert_allclose(got, brute_ce(model, variables, images, labels), rtol=1e-13)
  # Frozen and mapping apply kwargs give the same losses.
  again = _scoring.per_sample_ce(
    model,
    params,
    others,
    jnp.asarray(images),
    jnp.asarray(labels),
    _scoring.freeze({"train": False}),
  )
  np.testing.assert_array_equal(got, again)


def test_per_sample_ce_is_in_the_params_dtype(setup):
  # bf16 layers with float32 params: the logits are cast up before the log-softmax.
  _, variables, images, labels, _ = setup
  model = TinyNet(dtype=jnp.bfloat16)
  params = jax.tree.map(lambda x: x.astype(jnp.float32), variables["params"])
  got = _scoring.per_sample_ce(
    model, params, {}, jnp.asarray(images, jnp.float32), jnp.asarray(labels)
  )
  assert got.dtype == jnp.float32
  logits = model.apply({"params": params}, jnp.asarray(images, jnp.float32))
  assert logits.dtype == jnp.bfloat16
  want = -jax.nn.log_softmax(logits.astype(jnp.float32))[np.arange(9), labels]
  np.testing.assert_array_equal(got, want)


def test_freeze_is_hashable_sorted_and_round_trips():
  frozen = _scoring.freeze({"train": False, "a": 1})
  assert frozen == (("a", 1), ("train", False))
  assert hash(frozen) == hash(_scoring.freeze({"a": 1, "train": False}))
  assert dict(frozen) == {"train": False, "a": 1}
  assert _scoring.freeze(None) == () and _scoring.freeze({}) == ()
  assert _scoring.freeze(frozen) == frozen
  assert _scoring.freeze((("train", False), ("a", 1))) == frozen

  calls = []

  def f(x, *, kw):
    calls.append(kw)  # traced once per distinct static value
    return x * dict(kw)["a"]

  jf = jax.jit(f, static_argnames="kw")
  assert float(jf(2.0, kw=frozen)) == 2.0
  assert float(jf(3.0, kw=_scoring.freeze({"a": 1, "train": False}))) == 3.0
  assert len(calls) == 1


def test_group_weights_against_brute_force(setup):
  _, _, _, _, groups = setup
  groups = groups.copy()
  groups[-1] = NUM_GROUPS  # out of range: counted nowhere, like -1
  weights, counts = _scoring.group_weights(jnp.asarray(groups), NUM_GROUPS, jnp.float64)
  assert weights.shape == (9, NUM_GROUPS) and weights.dtype == jnp.float64
  assert counts.dtype == jnp.int32
  want_counts = [int(np.sum(groups == g)) for g in range(NUM_GROUPS)]
  np.testing.assert_array_equal(counts, want_counts)
  for n, g in enumerate(groups):
    want = np.zeros(NUM_GROUPS)
    if 0 <= g < NUM_GROUPS:
      want[g] = 1.0 / want_counts[g]
    np.testing.assert_array_equal(weights[n], want)
  # A group without samples: a zero column, not NaN.
  w, c = _scoring.group_weights(jnp.zeros(4, jnp.int32), 3, jnp.float32)
  np.testing.assert_array_equal(c, [4, 0, 0])
  assert np.all(np.asarray(w[:, 1:]) == 0.0)


def test_unknown_padding_numpy_and_jax():
  groups = np.array([0, 1, 1, 0], np.int32)
  valid = np.array([True, False, True, False])
  np.testing.assert_array_equal(
    _scoring.unknown_padding({"group": groups, "valid": valid}), [0, -1, 1, -1]
  )
  assert _scoring.unknown_padding({"group": groups}) is groups  # untouched without "valid"
  got = _scoring.unknown_padding({"group": jnp.asarray(groups), "valid": jnp.asarray(valid)})
  assert isinstance(got, jax.Array) and got.dtype == jnp.int32
  np.testing.assert_array_equal(got, [0, -1, 1, -1])


def test_pad_and_split_batch():
  batch = {
    "image": np.arange(10.0).reshape(5, 2),
    "label": np.arange(5, dtype=np.int32),
    "group": np.array([0, 1, 0, 1, 1], np.int32),
    "valid": np.ones(5, bool),
  }
  chunks = list(_scoring.split_batch(batch, 2))
  assert len(chunks) == 3
  last = chunks[-1]
  assert all(isinstance(v, np.ndarray) and v.shape[0] == 2 for v in last.values())
  np.testing.assert_array_equal(last["image"], [[8.0, 9.0], [0.0, 0.0]])
  np.testing.assert_array_equal(last["label"], [4, 0])
  np.testing.assert_array_equal(last["group"], [1, -1])
  np.testing.assert_array_equal(last["valid"], [True, False])
  for key in batch:
    np.testing.assert_array_equal(np.concatenate([c[key] for c in chunks])[:5], batch[key])
  padded = _scoring.pad_batch({k: jnp.asarray(v) for k, v in batch.items()}, 7)
  assert isinstance(padded["group"], jax.Array)
  np.testing.assert_array_equal(padded["group"], [0, 1, 0, 1, 1, -1, -1])
  with pytest.raises(ValueError, match="more than size"):
    _scoring.pad_batch(batch, 4)


def _group_mean_ce_step(model, variables):
  """``step(i, batch) -> (per-group mean CE [G], counts [G])`` for :func:`_scoring.accumulate`."""
  params, others = _scoring.split_variables(variables)

  def step(_, batch):
    losses = _scoring.per_sample_ce(
      model, params, others, jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
    )
    weights, counts = _scoring.group_weights(jnp.asarray(batch["group"]), NUM_GROUPS, losses.dtype)
    return weights.T @ losses, counts

  return step


@pytest.mark.parametrize("size", [1, 2, 4, 9, 16])
def test_accumulate_weighted_mean_equals_one_big_batch(setup, size):
  # Chunks padded with group -1 rows and combined by counts give the per-group mean of the
  # whole batch (the unknown-group rows of the batch itself also count nowhere).
  model, variables, images, labels, groups = setup
  batch = {"image": images, "label": labels, "group": groups}
  step = _group_mean_ce_step(model, variables)
  got, counts = _scoring.accumulate(
    step, _scoring.split_batch(batch, size), caller="test", weighted=True, mean=True
  )
  want = brute_group_means(brute_ce(model, variables, images, labels), groups)
  np.testing.assert_allclose(got, want, rtol=1e-13)
  assert len(counts) == -(-9 // size)
  np.testing.assert_array_equal(
    np.sum(np.stack(counts), axis=0), [np.sum(groups == g) for g in range(NUM_GROUPS)]
  )


def test_padding_rows_contribute_nothing(setup):
  # Rows marked invalid, or padded in with junk inputs, change no per-group result.
  model, variables, images, labels, groups = setup
  step = _group_mean_ce_step(model, variables)
  clean = step(0, {"image": images, "label": labels, "group": groups})
  junk = {
    "image": np.concatenate([images, 100.0 * images[:3]]),
    "label": np.concatenate([labels, labels[:3]]),
    "group": np.concatenate([groups, [0, 1, 0]]).astype(np.int32),
    "valid": np.arange(12) < 9,
  }
  marked = step(0, {**junk, "group": _scoring.unknown_padding(junk)})
  np.testing.assert_array_equal(marked[1], clean[1])
  np.testing.assert_allclose(marked[0], clean[0], rtol=1e-14)
  # The same through the scorers that take batch dicts.
  mask = masks.init_mask(variables["params"])
  kw = dict(num_groups=NUM_GROUPS, apply_kwargs={"train": False})
  clean_batch = {"image": images, "label": labels, "group": groups}
  for fn in (
    lambda b: fairgrape.accumulate_importance(model, variables, b, mask, **kw),
    lambda b: fairprune.average_group_diag(model, variables, b, **kw)[0],
  ):
    want, got = fn([clean_batch]), fn([junk])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-300), want, got)


def test_accumulate_plain_sum_skip_and_errors():
  values = [np.array([1.0, 2.0]), None, np.array([0.5, 0.25])]
  step = lambda i, _: None if values[i] is None else (jnp.asarray(values[i]), None)
  total, counts = _scoring.accumulate(step, [{}] * 3, caller="test")
  np.testing.assert_array_equal(total, [1.5, 2.25])
  assert counts == [None, None]  # the skipped batch is not listed
  with pytest.raises(ValueError, match="^mine got no batches$"):
    _scoring.accumulate(step, [], caller="mine")
  with pytest.raises(ValueError, match="^mine got no thing$"):
    _scoring.accumulate(lambda i, b: None, [{}], caller="mine", what="thing")
  with pytest.raises(ValueError, match="weighted"):
    _scoring.accumulate(step, [{}], caller="x", weighted=True, on_host=True)


def test_accumulate_on_host_sums_in_float64():
  # Sums of already-summed values and their counts (SNNL's anchors), read back to the host.
  sums = [jnp.asarray([1.0, 3.0], jnp.float32), jnp.asarray([2.0, 5.0], jnp.float32)]
  counts = [jnp.asarray(2, jnp.int32), jnp.asarray(3, jnp.int32)]
  got, got_counts = _scoring.accumulate(
    lambda i, _: ({"a": sums[i]}, counts[i]), [{}, {}], caller="test", mean=True, on_host=True
  )
  assert isinstance(got["a"], np.ndarray) and got["a"].dtype == np.float64
  np.testing.assert_array_equal(got["a"], [3.0 / 5, 8.0 / 5])
  assert [int(c) for c in got_counts] == [2, 3]


def brute_ggn_diag(model, variables, images, labels):
  """Diagonal GGN of the mean CE from full per-sample Jacobians and ``H_n`` (float64)."""
  params = variables["params"]
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  logits_fn = lambda f, x: model.apply({"params": unravel(f)}, x[None])[0]
  total = np.zeros(flat.shape, np.float64)
  for x in images:
    jac = np.asarray(jax.jacobian(logits_fn)(flat, jnp.asarray(x)))  # [C, P]
    p = np.asarray(jax.nn.softmax(logits_fn(flat, jnp.asarray(x))))
    hess = np.diag(p) - np.outer(p, p)
    total += np.einsum("cp,cd,dp->p", jac, hess, jac)
  return unravel(jnp.asarray(total / len(images)))


@pytest.mark.parametrize("chunk_size", [None, 2, 4])
def test_obd_is_fairprune_with_one_group(setup, chunk_size):
  model, variables, images, labels, _ = setup
  mask = masks.init_mask(variables["params"])
  kernel = mask["Dense_0"]["kernel"]
  mask["Dense_0"]["kernel"] = kernel & (np.arange(kernel.size).reshape(kernel.shape) % 3 > 0)
  params = masks.apply_mask(variables["params"], mask)
  got = baselines.obd_scores(model, variables, images, labels, mask, chunk_size=chunk_size)
  # Brute force: 1/2 w^2 diag(J^T H J), float64.
  h = brute_ggn_diag(model, {"params": params}, images, labels)
  want = jax.tree.map(lambda w, d: 0.5 * w * w * d, params, h)
  # FairPrune's function with every sample in group 0.
  diag, _ = fairprune.average_group_diag(
    model,
    {"params": params},
    [{"image": images, "label": labels, "group": np.zeros(9, np.int32)}],
    num_groups=1,
  )
  terms = fairprune.group_terms(params, diag)

  def check(m, g, w, t):
    if m is None:
      assert g is None
      return
    np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(g, t[0], rtol=1e-12, atol=1e-300)
    assert g.dtype == jnp.float64

  masks.map_with_mask(check, mask, got, want, terms)
  assert float(jnp.max(got["Dense_1"]["kernel"])) > 0.0


def test_greedy_threads_is_an_argument():
  assert not hasattr(fairgrape, "_THREADS")
  rng = np.random.default_rng(0)
  imp = rng.lognormal(size=(3, 200))
  want = fairgrape.greedy_select_reference(imp, 150)
  for threads in (None, 1, 2, 8):
    np.testing.assert_array_equal(fairgrape.greedy_select(imp, 150, threads=threads), want)
  for bad in (0, -1, 1.5, True):
    with pytest.raises(ValueError, match="threads"):
      fairgrape.greedy_select(imp, 150, threads=bad)
  mask = {"w": np.ones(200, bool)}
  new = fairgrape.fairgrape_mask({"w": imp}, mask, 0.25, threads=1)
  np.testing.assert_array_equal(new["w"], want)


def test_curvature_reuses_the_shared_pieces(setup):
  # curvature.add_weighted / divide_by_counts / group_counts are the shared ones (same numbers).
  _, _, _, _, groups = setup
  np.testing.assert_array_equal(
    curvature.group_counts(jnp.asarray(groups), NUM_GROUPS),
    _scoring.group_weights(jnp.asarray(groups), NUM_GROUPS, jnp.float32)[1],
  )
  a = {"x": jnp.asarray([[1.0, 2.0], [3.0, 4.0]])}
  c = jnp.asarray([2, 0])
  acc = curvature.add_weighted(None, a, c)
  np.testing.assert_array_equal(acc["x"], [[2.0, 4.0], [0.0, 0.0]])
  np.testing.assert_array_equal(
    curvature.divide_by_counts(acc, [c])["x"], _scoring.divide_by_counts(acc, [c])["x"]
  )


def test_scoring_is_kernel_level():
  # design.md section 0: no fairjax import (curvature and snnl import it), no module state.
  import ast
  import inspect

  tree = ast.parse(inspect.getsource(_scoring))
  imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
  imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
  assert not [m for m in imported if m.split(".")[0] == "fairjax"], imported
  for node in tree.body:
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
      value = node.value
      assert not isinstance(value, (ast.List, ast.Dict, ast.Set, ast.Call)), ast.dump(node)
