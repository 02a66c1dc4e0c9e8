"""Flax modules: backbones, decoder, heads, clustering layer, composed model.

The composed :class:`ClusteringModel` maps images (N, H, W, C) in [0, 1] to a
:class:`ModelOutputs`: the embedding the clustering works in (the backbone's
pooled features), the instance projection, the cluster-head probabilities,
DEC's Student-t assignments to the learnable centroids, and the decoder's
reconstruction. Losses live in :mod:`jcc.losses`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jcc import losses
from jcc.conv import conv_general_dilated
from jcc.terms import ABSENT_FIELD_VALUES, MODEL_FIELDS

Array = jax.Array

# Backbone name → (block counts per stage, stem). Widths are 64·2^stage.
RESNETS = {
    'resnet18_cifar': ((2, 2, 2, 2), 'cifar'),
    'resnet34_cifar': ((3, 4, 6, 3), 'cifar'),
    'resnet18': ((2, 2, 2, 2), 'imagenet'),
    'resnet34': ((3, 4, 6, 3), 'imagenet'),
}
BACKBONES = ('convnet',) + tuple(RESNETS)

# flax's convolution on jcc's own (a matmul on tiny feature maps, jcc.conv);
# the parameters are nn.Conv's.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


def batch_norm(train: bool, dtype: Any) -> functools.partial:
  """BatchNorm with the settings every backbone here uses."""
  return functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, dtype=dtype)


class ConvNet(nn.Module):
  """A small ConvNet for MNIST-sized images: conv stages, then global pooling."""
  widths: Sequence[int] = (32, 64, 128)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    norm = batch_norm(train, self.dtype)
    for i, width in enumerate(self.widths):
      strides = (1, 1) if i == 0 else (2, 2)
      x = Conv(width, (3, 3), strides, use_bias=False, dtype=self.dtype)(x)
      x = nn.relu(norm()(x))
      x = Conv(width, (3, 3), use_bias=False, dtype=self.dtype)(x)
      x = nn.relu(norm()(x))
    return jnp.mean(x, axis=(1, 2))


class BasicBlock(nn.Module):
  """ResNet basic block (two 3×3 convolutions and a shortcut)."""
  width: int
  strides: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    norm = batch_norm(train, self.dtype)
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype)
    y = conv(self.width, (3, 3), (self.strides,) * 2)(x)
    y = nn.relu(norm()(y))
    y = conv(self.width, (3, 3))(y)
    y = norm(scale_init=nn.initializers.zeros)(y)
    if x.shape[-1] != self.width or self.strides != 1:
      x = conv(self.width, (1, 1), (self.strides,) * 2)(x)
      x = norm()(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet-18/34 with a CIFAR stem (3×3, no max-pool) or an ImageNet stem."""
  stage_sizes: Sequence[int]
  stem: str = 'cifar'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    if self.stem == 'cifar':
      x = Conv(64, (3, 3), use_bias=False, dtype=self.dtype)(x)
    else:
      x = Conv(64, (7, 7), (2, 2), padding=[(3, 3), (3, 3)],
                  use_bias=False, dtype=self.dtype)(x)
    x = nn.relu(batch_norm(train, self.dtype)()(x))
    if self.stem != 'cifar':
      x = nn.max_pool(x, (3, 3), (2, 2), padding='SAME')
    for stage, blocks in enumerate(self.stage_sizes):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(64 * 2**stage, strides, self.dtype)(x, train)
    return jnp.mean(x, axis=(1, 2))


def decoder_start_size(image_size: int) -> tuple[int, int]:
  """(start resolution, number of 2× upsamplings) of the decoder.

  The most doublings that keep the start at ≥ 4 pixels and end exactly at
  ``image_size``: 8 → 4·2, 28 → 7·4, 32 → 4·8, 96 → 6·16, 224 → 7·32.
  """
  ups = 0
  while image_size % 2 ** (ups + 1) == 0 and image_size // 2 ** (ups + 1) >= 4:
    ups += 1
  return image_size // 2**ups, ups


def depth_to_space(x: Array, block: int = 2) -> Array:
  """(N, H, W, b·b·C) → (N, b·H, b·W, C): the pixel shuffle of ESPCN."""
  n, h, w, c = x.shape
  c_out = c // (block * block)
  x = x.reshape(n, h, w, block, block, c_out)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * block, w * block, c_out)


