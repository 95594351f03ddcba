"""Data parallelism over all local devices (and over hosts) with ``jax.sharding``.

One 1-D :class:`jax.sharding.Mesh` with the axis ``"data"``. Params, BatchNorm statistics,
optimizer state and masks are REPLICATED on it; every batch is SPLIT along its first (sample)
axis. ``jax.jit`` then runs the same program data-parallel: XLA partitions the per-sample work and
all-reduces gradients, per-group curvature sums, SNNL sums and importance sums; the kernels hold
no sharding code (they only avoid pulling batches to the host). BatchNorm in training mode still
normalises with the statistics of the GLOBAL batch (XLA reduces over the sharded axis), so a
sharded step computes the same function as a single-device step; only the order of floating-point
sums differs.

Multi-host: ``fairjax.main`` calls :func:`initialize_distributed` (flags
``--coordinator_address``, ``--num_processes``, ``--process_id``) before anything touches a
device. Every process runs the same command; the input pipeline is a pure function of (seed, epoch
/ step), so every process builds the same GLOBAL host batch, and :meth:`DataParallel.shard_batch`
feeds only this process's rows (``jax.make_array_from_process_local_data``). Decoding the other
processes' rows is the cost of that simplicity (a per-process loader would avoid it).

With one device in one process, :attr:`DataParallel.active` is False and every helper here is the
identity, so single-device runs execute exactly the programs they did before.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any

DATA_AXIS = "data"


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, "")
  try:
    return int(value)
  except ValueError:
    return None


def detected_cluster() -> str | None:
  """Name of the multi-process launcher this process runs under, or None.

  Recognised (the environments ``jax.distributed.initialize()`` can configure itself from):
  SLURM with more than one task (``srun``), Open MPI with more than one rank (``mpirun``), and
  multi-host Cloud TPU slices (``TPU_WORKER_HOSTNAMES`` lists several hosts).
  """
  if (
    os.environ.get("SLURM_JOB_ID")
    and (_env_int("SLURM_STEP_NUM_TASKS") or _env_int("SLURM_NTASKS") or 1) > 1
  ):
    return "slurm"
  if (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1:
    return "openmpi"
  if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
    return "tpu"
  return None


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> bool:
  """Starts multi-host JAX (``jax.distributed.initialize``) when there is more than one process.

  Must run before any computation touches a device. With any argument given, they are passed
  on (jax fills the missing ones from the cluster environment where it can); with none, it
  initialises only under a detected launcher (:func:`detected_cluster`), so a plain single-host
  run is unaffected.

  Args:
    coordinator_address: ``host:port`` of process 0, reachable from every process.
    num_processes: total number of processes.
    process_id: this process's id in ``[0, num_processes)``.

  Returns:
    True if ``jax.distributed`` was initialised.

  Raises:
    ValueError: inconsistent arguments (message names the ``--`` flag).
  """
  given = any(v is not None for v in (coordinator_address, num_processes, process_id))
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"--num_processes={num_processes}: must be >= 1")
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id}: must be in [0, --num_processes={num_processes})")
  if not given:
    cluster = detected_cluster()
    if cluster is None:
      return False
    logging.info("multi-host: initialising jax.distributed from the %s environment", cluster)
    jax.distributed.initialize()
    return True
  if num_processes == 1 and coordinator_address is None:
    return False  # explicitly one process: nothing to coordinate
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )
  logging.info(
    "multi-host: process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def mesh_devices(num_devices: int = 0) -> list[jax.Device]:
  """The devices of the data mesh: the first ``num_devices`` local devices of every process.

  Args:
    num_devices: devices per process; 0 = all local devices.

  Raises:
    ValueError: ``num_devices`` negative or more than a process has (names
      ``config.parallel.num_devices``).
  """
  local = jax.local_device_count()
  if num_devices < 0 or num_devices > local:
    raise ValueError(
      f"config.parallel.num_devices={num_devices}: this process has {local} "
      f"{jax.default_backend()} device(s); use 0 (all) or a number in [1, {local}] "
      "(fix it with --config.parallel.num_devices=...)"
    )
  per_process = num_devices or local
  by_process: dict[int, list[jax.Device]] = {}
  for d in jax.devices():  # same order in every process, so every process builds the same mesh
    by_process.setdefault(d.process_index, []).append(d)
  return [
    d for p in sorted(by_process) for d in sorted(by_process[p], key=lambda d: d.id)[:per_process]
  ]


@dataclasses.dataclass(frozen=True)
class DataParallel:
  """A 1-D data mesh and the helpers that put state and batches on it.

  Attributes:
    mesh: the mesh, one axis :data:`DATA_AXIS`.
  """

  mesh: Mesh

  @property
  def num_devices(self) -> int:
    """Devices in the mesh, over all processes (a global batch is split this many ways)."""
    return int(self.mesh.size)

  @property
  def active(self) -> bool:
    """False for one device in one process: then every helper is the identity."""
    return self.num_devices > 1 or jax.process_count() > 1

  @property
  def replicated(self) -> NamedSharding:
    """Every device holds the whole array (params, optimizer state, masks, keys)."""
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def batch_sharding(self) -> NamedSharding:
    """Axis 0 split over the ``data`` axis; other axes whole."""
    return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

  def check_batch_size(self, batch_size: int, field: str) -> None:
    """Raises a ValueError naming ``config.<field>`` unless it splits evenly over the mesh."""
    if batch_size % self.num_devices:
      raise ValueError(
        f"config.{field}={batch_size}: must be divisible by the {self.num_devices} devices of "
        f"the data-parallel mesh (fix it with --config.{field}=..., or choose the device count "
        "with --config.parallel.num_devices=...)"
      )

  def replicate(self, tree: PyTree) -> PyTree:
    """``tree`` with every array leaf replicated on the mesh (identity when not :attr:`active`).

    Leaves already replicated on this mesh are returned as they are. Every process must pass the
    same values (they are not checked).
    """
    if not self.active:
      return tree
    sharding = self.replicated

    def put(x):
      if not isinstance(x, (jax.Array, np.ndarray, np.generic)):
        return x
      if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
        return x
      if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)  # a global array: XLA reshards it
      if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        # Typed keys have no numpy form: replicate their raw data and re-wrap it.
        return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
      host = np.asarray(x)
      return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)

  def _local_rows(self, size: int) -> slice:
    """The rows of a global batch of ``size`` that this process's devices hold."""
    index_map = self.batch_sharding.addressable_devices_indices_map((size,))
    starts = [idx[0].start or 0 for idx in index_map.values()]
    stops = [size if idx[0].stop is None else idx[0].stop for idx in index_map.values()]
    return slice(min(starts), max(stops))

  def shard_array(self, x: Any, field: str) -> jax.Array:
    """One GLOBAL host array ``[B, ...]`` -> a jax array split over the mesh along axis 0.

    Each process passes the same global array and feeds only its own rows
    (``jax.make_array_from_process_local_data``).
    """
    if isinstance(x, jax.Array) and (
      not x.is_fully_addressable or x.sharding.is_equivalent_to(self.batch_sharding, x.ndim)
    ):
      return x  # already global / already split over this mesh
    host = np.asarray(x)
    self.check_batch_size(host.shape[0], field)
    local = host[self._local_rows(host.shape[0])]
    return jax.make_array_from_process_local_data(self.batch_sharding, local, host.shape)

  def shard_batch(
    self,
    batch: Mapping[str, Any],
    field: str,
    *,
    keys: Sequence[str] | None = None,
    uneven: str = "error",
  ) -> dict[str, Any]:
    """A host batch dict -> the same dict with ``keys`` (default: all) split over the mesh.

    Args:
      batch: ``{"image": [B, ...], "label": [B], ...}``, the same GLOBAL batch in every process.
      field: the config field that set ``B``, named in the error when ``B`` does not split
        evenly (``"train.batch_size"``, ``"prune.batch_size"``...).
      keys: the entries to shard; the others stay host arrays.
      uneven: what to do when ``B`` is not divisible by the device count: ``"error"`` raises,
        ``"replicate"`` puts the batch whole on every device (a last partial batch, whose
        size no config controls).

    Returns:
      A new dict; the input when not :attr:`active`.
    """
    if not self.active:
      return dict(batch)
    keys = tuple(batch) if keys is None else tuple(keys)
    size = int(np.shape(batch[keys[0]])[0])
    if uneven == "replicate" and size % self.num_devices:
      return {k: (self.replicate(v) if k in keys else v) for k, v in batch.items()}
    return {k: (self.shard_array(v, field) if k in keys else v) for k, v in batch.items()}

  def shard_batches(
    self,
    batches: Iterable[Mapping[str, Any]],
    field: str,
    *,
    keys: Sequence[str] | None = None,
    uneven: str = "error",
  ) -> Iterator[dict[str, Any]]:
    """:meth:`shard_batch` over an iterable (lazily); the iterable itself when not active."""
    if not self.active:
      return iter(batches)
    return (self.shard_batch(b, field, keys=keys, uneven=uneven) for b in batches)

  def jit(
    self,
    fn: Callable[..., Any],
    *,
    batch_argnums: Sequence[int],
    num_args: int,
    out_batch: Any = False,
    donate_argnums: Sequence[int] = (),
  ) -> Callable[..., Any]:
    """``jax.jit(fn)`` with explicit shardings: batch arguments split, the rest replicated.

    Args:
      fn: a pure function of ``num_args`` positional arguments.
      batch_argnums: positions of the batch arguments (every leaf split along axis 0).
      num_args: number of positional arguments of ``fn``.
      out_batch: a pytree prefix of ``fn``'s output with True where the output is per-sample
        (split along axis 0) and False where it is replicated (e.g. ``(False, False)`` for
        ``(new_state, metrics)``); a single bool applies to the whole output.
      donate_argnums: as in ``jax.jit``.
    """
    ins = tuple(
      self.batch_sharding if i in batch_argnums else self.replicated for i in range(num_args)
    )
    outs = jax.tree.map(lambda b: self.batch_sharding if b else self.replicated, out_batch)
    return jax.jit(fn, in_shardings=ins, out_shardings=outs, donate_argnums=tuple(donate_argnums))


@functools.lru_cache(maxsize=8)
def data_parallel(num_devices: int = 0) -> DataParallel:
  """The :class:`DataParallel` over ``num_devices`` local devices per process (0 = all).

  Cached, so every caller with the same count shares one mesh (and jit caches keyed on it).
  """
  devices = mesh_devices(num_devices)
  return DataParallel(Mesh(np.asarray(devices, dtype=object), (DATA_AXIS,)))


def to_host(x: Any) -> np.ndarray:
  """A (possibly multi-host, possibly sharded) array as one numpy array with the global value.

  Single-process arrays are fetched with ``np.asarray``; an array spread over several processes
  is gathered with ``multihost_utils.process_allgather`` (every process must call this).
  """
  if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def is_main_process() -> bool:
  """True in process 0 (the one that writes results and plots in a multi-host run)."""
  return jax.process_index() == 0
