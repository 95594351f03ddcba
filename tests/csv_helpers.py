"""Reading and writing the metadata CSVs of the synthesised dataset trees in the tests."""

from __future__ import annotations

import csv


def read_csv(path) -> tuple[list[str], list[dict[str, str]]]:
  """``(header, rows)`` of a CSV file, rows as dicts keyed by the header."""
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    return list(reader.fieldnames), list(reader)


def write_csv(path, header, rows) -> None:
  """Writes ``rows`` (dicts) under ``header``."""
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
