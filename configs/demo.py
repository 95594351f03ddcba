"""The embedded demo: synthetic skin images with a real group gap, no download, ~minutes on CPU.

    python -m fairjax.main --config=configs/demo.py --workdir=/tmp/fairjax_demo

The images come from fairjax.data.synthetic (NOT real data): lesion classes drawn as shapes and
textures on light or dark skin, 20% dark skin with lower lesion contrast.
"""

from fairjax.config import base_config


def get_config():
  config = base_config()
  config.data.name = "demo"
  config.data.image_size = 32
  config.model.name = "small_cnn"
  # Train to convergence (early stopping on validation accuracy, train.patience=3, usually ends
  # before epoch 30): OBD-style saliencies assume a trained model, and a model that is still
  # improving makes any later fine-tuning look like a fairness gain.
  config.train.epochs = 30
  # Small per-layer steps that leave the first conv and the output layer alone: with this small
  # CNN, global or large steps remove the weights both groups rely on (README, "Demo results").
  config.prune.scope = "layer"
  config.prune.step_fraction = 0.005
  config.prune.exclude_layers = ("conv0", "fc1")
  config.prune.max_steps = 20
  return config
