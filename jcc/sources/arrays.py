"""Sources held as arrays: scikit-learn's embedded digits, .npz files, and
the arrays a Python caller passes (:class:`jcc.Clusterer`)."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from jcc.errors import DataError
from jcc.sources import streamed
from jcc.sources.dataset import ImageDataset, as_nhwc_uint8, _class_indices


def load_digits(dataset_config) -> ImageDataset:
  """scikit-learn's bundled 8×8 digits (1,797 images), scaled to uint8."""
  del dataset_config
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  return ImageDataset('digits', images[..., None],
                      digits.target.astype(np.int64),
                      class_names=tuple(str(d) for d in range(10)))


def from_arrays(images: np.ndarray, labels=None) -> ImageDataset:
  """The images (and labels) a caller passes in memory, as the dataset
  'arrays': uint8 (N, H, W) or (N, H, W, C); ``labels`` (N,) class indices
  for evaluation, or None."""
  images = as_nhwc_uint8(np.asarray(images), 'X')
  if labels is not None:
    labels = _class_indices(np.asarray(labels), 'y')
    if labels.shape != (images.shape[0],):
      raise DataError(f'y has shape {labels.shape}: give one label per image, '
                      f'({images.shape[0]},).')
  return ImageDataset('arrays', images, labels)


def refuse_arrays(dataset_config) -> ImageDataset:
  """The registry's 'arrays': only a Python caller has them."""
  del dataset_config
  raise DataError(
      "dataset 'arrays' lives in memory: pass the images to "
      "jcc.Clusterer.fit(X); from files, use config.dataset.name='npz' or "
      "'folder'.")


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
  _check_npz_file(path)
  _check_fits_in_memory(path)
  try:
    with np.load(path, allow_pickle=False) as data:
      if 'images' not in data:
        raise DataError(
            f'{path}: has no `images` array (found {data.files}).')
      members = {name: data[name] for name in ('images', 'labels')
                 if name in data}
      for name, member in members.items():
        if not isinstance(member, np.ndarray):
          raise DataError(f'{path}: `{name}` is not a NumPy array (a damaged '
                          'or hand-made file); write one with np.savez(path, '
                          'images=images[, labels=labels]).')
      images = as_nhwc_uint8(members['images'], path)
      labels = (_class_indices(members['labels'], f'{path}: `labels`')
                if 'labels' in members else None)
      class_names = None
      if 'class_names' in data and data['class_names'].dtype.kind == 'U':
        class_names = tuple(str(c) for c in data['class_names'])
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    # A zip cut short or with a bad CRC (zipfile.BadZipFile), a member that
    # is no array: one line, whichever step meets it.
    if isinstance(e, DataError):
      raise
    if 'allow_pickle' in str(e) or 'Object arrays' in str(e):
      raise DataError(
          f'{path}: holds object arrays, which jcc does not load (loading '
          'them can run code). Save the images as a uint8 array: '
          'np.savez(path, images=images).') from None
    raise DataError(f'{path}: not a readable .npz of arrays ({e}).') from e
  if labels is not None and labels.shape != (images.shape[0],):
    raise DataError(
        f'{path}: `labels` has shape {labels.shape}, expected '
        f'({images.shape[0]},).')
  if labels is not None and labels.size and labels.max() >= len(images):
    raise DataError(
        f'{path}: `labels` holds {labels.max()} for {len(images)} images; '
        'labels must be class indices 0, 1, 2, … (fewer classes than '
        'images).')
  return ImageDataset('npz', images, labels, class_names=class_names)


def npz_member_header(path: str, member: str = 'images'):
  """(shape, fortran order, dtype) of an .npz member, from its header
  alone, or None where the member is missing or unreadable."""
  try:
    with zipfile.ZipFile(path) as archive, archive.open(member + '.npy') as f:
      return streamed.read_npy_header(f)
  except (KeyError, ValueError, OSError, zipfile.BadZipFile):
    return None


def _check_fits_in_memory(path: str) -> None:
  """DataError for an .npz whose images would take over the in-memory
  budget (:func:`jcc.sources.streamed.memory_budget`), before reading it."""
  header = npz_member_header(path)
  if header is None:
    return
  shape, _, dtype = header
  size = int(np.prod(shape)) * dtype.itemsize
  if size > streamed.memory_budget():
    raise DataError(
        f'{path}: its images take {size / 1e9:.1f} GB, over half this '
        "machine's memory. Convert them once (python -m jcc.convert "
        f'--input={path} --output=DIR --image_size=S) and train on DIR with '
        '--config.dataset.name=converted --config.dataset.stream=True.')


def _check_npz_file(path: str) -> None:
  """Raises DataError, saying what the file is, unless it is a zip (.npz)."""
  with open(path, 'rb') as f:
    start = f.read(6)
  if start.startswith(b'PK'):
    return
  if not start:
    what = 'an empty file (0 bytes)'
  elif start.startswith(b'\x93NUMPY'):
    what = 'one .npy array, not an .npz'
  else:
    what = 'not an .npz (a zip of arrays)'
  raise DataError(f'{path}: {what}. Write one with np.savez(path, '
                  'images=images[, labels=labels]).')
