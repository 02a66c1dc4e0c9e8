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
from jcc.sources.arrays import (from_arrays, load_digits, load_npz,
                                refuse_arrays)
from jcc.sources.dataset import (ImageDataset, as_nhwc_uint8, conform_images,
                                 count_distinct, resize_image, resize_images,
                                 rgb_to_gray)
from jcc.sources.idx import read_idx, _mnist_like_source
from jcc.sources import streamed
from jcc.sources.image_files import (IMAGE_EXTENSIONS, _list_images,
                                     decode_images, load_folder, stream_files,
                                     load_tiny_imagenet, warn_passed_over)
from jcc.sources.tfds import (TFDS_INSTALL, TfdsBatches, _subset_source,
                              _tfds_source, tensorflow)

__all__ = ['DATASETS', 'IMAGE_EXTENSIONS', 'ImageDataset', 'Source',
           'TFDS_INSTALL', 'as_nhwc_uint8', 'check_predict_input',
           'conform_images', 'count_distinct', 'decode_images', 'from_arrays',
           'load_dataset', 'load_digits', 'load_folder', 'load_npz',
           'load_predict_images', 'read_idx', 'resize_image',
           'resize_images', 'rgb_to_gray', 'tensorflow']


def check_predict_input(source: np.ndarray | str,
                        given_as: str = 'config.predict.input') -> None:
  """Raises DataError unless ``source`` holds images to predict: a uint8
  array of at least one image, an .npz of at least one, or a folder with
  image files. Cheap next to loading the model, so it runs first; both
  ``--mode=predict`` and :class:`jcc.Clusterer` check here. ``given_as``
  names the input in the messages."""
  if isinstance(source, np.ndarray):
    if not len(as_nhwc_uint8(source, given_as)):
      raise DataError(f'{given_as} holds no image: give at least one.')
    return
  path = source
  if not os.path.exists(path):
    raise DataError(f'{given_as}={path!r}: no such file or folder.')
  if os.path.isfile(path) and path.endswith('.npz'):
    dataset = load_npz(ml_collections.ConfigDict({'path': path}))
    if not len(dataset):
      raise DataError(f'{path}: `images` holds no image ({given_as}).')
    return
  if not os.path.isdir(path):
    raise DataError(f'{given_as}={path!r}: not a folder of images or an .npz '
                    'file.')
  if streamed.is_converted(path):
    return
  if not _list_images(path, labelled=False)[0]:
    raise DataError(f'{path}: no images found ({given_as}).')


def load_predict_images(source: np.ndarray | str, image_size: int,
                        channels: int, skip_bad_images: bool = True,
                        given_as: str = 'config.predict.input',
                        ) -> tuple[list[str], np.ndarray]:
  """New images to assign: (names, uint8 images at the model's size and
  channels), converted as in training; :func:`check_predict_input` first.

  ``source`` is a uint8 array (names are the row indices), an .npz (the
  same), a set ``python -m jcc.convert`` wrote (its files' names) or a
  folder (flat or with class subfolders; names are the paths
  relative to it, in sorted order); a folder whose images would not fit
  in memory decoded is read as the batches need them
  (:func:`jcc.sources.streamed.choose_streaming`).
  """
  if isinstance(source, np.ndarray):
    images = conform_images(as_nhwc_uint8(source, given_as), image_size,
                            channels)
    return [str(i) for i in range(len(images))], images
  path = source
  if os.path.isfile(path) and path.endswith('.npz'):
    dataset = load_npz(ml_collections.ConfigDict({'path': path}))
    images = conform_images(dataset.images, image_size, channels)
    return [str(i) for i in range(len(images))], images
  if streamed.is_converted(path):
    dataset = streamed.load_converted(ml_collections.ConfigDict(
        {'name': 'converted', 'path': path, 'image_size': image_size}))
    images = dataset.images
    if images.shape[-1] != channels:  # other channels: converted in memory
      images = conform_images(images[:], image_size, channels)
    return (list(dataset.image_names or map(str, range(len(images)))),
            resize_images(images, image_size))
  files, _, _, passed_over = _list_images(path, labelled=False)
  warn_passed_over(path, passed_over)
  # Too many to hold decoded: read as the batches need them.
  read = stream_files if streamed.choose_streaming(
      ml_collections.ConfigDict({'image_size': image_size}), len(files),
      channels, path) else decode_images
  images, kept = read(files, image_size, skip_bad_images, path,
                      mode='L' if channels == 1 else 'RGB')
  return [os.path.relpath(files[i], path) for i in kept], images


