"""The demo with a quarter-width VGG-11 (a deeper, more redundant backbone than the small CNN).

    python -m fairjax.main --config=configs/demo_vgg.py --workdir=/tmp/fairjax_demo_vgg

Same synthetic data as configs/demo.py (NOT real data). Used by bench/demo_sweep.py; about 6
minutes per run on one CPU core with a GPU doing the arithmetic, longer on a 2-core CPU.
"""

import os

import ml_collections

from fairjax.config import load_config_file


def get_config():
  # By path, so the config loads from any working directory (configs/ is not a package).
  config = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
  config.model.name = "vgg11"
  config.model.kwargs = ml_collections.ConfigDict(
    {"width_multiplier": 0.25, "classifier_width": 128}
  )
  config.prune.exclude_layers = ("conv0", "fc2")  # first conv and output layer, as in demo.py
  return config
