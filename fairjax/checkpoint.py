"""Checkpoints: a thin, synchronous, atomic wrapper over ``orbax.checkpoint.CheckpointManager``.

One :class:`CheckpointStore` manages one directory of numbered steps. Each step holds several
named pytrees ("items": params, batch_stats, opt_state, mask, ...) plus a JSON metadata dict.
The pipeline (design.md section 0) uses two named stores under its workdir:

- ``<workdir>/checkpoints/dense``: the dense model, step = epoch of dense training;
- ``<workdir>/checkpoints/prune``: the pruning loop, step = prune iteration, with the mask.

Layout on disk (orbax's, unchanged)::

    <directory>/<step>/<item>/...        one orbax PyTree item per non-empty pytree
    <directory>/<step>/metadata/         the user's JSON metadata
    <directory>/<step>/fairjax_items/    which items were saved, and which were None / leafless

Atomicity: orbax writes a step into ``<step>.orbax-checkpoint-tmp`` and renames it to
``<step>`` only once every item is written (``AtomicRenameTemporaryPath`` on local file
systems; a ``commit_success.txt`` marker on object stores). A save killed half-way leaves only the
temporary directory, which :meth:`CheckpointStore.latest_step` never returns and which the next
store opened on the directory deletes (in the background; its first save waits for that).
Saving is synchronous (``enable_async_checkpointing=False``), so a process killed right after
:meth:`CheckpointStore.save` returns cannot lose that step. ``tests/test_checkpoint.py`` kills a
process just before the final rename and checks that the step is invisible.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import IO, Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

PyTree = Any

# Reserved item names: the user's JSON metadata and our own manifest of items.
_METADATA_ITEM = "metadata"
_MANIFEST_ITEM = "fairjax_items"
_MANIFEST_VERSION = 1

DENSE_STORE = "dense"
PRUNE_STORE = "prune"


def store_directory(workdir: str | os.PathLike[str], name: str) -> str:
  """Returns ``<workdir>/checkpoints/<name>``, the directory of a named store.

  Args:
    workdir: the run's work directory.
    name: store name; the pipeline uses ``"dense"`` and ``"prune"``.
  """
  return os.path.join(os.fspath(workdir), "checkpoints", name)


def _json_default(obj: Any) -> Any:
  # Metrics are often numpy / jax scalars; JSON has no type for them, so store their values.
  if isinstance(obj, (np.generic, np.ndarray, jax.Array)):
    return np.asarray(obj).tolist()
  raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable: {obj!r}")


def write_atomic(
  path: str | os.PathLike[str], write_fn: Callable[[IO[Any]], Any], *, binary: bool = False
) -> str:
  """Calls ``write_fn(file)`` on a temporary file beside ``path``, then renames it into place.

  Readers see the old file or the new one, never half of one. The temporary file lives in the
  destination directory (``os.replace`` is atomic only within one file system), is flushed and
  fsynced before the rename and removed if ``write_fn`` fails; the directory is fsynced after
  the rename so the rename itself survives a crash. The extension stays last in the temporary
  name, for writers that look at it (matplotlib's ``savefig``).

  Args:
    path: destination file; its parent directory is created if missing.
    write_fn: writes the content to the open file object.
    binary: open the temporary file in binary mode.

  Returns:
    ``path``.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  base, ext = os.path.splitext(os.path.basename(path))
  fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=f".{base}.", suffix=f".tmp{ext}")
  try:
    mode = "wb" if binary else "w"
    kwargs = {} if binary else {"encoding": "utf-8", "newline": ""}
    with os.fdopen(fd, mode, **kwargs) as f:
      write_fn(f)
      f.flush()
      os.fsync(f.fileno())
    # mkstemp creates the file private (0600); results are meant to be read by others, so
    # keep the mode of the file being replaced, or make a new one world-readable.
    os.chmod(tmp_path, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.unlink(tmp_path)
    raise
  try:
    dir_fd = os.open(directory, os.O_RDONLY)
  except OSError:  # Some platforms cannot open directories; the rename is still atomic.
    return path
  try:
    os.fsync(dir_fd)
  finally:
    os.close(dir_fd)
  return path


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
  """Writes ``obj`` as JSON to ``path`` atomically (:func:`write_atomic`).

  numpy / jax scalars and arrays are written as numbers / lists; keys are sorted.

  Args:
    path: destination file; its parent directory is created if missing.
    obj: a JSON-serialisable object.
  """
  # Serialise first, so an unserialisable object never leaves a temporary file behind.
  text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=True)
  write_atomic(path, lambda f: f.write(text + "\n"))