class Source(NamedTuple):
  """A registry entry: its loader and the benchmark's number of classes."""
  load: Callable[[ml_collections.ConfigDict], ImageDataset]
  num_classes: int | None  # None: the user's data; K comes from the config

  @property
  def tfds_batches(self) -> TfdsBatches | None:
    """A TFDS source's images as a stream of batches, which ``python -m
    jcc.convert --input=tfds:NAME`` writes to disk; None for the others."""
    return getattr(self.load, 'batches', None)


DATASETS: dict[str, Source] = {
    'digits': Source(load_digits, 10),
    'npz': Source(load_npz, None),
    'arrays': Source(refuse_arrays, None),
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
    'converted': Source(streamed.load_converted, None),
}
# The sources whose images can be read from disk as the batches need them
# (config.dataset.stream); the others are read into memory.
STREAMABLE = ('folder', 'tiny_imagenet', 'converted')


def _crop_source(dataset_config, dataset: ImageDataset, given: bool):
  """The images at crop_from_size, or None where it is unset or equal to
  image_size: resized from the loaded images where the source gives them
  at their own size (arrays, .npz, IDX; never larger than that size, and
  None where it is not above image_size), else loaded again at that size
  (files and TFDS, which decode at image_size: each image is then
  decoded at both sizes, as --mode=predict decodes it at image_size)."""
  size = dataset_config.get('crop_from_size', 0)
  if not size or size == dataset_config.image_size:
    return None
  if given or dataset.images.shape[1:3] != (dataset_config.image_size,) * 2:
    size = min(size, dataset.images.shape[1])
    if size <= dataset_config.image_size:
      return None
    return resize_images(dataset.images, size)
  if isinstance(dataset.images, streamed.StreamedImages):
    return dataset.images.resized(size)
  at_size = dataset_config.copy_and_resolve_references()
  at_size.image_size = size
  # Resized all the same: a source of originals that were at image_size.
  return resize_images(DATASETS[dataset_config.name].load(at_size).images,
                       size)


def load_dataset(dataset_config,
                 given: ImageDataset | None = None) -> ImageDataset:
  """The dataset ``config.dataset`` names (or ``given``, one a caller holds
  in memory), resized to its image_size, and to its crop_from_size where
  that is set (the training views' source)."""
  name = dataset_config.name
  if name not in DATASETS:
    raise DataError(
        f'Unknown dataset {name!r} (config.dataset.name); choose one of '
        f'{sorted(DATASETS)}.')
  if name not in STREAMABLE:
    streamed.refuse_streaming(dataset_config)
  start = time.time()
  dataset = given if given is not None else DATASETS[name].load(
      dataset_config)
  images = resize_images(dataset.images, dataset_config.image_size)
  crop_source = _crop_source(dataset_config, dataset, given is not None)
  logging.info('Loaded %s: %d images of %s in %.1f s%s%s.', name,
               len(images), 'x'.join(map(str, images.shape[1:])),
               time.time() - start,
               ' (streamed from disk)' if isinstance(
                   images, streamed.StreamedImages) else '',
               ' (views cut from {0}x{0})'.format(crop_source.shape[1])
               if crop_source is not None else '')
  distinct = count_distinct(images)
  if distinct < dataset_config.get('num_clusters', 0):
    logging.warning(
        '%s: only %d distinct image(s) among %d, fewer than K=%d clusters: '
        'identical images fall in one cluster. Check the data.', name,
        distinct, len(images), dataset_config.num_clusters)
  return dataclasses.replace(dataset, images=images, crop_source=crop_source)
