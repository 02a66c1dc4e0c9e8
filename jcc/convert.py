"""Converts a folder of image files, an .npz, a folder of IDX files (MNIST's
format) or a TFDS dataset once into jcc's stored set.

  python -m jcc.convert --input=PHOTOS --output=STORED --image_size=64
  python -m jcc.convert --input=tfds:cifar10 --output=STORED --image_size=32

decodes every image once, resized to image_size × image_size, and writes
STORED/images.npy (uint8 N×S×S×C, NumPy's format), STORED/labels.npy (where
PHOTOS has class folders, and for the labelled datasets) and
STORED/info.json. ``tfds:NAME`` reads the images that
--config.dataset.name=NAME trains on (cifar10, cifar100, stl10 with its
unlabelled split, mnist, fashion_mnist, imagenet10, imagenet_dogs) from a
prepared TFDS dataset, through tf.data a batch at a time (the [tfds]
extra). Training then reads rows of
it with no decoding, streamed from disk when asked or when it would not fit
in memory:

  python -m jcc.main --config=... --config.dataset.name=converted \\
      --config.dataset.path=STORED --config.dataset.stream=True --workdir=DIR

Memory stays that of one chunk of images whatever the number of files, and
a line on stderr shows the progress. The files are written under temporary
names and renamed at the end, so an interrupted conversion leaves no set
that looks whole.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import zipfile

from absl import app
from absl import flags
import ml_collections
import numpy as np

from jcc import files
from jcc import progress
from jcc import sources
from jcc.errors import UserError
from jcc.sources import idx
from jcc.sources import image_files
from jcc.sources import streamed
from jcc.sources.arrays import load_npz, npz_member_header
from jcc.sources.dataset import (_class_indices, as_nhwc_uint8,
                                 resize_images)

_INPUT = flags.DEFINE_string(
    'input', None, 'a folder of image files (DIR/<class>/… or flat), an '
    '.npz with `images` (and `labels`), a folder of IDX files (MNIST), or '
    'tfds:NAME for the TFDS dataset that --config.dataset.name=NAME reads')
_OUTPUT = flags.DEFINE_string('output', None, 'the folder to write: new, or '
                              'empty')
_IMAGE_SIZE = flags.DEFINE_integer(
    'image_size', None, 'the side the images are stored at (use the '
    "config's dataset.image_size, or its crop_from_size where set)")
_TFDS_DATA_DIR = flags.DEFINE_string(
    'tfds_data_dir', '', "where TFDS keeps prepared datasets, for "
    "--input=tfds:NAME (TFDS's default where empty)")
_SKIP_BAD = flags.DEFINE_boolean(
    'skip_bad_images', True, 'skip unreadable files with a warning that '
    'lists them (else stop)')
# Images decoded and written at a time: the conversion's memory.
CHUNK = 512
TFDS_PREFIX = 'tfds:'


def _npz_chunks(path: str, shape: tuple[int, ...]):
  """The .npz's uint8 ``images`` (C order), CHUNK rows at a time, read
  from the archive as a stream: memory holds one chunk."""
  row = int(np.prod(shape[1:]))
  with zipfile.ZipFile(path) as archive, archive.open('images.npy') as f:
    streamed.read_npy_header(f)  # to the first row
    for begin in range(0, shape[0], CHUNK):
      count = min(CHUNK, shape[0] - begin)
      data = f.read(row * count)
      if len(data) != row * count:
        raise UserError(f'{path}: `images` ends early; write it again.')
      yield as_nhwc_uint8(np.frombuffer(data, np.uint8).reshape(
          (count,) + tuple(shape[1:])), path)


def _npz(path: str):
  """(rows, count, labels, class names) of an .npz: streamed
  where its images are uint8 in C order, else read into memory."""
  header = npz_member_header(path)
  with np.load(path, allow_pickle=False) as data:
    labels = (_class_indices(data['labels'], f'{path}: `labels`')
              if 'labels' in data else None)
    names = (tuple(str(c) for c in data['class_names'])
             if 'class_names' in data and data['class_names'].dtype.kind ==
             'U' else ())
  if header is not None and header[2] == np.uint8 and not header[1] and len(
      header[0]) in (3, 4):
    shape = header[0]
    return _npz_chunks(path, shape), shape[0], labels, names
  dataset = load_npz(ml_collections.ConfigDict({'path': path}))
  images = dataset.images
  return ((images[i:i + CHUNK] for i in range(0, len(images), CHUNK)),
          len(images), dataset.labels, names)


def _idx(folder: str):
  """(chunks of (images, labels), count, class names, names) of a folder
  of IDX files (MNIST's format): the images streamed, train then t10k."""
  pairs = idx.idx_pairs(folder)
  shapes = [idx.idx_chunks(images, None)[0] for images, _ in pairs]
  if any(len(shape) != 3 for shape in shapes):
    raise UserError(f'--input={folder}: its IDX images are not N×H×W.')
  labels = np.concatenate([idx.read_idx(labels) for _, labels in pairs])
  chunks = (chunk[..., None] for images, _ in pairs
            for chunk in idx.idx_chunks(images, CHUNK)[1])
  return (_with_labels(chunks, labels), sum(shape[0] for shape in shapes),
          (), None)


def _tfds(input_: str, size: int, data_dir: str):
  """(chunks of (images, labels), count or None where TFDS does not say,
  class names, None) of the TFDS dataset that jcc's dataset NAME reads,
  streamed by tf.data."""
  name = input_[len(TFDS_PREFIX):]
  entry = sources.DATASETS.get(name)
  if entry is None or entry.tfds_batches is None:
    readable = sorted(n for n, e in sources.DATASETS.items()
                      if e.tfds_batches is not None)
    raise UserError(f'--input={input_}: not a TFDS dataset jcc reads; give '
                    f'tfds: and one of {", ".join(readable)}.')
  dataset_config = ml_collections.ConfigDict({
      'name': name, 'image_size': size, 'tfds_data_dir': data_dir,
      'use_unlabelled': True})
  classes, count, chunks = entry.tfds_batches(dataset_config,
                                              converting=True)
  return chunks, count, classes, None


def _with_labels(chunks, labels: np.ndarray | None):
  """(images, labels or None) for each chunk, its rows of ``labels``."""
  done = 0
  for images in chunks:
    yield images, None if labels is None else labels[done:done + len(images)]
    done += len(images)


def _source(path: str, size: int, skip_bad: bool, tfds_data_dir: str = ''):
  """(chunks of (images, labels or None), count or None where unknown
  before the end, class names, each image's name or None)."""
  if path.startswith(TFDS_PREFIX):
    return _tfds(path, size, tfds_data_dir)
  if os.path.isfile(path) and path.endswith('.npz'):
    chunks, count, labels, classes = _npz(path)
    return _with_labels(chunks, labels), count, classes, None
  if not os.path.isdir(path):
    raise UserError(f'--input={path}: not a folder of images or an .npz '
                    'file.')
  if any(idx.find_idx(path, images) for images, _ in idx.IDX_FILES):
    return _idx(path)
  found, labels, classes, passed_over = image_files._list_images(path)  # pylint: disable=protected-access
  if not found:
    raise UserError(f'--input={path}: no images found (looked for '
                    f'{", ".join(image_files.IMAGE_EXTENSIONS)}, at any '
                    'depth).')
  image_files.warn_passed_over(path, passed_over)
  images, kept = image_files.stream_files(found, size, skip_bad, path)
  chunks = (images[i:i + CHUNK] for i in range(0, len(images), CHUNK))
  return (_with_labels(chunks,
                       None if labels is None else np.asarray(labels)[kept]),
          len(images), tuple(classes),
          [os.path.relpath(found[i], path) for i in kept])


def _check_output(output: str, source: str) -> None:
  if source.startswith(TFDS_PREFIX):
    source = ''  # nothing on disk for the output to lie in
  if os.path.isdir(output) and os.listdir(output):
    raise UserError(f'--output={output} is not empty; give a new or an empty '
                    'folder.')
  if os.path.exists(output) and not os.path.isdir(output):
    raise UserError(f'--output={output} is a file; give a folder.')
  real = os.path.realpath(output)
  if source and os.path.isdir(source) and (real + os.sep).startswith(
      os.path.realpath(source).rstrip(os.sep) + os.sep):
    raise UserError(f'--output={output} lies inside --input; put it outside.')


def _progress(done: int, total: int | None, start: float,
              end: str = '') -> None:
  """One line on stderr, rewritten in place; ``total`` None where the
  source does not say its size before the end (TFDS)."""
  rate = done / max(time.time() - start, 1e-9)
  if total is None:
    line = f'converted {done:,} images ({rate:,.0f}/s)'
  else:
    left = (total - done) / rate if rate else 0
    line = (f'converted {done:,}/{total:,} images ({rate:,.0f}/s, about '
            f'{left:,.0f} s left)')
  print(f'\r{line}', end=end, file=sys.stderr, flush=True)


def _header(count: int, size: int, channels: int) -> bytes:
  """images.npy's header. NumPy leaves room in it for the first axis to
  grow, so its length does not depend on ``count`` or ``channels``: it is
  written before the rows and again, with the true shape, after them."""
  header = io.BytesIO()
  np.lib.format.write_array_header_1_0(header, {
      'descr': '|u1', 'fortran_order': False,
      'shape': (count, size, size, channels)})
  return header.getvalue()


def convert(source: str, output: str, size: int,
            skip_bad_images: bool = True, show_progress: bool = True,
            tfds_data_dir: str = '') -> str:
  """Writes ``source`` (a folder of images or of IDX files, an .npz, or
  ``tfds:NAME``) to ``output`` as the stored set that dataset 'converted'
  reads; returns the path of its images.npy."""
  _check_output(output, source)
  chunks, count, classes, names = _source(source, size, skip_bad_images,
                                          tfds_data_dir)
  os.makedirs(output, exist_ok=True)
  path = os.path.join(output, streamed.IMAGES)
  partial = path + '.partial'
  start = time.time()
  done, channels, label_chunks = 0, None, []
  with open(partial, 'wb') as f:
    f.write(_header(0, size, 1))
    for images, labels in chunks:
      channels = channels or images.shape[-1]
      f.write(np.ascontiguousarray(resize_images(images, size)).tobytes())
      done += len(images)
      label_chunks.append(labels)
      if show_progress:
        _progress(done, count, start)
    if done:
      header = _header(done, size, channels)
      assert len(header) == len(_header(0, size, 1)), 'npy header grew'
      f.seek(0)
      f.write(header)
  if not done:
    os.remove(partial)
    raise UserError(f'--input={source}: holds no image.')
  if show_progress:
    _progress(done, count, start, end='\n')
  os.replace(partial, path)
  labels = (None if any(chunk is None for chunk in label_chunks)
            else np.concatenate(label_chunks))
  if labels is not None:
    with files.atomic_write(os.path.join(output, streamed.LABELS),
                            'wb') as f:
      np.save(f, labels.astype(np.int64))
  with files.atomic_write(os.path.join(output, streamed.INFO)) as f:
    json.dump({'image_size': size, 'channels': int(channels),
               'count': done,
               'source': (source if source.startswith(TFDS_PREFIX)
                          else os.path.abspath(source)),
               'class_names': list(classes), 'image_names': names}, f)
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  progress.configure_command_line()
  missing = [f'--{name}' for name, flag in (
      ('input', _INPUT), ('output', _OUTPUT), ('image_size', _IMAGE_SIZE))
             if flag.value is None]
  try:
    if missing:
      raise UserError(f'{" and ".join(missing)} missing: python -m '
                      'jcc.convert --input=IMAGES --output=DIR '
                      '--image_size=S')
    if not 8 <= _IMAGE_SIZE.value <= 512:
      raise UserError(f'--image_size={_IMAGE_SIZE.value}: must be an integer '
                      'from 8 to 512.')
    path = convert(_INPUT.value, _OUTPUT.value, _IMAGE_SIZE.value,
                   _SKIP_BAD.value, tfds_data_dir=_TFDS_DATA_DIR.value)
  except UserError as e:
    print(f'jcc: error: {e}', file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print('\njcc: interrupted; nothing was written under --output but a '
          f'{streamed.IMAGES}.partial to delete.', file=sys.stderr)
    sys.exit(130)
  print(f'Wrote {path}; train on it with --config.dataset.name=converted '
        f'--config.dataset.path={_OUTPUT.value}')


if __name__ == '__main__':
  app.run(main)
