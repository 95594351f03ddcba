"""All pruning methods at several sparsities from ONE dense model, on the synthetic demo data or
on a face protocol (configs/fairface.py, configs/utkface.py, configs/celeba.py).

    python -m fairjax.main --config=configs/compare.py --workdir=workdir/compare
    python -m fairjax.main --config=configs/compare.py:fairface --workdir=workdir/cmp-fairface \
        --config.data.manual_dir=/path/to/fairface --config.model.pretrained=/path/to/resnet34.pth

The argument after the colon names the config whose data, model, dense training and FairGRAPE
settings are compared: ``demo`` (default), ``fairface``, ``fairface:gender``, ``utkface``,
``utkface:gender`` or ``celeba``; every ``--config.data...`` / ``--config.model...`` override
then applies to that base as usual.

Writes ``compare.csv``, ``compare.md`` and ``pareto.png`` to the workdir (fairjax.compare;
README, "Comparing methods"). Each method prunes a copy of the same dense model to each target
sparsity in ``prune.max_steps`` steps on the cumulative schedule
``r_i = 1 - (1 - s)**(i / max_steps)``; the stopping rules that could end a run before its
target are off. Every method trains one epoch after each step on the demo (below), as many as
FairGRAPE's retraining on a face protocol. Override like any config, e.g.
``--config.compare.methods="('fairgrape','magnitude')" --config.compare.sparsities="(0.5,)"``.
"""

import importlib.util
import math
import os

from fairjax.config import PRUNE_METHODS, compare_section

_HERE = os.path.dirname(os.path.abspath(__file__))
BASES = ("demo", "fairface", "fairface:gender", "utkface", "utkface:gender", "celeba")


def _base(name: str):
  """The config of ``configs/<file>.py`` (``name`` = ``<file>`` or ``<file>:<task>``, the
  same as ``--config=configs/<file>.py:<task>``)."""
  if name not in BASES:
    raise ValueError(f"configs/compare.py:{name}: the base must be one of {BASES}")
  file, _, task = name.partition(":")
  spec = importlib.util.spec_from_file_location(
    f"fairjax_configs_{file}", os.path.join(_HERE, f"{file}.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(task) if task else module.get_config()


def get_config(base: str = "demo"):
  config = _base(base)
  if base == "demo":
    # The demo's data, model and pruning scope (per-layer ranking, the first conv and the output
    # layer left alone); prune.step_fraction is unused on the cumulative schedule.
    config.prune.max_steps = 4  # steps to each target (FairGRAPE: iterations, SNNL: steps)
    # The same training budget between steps for every method: one epoch after each step
    # (prune.retrain_epochs, the one key: fine-tuning, FairGRAPE's retraining). FairPrune's
    # paper prunes without fine-tuning: --config.prune.retrain_epochs=0 gives that protocol
    # (for every method, with the baselines' one-shot-like collapse at high sparsity).
    # FairGRAPE also keeps its final fine-tune (prune.fairgrape.finetune_epochs, 2 epochs).
    config.prune.retrain_epochs = 1
    config.compare = compare_section(methods=PRUNE_METHODS, sparsities=(0.5, 0.8, 0.9))
    return config
  # A face protocol: FairGRAPE's prune rates (main_test.py: 0.5, 0.7, 0.8, 0.9, 0.99), each
  # reached in FairGRAPE's iteration count at 90% (ceil(log(0.1) / log(keep)): 22 iterations,
  # 91 at UTKFace's keep 0.975), and every method retrains as long as FairGRAPE does after
  # each step (3 epochs); FairGRAPE keeps its phased final fine-tune.
  keep = config.prune.fairgrape.keep_per_iter
  config.prune.max_steps = math.ceil(math.log(0.1) / math.log(keep))
  config.compare = compare_section(methods=PRUNE_METHODS, sparsities=(0.5, 0.7, 0.8, 0.9, 0.99))
  return config
