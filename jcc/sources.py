"""Image sources: the dataset registry and the loaders behind it.

A source (``DATASETS[name].load(config.dataset)``) decodes its images, resizes them
to ``config.dataset.image_size`` and caches them in host memory as an
:class:`ImageDataset`: uint8 NHWC images, and labels where they exist (used
only for evaluation). TFDS sources decode and resize with tf.data; every
source of image files (the user's folders, the ImageNet and Tiny-ImageNet
folder layouts, predict's inputs) goes through :func:`decode_images`, one
decode path with one bad-file policy; digits and .npz files are arrays.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import gzip
import importlib.resources
import os
import time
from collections.abc import Callable
from typing import NamedTuple

from absl import logging
import ml_collections
import numpy as np

from jcc.errors import DataError

# What a plain install lacks for the TFDS sources, as the error names it.
TFDS_INSTALL = "pip install 'jcc-clustering[tfds]'"


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
  """
  name: str
  images: np.ndarray
  labels: np.ndarray | None
  instance_only: np.ndarray | None = None
  class_names: tuple[str, ...] | None = None
  image_names: tuple[str, ...] | None = None

  def __len__(self) -> int:
    return self.images.shape[0]

  @property
  def channels(self) -> int:
    return self.images.shape[-1]

  @property
  def clustered(self) -> np.ndarray:
    """Indices of the examples that are clustered and evaluated."""
    if self.instance_only is None:
      return np.arange(len(self))
    return np.flatnonzero(~self.instance_only)


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
  return ImageDataset('digits', images[..., None],
                      digits.target.astype(np.int64),
                      class_names=tuple(str(d) for d in range(10)))


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
  try:
    with np.load(path, allow_pickle=False) as data:
      if 'images' not in data:
        raise DataError(
            f'{path}: has no `images` array (found {data.files}).')
      images = _as_nhwc_uint8(data['images'], path)
      labels = (_class_indices(data['labels'], f'{path}: `labels`')
                if 'labels' in data else None)
      class_names = None
      if 'class_names' in data and data['class_names'].dtype.kind == 'U':
        class_names = tuple(str(c) for c in data['class_names'])
  except (ValueError, OSError, EOFError) as e:
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


IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif',
                    '.tiff')


def _images_in(folder: str) -> list[str]:
  """The image files directly in ``folder``, sorted.

  A symbolic link that leads nowhere (dangling, or a loop) is listed too:
  decoding then reports it as a bad file, rather than it vanishing.
  """
  def is_image(path: str) -> bool:
    return os.path.isfile(path) or (os.path.islink(path) and
                                    not os.path.exists(path))
  return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                if f.lower().endswith(IMAGE_EXTENSIONS) and
                is_image(os.path.join(folder, f)))


def _class_files(folders: list[str]) -> tuple[list[str], list[int]]:
  """The image files of each folder (sorted), labelled by its position."""
  files, labels = [], []
  for label, folder in enumerate(folders):
    found = _images_in(folder)
    files += found
    labels += [label] * len(found)
  return files, labels


def _list_images(root: str) -> tuple[list[str], list[int] | None, list[str]]:
  """(files, labels or None, class names): class subfolders, or flat.

  One layout or the other: images both at the top level and in class
  folders are an error (the top-level ones would have no class).
  """
  classes = sorted(d for d in os.listdir(root)
                   if os.path.isdir(os.path.join(root, d)) and
                   _images_in(os.path.join(root, d)))
  top_level = _images_in(root)
  if not classes:
    return top_level, None, []
  if top_level:
    raise DataError(
        f'{root}: {len(top_level)} images at its top level (e.g. '
        f'{os.path.basename(top_level[0])}) beside {len(classes)} class '
        f'folder(s) ({", ".join(classes[:5])}{", …" if len(classes) > 5 else ""}'
        '). Use one layout: every image in a class folder, or all of them '
        'at the top level (no labels).')
  files, labels = _class_files([os.path.join(root, c) for c in classes])
  return files, labels, classes


class _BadImage(Exception):
  """An image file that cannot be used; the message says why."""


