"""k-means over rows split between processes, from all-reduced statistics.

Each process holds only its own rows of the embeddings. :func:`fit` is
Lloyd's algorithm in which every step exchanges sufficient statistics, not
rows: per cluster the sum and count of its rows (K × D and K numbers) and
the inertia. It is seeded by k-means++ (scikit-learn's) on a sample of at
most ``SEED_SAMPLE`` rows, the same rows on any number of processes (chosen
by global row index from the seed), so one process and several compute the
same centroids up to float rounding. The statistics are computed in float32
on a CPU device by a jitted function, block by block, and added in float64.

``sum_over_processes`` is the all-reduce: :func:`jcc.distributed.
sum_over_processes` in a run, the identity on one process.
"""

from __future__ import annotations

from collections.abc import Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from sklearn import cluster as sk_cluster

from jcc import distributed

AllReduce = Callable[[np.ndarray], np.ndarray]

# k-means++ seeds from at most this many rows (all of them below it).
SEED_SAMPLE = 20_000
# Rows whose distances to the centroids are computed at once.
_BLOCK = 16384


def _identity(array: np.ndarray) -> np.ndarray:
  return array


def seed_sample(rows: np.ndarray, row_indices: np.ndarray, total: int,
                seed: int, sum_over_processes: AllReduce = _identity
                ) -> np.ndarray:
  """The rows of a sample of min(total, SEED_SAMPLE) global row indices
  drawn from ``seed``, in index order, on every process: each fills the
  rows it holds (``row_indices``: the global index of each of ``rows``) and
  the sum over processes completes them."""
  chosen = np.arange(total) if total <= SEED_SAMPLE else np.sort(
      np.random.default_rng(seed).choice(total, SEED_SAMPLE, replace=False))
  return distributed.rows_at(chosen, rows, row_indices,
                             sum_over_processes).astype(np.float64)


def _blocks(rows: np.ndarray) -> list[tuple[jax.Array, ...]]:
  """``rows`` in blocks of _BLOCK (the last padded, with a mask) on this
  process's first CPU device (where JAX has one), with each row's squared
  norm."""
  try:
    device = jax.local_devices(backend='cpu')[0]
  except RuntimeError:  # JAX_PLATFORMS names no CPU: an accelerator, then
    device = jax.local_devices()[0]
  blocks = []
  for start in range(0, len(rows), _BLOCK):
    block = np.zeros((min(_BLOCK, len(rows)), rows.shape[1]), np.float32)
    part = rows[start:start + _BLOCK]
    block[:len(part)] = part
    mask = np.arange(len(block)) < len(part)
    blocks.append(jax.device_put(
        (block, np.einsum('ij,ij->i', block, block), mask), device))
  return blocks


@jax.jit
def _block_statistics(rows, row_norms, mask, centroids):
  distances = (row_norms[:, None] - 2 * rows @ centroids.T +
               jnp.sum(jnp.square(centroids), axis=1))
  members = jax.nn.one_hot(jnp.argmin(distances, axis=1), len(centroids),
                           dtype=rows.dtype) * mask[:, None]
  return (members.T @ rows, members.sum(axis=0),
          jnp.sum(jnp.maximum(distances.min(axis=1), 0) * mask))


@jax.jit
def _block_nearest(rows, row_norms, mask, centroids):
  del mask
  return jnp.argmin(row_norms[:, None] - 2 * rows @ centroids.T +
                    jnp.sum(jnp.square(centroids), axis=1), axis=1)


def nearest(rows: np.ndarray, centroids: np.ndarray) -> np.ndarray:
  """The index (int32) of the centroid nearest to each of ``rows``: a
  process's own rows' k-means assignment, computed as :func:`statistics`
  is."""
  centroids32 = np.asarray(centroids, np.float32)
  nearest_of = [np.asarray(_block_nearest(*block, centroids32))
                for block in _blocks(np.asarray(rows))]
  return np.concatenate(nearest_of or [np.zeros(0, np.int32)]).astype(
      np.int32)[:len(rows)]


