"""PyTorch reference models with torchvision's ``state_dict`` key names (torchvision itself is not
installable here). Written from the architectures' definitions: VGG-11 (configuration "A", with
and without BatchNorm), ResNet-18/34 (BasicBlocks) and MobileNetV2 (width 1.0); and ViT-Ti/16
with timm's ``vit_tiny_patch16_224`` key names (timm is not needed).

Import only after ``pytest.importorskip("torch")``.
"""

from __future__ import annotations

import torch
from torch import nn

VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
  """``features`` (conv [+ BN] + ReLU, max-pools), ``avgpool`` to 7x7, 3-layer ``classifier``."""

  def __init__(self, use_bn: bool, num_classes: int = 1000):
    super().__init__()
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG11_CFG:
      if item == "M":
        layers.append(nn.MaxPool2d(2, 2))
        continue
      layers.append(nn.Conv2d(channels, item, 3, padding=1))
      if use_bn:
        layers.append(nn.BatchNorm2d(item))
      layers.append(nn.ReLU())
      channels = item
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(
      nn.Linear(512 * 7 * 7, 4096),
      nn.ReLU(),
      nn.Dropout(),
      nn.Linear(4096, 4096),
      nn.ReLU(),
      nn.Dropout(),
      nn.Linear(4096, num_classes),
    )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.avgpool(self.features(x))
    return self.classifier(torch.flatten(x, 1))


