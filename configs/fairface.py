"""FairFace with FairGRAPE's protocol (Lin et al., ECCV 2022).

    python -m fairjax.main --config=configs/fairface.py \
        --config.data.manual_dir=/path/to/fairface \
        --config.model.pretrained=/path/to/resnet34-b627a593.pth
    # gender classification with the 7 races as groups:
    python -m fairjax.main --config=configs/fairface.py:gender ...
    # at 99% sparsity instead of 90%:
    python -m fairjax.main --config=configs/fairface.py --config.prune.max_sparsity=0.99 ...

An ImageNet-pretrained ResNet-34 is fine-tuned on FairFace (the dense model), pruned with
FairGRAPE (keep 90% of the remaining weights per iteration, 3 epochs of retraining after each,
until the target sparsity), then fine-tuned in three phases of decreasing learning rate.
``data.manual_dir`` holds fairface_label_train.csv, fairface_label_val.csv, train/ and val/
(README, "Bring real data"); the weights file is torchvision's ``resnet34-b627a593.pth`` (or its
.safetensors / ``python -m fairjax.convert_weights`` copy; README, "Reproduce a paper").
configs/utkface.py and configs/celeba.py start from this file and change what differs.

The argument after the colon is the task: ``race`` (default; 7 classes, gender groups) or
``gender`` (2 classes, the 7 races as groups), FairGRAPE's two FairFace settings.

Each setting says where it comes from:
[paper] Lin et al.'s paper; [code] FairGRAPE's public code (github.com/Bernardo1998/FairGRAPE,
main_test.py, train_and_val.py, dataset.py); [fairjax] a choice where both are silent, or where
the code cannot be followed here (docs/design.md section 8).
"""

import math

from fairjax.config import base_config

# [code] FairGRAPE's mini-batch size, for training, retraining and the importance.
BATCH = 64


def fairgrape_protocol(
  config, *, keep_per_iter: float, finetune_phases, train_images: int, groups: int
):
  """The FairGRAPE settings shared by the face configs (pruning, retraining, fine-tune)."""
  # Dense fine-tuning of the ImageNet model. [code] Adam, lr 1e-4 for 13 epochs, then 1e-5 for
  # 3 and 1e-6 for 3, a fresh Adam per phase, batches of 64. [fairjax] fairjax's dense
  # training has one schedule: Adam at 1e-4 for the phases' total number of epochs, with early
  # stopping on validation accuracy; the three phases are kept for the final fine-tune below.
  config.train.optimizer = "adam"  # [code]
  config.train.learning_rate = 1e-4  # [code] the first phase's rate
  config.train.schedule = "constant"  # [code] constant within a phase
  config.train.epochs = sum(e for e, _ in finetune_phases)  # [code] 13 + 3 + 3 (CelebA 8+1+1)
  config.train.patience = 3  # [fairjax]
  config.train.batch_size = BATCH  # [code]
  config.train.eval_batch_size = 256  # [fairjax] no effect on the metrics
  config.train.weight_decay = 0.0  # [code] torch's Adam default

  config.prune.method = "fairgrape"  # [paper]
  config.prune.scope = "layer"  # [paper] every layer keeps the same share of its weights
  config.prune.fairgrape.keep_per_iter = keep_per_iter  # [code] --keep_per_iter
  # [code] --prune_rate: 0.9 here; the paper's tables also report 0.99 (and 0.5 to 0.8):
  # --config.prune.max_sparsity=0.99. prune_rate None = prune.max_sparsity, one knob for both.
  config.prune.max_sparsity = 0.9
  config.prune.fairgrape.prune_rate = None
  config.prune.retrain_epochs = 3  # [code] --retrain_iter 3 (FairGRAPE retrains between iterations)
  config.prune.fairgrape.retrain_learning_rate = 1e-5  # [code] --retrain_lr, a fresh Adam
  # [code] the final fine-tune: the dense recipe again, one fresh Adam per (epochs, rate) phase.
  config.prune.fairgrape.finetune_optimizer = "adam"
  config.prune.fairgrape.finetune_schedule = tuple(finetune_phases)
  # [code] the model at the prune rate is the result: the last iteration, whatever its metrics,
  # after ceil(log(1 - rate) / log(keep)) iterations; no other rule may stop the loop early.
  config.prune.report_step = "last"
  config.prune.max_steps = math.ceil(math.log(1 - 0.99) / math.log(keep_per_iter))  # [fairjax]
  config.prune.patience = config.prune.max_steps  # [fairjax] never stop on Eodd
  config.prune.max_accuracy_drop = 1.0  # [fairjax] never stop on accuracy
  # Importance: [code] summed over every mini-batch of 64 of the training split each iteration
  # (stop_batch=10000 is more batches than an epoch holds), through the masked model.
  # [fairjax] the batches are group-balanced (FairGRAPE normalises each group's importance by
  # its own samples; equal counts make every group's estimate equally precise), about one pass
  # over the training split. Their size must be a multiple of the group count: 64 for two
  # groups, 63 (9 per race) for seven.
  config.prune.batch_size = BATCH - BATCH % groups
  config.prune.num_batches = max(1, round(train_images / config.prune.batch_size))
  config.prune.exclude_layers = ()  # [code] every conv and linear layer is pruned
  return config


def get_config(task: str = "race"):
  if task not in ("race", "gender"):
    raise ValueError(f"configs/fairface.py:{task}: the task must be 'race' or 'gender'")
  config = base_config()
  config.data.name = "fairface"
  config.data.manual_dir = ""  # set with --config.data.manual_dir=...
  config.data.task = task  # [paper] race (gender groups) or gender (race groups)
  config.data.face_group = ""  # [paper] the task's partner: gender for race, race for gender
  # [fairjax] the official validation set is the test split and 10% of the training CSV the
  # validation split. [code] FairGRAPE re-splits its own FairFace CSV 80/10/10 by image.
  config.data.fairface_validation_fraction = 0.1
  config.data.image_size = 224  # [code] transforms.Resize((224, 224))
  config.data.stored_image_size = 256  # [fairjax] decoded once at 256, resized per batch
  config.data.sampling = "uniform"  # [code] a shuffled DataLoader
  # [fairjax] the code augments with imgaug (flips, crops, affine warps, blur, noise, colour);
  # fairjax has flips and random resized crops, the nearest of its augmentations.
  config.data.augment = "flip_crop"

  config.model.name = "resnet34"  # [paper] ImageNet-pretrained ResNet-34
  config.model.pretrained = ""  # [paper] --config.model.pretrained=.../resnet34-b627a593.pth
  config.model.require_pretrained = True
  config.model.kwargs = {}  # [code] torchvision's resnet34, the head resized to the classes

  config.fairness_convention = "sum"  # [fairjax] FairGRAPE reports no Eodd
  # [fairjax] 78,070 training images: the 86,744 rows of fairface_label_train.csv less the
  # validation share.
  return fairgrape_protocol(
    config,
    keep_per_iter=0.9,
    finetune_phases=((13, 1e-4), (3, 1e-5), (3, 1e-6)),
    train_images=78_070,
    groups=2 if task == "race" else 7,
  )
