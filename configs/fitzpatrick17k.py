"""Fitzpatrick-17k (light = skin types 1-3 vs dark = 4-6), ResNet-18.

    python -m fairjax.main --config=configs/fitzpatrick17k.py \
        --config.data.manual_dir=/path/to/fitzpatrick17k

``data.manual_dir`` must hold fitzpatrick17k.csv and images/<md5hash>.jpg (README, "Bring real
data"). Label granularity 114 / 9 / 3 with --config.data.label_granularity.
"""

from fairjax.config import base_config


def get_config():
  config = base_config()
  config.data.name = "fitzpatrick17k"
  config.data.manual_dir = ""  # set with --config.data.manual_dir=...
  config.data.label_granularity = 9
  config.data.unknown_skin = "exclude"
  config.data.stored_image_size = 128
  config.data.image_size = 128
  config.data.sampling = "class_balanced"
  config.model.name = "resnet18"
  config.model.kwargs = {"width": 64}
  config.train.epochs = 40
  config.train.batch_size = 64
  config.train.optimizer = "sgd"
  config.train.learning_rate = 0.01
  config.train.momentum = 0.9
  config.train.nesterov = True
  config.train.weight_decay = 1e-5
  config.train.patience = 6
  config.prune.num_batches = 8
  config.prune.batch_size = 64
  config.prune.step_fraction = 0.02
  config.prune.max_steps = 40
  return config