class BasicBlock(nn.Module):
  def __init__(self, in_channels: int, channels: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(channels)
    self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(channels)
    self.downsample = None
    if stride != 1 or in_channels != channels:
      self.downsample = nn.Sequential(
        nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
      )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = torch.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return torch.relu(y + shortcut)


class ResNet(nn.Module):
  """``conv1, bn1`` stem, max-pool, ``layer1..4`` of BasicBlocks, average pool, ``fc``."""

  def __init__(self, stage_sizes: tuple[int, ...], num_classes: int = 1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    in_channels = 64
    for stage, blocks in enumerate(stage_sizes):
      channels = 64 * 2**stage
      layer = []
      for b in range(blocks):
        layer.append(BasicBlock(in_channels, channels, 2 if stage > 0 and b == 0 else 1))
        in_channels = channels
      setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
    self.fc = nn.Linear(512, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    for stage in range(1, 5):
      x = getattr(self, f"layer{stage}")(x)
    return self.fc(x.mean(dim=(2, 3)))


def _conv_bn_relu6(
  in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1
) -> nn.Sequential:
  return nn.Sequential(
    nn.Conv2d(
      in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False
    ),
    nn.BatchNorm2d(out_channels),
    nn.ReLU6(),
  )


class InvertedResidual(nn.Module):
  def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
    super().__init__()
    hidden = in_channels * expansion
    layers: list[nn.Module] = []
    if expansion != 1:
      layers.append(_conv_bn_relu6(in_channels, hidden, 1))
    layers += [
      _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
      nn.Conv2d(hidden, out_channels, 1, bias=False),
      nn.BatchNorm2d(out_channels),
    ]
    self.conv = nn.Sequential(*layers)
    self.residual = stride == 1 and in_channels == out_channels

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x + self.conv(x) if self.residual else self.conv(x)


MOBILENET_V2_TABLE = (
  (1, 16, 1, 1),
  (6, 24, 2, 2),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)


class MobileNetV2(nn.Module):
  """``features`` (stem, 17 inverted residuals, 1x1 conv to 1280), pool, ``classifier``."""

  def __init__(self, num_classes: int = 1000):
    super().__init__()
    layers: list[nn.Module] = [_conv_bn_relu6(3, 32, 3, 2)]
    channels = 32
    for t, c, n, s in MOBILENET_V2_TABLE:  # all multiples of 8 at width 1.0
      for i in range(n):
        layers.append(InvertedResidual(channels, c, s if i == 0 else 1, t))
        channels = c
    layers.append(_conv_bn_relu6(channels, 1280, 1))
    self.features = nn.Sequential(*layers)
    self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.classifier(self.features(x).mean(dim=(2, 3)))


class _Attention(nn.Module):
  """timm's ``Attention``: fused ``qkv`` Linear, scaled dot product, ``proj`` Linear."""

  def __init__(self, dim: int, heads: int):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # [B, heads, N, head_dim]
    attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
    x = attn.softmax(dim=-1) @ v
    return self.proj(x.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()  # exact (erf), timm's default
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
  def __init__(self, dim: int, heads: int, hidden: int):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = _Attention(dim, heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = _Mlp(dim, hidden)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
  def __init__(self, patch: int, dim: int):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, patch, stride=patch)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, dim], patches row-major


class ViT(nn.Module):
  """timm's ``VisionTransformer`` with class token, learned position embedding and a token
  head; defaults are ``vit_tiny_patch16_224`` (224x224 images: 196 patches + the class token).
  """

  def __init__(
    self,
    num_classes: int = 1000,
    image_size: int = 224,
    patch: int = 16,
    dim: int = 192,
    depth: int = 12,
    heads: int = 3,
    hidden: int = 768,
  ):
    super().__init__()
    self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (image_size // patch) ** 2, dim))
    self.patch_embed = _PatchEmbed(patch, dim)
    self.blocks = nn.Sequential(*[_Block(dim, heads, hidden) for _ in range(depth)])
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.head = nn.Linear(dim, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.patch_embed(x)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
    x = self.norm(self.blocks(x))
    return self.head(x[:, 0])


def build(name: str, num_classes: int = 1000) -> nn.Module:
  """The reference model of ``name`` (fairjax's pretrained model names)."""
  if name in ("vgg11", "vgg11_bn"):
    return VGG11(name == "vgg11_bn", num_classes)
  if name == "resnet18":
    return ResNet((2, 2, 2, 2), num_classes)
  if name == "resnet34":
    return ResNet((3, 4, 6, 3), num_classes)
  if name == "mobilenet_v2":
    return MobileNetV2(num_classes)
  if name == "vit_ti16":
    return ViT(num_classes)
  raise ValueError(name)


def randomize_(model: nn.Module, seed: int, calibration_size: int = 64) -> nn.Module:
  """Random weights and non-trivial BatchNorm running statistics, then ``eval()``.

  Weights use fan-in scaling. The running statistics are first set to those of a random
  calibration batch (as training would leave them, so activations stay of order one through
  ResNet-34's depth), then perturbed per channel so that they differ from any batch's.
  """
  gen = torch.Generator().manual_seed(seed)
  bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.LayerNorm):
        module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=gen))
        module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
      if isinstance(module, ViT):  # unit-scale tokens (timm trains them from N(0, .02))
        module.cls_token.copy_(torch.randn(module.cls_token.shape, generator=gen))
        module.pos_embed.copy_(torch.randn(module.pos_embed.shape, generator=gen))
    for module in model.modules():
      if isinstance(module, (nn.Conv2d, nn.Linear)):
        fan_in = module.weight[0].numel()
        module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        if module.bias is not None:
          module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
    for bn in bns:
      bn.weight.copy_(0.5 + torch.rand(bn.num_features, generator=gen))
      bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=gen))
      bn.reset_running_stats()
      bn.momentum = None  # cumulative average: one batch sets the statistics
    if bns:
      model.train()
      model(torch.randn((4, 3, calibration_size, calibration_size), generator=gen))
    for bn in bns:
      c = bn.num_features
      bn.running_mean.add_(0.1 * torch.randn(c, generator=gen))
      bn.running_var.mul_(0.8 + 0.4 * torch.rand(c, generator=gen)).add_(1e-3)
      bn.momentum = 0.1
      bn.num_batches_tracked.fill_(7)
  return model.eval()


def manifest(name: str) -> dict:
  """The content of ``fairjax/models/manifests/<name>.json`` derived from the reference model:
  every ``state_dict`` entry, in order, with its shape (``num_batches_tracked`` included)."""
  state = build(name).state_dict()
  describes = (
    f"torchvision.models.{name}(num_classes=1000).state_dict()"
    if name != "vit_ti16"
    else "timm.create_model('vit_tiny_patch16_224', num_classes=1000).state_dict()"
  )
  return {
    "model": name,
    "describes": describes,
    "num_parameters": sum(p.numel() for p in build(name).parameters()),
    "state_dict": [[key, list(value.shape)] for key, value in state.items()],
  }
