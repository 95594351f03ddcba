"""Names, tasks and defaults of the face datasets (design.md section 6.5), importable without tfds.

The builders (:mod:`fairjax.data.fairface`, :mod:`fairjax.data.utkface`,
:mod:`fairjax.data.celeba`) and :func:`fairjax.config.validate_config` share these tuples, so a
bad ``data.task`` / ``data.face_group`` / ``data.celeba_attribute`` is refused before TFDS is
imported. Every tuple is indexed by the id stored in the records (``label`` or ``group``).
"""

from __future__ import annotations

# Gender, in the id order of UTKFace's file names (0 = male, 1 = female); FairFace's "Male" /
# "Female" strings and CelebA's ``Male`` attribute (+1 -> 0, -1 -> 1) map onto the same ids, so
# group 0 means the same thing in the three datasets.
GENDER_NAMES: tuple[str, str] = ("Male", "Female")

# FairFace (Karkkainen & Joo, WACV 2021): the CSV spellings, in the order the dataset paper lists
# them; class / group id = position.
FAIRFACE_RACES: tuple[str, ...] = (
  "White",
  "Black",
  "Latino_Hispanic",
  "East Asian",
  "Southeast Asian",
  "Indian",
  "Middle Eastern",
)
FAIRFACE_AGES: tuple[str, ...] = (
  "0-2",
  "3-9",
  "10-19",
  "20-29",
  "30-39",
  "40-49",
  "50-59",
  "60-69",
  "more than 70",
)
FAIRFACE_ATTRIBUTES: tuple[str, ...] = ("race", "gender", "age")
# Task -> sensitive attribute when data.face_group is "" (FairGRAPE's pairings; age is ours).
FAIRFACE_DEFAULT_GROUP: dict[str, str] = {"race": "gender", "gender": "race", "age": "gender"}
FAIRFACE_VALIDATION_FRACTION: float = 0.1  # share of the official train set held out

# UTKFace (Zhang et al., CVPR 2017): race codes 0..4 of the file names.
UTKFACE_RACES: tuple[str, ...] = ("White", "Black", "Asian", "Indian", "Others")
UTKFACE_ATTRIBUTES: tuple[str, ...] = ("race", "gender")
UTKFACE_RACE_COUNTS: tuple[int, ...] = (4, 5)  # 4: rows of "Others" are left out of the build

# CelebA (Liu et al., ICCV 2015): the 40 columns of list_attr_celeba.txt, in file order.
CELEBA_ATTRIBUTES: tuple[str, ...] = (
  "5_o_Clock_Shadow",
  "Arched_Eyebrows",
  "Attractive",
  "Bags_Under_Eyes",
  "Bald",
  "Bangs",
  "Big_Lips",
  "Big_Nose",
  "Black_Hair",
  "Blond_Hair",
  "Blurry",
  "Brown_Hair",
  "Bushy_Eyebrows",
  "Chubby",
  "Double_Chin",
  "Eyeglasses",
  "Goatee",
  "Gray_Hair",
  "Heavy_Makeup",
  "High_Cheekbones",
  "Male",
  "Mouth_Slightly_Open",
  "Mustache",
  "Narrow_Eyes",
  "No_Beard",
  "Oval_Face",
  "Pale_Skin",
  "Pointy_Nose",
  "Receding_Hairline",
  "Rosy_Cheeks",
  "Sideburns",
  "Smiling",
  "Straight_Hair",
  "Wavy_Hair",
  "Wearing_Earrings",
  "Wearing_Hat",
  "Wearing_Lipstick",
  "Wearing_Necklace",
  "Wearing_Necktie",
  "Young",
)
CELEBA_SENSITIVE_ATTRIBUTE = "Male"
# "Smiling": close to balanced and a visible expression, not a judgement of looks ("Attractive"
# is the other common choice in the fairness literature; set data.celeba_attribute for it).
CELEBA_DEFAULT_ATTRIBUTE = "Smiling"
# "attribute": data.celeba_attribute as a binary task; "multilabel": the 39 attributes other
# than Male at once (FairGRAPE's setting), labels {0, 1}[39], one sigmoid output each.
CELEBA_TASKS: tuple[str, ...] = ("attribute", "multilabel")
# The labels of the multi-label task, in file order: every attribute but the sensitive one.
CELEBA_LABEL_ATTRIBUTES: tuple[str, ...] = tuple(
  a for a in CELEBA_ATTRIBUTES if a != CELEBA_SENSITIVE_ATTRIBUTE
)

# data.task -> the tasks each dataset accepts ("" = the first one).
TASKS: dict[str, tuple[str, ...]] = {
  "fairface": FAIRFACE_ATTRIBUTES,
  "utkface": UTKFACE_ATTRIBUTES,
  "celeba": CELEBA_TASKS,
}
FACE_DATASETS: tuple[str, ...] = tuple(TASKS)


def resolve_task(dataset: str, task: str) -> str:
  """``data.task`` with ``""`` replaced by the dataset's default (its first task)."""
  return task or TASKS[dataset][0]


def resolve_group(dataset: str, task: str, group: str) -> str:
  """``data.face_group`` with ``""`` replaced by the default sensitive attribute of ``task``.

  FairFace: race -> gender, gender -> race, age -> gender; UTKFace: the attribute that is not
  the task; CelebA: always ``Male``.
  """
  task = resolve_task(dataset, task)
  if dataset == "celeba":
    return group or CELEBA_SENSITIVE_ATTRIBUTE
  if dataset == "utkface":
    return group or ("gender" if task == "race" else "race")
  return group or FAIRFACE_DEFAULT_GROUP[task]


def is_multilabel(dataset: str, task: str) -> bool:
  """Whether ``(data.name, data.task)`` is a multi-label task (labels ``{0, 1}[A]``, sigmoid
  outputs; design.md section 1.10): CelebA's ``"multilabel"``."""
  return dataset == "celeba" and task == "multilabel"


def check_face_options(
  dataset: str, task: str, group: str, celeba_attribute: str = CELEBA_DEFAULT_ATTRIBUTE
) -> tuple[str, str] | None:
  """``(key, why)`` when these options cannot work, else None.

  ``key`` is the ``data`` key at fault ("task", "face_group" or "celeba_attribute"), ``why`` one
  sentence naming the allowed values.
  """
  if dataset not in TASKS:
    return None
  allowed = TASKS[dataset]
  if task and task not in allowed:
    return "task", f"{task!r} is not one of {dataset}'s tasks {allowed} ('' = {allowed[0]!r})"
  task = resolve_task(dataset, task)
  if dataset == "celeba":
    if group and group != CELEBA_SENSITIVE_ATTRIBUTE:
      return "face_group", f"the CelebA group is always {CELEBA_SENSITIVE_ATTRIBUTE!r} (or '')"
    if task == "multilabel":
      return None  # data.celeba_attribute is not read
    if celeba_attribute not in CELEBA_ATTRIBUTES or celeba_attribute == "Male":
      return "celeba_attribute", (
        f"{celeba_attribute!r} is not one of the 39 CelebA attributes other than 'Male' "
        f"(e.g. {CELEBA_DEFAULT_ATTRIBUTE!r}; spelt as in list_attr_celeba.txt)"
      )
    return None
  attributes = FAIRFACE_ATTRIBUTES if dataset == "fairface" else UTKFACE_ATTRIBUTES
  group = resolve_group(dataset, task, group)
  if group not in attributes or group == task:
    others = tuple(a for a in attributes if a != task)
    return "face_group", f"the {dataset} group for task {task!r} must be one of {others} (or '')"
  return None
