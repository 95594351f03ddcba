"""A plain Linen ViT for the curvature benchmarks (bench/curvature.py, ``vit_tiny_like``).

Patch-embedding conv, class token, learned position parameter, pre-norm blocks of
``nn.MultiHeadDotProductAttention`` and a GELU MLP, final LayerNorm and a Dense head on the class
token. Written with stock Flax modules only, the way a JAX user would, so it exercises the
curvature fast paths for ``nn.Conv``, ``nn.DenseGeneral``, ``nn.Dense`` over tokens and
``nn.LayerNorm`` (design.md section 1.12); the class token and position parameter take the
generic path.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class Block(nn.Module):
  """Pre-norm transformer block: ``x + MHDPA(LN(x))``, then ``x + MLP(LN(x))``."""

  num_heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(h, h)
    h = nn.LayerNorm()(x)
    h = nn.Dense(self.mlp_dim)(h)
    return x + nn.Dense(x.shape[-1])(jax.nn.gelu(h))


class ViT(nn.Module):
  """``float[N, H, W, C]`` images -> ``float[N, num_classes]`` logits."""

  num_classes: int
  dim: int = 192
  depth: int = 6
  num_heads: int = 3
  mlp_ratio: int = 4
  patch: int = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.Conv(
      self.dim, (self.patch, self.patch), strides=self.patch, padding="VALID", name="patch_embed"
    )(x)
    n = x.shape[0]
    x = x.reshape(n, -1, self.dim)  # [N, tokens, dim]
    cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.dim))
    x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, self.dim)), x], axis=1)
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (1,) + x.shape[1:])
    x = x + pos
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_ratio * self.dim, name=f"block{i}")(x)
    x = nn.LayerNorm(name="norm")(x)
    return nn.Dense(self.num_classes, name="head")(x[:, 0])
