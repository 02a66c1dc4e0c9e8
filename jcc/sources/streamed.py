"""Images read from disk as the batches need them: data bigger than memory.

A streamed dataset's ``images`` is a :class:`StreamedImages`, not an array:
indexing it (an int, a slice or an index array) reads those rows alone, so a
run's memory does not grow with the number of images. Two storages:

* :class:`FileImages`: image files, decoded at every read on a pool of
  threads, as :func:`jcc.sources.decode_images` decodes them;
* :class:`StoredImages`: the uint8 ``images.npy`` that ``python -m
  jcc.convert`` writes once, read by rows with no decoding.

Nothing else changes for a streamed run: the training order is a function
of (seed, epoch) (:mod:`jcc.pipeline`), so a resumed run reads the same rows
as an uninterrupted one (the reader's state is the step, which the
checkpoint holds), and each host reads only its own rows of each batch.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import threading

from absl import logging
import numpy as np

from jcc.errors import DataError
from jcc.sources.dataset import resize_image

# Files opened at once by a read (Pillow's decoders release the GIL).
_THREADS = min(32, (os.cpu_count() or 1) + 4)
# The decoded set may take this share of the machine's memory before a
# folder is streamed on its own (config.dataset.stream unset).
MEMORY_SHARE = 0.5


def read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
  """(shape, Fortran order, dtype) from an open .npy stream, left at the
  first byte of the data; ValueError where it is no .npy header."""
  version = np.lib.format.read_magic(f)
  read = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
          np.lib.format.read_array_header_2_0)
  return read(f)


def memory_budget() -> int:
  """Bytes the in-memory path may take: half of this machine's memory."""
  try:
    total = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    total = 8 * 2**30
  return int(MEMORY_SHARE * total)


def decoded_size(count: int, size: int, channels: int) -> int:
  """Bytes of ``count`` uint8 images of size × size × channels."""
  return count * size * size * channels


def held_size(dataset_config, count: int, channels: int) -> int:
  """Bytes of ``count`` images held in memory at image_size, and at
  crop_from_size too where that is set (the views' source)."""
  sizes = {dataset_config.image_size,
           dataset_config.get('crop_from_size', 0) or
           dataset_config.image_size}
  return sum(decoded_size(count, size, channels) for size in sizes)


def choose_streaming(dataset_config, count: int, channels: int,
                     where: str) -> bool:
  """Whether to stream ``count`` images that can be, by config.dataset.stream:
  True streams; unset (None) streams where the decoded set (at image_size,
  and at crop_from_size too where that is set) would pass
  :func:`memory_budget`, which a warning then says; False never streams, and
  raises DataError where the set would pass the budget."""
  stream = dataset_config.get('stream')
  if stream:
    return True
  needed = held_size(dataset_config, count, channels)
  budget = memory_budget()
  if needed <= budget:
    return False
  over = (f'{where}: {count} images take {needed / 1e9:.1f} GB decoded, over '
          f'the in-memory budget of {budget / 1e9:.1f} GB (half this '
          "machine's memory)")
  if stream is not None:
    raise DataError(
        f'{over}; stream them from disk with --config.dataset.stream=True '
        '(or leave dataset.stream unset, which streams them when they do not '
        'fit).')
  logging.warning('%s: they are read from disk as the batches need them, as '
                  '--config.dataset.stream=True asks.', over)
  return True


def refuse_streaming(dataset_config) -> None:
  """DataError for config.dataset.stream on a source read into memory."""
  if dataset_config.get('stream', False):
    raise DataError(
        f"config.dataset.stream=True: dataset {dataset_config.name!r} is read "
        'into memory; stream a folder of image files, or convert the set '
        'once (python -m jcc.convert --input=PATH, or --input=tfds:NAME '
        'for a TFDS dataset) and train on it with '
        '--config.dataset.name=converted.')


