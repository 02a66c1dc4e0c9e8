"""TFDS sources (the [tfds] extra): CIFAR-10/100, STL-10, the ImageNet
subsets (TFDS imagenet2012, or an ILSVRC2012 train folder), decoded and
resized with tf.data. TensorFlow is imported here alone, on first use, and
kept off the accelerators."""

from __future__ import annotations

import functools
import importlib.resources
import os
from collections.abc import Callable, Iterator

import numpy as np

from jcc.errors import DataError
from jcc.sources import streamed
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


def _resized_batches(examples, image_size: int):
  """(images, labels) NumPy batches of 1,024 from a tf.data dataset of
  (image, label), the images resized (:func:`resize_image`) in parallel:
  memory holds a few batches, whatever the dataset's size."""
  tf, _ = _import_tensorflow()  # imported by _tfds_split before

  def resize(image, label):
    channels = image.shape[-1]
    image = tf.numpy_function(
        lambda x: resize_image(x, image_size), [image], tf.uint8)
    image.set_shape((image_size, image_size, channels))
    return image, label

  examples = examples.map(resize, num_parallel_calls=tf.data.AUTOTUNE)
  for image_batch, label_batch in examples.batch(1024).prefetch(2):
    yield image_batch.numpy(), label_batch.numpy().astype(np.int64)


