"""Shared fixtures: scoped float64, and a check that no test module leaves float64 switched on."""

import jax
import jax.numpy as jnp
import pytest


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
      "jax_enable_x64 process-wide (import time or a test); use the float64 fixture instead")
  yield
  assert not _x64_on(), (
      f"{request.module.__name__} left jax_enable_x64 switched on; use the float64 fixture")
