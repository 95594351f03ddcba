"""Fitzpatrick-17k, light (types 1-3) vs dark (4-6): Kong et al.'s protocol (MICCAI 2024).

    python -m fairjax.main --config=configs/fitzpatrick17k.py \
        --config.data.manual_dir=/path/to/fitzpatrick17k \
        --config.model.pretrained=/path/to/vgg11-8a719046.pth

Sensitive channel pruning: an ImageNet-pretrained VGG-11 is fine-tuned on Fitzpatrick-17k (the
dense model); then, step by step, the channels of its last conv layer whose activations best
separate light from dark skin (lowest Soft Nearest Neighbour Loss) are pruned and the model is
fine-tuned. ``data.manual_dir`` must hold fitzpatrick17k.csv and images/<md5hash>.jpg (README,
"Bring real data").

Each setting says where it comes from:
[paper] Kong et al.'s paper; [code] their public code (Kqp1227/Sensitive-Channel-Pruning);
[fairjax] a choice where both are silent (docs/design.md section 8).
"""

from fairjax.config import base_config


def get_config():
  config = base_config()
  config.data.name = "fitzpatrick17k"
  config.data.manual_dir = ""  # set with --config.data.manual_dir=...
  config.data.label_granularity = 9  # [fairjax] the 9-partition labels (114 and 3 also work)
  config.data.unknown_skin = "dark"  # [code] skin type -1 is counted with types 4-6
  config.data.image_size = 224  # [fairjax] torchvision's ImageNet resolution for VGG-11
  config.data.stored_image_size = 256  # [fairjax] decoded once at 256, resized to 224 per batch
  config.data.sampling = "class_balanced"  # [code] class-weighted sampling

  config.model.name = "vgg11"  # [paper] VGG-11 (plain: the code's features[:19] is its last conv)
  config.model.pretrained = ""  # [paper] ImageNet weights: --config.model.pretrained=...
  config.model.require_pretrained = True
  # [code: torchvision] 4096-wide classifier with dropout 0.5; pretrained weights need the width.
  config.model.kwargs = {"classifier_width": 4096, "dropout_rate": 0.5}

  # Dense fine-tuning and the fine-tuning after every pruning step share this recipe.
  config.train.optimizer = "sgd"  # [code]
  config.train.learning_rate = 0.01  # [code]
  config.train.momentum = 0.9  # [code]
  config.train.nesterov = True  # [code]
  config.train.weight_decay = 1e-5  # [code]
  config.train.batch_size = 256  # [code]
  config.train.eval_batch_size = 256
  config.train.schedule = "constant"  # [code] StepLR(100, 0.1) never decays within 30 epochs
  config.train.epochs = 30  # [fairjax] with early stopping on validation accuracy
  config.train.patience = 5  # [fairjax]

  config.fairness_convention = "mean"  # [code] fairness_metric.py averages over classes
  config.prune.method = "snnl_channels"  # [paper]
  config.prune.snnl.layers = ("conv7",)  # [code] features[:19] = the last conv of VGG-11
  config.prune.snnl.temperature = 1.0  # [paper]
  # [paper] anchors exclude themselves; the code counts j = i in the numerator (set True to
  # reproduce it).
  config.prune.snnl.include_self = False
  config.prune.batch_size = 128  # [code] SNNL scored on batches of 128
  # [fairjax] fairjax scores group-balanced batches; 80 x 128 is about one pass over the
  # training split, which the code scores once, unbalanced.
  config.prune.num_batches = 80
  config.prune.snnl.channels_per_step = 5  # [code] n = 5, 10, 15, ... channels
  config.prune.snnl.scope = "layer"
  config.prune.retrain_epochs = 3  # [fairjax] the code's epoch count is not stated
  config.prune.max_steps = 20  # [fairjax] up to 100 of conv7's 512 channels
  config.prune.max_accuracy_drop = 0.03  # [fairjax]
  return config