class Decoder(nn.Module):
  """Maps an embedding back to an image in [0, 1].

  A dense layer to a small feature map, then 2× upsamplings, each a 3×3
  convolution to 4× the channels followed by a pixel shuffle (sub-pixel
  convolution), then a 3×3 convolution to the image's channels. Sub-pixel
  rather than transposed convolutions: on XLA:CPU the latter ran 3.4× slower
  forward+backward (benchmarks/notes/speed.md).
  """
  image_size: int
  channels: int
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, e: Array) -> Array:
    start, ups = decoder_start_size(self.image_size)
    top = self.width * 2 ** max(ups - 1, 0)
    x = nn.Dense(start * start * top, dtype=self.dtype)(e)
    x = nn.relu(x).reshape(e.shape[0], start, start, top)
    for i in range(ups):
      width = max(top // 2 ** (i + 1), 16)
      x = Conv(4 * width, (3, 3), dtype=self.dtype)(x)
      x = nn.relu(depth_to_space(x, 2))
    x = Conv(self.channels, (3, 3), dtype=self.dtype)(x)
    return nn.sigmoid(x.astype(jnp.float32))


class ProjectionHead(nn.Module):
  """Linear–ReLU–Linear (CC's heads), or Linear–BatchNorm–ReLU–Linear with
  ``batchnorm`` (SimCLR v2's and TCL's)."""
  hidden: int
  features: int
  batchnorm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: Array, train: bool = False) -> Array:
    h = nn.Dense(self.hidden, use_bias=not self.batchnorm, dtype=self.dtype)(h)
    if self.batchnorm:
      h = batch_norm(train, self.dtype)()(h)
    h = nn.relu(h)
    return nn.Dense(self.features, dtype=self.dtype)(h).astype(jnp.float32)


class ClusteringLayer(nn.Module):
  """K learnable centroids in the embedding space; DEC's Student-t q."""
  num_clusters: int
  alpha: float = 1.0

  @nn.compact
  def __call__(self, e: Array) -> Array:
    centroids = self.param(
        'centroids', nn.initializers.normal(1.0),
        (self.num_clusters, e.shape[-1]), jnp.float32)
    return losses.student_t_assignment(e, centroids, self.alpha)


@flax.struct.dataclass
class ModelOutputs:
  """What one forward pass gives, per image (N rows)."""
  embedding: Array  # (N, D) backbone features: what DEC and k-means cluster.
  projection: Array  # (N, 128) instance-head output, L2-normalised.
  cluster_probs: Array  # (N, K) cluster-head softmax.
  student_t: Array  # (N, K) DEC soft assignment q to the centroids.
  reconstruction: Array | None  # (N, H, W, C) in [0, 1], or None.


class ClusteringModel(nn.Module):
  """Backbone + instance head + cluster head + clustering layer + decoder
  (where ``with_decoder``)."""
  backbone: str
  num_clusters: int
  image_size: int
  channels: int
  projection_dim: int = 128
  head_hidden: int = 512
  convnet_widths: Sequence[int] = (32, 64, 128)
  decoder_width: int = 64
  head_batchnorm: bool = False
  # Without a reconstruction term the decoder is not built: at 128 px it
  # would be most of the parameters (and, with Adam's moments, of memory).
  with_decoder: bool = True
  alpha: float = 1.0
  dtype: Any = jnp.float32

  def setup(self):
    if self.backbone == 'convnet':
      self.encoder = ConvNet(tuple(self.convnet_widths), self.dtype)
    elif self.backbone in RESNETS:
      stages, stem = RESNETS[self.backbone]
      self.encoder = ResNet(stages, stem, self.dtype)
    else:
      raise ValueError(
          f'Unknown backbone {self.backbone!r}; choose one of {BACKBONES}.')
    self.instance_head = ProjectionHead(
        self.head_hidden, self.projection_dim, self.head_batchnorm, self.dtype)
    self.cluster_head = ProjectionHead(
        self.head_hidden, self.num_clusters, self.head_batchnorm, self.dtype)
    self.clustering = ClusteringLayer(self.num_clusters, self.alpha)
    if self.with_decoder:
      self.decoder = Decoder(
          self.image_size, self.channels, self.decoder_width, self.dtype)

  def __call__(
      self, x: Array, train: bool = False, decode: bool = True
  ) -> ModelOutputs:
    h = self.encoder(x.astype(self.dtype), train).astype(jnp.float32)
    z = self.instance_head(h, train)
    z = losses.l2_normalize(z)  # once: the instance loss is told so
    return ModelOutputs(
        embedding=h,
        projection=z,
        cluster_probs=jax.nn.softmax(self.cluster_head(h, train), axis=-1),
        student_t=self.clustering(h),
        reconstruction=self.decoder(h) if decode and self.with_decoder
        else None)


def model_spec(config, channels: int) -> dict[str, Any]:
  """The model ``config`` describes for ``channels``-channel images, as
  plain JSON values: what its variables' shapes depend on."""
  spec = {}
  for name, field in MODEL_FIELDS.items():
    group, leaf = field.split('.')
    value = config[group].get(leaf, ABSENT_FIELD_VALUES.get(name))
    spec[name] = list(value) if isinstance(value, (tuple, list)) else value
  spec['with_decoder'] = bool(config.loss.reconstruction)
  spec['channels'] = channels
  return spec


def build_model(config, channels: int, dtype: Any = None) -> ClusteringModel:
  """The model ``config`` describes, for images with ``channels`` channels,
  computing in ``dtype`` (default: config.train.compute_dtype)."""
  spec = model_spec(config, channels)
  spec['convnet_widths'] = tuple(spec['convnet_widths'])
  if dtype is None:
    dtype = jnp.dtype(config.train.get('compute_dtype', 'float32'))
  return ClusteringModel(**spec, alpha=config.loss.alpha, dtype=dtype)
