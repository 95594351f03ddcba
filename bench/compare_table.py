"""Runs the comparison (configs/compare.py) for several seeds and writes the mean ± std table.

    python -m bench.compare_table [--config=configs/compare.py] [--seeds=0,1,2]
        [--root=workdir/compare_seeds] [--out=bench/results/compare_seeds] [-- --config.a.b=v ...]

Each seed is one ordinary comparison (``python -m fairjax.main --config=... --config.seed=k``)
in ``<root>/seed<k>``, so finished runs are reused and a killed seed resumes. Arguments after
``--`` are passed to every seed's command (config overrides). Aggregates the seeds'
``compare.json`` with ``fairjax.compare.aggregate`` (population std, ddof 0) and writes
``<out>.json``, ``<out>.md`` and ``<out>_pareto.png`` atomically. All figures are on the TEST
split; the seed changes model init, data order and pruning batches, not the demo data. Beside
each mean ± std of a pruned − dense difference the table counts the seeds whose paired bootstrap
interval excludes 0 (below / above), and it counts the seeds' mechanism labels.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from absl import app, flags

from fairjax import checkpoint, compare, report

_CONFIG = flags.DEFINE_string("config", "configs/compare.py", "Comparison config file.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_ROOT = flags.DEFINE_string("root", "workdir/compare_seeds", "Parent of the per-seed workdirs.")
_OUT = flags.DEFINE_string(
  "out", "bench/results/compare_seeds", "Output prefix: <out>.json, <out>.md, <out>_pareto.png."
)


def main(argv: list[str]) -> None:
  overrides = argv[1:]
  comparisons, seconds = [], {}
  for seed in _SEEDS.value:
    workdir = os.path.join(_ROOT.value, f"seed{seed}")
    print(f"seed {seed}: {workdir}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    subprocess.run(
      [
        sys.executable,
        "-m",
        "fairjax.main",
        f"--config={_CONFIG.value}",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        *overrides,
      ],
      check=True,
    )
    seconds[seed] = time.perf_counter() - t0
    comparisons.append(checkpoint.read_json(os.path.join(workdir, compare.COMPARE_JSON)))
  rows = compare.aggregate(comparisons)
  first = comparisons[0]
  groups = first["dataset"]["group_names"]
  title = (
    f"Pruning methods on {first['dataset']['name']}, test split, mean ± std over seeds "
    f"{', '.join(_SEEDS.value)} (population std); Eodd/Eopp in the "
    f"{first['fairness_convention']} convention. Δ columns: pruned − dense on the same "
    "test samples, mean ± std over seeds, then (↓a ↑b): the seeds whose paired, "
    "group-stratified bootstrap interval ("
    f"{100 * first.get('bootstrap', {}).get('confidence', 0.95):g}%, "
    f"{first.get('bootstrap', {}).get('num_samples', 'n/a')} resamples) lies wholly below "
    "/ above 0; mechanism: the levelling label of each seed, counted. "
    "Command: python -m bench.compare_table "
    f"--config={_CONFIG.value} --seeds={','.join(_SEEDS.value)}"
    + (" -- " + " ".join(overrides) if overrides else "")
  )
  table = report.markdown_table(rows, compare.aggregate_columns(groups))
  print(title)
  print(table)
  out = _OUT.value
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  checkpoint.write_json_atomic(
    out + ".json",
    {
      "config": _CONFIG.value,
      "seeds": _SEEDS.value,
      "overrides": overrides,
      "rows": rows,
      "dense_fingerprints": [c["dense_fingerprint"] for c in comparisons],
      "wall_seconds_per_seed": seconds,
      "compare_wall_seconds": [c["wall_seconds"] for c in comparisons],
      "table": table,
    },
  )
  checkpoint.write_atomic(out + ".md", lambda f: f.write(f"{title}\n\n{table}\n"))
  report.plot_pareto(
    compare.pareto_rows(rows),
    out + "_pareto.png",
    title=f"{first['dataset']['name']}: accuracy vs Eodd, mean ± std over {len(comparisons)} seeds",
    convention=first["fairness_convention"],
  )


if __name__ == "__main__":
  app.run(main)
