"""Shared test set-up: one JAX compilation cache for the session, scoped float64, and a check
that no test module leaves float64 switched on."""

import atexit
import ctypes
import ctypes.util
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import pytest

# Freed memory stays in the process (glibc malloc: no mmap'd chunks, no trimming), for this
# process (mallopt) and every worker and CLI subprocess it starts (the environment). The tests
# allocate and free hundreds of MB per run (VGG-11 checkpoints, ResNet-18 FairGRAPE tables);
# kept in the heap, a worker's next big array reuses pages it has already touched instead of
# faulting in new ones. tests/test_pretrained.py alone, alternating runs, with numpy's huge pages
# (below) still on: 88-93 s without this, 68-77 s with it; with them off: 70-73 s (glibc's
# default sizes set explicitly) vs 56-60 s. Results do not depend on where memory comes from.
# Not glibc (macOS, musl): no effect.
_KEEP_FREED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
for _name, _value in _KEEP_FREED.items():
  os.environ.setdefault(_name, _value)
# No transparent huge pages for numpy's large arrays (NumPy's NUMPY_MADVISE_HUGEPAGE): numpy
# asks for them by default (madvise), and with the kernel's THP defrag set to "madvise", as on
# the project's CI machines, every first touch of such an array waits for the kernel to compact
# memory into 2 MB pages. A fresh 1 GiB np.ones took 11.5 and 13.2 s with them and 0.73 and
# 0.59 s without (separate processes, alternating, 25 s apart); tests/test_pretrained.py took
# 74.4 and 75.6 s with them, 60.8 and 53.6 s without (system time 31-32 s -> 15-18 s). The
# variable reaches the workers and CLI subprocesses; numpy is already imported here, so this
# process is switched by numpy's own (private) setter. Results do not depend on the page size.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
try:
  import numpy as _np

  _np._core.multiarray._set_madvise_hugepage(os.environ["NUMPY_MADVISE_HUGEPAGE"] != "0")
except (ImportError, AttributeError):
  pass
try:
  _libc = ctypes.CDLL(ctypes.util.find_library("c"))
  _libc.mallopt(-4, int(os.environ["MALLOC_MMAP_MAX_"]))  # M_MMAP_MAX
  _libc.mallopt(-1, int(os.environ["MALLOC_TRIM_THRESHOLD_"]))  # M_TRIM_THRESHOLD
except (OSError, AttributeError, TypeError, ValueError):
  pass

# One persistent compilation cache for the whole test session, in a fresh temporary folder
# (removed at exit), shared by this process and every CLI / multi-device subprocess a test starts
# (they inherit the environment). Most of a tiny CLI run is compiling the same train, eval and
# scoring steps as the run before it; with the cache, later runs load them instead. Results do
# not change: an entry is XLA's executable for the same program and options. A developer's own
# JAX_COMPILATION_CACHE_DIR is kept.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  _CACHE = tempfile.mkdtemp(prefix="fairjax-tests-jax-cache-")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  # Everything is cached: the tiny test programs compile in well under JAX's 1 s default.
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
  "jax_persistent_cache_min_compile_time_secs",
  float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 1.0)),
)
jax.config.update(
  "jax_persistent_cache_min_entry_size_bytes",
  int(os.environ.get("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", 0)),
)


def _x64_on():
  return bool(jax.config.jax_enable_x64) or jnp.asarray(1.0).dtype == jnp.float64


@pytest.fixture(scope="module")
def float64():
  """float64 for one test module, restored afterwards (``pytestmark = pytest.mark.usefixtures(
  "float64")``). Module scope so that module-scoped fixtures of the module build float64 arrays
  too; it is set up before them because usefixtures names come first among a scope's fixtures."""
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="module", autouse=True)
def _no_module_leaves_float64_on(request):
  """Every module starts and ends in the default float32 mode: a module that switches
  ``jax_enable_x64`` at import time (collection imports every module first) fails at its first
  test, and one that leaves it on fails at its last (as a teardown error)."""
  assert not _x64_on(), (
    f"float64 is switched on at the start of {request.module.__name__}: a test module switched "
    "jax_enable_x64 process-wide (import time or a test); use the float64 fixture instead"
  )
  yield
  assert not _x64_on(), (
    f"{request.module.__name__} left jax_enable_x64 switched on; use the float64 fixture"
  )


# The longest test files, longest first (durations of a full run, `--durations=0`). With
# `-n 2 --dist loadfile` a file is handed to whichever worker is free, in collection order; a
# long file collected last leaves the other worker idle at the end, so these go first.
_LONGEST_FILES = (
  "test_face_protocols.py",
  "test_parallel.py",
  "test_curvature_grouped.py",
  "test_curvature.py",
  "test_protocols.py",
  "test_pretrained.py",
  "test_docs.py",
  "test_models.py",
  "test_main.py",
  "test_curvature_transformer.py",
  "test_notebook.py",
  "test_curvature_budget.py",
  "test_snnl_cli.py",
  "test_nnx.py",
)


def pytest_collection_modifyitems(session, config, items):
  rank = {name: i for i, name in enumerate(_LONGEST_FILES)}
  # A stable sort: within a file, and among the other files, the order is unchanged.
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
