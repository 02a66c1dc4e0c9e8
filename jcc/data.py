"""Image sources for training and evaluation.

A source gives an :class:`ImageDataset`: uint8 images, NHWC, and labels when
they exist (used only for evaluation). The training order is a pure function
of (seed, epoch), so a resumed run sees the same batches.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import numpy as np

from absl import logging

from jcc.errors import DataError


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


def load_digits(dataset_config) -> ImageDataset:
  """scikit-learn's bundled 8×8 digits (1,797 images), scaled to uint8."""
  del dataset_config
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  return ImageDataset('digits', images[..., None], digits.target.astype(np.int64))


def load_npz(dataset_config) -> ImageDataset:
  """An .npz with uint8 `images` (NHW or NHWC) and optional int `labels`.

  Read without pickle: object arrays are refused.
  """
  path = dataset_config.path
  if not path:
    raise DataError(
        "dataset 'npz' needs a file: set --config.dataset.path=FILE.npz")
  if not os.path.isfile(path):
    raise DataError(
        f"dataset 'npz': no file at {path!r} (config.dataset.path).")
  try:
    with np.load(path, allow_pickle=False) as data:
      if 'images' not in data:
        raise DataError(
            f'{path}: has no `images` array (found {data.files}).')
      images = _as_nhwc_uint8(data['images'], path)
      labels = data['labels'].astype(np.int64) if 'labels' in data else None
  except (ValueError, OSError) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f'{path}: not a readable .npz of arrays ({e}).') from e
  if labels is not None and labels.shape != (images.shape[0],):
    raise DataError(
        f'{path}: `labels` has shape {labels.shape}, expected '
        f'({images.shape[0]},).')
  return ImageDataset('npz', images, labels)


IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif',
                    '.tiff')


def _list_images(root: str) -> tuple[list[str], list[int] | None, list[str]]:
  """(files, labels or None, class names): class subfolders, else flat."""
  def images_in(folder):
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and
                  os.path.isfile(os.path.join(folder, f)))

  classes = sorted(d for d in os.listdir(root)
                   if os.path.isdir(os.path.join(root, d)) and
                   images_in(os.path.join(root, d)))
  if not classes:
    return images_in(root), None, []
  files, labels = [], []
  for label, name in enumerate(classes):
    found = images_in(os.path.join(root, name))
    files += found
    labels += [label] * len(found)
  return files, labels, classes


def _read_image(path: str, size: int):
  """(H, W, C) uint8 at size × size, and whether it is grayscale; or None."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      image.load()
      gray = image.mode in ('1', 'L', 'I', 'I;16', 'F')
      image = image.convert('L' if gray else 'RGB')
      image = image.resize((size, size), Image.Resampling.BILINEAR)
      return np.asarray(image, np.uint8), gray
  except (OSError, ValueError, Image.DecompressionBombError):
    return None


def load_folder(dataset_config) -> ImageDataset:
  """Images under config.dataset.path, resized to image_size.

  ``PATH/<class>/*.png|jpg|…`` gives labels (class folders in sorted order);
  a flat folder gives none. Grayscale, RGB and RGBA files may be mixed: if any
  is colour, all become RGB. Unreadable or truncated files are skipped with a
  warning that lists them when ``config.dataset.skip_bad_images`` is True
  (else they are an error); a folder with no readable image is an error.
  """
  root = dataset_config.path
  if not root:
    raise DataError(
        "dataset 'folder' needs a directory: set "
        '--config.dataset.path=DIR (DIR/<class>/*.jpg, or a flat DIR).')
  if not os.path.isdir(root):
    raise DataError(
        f"dataset 'folder': no directory at {root!r} (config.dataset.path).")
  files, labels, _ = _list_images(root)
  if not files:
    raise DataError(
        f'{root}: no images found (looked for {", ".join(IMAGE_EXTENSIONS)} '
        'directly inside it and in its class subfolders).')
  decoded = [_read_image(f, dataset_config.image_size) for f in files]
  bad = [f for f, d in zip(files, decoded) if d is None]
  if len(bad) == len(files):
    raise DataError(f'{root}: none of the {len(files)} image files could be '
                    f'read (first: {bad[0]}).')
  if bad and not dataset_config.skip_bad_images:
    raise DataError(
        f'{root}: {len(bad)} unreadable image file(s): {", ".join(bad)}. '
        'Remove them, or set --config.dataset.skip_bad_images=True.')
  if bad:
    logging.warning('Skipped %d unreadable image file(s) in %s: %s', len(bad),
                    root, ', '.join(bad))
  good = [i for i, d in enumerate(decoded) if d is not None]
  any_colour = any(not decoded[i][1] for i in good)
  images = []
  for i in good:
    image, gray = decoded[i]
    if any_colour and gray:
      image = np.repeat(image[..., None], 3, axis=-1)
    images.append(image if image.ndim == 3 else image[..., None])
  label_array = None if labels is None else np.asarray(
      [labels[i] for i in good], np.int64)
  return ImageDataset('folder', np.stack(images), label_array)


DATASETS: dict[str, Callable[..., ImageDataset]] = {
    'digits': load_digits,
    'npz': load_npz,
    'folder': load_folder,
}


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """Resizes uint8 NHWC images to size × size (PIL bilinear, antialiased).

  Runs on the host with PIL, so loading data compiles nothing.
  """
  if images.shape[1:3] == (size, size):
    return images
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = np.empty((images.shape[0], size, size, images.shape[3]), np.uint8)
  for i, image in enumerate(images):
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    resized = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
    out[i] = resized.reshape(size, size, images.shape[3])
  return out


def load_dataset(dataset_config) -> ImageDataset:
  """The dataset ``config.dataset`` names, resized to its image_size."""
  name = dataset_config.name
  if name not in DATASETS:
    raise DataError(
        f'Unknown dataset {name!r} (config.dataset.name); choose one of '
        f'{sorted(DATASETS)}.')
  dataset = DATASETS[name](dataset_config)
  images = resize_images(dataset.images, dataset_config.image_size)
  return dataclasses.replace(dataset, images=images)


@functools.lru_cache(maxsize=2)
def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The permutation of the examples used in ``epoch``: f(seed, epoch) only.

  Cached (read-only), so the steps of an epoch share one permutation.
  """
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  order.setflags(write=False)
  return order


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
