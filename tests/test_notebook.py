"""Executes notebooks/quickstart.ipynb headless (nbclient, CPU, tiny config) so it cannot rot.

The kernel runs in this interpreter (a temporary ``python3`` kernelspec pointing at
``sys.executable``), imports fairjax from this checkout (``PYTHONPATH``), and works in a temporary
directory. ``FAIRJAX_NOTEBOOK_TINY=1`` shrinks the demo to seconds. The test fails on any cell
error and checks that what the notebook shows matches the ``results.json`` it read.
"""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

nbformat = pytest.importorskip(
  "nbformat", reason="nbformat not installed (pip install -e '.[test]' adds it)"
)
nbclient = pytest.importorskip(
  "nbclient", reason="nbclient not installed (pip install -e '.[test]' adds it)"
)
pytest.importorskip(
  "ipykernel", reason="ipykernel not installed (pip install -e '.[test]' adds it)"
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")
TIMEOUT_PER_CELL_S = 600


def _read():
  return nbformat.read(NOTEBOOK, as_version=4)


def test_committed_notebook_is_valid_and_has_no_outputs():
  nb = _read()
  nbformat.validate(nb)
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, (
        f"cell {i} of {NOTEBOOK} has outputs; clear them before committing "
        "(jupyter nbconvert --clear-output --inplace notebooks/quickstart.ipynb)"
      )


def _texts(cell) -> str:
  """All text a code cell showed: streams, text/plain and text/markdown of display data."""
  parts = []
  for out in cell.get("outputs", []):
    if out.output_type == "stream":
      parts.append(out.text)
    elif out.output_type in ("display_data", "execute_result"):
      for mime in ("text/markdown", "text/plain"):
        if mime in out.data:
          parts.append(out.data[mime])
  return "\n".join(parts)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("notebook")
  # A python3 kernelspec for THIS interpreter, found first via JUPYTER_PATH, so the kernel sees
  # the same packages as the test (the system kernelspec may name another `python`).
  spec_dir = workdir / "jupyter" / "kernels" / "python3"
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(
    json.dumps(
      {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (fairjax test)",
        "language": "python",
      }
    )
  )
  env = {
    "FAIRJAX_NOTEBOOK_TINY": "1",
    "JUPYTER_PATH": str(workdir / "jupyter"),
    "PYTHONPATH": os.pathsep.join([REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
    "JAX_PLATFORMS": "cpu",
    "MPLBACKEND": "Agg",
  }
  run_dir = workdir / "run"
  run_dir.mkdir()
  nb = _read()
  old = {k: os.environ.get(k) for k in env}
  os.environ.update(env)  # the kernel process inherits the test's environment
  try:
    client = nbclient.NotebookClient(
      nb,
      kernel_name="python3",
      timeout=TIMEOUT_PER_CELL_S,
      resources={"metadata": {"path": str(run_dir)}},
    )
    client.execute()  # raises CellExecutionError (cell source + traceback) on any error
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  return nb, run_dir


def _cell_with(nb, snippet: str):
  matches = [c for c in nb.cells if c.cell_type == "code" and snippet in c.source]
  assert len(matches) == 1, f"expected one code cell containing {snippet!r}, found {len(matches)}"
  return matches[0]


def test_notebook_runs_and_shows_results(executed):
  from fairjax import report

  nb, run_dir = executed
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == "code":
      assert not [o for o in cell.outputs if o.output_type == "error"], f"cell {i} errored"

  install = _texts(_cell_with(nb, "FAIRJAX_SOURCE = "))
  assert os.path.join(REPO, "fairjax") in install  # this checkout's fairjax, not another install
  assert "installing" not in install  # already importable: nothing was pip-installed
  assert "backend: cpu" in _texts(_cell_with(nb, "jax.default_backend()"))
  assert "TINY=True" in _texts(_cell_with(nb, "TINY = os.environ"))

  workdir = run_dir / "fairjax_quickstart" / "demo_tiny"
  with open(workdir / "results.json") as f:
    results = json.load(f)
  report.validate_results(results)
  assert len(results["steps"]) == 4  # dense + the 3 tiny pruning steps

  table = _texts(_cell_with(nb, "report.markdown_table(rows, columns)"))
  dense_row = next(line for line in table.splitlines() if line.startswith("| dense |"))
  pruned_row = next(line for line in table.splitlines() if line.startswith("| pruned (step "))
  assert f"| {results['dense']['accuracy']:.3f} |" in dense_row
  assert f"| {results['pruned']['accuracy']:.3f} |" in pruned_row
  assert f"(step {results['chosen_step']})" in pruned_row
  assert "acc. light" in table and "acc. dark" in table

  shown = _cell_with(nb, 'filename=os.path.join(WORKDIR, "tradeoff.png")')
  pngs = [o for o in shown.outputs if o.output_type == "display_data" and "image/png" in o.data]
  assert len(pngs) == 1
  step_rows = [line for line in _texts(shown).splitlines() if re.match(r"\| \d+ \| ", line)]
  assert [int(row.split("|")[1]) for row in step_rows] == [s["step"] for s in results["steps"]]


def test_notebook_own_model_section(executed):
  nb, _ = executed
  shapes = _texts(_cell_with(nb, 'print("samples per group:"'))
  counts = re.search(r"samples per group: \[\s*(\d+)\s+(\d+)\s*\]", shapes)
  assert counts and int(counts[1]) + int(counts[2]) == 256 - 8  # the 8 of group -1 count nowhere
  assert "head/kernel" in shapes and "-> curvature (2, 32, 3) float32" in shapes
  assert "norm/scale" in shapes  # the LayerNorm goes through the generic path
  check = _texts(_cell_with(nb, "jax.jacrev(logits_one)"))
  assert check.count("max relative error") == 8  # every leaf of MyNet
  pruned = _texts(_cell_with(nb, "masks.prune_lowest(scores, mask, 0.2"))
  assert "'head/kernel': 0.198" in pruned  # round(0.2 * 96) = 19 of the head's 96 weights
  for name in ("dense", "FairPrune, 20% per layer", "magnitude, 20% per layer"):
    assert re.search(re.escape(name) + r" +accuracy \d\.\d{3} \(group0 ", pruned)
  tuned = _texts(_cell_with(nb, "masks.masked_updates(optax.adam"))
  assert "pruned weights still exactly zero after fine-tuning: True" in tuned
  same = _texts(_cell_with(nb, "class MyNNXNet(nnx.Module)"))
  diff = re.search(r"NNX vs Linen per-group diagonal: max relative difference (\S+)", same)
  assert diff and float(diff[1]) < 1e-4, same
