"""Nearest neighbours in the embedding: mined on the devices, in blocks.

SCAN, ProPos and GCC use each image's k nearest neighbours in the learnt
embedding as extra positives. :func:`nearest_neighbors` finds them for the
whole dataset by cosine similarity, exactly (no approximate index): the
similarities of a block of queries to all N rows, then their top k. Only one
block's (B, N) similarities exist at a time, so device memory is
O(N·d + B·N) and the result O(N·k), whatever N is (60,000 for CIFAR, 100,000
for Tiny-ImageNet).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jcc import losses
from jcc import parallel

# Bytes of one block's similarity matrix; the block's row count follows from
# N. 256 MB keeps a block small next to any accelerator's memory.
BLOCK_BYTES = 256 * 2**20


def _block_top_k(queries: jax.Array, keys: jax.Array, offset: jax.Array,
                 k: int) -> jax.Array:
  """Indices of the k rows of ``keys`` most similar to each query row.

  ``offset``: the index of the block's first query among the keys, so that a
  row is never its own neighbour.
  """
  similarity = jnp.matmul(queries, keys.T, precision=jax.lax.Precision.HIGHEST)
  own = offset + jnp.arange(queries.shape[0])
  similarity = jnp.where(
      own[:, None] == jnp.arange(keys.shape[0])[None, :], -jnp.inf,
      similarity)
  return jax.lax.top_k(similarity, k)[1].astype(jnp.int32)


def block_rows(num_rows: int, num_devices: int = 1,
               block_bytes: int = BLOCK_BYTES) -> int:
  """Queries per block: (rows × num_rows) float32 within ``block_bytes``,
  a multiple of ``num_devices``, at least one per device."""
  rows = max(1, block_bytes // (4 * num_rows))
  rows = max(num_devices, rows // num_devices * num_devices)
  return min(rows, -(-num_rows // num_devices) * num_devices)


def nearest_neighbors(embeddings: np.ndarray, k: int,
                      mesh: jax.sharding.Mesh | None = None,
                      block_bytes: int = BLOCK_BYTES) -> np.ndarray:
  """Each row's k nearest other rows by cosine similarity, nearest first.

  Args:
    embeddings: (N, d) float; rows need not be normalised. Every process
      passes the same array (as :meth:`jcc.train.Trainer.predict` gives).
    k: neighbours per row, 1 <= k < N.
    mesh: the devices to use, each block's queries split over its axis
      'data' (default: all devices).
    block_bytes: the size of one block's similarity matrix.

  Returns:
    (N, k) int32 indices into ``embeddings``; ties in similarity are broken
    by the lower index.
  """
  embeddings = np.asarray(embeddings, np.float32)
  n = embeddings.shape[0]
  if embeddings.ndim != 2 or not 1 <= k < n:
    raise ValueError(f'need (N, d) embeddings and 1 <= k < N; got shape '
                     f'{embeddings.shape} and k={k}.')
  mesh = mesh or parallel.make_mesh()
  replicated, split = parallel.shardings(mesh)
  unit = np.asarray(losses.l2_normalize(jnp.asarray(embeddings)))
  keys = parallel.to_global(unit, replicated)
  rows = block_rows(n, mesh.size, block_bytes)
  padded = np.zeros((-(-n // rows) * rows, unit.shape[1]), np.float32)
  padded[:n] = unit
  top_k = jax.jit(_block_top_k, static_argnames=('k',),
                  out_shardings=replicated)
  blocks = []
  for start in range(0, n, rows):
    queries = parallel.to_global(padded[start:start + rows], split)
    offset = parallel.to_global(np.int32(start), replicated)
    blocks.append(top_k(queries, keys, offset, k=k))
  return np.concatenate([np.asarray(b) for b in blocks])[:n]


def neighbor_accuracy(neighbors: np.ndarray, labels: np.ndarray) -> float:
  """The fraction of neighbours that share their image's label (SCAN's
  measure of how trustworthy the mined positives are)."""
  labels = np.asarray(labels)
  return float(np.mean(labels[neighbors] == labels[:, None]))
