"""Image sources: the dataset registry and the loaders behind it.

A source (``DATASETS[name].load(config.dataset)``) decodes its images, resizes
them to ``config.dataset.image_size`` and caches them in host memory as an
:class:`ImageDataset`: uint8 NHWC images, and labels where they exist (used
only for evaluation). One module per kind of source: arrays (digits, .npz),
image files (folders, Tiny-ImageNet), TFDS (with the ImageNet subsets) and
IDX files; :mod:`jcc.sources.dataset` holds what they share.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import NamedTuple

from absl import logging
import ml_collections
import numpy as np

from jcc.errors import DataError
from jcc.sources.arrays import load_digits, load_npz
from jcc.sources.dataset import (ImageDataset, as_nhwc_uint8, conform_images,
                                 count_distinct, resize_image, resize_images)
from jcc.sources.idx import read_idx, _mnist_like_source
from jcc.sources.image_files import (IMAGE_EXTENSIONS, _list_images,
                                     decode_images, load_folder,
                                     load_tiny_imagenet)
from jcc.sources.tfds import (TFDS_INSTALL, _subset_source, _tfds_source,
                              tensorflow)

__all__ = ['DATASETS', 'IMAGE_EXTENSIONS', 'ImageDataset', 'Source',
           'TFDS_INSTALL', 'as_nhwc_uint8', 'check_predict_input',
           'conform_images', 'count_distinct',
           'decode_images', 'load_dataset', 'load_digits', 'load_folder',
           'load_npz', 'load_predict_images', 'read_idx', 'resize_image',
           'resize_images', 'tensorflow']


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
    images = conform_images(dataset.images, image_size, channels)
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
