"""The in-memory dataset every source ends in, and the one resizer.

:class:`ImageDataset` holds uint8 NHWC images and, where they exist, labels
(used only for evaluation); :func:`resize_image` brings every source's images
to ``config.dataset.image_size``.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from jcc.errors import DataError


@dataclasses.dataclass(frozen=True)
class ImageDataset:
  """Images in memory.

  Attributes:
    name: registry name of the source.
    images: (N, H, W, C) uint8.
    labels: (N,) int64 ground truth for evaluation, or None.
    instance_only: (N,) bool, True for examples that train the instance
      objective alone (STL-10's unlabelled split): they take no part in the
      cluster, entropy and KL terms, the centroids or the evaluation. None
      when every example is clustered.
    class_names: the name of each label value, when the source knows them.
    image_names: each image's file, relative to the folder it was read from,
      for sources of image files (the report names them).
    crop_source: the same images at config.dataset.crop_from_size, which the
      training views are cut from, or None: they are cut from ``images``.
  """
  name: str
  images: np.ndarray
  labels: np.ndarray | None
  instance_only: np.ndarray | None = None
  class_names: tuple[str, ...] | None = None
  image_names: tuple[str, ...] | None = None
  crop_source: np.ndarray | None = None

  def __len__(self) -> int:
    return self.images.shape[0]

  @property
  def train_images(self) -> np.ndarray:
    """The images the training batches carry: ``crop_source`` where there
    is one, else ``images``."""
    return self.images if self.crop_source is None else self.crop_source

  @property
  def channels(self) -> int:
    return self.images.shape[-1]

  def content_digest(self) -> str:
    """SHA-256 of the images (as loaded, resized), the first 16 hex digits:
    the same images give the same digest whichever way they arrive (a
    streamed set's own :meth:`digest`)."""
    if hasattr(self.images, 'digest'):
      return self.images.digest()
    return hashlib.sha256(np.ascontiguousarray(self.images).data).hexdigest(
    )[:16]

  @property
  def cluster_indices(self) -> np.ndarray:
    """Indices of the examples that are clustered and evaluated."""
    if self.instance_only is None:
      return np.arange(len(self))
    return np.flatnonzero(~self.instance_only)


def as_nhwc_uint8(images: np.ndarray, where: str) -> np.ndarray:
  """``images`` as uint8 NHWC, grey or RGB: a missing channel axis added,
  and an alpha channel dropped (grey+alpha, RGBA), as an image file's is; a
  DataError naming ``where`` unless uint8 (N, H, W) or (N, H, W, 1-4)."""
  if images.dtype != np.uint8:
    fix = ''
    if images.dtype.kind == 'f' and images.size:
      # Floats in 0-255 are scaled already; in [0, 1] they need it.
      fix = ('; these floats span 0-255: x.round().astype(np.uint8)'
             if np.nanmax(images) > 1 else
             '; from floats in [0, 1]: (x * 255).round().astype(np.uint8)')
    raise DataError(f'{where}: images must be uint8 (0-255), got '
                    f'{images.dtype}{fix}.')
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 2, 3, 4):
    raise DataError(
        f'{where}: images must be (N, H, W) or (N, H, W, C) with C 1-4 '
        f'(grey, grey+alpha, RGB, RGBA); got shape {images.shape}.')
  if images.shape[-1] in (2, 4):  # the alpha channel is not the picture
    images = images[..., :-1]
  return images


def _class_indices(labels: np.ndarray, where: str) -> np.ndarray:
  """``labels`` as int64 class indices; a DataError unless integral and >= 0."""
  if labels.dtype.kind == 'f':
    bad = ~np.isfinite(labels) | (labels != np.round(labels))
    if bad.any():
      raise DataError(
          f'{where}: {int(bad.sum())} value(s) are not whole numbers (first: '
          f'{labels[bad][0]}); labels must be class indices 0, 1, 2, …')
  elif labels.dtype.kind not in 'iub':
    raise DataError(f'{where}: dtype {labels.dtype}; labels must be integer '
                    'class indices 0, 1, 2, …')
  labels = labels.astype(np.int64)
  if labels.size and labels.min() < 0:
    raise DataError(
        f'{where}: {int((labels < 0).sum())} negative value(s) (first: '
        f'{labels[labels < 0][0]}); labels must be class indices 0, 1, 2, …')
  return labels


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """One uint8 HWC image at size × size: the resizer of every source.

  PIL's bilinear filter, which antialiases when it shrinks; an image already
  at the size is passed through, so its pixels stay exact. Runs on the host,
  so loading data compiles nothing.
  """
  if image.shape[:2] == (size, size):
    return image
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  resized = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
  return resized.reshape(size, size, image.shape[-1])


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """Resizes uint8 NHWC images to size × size (:func:`resize_image`)."""
  if images.shape[1:3] == (size, size):
    return images
  if hasattr(images, 'resized'):  # streamed: resized as it is read
    return images.resized(size)
  out = np.empty((images.shape[0], size, size, images.shape[3]), np.uint8)
  for i, image in enumerate(images):
    out[i] = resize_image(image, size)
  return out


def rgb_to_gray(images: np.ndarray) -> np.ndarray:
  """uint8 (…, 3) RGB → (…, 1) grey by ITU-R 601-2 luma, in Pillow's own
  integer arithmetic: the grey that ``Image.convert('L')`` gives an image
  file, so an array and a file of the same picture become the same grey."""
  r, g, b = (images[..., i].astype(np.uint32) for i in range(3))
  luma = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
  return luma.astype(np.uint8)[..., None]


def conform_images(images: np.ndarray, size: int, channels: int
                   ) -> np.ndarray:
  """uint8 NHWC images at size × size with ``channels`` channels, made as an
  image file's are: RGB made grey by :func:`rgb_to_gray` (grey made RGB by
  repetition), then resized as every source is."""
  if images.shape[-1] != channels:
    images = rgb_to_gray(images) if channels == 1 else np.repeat(
        images, channels, axis=-1)
  return resize_images(images, size)


def count_distinct(images: np.ndarray, limit: int = 1000) -> int:
  """The number of distinct images, counted up to ``limit`` (then ``limit``):
  enough to tell a dataset of copies from a real one, without hashing all
  of a large one."""
  seen = set()
  # A streamed set (read from disk) is sampled in its first ``limit``.
  end = len(images) if isinstance(images, np.ndarray) else limit
  for start in range(0, min(end, len(images)), limit):
    for image in images[start:start + limit]:
      seen.add(hash(image.tobytes()))
      if len(seen) >= limit:
        return len(seen)
  return len(seen)
