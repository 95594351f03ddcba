"""Errors of the real-dataset loaders (design.md section 6), importable without tfds.

The CLI turns each into a one-line message; :mod:`fairjax.data.tfds_common` raises them.
"""

from __future__ import annotations

import os

__all__ = ["BadImageError", "CsvFormatError", "DatasetNotFoundError"]


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
