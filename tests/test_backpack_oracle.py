"""External oracle: BackPACK's DiagGGNExact (PyTorch) vs fairjax's per-group exact diagonal GGN.

design.md section 1: on the same weights and samples, BackPACK run once per group (that group's
samples only, ``CrossEntropyLoss(reduction="mean")``, which BackPACK scales by ``1/N_g``) must
equal ``per_group_diag(..., method="exact")`` to float32 precision. Skipped without the bench
extra (torch + backpack-for-pytorch).
"""

import copy
import os
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
backpack = pytest.importorskip("backpack")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

# The mirror lives in bench/, which is not an installed package: import it from the repo root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import torch_mirror  # noqa: E402
from fairjax import curvature  # noqa: E402
from fairjax.models import get_model  # noqa: E402

NUM_CLASSES = 4
NUM_GROUPS = 2
BATCH = 12
IMAGE_HW = (16, 16)
MODEL_KWARGS = dict(width=4, hidden=16)


@pytest.fixture(scope="module")
def setup():
  model = get_model("small_cnn", num_classes=NUM_CLASSES, **MODEL_KWARGS)
  rs = np.random.RandomState(0)
  images = rs.randn(BATCH, *IMAGE_HW, 3).astype(np.float32)
  labels = rs.randint(0, NUM_CLASSES, BATCH).astype(np.int32)
  groups = np.array([0] * 7 + [1] * 5, np.int32)
  rs.shuffle(groups)
  variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), jnp.asarray(images[:1]))
  tmodel = torch_mirror.small_cnn(NUM_CLASSES, IMAGE_HW, **MODEL_KWARGS)
  torch_mirror.load_flax_params(tmodel, variables["params"])
  return model, variables, tmodel, images, labels, groups


def test_mirror_logits_match(setup):
  model, variables, tmodel, images, _, _ = setup
  expected = np.asarray(model.apply(variables, images))
  with torch.no_grad():
    got = tmodel(torch_mirror.to_nchw(images)).numpy()
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def _backpack_exact_per_group(tmodel, images, labels, groups):
  from backpack import backpack as backpack_ctx
  from backpack import extend
  from backpack.extensions import DiagGGNExact

  model = extend(copy.deepcopy(tmodel))  # extend() adds hooks in place
  loss_fn = extend(torch.nn.CrossEntropyLoss(reduction="mean"))
  x_all = torch_mirror.to_nchw(images)
  y_all = torch.from_numpy(labels.astype(np.int64))
  per_group = {name: [] for name, _ in model.named_parameters()}
  for g in range(NUM_GROUPS):
    idx = torch.from_numpy(np.flatnonzero(groups == g))
    model.zero_grad()
    loss = loss_fn(model(x_all[idx]), y_all[idx])
    with backpack_ctx(DiagGGNExact()), warnings.catch_warnings():
      # torch warns that the full backward hooks fire although the images need no gradient.
      warnings.simplefilter("ignore", UserWarning)
      loss.backward()
    for name, p in model.named_parameters():
      per_group[name].append(p.diag_ggn_exact.detach().clone())
  stacked = {name: torch.stack(v) for name, v in per_group.items()}
  return torch_mirror.to_flax_layout(model, stacked, group_axis=True)


def test_diag_ggn_exact_matches_backpack(setup):
  model, variables, tmodel, images, labels, groups = setup
  expected = _backpack_exact_per_group(tmodel, images, labels, groups)
  got = curvature.per_group_diag(
    model,
    variables,
    jnp.asarray(images),
    jnp.asarray(labels),
    jnp.asarray(groups),
    num_groups=NUM_GROUPS,
    method="exact",
  )
  assert set(expected) == set(got)
  for module_name, leaves in expected.items():
    assert set(leaves) == set(got[module_name])
    for leaf, want in leaves.items():
      have = np.asarray(got[module_name][leaf])
      assert have.shape == want.shape, (module_name, leaf)
      for g in range(NUM_GROUPS):
        scale = np.abs(want[g]).max()
        assert scale > 0, (module_name, leaf, g)
        rel = np.abs(have[g] - want[g]).max() / scale
        assert rel < 1e-4, f"{module_name}/{leaf} group {g}: max rel err {rel:.2e}"
