"""A plain PyTorch version of jcc's network and four objectives, for timing.

Same layers and shapes as jcc.models (ConvNet or ResNet-18/34 with either stem,
decoder, instance and cluster heads, centroids) and the same losses as
jcc.losses, written the straightforward way. It is a speed reference only:
benchmarks/train_step.py times one training step of each side.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


def conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
  return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
          nn.ReLU(inplace=True)]


class ConvNet(nn.Module):
  """jcc.models.ConvNet: per stage two 3×3 convs (the first strided after stage 0)."""

  def __init__(self, channels: int, widths=(32, 64, 128)):
    super().__init__()
    layers, cin = [], channels
    for i, width in enumerate(widths):
      layers += conv_bn_relu(cin, width, 1 if i == 0 else 2)
      layers += conv_bn_relu(width, width, 1)
      cin = width
    self.body = nn.Sequential(*layers)
    self.features = widths[-1]

  def forward(self, x):
    return self.body(x).mean(dim=(2, 3))


class BasicBlock(nn.Module):

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.shortcut = nn.Sequential()
    if stride != 1 or cin != cout:
      self.shortcut = nn.Sequential(
          nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + self.shortcut(x))


class ResNet(nn.Module):
  """jcc.models.ResNet: a CIFAR stem (3×3, no max-pool) or an ImageNet stem
  (7×7 stride 2, 3×3 max-pool), then stages of basic blocks at 64…512."""

  def __init__(self, channels: int, stage_sizes, stem: str):
    super().__init__()
    if stem == 'cifar':
      self.stem = nn.Sequential(*conv_bn_relu(channels, 64, 1))
    else:
      self.stem = nn.Sequential(
          nn.Conv2d(channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
          nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    blocks, cin = [], 64
    for stage, size in enumerate(stage_sizes):
      for block in range(size):
        cout = 64 * 2**stage
        blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and block == 0
                                 else 1))
        cin = cout
    self.blocks = nn.Sequential(*blocks)
    self.features = 512

  def forward(self, x):
    return self.blocks(self.stem(x)).mean(dim=(2, 3))


RESNETS = {
    'resnet18_cifar': ((2, 2, 2, 2), 'cifar'),
    'resnet34_cifar': ((3, 4, 6, 3), 'cifar'),
    'resnet18': ((2, 2, 2, 2), 'imagenet'),
    'resnet34': ((3, 4, 6, 3), 'imagenet'),
}


class Decoder(nn.Module):
  """jcc.models.Decoder: dense to a small map, 2× sub-pixel convs, 3×3 conv."""

  def __init__(self, features: int, image_size: int, channels: int,
               width: int):
    super().__init__()
    ups = 0
    while image_size % 2**(ups + 1) == 0 and image_size // 2**(ups + 1) >= 4:
      ups += 1
    self.start = image_size // 2**ups
    self.top = width * 2**max(ups - 1, 0)
    self.dense = nn.Linear(features, self.start**2 * self.top)
    layers, cin = [], self.top
    for i in range(ups):
      cout = max(self.top // 2**(i + 1), 16)
      layers += [nn.Conv2d(cin, 4 * cout, 3, 1, 1), nn.PixelShuffle(2),
                 nn.ReLU(inplace=True)]
      cin = cout
    layers.append(nn.Conv2d(cin, channels, 3, 1, 1))
    self.body = nn.Sequential(*layers)

  def forward(self, e):
    x = F.relu(self.dense(e)).view(-1, self.top, self.start, self.start)
    return torch.sigmoid(self.body(x))


def head(features: int, hidden: int, out: int) -> nn.Module:
  return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(inplace=True),
                       nn.Linear(hidden, out))


class ClusteringModel(nn.Module):

  def __init__(self, backbone: str, num_clusters: int, image_size: int,
               channels: int, convnet_widths=(32, 64, 128),
               head_hidden: int = 512, projection_dim: int = 128,
               decoder_width: int = 64):
    super().__init__()
    if backbone == 'convnet':
      self.encoder = ConvNet(channels, convnet_widths)
    elif backbone in RESNETS:
      self.encoder = ResNet(channels, *RESNETS[backbone])
    else:
      raise ValueError(f'no PyTorch reference for {backbone!r}')
    f = self.encoder.features
    self.instance_head = head(f, head_hidden, projection_dim)
    self.cluster_head = head(f, head_hidden, num_clusters)
    self.centroids = nn.Parameter(torch.randn(num_clusters, f))
    self.decoder = Decoder(f, image_size, channels, decoder_width)

  def forward(self, x):
    h = self.encoder(x)
    z = F.normalize(self.instance_head(h), dim=1)
    c = F.softmax(self.cluster_head(h), dim=1)
    q = (1.0 + torch.cdist(h, self.centroids)**2).reciprocal()
    q = q / q.sum(dim=1, keepdim=True)
    return h, z, c, q, self.decoder(h)


def paired_cross_entropy(y: torch.Tensor, temperature: float) -> torch.Tensor:
  two_n = y.shape[0]
  sim = y @ y.T / temperature
  sim = sim.masked_fill(torch.eye(two_n, dtype=torch.bool, device=y.device),
                       float('-inf'))
  targets = (torch.arange(two_n, device=y.device) + two_n // 2) % two_n
  return F.cross_entropy(sim, targets)


def entropy_term(c: torch.Tensor) -> torch.Tensor:
  p = c.sum(0) / c.sum()
  return math.log(c.shape[1]) + (p * torch.log(p)).sum()


def total_loss(model: ClusteringModel, views: torch.Tensor,
               target: torch.Tensor) -> torch.Tensor:
  """The four objectives with weight 1 (KL 0.1), as jcc's train step."""
  _, z, c, q, recon = model(views)
  b = views.shape[0] // 2
  instance = paired_cross_entropy(z, 0.5)
  cluster = paired_cross_entropy(
      F.normalize(torch.cat([c[:b].T, c[b:].T]), dim=1), 1.0)
  entropy = entropy_term(c[:b]) + entropy_term(c[b:])
  reconstruction = F.mse_loss(recon, views)
  p = torch.cat([target, target])
  kl = (p * (p.log() - q.log())).sum(1).mean()
  return instance + cluster + entropy + reconstruction + 0.1 * kl
