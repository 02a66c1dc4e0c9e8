"""The input pipeline: epoch order, train and eval batches, prefetching.

From an in-memory :class:`jcc.sources.ImageDataset` every dataset takes the
same two pipelines:

* :func:`train_batches`: the global batch of step s, in an order that is a
  pure function of (seed, epoch) (so a resumed run sees the same batches),
  split per host (``jax.process_index()``) and prefetched;
* :func:`eval_batches`: every example exactly once, the last batch padded to
  the batch size with a mask marking the padding.

NumPy gathers each batch and a background thread keeps a few ahead: the
data are already in memory, and this served batches faster than tf.data
did (``python -m benchmarks.input_pipeline``), without TensorFlow.
"""

from __future__ import annotations

import collections
import functools
import queue
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
  from jcc import sources


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


def host_batches(
    dataset: 'sources.ImageDataset', batch_size: int, seed: int, start_step: int,
    num_steps: int, process_index: int = 0, process_count: int = 1,
    neighbors: np.ndarray | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """This host's part of global batches ``start_step … num_steps − 1``.

  Yields the per-example fields of :class:`jcc.step.Batch`, rows
  [i·B/P, (i+1)·B/P) of each global batch for host i of P, where the global
  batch is :func:`train_batch_indices`: ``images`` uint8 (B/P, H, W, C),
  ``indices`` int32 (B/P,); where some examples are instance-only,
  ``in_clusters`` bool (B/P,); with ``neighbors`` ((N, k) indices),
  ``neighbor_images``: each row's neighbour image, the one
  :func:`neighbor_choice` picks. Gathered on the calling thread;
  :func:`train_batches` is the same, prefetched.
  """
  if batch_size % process_count:
    raise ValueError(f'batch {batch_size} does not split over '
                     f'{process_count} hosts.')
  per_host = batch_size // process_count
  lo, hi = process_index * per_host, (process_index + 1) * per_host
  n, images = len(dataset), dataset.train_images
  for step in range(start_step, num_steps):
    indices = train_batch_indices(n, batch_size, seed, step)[lo:hi]
    batch = {'images': images[indices], 'indices': indices.astype(np.int32)}
    if dataset.instance_only is not None:
      batch['in_clusters'] = ~dataset.instance_only[indices]
    if neighbors is not None:
      slot = neighbor_choice(batch_size, neighbors.shape[1], seed, step)[lo:hi]
      batch['neighbor_images'] = images[neighbors[indices, slot]]
    yield batch


def train_batches(*args, **kwargs) -> Iterator[dict[str, np.ndarray]]:
  """:func:`host_batches` (same arguments), gathered ahead on a thread."""
  return prefetch_in_thread(host_batches(*args, **kwargs))


def eval_batches(
    images: np.ndarray, batch_size: int, process_index: int = 0,
    process_count: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Every image exactly once: (this host's rows of the global batch,
  mask (batch_size,) of the global batch).

  Host i of P reads rows [i·B/P, (i+1)·B/P) of each global batch of B, as
  :func:`host_batches` does, so no host reads another's images. The last
  batch is padded with zeros to ``batch_size`` (one compiled shape);
  ``mask`` is False on the padding.
  """
  if batch_size % process_count:
    raise ValueError(f'batch {batch_size} does not split over '
                     f'{process_count} hosts.')
  return prefetch_in_thread(_padded_batches(
      images, batch_size, process_index * batch_size // process_count,
      batch_size // process_count))


def process_rows(total: int, batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> np.ndarray:
  """The indices of the rows host ``process_index`` reads in
  :func:`eval_batches`, in the order it reads them."""
  share = batch_size // process_count
  starts = np.arange(0, total, batch_size) + process_index * share
  rows = (starts[:, None] + np.arange(share)).ravel()
  return rows[rows < total]


def _padded_batches(images: np.ndarray, batch_size: int, offset: int,
                    rows: int) -> Iterator:
  total = images.shape[0]
  for start in range(0, total, batch_size):
    mask = np.arange(batch_size) < total - start
    first = min(start + offset, total)
    batch = images[first:min(start + offset + rows, total)]
    if batch.shape[0] < rows:
      pad = np.zeros((rows - batch.shape[0],) + tuple(images.shape[1:]),
                     images.dtype)
      batch = np.concatenate([batch, pad])
    yield batch, mask


def prefetch_in_thread(iterator: Iterator, size: int = 2) -> Iterator:
  """Runs ``iterator`` on a background thread, ``size`` items ahead.

  An exception raised by ``iterator`` is raised here, after the items before
  it. A consumer that stops early (a pipeline replaced mid-run) ends the
  thread at its next item rather than leaving it blocked.
  """
  items = queue.Queue(maxsize=size)
  stop = threading.Event()
  end = object()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        items.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def fill():
    try:
      for item in iterator:
        if not put(item):
          return
      put((end, None))
    except BaseException as error:  # pylint: disable=broad-except
      put((end, error))

  threading.Thread(target=fill, daemon=True).start()
  try:
    while True:
      item = items.get()
      if isinstance(item, tuple) and len(item) == 2 and item[0] is end:
        if item[1] is not None:
          raise item[1]
        return
      yield item
  finally:
    stop.set()


def prefetch_to_device(iterator: Iterator, put: Callable, size: int = 2):
  """Yields ``put(item)`` for each item, keeping ``size`` transfers ahead."""
  queue = collections.deque()
  for item in iterator:
    queue.append(put(item))
    if len(queue) >= size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
