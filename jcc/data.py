"""Image sources for training and evaluation.

A source gives an :class:`ImageDataset`: uint8 images, NHWC, and labels when
they exist (used only for evaluation). The training order is a pure function
of (seed, epoch), so a resumed run sees the same batches.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np


class DataError(ValueError):
  """A dataset is missing, unreadable or inconsistent with the config."""


@dataclasses.dataclass(frozen=True)
class ImageDataset:
  """Images in memory.

  Attributes:
    name: registry name of the source.
    images: (N, H, W, C) uint8.
    labels: (N,) int64 ground truth for evaluation, or None.
  """
  name: str
  images: np.ndarray
  labels: np.ndarray | None

  def __len__(self) -> int:
    return self.images.shape[0]

  @property
  def channels(self) -> int:
    return self.images.shape[-1]


def _as_nhwc_uint8(images: np.ndarray, where: str) -> np.ndarray:
  if images.dtype != np.uint8:
    raise DataError(f'{where}: images must be uint8, got {images.dtype}.')
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise DataError(
        f'{where}: images must be (N, H, W) or (N, H, W, 1|3); got shape '
        f'{images.shape}.')
  return images


def load_digits(path: str = '') -> ImageDataset:
  """scikit-learn's bundled 8×8 digits (1,797 images), scaled to uint8."""
  del path
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  return ImageDataset('digits', images[..., None], digits.target.astype(np.int64))


def load_npz(path: str) -> ImageDataset:
  """An .npz with uint8 `images` (NHW or NHWC) and optional int `labels`."""
  if not path:
    raise DataError(
        "dataset 'npz' needs a file: set --config.dataset.path=FILE.npz")
  if not os.path.isfile(path):
    raise DataError(
        f"dataset 'npz': no file at {path!r} (config.dataset.path).")
  with np.load(path, allow_pickle=False) as data:
    if 'images' not in data:
      raise DataError(f'{path}: has no `images` array (found {data.files}).')
    images = _as_nhwc_uint8(data['images'], path)
    labels = data['labels'].astype(np.int64) if 'labels' in data else None
  if labels is not None and labels.shape != (images.shape[0],):
    raise DataError(
        f'{path}: `labels` has shape {labels.shape}, expected '
        f'({images.shape[0]},).')
  return ImageDataset('npz', images, labels)


DATASETS: dict[str, Callable[[str], ImageDataset]] = {
    'digits': load_digits,
    'npz': load_npz,
}


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """Resizes uint8 NHWC images to size × size (bilinear, antialiased)."""
  if images.shape[1:3] == (size, size):
    return images
  import jax  # pylint: disable=g-import-not-at-top
  out_shape = (images.shape[0], size, size, images.shape[3])
  chunks = []
  for start in range(0, images.shape[0], 4096):
    chunk = images[start:start + 4096].astype(np.float32)
    resized = jax.image.resize(
        chunk, (chunk.shape[0],) + out_shape[1:], 'linear', antialias=True)
    chunks.append(np.clip(np.round(np.asarray(resized)), 0, 255))
  return np.concatenate(chunks).astype(np.uint8)


def load_dataset(dataset_config) -> ImageDataset:
  """The dataset ``config.dataset`` names, resized to its image_size."""
  name = dataset_config.name
  if name not in DATASETS:
    raise DataError(
        f'Unknown dataset {name!r} (config.dataset.name); choose one of '
        f'{sorted(DATASETS)}.')
  dataset = DATASETS[name](dataset_config.path)
  images = resize_images(dataset.images, dataset_config.image_size)
  return dataclasses.replace(dataset, images=images)


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The permutation of the examples used in ``epoch``: f(seed, epoch) only."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_batch_indices(
    num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Indices of the examples of global training batch ``step``.

  Epochs drop their last partial batch, so every batch has ``batch_size``
  examples and step s lies in epoch s // (num_examples // batch_size).
  """
  steps_per_epoch = num_examples // batch_size
  epoch, position = divmod(step, steps_per_epoch)
  order = epoch_order(num_examples, seed, epoch)
  return order[position * batch_size:(position + 1) * batch_size]
