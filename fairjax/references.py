"""Published unpruned reference figures, printed and stored beside a user's own dense model.

A user who runs a protocol config (``configs/isic.py``, ``configs/fitzpatrick17k.py``) sees at
once whether their dense baseline matches the one the published code reported, before any
pruning result is read (docs/design.md section 7).

The figures are those of Kong et al.'s public code (unpruned VGG-11), in the **mean**
convention for Eodd (mean over classes of ``|dTPR + dFPR| / 2``, docs/design.md section 5). A
run in the sum convention is compared after recomputing its dense Eodd in the mean convention,
so the two numbers side by side always mean the same thing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Reference:
  """One published unpruned baseline on one dataset.

  Attributes:
    source: who reported it, with the model.
    macro_f1: macro-averaged F1 on the test split, in [0, 1].
    eodd: equalised-odds difference in ``convention``.
    convention: ``"mean"`` or ``"sum"`` (docs/design.md section 5).
  """

  source: str
  macro_f1: float
  eodd: float
  convention: str = "mean"


_KONG = "Kong et al. (MICCAI 2024), public code, unpruned ImageNet-pretrained VGG-11"

PUBLISHED: dict[str, Reference] = {
  "fitzpatrick17k": Reference(_KONG, macro_f1=0.5513, eodd=0.1636),
  "isic2019": Reference(_KONG, macro_f1=0.7862, eodd=0.0209),
}


def reference_for(dataset: str) -> Reference | None:
  """The published reference of ``dataset`` (a ``data.name``), or None when there is none."""
  return PUBLISHED.get(dataset)


def compare_dense(reference: Reference, dense_metrics: Mapping[str, Any]) -> dict[str, Any]:
  """The reference beside the user's dense test figures, in the reference's convention.

  Args:
    reference: the published baseline.
    dense_metrics: :func:`fairjax.metrics.evaluate` of the dense model on the test split,
      computed in ``reference.convention`` (``macro_f1`` and ``eodd``; ``eodd`` may be None).

  Returns:
    A JSON-ready dict ``{"source", "convention", "published": {"macro_f1", "eodd"},
    "yours": {"macro_f1", "eodd"}, "difference": {"macro_f1", "eodd"}}`` where
    ``difference = yours - published`` (None where the user's Eodd is undefined).
  """
  yours_f1 = float(dense_metrics["macro_f1"])
  yours_eodd = dense_metrics.get("eodd")
  yours_eodd = (
    None if yours_eodd is None or not math.isfinite(float(yours_eodd)) else float(yours_eodd)
  )
  return {
    "source": reference.source,
    "convention": reference.convention,
    "published": {"macro_f1": reference.macro_f1, "eodd": reference.eodd},
    "yours": {"macro_f1": yours_f1, "eodd": yours_eodd},
    "difference": {
      "macro_f1": yours_f1 - reference.macro_f1,
      "eodd": None if yours_eodd is None else yours_eodd - reference.eodd,
    },
  }


def describe(comparison: Mapping[str, Any]) -> str:
  """One log line: the user's dense figures beside the published ones."""
  yours, published = comparison["yours"], comparison["published"]
  eodd = "n/a" if yours["eodd"] is None else f"{yours['eodd']:.4f}"
  return (
    f"dense test vs published ({comparison['source']}, {comparison['convention']} "
    f"convention): macro-F1 {yours['macro_f1']:.4f} (published {published['macro_f1']:.4f}),"
    f" Eodd {eodd} (published {published['eodd']:.4f})"
  )