def statistics(rows: np.ndarray | list, centroids: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, float]:
  """This process's sufficient statistics for ``centroids``: per cluster
  the sum (K, D) and count (K,) of the rows nearest to it, and the
  inertia (the summed squared distance of each row to its nearest).

  In float32 on a CPU device, block by block; the blocks are added in
  float64. ``rows``: an (n, D) array, or its blocks (:func:`_blocks`)."""
  blocks = _blocks(rows) if isinstance(rows, np.ndarray) else rows
  centroids32 = np.asarray(centroids, np.float32)
  sums = np.zeros(centroids.shape, np.float64)
  counts = np.zeros(len(centroids), np.float64)
  inertia = 0.0
  for block in blocks:
    block_sums, block_counts, block_inertia = jax.device_get(
        _block_statistics(*block, centroids32))
    sums += block_sums
    counts += block_counts
    inertia += float(block_inertia)
  return sums, counts, inertia


def _all_statistics(blocks, centroids, sum_over_processes):
  sums, counts, inertia = statistics(blocks, centroids)
  k, d = sums.shape
  flat = sum_over_processes(np.concatenate(
      [sums.ravel(), counts, [inertia]]))
  return (flat[:k * d].reshape(k, d), flat[k * d:k * d + k],
          float(flat[-1]))


def _lloyd(blocks, centroids, tolerance, max_iter, sum_over_processes):
  for _ in range(max_iter):
    sums, counts, _ = _all_statistics(blocks, centroids, sum_over_processes)
    moved = np.where(counts[:, None] > 0,
                     sums / np.maximum(counts, 1)[:, None], centroids)
    shift = float(np.sum(np.square(moved - centroids)))
    centroids = moved
    if shift <= tolerance:
      break
  _, counts, inertia = _all_statistics(blocks, centroids, sum_over_processes)
  return centroids, counts, inertia


def fit(rows: np.ndarray, row_indices: np.ndarray, total: int,
        num_clusters: int, seed: int, n_init: int = 10, max_iter: int = 300,
        sum_over_processes: AllReduce = _identity) -> np.ndarray:
  """k-means centroids (K, D) float32 of ``total`` rows split between
  processes, the same on each.

  Args:
    rows: (n, D) this process's rows.
    row_indices: (n,) the global index of each of ``rows``; the processes'
      indices together are 0 .. total - 1, each once.
    total: the rows of all processes.
    num_clusters: K.
    seed: the sample's and the k-means++ seeds' randomness.
    n_init: seedings; the one of lowest inertia is kept (as scikit-learn).
    max_iter: Lloyd steps at most per seeding.
    sum_over_processes: the all-reduce (sum) of an array over processes.
  """
  rows = np.asarray(rows)
  sample = seed_sample(rows, np.asarray(row_indices), total, seed,
                       sum_over_processes)
  # scikit-learn's stopping rule: a shift under 1e-4 of the mean variance.
  moments = sum_over_processes(np.stack(
      [rows.sum(0, dtype=np.float64),
       np.einsum('ij,ij->j', rows, rows, dtype=np.float64)]))
  variance = moments[1] / total - np.square(moments[0] / total)
  tolerance = 1e-4 * float(np.mean(variance))
  blocks = _blocks(rows)
  seeds = np.random.RandomState(seed)
  best = None
  for _ in range(n_init):
    start, _ = sk_cluster.kmeans_plusplus(
        sample, num_clusters, random_state=seeds.randint(2**31 - 1))
    result = _lloyd(blocks, start, tolerance, max_iter, sum_over_processes)
    if best is None or result[2] < best[2]:
      best = result
  centroids, counts, _ = best
  if (counts == 0).any():
    logging.warning(
        'k-means left %d of K=%d clusters empty: the embeddings have fewer '
        'distinct rows than clusters. Check the data, or lower '
        'config.dataset.num_clusters.', int((counts == 0).sum()),
        num_clusters)
  return centroids.astype(np.float32)
