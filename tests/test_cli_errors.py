"""Every bad command-line input: one ``fairjax: error:`` line, exit code 2, nothing lost.

One table (``CASES``) of bad inputs: flags, config values, config files, directories, and ISIC /
Fitzpatrick-17k folders synthesised from the real metadata CSVs (../shared/data, or
$FAIRJAX_SHARED_DATA; a few rows with tiny generated JPEGs). Each case must end in a
:class:`fairjax.main.CliError` whose line (what the CLI prints last on stderr before exiting
with code 2) is one line starting ``fairjax: error:`` and contains the case's needles (the
flag / field / path and how to fix it), and must leave no ``results.json`` and no checkpoints.

Most cases run in-process through :func:`fairjax.main.run_command` (the CLI's own code path on
a fresh ``absl.flags.FlagValues``); the cases marked ``cli`` also run as real subprocesses,
proving the end-to-end contract (exit code, last stderr line, no traceback).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
from absl import flags
from PIL import Image

from fairjax import main as cli
from tests.cli_helpers import REPO, TINY, assert_cli_error, cli_cmd
from tests.csv_helpers import read_csv, write_csv

# $FAIRJAX_SHARED_DATA, else ../shared/data next to the checkout (or next to the folder holding
# this git worktree).
_SHARED = next(
  (
    p
    for p in (
      *(
        [pathlib.Path(os.environ["FAIRJAX_SHARED_DATA"])]
        if "FAIRJAX_SHARED_DATA" in os.environ
        else []
      ),
      *(parent / "shared" / "data" for parent in pathlib.Path(REPO).resolve().parents[:2]),
    )
    if p.is_dir()
  ),
  pathlib.Path(REPO) / "shared" / "data",
)
ISIC_DIR = _SHARED / "isic2019"
FITZ_CSV = _SHARED / "fitzpatrick17k" / "fitzpatrick17k.csv"
ISIC_GT, ISIC_META, ISIC_IMAGES = (
  "ISIC_2019_Training_GroundTruth.csv",
  "ISIC_2019_Training_Metadata.csv",
  "ISIC_2019_Training_Input",
)
FITZ_NAME = "fitzpatrick17k.csv"

# Small real-dataset runs: 8-pixel builds, so a synthesised tree builds in about a second.
SMALL = ["--config.data.stored_image_size=8", "--config.data.image_size=8"]
# The protocol configs start from ImageNet weights; these cases are about the data, not weights.
NO_WEIGHTS = "--config.model.require_pretrained=False"


# -- synthesised dataset folders ------------------------------------------------------------------


def _jpeg(path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", (12, 10), (120, 80, 60)).save(path, format="JPEG")


def _isic_tree(root: pathlib.Path, *, sexes=("female", "male"), rows: int = 30) -> pathlib.Path:
  """An ISIC 2019 manual_dir: the first ``rows`` real metadata rows of the given sexes (no
  lesion id, so they spread over the splits), their ground-truth rows, generated JPEGs."""
  gt_header, gt = read_csv(ISIC_DIR / ISIC_GT)
  meta_header, meta = read_csv(ISIC_DIR / ISIC_META)
  pick = [
    i
    for i, m in enumerate(meta)
    if m["sex"] in sexes and not m["lesion_id"] and gt[i]["UNK"] != "1.0"
  ][:rows]
  root.mkdir(parents=True)
  write_csv(root / ISIC_GT, gt_header, [gt[i] for i in pick])
  write_csv(root / ISIC_META, meta_header, [meta[i] for i in pick])
  for i in pick:
    _jpeg(root / ISIC_IMAGES / f"{meta[i]['image']}.jpg")
  return root


def _fitz_tree(root: pathlib.Path, rows: int = 30) -> pathlib.Path:
  header, data = read_csv(FITZ_CSV)
  pick = [r for r in data if r["fitzpatrick_scale"] != "-1"][:rows]
  root.mkdir(parents=True)
  write_csv(root / FITZ_NAME, header, pick)
  for r in pick:
    _jpeg(root / "images" / f"{r['md5hash']}.jpg")
  return root


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, pathlib.Path]:
  """Pristine synthesised manual_dirs; cases copy the one they break."""
  if not (ISIC_DIR / ISIC_GT).exists() or not FITZ_CSV.exists():
    pytest.skip("real metadata CSVs not found (set FAIRJAX_SHARED_DATA)")
  root = tmp_path_factory.mktemp("trees")
  return {
    "isic": _isic_tree(root / "isic"),
    "isic_male": _isic_tree(root / "isic_male", sexes=("male",)),
    "fitz": _fitz_tree(root / "fitz"),
  }


def _copy(trees: Callable[[], dict], name: str, tmp: pathlib.Path) -> pathlib.Path:
  return pathlib.Path(shutil.copytree(trees()[name], tmp / f"{name}_copy"))


def _append_line(path: pathlib.Path, line: str) -> None:
  with open(path, "a") as f:
    f.write(line + "\n")


def _edit_first_row(path: pathlib.Path, column: str, value: str) -> None:
  header, rows = read_csv(path)
  rows[0][column] = value
  write_csv(path, header, rows)


def _isic(
  trees, tmp, breaker: Callable[[pathlib.Path], None] | None = None, name: str = "isic"
) -> list[str]:
  manual = _copy(trees, name, tmp)
  if breaker is not None:
    breaker(manual)
  return ["--config=configs/isic.py", f"--config.data.manual_dir={manual}", NO_WEIGHTS, *SMALL]


def _fitz(trees, tmp, breaker: Callable[[pathlib.Path], None]) -> list[str]:
  manual = _copy(trees, "fitz", tmp)
  breaker(manual)
  return [
    "--config=configs/fitzpatrick17k.py",
    f"--config.data.manual_dir={manual}",
    NO_WEIGHTS,
    *SMALL,
  ]


def _corrupt_first_image(manual: pathlib.Path) -> None:
  first = sorted((manual / ISIC_IMAGES).iterdir())[0]
  first.write_bytes(np.random.default_rng(0).bytes(300))


def _syntax_error_config(tmp: pathlib.Path) -> list[str]:
  path = tmp / "broken.py"
  path.write_text("def get_config(:\n  pass\n")
  return [f"--config={path}"]


def _config_without_get_config(tmp: pathlib.Path) -> list[str]:
  path = tmp / "noget.py"
  path.write_text("CONFIG = 1\n")
  return [f"--config={path}"]


def _empty_dir(tmp: pathlib.Path) -> pathlib.Path:
  path = tmp / "empty"
  path.mkdir()
  return path


def _file(tmp: pathlib.Path, name: str = "a_file") -> pathlib.Path:
  path = tmp / name
  path.write_text("not a directory\n")
  return path


# -- the table ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
  """One bad input: ``args(tmp, trees)`` builds the command line (``trees()``: the synthesised
  dataset folders; ``--workdir=<tmp>/wd`` is added unless it names one); the error line must
  contain every needle; ``cli``: also run as a subprocess."""

  id: str
  args: Callable[[pathlib.Path, Callable[[], dict]], list[str]]
  needles: tuple[str, ...]
  cli: bool = False


def _a(*argv: str) -> Callable[[pathlib.Path, Callable[[], dict]], list[str]]:
  return lambda tmp, trees: [a.format(tmp=tmp) for a in argv]


CASES = [
  # Flags and config keys (parsed by absl / ml_collections).
  Case(
    "unknown_config_key",
    _a("--config.prune.betta=0.3"),
    ("--config.prune.betta", "did you mean --config.prune.beta", "--show_config"),
    cli=True,
  ),
  Case(
    "unknown_config_key_nested",
    _a("--config.model.kwargs.widht=3"),
    ("--config.model.kwargs.widht", "--config.model.kwargs.width"),
  ),
  Case(
    "unknown_config_section",
    _a("--config.trian.epochs=3"),
    ("--config.trian.epochs", "--config.train.epochs"),
  ),
  Case(
    "bad_int_value",
    _a("--config.train.epochs=abc"),
    ("--config.train.epochs=abc", "takes an integer"),
    cli=True,
  ),
  Case("bad_float_value", _a("--config.prune.beta=high"), ("--config.prune.beta=high", "a number")),
  Case(
    "bad_bool_value",
    _a("--config.train.nesterov=maybe"),
    ("--config.train.nesterov=maybe", "True or False"),
  ),
  Case(
    "bad_tuple_value",
    _a("--config.prune.exclude_layers=(1,"),
    ("--config.prune.exclude_layers=(1,", "a tuple such as"),
  ),
  Case("section_given_a_value", _a("--config.train=3"), ("--config.train=3", "is a section")),
  Case(
    "override_without_value",
    _a("--config.train.epochs"),
    ("--config.train.epochs", "--config.train.epochs=VALUE"),
  ),
  Case("unknown_flag", _a("--nosuchflag"), ("--nosuchflag", "unknown flag", "--help"), cli=True),
  Case("misspelt_flag", _a("--workdr=x"), ("--workdr", "did you mean --workdir")),
  Case(
    "positional_config", _a("configs/demo.py"), ("'configs/demo.py'", "--config=configs/demo.py")
  ),
  Case(
    "override_before_config",
    _a("--config.train.epochs=2", "--config=configs/demo.py"),
    ("--config.train.epochs=2", "put --config=FILE first"),
  ),
  Case("empty_workdir_flag", _a("--workdir="), ("--workdir", "pass a directory")),
  # Config files.
  Case(
    "missing_config_file",
    _a("--config=configs/nosuch.py"),
    ("--config=configs/nosuch.py", "no such file", "configs/demo.py"),
    cli=True,
  ),
  Case("config_is_a_directory", _a("--config=configs"), ("--config=configs", "is a directory")),
  Case(
    "config_syntax_error",
    lambda tmp, trees: _syntax_error_config(tmp),
    ("broken.py", "syntax error at line 1"),
  ),
  Case(
    "config_without_get_config",
    lambda tmp, trees: _config_without_get_config(tmp),
    ("noget.py", "no get_config()"),
  ),
  # Config values (validate_config).
  Case("nan_float", _a("--config.prune.beta=nan"), ("config.prune.beta=nan", "finite")),
  Case(
    "inf_float",
    _a("--config.train.learning_rate=inf"),
    ("config.train.learning_rate=inf", "finite", "--config.train.learning_rate="),
  ),
  Case(
    "split_fractions_not_numbers",
    _a("--config.data.split_fractions=(a,b,c)"),
    ("config.data.split_fractions", "three positive numbers"),
  ),
  Case(
    "exclude_layers_not_names",
    _a("--config.prune.exclude_layers=(1,2)"),
    ("config.prune.exclude_layers=(1, 2)", "module paths"),
  ),
  Case(
    "bad_method", _a("--config.prune.method=magic"), ("config.prune.method='magic'", "fairgrape")
  ),
  Case(
    "real_dataset_without_manual_dir",
    _a("--config=configs/isic.py", NO_WEIGHTS),
    ("config.data.manual_dir", "--config.data.manual_dir="),
  ),
  # Directories.
  Case(
    "workdir_is_a_file",
    lambda tmp, trees: [f"--workdir={_file(tmp)}"],
    ("--workdir=", "is a file, not a directory"),
    cli=True,
  ),
  Case(
    "workdir_under_a_file",
    lambda tmp, trees: [f"--workdir={_file(tmp)}/sub"],
    ("--workdir=", "a_file is a file"),
  ),
  Case(
    "data_dir_is_a_file",
    lambda tmp, trees: _isic(trees, tmp) + [f"--config.data.data_dir={_file(tmp)}"],
    ("config.data.data_dir=", "is a file"),
  ),
  Case(
    "data_dir_under_a_file",
    lambda tmp, trees: _isic(trees, tmp) + [f"--config.data.data_dir={_file(tmp)}/tfds"],
    ("config.data.data_dir", "a_file is a file", "--config.data.data_dir="),
  ),
  # The data against the config (validate_data, before any training).
  Case(
    "train_split_smaller_than_batch",
    _a(*TINY, "--config.data.num_train=16"),
    ("config.train.batch_size=32", "16 samples", "--config.train.batch_size="),
    cli=True,
  ),
  Case(
    "group_absent_from_a_split",
    _a(*TINY, "--config.data.num_validation=16", "--config.data.eval_minority_fraction=0.01"),
    ("validation split", "'dark'", "config.data.num_validation"),
  ),
  Case(
    "unknown_privileged_group",
    _a(*TINY, "--config.prune.privileged_group=female"),
    ("config.prune.privileged_group='female'", "'light', 'dark'"),
  ),
  Case(
    "scoring_batch_not_a_multiple_of_groups",
    _a(*TINY, "--config.prune.batch_size=15"),
    ("config.prune.batch_size=15", "multiple of the number of groups"),
  ),
  Case(
    "snnl_layer_not_a_conv",
    _a(*TINY, "--config.prune.method=snnl_channels", "--config.prune.snnl.layers=('fc0',)"),
    ("config.prune.snnl.layers=('fc0',)", "not a 2-D conv layer"),
  ),
  # Real-dataset folders.
  Case(
    "manual_dir_missing",
    _a("--config=configs/isic.py", "--config.data.manual_dir={tmp}/nope", NO_WEIGHTS),
    ("nope", "does not exist", "--config.data.manual_dir="),
    cli=True,
  ),
  Case(
    "face_manual_dir_missing",
    _a("--config.data.name=fairface", "--config.data.manual_dir={tmp}/nope"),
    ("fairface", "nope", "does not exist", "--config.data.manual_dir="),
  ),
  Case(
    "face_manual_dir_empty",
    lambda tmp, trees: [
      "--config.data.name=utkface",
      f"--config.data.manual_dir={_empty_dir(tmp)}",
    ],
    ("utkface", "is empty", "--config.data.manual_dir="),
  ),
  # The multi-label task is implemented (tests/test_face_protocols.py); a misspelt task is not.
  Case(
    "celeba_unknown_task",
    _a("--config.data.name=celeba", "--config.data.manual_dir={tmp}", "--config.data.task=multi"),
    ("config.data.task='multi'", "('attribute', 'multilabel')"),
  ),
  Case(
    "manual_dir_empty",
    lambda tmp, trees: _isic(
      trees, tmp, lambda m: [shutil.rmtree(p) if p.is_dir() else p.unlink() for p in m.iterdir()]
    ),
    ("is empty", "--config.data.manual_dir="),
  ),
  Case(
    "metadata_csv_missing",
    lambda tmp, trees: _isic(trees, tmp, lambda m: (m / ISIC_META).unlink()),
    (ISIC_META, "lacks"),
  ),
  Case(
    "images_folder_missing",
    lambda tmp, trees: _isic(trees, tmp, lambda m: shutil.rmtree(m / ISIC_IMAGES)),
    (ISIC_IMAGES, "lacks"),
  ),
  Case(
    "csv_row_with_extra_field",
    lambda tmp, trees: _isic(
      trees, tmp, lambda m: _append_line(m / ISIC_GT, "ISIC_9999999,0.0,1.0,0,0,0,0,0,0,0,0")
    ),
    (ISIC_GT, "line 32", "expected 10 fields, found 11", "fix that line"),
  ),
  Case(
    "csv_bad_one_hot",
    lambda tmp, trees: _isic(trees, tmp, lambda m: _edit_first_row(m / ISIC_GT, "MEL", "2.0")),
    (ISIC_GT, "line 2", "'MEL'", "expected 0.0 or 1.0"),
  ),
  Case(
    "csv_empty_file",
    lambda tmp, trees: _isic(trees, tmp, lambda m: (m / ISIC_META).write_text("")),
    (ISIC_META, "empty"),
  ),
  Case(
    "fitzpatrick_bad_skin_type",
    lambda tmp, trees: _fitz(
      trees, tmp, lambda m: _edit_first_row(m / FITZ_NAME, "fitzpatrick_scale", "dark")
    ),
    (FITZ_NAME, "line 2", "fitzpatrick_scale"),
  ),
  Case(
    "corrupt_image_with_on_bad_image_error",
    lambda tmp, trees: (
      _isic(trees, tmp, _corrupt_first_image) + ["--config.data.on_bad_image=error"]
    ),
    ("cannot decode image file", "--config.data.on_bad_image=skip"),
  ),
  Case(
    "real_train_split_smaller_than_batch",
    lambda tmp, trees: _isic(trees, tmp) + ["--config.train.batch_size=64"],
    ("config.train.batch_size=64", "samples of isic2019"),
  ),
  Case(
    "real_group_absent",
    lambda tmp, trees: _isic(trees, tmp, name="isic_male") + ["--config.train.batch_size=2"],
    ("train split of isic2019", "'female'", "config.data.split_fractions"),
  ),
]


def _command(case: Case, tmp: pathlib.Path, trees: Callable[[], dict]) -> list[str]:
  args = case.args(tmp, trees)
  if not any(a.startswith("--workdir") for a in args):
    args.append(f"--workdir={tmp / 'wd'}")
  return args


def _assert_nothing_written(tmp: pathlib.Path) -> None:
  for root, dirs, files in os.walk(tmp):
    assert "results.json" not in files, root
    assert "checkpoints" not in dirs, root


def _check_line(line: str, needles) -> None:
  assert "\n" not in line and line.startswith("fairjax: error: "), line
  for needle in needles:
    assert needle in line, (needle, line)


@pytest.fixture
def lazy_trees(request) -> Callable[[], dict]:
  """The dataset trees, built when a case first asks for them (most cases do not)."""
  return lambda: request.getfixturevalue("trees")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_in_process(case: Case, tmp_path, lazy_trees):
  argv = ["fairjax.main", *_command(case, tmp_path, lazy_trees)]
  cwd = os.getcwd()
  os.chdir(REPO)  # relative config paths, as a user runs the CLI from the repository
  try:
    with pytest.raises(cli.CliError) as e:
      cli.run_command(argv, flags.FlagValues())
  finally:
    os.chdir(cwd)
  _check_line(e.value.line, case.needles)
  _assert_nothing_written(tmp_path)


@pytest.mark.parametrize("case", [c for c in CASES if c.cli], ids=[c.id for c in CASES if c.cli])
def test_bad_input_cli(case: Case, tmp_path, lazy_trees):
  cmd = [sys.executable, "-m", "fairjax.main", *_command(case, tmp_path, lazy_trees)]
  res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  last = assert_cli_error(res, *case.needles)
  assert sum(line.startswith("fairjax: error:") for line in res.stderr.splitlines()) == 1, last
  _assert_nothing_written(tmp_path)


def test_cases_cover_thirty_inputs():
  assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


# -- a read-only workdir ---------------------------------------------------------------------------


def _read_only_prefix(directory: pathlib.Path) -> list[str]:
  """A command prefix under which ``directory`` is really read-only. Permission bits do not
  stop root, so as root the directory is bind-mounted read-only in a private mount namespace
  (``unshare -m``; nothing outside the command sees it); otherwise chmod 555 is enough."""
  if os.geteuid() != 0:
    directory.chmod(0o555)
    return []
  script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
  prefix = ["unshare", "-m", "sh", "-c", script, "sh", str(directory)]
  probe = subprocess.run(
    [*prefix, "sh", "-c", f"! touch {directory}/probe 2>/dev/null"], capture_output=True
  )
  if shutil.which("unshare") is None or probe.returncode != 0:
    pytest.skip("running as root without mount namespaces: no way to make a read-only folder")
  return prefix


def test_read_only_workdir(tmp_path):
  workdir = tmp_path / "ro"
  workdir.mkdir()
  prefix = _read_only_prefix(workdir)
  try:
    res = subprocess.run(
      [*prefix, *cli_cmd(str(workdir), *TINY)],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
    )
  finally:
    workdir.chmod(0o755)
  assert_cli_error(res, f"--workdir={workdir}", "is not writable", "a directory you can write to")
  assert list(workdir.iterdir()) == []


# -- discoverability -----------------------------------------------------------------------------


def test_help_lists_the_shipped_configs():
  res = subprocess.run(
    [sys.executable, "-m", "fairjax.main", "--help"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert "Traceback" not in res.stderr
  for path, doc in cli.shipped_configs():
    assert doc, f"{path} has no docstring"
    assert f"{path}  " in res.stdout and doc in res.stdout
  assert "--show_config" in res.stdout and "--workdir" in res.stdout
  assert {p for p, _ in cli.shipped_configs()} >= {"configs/demo.py", "configs/isic.py"}


def test_show_config_prints_every_key_with_its_meaning(tmp_path):
  res = subprocess.run(
    cli_cmd(
      str(tmp_path / "wd"), "--show_config", "--config.train.epochs=7", config="configs/compare.py"
    ),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert res.returncode == 0, res.stderr[-3000:]
  out = res.stdout
  assert "train.epochs = 7\n    # dense training epochs" in out  # the override is applied
  assert "compare.sparsities = (0.5, 0.8, 0.9)" in out
  assert "no description" not in out
  assert not (tmp_path / "wd").exists()  # nothing computed, nothing written


def test_every_config_key_has_a_meaning():
  from fairjax.config import base_config, compare_section, config_items, key_meanings

  meanings = key_meanings()
  config = base_config()
  config.compare = compare_section()
  keys = [key for key, _ in config_items(config, meanings)]
  assert len(keys) > 60
  missing = [key for key in keys if len(meanings.get(key, "")) < 8]
  assert not missing, f"add a comment on these keys' lines in fairjax/config.py: {missing}"
  for path, _ in cli.shipped_configs():  # every shipped config's keys, too
    shipped = cli.load_config_spec(os.path.join(REPO, path))
    assert [k for k, _ in config_items(shipped, meanings) if k not in meanings] == [], path


def test_meanings_come_from_the_comments():
  from fairjax.config import key_meanings

  meanings = key_meanings()
  assert meanings["prune.beta"] == "weight of the privileged group's curvature, (0, 1]"
  # A comment block above the key, then its own line's comment.
  assert meanings["prune.fairgrape_finetune_epochs"].startswith("FairGRAPE's full fine-tune")
  assert meanings["prune.fairgrape_finetune_epochs"].endswith("0 = no final fine-tune")
  assert "data" not in meanings  # sections are described key by key