def _eight_bit(image) -> 'PIL.Image.Image':  # noqa: F821
  """Single-channel images of more than 8 bits, scaled (not clipped) to 8.

  PIL's convert('L') clips a 16-bit PNG's 0…65535 to 0…255; its values are
  scaled by 255/65535 instead ('I;16*', and 'I' holding 16-bit values).
  Floating-point images are taken as 0…1 where they lie in it, else 0…255.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if image.mode.startswith('I;16') or image.mode == 'I':
    values = np.asarray(image, np.float64)
    if image.mode.startswith('I;16') or values.max(initial=0) > 255:
      values = values * (255 / 65535)
  elif image.mode == 'F':
    values = np.asarray(image, np.float64)
    if values.size and 0 <= values.min() and values.max() <= 1:
      values = values * 255
  else:
    return image
  return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))


def _read_image(path: str, size: int, mode: str | None = None):
  """(size, size, C) uint8 and whether the file is grayscale.

  As a viewer shows it: EXIF orientation applied, 16-bit values scaled to 8
  bits. ``mode`` 'L' or 'RGB' forces the channels; None keeps gray images
  gray. Raises _BadImage, saying why, for a file that cannot be used.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top
  if os.path.islink(path) and not os.path.exists(path):
    raise _BadImage('a symbolic link that leads to no file')
  try:
    with Image.open(path) as image:
      image.load()
      image = ImageOps.exif_transpose(image)
      gray = image.mode in ('1', 'L', 'I', 'F') or image.mode.startswith('I;16')
      image = np.asarray(
          _eight_bit(image).convert(mode or ('L' if gray else 'RGB')), np.uint8)
  except Image.DecompressionBombError as e:
    raise _BadImage(
        f'too large to decode safely ({e}); Pillow allows up to '
        f'{2 * Image.MAX_IMAGE_PIXELS:,} pixels') from None
  except (OSError, ValueError, SyntaxError) as e:
    raise _BadImage(f'unreadable ({type(e).__name__})') from None
  return resize_image(image.reshape(image.shape[:2] + (-1,)), size), gray


