"""FairGRAPE's face protocols (configs/fairface.py, configs/utkface.py, configs/celeba.py) end to
end, in process: each config on its synthesised tree (tests/test_data_faces.py's, in the real
layout, with a corrupt image and a bad row or name) and a synthesised ImageNet checkpoint
(torchvision's layout as .safetensors, written with numpy), shrunk to 32 px, one dense epoch,
two FairGRAPE iterations and a two-phase final fine-tune. CelebA runs the multi-label task, and a
CelebA run interrupted after its first pruning step resumes to the same masks. The protocol
settings themselves are checked against the public code's values.

The runs use ResNet-18 instead of the protocols' ResNet-34 (``model.name`` is overridden like the
image size): the same torchvision ResNet module and checkpoint loader, at well under half the
XLA compile time, which is nearly all of a tiny run on a CPU. Loading a ResNet-34 checkpoint is
tested in tests/test_pretrained.py.
"""

from __future__ import annotations

import math
import os
import pathlib

import numpy as np
import pytest

from tests.test_data_faces import _celeba_tree, _fairface_tree, _utkface_tree

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(name: str, arg: str | None = None):
  import importlib.util

  spec = importlib.util.spec_from_file_location(
    f"test_configs_{name}", REPO / "configs" / f"{name}.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


# A torchvision ResNet (see the module docstring for why not the protocols' ResNet-34).
MODEL = "resnet18"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
  from safetensors.numpy import save_file

  from tests.test_pretrained import _random_state_dict

  path = tmp_path_factory.mktemp("weights") / f"{MODEL}-synthetic.safetensors"
  save_file(_random_state_dict(MODEL, seed=0), os.fspath(path))
  return os.fspath(path)


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict:
  root = tmp_path_factory.mktemp("face_trees")
  out = {}
  for name, make in (
    ("fairface", _fairface_tree),
    ("utkface", _utkface_tree),
    ("celeba", _celeba_tree),
  ):
    (root / name).mkdir()
    out[name] = (root / name, make(root / name))
  return out


def _tiny(config, manual_dir, weights, tfds_dir, *, full: bool):
  """The protocol config shrunk to seconds: 32 px, one dense epoch and two FairGRAPE
  iterations. ``full``: one retraining epoch per iteration and a two-phase final fine-tune of
  one epoch per phase; else no retraining and a one-epoch, one-phase fine-tune (fewer programs
  to compile; the CelebA run checks the rest)."""
  config.data.manual_dir, config.data.data_dir = str(manual_dir), str(tfds_dir)
  config.data.image_size = config.data.stored_image_size = 32
  config.model.name, config.model.pretrained = MODEL, weights
  config.train.epochs, config.train.batch_size, config.train.eval_batch_size = 1, 4, 8
  config.prune.num_batches, config.prune.max_steps = 1, 2
  # The smallest group-balanced batch: one sample per group (2, 4 or 7 groups).
  config.prune.batch_size = 4 if config.prune.batch_size % 7 else 7
  config.prune.retrain_epochs = 1 if full else 0
  config.prune.fairgrape.finetune_schedule = ((1, 1e-4), (1, 1e-5)) if full else ((1, 1e-4),)
  config.report.bootstrap_samples = 20
  return config


# The trees hold a few dozen images: larger held-out shares than the protocols' put both groups
# into every split (the run refuses a split without a group before training).
HELD_OUT = {
  "fairface": {"fairface_validation_fraction": 0.5},
  "utkface": {"split_fractions": (0.5, 0.25, 0.25)},
  "celeba": {},
}


def _expected_counts(records_by_split, names):
  return {
    s: {n: sum(int(r == g) for r in records_by_split[s]) for g, n in enumerate(names)}
    for s in ("train", "validation", "test")
  }


def _check_run(results, data_groups, group_names, keep_per_iter, full):
  from fairjax import report

  report.validate_results(results)
  assert results["method"] == "fairgrape" and results["pretrained"]["model"] == MODEL
  assert results["dataset"]["group_names"] == list(group_names)
  assert results["dataset"]["group_counts"] == _expected_counts(data_groups, group_names)
  assert set(results["pruned"]["group_accuracy"]) == set(group_names)
  # FairGRAPE's keep-based schedule, reported at the last iteration (prune.report_step="last").
  assert [s["step"] for s in results["steps"]] == [0, 1, 2] and results["chosen_step"] == 2
  assert results["steps"][1]["sparsity"] == pytest.approx(1 - keep_per_iter, abs=0.01)
  assert results["steps"][2]["sparsity"] == pytest.approx(1 - keep_per_iter**2, abs=0.01)
  ft = results["final_finetune"]
  phases = [[1, 1e-4], [1, 1e-5]] if full else [[1, 1e-4]]
  assert ft["schedule"] == "phases" and ft["phases"] == phases
  assert ft["epochs"] == len(phases) and [h["epoch"] for h in ft["history"]] == list(
    range(len(phases))
  )
  assert results["pruned"]["sparsity"] == results["steps"][2]["sparsity"]


def _ids(data, split):
  return [data.sources[split][i]["image_id"].decode() for i in range(len(data.sources[split]))]


def _groups_of_tree(name, tree, data):
  """Group ids per split counted from the synthesised tree itself (not from the build's
  labels): FairFace's and UTKFace's gender tasks have the races as groups, CelebA Male."""
  from fairjax.data import faces

  out = {}
  if name == "fairface":
    # The build's split of the training CSV decides train / validation; the official val CSV
    # is the test split. Every decodable row is built.
    rows = tree["rows"]
    for split in ("train", "validation", "test"):
      out[split] = [faces.FAIRFACE_RACES.index(rows[i]["race"]) for i in _ids(data, split)]
    assert sum(len(v) for v in out.values()) == len(set(rows) - tree["bad"])
    return out
  if name == "utkface":
    built = []
    for split in ("train", "validation", "test"):
      ids = _ids(data, split)
      out[split] = [int(i.split("_")[2]) for i in ids]  # the race field of the file name
      built += ids
    # Every well-named, decodable file of the 4 races is built; "Others" (race 4) is not.
    good = [n for n in tree["good"] if n != tree["corrupt"] and int(n.split("_")[2]) != 4]
    assert sorted(built) == sorted(good)
    return out
  male = faces.CELEBA_ATTRIBUTES.index("Male")
  for split in ("train", "validation", "test"):
    out[split] = [
      0 if tree["values"][image][male] == 1 else 1
      for image, s in tree["partition"].items()
      if s == split and image not in tree["bad"]
    ]
  return out


# (config file, its argument): FairFace and UTKFace run their gender tasks, whose 7 and 4 race
# groups are the many-group settings, and whose two classes give both runs the same programs.
RUNS = {
  "fairface": ("fairface", "gender"),
  "utkface": ("utkface", "gender"),
  "celeba": ("celeba", None),
}


def _run(name, trees, weights, workdir, tfds_dir):
  from fairjax import pipeline

  manual, _ = trees[name]
  config = _tiny(_config(*RUNS[name]), manual, weights, tfds_dir, full=name == "celeba")
  for key, value in HELD_OUT[name].items():
    config.data[key] = value
  return config, pipeline.run(config, str(workdir))


@pytest.fixture(scope="module")
def celeba_run(trees, weights, tmp_path_factory):
  """The CelebA multi-label protocol run, shared by its test and the resume test."""
  root = tmp_path_factory.mktemp("celeba_run")
  config, results = _run("celeba", trees, weights, root / "run", root / "tfds")
  return config, results, root


@pytest.mark.parametrize("name", ["fairface", "utkface", "celeba"])
def test_face_protocol_runs_end_to_end(name, trees, weights, tmp_path, request):
  from fairjax.data import load_dataset

  if name == "celeba":
    config, results, root = request.getfixturevalue("celeba_run")
    workdir = root / "run"
  else:
    workdir = tmp_path / "run"
    config, results = _run(name, trees, weights, workdir, tmp_path / "tfds")
  data = load_dataset(config.data, workdir=str(workdir))
  groups = _groups_of_tree(name, trees[name][1], data)
  _check_run(
    results, groups, data.group_names, config.prune.fairgrape.keep_per_iter, full=name == "celeba"
  )
  if name == "celeba":  # the multi-label task: 39 sigmoid outputs, metrics per attribute
    assert results["dataset"]["task"] == "multilabel" and results["dataset"]["num_classes"] == 39
    assert len(results["pruned"]["attribute_accuracy"]) == 39
    assert results["bootstrap"]["task"] == "multilabel"
    assert "Male" not in results["pruned"]["attribute_accuracy"]
    assert results["pretrained"]["initialised"] == ["params/fc/bias", "params/fc/kernel"]
  else:  # the gender tasks: every race a group, FairGRAPE's importance per race
    assert results["dataset"]["task"] == "multiclass"
    assert len(data.group_names) == (7 if name == "fairface" else 4)
    assert (
      results["privileged_group"] is None
      and len(results["privileged_groups"]) == len(data.group_names) - 1
    )


def test_killed_celeba_multilabel_run_resumes_to_identical_masks(celeba_run, monkeypatch):
  """A run stopped right after pruning step 1 was checkpointed (the process dies there, as a
  kill would leave it) resumes from that checkpoint and ends exactly as the uninterrupted
  run."""
  import jax

  from fairjax import checkpoint, pipeline
  from tests.cli_helpers import restore_step

  config, reference, root = celeba_run
  workdir = root / "killed"

  class Killed(BaseException):
    pass

  save = checkpoint.CheckpointStore.save

  def save_then_die(self, step, *args, **kwargs):
    save(self, step, *args, **kwargs)
    if os.path.basename(os.fspath(self.directory)) == checkpoint.PRUNE_STORE and step == 1:
      raise Killed

  monkeypatch.setattr(checkpoint.CheckpointStore, "save", save_then_die)
  with pytest.raises(Killed):
    pipeline.run(config, str(workdir))
  assert not (workdir / "results.json").exists()
  assert [
    int(p.name) for p in (workdir / "checkpoints" / "prune").iterdir() if p.name.isdigit()
  ] == [1]
  monkeypatch.setattr(checkpoint.CheckpointStore, "save", save)
  resumed = pipeline.run(config, str(workdir))
  for key in ("dense", "pruned", "steps", "chosen_step", "final_finetune", "bootstrap"):
    assert resumed[key] == reference[key], key
  for step in (1, 2):
    a = restore_step(str(root / "run"), "prune", step, items=("mask",))["mask"]
    b = restore_step(str(workdir), "prune", step, items=("mask",))["mask"]
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_protocol_settings_follow_fairgrapes_code(tmp_path):
  from fairjax.config import validate_config

  weights = tmp_path / "w.pth"
  weights.write_bytes(b"x")
  for name, keep, phases, task in (
    ("fairface", 0.9, ((13, 1e-4), (3, 1e-5), (3, 1e-6)), "race"),
    ("utkface", 0.975, ((13, 1e-4), (3, 1e-5), (3, 1e-6)), "race"),
    ("celeba", 0.9, ((8, 1e-4), (1, 1e-5), (1, 1e-6)), "multilabel"),
  ):
    c = _config(name)
    c.data.manual_dir, c.model.pretrained = "/data", str(weights)
    validate_config(c)
    assert (c.model.name, c.model.require_pretrained, c.data.image_size) == ("resnet34", True, 224)
    assert c.data.task == task and c.prune.method == "fairgrape"
    g = c.prune.fairgrape
    assert g.keep_per_iter == keep and tuple(map(tuple, g.finetune_schedule)) == phases
    assert (g.retrain_epochs, g.retrain_learning_rate, g.finetune_optimizer) == (3, 1e-5, "adam")
    assert (c.train.optimizer, c.train.learning_rate, c.train.batch_size) == ("adam", 1e-4, 64)
    assert c.prune.batch_size == 64 and c.prune.scope == "layer"
    assert c.prune.max_sparsity == 0.9 and c.prune.report_step == "last"
    # Enough iterations for 99% (the schedule itself ends at max_sparsity).
    assert keep**c.prune.max_steps <= 0.01
  gender = _config("fairface", "gender")
  assert gender.data.task == "gender" and gender.prune.batch_size == 63  # 7 races x 9
  assert _config("utkface", "gender").prune.batch_size == 64  # 4 races x 16
  compare = _config("compare", "fairface:gender")
  assert compare.data.name == "fairface" and compare.prune.batch_size == 63
  assert 0.99 in compare.compare.sparsities and 0.9 in compare.compare.sparsities
  assert compare.prune.max_steps == math.ceil(math.log(0.1) / math.log(0.9))
  assert _config("compare", "celeba").data.task == "multilabel"
  assert _config("compare").data.name == "demo"
  with pytest.raises(ValueError, match="configs/compare.py:imagenet"):
    _config("compare", "imagenet")
