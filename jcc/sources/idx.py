"""MNIST-like sources: a folder of IDX files, else TFDS."""

from __future__ import annotations

import gzip
import os

import numpy as np

from jcc.errors import DataError
from jcc.sources.dataset import ImageDataset
from jcc.sources.tfds import _tfds_source


_IDX_FILES = (('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
              ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'))


_IDX_CLASS_NAMES = {
    'mnist': tuple(str(d) for d in range(10)),
    'fashion_mnist': ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                      'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'),
}


def read_idx(path: str) -> np.ndarray:
  """An IDX file (the MNIST format; gzipped or not) as a uint8 array."""
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      raw = f.read()
  except OSError as e:
    raise DataError(f'{path}: not a readable IDX file ({e}).') from e
  if len(raw) < 4 or raw[:2] != b'\0\0' or raw[2] != 0x08:
    raise DataError(f'{path}: not an IDX file of uint8 (bad magic number).')
  ndim = raw[3]
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big')
                for i in range(ndim))
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != np.prod(shape):
    raise DataError(f'{path}: truncated (header says {shape}).')
  return data.reshape(shape)


def _find_idx(folder: str, stem: str) -> str | None:
  for name in (stem, stem + '.gz'):
    if os.path.isfile(os.path.join(folder, name)):
      return os.path.join(folder, name)
  return None


def _mnist_like_source(tfds_name: str):
  """MNIST-like: the IDX files in config.dataset.path, else TFDS train+test."""
  from_tfds = _tfds_source(tfds_name, 'train+test')

  def load(dataset_config) -> ImageDataset:
    folder = dataset_config.path
    if not folder:
      return from_tfds(dataset_config)
    if not os.path.isdir(folder):
      raise DataError(f'Dataset {tfds_name!r}: no directory at {folder!r} '
                      '(config.dataset.path, the folder of IDX files).')
    images, labels = [], []
    for image_stem, label_stem in _IDX_FILES:
      image_file = _find_idx(folder, image_stem)
      label_file = _find_idx(folder, label_stem)
      if image_file and label_file:
        images.append(read_idx(image_file))
        labels.append(read_idx(label_file).astype(np.int64))
    if not images:
      raise DataError(
          f'{folder}: no IDX pair (train-images-idx3-ubyte[.gz] with '
          'train-labels-idx1-ubyte[.gz], or the t10k- pair).')
    images, labels = np.concatenate(images), np.concatenate(labels)
    if images.shape[0] != labels.shape[0]:
      raise DataError(f'{folder}: {images.shape[0]} images but '
                      f'{labels.shape[0]} labels.')
    return ImageDataset(tfds_name, images[..., None], labels,
                        class_names=_IDX_CLASS_NAMES[tfds_name])

  load.__doc__ = (f'{tfds_name}: the IDX files in config.dataset.path (e.g. '
                  "Debian's dataset-{tfds_name.replace('_', '-')} in "
                  f"/usr/share/datasets/{tfds_name.replace('_', '-')}/), else "
                  'TFDS train+test.')
  return load
