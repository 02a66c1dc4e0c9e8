"""The input pipeline: epoch order, train and eval batches, prefetching.

From an in-memory :class:`jcc.sources.ImageDataset` every dataset takes the
same two pipelines:

* :func:`train_batches`: the global batch of step s, in an order that is a
  pure function of (seed, epoch) (so a resumed run sees the same batches),
  split per host (``jax.process_index()``) and prefetched by tf.data;
* :func:`eval_batches`: every example exactly once, the last batch padded to
  the batch size with a mask marking the padding.

TensorFlow is imported here alone (:func:`tensorflow`), and only runs the
input pipeline: it is kept off the accelerators.
"""

from __future__ import annotations

import collections
import functools
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from absl import logging
import numpy as np

if TYPE_CHECKING:
  from jcc import sources


@functools.cache
def tensorflow():
  """TensorFlow, imported on first use and kept off the accelerators."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')
  return tf


@functools.lru_cache(maxsize=2)
def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The permutation of the examples used in ``epoch``: f(seed, epoch) only.

  Cached (read-only), so the steps of an epoch share one permutation.
  """
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  order.setflags(write=False)
  return order


def train_batch_indices(
    num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Indices of the examples of global training batch ``step``.

  Epochs drop their last partial batch, so every batch has ``batch_size``
  examples and step s lies in epoch s // (num_examples // batch_size).
  """
  steps_per_epoch = num_examples // batch_size
  epoch, position = divmod(step, steps_per_epoch)
  order = epoch_order(num_examples, seed, epoch)
  return order[position * batch_size:(position + 1) * batch_size]


def neighbor_choice(batch_size: int, k: int, seed: int,
                    step: int) -> np.ndarray:
  """Which of its k neighbours each row of global batch ``step`` is paired
  with: (batch_size,) in [0, k), a function of (seed, step) only."""
  return np.random.default_rng([seed, step, 1]).integers(0, k, batch_size)


def train_batches(
    dataset: 'sources.ImageDataset', batch_size: int, seed: int, start_step: int,
    num_steps: int, process_index: int = 0, process_count: int = 1,
    neighbors: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, ...]]:
  """This host's part of global batches ``start_step … num_steps − 1``.

  Yields (images uint8 (B/P, H, W, C), indices int32 (B/P,)): rows
  [i·B/P, (i+1)·B/P) of each global batch for host i of P, where the global
  batch is :func:`train_batch_indices`. With ``neighbors`` ((N, k) indices),
  a third array: each row's neighbour image, the one
  :func:`neighbor_choice` picks. A tf.data pipeline gathers and prefetches
  them on background threads.
  """
  if batch_size % process_count:
    raise ValueError(f'batch {batch_size} does not split over '
                     f'{process_count} hosts.')
  per_host = batch_size // process_count
  lo, hi = process_index * per_host, (process_index + 1) * per_host
  n, images = len(dataset), dataset.images

  def host_batches():
    for step in range(start_step, num_steps):
      indices = train_batch_indices(n, batch_size, seed, step)[lo:hi]
      batch = images[indices], indices.astype(np.int32)
      if neighbors is not None:
        slot = neighbor_choice(batch_size, neighbors.shape[1], seed,
                               step)[lo:hi]
        batch += (images[neighbors[indices, slot]],)
      yield batch

  image_spec = ((per_host,) + images.shape[1:], images.dtype)
  yield from _prefetched(host_batches, (image_spec, ((per_host,), np.int32)) + (
      (image_spec,) if neighbors is not None else ()))


def eval_batches(
    images: np.ndarray, batch_size: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Every image exactly once: (images (batch_size, …), mask (batch_size,)).

  The last batch is padded with zeros to ``batch_size`` (one compiled shape);
  ``mask`` is False on the padding.
  """
  num = images.shape[0]

  def padded_batches():
    for start in range(0, num, batch_size):
      batch = images[start:start + batch_size]
      valid = batch.shape[0]
      mask = np.arange(batch_size) < valid
      if valid < batch_size:
        pad = np.zeros((batch_size - valid,) + batch.shape[1:], batch.dtype)
        batch = np.concatenate([batch, pad])
      yield batch, mask

  yield from _prefetched(padded_batches, (
      ((batch_size,) + images.shape[1:], images.dtype),
      ((batch_size,), np.bool_)))


def _tensorflow_or_none():
  """TensorFlow for the pipelines, or None where it is not installed.

  Without it (e.g. an accelerator image with JAX but no TensorFlow) the
  in-memory sources and both pipelines still work, with a thread in place
  of tf.data's prefetching; the TFDS sources need TensorFlow.
  """
  try:
    return tensorflow()
  except ImportError:
    logging.log_first_n(logging.WARNING, 'TensorFlow is not installed: the '
                        'input pipeline prefetches with a thread.', 1)
    return None


def _prefetched(make_batches: Callable[[], Iterator], specs) -> Iterator:
  """The batches of ``make_batches()``, prefetched on background threads.

  By tf.data (``from_generator`` + ``prefetch``), or by a thread where
  TensorFlow is not installed. ``specs``: (shape, dtype) of each array.
  """
  tf = _tensorflow_or_none()
  if tf is None:
    yield from _prefetch_in_thread(make_batches())
    return
  signature = tuple(tf.TensorSpec(shape, tf.as_dtype(dtype))
                    for shape, dtype in specs)
  pipeline = tf.data.Dataset.from_generator(
      make_batches, output_signature=signature).prefetch(tf.data.AUTOTUNE)
  for batch in pipeline:
    yield tuple(array.numpy() for array in batch)


def _prefetch_in_thread(iterator: Iterator, size: int = 2) -> Iterator:
  """Runs ``iterator`` on a background thread, ``size`` items ahead."""
  queue_ = queue.Queue(maxsize=size)
  done = object()

  def fill():
    try:
      for item in iterator:
        queue_.put(item)
    finally:
      queue_.put(done)

  threading.Thread(target=fill, daemon=True).start()
  while (item := queue_.get()) is not done:
    yield item


def prefetch_to_device(iterator: Iterator, put: Callable, size: int = 2):
  """Yields ``put(item)`` for each item, keeping ``size`` transfers ahead."""
  queue = collections.deque()
  for item in iterator:
    queue.append(put(item))
    if len(queue) >= size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
