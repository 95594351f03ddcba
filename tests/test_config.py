"""Config files: every configs/*.py loads and validates; derived configs follow the demo."""

from __future__ import annotations

import glob
import os

import pytest

from fairjax.config import ConfigError, load_config_file, validate_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "*.py"))),
                         ids=os.path.basename)
def test_every_config_file_loads_and_validates(path, tmp_path):
  config = load_config_file(path)
  if config.data.name != "demo":
    # Real datasets need the user's folder; that is the only field left to fill in.
    with pytest.raises(ConfigError, match="config.data.manual_dir=''"):
      validate_config(config)
    config.data.manual_dir = str(tmp_path)
  if config.model.require_pretrained:
    # Protocol configs start from ImageNet weights: the weights file is the other field.
    with pytest.raises(ConfigError, match="config.model.pretrained=''"):
      validate_config(config)
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"")
    config.model.pretrained = str(weights)
  validate_config(config)


def test_derived_configs_keep_the_demo_settings(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # the derived configs find demo.py from any working directory
  demo = load_config_file(os.path.join(CONFIGS, "demo.py"))
  compare = load_config_file(os.path.join(CONFIGS, "compare.py"))
  vgg = load_config_file(os.path.join(CONFIGS, "demo_vgg.py"))
  assert compare.data.to_dict() == demo.data.to_dict() == vgg.data.to_dict()
  assert compare.model.to_dict() == demo.model.to_dict()
  # The comparison's dense model is trained exactly like the demo's (to convergence).
  assert compare.train.to_dict() == demo.train.to_dict() == vgg.train.to_dict()
  assert demo.train.epochs == 30
  assert vgg.model.name == "vgg11" and demo.model.name == "small_cnn"
  assert compare.prune.scope == demo.prune.scope == "layer"
  assert tuple(compare.prune.exclude_layers) == tuple(demo.prune.exclude_layers)
  assert compare.prune.max_steps == 4 and compare.prune.finetune_epochs == 1
  assert "compare" in compare and "compare" not in demo


def test_load_config_file_errors(tmp_path):
  with pytest.raises(ConfigError, match="does not exist"):
    load_config_file(tmp_path / "missing.py")
  empty = tmp_path / "empty.py"
  empty.write_text("X = 1\n")
  with pytest.raises(ConfigError, match="no get_config"):
    load_config_file(empty)
