"""Config files: every configs/*.py loads and validates; derived configs follow the demo."""

from __future__ import annotations

import glob
import os
import types

import pytest

from fairjax.config import (
  DEPRECATED_KEYS,
  ConfigError,
  base_config,
  deprecated_overrides,
  load_config_file,
  validate_config,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")


@pytest.mark.parametrize(
  "path", sorted(glob.glob(os.path.join(CONFIGS, "*.py"))), ids=os.path.basename
)
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


def _get(config, key: str):
  for part in key.split("."):
    config = config[part]
  return config


@pytest.mark.parametrize("old,new", sorted(DEPRECATED_KEYS.items()))
def test_deprecated_names_are_the_same_field(old, new):
  """Each old name reads and writes its new key (one field), from the command line too."""
  from tests.cli_helpers import parse_config

  default = _get(base_config(), new)
  # A value of the field's type different from the default, set through the OLD name.
  value = {int: 3, float: 0.5, str: "global" if "scope" in new else "sgd", bool: True}.get(
    type(default), 7
  )
  if new == "prune.snnl.layers":
    value = ("conv1",)
  if new == "prune.snnl.temperature":
    value = 2.0
  arg = f"--config.{old}={value!r}" if isinstance(value, tuple) else f"--config.{old}={value}"
  parsed = parse_config(arg)
  assert _get(parsed, new) == _get(parsed, old) == value
  assert deprecated_overrides(["--config.train.epochs=1", arg]) == [(old, new)]


def test_retrain_epochs_is_one_key_with_method_defaults():
  """``prune.retrain_epochs``: unset, each method's default (0 for the score methods, 1 for
  FairGRAPE and SNNL); set, the same value for every method."""
  from fairjax.pruning import get_method, method_names

  config = base_config()
  assert config.prune.retrain_epochs is None
  ctx = types.SimpleNamespace(config=config)
  defaults = {name: get_method(name).retrain_epochs(ctx) for name in method_names()}
  assert defaults["fairgrape"] == defaults["snnl_channels"] == 1
  assert all(defaults[m] == 0 for m in ("fairprune", "magnitude", "random", "snip", "obd"))
  config.prune.retrain_epochs = 2
  assert {get_method(name).retrain_epochs(ctx) for name in method_names()} == {2}
  config.prune.retrain_epochs = 0  # explicit 0 wins over a method's default of 1
  assert get_method("fairgrape").retrain_epochs(ctx) == 0


def test_bad_retrain_epochs_names_every_name_a_user_may_have_set():
  config = base_config()
  config.prune.snnl.finetune_epochs = -1  # an old name of prune.retrain_epochs
  with pytest.raises(ConfigError) as e:
    validate_config(config)
  message = str(e.value)
  assert message.startswith("config.prune.retrain_epochs=-1 (deprecated names: ")
  for old in (
    "prune.finetune_epochs",
    "prune.snnl.finetune_epochs",
    "prune.fairgrape.retrain_epochs",
    "prune.fairgrape_retrain_epochs",
  ):
    assert f"config.{old}=-1" in message


def test_command_line_warns_for_deprecated_names(tmp_path, caplog):
  """``--show_config`` with an old name on the command line and in a config file: one warning
  each, naming the new key; the value reaches the new key."""
  from absl import flags

  from fairjax import main

  cfg = tmp_path / "old.py"
  cfg.write_text(
    "import os\nfrom fairjax.config import load_config_file\n\n\n"
    "def get_config():\n"
    f"  config = load_config_file({os.path.join(CONFIGS, 'demo.py')!r})\n"
    "  config.prune.fairgrape_keep_per_iter = 0.8\n  return config\n"
  )
  inv = main.parse_command_line(
    ["fairjax.main", f"--config={cfg}", "--config.prune.finetune_epochs=2", "--show_config"],
    flags.FlagValues(),
  )
  assert inv.config.prune.retrain_epochs == 2 and inv.config.prune.fairgrape.keep_per_iter == 0.8
  with caplog.at_level("WARNING"):
    main.execute(inv)
  warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
  assert "--config.prune.finetune_epochs is deprecated" in warned
  assert "use --config.prune.retrain_epochs" in warned
  assert "sets config.prune.fairgrape_keep_per_iter, a deprecated name" in warned
  assert "use config.prune.fairgrape.keep_per_iter" in warned