class StreamedImages:
  """uint8 (N, size, size, C) images on disk, read by rows when indexed."""

  def __init__(self, count: int, size: int, channels: int):
    self.shape = (count, size, size, channels)
    self.dtype = np.dtype(np.uint8)
    self.ndim = 4

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, (int, np.integer)):
      if not -len(self) <= key < len(self):
        raise IndexError(f'row {key} of {len(self)}')
      return self._read(np.asarray([key % len(self)]))[0]
    if isinstance(key, slice):
      return self._read(np.arange(len(self))[key])
    rows = np.asarray(key)
    if rows.dtype == bool:
      rows = np.flatnonzero(rows)
    return self._read(rows.astype(np.int64).reshape(-1))

  def _read(self, rows: np.ndarray) -> np.ndarray:
    raise NotImplementedError

  def resized(self, size: int) -> 'StreamedImages':
    """The same images, read at size × size."""
    raise NotImplementedError

  def digest(self) -> str:
    """16 hex digits that change when the images do (the model signature's
    content digest), without reading every image into memory."""
    raise NotImplementedError


# How a streamed folder's digest starts (its files' names and sizes), where a
# folder read into memory digests its decoded images.
FILES_DIGEST = 'files-'


class FileImages(StreamedImages):
  """Image files decoded at every read; ``mode`` 'L' or 'RGB'. A file that
  cannot be decoded when read (it was opened when listed, so truncated, or
  changed since) gives a mid-grey image and is named once in a warning."""

  def __init__(self, files: list[str], size: int, mode: str, where: str):
    super().__init__(len(files), size, 1 if mode == 'L' else 3)
    self.files, self.mode, self.where = list(files), mode, where
    self._failed: set[str] = set()
    self._lock = threading.Lock()

  def _read_one(self, path: str) -> np.ndarray:
    from jcc.sources import image_files  # pylint: disable=g-import-not-at-top
    try:
      return image_files._read_image(path, self.shape[1], self.mode)[0]  # pylint: disable=protected-access
    except image_files._BadImage as e:  # pylint: disable=protected-access
      with self._lock:
        if path not in self._failed:
          self._failed.add(path)
          logging.warning('%s: %s is %s now; it is read as a grey image.',
                          self.where, path, e)
      return np.full(self.shape[1:], 128, np.uint8)

  def _read(self, rows: np.ndarray) -> np.ndarray:
    out = np.empty((len(rows),) + self.shape[1:], np.uint8)
    with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
      for i, image in enumerate(pool.map(
          self._read_one, [self.files[r] for r in rows])):
        out[i] = image
    return out

  def resized(self, size: int) -> 'FileImages':
    if size == self.shape[1]:
      return self
    return FileImages(self.files, size, self.mode, self.where)

  def digest(self) -> str:
    """'files-' and 16 hex digits of the files' names and sizes (the same
    on every host), not of their content: that would decode every one."""
    h = hashlib.sha256(f'{self.shape}'.encode())
    for path in self.files:
      h.update(f'{os.path.basename(path)}\0{os.path.getsize(path)}\0'.encode())
    return FILES_DIGEST + h.hexdigest()[:16]


# The converted format: DIR/images.npy (uint8 N×S×S×C, NumPy's format),
# DIR/labels.npy (int64, where the source had classes) and DIR/info.json.
IMAGES, LABELS, INFO = 'images.npy', 'labels.npy', 'info.json'


