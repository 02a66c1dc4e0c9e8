"""TFDS sources (the [tfds] extra): CIFAR-10/100, STL-10, the ImageNet
subsets (TFDS imagenet2012, or an ILSVRC2012 train folder), decoded and
resized with tf.data. TensorFlow is imported here alone, on first use, and
kept off the accelerators."""

from __future__ import annotations

import functools
import importlib.resources
import os

import numpy as np

from jcc.errors import DataError
from jcc.sources.dataset import ImageDataset, resize_image
from jcc.sources.image_files import _class_files, decode_images

# What a plain install lacks for the TFDS sources, as the error names it.
TFDS_INSTALL = "pip install 'jcc-clustering[tfds]'"


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
