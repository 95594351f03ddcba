"""Errors of the real-dataset loaders (design.md section 6), importable without tfds.

The CLI turns each into a one-line message; :mod:`fairjax.data.tfds_common` raises them.
"""

from __future__ import annotations

import os
import tempfile

__all__ = [
  "BadImageError",
  "CsvFormatError",
  "DataDirError",
  "DatasetNotFoundError",
  "unwritable_directory",
]


class DatasetNotFoundError(ValueError):
  """The manual download directory is missing, empty or lacks an expected file."""


class CsvFormatError(ValueError):
  """A metadata CSV row cannot be parsed; names the file, the line and the field."""

  def __init__(self, path: str | os.PathLike[str], line: int, field: str, problem: str):
    self.path = os.fspath(path)
    self.line = line
    self.field = field
    super().__init__(f"{self.path}, line {line}, field {field!r}: {problem}")


class BadImageError(ValueError):
  """An image file is missing or cannot be decoded (raised when ``on_bad_image='error'``)."""


class DataDirError(ValueError):
  """The TFDS ``data_dir`` cannot hold the build (a file, or not writable)."""


def unwritable_directory(path: str | os.PathLike[str]) -> str | None:
  """Why ``path`` cannot be used as a directory to write into, or None when it can.

  Creates ``path`` (and its parents) if missing, then writes and deletes a probe file: permission
  bits alone do not tell (root ignores them, a read-only mount does not show in them).
  """
  path = os.fspath(path)
  existing = os.path.abspath(path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if existing == os.path.abspath(path) and not os.path.isdir(existing):
    return "is a file, not a directory"
  if not os.path.isdir(existing):
    return f"cannot be created: {existing} is a file"
  try:
    os.makedirs(path, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".fairjax_write_probe_", dir=path)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    return f"is not writable ({e.strerror or e})"
  return None
