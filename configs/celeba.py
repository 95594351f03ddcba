"""CelebA with FairGRAPE's protocol (Lin et al., ECCV 2022): the 39 attributes at once.

    python -m fairjax.main --config=configs/celeba.py \
        --config.data.manual_dir=/path/to/celeba \
        --config.model.pretrained=/path/to/resnet34-b627a593.pth

configs/fairface.py's protocol (its docstring; the tags [paper], [code], [fairjax] mean the same
here) on CelebA's multi-label task: every attribute but ``Male`` is predicted at once, ``Male``
is the sensitive attribute, and the final fine-tune is 8 + 1 + 1 epochs. ``data.manual_dir``
holds list_attr_celeba.txt, list_eval_partition.txt and img_align_celeba/ (README, "Bring real
data"). The metrics are per attribute, then averaged over the 39 (docs/design.md section 5.7).
"""

import importlib.util
import os


def _fairface():
  """configs/fairface.py as a module (its get_config and fairgrape_protocol)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fairface.py")
  spec = importlib.util.spec_from_file_location("fairjax_configs_fairface", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config():
  fairface = _fairface()
  config = fairface.get_config()
  config.data.name = "celeba"
  # [paper] the 39 attributes other than Male, group Male. [code] 39 two-way softmax heads,
  # each trained with the cross-entropy and averaged over attributes; [fairjax] 39 sigmoid
  # outputs with the binary cross-entropy averaged over attributes, the same model (a two-way
  # softmax is a sigmoid of the difference of its two logits) with half the head.
  config.data.task = "multilabel"
  config.data.face_group = ""  # [paper] Male
  # [fairjax] CelebA's official partition. [code] FairGRAPE re-splits 80/10/10 by image.
  # [code] the code's CelebA example runs MobileNetV2 (--config.model.name=mobilenet_v2 with
  # torchvision's mobilenet_v2 weights); [paper] ResNet-34 is the network of the face tables.
  # [fairjax] 162,770 training images (the official train partition).
  return fairface.fairgrape_protocol(
    config,
    keep_per_iter=0.9,  # [code] the default keep
    finetune_phases=((8, 1e-4), (1, 1e-5), (1, 1e-6)),  # [code]
    train_images=162_770,
    groups=2,
  )
