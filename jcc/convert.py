"""Converts a folder of image files, an .npz or a folder of IDX files (MNIST's
format) once into jcc's stored set.

  python -m jcc.convert --input=PHOTOS --output=STORED --image_size=64

decodes every image once, resized to image_size × image_size, and writes
STORED/images.npy (uint8 N×S×S×C, NumPy's format), STORED/labels.npy (where
PHOTOS has class folders) and STORED/info.json. Training then reads rows of
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
from jcc.errors import UserError
from jcc.sources import idx
from jcc.sources import image_files
from jcc.sources import streamed
from jcc.sources.arrays import load_npz, npz_member_header
from jcc.sources.dataset import (_class_indices, as_nhwc_uint8,
                                 resize_images)

_INPUT = flags.DEFINE_string(
    'input', None, 'a folder of image files (DIR/<class>/… or flat), an '
    '.npz with `images` (and `labels`), or a folder of IDX files (MNIST)')
_OUTPUT = flags.DEFINE_string('output', None, 'the folder to write: new, or '
                              'empty')
_IMAGE_SIZE = flags.DEFINE_integer(
    'image_size', None, 'the side the images are stored at (use the '
    "config's dataset.image_size, or its crop_from_size where set)")
_SKIP_BAD = flags.DEFINE_boolean(
    'skip_bad_images', True, 'skip unreadable files with a warning that '
    'lists them (else stop)')
# Images decoded and written at a time: the conversion's memory.
CHUNK = 512


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
  """(rows, count, channels, labels, class names) of an .npz: streamed
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
    channels = 1 if len(shape) == 3 else shape[3]
    channels = 3 if channels == 4 else 1 if channels == 2 else channels
    return _npz_chunks(path, shape), shape[0], channels, labels, names
  dataset = load_npz(ml_collections.ConfigDict({'path': path}))
  images = dataset.images
  return ((images[i:i + CHUNK] for i in range(0, len(images), CHUNK)),
          len(images), images.shape[-1], dataset.labels, names)


def _idx(folder: str):
  """(chunks, count, channels, labels, class names, names) of a folder of
  IDX files (MNIST's format): the images streamed, train then t10k."""
  pairs = idx.idx_pairs(folder)
  shapes = [idx.idx_chunks(images, None)[0] for images, _ in pairs]
  if any(len(shape) != 3 for shape in shapes):
    raise UserError(f'--input={folder}: its IDX images are not N×H×W.')
  labels = np.concatenate([idx.read_idx(labels) for _, labels in pairs])
  chunks = (chunk[..., None] for images, _ in pairs
            for chunk in idx.idx_chunks(images, CHUNK)[1])
  return chunks, sum(shape[0] for shape in shapes), 1, labels, (), None


def _source(path: str, size: int, skip_bad: bool):
  """(chunks of images, count, channels, labels or None, class names,
  each image's name or None)."""
  if os.path.isfile(path) and path.endswith('.npz'):
    chunks, count, channels, labels, classes = _npz(path)
    return chunks, count, channels, labels, classes, None
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
  return (chunks, len(images), images.shape[-1],
          None if labels is None else np.asarray(labels)[kept],
          tuple(classes), [os.path.relpath(found[i], path) for i in kept])


def _check_output(output: str, source: str) -> None:
  if os.path.isdir(output) and os.listdir(output):
    raise UserError(f'--output={output} is not empty; give a new or an empty '
                    'folder.')
  if os.path.exists(output) and not os.path.isdir(output):
    raise UserError(f'--output={output} is a file; give a folder.')
  real = os.path.realpath(output)
  if os.path.isdir(source) and (real + os.sep).startswith(
      os.path.realpath(source).rstrip(os.sep) + os.sep):
    raise UserError(f'--output={output} lies inside --input; put it outside.')


def _progress(done: int, total: int, start: float) -> None:
  rate = done / max(time.time() - start, 1e-9)
  left = (total - done) / rate if rate else 0
  print(f'\rconverted {done:,}/{total:,} images ({rate:,.0f}/s, about '
        f'{left:,.0f} s left)', end='' if done < total else '\n',
        file=sys.stderr, flush=True)


def convert(source: str, output: str, size: int,
            skip_bad_images: bool = True, show_progress: bool = True) -> str:
  """Writes ``source`` (a folder of images or of IDX files, or an .npz) to
  ``output`` as the stored set that dataset 'converted' reads; returns the
  path of its images.npy."""
  _check_output(output, source)
  chunks, count, channels, labels, classes, names = _source(
      source, size, skip_bad_images)
  os.makedirs(output, exist_ok=True)
  path = os.path.join(output, streamed.IMAGES)
  partial = path + '.partial'
  start = time.time()
  with open(partial, 'wb') as f:
    np.lib.format.write_array_header_1_0(f, {
        'descr': '|u1', 'fortran_order': False,
        'shape': (count, size, size, channels)})
    done = 0
    for chunk in chunks:
      f.write(np.ascontiguousarray(resize_images(chunk, size)).tobytes())
      done += len(chunk)
      if show_progress:
        _progress(done, count, start)
  os.replace(partial, path)
  if labels is not None:
    with files.atomic_write(os.path.join(output, streamed.LABELS),
                            'wb') as f:
      np.save(f, labels.astype(np.int64))
  with files.atomic_write(os.path.join(output, streamed.INFO)) as f:
    json.dump({'image_size': size, 'channels': int(channels),
               'count': count, 'source': os.path.abspath(source),
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
                   _SKIP_BAD.value)
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
