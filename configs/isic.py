"""ISIC 2019 (sensitive attribute: sex), VGG-11 with BatchNorm, as in FairPrune.

    python -m fairjax.main --config=configs/isic.py --config.data.manual_dir=/path/to/isic2019

``data.manual_dir`` must hold ISIC_2019_Training_GroundTruth.csv, ISIC_2019_Training_Metadata.csv
and ISIC_2019_Training_Input/<image>.jpg (README, "Bring real data"). The first run builds an
array_record copy into ``data.data_dir`` (default <workdir>/tfds).
"""

from fairjax.config import base_config


def get_config():
  config = base_config()
  config.data.name = "isic2019"
  config.data.manual_dir = ""  # set with --config.data.manual_dir=...
  config.data.sensitive_attribute = "sex"
  config.data.stored_image_size = 128
  config.data.image_size = 128
  config.data.sampling = "class_balanced"
  config.model.name = "vgg11_bn"
  config.model.kwargs = {"classifier_width": 512, "dropout_rate": 0.5}
  config.train.epochs = 60
  config.train.batch_size = 64
  config.train.optimizer = "sgd"
  config.train.learning_rate = 0.01
  config.train.momentum = 0.9
  config.train.weight_decay = 5e-4
  config.train.schedule = "cosine"
  config.train.patience = 8
  config.prune.beta = 0.5
  config.prune.num_batches = 8
  config.prune.batch_size = 64
  config.prune.step_fraction = 0.02
  config.prune.max_steps = 40
  return config
