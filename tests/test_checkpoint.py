"""Tests for fairjax.checkpoint: round trips, steps, atomic saves and atomic JSON."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairjax import masks
from fairjax.checkpoint import CheckpointStore, read_json, store_directory, write_json_atomic
from fairjax.train import make_optimizer


def make_items(seed: int = 0) -> dict:
  rs = np.random.RandomState(seed)
  params = {
    "conv": {
      "kernel": jnp.asarray(rs.normal(size=(3, 3, 2, 4)), jnp.float32),
      "bias": jnp.asarray(rs.normal(size=(4,)), jnp.bfloat16),
    },
    "dense": {
      "kernel": jnp.asarray(rs.normal(size=(8, 3)), jnp.float32),
      "bias": jnp.zeros((3,), jnp.float32),
    },
  }
  mask = masks.init_mask(params)  # None leaves for the biases
  mask["conv"]["kernel"] = jnp.asarray(rs.rand(3, 3, 2, 4) > 0.5)
  tx = make_optimizer("sgd", 0.1, momentum=0.9, weight_decay=1e-4)
  opt_state = tx.init(params)
  # Non-trivial optimizer state, so a restore that returned the template would fail.
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = tx.update(grads, opt_state, params, mask=mask)
  batch_stats = {"bn": {"mean": jnp.arange(4.0), "var": jnp.ones(4)}}
  return {"params": params, "batch_stats": batch_stats, "opt_state": opt_state, "mask": mask}


def zeros_like_tree(tree):
  return jax.tree.map(jnp.zeros_like, tree)


def assert_trees_identical(a, b) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert isinstance(x, jax.Array)
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_with_mask_none_leaves_and_metadata(tmp_path) -> None:
  items = make_items()
  items["empty_stats"] = {}  # a model without BatchNorm
  items["no_mask"] = None  # a dense model
  store = CheckpointStore(store_directory(tmp_path, "dense"))
  assert store.latest_step() is None and store.all_steps() == []
  meta = {"epoch": 3, "val_score": np.float32(0.75), "config": {"opt": "sgd"}}
  store.save(3, items, metadata=meta)

  like = {k: (None if v is None else zeros_like_tree(v)) for k, v in items.items()}
  # A template that is None restores the item as saved; a None item restores as None.
  like["no_mask"] = zeros_like_tree(items["mask"])
  out = store.restore(3, like)
  for name in ("params", "batch_stats", "opt_state", "mask"):
    assert_trees_identical(out[name], items[name])
  assert out["mask"]["conv"]["bias"] is None
  assert out["mask"]["conv"]["kernel"].dtype == jnp.bool_
  assert type(out["opt_state"]) is type(items["opt_state"])  # optax NamedTuples kept
  assert out["empty_stats"] == {}
  assert out["no_mask"] is None
  assert store.restore_metadata(3) == {"epoch": 3, "val_score": 0.75, "config": {"opt": "sgd"}}
  assert sorted(store.item_names(3)) == sorted(items)
  store.close()
  assert os.path.isdir(os.path.join(tmp_path, "checkpoints", "dense", "3"))


def test_restore_subset_casts_and_validates(tmp_path) -> None:
  items = make_items()
  with CheckpointStore(tmp_path / "s") as store:
    store.save(0, {"params": items["params"]})
    # Only the named items; leaves take the template's dtype and kind (numpy stays numpy).
    like = {"params": jax.tree.map(lambda x: np.zeros(x.shape, np.float64), items["params"])}
    out = store.restore(0, like)["params"]
    assert isinstance(out["dense"]["kernel"], np.ndarray)
    assert out["dense"]["kernel"].dtype == np.float64
    np.testing.assert_allclose(
      out["dense"]["kernel"], np.asarray(items["params"]["dense"]["kernel"])
    )
    # Templates may be abstract.
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), items["params"])
    assert_trees_identical(store.restore(0, {"params": abstract})["params"], items["params"])
    # None template: as saved.
    raw = store.restore(0, {"params": None})["params"]
    np.testing.assert_array_equal(raw["conv"]["kernel"], items["params"]["conv"]["kernel"])

    wrong_shape = jax.tree.map(jnp.zeros_like, items["params"])
    wrong_shape["dense"]["kernel"] = jnp.zeros((9, 3))
    with pytest.raises(ValueError, match=r"\['dense'\]\['kernel'\].*\(9, 3\).*\(8, 3\)"):
      store.restore(0, {"params": wrong_shape})
    wrong_tree = {"params": {"dense": items["params"]["dense"]}}
    with pytest.raises(ValueError):
      store.restore(0, wrong_tree)
    with pytest.raises(KeyError, match="opt_state"):
      store.restore(0, {"opt_state": items["opt_state"]})
    with pytest.raises(ValueError, match="reserved"):
      store.save(1, {"metadata": items["params"]})
    with pytest.raises(Exception, match="already exists"):
      store.save(0, {"params": items["params"]})
    with pytest.raises(TypeError):
      store.save(1, {"params": items["params"]}, metadata={"bad": object()})
    assert store.all_steps() == [0]  # the failed saves left nothing behind


def test_latest_step_all_steps_and_max_to_keep(tmp_path) -> None:
  params = make_items()["params"]
  with CheckpointStore(tmp_path / "prune", max_to_keep=2) as store:
    for step in (0, 5, 7):
      store.save(
        step, {"params": jax.tree.map(lambda x: x + step, params)}, metadata={"step": step}
      )
    store.wait()
    assert store.all_steps() == [5, 7]
    assert store.latest_step() == 7
  reopened = CheckpointStore(tmp_path / "prune")
  assert reopened.latest_step() == 7 and reopened.all_steps() == [5, 7]
  out = reopened.restore(5, {"params": params})["params"]
  np.testing.assert_array_equal(out["dense"]["bias"], np.full(3, 5.0, np.float32))
  assert reopened.restore_metadata(7) == {"step": 7}
  reopened.close()


_KILLED_SAVE = textwrap.dedent("""
    import os, sys
    import numpy as np
    from orbax.checkpoint._src.path import atomicity
    from fairjax.checkpoint import CheckpointStore

    store = CheckpointStore(sys.argv[1])
    store.save(0, {"w": np.arange(6.0)}, metadata={"ok": True})
    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def die_before_commit(self, *args, **kwargs):
        # Everything of step 1 is written; the process dies before the final rename.
        if self._final_path.name == "1":
            os._exit(17)
        return await original(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = die_before_commit
    store.save(1, {"w": np.arange(6.0) + 1}, metadata={"ok": False})
    sys.exit(0)  # not reached if the patch took effect
""")


def test_killed_save_leaves_no_visible_checkpoint(tmp_path) -> None:
  directory = str(tmp_path / "dense")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run(
    [sys.executable, "-c", _KILLED_SAVE, directory],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 17, proc.stderr[-2000:]
  leftovers = [n for n in os.listdir(directory) if n.startswith("1.")]
  assert leftovers and "orbax-checkpoint-tmp" in leftovers[0], os.listdir(directory)
  store = CheckpointStore(directory)
  # Reopening removes the half-written step before the constructor returns, so no orbax
  # thread is left running if the caller fails and exits at once.
  assert sorted(os.listdir(directory)) == ["0"]
  assert store.latest_step() == 0 and store.all_steps() == [0]
  assert store.restore_metadata(0) == {"ok": True}
  store.save(1, {"w": np.arange(6.0) + 1})
  assert store.latest_step() == 1
  assert sorted(os.listdir(directory)) == ["0", "1"]
  np.testing.assert_array_equal(store.restore(1, {"w": np.zeros(6)})["w"], np.arange(6.0) + 1)
  store.close()


def test_write_json_atomic(tmp_path) -> None:
  path = tmp_path / "sub" / "report.json"
  obj = {"acc": np.float32(0.5), "per_group": np.array([1, 2]), "name": "vgg", "nan": float("nan")}
  write_json_atomic(path, obj)
  write_json_atomic(path, {**obj, "name": "resnet"})  # replaces in place
  back = read_json(path)
  assert back["name"] == "resnet" and back["acc"] == 0.5 and back["per_group"] == [1, 2]
  assert np.isnan(back["nan"])
  assert path.read_text().endswith("}\n")
  assert os.listdir(path.parent) == ["report.json"]  # no temporary files left
  # An unserialisable object fails before touching the existing file.
  with pytest.raises(TypeError):
    write_json_atomic(path, {"bad": object()})
  assert read_json(path)["name"] == "resnet"
  assert os.listdir(path.parent) == ["report.json"]


def test_write_json_atomic_keeps_results_readable(tmp_path) -> None:
  path = tmp_path / "results.json"
  write_json_atomic(path, {"a": 1})
  assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
  path.chmod(0o640)
  write_json_atomic(path, {"a": 2})
  assert path.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its mode