def _materialize(batches, what: str) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of every batch, held in host memory, which every
  supported dataset fits at its configured size (the largest, STL-10 with
  its unlabelled split, is 3 GB at 96×96)."""
  batches = list(batches)
  if not batches:
    raise DataError(f'{what}: no examples.')
  return (np.concatenate([images for images, _ in batches]),
          np.concatenate([labels for _, labels in batches]))


def _missing_tfds_message(name: str, data_dir: str, manual: bool,
                          dataset: str, error: Exception,
                          converting: bool) -> str:
  where = data_dir or '~/tensorflow_datasets (TFDS\'s default)'
  if converting:  # python -m jcc.convert: its own flag, no download
    how = (f'run `tfds build {name} --data_dir=DIR'
           + (' --manual_dir=FOLDER_OF_THE_ILSVRC2012_TARS' if manual else '')
           + '` once and give --tfds_data_dir=DIR')
  elif manual:
    how = (f'TFDS builds {name} from the ILSVRC2012 tar files you download '
           'yourself: put them in a folder, set --config.dataset.manual_dir='
           'THAT_FOLDER and --config.dataset.tfds_download=True once; or '
           'point --config.dataset.path at an ILSVRC2012 train folder '
           '(DIR/<wnid>/*.JPEG)')
  else:
    how = (f'run `tfds build {name} --data_dir=DIR` on a machine with '
           'internet and set --config.dataset.tfds_data_dir=DIR, or set '
           '--config.dataset.tfds_download=True to download it now')
  other = ('' if converting else ' Or convert the images to a folder or an '
           '.npz and use --config.dataset.name=folder or npz with '
           '--config.dataset.path.')
  return (f'Dataset {dataset!r}: TFDS {name!r} is not prepared in {where} '
          f'({type(error).__name__}). To provide it, {how}.{other}')


def _tfds_split(dataset_config, name: str, split: str, *, manual: bool = False,
                converting: bool = False):
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
        name, data_dir or '', manual, dataset_config.name, e,
        converting)) from e


def _split_count(info, splits: str) -> int | None:
  """The number of examples in ``splits`` ('train+test'), by the dataset's
  record; None where TFDS has none (its mock data)."""
  try:
    return sum(info.splits[split].num_examples
               for split in splits.split('+'))
  except KeyError:
    return None


def _check_fits_in_memory(dataset_config, count: int, channels: int) -> None:
  """DataError naming ``python -m jcc.convert --input=tfds:NAME`` where
  ``count`` images, decoded at image_size (and crop_from_size where set),
  would pass the in-memory budget, before any is read."""
  needed = streamed.held_size(dataset_config, count, channels)
  budget = streamed.memory_budget()
  if needed > budget:
    name = dataset_config.name
    # The larger size: the views' source, from which image_size is resized.
    size = max(dataset_config.image_size,
               dataset_config.get('crop_from_size', 0) or 0)
    raise DataError(
        f'Dataset {name!r}: its {count:,} images take {needed / 1e9:.1f} GB '
        f'decoded, over the in-memory budget of {budget / 1e9:.1f} GB (half '
        "this machine's memory). Convert them once (python -m jcc.convert "
        f'--input=tfds:{name} --output=DIR --image_size={size}) and '
        'train on DIR with --config.dataset.name=converted '
        '--config.dataset.path=DIR --config.dataset.stream=True.')


# A TFDS source's images as a stream: (dataset_config, converting) →
# (class names, the number of images or None where TFDS does not say,
# iterator of (uint8 images at image_size, int64 labels)), labels −1 for
# images that train the instance objective alone.
TfdsBatches = Callable[..., tuple[tuple[str, ...], int | None,
                                  Iterator[tuple[np.ndarray, np.ndarray]]]]


def _split_batches(tfds_name: str, splits: str, label_key: str = 'label',
                   unlabelled_split: str | None = None) -> TfdsBatches:
  """The batches of ``splits`` of a TFDS dataset (labels from label_key),
  then of ``unlabelled_split`` (labels −1) where the config uses it."""

  def batches(dataset_config, converting: bool = False):
    size = dataset_config.image_size
    parts = [splits]
    if unlabelled_split and dataset_config.get('use_unlabelled', True):
      parts.append(unlabelled_split)
    # Every split is opened first: a missing one fails before any decoding.
    opened = [_tfds_split(dataset_config, tfds_name, split,
                          converting=converting) for split in parts]
    info = opened[0][1].info
    names = tuple(info.features[label_key].names)
    count = _split_count(info, '+'.join(parts))
    if not converting and count is not None:
      _check_fits_in_memory(dataset_config, count,
                            info.features['image'].shape[-1])

    def generate():
      for split, (examples, _) in zip(parts, opened):
        examples = examples.map(lambda ex: (ex['image'], ex[label_key]))
        for images, labels in _resized_batches(examples, size):
          yield images, (labels if split == splits else
                         np.full(len(images), -1, np.int64))

    return names, count, generate()

  return batches


def _tfds_source(tfds_name: str, splits: str, label_key: str = 'label',
                 unlabelled_split: str | None = None):
  """A source reading ``splits`` of a TFDS dataset (labels from label_key)
  into memory; its ``batches`` attribute streams them instead."""
  batches = _split_batches(tfds_name, splits, label_key, unlabelled_split)

  def load(dataset_config) -> ImageDataset:
    names, _, chunks = batches(dataset_config)
    images, labels = _materialize(chunks, f'TFDS {tfds_name} {splits}')
    unlabelled = labels < 0
    return ImageDataset(dataset_config.name, images, labels,
                        unlabelled if unlabelled.any() else None, names)

  load.__doc__ = (f'TFDS ``{tfds_name}``, splits {splits}'
                  + (f' (+ {unlabelled_split}, instance objective only)'
                     if unlabelled_split else '') + '.')
  load.batches = batches
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

  def from_tfds(dataset_config, converting: bool = False):
    """The subset's batches from TFDS imagenet2012's train split."""
    wnids = _wnids(subset)
    examples, builder = _tfds_split(dataset_config, 'imagenet2012', 'train',
                                    manual=True, converting=converting)
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
    # The subset's count is known only once ILSVRC's labels are read.
    return tuple(wnids), None, _resized_batches(examples,
                                                dataset_config.image_size)

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

    names, _, chunks = from_tfds(dataset_config)
    images, labels = _materialize(chunks, f'{subset} (TFDS imagenet2012)')
    return ImageDataset(subset, images, labels, class_names=names)

  load.__doc__ = _subset_source.__doc__.replace('ImageNet-10 / ImageNet-Dogs',
                                                subset)
  load.batches = from_tfds
  return load
