"""ViT-Ti/16, equivalent to timm's ``vit_tiny_patch16_224`` (same layers, same parameter count:
5,717,416 at 1000 classes).

Patch embedding (16x16 conv, stride 16), a learned class token prepended to the 196 patch tokens
of a 224x224 image, a learned position embedding added to all 197 tokens, 12 pre-norm transformer
blocks (dim 192, 3 heads of 64, MLP 768 with exact erf GELU, LayerNorm epsilon 1e-6), a final
LayerNorm, and a linear head on the class token. Dropouts are 0, as in timm's defaults, so the
model is deterministic.

Submodule and parameter names (timm's ``state_dict`` prefix in brackets):

- ``patch_embed`` [``patch_embed.proj``]; params ``cls_token [1, 1, 192]`` [``cls_token``] and
  ``pos_embed [1, 1 + (H/16)(W/16), 192]`` [``pos_embed``];
- ``block0 .. block11`` [``blocks.0 .. blocks.11``], each with ``norm1``, ``qkv`` (one fused
  Dense to ``3 * dim``, output index ``(q|k|v, head, channel)``) [``attn.qkv``], ``proj``
  [``attn.proj``], ``norm2``, ``fc1`` [``mlp.fc1``] and ``fc2`` [``mlp.fc2``];
- ``norm`` [``norm``] and ``head`` [``head``].

The position embedding's shape is fixed by the image size at ``init`` (197 tokens at 224x224);
weights for one image size do not fit another (``fairjax.models.pretrained`` refuses such a load).

References:
  Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
  Scale", ICLR 2021, arXiv 2010.11929; Steiner et al., "How to train your ViT?", arXiv 2106.10270
  (the Ti/16 configuration).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from fairjax.models import register_model

LN_EPSILON: float = 1e-6  # timm's ViT LayerNorm

# timm's init: truncated normal(0.02) for linear weights, class token and position embedding
# (the class token uses 1e-6 there; any small value serves for training from scratch).
_trunc_normal = nn.initializers.truncated_normal(stddev=0.02)


class Block(nn.Module):
  """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

  Attributes:
    num_heads: attention heads; the width ``dim`` (the input's last axis) must divide by it.
    mlp_dim: hidden width of the MLP.
    dtype: computation dtype.
  """

  num_heads: int
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps tokens ``x [B, N, dim]`` to ``[B, N, dim]``."""
    b, n, dim = x.shape
    head_dim = dim // self.num_heads
    dense = lambda features, name: nn.Dense(  # noqa: E731
      features, kernel_init=_trunc_normal, dtype=self.dtype, name=name
    )
    y = nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name="norm1")(x)
    qkv = dense(3 * dim, "qkv")(y).reshape(b, n, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, heads, head_dim]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q * head_dim**-0.5, k)
    y = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v).reshape(b, n, dim)
    x = x + dense(dim, "proj")(y)
    y = nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name="norm2")(x)
    y = jax.nn.gelu(dense(self.mlp_dim, "fc1")(y), approximate=False)
    return x + dense(dim, "fc2")(y)


@register_model("vit_ti16")
class ViT(nn.Module):
  """Vision Transformer with a class token; the defaults are ViT-Ti/16.

  Attributes:
    num_classes: number of output logits.
    patch_size: side of the square patches (the images' sides must divide by it).
    dim: token width.
    depth: number of transformer blocks.
    num_heads: attention heads per block.
    mlp_dim: hidden width of the MLPs.
    dtype: computation dtype; parameters and logits stay float32.
  """

  num_classes: int
  patch_size: int = 16
  dim: int = 192
  depth: int = 12
  num_heads: int = 3
  mlp_dim: int = 768
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Maps images ``x [B, H, W, 3]`` (H, W multiples of ``patch_size``) to float32 logits
    ``[B, num_classes]``. ``train`` is accepted for the registry's common signature; the
    model has no dropout or batch statistics, so it changes nothing."""
    del train
    b, h, w, _ = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"ViT needs image sides that are multiples of patch_size={p}, got {h}x{w}")
    x = jnp.asarray(x, self.dtype)
    x = nn.Conv(self.dim, (p, p), strides=p, padding="VALID", dtype=self.dtype, name="patch_embed")(
      x
    ).reshape(b, (h // p) * (w // p), self.dim)
    cls = self.param("cls_token", _trunc_normal, (1, 1, self.dim))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.dim)).astype(x.dtype), x], axis=1)
    pos = self.param("pos_embed", _trunc_normal, (1, x.shape[1], self.dim))
    x = x + pos.astype(x.dtype)
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_dim, dtype=self.dtype, name=f"block{i}")(x)
    x = nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name="norm")(x)
    x = nn.Dense(self.num_classes, kernel_init=_trunc_normal, dtype=self.dtype, name="head")(
      x[:, 0]
    )
    return x.astype(jnp.float32)