def read_json(path: str | os.PathLike[str]) -> Any:
  """Reads a JSON file written by :func:`write_json_atomic` (or any JSON file)."""
  with open(os.fspath(path), encoding="utf-8") as f:
    return json.load(f)


def _abstract_leaf(x: Any) -> jax.ShapeDtypeStruct:
  """The shape/dtype (and, for jax arrays, sharding) that orbax should restore ``x`` into."""
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  arr = np.asarray(x)
  return jax.ShapeDtypeStruct(arr.shape, arr.dtype)


def _cast_like(restored: Any, like: Any) -> Any:
  """Gives a restored leaf the container type of the ``like`` leaf (jax / numpy / Python)."""
  if isinstance(like, (jax.Array, jax.ShapeDtypeStruct)):
    return restored if isinstance(restored, jax.Array) else jnp.asarray(restored)
  if isinstance(like, (bool, int, float, complex)):
    return type(like)(np.asarray(restored).item())
  # numpy templates keep their dtype even where jax would canonicalise it (float64 without x64).
  if isinstance(like, np.generic):
    return np.asarray(restored, dtype=like.dtype)[()]
  return np.asarray(restored, dtype=np.asarray(like).dtype)


class CheckpointStore:
  """Numbered checkpoints of named pytrees plus JSON metadata in one directory.

  Example::

      store = CheckpointStore(store_directory(workdir, "dense"), max_to_keep=2)
      store.save(epoch, {"params": s.params, "batch_stats": s.batch_stats,
                         "opt_state": s.opt_state, "mask": s.mask}, metadata={"val": 0.8})
      step = store.latest_step()
      items = store.restore(step, like={"params": s.params, ...})

  Items may be ``None`` or leafless pytrees (e.g. ``batch_stats == {}`` for a model without
  BatchNorm, or a mask whose every leaf is ``None``); orbax refuses to store those, so the store
  records them in a small manifest and gives them back on restore. ``None`` leaves inside a
  pytree (a mask that leaves biases alone) and bool arrays round-trip exactly.

  Not thread-safe and not for several processes writing one directory (orbax's limits).
  """

  def __init__(self, directory: str | os.PathLike[str], *, max_to_keep: int | None = None):
    """Opens (creating it if needed) the store in ``directory``.

    Args:
      directory: the store's directory; made absolute (orbax needs absolute paths).
      max_to_keep: keep only the newest this many steps (``None``: keep all).
    """
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be None or >= 1, got {max_to_keep}.")
    self.directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(
      create=True,
      # Synchronous: save() returns only after the step is renamed into place.
      enable_async_checkpointing=False,
      # Leftovers of a killed save are deleted when the store is reopened.
      cleanup_tmp_directories=True,
      preservation_policy=ocp.checkpoint_managers.LatestN(n=max_to_keep),
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    # orbax removes those leftovers on a background thread. Wait for it here: a run that
    # fails right after opening its store (a bad weights file) would otherwise exit while
    # the thread still schedules work, and print orbax's traceback after the one-line error.
    await_cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
    if await_cleanup is not None:
      await_cleanup()

  # -- saving -------------------------------------------------------------------------------

  def save(
    self,
    step: int,
    items: Mapping[str, PyTree],
    *,
    metadata: Mapping[str, Any] | None = None,
  ) -> None:
    """Saves ``items`` (and ``metadata``) as ``step``, atomically, returning once on disk.

    Args:
      step: non-negative step number; must not exist yet in this store.
      items: name -> pytree of arrays (jax or numpy, any dtype incl. bool), ``None`` allowed
        both as a whole item and as leaves. Names ``"metadata"`` and ``"fairjax_items"`` are
        reserved.
      metadata: JSON-serialisable dict stored alongside (numpy scalars are converted).

    Raises:
      ValueError: on a reserved item name or a negative step.
      orbax.checkpoint.checkpoint_manager.StepAlreadyExistsError: if ``step`` exists.
    """
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}.")
    for name in items:
      if name in (_METADATA_ITEM, _MANIFEST_ITEM):
        raise ValueError(f"Item name {name!r} is reserved by CheckpointStore.")
    none_items = sorted(name for name, tree in items.items() if tree is None)
    # orbax rejects pytrees without leaves ("Found empty item"); remember them instead.
    empty_items = sorted(
      name for name, tree in items.items() if tree is not None and not jax.tree.leaves(tree)
    )
    # Round-trip through json so metadata that JSON cannot hold fails here, before any I/O.
    meta = json.loads(json.dumps(dict(metadata or {}), default=_json_default))
    manifest = {
      "version": _MANIFEST_VERSION,
      "items": sorted(items),
      "none_items": none_items,
      "empty_items": empty_items,
    }
    args = {
      name: ocp.args.StandardSave(tree)
      for name, tree in items.items()
      if name not in none_items and name not in empty_items
    }
    args[_METADATA_ITEM] = ocp.args.JsonSave(meta)
    args[_MANIFEST_ITEM] = ocp.args.JsonSave(manifest)
    # force=True: the store, not orbax's save-interval policy, decides what is saved.
    saved = self._manager.save(step, args=ocp.args.Composite(**args), force=True)
    if not saved:  # pragma: no cover - only if orbax's policy changes under us.
      raise RuntimeError(f"orbax declined to save step {step} in {self.directory}.")
    self._manager.wait_until_finished()

  # -- querying -----------------------------------------------------------------------------

  def latest_step(self) -> int | None:
    """The newest finalised step, or ``None`` if the store is empty."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """All finalised steps, ascending."""
    return sorted(int(s) for s in self._manager.all_steps())

  def _manifest(self, step: int) -> dict[str, Any]:
    restored = self._manager.restore(
      step, args=ocp.args.Composite(**{_MANIFEST_ITEM: ocp.args.JsonRestore()})
    )
    return restored[_MANIFEST_ITEM]

  def item_names(self, step: int) -> list[str]:
    """Names of the items saved at ``step``."""
    return list(self._manifest(step)["items"])

  def restore_metadata(self, step: int) -> dict[str, Any]:
    """The JSON metadata saved with ``step`` (``{}`` if none was given)."""
    restored = self._manager.restore(
      step, args=ocp.args.Composite(**{_METADATA_ITEM: ocp.args.JsonRestore()})
    )
    return restored[_METADATA_ITEM]

  # -- restoring ----------------------------------------------------------------------------

  def restore(self, step: int, like: Mapping[str, PyTree]) -> dict[str, PyTree]:
    """Restores the items named in ``like`` from ``step``, shaped like ``like``.

    Args:
      step: a step in :meth:`all_steps`.
      like: name -> template pytree. Each restored item has the template's tree structure
        (including custom nodes such as optax states), and each leaf its shape and dtype
        (stored values are cast to the template dtype) and its kind: jax arrays come back as
        jax arrays on the template's sharding, numpy arrays as numpy, Python scalars as
        Python scalars. Templates may be ``jax.ShapeDtypeStruct`` trees. A ``None`` template
        restores the item as it was saved (orbax's own structure: dicts / lists).

    Returns:
      name -> restored pytree; an item saved as ``None`` restores as ``None``, a leafless
      item as its template (or ``{}``).

    Raises:
      KeyError: if an item of ``like`` was not saved at ``step``.
      ValueError: if a template's structure or shapes differ from what was saved.
    """
    manifest = self._manifest(step)
    missing = sorted(set(like) - set(manifest["items"]))
    if missing:
      raise KeyError(
        f"Items {missing} not in step {step} of {self.directory}; saved items: {manifest['items']}."
      )
    out: dict[str, PyTree] = {}
    args: dict[str, ocp.args.CheckpointArgs] = {}
    for name, template in like.items():
      if name in manifest["none_items"]:
        out[name] = None
      elif name in manifest["empty_items"]:
        out[name] = template if template is not None else {}
      elif template is None:
        args[name] = ocp.args.StandardRestore()
      else:
        if not jax.tree.leaves(template):
          raise ValueError(
            f"Template for item {name!r} has no leaves but step {step} stored arrays."
          )
        args[name] = ocp.args.StandardRestore(jax.tree.map(_abstract_leaf, template))
    if args:
      self._check_shapes(step, {name: like[name] for name in args})
      restored = self._manager.restore(step, args=ocp.args.Composite(**args))
      for name in args:
        template = like[name]
        if template is None:
          out[name] = restored[name]
          continue
        leaves = jax.tree.leaves(restored[name])
        treedef = jax.tree.structure(template)
        if len(leaves) != treedef.num_leaves:
          raise ValueError(
            f"Item {name!r}: restored {len(leaves)} leaves, template has {treedef.num_leaves}."
          )
        # orbax rebuilds the template's structure already; unflattening into the
        # template's treedef makes that a guarantee and restores leaf kinds.
        out[name] = jax.tree.unflatten(
          treedef,
          [_cast_like(r, t) for r, t in zip(leaves, jax.tree.leaves(template))],
        )
    return out

  def _check_shapes(self, step: int, templates: Mapping[str, PyTree]) -> None:
    """Raises a ValueError naming the leaf whose template shape differs from the saved one.

    orbax refuses such a restore too, but only from deep inside its async reader, leaving
    un-awaited coroutines behind; checking the stored metadata first fails cleanly. Trees
    whose leaf counts differ are left to orbax, whose structure error names the path.
    """
    # A standalone handler reads an item's metadata whether or not this manager has seen
    # the item yet (the manager's item_metadata is None for items not saved in-process).
    handler = ocp.StandardCheckpointHandler()
    try:
      self._check_shapes_with(handler, step, templates)
    finally:
      handler.close()

  def _check_shapes_with(
    self, handler: ocp.StandardCheckpointHandler, step: int, templates: Mapping[str, PyTree]
  ) -> None:
    for name, template in templates.items():
      if template is None:
        continue
      # Steps are named "<step>" (no prefix / fixed length in our options).
      meta_tree = handler.metadata(epath.Path(self.directory) / str(step) / name)
      saved_leaves = jax.tree.leaves(getattr(meta_tree, "tree", meta_tree))
      paths_leaves = jax.tree_util.tree_flatten_with_path(template)[0]
      if len(saved_leaves) != len(paths_leaves):
        continue
      for (path, leaf), meta in zip(paths_leaves, saved_leaves):
        shape = tuple(np.shape(leaf)) if not hasattr(leaf, "shape") else tuple(leaf.shape)
        if tuple(meta.shape) != shape:
          raise ValueError(
            f"Item {name!r}{jax.tree_util.keystr(path)}: template shape {shape} != "
            f"saved shape {tuple(meta.shape)} at step {step} of {self.directory}."
          )

  # -- lifecycle ----------------------------------------------------------------------------

  def wait(self) -> None:
    """Blocks until pending work (deletion of old steps) is finished."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending work and releases orbax's resources."""
    self._manager.close()

  def __enter__(self) -> CheckpointStore:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()

  def __repr__(self) -> str:
    return f"CheckpointStore({self.directory!r})"
