"""ISIC 2019, sensitive attribute sex: FairPrune's protocol (Wu et al., MICCAI 2022).

    python -m fairjax.main --config=configs/isic.py \
        --config.data.manual_dir=/path/to/isic2019 \
        --config.model.pretrained=/path/to/vgg11-8a719046.pth

An ImageNet-pretrained VGG-11 is fine-tuned on ISIC 2019 (the dense model), then pruned
iteratively with FairPrune and NOT fine-tuned, as FairPrune's public re-implementation runs it.
``data.manual_dir`` must hold ISIC_2019_Training_GroundTruth.csv, ISIC_2019_Training_Metadata.csv
and ISIC_2019_Training_Input/<image>.jpg (README, "Bring real data"). The weights file is
torchvision's ``vgg11-8a719046.pth`` (or its .safetensors / `python -m fairjax.convert_weights`
copy; README, "Reproduce a paper"). The first run builds an array_record copy into
``data.data_dir`` (default <workdir>/tfds).

Each setting says where it comes from:
[paper] Wu et al.'s paper; [code] a public implementation, named; [fairjax] a choice where both
are silent, or where the public code cannot be followed on this model (docs/design.md
section 8 lists what the public code does).
"""

from fairjax.config import base_config


def get_config():
  config = base_config()
  config.data.name = "isic2019"
  config.data.manual_dir = ""  # set with --config.data.manual_dir=...
  config.data.sensitive_attribute = "sex"  # [paper] female / male
  config.data.split_fractions = (0.6, 0.2, 0.2)  # [code] the ~60/20/20 splits of published work
  config.data.image_size = 224  # [fairjax] torchvision's ImageNet resolution for VGG-11
  config.data.stored_image_size = 256  # [fairjax] decoded once at 256, resized to 224 per batch
  config.data.sampling = "class_balanced"  # [code: Kong et al.] class-weighted sampling

  config.model.name = "vgg11"  # [paper] VGG-11 (plain, as torchvision's vgg11)
  config.model.pretrained = ""  # [paper] ImageNet weights: --config.model.pretrained=...
  config.model.require_pretrained = True
  # [code: torchvision] 4096-wide classifier with dropout 0.5; pretrained weights need the width.
  config.model.kwargs = {"classifier_width": 4096, "dropout_rate": 0.5}

  # Dense fine-tuning on ISIC: the recipe of Kong et al.'s public code for VGG-11 on ISIC 2019
  # (the only public one for this model and dataset).
  config.train.optimizer = "sgd"  # [code: Kong et al.]
  config.train.learning_rate = 0.01  # [code: Kong et al.]
  config.train.momentum = 0.9  # [code: Kong et al.]
  config.train.nesterov = True  # [code: Kong et al.]
  config.train.weight_decay = 1e-5  # [code: Kong et al.]
  config.train.batch_size = 256  # [code: Kong et al.]
  config.train.eval_batch_size = 256
  # [code: Kong et al.] StepLR(100, 0.1) never decays within 30 epochs: a constant rate.
  config.train.schedule = "constant"
  config.train.epochs = 30  # [fairjax] with early stopping on validation accuracy
  config.train.patience = 5  # [fairjax]

  config.fairness_convention = "sum"  # [code] FairPrune re-implementations sum over classes
  config.prune.method = "fairprune"  # [paper]
  config.prune.curvature = "exact"  # [code: AliGhadirii/FairPrune] BackPACK DiagGGNExact
  config.prune.beta = 0.33  # [code: AliGhadirii/FairPrune] its PAD-UFES-20 setting
  # [code: AliGhadirii/FairPrune] 330 pairs of per-group batches of 2 = 1320 samples. fairjax
  # draws the same number of samples in group-balanced batches of 64 (21 x 64 = 1344): the
  # mean per-group curvature is the same estimator, in far fewer device calls.
  config.prune.num_batches = 21
  config.prune.batch_size = 64
  config.prune.scope = "global"  # [code: AliGhadirii/FairPrune] one ranking over all weights
  # [fairjax] 16 samples per curvature call bound the memory at 224x224; the exact result does
  # not depend on it.
  config.prune.curvature_chunk_size = 16
  config.prune.step_fraction = 0.35  # [code: AliGhadirii/FairPrune] 35% per iteration
  config.prune.retrain_epochs = 0  # [paper] FairPrune does not fine-tune after pruning
  config.prune.max_steps = 10  # [fairjax]
  # [fairjax] The reported step: the lowest validation Eodd within 3 points of accuracy.
  config.prune.max_accuracy_drop = 0.03
  return config
