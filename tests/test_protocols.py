"""The papers' protocol configs (configs/isic.py, configs/fitzpatrick17k.py) and a dense model that
starts from pretrained weights, end to end through the CLI.

The pretrained checkpoint is synthesised: a torchvision-layout VGG-11 state_dict with random
weights, saved as .safetensors with numpy (no torch), exactly as a user's converted download
would be. The ISIC tree uses real metadata rows (../shared/data) with synthesised JPEGs.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from tests.cli_helpers import (
  assert_cli_error,
  config_error,
  load_json,
  parse_config,
  run_cli,
  run_in_process_ok,
)
from tests.csv_helpers import read_csv, write_csv

_SHARED = pathlib.Path(
  os.environ.get(
    "FAIRJAX_SHARED_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
  )
)
ISIC_DIR = _SHARED / "isic2019"

# torchvision's vgg11: conv positions in `features` and their output channels, then the
# classifier's three Linear layers (Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear).
_VGG11_CONVS = ((0, 64), (3, 128), (6, 256), (8, 256), (11, 512), (13, 512), (16, 512), (18, 512))


def vgg11_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
  """A torchvision ``vgg11`` state_dict (key names and shapes) with He-scaled random weights."""
  rng = np.random.default_rng(seed)
  out, cin = {}, 3
  for index, cout in _VGG11_CONVS:
    std = np.sqrt(2.0 / (cin * 9))
    out[f"features.{index}.weight"] = (rng.standard_normal((cout, cin, 3, 3)) * std).astype(
      np.float32
    )
    out[f"features.{index}.bias"] = (rng.standard_normal(cout) * 0.01).astype(np.float32)
    cin = cout
  for index, (fin, fout) in zip((0, 3, 6), ((512 * 7 * 7, 4096), (4096, 4096), (4096, 1000))):
    std = np.sqrt(2.0 / fin)
    out[f"classifier.{index}.weight"] = rng.standard_normal((fout, fin), np.float32) * np.float32(
      std
    )
    out[f"classifier.{index}.bias"] = np.zeros(fout, np.float32)
  return out


@pytest.fixture(scope="module")
def vgg11_safetensors(tmp_path_factory) -> pathlib.Path:
  from safetensors.numpy import save_file

  path = tmp_path_factory.mktemp("weights") / "vgg11-synthetic.safetensors"
  save_file(vgg11_state_dict(), os.fspath(path))
  return path


@pytest.fixture(scope="module")
def isic_manual_dir(tmp_path_factory) -> pathlib.Path:
  """80 real ISIC 2019 metadata rows with a known sex and synthesised 40x30 JPEGs."""
  if not (ISIC_DIR / "ISIC_2019_Training_GroundTruth.csv").exists():
    pytest.skip("real metadata CSVs not found (set FAIRJAX_SHARED_DATA)")
  gt_header, gt = read_csv(ISIC_DIR / "ISIC_2019_Training_GroundTruth.csv")
  meta_header, meta = read_csv(ISIC_DIR / "ISIC_2019_Training_Metadata.csv")
  pick = [i for i, m in enumerate(meta) if m["sex"]][:80]
  manual = tmp_path_factory.mktemp("isic") / "manual"
  (manual / "ISIC_2019_Training_Input").mkdir(parents=True)
  write_csv(manual / "ISIC_2019_Training_GroundTruth.csv", gt_header, [gt[i] for i in pick])
  write_csv(manual / "ISIC_2019_Training_Metadata.csv", meta_header, [meta[i] for i in pick])
  rng = np.random.default_rng(0)
  for i in pick:
    pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(
      manual / "ISIC_2019_Training_Input" / f"{meta[i]['image']}.jpg", quality=90
    )
  return manual


# A tiny ISIC protocol run: 32x32 inputs (VGG-11's five pools leave 1x1, so the adaptive pool is
# folded into fc0), one dense epoch, one FairPrune step. Everything else is configs/isic.py.
TINY_ISIC = [
  "--config.data.image_size=32",
  "--config.data.stored_image_size=32",
  "--config.train.epochs=1",
  "--config.train.batch_size=8",
  "--config.train.eval_batch_size=16",
  "--config.prune.num_batches=1",
  "--config.prune.batch_size=8",
  "--config.prune.max_steps=1",
  "--config.prune.step_fraction=0.05",
  "--config.prune.max_accuracy_drop=1.0",
  "--config.report.plots=False",
]


def test_isic_protocol_runs_from_pretrained_weights(tmp_path, isic_manual_dir, vgg11_safetensors):
  """One run of configs/isic.py from the synthesised checkpoint. A learning rate of 1e-30 keeps
  the dense model equal to what was loaded, so the loaded weights can be checked too."""
  import jax

  from fairjax.models import pretrained
  from tests.cli_helpers import restore_step

  workdir = tmp_path / "run"
  # In process (the CLI's own parse and execute); test_bad_pretrained_file_is_one_line runs
  # this config as a real subprocess.
  res = run_in_process_ok(
    str(workdir),
    *TINY_ISIC,
    "--config.train.learning_rate=1e-30",
    f"--config.data.manual_dir={isic_manual_dir}",
    f"--config.model.pretrained={vgg11_safetensors}",
    config="configs/isic.py",
  )
  results = load_json(str(workdir))
  assert results["method"] == "fairprune" and results["dataset"]["name"] == "isic2019"
  pre = results["pretrained"]
  assert pre["format"] == "safetensors" and pre["model"] == "vgg11"
  assert pre["path"] == os.path.abspath(vgg11_safetensors)
  # ISIC has 8 classes, the checkpoint 1000: only the last classifier layer is re-initialised.
  assert sorted(pre["initialised"]) == ["params/fc2/bias", "params/fc2/kernel"]
  assert "params/conv0/kernel" in pre["loaded"] and "params/fc0/kernel" in pre["loaded"]
  assert len(pre["loaded"]) == 2 * 8 + 2 * 2  # 8 convs and fc0, fc1: kernel and bias each
  assert "initialised: params/fc2" in res.stderr
  ref = results["published_reference"]
  assert ref["published"] == {"macro_f1": 0.7862, "eodd": 0.0209}
  assert ref["convention"] == "mean" and results["fairness_convention"] == "sum"
  assert ref["yours"]["macro_f1"] == pytest.approx(ref["difference"]["macro_f1"] + 0.7862)
  assert "published 0.7862" in res.stderr
  assert (workdir / "dense_reference.json").exists() and (workdir / "pretrained.json").exists()

  # The dense model started from the file (fc0 folded from 7x7 to the 1x1 map of 32x32 inputs).
  expected = pretrained.load(
    "vgg11", vgg11_safetensors, num_classes=8, rng=jax.random.key(2), image_size=32
  ).variables
  items = restore_step(str(workdir), "dense", 0, items=("params",))
  for layer in ("conv0", "conv7", "fc0", "fc1", "fc2"):
    np.testing.assert_allclose(
      np.asarray(items["params"][layer]["kernel"]),
      np.asarray(expected["params"][layer]["kernel"]),
      rtol=0,
      atol=1e-6,
    )


def test_bad_pretrained_file_is_one_line(tmp_path, isic_manual_dir):
  bad = tmp_path / "broken.safetensors"
  bad.write_bytes(b"not a safetensors file at all")
  res = run_cli(
    str(tmp_path / "run"),
    *TINY_ISIC,
    f"--config.data.manual_dir={isic_manual_dir}",
    f"--config.model.pretrained={bad}",
    config="configs/isic.py",
    timeout=600,
  )
  assert_cli_error(res, str(bad))
  assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize(
  "config_file,weights",
  [("configs/isic.py", "vgg11-8a719046.pth"), ("configs/fitzpatrick17k.py", "vgg11-8a719046.pth")],
)
def test_protocol_configs_require_pretrained_weights(config_file, weights):
  message = config_error("--config.data.manual_dir=/data", config=config_file)
  assert "config.model.pretrained=''" in message and weights.split("-")[0] in message
  assert "require_pretrained=False" in message


def test_pretrained_config_errors(tmp_path):
  missing = tmp_path / "nope.pth"
  assert "is not a file" in config_error(
    f"--config.model.pretrained={missing}",
    "--config.data.manual_dir=/data",
    config="configs/isic.py",
  )
  weights = tmp_path / "w.safetensors"
  weights.write_bytes(b"x")
  message = config_error(f"--config.model.pretrained={weights}", "--config.model.name=small_cnn")
  assert "config.model.name='small_cnn'" in message and "vgg11" in message
  message = config_error(
    f"--config.model.pretrained={weights}",
    "--config.model.name=vgg11",
    "--config.data.imagenet_normalization=False",
  )
  assert "config.data.imagenet_normalization=False" in message


def test_protocol_configs_follow_the_papers(tmp_path):
  from fairjax.config import validate_config

  weights = tmp_path / "w.pth"
  weights.write_bytes(b"x")
  isic = parse_config(
    "--config.data.manual_dir=/data",
    f"--config.model.pretrained={weights}",
    config="configs/isic.py",
  )
  validate_config(isic)
  assert (isic.model.name, isic.prune.method, isic.prune.finetune_epochs) == (
    "vgg11",
    "fairprune",
    0,
  )
  assert isic.data.sensitive_attribute == "sex" and isic.model.kwargs.classifier_width == 4096
  fitz = parse_config(
    "--config.data.manual_dir=/data",
    f"--config.model.pretrained={weights}",
    config="configs/fitzpatrick17k.py",
  )
  validate_config(fitz)
  assert fitz.model.name == "vgg11" and fitz.prune.method == "snnl_channels"
  assert tuple(fitz.prune.snnl_layers) == ("conv7",) and fitz.prune.batch_size == 128
  t = fitz.train
  assert (t.optimizer, t.learning_rate, t.momentum, t.nesterov, t.weight_decay) == (
    "sgd",
    0.01,
    0.9,
    True,
    1e-5,
  )
  assert fitz.data.sampling == "class_balanced" and fitz.fairness_convention == "mean"


def test_unit_normalisation_option():
  from fairjax.data.pipeline import normalize_images

  pixels = np.array([[[0, 128, 255]]], np.uint8)
  np.testing.assert_allclose(normalize_images(pixels, False), pixels / 255.0, rtol=1e-6)
  imagenet = normalize_images(pixels)
  np.testing.assert_allclose(imagenet[0, 0, 0], (0 / 255 - 0.485) / 0.229, rtol=1e-5)
