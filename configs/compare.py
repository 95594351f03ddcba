"""All pruning methods at several sparsities from ONE dense model, on the synthetic demo data.

    python -m fairjax.main --config=configs/compare.py --workdir=workdir/compare

Writes ``compare.csv``, ``compare.md`` and ``pareto.png`` to the workdir (fairjax.compare;
README, "Comparing methods"). Each method prunes a copy of the same dense model to each target
sparsity in ``prune.max_steps`` steps on the cumulative schedule
``r_i = 1 - (1 - s)**(i / max_steps)``; the stopping rules that could end a run before its
target are off. Every method trains one epoch after each step (below). Override like any
config, e.g.
``--config.compare.methods="('fairgrape','magnitude')" --config.compare.sparsities="(0.5,)"``.
"""

import os

from fairjax.config import PRUNE_METHODS, compare_section, load_config_file


def get_config():
  # The demo's data, model and pruning scope (per-layer ranking, the first conv and the output
  # layer left alone); prune.step_fraction is unused on the cumulative schedule.
  config = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
  config.prune.max_steps = 4  # steps to each target (FairGRAPE: iterations, SNNL: steps)
  # The same training budget between steps for every method: one epoch after each step
  # (FairGRAPE's retraining and SNNL's fine-tuning default to one epoch too). FairPrune's paper
  # prunes without fine-tuning: --config.prune.finetune_epochs=0 gives that protocol (and the
  # baselines' one-shot-like collapse at high sparsity). FairGRAPE also keeps its final
  # fine-tune (prune.fairgrape.finetune_epochs, 2 epochs).
  config.prune.retrain_epochs = 1
  config.compare = compare_section(methods=PRUNE_METHODS, sparsities=(0.5, 0.8, 0.9))
  return config
