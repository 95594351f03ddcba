"""UTKFace with FairGRAPE's protocol (Lin et al., ECCV 2022).

    python -m fairjax.main --config=configs/utkface.py \
        --config.data.manual_dir=/path/to/utkface \
        --config.model.pretrained=/path/to/resnet34-b627a593.pth
    # gender classification with the 4 races as groups:
    python -m fairjax.main --config=configs/utkface.py:gender ...

configs/fairface.py's protocol (its docstring; the tags [paper], [code], [fairjax] mean the same
here) on UTKFace: the ImageNet-pretrained ResNet-34, FairGRAPE keeping 97.5% of the remaining
weights per iteration (the code's UTKFace setting), 3 epochs of retraining after each, and the
13 + 3 + 3-epoch final fine-tune. ``data.manual_dir`` holds the folder UTKFace/ of
``<age>_<gender>_<race>_<date>.jpg.chip.jpg`` files (README, "Bring real data").

The argument after the colon is the task: ``race`` (default; 4 classes, gender groups, the
code's example) or ``gender`` (2 classes, the 4 races as groups).
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


def get_config(task: str = "race"):
  if task not in ("race", "gender"):
    raise ValueError(f"configs/utkface.py:{task}: the task must be 'race' or 'gender'")
  fairface = _fairface()
  config = fairface.get_config()
  config.data.name = "utkface"
  config.data.task = task  # [code] --loss_type race, --sensitive_group gender (README example)
  config.data.face_group = ""  # [code] gender for race, race for gender
  # [code] White, Black, Asian, Indian: "Others" is dropped (and FairFace's two Asian races
  # merged, which UTKFace's own coding already is).
  config.data.utkface_races = 4
  config.data.split_fractions = (0.8, 0.1, 0.1)  # [code] 80/10/10 by image, seed 42
  config.data.split_seed = 0  # [fairjax] fairjax's own seeded, stratified split
  # [fairjax] about 17,600 training images (80% of UTKFace's ~23,700 files less the ~1,700 of
  # "Others"); it only sizes prune.num_batches. [code] --keep_per_iter 0.975 (its README).
  return fairface.fairgrape_protocol(
    config,
    keep_per_iter=0.975,
    finetune_phases=((13, 1e-4), (3, 1e-5), (3, 1e-6)),
    train_images=17_600,
    groups=2 if task == "race" else 4,
  )