class StoredImages(StreamedImages):
  """The rows of a converted ``images.npy``, read with ``os.pread`` (not a
  memory map: pages read once do not stay in the process's memory), and
  resized on the way where ``size`` is not the stored size."""

  def __init__(self, path: str, size: int | None = None):
    with open(path, 'rb') as f:
      try:
        shape, fortran, dtype = read_npy_header(f)
      except ValueError as e:
        raise DataError(f'{path}: not a NumPy array file ({e}); convert '
                        'again with python -m jcc.convert.') from None
      self._offset = f.tell()
    if dtype != np.uint8 or fortran or len(shape) != 4:
      raise DataError(f'{path}: not a uint8 (N, H, W, C) array in C order; '
                      'write it with python -m jcc.convert.')
    expected = self._offset + int(np.prod(shape))
    if os.path.getsize(path) < expected:
      raise DataError(f'{path}: {os.path.getsize(path)} bytes, short of the '
                      f'{expected} its header promises (an interrupted '
                      'conversion?); convert again.')
    self.path, self.stored_shape = path, tuple(shape)
    super().__init__(shape[0], size or shape[1], shape[3])

  def _read(self, rows: np.ndarray) -> np.ndarray:
    if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
      raise IndexError(f'rows outside 0…{len(self) - 1}')
    row_bytes = int(np.prod(self.stored_shape[1:]))
    stored = np.empty((len(rows),) + self.stored_shape[1:], np.uint8)
    flat = stored.reshape(len(rows), row_bytes)
    fd = os.open(self.path, os.O_RDONLY)
    try:
      order = np.argsort(rows, kind='stable')
      start = 0
      while start < len(order):  # one read per run of consecutive rows
        end = start + 1
        while (end < len(order) and
               rows[order[end]] == rows[order[end - 1]] + 1):
          end += 1
        data = os.pread(fd, row_bytes * (end - start),
                        self._offset + int(rows[order[start]]) * row_bytes)
        flat[order[start:end]] = np.frombuffer(data, np.uint8).reshape(
            end - start, row_bytes)
        start = end
    finally:
      os.close(fd)
    if self.shape[1] == self.stored_shape[1]:
      return stored
    return np.stack([resize_image(image, self.shape[1]) for image in stored])

  def resized(self, size: int) -> 'StoredImages':
    if size == self.shape[1]:
      return self
    return StoredImages(self.path, size)

  def digest(self) -> str:
    """The digest of these images read into memory, read in chunks."""
    if self.shape != self.stored_shape:  # resized as read: digest those
      h = hashlib.sha256()
      for start in range(0, len(self), 1024):
        h.update(np.ascontiguousarray(self[start:start + 1024]).data)
      return h.hexdigest()[:16]
    h = hashlib.sha256()
    with open(self.path, 'rb') as f:
      f.seek(self._offset)
      for chunk in iter(lambda: f.read(2**24), b''):
        h.update(chunk)
    return h.hexdigest()[:16]


def is_converted(folder: str) -> bool:
  """Whether ``folder`` holds a set ``python -m jcc.convert`` wrote."""
  return all(os.path.isfile(os.path.join(folder, name))
             for name in (IMAGES, INFO))


def read_info(folder: str) -> dict:
  """DIR/info.json of a converted dataset; DataError where there is none."""
  path = os.path.join(folder, INFO)
  if not os.path.isfile(path) or not os.path.isfile(
      os.path.join(folder, IMAGES)):
    raise DataError(
        f"dataset 'converted': no {IMAGES} and {INFO} in {folder!r} "
        '(config.dataset.path); write them with python -m jcc.convert '
        f'--input=IMAGES --output={folder or "DIR"}.')
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f'{path}: unreadable ({e}); convert again.') from None


def load_converted(dataset_config) -> 'ImageDataset':
  """A set that ``python -m jcc.convert`` wrote to config.dataset.path:
  streamed from disk by rows (:class:`StoredImages`) where
  :func:`choose_streaming` says so, else read into memory in one read."""
  from jcc.sources.dataset import ImageDataset  # pylint: disable=g-import-not-at-top
  folder = dataset_config.path
  info = read_info(folder)
  images = StoredImages(os.path.join(folder, IMAGES))
  labels_path = os.path.join(folder, LABELS)
  labels = (np.load(labels_path, allow_pickle=False).astype(np.int64)
            if os.path.isfile(labels_path) else None)
  if labels is not None and labels.shape != (len(images),):
    raise DataError(f'{labels_path}: {labels.shape[0]} labels for '
                    f'{len(images)} images; convert again.')
  if not choose_streaming(dataset_config, len(images), images.shape[3],
                          folder):
    images = images[:]
  names = info.get('image_names')
  # Label −1: an image without a class (STL-10's unlabelled split), which
  # trains the instance objective alone, as the TFDS source gives it.
  unlabelled = None if labels is None else labels < 0
  return ImageDataset(
      'converted', images, labels,
      unlabelled if unlabelled is not None and unlabelled.any() else None,
      class_names=tuple(info.get('class_names') or ()) or None,
      image_names=tuple(names) if names else None)
