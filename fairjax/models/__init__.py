"""Flax Linen image classifiers and a name -> constructor registry.

Every model maps NHWC float images ``[B, H, W, 3]`` to float32 logits ``[B, num_classes]`` via
``model.apply(variables, x, train=False)``. BatchNorm statistics live in the ``batch_stats``
collection and are updated only when ``train=True`` (pass ``mutable=['batch_stats']``). Models
know nothing about pruning (design.md section 0).

Adding a model means adding one file that decorates its constructor with
``@register_model("name")`` and listing that file in the imports at the bottom of this module.

Example::

    model = get_model("vgg11_bn", num_classes=8, width_multiplier=0.25)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    logits = model.apply(variables, images)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flax import linen as nn

ModelConstructor = Callable[..., nn.Module]
_C = TypeVar("_C", bound=ModelConstructor)

_REGISTRY: dict[str, ModelConstructor] = {}


def register_model(name: str) -> Callable[[_C], _C]:
  """Decorator that registers a model class or constructor function under ``name``.

  Args:
    name: the string used in configs (``--config.model.name=<name>``). Must be unique.

  Returns:
    A decorator that records its argument and returns it unchanged.

  Raises:
    ValueError: if ``name`` is already registered.
  """

  def decorator(constructor: _C) -> _C:
    if name in _REGISTRY:
      raise ValueError(f"Model name {name!r} is already registered.")
    _REGISTRY[name] = constructor
    return constructor

  return decorator


def get_model(name: str, **kwargs: Any) -> nn.Module:
  """Builds the registered model ``name`` with the given fields.

  Args:
    name: a registered name, see :func:`list_models`.
    **kwargs: module fields, e.g. ``num_classes=8, dtype=jnp.bfloat16``.

  Returns:
    An unbound ``flax.linen.Module``.

  Raises:
    ValueError: if ``name`` is not registered; the message lists the registered names.
  """
  if name not in _REGISTRY:
    raise ValueError(f"Unknown model name {name!r}. Available models: {', '.join(list_models())}.")
  return _REGISTRY[name](**kwargs)


def list_models() -> list[str]:
  """Returns the registered model names, sorted."""
  return sorted(_REGISTRY)


# Imported after the registry exists so that their decorators can run.
from fairjax.models import mobilenet, resnet, small_cnn, vgg, vit  # noqa: E402,F401
from fairjax.models.mobilenet import MobileNetV2  # noqa: E402
from fairjax.models.resnet import ResNet, ResNet18, ResNet34  # noqa: E402
from fairjax.models.small_cnn import SmallCNN  # noqa: E402
from fairjax.models.vgg import VGG11  # noqa: E402
from fairjax.models.vit import ViT  # noqa: E402

__all__ = [
  "MobileNetV2",
  "ModelConstructor",
  "ResNet",
  "ResNet18",
  "ResNet34",
  "SmallCNN",
  "VGG11",
  "ViT",
  "get_model",
  "list_models",
  "register_model",
]
