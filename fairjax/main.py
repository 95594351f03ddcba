"""Command line: ``python -m fairjax.main --config=configs/isic.py [--workdir=DIR] [--config.a.b=v]``.

A config with a ``compare`` section (``configs/compare.py``) runs the comparison of every
method at several sparsities from one dense model (:mod:`fairjax.compare`) instead of one run.

Shaped like the flax examples' ``main.py``: absl flags, an ``ml_collections`` config file, a
work directory. Without ``--config`` the embedded demo (``configs/demo.py``) runs.
``--show_config`` prints the resolved config (after the overrides), every key with its meaning,
and computes nothing. Bad input (an unknown flag or config key, a value of the wrong type, an
invalid config value, an unusable workdir, a missing dataset folder, a malformed metadata file)
ends with a one-line ``fairjax: error: ...`` message as the last line on stderr and exit code 2,
never a traceback, before anything is computed where the input allows; a run that was killed
resumes when started again with the same command.

Multi-host (data parallel over every device of several machines, ``fairjax.parallel``): start
the same command on every host with ``--coordinator_address=HOST0:PORT --num_processes=N
--process_id=I``; under SLURM (``srun``), Open MPI (``mpirun``) or on a multi-host Cloud TPU
slice these are detected when none is given. Process 0 writes results.json and the plots.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import glob
import importlib.util
import logging as pylogging
import os
import re
import sys
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as _ml_config_flags
from ml_collections.config_flags import config_path

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIGS_DIR = os.path.join(_REPO_ROOT, "configs")
_DEMO_CONFIG = os.path.join(_CONFIGS_DIR, "demo.py")

EXIT_BAD_INPUT = 2
# The flags this module defines (absl adds its own: --help, --verbosity, ...).
FLAG_NAMES = (
  "config",
  "workdir",
  "show_config",
  "coordinator_address",
  "num_processes",
  "process_id",
)
_CONFIG_FLAG = re.compile(r"^--?config(=|$)")
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)(?:=(.*))?$", re.DOTALL)


def shipped_configs() -> list[tuple[str, str]]:
  """``(path, first docstring line)`` of every ``configs/*.py`` next to the package."""
  out = []
  for path in sorted(glob.glob(os.path.join(_CONFIGS_DIR, "*.py"))):
    try:
      with open(path, encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    except (OSError, SyntaxError, ValueError):
      doc = ""
    out.append((_shown_path(path), doc.strip().splitlines()[0] if doc.strip() else ""))
  return out


def _shown_path(path: str) -> str:
  """``path`` relative to the working directory when it is below it (as a user types it)."""
  rel = os.path.relpath(path)
  return path if rel.startswith("..") else rel


def _help_text() -> str:
  lines = [
    "",
    "Shipped configs (--config=PATH; add --show_config to list a config's keys and their meaning):",
  ]
  configs = shipped_configs()
  width = max((len(p) for p, _ in configs), default=0)
  lines += [f"  {p.ljust(width)}  {doc}" for p, doc in configs]
  return "\n".join(lines) + "\n"


# absl's --help prints the __main__ module's docstring: this one, with the configs listed.
__doc__ = (__doc__ or "") + _help_text()


class CliError(Exception):
  """Bad command-line input: a one-line message (plus optional detail lines printed above it)."""

  def __init__(self, message: str, details: Sequence[str] = ()):
    first, *rest = str(message).splitlines() or [""]
    super().__init__(first)
    self.details = tuple(details) + tuple(rest)

  @property
  def line(self) -> str:
    return f"fairjax: error: {self}"


@dataclasses.dataclass(frozen=True)
class Invocation:
  """What a command line asks for, once parsed (:func:`parse_command_line`)."""

  config: ml_collections.ConfigDict
  config_spec: str  # the --config value as given ("" = the demo by default)
  workdir: str
  show_config: bool = False
  overrides: tuple[str, ...] = ()
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def _define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> None:
  # The config flag reads its --config.a.b=v overrides from argv; defining it here, at parse
  # time (not at import), keeps a bad override from failing at import with a traceback.
  # argv always names a config file (parse_command_line inserts the demo), so the default is
  # only shown by --help, never loaded.
  config_flags.DEFINE_config_file(
    "config",
    _shown_path(_DEMO_CONFIG),
    "Run configuration file (configs/*.py with "
    "get_config(); listed above). Override any key with --config.KEY=VALUE.",
    flag_values=flag_values,
    lock_config=True,
    sys_argv=list(argv),
  )
  flags.DEFINE_string(
    "workdir",
    None,
    "Directory for checkpoints, results.json and plots "
    "(default: ./workdir/<config file name>). Rerun with the same workdir to resume.",
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    "show_config",
    False,
    "Print the resolved config (after the --config.KEY=VALUE "
    "overrides), every key with its meaning, and exit without computing anything.",
    flag_values=flag_values,
  )
  flags.DEFINE_string(
    "coordinator_address",
    None,
    "Multi-host: host:port of process 0 (jax.distributed); "
    "default: auto-detected under SLURM / Open MPI / Cloud TPU, else one process.",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "num_processes",
    None,
    "Multi-host: total number of processes (one per host).",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "process_id",
    None,
    "Multi-host: this process's id in [0, num_processes).",
    flag_values=flag_values,
  )


def _config_spec(argv: Sequence[str]) -> str | None:
  """The value of the last ``--config=FILE`` / ``--config FILE`` in ``argv`` (None: absent)."""
  spec = None
  for i, arg in enumerate(argv[1:], 1):
    if arg == "--":
      break
    m = _CONFIG_FLAG.match(arg)
    if m:
      spec = arg[m.end() :] if m.group(1) == "=" else (argv[i + 1] if i + 1 < len(argv) else "")
  return spec


def _shipped_list() -> str:
  return ", ".join(p for p, _ in shipped_configs()) or "none found"


def load_config_spec(spec: str) -> ml_collections.ConfigDict:
  """The ``get_config()`` of ``--config=FILE[:ARG]`` (ml_collections' syntax), or CliError."""
  path, _, arg = spec.partition(":")
  flag = f"--config={spec}"
  if not path:
    raise CliError(
      f"{flag}: no file given; pass a config file such as --config=configs/demo.py "
      f"(shipped: {_shipped_list()})"
    )
  if not os.path.isfile(path):
    what = "is a directory" if os.path.isdir(path) else "no such file"
    raise CliError(f"{flag}: {what}; pass a config file (shipped: {_shipped_list()}; see --help)")
  name = "fairjax_cli_config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
  try:
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise CliError(
      f"{flag}: syntax error at line {e.lineno}: {e.msg}; fix the config file"
    ) from None
  except Exception as e:  # the file is user code: any failure is bad input, reported in one line
    raise CliError(
      f"{flag}: loading it raised {type(e).__name__}: {_first_line(e)}; fix the config file"
    ) from None
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise CliError(
      f"{flag}: the file defines no get_config(); a config file defines "
      "get_config() returning an ml_collections.ConfigDict (see configs/demo.py)"
    )
  try:
    config = get_config(*([arg] if arg else []))
  except Exception as e:
    raise CliError(
      f"{flag}: get_config() raised {type(e).__name__}: {_first_line(e)}; fix the config file"
    ) from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise CliError(
      f"{flag}: get_config() returned {type(config).__name__}, not an "
      "ml_collections.ConfigDict; fix the config file (see configs/demo.py)"
    )
  return config


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def _has_key(config: Any, key: str) -> bool:
  node = config
  for part in key.split("."):
    if "[" in part:  # ml_collections' index syntax (a[0]): left to ml_collections
      return True
    if not isinstance(node, (Mapping, ml_collections.ConfigDict)) or part not in node:
      return False
    node = node[part]
  return True


def _all_keys(config: Any, prefix: str = "") -> list[str]:
  out = []
  for key in config.keys():
    value = config[key]
    out.append(prefix + key)
    if isinstance(value, (Mapping, ml_collections.ConfigDict)):
      out += _all_keys(value, prefix + key + ".")
  return out


def _nearest(word: str, candidates: Sequence[str], n: int = 3) -> list[str]:
  """The closest candidates by difflib, falling back to matching the last dotted part."""
  near = difflib.get_close_matches(word, candidates, n=n, cutoff=0.6)
  if not near:
    last = word.rsplit(".", 1)[-1]
    close = set(
      difflib.get_close_matches(last, [c.rsplit(".", 1)[-1] for c in candidates], n=n, cutoff=0.6)
    )
    near = [c for c in candidates if c.rsplit(".", 1)[-1] in close][:n]
  return near


def _unknown_key_error(
  argv: Sequence[str], base: ml_collections.ConfigDict, spec: str
) -> CliError | None:
  for arg in argv[1:]:
    m = _OVERRIDE.match(arg)
    if not m or _has_key(base, m.group(1)):
      continue
    key = m.group(1)
    near = _nearest(key, _all_keys(base))
    hint = (
      "did you mean " + " or ".join(f"--config.{k}" for k in near) + "?"
      if near
      else "no key is similar"
    )
    return CliError(
      f"--config.{key}: {_shown_path(spec)} has no key {key!r}; {hint} "
      "(--show_config lists every key with its meaning)"
    )
  return None


def _describe_type(field_type: Any, current: Any) -> str:
  if field_type is bool:
    return "True or False"
  if field_type is int:
    return "an integer"
  if field_type is float:
    return "a number"
  if field_type is str:
    return "a string"
  if field_type in (tuple, list):
    example = repr(tuple(current)) if current else "('a', 'b')"
    return f"a tuple such as {example} (quote it for the shell)"
  return getattr(field_type, "__name__", str(field_type))


def _bad_value_error(
  e: flags.Error, argv: Sequence[str], base: ml_collections.ConfigDict
) -> CliError:
  message = _first_line(e)
  m = re.match(r"flag --config\.([^=\s:]+)=", message)
  if not m:
    return CliError(f"{message}; see --help")
  key = m.group(1)
  given = next(
    (
      am.group(2)
      for am in map(_OVERRIDE.match, argv[1:])
      if am and am.group(1) == key and am.group(2) is not None
    ),
    None,
  )
  if given is None:  # "--config.a.b" alone: absl reads it as a boolean switch
    return CliError(f"--config.{key}: missing value; write --config.{key}=VALUE")
  try:
    field_type = config_path.get_type(key, base)
    current = config_path.get_value(key, base)
  except (AttributeError, KeyError, IndexError, TypeError, ValueError):
    return CliError(f"{message}; see --help")
  if isinstance(current, ml_collections.ConfigDict):
    return CliError(
      f"--config.{key}={given}: config.{key} is a section, not a value; set its "
      f"keys one by one, e.g. --config.{key}.{next(iter(current.keys()), 'KEY')}"
      "=VALUE (--show_config lists them)"
    )
  return CliError(
    f"--config.{key}={given}: config.{key} takes "
    f"{_describe_type(field_type, current)}, not {given!r} (its value now: "
    f"{current!r})"
  )


def _flag_error(
  e: flags.Error,
  argv: Sequence[str],
  base: ml_collections.ConfigDict,
  flag_values: flags.FlagValues,
) -> CliError:
  """A one-line CliError for an absl / ml_collections flag parsing error."""
  if isinstance(e, flags.UnrecognizedFlagError):
    name = e.flagname
    near = difflib.get_close_matches(name, FLAG_NAMES + ("help",), n=2, cutoff=0.6)
    hint = "; did you mean " + " or ".join(f"--{n}" for n in near) + "?" if near else ""
    return CliError(
      f"--{name}: unknown flag{hint} (fairjax's flags: --config=FILE, "
      "--config.KEY=VALUE, --workdir=DIR, --show_config; see --help)"
    )
  if isinstance(e, _ml_config_flags.FlagOrderError) and "before a value for --config" in str(e):
    return CliError(
      f"{_first_line(e)}; put --config=FILE first, then its --config.KEY=VALUE overrides"
    )
  if isinstance(e, flags.IllegalFlagValueError):
    return _bad_value_error(e, argv, base)
  message = _first_line(e)
  m = re.match(r"Missing value for flag (--\S+)", message)
  if m:
    return CliError(f"{m.group(1)}: missing value; write {m.group(1)}=VALUE")
  return CliError(f"{message}; see --help")


def parse_command_line(
  argv: Sequence[str], flag_values: flags.FlagValues | None = None
) -> Invocation:
  """Parses ``argv`` (``argv[0]`` is the program) into an :class:`Invocation`.

  Every problem is a :class:`CliError` naming the flag and how to fix it: an unknown flag or
  config key (with the nearest valid ones), a value of the wrong type, a missing or broken
  config file, stray arguments. ``flag_values``: default the global ``absl.flags.FLAGS`` (what
  ``app.run`` needs); tests pass a fresh ``flags.FlagValues()``.
  """
  flag_values = flags.FLAGS if flag_values is None else flag_values
  argv = list(argv)
  given = _config_spec(argv)
  if given is None and os.path.isfile(_DEMO_CONFIG):
    argv.insert(1, f"--config={_DEMO_CONFIG}")  # the default, visible to the overrides' parser
  spec = _config_spec(argv)
  base = load_config_spec(spec) if spec is not None else None
  if "config" not in flag_values:
    _define_flags(flag_values, argv)
  try:
    with warnings.catch_warnings():  # ml_collections loads the config file with load_module()
      warnings.filterwarnings("ignore", "the load_module", DeprecationWarning)
      rest = flag_values(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: an override of an unknown key
    error = _unknown_key_error(argv, base, spec) if base is not None else None
    raise (error or CliError(f"bad --config override: {_first_line(e)}; see --help")) from None
  except flags.Error as e:
    raise _flag_error(e, argv, base, flag_values) from None
  if len(rest) > 1:
    extra = rest[1]
    hint = (
      f"did you mean --config={extra}?"
      if extra.endswith(".py")
      else "flags are written --name=value (see --help)"
    )
    raise CliError(f"unexpected argument {extra!r}; {hint}")
  config = flag_values["config"].value
  if config is None:
    raise CliError(
      "no --config given and configs/demo.py was not found; pass --config=path/to/config.py"
    )
  workdir = flag_values["workdir"].value
  if workdir is None:
    name = os.path.splitext(os.path.basename(spec.partition(":")[0]))[0]
    workdir = os.path.join("workdir", name)
  elif not workdir.strip():
    raise CliError(
      "--workdir is empty; pass a directory (created if missing), e.g. --workdir=workdir/demo"
    )
  overrides = tuple(a for a in argv[1:] if _OVERRIDE.match(a))
  return Invocation(
    config=config,
    config_spec=given or "",
    workdir=workdir,
    show_config=bool(flag_values["show_config"].value),
    overrides=overrides,
    coordinator_address=flag_values["coordinator_address"].value,
    num_processes=flag_values["num_processes"].value,
    process_id=flag_values["process_id"].value,
  )


def format_config(config: ml_collections.ConfigDict, title: str = "") -> str:
  """The config as ``key = value`` lines, each followed by its meaning (``--show_config``)."""
  from fairjax.config import config_items, key_meanings

  meanings = key_meanings()
  lines = [f"# {title}"] if title else []
  for key, value in config_items(config, meanings):
    if isinstance(value, ml_collections.ConfigDict):
      value = value.to_dict()
    lines.append(f"{key} = {value!r}")
    meaning = meanings.get(key) or "(not a key of fairjax.config.base_config; no description)"
    lines += textwrap.wrap(meaning, width=96, initial_indent="    # ", subsequent_indent="    # ")
  return "\n".join(lines)


def execute(inv: Invocation) -> None:
  """Validates and runs (or, with ``show_config``, prints) an :class:`Invocation`.

  Raises:
    CliError: bad input, caught before anything is computed wherever it can be (config
      values, the workdir and data_dir, the dataset against the config), else when found.
  """
  from fairjax.config import ConfigError, deprecated_in_file, deprecated_overrides, validate_config
  from fairjax.data.errors import (
    BadImageError,
    CsvFormatError,
    DataDirError,
    DatasetNotFoundError,
    unwritable_directory,
  )
  from fairjax.models.pretrained import PretrainedError

  config = inv.config
  for old, new in deprecated_overrides(inv.overrides):
    logging.warning(
      "--config.%s is deprecated and will be removed in the next release: use "
      "--config.%s (the same setting)",
      old,
      new,
    )
  for old, new in deprecated_in_file(inv.config_spec.partition(":")[0]):
    logging.warning(
      "%s sets config.%s, a deprecated name that will be removed in the next "
      "release: use config.%s (the same setting)",
      inv.config_spec,
      old,
      new,
    )
  if inv.show_config:
    title = (
      f"{inv.config_spec or 'configs/demo.py (the default)'}"
      + (" with " + " ".join(inv.overrides) if inv.overrides else "")
      + "; set a key with --config.KEY=VALUE"
    )
    print(format_config(config, title))
  try:
    validate_config(config)
  except ConfigError as e:
    raise CliError(str(e)) from None
  if inv.show_config:
    return
  problem = unwritable_directory(inv.workdir)
  if problem:
    raise CliError(
      f"--workdir={inv.workdir} {problem}; pass a directory you can write to (created if missing)"
    )
  data_dir = config.data.data_dir
  if (
    config.data.name != "demo"
    and data_dir
    and os.path.exists(data_dir)
    and not os.path.isdir(data_dir)
  ):
    raise CliError(
      f"config.data.data_dir={data_dir!r} is a file, not a directory; pass a "
      "directory with --config.data.data_dir=... (or '' for <workdir>/tfds)"
    )

  from fairjax import parallel, pipeline  # here, so that --help and flag errors stay fast

  try:  # before anything touches a device
    parallel.initialize_distributed(inv.coordinator_address, inv.num_processes, inv.process_id)
  except ValueError as e:
    raise CliError(str(e)) from None
  workdir = inv.workdir
  logging.info(
    "fairjax: config %s, workdir %s", inv.config_spec or _DEMO_CONFIG, os.path.abspath(workdir)
  )
  try:
    if "compare" in config:  # configs/compare.py: every method from one dense model
      from fairjax import compare

      compare.run(config, workdir)
    else:
      pipeline.run(config, workdir)
  except ConfigError as e:
    raise CliError(str(e)) from None
  except DatasetNotFoundError as e:
    first, *details = str(e).splitlines()
    hint = (
      "; put the files listed above there and pass the folder with --config.data.manual_dir=PATH"
      if details
      else ""
    )
    raise CliError(first.rstrip(".") + hint, details) from None
  except PretrainedError as e:
    raise CliError(f"config.model.pretrained: {e}") from None
  except CsvFormatError as e:
    raise CliError(
      f"{e}; fix that line of the file (or download it again) in config.data.manual_dir"
    ) from None
  except BadImageError as e:
    # tfds_common's own hint names the builder argument; name the config key instead.
    problem = _first_line(e).split(" (on_bad_image='error'")[0]
    raise CliError(
      f"{problem}; fix or remove the image, or pass "
      "--config.data.on_bad_image=skip to skip and count bad images"
    ) from None
  except DataDirError as e:
    raise CliError(
      f"config.data.data_dir: {e}; pass a writable --config.data.data_dir=DIR "
      "(or '' for <workdir>/tfds)"
    ) from None
  except FloatingPointError as e:
    raise CliError(f"{e} (workdir {workdir}; checkpoints are kept, rerun to resume)") from None


def run_command(argv: Sequence[str], flag_values: flags.FlagValues | None = None) -> None:
  """:func:`parse_command_line` then :func:`execute`: the whole CLI, raising CliError."""
  execute(parse_command_line(argv, flag_values))


class _OnlyFairjaxInfo(pylogging.Filter):
  """Keeps INFO progress lines from fairjax; libraries (orbax logs every file) only >= WARNING."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or f"{os.sep}fairjax{os.sep}" in record.pathname


def _exit_with(error: CliError) -> None:
  for line in error.details:  # context first: the error itself is always the last line
    print(line, file=sys.stderr)
  print(error.line, file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def _parse_flags(argv: list[str]) -> Invocation:
  """``app.run``'s flags_parser: flag errors become one line and exit 2 instead of absl's
  'FATAL Flags parsing error' (exit 1) or a traceback."""
  try:
    return parse_command_line(argv)
  except CliError as e:
    _exit_with(e)


def main(inv: Invocation) -> None:
  logging.set_verbosity(logging.INFO)
  logging.set_stderrthreshold(logging.INFO)
  logging.get_absl_handler().addFilter(_OnlyFairjaxInfo())
  try:
    execute(inv)
  except CliError as e:
    _exit_with(e)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