def decode_images(files: list[str], size: int, skip_bad_images: bool,
                  where: str, mode: str | None = None,
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Image files → (uint8 NHWC at size × size, indices of the files kept).

  Every source that reads image files decodes them here: PIL, on a pool of
  threads (decoding and resizing release the GIL). ``mode`` 'L' or 'RGB'
  forces the channels; None makes all RGB if any file is colour, else keeps
  them gray. One bad-file policy: unreadable or truncated files are skipped
  with a warning that lists them when ``skip_bad_images``, else they are an
  error; no readable file at all is always an error.
  """
  def read(path: str):
    try:
      return _read_image(path, size, mode)
    except _BadImage as e:
      return str(e)

  with concurrent.futures.ThreadPoolExecutor(
      max_workers=min(32, (os.cpu_count() or 1) + 4)) as pool:
    decoded = list(pool.map(read, files))
  bad = [f'{f} ({d})' for f, d in zip(files, decoded) if isinstance(d, str)]
  if len(bad) == len(files):
    raise DataError(f'{where}: none of the {len(files)} image files could be '
                    f'read (first: {bad[0]}).')
  if bad and not skip_bad_images:
    raise DataError(
        f'{where}: {len(bad)} unusable image file(s): {", ".join(bad)}. '
        'Remove them, or set --config.dataset.skip_bad_images=True.')
  if bad:
    logging.warning('Skipped %d unusable image file(s) in %s: %s', len(bad),
                    where, ', '.join(bad))
  kept = np.asarray([i for i, d in enumerate(decoded)
                     if not isinstance(d, str)])
  any_colour = any(not decoded[i][1] for i in kept)
  images = [decoded[i][0] for i in kept]
  if any_colour and mode is None:
    images = [np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x
              for x in images]
  return np.stack(images), kept


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
  files, labels, classes = _list_images(root)
  if not files:
    raise DataError(
        f'{root}: no images found (looked for {", ".join(IMAGE_EXTENSIONS)} '
        'directly inside it and in its class subfolders).')
  images, kept = decode_images(files, dataset_config.image_size,
                                dataset_config.skip_bad_images, root)
  label_array = None if labels is None else np.asarray(labels, np.int64)[kept]
  logging.info('%s: %d images, %s.', root, len(images),
               f'{len(classes)} class folders ({", ".join(classes)})'
               if classes else 'flat (no labels)')
  return ImageDataset('folder', images, label_array,
                      class_names=tuple(classes) or None,
                      image_names=tuple(os.path.relpath(files[i], root)
                                        for i in kept))


@functools.cache
def _import_tensorflow():
  """TensorFlow and TFDS, imported on first use and kept off accelerators."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')
  return tf, tfds


def tensorflow(dataset: str):
  """(tensorflow, tensorflow_datasets) for the TFDS source of ``dataset``.

  Raises:
    DataError: naming the ``[tfds]`` extra, where they are not installed (a
      plain install has neither: most sources need no TensorFlow).
  """
  try:
    return _import_tensorflow()
  except ImportError as e:
    raise DataError(
        f'Dataset {dataset!r} is read with TensorFlow Datasets, which this '
        f'install lacks ({e}): {TFDS_INSTALL} (in a checkout: pip install '
        "-e '.[tfds]'), or give the images as a folder or an .npz "
        '(--config.dataset.name=folder or npz, --config.dataset.path).'
    ) from None


def _materialize(examples, image_size: int, what: str):
  """A tf.data dataset of (image, label) → cached NumPy arrays.

  Decoding and resizing (:func:`resize_image`) run in parallel; the result
  is held in host memory,
  which every supported dataset fits at its configured size (the largest,
  STL-10 with its unlabelled split, is 3 GB at 96×96).
  """
  tf, _ = _import_tensorflow()  # imported by _tfds_split before

  def resize(image, label):
    channels = image.shape[-1]
    image = tf.numpy_function(
        lambda x: resize_image(x, image_size), [image], tf.uint8)
    image.set_shape((image_size, image_size, channels))
    return image, label

  examples = examples.map(resize, num_parallel_calls=tf.data.AUTOTUNE)
  images, labels = [], []
  for image_batch, label_batch in examples.batch(1024).prefetch(2):
    images.append(image_batch.numpy())
    labels.append(label_batch.numpy())
  if not images:
    raise DataError(f'{what}: no examples.')
  return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def _missing_tfds_message(name: str, data_dir: str, manual: bool,
                          dataset: str, error: Exception) -> str:
  where = data_dir or '~/tensorflow_datasets (TFDS\'s default)'
  if manual:
    how = (f'TFDS builds {name} from the ILSVRC2012 tar files you download '
           'yourself: put them in a folder, set --config.dataset.manual_dir='
           'THAT_FOLDER and --config.dataset.tfds_download=True once; or '
           'point --config.dataset.path at an ILSVRC2012 train folder '
           '(DIR/<wnid>/*.JPEG)')
  else:
    how = (f'run `tfds build {name} --data_dir=DIR` on a machine with '
           'internet and set --config.dataset.tfds_data_dir=DIR, or set '
           '--config.dataset.tfds_download=True to download it now')
  return (f'Dataset {dataset!r}: TFDS {name!r} is not prepared in {where} '
          f'({type(error).__name__}). To provide it, {how}. Or convert the '
          'images to a folder or an .npz and use --config.dataset.name=folder '
          'or npz with --config.dataset.path.')


def _tfds_split(dataset_config, name: str, split: str, *, manual: bool = False):
  """TFDS ``name``'s ``split`` as a tf.data dataset of example dicts."""
  _, tfds = tensorflow(dataset_config.name)
  data_dir = dataset_config.get('tfds_data_dir', '') or None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    if dataset_config.get('tfds_download', False):
      manual_dir = dataset_config.get('manual_dir', '') or None
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder.as_dataset(split=split, shuffle_files=False), builder
  except (AssertionError, FileNotFoundError, OSError, ValueError,
          tfds.core.registered.DatasetNotFoundError) as e:
    raise DataError(_missing_tfds_message(
        name, data_dir or '', manual, dataset_config.name, e)) from e


def _tfds_source(tfds_name: str, splits: str, label_key: str = 'label',
                 unlabelled_split: str | None = None):
  """A source reading ``splits`` of a TFDS dataset (labels from label_key)."""

  def load(dataset_config) -> ImageDataset:
    size = dataset_config.image_size
    examples, builder = _tfds_split(dataset_config, tfds_name, splits)
    examples = examples.map(lambda ex: (ex['image'], ex[label_key]))
    images, labels = _materialize(examples, size, f'TFDS {tfds_name} {splits}')
    instance_only = None
    if unlabelled_split and dataset_config.get('use_unlabelled', True):
      extra, _ = _tfds_split(dataset_config, tfds_name, unlabelled_split)
      extra = extra.map(lambda ex: (ex['image'], ex[label_key]))
      extra_images, _ = _materialize(
          extra, size, f'TFDS {tfds_name} {unlabelled_split}')
      instance_only = np.concatenate([
          np.zeros(len(images), bool), np.ones(len(extra_images), bool)])
      images = np.concatenate([images, extra_images])
      labels = np.concatenate(
          [labels, np.full(len(extra_images), -1, np.int64)])
    names = builder.info.features[label_key].names
    return ImageDataset(dataset_config.name, images, labels, instance_only,
                        tuple(names))

  load.__doc__ = (f'TFDS ``{tfds_name}``, splits {splits}'
                  + (f' (+ {unlabelled_split}, instance objective only)'
                     if unlabelled_split else '') + '.')
  return load


def _wnids(subset: str) -> list[str]:
  """The ILSVRC2012 synsets of a benchmark subset, in the published order."""
  text = importlib.resources.files('jcc').joinpath(
      'wnids', f'{subset}.txt').read_text()
  return text.split()


def _subset_source(subset: str):
  """ImageNet-10 / ImageNet-Dogs: ILSVRC2012 train images of the subset's wnids.

  From an ILSVRC2012 train folder (``config.dataset.path``/<wnid>/*.JPEG) if
  given, else from TFDS ``imagenet2012`` (manual download). Labels follow
  the subset's published wnid order.
  """

  def load(dataset_config) -> ImageDataset:
    wnids = _wnids(subset)
    root = dataset_config.path
    if root:
      if not os.path.isdir(root):
        raise DataError(f'Dataset {subset!r}: no directory at {root!r} '
                        '(config.dataset.path).')
      missing = [w for w in wnids if not os.path.isdir(os.path.join(root, w))]
      if missing:
        raise DataError(
            f'Dataset {subset!r}: {root} lacks the class folders '
            f'{", ".join(missing)} (expected an ILSVRC2012 train folder, '
            'DIR/<wnid>/*.JPEG).')
      files, labels = _class_files([os.path.join(root, w) for w in wnids])
      images, kept = decode_images(
          files, dataset_config.image_size, dataset_config.skip_bad_images,
          f'{subset} ({root})', mode='RGB')
      return ImageDataset(subset, images, np.asarray(labels, np.int64)[kept],
                          class_names=tuple(wnids))

    examples, builder = _tfds_split(dataset_config, 'imagenet2012', 'train',
                                    manual=True)
    tf, _ = tensorflow(subset)
    names = builder.info.features['label'].names
    # ILSVRC label → position in the subset, −1 for the other classes.
    relabel = np.full(len(names), -1, np.int64)
    for position, wnid in enumerate(wnids):
      relabel[names.index(wnid)] = position
    table = tf.constant(relabel)
    examples = examples.map(
        lambda ex: (ex['image'], tf.gather(table, ex['label']))).filter(
            lambda image, label: label >= 0)
    images, labels = _materialize(examples, dataset_config.image_size,
                                  f'{subset} (TFDS imagenet2012)')
    return ImageDataset(subset, images, labels, class_names=tuple(wnids))

  load.__doc__ = _subset_source.__doc__.replace('ImageNet-10 / ImageNet-Dogs',
                                                subset)
  return load


def load_tiny_imagenet(dataset_config) -> ImageDataset:
  """Tiny-ImageNet's 100,000 train images from the official folder layout.

  ``config.dataset.path`` is the extracted ``tiny-imagenet-200`` folder:
  ``train/<wnid>/images/*.JPEG``; labels are the wnids in sorted order.
  """
  root = dataset_config.path
  train = os.path.join(root, 'train') if root else ''
  if not root or not os.path.isdir(train):
    raise DataError(
        "Dataset 'tiny_imagenet' has no TFDS builder: download "
        'tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200'
        '.zip), extract it and set --config.dataset.path to the folder that '
        f'holds train/ (looked for {train or "train/ under an empty path"}).')
  wnids = sorted(d for d in os.listdir(train)
                 if os.path.isdir(os.path.join(train, d, 'images')))
  files, labels = _class_files(
      [os.path.join(train, wnid, 'images') for wnid in wnids])
  if not files:
    raise DataError(f'{train}: no images in train/<wnid>/images/.')
  images, kept = decode_images(
      files, dataset_config.image_size, dataset_config.skip_bad_images,
      f'tiny_imagenet ({root})', mode='RGB')
  return ImageDataset('tiny_imagenet', images,
                      np.asarray(labels, np.int64)[kept],
                      class_names=tuple(wnids))


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


def check_predict_input(path: str) -> None:
  """Raises DataError unless ``path`` holds images to predict: an .npz of at
  least one image, or a folder with image files. Cheap next to loading the
  model, so it runs first."""
  if os.path.isfile(path) and path.endswith('.npz'):
    dataset = load_npz(ml_collections.ConfigDict({'path': path}))
    if not len(dataset):
      raise DataError(f'{path}: `images` holds no image '
                      '(config.predict.input).')
    return
  if not os.path.isdir(path):
    raise DataError(f'config.predict.input={path!r}: not a folder of images '
                    'or an .npz file.')
  if not _list_images(path)[0]:
    raise DataError(f'{path}: no images found (config.predict.input).')


def load_predict_images(path: str, image_size: int, channels: int,
                        skip_bad_images: bool = True,
                        ) -> tuple[list[str], np.ndarray]:
  """New images to assign: (names, uint8 images at the model's size/channels).

  ``path`` is an .npz (names are the row indices) or a folder (flat or with
  class subfolders; names are the paths relative to it, in sorted order).
  """
  if os.path.isfile(path) and path.endswith('.npz'):
    dataset = load_npz(ml_collections.ConfigDict({'path': path}))
    images = resize_images(dataset.images, image_size)
    if images.shape[-1] != channels:
      images = (images.mean(axis=-1, keepdims=True).round().astype(np.uint8)
                if channels == 1 else np.repeat(images, 3, axis=-1))
    return [str(i) for i in range(len(images))], images
  if not os.path.isdir(path):
    raise DataError(f'config.predict.input={path!r}: not a folder of images '
                    'or an .npz file.')
  files, _, _ = _list_images(path)
  if not files:
    raise DataError(f'{path}: no images found (config.predict.input).')
  images, kept = decode_images(files, image_size, skip_bad_images, path,
                               mode='L' if channels == 1 else 'RGB')
  return [os.path.relpath(files[i], path) for i in kept], images


class Source(NamedTuple):
  """A registry entry: its loader and the benchmark's number of classes."""
  load: Callable[[ml_collections.ConfigDict], ImageDataset]
  num_classes: int | None  # None: the user's data; K comes from the config


DATASETS: dict[str, Source] = {
    'digits': Source(load_digits, 10),
    'npz': Source(load_npz, None),
    'folder': Source(load_folder, None),
    'cifar10': Source(_tfds_source('cifar10', 'train+test'), 10),
    'cifar100': Source(
        _tfds_source('cifar100', 'train+test', 'coarse_label'), 20),
    'stl10': Source(
        _tfds_source('stl10', 'train+test', unlabelled_split='unlabelled'), 10),
    'imagenet10': Source(_subset_source('imagenet10'), 10),
    'imagenet_dogs': Source(_subset_source('imagenet_dogs'), 15),
    'tiny_imagenet': Source(load_tiny_imagenet, 200),
    'mnist': Source(_mnist_like_source('mnist'), 10),
    'fashion_mnist': Source(_mnist_like_source('fashion_mnist'), 10),
}


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
  out = np.empty((images.shape[0], size, size, images.shape[3]), np.uint8)
  for i, image in enumerate(images):
    out[i] = resize_image(image, size)
  return out


def load_dataset(dataset_config) -> ImageDataset:
  """The dataset ``config.dataset`` names, resized to its image_size."""
  name = dataset_config.name
  if name not in DATASETS:
    raise DataError(
        f'Unknown dataset {name!r} (config.dataset.name); choose one of '
        f'{sorted(DATASETS)}.')
  start = time.time()
  dataset = DATASETS[name].load(dataset_config)
  images = resize_images(dataset.images, dataset_config.image_size)
  logging.info('Loaded %s: %d images of %s in %.1f s.', name, len(images),
               'x'.join(map(str, images.shape[1:])), time.time() - start)
  distinct = count_distinct(images)
  if distinct < dataset_config.get('num_clusters', 0):
    logging.warning(
        '%s: only %d distinct image(s) among %d, fewer than K=%d clusters: '
        'identical images fall in one cluster. Check the data.', name,
        distinct, len(images), dataset_config.num_clusters)
  return dataclasses.replace(dataset, images=images)


def count_distinct(images: np.ndarray, limit: int = 1000) -> int:
  """The number of distinct images, counted up to ``limit`` (then ``limit``):
  enough to tell a dataset of copies from a real one, without hashing all
  of a large one."""
  seen = set()
  for image in images:
    seen.add(hash(image.tobytes()))
    if len(seen) >= limit:
      break
  return len(seen)
