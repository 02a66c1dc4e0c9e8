"""MNIST-like sources: a folder of IDX files, else TFDS."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator

import numpy as np

from jcc.errors import DataError
from jcc.sources.dataset import ImageDataset
from jcc.sources.tfds import _tfds_source


IDX_FILES = (('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
              ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'))


_IDX_CLASS_NAMES = {
    'mnist': tuple(str(d) for d in range(10)),
    'fashion_mnist': ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                      'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'),
}


def read_idx(path: str) -> np.ndarray:
  """An IDX file (the MNIST format; gzipped or not) as a uint8 array."""
  shape, chunks = idx_chunks(path, None)
  return next(chunks, np.zeros(shape, np.uint8)).reshape(shape)


def idx_chunks(path: str, rows: int | None
               ) -> tuple[tuple[int, ...], Iterator[np.ndarray]]:
  """An IDX file's shape, and its uint8 rows ``rows`` at a time (None: all
  at once), read as a stream: memory holds one chunk."""
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      head = f.read(4)
      if len(head) < 4 or head[:2] != b'\0\0' or head[2] != 0x08:
        raise DataError(f'{path}: not an IDX file of uint8 (bad magic '
                        'number).')
      dims = f.read(4 * head[3])
  except OSError as e:
    raise DataError(f'{path}: not a readable IDX file ({e}).') from e
  shape = tuple(int.from_bytes(dims[4 * i:4 * i + 4], 'big')
                for i in range(head[3]))
  row, step = int(np.prod(shape[1:])), rows or max(shape[0], 1)

  def chunks():
    with opener(path, 'rb') as f:
      f.read(4 + len(dims))
      for begin in range(0, shape[0], step):
        count = min(step, shape[0] - begin)
        data = f.read(row * count)
        if len(data) != row * count:
          raise DataError(f'{path}: truncated (header says {shape}).')
        yield np.frombuffer(data, np.uint8).reshape((count,) + shape[1:])

  return shape, chunks()


def idx_pairs(folder: str) -> list[tuple[str, str]]:
  """The (images, labels) IDX files of ``folder``: train, then t10k."""
  pairs = [(find_idx(folder, images), find_idx(folder, labels))
           for images, labels in IDX_FILES]
  pairs = [(images, labels) for images, labels in pairs if images and labels]
  if not pairs:
    raise DataError(
        f'{folder}: no IDX pair (train-images-idx3-ubyte[.gz] with '
        'train-labels-idx1-ubyte[.gz], or the t10k- pair).')
  return pairs


def find_idx(folder: str, stem: str) -> str | None:
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
    pairs = idx_pairs(folder)
    images = np.concatenate([read_idx(images) for images, _ in pairs])
    labels = np.concatenate([read_idx(labels).astype(np.int64)
                             for _, labels in pairs])
    if images.shape[0] != labels.shape[0]:
      raise DataError(f'{folder}: {images.shape[0]} images but '
                      f'{labels.shape[0]} labels.')
    return ImageDataset(tfds_name, images[..., None], labels,
                        class_names=_IDX_CLASS_NAMES[tfds_name])

  load.__doc__ = (f'{tfds_name}: the IDX files in config.dataset.path (e.g. '
                  "Debian's dataset-{tfds_name.replace('_', '-')} in "
                  f"/usr/share/datasets/{tfds_name.replace('_', '-')}/), else "
                  'TFDS train+test.')
  load.batches = from_tfds.batches
  return load
